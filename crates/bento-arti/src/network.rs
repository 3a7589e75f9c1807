//! A private Tor network, described by an Arti configuration fragment.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::Error;

/// A private Tor network for the embedded client: an Arti configuration
/// fragment (TOML, Arti's own keys) with at least a `[tor_network]`
/// section naming the network's authorities (`authorities.v3idents`) and
/// fallback caches (`fallback_caches`: `rsa_identity`, `ed_identity`,
/// `orports`). Other sections (e.g. `[path_rules]`) are Arti settings too
/// (a key Arti does not know is an error when the client is made);
/// storage is Bento's ([`crate::ArtiDirs`]) whatever the file says.
/// `bento testnet up` writes one as `DIR/arti.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateNetwork {
    path: PathBuf,
    text: String,
    id: String,
}

impl PrivateNetwork {
    /// Read and check the file: TOML, with a `[tor_network]` table that has
    /// both `authorities` and `fallback_caches` (Arti needs fallbacks when
    /// the authorities are not the public network's). Arti checks the
    /// values when the client is made.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|error| Error::ReadNetwork {
            path: path.to_owned(),
            error,
        })?;
        let bad = |reason: String| Error::BadNetwork {
            path: path.to_owned(),
            reason,
        };
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| bad(e.to_string()))?;
        let network = table
            .get("tor_network")
            .and_then(toml::Value::as_table)
            .ok_or_else(|| bad("it has no [tor_network] section".into()))?;
        for key in ["authorities", "fallback_caches"] {
            if !network.contains_key(key) {
                return Err(bad(format!("[tor_network] has no {key}")));
            }
        }
        let id = hex::encode(&Sha256::digest(text.as_bytes())[..8]);
        Ok(PrivateNetwork {
            path: path.to_owned(),
            text,
            id,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration fragment, as read.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// 16 hex digits of the SHA-256 of the file: names the network's own
    /// state and cache directories, so a changed file starts afresh.
    pub fn id(&self) -> &str {
        &self.id
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The shape `bento testnet up` writes (fingerprints made up).
    pub(crate) const EXAMPLE: &str = r#"
[tor_network]
authorities = { v3idents = ["911F7C74212214823DDBDE3044B5B1AF3EFB98A0"] }

[[tor_network.fallback_caches]]
rsa_identity = "D4F0E1A2B3C4D5E6F708192A3B4C5D6E7F809102"
ed_identity = "hgU7AG06lCToQlcVVk27Hm2hFrlVUZJlA4zXTk+aAN4"
orports = ["127.0.0.1:5100"]

[path_rules]
ipv4_subnet_family_prefix = 33
ipv6_subnet_family_prefix = 129
"#;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("arti.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn a_network_file_is_read_and_named_by_its_content() {
        let (_dir, path) = write(EXAMPLE);
        let network = PrivateNetwork::load(&path).unwrap();
        assert_eq!(network.text(), EXAMPLE);
        assert_eq!(network.id().len(), 16);
        let (_dir2, other) = write(&EXAMPLE.replace("5100", "5101"));
        assert_ne!(PrivateNetwork::load(&other).unwrap().id(), network.id());
        let (_dir3, same) = write(EXAMPLE);
        assert_eq!(PrivateNetwork::load(&same).unwrap().id(), network.id());
    }

    #[test]
    fn files_that_are_not_network_files_are_refused_with_the_reason() {
        let (_d, path) = write("not = [toml");
        let err = PrivateNetwork::load(&path).unwrap_err();
        assert!(matches!(err, Error::BadNetwork { .. }), "{err}");
        let (_d, path) = write("[path_rules]\nipv4_subnet_family_prefix = 33\n");
        let err = PrivateNetwork::load(&path).unwrap_err();
        assert!(
            err.to_string().contains("no [tor_network] section"),
            "{err}"
        );
        let (_d, path) = write("[tor_network]\nauthorities = { v3idents = [] }\n");
        let err = PrivateNetwork::load(&path).unwrap_err();
        assert!(err.to_string().contains("no fallback_caches"), "{err}");
        let err = PrivateNetwork::load(Path::new("/nonexistent/arti.toml")).unwrap_err();
        assert!(matches!(err, Error::ReadNetwork { .. }), "{err}");
        assert_eq!(err.kind(), crate::ErrorKind::BadInput);
    }
}
