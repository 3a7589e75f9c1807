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
//! Nothing here talks to addresses outside `127.0.0.0/8` on its own, and no
//! process started here reads `/etc/tor`.

pub mod control;
mod error;
pub mod socks;
pub mod testnet;

pub use control::{OnionKey, OnionService, TorControl};
pub use error::TorError;
pub use socks::socks5_connect;
pub use testnet::{BoxEntry, NodeRole, NodeState, Testnet, TestnetConfig, TestnetState};
