//! One instance's memory, counted in one place: its wasm linear memory and
//! every host-side buffer the function (or its clients) can make grow.
//!
//! The grant's `memory_mib` is what an instance may cost the box, not only
//! what its wasm heap may reach: staged capability bodies, capability
//! results waiting to be read (HTTP bodies, storage values, stream reads),
//! and the input windows of its session and service channels all live in
//! the worker's heap. Counting them against the same limit is what makes
//! `memory_mib × max_instances` a bound on the box.

use std::sync::{Arc, Mutex, MutexGuard};

/// A host buffer would take the instance beyond its memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{wanted} more bytes would take the instance beyond its {limit}-byte memory limit")]
pub struct MemoryExceeded {
    /// Bytes asked for.
    pub wanted: u64,
    /// The instance's memory limit.
    pub limit: u64,
}

#[derive(Debug, Default)]
struct Usage {
    linear: u64,
    host: u64,
}

impl Usage {
    fn total(&self) -> u64 {
        self.linear.saturating_add(self.host)
    }
}

/// The memory account of one instance (see the module docs).
#[derive(Debug)]
pub struct InstanceMemory {
    limit: u64,
    usage: Mutex<Usage>,
}

impl InstanceMemory {
    /// An account that allows `limit` bytes in all.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            usage: Mutex::new(Usage::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Usage> {
        // Every update is a single field write: a poisoned lock holds a
        // consistent value.
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes counted now (linear memory and host buffers).
    pub fn used(&self) -> u64 {
        self.lock().total()
    }

    /// Bytes of host buffers counted now.
    pub fn host_bytes(&self) -> u64 {
        self.lock().host
    }

    /// Linear memory grows by `bytes`; false (and nothing counted) if that
    /// would exceed the limit.
    pub(crate) fn grow_linear(&self, bytes: u64) -> bool {
        let mut usage = self.lock();
        if usage.total().saturating_add(bytes) > self.limit {
            return false;
        }
        usage.linear += bytes;
        true
    }

    /// Count `bytes` of host buffer, released when the returned charge is
    /// dropped (or resized).
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> Result<HostBytes, MemoryExceeded> {
        let mut charge = HostBytes {
            memory: self.clone(),
            bytes: 0,
        };
        charge.resize(bytes)?;
        Ok(charge)
    }

    /// Count `bytes` even beyond the limit. For a window the protocol
    /// always has open (the session's input): over-committing it makes the
    /// instance's next growth fail, with the memory limit as the reason.
    pub(crate) fn reserve_anyway(self: &Arc<Self>, bytes: u64) -> HostBytes {
        let mut usage = self.lock();
        usage.host = usage.host.saturating_add(bytes);
        HostBytes {
            memory: self.clone(),
            bytes,
        }
    }
}

/// Host-buffer bytes counted in an [`InstanceMemory`]; dropping it gives
/// them back.
#[derive(Debug)]
pub struct HostBytes {
    memory: Arc<InstanceMemory>,
    bytes: u64,
}

impl HostBytes {
    /// Bytes counted by this charge.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Count `bytes` instead of what is counted now. Shrinking always
    /// succeeds; growing fails, changing nothing, beyond the limit.
    pub fn resize(&mut self, bytes: u64) -> Result<(), MemoryExceeded> {
        let mut usage = self.memory.lock();
        if bytes > self.bytes {
            let wanted = bytes - self.bytes;
            if usage.total().saturating_add(wanted) > self.memory.limit {
                return Err(MemoryExceeded {
                    wanted,
                    limit: self.memory.limit,
                });
            }
            usage.host += wanted;
        } else {
            usage.host = usage.host.saturating_sub(self.bytes - bytes);
        }
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for HostBytes {
    fn drop(&mut self) {
        let mut usage = self.memory.lock();
        usage.host = usage.host.saturating_sub(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_buffers_and_linear_memory_share_one_limit() {
        let memory = InstanceMemory::new(100);
        assert!(memory.grow_linear(60));
        let mut charge = memory.reserve(30).unwrap();
        assert_eq!(memory.used(), 90);
        assert!(!memory.grow_linear(11), "linear growth sees host buffers");
        assert_eq!(
            memory.reserve(11).unwrap_err(),
            MemoryExceeded {
                wanted: 11,
                limit: 100
            }
        );
        assert!(
            charge.resize(41).is_err(),
            "a refused resize changes nothing"
        );
        assert_eq!(memory.used(), 90);
        charge.resize(10).unwrap();
        assert!(memory.grow_linear(30));
        drop(charge);
        assert_eq!(memory.used(), 90);
        assert_eq!(memory.host_bytes(), 0);
    }

    #[test]
    fn an_over_committed_window_makes_the_next_growth_fail() {
        let memory = InstanceMemory::new(10);
        let window = memory.reserve_anyway(20);
        assert!(!memory.grow_linear(1));
        assert!(memory.reserve(1).is_err());
        drop(window);
        assert!(memory.grow_linear(10));
    }
}
