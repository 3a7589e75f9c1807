//! Outbound connections made on behalf of functions.
//!
//! A function running in the sandbox may only reach destinations that both
//! its grant (the `[network]` rules of its manifest, as admitted) and the
//! box policy accept, in Tor exit-policy syntax ([`bento_policy::ExitPolicy`]).
//! This crate is the one place where the box opens such connections:
//!
//! - [`DestinationCheck`] holds both rule lists and the box's own addresses
//!   and decides one `ip:port`.
//! - [`resolve_checked`] turns a host name (or IP literal) into the
//!   addresses that may be reached, and [`connect`] opens a TCP stream to
//!   one of them.
//! - [`http_request`] performs one HTTP(S) exchange, following redirects
//!   itself and checking every hop.
//!
//! # Why the check happens after name resolution
//!
//! Rules are about addresses, and names are not addresses: a name an
//! attacker controls can resolve to `127.0.0.1`, to the cloud metadata
//! service `169.254.169.254`, or to the box's own relay ports, and can
//! resolve differently each time it is asked ("DNS rebinding"). So a name
//! is resolved exactly once, every resulting address is checked, and the
//! connection is made only to the addresses that passed — never by handing
//! the name to something that would resolve it again. The HTTP client
//! resolves through [`resolve_checked`] as well, for the first request and
//! for every redirect, and never uses a proxy from the environment.

mod check;
mod error;
mod http;

pub use check::{DestinationCheck, connect, resolve_checked};
pub use error::EgressError;
pub use http::{
    DEFAULT_MAX_REDIRECTS, DEFAULT_MAX_RESPONSE_BYTES, HttpLimits, HttpRequest, HttpResponse,
    TlsSettings, http_request,
};

#[cfg(test)]
mod testutil;
