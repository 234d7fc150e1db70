//! Loading and checking a bundle's config.json, and the default spec of `spec`.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Error, Result};

/// Container ids become directory names and cgroup names: keep them to a safe alphabet.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

/// Loads `<bundle>/config.json` and resolves `root.path` against the bundle.
pub fn load(bundle: &Path) -> Result<(Spec, PathBuf)> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|source| Error::Config {
        path: path.clone(),
        source,
    })?;
    let spec: Spec = serde_json::from_slice(&text).map_err(|e| Error::InvalidConfig {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| Error::InvalidSpec("root is missing".into()))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    let rootfs = std::fs::canonicalize(&rootfs).map_err(|e| {
        Error::InvalidSpec(format!("rootfs {} is not usable: {e}", rootfs.display()))
    })?;
    if !rootfs.is_dir() {
        return Err(Error::InvalidSpec(format!(
            "rootfs {} is not a directory",
            rootfs.display()
        )));
    }
    validate(&spec)?;
    Ok((spec, rootfs))
}

/// Checks the parts of a spec that serde cannot: the rules of the runtime spec that would
/// otherwise surface as obscure errors in the middle of container setup.
pub fn validate(spec: &Spec) -> Result<()> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::InvalidSpec("process is missing".into()))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::InvalidSpec("process.args must not be empty".into()));
    }
    if !process.cwd().is_absolute() {
        return Err(Error::InvalidSpec(format!(
            "process.cwd {} must be an absolute path",
            process.cwd().display()
        )));
    }
    if let Some(linux) = spec.linux() {
        let mut seen = Vec::new();
        for ns in linux.namespaces().as_deref().unwrap_or_default() {
            if seen.contains(&ns.typ()) {
                return Err(Error::InvalidSpec(format!(
                    "namespace {} is listed twice",
                    ns.typ()
                )));
            }
            seen.push(ns.typ());
        }
        let has_userns = seen.contains(&LinuxNamespaceType::User);
        let has_maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty());
        if has_maps && !has_userns {
            return Err(Error::InvalidSpec(
                "uidMappings are set but there is no user namespace".into(),
            ));
        }
        if spec.hostname().is_some() && !seen.contains(&LinuxNamespaceType::Uts) {
            return Err(Error::InvalidSpec(
                "hostname is set but there is no new uts namespace".into(),
            ));
        }
    }
    for m in spec.mounts().as_deref().unwrap_or_default() {
        if !m.destination().is_absolute() {
            return Err(Error::InvalidSpec(format!(
                "mount destination {} must be an absolute path",
                m.destination().display()
            )));
        }
    }
    Ok(())
}

/// The default config.json written by `spec`, the same container runc's `spec` describes:
/// a shell on a terminal with the usual mounts, masked paths and a minimal capability set.
pub fn default_spec_json(rootless: bool) -> serde_json::Value {
    let caps = serde_json::json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    let mut mounts = serde_json::json!([
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
    ]);
    let mut namespaces = serde_json::json!([
        {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
    ]);
    let mut linux = serde_json::json!({
        "resources": {"devices": [{"allow": false, "access": "rwm"}]},
        "namespaces": namespaces.clone(),
        "maskedPaths": [
            "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
            "/proc/scsi"
        ],
        "readonlyPaths": [
            "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
        ]
    });
    if rootless {
        // Without privilege: a user namespace mapping the caller, no network namespace
        // (no way to set it up), sysfs bound from the host, no cgroup mount or device rules.
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        namespaces = serde_json::json!([
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "user"}
        ]);
        linux = serde_json::json!({
            "uidMappings": [{"containerID": 0, "hostID": uid, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": gid, "size": 1}],
            "namespaces": namespaces,
            "maskedPaths": linux["maskedPaths"].clone(),
            "readonlyPaths": linux["readonlyPaths"].clone()
        });
        let arr = mounts.as_array_mut().expect("array");
        arr.retain(|m| m["type"] != "cgroup");
        for m in arr.iter_mut() {
            if m["type"] == "sysfs" {
                *m = serde_json::json!({"destination": "/sys", "type": "none", "source": "/sys",
                    "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]});
            }
            if m["type"] == "devpts" {
                m["options"] = serde_json::json!([
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620"
                ]);
            }
        }
    }
    serde_json::json!({
        "ociVersion": crate::OCI_VERSION,
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "berth",
        "mounts": mounts,
        "linux": linux
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "abc-1_2.3+x", "0123456789abcdef"] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", "é"] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn default_spec_parses_and_validates() {
        for rootless in [false, true] {
            let spec: Spec = serde_json::from_value(default_spec_json(rootless)).unwrap();
            validate(&spec).unwrap();
        }
    }

    #[test]
    fn rejects_duplicate_namespace_and_relative_cwd() {
        let mut v = default_spec_json(false);
        v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "pid"}));
        let spec: Spec = serde_json::from_value(v).unwrap();
        assert!(validate(&spec).unwrap_err().to_string().contains("twice"));
        let mut v = default_spec_json(false);
        v["process"]["cwd"] = "relative".into();
        let spec: Spec = serde_json::from_value(v).unwrap();
        assert!(validate(&spec).is_err());
    }

    #[test]
    fn unknown_namespace_type_is_an_error() {
        let mut v = default_spec_json(false);
        v["linux"]["namespaces"] = serde_json::json!([{"type": "bogus"}]);
        assert!(serde_json::from_value::<Spec>(v).is_err());
    }
}
