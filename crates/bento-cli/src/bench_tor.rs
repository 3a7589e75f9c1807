//! `bento testnet bench`: what Bento costs on top of Tor.
//!
//! On one private network, through one onion service on the box's relay:
//! (a) a raw Tor stream to an echo/source service beside the relay (port
//! 80), and (b) a Bento session with the box beside it (port 7878). Streams
//! from one client to one onion address share a circuit, so both paths
//! cross the same relays; the difference is Bento.
//! Reports medians; asserts nothing.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bento_client::{Connection, Target};
use bento_testnet::{Testnet, TestnetConfig};
use bento_tor::{OnionKey, TorControl, socks5_connect};
use bytes::Bytes;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::testnet_cmd::{DirArg, UpArgs, start_boxes};

/// Options of `bento testnet bench`.
#[derive(Debug, Clone, Args)]
pub struct TorBenchArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// MiB per throughput run (3 runs per path; medians reported).
    #[arg(long, default_value_t = 16)]
    pub mib: u64,
    /// Round trips per RTT measurement.
    #[arg(long, default_value_t = 200)]
    pub round_trips: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
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

pub async fn run(args: TorBenchArgs) -> anyhow::Result<()> {
    let dir = args.dir.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("bento-bench-tor-{}", std::process::id()))
    });
    if let Ok(state) = Testnet::load(&dir)
        && state
            .nodes
            .iter()
            .any(|n| crate::testnet_cmd::pid_alive(n.pid))
    {
        bail!(
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
    )?;

    // 1. The network, timed.
    let started = Instant::now();
    let mut config = TestnetConfig::new(&dir);
    config.boxes = 1;
    let mut quiet = |step: &str| eprintln!("[bench] {step}");
    let net = Testnet::up(config, &mut quiet).await?;
    let tor_up = started.elapsed().as_secs_f64();
    let mut state = net.state().clone();
    let up_args = UpArgs {
        dir: args.dir.clone(),
        boxes: 1,
        policy: vec![policy.clone()],
        announce: false,
        runtime: None,
        owner_pid: Some(std::process::id()),
    };
    let runtime = crate::runtime_path::default_runtime();
    start_boxes(&mut state, &up_args, &runtime).await?;
    let up_total = started.elapsed().as_secs_f64();
    let socks = state.client_socks().context("no client SocksPort")?;
    let host = state
        .box_hosts()
        .first()
        .map(|n| n.control_addr())
        .context("no box host")?;
    let box_listen: std::net::SocketAddr = state
        .boxes
        .first()
        .context("no box")?
        .listen
        .parse()
        .context("the box's listen address")?;

    // 2. The raw service beside the same relay, as an onion service; timed
    // from ADD_ONION to the first stream through it.
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let local = listener.local_addr()?;
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
                bail!("the raw onion service is unreachable: {e}")
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
        stream.write_all(b"e").await?;
        let mut reply = [0u8; 32];
        for i in 0..args.round_trips + 20 {
            let t = Instant::now();
            stream.write_all(&message).await?;
            stream.read_exact(&mut reply).await?;
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
                got += attachment.next().await?.context("the echo ended")?.len();
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
        stream.write_all(b"s").await?;
        stream.write_all(&bytes.to_be_bytes()).await?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < bytes {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                bail!("the raw stream ended after {got} bytes");
            }
            got += n as u64;
        }
        raw_rates.push(bytes as f64 / t.elapsed().as_secs_f64() / 1e6);

        let t = Instant::now();
        // A fresh connection: an idle one is closed after the read timeout.
        let session = Connection::connect(&target)
            .await?
            .invoke(&source, "main", &format!("[{}]", args.mib))
            .await?;
        let mut attachment = Connection::connect(&target)
            .await?
            .attach(&session, None)
            .await?;
        let mut got = 0u64;
        while let Some(data) = attachment.next().await? {
            got += data.len() as u64;
        }
        attachment.close().await;
        if got != bytes {
            bail!("the Bento session delivered {got} of {bytes} bytes");
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
    #[allow(clippy::print_stdout)]
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!(
            "| measurement (private Tor network, 2 cores) | raw Tor stream | Bento session | Bento / raw |"
        );
        println!("|---|---|---|---|");
        println!(
            "| round trip, 32 B (n={}) p50 | {:.2} ms | {:.2} ms | +{:.2} ms |",
            args.round_trips,
            percentile_ms(&raw_rtts, 0.5),
            percentile_ms(&bento_rtts, 0.5),
            percentile_ms(&bento_rtts, 0.5) - percentile_ms(&raw_rtts, 0.5)
        );
        println!(
            "| round trip p90 | {:.2} ms | {:.2} ms | |",
            percentile_ms(&raw_rtts, 0.9),
            percentile_ms(&bento_rtts, 0.9)
        );
        println!(
            "| throughput, {} MiB download (median of 3) | {raw_rate:.1} MB/s | {bento_rate:.1} MB/s | {:.0} % |",
            args.mib,
            100.0 * bento_rate / raw_rate
        );
        println!(
            "| `testnet up` (Tor network; with one box) | {tor_up:.1} s; {up_total:.1} s | | |"
        );
        println!(
            "| onion service: descriptor uploaded / reachable after ADD_ONION | {uploaded:.2} s / {reachable:.2} s | | |"
        );
    }
    Ok(())
}
