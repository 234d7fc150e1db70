//! Shared types: digests, image references, ids, errors, Engine API models.
//!
//! Not built yet: see docs/STATUS.md for what exists today.
