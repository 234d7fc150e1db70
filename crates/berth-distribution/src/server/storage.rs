//! Where the registry keeps its objects: a small driver trait over `/`-separated keys, with
//! a filesystem driver (the real one) and an in-memory driver (tests, throwaway registries).
//! Both pass [`suite`], so the registry above them cannot tell them apart.
//!
//! The contract: `put` and `rename` are atomic (a reader sees the old object or the new,
//! never part of one, even after a crash for the filesystem); `append` writes at the end of
//! an object that `create` made; `list` gives the names one level below a key, sorted, and
//! nothing (not an error) for a key with nothing below it.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// An object store the registry runs on. Calls block: the server makes them where blocking
/// is cheap (small metadata files) or on blocking threads (blob bodies).
pub trait Driver: Send + Sync + 'static {
    /// The whole object.
    fn get(&self, key: &str) -> io::Result<Vec<u8>>;
    /// Replaces the object atomically (and durably, where that means anything).
    fn put(&self, key: &str, data: &[u8]) -> io::Result<()>;
    /// Its size in bytes; `NotFound` when it is not there.
    fn size(&self, key: &str) -> io::Result<u64>;
    /// The names one level below `key`, sorted; none when nothing is below it.
    fn list(&self, key: &str) -> io::Result<Vec<String>>;
    /// Removes the object, or everything below the key; `NotFound` when neither is there.
    fn delete(&self, key: &str) -> io::Result<()>;
    /// Moves an object to another key atomically, replacing what was there.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Reads the object from `offset` on.
    fn reader(&self, key: &str, offset: u64) -> io::Result<Box<dyn Read + Send>>;
    /// An empty object, for appending to.
    fn create(&self, key: &str) -> io::Result<()>;
    /// Writes at the end of an object `create` made; `NotFound` when there is none.
    fn append(&self, key: &str) -> io::Result<Box<dyn Write + Send>>;
    /// Makes an appended object durable before it is renamed into view.
    fn sync(&self, key: &str) -> io::Result<()>;
    /// Seconds since the epoch of its last change (for purging abandoned uploads).
    fn modified(&self, key: &str) -> io::Result<u64>;
    /// The whole object as bytes that share the store's memory (a file mapping, the
    /// map's own buffer), for sending without a copy. Only for objects that are never
    /// appended to (not uploads).
    fn map(&self, key: &str) -> io::Result<bytes::Bytes>;
}

fn check(key: &str) -> io::Result<&str> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..");
    if ok {
        Ok(key)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad storage key {key:?}"),
        ))
    }
}

/// Objects as files below a root directory.
pub struct Filesystem {
    root: PathBuf,
}

impl Filesystem {
    pub fn new(root: &Path) -> io::Result<Filesystem> {
        std::fs::create_dir_all(root)?;
        Ok(Filesystem {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        Ok(self.root.join(check(key)?))
    }

    fn parent(p: &Path) -> io::Result<()> {
        match p.parent() {
            Some(d) => std::fs::create_dir_all(d),
            None => Ok(()),
        }
    }
}

impl Driver for Filesystem {
    fn get(&self, key: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.path(key)?)
    }

    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        let p = self.path(key)?;
        Self::parent(&p)?;
        berth_types::fs::atomic_write(&p, data)
    }

    fn size(&self, key: &str) -> io::Result<u64> {
        let md = std::fs::metadata(self.path(key)?)?;
        if md.is_dir() {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(md.len())
    }

    fn list(&self, key: &str) -> io::Result<Vec<String>> {
        let mut v = Vec::new();
        match std::fs::read_dir(self.path(key)?) {
            Ok(rd) => {
                for e in rd {
                    v.push(e?.file_name().to_string_lossy().into_owned());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) => {}
            Err(e) => return Err(e),
        }
        v.sort();
        Ok(v)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        let p = self.path(key)?;
        match std::fs::symlink_metadata(&p)? {
            md if md.is_dir() => std::fs::remove_dir_all(&p),
            _ => std::fs::remove_file(&p),
        }
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (a, b) = (self.path(from)?, self.path(to)?);
        Self::parent(&b)?;
        std::fs::rename(&a, &b)?;
        // The rename itself survives a crash once the directory is synced.
        std::fs::File::open(b.parent().unwrap_or(&self.root))?.sync_all()
    }

    fn reader(&self, key: &str, offset: u64) -> io::Result<Box<dyn Read + Send>> {
        use std::io::Seek;
        let mut f = std::fs::File::open(self.path(key)?)?;
        f.seek(io::SeekFrom::Start(offset))?;
        Ok(Box::new(f))
    }

    fn create(&self, key: &str) -> io::Result<()> {
        let p = self.path(key)?;
        Self::parent(&p)?;
        std::fs::File::create(p).map(drop)
    }

    fn append(&self, key: &str) -> io::Result<Box<dyn Write + Send>> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.path(key)?)?;
        let pos = file.metadata()?.len();
        Ok(Box::new(Appender {
            file,
            pos,
            kicked: pos,
        }))
    }

    fn sync(&self, key: &str) -> io::Result<()> {
        std::fs::File::open(self.path(key)?)?.sync_all()
    }

    fn map(&self, key: &str) -> io::Result<bytes::Bytes> {
        super::zerocopy::map(std::fs::File::open(self.path(key)?)?)
    }

    fn modified(&self, key: &str) -> io::Result<u64> {
        let t = std::fs::metadata(self.path(key)?)?.modified()?;
        Ok(t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0))
    }
}

/// Bytes an upload may have written before the kernel is asked to start putting them on
/// disk.
const WRITEBACK_STEP: u64 = 8 << 20;

/// The end of an upload being written. Every [`WRITEBACK_STEP`] bytes it starts the
/// writeback of what it wrote, so the disk works while the network does, and the fsync that
/// makes the finished blob durable waits for the last few megabytes rather than the whole
/// blob (a 1 GiB push spent ~0.4 s in it here).
struct Appender {
    file: std::fs::File,
    pos: u64,
    kicked: u64,
}

impl Write for Appender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.pos += n as u64;
        if self.pos - self.kicked >= WRITEBACK_STEP {
            start_writeback(&self.file, self.kicked, self.pos - self.kicked);
            self.kicked = self.pos;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Asks the kernel to begin writing a range of the file's dirty pages, without waiting. A
/// hint: when it fails the final fsync still does all the work.
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range takes a descriptor, owned by `file` and open for the whole
    // call, and plain integers; no memory of ours is passed or kept.
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}

/// Key → (bytes, seconds of the last change).
type Map = BTreeMap<String, (Arc<Vec<u8>>, u64)>;
type Objects = Arc<Mutex<Map>>;

/// Objects in a map: gone when the process ends.
#[derive(Default)]
pub struct Memory {
    objects: Objects,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Memory {
    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        // A panic elsewhere while holding the map leaves it whole: every change is one insert.
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct MemoryAppend {
    objects: Objects,
    key: String,
}

impl Write for MemoryAppend {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut m = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        let (data, t) = m.get_mut(&self.key).ok_or(io::ErrorKind::NotFound)?;
        Arc::make_mut(data).extend_from_slice(buf);
        *t = now();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An object's bytes, shared with the map, as `Bytes` can own them.
struct Shared(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A reader over a snapshot of the object, so later appends never tear it.
struct MemoryRead(Arc<Vec<u8>>, usize);

impl Read for MemoryRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = self.0.get(self.1..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.1 += n;
        Ok(n)
    }
}

impl Driver for Memory {
    fn get(&self, key: &str) -> io::Result<Vec<u8>> {
        let m = self.lock();
        let (d, _) = m.get(check(key)?).ok_or(io::ErrorKind::NotFound)?;
        Ok(d.to_vec())
    }

    fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        let key = check(key)?.to_string();
        self.lock().insert(key, (Arc::new(data.to_vec()), now()));
        Ok(())
    }

    fn size(&self, key: &str) -> io::Result<u64> {
        let m = self.lock();
        let (d, _) = m.get(check(key)?).ok_or(io::ErrorKind::NotFound)?;
        Ok(d.len() as u64)
    }

    fn list(&self, key: &str) -> io::Result<Vec<String>> {
        let prefix = format!("{}/", check(key)?);
        let m = self.lock();
        let mut v: Vec<String> = m
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| {
                k[prefix.len()..]
                    .split('/')
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        v.dedup();
        Ok(v)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        let key = check(key)?;
        let prefix = format!("{key}/");
        let mut m = self.lock();
        let below: Vec<String> = m
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        let had = m.remove(key).is_some();
        if !had && below.is_empty() {
            return Err(io::ErrorKind::NotFound.into());
        }
        for k in below {
            m.remove(&k);
        }
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (check(from)?, check(to)?.to_string());
        let mut m = self.lock();
        let v = m.remove(from).ok_or(io::ErrorKind::NotFound)?;
        m.insert(to, v);
        Ok(())
    }

    fn reader(&self, key: &str, offset: u64) -> io::Result<Box<dyn Read + Send>> {
        let m = self.lock();
        let (d, _) = m.get(check(key)?).ok_or(io::ErrorKind::NotFound)?;
        Ok(Box::new(MemoryRead(d.clone(), offset as usize)))
    }

    fn create(&self, key: &str) -> io::Result<()> {
        self.put(key, b"")
    }

    fn append(&self, key: &str) -> io::Result<Box<dyn Write + Send>> {
        let key = check(key)?.to_string();
        if !self.lock().contains_key(&key) {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(Box::new(MemoryAppend {
            objects: self.objects.clone(),
            key,
        }))
    }

    fn sync(&self, _key: &str) -> io::Result<()> {
        Ok(())
    }

    fn map(&self, key: &str) -> io::Result<bytes::Bytes> {
        let m = self.lock();
        let (d, _) = m.get(check(key)?).ok_or(io::ErrorKind::NotFound)?;
        Ok(bytes::Bytes::from_owner(Shared(d.clone())))
    }

    fn modified(&self, key: &str) -> io::Result<u64> {
        let m = self.lock();
        let (_, t) = m.get(check(key)?).ok_or(io::ErrorKind::NotFound)?;
        Ok(*t)
    }
}

/// What every driver must do; each driver's tests run it.
pub fn suite(d: &dyn Driver) {
    use io::ErrorKind::NotFound;
    assert_eq!(d.get("a/b").unwrap_err().kind(), NotFound);
    assert_eq!(d.size("a/b").unwrap_err().kind(), NotFound);
    assert!(d.list("a").unwrap().is_empty());
    d.put("a/b", b"one").unwrap();
    d.put("a/b", b"two").unwrap();
    assert_eq!(d.get("a/b").unwrap(), b"two");
    assert_eq!(d.size("a/b").unwrap(), 3);
    d.put("a/c/d", b"x").unwrap();
    d.put("a/c/e", b"y").unwrap();
    d.put("ab", b"not below a").unwrap();
    assert_eq!(d.list("a").unwrap(), ["b", "c"]);
    assert_eq!(d.list("a/c").unwrap(), ["d", "e"]);
    // A key that names a "directory" is not an object.
    assert_eq!(d.size("a/c").unwrap_err().kind(), NotFound);
    // Appends land at the end; a reader starts where it is asked to.
    d.create("up/1").unwrap();
    for part in [&b"hello "[..], b"world"] {
        let mut w = d.append("up/1").unwrap();
        w.write_all(part).unwrap();
        w.flush().unwrap();
    }
    d.sync("up/1").unwrap();
    assert_eq!(d.size("up/1").unwrap(), 11);
    let mut s = String::new();
    d.reader("up/1", 6).unwrap().read_to_string(&mut s).unwrap();
    assert_eq!(s, "world");
    assert_eq!(d.append("up/none").err().unwrap().kind(), NotFound);
    assert!(d.modified("up/1").unwrap() > 0);
    // A mapping is the object whole, and outlives the object's removal.
    d.put("m", b"mapped").unwrap();
    let m = d.map("m").unwrap();
    d.delete("m").unwrap();
    assert_eq!(&m[..], b"mapped");
    assert_eq!(d.map("m").unwrap_err().kind(), NotFound);
    // Rename replaces what was there.
    d.rename("up/1", "a/b").unwrap();
    assert_eq!(d.get("a/b").unwrap(), b"hello world");
    assert_eq!(d.size("up/1").unwrap_err().kind(), NotFound);
    assert_eq!(d.rename("up/1", "x").unwrap_err().kind(), NotFound);
    // Delete takes an object or a whole tree.
    d.delete("a/c").unwrap();
    assert_eq!(d.list("a").unwrap(), ["b"]);
    assert_eq!(d.get("ab").unwrap(), b"not below a");
    d.delete("a/b").unwrap();
    assert_eq!(d.delete("a/b").unwrap_err().kind(), NotFound);
    // Keys cannot climb out.
    for bad in ["", "/etc/passwd", "a/../../x", "a//b", "./a"] {
        assert_eq!(
            d.get(bad).unwrap_err().kind(),
            io::ErrorKind::InvalidInput,
            "{bad}"
        );
    }
    // Many writers of one key at once: each put whole, none lost to another's temp file.
    std::thread::scope(|s| {
        for i in 0..8 {
            s.spawn(move || {
                for _ in 0..20 {
                    d.put("race", format!("writer {i}").as_bytes()).unwrap();
                }
            });
        }
    });
    assert!(String::from_utf8(d.get("race").unwrap())
        .unwrap()
        .starts_with("writer "));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filesystem_driver_passes_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        let fs = Filesystem::new(dir.path()).unwrap();
        suite(&fs);
        // Nothing of the atomic writes is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");
    }

    #[test]
    fn memory_driver_passes_the_suite() {
        suite(&Memory::default());
    }
}
