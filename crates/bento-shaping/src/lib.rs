//! Traffic-analysis defenses for a Bento stream, driven by Maybenot.
//!
//! A [`Shaper`] runs one [Maybenot](https://maybenot.io) framework for one
//! direction of one attachment. It does no I/O: the stream's writer tells it
//! what it sent ([`Shaper::sent_normal`]), asks whether real data may go
//! now ([`Shaper::is_blocking`]), sleeps until [`Shaper::next_wakeup`], and
//! then writes what [`Shaper::poll`] says: padding cells, or cells of real
//! data sent in place of padding while blocking holds real output back.
//!
//! The unit Maybenot counts in is the *cell*: [`CELL_LEN`] bytes on the
//! wire. A padding cell is one `Padding` frame of exactly that size; a data
//! cell is a data frame (`Output` or `Input`) plus, when the data does not
//! fill it, a `Padding` frame that does (see [`data_cell`]), so every
//! paced cell is the same size whatever it carries.
//!
//! The parameters of each [`Defense`] are fixed here, not chosen by users:
//! everyone who asks for `front` must look alike.

use std::time::{Duration, Instant};

use bento_protocol::{FRAME_HEADER_LEN, FrameType, encode_data_header};
use bytes::{BufMut, BytesMut};
use maybenot::{
    Framework, Machine, MachineId, Timer, TriggerAction, TriggerEvent,
    action::Action,
    constants::MAX_SAMPLED_BLOCK_DURATION,
    dist::{Dist, DistType},
    event::Event,
    state::{State, Trans},
};
use rand::SeedableRng;
use rand::rngs::StdRng;

pub use bento_policy::Defense;

/// Bytes of one shaped cell on the wire, frame headers included: the
/// stream data one Tor relay cell carries (`RELAY_PAYLOAD_SIZE`, 498 of its
/// 509-byte payload). A paced defense writes its cells one at a time, and
/// tor packages each write into relay cells as it comes, so a shaped cell
/// of exactly this size fills one Tor cell; at 512 bytes each spanned two
/// (the second 14 bytes full), which doubled what the guard saw of every
/// paced defense.
pub const CELL_LEN: usize = 498;

/// Payload of a `Padding` frame that fills a whole cell.
const PADDING_CELL_DATA: usize = CELL_LEN - FRAME_HEADER_LEN;

/// Most data one cell carries when a `Padding` frame must follow it (the
/// filler needs at least its own header).
const DATA_WITH_FILLER: usize = CELL_LEN - 2 * FRAME_HEADER_LEN;

/// At most this many rounds of timer expiry per [`Shaper::poll`]: a machine
/// that keeps scheduling zero-timeout actions cannot spin the writer.
const MAX_ROUNDS_PER_POLL: usize = 256;

/// Cells in `wire_bytes` bytes, rounded up: what Maybenot counts as sent.
pub fn cells(wire_bytes: usize) -> u64 {
    wire_bytes.div_ceil(CELL_LEN) as u64
}

/// Append one padding cell (a `Padding` frame of exactly [`CELL_LEN`]
/// bytes) to `out`. The filler is zeros: the stream is encrypted by TLS or
/// Tor below, so its value never shows.
pub fn padding_cell(out: &mut BytesMut) {
    out.put_slice(&encode_data_header(FrameType::Padding, PADDING_CELL_DATA));
    out.put_bytes(0, PADDING_CELL_DATA);
}

/// Append one data cell of exactly [`CELL_LEN`] bytes carrying the front
/// of `data` in a `frame_type` frame (`Output` or `Input`), filled up with
/// a `Padding` frame when the data is shorter than a cell. Returns how many
/// bytes of `data` it carries (at least one, if `data` is not empty).
pub fn data_cell(out: &mut BytesMut, frame_type: FrameType, data: &[u8]) -> usize {
    let n = if data.len() >= PADDING_CELL_DATA {
        PADDING_CELL_DATA
    } else {
        data.len().min(DATA_WITH_FILLER)
    };
    out.put_slice(&encode_data_header(frame_type, n));
    out.put_slice(&data[..n]);
    if n < PADDING_CELL_DATA {
        let filler = CELL_LEN - 2 * FRAME_HEADER_LEN - n;
        out.put_slice(&encode_data_header(FrameType::Padding, filler));
        out.put_bytes(0, filler);
    }
    n
}

/// Which end of the stream a shaper runs at: the machines differ (the box
/// sends the bulk of a web page, the client little).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The box's output to the client.
    Box,
    /// The client's input to the box.
    Client,
}

/// Why a shaper could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShapingError {
    /// The operating system gave no randomness for the machines.
    #[error("no randomness for the defense's machines: {0}")]
    Randomness(String),
    /// A machine or limit Maybenot refused (a bug in this crate's tables).
    /// The message does not name the defense: it may end up in a log, and
    /// which defense a session uses is private.
    #[error("a defense's machines are invalid: {message}")]
    InvalidMachine {
        /// The defense.
        defense: Defense,
        /// Maybenot's message.
        message: String,
    },
}

/// What [`Shaper::poll`] asks the writer to send now, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// One padding cell ([`padding_cell`]).
    Padding,
    /// One data cell ([`data_cell`]) in place of padding: real data that
    /// blocking holds back goes out at the pace the padding sets.
    Data,
}

/// An action a machine scheduled for later.
#[derive(Debug, Clone, Copy)]
enum Pending {
    Padding {
        bypass: bool,
        replace: bool,
    },
    Block {
        duration: Duration,
        bypass: bool,
        replace: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct Blocking {
    until: Instant,
    bypassable: bool,
}

/// One direction of one attachment, shaped by one defense.
pub struct Shaper {
    framework: Framework<Vec<Machine>, StdRng>,
    /// Per machine: its scheduled padding or blocking action.
    pending: Vec<Option<(Instant, Pending)>>,
    /// Per machine: when its internal timer ends.
    timers: Vec<Option<Instant>>,
    blocking: Option<Blocking>,
    max_padding_bytes: u64,
    padding_bytes: u64,
    normal_cells: u64,
    /// The time the framework last saw; never goes backwards.
    clock: Instant,
}

impl std::fmt::Debug for Shaper {
    // Which defense a session uses is private to it: not even debug output
    // names it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shaper").finish_non_exhaustive()
    }
}

impl Shaper {
    /// A shaper for `side` of a stream shaped by `defense`, sending at most
    /// `max_padding_bytes` of padding (beyond that it keeps pacing real
    /// data but pads no more).
    pub fn new(
        defense: Defense,
        side: Side,
        max_padding_bytes: u64,
        now: Instant,
    ) -> Result<Self, ShapingError> {
        let mut rng =
            StdRng::try_from_os_rng().map_err(|e| ShapingError::Randomness(e.to_string()))?;
        let machines = machines(defense, side, &mut rng);
        let n = machines.len();
        // Limits are the machines' own and ours (`max_padding_bytes`), not
        // a framework-wide fraction: the defenses' published parameters
        // already bound their overhead.
        let framework = Framework::new(machines, 0.0, 0.0, now, rng).map_err(|e| {
            ShapingError::InvalidMachine {
                defense,
                message: e.to_string(),
            }
        })?;
        Ok(Self {
            framework,
            pending: vec![None; n],
            timers: vec![None; n],
            blocking: None,
            max_padding_bytes,
            padding_bytes: 0,
            normal_cells: 0,
            clock: now,
        })
    }

    /// Padding bytes sent so far.
    pub fn padding_bytes(&self) -> u64 {
        self.padding_bytes
    }

    /// Real cells sent so far.
    pub fn normal_cells(&self) -> u64 {
        self.normal_cells
    }

    /// Whether real data must wait (it may still go out as [`Emit::Data`]).
    pub fn is_blocking(&self, now: Instant) -> bool {
        self.blocking.is_some_and(|b| b.until > now)
    }

    /// When [`Shaper::poll`] next has something to do.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let actions = self.pending.iter().flatten().map(|(at, _)| *at);
        let timers = self.timers.iter().flatten().copied();
        let unblock = self.blocking.map(|b| b.until);
        actions.chain(timers).chain(unblock).min()
    }

    /// The writer sent `wire_bytes` of real frames (counted in cells).
    pub fn sent_normal(&mut self, wire_bytes: usize, now: Instant) {
        let n = cells(wire_bytes);
        self.normal_cells += n;
        let mut events = Vec::with_capacity(2 * n as usize);
        for _ in 0..n {
            events.push(TriggerEvent::NormalSent);
            events.push(TriggerEvent::TunnelSent);
        }
        self.trigger(&events, now);
    }

    /// The reader received `normal` real cells and `padding` padding
    /// cells from the peer; returns the cells due in answer, in order.
    ///
    /// The cells are fed one at a time, each followed by a poll: Maybenot
    /// keeps one pending action per machine, so a batch would let the last
    /// cell's action replace the others (a RegulaTor client, which pads
    /// once per U cells received, would pad once per batch).
    pub fn received(&mut self, normal: u64, padding: u64, now: Instant) -> Vec<Emit> {
        let mut out = Vec::new();
        for i in 0..normal.saturating_add(padding) {
            let kind = if i < normal {
                TriggerEvent::NormalRecv
            } else {
                TriggerEvent::PaddingRecv
            };
            self.trigger(&[TriggerEvent::TunnelRecv, kind], now);
            out.extend(self.poll(now, 0));
        }
        out
    }

    /// Carry out every action due by `now`; returns the cells to send, in
    /// order. `data_cells_waiting` is how many cells of real data the
    /// writer holds (padding that may be replaced takes those instead).
    ///
    /// Each due action is processed at the instant it was due, not at
    /// `now`: a writer woken late catches up on the same grid instead of
    /// drifting, so a constant-rate defense stays constant-rate.
    pub fn poll(&mut self, now: Instant, mut data_cells_waiting: u64) -> Vec<Emit> {
        let mut out = Vec::new();
        for _ in 0..MAX_ROUNDS_PER_POLL {
            let Some((at, what)) = self.earliest_due(now) else {
                break;
            };
            let mut events = Vec::new();
            match what {
                Due::Unblock => {
                    self.blocking = None;
                    events.push(TriggerEvent::BlockingEnd);
                }
                Due::Timer(m) => {
                    self.timers[m] = None;
                    events.push(TriggerEvent::TimerEnd {
                        machine: MachineId::from_raw(m),
                    });
                }
                Due::Action(m) => {
                    let Some((_, action)) = self.pending[m].take() else {
                        continue;
                    };
                    let machine = MachineId::from_raw(m);
                    match action {
                        Pending::Padding { bypass, replace } => {
                            let held = self
                                .blocking
                                .is_some_and(|b| b.until > at && !(bypass && b.bypassable));
                            events.push(TriggerEvent::PaddingSent { machine });
                            if held {
                                // Queued behind a block that padding may not
                                // bypass: we drop it instead (the machine
                                // is told, so it carries on).
                            } else if replace && data_cells_waiting > 0 {
                                data_cells_waiting -= 1;
                                self.normal_cells += 1;
                                out.push(Emit::Data);
                                events.push(TriggerEvent::NormalSent);
                                events.push(TriggerEvent::TunnelSent);
                            } else {
                                if self.padding_bytes + CELL_LEN as u64 <= self.max_padding_bytes {
                                    self.padding_bytes += CELL_LEN as u64;
                                    out.push(Emit::Padding);
                                }
                                // Past the cap nothing is sent, but the
                                // machine sees its cell go so that it keeps
                                // its pace for real data.
                                events.push(TriggerEvent::TunnelSent);
                            }
                        }
                        Pending::Block {
                            duration,
                            bypass,
                            replace,
                        } => {
                            let until = at + duration;
                            let until = match self.blocking {
                                Some(b) if b.until > at && !replace => b.until.max(until),
                                _ => until,
                            };
                            self.blocking = Some(Blocking {
                                until,
                                bypassable: bypass,
                            });
                            events.push(TriggerEvent::BlockingBegin { machine });
                        }
                    }
                }
            }
            self.trigger(&events, at);
        }
        out
    }

    fn earliest_due(&self, now: Instant) -> Option<(Instant, Due)> {
        let mut best: Option<(Instant, Due)> = None;
        let mut consider = |at: Instant, due: Due| {
            if at <= now && best.as_ref().is_none_or(|(b, _)| at < *b) {
                best = Some((at, due));
            }
        };
        if let Some(b) = self.blocking {
            consider(b.until, Due::Unblock);
        }
        for (m, timer) in self.timers.iter().enumerate() {
            if let Some(at) = timer {
                consider(*at, Due::Timer(m));
            }
        }
        for (m, pending) in self.pending.iter().enumerate() {
            if let Some((at, _)) = pending {
                consider(*at, Due::Action(m));
            }
        }
        best
    }

    /// Feed events to the framework at `at` (never before the last time it
    /// saw) and schedule the actions it returns.
    fn trigger(&mut self, events: &[TriggerEvent], at: Instant) {
        let at = at.max(self.clock);
        self.clock = at;
        let actions: Vec<TriggerAction> =
            self.framework.trigger_events(events, at).cloned().collect();
        let mut follow_up = Vec::new();
        for action in actions {
            if let TriggerAction::UpdateTimer { machine, .. } = action {
                follow_up.push(TriggerEvent::TimerBegin { machine });
            }
            self.schedule(action, at);
        }
        if !follow_up.is_empty() {
            // Maybenot wants TimerBegin for every timer set; what that
            // triggers is scheduled without a further round, so one call
            // does a bounded amount of work whatever the machines say.
            let actions: Vec<TriggerAction> = self
                .framework
                .trigger_events(&follow_up, at)
                .cloned()
                .collect();
            for action in actions {
                self.schedule(action, at);
            }
        }
    }

    /// Schedule an action the framework returned.
    fn schedule(&mut self, action: TriggerAction, at: Instant) {
        match action {
            TriggerAction::Cancel { machine, timer } => {
                let m = machine.into_raw();
                if matches!(timer, Timer::Action | Timer::All) {
                    self.pending[m] = None;
                }
                if matches!(timer, Timer::Internal | Timer::All) {
                    self.timers[m] = None;
                }
            }
            TriggerAction::SendPadding {
                timeout,
                bypass,
                replace,
                machine,
            } => {
                self.pending[machine.into_raw()] =
                    Some((at + timeout, Pending::Padding { bypass, replace }));
            }
            TriggerAction::BlockOutgoing {
                timeout,
                duration,
                bypass,
                replace,
                machine,
            } => {
                self.pending[machine.into_raw()] = Some((
                    at + timeout,
                    Pending::Block {
                        duration,
                        bypass,
                        replace,
                    },
                ));
            }
            TriggerAction::UpdateTimer {
                duration,
                replace,
                machine,
            } => {
                let m = machine.into_raw();
                let until = at + duration;
                self.timers[m] = Some(match self.timers[m] {
                    Some(old) if !replace => old.max(until),
                    _ => until,
                });
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Due {
    Unblock,
    Timer(usize),
    Action(usize),
}

/// Seconds between cells of the `constant` defense (100 cells/s, 49.8 KB/s).
pub const CONSTANT_CELL_INTERVAL: Duration = Duration::from_millis(10);

/// Most data bytes per second the `constant` defense carries: one cell
/// per [`CONSTANT_CELL_INTERVAL`], each with at most [`CELL_LEN`] less one
/// frame header of data (49 300 B/s). Data beyond it waits its turn, so a
/// stream that needs more takes longer, never shows a burst.
pub const CONSTANT_DATA_PER_S: u64 =
    PADDING_CELL_DATA as u64 * 1_000_000 / CONSTANT_CELL_INTERVAL.as_micros() as u64;

/// The machines of `defense` at `side`, with the published parameters.
fn machines(defense: Defense, side: Side, rng: &mut StdRng) -> Vec<Machine> {
    use maybenot_machines::{front, regulator, tamaraw};
    match (defense, side) {
        // FRONT's parameters from Gong and Wang (2020): N_s = 1700 cells,
        // W in [1, 14] s at the server, N_c = 1100, W in [1, 14] s at the
        // client.
        // Maybenot counts time in microseconds, windows included.
        (Defense::Front, Side::Box) => front::front(1700, 1e6, 14e6, 5, rng),
        (Defense::Front, Side::Client) => front::front(1100, 1e6, 14e6, 5, rng),
        // Tamaraw (Cai et al.): 5 ms per cell from the server, 20 ms from
        // the client; stop after 2 s without real data.
        (Defense::Tamaraw, Side::Box) => tamaraw::tamaraw(0.005, 2_000_000.0),
        (Defense::Tamaraw, Side::Client) => tamaraw::tamaraw(0.020, 2_000_000.0),
        // RegulaTor's parameters from Holland and Hopper (2022): R = 277,
        // D = 0.94, T = 3.55, N = 3550 at the server; U = 3.95, C = 1.77
        // at the client.
        (Defense::Regulator, Side::Box) => {
            regulator::regulator_server(277.0, 0.94, 3.55, 3550.0, 100)
        }
        (Defense::Regulator, Side::Client) => regulator::regulator_client(3.95, 1.77),
        (Defense::Constant, _) => vec![constant_rate(CONSTANT_CELL_INTERVAL)],
        // A defense added to the policy's list but not here shapes nothing
        // rather than failing the session.
        (_, _) => Vec::new(),
    }
}

/// One cell every `interval` from the first real cell on, for as long as
/// the stream lasts: real data waits for its slot, padding fills the
/// slots it does not take. Unlike Tamaraw it never stops on its own, so
/// the wire shows nothing of when the function sends.
fn constant_rate(interval: Duration) -> Machine {
    let fixed = |value: f64| Dist {
        dist: DistType::Uniform {
            low: 0.0,
            high: 0.0,
        },
        start: value,
        max: 0.0,
    };
    // 0: wait for the first real cell.
    let start = State::new(enum_map::enum_map! {
        Event::NormalSent => vec![Trans(1, 1.0)],
        _ => vec![],
    });
    // 1: block real data (padding may bypass, and real data may take a
    // padding slot) for the longest a machine may block; renewed on end.
    let mut block = State::new(enum_map::enum_map! {
        Event::BlockingBegin => vec![Trans(2, 1.0)],
        _ => vec![],
    });
    block.action = Some(Action::BlockOutgoing {
        bypass: true,
        replace: true,
        timeout: fixed(0.0),
        duration: fixed(MAX_SAMPLED_BLOCK_DURATION),
        limit: None,
    });
    // 2: a cell every `interval`.
    let mut pad = State::new(enum_map::enum_map! {
        Event::PaddingSent => vec![Trans(2, 1.0)],
        Event::BlockingEnd => vec![Trans(1, 1.0)],
        _ => vec![],
    });
    pad.action = Some(Action::SendPadding {
        bypass: true,
        replace: true,
        timeout: fixed(interval.as_micros() as f64),
        limit: None,
    });
    // Machine::new only fails on an invalid state table; this one is fixed
    // and covered by the tests below, so fall back to no machine at all.
    Machine::new(u64::MAX, 0.0, u64::MAX, 0.0, vec![start, block, pad])
        .unwrap_or_else(|_| no_machine())
}

fn no_machine() -> Machine {
    let state = State::new(enum_map::enum_map! { _ => vec![] });
    // A single state with no transitions is always valid.
    #[allow(clippy::expect_used)]
    Machine::new(0, 0.0, 0, 0.0, vec![state]).expect("a machine with one empty state is valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bento_protocol::{Frame, FrameDecoder};

    fn decode_all(mut buf: BytesMut) -> Vec<Frame> {
        let mut decoder = FrameDecoder::default();
        let mut frames = Vec::new();
        while let Some(frame) = decoder.decode(&mut buf).unwrap() {
            frames.push(frame);
        }
        assert!(buf.is_empty());
        frames
    }

    #[test]
    fn every_cell_is_exactly_one_cell_long_whatever_it_carries() {
        let data = vec![7u8; 2 * CELL_LEN];
        for len in 0..(2 * CELL_LEN) {
            let mut out = BytesMut::new();
            let n = data_cell(&mut out, FrameType::Output, &data[..len]);
            assert_eq!(out.len(), CELL_LEN, "data of {len} bytes");
            assert!(n <= len && (len == 0 || n > 0));
            let frames = decode_all(out);
            match &frames[0] {
                Frame::Output { data } => assert_eq!(data.len(), n),
                other => panic!("{other:?}"),
            }
        }
        let mut out = BytesMut::new();
        padding_cell(&mut out);
        assert_eq!(out.len(), CELL_LEN);
        assert!(matches!(decode_all(out)[..], [Frame::Padding { .. }]));
    }

    #[test]
    fn every_defense_builds_valid_machines_on_both_sides() {
        let now = Instant::now();
        for defense in Defense::ALL {
            for side in [Side::Box, Side::Client] {
                let shaper = Shaper::new(defense, side, u64::MAX, now).unwrap();
                assert!(shaper.framework.num_machines() > 0, "{defense} {side:?}");
            }
        }
    }

    /// Run a shaper over a simulated clock: `real_at(t)` says how many
    /// real cells the writer has by time `t`. Returns the time of every
    /// cell put on the wire and whether it was padding.
    fn simulate(
        defense: Defense,
        cap: u64,
        seconds: u64,
        real_at: impl Fn(Duration) -> u64,
    ) -> (Vec<(Duration, bool)>, Shaper) {
        let t0 = Instant::now();
        let mut shaper = Shaper::new(defense, Side::Box, cap, t0).unwrap();
        let mut wire = Vec::new();
        let mut sent_real = 0u64;
        // The Attached frame opens the stream: one real cell.
        shaper.sent_normal(1, t0);
        let step = Duration::from_millis(1);
        let mut t = Duration::ZERO;
        while t < Duration::from_secs(seconds) {
            t += step;
            let now = t0 + t;
            let waiting = real_at(t).saturating_sub(sent_real);
            for emit in shaper.poll(now, waiting) {
                match emit {
                    Emit::Data => {
                        sent_real += 1;
                        wire.push((t, false));
                    }
                    Emit::Padding => wire.push((t, true)),
                }
            }
            let waiting = real_at(t).saturating_sub(sent_real);
            if waiting > 0 && !shaper.is_blocking(now) {
                shaper.sent_normal(waiting as usize * CELL_LEN, now);
                for _ in 0..waiting {
                    wire.push((t, false));
                }
                sent_real += waiting;
            }
        }
        (wire, shaper)
    }

    #[test]
    fn constant_rate_holds_one_cell_per_interval_while_the_function_stalls() {
        // 100 real cells at once, then nothing until 3 s, then 100 more.
        let (wire, _) = simulate(Defense::Constant, u64::MAX, 6, |t| {
            if t < Duration::from_secs(3) { 100 } else { 200 }
        });
        for half in 0..11u64 {
            let lo = Duration::from_millis(500 * half + 20);
            let hi = lo + Duration::from_millis(500);
            let n = wire.iter().filter(|(t, _)| *t >= lo && *t < hi).count();
            assert!(
                (49..=51).contains(&n),
                "{n} cells in the 500 ms from {lo:?}"
            );
        }
        // The stall is padding, the real data rode inside the flow.
        let stalled = Duration::from_millis(1100)..Duration::from_secs(3);
        assert!(
            wire.iter()
                .filter(|(t, _)| stalled.contains(t))
                .all(|(_, pad)| *pad)
        );
        assert_eq!(wire.iter().filter(|(_, pad)| !pad).count(), 200);
    }

    #[test]
    fn padding_stops_at_the_cap_but_real_data_keeps_its_pace() {
        let cap = 10 * CELL_LEN as u64;
        let (wire, shaper) = simulate(Defense::Constant, cap, 2, |t| {
            if t < Duration::from_secs(1) { 0 } else { 20 }
        });
        assert_eq!(shaper.padding_bytes(), cap);
        assert_eq!(wire.iter().filter(|(_, pad)| *pad).count(), 10);
        // The 20 real cells still went at one per 10 ms, not in a burst.
        let real: Vec<Duration> = wire.iter().filter(|(_, p)| !p).map(|(t, _)| *t).collect();
        assert_eq!(real.len(), 20);
        assert!(real[19] - real[0] >= Duration::from_millis(180), "{real:?}");
    }

    #[test]
    fn front_pads_without_delaying_real_data() {
        let (wire, shaper) = simulate(Defense::Front, u64::MAX, 20, |t| {
            if t < Duration::from_millis(100) {
                0
            } else {
                2000
            }
        });
        let mut hist = [0u32; 20];
        for (t, pad) in &wire {
            if *pad {
                hist[(t.as_secs() as usize).min(19)] += 1;
            }
        }
        // FRONT spreads its padding over a window of seconds, not a burst.
        let busy_seconds = hist.iter().filter(|n| **n > 0).count();
        assert!(busy_seconds >= 3, "padding per second: {hist:?}");
        let first_real = wire.iter().find(|(_, pad)| !pad).map(|(t, _)| *t);
        assert_eq!(first_real, Some(Duration::from_millis(100)));
        assert!(shaper.padding_bytes() > 0);
        assert!(shaper.padding_bytes() <= 1700 * CELL_LEN as u64);
    }

    #[test]
    fn a_regulator_client_answers_a_batch_of_received_cells_cell_by_cell() {
        let t0 = Instant::now();
        let mut shaper = Shaper::new(Defense::Regulator, Side::Client, u64::MAX, t0).unwrap();
        shaper.sent_normal(1, t0);
        let mut padding = 0;
        for i in 1..=40u32 {
            // 40 batches of 10 cells, 25 ms apart.
            let now = t0 + Duration::from_millis(25) * i;
            padding += shaper.received(10, 0, now).len();
            padding += shaper.poll(now, 0).len();
        }
        // One cell per U = 3.95 received: ~100 for 400, not one per batch.
        assert!((60..=140).contains(&padding), "{padding} padding cells");
    }

    #[test]
    fn tamaraw_and_regulator_carry_all_real_data_eventually() {
        for defense in [Defense::Tamaraw, Defense::Regulator] {
            let (wire, _) = simulate(defense, u64::MAX, 30, |t| {
                if t < Duration::from_millis(50) {
                    0
                } else {
                    2000
                }
            });
            let real = wire.iter().filter(|(_, pad)| !pad).count();
            assert_eq!(real, 2000, "{defense}");
        }
    }
}
