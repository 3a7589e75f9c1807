//! The Cover function (functions/cover/) and `bento cover` / `bento browse
//! --cover-rate`, end to end over the private Tor network: a constant-rate
//! flow of fixed-size cells both ways, the same on the wire whether or not
//! real data (echoed data, a browsed page) rides inside it.

use bento_client::{ClientError, Connection};
use bento_protocol::ErrorCode;
use bytes::Bytes;

use crate::browser::{Site, bento_over_tor, noise, onion_box_with_policy, saved_files};
use crate::harness;
use crate::tor::{net, onion_box};

const SOURCE: &str = bento_functions::cover::SOURCE;
const MANIFEST: &str = bento_functions::cover::MANIFEST;
/// Protocol frame header (u32 length + u8 type).
const FRAME: u64 = bento_functions::cover::FRAME_HEADER;

/// The `bento cover --report` CSV, summed: (box→client bytes, client→box
/// bytes, box→client cells, client→box cells, Output frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Totals {
    down_bytes: u64,
    up_bytes: u64,
    down_cells: u64,
    up_cells: u64,
    down_frames: u64,
}

impl Totals {
    /// Cell bytes the box sent: the wire bytes less every Output frame's
    /// header and the End frame (how the box cuts its output into frames
    /// is its own affair; the cells inside are what the flow fixes).
    fn down_payload(&self) -> u64 {
        self.down_bytes - FRAME * self.down_frames - FRAME
    }
}

fn totals(csv: &str) -> Totals {
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "interval_start_s,box_to_client_bytes,client_to_box_bytes,box_to_client_cells,client_to_box_cells,box_to_client_frames"
        ),
        "{csv}"
    );
    let mut t = Totals {
        down_bytes: 0,
        up_bytes: 0,
        down_cells: 0,
        up_cells: 0,
        down_frames: 0,
    };
    for line in lines {
        let f: Vec<u64> = line
            .split(',')
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect();
        t.down_bytes += f[0];
        t.up_bytes += f[1];
        t.down_cells += f[2];
        t.up_cells += f[3];
        t.down_frames += f[4];
    }
    t
}

/// `bento cover --report` (1 s intervals) against `onion` with `args`.
fn cover(onion: &str, args: &[&str]) -> (std::process::Output, String, String) {
    let mut all = vec!["cover", "--report"];
    all.extend_from_slice(args);
    bento_over_tor(onion, &all)
}

#[test]
fn cover_traffic_has_the_same_cells_and_bytes_each_way_with_and_without_real_data() {
    let _turn = crate::tor::one_at_a_time();
    let onion = net().boxes[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let data_file = dir.path().join("data.bin");
    std::fs::write(&data_file, noise(20_000, 21)).unwrap();
    let flow = ["--rate", "20", "--cell-size", "512", "--duration", "5s"];

    let (plain, plain_csv, plain_err) = cover(&onion, &flow);
    assert!(plain.status.success(), "{plain_err}");
    let mut with_data = flow.to_vec();
    with_data.extend_from_slice(&["--data", data_file.to_str().unwrap()]);
    let (carried, data_csv, data_err) = cover(&onion, &with_data);
    assert!(carried.status.success(), "{data_err}");
    assert!(
        data_err.contains("carried 20000 bytes of data each way (echoed back identical)"),
        "{data_err}"
    );
    // The figure: per-interval counts at the client, printed (timing on a
    // loaded machine varies, so only totals are asserted).
    eprintln!("without data:\n{plain_csv}\nwith 20000 bytes echoed:\n{data_csv}");

    let (plain, data) = (totals(&plain_csv), totals(&data_csv));
    for t in [plain, data] {
        assert_eq!((t.down_cells, t.up_cells), (100, 100), "{t:?}");
        assert_eq!(
            t.down_payload(),
            100 * 512,
            "every cell is 512 bytes: {t:?}"
        );
        // One Input frame per cell, then InputEnd.
        assert_eq!(t.up_bytes, 100 * (512 + FRAME) + FRAME, "{t:?}");
    }
    assert_eq!(plain.down_payload(), data.down_payload());
    assert_eq!(plain.up_bytes, data.up_bytes);
}

/// A policy for the Browser inside a cover flow: `http` to the sites'
/// rules, `time`, and limits for the fetch plus the flow.
pub(crate) fn browse_policy(rules: &[String]) -> String {
    crate::browser::policy(rules)
        .replace(
            "capabilities = [\"http\"]",
            "capabilities = [\"http\", \"time\"]",
        )
        .replace("cpu_ms = 10000", "cpu_ms = 30000")
        .replace("wall_ms = 120000", "wall_ms = 300000")
}

/// (box→client wire bytes, Output frames, client→box bytes) from
/// `bento browse --cover-rate`'s last line.
fn browse_cover_line(stdout: &str) -> (u64, u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("cover: "))
        .unwrap_or_else(|| panic!("no cover line: {stdout}"));
    let number_before = |marker: &str| -> u64 {
        let before = &line[..line.find(marker).unwrap_or_else(|| panic!("{line}"))];
        before.split_whitespace().last().unwrap().parse().unwrap()
    };
    (
        number_before(" B in "),
        number_before(" Output frames"),
        number_before(" B (protocol"),
    )
}

// The turn is held for the whole test on purpose (see tor::one_at_a_time).
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_browsed_inside_a_cover_flow_over_tor_is_byte_identical_and_the_flow_is_that_of_plain_cover()
 {
    let _turn = crate::tor::one_at_a_time();
    let site = Site::start();
    let (_bx, onion) = onion_box_with_policy(&browse_policy(&[site.rule()])).await;
    let image = noise(6_000, 31);
    let css = b"h1 { color: teal }\n".to_vec();
    site.put("/img.png", "image/png", image.clone());
    site.put("/style.css", "text/css", css.clone());
    let page = "<html><head><link rel=\"stylesheet\" href=\"style.css\"></head>\n\
                <body><h1>covered</h1><img src=\"img.png\"></body></html>\n";
    site.put("/", "text/html", page);
    site.put("/big", "text/html", "<img src=\"noise.bin\">");
    site.put("/noise.bin", "application/octet-stream", noise(100_000, 32));

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("page");
    let flow = [
        "--cover-rate",
        "20",
        "--cover-cell-size",
        "512",
        "--cover-duration",
        "6s",
    ];
    let mut args = vec![
        "browse",
        "--pad",
        "16KiB",
        "--out",
        out.to_str().unwrap(),
        "--destination",
    ];
    let rule = site.rule();
    let url = site.url("/");
    args.extend_from_slice(&[&rule, &url]);
    args.extend_from_slice(&flow);
    let (status, stdout, stderr) = bento_over_tor(&onion, &args);
    assert!(status.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("transferred 16384 bytes = 1 x 16384 B pad"),
        "{stdout}"
    );
    // Unpacked exactly as without cover.
    let files = saved_files(&stdout);
    assert_eq!(files.len(), 3, "{stdout}");
    assert!(std::fs::read(out.join(&files[&site.url("/img.png")])).unwrap() == image);
    assert!(std::fs::read(out.join(&files[&site.url("/style.css")])).unwrap() == css);
    assert_eq!(
        std::fs::read_to_string(out.join("index.html")).unwrap(),
        page.replace("style.css", &files[&site.url("/style.css")])
            .replace("img.png", &files[&site.url("/img.png")])
    );

    // The same flow with nothing in it: the same cells, the same bytes.
    let (down_bytes, down_frames, up_bytes) = browse_cover_line(&stdout);
    let (plain, plain_csv, plain_err) = cover(
        &onion,
        &["--rate", "20", "--cell-size", "512", "--duration", "6s"],
    );
    assert!(plain.status.success(), "{plain_err}");
    let plain = totals(&plain_csv);
    eprintln!(
        "browse inside the flow: {down_bytes} B in {down_frames} frames down, {up_bytes} B up; \
         plain cover: {plain:?}\n{plain_csv}"
    );
    assert_eq!(down_bytes - FRAME * down_frames - FRAME, 120 * 512);
    assert_eq!(plain.down_payload(), 120 * 512);
    assert_eq!((plain.down_cells, plain.up_cells), (120, 120));
    assert_eq!(up_bytes, plain.up_bytes);

    // A page whose bundle does not fit in the flow: a clear error after
    // the whole flow (ending early would tell), nothing written.
    let big_out = dir.path().join("big");
    let big_url = site.url("/big");
    let mut args = vec![
        "browse",
        "--pad",
        "16KiB",
        "--out",
        big_out.to_str().unwrap(),
        "--destination",
        &rule,
        &big_url,
    ];
    args.extend_from_slice(&flow);
    let (status, stdout, stderr) = bento_over_tor(&onion, &args);
    assert_eq!(status.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(
            "error: the box could not browse: the page's padded bundle is 114688 bytes but the"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("make the flow longer (duration), faster (rate) or its cells larger"),
        "{stderr}"
    );
    assert!(!big_out.exists());
}

#[test]
fn a_flow_beyond_the_boxs_bandwidth_cpu_or_wall_clock_limit_is_refused_before_it_starts_and_the_box_serves_the_next_user()
 {
    let _turn = crate::tor::one_at_a_time();
    let onion = net().boxes[0].clone();
    let refusals: [(&[&str], &str); 3] = [
        // 2 × 1000 × 1 KiB/s (and a quarter more) > the default 1024 KiB/s.
        (
            &["--rate", "1000", "--cell-size", "1KiB", "--duration", "5s"],
            "asks for 2500 KiB/s bandwidth per session; this box allows 1024 KiB/s",
        ),
        // 20000 cells need 13 s of CPU > the default 10 s.
        (
            &["--rate", "1000", "--cell-size", "64", "--duration", "20s"],
            "asks for 13040 ms CPU time per invocation; this box allows 10000 ms",
        ),
        // 10 minutes (+ 90 s of waiting) > the default 300 s wall-clock limit.
        (
            &["--duration", "10m"],
            "asks for 690000 ms wall-clock time per invocation; this box allows 300000 ms",
        ),
    ];
    for (args, limit) in refusals {
        let (status, stdout, stderr) = cover(&onion, args);
        assert_eq!(status.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("error: the box cannot carry this flow ([manifest_rejected]"),
            "{stderr}"
        );
        assert!(stderr.contains(limit), "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
    }

    // Refused by the client before anything is sent.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 30_000]).unwrap();
    for (args, message) in [
        (vec!["--rate", "0"], "the rate must be more than 0"),
        (vec!["--rate", "5000"], "at most 1000 cells/s"),
        (
            vec!["--cell-size", "32"],
            "the cell size must be from 64 to 65536 bytes, not 32",
        ),
        (
            vec!["--rate", "0.01", "--duration", "10s"],
            "rate × duration must be from 1",
        ),
        (
            vec![
                "--rate",
                "20",
                "--duration",
                "5s",
                "--data",
                big.to_str().unwrap(),
            ],
            "--data is 30000 bytes; this flow's 100 cells of 512 B carry at most 25450 bytes",
        ),
        (
            vec!["--duration", "1.5s"],
            "\"1.5s\": use a whole number with a unit (1500ms, not 1.5s)",
        ),
    ] {
        let (status, _, stderr) = cover(&onion, &args);
        assert_eq!(status.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    let (status, _, stderr) = bento_over_tor(
        &onion,
        &[
            "browse",
            "http://127.0.0.1:9/",
            "--out",
            "unused",
            "--pad",
            "1MiB",
            "--cover-rate",
            "10",
            "--cover-duration",
            "10s",
        ],
    );
    assert_eq!(status.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("carries 50900 bytes, less than one 1048576-byte pad and the request"),
        "{stderr}"
    );

    // The next user's flow runs.
    let (status, _, stderr) = cover(&onion, &["--rate", "10", "--duration", "2s"]);
    assert!(status.status.success(), "{stderr}");
    assert!(stderr.contains("20 cells each way"), "{stderr}");
}

/// A cell as the client sends it: `flags`, `length`, `payload`, zeros.
fn cell(flags: u8, length: u16, payload: &[u8]) -> Bytes {
    let mut out = vec![flags];
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(payload);
    out.resize(512, 0);
    Bytes::from(out)
}

/// Invoke `entry(args)` of cover.py at the onion box, send `cells` at once,
/// and read until the session ends: (cells received, how it ended).
async fn run_cells(entry: &str, args: &str, cells: Vec<Bytes>) -> (usize, Result<(), ClientError>) {
    let target = onion_box(0);
    let mut conn = Connection::connect(&target).await.unwrap();
    let (_, token) = conn
        .store_with_manifest("cover.py", SOURCE, MANIFEST)
        .await
        .unwrap();
    let session = conn.invoke(&token, entry, args).await.unwrap();
    let mut attachment = Connection::connect(&target)
        .await
        .unwrap()
        .attach(&session, None)
        .await
        .unwrap();
    let input = attachment.input();
    for c in cells {
        input.send(c).await.unwrap();
    }
    let _ = input.end().await;
    let mut received = 0;
    let ended = loop {
        match attachment.next().await {
            Ok(Some(data)) => received += data.len(),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    attachment.close().await;
    (received, ended)
}

// The turn is held for the whole test on purpose (see tor::one_at_a_time).
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_cells_or_arguments_from_a_client_end_the_flow_with_a_clear_error_and_the_box_serves_the_next_user()
 {
    let _turn = crate::tor::one_at_a_time();
    // A 10-cell flow: 2 cells/s for 5 s.
    let flow = "[2, 512, 5]";
    let mut dirty = cell(0, 0, &[]).to_vec();
    dirty[500] = 1;
    let cases: Vec<(&str, &str, Vec<Bytes>, &str)> = vec![
        (
            "main",
            flow,
            vec![Bytes::from(vec![0u8; 100])],
            "CoverError: cell 1 from the client is 100 bytes; this flow's cells are exactly 512 bytes",
        ),
        (
            "main",
            flow,
            vec![cell(0, 0, &[]), cell(7, 0, &[])],
            "CoverError: cell 2 from the client has invalid flags 7",
        ),
        (
            "main",
            flow,
            vec![Bytes::from(dirty)],
            "CoverError: cell 1 from the client has a bad length or non-zero padding",
        ),
        (
            "main",
            flow,
            vec![cell(1, 600, &[])],
            "CoverError: cell 1 from the client has a bad length or non-zero padding",
        ),
        (
            "main",
            flow,
            vec![cell(0, 0, &[]); 11],
            "CoverError: the client sent more than the flow's 10 cells",
        ),
        (
            "main",
            "[0, 512, 5]",
            vec![],
            "CoverError: rate must be a finite number > 0, not 0",
        ),
        (
            "main",
            "[10, 10, 5]",
            vec![],
            "CoverError: cell must be a whole number of bytes from 64 to 65536, not 10",
        ),
        (
            "browse",
            flow,
            vec![],
            "CoverError: the browse entry needs functions/browser/browser.py stored in front of cover.py",
        ),
    ];
    for (entry, args, cells, expected) in cases {
        let (_, ended) = run_cells(entry, args, cells).await;
        match ended {
            Err(ClientError::Remote {
                code: ErrorCode::FunctionException,
                message,
            }) => assert!(message.contains(expected), "{expected}:\n{message}"),
            other => panic!("{expected}: expected the function's error, got {other:?}"),
        }
    }

    // Data that comes after the box has sent all its cells cannot be
    // echoed: refused as it arrives, not held.
    let target = onion_box(0);
    let mut conn = Connection::connect(&target).await.unwrap();
    let (_, token) = conn
        .store_with_manifest("cover.py", SOURCE, MANIFEST)
        .await
        .unwrap();
    let session = conn.invoke(&token, "main", flow).await.unwrap();
    let mut attachment = Connection::connect(&target)
        .await
        .unwrap()
        .attach(&session, None)
        .await
        .unwrap();
    attachment.input().send(cell(0, 0, &[])).await.unwrap();
    let mut received = 0;
    while received < 10 * 512 {
        received += attachment.next().await.unwrap().unwrap().len();
    }
    attachment
        .input()
        .send(cell(3, 509, &[1; 509]))
        .await
        .unwrap();
    match harness::next_failure(&mut attachment).await {
        Err(ClientError::Remote {
            code: ErrorCode::FunctionException,
            message,
        }) => assert!(
            message.contains(
                "CoverError: the client sent more data than the rest of the flow can echo"
            ),
            "{message}"
        ),
        other => panic!("expected the function's error, got {other:?}"),
    }
    attachment.close().await;

    // The next user: a well-formed flow of 10 cells, data echoed.
    let mut cells = vec![cell(3, 5, b"hello")];
    cells.extend(std::iter::repeat_n(cell(0, 0, &[]), 9));
    let (received, ended) = run_cells("main", flow, cells).await;
    ended.unwrap();
    assert_eq!(received, 10 * 512);
}
