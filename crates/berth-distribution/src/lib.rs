//! Registry client (pull, push, auth) and registry server.
//!
//! Not built yet: see docs/STATUS.md for what exists today.
