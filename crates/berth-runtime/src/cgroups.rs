//! Placing containers in cgroups (v1 and v2, through youki's libcgroups) and the parts
//! libcgroups leaves to the runtime: resolving `cgroupsPath` and reading freezer state.

use std::path::{Path, PathBuf};

use libcgroups::common::{
    create_cgroup_manager, AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt,
    FreezerState,
};
use oci_spec::runtime::LinuxResources;

use crate::error::{Error, Result};

pub const ROOT: &str = "/sys/fs/cgroup";

/// Which cgroup layout the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Pure v1, or v1 with an empty v2 hierarchy at `unified` (hybrid: this machine).
    V1,
    /// Pure v2.
    V2,
}

pub fn layout() -> Layout {
    match libcgroups::common::get_cgroup_setup() {
        Ok(libcgroups::common::CgroupSetup::Unified) => Layout::V2,
        _ => Layout::V1,
    }
}

/// Resolves the spec's `cgroupsPath` to a path below each hierarchy's root.
///
/// - absent: `/berth/<id>`;
/// - `slice:prefix:name` (systemd form, with `--systemd-cgroup` or whenever it has that
///   shape): the path systemd would give the scope, e.g. `a-b.slice:docker:x` ->
///   `/a.slice/a-b.slice/docker-x.scope` (managed through cgroupfs, not over D-Bus);
/// - anything else: that path, relative paths taken from the root of the hierarchy.
pub fn resolve_path(spec_path: Option<&Path>, systemd: bool, id: &str) -> Result<PathBuf> {
    let Some(p) = spec_path.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(PathBuf::from("/berth").join(id));
    };
    let s = p.to_string_lossy();
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() == 3 && (systemd || !s.starts_with('/')) {
        let slice = if parts[0].is_empty() {
            "system.slice"
        } else {
            parts[0]
        };
        let mut out = expand_slice(slice)?;
        let unit = if parts[2].ends_with(".slice") {
            parts[2].to_string()
        } else if parts[1].is_empty() {
            format!("{}.scope", parts[2])
        } else {
            format!("{}-{}.scope", parts[1], parts[2])
        };
        out.push(unit);
        return Ok(out);
    }
    if systemd {
        return Err(Error::Cgroup(format!(
            "cgroupsPath {s:?} is not of the form slice:prefix:name expected with --systemd-cgroup"
        )));
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::Cgroup(format!(
            "cgroupsPath {s:?} must not contain '..'"
        )));
    }
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        Path::new("/").join(p)
    })
}

/// `a-b-c.slice` lives at `/a.slice/a-b.slice/a-b-c.slice`.
fn expand_slice(slice: &str) -> Result<PathBuf> {
    let name = slice
        .strip_suffix(".slice")
        .ok_or_else(|| Error::Cgroup(format!("{slice:?} is not a slice name")))?;
    let mut path = PathBuf::from("/");
    if name == "-" || name.is_empty() {
        return Ok(path);
    }
    if name.contains('/') || name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return Err(Error::Cgroup(format!("invalid slice name {slice:?}")));
    }
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Ok(path)
}

fn cg_err(e: impl std::fmt::Display) -> Error {
    Error::Cgroup(e.to_string())
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Cgroup(format!("{what}: {e}"))
}

/// The v1 hierarchies mounted on this host: (controllers, mount point), read from one pass
/// over /proc/self/mountinfo. Controllers that are not mounted as a v1 hierarchy (hugetlb on
/// this kind of hybrid host) are simply absent: containers run without them unless their
/// spec asks for those limits, and then the error says why.
pub fn v1_mounts() -> Vec<(Vec<String>, PathBuf)> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    parse_v1_mounts(&info)
}

fn parse_v1_mounts(info: &str) -> Vec<(Vec<String>, PathBuf)> {
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split(' ');
        if r.next() != Some("cgroup") {
            continue;
        }
        let super_opts = r.nth(1).unwrap_or("");
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let controllers: Vec<String> = super_opts
            .split(',')
            .filter(|o| {
                !matches!(*o, "rw" | "ro" | "noprefix" | "clone_children")
                    && !o.starts_with("release_agent")
                    && !o.starts_with("xattr")
            })
            .map(str::to_string)
            .collect();
        if !controllers.is_empty() {
            out.push((controllers, PathBuf::from(mount_point)));
        }
    }
    out
}

fn join(mount: &Path, path: &Path) -> PathBuf {
    mount.join(path.strip_prefix("/").unwrap_or(path))
}

/// The container's directory in every v1 hierarchy.
fn v1_dirs(path: &Path) -> Vec<(Vec<String>, PathBuf)> {
    v1_mounts()
        .into_iter()
        .map(|(c, m)| {
            let d = join(&m, path);
            (c, d)
        })
        .collect()
}

/// Creates `dir` and its missing parents; new cpuset levels inherit cpus and mems (the
/// kernel refuses tasks in a cpuset cgroup whose sets are empty).
fn create_cpuset_aware(dir: &Path, cpuset: bool) -> Result<()> {
    if dir.exists() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_cpuset_aware(parent, cpuset)?;
    }
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(io_err(format!("creating {}", dir.display()))(e))
        }
        _ => {}
    }
    if cpuset {
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let mine = dir.join(f);
            if std::fs::read_to_string(&mine).is_ok_and(|s| s.trim().is_empty()) {
                let parent = std::fs::read_to_string(dir.parent().unwrap_or(dir).join(f)).map_err(
                    io_err(format!("reading {f} of the parent of {}", dir.display())),
                )?;
                std::fs::write(&mine, parent.trim())
                    .map_err(io_err(format!("writing {}", mine.display())))?;
            }
        }
    }
    Ok(())
}

/// Devices every container may use (v1 device cgroup), after the spec's own rules.
const DEFAULT_DEVICE_RULES: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c 10:200 rwm",
];

fn device_rules(resources: &LinuxResources) -> Vec<(bool, String)> {
    let mut out: Vec<(bool, String)> = resources
        .devices()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|d| {
            let typ = d
                .typ()
                .map(|t| t.as_str().to_string())
                .unwrap_or_else(|| "a".into());
            let num = |n: Option<i64>| n.map_or("*".to_string(), |n| n.to_string());
            let access = d.access().clone().unwrap_or_else(|| "rwm".into());
            let rule = if typ == "a" {
                "a".to_string()
            } else {
                format!("{typ} {}:{} {access}", num(d.major()), num(d.minor()))
            };
            (d.allow(), rule)
        })
        .collect();
    if !out.is_empty() {
        out.extend(DEFAULT_DEVICE_RULES.iter().map(|r| (true, r.to_string())));
    }
    out
}

/// Whether the spec sets limits beyond device rules (those go through libcgroups).
fn has_limits(r: &LinuxResources) -> bool {
    r.memory().is_some()
        || r.cpu().is_some()
        || r.pids().is_some()
        || r.block_io().is_some()
        || r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty())
        || r.network().is_some()
        || r.rdma().is_some()
        || r.unified().as_ref().is_some_and(|u| !u.is_empty())
}

/// Creates the cgroup, moves `pid` into it (`None`: the process was born there, see
/// [`enter`]) and applies the limits.
pub fn apply(path: &Path, resources: Option<&LinuxResources>, pid: Option<i32>) -> Result<()> {
    if layout() == Layout::V2 {
        let m = manager(path)?;
        if let Some(pid) = pid {
            m.add_task(nix::unistd::Pid::from_raw(pid))
                .map_err(cg_err)?;
        }
        if let Some(r) = resources {
            apply_limits(&m, r)?;
        }
        return Ok(());
    }
    for (controllers, dir) in v1_dirs(path) {
        let cpuset = controllers.iter().any(|c| c == "cpuset");
        create_cpuset_aware(&dir, cpuset)?;
        if let Some(pid) = pid {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string())
                .map_err(io_err(format!("writing {}", procs.display())))?;
        }
        if controllers.iter().any(|c| c == "devices") {
            for (allow, rule) in resources.map(device_rules).unwrap_or_default() {
                let f = dir.join(if allow {
                    "devices.allow"
                } else {
                    "devices.deny"
                });
                std::fs::write(&f, &rule).map_err(io_err(format!("device rule {rule:?}")))?;
            }
        }
    }
    if let Some(r) = resources.filter(|r| has_limits(r)) {
        // libcgroups owns the semantics of every limit; device rules were written above.
        let mut r = r.clone();
        r.set_devices(None);
        apply_limits(&manager(path)?, &r)?;
    }
    Ok(())
}

/// Changes the limits of an existing cgroup (the `update` command).
pub fn update(path: &Path, resources: &LinuxResources) -> Result<()> {
    if layout() == Layout::V1 {
        let rules = device_rules(resources);
        if !rules.is_empty() {
            let dir = Path::new(ROOT)
                .join("devices")
                .join(path.strip_prefix("/").unwrap_or(path));
            for (allow, rule) in rules {
                let f = dir.join(if allow {
                    "devices.allow"
                } else {
                    "devices.deny"
                });
                std::fs::write(&f, &rule).map_err(io_err(format!("device rule {rule:?}")))?;
            }
        }
        let mut r = resources.clone();
        r.set_devices(None);
        if !has_limits(&r) {
            return Ok(());
        }
        return apply_limits(&manager(path)?, &r);
    }
    apply_limits(&manager(path)?, resources)
}

fn apply_limits(m: &AnyCgroupManager, r: &LinuxResources) -> Result<()> {
    m.apply(&ControllerOpt {
        resources: r,
        disable_oom_killer: r.memory().as_ref().and_then(|m| m.disable_oom_killer()).unwrap_or(false),
        oom_score_adj: None,
        freezer_state: None,
    })
    .map_err(|e| {
        let msg = e.to_string();
        if msg.to_lowercase().contains("hugetlb") {
            Error::Cgroup(format!(
                "{msg} (hugepage limits need the hugetlb controller, which this host does not mount as a cgroup v1 hierarchy)"
            ))
        } else {
            Error::Cgroup(msg)
        }
    })
}

pub fn manager(path: &Path) -> Result<AnyCgroupManager> {
    create_cgroup_manager(CgroupConfig {
        cgroup_path: path.to_path_buf(),
        systemd_cgroup: false,
        container_name: String::new(),
    })
    .map_err(cg_err)
}

/// The calling thread's cgroup in each v1 hierarchy, to go back to once it has forked
/// inside a container's cgroup (see [`enter`]). Dropped without [`Visit::leave`], it still
/// goes back.
#[derive(Debug)]
pub struct Visit {
    /// The `tasks` files to go back to; emptied once gone.
    home: Vec<PathBuf>,
}

impl Visit {
    /// Moves the calling thread back to where it was.
    pub fn leave(mut self) -> Result<()> {
        move_self(&std::mem::take(&mut self.home))
    }
}

impl Drop for Visit {
    fn drop(&mut self) {
        let _ = move_self(&self.home);
    }
}

/// Moves the calling thread into each of these `tasks` files by writing "0".
fn move_self(tasks: &[PathBuf]) -> Result<()> {
    for t in tasks {
        std::fs::write(t, "0").map_err(io_err(format!("writing {}", t.display())))?;
    }
    Ok(())
}

/// Creates the container's cgroup and moves the calling thread into it, so that a process
/// it forks next is born there; the caller then leaves with [`Visit::leave`].
///
/// Why: moving another process (its pid written to `cgroup.procs`) takes the kernel's
/// global threadgroup lock for writing, and after an idle spell that waits for an RCU grace
/// period (~8 ms on this kind of VM, paid by every container start and every exec). A
/// thread that moves itself by writing "0" to `tasks` skips that lock.
///
/// v1 only: v2 has no per-thread move into a domain cgroup. `None` (the caller forks
/// first and moves the child with [`apply`] or [`add_task`]) on v2, when the cgroup is
/// frozen (the thread would freeze with it), or when the way back is not certain (a
/// hierarchy mounted from below its root, a home without a `tasks` file).
pub fn enter(path: &Path) -> Result<Option<Visit>> {
    if layout() != Layout::V1 {
        return Ok(None);
    }
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Ok(None);
    };
    if !v1_mounts_at_their_roots(&info) {
        return Ok(None);
    }
    let own = std::fs::read_to_string("/proc/thread-self/cgroup").unwrap_or_default();
    let mounts = parse_v1_mounts(&info);
    let mut home = Vec::new();
    for (controllers, mount) in &mounts {
        let Some(at) = own_cgroup(&own, controllers) else {
            return Ok(None);
        };
        let tasks = join(mount, Path::new(at)).join("tasks");
        if !tasks.exists() {
            return Ok(None);
        }
        home.push(tasks);
    }
    let mut there = Vec::new();
    for (controllers, mount) in &mounts {
        let dir = join(mount, path);
        create_cpuset_aware(&dir, controllers.iter().any(|c| c == "cpuset"))?;
        there.push(dir.join("tasks"));
    }
    if is_frozen(path) {
        return Ok(None);
    }
    let visit = Visit { home };
    move_self(&there)?;
    Ok(Some(visit))
}

/// v2: the container's cgroup, created if missing, opened for CLONE_INTO_CGROUP (the child
/// is then born in it, and no process is moved: see [`enter`] for why that matters).
/// `None` on v1, or when the cgroup is frozen.
pub fn open_v2(path: &Path) -> Result<Option<std::os::fd::OwnedFd>> {
    if layout() != Layout::V2 || is_frozen(path) {
        return Ok(None);
    }
    create_v2(Path::new(ROOT), path).map(Some)
}

/// Creates `path` below the v2 hierarchy at `root` as libcgroups does (every available
/// controller enabled on the way down, best effort, but not in the leaf, which holds
/// processes) and opens it.
fn create_v2(root: &Path, path: &Path) -> Result<std::os::fd::OwnedFd> {
    let leaf = join(root, path);
    if !leaf.exists() {
        let controllers =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let enable = |dir: &Path| {
            for c in controllers.split_whitespace() {
                let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
            }
        };
        enable(root);
        let mut dir = root.to_path_buf();
        let parts: Vec<_> = path
            .strip_prefix("/")
            .unwrap_or(path)
            .components()
            .collect();
        for (i, part) in parts.iter().enumerate() {
            dir.push(part);
            match std::fs::create_dir(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(io_err(format!("creating {}", dir.display()))(e))
                }
                _ => {}
            }
            if i + 1 < parts.len() {
                enable(&dir);
            }
        }
    }
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(&leaf)
        .map(Into::into)
        .map_err(io_err(format!("opening {}", leaf.display())))
}

/// Whether every v1 hierarchy is mounted at its root, so that the paths of
/// /proc/self/cgroup name directories below the mount points.
fn v1_mounts_at_their_roots(info: &str) -> bool {
    info.lines()
        .filter(|l| {
            l.split_once(" - ")
                .is_some_and(|(_, r)| r.starts_with("cgroup "))
        })
        .all(|l| l.split(' ').nth(3) == Some("/"))
}

/// The path of the line of /proc/self/cgroup for the hierarchy of these controllers.
fn own_cgroup<'a>(own: &'a str, controllers: &[String]) -> Option<&'a str> {
    own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, names, path) = (f.next()?, f.next()?, f.next()?);
        let mut a: Vec<&str> = names.split(',').collect();
        let mut b: Vec<&str> = controllers.iter().map(String::as_str).collect();
        a.sort_unstable();
        b.sort_unstable();
        (a == b).then_some(path)
    })
}

/// Moves `pid` into an existing container cgroup (exec).
pub fn add_task(path: &Path, pid: i32) -> Result<()> {
    if layout() == Layout::V2 {
        return manager(path)?
            .add_task(nix::unistd::Pid::from_raw(pid))
            .map_err(cg_err);
    }
    for (_, dir) in v1_dirs(path) {
        let procs = dir.join("cgroup.procs");
        if procs.exists() {
            std::fs::write(&procs, pid.to_string())
                .map_err(io_err(format!("writing {}", procs.display())))?;
        }
    }
    Ok(())
}

pub fn freeze(path: &Path, frozen: bool) -> Result<()> {
    if layout() == Layout::V2 {
        let state = if frozen {
            FreezerState::Frozen
        } else {
            FreezerState::Thawed
        };
        return manager(path)?.freeze(state).map_err(cg_err);
    }
    let file = join(Path::new(ROOT), Path::new("freezer"))
        .join(path.strip_prefix("/").unwrap_or(path))
        .join("freezer.state");
    let want = if frozen { "FROZEN" } else { "THAWED" };
    // Freezing can stay in FREEZING while tasks are in uninterruptible sleep: retry.
    for _ in 0..1000 {
        std::fs::write(&file, want).map_err(io_err(format!("writing {}", file.display())))?;
        if std::fs::read_to_string(&file).is_ok_and(|s| s.trim() == want) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Err(Error::Cgroup(format!("the freezer did not reach {want}")))
}

pub fn pids(path: &Path) -> Result<Vec<i32>> {
    let dir = if layout() == Layout::V2 {
        join(Path::new(ROOT), path)
    } else {
        v1_dirs(path)
            .into_iter()
            .map(|(_, d)| d)
            .find(|d| d.exists())
            .ok_or_else(|| Error::Cgroup(format!("no cgroup {} found", path.display())))?
    };
    Ok(libcgroups::common::get_all_pids(&dir)
        .map_err(cg_err)?
        .into_iter()
        .map(|p| p.as_raw())
        .collect())
}

/// How many processes of the cgroup the kernel's OOM killer has killed (`oom_kill` of
/// memory.oom_control on v1, memory.events on v2); 0 when unknown.
pub fn oom_kills(path: &Path) -> u64 {
    let file = match layout() {
        Layout::V2 => join(Path::new(ROOT), path).join("memory.events"),
        Layout::V1 => match v1_dirs(path)
            .into_iter()
            .find(|(c, _)| c.iter().any(|c| c == "memory"))
        {
            Some((_, d)) => d.join("memory.oom_control"),
            None => return 0,
        },
    };
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

pub fn stats(path: &Path) -> Result<serde_json::Value> {
    let s = manager(path)?.stats().map_err(cg_err)?;
    serde_json::to_value(s).map_err(cg_err)
}

/// Removes the cgroup in every hierarchy, killing what still runs in it first.
pub fn remove(path: &Path) -> Result<()> {
    if layout() == Layout::V2 {
        return manager(path)?.remove().map_err(cg_err);
    }
    let dirs: Vec<PathBuf> = v1_dirs(path)
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| d.exists())
        .collect();
    if is_frozen(path) {
        let _ = freeze(path, false);
    }
    for dir in &dirs {
        remove_tree(dir)?;
    }
    Ok(())
}

fn remove_tree(dir: &Path) -> Result<()> {
    // Children first (a container may have made sub-cgroups).
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path())?;
            }
        }
    }
    let mut nap = std::time::Duration::from_micros(100);
    for _ in 0..200 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) => {
                if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                    // Never this process: a thread of it may be visiting (see `enter`).
                    let me = std::process::id() as i32;
                    for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                        if pid == me {
                            continue;
                        }
                        let _ = crate::sys::kill(pid, libc::SIGKILL);
                    }
                }
                std::thread::sleep(nap);
                nap = (nap * 2).min(std::time::Duration::from_millis(20));
            }
        }
    }
    Err(Error::Cgroup(format!(
        "cannot remove {}: processes are still in it",
        dir.display()
    )))
}

/// Whether the container's cgroup is frozen, read straight from the freezer files
/// (cheaper than building a manager on every `state`).
pub fn is_frozen(path: &Path) -> bool {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let v1 = Path::new(ROOT)
        .join("freezer")
        .join(rel)
        .join("freezer.state");
    if let Ok(s) = std::fs::read_to_string(&v1) {
        return s.trim() == "FROZEN";
    }
    let v2 = Path::new(ROOT).join(rel).join("cgroup.freeze");
    std::fs::read_to_string(v2).is_ok_and(|s| s.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_plain_paths() {
        assert_eq!(
            resolve_path(None, false, "c1").unwrap(),
            Path::new("/berth/c1")
        );
        assert_eq!(
            resolve_path(Some(Path::new("/a/b")), false, "c1").unwrap(),
            Path::new("/a/b")
        );
        assert_eq!(
            resolve_path(Some(Path::new("a/b")), false, "c1").unwrap(),
            Path::new("/a/b")
        );
        assert!(resolve_path(Some(Path::new("/a/../../etc")), false, "c1").is_err());
    }

    #[test]
    fn systemd_paths() {
        assert_eq!(
            resolve_path(Some(Path::new("system.slice:docker:abc")), true, "x").unwrap(),
            Path::new("/system.slice/docker-abc.scope")
        );
        assert_eq!(
            resolve_path(Some(Path::new("a-b-c.slice:cri:id")), true, "x").unwrap(),
            Path::new("/a.slice/a-b.slice/a-b-c.slice/cri-id.scope")
        );
        assert_eq!(
            resolve_path(Some(Path::new(":p:n")), true, "x").unwrap(),
            Path::new("/system.slice/p-n.scope")
        );
        // Kubernetes pod slices end up as slices, not scopes.
        assert_eq!(
            resolve_path(
                Some(Path::new("kubepods.slice::kubepods-pod1.slice")),
                true,
                "x"
            )
            .unwrap(),
            Path::new("/kubepods.slice/kubepods-pod1.slice")
        );
        assert!(resolve_path(Some(Path::new("/plain/path")), true, "x").is_err());
        assert!(resolve_path(Some(Path::new("bad:p:n")), true, "x").is_err());
    }

    #[test]
    fn own_cgroup_matches_the_whole_controller_set() {
        let own = "9:name=systemd:/user.slice\n4:cpuacct,cpu:/a\n3:cpu:/wrong\n0::/\n";
        let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(own_cgroup(own, &c(&["cpu", "cpuacct"])), Some("/a"));
        assert_eq!(own_cgroup(own, &c(&["cpu"])), Some("/wrong"));
        assert_eq!(own_cgroup(own, &c(&["name=systemd"])), Some("/user.slice"));
        assert_eq!(own_cgroup(own, &c(&["memory"])), None);
    }

    #[test]
    fn visits_need_hierarchies_mounted_at_their_roots() {
        let good = "\
31 30 0:27 /sub /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        assert!(v1_mounts_at_their_roots(good));
        // A container's view: the host's hierarchy bound from below its root.
        let nested = "33 30 0:29 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert!(!v1_mounts_at_their_roots(nested));
    }

    /// Kills the test's child and removes its cgroups however the test ends.
    struct Scratch {
        /// The v2 hierarchy the cgroup is in, or `None` for every v1 one.
        v2_root: Option<PathBuf>,
        path: PathBuf,
        pid: i32,
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            // Thawed first: a frozen child takes SIGKILL only once it thaws.
            if self.v2_root.is_none() {
                let _ = freeze(&self.path, false);
            }
            if self.pid > 0 {
                let _ = crate::sys::kill(self.pid, libc::SIGKILL);
                let _ = crate::sys::waitpid(self.pid, false);
            }
            let dirs: Vec<PathBuf> = match &self.v2_root {
                Some(root) => vec![root.clone()],
                None => v1_mounts().into_iter().map(|(_, m)| m).collect(),
            };
            for root in dirs {
                // Leaf first, up to /berth-unit; a dead child may take a moment to leave.
                for dir in self.path.ancestors().filter(|a| a.parent().is_some()) {
                    let dir = join(&root, dir);
                    for _ in 0..100 {
                        if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
            }
        }
    }

    /// As root on a v1 host: a child forked during a visit is born in the container's
    /// cgroup in every hierarchy, and the visiting thread goes home; a frozen cgroup is
    /// not visited. On v2 there is no visit.
    #[test]
    fn a_visit_places_children_and_comes_back() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let path = PathBuf::from(format!("/berth-unit/visit-{}", std::process::id()));
        if layout() == Layout::V2 {
            assert!(enter(&path).unwrap().is_none());
            return;
        }
        let mut scratch = Scratch {
            v2_root: None,
            path: path.clone(),
            pid: 0,
        };
        let before = std::fs::read_to_string("/proc/thread-self/cgroup").unwrap();
        let visit = enter(&path).unwrap().expect("a visit on a v1 host");
        let spawned = std::process::Command::new("sleep").arg("30").spawn();
        visit.leave().unwrap();
        scratch.pid = spawned.unwrap().id() as i32;
        let after = std::fs::read_to_string("/proc/thread-self/cgroup").unwrap();
        assert_eq!(before, after);
        let theirs = std::fs::read_to_string(format!("/proc/{}/cgroup", scratch.pid)).unwrap();
        for (c, _) in v1_mounts() {
            let line = theirs
                .lines()
                .find(|l| own_cgroup(l, &c).is_some())
                .unwrap_or_else(|| panic!("no line for {c:?} in {theirs}"));
            assert!(line.ends_with(path.to_str().unwrap()), "{c:?}: {line}");
        }
        freeze(&path, true).unwrap();
        assert!(
            enter(&path).unwrap().is_none(),
            "a frozen cgroup must not be visited"
        );
    }

    /// As root, in the host's v2 hierarchy (pure v2, or the controller-less one a hybrid
    /// host mounts at `unified`): a cgroup made as libcgroups makes it, and a child born in
    /// it by CLONE_INTO_CGROUP.
    #[test]
    fn clone_into_a_v2_cgroup() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let root = [Path::new(ROOT), &Path::new(ROOT).join("unified")]
            .into_iter()
            .find(|r| r.join("cgroup.controllers").exists())
            .map(Path::to_path_buf);
        let Some(root) = root else {
            eprintln!("skipped: no cgroup v2 hierarchy on this host");
            return;
        };
        let path = PathBuf::from(format!("/berth-unit/v2-{}/leaf", std::process::id()));
        let mut scratch = Scratch {
            v2_root: Some(root.clone()),
            path: path.clone(),
            pid: 0,
        };
        let fd = create_v2(&root, &path).unwrap();
        use std::os::fd::AsFd;
        let pid = crate::sys::clone_into_cgroup(0, fd.as_fd()).unwrap();
        if pid == 0 {
            // SAFETY: only async-signal-safe calls in the child of a threaded test process.
            unsafe {
                libc::pause();
                libc::_exit(0);
            }
        }
        scratch.pid = pid;
        let theirs = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            theirs
                .lines()
                .any(|l| l == format!("0::{}", path.display())),
            "{theirs}"
        );
    }

    #[test]
    fn hybrid_mountinfo_lists_only_v1_hierarchies() {
        let info = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        let m = parse_v1_mounts(info);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].0, vec!["name=systemd"]);
        assert_eq!(
            m[1],
            (
                vec!["cpu".to_string(), "cpuacct".to_string()],
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
            )
        );
        // hugetlb (only in the v2 hierarchy here) is simply not a v1 hierarchy.
        assert!(!m.iter().any(|(c, _)| c.iter().any(|c| c == "hugetlb")));
    }

    #[test]
    fn device_rules_deny_all_then_defaults() {
        let r: LinuxResources = serde_json::from_value(serde_json::json!({
            "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"}]
        })).unwrap();
        let rules = device_rules(&r);
        assert_eq!(rules[0], (false, "a".to_string()));
        assert_eq!(rules[1], (true, "c 10:229 rw".to_string()));
        assert!(rules.contains(&(true, "c 1:3 rwm".to_string())));
        let none: LinuxResources = serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(device_rules(&none).is_empty());
        assert!(!has_limits(&r));
        let mem: LinuxResources =
            serde_json::from_value(serde_json::json!({"memory": {"limit": 1048576}})).unwrap();
        assert!(has_limits(&mem));
    }
}
