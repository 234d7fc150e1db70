//! Docker-compatible command line and compose.
//!
//! Not built yet: see docs/STATUS.md for what exists today.
