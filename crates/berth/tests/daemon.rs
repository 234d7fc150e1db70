//! `berth daemon` driven by the real Docker CLI (Docker 28, client only) over a temporary
//! socket and data root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{capture, wait_for};

struct Daemon {
    dir: tempfile::TempDir,
    child: Child,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("berth-daemon-")
            .tempdir()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        let child = Command::new(common::berth())
            .arg("daemon")
            .arg("-H")
            .arg(format!("unix://{}", dir.path().join("d.sock").display()))
            .arg("--data-root")
            .arg(dir.path().join("root"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Daemon { dir, child };
        assert!(
            wait_for(10, || d.socket().exists()),
            "the daemon did not start: {}",
            d.log()
        );
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("d.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Runs the docker CLI against this daemon: (exit code, stdout, stderr).
    fn docker(&self, args: &[&str]) -> (i32, String, String) {
        let out = capture(
            Command::new("docker")
                .env("DOCKER_HOST", format!("unix://{}", self.socket().display()))
                .env("DOCKER_CONFIG", self.dir.path().join("docker-config"))
                .args(args)
                .stdin(Stdio::null()),
        );
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.docker(args);
        assert_eq!(
            code,
            0,
            "docker {args:?}: {err}\ndaemon log:\n{}",
            self.log()
        );
        out
    }
}

impl Daemon {
    /// SIGTERM, as an init system stops a daemon; then wait for it.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if !wait_for(5, || matches!(self.child.try_wait(), Ok(Some(_)))) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn docker_cli() -> bool {
    Command::new("docker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn busybox_archive(dir: &Path) -> PathBuf {
    let archive = dir.join("busybox.tar");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mkimage-archive.sh");
    let st = Command::new(script)
        .arg(common::template_rootfs())
        .arg(&archive)
        .arg("busybox:latest")
        .status()
        .unwrap();
    assert!(st.success());
    archive
}

#[test]
fn docker_cli_image_workflow_against_berth() {
    require_root!();
    if !docker_cli() {
        eprintln!("skipped: no docker CLI");
        return;
    }
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    // Version negotiation: the CLI settles on our API version.
    assert_eq!(
        d.ok(&["version", "--format", "{{.Server.APIVersion}}"])
            .trim(),
        "1.47"
    );
    assert!(d
        .ok(&["info", "--format", "{{.CgroupVersion}} {{.Images}}"])
        .trim()
        .ends_with(" 0"));
    // load, images, inspect.
    let archive = busybox_archive(work.path());
    let out = d.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert_eq!(out.trim(), "Loaded image: busybox:latest");
    let listed = d.ok(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]);
    let (name, id) = listed.trim().split_once(' ').unwrap();
    assert_eq!(name, "busybox:latest");
    assert_eq!(id.len(), 12);
    assert_eq!(
        d.ok(&[
            "image",
            "inspect",
            "busybox",
            "--format",
            "{{.Os}} {{len .RootFS.Layers}} {{.Config.Cmd}}"
        ])
        .trim(),
        "linux 1 [sh]"
    );
    // tag, save (and the saved archive loads back elsewhere with the same ID).
    d.ok(&["tag", "busybox", "localhost/bb:1"]);
    assert_eq!(d.ok(&["images", "-q"]).lines().count(), 2);
    let saved = work.path().join("saved.tar");
    d.ok(&["save", "-o", saved.to_str().unwrap(), "busybox"]);
    let other = Daemon::start();
    assert_eq!(
        other.ok(&["load", "-i", saved.to_str().unwrap()]).trim(),
        "Loaded image: busybox:latest"
    );
    assert_eq!(other.ok(&["images", "-q"]).trim(), id);
    drop(other);
    // import from stdin with a change.
    let tarball = work.path().join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(common::template_rootfs())
        .args(["-cf"])
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let out = capture(
        Command::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", d.socket().display()))
            .args(["import", "-c", "CMD [\"/bin/sh\"]", "-", "imported:1"])
            .stdin(std::fs::File::open(&tarball).unwrap()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .trim()
        .starts_with("sha256:"));
    assert_eq!(
        d.ok(&[
            "image",
            "inspect",
            "imported:1",
            "--format",
            "{{.Config.Cmd}}"
        ])
        .trim(),
        "[/bin/sh]"
    );
    // rmi: Docker's messages and errors.
    assert_eq!(
        d.ok(&["rmi", "localhost/bb:1"]).trim(),
        "Untagged: localhost/bb:1"
    );
    let (code, _, err) = d.docker(&["rmi", "nosuch"]);
    assert_eq!(code, 1);
    assert!(err.contains("No such image: nosuch"), "{err}");
    // prune -a frees the disk.
    let out = d.ok(&["image", "prune", "-a", "-f"]);
    assert!(out.contains("Total reclaimed space"), "{out}");
    assert_eq!(d.ok(&["images", "-q"]).trim(), "");
    // No containers exist (they are not served yet): ps is empty, df counts the images.
    assert_eq!(d.ok(&["ps", "-a", "-q"]).trim(), "");
    // Unknown endpoints answer 404 with Docker's JSON error body.
    let (code, _, err) = d.docker(&["volume", "ls"]);
    assert_ne!(code, 0);
    assert!(err.contains("page not found"), "{err}");
}

#[test]
fn daemon_removes_its_socket_on_sigterm_and_refuses_a_second_instance() {
    require_root!();
    let d = Daemon::start();
    // A second daemon on the same socket is refused while the first answers.
    let out = capture(
        Command::new(common::berth())
            .arg("daemon")
            .arg("-H")
            .arg(format!("unix://{}", d.socket().display()))
            .arg("--data-root")
            .arg(d.dir.path().join("root2"))
            .arg("--exec-root")
            .arg(d.dir.path().join("exec2")),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another daemon is listening"));
    let mut d = d;
    d.stop();
    assert!(!d.socket().exists(), "the socket outlived the daemon");
    assert!(
        d.dir.path().join("root/content/oci-layout").exists(),
        "the data root stays"
    );
}
