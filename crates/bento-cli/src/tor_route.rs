//! `--tor`: how client commands reach boxes — directly, through a SOCKS
//! proxy, or with the embedded Tor client (Arti, `bento-arti`) — decided
//! once per process, before any command connects.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bento_arti::{ArtiDirs, BootstrapEvent, EmbeddedTor, EmbeddedTorConfig, PrivateNetwork};

use crate::{TargetArgs, TorMode};

/// The SOCKS proxy `--tor socks` uses without `--socks`: a local tor's
/// default SocksPort.
pub(crate) const DEFAULT_SOCKS: &str = "127.0.0.1:9050";

/// How boxes are reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// TCP to the box's address.
    Direct,
    /// Through this SOCKS5 proxy.
    Socks(String),
    /// The embedded Tor client, on this private network (else Tor's).
    Embedded { network: Option<PathBuf> },
}

/// Why the flags do not make a route.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RouteError {
    /// Two flags (or a flag and an environment variable) disagree.
    #[error("{0}")]
    Conflict(&'static str),
    /// The embedded client cannot be set up.
    #[error(transparent)]
    Embedded(#[from] bento_arti::Error),
}

/// The route the flags ask for. Without `--tor`: the embedded client when
/// `--tor-network` is given, a SOCKS proxy when `--socks` is, else direct.
pub(crate) fn route(
    mode: Option<TorMode>,
    socks: Option<&str>,
    network: Option<&Path>,
) -> Result<Route, RouteError> {
    let mode = mode.unwrap_or(match (network, socks) {
        (Some(_), _) => TorMode::Embedded,
        (None, Some(_)) => TorMode::Socks,
        (None, None) => TorMode::Direct,
    });
    if network.is_some() && mode != TorMode::Embedded {
        return Err(RouteError::Conflict(
            "--tor-network (BENTO_TOR_NETWORK) is for --tor embedded: a SOCKS proxy's tor has \
             its own network configuration",
        ));
    }
    match mode {
        TorMode::Direct if socks.is_some() => Err(RouteError::Conflict(
            "--tor direct uses no SOCKS proxy: drop --socks (or unset BENTO_SOCKS)",
        )),
        TorMode::Direct => Ok(Route::Direct),
        TorMode::Socks => Ok(Route::Socks(socks.unwrap_or(DEFAULT_SOCKS).to_owned())),
        TorMode::Embedded if socks.is_some() => Err(RouteError::Conflict(
            "--tor embedded uses no SOCKS proxy: drop --socks (or unset BENTO_SOCKS)",
        )),
        TorMode::Embedded => Ok(Route::Embedded {
            network: network.map(Path::to_owned),
        }),
    }
}

/// Decide the route from `args` and set it up in them: `socks` for a
/// proxy, `dialer` for the embedded client (made here, bootstrapped on the
/// first connection, shared by every connection of the process).
pub(crate) fn apply(args: &mut TargetArgs) -> Result<(), RouteError> {
    match route(args.tor, args.socks.as_deref(), args.tor_network.as_deref())? {
        Route::Direct => {}
        Route::Socks(proxy) => args.socks = Some(proxy),
        Route::Embedded { network } => {
            let network = network.as_deref().map(PrivateNetwork::load).transpose()?;
            let config = EmbeddedTorConfig {
                dirs: ArtiDirs::from_env(network.as_ref())?,
                network,
                bootstrap_timeout: bento_arti::DEFAULT_BOOTSTRAP_TIMEOUT,
            };
            args.dialer = Some(Arc::new(EmbeddedTor::new(config, Arc::new(show_progress))?));
        }
    }
    Ok(())
}

/// Bootstrap progress on stderr, one line per step (never the box's
/// address: Arti does not know it yet).
fn show_progress(event: &BootstrapEvent) {
    match event {
        BootstrapEvent::Progress { status, .. } => eprintln!("[tor] bootstrapping: {status}"),
        BootstrapEvent::Ready { elapsed } => {
            eprintln!("[tor] bootstrapped in {:.1} s", elapsed.as_secs_f64())
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_tor_the_other_flags_decide() {
        assert_eq!(route(None, None, None).unwrap(), Route::Direct);
        assert_eq!(
            route(None, Some("127.0.0.1:9150"), None).unwrap(),
            Route::Socks("127.0.0.1:9150".into())
        );
        assert_eq!(
            route(None, None, Some(Path::new("n.toml"))).unwrap(),
            Route::Embedded {
                network: Some("n.toml".into())
            }
        );
    }

    #[test]
    fn tor_socks_defaults_to_the_local_tor() {
        assert_eq!(
            route(Some(TorMode::Socks), None, None).unwrap(),
            Route::Socks(DEFAULT_SOCKS.into())
        );
        assert_eq!(
            route(Some(TorMode::Embedded), None, None).unwrap(),
            Route::Embedded { network: None }
        );
    }

    #[test]
    fn contradictions_are_refused_with_what_to_drop() {
        let err = route(Some(TorMode::Embedded), Some("127.0.0.1:9050"), None).unwrap_err();
        assert!(err.to_string().contains("drop --socks"), "{err}");
        let err = route(Some(TorMode::Direct), Some("127.0.0.1:9050"), None).unwrap_err();
        assert!(err.to_string().contains("drop --socks"), "{err}");
        let err = route(Some(TorMode::Socks), None, Some(Path::new("n.toml"))).unwrap_err();
        assert!(err.to_string().contains("--tor embedded"), "{err}");
        let err = route(None, Some("127.0.0.1:9050"), Some(Path::new("n.toml"))).unwrap_err();
        assert!(err.to_string().contains("drop --socks"), "{err}");
    }

    #[cfg(not(feature = "embedded-tor"))]
    #[test]
    fn without_the_feature_embedded_says_how_to_get_it() {
        use clap::Parser;
        let mut args = crate::Cli::try_parse_from(["bento", "--tor", "embedded", "status"])
            .unwrap()
            .target;
        args.socks = None;
        args.tor_network = None;
        let err = apply(&mut args).unwrap_err();
        assert!(err.to_string().contains("--features embedded-tor"), "{err}");
        assert!(args.dialer.is_none());
    }
}
