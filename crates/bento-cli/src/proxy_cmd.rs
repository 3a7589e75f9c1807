//! `bento proxy`: the Proxy's arguments (the client is
//! [`bento_functions::proxy`]).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bento_client::Target;
use bento_functions::proxy;
use clap::Args;

use crate::exit;
use crate::terminal::Terminal;

/// Options of `bento proxy`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:\n  \
    bento --server xyz.onion:7878 --socks 127.0.0.1:9050 proxy --listen 127.0.0.1:8118\n  \
    curl -x http://127.0.0.1:8118 http://example.org/          # plain http, any client\n  \
    curl http://127.0.0.1:8118/https://example.org/            # https, fetched by the box\n  \
    curl http://127.0.0.1:8118/bento/stats                     # the cache's counters\n\n\
    The response header X-Bento-Cache says hit (from the box's cache) or miss.\n\
    CONNECT (TLS tunnels) is answered 501: a tunnel cannot be cached.")]
pub struct ProxyArgs {
    /// Where the local HTTP proxy listens (port 0: any free port; the
    /// address is printed on stderr).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8118")]
    pub listen: SocketAddr,
    /// Most bytes the box's cache holds (bodies and headers; at most 48MiB,
    /// so that it fits the function's memory): 32MiB, 500kB, …
    #[arg(long, value_name = "SIZE", default_value = "32MiB", value_parser = crate::units::parse_size)]
    pub cache_size: u64,
    /// Most responses the cache holds.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_entries: u32,
    /// Largest response that is cached (larger ones are relayed, not kept).
    #[arg(long, value_name = "SIZE", default_value = "4MiB", value_parser = crate::units::parse_size)]
    pub max_object: u64,
    /// Largest response that is relayed at all (at most 16MiB, the box's
    /// own limit); a larger one is answered 502.
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = crate::units::parse_size)]
    pub max_response: u64,
    /// How long each instance serves before a new one replaces it (at most
    /// 270 s: the function's wall-clock limit is 300 s, and requests under
    /// way get the rest).
    #[arg(long, value_name = "DURATION", default_value = "270s", value_parser = crate::units::parse_seconds)]
    pub lifetime: Duration,
    /// Destination rule for the box's fetches, in Tor exit-policy syntax
    /// (repeatable); replaces the manifest's `accept *:80`, `accept *:443`.
    /// Example: --destination "accept 198.51.100.7:8080".
    #[arg(long = "destination", value_name = "RULE")]
    pub destinations: Vec<String>,
    /// Do not ask for `tor_connect` (.onion sites are then answered 502).
    #[arg(long)]
    pub no_onion: bool,
    /// Log every request (method, URL, status, hit or miss, size, time) and
    /// the function's own lines on stderr.
    #[arg(long, short)]
    pub verbose: bool,
}

/// `bento proxy`.
pub async fn run(target: &Target, args: ProxyArgs) -> ExitCode {
    let options = proxy::ProxyOptions {
        listen: args.listen,
        cache_size: args.cache_size,
        max_entries: args.max_entries,
        max_object: args.max_object,
        max_response: args.max_response,
        lifetime: args.lifetime,
        destinations: args.destinations,
        no_onion: args.no_onion,
        verbose: args.verbose,
    };
    let stop = match crate::terminal::stop_requests() {
        Ok(stop) => stop,
        Err(e) => return exit::fail(&e),
    };
    exit::status(proxy::run(target, &options, stop, Terminal::shared()).await)
}
