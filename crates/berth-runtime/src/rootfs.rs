//! Building the container's filesystem view: mounts, /dev, pivot_root, masked and
//! read-only paths. Runs in the container's mount namespace, through [`Syscall`].

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::error::{Context, Error, Result};
use crate::sys::Syscall;

const MS_RDONLY: u64 = libc::MS_RDONLY;
const MS_NOSUID: u64 = libc::MS_NOSUID;
const MS_NODEV: u64 = libc::MS_NODEV;
const MS_NOEXEC: u64 = libc::MS_NOEXEC;
const MS_BIND: u64 = libc::MS_BIND;
const MS_REC: u64 = libc::MS_REC;
const MS_REMOUNT: u64 = libc::MS_REMOUNT;
const MS_PRIVATE: u64 = libc::MS_PRIVATE;
const MS_SLAVE: u64 = libc::MS_SLAVE;
const MS_SHARED: u64 = libc::MS_SHARED;
const MS_UNBINDABLE: u64 = libc::MS_UNBINDABLE;
const MS_MOVE: u64 = libc::MS_MOVE;
const MS_NOSYMFOLLOW: u64 = 256;

/// fstab-style options split into what mount(2) wants.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: u64,
    /// Propagation changes, applied one by one after the mount itself.
    pub propagation: Vec<u64>,
    /// Options that are not flags: passed to the filesystem as data.
    pub data: Vec<String>,
    /// Recursive attributes (`rro`, `rnosuid`, ...): MOUNT_ATTR_* to set and to clear on
    /// the mount and everything below it, with mount_setattr(2).
    pub rec_set: u64,
    pub rec_clear: u64,
}

impl MountOptions {
    pub fn is_bind(&self) -> bool {
        self.flags & MS_BIND != 0
    }
    fn data(&self) -> Option<String> {
        (!self.data.is_empty()).then(|| self.data.join(","))
    }
}

/// Parses mount options with runc's vocabulary.
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions::default();
    for opt in options {
        // (set, flag) pairs; `set == false` clears a flag set earlier or by default.
        let flag: Option<(bool, u64)> = match opt.as_str() {
            "defaults" => Some((true, 0)),
            "ro" => Some((true, MS_RDONLY)),
            "rw" => Some((false, MS_RDONLY)),
            "suid" => Some((false, MS_NOSUID)),
            "nosuid" => Some((true, MS_NOSUID)),
            "dev" => Some((false, MS_NODEV)),
            "nodev" => Some((true, MS_NODEV)),
            "exec" => Some((false, MS_NOEXEC)),
            "noexec" => Some((true, MS_NOEXEC)),
            "sync" => Some((true, libc::MS_SYNCHRONOUS)),
            "async" => Some((false, libc::MS_SYNCHRONOUS)),
            "dirsync" => Some((true, libc::MS_DIRSYNC)),
            "remount" => Some((true, MS_REMOUNT)),
            "mand" => Some((true, libc::MS_MANDLOCK)),
            "nomand" => Some((false, libc::MS_MANDLOCK)),
            "atime" => Some((false, libc::MS_NOATIME)),
            "noatime" => Some((true, libc::MS_NOATIME)),
            "diratime" => Some((false, libc::MS_NODIRATIME)),
            "nodiratime" => Some((true, libc::MS_NODIRATIME)),
            "relatime" => Some((true, libc::MS_RELATIME)),
            "norelatime" => Some((false, libc::MS_RELATIME)),
            "strictatime" => Some((true, libc::MS_STRICTATIME)),
            "nostrictatime" => Some((false, libc::MS_STRICTATIME)),
            "bind" => Some((true, MS_BIND)),
            "rbind" => Some((true, MS_BIND | MS_REC)),
            "silent" => Some((true, libc::MS_SILENT)),
            "loud" => Some((false, libc::MS_SILENT)),
            "iversion" => Some((true, libc::MS_I_VERSION)),
            "noiversion" => Some((false, libc::MS_I_VERSION)),
            "lazytime" => Some((true, libc::MS_LAZYTIME)),
            "nolazytime" => Some((false, libc::MS_LAZYTIME)),
            "nosymfollow" => Some((true, MS_NOSYMFOLLOW)),
            "symfollow" => Some((false, MS_NOSYMFOLLOW)),
            _ => None,
        };
        if let Some((set, f)) = flag {
            if set {
                o.flags |= f;
            } else {
                o.flags &= !f;
            }
            continue;
        }
        let prop = match opt.as_str() {
            "private" => Some(MS_PRIVATE),
            "rprivate" => Some(MS_PRIVATE | MS_REC),
            "shared" => Some(MS_SHARED),
            "rshared" => Some(MS_SHARED | MS_REC),
            "slave" => Some(MS_SLAVE),
            "rslave" => Some(MS_SLAVE | MS_REC),
            "unbindable" => Some(MS_UNBINDABLE),
            "runbindable" => Some(MS_UNBINDABLE | MS_REC),
            _ => None,
        };
        if let Some(p) = prop {
            o.propagation.push(p);
            continue;
        }
        if let Some((set, clear)) = recursive_attr(opt) {
            o.rec_set = (o.rec_set & !clear) | set;
            o.rec_clear = (o.rec_clear & !set) | clear;
            continue;
        }
        // runc extensions that are not filesystem data.
        if matches!(opt.as_str(), "tmpcopyup" | "idmap" | "ridmap") {
            continue;
        }
        o.data.push(opt.clone());
    }
    o
}

const ATTR_RDONLY: u64 = 0x1;
const ATTR_NOSUID: u64 = 0x2;
const ATTR_NODEV: u64 = 0x4;
const ATTR_NOEXEC: u64 = 0x8;
const ATTR_ATIME_MASK: u64 = 0x70;
const ATTR_RELATIME: u64 = 0x0;
const ATTR_NOATIME: u64 = 0x10;
const ATTR_STRICTATIME: u64 = 0x20;
const ATTR_NODIRATIME: u64 = 0x80;
const ATTR_NOSYMFOLLOW: u64 = 0x20_0000;

/// runc's recursive mount options: (MOUNT_ATTR_* to set, to clear).
fn recursive_attr(opt: &str) -> Option<(u64, u64)> {
    Some(match opt {
        "rro" => (ATTR_RDONLY, 0),
        "rrw" => (0, ATTR_RDONLY),
        "rnosuid" => (ATTR_NOSUID, 0),
        "rsuid" => (0, ATTR_NOSUID),
        "rnodev" => (ATTR_NODEV, 0),
        "rdev" => (0, ATTR_NODEV),
        "rnoexec" => (ATTR_NOEXEC, 0),
        "rexec" => (0, ATTR_NOEXEC),
        "rnodiratime" => (ATTR_NODIRATIME, 0),
        "rdiratime" => (0, ATTR_NODIRATIME),
        // Changing the atime mode needs the whole mask cleared.
        "rrelatime" => (ATTR_RELATIME, ATTR_ATIME_MASK),
        "rnoatime" => (ATTR_NOATIME, ATTR_ATIME_MASK),
        "rstrictatime" => (ATTR_STRICTATIME, ATTR_ATIME_MASK),
        "rnorelatime" | "ratime" | "rnostrictatime" => (0, 0),
        "rnosymfollow" => (ATTR_NOSYMFOLLOW, 0),
        "rsymfollow" => (0, ATTR_NOSYMFOLLOW),
        _ => return None,
    })
}

pub fn propagation_flag(name: &str) -> Option<u64> {
    Some(match name {
        "private" => MS_PRIVATE,
        "rprivate" => MS_PRIVATE | MS_REC,
        "shared" => MS_SHARED,
        "rshared" => MS_SHARED | MS_REC,
        "slave" => MS_SLAVE,
        "rslave" => MS_SLAVE | MS_REC,
        "unbindable" => MS_UNBINDABLE,
        "runbindable" => MS_UNBINDABLE | MS_REC,
        _ => return None,
    })
}

/// Joins `unsafe_path` to `root` resolving every symlink as if `root` were `/`: `..` stops
/// at the root and absolute link targets restart from it. The result is always inside
/// `root`, so a hostile image cannot redirect a mount onto the host.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> io::Result<PathBuf> {
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut pending: Vec<std::ffi::OsString> = components_rev(unsafe_path);
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.to_str() {
            Some(".") | Some("") => continue,
            Some("..") => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                pending.extend(components_rev(&target));
            }
            _ => resolved.push(part),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(resolved);
    Ok(out)
}

fn components_rev(p: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    v.reverse();
    v
}

/// Everything rootfs setup needs to know besides the spec.
pub struct RootfsContext<'a> {
    pub rootfs: &'a Path,
    /// In a new user namespace: no mknod, and locked mount flags must be kept on remount.
    pub userns: bool,
    /// The container has its own cgroup namespace (cgroup mounts show only its subtree).
    pub cgroupns: bool,
}

/// Prepares the rootfs while the host filesystem is still visible (before pivot_root).
pub fn prepare(sys: &dyn Syscall, spec: &Spec, ctx: &RootfsContext) -> Result<()> {
    let linux = spec.linux().as_ref();
    let prop = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        Some(p) => propagation_flag(p)
            .ok_or_else(|| Error::InvalidSpec(format!("unknown rootfsPropagation {p:?}")))?,
        None => MS_SLAVE | MS_REC,
    };
    // Make the whole tree non-shared first so nothing we do leaks back to the host. The
    // requested propagation goes on the rootfs mount itself, once it is built (an
    // unbindable / would forbid the bind below).
    sys.mount(None, Path::new("/"), None, MS_REC | MS_SLAVE, None)
        .ctx(|| "making / a slave mount".into())?;
    sys.mount(
        Some(ctx.rootfs),
        ctx.rootfs,
        Some("bind"),
        MS_BIND | MS_REC,
        None,
    )
    .ctx(|| format!("bind-mounting rootfs {}", ctx.rootfs.display()))?;

    let mounts = spec.mounts().as_deref().unwrap_or_default();
    for m in mounts {
        mount_one(sys, m, ctx)?;
    }

    let dev_is_bind = mounts.iter().any(|m| {
        m.destination() == Path::new("/dev")
            && parse_options(m.options().as_deref().unwrap_or_default()).is_bind()
    });
    if !dev_is_bind {
        let extra = linux
            .and_then(|l| l.devices().as_deref())
            .unwrap_or_default();
        create_devices(sys, ctx, extra)?;
        dev_symlinks(sys, ctx.rootfs, mounts)?;
    }
    // The rootfs mount gets the requested propagation (e.g. rshared for mount propagation
    // back to the host when asked).
    if prop != MS_SLAVE | MS_REC {
        sys.mount(None, ctx.rootfs, None, prop, None)
            .ctx(|| "setting rootfs propagation".into())?;
    }
    Ok(())
}

fn mount_one(sys: &dyn Syscall, m: &Mount, ctx: &RootfsContext) -> Result<()> {
    let opts = parse_options(m.options().as_deref().unwrap_or_default());
    let typ = m.typ().as_deref().unwrap_or("");
    let dest = secure_join(ctx.rootfs, m.destination())
        .ctx(|| format!("resolving mount destination {}", m.destination().display()))?;
    let is_bind = opts.is_bind() || typ == "bind";
    let source = m.source().as_deref();

    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(sys, &dest, &opts, ctx);
    }
    // procfs and sysfs go on a real directory, never through a symlink planted in the image
    // (which would put them somewhere the container's tools do not expect).
    if typ == "proc" || typ == "sysfs" {
        let literal = ctx
            .rootfs
            .join(m.destination().strip_prefix("/").unwrap_or(m.destination()));
        if literal
            .symlink_metadata()
            .is_ok_and(|md| md.file_type().is_symlink())
        {
            return Err(Error::InvalidSpec(format!(
                "filesystem {typ:?} must be mounted on ordinary directory, but {} is a symlink",
                m.destination().display()
            )));
        }
    }

    // Create the mount point: a file for binds of files, a directory otherwise.
    let src_is_file = is_bind && source.is_some_and(|s| s.metadata().is_ok_and(|md| !md.is_dir()));
    if src_is_file {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        }
        if !dest.exists() {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o644)
                .open(&dest)
                .ctx(|| format!("creating mount point {}", dest.display()))?;
        }
    } else {
        std::fs::create_dir_all(&dest)
            .ctx(|| format!("creating mount point {}", dest.display()))?;
    }

    let data = opts.data();
    if is_bind {
        let src = source.ok_or_else(|| {
            Error::InvalidSpec(format!(
                "bind mount {} has no source",
                m.destination().display()
            ))
        })?;
        sys.mount(
            Some(src),
            &dest,
            Some("bind"),
            opts.flags & (MS_BIND | MS_REC) | MS_BIND,
            None,
        )
        .ctx(|| {
            format!(
                "bind-mounting {} on {}",
                src.display(),
                m.destination().display()
            )
        })?;
        let extra = opts.flags & !(MS_BIND | MS_REC | MS_REMOUNT);
        if extra != 0 {
            remount(sys, &dest, MS_BIND | MS_REMOUNT | extra, ctx.userns)
                .ctx(|| format!("remounting {}", m.destination().display()))?;
        }
    } else {
        let src = source.unwrap_or(Path::new(typ));
        let res = sys.mount(Some(src), &dest, Some(typ), opts.flags, data.as_deref());
        match res {
            // sysfs cannot be mounted in a user namespace that does not own the network
            // namespace; bind the host's read-only instead, as runc does.
            Err(e) if typ == "sysfs" && e.raw_os_error() == Some(libc::EPERM) => {
                sys.mount(
                    Some(Path::new("/sys")),
                    &dest,
                    Some("bind"),
                    MS_BIND | MS_REC,
                    None,
                )
                .ctx(|| "bind-mounting /sys".into())?;
                remount(
                    sys,
                    &dest,
                    MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                    ctx.userns,
                )
                .ctx(|| "remounting /sys read-only".into())?;
            }
            other => other.ctx(|| {
                format!(
                    "mounting {} ({typ}) on {}",
                    src.display(),
                    m.destination().display()
                )
            })?,
        }
    }
    for p in &opts.propagation {
        sys.mount(None, &dest, None, *p, None)
            .ctx(|| format!("setting propagation of {}", m.destination().display()))?;
    }
    if opts.rec_set | opts.rec_clear != 0 {
        sys.mount_setattr_recursive(&dest, opts.rec_set, opts.rec_clear)
            .ctx(|| {
                format!(
                    "setting recursive attributes of {}",
                    m.destination().display()
                )
            })?;
    }
    Ok(())
}

/// Remounts, keeping flags the kernel locks in a user namespace when the first try is
/// refused for that reason.
fn remount(sys: &dyn Syscall, dest: &Path, flags: u64, userns: bool) -> io::Result<()> {
    match sys.mount(None, dest, None, flags, None) {
        Err(e) if userns && e.raw_os_error() == Some(libc::EPERM) => {
            let st = rustix::fs::statvfs(dest).map_err(io::Error::from)?;
            let locked = st.f_flag.bits() & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC);
            sys.mount(None, dest, None, flags | locked, None)
        }
        other => other,
    }
}

/// `/sys/fs/cgroup`: the v2 filesystem, or on v1 a tmpfs holding one mount per hierarchy.
fn mount_cgroup(
    sys: &dyn Syscall,
    dest: &Path,
    opts: &MountOptions,
    ctx: &RootfsContext,
) -> Result<()> {
    std::fs::create_dir_all(dest).ctx(|| format!("creating {}", dest.display()))?;
    let flags = opts.flags & !MS_BIND;
    if crate::cgroups::layout() == crate::cgroups::Layout::V2 {
        return sys
            .mount(
                Some(Path::new("cgroup2")),
                dest,
                Some("cgroup2"),
                flags,
                None,
            )
            .ctx(|| "mounting cgroup2".into());
    }
    sys.mount(
        Some(Path::new("tmpfs")),
        dest,
        Some("tmpfs"),
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        Some("mode=755"),
    )
    .ctx(|| "mounting tmpfs for cgroups".into())?;
    for (name, options) in v1_hierarchies() {
        let target = dest.join(&name);
        std::fs::create_dir_all(&target).ctx(|| format!("creating {}", target.display()))?;
        if ctx.cgroupns {
            sys.mount(
                Some(Path::new("cgroup")),
                &target,
                Some("cgroup"),
                flags,
                Some(&options),
            )
            .ctx(|| format!("mounting cgroup hierarchy {name}"))?;
        } else {
            let host = Path::new(crate::cgroups::ROOT).join(&name);
            sys.mount(Some(&host), &target, Some("bind"), MS_BIND | MS_REC, None)
                .ctx(|| format!("binding cgroup hierarchy {name}"))?;
            remount(sys, &target, MS_BIND | MS_REMOUNT | flags, ctx.userns)
                .ctx(|| format!("remounting cgroup hierarchy {name}"))?;
        }
    }
    if flags & MS_RDONLY != 0 {
        remount(
            sys,
            dest,
            MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
            ctx.userns,
        )
        .ctx(|| "remounting cgroup tmpfs read-only".into())?;
    }
    Ok(())
}

/// The host's v1 hierarchies: (directory name under /sys/fs/cgroup, mount options).
fn v1_hierarchies() -> Vec<(String, String)> {
    crate::cgroups::v1_mounts()
        .into_iter()
        .filter_map(|(controllers, mount_point)| {
            let name = mount_point.strip_prefix(crate::cgroups::ROOT).ok()?;
            Some((name.to_string_lossy().into_owned(), controllers.join(",")))
        })
        .collect()
}

struct DefaultDevice {
    path: &'static str,
    major: u64,
    minor: u64,
}

const DEFAULT_DEVICES: &[DefaultDevice] = &[
    DefaultDevice {
        path: "null",
        major: 1,
        minor: 3,
    },
    DefaultDevice {
        path: "zero",
        major: 1,
        minor: 5,
    },
    DefaultDevice {
        path: "full",
        major: 1,
        minor: 7,
    },
    DefaultDevice {
        path: "random",
        major: 1,
        minor: 8,
    },
    DefaultDevice {
        path: "urandom",
        major: 1,
        minor: 9,
    },
    DefaultDevice {
        path: "tty",
        major: 5,
        minor: 0,
    },
];

fn create_devices(sys: &dyn Syscall, ctx: &RootfsContext, extra: &[LinuxDevice]) -> Result<()> {
    let dev = secure_join(ctx.rootfs, Path::new("/dev")).ctx(|| "resolving /dev".into())?;
    std::fs::create_dir_all(&dev).ctx(|| "creating /dev".into())?;
    for d in DEFAULT_DEVICES {
        if extra
            .iter()
            .any(|e| *e.path() == Path::new("/dev").join(d.path))
        {
            continue;
        }
        let target = dev.join(d.path);
        make_device(
            sys,
            ctx,
            &target,
            libc::S_IFCHR | 0o666,
            d.major,
            d.minor,
            0,
            0,
        )?;
    }
    for d in extra {
        let target = secure_join(ctx.rootfs, d.path())
            .ctx(|| format!("resolving {}", d.path().display()))?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        }
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
            LinuxDeviceType::B => libc::S_IFBLK,
            LinuxDeviceType::P => libc::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(Error::InvalidSpec(format!(
                    "device {} has type 'a', which only device cgroup rules may use",
                    d.path().display()
                )))
            }
        };
        let mode = d.file_mode().unwrap_or(0o666) & 0o7777;
        make_device(
            sys,
            ctx,
            &target,
            kind | mode,
            d.major() as u64,
            d.minor() as u64,
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn make_device(
    sys: &dyn Syscall,
    ctx: &RootfsContext,
    target: &Path,
    mode: u32,
    major: u64,
    minor: u64,
    uid: u32,
    gid: u32,
) -> Result<()> {
    if target.exists() {
        let _ = std::fs::remove_file(target);
    }
    if ctx.userns {
        // mknod is refused in a user namespace: bind the host's node over an empty file.
        let host = format!(
            "/dev/{}",
            target.file_name().unwrap_or_default().to_string_lossy()
        );
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(target)
            .ctx(|| format!("creating {}", target.display()))?;
        return sys
            .mount(Some(Path::new(&host)), target, Some("bind"), MS_BIND, None)
            .ctx(|| format!("binding {host}"));
    }
    let dev = libc::makedev(major as u32, minor as u32);
    sys.mknod(target, mode, dev)
        .ctx(|| format!("creating device {}", target.display()))?;
    // mknod honours the umask; the spec's mode must be exact.
    sys.chown(target, uid, gid)
        .ctx(|| format!("chown of device {}", target.display()))?;
    Ok(())
}

fn dev_symlinks(sys: &dyn Syscall, rootfs: &Path, mounts: &[Mount]) -> Result<()> {
    let dev = secure_join(rootfs, Path::new("/dev")).ctx(|| "resolving /dev".into())?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    if mounts
        .iter()
        .any(|m| m.destination() == Path::new("/dev/pts"))
    {
        links.push(("pts/ptmx", "ptmx"));
    }
    for (target, name) in links {
        let link = dev.join(name);
        if link.symlink_metadata().is_ok() {
            if name != "ptmx" {
                continue;
            }
            let _ = std::fs::remove_file(&link);
        }
        sys.symlink(Path::new(target), &link)
            .ctx(|| format!("creating /dev/{name}"))?;
    }
    Ok(())
}

/// Makes `rootfs` the root: pivot_root, or MS_MOVE + chroot when pivot_root cannot work
/// (rootfs on ramfs/initramfs) or was declined with --no-pivot.
pub fn enter(sys: &dyn Syscall, rootfs: &Path, no_pivot: bool) -> Result<()> {
    if no_pivot {
        return move_root(sys, rootfs);
    }
    let open_dir = |p: &Path| {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(p)
    };
    let old = open_dir(Path::new("/")).ctx(|| "opening /".into())?;
    let new: File = open_dir(rootfs).ctx(|| format!("opening {}", rootfs.display()))?;
    sys.fchdir(new.as_fd()).ctx(|| "entering rootfs".into())?;
    match sys.pivot_root(Path::new("."), Path::new(".")) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return move_root(sys, rootfs),
        other => other.ctx(|| "pivot_root".into())?,
    }
    // The old root is now stacked under the new one at "."; detach it.
    sys.fchdir(old.as_fd()).ctx(|| "entering old root".into())?;
    sys.mount(None, Path::new("."), None, MS_SLAVE | MS_REC, None)
        .ctx(|| "making old root a slave".into())?;
    sys.umount2(Path::new("."), libc::MNT_DETACH)
        .ctx(|| "detaching old root".into())?;
    sys.chdir(Path::new("/")).ctx(|| "chdir /".into())
}

fn move_root(sys: &dyn Syscall, rootfs: &Path) -> Result<()> {
    sys.chdir(rootfs).ctx(|| "entering rootfs".into())?;
    sys.mount(Some(rootfs), Path::new("/"), None, MS_MOVE, None)
        .ctx(|| "moving rootfs to /".into())?;
    sys.chroot(Path::new(".")).ctx(|| "chroot".into())?;
    sys.chdir(Path::new("/")).ctx(|| "chdir /".into())
}

/// After entering the root: sysctls, masked paths, read-only paths, read-only root.
pub fn finish(sys: &dyn Syscall, spec: &Spec, userns: bool) -> Result<()> {
    let linux = spec.linux().as_ref();
    // Sysctls first: /proc/sys becomes read-only below.
    if let Some(sysctl) = linux.and_then(|l| l.sysctl().as_ref()) {
        for (k, v) in sysctl {
            if k.contains("..") || k.starts_with('/') {
                return Err(Error::InvalidSpec(format!("invalid sysctl name {k:?}")));
            }
            let path = Path::new("/proc/sys").join(k.replace('.', "/"));
            std::fs::write(&path, v).ctx(|| format!("setting sysctl {k}={v}"))?;
        }
    }
    for p in linux
        .and_then(|l| l.masked_paths().as_deref())
        .unwrap_or_default()
    {
        let path = Path::new(p);
        let res = match std::fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => Err(e),
            Ok(md) if md.is_dir() => sys.mount(
                Some(Path::new("tmpfs")),
                path,
                Some("tmpfs"),
                MS_RDONLY,
                None,
            ),
            Ok(_) => sys.mount(
                Some(Path::new("/dev/null")),
                path,
                Some("bind"),
                MS_BIND,
                None,
            ),
        };
        res.ctx(|| format!("masking {p}"))?;
    }
    for p in linux
        .and_then(|l| l.readonly_paths().as_deref())
        .unwrap_or_default()
    {
        let path = Path::new(p);
        match sys.mount(Some(path), path, Some("bind"), MS_BIND | MS_REC, None) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            other => other.ctx(|| format!("binding read-only path {p}"))?,
        }
        remount(
            sys,
            path,
            MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
            userns,
        )
        .ctx(|| format!("making {p} read-only"))?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        remount(
            sys,
            Path::new("/"),
            MS_BIND | MS_REMOUNT | MS_RDONLY,
            userns,
        )
        .ctx(|| "making the root read-only".into())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, RecordingSyscall};

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// A minimal spec with these mounts (and `extra` merged into `linux`).
    fn spec_with(mounts: serde_json::Value, linux: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.2.0",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "mounts": mounts,
            "linux": linux
        }))
        .unwrap()
    }

    #[test]
    fn options_to_flags_and_data() {
        let o = parse_options(&s(&["nosuid", "strictatime", "mode=755", "size=65536k"]));
        assert_eq!(o.flags, MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(o.data, s(&["mode=755", "size=65536k"]));
        let o = parse_options(&s(&["rbind", "ro", "rw", "rslave"]));
        assert_eq!(o.flags, MS_BIND | MS_REC);
        assert_eq!(o.propagation, vec![MS_SLAVE | MS_REC]);
        assert!(o.is_bind());
        let o = parse_options(&s(&["tmpcopyup", "nosymfollow"]));
        assert_eq!(o.flags, MS_NOSYMFOLLOW);
        assert!(o.data.is_empty());
        let o = parse_options(&s(&["rbind", "rro", "rnosuid", "rnoatime", "rrw"]));
        assert_eq!(o.rec_set, ATTR_NOSUID | ATTR_NOATIME);
        assert_eq!(o.rec_clear, ATTR_ATIME_MASK | ATTR_RDONLY);
        assert!(o.data.is_empty());
    }

    #[test]
    fn secure_join_stays_inside() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("real/dir")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("real/rel")).unwrap();
        std::os::unix::fs::symlink("loop2", root.join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", root.join("loop2")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/abs/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            secure_join(root, Path::new("/real/rel/x")).unwrap(),
            root.join("etc/x")
        );
        assert_eq!(
            secure_join(root, Path::new("/../../x")).unwrap(),
            root.join("x")
        );
        assert_eq!(
            secure_join(root, Path::new("real/./dir/")).unwrap(),
            root.join("real/dir")
        );
        assert_eq!(
            secure_join(root, Path::new("/loop1"))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ELOOP)
        );
    }

    #[test]
    fn prepare_mounts_in_order_with_bind_remount() {
        let d = tempfile::tempdir().unwrap();
        let rootfs = d.path();
        let src = tempfile::tempdir().unwrap();
        let spec = spec_with(
            serde_json::json!([
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": src.path(), "options": ["rbind", "ro", "rprivate"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m"]}
            ]),
            serde_json::json!({"devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438}]}),
        );
        let sys = RecordingSyscall::default();
        let ctx = RootfsContext {
            rootfs,
            userns: false,
            cgroupns: false,
        };
        prepare(&sys, &spec, &ctx).unwrap();
        let mounts = sys.mounts();
        let targets: Vec<_> = mounts
            .iter()
            .map(|c| match c {
                Call::Mount { target, flags, .. } => (target.clone(), *flags),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(targets[0], (PathBuf::from("/"), MS_REC | MS_SLAVE));
        assert_eq!(targets[1], (rootfs.to_path_buf(), MS_BIND | MS_REC));
        assert_eq!(targets[2], (rootfs.join("proc"), 0));
        assert_eq!(targets[3], (rootfs.join("data"), MS_BIND | MS_REC));
        assert_eq!(
            targets[4],
            (rootfs.join("data"), MS_BIND | MS_REMOUNT | MS_RDONLY)
        );
        assert_eq!(targets[5], (rootfs.join("data"), MS_PRIVATE | MS_REC));
        assert_eq!(
            mounts[6],
            Call::Mount {
                source: Some("tmpfs".into()),
                target: rootfs.join("tmp"),
                fstype: Some("tmpfs".into()),
                flags: MS_NOSUID,
                data: Some("size=1m".into()),
            }
        );
        let calls = sys.calls.borrow();
        let nodes: Vec<_> = calls
            .iter()
            .filter(|c| matches!(c, Call::Mknod(..)))
            .collect();
        assert_eq!(nodes.len(), 7, "six default devices and /dev/fuse");
        assert!(calls.contains(&Call::Mknod(
            rootfs.join("dev/fuse"),
            libc::S_IFCHR | 0o666,
            libc::makedev(10, 229)
        )));
        assert!(calls.contains(&Call::Symlink(
            "/proc/self/fd".into(),
            rootfs.join("dev/fd")
        )));
    }

    #[test]
    fn proc_on_a_symlink_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let rootfs = d.path();
        std::os::unix::fs::symlink("/elsewhere", rootfs.join("proc")).unwrap();
        let spec = spec_with(
            serde_json::json!([{"destination": "/proc", "type": "proc", "source": "proc"}]),
            serde_json::json!({}),
        );
        let sys = RecordingSyscall::default();
        let e = prepare(
            &sys,
            &spec,
            &RootfsContext {
                rootfs,
                userns: false,
                cgroupns: false,
            },
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("must be mounted on ordinary directory"),
            "{e}"
        );
    }

    #[test]
    fn mount_destination_symlink_cannot_escape() {
        let d = tempfile::tempdir().unwrap();
        let rootfs = d.path();
        std::os::unix::fs::symlink("/etc", rootfs.join("evil")).unwrap();
        let spec = spec_with(
            serde_json::json!([{"destination": "/evil", "type": "tmpfs", "source": "tmpfs"}]),
            serde_json::json!({}),
        );
        let sys = RecordingSyscall::default();
        prepare(
            &sys,
            &spec,
            &RootfsContext {
                rootfs,
                userns: false,
                cgroupns: false,
            },
        )
        .unwrap();
        assert!(sys
            .mounts()
            .iter()
            .any(|c| matches!(c, Call::Mount { target, .. } if *target == rootfs.join("etc"))));
        assert!(!sys
            .mounts()
            .iter()
            .any(|c| matches!(c, Call::Mount { target, .. } if *target == Path::new("/etc"))));
    }
}
