//! `bento testnet bench`: what Bento costs on top of Tor.
//!
//! On one private network, through one onion service on the box's relay:
//! (a) a raw Tor stream to an echo/source service beside the relay (port
//! 80), and (b) a Bento session with the box beside it (port 7878). Streams
//! from one client to one onion address share a circuit, so both paths
//! cross the same relays; the difference is Bento.
//! Reports medians; asserts nothing.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bento_client::{Connection, Target};
use bento_testnet::boxes::{BoxOptions, pid_alive, start_boxes};
use bento_testnet::{Testnet, TestnetConfig};
use bento_tor::{OnionKey, TorControl, socks5_connect};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::{Error, invoke_to_end, io_error, setup_error};

/// Options of the Tor benchmark (`bento testnet bench`; its `--help` says
/// the defaults).
#[derive(Debug, Clone)]
pub struct TorOptions {
    /// An empty directory for the network [default: a new one in the
    /// temporary directory].
    pub dir: Option<PathBuf>,
    /// MiB per throughput run (3 runs per path; medians reported).
    pub mib: u64,
    /// Round trips per RTT measurement.
    pub round_trips: usize,
    /// The precompiled runtime of the box.
    pub runtime: PathBuf,
    /// Write JSON instead of a table.
    pub json: bool,
}

const ECHO: &str = "def main():\n    while True:\n        m = api.recv()\n        if not m:\n            return\n        api.send(m)\n";
const SOURCE: &str = "def main(mib):\n    chunk = b's' * 65536\n    for _ in range(mib * 16):\n        api.send(chunk)\n";
const MANIFEST: &str = "version = 1\n[limits]\nmemory_mib = 128\ncpu_ms = 60000\nwall_ms = 600000\noutput_buffer_kib = 4096\nbandwidth_kib_per_s = 100000000\n";

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// A percentile of sorted durations, in milliseconds.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    crate::latency::ms(crate::latency::percentile(sorted, p))
}

/// The raw service: one byte `e` then echo, or `s` + 8-byte count then
/// that many bytes.
async fn raw_service(listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut mode = [0u8; 1];
            if stream.read_exact(&mut mode).await.is_err() {
                return;
            }
            if mode[0] == b's' {
                let mut count = [0u8; 8];
                if stream.read_exact(&mut count).await.is_err() {
                    return;
                }
                let mut left = u64::from_be_bytes(count);
                let chunk = vec![b's'; 65536];
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if stream.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
                return;
            }
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Bring a private Tor network up with one box, measure both paths, take
/// it down; the table (or JSON) is written to `out`, progress to stderr.
pub async fn run(args: TorOptions, out: &mut (dyn Write + Send)) -> Result<(), Error> {
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("bento-bench-tor-{}", std::process::id()))
    });
    if let Ok(state) = Testnet::load(&dir)
        && state.nodes.iter().any(|n| pid_alive(n.pid))
    {
        fail!(
            "a test network is running in {}; the benchmark builds its own (give another --dir or none)",
            dir.display()
        );
    }
    let policy = dir.with_extension("policy.toml");
    std::fs::write(
        &policy,
        bento_policy::DEFAULT_POLICY_TOML
            .replace(
                "bandwidth_kib_per_s = 1024 ",
                "bandwidth_kib_per_s = 100000000 ",
            )
            .replace(
                "bandwidth_kib_per_s = 10240 ",
                "bandwidth_kib_per_s = 100000000 ",
            )
            .replace("cpu_ms = 10000 ", "cpu_ms = 60000 ")
            .replace("wall_ms = 300000 ", "wall_ms = 600000 "),
    )
    .map_err(io_error(format!("cannot write {}", policy.display())))?;

    // 1. The network, timed.
    let started = Instant::now();
    let mut config = TestnetConfig::new(&dir);
    config.boxes = 1;
    let mut quiet = |step: &str| eprintln!("[bench] {step}");
    let net = Testnet::up(config, &mut quiet).await?;
    let tor_up = started.elapsed().as_secs_f64();
    let mut state = net.state().clone();
    let options = BoxOptions {
        policies: vec![policy.clone()],
        runtime: args.runtime.clone(),
        owner_pid: Some(std::process::id()),
    };
    start_boxes(&mut state, &options, &mut |step: &str| {
        eprintln!("[testnet] {step}");
    })
    .await?;
    let up_total = started.elapsed().as_secs_f64();
    let socks = state
        .client_socks()
        .ok_or_else(|| Error::Run("no client SocksPort".to_owned()))?;
    let host = state
        .box_hosts()
        .first()
        .map(|n| n.control_addr())
        .ok_or_else(|| Error::Run("no box host".to_owned()))?;
    let box_listen: std::net::SocketAddr = state
        .boxes
        .first()
        .ok_or_else(|| Error::Run("no box".to_owned()))?
        .listen
        .parse()
        .map_err(setup_error("the box's listen address"))?;

    // 2. The raw service beside the same relay, as an onion service; timed
    // from ADD_ONION to the first stream through it.
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(io_error("cannot listen for the raw service"))?;
    let local = listener
        .local_addr()
        .map_err(io_error("the raw service has no address"))?;
    tokio::spawn(raw_service(listener));
    let mut control = TorControl::connect(&host.to_string()).await?;
    let publish_started = Instant::now();
    // One onion service for both paths: port 80 is the raw service, port
    // 7878 the box. Streams from one client to one onion address share a
    // circuit, so both paths cross exactly the same relays and the
    // difference is Bento alone.
    let service = control
        .add_onion(
            &OnionKey::New,
            &[(80, local), (7878, box_listen)],
            &["DiscardPK"],
        )
        .await?;
    control
        .wait_for_descriptor_upload(&service.service_id, Duration::from_secs(60))
        .await?;
    let uploaded = publish_started.elapsed().as_secs_f64();
    let raw_host = service.onion_address();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match socks5_connect(socks, &raw_host, 80, None).await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                fail!("the raw onion service is unreachable: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let reachable = publish_started.elapsed().as_secs_f64();
    eprintln!(
        "[bench] onion service: descriptor uploaded {uploaded:.2} s, reachable {reachable:.2} s after ADD_ONION"
    );

    // 3. Round trips.
    let message = [7u8; 32];
    let mut raw_rtts = Vec::with_capacity(args.round_trips);
    {
        let mut stream = socks5_connect(socks, &raw_host, 80, None).await?;
        stream
            .write_all(b"e")
            .await
            .map_err(io_error("the raw stream"))?;
        let mut reply = [0u8; 32];
        for i in 0..args.round_trips + 20 {
            let t = Instant::now();
            stream
                .write_all(&message)
                .await
                .map_err(io_error("the raw stream"))?;
            stream
                .read_exact(&mut reply)
                .await
                .map_err(io_error("the raw stream"))?;
            if i >= 20 {
                raw_rtts.push(t.elapsed());
            }
        }
    }
    let target = Target {
        server: format!("{raw_host}:7878"),
        socks: Some(socks.to_string()),
        dialer: None,
    };
    let mut bento_rtts = Vec::with_capacity(args.round_trips);
    {
        let mut conn = Connection::connect(&target).await?;
        let (_, token) = conn.store_with_manifest("echo.py", ECHO, MANIFEST).await?;
        let session = conn.invoke(&token, "main", "[]").await?;
        let mut attachment = Connection::connect(&target)
            .await?
            .attach(&session, None)
            .await?;
        let input = attachment.input();
        for i in 0..args.round_trips + 20 {
            let t = Instant::now();
            input.send(Bytes::copy_from_slice(&message)).await?;
            let mut got = 0;
            while got < message.len() {
                got += attachment
                    .next()
                    .await?
                    .ok_or_else(|| Error::Run("the echo ended".to_owned()))?
                    .len();
            }
            if i >= 20 {
                bento_rtts.push(t.elapsed());
            }
        }
        input.end().await?;
        attachment.close().await;
    }
    raw_rtts.sort();
    bento_rtts.sort();

    // 4. Throughput, alternating the paths so both see the same network.
    let bytes = args.mib * 1024 * 1024;
    let mut raw_rates = Vec::new();
    let mut bento_rates = Vec::new();
    let mut conn = Connection::connect(&target).await?;
    let (_, source) = conn
        .store_with_manifest("source.py", SOURCE, MANIFEST)
        .await?;
    for run in 0..3 {
        let t = Instant::now();
        let mut stream = socks5_connect(socks, &raw_host, 80, None).await?;
        stream
            .write_all(b"s")
            .await
            .map_err(io_error("the raw stream"))?;
        stream
            .write_all(&bytes.to_be_bytes())
            .await
            .map_err(io_error("the raw stream"))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < bytes {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(io_error("the raw stream"))?;
            if n == 0 {
                fail!("the raw stream ended after {got} bytes");
            }
            got += n as u64;
        }
        raw_rates.push(bytes as f64 / t.elapsed().as_secs_f64() / 1e6);

        let t = Instant::now();
        // Fresh connections: an idle one is closed after the read timeout.
        let got = invoke_to_end(&target, &source, &format!("[{}]", args.mib)).await?;
        if got != bytes {
            fail!("the Bento session delivered {got} of {bytes} bytes");
        }
        bento_rates.push(bytes as f64 / t.elapsed().as_secs_f64() / 1e6);
        eprintln!(
            "[bench] run {}: raw {:.1} MB/s, Bento {:.1} MB/s",
            run + 1,
            raw_rates[run],
            bento_rates[run]
        );
    }
    let raw_rate = median(raw_rates.clone());
    let bento_rate = median(bento_rates.clone());
    let _ = control.del_onion(&service.service_id).await;
    drop(control);
    Testnet::down(&state)?;
    drop(net);
    let _ = std::fs::remove_file(&policy);

    let results = serde_json::json!({
        "testnet_up_s": { "tor": tor_up, "with_box": up_total },
        "onion_publish_s": { "descriptor_uploaded": uploaded, "reachable": reachable },
        "round_trip_ms": {
            "n": args.round_trips,
            "raw_p50": percentile_ms(&raw_rtts, 0.5), "raw_p90": percentile_ms(&raw_rtts, 0.9),
            "bento_p50": percentile_ms(&bento_rtts, 0.5), "bento_p90": percentile_ms(&bento_rtts, 0.9),
            "added_p50": percentile_ms(&bento_rtts, 0.5) - percentile_ms(&raw_rtts, 0.5),
        },
        "throughput_mb_s": {
            "mib_per_run": args.mib,
            "raw_median": raw_rate, "raw_runs": raw_rates,
            "bento_median": bento_rate, "bento_runs": bento_rates,
            "bento_over_raw": bento_rate / raw_rate,
        },
    });
    if args.json {
        report!(out, "{results:#}");
    } else {
        report!(
            out,
            "| measurement (private Tor network, 2 cores) | raw Tor stream | Bento session | Bento / raw |"
        );
        report!(out, "|---|---|---|---|");
        report!(
            out,
            "| round trip, 32 B (n={}) p50 | {:.2} ms | {:.2} ms | +{:.2} ms |",
            args.round_trips,
            percentile_ms(&raw_rtts, 0.5),
            percentile_ms(&bento_rtts, 0.5),
            percentile_ms(&bento_rtts, 0.5) - percentile_ms(&raw_rtts, 0.5)
        );
        report!(
            out,
            "| round trip p90 | {:.2} ms | {:.2} ms | |",
            percentile_ms(&raw_rtts, 0.9),
            percentile_ms(&bento_rtts, 0.9)
        );
        report!(
            out,
            "| throughput, {} MiB download (median of 3) | {raw_rate:.1} MB/s | {bento_rate:.1} MB/s | {:.0} % |",
            args.mib,
            100.0 * bento_rate / raw_rate
        );
        report!(
            out,
            "| `testnet up` (Tor network; with one box) | {tor_up:.1} s; {up_total:.1} s | | |"
        );
        report!(
            out,
            "| onion service: descriptor uploaded / reachable after ADD_ONION | {uploaded:.2} s / {reachable:.2} s | | |"
        );
    }
    Ok(())
}
