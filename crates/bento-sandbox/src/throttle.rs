//! Bandwidth limits as token buckets.
//!
//! A transfer is charged in full at once and may drive the bucket into
//! debt; the caller then waits until the debt is repaid at the bucket's
//! rate. That slows traffic to the rate (backpressure) without splitting
//! transfers, and a transfer larger than the burst still goes through.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One token bucket: `rate` bytes per second, at most one second's worth
/// (and at least 16 KiB) saved up as burst.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

/// Smallest burst, so that tiny rates still pass ordinary messages whole.
const MIN_BURST: f64 = 16.0 * 1024.0;

impl TokenBucket {
    /// A full bucket refilling at `bytes_per_s`.
    pub fn new(bytes_per_s: u64) -> Arc<Self> {
        let rate = bytes_per_s.max(1) as f64;
        let burst = rate.max(MIN_BURST);
        Arc::new(Self {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        })
    }

    /// The rate, bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Charge `bytes`; returns how long the caller must wait before the
    /// bucket is out of debt again.
    pub fn charge(&self, bytes: u64) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (tokens, last) = *state;
        let refilled =
            (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        let left = refilled - bytes as f64;
        *state = (left, now);
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.rate)
        }
    }
}

/// The buckets one instance's traffic is charged to: its own (the
/// manifest's bandwidth) and the box-wide one shared by all instances.
#[derive(Debug, Clone, Default)]
pub struct Throttle {
    buckets: Vec<Arc<TokenBucket>>,
}

impl Throttle {
    /// No limit (store-time checks and tests).
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// Charge to all of `buckets`.
    pub fn new(buckets: Vec<Arc<TokenBucket>>) -> Self {
        Self { buckets }
    }

    /// Charge `bytes` everywhere; the longest wait wins.
    pub fn charge(&self, bytes: u64) -> Duration {
        self.buckets
            .iter()
            .map(|b| b.charge(bytes))
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_passes_its_burst_then_asks_to_wait_for_the_debt() {
        let bucket = TokenBucket::new(100 * 1024);
        assert_eq!(bucket.charge(100 * 1024), Duration::ZERO);
        let wait = bucket.charge(50 * 1024);
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
    }

    #[test]
    fn the_longest_wait_of_all_buckets_applies() {
        let fast = TokenBucket::new(1024 * 1024);
        let slow = TokenBucket::new(16 * 1024);
        let throttle = Throttle::new(vec![fast, slow]);
        assert_eq!(throttle.charge(16 * 1024), Duration::ZERO);
        assert!(throttle.charge(16 * 1024) > Duration::from_millis(900));
    }
}
