//! Registry client (pull, push, auth) and registry server.
//!
//! So far: the server's first slice (`berth registry serve`, module [`server`]). The
//! client comes with its issue; see docs/STATUS.md.

pub mod server;
