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

pub fn manager(path: &Path) -> Result<AnyCgroupManager> {
    create_cgroup_manager(CgroupConfig {
        cgroup_path: path.to_path_buf(),
        systemd_cgroup: false,
        container_name: String::new(),
    })
    .map_err(cg_err)
}

/// Creates the cgroup, applies the limits and moves `pid` into it.
pub fn apply(
    path: &Path,
    resources: Option<&LinuxResources>,
    pid: i32,
) -> Result<AnyCgroupManager> {
    let m = manager(path)?;
    m.add_task(nix::unistd::Pid::from_raw(pid))
        .map_err(cg_err)?;
    if let Some(r) = resources {
        m.apply(&ControllerOpt {
            resources: r,
            disable_oom_killer: r
                .memory()
                .as_ref()
                .and_then(|m| m.disable_oom_killer())
                .unwrap_or(false),
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|e| {
            let msg = e.to_string();
            if msg.contains("hugetlb") || msg.contains("HugeTlb") {
                Error::Cgroup(format!(
                    "{msg} (hugepage limits need the hugetlb controller, which this host does not mount as a cgroup v1 hierarchy)"
                ))
            } else {
                Error::Cgroup(msg)
            }
        })?;
    }
    Ok(m)
}

/// Moves `pid` into an existing container cgroup (exec).
pub fn add_task(path: &Path, pid: i32) -> Result<()> {
    manager(path)?
        .add_task(nix::unistd::Pid::from_raw(pid))
        .map_err(cg_err)
}

pub fn freeze(path: &Path, frozen: bool) -> Result<()> {
    let state = if frozen {
        FreezerState::Frozen
    } else {
        FreezerState::Thawed
    };
    manager(path)?.freeze(state).map_err(cg_err)
}

pub fn pids(path: &Path) -> Result<Vec<i32>> {
    Ok(manager(path)?
        .get_all_pids()
        .map_err(cg_err)?
        .into_iter()
        .map(|p| p.as_raw())
        .collect())
}

pub fn stats(path: &Path) -> Result<serde_json::Value> {
    let s = manager(path)?.stats().map_err(cg_err)?;
    serde_json::to_value(s).map_err(cg_err)
}

/// Removes the cgroup in every hierarchy (killing stragglers first, as libcgroups does).
pub fn remove(path: &Path) -> Result<()> {
    manager(path)?.remove().map_err(cg_err)
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
}
