//! WASI sleeps that a kill or the wall-clock limit can end.
//!
//! wasmtime-wasi implements `monotonic-clock.subscribe-*` with a Tokio
//! timer that the sync bindings wait on uninterruptibly, and epoch
//! interruption only reaches running wasm: a function calling
//! `time.sleep(3600)` would keep its thread (and its worker's watchdog) busy
//! for an hour, and the box would have to kill the whole worker — and every
//! other session on it — to stop it. These replacements wait on the
//! instance's [`SessionIo`], which every stop reason wakes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::HostMonotonicClock;
use wasmtime_wasi::p2::{DynPollable, Pollable};

use crate::instance::InstanceState;
use crate::session_io::SessionIo;

/// The WASI clocks package version wasmtime-wasi 48 links (guests importing
/// any 0.2.x version resolve to it).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// The instance's monotonic clock: nanoseconds since the instance started.
#[derive(Clone, Copy)]
pub(crate) struct InstanceClock {
    start: Instant,
}

impl InstanceClock {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    fn nanos(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl HostMonotonicClock for InstanceClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.nanos()
    }
}

/// A sleep that ends at `until` or when the instance is stopped.
struct StoppableSleep {
    io: Arc<SessionIo>,
    until: Option<Instant>,
    yielded: bool,
}

// The instance runs synchronously on its own thread; blocking here blocks
// only this instance (as the session streams' pollables do).
#[async_trait::async_trait]
impl Pollable for StoppableSleep {
    async fn ready(&mut self) {
        let remaining = match self.until {
            Some(until) => until.saturating_duration_since(Instant::now()),
            None => Duration::MAX,
        };
        if remaining.is_zero() {
            // A zero timeout is how wasi-libc polls without blocking; yield
            // once like wasmtime-wasi does, so other pollables get a look.
            if !self.yielded {
                self.yielded = true;
                tokio::task::yield_now().await;
            }
            return;
        }
        // Ends early only when the instance is stopped; the stop itself is
        // reported by the next epoch check or stream operation.
        let _ = self.io.sleep(remaining);
    }
}

fn subscribe(
    mut store: StoreContextMut<'_, InstanceState>,
    duration: Duration,
) -> wasmtime::Result<(Resource<DynPollable>,)> {
    let state = store.data_mut();
    let sleep = StoppableSleep {
        io: state.io.clone(),
        until: Instant::now().checked_add(duration),
        yielded: false,
    };
    let resource = state.table.push(sleep)?;
    Ok((wasmtime_wasi::p2::subscribe(&mut state.table, resource)?,))
}

/// Replace wasmtime-wasi's `subscribe-duration` and `subscribe-instant`.
pub(crate) fn shadow_clock_subscriptions(
    linker: &mut Linker<InstanceState>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap(
        "subscribe-duration",
        |store: StoreContextMut<'_, InstanceState>, (nanos,): (u64,)| {
            subscribe(store, Duration::from_nanos(nanos))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |store: StoreContextMut<'_, InstanceState>, (when,): (u64,)| {
            let now = store.data().clock.nanos();
            subscribe(store, Duration::from_nanos(when.saturating_sub(now)))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
