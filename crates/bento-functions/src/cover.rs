//! The Cover function: constant-rate cover traffic with a box, both
//! directions (`functions/cover/`; see docs/functions/cover.md).
//!
//! Once the box has the client's first cell, both sides send exactly
//! `round(rate × duration)` cells of exactly `cell` bytes, one every
//! `1/rate` seconds. Real data rides inside the cells in place of padding.
//! The flow engine here (`run_flow`) is shared with the Browser
//! (its `browse` entry), which can carry its request and page inside it.
//!
//! The function paces its cells with `api.sleep`, but a sandbox without
//! threads cannot keep time while the Browser waits for a slow origin: its
//! cells would stop, then burst. So the flow is invoked with the box's
//! host-side [`HOST_PACING`] defense: the box puts one cell of
//! [`bento_shaping::CELL_LEN`] bytes on the wire every
//! [`bento_shaping::CONSTANT_CELL_INTERVAL`], carrying the function's
//! cells when it has them and padding when it has not, so the wire stays
//! constant-rate whatever the origin does (docs/functions/cover.md).
//!
//! A cell (see functions/cover/cover.py): `flags: u8` (0 padding, 1 data,
//! 3 data + end of message), `length: u16` (big-endian), `length` payload
//! bytes, zeros up to exactly `cell` bytes.

use std::time::{Duration, Instant};

use bento_client::{ClientError, Target};
use bento_protocol::ErrorCode;
use bytes::Bytes;

use crate::{Console, Error};

/// The function's source.
pub const SOURCE: &str = include_str!("../../../functions/cover/cover.py");
/// The function's manifest; [`manifest`] sets its limits for a flow.
pub const MANIFEST: &str = include_str!("../../../functions/cover/cover.toml");
/// What the function's own errors start with in a traceback's last line.
pub(crate) const ERROR_PREFIX: &str = "CoverError: ";

/// Bytes of a cell's header (flags and length).
const CELL_HEADER: usize = 3;
const DATA: u8 = 1;
const END: u8 = 2;
/// A protocol frame's header (u32 length, u8 type): what each Output and
/// Input frame adds on the wire around its data.
pub const FRAME_HEADER: u64 = bento_protocol::FRAME_HEADER_LEN as u64;
/// The smallest cell the function accepts, bytes.
pub const MIN_CELL: u64 = 64;
/// The largest cell the function accepts, bytes.
pub const MAX_CELL: u64 = 65536;
/// The highest rate the function accepts, cells per second.
pub const MAX_RATE: f64 = 1000.0;
/// The most cells a flow may have each way.
const MAX_CELLS: u64 = 1_000_000;
/// The largest request the Cover's `browse` entry reads from the client's
/// cells, bytes.
pub const MAX_REQUEST: usize = 65536;
/// What the function spends waiting for the client's first cell and, after
/// its own last cell, for the client's last ones (at most): the manifest's
/// wall-clock limit is the flow's duration plus this.
const WAIT_SLACK_MS: u64 = 90_000;
/// CPU time the function may use per cell (one each way): about twice
/// what a box's worker process was measured to spend (160 µs per 64-byte
/// cell at 500/s, 330 µs per 4 KiB cell at 100/s, 1.2 ms per 64 KiB cell;
/// docs/functions/cover.md), plus start-up.
const CPU_US_PER_CELL: u64 = 600;
const CPU_US_PER_CELL_BYTE_DIVISOR: u64 = 32;
const CPU_BASE_MS: u64 = 1000;

/// The box's defense that paces a cover flow's output on the host.
pub const HOST_PACING: bento_client::Defense = bento_client::Defense::Constant;

/// The shape of a flow, checked.
#[derive(Debug, Clone, Copy)]
pub struct FlowSpec {
    /// Cells per second, each way.
    pub rate: f64,
    /// Bytes per cell, header included.
    pub cell: usize,
    /// How long the flow lasts.
    pub duration: Duration,
    /// Cells each way.
    pub cells: u64,
}

impl FlowSpec {
    /// Check the numbers the way the function does, so a bad flow is
    /// refused before anything is sent.
    pub fn new(rate: f64, cell: u64, duration: Duration) -> Result<Self, Error> {
        if !rate.is_finite() || rate <= 0.0 || rate > MAX_RATE {
            return Err(Error::Request(format!(
                "the rate must be more than 0 and at most {MAX_RATE} cells/s, not {rate}"
            )));
        }
        if !(MIN_CELL..=MAX_CELL).contains(&cell) {
            return Err(Error::Request(format!(
                "the cell size must be from {MIN_CELL} to {MAX_CELL} bytes, not {cell}"
            )));
        }
        let cells = (rate * duration.as_secs_f64()).round();
        if cells < 1.0 || cells > MAX_CELLS as f64 {
            return Err(Error::Request(format!(
                "rate × duration must be from 1 to {MAX_CELLS} cells, not {cells} ({rate}/s for {:.3} s)",
                duration.as_secs_f64()
            )));
        }
        Ok(Self {
            rate,
            cell: cell as usize,
            duration,
            cells: cells as u64,
        })
    }

    /// Payload bytes the whole flow can carry one way.
    pub fn capacity(&self) -> u64 {
        self.cells * (self.cell - CELL_HEADER) as u64
    }

    /// The session bandwidth the flow needs, KiB/s: both directions are
    /// charged to one bucket; a quarter more so the flow is never throttled
    /// (throttling would bunch its cells).
    pub fn bandwidth_kib_per_s(&self) -> u64 {
        let bytes = 2.0 * self.rate * self.cell as f64 * 1.25;
        ((bytes / 1024.0).ceil() as u64).max(16)
    }

    /// How long the box's output takes on the wire: the flow's duration,
    /// or longer when its cells carry more than [`HOST_PACING`] does in
    /// that time (the function's sends then wait for the box's output
    /// buffer, and the flow ends when its last cell is on the wire).
    pub fn wire_duration(&self) -> Duration {
        let bytes = self.cells.saturating_mul(self.cell as u64);
        let paced =
            Duration::from_millis(bytes.saturating_mul(1000) / bento_shaping::CONSTANT_DATA_PER_S);
        self.duration.max(paced)
    }

    /// The wall-clock limit the flow needs, ms.
    pub fn wall_ms(&self) -> u64 {
        self.wire_duration().as_millis() as u64 + WAIT_SLACK_MS
    }

    /// The CPU time the flow needs, ms.
    pub fn cpu_ms(&self) -> u64 {
        let per_cell = CPU_US_PER_CELL + self.cell as u64 / CPU_US_PER_CELL_BYTE_DIVISOR;
        CPU_BASE_MS + (self.cells * per_cell).div_ceil(1000)
    }

    /// Fields for the function's entry: `[rate, cell, duration]`.
    fn args_json(&self) -> String {
        serde_json::json!([self.rate, self.cell, self.duration.as_secs_f64()]).to_string()
    }
}
/// `manifest` with `key = value` lines replaced (each key must be there).
pub(crate) fn set_manifest_keys(manifest: &str, keys: &[(&str, String)]) -> Result<String, Error> {
    let mut out = String::new();
    let mut found = vec![false; keys.len()];
    for line in manifest.lines() {
        let key = line.split('=').next().unwrap_or_default().trim();
        match keys.iter().position(|(k, _)| *k == key) {
            Some(i) if !line.trim_start().starts_with('#') => {
                out.push_str(&format!("{key} = {}\n", keys[i].1));
                found[i] = true;
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if let Some(i) = found.iter().position(|f| !f) {
        return Err(Error::Box(format!(
            "the built-in manifest has no `{}` line",
            keys[i].0
        )));
    }
    Ok(out)
}

/// The cover manifest with limits derived from the flow.
pub fn manifest(spec: &FlowSpec) -> Result<String, Error> {
    set_manifest_keys(
        MANIFEST,
        &[
            ("wall_ms", spec.wall_ms().to_string()),
            ("cpu_ms", spec.cpu_ms().to_string()),
            (
                "bandwidth_kib_per_s",
                spec.bandwidth_kib_per_s().to_string(),
            ),
        ],
    )
}

/// One cell: `payload` (at most `cell - 3` bytes) with `flags`.
fn encode_cell(cell: usize, flags: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(cell);
    out.push(flags);
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out.resize(cell, 0);
    Bytes::from(out)
}

/// The client's cells: `message` (if any) in the first ones, then padding.
struct Outgoing<'a> {
    cell: usize,
    message: Option<&'a [u8]>,
}

impl Outgoing<'_> {
    fn next_cell(&mut self) -> Bytes {
        let Some(rest) = self.message else {
            return encode_cell(self.cell, 0, &[]);
        };
        let room = self.cell - CELL_HEADER;
        if rest.len() > room {
            self.message = Some(&rest[room..]);
            encode_cell(self.cell, DATA, &rest[..room])
        } else {
            self.message = None;
            encode_cell(self.cell, DATA | END, rest)
        }
    }
}

/// The box's cells, reassembled from the Output byte stream and checked.
struct Incoming {
    cell: usize,
    cells: u64,
    max_message: usize,
    partial: Vec<u8>,
    received: u64,
    message: Vec<u8>,
    messages: Vec<Vec<u8>>,
}

impl Incoming {
    /// Take output bytes; returns how many whole cells they completed.
    fn take(&mut self, mut data: &[u8]) -> Result<u64, String> {
        let mut completed = 0;
        while !data.is_empty() {
            let want = self.cell - self.partial.len();
            let n = want.min(data.len());
            self.partial.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.partial.len() == self.cell {
                let cell = std::mem::take(&mut self.partial);
                self.cell_done(&cell)?;
                completed += 1;
            }
        }
        Ok(completed)
    }

    fn cell_done(&mut self, cell: &[u8]) -> Result<(), String> {
        self.received += 1;
        let n = self.received;
        if n > self.cells {
            return Err(format!(
                "the box sent more than the flow's {} cells",
                self.cells
            ));
        }
        let flags = cell[0];
        let length = usize::from(u16::from_be_bytes([cell[1], cell[2]]));
        let valid_flags = matches!(flags, 0 | DATA) || flags == DATA | END;
        if !valid_flags {
            return Err(format!("the box's cell {n} has invalid flags {flags}"));
        }
        if length > self.cell - CELL_HEADER
            || (flags == 0 && length != 0)
            || cell[CELL_HEADER + length..].iter().any(|&b| b != 0)
        {
            return Err(format!(
                "the box's cell {n} has a bad length or non-zero padding"
            ));
        }
        if flags & DATA != 0 {
            if self.message.len() + length > self.max_message {
                return Err(format!(
                    "the box sent a message of more than {} bytes",
                    self.max_message
                ));
            }
            self.message
                .extend_from_slice(&cell[CELL_HEADER..CELL_HEADER + length]);
            if flags & END != 0 {
                self.messages.push(std::mem::take(&mut self.message));
            }
        }
        Ok(())
    }
}

/// Bytes and cells in one reporting interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Interval {
    /// Output frames (data + 5-byte header each), End/Error included.
    pub down_bytes: u64,
    /// Input frames (cell + 5-byte header each), InputEnd included.
    pub up_bytes: u64,
    /// Cells from the box completed.
    pub down_cells: u64,
    /// Cells to the box sent.
    pub up_cells: u64,
    /// Output frames (how the box happened to cut its output).
    pub down_frames: u64,
}

/// What a finished flow carried and how.
pub struct FlowReport {
    /// Complete messages from the box.
    pub messages: Vec<Vec<u8>>,
    /// Bytes and cells per reporting interval.
    pub intervals: Vec<Interval>,
    /// The reporting interval.
    pub interval: Duration,
    /// How long the flow took.
    pub elapsed: Duration,
    /// How the session ended: `Ok` (the function returned) or its error.
    pub ended: Result<(), ClientError>,
}

impl FlowReport {
    /// Every interval added up.
    pub fn total(&self) -> Interval {
        self.intervals
            .iter()
            .fold(Interval::default(), |a, i| Interval {
                down_bytes: a.down_bytes + i.down_bytes,
                up_bytes: a.up_bytes + i.up_bytes,
                down_cells: a.down_cells + i.down_cells,
                up_cells: a.up_cells + i.up_cells,
                down_frames: a.down_frames + i.down_frames,
            })
    }

    /// The per-interval table as CSV.
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "interval_start_s,box_to_client_bytes,client_to_box_bytes,box_to_client_cells,client_to_box_cells,box_to_client_frames\n",
        );
        for (i, iv) in self.intervals.iter().enumerate() {
            out.push_str(&format!(
                "{:.3},{},{},{},{},{}\n",
                i as f64 * self.interval.as_secs_f64(),
                iv.down_bytes,
                iv.up_bytes,
                iv.down_cells,
                iv.up_cells,
                iv.down_frames
            ));
        }
        out
    }
}

/// What to run: the function, its manifest and entry, the client's message.
pub(crate) struct Flow<'a> {
    pub filename: &'a str,
    pub source: &'a str,
    pub manifest: &'a str,
    pub entry: &'a str,
    pub spec: FlowSpec,
    /// Carried to the box in the client's first cells.
    pub message: Option<&'a [u8]>,
    /// Largest message accepted from the box.
    pub max_message: usize,
    pub interval: Duration,
}

fn bucket(intervals: &mut Vec<Interval>, start: Instant, interval: Duration) -> &mut Interval {
    let i = (start.elapsed().as_nanos() / interval.as_nanos().max(1)) as usize;
    if intervals.len() <= i {
        intervals.resize(i + 1, Interval::default());
    }
    &mut intervals[i]
}

/// Store and invoke the function (its output paced by the box's
/// [`HOST_PACING`]), then run the flow to its end: one cell per tick to
/// the box, every cell from the box checked and counted.
pub(crate) async fn run_flow(
    target: &Target,
    flow: &Flow<'_>,
    console: &dyn Console,
) -> Result<FlowReport, Error> {
    let spec = flow.spec;
    let (_, mut attachment) = crate::Start {
        filename: flow.filename,
        source: flow.source,
        manifest: flow.manifest,
        entry: flow.entry,
        args: &spec.args_json(),
    }
    .attach_shaped(target, Some(HOST_PACING), crate::PadOwn::No)
    .await?;
    let input = attachment.input();
    let mut outgoing = Outgoing {
        cell: spec.cell,
        message: flow.message,
    };
    let mut incoming = Incoming {
        cell: spec.cell,
        cells: spec.cells,
        max_message: flow.max_message,
        partial: Vec::new(),
        received: 0,
        message: Vec::new(),
        messages: Vec::new(),
    };
    let mut intervals = Vec::new();
    let mut sent = 0u64;
    // Progress on stderr every tenth of the flow, at most every 5 s.
    let progress_every = (spec.cells / 10).max((spec.rate * 5.0) as u64).max(1);
    // An absolute schedule, like the function's: a late tick is made up at
    // once (Burst), so the count per interval evens out again.
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / spec.rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let ended = loop {
        tokio::select! {
            _ = ticker.tick(), if sent < spec.cells => {
                let cell = outgoing.next_cell();
                if input.send(cell).await.is_err() {
                    // The box ended the session; its reason is read next.
                    sent = spec.cells;
                    continue;
                }
                sent += 1;
                let iv = bucket(&mut intervals, start, flow.interval);
                iv.up_bytes += spec.cell as u64 + FRAME_HEADER;
                iv.up_cells += 1;
                if sent == spec.cells {
                    let _ = input.end().await;
                    bucket(&mut intervals, start, flow.interval).up_bytes += FRAME_HEADER;
                }
                if sent.is_multiple_of(progress_every) {
                    console.note(&format!("cover: {sent}/{} cells sent, {} received", spec.cells, incoming.received));
                }
            }
            next = attachment.next() => match next {
                Ok(Some(data)) => {
                    let completed = match incoming.take(&data) {
                        Ok(n) => n,
                        Err(e) => {
                            attachment.close().await;
                            return Err(Error::Box(e));
                        }
                    };
                    let iv = bucket(&mut intervals, start, flow.interval);
                    iv.down_bytes += data.len() as u64 + FRAME_HEADER;
                    iv.down_cells += completed;
                    iv.down_frames += 1;
                }
                Ok(None) => {
                    bucket(&mut intervals, start, flow.interval).down_bytes += FRAME_HEADER;
                    break Ok(());
                }
                Err(e) => {
                    if let ClientError::Remote { message, .. } = &e {
                        // Error frame: code u16, message str.
                        bucket(&mut intervals, start, flow.interval).down_bytes +=
                            FRAME_HEADER + 2 + 4 + message.len() as u64;
                    }
                    break Err(e);
                }
            },
        }
    };
    let elapsed = start.elapsed();
    attachment.close().await;
    if ended.is_ok() {
        if !incoming.partial.is_empty() {
            return Err(Error::Box(format!(
                "the box's output ended inside a cell ({} of {} bytes)",
                incoming.partial.len(),
                spec.cell
            )));
        }
        if incoming.received != spec.cells {
            return Err(Error::Box(format!(
                "the box sent {} of the flow's {} cells",
                incoming.received, spec.cells
            )));
        }
    }
    Ok(FlowReport {
        messages: incoming.messages,
        intervals,
        interval: flow.interval,
        elapsed,
        ended,
    })
}

/// The Cover's own error (`CoverError: …`) or the box's, as the client's
/// error: a refused manifest means the box cannot carry this flow.
pub(crate) fn failure(error: ClientError) -> Error {
    if let Some(message) = crate::raised_by_function(&error) {
        return Error::Function(message.to_owned());
    }
    match error {
        ClientError::Remote {
            code: ErrorCode::ManifestRejected,
            message,
        } => Error::Request(format!(
            "the box cannot carry this flow ([manifest_rejected]: {})",
            message.trim_end()
        )),
        other => unpaced(other),
    }
}

/// A box that cannot pace the flow ([`HOST_PACING`] refused by its policy,
/// or a box from before padding) as a request the box cannot carry; any
/// other error as it is. The flow is never run unpaced instead: that is
/// what would show a slow origin as a gap and a burst.
pub(crate) fn unpaced(error: ClientError) -> Error {
    match error {
        ClientError::Remote {
            code: ErrorCode::DefenseRefused,
            message,
        } => Error::Request(format!(
            "the box cannot pace this flow: cover flows need its `{HOST_PACING}` defense \
             ([defense_refused]: {})",
            message.trim_end()
        )),
        ClientError::NoPadding(version) => Error::Request(format!(
            "the box cannot pace this flow: cover flows need its `{HOST_PACING}` defense, \
             and it speaks protocol version {version}, which has none"
        )),
        other => Error::Client(other),
    }
}

/// The flow's shape, for the start of a run.
pub(crate) fn describe_spec(spec: &FlowSpec) -> String {
    format!(
        "{} cells of {} B each way at {}/s for {:.3} s",
        spec.cells,
        spec.cell,
        spec.rate,
        spec.duration.as_secs_f64(),
    )
}

/// A cover flow to run.
#[derive(Debug, Clone)]
pub struct CoverOptions {
    /// Cells per second, each way.
    pub rate: f64,
    /// Bytes per cell, header included.
    pub cell_size: u64,
    /// How long the flow lasts.
    pub duration: Duration,
    /// Real data to carry to the box and back (the function echoes it);
    /// at most half the flow's capacity, so the echo has time to return.
    pub data: Option<Vec<u8>>,
    /// The report's interval.
    pub interval: Duration,
}

/// A finished cover flow.
pub struct Covered {
    /// What it carried and how.
    pub report: FlowReport,
    /// One line about it, for people.
    pub summary: String,
}

/// Run a cover flow with the box: check it, store and invoke the Cover
/// with limits fitted to the flow, run it to its end, and check that any
/// data came back identical.
pub async fn run(
    target: &Target,
    options: &CoverOptions,
    console: &dyn Console,
) -> Result<Covered, Error> {
    let spec = FlowSpec::new(options.rate, options.cell_size, options.duration)?;
    let data = options.data.as_deref();
    let half = spec.capacity() / 2;
    if let Some(data) = data
        && data.len() as u64 > half
    {
        return Err(Error::Request(format!(
            "--data is {} bytes; this flow's {} cells of {} B carry at most {} bytes in their first half \
             (the echo needs the second): raise --rate, --cell-size or --duration",
            data.len(),
            spec.cells,
            spec.cell,
            half
        )));
    }
    let manifest = manifest(&spec)?;
    console.note(&format!(
        "cover: {} (asks the box for {} KiB/s, {} ms wall-clock, {} ms CPU)",
        describe_spec(&spec),
        spec.bandwidth_kib_per_s(),
        spec.wall_ms(),
        spec.cpu_ms()
    ));
    let flow = Flow {
        filename: "cover.py",
        source: SOURCE,
        manifest: &manifest,
        entry: "main",
        spec,
        message: data,
        max_message: data.map_or(0, <[u8]>::len),
        interval: options.interval,
    };
    let mut report = run_flow(target, &flow, console)
        .await
        .map_err(|e| match e {
            Error::Client(e) => failure(e),
            other => other,
        })?;
    if let Err(e) = std::mem::replace(&mut report.ended, Ok(())) {
        return Err(failure(e));
    }
    let total = report.total();
    let mut summary = format!(
        "{} cells each way in {:.2} s: box to client {} B in {} Output frames, client to box {} B \
         (protocol frames with their 5-byte headers; acknowledgements not counted)",
        total.down_cells,
        report.elapsed.as_secs_f64(),
        total.down_bytes,
        total.down_frames,
        total.up_bytes
    );
    if let Some(data) = data {
        let echoed = report.messages.concat();
        if report.messages.len() > 1 || echoed != data {
            return Err(Error::Box(format!(
                "the box echoed {} bytes in {} messages, not the {} bytes sent",
                echoed.len(),
                report.messages.len(),
                data.len()
            )));
        }
        summary.push_str(&format!(
            "; carried {} bytes of data each way (echoed back identical)",
            data.len()
        ));
    } else if !report.messages.is_empty() {
        return Err(Error::Box(
            "the box sent data where it should send padding only".into(),
        ));
    }
    Ok(Covered { report, summary })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::python_source;

    #[test]
    fn the_cell_format_and_limits_agree_with_cover_py() {
        let int = |name| python_source::int(SOURCE, name);
        assert_eq!(int("COVER_HEADER"), CELL_HEADER as u64);
        assert_eq!(int("COVER_DATA"), u64::from(DATA));
        assert_eq!(int("COVER_END"), u64::from(END));
        assert_eq!(int("COVER_MIN_CELL"), MIN_CELL);
        assert_eq!(int("COVER_MAX_CELL"), MAX_CELL);
        assert_eq!(python_source::float(SOURCE, "COVER_MAX_RATE"), MAX_RATE);
        assert_eq!(int("COVER_MAX_CELLS"), MAX_CELLS);
        assert_eq!(int("COVER_MAX_REQUEST"), MAX_REQUEST as u64);
        // The slack covers the function's waits for the first and the last cells.
        let waits = python_source::float(SOURCE, "COVER_FIRST_WAIT")
            + python_source::float(SOURCE, "COVER_DRAIN_WAIT");
        assert_eq!((waits * 1000.0) as u64, WAIT_SLACK_MS);
        assert!(SOURCE.contains("class CoverError"));
    }

    #[test]
    fn a_message_goes_out_in_whole_cells_and_comes_back_the_same() {
        let message: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut out = Outgoing {
            cell: 64,
            message: Some(&message),
        };
        let mut incoming = Incoming {
            cell: 64,
            cells: 40,
            max_message: 1000,
            partial: Vec::new(),
            received: 0,
            message: Vec::new(),
            messages: Vec::new(),
        };
        let mut stream = Vec::new();
        for _ in 0..40 {
            let cell = out.next_cell();
            assert_eq!(cell.len(), 64);
            stream.extend_from_slice(&cell);
        }
        // Arbitrary frame boundaries, as the box may cut its output.
        for chunk in stream.chunks(100) {
            incoming.take(chunk).unwrap();
        }
        assert_eq!(incoming.received, 40);
        assert_eq!(incoming.messages, vec![message]);
        // 1000 bytes need 17 cells of 61; the rest are all zeros.
        assert!(stream[17 * 64..].iter().all(|&b| b == 0));
        // One cell more than the flow has is refused.
        assert!(incoming.take(&[0u8; 64]).is_err());
    }

    #[test]
    fn malformed_cells_from_the_box_are_refused() {
        let fresh = || Incoming {
            cell: 64,
            cells: 10,
            max_message: 100,
            partial: Vec::new(),
            received: 0,
            message: Vec::new(),
            messages: Vec::new(),
        };
        let mut bad_flags = vec![0u8; 64];
        bad_flags[0] = 4;
        assert!(
            fresh()
                .take(&bad_flags)
                .unwrap_err()
                .contains("invalid flags")
        );
        let mut padding_with_length = vec![0u8; 64];
        padding_with_length[2] = 1;
        assert!(fresh().take(&padding_with_length).is_err());
        let mut dirty = encode_cell(64, DATA, b"abc").to_vec();
        dirty[63] = 1;
        assert!(
            fresh()
                .take(&dirty)
                .unwrap_err()
                .contains("non-zero padding")
        );
        let mut too_long = vec![0u8; 64];
        too_long[0] = DATA;
        too_long[1..3].copy_from_slice(&62u16.to_be_bytes());
        assert!(fresh().take(&too_long).is_err());
        let mut big = fresh();
        big.max_message = 10;
        assert!(
            big.take(&encode_cell(64, DATA, &[1; 20]))
                .unwrap_err()
                .contains("more than 10")
        );
    }

    #[test]
    fn flows_the_function_would_refuse_are_refused_first() {
        let d = Duration::from_secs(10);
        assert!(FlowSpec::new(0.0, 512, d).is_err());
        assert!(FlowSpec::new(f64::NAN, 512, d).is_err());
        assert!(FlowSpec::new(1001.0, 512, d).is_err());
        assert!(FlowSpec::new(10.0, 63, d).is_err());
        assert!(FlowSpec::new(10.0, 65537, d).is_err());
        assert!(FlowSpec::new(0.01, 512, d).is_err(), "rounds to 0 cells");
        let spec = FlowSpec::new(10.0, 512, d).unwrap();
        assert_eq!(spec.cells, 100);
        assert_eq!(spec.capacity(), 100 * 509);
        assert_eq!(spec.bandwidth_kib_per_s(), 16);
        let m = manifest(&spec).unwrap();
        assert!(m.contains("wall_ms = 100000\n"), "{m}");
        assert!(m.contains("cpu_ms = 1062\n"), "{m}");
    }
}
