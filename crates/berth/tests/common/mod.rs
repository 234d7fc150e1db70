//! Test harness: the real `berth` binary, a temporary state root, and busybox bundles built
//! offline by scripts/mkrootfs.sh. Everything a test creates is removed when its values drop.

#![allow(dead_code)]

pub mod daemon;
pub mod http;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

pub fn berth() -> &'static str {
    env!("CARGO_BIN_EXE_berth")
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Skips (returns early from) a test that needs root when not running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !common::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One busybox rootfs, built once under Cargo's test scratch directory and copied into each
/// bundle. Built aside and renamed into place, so concurrent test processes never see half.
pub fn template_rootfs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("busybox-rootfs");
        if dir.join("bin/busybox").exists() {
            return dir;
        }
        let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let st = Command::new(workspace().join("scripts/mkrootfs.sh"))
            .arg(&tmp)
            .status()
            .expect("running scripts/mkrootfs.sh");
        assert!(
            st.success(),
            "scripts/mkrootfs.sh failed (is busybox-static installed?)"
        );
        if std::fs::rename(&tmp, &dir).is_err() {
            // Another test process won the race.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        dir
    })
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique container id (cgroups are global, so ids must not collide across test runs).
pub fn unique_id(tag: &str) -> String {
    format!(
        "t{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        tag
    )
}

pub struct Bundle {
    pub dir: tempfile::TempDir,
    pub config: serde_json::Value,
}

impl Bundle {
    /// A bundle running `args` with the default spec (no terminal).
    pub fn new(args: &[&str]) -> Bundle {
        let dir = tempfile::Builder::new()
            .prefix("berth-bundle-")
            .tempdir()
            .unwrap();
        let st = Command::new("cp")
            .arg("-a")
            .arg(template_rootfs())
            .arg(dir.path().join("rootfs"))
            .status()
            .unwrap();
        assert!(st.success());
        let out = Command::new(berth())
            .args(["runtime", "spec", "--bundle"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap())
                .unwrap();
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = serde_json::json!(args);
        let b = Bundle { dir, config };
        b.save();
        b
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    pub fn save(&self) {
        std::fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
    }

    /// Bind-mounts a host path read-write at `dest` in the container (not saved yet).
    pub fn bind(&mut self, dest: impl AsRef<Path>, source: impl AsRef<Path>) {
        self.config["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": dest.as_ref(), "type": "bind", "source": source.as_ref(), "options": ["rbind", "rw"]
        }));
    }

    /// Adds capabilities to every set of the process.
    pub fn add_caps(&mut self, caps: &[&str]) {
        for set in ["bounding", "effective", "permitted"] {
            let arr = self.config["process"]["capabilities"][set]
                .as_array_mut()
                .unwrap();
            for c in caps {
                arr.push((*c).into());
            }
        }
        self.save();
    }
}

/// A runtime state root; deleting it force-deletes every container left in it.
pub struct Runtime {
    pub root: tempfile::TempDir,
}

impl Default for Runtime {
    fn default() -> Self {
        Self::new()
    }
}

impl Runtime {
    pub fn new() -> Runtime {
        Runtime {
            root: tempfile::Builder::new()
                .prefix("berth-root-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(berth());
        c.arg("runtime").arg("--root").arg(self.root.path());
        c.stdin(Stdio::null());
        c
    }

    /// Runs a runtime command, capturing its output through files: a created container
    /// inherits the runtime's stdio, so pipes would not see EOF while it lives.
    pub fn run_args(&self, args: &[&str]) -> Output {
        capture(self.cmd().args(args))
    }

    /// `run` a bundle in the foreground; returns (exit code, stdout, stderr).
    pub fn run(&self, id: &str, bundle: &Bundle) -> (i32, String, String) {
        let out = capture(
            self.cmd()
                .args(["run", "--bundle"])
                .arg(bundle.path())
                .arg(id),
        );
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run_args(args);
        assert!(
            out.status.success(),
            "berth runtime {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn state(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    /// create + start with the bundle's process detached from us.
    pub fn create_start(&self, id: &str, bundle: &Bundle) {
        self.ok(&["create", "--bundle", bundle.path().to_str().unwrap(), id]);
        self.ok(&["start", id]);
    }

    /// Container ids in the state root (the runtime's own `@...` entries are not containers).
    pub fn ids(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('@'))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for id in self.ids() {
            let _ = self.run_args(&["delete", "--force", &id]);
        }
    }
}

/// Runs `cmd` with stdout and stderr going to temporary files, and returns what they got.
pub fn capture(cmd: &mut Command) -> Output {
    let out = tempfile::tempfile().unwrap();
    let err = tempfile::tempfile().unwrap();
    let status = cmd
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .status()
        .unwrap();
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    };
    Output {
        status,
        stdout: read(out),
        stderr: read(err),
    }
}

/// The paths of a container's cgroup in every v1 hierarchy (or the v2 one) that exist now.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            let p = e.path().join("berth").join(id);
            if p.exists() {
                out.push(p);
            }
        }
    }
    let v2 = Path::new("/sys/fs/cgroup/berth").join(id);
    if v2.exists() {
        out.push(v2);
    }
    out
}

/// Whether `pid` has exited (gone, or a zombie nobody reaped yet).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.contains(") Z"),
        Err(_) => true,
    }
}

/// Waits until `f` holds, up to `secs` seconds (for state that settles asynchronously).
pub fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    f()
}

/// `berth registry serve` on a free loopback port with a temporary root; killed on drop.
pub struct Registry {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: std::process::Child,
}

/// `prog` run inside the network namespace bound at `netns` (or here, for `None`).
pub fn in_netns(netns: Option<&Path>, prog: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg(prog);
            c
        }
        None => Command::new(prog),
    }
}

/// `f` on a thread inside the network namespace at `netns` (or here, for `None`).
pub fn net<T: Send + 'static>(netns: Option<&Path>, f: impl FnOnce() -> T + Send + 'static) -> T {
    match netns {
        Some(ns) => berth_network::netns::run_in(ns, f).expect("entering the namespace"),
        None => f(),
    }
}

/// A network namespace of its own with `lo` up, bound at `path`: a test daemon there has
/// its own bridge and ruleset, and nothing of them reaches the machine's.
pub fn make_netns(path: &Path) {
    if path.exists() {
        return;
    }
    berth_network::netns::create(path).expect("creating a network namespace");
    let st = in_netns(Some(path), "ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(st.success());
}

impl Registry {
    pub fn start() -> Registry {
        Registry::start_in(None)
    }

    /// In the network namespace at `netns`, for a daemon that lives there. The registry
    /// picks its port (`:0`) and says which: no window for another socket to take it.
    pub fn start_in(netns: Option<&Path>) -> Registry {
        Registry::start_with(netns, "127.0.0.1", &[])
    }

    /// On `ip`, with more `serve` flags, its store in its own directory's `root`.
    pub fn start_with(netns: Option<&Path>, ip: &str, extra: &[&str]) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        Registry::start_on(dir, netns, ip, &root, extra)
    }

    /// On a store of its own choosing (a restart on the same store, say).
    pub fn start_on(
        dir: tempfile::TempDir,
        netns: Option<&Path>,
        ip: &str,
        root: &Path,
        extra: &[&str],
    ) -> Registry {
        use std::io::BufRead;
        let mut child = in_netns(netns, berth())
            .args(["registry", "serve", "--addr", &format!("{ip}:0"), "--root"])
            .arg(root)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let port = first
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("berth registry serve said {first:?}"));
        // Its later lines go nowhere, without blocking it.
        std::thread::spawn(move || lines.for_each(drop));
        Registry { dir, port, child }
    }

    /// SIGTERM, as a service manager stops it.
    pub fn terminate(&self) {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.child.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
    }

    /// Waits for it to exit (after a signal), for at most `secs`.
    pub fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < until {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA (`ca.pem`), a server certificate for `ip` (`server-cert.pem`, `server-key.pem`) and
/// a client certificate (`cert.pem`, `key.pem`) in `dir`, by openssl.
pub fn make_certs(dir: &Path, ip: &str) {
    let sh = |script: &str| {
        let out = capture(Command::new("sh").arg("-c").arg(script).current_dir(dir));
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem -days 2 -subj /CN=berth-test-ca");
    sh(&format!("openssl req -newkey rsa:2048 -nodes -keyout server-key.pem -out server.csr -subj /CN={ip} \
        && printf 'subjectAltName=IP:{ip}\\nextendedKeyUsage=serverAuth\\n' > server.ext \
        && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out server-cert.pem -days 2 -extfile server.ext"));
    sh("openssl req -newkey rsa:2048 -nodes -keyout key.pem -out client.csr -subj /CN=client \
        && printf 'extendedKeyUsage=clientAuth\\n' > client.ext \
        && openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out cert.pem -days 2 -extfile client.ext");
}
