//! `bento`: run a Bento box, and use one.
//!
//! `bento serve` runs a box; `bento store|renew|delete|invoke|attach|run|kill|status` use
//! one (directly, or through Tor with `--socks` or the embedded client,
//! `--tor embedded`); `bento bench` measures a
//! box it starts itself. `bento worker` is internal: the box starts it.

mod attest_cmd;
mod bench_cmd;
mod boxes_cmd;
mod browse_cmd;
mod commands;
mod cover_cmd;
mod doctor_cmd;
mod drop_cmd;
mod exit;
mod lb_cmd;
mod proxy_cmd;
mod runtime_path;
mod sealed_cmd;
mod serve;
mod serve_config;
mod shard_cmd;
mod terminal;
mod testnet_cmd;
mod tor_route;
mod units;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// `bento --version`: the version, and whether this build has the
/// embedded Tor client (`--tor embedded`; release builds do).
const VERSION: &str = if bento_arti::COMPILED_IN {
    concat!(env!("CARGO_PKG_VERSION"), " (embedded Tor client: yes)")
} else {
    concat!(env!("CARGO_PKG_VERSION"), " (embedded Tor client: no)")
};

/// Bento: run small Python functions on Tor relays, in a WebAssembly sandbox.
#[derive(Debug, Parser)]
#[command(
    name = "bento",
    version = VERSION,
    about = "Bento: run small Python functions on Tor relays, in a WebAssembly sandbox",
    after_help = "Quick start:\n  \
        bento serve --data-dir ./box-data &              # a box on 127.0.0.1:7878\n  \
        bento run hello.py -- world                      # store + invoke + attach\n  \
        bento run fetch.py --manifest fetch.toml         # with capabilities (docs/policy.md)\n  \
        bento store hello.py --json --lifetime 7d        # {\"function_id\", \"invoke_token\", \"lifetime_s\"}\n  \
        bento renew TOKEN --lifetime 30d                 # keep it longer;  bento delete TOKEN\n  \
        bento invoke TOKEN --json -- world               # {\"session_token\"}\n  \
        bento attach SESSION                             # output to stdout, stdin to api.recv()\n\n\
        Through Tor: --server xyz.onion:PORT --socks 127.0.0.1:9050   (a local tor)\n\
        \x20        or --server xyz.onion:PORT --tor embedded       (no tor needed; release builds)\n\
        Find boxes: bento boxes [--capability http] [--exit] [--json]   (needs tor's ControlPort)\n\
        Exit codes: 0 ok, 1 the function failed, 2 bad request or unknown token, 3 the box is busy, failed or unreachable\n\
        Docs: README.md, docs/python-api.md, docs/policy.md, docs/protocol.md, docs/legacy.md"
)]
struct Cli {
    #[command(flatten)]
    target: TargetArgs,
    #[command(subcommand)]
    command: Command,
}

/// How to reach a box. Global (every command accepts them), under their
/// own heading so that `bento serve --help` keeps the box's options apart.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Reaching a box (client commands)")]
struct TargetArgs {
    /// The box, HOST:PORT (a .onion name needs --socks or --tor embedded).
    #[arg(
        long,
        global = true,
        env = "BENTO_SERVER",
        default_value = "127.0.0.1:7878"
    )]
    server: String,
    /// SOCKS5 proxy (e.g. Tor's SocksPort) to reach the box through; the
    /// proxy resolves the box's name.
    #[arg(long, global = true, env = "BENTO_SOCKS")]
    socks: Option<String>,
    /// How to reach the box: `direct` (TCP), `socks` (through --socks,
    /// default 127.0.0.1:9050: a local tor), or `embedded` (Bento's own Tor
    /// client, Arti: no tor needed; compiled into release builds; state in
    /// ~/.local/state/bento/arti, cache in ~/.cache/bento/arti) [default:
    /// embedded with --tor-network, socks with --socks, else direct].
    #[arg(long, global = true, env = "BENTO_TOR", value_enum)]
    tor: Option<TorMode>,
    /// A private Tor network for --tor embedded: an Arti configuration
    /// fragment naming its authorities and fallback caches (`bento testnet
    /// up` writes one as DIR/arti.toml; docs/tor.md).
    #[arg(long, global = true, env = "BENTO_TOR_NETWORK", value_name = "FILE")]
    tor_network: Option<PathBuf>,
    /// The embedded Tor client, when `--tor embedded` (set by `tor_route::apply`).
    #[arg(skip)]
    dialer: Option<Arc<dyn bento_client::Dialer>>,
    #[command(flatten)]
    attest: attest_cmd::AttestFlags,
}

/// `--tor`: how client commands reach the box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TorMode {
    /// TCP to --server.
    Direct,
    /// Through a SOCKS5 proxy (--socks; default 127.0.0.1:9050).
    Socks,
    /// Bento's embedded Tor client (Arti).
    Embedded,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a Bento box.
    Serve(Box<serve::ServeArgs>),
    /// Check a box's setup (takes the same options as `serve`, e.g.
    /// `--config /etc/bento/box.toml`): the policy, the runtime, the data
    /// directory, the worker jail, the ports and the local tor (ControlPort,
    /// cookie, version, bootstrap, SocksPort), each with what to fix.
    /// Exits 1 if the box would not serve.
    Doctor(Box<serve::ServeArgs>),
    /// Store a Python function; prints its invoke token.
    ///
    /// The function's manifest (what it asks for: limits, capabilities,
    /// destinations) is FILE.toml next to FILE.py unless --manifest names
    /// another; without one it gets the minimum (session I/O only).
    /// The box keeps it for --lifetime, then deletes it; whoever holds the
    /// invoke token may renew or delete it.
    Store {
        /// The function's source file.
        file: PathBuf,
        /// The function's manifest (TOML) [default: the .toml next to FILE, if any].
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// How long the box keeps the function, e.g. 90m, 12h, 7d [default:
        /// the box's, see `bento status`]; at most the box's
        /// max_function_lifetime_h.
        #[arg(long, value_name = "DURATION", value_parser = units::parse_seconds)]
        lifetime: Option<std::time::Duration>,
        /// Print {"function_id": …, "invoke_token": …, "lifetime_s": …}.
        #[arg(long)]
        json: bool,
    },
    /// Keep a stored function for a new lifetime, counted from now.
    ///
    /// Exits 2 when no function is stored under the token (never stored,
    /// deleted, or its lifetime already ended) or the lifetime is longer
    /// than the box allows.
    Renew {
        /// Invoke token from `bento store`.
        token: String,
        /// The new lifetime, e.g. 90m, 12h, 7d [default: the box's].
        #[arg(long, value_name = "DURATION", value_parser = units::parse_seconds)]
        lifetime: Option<std::time::Duration>,
    },
    /// Delete a stored function now (whoever holds its invoke token may).
    ///
    /// Only this store goes: someone else who stored the same function keeps
    /// theirs. Exits 2 when no function is stored under the token.
    Delete {
        /// Invoke token from `bento store`.
        token: String,
    },
    /// Start a session of a stored function; prints its session token
    /// (and, for a function with the `service` capability, its service
    /// token on a second line).
    Invoke {
        /// Invoke token from `bento store`.
        token: String,
        /// Function to call.
        #[arg(long, default_value = "main")]
        entry: String,
        /// Print {"session_token": …} (plus "service_token" for a service).
        #[arg(long)]
        json: bool,
        /// Shape the session's output against traffic analysis with this
        /// defense: front, tamaraw, regulator or constant (the box's policy
        /// says which it allows; docs/policy.md#shaping).
        #[arg(long, value_name = "DEFENSE", value_parser = parse_defense)]
        defense: Option<bento_client::Defense>,
        /// Arguments: each is parsed as JSON when it parses, else taken as a string.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Attach to a session: output to stdout, stdin to the function.
    ///
    /// Exits 0 when the function returned, 1 when it failed (exception,
    /// limit, kill), 2 for a bad request or unknown token, 3 when the box
    /// is busy or failed. Ctrl-C detaches and leaves the session running.
    Attach {
        /// Session token from `bento invoke` (128 hex digits for a sealed
        /// session: it carries the session's secret).
        session: String,
        /// Resume at this output offset instead of where the box says the
        /// last client stopped reading.
        #[arg(long)]
        from: Option<u64>,
        /// Pad this client's own direction with the client side of this
        /// defense (input is never delayed).
        #[arg(long, value_name = "DEFENSE", value_parser = parse_defense)]
        pad: Option<bento_client::Defense>,
    },
    /// Run a function once and stream its output: one `Run` round trip
    /// (nothing is stored; a syntax error is the session's error). Sealed
    /// (--sealed) or shaped (--defense) runs store, invoke and attach.
    Run {
        /// The function's source file.
        file: PathBuf,
        /// The function's manifest (TOML) [default: the .toml next to FILE, if any].
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Function to call.
        #[arg(long, default_value = "main")]
        entry: String,
        /// Shape the session against traffic analysis with this defense
        /// (front, tamaraw, regulator, constant): the box shapes its
        /// output, this client pads its input direction.
        #[arg(long, value_name = "DEFENSE", value_parser = parse_defense)]
        defense: Option<bento_client::Defense>,
        /// Arguments: each is parsed as JSON when it parses, else taken as a string.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Open a channel to a running function's service (what it gets from
    /// api.accept()): stdin to the function, its output to stdout.
    ///
    /// Exits 0 when the function closed the channel, 1 when its instance
    /// failed, 2 for an unknown token, 3 when the service is at its channel
    /// limit or the box failed.
    Connect {
        /// Service token from `bento invoke` (of a function with the
        /// `service` capability).
        service: String,
    },
    /// Fetch a web page and everything it references at a box, padded to
    /// hide its size, and unpack it for offline viewing (the Browser
    /// function; see docs/functions/browser.md).
    Browse(browse_cmd::BrowseArgs),
    /// Anonymous drop-off and pick-up of a file (the Dropbox function; see
    /// docs/functions/dropbox.md).
    #[command(subcommand)]
    Drop(drop_cmd::DropCommand),
    /// Constant-rate cover traffic with a box, both directions (the Cover
    /// function; see docs/functions/cover.md). The box paces the wire with
    /// its `constant` defense (one 512-byte cell per 10 ms), so its policy
    /// must allow it.
    Cover(cover_cmd::CoverArgs),
    /// A file spread over several boxes with an erasure code (the Shard
    /// function; see docs/functions/shard.md).
    #[command(subcommand)]
    Shard(shard_cmd::ShardCommand),
    /// An onion service that scales across boxes (the LoadBalancer
    /// function; see docs/functions/loadbalancer.md).
    #[command(subcommand)]
    Lb(lb_cmd::LbCommand),
    /// A local HTTP proxy whose requests a caching Proxy function at the
    /// box fetches (see docs/functions/proxy.md).
    Proxy(proxy_cmd::ProxyArgs),
    /// Stop a session's instance at once.
    Kill {
        /// Session token.
        session: String,
    },
    /// Show the box's version, limits and coarse load (nothing about other
    /// users; the operator's exact figures are on `serve --metrics`).
    Status,
    /// List the Bento boxes announced in the current Tor consensus (relays'
    /// ContactInfo `bento:ONION.onion:PORT`) and ask each, over Tor, what
    /// it offers: policy, protocol version, attestation. Boxes that do not
    /// answer, or onions that are not boxes, are shown as such. Needs the
    /// local tor's ControlPort with `FetchUselessDescriptors 1`.
    Boxes(boxes_cmd::BoxesArgs),
    /// Ask a box what it proves about the code that runs your functions
    /// (TEE kind, measurement), or `bento attest measure` a worker build.
    Attest(attest_cmd::AttestArgs),
    /// Measure a box started for the purpose: invocation latency, output
    /// throughput, echo round trip, memory of waiting sessions.
    Bench(bench_cmd::BenchArgs),
    /// Manage the Python runtime component.
    #[command(subcommand)]
    Runtime(RuntimeCommand),
    /// Box policies and function manifests.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// A private Tor network on loopback with Bento boxes, for tests and demos.
    #[command(subcommand)]
    Testnet(TestnetCommand),
    /// Internal: a sandbox worker process (started by `bento serve`).
    #[command(hide = true)]
    Worker {
        /// Precompiled runtime.
        #[arg(long)]
        runtime: PathBuf,
        /// The instance storage directory: the only place the jailed
        /// worker may write.
        #[arg(long)]
        storage_dir: PathBuf,
        /// Run without the worker jail (landlock, seccomp, rlimits).
        #[arg(long)]
        no_jail: bool,
        /// Fresh instances to keep ready ahead of demand.
        #[arg(long, default_value_t = 0)]
        prewarm: usize,
        /// The sealed channel's secret key, created if missing (every
        /// worker of a box reads the same file). Without it the worker
        /// offers no sealed channel.
        #[arg(long)]
        channel_key: Option<PathBuf>,
        /// Nice levels below the server's priority (0 = the same).
        #[arg(long, default_value_t = 0)]
        nice: u8,
    },
}

/// `bento bench` measurements that run for long (see docs/benchmarks.md).
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum BenchMode {
    /// Many invocations against one box (its own `bento serve` process),
    /// sampling the server's and workers' open fds, threads and RSS; prints
    /// the curve and whether each figure is flat or growing.
    Soak(bench_cmd::SoakArgs),
    /// Many concurrent clients storing, invoking, detaching and killing
    /// against one box, every session's output checked by hash, with a
    /// probe timing a new user's answer throughout.
    Load(bench_cmd::LoadArgs),
    /// Kill -9 the box at random points during stores and sessions,
    /// restart it on the same data dir, and check that every stored
    /// function is intact or cleanly absent, never corrupt.
    Crash(bench_cmd::CrashArgs),
}

/// `bento testnet …`.
#[derive(Debug, Subcommand)]
pub(crate) enum TestnetCommand {
    /// Build a private Tor network from scratch and start Bento boxes beside
    /// its relays; returns once a circuit can be built and every box
    /// answers through its onion address.
    Up(testnet_cmd::UpArgs),
    /// Show the running network: `--json` prints {"socks": …, "boxes":
    /// [{"onion": …, "listen": …}, …], …} for scripts.
    Status {
        #[command(flatten)]
        dir: testnet_cmd::DirArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Stop exactly the processes `up` started (by PID) and remove the state.
    Down {
        #[command(flatten)]
        dir: testnet_cmd::DirArg,
    },
    /// Measure what Bento costs on top of Tor, on a network of its own
    /// (in a temporary directory unless --dir names an empty one):
    /// round trip and throughput of a raw Tor stream vs a Bento session
    /// beside the same relay, and the time to bring the network up and to
    /// publish an onion service.
    Bench(testnet_cmd::TorBenchArgs),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Print the default box policy, every key documented.
    Default,
    /// Check a function manifest against a box policy, offline, as a box
    /// checks it at store time (a box also knows its own addresses and,
    /// without --tor-control, refuses the Tor capabilities). Exits 1
    /// listing every violation.
    Check {
        /// The manifest (TOML).
        manifest: PathBuf,
        /// The box policy (TOML) [default: the default policy].
        #[arg(long)]
        policy: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum RuntimeCommand {
    /// Compile the runtime component (.wasm) to the native form the box loads (.cwasm).
    Precompile {
        /// The component built by componentize-py.
        wasm: PathBuf,
        /// Where to write the precompiled runtime.
        out: PathBuf,
    },
    /// Print the runtime path `bento serve` uses by default.
    Path,
}

/// Logs go to stderr, filtered by `BENTO_LOG` (e.g. `debug`, `warn`).
/// Without it, the embedded Tor client's crates (`arti_client`, `tor_*`)
/// log only warnings: its progress has lines of its own.
fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BENTO_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default_level},arti_=warn,tor_=warn"))
    });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Fills `serve`/`doctor` options from their `--config` file; the raw
/// matches say which options the command line gave (those win).
fn apply_config(command: &mut Command, matches: &ArgMatches) -> anyhow::Result<()> {
    let (args, name) = match command {
        Command::Serve(args) => (args, "serve"),
        Command::Doctor(args) => (args, "doctor"),
        _ => return Ok(()),
    };
    if let Some(sub) = matches.subcommand_matches(name) {
        **args = serve_config::apply((**args).clone(), sub)?;
    }
    Ok(())
}

/// A client option given on the command line of a command that reaches no
/// box (`bento serve --server X` would otherwise be accepted and ignored).
/// From the environment they stay silent: a user's BENTO_SERVER must not
/// break `bento serve`. `bento boxes` uses them to reach the network.
fn client_option_without_a_box(command: &Command, matches: &ArgMatches) -> Option<String> {
    if commands::reaches_a_box(command) || matches!(command, Command::Boxes(_)) {
        return None;
    }
    // Globals are recorded where they were given: at the top or in any
    // subcommand on the way down.
    let mut levels = vec![matches];
    while let Some((_, sub)) = levels.last().and_then(|m| m.subcommand()) {
        levels.push(sub);
    }
    // Every option of `TargetArgs` (its attestation flags included), so a
    // client option added there is covered without a list to keep.
    let client_options = TargetArgs::augment_args(clap::Command::new("client"));
    client_options
        .get_arguments()
        .map(|arg| arg.get_id().as_str().to_owned())
        .find(|id| {
            levels
                .iter()
                .any(|m| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
        })
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Err(e) = apply_config(&mut cli.command, &matches) {
        eprintln!("error: {e:#}");
        return ExitCode::from(exit::EXIT_REQUEST);
    }
    if let Some(option) = client_option_without_a_box(&cli.command, &matches) {
        eprintln!(
            "error: --{} is for commands that reach a box; `bento {}` reaches none",
            option.replace('_', "-"),
            matches.subcommand_name().unwrap_or("")
        );
        return ExitCode::from(exit::EXIT_REQUEST);
    }
    if commands::reaches_a_box(&cli.command)
        && let Err(e) = tor_route::apply(&mut cli.target)
    {
        eprintln!("error: {e}");
        return ExitCode::from(exit::EXIT_REQUEST);
    }
    // The benchmark's own box would log every session; keep it quiet.
    init_tracing(
        if matches!(cli.command, Command::Bench(_) | Command::Doctor(_)) {
            "warn"
        } else {
            "info"
        },
    );
    let result = match cli.command {
        Command::Worker {
            runtime,
            storage_dir,
            no_jail,
            prewarm,
            channel_key,
            nice,
        } => commands::worker(
            &runtime,
            (!no_jail).then_some(storage_dir),
            prewarm,
            channel_key.as_deref(),
            nice,
        ),
        Command::Runtime(RuntimeCommand::Precompile { wasm, out }) => {
            commands::precompile(&wasm, &out)
        }
        Command::Policy(PolicyCommand::Default) => {
            #[allow(clippy::print_stdout)]
            {
                print!("{}", bento_policy::DEFAULT_POLICY_TOML);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Check { manifest, policy }) => {
            commands::policy_check(&manifest, policy.as_deref())
        }
        Command::Runtime(RuntimeCommand::Path) => {
            #[allow(clippy::print_stdout)]
            {
                println!("{}", runtime_path::default_runtime().display());
            }
            Ok(ExitCode::SUCCESS)
        }
        command => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(rt) => rt.block_on(async {
                    if let Command::Attest(args) = command {
                        return attest_cmd::run(args, &cli.target).await;
                    }
                    if let Command::Boxes(args) = command {
                        return boxes_cmd::run(args, &cli.target).await;
                    }
                    let channel_key = match attest_cmd::preflight(&command, &cli.target).await {
                        Ok(key) => key,
                        Err(refused) => return Ok(refused),
                    };
                    commands::dispatch(command, cli.target, channel_key).await
                }),
                Err(e) => Err(e.into()),
            }
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::exit_code_of(&e))
        }
    }
}

/// A defense by name, for `--defense` and `--pad`.
fn parse_defense(name: &str) -> Result<bento_client::Defense, String> {
    bento_client::Defense::from_name(name).ok_or_else(|| {
        let known: Vec<&str> = bento_client::Defense::ALL
            .iter()
            .map(|d| d.name())
            .collect();
        format!("unknown defense {name:?}; known: {}", known.join(", "))
    })
}
