//! The content store: blobs under `blobs/<algorithm>/<hex>`, laid out as an OCI image
//! layout (`oci-layout`, `index.json`) so other tools can read it.
//!
//! Writes go through an [`Ingest`]: bytes are hashed as they are written to
//! `ingest/<key>/data`; [`Ingest::commit`] checks size and digest, fsyncs and renames the
//! file to its digest's name. A crash at any point leaves either no blob or a complete,
//! verified one; a partial ingest is resumed by the next writer with the same key.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use berth_types::digest::{Algorithm, Hasher};
use berth_types::Digest;

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("blob {0} not found")]
    NotFound(Digest),
}

type Result<T> = std::result::Result<T, ContentError>;

fn io_ctx<T>(r: io::Result<T>, ctx: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|source| ContentError::Io {
        context: ctx(),
        source,
    })
}

pub use berth_types::fs::atomic_write;

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The current time for records and image configs.
pub fn now_rfc3339() -> String {
    berth_types::time::now_rfc3339()
}

/// A number not handed out before by this process (for temporary names).
pub fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

pub struct ContentStore {
    root: PathBuf,
    /// [`ContentStore::write_blob`]s one at a time: two writers of the same blob would
    /// share its ingest.
    writing: std::sync::Mutex<()>,
}

/// A problem `verify` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    /// A blob whose content does not hash to its name.
    Corrupt { path: PathBuf, actual: Digest },
    /// A file under blobs/ that is not named like a digest.
    Stray(PathBuf),
}

impl ContentStore {
    /// Opens (creating if needed) the store at `root` (`<data-root>/content`).
    pub fn open(root: &Path) -> Result<ContentStore> {
        for d in ["blobs/sha256", "blobs/sha512", "ingest"] {
            let p = root.join(d);
            io_ctx(std::fs::create_dir_all(&p), || {
                format!("creating {}", p.display())
            })?;
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            io_ctx(
                atomic_write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#),
                || format!("writing {}", layout.display()),
            )?;
        }
        let index = root.join("index.json");
        if !index.exists() {
            io_ctx(
                atomic_write(&index, br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#),
                || format!("writing {}", index.display()),
            )?;
        }
        Ok(ContentStore {
            root: root.to_path_buf(),
            writing: std::sync::Mutex::new(()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    pub fn exists(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        File::open(self.path(d)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ContentError::NotFound(d.clone()),
            _ => ContentError::Io {
                context: format!("opening blob {d}"),
                source: e,
            },
        })
    }

    pub fn read(&self, d: &Digest) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        io_ctx(self.open_blob(d)?.read_to_end(&mut v), || {
            format!("reading blob {d}")
        })?;
        Ok(v)
    }

    /// Stores `data` and returns its sha256 digest.
    pub fn write_blob(&self, data: &[u8]) -> Result<Digest> {
        let d = Digest::sha256(data);
        let _one = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        if self.exists(&d) {
            return Ok(d);
        }
        let mut w = self.ingest(
            &format!("blob-{}", d.hex()),
            Some((d.clone(), data.len() as u64)),
        )?;
        // The whole blob is here: whatever an interrupted write left is not continued.
        w.restart()?;
        io_ctx(w.write_all(data), || format!("writing blob {d}"))?;
        w.commit()
    }

    /// Starts or resumes the ingest named `key` (any string; a download's reference, say).
    /// With `expected`, commit checks that digest and size.
    pub fn ingest(&self, key: &str, expected: Option<(Digest, u64)>) -> Result<Ingest> {
        let dir = self
            .root
            .join("ingest")
            .join(Digest::sha256(key.as_bytes()).hex());
        io_ctx(std::fs::create_dir_all(&dir), || {
            format!("creating {}", dir.display())
        })?;
        let path = dir.join("data");
        let algorithm = expected
            .as_ref()
            .map_or(Algorithm::Sha256, |(d, _)| d.algorithm());
        let mut hasher = Hasher::new(algorithm);
        let mut size = 0u64;
        // Resume: what is already there is hashed again rather than trusted.
        if let Ok(mut f) = File::open(&path) {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = io_ctx(f.read(&mut buf), || format!("reading {}", path.display()))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
            }
        }
        let file = io_ctx(
            OpenOptions::new().create(true).append(true).open(&path),
            || format!("opening {}", path.display()),
        )?;
        Ok(Ingest {
            file,
            hasher,
            size,
            dir,
            expected,
            blobs: self.root.join("blobs"),
        })
    }

    /// Checks every blob against its name (an fsck). Partial ingests are not problems.
    pub fn verify(&self) -> Result<Vec<Problem>> {
        let mut problems = Vec::new();
        for algo in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = self.root.join("blobs").join(algo.as_str());
            let rd = io_ctx(std::fs::read_dir(&dir), || {
                format!("reading {}", dir.display())
            })?;
            for e in rd.flatten() {
                let path = e.path();
                let name = format!("{}:{}", algo.as_str(), e.file_name().to_string_lossy());
                let Ok(expected) = name.parse::<Digest>() else {
                    problems.push(Problem::Stray(path));
                    continue;
                };
                let mut h = Hasher::new(algo);
                let mut f = io_ctx(File::open(&path), || format!("opening {}", path.display()))?;
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = io_ctx(f.read(&mut buf), || format!("reading {}", path.display()))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                let actual = h.finish();
                if actual != expected {
                    problems.push(Problem::Corrupt { path, actual });
                }
            }
        }
        Ok(problems)
    }

    /// Removes a blob (garbage collection decides which).
    pub fn delete(&self, d: &Digest) -> Result<()> {
        match std::fs::remove_file(self.path(d)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ContentError::Io {
                context: format!("removing blob {d}"),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

/// A blob being written. Dropping it without [`Ingest::commit`] keeps the partial data for
/// a later resume.
pub struct Ingest {
    file: File,
    hasher: Hasher,
    size: u64,
    dir: PathBuf,
    expected: Option<(Digest, u64)>,
    blobs: PathBuf,
}

impl Ingest {
    /// Bytes already written (where a resumed download continues from).
    pub fn offset(&self) -> u64 {
        self.size
    }

    /// The file holding what was written so far (read by an unpack that continues with the
    /// rest of the stream).
    pub fn data_path(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Drops what was written (a server that would not continue it sends it again).
    pub fn restart(&mut self) -> Result<()> {
        io_ctx(self.file.set_len(0), || "truncating an ingest".to_string())?;
        self.hasher = Hasher::new(self.hasher.algorithm());
        self.size = 0;
        Ok(())
    }

    /// Verifies and publishes the blob under its digest.
    pub fn commit(self) -> Result<Digest> {
        let Ingest {
            file,
            hasher,
            size,
            dir,
            expected,
            blobs,
        } = self;
        let actual = hasher.finish();
        if let Some((want, want_size)) = &expected {
            if size != *want_size {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(ContentError::SizeMismatch {
                    digest: want.to_string(),
                    expected: *want_size,
                    actual: size,
                });
            }
            if *want != actual {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(ContentError::DigestMismatch {
                    expected: want.clone(),
                    actual,
                });
            }
        }
        io_ctx(file.sync_all(), || format!("syncing ingest of {actual}"))?;
        drop(file);
        let target_dir = blobs.join(actual.algorithm().as_str());
        let target = target_dir.join(actual.hex());
        if target.exists() {
            // Someone else committed the same content meanwhile.
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(actual);
        }
        io_ctx(std::fs::rename(dir.join("data"), &target), || {
            format!("publishing blob {actual}")
        })?;
        io_ctx(sync_dir(&target_dir), || {
            format!("syncing {}", target_dir.display())
        })?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(actual)
    }
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_commit_read_and_layout_files() {
        let d = tempfile::tempdir().unwrap();
        let s = ContentStore::open(d.path()).unwrap();
        let dig = s.write_blob(b"hello").unwrap();
        assert_eq!(dig, Digest::sha256(b"hello"));
        assert_eq!(s.read(&dig).unwrap(), b"hello");
        assert!(d.path().join("oci-layout").is_file());
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        // Writing it again is a no-op.
        assert_eq!(s.write_blob(b"hello").unwrap(), dig);
        assert!(s.verify().unwrap().is_empty());
    }

    #[test]
    fn wrong_digest_or_size_publishes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = ContentStore::open(d.path()).unwrap();
        let claimed = Digest::sha256(b"something else");
        let mut w = s.ingest("k1", Some((claimed.clone(), 5))).unwrap();
        w.write_all(b"hello").unwrap();
        assert!(matches!(
            w.commit(),
            Err(ContentError::DigestMismatch { .. })
        ));
        assert!(!s.exists(&claimed));
        assert!(!s.exists(&Digest::sha256(b"hello")));
        let mut w = s.ingest("k2", Some((Digest::sha256(b"hello"), 4))).unwrap();
        w.write_all(b"hello").unwrap();
        assert!(matches!(w.commit(), Err(ContentError::SizeMismatch { .. })));
        assert_eq!(
            std::fs::read_dir(d.path().join("ingest")).unwrap().count(),
            0,
            "failed ingests are cleaned up"
        );
    }

    #[test]
    fn an_interrupted_ingest_resumes_where_it_stopped() {
        let d = tempfile::tempdir().unwrap();
        let s = ContentStore::open(d.path()).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let want = Digest::sha256(&data);
        {
            let mut w = s
                .ingest("layer", Some((want.clone(), data.len() as u64)))
                .unwrap();
            w.write_all(&data[..70_000]).unwrap();
            // Dropped without commit: the process "died".
        }
        assert!(!s.exists(&want));
        assert!(
            s.verify().unwrap().is_empty(),
            "a partial ingest is not corruption"
        );
        let mut w = s
            .ingest("layer", Some((want.clone(), data.len() as u64)))
            .unwrap();
        assert_eq!(w.offset(), 70_000);
        w.write_all(&data[70_000..]).unwrap();
        assert_eq!(w.commit().unwrap(), want);
        assert_eq!(s.read(&want).unwrap(), data);
    }

    #[test]
    fn write_blob_ignores_debris_and_concurrent_writers() {
        let d = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(ContentStore::open(d.path()).unwrap());
        let data = b"a manifest written by two pulls at once".to_vec();
        let digest = Digest::sha256(&data);
        // What a crash in the middle of an earlier write left.
        let mut w = s
            .ingest(
                &format!("blob-{}", digest.hex()),
                Some((digest.clone(), data.len() as u64)),
            )
            .unwrap();
        w.write_all(&data[..7]).unwrap();
        drop(w);
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let (s, data) = (s.clone(), data.clone());
                std::thread::spawn(move || s.write_blob(&data).unwrap())
            })
            .collect();
        for w in writers {
            assert_eq!(w.join().unwrap(), digest);
        }
        assert_eq!(s.read(&digest).unwrap(), data);
    }

    #[test]
    fn verify_finds_corruption_and_strays() {
        let d = tempfile::tempdir().unwrap();
        let s = ContentStore::open(d.path()).unwrap();
        let dig = s.write_blob(b"original").unwrap();
        std::fs::write(s.path(&dig), b"tampered").unwrap();
        std::fs::write(d.path().join("blobs/sha256/not-a-digest"), b"x").unwrap();
        let problems = s.verify().unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.contains(&Problem::Corrupt {
            path: s.path(&dig),
            actual: Digest::sha256(b"tampered")
        }));
        s.delete(&dig).unwrap();
        assert!(!s.exists(&dig));
    }
}
