//! Docker Engine API server and the services behind it.
//!
//! Not built yet: see docs/STATUS.md for what exists today.
