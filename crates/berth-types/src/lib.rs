//! Types shared by every part of Berth: content digests and image references (with Docker's
//! normalisation). Engine API models join them as the daemon is built.

pub mod auth;
pub mod digest;
pub mod fs;
pub mod ignore;
pub mod reference;
pub mod time;

pub use digest::{Digest, DigestError, Hasher};
pub use reference::{Reference, ReferenceError};

/// `n` random hex digits (ids, names of one-off containers), from /dev/urandom; without
/// it, from the time and process id (unique, not secret).
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n.div_ceil(2)];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok();
    let mut s = if ok {
        b.iter().map(|x| format!("{x:02x}")).collect()
    } else {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let seed = format!("{t:?}{}", std::process::id());
        let mut s = String::new();
        while s.len() < n {
            s.push_str(Digest::sha256(format!("{seed}{}", s.len()).as_bytes()).hex());
        }
        s
    };
    s.truncate(n);
    s
}
