//! The layer applier: one streaming pass over a (compressed) tar layer into a directory.
//!
//! Every path, including `..` entries, absolute names and paths through symlinks the layer
//! itself planted, is resolved *inside* the layer root with openat2(RESOLVE_IN_ROOT), so a
//! hostile layer can never write outside it. Docker's whiteouts (`.wh.<name>`, opaque
//! `.wh..wh..opq`) become overlayfs whiteouts (0/0 character devices, the
//! `trusted.overlay.opaque` xattr). The diffID (sha256 of the uncompressed tar) is computed
//! on the way, and the layer is synced once at the end, not per file.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use berth_types::digest::{Algorithm, Hasher};
use berth_types::Digest;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("invalid layer entry {path:?}: {msg}")]
    Entry { path: String, msg: String },
}

type Result<T> = std::result::Result<T, LayerError>;

fn io_ctx<T>(r: io::Result<T>, ctx: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|source| LayerError::Io {
        context: ctx(),
        source,
    })
}

fn rx<T>(r: rustix::io::Result<T>, ctx: impl FnOnce() -> String) -> Result<T> {
    io_ctx(r.map_err(io::Error::from), ctx)
}

/// What applying a layer produced.
#[derive(Debug)]
pub struct Applied {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: Digest,
    pub entries: u64,
    /// Uncompressed bytes read.
    pub size: u64,
    pub timings: Timings,
}

/// Where an apply's time went, per stage (the stages overlap: two threads).
#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    /// Waiting for the compressed input (a download, say).
    pub input: Duration,
    /// Decompressing.
    pub inflate: Duration,
    /// sha256 of the uncompressed stream (the diffID).
    pub hash: Duration,
    /// Parsing the tar and writing files.
    pub write: Duration,
}

/// Adds the time spent in `f` to `total`.
fn timed<T>(total: &mut Duration, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    *total += t.elapsed();
    r
}

/// Counts the time spent reading the compressed input.
struct TimedInput<R> {
    inner: R,
    spent: std::sync::Arc<std::sync::Mutex<Duration>>,
}

impl<R: Read> Read for TimedInput<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let t = Instant::now();
        let r = self.inner.read(buf);
        *self.spent.lock().expect("timing lock") += t.elapsed();
        r
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    /// Only in archives and tarballs (`docker load`, `docker import`): no layer media type
    /// names it.
    Bzip2,
    Xz,
}

/// Recognises a layer's (or an archive's) compression from its first bytes.
pub fn detect(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if head.starts_with(b"BZh") {
        Compression::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Xz
    } else {
        Compression::None
    }
}

/// The decompressed stream of `input`, whose first bytes say how it is compressed.
pub fn decoder<'a>(mut input: impl BufRead + Send + 'a) -> Result<Box<dyn Read + Send + 'a>> {
    let head = io_ctx(input.fill_buf(), || "reading the stream".into())?;
    Ok(match detect(head) {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(io_ctx(zstd::Decoder::with_buffer(input), || {
            "starting zstd".into()
        })?),
        Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(input)),
        Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(input)),
        Compression::None => Box::new(input),
    })
}

/// Counts and hashes what passes through.
struct Hashing<R> {
    inner: R,
    hasher: Hasher,
    size: u64,
    /// Time in reads (input, inflate and hash) and in hashing alone.
    reading: Duration,
    hashing: Duration,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let t = Instant::now();
        let n = self.inner.read(buf)?;
        let hasher = &mut self.hasher;
        timed(&mut self.hashing, || hasher.update(&buf[..n]));
        self.size += n as u64;
        self.reading += t.elapsed();
        Ok(n)
    }
}

/// Hands decompressed, hashed chunks from the decoding thread to the applying thread.
struct ChunkReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
    /// Time waiting for the decoder.
    waited: std::rc::Rc<std::cell::Cell<Duration>>,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            let t = Instant::now();
            let next = self.rx.recv();
            self.waited.set(self.waited.get() + t.elapsed());
            match next {
                Ok(Ok(chunk)) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0), // the decoder finished
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Applies the layer read from `input` (a tar: plain, gzip, zstd, bzip2 or xz) onto the
/// directory `root`.
///
/// Two threads, like `tar -xzf` with its gzip child: one decompresses and hashes, the other
/// parses and writes files, with a few MiB in flight between them.
pub fn apply(root: &Path, input: impl Read + Send) -> Result<Applied> {
    let root_fd: OwnedFd = io_ctx(
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags_dir()
            .open(root),
        || format!("opening layer root {}", root.display()),
    )?
    .into();
    let started = Instant::now();
    let input_time = std::sync::Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let input = TimedInput {
        inner: input,
        spent: input_time.clone(),
    };
    let decoded = decoder(BufReader::with_capacity(256 * 1024, input))?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
    std::thread::scope(|scope| {
        let decoder = scope.spawn(move || {
            let mut hashing = Hashing {
                inner: decoded,
                hasher: Hasher::new(Algorithm::Sha256),
                size: 0,
                reading: Duration::ZERO,
                hashing: Duration::ZERO,
            };
            loop {
                let mut chunk = vec![0u8; 1 << 20];
                let mut filled = 0;
                // Fill whole chunks: fewer hand-offs between the threads.
                while filled < chunk.len() {
                    match hashing.read(&mut chunk[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return None;
                        }
                    }
                }
                if filled == 0 {
                    let (reading, hash) = (hashing.reading, hashing.hashing);
                    return Some((hashing.hasher.finish(), hashing.size, reading, hash));
                }
                chunk.truncate(filled);
                if tx.send(Ok(chunk)).is_err() {
                    return None; // the applier stopped (an error on its side)
                }
            }
        });
        let waited = std::rc::Rc::new(std::cell::Cell::new(Duration::ZERO));
        let applied = apply_tar(
            &root_fd,
            ChunkReader {
                rx,
                cur: Vec::new(),
                pos: 0,
                waited: waited.clone(),
            },
        );
        let writing = started.elapsed().saturating_sub(waited.get());
        let hashed = decoder.join().expect("the decoding thread does not panic");
        let entries = applied?;
        let (diff_id, size, reading, hash) = hashed.ok_or_else(|| LayerError::Io {
            context: "reading the layer".into(),
            source: io::Error::other("the decoder stopped"),
        })?;
        rx_sync(&root_fd)?;
        let input = *input_time.lock().expect("timing lock");
        Ok(Applied {
            diff_id,
            entries,
            size,
            timings: Timings {
                input,
                inflate: reading.saturating_sub(input).saturating_sub(hash),
                hash,
                write: writing,
            },
        })
    })
}

fn rx_sync(root_fd: &OwnedFd) -> Result<()> {
    rx(rustix::fs::syncfs(root_fd), || "syncing the layer".into())
}

/// Parses the tar stream and applies each entry; returns the number of entries.
fn apply_tar(root_fd: &OwnedFd, reader: impl Read) -> Result<u64> {
    apply_tar_with(root_fd, reader, true, None)
}

/// Extracts a plain tar (no compression, no whiteouts: `.wh.` names are files like any
/// other) under `root` with the applier's path safety: what `docker cp` into a container
/// needs. `owner` replaces the archive's owners (Docker's cp without `-a` makes root the
/// owner). Returns the number of entries.
pub fn extract(root: &Path, input: impl Read, owner: Option<(u32, u32)>) -> Result<u64> {
    let root_fd: OwnedFd = io_ctx(
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags_dir()
            .open(root),
        || format!("opening {}", root.display()),
    )?
    .into();
    apply_tar_with(&root_fd, input, false, owner)
}

fn apply_tar_with(
    root_fd: &OwnedFd,
    reader: impl Read,
    whiteouts: bool,
    owner: Option<(u32, u32)>,
) -> Result<u64> {
    let mut archive = tar::Archive::new(reader);
    let mut dirs: Vec<(String, Timestamps)> = Vec::new();
    let mut entries = 0u64;
    for entry in io_ctx(archive.entries(), || "reading the layer".into())? {
        let mut entry = io_ctx(entry, || "reading the layer".into())?;
        entries += 1;
        apply_entry(root_fd, &mut entry, &mut dirs, whiteouts, owner)?;
    }
    // The diffID covers the whole stream, end-of-archive padding included: read it all.
    let mut rest = archive.into_inner();
    io_ctx(io::copy(&mut rest, &mut io::sink()), || {
        "reading the layer".into()
    })?;
    // Directory times last: writing into a directory changes them.
    for (rel, times) in dirs.iter().rev() {
        if let Ok(fd) = open_in_root(root_fd, rel, OFlags::RDONLY | OFlags::DIRECTORY) {
            let _ = rustix::fs::futimens(&fd, times);
        }
    }
    Ok(entries)
}

trait DirOpen {
    fn custom_flags_dir(&mut self) -> &mut Self;
}

impl DirOpen for std::fs::OpenOptions {
    fn custom_flags_dir(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags((OFlags::DIRECTORY | OFlags::CLOEXEC).bits() as i32)
    }
}

/// Splits an archive path into its components relative to the layer root. `..` is kept:
/// RESOLVE_IN_ROOT clamps it at the root, as for `..` in `/`.
fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

fn join(parts: &[OsString]) -> String {
    if parts.is_empty() {
        return ".".into();
    }
    parts
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Reads the file `rel` of the tree at `root`, resolved inside it (`..` and symlinks stay
/// in the tree): a build reading an image's `/etc/passwd`, say.
pub fn read_in_root(root: &Path, rel: &str) -> io::Result<Vec<u8>> {
    let root_fd: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_dir()
        .open(root)?
        .into();
    let fd = open_in_root(&root_fd, rel.trim_start_matches('/'), OFlags::RDONLY)?;
    let mut out = Vec::new();
    File::from(fd).read_to_end(&mut out)?;
    Ok(out)
}

fn open_in_root(root: &OwnedFd, rel: &str, flags: OFlags) -> io::Result<OwnedFd> {
    rustix::fs::openat2(
        root,
        rel,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(io::Error::from)
}

/// Opens the directory `parts` inside the root, creating what is missing (a layer may list
/// a file before, or without, its parent directories). After each directory it creates it
/// resolves again from the root, so `..` and symlinks keep their meaning; only a plain name
/// can be missing, as `..` always resolves.
fn open_parent(root: &OwnedFd, parts: &[OsString]) -> io::Result<OwnedFd> {
    let dir = OFlags::PATH | OFlags::DIRECTORY;
    for _ in 0..=parts.len() {
        match open_in_root(root, &join(parts), dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let mut i = parts.len();
        let fd = loop {
            i -= 1;
            if let Ok(fd) = open_in_root(root, &join(&parts[..i]), dir) {
                break fd;
            }
            if i == 0 {
                return Err(io::Error::from(io::ErrorKind::NotFound));
            }
        };
        match rustix::fs::mkdirat(&fd, parts[i].as_os_str(), Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::from(io::ErrorKind::NotFound))
}

/// Removes whatever is at `parent/name` (a file, a link, or a whole directory tree).
fn remove_existing(parent: &OwnedFd, name: &OsString) -> io::Result<()> {
    match rustix::fs::statat(parent, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            // Through our own descriptor: no path outside the layer is ever named.
            std::fs::remove_dir_all(format!(
                "/proc/self/fd/{}/{}",
                parent.as_raw_fd(),
                name.to_string_lossy()
            ))
        }
        Ok(_) => {
            rustix::fs::unlinkat(parent, name.as_os_str(), AtFlags::empty()).map_err(Into::into)
        }
    }
}

/// Owner, then mode (chown clears set-id bits; symlinks have no mode of their own).
fn set_owner(
    parent: &OwnedFd,
    name: &OsString,
    uid: u32,
    gid: u32,
    mode: Option<Mode>,
    shown: &str,
) -> Result<()> {
    rx(
        rustix::fs::chownat(
            parent,
            name.as_os_str(),
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        ),
        || format!("chown {shown}"),
    )?;
    if let Some(mode) = mode {
        rx(
            rustix::fs::chmodat(parent, name.as_os_str(), mode, AtFlags::empty()),
            || format!("chmod {shown}"),
        )?;
    }
    Ok(())
}

fn timestamps(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime as i64,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn apply_entry<R: Read>(
    root: &OwnedFd,
    entry: &mut tar::Entry<'_, R>,
    dirs: &mut Vec<(String, Timestamps)>,
    whiteouts: bool,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let raw_path = entry
        .path()
        .map(|p| p.into_owned())
        .unwrap_or_else(|_| PathBuf::from("<undecodable>"));
    let shown = raw_path.display().to_string();
    let bad = |msg: &str| LayerError::Entry {
        path: shown.clone(),
        msg: msg.into(),
    };
    let parts = components(&raw_path);
    let header = entry.header().clone();
    let kind = header.entry_type();
    let mode = header.mode().map_err(|_| bad("bad mode"))? & 0o7777;
    // Empty numeric fields read as 0, as Go's archive/tar (Docker's) reads them.
    let (uid, gid) = owner.unwrap_or((
        header.uid().unwrap_or(0) as u32,
        header.gid().unwrap_or(0) as u32,
    ));
    let times = timestamps(header.mtime().unwrap_or(0));

    let Some((name, parent_parts)) = parts.split_last() else {
        // The root itself ("./"): only its metadata.
        if kind.is_dir() {
            rx(
                rustix::fs::fchown(
                    root,
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                ),
                || "chown of the layer root".into(),
            )?;
            dirs.push((".".into(), timestamps(header.mtime().unwrap_or(0))));
        }
        return Ok(());
    };
    if name == ".." {
        return Err(bad("the last path component is '..'"));
    }
    let parent = io_ctx(open_parent(root, parent_parts), || {
        format!("creating the parent of {shown}")
    })?;
    let name_str = name.to_string_lossy();

    // Whiteouts become overlayfs whiteouts.
    if whiteouts && name_str == ".wh..wh..opq" {
        let dir = format!("/proc/self/fd/{}", parent.as_raw_fd());
        return rx(
            rustix::fs::setxattr(
                dir.as_str(),
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            ),
            || format!("marking {shown} opaque"),
        );
    }
    if let Some(hidden) = name_str.strip_prefix(".wh.").filter(|_| whiteouts) {
        let hidden = OsString::from(hidden);
        io_ctx(remove_existing(&parent, &hidden), || {
            format!("whiting out {shown}")
        })?;
        return rx(
            rustix::fs::mknodat(
                &parent,
                hidden.as_os_str(),
                FileType::CharacterDevice,
                Mode::empty(),
                0,
            ),
            || format!("whiting out {shown}"),
        );
    }

    if !kind.is_dir() {
        io_ctx(remove_existing(&parent, name), || {
            format!("replacing {shown}")
        })?;
    }
    let perms = Mode::from_raw_mode(mode);
    match kind {
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            let fd = rx(
                rustix::fs::openat(
                    &parent,
                    name.as_os_str(),
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                ),
                || format!("creating {shown}"),
            )?;
            let mut file = File::from(fd);
            let want = entry.size();
            let got = io_ctx(io::copy(entry, &mut file), || format!("writing {shown}"))?;
            if got != want {
                return Err(bad(&format!("truncated: {got} of {want} bytes")));
            }
            rx(
                rustix::fs::fchown(
                    &file,
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                ),
                || format!("chown {shown}"),
            )?;
            // After chown, which clears set-id bits.
            rx(rustix::fs::fchmod(&file, perms), || {
                format!("chmod {shown}")
            })?;
            rx(rustix::fs::futimens(&file, &times), || {
                format!("times of {shown}")
            })?;
        }
        tar::EntryType::Directory => {
            match rustix::fs::mkdirat(&parent, name.as_os_str(), perms) {
                Ok(()) => {}
                Err(rustix::io::Errno::EXIST) => {
                    let st = rx(
                        rustix::fs::statat(&parent, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW),
                        || format!("stat {shown}"),
                    )?;
                    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                        io_ctx(remove_existing(&parent, name), || {
                            format!("replacing {shown}")
                        })?;
                        rx(
                            rustix::fs::mkdirat(&parent, name.as_os_str(), perms),
                            || format!("creating {shown}"),
                        )?;
                    }
                }
                Err(e) => return rx(Err(e), || format!("creating {shown}")),
            }
            set_owner(&parent, name, uid, gid, Some(perms), &shown)?;
            let mut rel = parent_parts.to_vec();
            rel.push(name.clone());
            dirs.push((join(&rel), timestamps(header.mtime().unwrap_or(0))));
        }
        tar::EntryType::Symlink => {
            let target = entry
                .link_name()
                .ok()
                .flatten()
                .ok_or_else(|| bad("symlink without a target"))?;
            rx(
                rustix::fs::symlinkat(target.as_os_str(), &parent, name.as_os_str()),
                || format!("creating symlink {shown}"),
            )?;
            set_owner(&parent, name, uid, gid, None, &shown)?;
            rx(
                rustix::fs::utimensat(&parent, name.as_os_str(), &times, AtFlags::SYMLINK_NOFOLLOW),
                || format!("times of {shown}"),
            )?;
            return Ok(()); // no xattrs on symlinks in overlay lowers
        }
        tar::EntryType::Link => {
            let target = entry
                .link_name()
                .ok()
                .flatten()
                .ok_or_else(|| bad("hardlink without a target"))?;
            let tparts = components(&target);
            let Some((tname, tparent)) = tparts.split_last() else {
                return Err(bad("hardlink to the layer root"));
            };
            // The target is looked up inside the layer root: a link to a host file finds
            // nothing there and fails.
            let tdir = io_ctx(
                open_in_root(root, &join(tparent), OFlags::PATH | OFlags::DIRECTORY),
                || {
                    format!(
                        "hardlink {shown}: target {} is not in the layer",
                        target.display()
                    )
                },
            )?;
            rx(
                rustix::fs::linkat(
                    &tdir,
                    tname.as_os_str(),
                    &parent,
                    name.as_os_str(),
                    AtFlags::empty(),
                ),
                || {
                    format!(
                        "hardlink {shown}: target {} is not in the layer",
                        target.display()
                    )
                },
            )?;
            return Ok(());
        }
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            let ft = match kind {
                tar::EntryType::Char => FileType::CharacterDevice,
                tar::EntryType::Block => FileType::BlockDevice,
                _ => FileType::Fifo,
            };
            let major = header.device_major().ok().flatten().unwrap_or(0);
            let minor = header.device_minor().ok().flatten().unwrap_or(0);
            let dev = rustix::fs::makedev(major, minor);
            rx(
                rustix::fs::mknodat(&parent, name.as_os_str(), ft, perms, dev),
                || format!("creating device {shown}"),
            )?;
            set_owner(&parent, name, uid, gid, Some(perms), &shown)?;
        }
        // PAX/GNU metadata entries are consumed by the tar reader; anything else is not a
        // file a container can use.
        _ => return Ok(()),
    }
    // Extended attributes (file capabilities, SELinux labels) from PAX headers.
    if let Ok(Some(exts)) = entry.pax_extensions() {
        for ext in exts.flatten() {
            if let (Ok(key), value) = (ext.key(), ext.value_bytes()) {
                if let Some(xattr) = key.strip_prefix("SCHILY.xattr.") {
                    let path = format!("/proc/self/fd/{}/{}", parent.as_raw_fd(), name_str);
                    rx(
                        rustix::fs::lsetxattr(
                            path.as_str(),
                            xattr,
                            value,
                            rustix::fs::XattrFlags::empty(),
                        ),
                        || format!("xattr {xattr} on {shown}"),
                    )?;
                }
            }
        }
    }
    if kind != tar::EntryType::Directory && kind != tar::EntryType::Regular {
        rx(
            rustix::fs::utimensat(&parent, name.as_os_str(), &times, AtFlags::SYMLINK_NOFOLLOW),
            || format!("times of {shown}"),
        )?;
    }
    let _ = parent.as_fd();
    Ok(())
}

/// Writes the changes recorded in an overlay upper directory as a layer tar (Docker's
/// format): overlay whiteouts become `.wh.<name>` entries, opaque directories get
/// `.wh..wh..opq`, hardlinks stay hardlinks. Entries are sorted, so the same changes give
/// the same bytes (and digest).
pub fn diff_upper(upper: &Path, out: impl io::Write) -> Result<()> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut links: std::collections::HashMap<(u64, u64), String> = std::collections::HashMap::new();
    walk(upper, Path::new(""), &mut b, &mut links)?;
    io_ctx(b.finish(), || "writing the layer".into())
}

fn walk<W: io::Write>(
    dir: &Path,
    rel: &Path,
    b: &mut tar::Builder<W>,
    links: &mut std::collections::HashMap<(u64, u64), String>,
) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut names: Vec<OsString> = io_ctx(std::fs::read_dir(dir), || {
        format!("reading {}", dir.display())
    })?
    .filter_map(|e| e.ok().map(|e| e.file_name()))
    .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let rel_path = rel.join(&name);
        let shown = rel_path.to_string_lossy().into_owned();
        let md = io_ctx(std::fs::symlink_metadata(&path), || format!("stat {shown}"))?;
        let ft = md.file_type();
        let mut h = tar::Header::new_gnu();
        h.set_mode(md.mode() & 0o7777);
        h.set_uid(md.uid() as u64);
        h.set_gid(md.gid() as u64);
        h.set_mtime(md.mtime().max(0) as u64);
        h.set_size(0);
        if ft.is_char_device() && md.rdev() == 0 {
            // An overlay whiteout: the lower file is deleted.
            let wh = rel.join(format!(".wh.{}", name.to_string_lossy()));
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            io_ctx(b.append_data(&mut h, &wh, io::empty()), || {
                format!("writing {shown}")
            })?;
            continue;
        }
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            io_ctx(
                b.append_data(&mut h, format!("{shown}/"), io::empty()),
                || format!("writing {shown}"),
            )?;
            let mut v = [0u8; 4];
            let opaque = rustix::fs::lgetxattr(path.as_path(), "trusted.overlay.opaque", &mut v)
                .is_ok_and(|n| &v[..n] == b"y");
            if opaque {
                let mut oh = tar::Header::new_gnu();
                oh.set_entry_type(tar::EntryType::Regular);
                oh.set_mode(0o644);
                oh.set_size(0);
                io_ctx(
                    b.append_data(&mut oh, rel_path.join(".wh..wh..opq"), io::empty()),
                    || format!("writing {shown}"),
                )?;
            }
            walk(&path, &rel_path, b, links)?;
            continue;
        }
        if md.nlink() > 1 && !ft.is_dir() {
            if let Some(first) = links.get(&(md.dev(), md.ino())) {
                h.set_entry_type(tar::EntryType::Link);
                io_ctx(b.append_link(&mut h, &rel_path, first), || {
                    format!("writing {shown}")
                })?;
                continue;
            }
            links.insert((md.dev(), md.ino()), shown.clone());
        }
        if ft.is_symlink() {
            let target = io_ctx(std::fs::read_link(&path), || format!("readlink {shown}"))?;
            h.set_entry_type(tar::EntryType::Symlink);
            io_ctx(b.append_link(&mut h, &rel_path, &target), || {
                format!("writing {shown}")
            })?;
        } else if ft.is_file() {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(md.len());
            let f = io_ctx(File::open(&path), || format!("opening {shown}"))?;
            io_ctx(b.append_data(&mut h, &rel_path, f), || {
                format!("writing {shown}")
            })?;
        } else {
            let kind = if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else if ft.is_fifo() {
                tar::EntryType::Fifo
            } else {
                continue; // sockets do not belong in layers
            };
            h.set_entry_type(kind);
            let _ = h.set_device_major(rustix::fs::major(md.rdev()));
            let _ = h.set_device_minor(rustix::fs::minor(md.rdev()));
            io_ctx(b.append_data(&mut h, &rel_path, io::empty()), || {
                format!("writing {shown}")
            })?;
        }
    }
    Ok(())
}
