//! Types shared by every part of Berth: content digests and image references (with Docker's
//! normalisation). Engine API models join them as the daemon is built.

pub mod digest;
pub mod fs;
pub mod reference;
pub mod time;

pub use digest::{Digest, DigestError, Hasher};
pub use reference::{Reference, ReferenceError};
