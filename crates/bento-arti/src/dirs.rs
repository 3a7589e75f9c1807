//! Where the embedded Tor client keeps its state and cache: the user's XDG
//! base directories, one pair per network.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::{Error, PrivateNetwork};

/// Arti's state directory (guards, circuit-build timeouts: small, worth
/// keeping) and cache directory (the consensus and microdescriptors: safe
/// to delete, fetched again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtiDirs {
    /// `$XDG_STATE_HOME/bento/arti…`.
    pub state: PathBuf,
    /// `$XDG_CACHE_HOME/bento/arti…`.
    pub cache: PathBuf,
}

impl ArtiDirs {
    /// The directories for `network` (the public Tor network when `None`),
    /// from this process's environment.
    pub fn from_env(network: Option<&PrivateNetwork>) -> Result<Self, Error> {
        Self::from_vars(|name| std::env::var_os(name), network)
    }

    /// The directories from the variables `var` gives:
    /// `$XDG_STATE_HOME` (else `$HOME/.local/state`) and `$XDG_CACHE_HOME`
    /// (else `$HOME/.cache`), each followed by `bento/arti` for the public
    /// Tor network or `bento/arti-networks/ID` for a private one (ID: the
    /// [`PrivateNetwork::id`] of its file). As the XDG specification says,
    /// a variable that is empty or not an absolute path is ignored.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<OsString>,
        network: Option<&PrivateNetwork>,
    ) -> Result<Self, Error> {
        let home = var("HOME").map(PathBuf::from).filter(|p| p.is_absolute());
        let base = |variable: &'static str, what: &'static str, fallback: &[&str]| {
            var(variable)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .or_else(|| {
                    home.as_ref()
                        .map(|h| fallback.iter().fold(h.clone(), |p, part| p.join(part)))
                })
                .ok_or(Error::NoHome { what, variable })
        };
        let tail: PathBuf = match network {
            None => Path::new("bento").join("arti"),
            Some(network) => Path::new("bento").join("arti-networks").join(network.id()),
        };
        Ok(ArtiDirs {
            state: base("XDG_STATE_HOME", "state", &[".local", "state"])?.join(&tail),
            cache: base("XDG_CACHE_HOME", "cache", &[".cache"])?.join(&tail),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn without_xdg_variables_home_decides() {
        let dirs = ArtiDirs::from_vars(env(&[("HOME", "/home/u")]), None).unwrap();
        assert_eq!(dirs.state, Path::new("/home/u/.local/state/bento/arti"));
        assert_eq!(dirs.cache, Path::new("/home/u/.cache/bento/arti"));
    }

    #[test]
    fn xdg_variables_win_over_home() {
        let dirs = ArtiDirs::from_vars(
            env(&[
                ("HOME", "/home/u"),
                ("XDG_STATE_HOME", "/s"),
                ("XDG_CACHE_HOME", "/c"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(dirs.state, Path::new("/s/bento/arti"));
        assert_eq!(dirs.cache, Path::new("/c/bento/arti"));
    }

    #[test]
    fn empty_or_relative_xdg_variables_are_ignored() {
        let dirs = ArtiDirs::from_vars(
            env(&[
                ("HOME", "/home/u"),
                ("XDG_STATE_HOME", ""),
                ("XDG_CACHE_HOME", "rel/c"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(dirs.state, Path::new("/home/u/.local/state/bento/arti"));
        assert_eq!(dirs.cache, Path::new("/home/u/.cache/bento/arti"));
    }

    #[test]
    fn without_home_or_xdg_there_is_a_readable_error() {
        let err = ArtiDirs::from_vars(env(&[]), None).unwrap_err();
        assert!(
            err.to_string().contains("set HOME or XDG_STATE_HOME"),
            "{err}"
        );
        let err = ArtiDirs::from_vars(env(&[("XDG_STATE_HOME", "/s")]), None).unwrap_err();
        assert!(err.to_string().contains("XDG_CACHE_HOME"), "{err}");
        assert!(
            ArtiDirs::from_vars(
                env(&[("XDG_STATE_HOME", "/s"), ("XDG_CACHE_HOME", "/c")]),
                None
            )
            .is_ok()
        );
    }

    #[test]
    fn a_private_network_gets_directories_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("arti.toml");
        std::fs::write(&path, crate::network::tests::EXAMPLE).unwrap();
        let network = PrivateNetwork::load(&path).unwrap();
        let vars = env(&[("HOME", "/home/u")]);
        let dirs = ArtiDirs::from_vars(&vars, Some(&network)).unwrap();
        let tail = Path::new("bento/arti-networks").join(network.id());
        assert_eq!(dirs.state, Path::new("/home/u/.local/state").join(&tail));
        assert_eq!(dirs.cache, Path::new("/home/u/.cache").join(&tail));
        assert_ne!(dirs, ArtiDirs::from_vars(&vars, None).unwrap());
    }
}
