//! Arti, bootstrapped on first use, as a [`bento_client::Dialer`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arti_client::TorClient;
use arti_client::TorClientConfig;
use arti_client::config::{CfgPath, TorClientConfigBuilder};
use futures::StreamExt;
use tokio::sync::OnceCell;
use tor_rtcompat::PreferredRuntime;

use crate::{BootstrapEvent, EmbeddedTorConfig, Error, ProgressSink};

/// The embedded Tor client. Made cheaply (the configuration is checked,
/// nothing is started); the first [`dial`](bento_client::Dialer::dial)
/// bootstraps it, reporting progress, and every later one reuses it.
pub struct EmbeddedTor {
    config: TorClientConfig,
    bootstrap_timeout: Duration,
    progress: ProgressSink,
    client: OnceCell<Arc<TorClient<PreferredRuntime>>>,
}

impl fmt::Debug for EmbeddedTor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedTor")
            .field("bootstrapped", &self.client.initialized())
            .finish_non_exhaustive()
    }
}

impl EmbeddedTor {
    /// Check the configuration (the private network file's values
    /// included) and make the client, not yet bootstrapped.
    pub fn new(config: EmbeddedTorConfig, progress: ProgressSink) -> Result<Self, Error> {
        Ok(EmbeddedTor {
            config: client_config(&config)?,
            bootstrap_timeout: config.bootstrap_timeout,
            progress,
            client: OnceCell::new(),
        })
    }

    /// The bootstrapped client (bootstrapping it on the first call).
    async fn client(&self) -> Result<&Arc<TorClient<PreferredRuntime>>, Error> {
        self.client.get_or_try_init(|| self.bootstrap()).await
    }

    async fn bootstrap(&self) -> Result<Arc<TorClient<PreferredRuntime>>, Error> {
        // rustls (Arti's TLS here) needs a process-wide crypto provider:
        // ring, the workspace's one. An error means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let started = Instant::now();
        let client = TorClient::builder()
            .config(self.config.clone())
            .create_unbootstrapped()
            .map_err(|e| Error::Config(chain(&e)))?;
        let mut events = client.bootstrap_events();
        let progress = self.progress.clone();
        let reporter = tokio::spawn(async move {
            let mut last = None;
            while let Some(status) = events.next().await {
                let percent = (status.as_frac().clamp(0.0, 1.0) * 100.0).round() as u8;
                let step = (percent, status.blocked().is_some());
                if last != Some(step) {
                    last = Some(step);
                    progress(&BootstrapEvent::Progress {
                        percent,
                        status: status.to_string(),
                    });
                }
            }
        });
        let result = tokio::time::timeout(self.bootstrap_timeout, client.bootstrap()).await;
        reporter.abort();
        match result {
            Err(_) => Err(Error::Bootstrap(format!(
                "not done after {} s ({})",
                self.bootstrap_timeout.as_secs(),
                client.bootstrap_status()
            ))),
            Ok(Err(e)) => Err(Error::Bootstrap(chain(&e))),
            Ok(Ok(())) => {
                (self.progress)(&BootstrapEvent::Ready {
                    elapsed: started.elapsed(),
                });
                Ok(client)
            }
        }
    }
}

#[async_trait::async_trait]
impl bento_client::Dialer for EmbeddedTor {
    async fn dial(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Box<dyn bento_client::ByteStream>, bento_client::DialError> {
        let client = self.client().await?;
        let stream = client
            .connect((host, port))
            .await
            .map_err(|e| Error::Connect(chain(&e)))?;
        Ok(Box::new(stream))
    }
}

/// Arti's configuration: the private network's fragment (if any) over
/// Arti's defaults, then Bento's storage directories.
fn client_config(config: &EmbeddedTorConfig) -> Result<TorClientConfig, Error> {
    let bad_network = |reason: String| match &config.network {
        Some(network) => Error::BadNetwork {
            path: network.path().to_owned(),
            reason,
        },
        None => Error::Config(reason),
    };
    let mut builder = match &config.network {
        None => TorClientConfigBuilder::default(),
        Some(network) => {
            let table: toml::Table = network
                .text()
                .parse()
                .map_err(|e: toml::de::Error| bad_network(e.to_string()))?;
            let mut unknown = Vec::new();
            let builder: TorClientConfigBuilder =
                serde_ignored::deserialize(toml::Value::Table(table), |path| {
                    unknown.push(path.to_string())
                })
                .map_err(|e| bad_network(e.to_string()))?;
            if !unknown.is_empty() {
                return Err(bad_network(format!(
                    "Arti has no setting {}",
                    unknown.join(", ")
                )));
            }
            builder
        }
    };
    builder
        .storage()
        .state_dir(CfgPath::new_literal(&config.dirs.state))
        .cache_dir(CfgPath::new_literal(&config.dirs.cache));
    builder.build().map_err(|e| bad_network(e.to_string()))
}

/// An error with its causes, `outer: inner: …` (Arti's top-level messages
/// are short; the reason is often in a source).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ArtiDirs, PrivateNetwork};

    fn config(network_text: Option<&str>) -> (tempfile::TempDir, EmbeddedTorConfig) {
        let dir = tempfile::tempdir().unwrap();
        let network = network_text.map(|text| {
            let path = dir.path().join("arti.toml");
            std::fs::write(&path, text).unwrap();
            PrivateNetwork::load(&path).unwrap()
        });
        let dirs = ArtiDirs {
            state: dir.path().join("state"),
            cache: dir.path().join("cache"),
        };
        let config = EmbeddedTorConfig {
            dirs,
            network,
            bootstrap_timeout: crate::DEFAULT_BOOTSTRAP_TIMEOUT,
        };
        (dir, config)
    }

    #[test]
    fn the_public_network_and_a_testnet_style_file_both_configure_arti() {
        let (_dir, public) = config(None);
        client_config(&public).unwrap();
        let (_dir, private) = config(Some(crate::network::tests::EXAMPLE));
        let built = client_config(&private).unwrap();
        assert_ne!(built, client_config(&public).unwrap());
    }

    #[test]
    fn unknown_keys_in_the_network_file_are_refused() {
        let text = format!("{}\n[path_rulez]\nx = 1\n", crate::network::tests::EXAMPLE);
        let (_dir, bad) = config(Some(&text));
        let err = client_config(&bad).unwrap_err();
        assert!(err.to_string().contains("path_rulez"), "{err}");
    }

    #[test]
    fn a_bad_value_in_the_network_file_names_the_file() {
        let text = crate::network::tests::EXAMPLE.replace("D4F0E1A2", "not-hex!");
        let (_dir, bad) = config(Some(&text));
        let err = client_config(&bad).unwrap_err();
        assert!(matches!(err, Error::BadNetwork { .. }), "{err}");
        assert!(err.to_string().contains("arti.toml"), "{err}");
    }
}
