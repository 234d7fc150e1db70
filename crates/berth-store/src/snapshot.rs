//! Snapshots: image layers unpacked once under `<root>/<id>/fs`, and container root
//! filesystems made from them.
//!
//! The overlay snapshotter mounts `lowerdir` = the image's layers (top first) with an upper
//! and work directory per container. It uses the new mount API, one `lowerdir+` per layer,
//! so mount data is not limited to one page and images with hundreds of layers mount; on
//! kernels without `lowerdir+` it falls back to mount(2) with short per-layer symlinks
//! (`<root>/l/<n>`), which keeps 120 layers within the page. The copy snapshotter is the
//! fallback for hosts without overlayfs: it materialises the layers into one directory,
//! applying whiteouts. Both pass one test suite.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("invalid snapshot id {0:?}")]
    InvalidId(String),
}

type Result<T> = std::result::Result<T, SnapshotError>;

fn io_ctx<T>(r: io::Result<T>, ctx: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|source| SnapshotError::Io {
        context: ctx(),
        source,
    })
}

fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && id != "."
        && id != ".."
        && id != "l";
    if ok {
        Ok(())
    } else {
        Err(SnapshotError::InvalidId(id.to_string()))
    }
}

/// Layer snapshots and container root filesystems built from them.
pub trait Snapshotter {
    /// Creates an empty layer directory to apply a layer into, and returns it.
    fn create_layer(&self, id: &str) -> Result<PathBuf>;
    fn remove_layer(&self, id: &str) -> Result<()>;
    /// Makes `target` the writable root filesystem of container `key` over `layers`
    /// (bottom first).
    fn mount(&self, key: &str, layers: &[&str], target: &Path) -> Result<()>;
    /// Undoes `mount` (the container's changes stay until `remove`).
    fn unmount(&self, key: &str, target: &Path) -> Result<()>;
    /// Removes the container's writable layer.
    fn remove(&self, key: &str) -> Result<()>;
    /// The directory holding only the container's changes (overlay's upper directory), for
    /// committing them as a layer; None where the snapshotter keeps no such record.
    fn upper(&self, key: &str) -> Option<PathBuf>;
    /// The unpacked contents of layer `id` (read-only for callers).
    fn layer_dir(&self, id: &str) -> Option<PathBuf>;
}

/// overlayfs over layer directories.
pub struct Overlay {
    root: PathBuf,
    /// Always use mount(2) with short links, as on kernels without "lowerdir+".
    legacy: bool,
}

impl Overlay {
    pub fn new(root: &Path) -> Result<Overlay> {
        io_ctx(std::fs::create_dir_all(root.join("l")), || {
            format!("creating {}", root.display())
        })?;
        Ok(Overlay {
            root: root.to_path_buf(),
            legacy: false,
        })
    }

    /// An overlay snapshotter that mounts the way older kernels need (mount(2), lowerdirs as
    /// short links). For those kernels, and so that path stays tested on new ones.
    pub fn legacy(root: &Path) -> Result<Overlay> {
        Ok(Overlay {
            legacy: true,
            ..Overlay::new(root)?
        })
    }

    fn layer_fs(&self, id: &str) -> PathBuf {
        self.root.join(id).join("fs")
    }

    fn active(&self, key: &str) -> PathBuf {
        self.root.join(format!("active-{key}"))
    }

    fn mount_new_api(
        &self,
        layers: &[&str],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> io::Result<()> {
        use rustix::mount::*;
        let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
        for id in layers.iter().rev() {
            fsconfig_set_string(&fs, "lowerdir+", self.layer_fs(id).as_path())?;
        }
        fsconfig_set_string(&fs, "upperdir", upper)?;
        fsconfig_set_string(&fs, "workdir", work)?;
        fsconfig_create(&fs)?;
        let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())?;
        move_mount(
            &mnt,
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )?;
        Ok(())
    }

    /// mount(2) with the lowerdirs as short relative links, resolved from `<root>` (the
    /// mount data is limited to one page, and the kernel truncates rather than refuses).
    fn mount_short_links(
        &self,
        layers: &[&str],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> io::Result<()> {
        let mut lowers = Vec::new();
        for id in layers.iter().rev() {
            let short = short_name(id);
            let link = self.root.join("l").join(&short);
            let want = PathBuf::from(format!("../{id}/fs"));
            match std::fs::read_link(&link) {
                Ok(existing) if existing == want => {}
                Ok(_) => {
                    return Err(io::Error::other(format!(
                        "short link {short} is taken by another layer"
                    )))
                }
                Err(_) => std::os::unix::fs::symlink(&want, &link)?,
            }
            lowers.push(format!("l/{short}"));
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            upper.display(),
            work.display()
        );
        if data.len() >= 4096 {
            return Err(io::Error::other(format!(
                "{} layers do not fit one overlay mount on this kernel (it lacks lowerdir+)",
                layers.len()
            )));
        }
        // Relative lowerdirs resolve against the current directory; this process is the
        // daemon's single-purpose worker or a test, so changing it is harmless here.
        let prev = std::env::current_dir()?;
        std::env::set_current_dir(&self.root)?;
        let data = std::ffi::CString::new(data)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let r = rustix::mount::mount(
            "overlay",
            target,
            "overlay",
            rustix::mount::MountFlags::empty(),
            Some(data.as_c_str()),
        );
        std::env::set_current_dir(prev)?;
        r.map_err(io::Error::from)
    }
}

impl Snapshotter for Overlay {
    fn create_layer(&self, id: &str) -> Result<PathBuf> {
        create_layer_dir(&self.root, id)
    }

    fn remove_layer(&self, id: &str) -> Result<()> {
        check_id(id)?;
        let _ = std::fs::remove_file(self.root.join("l").join(id));
        remove_tree(&self.root.join(id))
    }

    fn mount(&self, key: &str, layers: &[&str], target: &Path) -> Result<()> {
        check_id(key)?;
        for l in layers {
            check_id(l)?;
        }
        let dir = self.active(key);
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        for d in [&upper, &work] {
            io_ctx(std::fs::create_dir_all(d), || {
                format!("creating {}", d.display())
            })?;
        }
        io_ctx(std::fs::create_dir_all(target), || {
            format!("creating {}", target.display())
        })?;
        let first = if self.legacy {
            Err(io::Error::from_raw_os_error(libc_einval()))
        } else {
            self.mount_new_api(layers, &upper, &work, target)
        };
        match first {
            Ok(()) => Ok(()),
            // Older kernels do not know "lowerdir+".
            Err(e) if e.raw_os_error() == Some(libc_einval()) => io_ctx(
                self.mount_short_links(layers, &upper, &work, target),
                || {
                    format!(
                        "mounting overlay of {} layers on {}",
                        layers.len(),
                        target.display()
                    )
                },
            ),
            Err(e) => io_ctx(Err(e), || {
                format!(
                    "mounting overlay of {} layers on {}",
                    layers.len(),
                    target.display()
                )
            }),
        }
    }

    fn unmount(&self, _key: &str, target: &Path) -> Result<()> {
        match rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH) {
            Err(rustix::io::Errno::INVAL) | Ok(()) => Ok(()), // not mounted: nothing to do
            Err(e) => io_ctx(Err(e.into()), || format!("unmounting {}", target.display())),
        }
    }

    fn remove(&self, key: &str) -> Result<()> {
        check_id(key)?;
        remove_tree(&self.active(key))
    }

    fn upper(&self, key: &str) -> Option<PathBuf> {
        check_id(key).ok()?;
        Some(self.active(key).join("upper")).filter(|p| p.is_dir())
    }

    fn layer_dir(&self, id: &str) -> Option<PathBuf> {
        check_id(id).ok()?;
        Some(self.layer_fs(id)).filter(|p| p.is_dir())
    }
}

/// A 10-character name for a layer's link: 50 bits of its id's hash in base32.
fn short_name(id: &str) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let d = berth_types::Digest::sha256(id.as_bytes());
    let bytes = d.hex().as_bytes();
    let mut bits: u64 = 0;
    for b in &bytes[..13] {
        bits = (bits << 4) | (*b as char).to_digit(16).unwrap_or(0) as u64;
    }
    (0..10)
        .map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// `<root>/<id>/fs`, created empty for a layer to be applied into.
fn create_layer_dir(root: &Path, id: &str) -> Result<PathBuf> {
    check_id(id)?;
    let fs = root.join(id).join("fs");
    io_ctx(std::fs::create_dir_all(&fs), || {
        format!("creating {}", fs.display())
    })?;
    Ok(fs)
}

fn libc_einval() -> i32 {
    rustix::io::Errno::INVAL.raw_os_error()
}

fn remove_tree(p: &Path) -> Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            io_ctx(Err(e), || format!("removing {}", p.display()))
        }
        _ => Ok(()),
    }
}

/// Plain directories: each container gets a full copy of its layers.
pub struct Copy {
    root: PathBuf,
}

impl Copy {
    pub fn new(root: &Path) -> Result<Copy> {
        io_ctx(std::fs::create_dir_all(root), || {
            format!("creating {}", root.display())
        })?;
        Ok(Copy {
            root: root.to_path_buf(),
        })
    }
}

impl Snapshotter for Copy {
    fn create_layer(&self, id: &str) -> Result<PathBuf> {
        create_layer_dir(&self.root, id)
    }

    fn remove_layer(&self, id: &str) -> Result<()> {
        check_id(id)?;
        remove_tree(&self.root.join(id))
    }

    fn mount(&self, key: &str, layers: &[&str], target: &Path) -> Result<()> {
        check_id(key)?;
        io_ctx(std::fs::create_dir_all(target), || {
            format!("creating {}", target.display())
        })?;
        for id in layers {
            check_id(id)?;
            let src = self.root.join(id).join("fs");
            io_ctx(merge_layer(&src, target), || {
                format!("copying layer {id} to {}", target.display())
            })?;
        }
        Ok(())
    }

    fn unmount(&self, _key: &str, _target: &Path) -> Result<()> {
        Ok(())
    }

    fn remove(&self, _key: &str) -> Result<()> {
        Ok(()) // the copy is the container's directory itself, removed with it
    }

    fn upper(&self, _key: &str) -> Option<PathBuf> {
        None // a full copy records no changes
    }

    fn layer_dir(&self, id: &str) -> Option<PathBuf> {
        check_id(id).ok()?;
        Some(self.root.join(id).join("fs")).filter(|p| p.is_dir())
    }
}

/// Copies one layer over `dst`, honouring overlay whiteouts (0/0 char devices delete,
/// opaque directories replace).
fn merge_layer(src: &Path, dst: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let from = e.path();
        let to = dst.join(e.file_name());
        let md = std::fs::symlink_metadata(&from)?;
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            let _ = std::fs::remove_dir_all(&to).or_else(|_| std::fs::remove_file(&to));
            continue;
        }
        if ft.is_dir() {
            let opaque =
                rustix::fs::lgetxattr(from.as_path(), "trusted.overlay.opaque", &mut [0u8; 4])
                    .is_ok();
            let existing = std::fs::symlink_metadata(&to).ok();
            if opaque || existing.as_ref().is_some_and(|m| !m.is_dir()) {
                let _ = std::fs::remove_dir_all(&to).or_else(|_| std::fs::remove_file(&to));
            }
            if std::fs::symlink_metadata(&to).is_err() {
                std::fs::create_dir(&to)?;
            }
            std::fs::set_permissions(&to, md.permissions())?;
            std::os::unix::fs::lchown(&to, Some(md.uid()), Some(md.gid()))?;
            merge_layer(&from, &to)?;
            continue;
        }
        if std::fs::symlink_metadata(&to).is_ok() {
            let _ = std::fs::remove_dir_all(&to).or_else(|_| std::fs::remove_file(&to));
        }
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if ft.is_file() {
            std::fs::copy(&from, &to)?;
        } else {
            let kind = if ft.is_char_device() {
                rustix::fs::FileType::CharacterDevice
            } else if ft.is_block_device() {
                rustix::fs::FileType::BlockDevice
            } else {
                rustix::fs::FileType::Fifo
            };
            rustix::fs::mknodat(
                rustix::fs::CWD,
                to.as_path(),
                kind,
                rustix::fs::Mode::from_raw_mode(md.mode() & 0o7777),
                md.rdev(),
            )?;
        }
        std::os::unix::fs::lchown(&to, Some(md.uid()), Some(md.gid()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_short_stable_and_distinct() {
        let names: std::collections::HashSet<String> = (0..10_000)
            .map(|i| short_name(&format!("{i:064x}")))
            .collect();
        assert_eq!(names.len(), 10_000);
        assert_eq!(short_name("abc"), short_name("abc"));
        assert!(names.iter().all(|n| n.len() == 10
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))));
    }

    #[test]
    fn ids_are_checked() {
        for bad in ["", ".", "..", "l", "a/b", "../x", "a b"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        check_id(&"f".repeat(64)).unwrap();
    }
}
