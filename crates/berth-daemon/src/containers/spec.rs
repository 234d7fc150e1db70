//! From a container record to the OCI runtime config the shim runs: Docker's defaults
//! (capabilities, masked paths, /etc files) with the create body's changes on top.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use super::model::{HostConfig, Record};

/// Docker's default capability set.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability the kernel headers name, by number.
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

fn cap_name(s: &str) -> String {
    let up = s.to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

/// The OCI `consoleSize` for a terminal of `[height, width]` (Docker's `ConsoleSize`); none
/// without a terminal or for a size of zero (clients that do not know send [0, 0]).
pub fn console_size(tty: bool, size: Option<&[u16]>) -> Option<Value> {
    match size {
        Some(&[h, w]) if tty && h > 0 && w > 0 => Some(json!({"height": h, "width": w})),
        _ => None,
    }
}

/// The capability set after `--cap-add`/`--cap-drop` (names with or without `CAP_`, and
/// `ALL`), as Docker computes it.
pub fn capabilities(hc: &HostConfig) -> Result<Vec<String>, String> {
    if hc.privileged {
        return Ok(ALL_CAPS.iter().map(|s| s.to_string()).collect());
    }
    let add: Vec<String> = hc.cap_add.iter().flatten().map(|c| cap_name(c)).collect();
    let drop: Vec<String> = hc.cap_drop.iter().flatten().map(|c| cap_name(c)).collect();
    for c in add.iter().chain(drop.iter()) {
        if c != "CAP_ALL" && !ALL_CAPS.contains(&c.as_str()) {
            return Err(format!("unknown capability: {c:?}"));
        }
    }
    let mut caps: Vec<String> = if drop.iter().any(|c| c == "CAP_ALL") {
        Vec::new()
    } else {
        DEFAULT_CAPS
            .iter()
            .map(|s| s.to_string())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    if add.iter().any(|c| c == "CAP_ALL") {
        caps = ALL_CAPS.iter().map(|s| s.to_string()).collect();
    } else {
        for c in add {
            if !caps.contains(&c) {
                caps.push(c);
            }
        }
    }
    Ok(caps)
}

/// A user as resolved in the container's /etc/passwd and /etc/group.
#[derive(Debug, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

/// Resolves `user[:group]` (names or numbers) as Docker does, with its error wording.
pub fn resolve_user(rootfs: &Path, spec: &str) -> Result<User, String> {
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let found = entries
        .iter()
        .find(|f| f[0] == u || (u.parse::<u32>().is_ok() && f[2] == u));
    let (uid, mut gid, home, name) = match (found, u.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse()
                .map_err(|_| format!("bad uid in passwd: {}", f[2]))?,
            f[3].parse().unwrap_or(0),
            f[5].to_string(),
            Some(f[0].to_string()),
        ),
        (None, Ok(n)) => (n, 0, "/".to_string(), None),
        (None, Err(_)) => {
            return Err(format!(
                "unable to find user {u}: no matching entries in passwd file"
            ))
        }
    };
    let groups: Vec<Vec<&str>> = group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    if let Some(g) = g {
        let hit = groups
            .iter()
            .find(|f| f[0] == g || (g.parse::<u32>().is_ok() && f[2] == g));
        gid = match (hit, g.parse::<u32>()) {
            (Some(f), _) => f[2].parse().unwrap_or(0),
            (None, Ok(n)) => n,
            (None, Err(_)) => {
                return Err(format!(
                    "unable to find group {g}: no matching entries in group file"
                ))
            }
        };
    }
    let additional_gids = match &name {
        Some(n) => groups
            .iter()
            .filter(|f| f[3].split(',').any(|m| m == n))
            .filter_map(|f| f[2].parse().ok())
            .filter(|&x| x != gid)
            .collect(),
        None => Vec::new(),
    };
    Ok(User {
        uid,
        gid,
        additional_gids,
        home,
    })
}

/// Docker's binds: `src:dst[:opts]`, where opts mix `ro`/`rw`, propagation and SELinux
/// labels (ignored).
fn bind_mount(spec: &str) -> Result<Option<Value>, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, opts) = match parts.as_slice() {
        [s, d] => (*s, *d, ""),
        [s, d, o] => (*s, *d, *o),
        _ => return Err(format!("invalid volume specification: '{spec}'")),
    };
    if !dst.starts_with('/') {
        return Err(format!(
            "invalid volume specification: '{spec}': invalid mount config for type \"bind\": invalid mount path: '{dst}' mount path must be absolute"
        ));
    }
    if !src.starts_with('/') {
        return Ok(None); // a named volume: mounted from the record's volumes
    }
    if dst == "/" {
        return Err(format!(
            "invalid volume specification: '{spec}': invalid mount config for type \"bind\": invalid specification: destination can't be '/'"
        ));
    }
    let mut options = vec!["rbind".to_string()];
    let mut propagation = "rprivate".to_string();
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" | "rw" => options.push(o.into()),
            "z" | "Z" | "nocopy" => {}
            "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate" => {
                propagation = o.into()
            }
            _ => return Err(format!("invalid mode: {o}")),
        }
    }
    options.push(propagation);
    // Docker creates a missing host directory for -v (not for --mount).
    if std::fs::symlink_metadata(src).is_err() {
        std::fs::create_dir_all(src).map_err(|e| format!("creating {src}: {e}"))?;
    }
    Ok(Some(
        json!({"destination": dst, "type": "bind", "source": src, "options": options}),
    ))
}

/// A named or anonymous volume's part of a bind spec: (name, destination, rw, nocopy).
/// None for host paths. Checked at create, so errors come back to the client there.
pub fn volume_bind(spec: &str) -> Result<Option<(String, String, bool, bool)>, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, opts) = match parts.as_slice() {
        [s, d] => (*s, *d, ""),
        [s, d, o] => (*s, *d, *o),
        _ => return Err(format!("invalid volume specification: '{spec}'")),
    };
    if src.starts_with('/') {
        return Ok(None);
    }
    if !dst.starts_with('/') {
        return Err(format!(
            "invalid volume specification: '{spec}': invalid mount config for type \"volume\": invalid mount path: '{dst}' mount path must be absolute"
        ));
    }
    let opts: Vec<&str> = opts.split(',').collect();
    Ok(Some((
        src.to_string(),
        dst.to_string(),
        !opts.contains(&"ro"),
        opts.contains(&"nocopy"),
    )))
}

/// `--mount` entries of type bind and tmpfs.
fn api_mount(m: &Value) -> Result<Value, String> {
    let kind = m["Type"].as_str().unwrap_or("");
    let target = m["Target"].as_str().unwrap_or("");
    if !target.starts_with('/') {
        return Err(format!(
            "invalid mount config: mount path must be absolute: {target:?}"
        ));
    }
    let ro = m["ReadOnly"].as_bool().unwrap_or(false);
    match kind {
        "bind" => {
            let src = m["Source"].as_str().unwrap_or("");
            if std::fs::symlink_metadata(src).is_err() {
                return Err(format!(
                    "invalid mount config for type \"bind\": bind source path does not exist: {src}"
                ));
            }
            let prop = m["BindOptions"]["Propagation"]
                .as_str()
                .unwrap_or("rprivate");
            let mut options = vec!["rbind", prop];
            if ro {
                options.push("ro");
            }
            Ok(json!({"destination": target, "type": "bind", "source": src, "options": options}))
        }
        "volume" => Ok(Value::Null), // from the record's volumes
        "tmpfs" => {
            let mut options = vec!["nosuid".to_string(), "nodev".to_string()];
            if let Some(size) = m["TmpfsOptions"]["SizeBytes"].as_i64().filter(|&s| s > 0) {
                options.push(format!("size={size}"));
            }
            if let Some(mode) = m["TmpfsOptions"]["Mode"].as_u64() {
                options.push(format!("mode={mode:o}"));
            }
            if ro {
                options.push("ro".into());
            }
            Ok(
                json!({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": options}),
            )
        }
        other => Err(format!(
            "mount type {other:?} is not supported yet (bind and tmpfs are)"
        )),
    }
}

fn env_unset(env: &[String], key: &str) -> bool {
    !env.iter()
        .any(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
}

/// The runtime config for `rec`, whose root filesystem is mounted at `rootfs` and whose
/// /etc/hostname, /etc/hosts and /etc/resolv.conf are in `dir`.
/// `volumes` are the container's volumes as (host path, destination, rw); `joined` the
/// namespaces it shares with other containers (`--network container:x`...) as (OCI
/// namespace type, path).
pub fn build(
    rec: &Record,
    rootfs: &Path,
    dir: &Path,
    volumes: &[(std::path::PathBuf, String, bool)],
    joined: &[(&str, std::path::PathBuf)],
) -> Result<Value, String> {
    let hc = &rec.host_config;
    let c = &rec.config;
    let user = resolve_user(rootfs, &c.user)?;
    let mut spec = berth_runtime::spec::default_spec_json(false);

    let mut env = c.env.clone();
    if env_unset(&env, "PATH") {
        env.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    env.insert(1.min(env.len()), format!("HOSTNAME={}", hostname(rec)));
    if c.tty && env_unset(&env, "TERM") {
        env.push("TERM=xterm".into());
    }
    if env_unset(&env, "HOME") {
        env.push(format!("HOME={}", user.home));
    }
    let caps = capabilities(hc)?;
    let mut args = vec![rec.path.clone()];
    args.extend(rec.args.iter().cloned());
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(1_048_576);
    let mut rlimits = vec![json!({"type": "RLIMIT_NOFILE", "soft": nofile, "hard": nofile})];
    for u in hc.ulimits.iter().flatten() {
        let name = format!("RLIMIT_{}", u.name.to_ascii_uppercase());
        rlimits.retain(|r| r["type"] != name.as_str());
        rlimits.push(json!({"type": name, "soft": u.soft, "hard": u.hard}));
    }
    let security = hc.security_opt.clone().unwrap_or_default();
    let nnp = security.iter().any(|s| {
        s == "no-new-privileges" || s == "no-new-privileges:true" || s == "no-new-privileges=true"
    });
    let mut gids = user.additional_gids.clone();
    for g in hc.group_add.iter().flatten() {
        let gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => resolve_user(rootfs, &format!("0:{g}"))?.gid,
        };
        if !gids.contains(&gid) {
            gids.push(gid);
        }
    }
    spec["process"] = json!({
        "terminal": c.tty,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": gids},
        "args": args,
        "env": env,
        "cwd": if c.working_dir.is_empty() { "/" } else { c.working_dir.as_str() },
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": rlimits,
        "noNewPrivileges": nnp,
        "oomScoreAdj": 0
    });
    if let Some(size) = console_size(c.tty, hc.console_size.as_deref()) {
        spec["process"]["consoleSize"] = size;
    }
    spec["root"] = json!({"path": rootfs, "readonly": hc.readonly_rootfs});
    spec["hostname"] = json!(hostname(rec));
    if !c.domainname.is_empty() {
        spec["domainname"] = json!(c.domainname);
    }

    let mounts = spec["mounts"].as_array_mut().expect("default mounts");
    let shm = if hc.shm_size > 0 {
        hc.shm_size
    } else {
        64 << 20
    };
    for m in mounts.iter_mut() {
        if m["destination"] == "/dev/shm" {
            m["options"] = json!([
                "nosuid",
                "noexec",
                "nodev",
                "mode=1777",
                format!("size={shm}")
            ]);
        }
        if hc.privileged && (m["type"] == "sysfs" || m["type"] == "cgroup") {
            m["options"] = json!(["nosuid", "noexec", "nodev"]);
        }
    }
    for f in ["hostname", "hosts", "resolv.conf"] {
        mounts.push(json!({"destination": format!("/etc/{f}"), "type": "bind",
            "source": dir.join(f), "options": ["rbind", "rprivate"]}));
    }
    for b in hc.binds.iter().flatten() {
        mounts.extend(bind_mount(b)?);
    }
    for m in hc.mounts.iter().flatten() {
        let m = api_mount(m)?;
        if !m.is_null() {
            mounts.push(m);
        }
    }
    for (src, dst, rw) in volumes {
        let mut options = vec!["rbind", "rprivate"];
        if !rw {
            options.push("ro");
        }
        mounts.push(json!({"destination": dst, "type": "bind", "source": src, "options": options}));
    }
    for (dst, opts) in hc.tmpfs.iter().flatten() {
        let mut options = vec![
            "nosuid".to_string(),
            "nodev".to_string(),
            "noexec".to_string(),
        ];
        options.extend(opts.split(',').filter(|o| !o.is_empty()).map(String::from));
        mounts.push(
            json!({"destination": dst, "type": "tmpfs", "source": "tmpfs", "options": options}),
        );
    }
    // Later mounts over the same destination win (a bind over /etc/hosts, say).
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<Value> = mounts
        .drain(..)
        .rev()
        .filter(|m| seen.insert(m["destination"].as_str().unwrap_or("").to_string()))
        .collect();
    kept.reverse();
    *mounts = kept;

    let mut namespaces = vec![json!({"type": "mount"})];
    let host = |mode: &str| mode == "host";
    for (kind, mode) in [
        ("pid", &hc.pid_mode),
        ("network", &hc.network_mode),
        ("ipc", &hc.ipc_mode),
    ] {
        if host(mode) {
            continue;
        }
        match joined.iter().find(|(k, _)| *k == kind) {
            Some((_, path)) => namespaces.push(json!({"type": kind, "path": path})),
            None => namespaces.push(json!({"type": kind})),
        }
    }
    if !host(&hc.uts_mode) {
        namespaces.push(json!({"type": "uts"}));
    }
    namespaces.push(json!({"type": "cgroup"}));
    let linux = &mut spec["linux"];
    linux["namespaces"] = json!(namespaces);
    linux["cgroupsPath"] = json!(format!("/berth/{}", rec.id));
    linux["resources"] = resources(hc);
    let mut devices = Vec::new();
    if hc.privileged {
        linux["maskedPaths"] = json!([]);
        linux["readonlyPaths"] = json!([]);
        linux["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}]);
        // Every device of the host, as Docker gives a privileged container.
        host_devices(Path::new("/dev"), &mut devices);
    }
    for m in hc.devices.iter().flatten() {
        let dev = device(Path::new(&m.path_on_host)).ok_or_else(|| {
            format!("error gathering device information while adding custom device \"{}\": no such file or directory or not a device", m.path_on_host)
        })?;
        let inside = if m.path_in_container.is_empty() {
            m.path_on_host.clone()
        } else {
            m.path_in_container.clone()
        };
        let access = if m.cgroup_permissions.is_empty() {
            "rwm"
        } else {
            m.cgroup_permissions.as_str()
        };
        if let Some(rules) = linux["resources"]["devices"].as_array_mut() {
            rules.push(
                json!({"allow": true, "type": dev["type"], "major": dev["major"],
                "minor": dev["minor"], "access": access}),
            );
        }
        let mut dev = dev;
        dev["path"] = json!(inside);
        devices.retain(|d: &Value| d["path"] != dev["path"]);
        devices.push(dev);
    }
    if !devices.is_empty() {
        linux["devices"] = Value::Array(devices);
    } else if let Some(m) = linux["maskedPaths"].as_array_mut() {
        m.push(json!("/sys/devices/virtual/powercap"));
    }
    if let Some(s) = &hc.sysctls {
        linux["sysctl"] = json!(s);
    }
    // seccomp: the default profile unless privileged or told otherwise.
    let choice = security.iter().find_map(|o| {
        o.strip_prefix("seccomp=")
            .or_else(|| o.strip_prefix("seccomp:"))
    });
    match choice {
        _ if hc.privileged => {}
        Some("unconfined") => {}
        // The docker CLI sends the profile's contents; a path is read here.
        Some(json) if json.trim_start().starts_with('{') => {
            linux["seccomp"] = super::seccomp::from_file(json, &caps)?;
        }
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("opening seccomp profile ({path}) failed: {e}"))?;
            linux["seccomp"] = super::seccomp::from_file(&text, &caps)?;
        }
        None => linux["seccomp"] = super::seccomp::default_profile(&caps),
    }
    if host(&hc.uts_mode) {
        spec.as_object_mut().expect("object").remove("hostname");
    }
    if hc.init == Some(true) {
        spec["annotations"] = json!({ berth_runtime::container::INIT_ANNOTATION: "true" });
    }
    Ok(spec)
}

/// A host device as the runtime spec's `linux.devices` entry (path set to the host's).
pub fn device(path: &Path) -> Option<Value> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let md = std::fs::metadata(path).ok()?;
    let kind = if md.file_type().is_char_device() {
        "c"
    } else if md.file_type().is_block_device() {
        "b"
    } else {
        return None;
    };
    let rdev = md.rdev();
    Some(json!({
        "path": path, "type": kind,
        "major": rustix::fs::major(rdev), "minor": rustix::fs::minor(rdev),
        "fileMode": md.permissions().mode() & 0o777, "uid": 0, "gid": 0
    }))
}

/// The devices below `dir` (not the pty, shm and mqueue mounts the container has its own of).
fn host_devices(dir: &Path, out: &mut Vec<Value>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if matches!(
            p.to_str(),
            Some("/dev/pts" | "/dev/shm" | "/dev/mqueue" | "/dev/console" | "/dev/ptmx")
        ) {
            continue;
        }
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            host_devices(&p, out);
        } else if let Some(d) = device(&p) {
            out.push(d);
        }
    }
}

/// The cgroup limits of HostConfig, in the runtime spec's shape.
pub fn resources(hc: &HostConfig) -> Value {
    let mut r = json!({"devices": [{"allow": false, "access": "rwm"}]});
    let mut mem = serde_json::Map::new();
    if hc.memory > 0 {
        mem.insert("limit".into(), json!(hc.memory));
        // Docker's default: swap as much again as memory.
        let swap = match hc.memory_swap {
            0 => hc.memory * 2,
            s => s,
        };
        mem.insert("swap".into(), json!(swap));
    }
    if hc.memory_reservation > 0 {
        mem.insert("reservation".into(), json!(hc.memory_reservation));
    }
    if hc.oom_kill_disable == Some(true) {
        mem.insert("disableOOMKiller".into(), json!(true));
    }
    if !mem.is_empty() {
        r["memory"] = Value::Object(mem);
    }
    let mut cpu = serde_json::Map::new();
    if hc.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(hc.cpu_shares));
    }
    if hc.nano_cpus > 0 {
        cpu.insert("period".into(), json!(100_000));
        cpu.insert("quota".into(), json!(hc.nano_cpus / 10_000));
    } else {
        if hc.cpu_quota > 0 {
            cpu.insert("quota".into(), json!(hc.cpu_quota));
        }
        if hc.cpu_period > 0 {
            cpu.insert("period".into(), json!(hc.cpu_period));
        }
    }
    if !hc.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(hc.cpuset_cpus));
    }
    if !hc.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(hc.cpuset_mems));
    }
    if !cpu.is_empty() {
        r["cpu"] = Value::Object(cpu);
    }
    if let Some(p) = hc.pids_limit.filter(|&p| p != 0) {
        r["pids"] = json!({"limit": p});
    }
    r
}

pub fn hostname(rec: &Record) -> String {
    if rec.config.hostname.is_empty() {
        rec.id[..12].to_string()
    } else {
        rec.config.hostname.clone()
    }
}

/// /etc/hostname, /etc/hosts and /etc/resolv.conf for the container, in `dir`.
pub fn write_etc_files(rec: &Record, dir: &Path) -> std::io::Result<()> {
    let name = hostname(rec);
    std::fs::write(dir.join("hostname"), format!("{name}\n"))?;
    let mut hosts = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for h in rec.host_config.extra_hosts.iter().flatten() {
        if let Some((host, ip)) = h.split_once(':') {
            // `host-gateway` is the host as containers on the bridge reach it.
            let gateway = rec
                .network
                .iter()
                .flat_map(|a| a.endpoints.first())
                .map(|ep| ep.gateway.to_string())
                .next();
            let ip = match (ip, gateway) {
                ("host-gateway", Some(gw)) => gw,
                (ip, _) => ip.to_string(),
            };
            hosts.push_str(&format!("{ip}\t{host}\n"));
        }
    }
    // Its own addresses under its host name (the id prefix unless set), its container
    // name and its aliases on that network.
    for ep in rec.network.iter().flat_map(|a| a.endpoints.iter()) {
        let mut names = vec![name.clone()];
        for n in std::iter::once(&rec.name).chain(ep.aliases.iter()) {
            if !n.is_empty() && !names.contains(n) {
                names.push(n.clone());
            }
        }
        let names = names.join(" ");
        hosts.push_str(&format!("{}\t{names}\n", ep.ip));
        if let Some(a6) = ep.ip6 {
            hosts.push_str(&format!("{a6}\t{names}\n"));
        }
    }
    std::fs::write(dir.join("hosts"), hosts)?;
    // The host's resolver, minus loopback servers the container cannot reach (Docker's
    // rule), or the explicit --dns settings.
    if rec.network.as_ref().is_some_and(|a| a.uses_embedded_dns()) {
        // On a user network the embedded DNS server answers (and forwards to the
        // host's resolvers or --dns); search and options follow the host's or the flags.
        let hc = &rec.host_config;
        let host_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let mut out = String::from("nameserver 127.0.0.11\n");
        let search: Vec<String> = if hc.dns_search.is_empty() {
            host_conf
                .lines()
                .filter_map(|l| l.strip_prefix("search "))
                .flat_map(|l| l.split_whitespace().map(String::from))
                .collect()
        } else {
            hc.dns_search.clone()
        };
        if !search.is_empty() {
            out.push_str(&format!("search {}\n", search.join(" ")));
        }
        let mut opts = hc.dns_options.clone();
        if !opts.iter().any(|o| o.starts_with("ndots:")) {
            opts.push("ndots:0".into());
        }
        out.push_str(&format!("options {}\n", opts.join(" ")));
        return std::fs::write(dir.join("resolv.conf"), out);
    }
    let hc = &rec.host_config;
    let host_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut out = String::new();
    let mut servers = 0;
    let mut opts: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for line in host_conf.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") if hc.dns.is_empty() => {
                if let Some(ip) = f.next() {
                    if !ip.starts_with("127.") && ip != "::1" {
                        out.push_str(&format!("nameserver {ip}\n"));
                        servers += 1;
                    }
                }
            }
            Some("search") if hc.dns_search.is_empty() => opts
                .entry("search")
                .or_default()
                .extend(f.map(String::from)),
            Some("options") if hc.dns_options.is_empty() => opts
                .entry("options")
                .or_default()
                .extend(f.map(String::from)),
            _ => {}
        }
    }
    for s in &hc.dns {
        out.push_str(&format!("nameserver {s}\n"));
        servers += 1;
    }
    if servers == 0 {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    if !hc.dns_search.is_empty() {
        opts.insert("search", hc.dns_search.clone());
    }
    if !hc.dns_options.is_empty() {
        opts.insert("options", hc.dns_options.clone());
    }
    for (k, v) in opts {
        out.push_str(&format!("{k} {}\n", v.join(" ")));
    }
    std::fs::write(dir.join("resolv.conf"), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc(add: &[&str], drop: &[&str]) -> HostConfig {
        HostConfig {
            cap_add: Some(add.iter().map(|s| s.to_string()).collect()),
            cap_drop: Some(drop.iter().map(|s| s.to_string()).collect()),
            ..HostConfig::default()
        }
    }

    #[test]
    fn capability_arithmetic() {
        let c = capabilities(&hc(&["NET_ADMIN"], &["chown", "CAP_KILL"])).unwrap();
        assert!(c.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!c.contains(&"CAP_CHOWN".to_string()));
        assert!(!c.contains(&"CAP_KILL".to_string()));
        assert_eq!(c.len(), DEFAULT_CAPS.len() - 1);
        let c = capabilities(&hc(&["SYS_ADMIN"], &["ALL"])).unwrap();
        assert_eq!(c, vec!["CAP_SYS_ADMIN"]);
        assert!(capabilities(&hc(&["FLY"], &[]))
            .unwrap_err()
            .contains("unknown capability"));
    }

    #[test]
    fn users_resolve_through_the_image_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nnogroup:x:65534:\nwheel:x:10:app\napp:x:1000:\n",
        )
        .unwrap();
        let u = resolve_user(d.path(), "").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        let u = resolve_user(d.path(), "app").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, vec![10]);
        let u = resolve_user(d.path(), "nobody:wheel").unwrap();
        assert_eq!((u.uid, u.gid), (65534, 10));
        let u = resolve_user(d.path(), "4242:4343").unwrap();
        assert_eq!((u.uid, u.gid), (4242, 4343));
        let e = resolve_user(d.path(), "ghost").unwrap_err();
        assert_eq!(
            e,
            "unable to find user ghost: no matching entries in passwd file"
        );
    }

    #[test]
    fn nano_cpus_become_a_quota() {
        let h = HostConfig {
            nano_cpus: 1_500_000_000,
            memory: 64 << 20,
            pids_limit: Some(10),
            ..HostConfig::default()
        };
        let r = resources(&h);
        assert_eq!(r["cpu"]["quota"], 150_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["memory"]["limit"], 64 << 20);
        assert_eq!(r["pids"]["limit"], 10);
    }

    #[test]
    fn volume_binds_are_told_apart() {
        assert_eq!(bind_mount("data:/x").unwrap(), None);
        assert_eq!(
            volume_bind("data:/x:ro,nocopy").unwrap(),
            Some(("data".into(), "/x".into(), false, true))
        );
        assert_eq!(volume_bind("/host:/x").unwrap(), None);
        assert!(volume_bind("data:rel").is_err());
    }

    #[test]
    fn binds_are_checked() {
        assert!(bind_mount("/tmp:relative").is_err());
        assert!(bind_mount("/tmp:/").is_err());
        assert!(bind_mount("/tmp:/x:bogus").is_err());
        let m = bind_mount("/tmp:/x:ro").unwrap().unwrap();
        assert_eq!(m["options"], json!(["rbind", "ro", "rprivate"]));
    }
}
