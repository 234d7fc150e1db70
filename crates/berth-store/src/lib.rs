//! Content store, metadata, overlay snapshotter, safe layer applier, garbage collection.
//!
//! Not built yet: see docs/STATUS.md for what exists today.
