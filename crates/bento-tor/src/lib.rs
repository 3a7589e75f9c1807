//! Tor integration for Bento.
//!
//! * [`control`]: an async ControlPort client ([`TorControl`]) — authenticate
//!   with the cookie, `GETINFO`, `ADD_ONION`/`DEL_ONION`, waiting for
//!   `HS_DESC UPLOADED`; asynchronous `650` events are routed apart from
//!   command replies, so one connection serves many commands.
//! * [`discovery`]: box announcements in relays' ContactInfo
//!   (`bento:ONION.onion:PORT`) and the relays of the consensus that carry
//!   them ([`TorControl::announcing_relays`]).
//! * [`socks`]: a minimal SOCKS5 client ([`socks5_connect`]) with optional
//!   username/password isolation (for `IsolateSOCKSAuth`); it sets
//!   `TCP_NODELAY`.
//!
//! The private Tor network for tests and demos is the `bento-testnet` crate.
//!
//! Nothing here talks to addresses outside `127.0.0.0/8` on its own.

pub mod control;
pub mod discovery;
mod error;
pub mod socks;

pub use control::{OnionKey, OnionService, TorControl};
pub use discovery::{Announcement, AnnouncementError, AnnouncingRelay};
pub use error::TorError;
pub use socks::socks5_connect;
