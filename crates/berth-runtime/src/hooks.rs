//! OCI hooks: each gets the state JSON on stdin and must finish within its timeout.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use crate::error::{Error, Result};

pub fn run(hooks: &[Hook], state: &[u8]) -> Result<()> {
    run_with_env(hooks, state, &[])
}

/// Like [`run`], but hooks without an `env` of their own get `default_env`.
pub fn run_with_env(hooks: &[Hook], state: &[u8], default_env: &[String]) -> Result<()> {
    for h in hooks {
        run_one(h, state, default_env)?;
    }
    Ok(())
}

fn run_one(h: &Hook, state: &[u8], default_env: &[String]) -> Result<()> {
    let fail = |msg: String| Error::Hook {
        path: h.path().clone(),
        msg,
    };
    let mut cmd = Command::new(h.path());
    if let Some(args) = h.args() {
        if let Some(first) = args.first() {
            cmd.arg0(first);
        }
        cmd.args(args.iter().skip(1));
    }
    cmd.env_clear();
    for kv in h.env().as_deref().unwrap_or(default_env) {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is not an error.
        let _ = stdin.write_all(state);
    }
    let deadline = h
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    let mut nap = Duration::from_micros(200);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(fail(format!("exited with {status}"))),
            Ok(None) => {}
            Err(e) => return Err(fail(e.to_string())),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!(
                "timed out after {}s",
                h.timeout().unwrap_or(0)
            )));
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(v: serde_json::Value) -> Hook {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn hook_gets_state_on_stdin_and_env() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let h = hook(serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}; echo \"$FOO\" >> {}", out.display(), out.display())],
            "env": ["FOO=bar"]
        }));
        run(&[h], b"{\"id\":\"x\"}").unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "{\"id\":\"x\"}bar\n"
        );
    }

    #[test]
    fn failing_and_slow_hooks_are_errors() {
        let h = hook(serde_json::json!({"path": "/bin/false"}));
        assert!(run(&[h], b"{}").unwrap_err().to_string().contains("exited"));
        let h =
            hook(serde_json::json!({"path": "/bin/sleep", "args": ["sleep", "5"], "timeout": 1}));
        let t = Instant::now();
        assert!(run(&[h], b"{}")
            .unwrap_err()
            .to_string()
            .contains("timed out"));
        assert!(t.elapsed() < Duration::from_secs(4));
    }
}
