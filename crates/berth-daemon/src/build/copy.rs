//! What a COPY or ADD puts where: the context's files planned as tar entries, their
//! checksum for the cache (names, kinds, modes, link targets and bytes; file digests
//! remembered by inode and change time, so an unchanged file is not read again), and the
//! tar that is extracted on a cache miss.
//!
//! The context is either a directory the daemon unpacked the client's tar into, or, for
//! a local `berth build`, the client's own directory (read in place, with its
//! `.dockerignore` applied here; nothing in it is ever written).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use berth_types::ignore::Ignore;

/// A build context.
pub struct Context {
    pub root: PathBuf,
    /// Applied when the context is read in place (a tar from a client is filtered by it).
    pub ignore: Option<Ignore>,
    /// Files the client sent beside an in-place context (a Dockerfile from stdin).
    pub extras: Option<PathBuf>,
    /// What the root is, for messages: "build context", or the image of a `--from`.
    pub what: &'static str,
}

impl Context {
    fn excluded(&self, rel: &str) -> bool {
        match &self.ignore {
            // The Dockerfile and .dockerignore are read from the context whatever it says.
            Some(i) => i.excludes(rel),
            None => false,
        }
    }

    fn walk_ignored_dir(&self) -> bool {
        self.ignore.as_ref().is_some_and(Ignore::has_exceptions)
    }

    /// A file the build itself reads (the Dockerfile): the extras first.
    pub fn read(&self, name: &str) -> std::io::Result<String> {
        if let Some(x) = &self.extras {
            if let Ok(t) = std::fs::read_to_string(x.join(name)) {
                return Ok(t);
            }
        }
        std::fs::read_to_string(self.root.join(name))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Src {
    /// A file, directory or symlink of the context (or a fetched file), as it is.
    Path(PathBuf),
    /// A heredoc's text.
    Bytes(Vec<u8>),
    /// A local tar archive ADD unpacks under the entry's name.
    Extract(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path in the image, relative to its root.
    pub name: String,
    pub src: Src,
}

/// Context paths matching `pattern` (`*` and `?` within one path segment), relative,
/// sorted; `.` for the context itself. Ignored paths do not match.
pub fn glob(ctx: &Context, pattern: &str) -> Result<Vec<String>, String> {
    let clean: Vec<&str> = pattern
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    if clean.contains(&"..") {
        return Err(format!(
            "COPY failed: forbidden path outside the {}: {pattern}",
            ctx.what
        ));
    }
    if clean.is_empty() {
        return Ok(vec![".".into()]);
    }
    let mut found = vec![String::new()];
    for seg in clean {
        let mut next = Vec::new();
        for base in &found {
            let join = |name: &str| {
                if base.is_empty() {
                    name.to_string()
                } else {
                    format!("{base}/{name}")
                }
            };
            let dir = ctx.root.join(base);
            if seg.contains(['*', '?', '[']) {
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if berth_build::parse::wildcard(seg, &name) {
                        next.push(join(&name));
                    }
                }
            } else if dir.join(seg).symlink_metadata().is_ok() {
                next.push(join(seg));
            }
        }
        found = next;
    }
    found.retain(|m| !ctx.excluded(m));
    found.sort();
    let base = ctx.root.canonicalize().map_err(|e| e.to_string())?;
    for m in &found {
        // A symlinked directory on the way must not lead out of the context.
        if let Some(parent) = ctx.root.join(m).parent() {
            let real = parent.canonicalize().map_err(|e| e.to_string())?;
            if !real.starts_with(&base) {
                return Err(format!(
                    "COPY failed: forbidden path outside the {}: {m}",
                    ctx.what
                ));
            }
        }
    }
    Ok(found)
}

/// A context directory's entries under `name`: the directory itself, then what is in
/// it (name order), without what the context ignores.
fn walk(
    ctx: &Context,
    rel: &str,
    abs: &Path,
    name: &str,
    out: &mut Vec<Entry>,
) -> Result<(), String> {
    let is_root = rel.is_empty() || rel == ".";
    if name == "." {
        // Into the image's root: its mode and owner stay as they are.
    } else if is_root || !ctx.excluded(rel) {
        out.push(Entry {
            name: name.to_string(),
            src: Src::Path(abs.to_path_buf()),
        });
    } else if !ctx.walk_ignored_dir() {
        return Ok(());
    }
    let mut names: Vec<String> = std::fs::read_dir(abs)
        .map_err(|e| format!("{}: {e}", abs.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        let child_rel = if is_root {
            n.clone()
        } else {
            format!("{rel}/{n}")
        };
        let child_abs = abs.join(&n);
        let child_name = if name == "." {
            n.clone()
        } else {
            format!("{}/{n}", name.trim_end_matches('/'))
        };
        let meta = std::fs::symlink_metadata(&child_abs).map_err(|e| e.to_string())?;
        if meta.is_dir() {
            walk(ctx, &child_rel, &child_abs, &child_name, out)?;
        } else if !ctx.excluded(&child_rel) {
            out.push(Entry {
                name: child_name,
                src: Src::Path(child_abs),
            });
        }
    }
    Ok(())
}

/// The entries of one COPY/ADD. `target` is the destination, absolute; `many` says it
/// is a directory (several sources, or a trailing slash).
pub fn plan(
    ctx: &Context,
    sources: &[String],
    fetched: &[(String, PathBuf)],
    heredocs: &[(String, Vec<u8>)],
    target: &str,
    many: bool,
    add: bool,
) -> Result<Vec<Entry>, String> {
    let t = target.trim_start_matches('/').trim_end_matches('/');
    let t = if t.is_empty() { "." } else { t };
    let into = |name: &str| {
        if many {
            format!("{}/{name}", t.trim_end_matches('.').trim_end_matches('/'))
                .trim_start_matches('/')
                .to_string()
        } else {
            t.to_string()
        }
    };
    let mut out = Vec::new();
    if !heredocs.is_empty() {
        // `COPY <<EOF /path`: the sources are the heredocs' names.
        for (name, data) in heredocs {
            out.push(Entry {
                name: into(name),
                src: Src::Bytes(data.clone()),
            });
        }
        return Ok(out);
    }
    for (name, file) in fetched {
        out.push(Entry {
            name: into(name),
            src: Src::Path(file.clone()),
        });
    }
    for s in sources {
        let matches = glob(ctx, s)?;
        if matches.is_empty() {
            return Err(format!("COPY failed: file not found in {}: {s}", ctx.what));
        }
        for m in matches {
            let abs = if m == "." {
                ctx.root.clone()
            } else {
                ctx.root.join(&m)
            };
            let meta = std::fs::symlink_metadata(&abs).map_err(|e| e.to_string())?;
            let base = Path::new(&m)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            if meta.is_dir() {
                // A directory's contents, not the directory itself.
                walk(ctx, &m, &abs, t, &mut out)?;
            } else if add && is_tar(&abs) {
                out.push(Entry {
                    name: t.to_string(),
                    src: Src::Extract(abs),
                });
            } else {
                out.push(Entry {
                    name: into(&base),
                    src: Src::Path(abs),
                });
            }
        }
    }
    Ok(out)
}

fn is_tar(p: &Path) -> bool {
    let n = p.to_string_lossy();
    n.ends_with(".tar") || n.ends_with(".tar.gz") || n.ends_with(".tgz")
}

fn open_maybe_gz(p: &Path) -> Result<Box<dyn Read>, String> {
    let f = std::fs::File::open(p).map_err(|e| e.to_string())?;
    let n = p.to_string_lossy();
    Ok(if n.ends_with(".gz") || n.ends_with(".tgz") {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    })
}

/// What identifies a file's bytes without reading them: if none of it changed, the
/// digest taken before still holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

static DIGESTS: LazyLock<Mutex<HashMap<PathBuf, (Stamp, String)>>> =
    LazyLock::new(Default::default);

/// Files remembered at most; beyond it the table starts again.
const REMEMBERED: usize = 500_000;

/// The SHA-256 of a file's bytes, from the table when its stamp is unchanged. A file
/// changed in the last two seconds is not remembered: a change within the clock's
/// granularity could leave the stamp as it was.
fn file_digest(p: &Path, meta: &std::fs::Metadata) -> Result<String, String> {
    let stamp = Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.len(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    };
    if let Some((s, d)) = DIGESTS.lock().unwrap_or_else(|e| e.into_inner()).get(p) {
        if *s == stamp {
            return Ok(d.clone());
        }
    }
    let mut h = berth_types::Hasher::new(berth_types::digest::Algorithm::Sha256);
    let mut f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = f.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let d = h.finish().hex().to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_secs() as i64)
        .unwrap_or(0);
    if now - stamp.ctime.0 >= 2 && now - stamp.mtime.0 >= 2 {
        let mut m = DIGESTS.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= REMEMBERED {
            m.clear();
        }
        m.insert(p.to_path_buf(), (stamp, d.clone()));
    }
    Ok(d)
}

/// The mode an entry lands with: its own permission bits, or `--chmod`'s.
fn mode_of(meta: &std::fs::Metadata, chmod: Option<u32>) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    match chmod {
        Some(m) if !meta.file_type().is_symlink() => m,
        _ => meta.permissions().mode() & 0o7777,
    }
}

/// The cache checksum of a COPY's entries.
pub fn sum(entries: &[Entry], chmod: Option<u32>) -> Result<String, String> {
    let mut h = berth_types::Hasher::new(berth_types::digest::Algorithm::Sha256);
    for e in entries {
        let line = match &e.src {
            Src::Bytes(b) => format!(
                "{}\0bytes\0{:o}\0{}",
                e.name,
                chmod.unwrap_or(0o644),
                berth_types::Digest::sha256(b).hex()
            ),
            Src::Extract(p) => {
                let meta = std::fs::metadata(p).map_err(|e| e.to_string())?;
                format!("{}\0extract\0{}", e.name, file_digest(p, &meta)?)
            }
            Src::Path(p) => {
                let meta =
                    std::fs::symlink_metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
                let ft = meta.file_type();
                let mode = mode_of(&meta, chmod);
                if ft.is_symlink() {
                    let l = std::fs::read_link(p).map_err(|e| e.to_string())?;
                    format!("{}\0link\0{}", e.name, l.display())
                } else if ft.is_dir() {
                    format!("{}\0dir\0{mode:o}", e.name)
                } else if ft.is_file() {
                    format!("{}\0file\0{mode:o}\0{}", e.name, file_digest(p, &meta)?)
                } else {
                    format!("{}\0other\0{mode:o}\0{}", e.name, meta.rdev())
                }
            }
        };
        h.update(line.as_bytes());
        h.update(b"\n");
    }
    Ok(h.finish().hex().to_string())
}

/// The entries as a tar (what the layer applier then extracts into the step's root, or,
/// for `COPY --link`, the layer itself); `owner` replaces every entry's owner.
pub fn write_tar(
    entries: &[Entry],
    chmod: Option<u32>,
    owner: Option<(u32, u32)>,
    out: impl std::io::Write,
) -> Result<(), String> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let err = |e: std::io::Error| e.to_string();
    let own = |h: &mut tar::Header| {
        if let Some((u, g)) = owner {
            h.set_uid(u.into());
            h.set_gid(g.into());
        }
    };
    for e in entries {
        match &e.src {
            Src::Bytes(data) => {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(chmod.unwrap_or(0o644));
                h.set_cksum();
                b.append_data(&mut h, &e.name, data.as_slice())
                    .map_err(err)?;
            }
            Src::Extract(p) => {
                let mut inner = tar::Archive::new(open_maybe_gz(p)?);
                for entry in inner.entries().map_err(err)? {
                    let mut entry = entry.map_err(err)?;
                    let path = entry.path().map_err(err)?.into_owned();
                    let mut h = entry.header().clone();
                    own(&mut h);
                    let name = format!("{}/{}", e.name.trim_end_matches('/'), path.display());
                    b.append_data(&mut h, name, &mut entry).map_err(err)?;
                }
            }
            Src::Path(p) => {
                let meta = std::fs::symlink_metadata(p).map_err(err)?;
                let mut h = tar::Header::new_gnu();
                h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
                h.set_mode(mode_of(&meta, chmod));
                own(&mut h);
                if meta.file_type().is_symlink() {
                    let l = std::fs::read_link(p).map_err(err)?;
                    h.set_size(0);
                    b.append_link(&mut h, &e.name, l).map_err(err)?;
                } else if meta.is_dir() {
                    h.set_size(0);
                    b.append_data(&mut h, &e.name, std::io::empty())
                        .map_err(err)?;
                } else if meta.is_file() {
                    let f = std::fs::File::open(p).map_err(err)?;
                    b.append_data(&mut h, &e.name, f).map_err(err)?;
                } else {
                    // Devices and fifos: the header says it all.
                    b.append_data(&mut h, &e.name, std::io::empty())
                        .map_err(err)?;
                }
            }
        }
    }
    b.finish().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(root: &Path, ignore: &str) -> Context {
        Context {
            root: root.to_path_buf(),
            ignore: Some(Ignore::parse(ignore)),
            extras: None,
            what: "build context",
        }
    }

    #[test]
    fn plans_follow_dockers_directory_rules_and_the_ignore_file() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for (p, t) in [
            ("a.txt", "a"),
            ("dir/b.txt", "b"),
            ("dir/skip.log", "s"),
            ("dir/sub/c.txt", "c"),
        ] {
            std::fs::create_dir_all(r.join(p).parent().unwrap()).unwrap();
            std::fs::write(r.join(p), t).unwrap();
        }
        let c = ctx(r, "**/*.log\n");
        let names = |e: Vec<Entry>| e.into_iter().map(|e| e.name).collect::<Vec<_>>();
        assert_eq!(
            names(plan(&c, &["a.txt".into()], &[], &[], "/x", false, false).unwrap()),
            ["x"]
        );
        assert_eq!(
            names(plan(&c, &["a.txt".into()], &[], &[], "/x/", true, false).unwrap()),
            ["x/a.txt"]
        );
        assert_eq!(
            names(plan(&c, &["dir".into()], &[], &[], "/d/", true, false).unwrap()),
            ["d", "d/b.txt", "d/sub", "d/sub/c.txt"]
        );
        assert_eq!(
            names(
                plan(
                    &c,
                    &["*.txt".into(), "dir/b.txt".into()],
                    &[],
                    &[],
                    "/m/",
                    true,
                    false
                )
                .unwrap()
            ),
            ["m/a.txt", "m/b.txt"]
        );
        assert!(plan(&c, &["dir/skip.log".into()], &[], &[], "/x", false, false).is_err());
        assert!(plan(&c, &["../etc".into()], &[], &[], "/x", false, false).is_err());
    }

    #[test]
    fn sums_see_bytes_and_modes_not_times_and_symlinks_do_not_escape() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("ctx");
        std::fs::create_dir_all(&r).unwrap();
        std::fs::write(r.join("f"), "one").unwrap();
        std::os::unix::fs::symlink("/etc", r.join("etc-link")).unwrap();
        let c = ctx(&r, "");
        let s = |c: &Context, chmod| {
            sum(
                &plan(c, &["f".into()], &[], &[], "/f", false, false).unwrap(),
                chmod,
            )
            .unwrap()
        };
        let first = s(&c, None);
        std::fs::File::options()
            .write(true)
            .open(r.join("f"))
            .unwrap()
            .set_modified(std::time::SystemTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(s(&c, None), first);
        assert_ne!(s(&c, Some(0o600)), first);
        std::fs::write(r.join("f"), "two").unwrap();
        assert_ne!(s(&c, None), first);
        // Through a symlink to a directory outside: refused.
        assert!(plan(
            &c,
            &["etc-link/passwd".into()],
            &[],
            &[],
            "/p",
            false,
            false
        )
        .is_err());
        // The tar holds what the plan says.
        let mut t = Vec::new();
        let mut entries = plan(
            &c,
            &[],
            &[],
            &[("h".into(), b"doc".to_vec())],
            "/out/",
            true,
            false,
        )
        .unwrap();
        entries.extend(plan(&c, &["f".into()], &[], &[], "/out/", true, false).unwrap());
        write_tar(&entries, None, None, &mut t).unwrap();
        let mut a = tar::Archive::new(t.as_slice());
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["out/h", "out/f"]);
    }
}
