//! Admission control: refuse a share of new instances while the workers
//! start them late, so that a flood of clients cannot make every user —
//! a new one included — wait in one ever longer queue.
//!
//! Instances run as threads sharing the box's cores. Past what the cores
//! can carry, every running instance slows down in proportion (processor
//! sharing), so a box that admits everything answers everyone late. The
//! pool measures the one delay no function controls: from sending a
//! `Start` to the worker until the instance's thread runs
//! (`FromWorker::Started`). On an idle box that is well under a
//! millisecond; it grows with the number of runnable threads ahead of it.
//!
//! The rule is CoDel's idea applied to admissions: per interval of
//! [`INTERVAL`], the *smallest* start delay seen (a standing queue, not a
//! burst) — or, if no instance started in the whole interval while some
//! were waiting, the oldest one's age (the workers are stalled) — is
//! compared with [`TARGET`]. Above it, the share of new instances refused
//! grows by [`RAISE`]; at or below it, it falls by [`LOWER`]; it never
//! exceeds [`MAX_REFUSED_SHARE`], so some starts always go through and keep
//! measuring. Refusals are spread evenly (every n-th start), not random,
//! and cost the box no sandbox work: the client gets the typed `overloaded`
//! answer at once and may try again.
//!
//! Nothing here knows who asks: every start is one sample, whoever sent it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bento_worker_contract::InstanceId;

/// The default start delay above which the box counts as overloaded
/// (`bento serve --overload-target-ms`).
pub const TARGET: Duration = Duration::from_millis(50);
/// How often the refused share is adjusted.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// How much the refused share grows per interval over the target.
pub const RAISE: f64 = 0.1;
/// How much it falls per interval at or under the target.
pub const LOWER: f64 = 0.05;
/// The largest share of starts ever refused.
pub const MAX_REFUSED_SHARE: f64 = 0.9;

/// The controller's state; one per pool, behind the pool's lock.
#[derive(Debug)]
pub(crate) struct Admission {
    /// `None`: admission control is off and every start is admitted.
    target: Option<Duration>,
    /// Starts sent to a worker whose thread has not run yet, by id (ids
    /// grow with time, so the first is the oldest) with when each was sent.
    pending: BTreeMap<InstanceId, Instant>,
    window_start: Instant,
    window_min: Option<Duration>,
    refused_share: f64,
    /// Error diffusion: refusals owed so far, so that a share of 0.25
    /// refuses exactly every fourth start.
    debt: f64,
    refused_total: u64,
}

/// What the controller decided for one start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Admit,
    Refuse,
}

/// The controller's figures, for the operator's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AdmissionStats {
    /// Share of starts being refused now (0 when the box keeps up).
    pub refused_share: f64,
    /// Starts refused as `overloaded` since the box started.
    pub refused_total: u64,
    /// Starts sent to a worker whose instance has not begun running.
    pub pending_starts: usize,
}

impl Admission {
    pub(crate) fn new(target: Option<Duration>, now: Instant) -> Self {
        Self {
            target,
            pending: BTreeMap::new(),
            window_start: now,
            window_min: None,
            refused_share: 0.0,
            debt: 0.0,
            refused_total: 0,
        }
    }

    /// Whether a new instance may start now.
    pub(crate) fn decide(&mut self, now: Instant) -> Verdict {
        self.roll(now);
        if self.refused_share <= 0.0 {
            self.debt = 0.0;
            return Verdict::Admit;
        }
        self.debt += self.refused_share;
        if self.debt >= 1.0 {
            self.debt -= 1.0;
            self.refused_total += 1;
            Verdict::Refuse
        } else {
            Verdict::Admit
        }
    }

    /// Instance `id` was sent to a worker at `now`.
    pub(crate) fn sent(&mut self, id: InstanceId, now: Instant) {
        self.pending.insert(id, now);
    }

    /// Instance `id`'s thread began running; its delay is one sample.
    pub(crate) fn started(&mut self, id: InstanceId, now: Instant) {
        if let Some(sent) = self.pending.remove(&id) {
            self.roll(now);
            let delay = now.saturating_duration_since(sent);
            self.window_min = Some(self.window_min.map_or(delay, |m| m.min(delay)));
        }
    }

    /// Instance `id` will never start (its worker died, or it ended before
    /// its thread ran): no sample.
    pub(crate) fn forget(&mut self, id: InstanceId) {
        self.pending.remove(&id);
    }

    pub(crate) fn stats(&self) -> AdmissionStats {
        AdmissionStats {
            refused_share: self.refused_share,
            refused_total: self.refused_total,
            pending_starts: self.pending.len(),
        }
    }

    /// Close every interval that ended by `now`, adjusting the share once
    /// per interval.
    fn roll(&mut self, now: Instant) {
        while now.saturating_duration_since(self.window_start) >= INTERVAL {
            let window_end = self.window_start + INTERVAL;
            let delay = match self.window_min.take() {
                Some(min) => Some(min),
                // Nothing started in the whole interval: if something was
                // waiting, its age is how late the workers are.
                None => self
                    .pending
                    .values()
                    .next()
                    .map(|sent| window_end.saturating_duration_since(*sent)),
            };
            if delay.is_some_and(|d| self.target.is_some_and(|target| d > target)) {
                self.refused_share = (self.refused_share + RAISE).min(MAX_REFUSED_SHARE);
            } else {
                self.refused_share = (self.refused_share - LOWER).max(0.0);
            }
            self.window_start = window_end;
            // After a long quiet spell, skip the empty intervals at once:
            // each would only lower the share further, and it is 0 by then.
            if self.refused_share == 0.0
                && self.pending.is_empty()
                && now.saturating_duration_since(self.window_start) >= INTERVAL
            {
                self.window_start = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feed one start every `every` for `span`, each starting `delay`
    /// after it was sent, and count the refusals among them.
    fn feed(
        admission: &mut Admission,
        next_id: &mut InstanceId,
        now: &mut Instant,
        span: Duration,
        every: Duration,
        delay: Duration,
    ) -> (u32, u32) {
        let (mut admitted, mut refused) = (0, 0);
        let end = *now + span;
        while *now < end {
            match admission.decide(*now) {
                Verdict::Admit => {
                    admitted += 1;
                    admission.sent(*next_id, *now);
                    admission.started(*next_id, *now + delay);
                    *next_id += 1;
                }
                Verdict::Refuse => refused += 1,
            }
            *now += every;
        }
        (admitted, refused)
    }

    #[test]
    fn a_box_that_starts_instances_promptly_refuses_nothing() {
        let mut now = Instant::now();
        let mut admission = Admission::new(Some(TARGET), now);
        let mut id = 1;
        let (admitted, refused) = feed(
            &mut admission,
            &mut id,
            &mut now,
            10 * INTERVAL * 10,
            MS,
            2 * MS,
        );
        assert_eq!(refused, 0);
        assert_eq!(admitted, 10_000);
        assert_eq!(admission.stats().refused_share, 0.0);
    }

    #[test]
    fn a_standing_start_delay_raises_the_refused_share_to_its_cap_and_no_further() {
        let mut now = Instant::now();
        let mut admission = Admission::new(Some(TARGET), now);
        let mut id = 1;
        let (admitted, refused) = feed(
            &mut admission,
            &mut id,
            &mut now,
            Duration::from_secs(5),
            MS,
            TARGET * 2,
        );
        assert!(refused > 0);
        assert_eq!(admission.stats().refused_share, MAX_REFUSED_SHARE);
        // Even at the cap one start in ten still goes through (and keeps
        // measuring).
        assert!(admitted >= 5000 / 10, "{admitted} admitted");
        assert_eq!(admission.stats().refused_total, u64::from(refused));
    }

    #[test]
    fn one_slow_start_among_prompt_ones_is_a_burst_not_overload() {
        let mut now = Instant::now();
        let mut admission = Admission::new(Some(TARGET), now);
        let mut id = 1;
        for _ in 0..50 {
            // One start per interval takes a whole second; the rest of the
            // interval's starts are prompt.
            admission.sent(id, now);
            admission.started(id, now + Duration::from_secs(1));
            id += 1;
            let (_, refused) = feed(&mut admission, &mut id, &mut now, INTERVAL, 10 * MS, MS);
            assert_eq!(refused, 0);
        }
    }

    #[test]
    fn stalled_workers_count_as_overload_even_though_nothing_starts() {
        let mut now = Instant::now();
        let mut admission = Admission::new(Some(TARGET), now);
        // Starts sent, none runs (the workers are stopped).
        let mut refused = 0;
        for id in 1..=100 {
            match admission.decide(now) {
                Verdict::Admit => admission.sent(id, now),
                Verdict::Refuse => refused += 1,
            }
            now += 10 * MS;
        }
        assert!(refused > 0, "a stall of 1 s refused nothing");
        assert!(admission.stats().refused_share > 0.5);
    }

    #[test]
    fn the_refused_share_falls_back_to_zero_once_starts_are_prompt_again() {
        let mut now = Instant::now();
        let mut admission = Admission::new(Some(TARGET), now);
        let mut id = 1;
        feed(
            &mut admission,
            &mut id,
            &mut now,
            Duration::from_secs(2),
            MS,
            TARGET * 4,
        );
        assert!(admission.stats().refused_share > 0.0);
        // MAX_REFUSED_SHARE / LOWER intervals bring it back to zero.
        let (_, refused_late) = feed(
            &mut admission,
            &mut id,
            &mut now,
            Duration::from_secs(3),
            MS,
            MS,
        );
        assert!(refused_late > 0, "it falls gradually, not at once");
        assert_eq!(admission.stats().refused_share, 0.0);
        let (admitted, refused) = feed(&mut admission, &mut id, &mut now, INTERVAL, MS, MS);
        assert_eq!((admitted, refused), (100, 0));
    }

    #[test]
    fn a_share_of_a_quarter_refuses_exactly_every_fourth_start() {
        let now = Instant::now();
        let mut admission = Admission::new(Some(TARGET), now);
        admission.refused_share = 0.25;
        let verdicts: Vec<_> = (0..8).map(|_| admission.decide(now)).collect();
        let refused = verdicts.iter().filter(|v| **v == Verdict::Refuse).count();
        assert_eq!(refused, 2);
        assert_eq!(verdicts[3], Verdict::Refuse);
        assert_eq!(verdicts[7], Verdict::Refuse);
    }

    #[test]
    fn with_no_target_every_start_is_admitted_however_late() {
        let mut now = Instant::now();
        let mut admission = Admission::new(None, now);
        let mut id = 1;
        let (admitted, refused) = feed(
            &mut admission,
            &mut id,
            &mut now,
            Duration::from_secs(2),
            MS,
            Duration::from_secs(1),
        );
        assert_eq!((admitted, refused), (2000, 0));
    }

    #[test]
    fn a_start_that_never_runs_is_forgotten_without_a_sample() {
        let now = Instant::now();
        let mut admission = Admission::new(Some(TARGET), now);
        admission.sent(1, now);
        admission.forget(1);
        assert_eq!(admission.stats().pending_starts, 0);
        // A long quiet spell afterwards raises nothing.
        assert_eq!(
            admission.decide(now + Duration::from_secs(10)),
            Verdict::Admit
        );
        assert_eq!(admission.stats().refused_share, 0.0);
    }
}
