//! Dockerfile parser, stage planner, executor and cache keys.
//!
//! Not built yet: see docs/STATUS.md for what exists today.
