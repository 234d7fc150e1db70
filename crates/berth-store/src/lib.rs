//! Berth's image store. So far: the layer applier (tar layers, plain, gzip or zstd, applied
//! path-safely with overlay whiteouts and the diffID computed on the way). The content
//! store, snapshots, metadata and garbage collection follow (see docs/STATUS.md).

pub mod compress;
pub mod content;
pub mod image;
pub mod layer;
pub mod snapshot;
