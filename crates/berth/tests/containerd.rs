//! The Kubernetes path: Debian's containerd runs containers with Berth as its runc binary
//! (`ctr run --runc-binary .../berth-runc`), through containerd's own runc shim.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{capture, wait_for};

/// A containerd of our own: temp root, state and socket, the CRI plugin off. Dropping it
/// stops the daemon and every shim it started, and unmounts what it left.
struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    /// Held until this containerd is gone: its drop reaps any child of the test process
    /// (the shims it adopted), which would take the children of a test running beside it.
    _alone: std::sync::MutexGuard<'static, ()>,
}

/// One containerd test at a time.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Containerd {
    fn start() -> Option<Containerd> {
        if Command::new("containerd")
            .arg("--version")
            .output()
            .is_err()
        {
            return None;
        }
        let alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
        // containerd's shims daemonize; as a subreaper this test process (a binary of its
        // own) gets them back when they exit and reaps them, instead of leaving zombies on
        // a host whose pid 1 does not reap.
        rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("berth-containerd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("config.toml"),
            format!(
                "version = 2\nroot = \"{r}/root\"\nstate = \"{r}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{r}/containerd.sock\"\n[ttrpc]\n  address = \"{r}/containerd.sock.ttrpc\"\n\
                 [debug]\n  level = \"warn\"\n",
                r = d.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Containerd {
            dir,
            child,
            _alone: alone,
        };
        assert!(
            wait_for(20, || c.ctr(&["version"]).status.success()),
            "containerd did not come up: {}",
            std::fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default()
        );
        Some(c)
    }

    /// busybox, made from the host's, as `docker.io/library/busybox:latest`.
    fn import_busybox(&self, work: &Path) {
        let archive = work.join("busybox.tar");
        let st = Command::new(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mkimage-archive.sh"),
        )
        .arg(common::template_rootfs())
        .arg(&archive)
        .arg("docker.io/library/busybox:latest")
        .status()
        .unwrap();
        assert!(st.success());
        self.ok(&["image", "import", archive.to_str().unwrap()]);
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        capture(
            Command::new("ctr")
                .arg("--address")
                .arg(self.dir.path().join("containerd.sock"))
                .args(["--namespace", "berthtest"])
                .args(args)
                .stdin(Stdio::null()),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Shim pids recorded by containerd (the shims outlive their task until deleted).
    fn shim_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let base = self.dir.path().join("state/io.containerd.runtime.v2.task");
        for ns in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            for task in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                if let Ok(p) = std::fs::read_to_string(task.path().join("shim.pid")) {
                    pids.extend(p.trim().parse::<i32>().ok());
                }
            }
        }
        pids
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for pid in self.shim_pids() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match rustix::process::wait(rustix::process::WaitOptions::NOHANG) {
                Ok(Some(_)) => continue,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                _ => break, // no children left (ECHILD), or out of patience
            }
        }
        // Unmount anything containerd left below its directories, deepest first.
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = self.dir.path().to_string_lossy().into_owned();
        let mut points: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").args(["-l", p]).status();
        }
        // containerd puts each namespace's containers under a cgroup of that name, which it
        // leaves behind: remove ours (empty by now) from every hierarchy.
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(h.path().join("berthtest"));
        }
    }
}

fn berth_runc(dir: &Path) -> PathBuf {
    let link = dir.join("berth-runc");
    std::os::unix::fs::symlink(common::berth(), &link).unwrap();
    link
}

#[test]
fn containerd_runs_containers_with_berth_as_runc() {
    require_root!();
    let Some(cd) = Containerd::start() else {
        eprintln!("skipped: containerd is not installed (apt-get install containerd)");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    cd.import_busybox(work.path());
    assert!(cd
        .ok(&["image", "ls", "-q"])
        .contains("docker.io/library/busybox:latest"));
    let runc = berth_runc(work.path());
    let runc = runc.to_str().unwrap();

    // Foreground: output and exit code come back through containerd. (The pause before the
    // exit is for containerd: its shim can drop what a process printed just before exiting,
    // a race of its own between the exit and the copy of the output.)
    let out = cd.ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        runc,
        "docker.io/library/busybox:latest",
        "fg",
        "sh",
        "-c",
        "echo hello from pid $$; sleep 0.2; exit 3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(cd.dir.path().join("containerd.log")).unwrap_or_default()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello from pid 1"
    );

    // Detached: the task runs, is listed, killed and deleted cleanly.
    cd.ok(&[
        "run",
        "-d",
        "--runc-binary",
        runc,
        "docker.io/library/busybox:latest",
        "bg",
        "sleep",
        "300",
    ]);
    assert!(wait_for(10, || cd
        .ok(&["task", "ls"])
        .lines()
        .any(|l| l.starts_with("bg ") && l.contains("RUNNING"))));
    let exec = cd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "bg",
        "cat",
        "/proc/1/comm",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout).trim(),
        "sleep",
        "{}",
        String::from_utf8_lossy(&exec.stderr)
    );
    cd.ok(&["task", "kill", "-s", "SIGKILL", "bg"]);
    assert!(wait_for(10, || cd
        .ok(&["task", "ls"])
        .lines()
        .any(|l| l.starts_with("bg ") && l.contains("STOPPED"))));
    cd.ok(&["task", "delete", "bg"]);
    cd.ok(&["container", "delete", "bg"]);
    assert!(!cd.ok(&["task", "ls"]).contains("bg"));
    assert!(
        wait_for(10, || cd.shim_pids().is_empty()),
        "shims left: {:?}",
        cd.shim_pids()
    );
}

/// containerd as a registry client: `ctr images push` to Berth's registry (token auth),
/// `pull` back, and the pulled image runs with Berth as its runtime.
#[test]
fn containerd_pushes_to_and_pulls_from_berth_registry() {
    require_root!();
    let Some(cd) = Containerd::start() else {
        eprintln!("skipped: containerd is not installed (apt-get install containerd)");
        return;
    };
    let have = |p: &str| Command::new(p).arg("-h").output().is_ok();
    if !have("htpasswd") {
        eprintln!("skipped: needs htpasswd (apache2-utils)");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let htpasswd = capture(Command::new("htpasswd").args(["-Bbn", "ctr", "pw"]));
    std::fs::write(work.path().join("htpasswd"), &htpasswd.stdout).unwrap();
    let reg = common::Registry::start_with(
        None,
        "127.0.0.1",
        &[
            "--htpasswd",
            work.path().join("htpasswd").to_str().unwrap(),
            "--token-auth",
            "--access-log",
            "off",
        ],
    );
    cd.import_busybox(work.path());
    let name = format!("127.0.0.1:{}/ctr/busybox:1", reg.port);
    cd.ok(&["image", "tag", "docker.io/library/busybox:latest", &name]);
    // Without credentials the push is refused.
    let out = cd.ctr(&["image", "push", "--plain-http", &name]);
    assert!(!out.status.success());
    cd.ok(&["image", "push", "--plain-http", "--user", "ctr:pw", &name]);
    cd.ok(&["image", "rm", &name, "docker.io/library/busybox:latest"]);
    cd.ok(&["image", "pull", "--plain-http", "--user", "ctr:pw", &name]);
    let runc = berth_runc(work.path());
    let out = cd.ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        runc.to_str().unwrap(),
        &name,
        "pulled",
        "echo",
        "pulled from berth's registry",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pulled from berth's registry",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_for(10, || cd.shim_pids().is_empty()));
}
