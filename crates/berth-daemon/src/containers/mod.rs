//! Containers: records, the lifecycle through one `berth shim` per container, and live
//! restore.
//!
//! A container's record lives in `<data-root>/containers/<id>/container.json` (write,
//! fsync, rename) beside its bundle (`config.json`, `rootfs/`), its /etc files, its
//! json-file log and the shim's exit record. The shim's socket is `<exec-root>/s/<id>`.
//! The daemon never parents a container: it talks to the shim, so `kill -9` of the daemon
//! leaves containers running, and a new daemon picks them up again (live restore).

pub mod api;
pub mod archive;
pub mod attach;
pub mod changes;
pub mod exec;
pub mod health;
pub mod logs;
pub mod model;
pub mod seccomp;
pub mod spawner;
pub mod spec;
pub mod stats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use berth_runtime::Runtime;
use berth_store::image::ImageStore;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch};

use crate::ApiError;
use model::{Record, State};

/// Exits and removal of one container, for `wait` and attach.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub exits: u64,
    pub code: i32,
    pub removed: bool,
}

/// An attach waiting for the container to start: what it asked for, and where to send
/// the shim connection once it is made.
pub struct PendingAttach {
    pub request: Value,
    pub reply: oneshot::Sender<UnixStream>,
}

pub struct Entry {
    pub rec: Mutex<Record>,
    pub progress: watch::Sender<Progress>,
    pub pending: Mutex<Vec<PendingAttach>>,
    /// Serialises start, stop and removal of this container.
    pub op: tokio::sync::Mutex<()>,
}

impl Entry {
    pub fn snapshot(&self) -> Record {
        self.rec.lock().expect("record lock").clone()
    }
}

pub struct Containers {
    pub store: Arc<ImageStore>,
    pub volumes: Arc<crate::volumes::Volumes>,
    pub networks: Arc<crate::networks::Networks>,
    pub data_root: PathBuf,
    pub exec_root: PathBuf,
    pub runtime: Runtime,
    pub spawner: spawner::Spawner,
    /// The daemon, for what runs on its own (healthchecks, events); set once at start.
    pub daemon: std::sync::OnceLock<std::sync::Weak<crate::Daemon>>,
    by_id: Mutex<HashMap<String, Arc<Entry>>>,
}

pub fn not_found(name: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("No such container: {name}"))
}

pub(crate) fn random_id() -> String {
    berth_types::random_hex(64)
}

/// Docker's name rule.
pub fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

const ADJECTIVES: &[&str] = &[
    "brave", "calm", "eager", "fervent", "gentle", "happy", "jolly", "keen", "lucid", "merry",
    "nifty", "quirky", "serene", "tender", "upbeat", "vibrant", "wizardly", "zealous", "bold",
    "crisp",
];
const NAMES: &[&str] = &[
    "albattani",
    "bohr",
    "curie",
    "darwin",
    "euler",
    "fermat",
    "galois",
    "hopper",
    "jepsen",
    "kepler",
    "lovelace",
    "mayer",
    "noether",
    "pascal",
    "ritchie",
    "shannon",
    "thompson",
    "turing",
    "wozniak",
    "yalow",
];

impl Containers {
    pub fn new(
        store: Arc<ImageStore>,
        networks: Arc<crate::networks::Networks>,
        data_root: &Path,
        exec_root: &Path,
    ) -> Containers {
        Containers {
            store,
            networks,
            volumes: Arc::new(crate::volumes::Volumes::new(data_root)),
            data_root: data_root.to_path_buf(),
            exec_root: exec_root.to_path_buf(),
            runtime: Runtime {
                root: exec_root.join("runtime"),
                systemd_cgroup: false,
            },
            spawner: spawner::Spawner::default(),
            daemon: std::sync::OnceLock::new(),
            by_id: Mutex::new(HashMap::new()),
        }
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.data_root.join("containers").join(id)
    }

    pub fn socket(&self, id: &str) -> PathBuf {
        self.exec_root.join("s").join(id)
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir(id).join(format!("{id}-json.log"))
    }

    pub fn all(&self) -> Vec<Arc<Entry>> {
        self.by_id
            .lock()
            .expect("containers lock")
            .values()
            .cloned()
            .collect()
    }

    /// By full id, name (with or without '/'), or unique id prefix: Docker's lookup.
    pub fn get(&self, name: &str) -> Result<Arc<Entry>, ApiError> {
        let map = self.by_id.lock().expect("containers lock");
        if let Some(e) = map.get(name) {
            return Ok(e.clone());
        }
        let bare = name.strip_prefix('/').unwrap_or(name);
        if let Some(e) = map
            .values()
            .find(|e| e.rec.lock().expect("lock").name == bare)
        {
            return Ok(e.clone());
        }
        if !name.is_empty() && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<&Arc<Entry>> = map
                .iter()
                .filter(|(id, _)| id.starts_with(name))
                .map(|(_, e)| e)
                .collect();
            match hits.len() {
                1 => return Ok(hits[0].clone()),
                0 => {}
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "multiple IDs found with provided prefix: {name}"
                    )))
                }
            }
        }
        Err(not_found(name))
    }

    pub fn persist(&self, rec: &Record) -> Result<(), ApiError> {
        let dir = self.dir(&rec.id);
        std::fs::create_dir_all(&dir).map_err(ApiError::internal)?;
        let bytes = serde_json::to_vec_pretty(rec).map_err(ApiError::internal)?;
        berth_types::fs::atomic_write(&dir.join("container.json"), &bytes)
            .map_err(ApiError::internal)
    }

    fn insert(&self, rec: Record) -> Arc<Entry> {
        if let Ok(img) = rec.image.parse() {
            self.store.pin(&rec.id, &img);
        }
        let (progress, _) = watch::channel(Progress::default());
        let e = Arc::new(Entry {
            rec: Mutex::new(rec.clone()),
            progress,
            pending: Mutex::new(Vec::new()),
            op: tokio::sync::Mutex::new(()),
        });
        self.by_id
            .lock()
            .expect("containers lock")
            .insert(rec.id.clone(), e.clone());
        e
    }

    /// Reserves a name and records a new container; fails with Docker's 409 when the name
    /// is taken.
    pub fn add(&self, mut rec: Record, name: Option<&str>) -> Result<Arc<Entry>, ApiError> {
        let taken = |n: &str| -> Option<String> {
            self.by_id
                .lock()
                .expect("containers lock")
                .values()
                .map(|e| e.rec.lock().expect("lock").clone())
                .find(|r| r.name == n)
                .map(|r| r.id)
        };
        rec.id = random_id();
        rec.name = match name {
            Some(n) => {
                let n = n.strip_prefix('/').unwrap_or(n);
                if !valid_name(n) {
                    return Err(ApiError::bad_request(format!(
                        "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                    )));
                }
                if let Some(id) = taken(n) {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!("Conflict. The container name \"/{n}\" is already in use by container \"{id}\". You have to remove (or rename) that container to be able to reuse that name."),
                    ));
                }
                n.to_string()
            }
            None => {
                let b = rec.id.as_bytes();
                let mut n = format!(
                    "{}_{}",
                    ADJECTIVES[b[0] as usize % ADJECTIVES.len()],
                    NAMES[b[1] as usize % NAMES.len()]
                );
                let mut i = 2;
                while taken(&n).is_some() {
                    n = format!(
                        "{}_{}{i}",
                        ADJECTIVES[b[0] as usize % ADJECTIVES.len()],
                        NAMES[b[1] as usize % NAMES.len()]
                    );
                    i += 1;
                }
                n
            }
        };
        self.persist(&rec)?;
        Ok(self.insert(rec))
    }

    /// Reads the records back at start and reconnects to the shims of running containers;
    /// containers that exited while no daemon was there get their recorded exit status.
    pub async fn restore(self: &Arc<Self>) {
        let dir = self.data_root.join("containers");
        let mut recs = Vec::new();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path().join("container.json");
            match std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
            {
                Some(r) => recs.push(r),
                None => tracing_warn(&format!("skipping unreadable {}", p.display())),
            }
        }
        for rec in recs {
            let running = rec.state.running || rec.state.status == "restarting";
            let id = rec.id.clone();
            if let (true, Some(att)) = (running, &rec.network) {
                self.networks.restore(&id, att).await;
            }
            let auto_remove = rec.host_config.auto_remove;
            let e = self.insert(rec);
            if !running {
                if auto_remove {
                    let _ = self.remove_stopped(&e).await;
                    continue;
                }
                // As dockerd at start: "always" comes back even after a manual stop,
                // "unless-stopped" unless it was one.
                let r = e.snapshot();
                let policy = r.host_config.restart_policy.name.as_str();
                let again = r.state.status == "exited"
                    && (policy == "always" || (policy == "unless-stopped" && !r.stopped_by_user));
                if again {
                    let _g = e.op.lock().await;
                    let _ = self.start(&e).await;
                }
                continue;
            }
            match self.connect(&id, json!({"op": "wait"})).await {
                Ok(conn) => {
                    let me = self.clone();
                    let e2 = e.clone();
                    tokio::spawn(async move { me.monitor(e2, conn).await });
                    self.watch_health(&e);
                }
                Err(_) => {
                    // The shim is gone: its runtime state may be left.
                    let _ = self.runtime.delete(&id, true);
                    let exit = self.read_exit(&id);
                    self.exited(&e, exit).await;
                }
            }
        }
    }

    /// Connects to a container's shim and sends one request; returns the connection after
    /// the shim's `{"ok":true}`.
    pub async fn connect(&self, id: &str, req: Value) -> Result<UnixStream, String> {
        let mut s = UnixStream::connect(self.socket(id))
            .await
            .map_err(|e| format!("connecting to the shim of {id}: {e}"))?;
        let mut line = req.to_string().into_bytes();
        line.push(b'\n');
        s.write_all(&line).await.map_err(|e| e.to_string())?;
        let answer = read_line(&mut s).await?;
        let v: Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
        if let Some(err) = v["error"].as_str() {
            return Err(err.to_string());
        }
        Ok(s)
    }

    fn read_exit(&self, id: &str) -> berth_shim::Exit {
        std::fs::read(self.dir(id).join("exit.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| berth_shim::Exit {
                exit_code: 255,
                finished_at: berth_types::time::now_rfc3339(),
                oom_killed: false,
            })
    }

    /// Waits for the shim's exit line (or its end) and records the exit. Boxed: an exit
    /// may restart the container, which monitors it again.
    fn monitor(
        self: Arc<Self>,
        e: Arc<Entry>,
        mut conn: UnixStream,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            // A clean exit line means the shim also removed the runtime state and cgroup.
            let clean = read_line(&mut conn).await.is_ok();
            let id = e.rec.lock().expect("lock").id.clone();
            let exit = self.read_exit(&id);
            if !clean {
                let _ = self.runtime.delete(&id, true);
            }
            self.exited(&e, exit).await;
        })
    }

    async fn exited(self: &Arc<Self>, e: &Arc<Entry>, exit: berth_shim::Exit) {
        if let Some(d) = self.daemon.get().and_then(std::sync::Weak::upgrade) {
            let rec = e.snapshot();
            if exit.oom_killed {
                d.event("container", "oom", &rec.id, &rec);
            }
            d.event("container", "die", &rec.id, &rec);
        }
        let rec = {
            let mut r = e.rec.lock().expect("lock");
            r.network = None;
            r.state.status = "exited".into();
            r.state.running = false;
            r.state.paused = false;
            r.state.restarting = false;
            r.state.pid = 0;
            r.state.exit_code = exit.exit_code;
            r.state.oom_killed = exit.oom_killed;
            r.state.finished_at = exit.finished_at;
            r.clone()
        };
        // Its state first (an exec or inspect now sees it stopped), then its network.
        self.networks.detach(&rec.id).await;
        if rec.host_config.auto_remove {
            // Going anyway: no record to update (a restarted daemon removes it too).
            e.progress.send_modify(|p| {
                p.exits += 1;
                p.code = exit.exit_code;
            });
            let me = self.clone();
            let e = e.clone();
            tokio::spawn(async move {
                let _g = e.op.lock().await;
                let _ = me.remove_stopped(&e).await;
            });
            return;
        }
        let _ = self.persist(&rec);
        let me = self.clone();
        let id = rec.id.clone();
        let _ = tokio::task::spawn_blocking(move || me.unmount(&id)).await;
        e.progress.send_modify(|p| {
            p.exits += 1;
            p.code = exit.exit_code;
        });
        if self.should_restart(&rec) {
            let delay = Duration::from_millis(100u64 << rec.restart_count.min(9));
            {
                let mut r = e.rec.lock().expect("lock");
                r.state.status = "restarting".into();
                r.state.restarting = true;
                r.restart_count += 1;
            }
            let me = self.clone();
            let e = e.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if e.rec.lock().expect("lock").state.restarting {
                    let _ = me.start(&e).await;
                }
            });
        }
    }

    fn should_restart(&self, rec: &Record) -> bool {
        if rec.stopped_by_user {
            return false;
        }
        let p = &rec.host_config.restart_policy;
        match p.name.as_str() {
            "always" | "unless-stopped" => true,
            "on-failure" => {
                rec.state.exit_code != 0
                    && (p.maximum_retry_count == 0
                        || i64::from(rec.restart_count) < p.maximum_retry_count)
            }
            _ => false,
        }
    }

    fn rootfs(&self, id: &str) -> PathBuf {
        self.dir(id).join("rootfs")
    }

    fn unmount(&self, id: &str) {
        let _ = rustix::mount::unmount(self.rootfs(id), rustix::mount::UnmountFlags::DETACH);
    }

    /// Starts a created or exited container. Returns false when it was already running.
    pub async fn start(self: &Arc<Self>, e: &Arc<Entry>) -> Result<bool, ApiError> {
        let mut rec = e.snapshot();
        if rec.state.running {
            return Ok(false);
        }
        let id = rec.id.clone();
        let mode = rec.host_config.network_mode.clone();
        if !mode.starts_with("container:") && self.networks.name_of(&mode).await.is_none() {
            let err = ApiError::new(StatusCode::NOT_FOUND, format!("network {mode} not found"));
            let _ = self.start_failed(e, err.message.clone());
            return Err(err);
        }
        let bridged = crate::networks::is_network_name(&mode);
        if bridged {
            match self.networks.attach(&rec).await {
                Ok(att) => {
                    rec.network = Some(att.clone());
                    e.rec.lock().expect("lock").network = Some(att);
                }
                Err(err) => {
                    let _ = self.start_failed(e, err.message.clone());
                    return Err(err);
                }
            }
        }
        let me = self.clone();
        let store_layers = rec.layers.clone();
        let spawned = {
            let rec = rec.clone();
            tokio::task::spawn_blocking(move || me.launch(&rec, &store_layers))
                .await
                .map_err(ApiError::internal)?
        };
        let pid = match spawned {
            Ok(pid) => pid,
            Err(msg) => {
                self.networks.detach(&id).await;
                e.rec.lock().expect("lock").network = None;
                return Err(self.start_failed(e, msg));
            }
        };
        // A network namespace of its own starts with `lo` down (Docker brings it up); a
        // bridged one was set up with it up.
        let hc = &rec.host_config;
        if !bridged && hc.network_mode != "host" && !hc.network_mode.starts_with("container:") {
            if let Err(err) = berth_runtime::sys::loopback_up(pid) {
                let _ = self.runtime.kill(&id, libc::SIGKILL, false);
                return Err(self.start_failed(e, format!("setting up lo: {err}")));
            }
        }
        // Attaches made before start get their streams first, so they miss nothing.
        let pending: Vec<PendingAttach> = std::mem::take(&mut *e.pending.lock().expect("lock"));
        for p in pending {
            if let Ok(s) = self.connect(&id, p.request.clone()).await {
                let _ = p.reply.send(s);
            }
        }
        let conn = match self.connect(&id, json!({"op": "start"})).await {
            Ok(c) => c,
            Err(msg) => {
                let _ = self.runtime.kill(&id, libc::SIGKILL, false);
                return Err(self.start_failed(e, msg));
            }
        };
        let rec = {
            let mut r = e.rec.lock().expect("lock");
            r.state = State {
                status: "running".into(),
                running: true,
                pid,
                started_at: berth_types::time::now_rfc3339(),
                finished_at: r.state.finished_at.clone(),
                ..State::default()
            };
            r.stopped_by_user = false;
            r.clone()
        };
        self.persist(&rec)?;
        let me = self.clone();
        let e2 = e.clone();
        tokio::spawn(async move { me.monitor(e2, conn).await });
        self.watch_health(e);
        Ok(true)
    }

    fn watch_health(&self, e: &Arc<Entry>) {
        if let Some(d) = self.daemon.get().and_then(std::sync::Weak::upgrade) {
            health::watch(d, e.clone());
        }
    }

    /// Records a failed start as Docker does (the error, exit code 127/126/128) and turns
    /// it into the API error whose wording the docker CLI maps to its exit codes.
    fn start_failed(&self, e: &Arc<Entry>, msg: String) -> ApiError {
        let id = e.rec.lock().expect("lock").id.clone();
        self.unmount(&id);
        // Attaches waiting for this start end now.
        e.pending.lock().expect("lock").clear();
        let code = if names_a_missing_program(&msg) {
            127
        } else if msg.contains("permission denied") {
            126
        } else {
            128
        };
        let message = format!(
            "failed to create task for container: OCI runtime create failed: {msg}: unknown"
        );
        let rec = {
            let mut r = e.rec.lock().expect("lock");
            r.state.error = message.clone();
            r.state.exit_code = code;
            if r.state.status != "created" {
                r.state.status = "exited".into();
            }
            r.state.running = false;
            r.state.restarting = false;
            r.clone()
        };
        let _ = self.persist(&rec);
        e.progress.send_modify(|p| {
            p.exits += 1;
            p.code = code;
        });
        let status = if code == 128 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, message)
    }

    /// Mounts the root filesystem, writes the bundle and starts the shim, which creates the
    /// container and reports its pid.
    fn launch(&self, rec: &Record, layers: &[String]) -> Result<i32, String> {
        // The previous run's shim removes its runtime state just after it reports the exit.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.runtime.container(&rec.id).is_ok() {
            if std::time::Instant::now() > deadline {
                let _ = self.runtime.delete(&rec.id, true);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let dir = self.dir(&rec.id);
        let rootfs = self.rootfs(&rec.id);
        std::fs::create_dir_all(&rootfs).map_err(|e| e.to_string())?;
        self.unmount(&rec.id);
        let layer_refs: Vec<&str> = layers.iter().map(String::as_str).collect();
        self.store
            .snapshots()
            .mount(&rec.id, &layer_refs, &rootfs)
            .map_err(|e| e.to_string())?;
        let result = (|| {
            spec::write_etc_files(rec, &dir).map_err(|e| e.to_string())?;
            let volumes = self.attach_volumes(rec, &rootfs)?;
            let joined = self.joined_namespaces(rec)?;
            let config = spec::build(rec, &rootfs, &dir, &volumes, &joined)?;
            berth_types::fs::atomic_write(&dir.join("config.json"), config.to_string().as_bytes())
                .map_err(|e| e.to_string())?;
            let _ = std::fs::remove_file(dir.join("exit.json"));
            self.spawn_shim(rec)
        })();
        if result.is_err() {
            self.unmount(&rec.id);
        }
        result
    }

    /// `--network/--pid/--ipc container:<name>`: the other container's namespaces, which
    /// must be running.
    fn joined_namespaces(&self, rec: &Record) -> Result<Vec<(&'static str, PathBuf)>, String> {
        let hc = &rec.host_config;
        let mut out = Vec::new();
        if let Some(att) = &rec.network {
            out.push(("network", att.netns.clone()));
        }
        for (kind, proc_name, mode) in [
            ("network", "net", &hc.network_mode),
            ("pid", "pid", &hc.pid_mode),
            ("ipc", "ipc", &hc.ipc_mode),
        ] {
            let Some(other) = mode.strip_prefix("container:") else {
                continue;
            };
            let what = if kind == "network" { "network" } else { kind };
            let target = self
                .get(other)
                .map_err(|_| format!("cannot join {what} namespace of container {other}: No such container: {other}"))?
                .snapshot();
            if !target.state.running || target.state.pid <= 0 {
                return Err(format!(
                    "cannot join {what} namespace of a non running container: {}",
                    target.id
                ));
            }
            out.push((
                kind,
                PathBuf::from(format!("/proc/{}/ns/{proc_name}", target.state.pid)),
            ));
        }
        Ok(out)
    }

    /// The container's volumes as (host path, destination, rw); a volume used for the
    /// first time gets the image's content at its destination (unless `nocopy`).
    fn attach_volumes(
        &self,
        rec: &Record,
        rootfs: &Path,
    ) -> Result<Vec<(PathBuf, String, bool)>, String> {
        let mut out = Vec::new();
        let root = std::fs::canonicalize(rootfs).map_err(|e| e.to_string())?;
        for v in &rec.volumes {
            let (path, fresh) = self.volumes.attach(&v.name)?;
            if fresh && !v.nocopy {
                // Only content truly inside the image: a path whose links lead out of the
                // root filesystem (resolved here, on the host) is not copied.
                let inside = rootfs.join(v.destination.trim_start_matches('/'));
                if let Ok(real) = std::fs::canonicalize(&inside) {
                    if real.starts_with(&root) {
                        crate::volumes::copy_up(&real, &path).map_err(|e| {
                            format!("copying {} into volume {}: {e}", v.destination, v.name)
                        })?;
                    }
                }
            }
            out.push((path, v.destination.clone(), v.rw));
        }
        Ok(out)
    }

    fn spawn_shim(&self, rec: &Record) -> Result<i32, String> {
        let dir = self.dir(&rec.id);
        let c = &rec.config;
        let lc = &rec.host_config.log_config;
        let log = if lc.kind == "none" {
            None
        } else {
            let (size, files) = log_limits(&lc.config)?;
            Some((self.log_path(&rec.id), size, files))
        };
        let report = self.spawner.spawn(&berth_shim::Options {
            id: rec.id.clone(),
            bundle: dir.clone(),
            runtime_root: self.runtime.root.clone(),
            socket: self.socket(&rec.id),
            exit_file: dir.join("exit.json"),
            log,
            tty: c.tty,
            stdin: c.open_stdin,
            stdin_once: c.stdin_once,
            exec: None,
        })?;
        report["pid"]
            .as_i64()
            .map(|p| p as i32)
            .ok_or_else(|| format!("bad report from the shim: {report}"))
    }

    /// Sends a signal to a running container.
    pub fn kill(&self, e: &Entry, signal: i32) -> Result<(), ApiError> {
        let rec = e.snapshot();
        if !rec.state.running {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "Cannot kill container: {}: Container {} is not running",
                    rec.name, rec.id
                ),
            ));
        }
        self.runtime
            .kill(&rec.id, signal, false)
            .map_err(ApiError::internal)
    }

    /// Waits until the container's exit count passes `seen`, up to `timeout`.
    pub async fn wait_exit(e: &Entry, seen: u64, timeout: Option<Duration>) -> bool {
        let mut rx = e.progress.subscribe();
        let fut = rx.wait_for(|p| p.exits > seen || p.removed);
        match timeout {
            Some(t) => matches!(tokio::time::timeout(t, fut).await, Ok(Ok(_))),
            None => fut.await.is_ok(),
        }
    }

    /// `docker stop`: the stop signal, then SIGKILL after the timeout. False when the
    /// container was not running.
    pub async fn stop(
        &self,
        e: &Arc<Entry>,
        timeout: Option<i64>,
        signal: Option<i32>,
    ) -> Result<bool, ApiError> {
        let rec = e.snapshot();
        if rec.state.restarting {
            // Waiting out its backoff: it just stays down.
            let rec = {
                let mut r = e.rec.lock().expect("lock");
                r.state.restarting = false;
                r.state.status = "exited".into();
                r.stopped_by_user = true;
                r.clone()
            };
            let _ = self.persist(&rec);
            return Ok(true);
        }
        if !rec.state.running {
            return Ok(false);
        }
        e.rec.lock().expect("lock").stopped_by_user = true;
        let seen = e.progress.borrow().exits;
        let sig = signal
            .or_else(|| rec.config.stop_signal.as_deref().and_then(parse_signal))
            .unwrap_or(libc::SIGTERM);
        let secs = timeout.or(rec.config.stop_timeout).unwrap_or(10);
        if rec.state.paused {
            let _ = self.runtime.pause(&rec.id, false);
        }
        let _ = self.runtime.kill(&rec.id, sig, false);
        if secs >= 0 && Self::wait_exit(e, seen, Some(Duration::from_secs(secs as u64))).await {
            return Ok(true);
        }
        let _ = self.runtime.kill(&rec.id, libc::SIGKILL, false);
        Self::wait_exit(e, seen, Some(Duration::from_secs(30))).await;
        Ok(true)
    }

    /// Removes a container that is not running: its mount, writable layer, files, record.
    pub async fn remove_stopped(self: &Arc<Self>, e: &Arc<Entry>) -> Result<(), ApiError> {
        let rec = e.snapshot();
        self.networks.detach(&rec.id).await;
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            me.unmount(&rec.id);
            let _ = me.runtime.delete(&rec.id, true);
            me.store
                .snapshots()
                .remove(&rec.id)
                .map_err(ApiError::internal)?;
            let _ = std::fs::remove_file(me.socket(&rec.id));
            let dir = me.dir(&rec.id);
            std::fs::remove_dir_all(&dir).map_err(ApiError::internal)?;
            me.by_id.lock().expect("containers lock").remove(&rec.id);
            me.store.unpin(&rec.id);
            Ok::<(), ApiError>(())
        })
        .await
        .map_err(ApiError::internal)??;
        e.pending.lock().expect("lock").clear();
        e.progress.send_modify(|p| p.removed = true);
        Ok(())
    }

    /// Ids of the images containers use (an image in use cannot be removed without force).
    pub fn images_in_use(&self) -> Vec<String> {
        self.all().iter().map(|e| e.snapshot().image).collect()
    }
}

/// Runs `f` with the container's root filesystem mounted (it is while the container
/// runs; otherwise for the call, which also makes its upper directory exist), and the
/// container paused meanwhile if asked (`pause`, as Docker does for commit).
pub(crate) async fn with_rootfs<T: Send + 'static>(
    d: &crate::Shared,
    rec: Record,
    pause: bool,
    f: impl FnOnce(PathBuf) -> crate::ApiResult<T> + Send + 'static,
) -> crate::ApiResult<T> {
    let c = d.containers.clone();
    crate::blocking(move || {
        let rootfs = c.dir(&rec.id).join("rootfs");
        let mount = !rec.state.running;
        if mount {
            std::fs::create_dir_all(&rootfs).map_err(ApiError::internal)?;
            let layers: Vec<&str> = rec.layers.iter().map(String::as_str).collect();
            c.store
                .snapshots()
                .mount(&rec.id, &layers, &rootfs)
                .map_err(ApiError::internal)?;
        }
        let paused = pause && rec.state.running && !rec.state.paused;
        if paused {
            let _ = c.runtime.pause(&rec.id, true);
        }
        let out = f(rootfs.clone());
        if paused {
            let _ = c.runtime.pause(&rec.id, false);
        }
        if mount {
            let _ = rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::DETACH);
        }
        out
    })
    .await
}

/// The binary to run shims from: our own, or, once it was replaced on disk (an upgrade
/// while the daemon runs), the new one at the same path.
pub(crate) fn shim_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let s = exe.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(p) => PathBuf::from(p),
        None => exe,
    })
}

/// A runtime error saying the program to run is not there: Docker's exit code 127 (and
/// the wording its CLI maps to 127), as opposed to 126 for one that cannot be run.
pub(crate) fn names_a_missing_program(msg: &str) -> bool {
    msg.contains("executable file not found") || msg.contains("no such file")
}

/// `max-size` (Docker's units: k, m, g) and `max-file`; bounded by default.
fn log_limits(opts: &std::collections::BTreeMap<String, String>) -> Result<(u64, u32), String> {
    let size = match opts.get("max-size") {
        Some(s) => parse_size(s).ok_or_else(|| format!("invalid max-size: {s}"))?,
        None => 10 << 20,
    };
    let files = match opts.get("max-file") {
        Some(f) => f
            .parse::<u32>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| format!("invalid max-file: {f}"))?,
        None => 3,
    };
    Ok((size, files))
}

/// Sizes as Docker's `units.RAMInBytes` reads them: `512`, `10k`, `64m`, `1g`, `1.5g`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mul) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let n: f64 = num.parse().ok()?;
    (n >= 0.0).then_some((n * mul as f64) as u64)
}

pub use berth_runtime::process::parse_signal;

pub(crate) async fn read_line(s: &mut UnixStream) -> Result<Vec<u8>, String> {
    // Byte by byte: what follows the line belongs to whoever uses the connection next.
    let mut r = BufReader::with_capacity(1, s);
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)
        .await
        .map_err(|e| e.to_string())?;
    if line.last() != Some(&b'\n') {
        return Err("the shim closed the connection".into());
    }
    line.pop();
    Ok(line)
}

fn tracing_warn(msg: &str) {
    eprintln!("berth daemon: warning: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_signals() {
        assert_eq!(parse_size("10m"), Some(10 << 20));
        assert_eq!(parse_size("1.5g"), Some(3 << 29));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_signal("KILL"), Some(9));
        assert_eq!(parse_signal("sigterm"), Some(15));
        assert_eq!(parse_signal("10"), Some(10));
        assert_eq!(parse_signal("NOPE"), None);
    }

    #[test]
    fn names() {
        assert!(valid_name("web-1.a_b"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
    }
}
