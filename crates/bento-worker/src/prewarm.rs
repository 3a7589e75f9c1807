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

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bento_sandbox::{PreparedInstance, PythonRuntime};

/// How long the refill thread waits before trying again after the runtime
/// failed to instantiate (the invocation that needs one then reports it).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

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
pub(crate) struct Prewarmed {
    ready: Mutex<VecDeque<PreparedInstance>>,
    /// Signalled when an instance is taken (the refill thread wakes).
    taken: Condvar,
    target: usize,
}

impl Prewarmed {
    /// Start keeping `target` instances ready (none if 0: every invocation
    /// then instantiates its own).
    pub(crate) fn start(runtime: &Arc<PythonRuntime>, target: usize) -> Arc<Self> {
        let pool = Arc::new(Self {
            ready: Mutex::new(VecDeque::with_capacity(target)),
            taken: Condvar::new(),
            target,
        });
        if target > 0 {
            let runtime = runtime.clone();
            let refill = pool.clone();
            let spawned = std::thread::Builder::new()
                .name("prewarm".into())
                .spawn(move || refill.refill(&runtime));
            if let Err(e) = spawned {
                // Invocations still work, each making its own instance.
                tracing::warn!(error = %e, "cannot start the prewarm thread");
            }
        }
        pool
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<PreparedInstance>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ready instance, if one is waiting.
    pub(crate) fn take(&self) -> Option<PreparedInstance> {
        let prepared = self.lock().pop_front();
        match prepared {
            Some(_) => self.taken.notify_one(),
            // Per invocation, hence trace: how often the set runs dry.
            None if self.target > 0 => tracing::trace!("prewarm: no instance ready"),
            None => {}
        }
        prepared
    }

    /// The refill loop: instantiate (outside the lock) whenever fewer than
    /// `target` are ready. Runs for the life of the worker process.
    fn refill(&self, runtime: &PythonRuntime) {
        run_only_when_idle();
        let mut filled_once = false;
        loop {
            {
                let mut ready = self.lock();
                if !filled_once && ready.len() >= self.target {
                    filled_once = true;
                    tracing::debug!("prewarm: {} fresh instances ready", self.target);
                }
                while ready.len() >= self.target {
                    ready = self.taken.wait(ready).unwrap_or_else(|e| e.into_inner());
                }
            }
            match runtime.prepare() {
                Ok(prepared) => self.lock().push_back(prepared),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prepare an instance ahead of demand");
                    std::thread::sleep(RETRY_AFTER_FAILURE);
                }
            }
        }
    }
}
