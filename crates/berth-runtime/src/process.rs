//! The last steps before the container's program runs: rlimits, user and groups,
//! capabilities, no_new_privs, seccomp, working directory, and finding the executable.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::{LinuxCapabilities, PosixRlimit, Process};

use crate::error::{Context, Error, Result};
use crate::sys::{self, Syscall};

pub fn apply_rlimits(sys: &dyn Syscall, rlimits: &[PosixRlimit]) -> Result<()> {
    for r in rlimits {
        let resource = r.typ() as u32;
        sys.setrlimit(resource, r.soft(), r.hard()).map_err(|e| {
            let name = serde_json::to_value(r.typ()).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            let hint = if e.raw_os_error() == Some(libc::EPERM) {
                " (raising a hard limit needs CAP_SYS_RESOURCE, which this runtime does not have; ask for at most the current hard limit)"
            } else {
                ""
            };
            Error::Init(format!("setting {name} to soft={} hard={}: {e}{hint}", r.soft(), r.hard()))
        })?;
    }
    Ok(())
}

fn cap_set(set: Option<&oci_spec::runtime::Capabilities>) -> CapsHashSet {
    let mut out = CapsHashSet::new();
    for c in set.into_iter().flatten() {
        // Capabilities newer than the caps crate are skipped (runc warns the same way).
        if let Ok(cap) = Capability::from_str(&format!("CAP_{c}")) {
            out.insert(cap);
        }
    }
    out
}

/// Drops the bounding set. Must run before changing uid (it needs CAP_SETPCAP).
pub fn drop_bounding(caps: Option<&LinuxCapabilities>) -> Result<()> {
    let Some(caps) = caps else { return Ok(()) };
    let keep = cap_set(caps.bounding().as_ref());
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| Error::Init(format!("dropping {cap} from the bounding set: {e}")))?;
        }
    }
    Ok(())
}

/// Sets effective, permitted, inheritable and ambient sets (after the uid change).
pub fn set_caps(caps: Option<&LinuxCapabilities>) -> Result<()> {
    let empty = CapsHashSet::new();
    let err = |what: &str, e: caps::errors::CapsError| {
        Error::Init(format!("setting {what} capabilities: {e}"))
    };
    // Nobody can grant what they do not hold (root here may lack CAP_SYS_RESOURCE, say): a
    // spec asking for "everything" gets everything this runtime has.
    let held = caps::read(None, CapSet::Permitted).map_err(|e| err("permitted", e))?;
    let have = |set: CapsHashSet| -> CapsHashSet { set.intersection(&held).copied().collect() };
    let (eff, perm, inh, amb) = match caps {
        Some(c) => (
            have(cap_set(c.effective().as_ref())),
            have(cap_set(c.permitted().as_ref())),
            have(cap_set(c.inheritable().as_ref())),
            have(cap_set(c.ambient().as_ref())),
        ),
        None => (empty.clone(), empty.clone(), empty.clone(), empty),
    };
    // Each capset must keep effective within permitted: shrink effective first, then
    // permitted, then inheritable; ambient needs its caps in both permitted and inheritable.
    let cur_perm = caps::read(None, CapSet::Permitted).map_err(|e| err("permitted", e))?;
    let transitional: CapsHashSet = eff.intersection(&cur_perm).copied().collect();
    caps::set(None, CapSet::Effective, &transitional).map_err(|e| err("effective", e))?;
    caps::set(None, CapSet::Permitted, &perm).map_err(|e| err("permitted", e))?;
    caps::set(None, CapSet::Inheritable, &inh).map_err(|e| err("inheritable", e))?;
    caps::set(None, CapSet::Effective, &eff).map_err(|e| err("effective", e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| err("ambient", e))?;
    for c in amb {
        caps::raise(None, CapSet::Ambient, c).map_err(|e| err("ambient", e))?;
    }
    Ok(())
}

/// Switches to the process user, keeping capabilities across the switch so that
/// [`set_caps`] decides what remains.
pub fn set_user(process: &Process) -> Result<()> {
    let user = process.user();
    sys::prctl(libc::PR_SET_KEEPCAPS, 1).ctx(|| "PR_SET_KEEPCAPS".into())?;
    let groups = user.additional_gids().clone().unwrap_or_default();
    // setgroups is refused in a user namespace with setgroups=deny; that is only an error
    // when groups were actually asked for.
    if let Err(e) = sys::setgroups(&groups) {
        if !groups.is_empty() || e.raw_os_error() != Some(libc::EPERM) {
            return Err(e).ctx(|| format!("setting additional groups {groups:?}"));
        }
    }
    sys::setresgid(user.gid()).ctx(|| format!("setting gid {}", user.gid()))?;
    sys::setresuid(user.uid()).ctx(|| format!("setting uid {}", user.uid()))?;
    sys::prctl(libc::PR_SET_KEEPCAPS, 0).ctx(|| "PR_SET_KEEPCAPS".into())?;
    Ok(())
}

pub fn env_path(env: &[String]) -> Option<&str> {
    env.iter().find_map(|e| e.strip_prefix("PATH="))
}

/// Finds the program the way execvp would, in the container's root and with the
/// container's PATH. The error wording is runc's, which Docker maps to exit code 127/126.
pub fn find_executable(arg0: &str, env: &[String]) -> Result<PathBuf> {
    let check = |p: &Path| -> std::io::Result<()> {
        let md = std::fs::metadata(p)?;
        use std::os::unix::fs::PermissionsExt;
        if md.is_dir() || md.permissions().mode() & 0o111 == 0 {
            return Err(std::io::Error::from_raw_os_error(libc::EACCES));
        }
        Ok(())
    };
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        return match check(&p) {
            Ok(()) => Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Init(format!(
                "exec: \"{arg0}\": stat {arg0}: no such file or directory"
            ))),
            Err(_) => Err(Error::Init(format!("exec: \"{arg0}\": permission denied"))),
        };
    }
    let path =
        env_path(env).unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let mut denied = false;
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let p = Path::new(dir).join(arg0);
        match check(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.raw_os_error() == Some(libc::EACCES) && p.is_file() => denied = true,
            Err(_) => {}
        }
    }
    if denied {
        return Err(Error::Init(format!("exec: \"{arg0}\": permission denied")));
    }
    Err(Error::Init(format!(
        "exec: \"{arg0}\": executable file not found in $PATH"
    )))
}

/// A signal by name or number as runc and Docker take them: `KILL`, `SIGKILL`, `9`.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "STKFLT" => libc::SIGSTKFLT,
        "CHLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_in_path_and_reports_like_runc() {
        let env = vec!["PATH=/nonexistent:/bin:/usr/bin".to_string()];
        assert!(find_executable("sh", &env).unwrap().ends_with("sh"));
        let e = find_executable("no-such-program-xyz", &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("executable file not found in $PATH"), "{e}");
        let e = find_executable("/no/such", &env).unwrap_err().to_string();
        assert!(e.contains("no such file or directory"), "{e}");
        let e = find_executable("/etc/passwd", &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("permission denied"), "{e}");
    }

    #[test]
    fn oci_capability_names_map_to_caps() {
        let set: oci_spec::runtime::Capabilities =
            serde_json::from_value(serde_json::json!(["CAP_SYS_ADMIN", "CAP_KILL"])).unwrap();
        let got = cap_set(Some(&set));
        assert!(got.contains(&Capability::CAP_SYS_ADMIN) && got.contains(&Capability::CAP_KILL));
        assert_eq!(got.len(), 2);
    }
}
