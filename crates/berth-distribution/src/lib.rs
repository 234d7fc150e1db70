//! Registry client (pull, push, auth) and registry server.
//!
//! So far: first slices of both: [`client::pull`] from registries on this machine, and
//! `berth registry serve` ([`server`]). See docs/STATUS.md.

pub mod client;
pub mod server;
