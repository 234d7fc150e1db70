//! The OCI `linux.seccomp` section compiled with libseccomp.

use std::path::Path;
use std::str::FromStr;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use crate::error::{Error, Result};

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction> {
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => {
            ScmpAction::Errno(errno.unwrap_or(libc::EPERM as u32) as i32)
        }
        LinuxSeccompAction::ScmpActTrace => {
            ScmpAction::Trace(errno.unwrap_or(libc::EPERM as u32) as u16)
        }
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
    })
}

fn compare(op: LinuxSeccompOperator) -> ScmpCompareOp {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        // For MASKED_EQ the spec puts the mask in `value` and the expected result in
        // `valueTwo`; the caller builds that comparison itself.
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(0),
    }
}

fn enum_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Builds the filter. Syscall names this libseccomp does not know are skipped, as runc does,
/// so one profile serves kernels and libraries of different ages.
pub fn build(s: &LinuxSeccomp) -> Result<ScmpFilterContext> {
    let err = |e: libseccomp::error::SeccompError| Error::Seccomp(e.to_string());
    let default = action(s.default_action(), s.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(err)?;
    // NO_NEW_PRIVS is the process spec's decision, not the filter's.
    ctx.set_ctl_nnp(false).map_err(err)?;
    for a in s.architectures().as_deref().unwrap_or_default() {
        let name = enum_name(a);
        let arch = ScmpArch::from_str(&name)
            .map_err(|_| Error::Seccomp(format!("unknown architecture {name}")))?;
        ctx.add_arch(arch).map_err(err)?;
    }
    for f in s.flags().as_deref().unwrap_or_default() {
        match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => ctx.set_ctl_tsync(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => ctx.set_ctl_log(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => ctx.set_ctl_ssb(true),
            _ => Ok(&mut ctx),
        }
        .map_err(err)?;
    }
    for rule in s.syscalls().as_deref().unwrap_or_default() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue; // libseccomp refuses rules that repeat the default action
        }
        let conds: Vec<ScmpArgCompare> = rule
            .args()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|a| match a.op() {
                LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpArgCompare::new(
                    a.index() as u32,
                    ScmpCompareOp::MaskedEqual(a.value()),
                    a.value_two().unwrap_or(0),
                ),
                op => ScmpArgCompare::new(a.index() as u32, compare(op), a.value()),
            })
            .collect();
        for name in rule.names() {
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                continue;
            };
            if conds.is_empty() {
                ctx.add_rule(act, sc).map_err(err)?;
            } else {
                ctx.add_rule_conditional(act, sc, &conds)
                    .map_err(|e| Error::Seccomp(format!("rule for {name}: {e}")))?;
            }
        }
    }
    Ok(ctx)
}

/// A compiled filter, ready for the seccomp(2) syscall: what travels to the container's
/// process, so that neither libseccomp nor a compilation runs inside the container.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Program {
    pub bpf: Vec<u8>,
    /// SECCOMP_FILTER_FLAG_* bits.
    pub flags: u32,
    /// Some rule notifies a seccomp agent: loading returns a listener descriptor, which
    /// goes to `linux.seccomp.listenerPath`.
    pub listener: bool,
}

const FLAG_TSYNC: u32 = 1;
const FLAG_LOG: u32 = 2;
const FLAG_SPEC_ALLOW: u32 = 4;
const FLAG_NEW_LISTENER: u32 = 8;

fn uses_notify(s: &LinuxSeccomp) -> bool {
    s.default_action() == LinuxSeccompAction::ScmpActNotify
        || s.syscalls()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|r| r.action() == LinuxSeccompAction::ScmpActNotify)
}

fn flags_of(s: &LinuxSeccomp) -> u32 {
    s.flags()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|f| match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => FLAG_SPEC_ALLOW,
            _ => 0,
        })
        .fold(0, |a, b| a | b)
}

/// Compiles the filter once per distinct seccomp section and reuses the program: the
/// cache file is named by the section's hash and holds the program's own hash first, so a
/// torn file is recompiled rather than loaded as a shorter, weaker filter.
pub fn compile_cached(s: &LinuxSeccomp, cache_dir: &Path) -> Result<Program> {
    use sha2::Digest as _;
    use std::io::{Read, Seek, Write};
    let section = serde_json::to_vec(s).expect("spec serialises");
    let mut key = sha2::Sha256::new();
    key.update(&section);
    key.update(std::env::consts::ARCH.as_bytes());
    key.update(format!("{:?}", libseccomp::ScmpVersion::current().ok()).as_bytes());
    let name = hex_of(&key.finalize());
    let path = cache_dir.join(format!("{name}.bpf"));
    let listener = uses_notify(s);
    if listener && s.listener_path().is_none() {
        return Err(Error::Seccomp(
            "SCMP_ACT_NOTIFY needs linux.seccomp.listenerPath (the seccomp agent's socket)".into(),
        ));
    }
    let flags = flags_of(s) | if listener { FLAG_NEW_LISTENER } else { 0 };
    if let Ok(stored) = std::fs::read(&path) {
        if stored.len() > 32 && sha2::Sha256::digest(&stored[32..]).as_slice() == &stored[..32] {
            return Ok(Program {
                bpf: stored[32..].to_vec(),
                flags,
                listener,
            });
        }
    }
    let err = |e: std::io::Error| {
        Error::Seccomp(format!(
            "caching the filter in {}: {e}",
            cache_dir.display()
        ))
    };
    std::fs::create_dir_all(cache_dir).map_err(err)?;
    let ctx = build(s)?;
    let export = cache_dir.join(format!("export.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&export)
        .map_err(err)?;
    let exported = ctx
        .export_bpf(&f)
        .map_err(|e| Error::Seccomp(format!("exporting the filter: {e}")));
    let mut bpf = Vec::new();
    let read = f
        .seek(std::io::SeekFrom::Start(0))
        .and_then(|_| f.read_to_end(&mut bpf));
    let _ = std::fs::remove_file(&export);
    exported?;
    read.map_err(err)?;
    let mut out = sha2::Sha256::digest(&bpf).to_vec();
    out.extend_from_slice(&bpf);
    // Best effort: a cache that cannot be written only costs a compilation next time.
    let staged = cache_dir.join(format!("{name}.{}.tmp", std::process::id()));
    if std::fs::File::create(&staged)
        .and_then(|mut f| f.write_all(&out))
        .is_ok()
    {
        let _ = std::fs::rename(&staged, &path);
    }
    Ok(Program {
        bpf,
        flags,
        listener,
    })
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Loads a compiled program into this process; returns the listener descriptor when the
/// program notifies a seccomp agent.
pub fn load(p: &Program) -> Result<Option<std::os::fd::OwnedFd>> {
    let rc = crate::sys::seccomp_set_filter(&p.bpf, p.flags)
        .map_err(|e| Error::Seccomp(format!("loading the filter: {e}")))?;
    Ok(p.listener.then(|| crate::sys::adopt_fd(rc)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_filter_with_conditions_and_unknown_names() {
        let s: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [
                {"names": ["unshare", "no_such_syscall_xyz"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}
            ]
        }))
        .unwrap();
        let ctx = build(&s).unwrap();
        let f = tempfile::tempfile().unwrap();
        ctx.export_bpf(&f).unwrap();
        // Several rules and two architectures make a program of dozens of instructions.
        assert!(f.metadata().unwrap().len() > 8 * 20);
    }

    #[test]
    fn compiled_once_and_reused_from_the_cache() {
        let s: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [{"names": ["unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        }))
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        let first = compile_cached(&s, d.path()).unwrap();
        assert_eq!(first.flags, FLAG_LOG);
        assert_eq!(first.bpf.len() % 8, 0);
        let files: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let second = compile_cached(&s, d.path()).unwrap();
        assert_eq!(first.bpf, second.bpf);
        // A torn cache file is not trusted.
        let stored = std::fs::read(&files[0]).unwrap();
        std::fs::write(&files[0], &stored[..stored.len() - 8]).unwrap();
        assert_eq!(compile_cached(&s, d.path()).unwrap().bpf, first.bpf);
    }

    #[test]
    fn notify_needs_a_listener_path() {
        let mut v = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
        });
        let d = tempfile::tempdir().unwrap();
        let s: LinuxSeccomp = serde_json::from_value(v.clone()).unwrap();
        assert!(compile_cached(&s, d.path())
            .unwrap_err()
            .to_string()
            .contains("listenerPath"));
        v["listenerPath"] = "/run/agent.sock".into();
        let s: LinuxSeccomp = serde_json::from_value(v).unwrap();
        let p = compile_cached(&s, d.path()).unwrap();
        assert!(p.listener);
        assert_eq!(p.flags & FLAG_NEW_LISTENER, FLAG_NEW_LISTENER);
    }
}
