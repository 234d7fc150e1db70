//! A test daemon: `berth daemon` on a temporary socket, data root and exec root, in a
//! network namespace of its own, with the docker CLI and Berth's CLI pointed at it. Its
//! containers, volumes and namespaces are removed when it drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{capture, wait_for};

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub child: Child,
}

/// Whether the daemon at `socket` answers `/_ping` (a socket file alone may belong to a
/// daemon still starting, which a signal would kill before it can clean up).
pub fn answers(socket: &Path) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let _ = s.write_all(b"GET /_ping HTTP/1.0\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out.starts_with(b"HTTP/1.0 200") || out.starts_with(b"HTTP/1.1 200")
}

pub fn spawn_daemon(dir: &Path) -> Child {
    spawn_daemon_with(dir, &[])
}

pub fn spawn_daemon_with(dir: &Path, extra: &[&str]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))
        .unwrap();
    // Each test daemon has a network namespace of its own (its bridge, ruleset and
    // published ports stay there), kept across restarts.
    let ns = dir.join("netns");
    super::make_netns(&ns);
    super::in_netns(Some(&ns), super::berth())
        .arg("daemon")
        .arg("-H")
        .arg(format!("unix://{}", dir.join("d.sock").display()))
        .arg("--data-root")
        .arg(dir.join("root"))
        .arg("--exec-root")
        .arg(dir.join("exec"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

impl Daemon {
    pub fn start() -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("berth-daemon-")
            .tempdir()
            .unwrap();
        Daemon::start_in(dir)
    }

    pub fn start_in(dir: tempfile::TempDir) -> Daemon {
        Daemon::start_with(dir, &[])
    }

    /// A daemon reading `etc/daemon.json` (empty) of its directory, with `etc/certs.d/`
    /// for registry CAs; returns it and that `etc`.
    pub fn start_with_config() -> (Daemon, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("berth-daemon-")
            .tempdir()
            .unwrap();
        let conf = dir.path().join("etc");
        std::fs::create_dir_all(conf.join("certs.d")).unwrap();
        let file = conf.join("daemon.json");
        std::fs::write(&file, "{}").unwrap();
        let d = Daemon::start_with(dir, &["--config-file", file.to_str().unwrap()]);
        (d, conf)
    }

    pub fn start_with(dir: tempfile::TempDir, extra: &[&str]) -> Daemon {
        let child = spawn_daemon_with(dir.path(), extra);
        let d = Daemon { dir, child };
        assert!(
            wait_for(10, || answers(&d.socket())),
            "the daemon did not start: {}",
            d.log()
        );
        d
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("d.sock")
    }

    /// The daemon's network namespace: its "host".
    pub fn netns(&self) -> PathBuf {
        self.dir.path().join("netns")
    }

    /// `prog` run on the daemon's "host" (its network namespace).
    pub fn host_cmd(&self, prog: &str) -> Command {
        super::in_netns(Some(&self.netns()), prog)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// The docker CLI, pointed at this daemon.
    pub fn docker_cmd(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", format!("unix://{}", self.socket().display()))
            .env("DOCKER_CONFIG", self.docker_config());
        c
    }

    /// Runs the docker CLI against this daemon: (exit code, stdout, stderr).
    pub fn docker(&self, args: &[&str]) -> (i32, String, String) {
        self.client(&mut self.docker_cmd(), args)
    }

    /// `login -u USER --password-stdin HOST` by a client (docker's or Berth's).
    pub fn login(
        &self,
        mut cmd: Command,
        host: &str,
        user: &str,
        pass: &str,
    ) -> (i32, String, String) {
        let mut child = cmd
            .args(["login", "-u", user, "--password-stdin", host])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), pass.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a client against this daemon: (exit code, stdout, stderr).
    pub fn client(&self, cmd: &mut Command, args: &[&str]) -> (i32, String, String) {
        let out = capture(cmd.args(args).stdin(Stdio::null()));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The output of a client call that must succeed.
    pub fn must(
        &self,
        what: &str,
        (code, out, err): (i32, String, String),
        args: &[&str],
    ) -> String {
        assert_eq!(
            code,
            0,
            "{what} {args:?}: {err}\ndaemon log:\n{}",
            self.log()
        );
        out
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.must("docker", self.docker(args), args)
    }
}

impl Daemon {
    /// SIGTERM, as an init system stops a daemon; then wait for it.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if !wait_for(5, || matches!(self.child.try_wait(), Ok(Some(_)))) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// `kill -9` of the daemon, then a new one on the same roots (live restore).
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.socket());
        self.child = spawn_daemon(self.dir.path());
        assert!(
            wait_for(10, || answers(&self.socket())),
            "the daemon did not start again: {}",
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Containers outlive their daemon by design: remove them through it.
        let (_, ids, _) = self.docker(&["ps", "-aq", "--no-trunc"]);
        for id in ids.split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        // Volumes may hold mounts (tmpfs volumes).
        let (_, vols, _) = self.docker(&["volume", "ls", "-q"]);
        for v in vols.split_whitespace() {
            let _ = self.docker(&["volume", "rm", "-f", v]);
        }
        self.stop();
        // Namespaces a failed test left bound, then the daemon's own.
        for e in std::fs::read_dir(self.dir.path().join("exec/netns"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = berth_network::netns::remove(&e.path());
        }
        let _ = berth_network::netns::remove(&self.netns());
    }
}

pub fn docker_cli() -> bool {
    Command::new("docker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn busybox_archive(dir: &Path) -> PathBuf {
    let archive = dir.join("busybox.tar");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mkimage-archive.sh");
    let st = Command::new(script)
        .arg(super::template_rootfs())
        .arg(&archive)
        .arg("busybox:latest")
        .status()
        .unwrap();
    assert!(st.success());
    archive
}

impl Daemon {
    /// Runs Berth's own CLI against this daemon: (exit code, stdout, stderr).
    pub fn berth(&self, args: &[&str]) -> (i32, String, String) {
        self.client(&mut self.berth_cmd(), args)
    }

    /// Berth's CLI for this daemon, sharing the docker CLI's config directory.
    pub fn berth_cmd(&self) -> Command {
        let mut c = Command::new(super::berth());
        c.env("BERTH_HOST", format!("unix://{}", self.socket().display()))
            .env("DOCKER_CONFIG", self.docker_config());
        c
    }

    /// `DOCKER_CONFIG` of both CLIs (registry credentials).
    pub fn docker_config(&self) -> PathBuf {
        self.dir.path().join("docker-config")
    }

    pub fn berth_ok(&self, args: &[&str]) -> String {
        self.must("berth", self.berth(args), args)
    }
}

/// Sends raw bytes to the daemon's socket and returns (status, body).
pub fn raw_request(d: &Daemon, req: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let _ = s.write_all(req);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A daemon with busybox loaded, for the container tests.
pub fn daemon_with_busybox() -> Option<Daemon> {
    if !super::is_root() || !docker_cli() {
        eprintln!("skipped: needs root and the docker CLI");
        return None;
    }
    let d = Daemon::start();
    let archive = busybox_archive(d.dir.path());
    d.ok(&["load", "-i", archive.to_str().unwrap()]);
    Some(d)
}
