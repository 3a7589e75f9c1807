//! Fresh instances made ahead of demand.
//!
//! Instantiating the runtime (mapping its copy-on-write memory image,
//! setting up tables and the component's core instances) is about a third
//! of a hello-world invocation's time in the worker. A worker therefore
//! keeps a few instances instantiated and waiting, made by one background
//! thread while the worker is otherwise idle, and an invocation takes one
//! instead of making its own. Each is bound to its session, limits and
//! grant by [`PythonRuntime::run_prepared`] before the function's code
//! runs, and consumed by it: no instance is ever used twice.
//!
//! The same thread also releases spent instances (unmapping their memory),
//! and does both only while no function of the worker runs, up to
//! [`MOST_WAIT_FOR_QUIET`]: see [`Prewarmed::running`] for why.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bento_sandbox::{PreparedInstance, PythonRuntime, SpentInstance};

/// How long the refill thread waits before trying again after the runtime
/// failed to instantiate (the invocation that needs one then reports it).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Longest the refill thread waits for the worker's functions to stop
/// running before it instantiates beside them anyway (sessions that wait
/// for input count as running, and must not keep the set empty).
const MOST_WAIT_FOR_QUIET: Duration = Duration::from_millis(20);

/// Most spent instances waiting for the background thread to release
/// them. It runs only on an idle CPU, so on a saturated box it may not run
/// at all: beyond this many, an instance's own thread releases it, and the
/// memory held by finished instances stays bounded.
const MOST_SPENT_WAITING: usize = 8;

/// Lower the calling thread to `SCHED_IDLE`: it gets a CPU only when
/// nothing else wants one, so refilling never slows a running function
/// (on a busy box the set simply drains and invocations instantiate their
/// own, as without prewarming).
fn run_only_when_idle() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets the policy of the calling thread (pid 0) from a valid
    // parameter struct; it changes no memory.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "prewarm: cannot lower the refill thread's priority"
        );
    }
}

/// Ready instances of one worker, refilled by a background thread up to a
/// fixed count.
///
/// Generic over what it holds so that its rules can be tested without a
/// runtime; the worker uses [`Prewarmed`].
pub(crate) struct Ready<P, S> {
    state: Mutex<State<P, S>>,
    /// Signalled when an instance is taken or a function stops running
    /// (the refill thread wakes).
    changed: Condvar,
    target: usize,
}

/// The worker's ready instances.
pub(crate) type Prewarmed = Ready<PreparedInstance, SpentInstance>;

struct State<P, S> {
    ready: VecDeque<P>,
    /// Finished instances whose memory is still to be released.
    spent: Vec<S>,
    /// Functions of this worker running now (see [`Prewarmed::running`]).
    running: usize,
}

/// A function of this worker is running while this lives.
pub(crate) struct Running<'a, P, S> {
    pool: &'a Ready<P, S>,
}

impl<P, S> Drop for Running<'_, P, S> {
    fn drop(&mut self) {
        self.pool.lock().running -= 1;
        self.pool.changed.notify_one();
    }
}

impl Prewarmed {
    /// Start keeping `target` instances ready (none if 0: every invocation
    /// then instantiates its own).
    pub(crate) fn start(runtime: &Arc<PythonRuntime>, target: usize) -> Arc<Self> {
        let runtime = runtime.clone();
        Ready::start_with(target, move || {
            run_only_when_idle();
            move || runtime.prepare()
        })
    }
}

impl<P, S> Ready<P, S> {
    fn lock(&self) -> MutexGuard<'_, State<P, S>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<P: Send + 'static, S: Send + 'static> Ready<P, S> {
    /// Start keeping `target` items ready, made by the function that
    /// `setup` returns, on a background thread that first calls `setup`.
    fn start_with<M, E>(target: usize, setup: impl FnOnce() -> M + Send + 'static) -> Arc<Self>
    where
        M: FnMut() -> Result<P, E>,
        E: std::fmt::Display,
    {
        let pool = Arc::new(Self {
            state: Mutex::new(State {
                ready: VecDeque::with_capacity(target),
                spent: Vec::with_capacity(MOST_SPENT_WAITING),
                running: 0,
            }),
            changed: Condvar::new(),
            target,
        });
        if target > 0 {
            let refill = pool.clone();
            let spawned = std::thread::Builder::new()
                .name("prewarm".into())
                .spawn(move || refill.refill(setup()));
            if let Err(e) = spawned {
                // Invocations still work, each making its own instance.
                tracing::warn!(error = %e, "cannot start the prewarm thread");
            }
        }
        pool
    }

    /// Count a function of this worker as running until the guard drops.
    ///
    /// The refill thread waits for none to run before it instantiates
    /// (up to [`MOST_WAIT_FOR_QUIET`]): a function's first writes to its
    /// copy-on-write memory each replace a read-only page, and the kernel
    /// must then flush that page from every CPU running a thread of this
    /// process. With the refill thread busy on the other CPU, each of a
    /// hello-world's ~2000 such faults waited for an inter-processor
    /// interrupt, which ate the whole gain of prewarming (profile in
    /// docs/benchmarks.md).
    pub(crate) fn running(&self) -> Running<'_, P, S> {
        self.lock().running += 1;
        Running { pool: self }
    }

    /// Release a finished instance's memory: later, on the background
    /// thread while no function runs, or now when there is no background
    /// thread or too many wait already.
    pub(crate) fn retire(&self, spent: S) {
        if self.target == 0 {
            return drop(spent);
        }
        let mut state = self.lock();
        if state.spent.len() >= MOST_SPENT_WAITING {
            drop(state);
            return drop(spent);
        }
        state.spent.push(spent);
        drop(state);
        self.changed.notify_one();
    }

    /// A ready instance, if one is waiting.
    pub(crate) fn take(&self) -> Option<P> {
        let prepared = self.lock().ready.pop_front();
        match prepared {
            Some(_) => self.changed.notify_one(),
            // Per invocation, hence trace: how often the set runs dry.
            None if self.target > 0 => tracing::trace!("prewarm: no instance ready"),
            None => {}
        }
        prepared
    }

    /// The refill loop: release spent instances and instantiate (outside
    /// the lock) whenever fewer than `target` are ready, each once no
    /// function runs. Runs for the life of the worker process.
    fn refill<E: std::fmt::Display>(&self, mut make: impl FnMut() -> Result<P, E>) {
        let mut filled_once = false;
        loop {
            {
                let mut state = self.lock();
                if !filled_once && state.ready.len() >= self.target {
                    filled_once = true;
                    tracing::debug!("prewarm: {} fresh instances ready", self.target);
                }
                while state.ready.len() >= self.target && state.spent.is_empty() {
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                let give_up = Instant::now() + MOST_WAIT_FOR_QUIET;
                while state.running > 0 {
                    let now = Instant::now();
                    if now >= give_up {
                        break;
                    }
                    state = self
                        .changed
                        .wait_timeout(state, give_up - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                if !state.spent.is_empty() {
                    let spent = std::mem::take(&mut state.spent);
                    drop(state);
                    drop(spent);
                    continue;
                }
            }
            match make() {
                Ok(prepared) => self.lock().ready.push_back(prepared),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prepare an instance ahead of demand");
                    std::thread::sleep(RETRY_AFTER_FAILURE);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;

    fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let give_up = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < give_up, "never: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn ready_len<P, S>(pool: &Ready<P, S>) -> usize {
        pool.lock().ready.len()
    }

    /// Records on which thread it was dropped.
    struct Spent(Arc<Mutex<Vec<String>>>);

    impl Drop for Spent {
        fn drop(&mut self) {
            let name = std::thread::current().name().unwrap_or("").to_owned();
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(name);
        }
    }

    #[test]
    fn the_refill_waits_until_no_function_runs_or_the_quiet_wait_is_over() {
        let released = Arc::new(AtomicBool::new(false));
        let made: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
        let (released2, made2) = (released.clone(), made.clone());
        let pool: Arc<Ready<u32, ()>> = Ready::start_with(1, move || {
            move || {
                let at = (Instant::now(), released2.load(Ordering::SeqCst));
                made2.lock().unwrap_or_else(|e| e.into_inner()).push(at);
                Ok::<_, String>(7)
            }
        });
        eventually("the first instance is ready", || ready_len(&pool) == 1);

        // A function runs briefly: the refill waits for it to end.
        let running = pool.running();
        let taken_at = Instant::now();
        assert_eq!(pool.take(), Some(7));
        std::thread::sleep(Duration::from_millis(5));
        released.store(true, Ordering::SeqCst);
        drop(running);
        eventually("the set is refilled", || ready_len(&pool) == 1);
        let (at, after_release) = made.lock().unwrap_or_else(|e| e.into_inner())[1];
        assert!(
            after_release || at.duration_since(taken_at) >= MOST_WAIT_FOR_QUIET,
            "made beside a running function, {:?} after the take",
            at.duration_since(taken_at)
        );

        // A function that runs on (a session waiting for input) does not
        // keep the set empty: the refill goes ahead after the quiet wait.
        released.store(false, Ordering::SeqCst);
        let running = pool.running();
        let taken_at = Instant::now();
        assert_eq!(pool.take(), Some(7));
        eventually("the set is refilled beside a long-running function", || {
            ready_len(&pool) == 1
        });
        let (at, _) = made.lock().unwrap_or_else(|e| e.into_inner())[2];
        assert!(at.duration_since(taken_at) >= MOST_WAIT_FOR_QUIET);
        drop(running);
    }

    #[test]
    fn spent_instances_are_released_in_the_background_and_at_once_beyond_the_bound() {
        let drops: Arc<Mutex<Vec<String>>> = Arc::default();
        let dropped_on = |name: &str| {
            drops
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|n| *n == name)
                .count()
        };
        // The background thread is kept busy making its first instance
        // while spent ones arrive, so none can be released before the
        // bound is reached.
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let pool: Arc<Ready<u32, Spent>> = Ready::start_with(1, move || {
            move || {
                go_rx.recv().map_err(|e| e.to_string())?;
                Ok::<_, String>(1)
            }
        });
        let me = std::thread::current().name().unwrap_or("").to_owned();
        for _ in 0..MOST_SPENT_WAITING + 1 {
            pool.retire(Spent(drops.clone()));
        }
        assert_eq!(dropped_on(&me), 1, "beyond the bound: released at once");
        assert_eq!(dropped_on("prewarm"), 0);
        go_tx.send(()).unwrap_or_else(|e| panic!("{e}"));
        eventually("the waiting ones are released", || {
            dropped_on("prewarm") == MOST_SPENT_WAITING
        });

        // Without a background thread (prewarming off) at once, always.
        let off: Arc<Ready<u32, Spent>> =
            Ready::start_with(0, || || Err::<u32, String>("never called".into()));
        off.retire(Spent(drops.clone()));
        assert_eq!(dropped_on(&me), 2);
    }
}
