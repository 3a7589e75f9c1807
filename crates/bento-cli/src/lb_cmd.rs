//! `bento lb start|load`: the LoadBalancer's arguments, and the load
//! generator's summary (the client is [`bento_functions::loadbalancer`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bento_client::Target;
use bento_functions::loadbalancer::{self, Failure, LoadOptions, Outcome, StartOptions};
use clap::{Args, Subcommand};

use crate::exit;
use crate::terminal::{Terminal, print as out_line};

/// `bento lb …`.
#[derive(Debug, Subcommand)]
pub enum LbCommand {
    /// Start a load-balanced onion service: the front function on the
    /// --server box publishes one onion address and forwards its streams to
    /// replicas it starts on the --replica-box boxes, more under load and
    /// fewer when idle. Prints the address on stdout, then follows the
    /// front's log on stderr; Ctrl-C (or SIGTERM) stops it cleanly,
    /// a second Ctrl-C kills it.
    ///
    /// Example: bento --server FRONT.onion:7878 --socks 127.0.0.1:9050 lb start
    /// --replica-box A.onion:7878,B.onion:7878 --content index.html
    Start(StartArgs),
    /// Load generator for an onion web service (through --socks): keeps
    /// --streams GET requests in flight for --duration, checks that every
    /// response is complete, and reports throughput and latency.
    ///
    /// Example: bento --socks 127.0.0.1:9050 lb load xyz.onion --streams 8
    /// --duration 30s --expect index.html
    Load(LoadArgs),
}

/// Options of `bento lb start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// A box to run replicas on, ONION:PORT (as `bento status` shows it);
    /// comma-separated or repeated. The first that takes one gets the first
    /// replica; the others are used in order as load grows.
    #[arg(
        long = "replica-box",
        value_name = "ONION:PORT",
        value_delimiter = ',',
        required = true
    )]
    replica_boxes: Vec<String>,
    /// The file every GET is answered with (at most 1 MiB) [default: a small page].
    #[arg(long, value_name = "FILE")]
    content: Option<PathBuf>,
    /// Its Content-Type [default: from the file's extension].
    #[arg(long, value_name = "TYPE")]
    content_type: Option<String>,
    /// High watermark: another replica starts when the streams in progress
    /// exceed this many per replica.
    #[arg(long, value_name = "STREAMS", default_value_t = 2.0)]
    high: f64,
    /// Low watermark: an idle replica stops when the streams in progress
    /// stay below this many per replica for --grace.
    #[arg(long, value_name = "STREAMS", default_value_t = 1.0)]
    low: f64,
    /// How long the load must stay below --low before a replica stops.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::units::parse_seconds)]
    grace: Duration,
    /// How long the service takes new streams (at most 270 s: the front's
    /// wall-clock limit is 300 s, and it keeps 30 s to finish and stop its
    /// replicas).
    #[arg(long, value_name = "DURATION", default_value = "270s", value_parser = crate::units::parse_seconds)]
    lifetime: Duration,
    /// Bandwidth the front asks for, KiB/s, both ways together [default:
    /// the box's ceiling, at most 1024]. The front forwards every byte, so
    /// half of this bounds the service's throughput; the box's policy must
    /// allow it.
    #[arg(long, value_name = "KIB_PER_S")]
    bandwidth: Option<u64>,
    /// Print the front's log as it comes, one JSON object per line, on
    /// stdout (instead of the address alone).
    #[arg(long)]
    json: bool,
}

/// Options of `bento lb load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The service: ONION[:PORT] (port 80 if left out).
    address: String,
    /// Requests in flight at once, each on its own Tor circuit.
    #[arg(long, value_name = "N", default_value_t = 4)]
    streams: usize,
    /// How long new requests are started; those in flight then finish.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::units::parse_seconds)]
    duration: Duration,
    /// Check that every body is byte-identical to this file (otherwise
    /// only that it is as long as its Content-Length says).
    #[arg(long, value_name = "FILE")]
    expect: Option<PathBuf>,
    /// The path requested.
    #[arg(long, default_value = "/")]
    path: String,
    /// Give up on a request after this long.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = crate::units::parse_seconds)]
    timeout: Duration,
    /// Print the results as JSON (per-second figures included).
    #[arg(long)]
    json: bool,
}

pub async fn run(target: &Target, command: LbCommand) -> ExitCode {
    match command {
        LbCommand::Start(args) => {
            let options = StartOptions {
                replica_boxes: args.replica_boxes,
                content: args.content,
                content_type: args.content_type,
                high: args.high,
                low: args.low,
                grace: args.grace,
                lifetime: args.lifetime,
                bandwidth: args.bandwidth,
                json: args.json,
            };
            let stop = match crate::terminal::stop_requests() {
                Ok(stop) => stop,
                Err(e) => return exit::fail(&e),
            };
            exit::status(loadbalancer::start(target, &options, stop, &Terminal).await)
        }
        LbCommand::Load(args) => {
            let options = LoadOptions {
                address: args.address.clone(),
                streams: args.streams,
                duration: args.duration,
                expect: args.expect.clone(),
                path: args.path.clone(),
                timeout: args.timeout,
            };
            match loadbalancer::load(target, &options, &Terminal).await {
                Ok(run) => summarise(&args, &run.outcomes, run.elapsed),
                Err(e) => exit::fail(&e),
            }
        }
    }
}

/// The median of a list of numbers; zero for none.
fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn summarise(args: &LoadArgs, outcomes: &[Outcome], elapsed: Duration) -> ExitCode {
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_ok()).collect();
    let failures: Vec<&Failure> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err())
        .collect();
    let incomplete = failures
        .iter()
        .filter(|f| matches!(f, Failure::Incomplete(_)))
        .count();
    let unreachable = failures.len() - incomplete;
    let bytes: usize = ok.iter().filter_map(|o| o.result.as_ref().ok()).sum();
    // Body bytes completed in each whole second while load was applied
    // (what finishes after --duration only ends the run).
    let seconds = args.duration.as_secs().max(1) as usize;
    let mut per_second = vec![0u64; seconds];
    for outcome in &ok {
        if let (Some(slot), Ok(body)) = (
            per_second.get_mut(outcome.at.as_secs() as usize),
            &outcome.result,
        ) {
            *slot += *body as u64;
        }
    }
    let mut rates: Vec<f64> = per_second.iter().map(|b| *b as f64 / 1e6).collect();
    let median_rate = median(&mut rates);
    let mut latencies: Vec<Duration> = ok.iter().map(|o| o.latency).collect();
    latencies.sort();
    let overall = bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9);
    let p50 = bento_bench::latency::percentile(&latencies, 0.5).as_secs_f64();
    let p90 = bento_bench::latency::percentile(&latencies, 0.9).as_secs_f64();
    if args.json {
        let first_failures: Vec<&str> = failures.iter().take(10).map(|f| f.message()).collect();
        out_line(
            &serde_json::json!({
                "streams": args.streams,
                "duration_s": args.duration.as_secs(),
                "elapsed_s": elapsed.as_secs_f64(),
                "complete": ok.len(),
                "incomplete": incomplete,
                "unreachable": unreachable,
                "failures": first_failures,
                "bytes": bytes,
                "mb_per_s": overall,
                "median_mb_per_s": median_rate,
                "per_second_bytes": per_second,
                "latency_p50_s": p50,
                "latency_p90_s": p90,
            })
            .to_string(),
        );
    } else {
        out_line(&format!(
            "{} stream(s) for {} s: {} responses complete, {incomplete} incomplete, {unreachable} not reached; {:.2} MB in {:.1} s",
            args.streams,
            args.duration.as_secs(),
            ok.len(),
            bytes as f64 / 1e6,
            elapsed.as_secs_f64()
        ));
        out_line(&format!(
            "throughput: {overall:.3} MB/s overall, median {median_rate:.3} MB/s over the {seconds} one-second intervals of --duration"
        ));
        out_line(&format!("latency: median {p50:.2} s, p90 {p90:.2} s"));
        for failure in failures.iter().take(10) {
            match failure {
                Failure::Unreachable(m) => out_line(&format!("not reached: {m}")),
                Failure::Incomplete(m) => out_line(&format!("incomplete: {m}")),
            }
        }
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        exit::fail(&bento_functions::Error::Function(format!(
            "{} of {} requests got no complete response ({incomplete} incomplete, {unreachable} not reached through Tor)",
            failures.len(),
            outcomes.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
