//! Tor integration for Bento.
//!
//! * [`control`]: an async ControlPort client ([`TorControl`]) — authenticate
//!   with the cookie, `GETINFO`, `ADD_ONION`/`DEL_ONION`, waiting for
//!   `HS_DESC UPLOADED`; asynchronous `650` events are routed apart from
//!   command replies, so one connection serves many commands.
//! * [`socks`]: a minimal SOCKS5 client ([`socks5_connect`]) with optional
//!   username/password isolation (for `IsolateSOCKSAuth`); it sets
//!   `TCP_NODELAY`.
//! * [`testnet`]: a private Tor network on loopback ([`Testnet`]): 3
//!   directory authorities, middles, exits, a client and optional relays that
//!   host a Bento box (ControlPort + SocksPort). Its state is recorded in
//!   `<dir>/testnet.json` so another process can find and stop it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), bento_tor::TorError> {
//! use bento_tor::{OnionKey, Testnet, TestnetConfig, TorControl, socks5_connect};
//! use std::time::Duration;
//!
//! let mut config = TestnetConfig::new("/tmp/bento-testnet/net");
//! config.boxes = 1;
//! let net = Testnet::up(config, &mut |step: &str| eprintln!("{step}")).await?;
//! let host = net.state().box_hosts()[0].clone();
//! let mut control = TorControl::connect(&host.control_addr().to_string()).await?;
//! let target = "127.0.0.2:8080".parse().expect("literal address");
//! let svc = control.add_onion(&OnionKey::New, &[(80, target)], &["DiscardPK"]).await?;
//! control.wait_for_descriptor_upload(&svc.service_id, Duration::from_secs(30)).await?;
//! let _stream = socks5_connect(net.socks_addr(), &svc.onion_address(), 80, None).await?;
//! net.shutdown()?;
//! # Ok(())
//! # }
//! ```
//!
//! Nothing here talks to addresses outside `127.0.0.0/8` on its own, and no
//! process started here reads `/etc/tor`.

pub mod control;
mod error;
pub mod socks;
pub mod testnet;

pub use control::{OnionKey, OnionService, TorControl};
pub use error::TorError;
pub use socks::socks5_connect;
pub use testnet::{
    BoxEntry, NodeRole, NodeState, RelayCounts, Testnet, TestnetConfig, TestnetState,
};
