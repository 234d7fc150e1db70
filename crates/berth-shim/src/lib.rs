//! Per-container monitor process (the conmon role): holds stdio, writes logs, reaps, records exit status.
//!
//! Not built yet: see docs/STATUS.md for what exists today.
