//! `bento cover`: constant-rate cover traffic with a box, both directions
//! (the Cover function, functions/cover/; see docs/functions/cover.md).
//!
//! Once the box has the client's first cell, both sides send exactly
//! `round(rate × duration)` cells of exactly `cell` bytes, one every
//! `1/rate` seconds. Real data rides inside the cells in place of padding.
//! The flow engine here ([`run_flow`]) is shared with `bento browse
//! --cover-rate`, which carries the Browser's request and page inside it.
//!
//! A cell (see functions/cover/cover.py): `flags: u8` (0 padding, 1 data,
//! 3 data + end of message), `length: u16` (big-endian), `length` payload
//! bytes, zeros up to exactly `cell` bytes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bento_client::{ClientError, Connection, Target};
use bento_protocol::ErrorCode;
use bytes::Bytes;
use clap::Args;

use crate::commands::{EXIT_BOX, EXIT_FUNCTION, EXIT_REQUEST};

/// The function's source and manifest.
pub(crate) const SOURCE: &str = include_str!("../../../functions/cover/cover.py");
const MANIFEST: &str = include_str!("../../../functions/cover/cover.toml");

/// Bytes of a cell's header (flags and length).
const CELL_HEADER: usize = 3;
const DATA: u8 = 1;
const END: u8 = 2;
/// A protocol frame's header (u32 length, u8 type): what each Output and
/// Input frame adds on the wire around its data.
pub(crate) const FRAME_HEADER: u64 = 5;
/// The cell sizes, rates and cell counts the function accepts.
pub(crate) const MIN_CELL: u64 = 64;
pub(crate) const MAX_CELL: u64 = 65536;
pub(crate) const MAX_RATE: f64 = 1000.0;
const MAX_CELLS: u64 = 1_000_000;
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

/// Options of `bento cover`.
#[derive(Debug, Clone, Args)]
pub struct CoverArgs {
    /// Cells per second, each way (at most 1000; fractions allowed).
    #[arg(long, value_name = "CELLS_PER_S", default_value_t = 10.0)]
    pub rate: f64,
    /// Bytes per cell, header included: 64 to 65536 (512, 4KiB, …).
    #[arg(long, value_name = "SIZE", default_value = "512", value_parser = crate::browse_cmd::parse_size)]
    pub cell_size: u64,
    /// How long the flow lasts: 30s, 2m, 1500ms … The flow carries
    /// round(rate × duration) cells each way.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Real data to carry (a file, or - for stdin): it goes to the box in
    /// the client's cells and comes back in the box's cells (the function
    /// echoes it), checked byte for byte. It may fill at most half the
    /// flow's cells, so the echo has time to come back.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Print the bytes and cells per interval, both ways, as CSV on stdout
    /// (the summary then goes to stderr).
    #[arg(long)]
    pub report: bool,
    /// The report's interval: 1s, 250ms …
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
}

/// A duration: a whole number with `ms`, `s` (the default), `m` or `h`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "{text:?}: use a whole number with a unit (1500ms, not 1.5s)"
        ));
    }
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 1500ms, 30s or 2m"))?;
    let ms = match unit.trim() {
        "ms" => Some(value),
        "" | "s" => value.checked_mul(1000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use ms, s, m or h)"
            ));
        }
    };
    match ms {
        Some(0) => Err("the duration must be more than 0".into()),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Err(format!("{text:?} is too long")),
    }
}

/// The shape of a flow, checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlowSpec {
    pub rate: f64,
    pub cell: usize,
    pub duration: Duration,
    /// Cells each way.
    pub cells: u64,
}

impl FlowSpec {
    /// Check the numbers the way the function does, so a bad flow is
    /// refused before anything is sent.
    pub(crate) fn new(rate: f64, cell: u64, duration: Duration) -> anyhow::Result<Self> {
        if !rate.is_finite() || rate <= 0.0 || rate > MAX_RATE {
            bail!("the rate must be more than 0 and at most {MAX_RATE} cells/s, not {rate}");
        }
        if !(MIN_CELL..=MAX_CELL).contains(&cell) {
            bail!("the cell size must be from {MIN_CELL} to {MAX_CELL} bytes, not {cell}");
        }
        let cells = (rate * duration.as_secs_f64()).round();
        if cells < 1.0 || cells > MAX_CELLS as f64 {
            bail!(
                "rate × duration must be from 1 to {MAX_CELLS} cells, not {cells} ({rate}/s for {:.3} s)",
                duration.as_secs_f64()
            );
        }
        Ok(Self {
            rate,
            cell: cell as usize,
            duration,
            cells: cells as u64,
        })
    }

    /// Payload bytes the whole flow can carry one way.
    pub(crate) fn capacity(&self) -> u64 {
        self.cells * (self.cell - CELL_HEADER) as u64
    }

    /// The session bandwidth the flow needs, KiB/s: both directions are
    /// charged to one bucket; a quarter more so the flow is never throttled
    /// (throttling would bunch its cells).
    pub(crate) fn bandwidth_kib_per_s(&self) -> u64 {
        let bytes = 2.0 * self.rate * self.cell as f64 * 1.25;
        ((bytes / 1024.0).ceil() as u64).max(16)
    }

    pub(crate) fn wall_ms(&self) -> u64 {
        self.duration.as_millis() as u64 + WAIT_SLACK_MS
    }

    pub(crate) fn cpu_ms(&self) -> u64 {
        let per_cell = CPU_US_PER_CELL + self.cell as u64 / CPU_US_PER_CELL_BYTE_DIVISOR;
        CPU_BASE_MS + (self.cells * per_cell).div_ceil(1000)
    }

    /// Fields for the function's entry: `[rate, cell, duration]`.
    fn args_json(&self) -> String {
        serde_json::json!([self.rate, self.cell, self.duration.as_secs_f64()]).to_string()
    }
}

/// `manifest` with `key = value` lines replaced (each key must be there).
pub(crate) fn set_manifest_keys(manifest: &str, keys: &[(&str, String)]) -> anyhow::Result<String> {
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
        bail!("the built-in manifest has no `{}` line", keys[i].0);
    }
    Ok(out)
}

/// The cover manifest with limits derived from the flow.
pub(crate) fn manifest(spec: &FlowSpec) -> anyhow::Result<String> {
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
pub(crate) struct Interval {
    /// Output frames (data + 5-byte header each), End/Error included.
    pub down_bytes: u64,
    /// Input frames (cell + 5-byte header each), InputEnd included.
    pub up_bytes: u64,
    pub down_cells: u64,
    pub up_cells: u64,
    /// Output frames (how the box happened to cut its output).
    pub down_frames: u64,
}

/// What a finished flow carried and how.
pub(crate) struct FlowReport {
    /// Complete messages from the box.
    pub messages: Vec<Vec<u8>>,
    pub intervals: Vec<Interval>,
    pub interval: Duration,
    pub elapsed: Duration,
    /// How the session ended: `Ok` (the function returned) or its error.
    pub ended: Result<(), ClientError>,
}

impl FlowReport {
    pub(crate) fn total(&self) -> Interval {
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
    pub(crate) fn csv(&self) -> String {
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

/// Why a flow failed before it could finish.
#[derive(Debug)]
pub(crate) enum FlowError {
    /// The box refused or ended the session.
    Box(ClientError),
    /// The box broke the cell format (or sent too much).
    BadCells(String),
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

/// Store and invoke the function, then run the flow to its end: one cell
/// per tick to the box, every cell from the box checked and counted.
pub(crate) async fn run_flow(target: &Target, flow: &Flow<'_>) -> Result<FlowReport, FlowError> {
    let spec = flow.spec;
    let mut conn = Connection::connect(target).await.map_err(FlowError::Box)?;
    let (_, token) = conn
        .store_with_manifest(flow.filename, flow.source, flow.manifest)
        .await
        .map_err(FlowError::Box)?;
    let session = conn
        .invoke(&token, flow.entry, &spec.args_json())
        .await
        .map_err(FlowError::Box)?;
    let mut attachment = Connection::connect(target)
        .await
        .map_err(FlowError::Box)?
        .attach(&session, None)
        .await
        .map_err(FlowError::Box)?;
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
                    eprintln!("cover: {sent}/{} cells sent, {} received", spec.cells, incoming.received);
                }
            }
            next = attachment.next() => match next {
                Ok(Some(data)) => {
                    let completed = match incoming.take(&data) {
                        Ok(n) => n,
                        Err(e) => {
                            attachment.close().await;
                            return Err(FlowError::BadCells(e));
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
            return Err(FlowError::BadCells(format!(
                "the box's output ended inside a cell ({} of {} bytes)",
                incoming.partial.len(),
                spec.cell
            )));
        }
        if incoming.received != spec.cells {
            return Err(FlowError::BadCells(format!(
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

/// The error a failed Browser or Cover function raised: the traceback's
/// last line, without the `__bento__.BrowseError: ` / `CoverError: `
/// prefix of the functions' own errors (other exceptions keep their name).
pub(crate) fn function_error(traceback: &str) -> &str {
    let last = traceback
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(traceback)
        .trim();
    ["CoverError: ", "BrowseError: "]
        .iter()
        .find_map(|p| last.split_once(p).map(|(_, message)| message))
        .unwrap_or(last)
}

/// The function's own error (`CoverError: …`), or the box's, with the
/// exit code for it.
pub(crate) fn describe_failure(error: &ClientError) -> (u8, String) {
    match error {
        ClientError::Remote {
            code: ErrorCode::FunctionException,
            message,
        } => (EXIT_FUNCTION, function_error(message).to_owned()),
        ClientError::Remote {
            code: ErrorCode::ManifestRejected,
            message,
        } => (
            EXIT_REQUEST,
            format!(
                "the box cannot carry this flow ([manifest_rejected]: {})",
                message.trim_end()
            ),
        ),
        ClientError::Remote { code, message } => (
            crate::commands::exit_code_for(*code),
            format!("[{}]: {}", code.name(), message.trim_end()),
        ),
        other => (EXIT_BOX, other.to_string()),
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

/// The flow's shape, for the start of a run (stderr).
pub(crate) fn describe_spec(spec: &FlowSpec) -> String {
    format!(
        "{} cells of {} B each way at {}/s for {:.3} s",
        spec.cells,
        spec.cell,
        spec.rate,
        spec.duration.as_secs_f64(),
    )
}

fn read_data(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut data)
            .context("cannot read stdin")?;
        Ok(data)
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// `bento cover`.
#[allow(clippy::print_stdout)]
pub async fn run(target: &Target, args: CoverArgs) -> anyhow::Result<ExitCode> {
    let spec = match FlowSpec::new(args.rate, args.cell_size, args.duration) {
        Ok(spec) => spec,
        Err(e) => return Ok(fail(EXIT_REQUEST, &format!("{e:#}"))),
    };
    let data = match &args.data {
        Some(path) => match read_data(path) {
            Ok(data) => Some(data),
            Err(e) => return Ok(fail(EXIT_REQUEST, &format!("{e:#}"))),
        },
        None => None,
    };
    let half = spec.capacity() / 2;
    if let Some(data) = &data
        && data.len() as u64 > half
    {
        return Ok(fail(
            EXIT_REQUEST,
            &format!(
                "--data is {} bytes; this flow's {} cells of {} B carry at most {} bytes in their first half \
                 (the echo needs the second): raise --rate, --cell-size or --duration",
                data.len(),
                spec.cells,
                spec.cell,
                half
            ),
        ));
    }
    let manifest = manifest(&spec)?;
    eprintln!(
        "cover: {} (asks the box for {} KiB/s, {} ms wall-clock, {} ms CPU)",
        describe_spec(&spec),
        spec.bandwidth_kib_per_s(),
        spec.wall_ms(),
        spec.cpu_ms()
    );
    let flow = Flow {
        filename: "cover.py",
        source: SOURCE,
        manifest: &manifest,
        entry: "main",
        spec,
        message: data.as_deref(),
        max_message: data.as_ref().map_or(0, Vec::len),
        interval: args.interval,
    };
    let report = match run_flow(target, &flow).await {
        Ok(report) => report,
        Err(FlowError::Box(e)) => {
            let (code, message) = describe_failure(&e);
            return Ok(fail(code, &message));
        }
        Err(FlowError::BadCells(message)) => return Ok(fail(EXIT_BOX, &message)),
    };
    if let Err(e) = &report.ended {
        let (code, message) = describe_failure(e);
        return Ok(fail(code, &message));
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
    if let Some(data) = &data {
        let echoed = report.messages.concat();
        if report.messages.len() > 1 || echoed != *data {
            return Ok(fail(
                EXIT_BOX,
                &format!(
                    "the box echoed {} bytes in {} messages, not the {} bytes sent",
                    echoed.len(),
                    report.messages.len(),
                    data.len()
                ),
            ));
        }
        summary.push_str(&format!(
            "; carried {} bytes of data each way (echoed back identical)",
            data.len()
        ));
    } else if !report.messages.is_empty() {
        return Ok(fail(
            EXIT_BOX,
            "the box sent data where it should send padding only",
        ));
    }
    if args.report {
        print!("{}", report.csv());
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("5 fortnights").is_err());
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
