//! The default seccomp profile, and `--security-opt seccomp=...`.
//!
//! Docker's default is an allowlist of some 350 system calls. Ours is the other way round:
//! everything is allowed except what Docker's profile keeps from containers (kernel
//! keyrings, modules, kexec, mounts and namespaces, ptrace, clocks, swap, BPF, perf,
//! io_uring, ...), each refused with EPERM, and each released again by the capability
//! that Docker's profile ties it to (`--cap-add SYS_ADMIN` gives mount back, and so on).
//! The same dangerous calls are closed, and a program using a system call newer than the
//! profile is not broken by it. `clone` with namespace flags is refused without
//! CAP_SYS_ADMIN; `clone3` answers ENOSYS so that C libraries fall back to `clone`, whose
//! flags the filter can see.

use serde_json::{json, Value};

/// (capability that releases them, system calls).
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "umount",
            "umount2",
            "unshare",
            "pivot_root",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &[
            "settimeofday",
            "stime",
            "clock_settime",
            "clock_settime64",
            "clock_adjtime",
            "clock_adjtime64",
        ],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
            "move_pages",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
];

/// Refused whatever the capabilities (as in Docker's profile).
const ALWAYS: &[&str] = &[
    "add_key",
    "keyctl",
    "request_key",
    "kexec_load",
    "kexec_file_load",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "nfsservctl",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "vm86",
    "vm86old",
    "userfaultfd",
    "swapon",
    "swapoff",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

/// clone(2) flags that make namespaces.
const CLONE_NS_FLAGS: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

fn architectures() -> Value {
    match std::env::consts::ARCH {
        "x86_64" => json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        "aarch64" => json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),
        _ => json!([]),
    }
}

/// The default profile for a container with capabilities `caps`.
pub fn default_profile(caps: &[String]) -> Value {
    let has = |c: &str| caps.iter().any(|x| x == c);
    let mut denied: Vec<&str> = ALWAYS.to_vec();
    for (cap, calls) in BY_CAPABILITY {
        let released =
            has(cap) || (matches!(*cap, "CAP_BPF" | "CAP_PERFMON") && has("CAP_SYS_ADMIN"));
        if !released {
            denied.extend_from_slice(calls);
        }
    }
    let mut rules = vec![json!({"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": 1})];
    if !has("CAP_SYS_ADMIN") {
        rules.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}));
        for f in CLONE_NS_FLAGS {
            rules.push(
                json!({"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                "args": [{"index": 0, "value": f, "valueTwo": f, "op": "SCMP_CMP_MASKED_EQ"}]}),
            );
        }
    }
    json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": architectures(), "syscalls": rules})
}

/// A profile file in Docker's format (or the OCI one): `defaultAction`, `syscalls` with
/// `names`, `action`, `errnoRet`, `args`; rules whose `includes.caps`/`excludes.caps` do not
/// match the container's capabilities are left out, `archMap` gives the architectures.
pub fn from_file(text: &str, caps: &[String]) -> Result<Value, String> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("decoding seccomp profile: {e}"))?;
    let default = v["defaultAction"]
        .as_str()
        .ok_or("decoding seccomp profile: no defaultAction")?;
    let has_all = |list: &Value| {
        list.as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|c| c.as_str())
                    .all(|c| caps.iter().any(|x| x == c))
            })
            .unwrap_or(true)
    };
    let mut rules = Vec::new();
    for r in v["syscalls"].as_array().into_iter().flatten() {
        if !has_all(&r["includes"]["caps"]) {
            continue;
        }
        if let Some(ex) = r["excludes"]["caps"].as_array() {
            if ex
                .iter()
                .filter_map(|c| c.as_str())
                .any(|c| caps.iter().any(|x| x == c))
            {
                continue;
            }
        }
        let mut rule = json!({"names": r["names"], "action": r["action"]});
        if !r["errnoRet"].is_null() {
            rule["errnoRet"] = r["errnoRet"].clone();
        }
        if r["args"].is_array() {
            rule["args"] = r["args"].clone();
        }
        rules.push(rule);
    }
    let mut archs = v["architectures"].clone();
    if !archs.is_array() {
        let mut list = Vec::new();
        for m in v["archMap"].as_array().into_iter().flatten() {
            list.push(m["architecture"].clone());
            list.extend(
                m["subArchitectures"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            );
        }
        archs = Value::Array(list);
    }
    let mut out = json!({"defaultAction": default, "architectures": archs, "syscalls": rules});
    if !v["defaultErrnoRet"].is_null() {
        out["defaultErrnoRet"] = v["defaultErrnoRet"].clone();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(p: &Value) -> Vec<String> {
        p["syscalls"][0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn capabilities_release_their_calls() {
        let plain = default_profile(&["CAP_CHOWN".into()]);
        assert!(denied(&plain).contains(&"mount".to_string()));
        assert!(denied(&plain).contains(&"ptrace".to_string()));
        assert!(denied(&plain).contains(&"keyctl".to_string()));
        assert!(
            plain["syscalls"].as_array().unwrap().len() > 2,
            "clone rules"
        );
        let admin = default_profile(&["CAP_SYS_ADMIN".into()]);
        assert!(!denied(&admin).contains(&"mount".to_string()));
        assert!(
            denied(&admin).contains(&"keyctl".to_string()),
            "never released"
        );
        assert_eq!(
            admin["syscalls"].as_array().unwrap().len(),
            1,
            "no clone rules"
        );
    }

    #[test]
    fn docker_format_profiles_are_read() {
        let p = from_file(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
                "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                             {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}}]}"#,
            &[],
        )
        .unwrap();
        assert_eq!(p["syscalls"].as_array().unwrap().len(), 1);
        assert_eq!(
            p["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"])
        );
        assert!(from_file("{}", &[]).is_err());
    }
}
