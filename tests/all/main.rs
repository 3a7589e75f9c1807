//! Bento's cross-crate and end-to-end tests, in one binary (every test
//! binary links wasmtime; one binary links it once).
//!
//! They need the precompiled runtime: run them with `scripts/test.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod attest;
mod bounds;
mod browser;
mod capabilities;
mod cli;
mod cover;
mod discovery;
mod dropbox;
#[cfg(feature = "embedded-tor")]
mod embedded_tor;
mod harness;
mod host_memory;
mod hostile;
mod legacy;
mod load;
mod loadbalancer;
mod local_servers;
mod local_tor;
mod operator;
mod overload;
mod prewarm;
mod protocol_abuse;
mod proxy;
mod requests_shim;
mod run_once;
mod sealed;
mod sessions;
mod shaping;
mod shard;
mod socket_shim;
mod store_lifetime;
mod tor;
mod tor_restart;
mod worker_jail;
