//! Dockerfile parser, stage planner, executor and cache keys.
//!
//! Built so far: the parser (`parse`). The planner, executor and cache come next; see
//! docs/STATUS.md.

pub mod parse;
