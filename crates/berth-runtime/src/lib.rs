//! Berth's OCI runtime: turns a bundle (rootfs + config.json) into an isolated process,
//! per the OCI runtime spec. The `berth runtime` command line (runc-compatible) and the
//! container shim are thin layers over [`Runtime`].

pub mod cgroups;
pub mod console;
pub mod container;
pub mod error;
pub mod features;
pub mod hooks;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod sys;

pub use oci_spec;

pub use container::{CreateOptions, ExecOptions, Runtime};
pub use error::{Error, Result};

/// The runtime spec version this runtime implements.
pub const OCI_VERSION: &str = "1.2.0";
