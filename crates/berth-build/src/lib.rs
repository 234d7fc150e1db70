//! Dockerfile parser and stage planner. The executor lives in the daemon (`build.rs`),
//! built on the daemon's own container and image operations.

pub mod parse;
pub mod plan;
