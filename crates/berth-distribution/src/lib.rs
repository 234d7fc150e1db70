//! Registry client (pull, push, auth), registry server (`berth registry serve`) and the
//! TLS listener both the daemon and the registry serve with. See docs/STATUS.md.

pub mod client;
pub mod server;
pub mod tls;
