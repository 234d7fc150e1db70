//! `berth daemon`: the Docker Engine API over a unix socket.
//!
//! So far: version negotiation (`/_ping`, `/version`, the `/v1.NN/` prefix), `/info`,
//! events, the image endpoints over berth-store (list, inspect, tag, remove, prune, load,
//! save, import), and containers through one `berth shim` each (create, start, attach,
//! wait, logs, stop, kill, restart, pause, rename, top, remove, prune, live restore).
//! Pulls, builds and networks come with their issues.

mod build;
pub mod config;
pub mod containers;
mod images;
pub mod networks;
mod system;
pub use berth_distribution::tls;
pub mod volumes;

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use berth_store::image::{ImageError, ImageStore};
use tower::Layer;

pub const API_VERSION: &str = "1.47";
pub const MIN_API_VERSION: &str = "1.24";

/// What every handler can reach.
pub struct Daemon {
    pub store: Arc<ImageStore>,
    pub containers: Arc<containers::Containers>,
    pub execs: containers::exec::Execs,
    pub volumes: Arc<volumes::Volumes>,
    pub networks: Arc<networks::Networks>,
    /// Pulls, pushes and logins: connections, tokens and shared downloads.
    pub registry: Arc<berth_distribution::client::Client>,
    pub data_root: PathBuf,
    pub events: tokio::sync::broadcast::Sender<serde_json::Value>,
    /// Reloaded on SIGHUP (log and ulimit defaults, log level, registries).
    pub settings: std::sync::RwLock<config::Settings>,
    /// The last events, for `GET /events?since=`.
    pub recent: std::sync::Mutex<std::collections::VecDeque<serde_json::Value>>,
}

/// How many past events `since` can reach back to.
const RECENT_EVENTS: usize = 1024;

impl Daemon {
    /// Publishes a container event in the Engine API's shape (`docker events`).
    pub fn event(&self, kind: &str, action: &str, id: &str, rec: &containers::model::Record) {
        let mut attrs = serde_json::Map::new();
        for (k, v) in &rec.config.labels {
            attrs.insert(k.clone(), v.clone().into());
        }
        attrs.insert("image".into(), rec.config.image.clone().into());
        attrs.insert("name".into(), rec.name.clone().into());
        let id = if rec.id.is_empty() {
            id
        } else {
            rec.id.as_str()
        };
        self.publish(kind, action, id, &rec.config.image, attrs);
    }

    /// A volume event (create, destroy).
    pub fn volume_event(&self, action: &str, name: &str, driver: &str) {
        let mut attrs = serde_json::Map::new();
        attrs.insert("driver".into(), driver.into());
        self.publish("volume", action, name, "", attrs);
    }

    /// An image event (load, import, tag, untag, delete): `name` is the reference involved.
    pub fn image_event(&self, action: &str, id: &str, name: &str) {
        let mut attrs = serde_json::Map::new();
        attrs.insert("name".into(), name.into());
        self.publish("image", action, id, name, attrs);
    }

    /// A network event (create, destroy, connect, disconnect).
    pub fn network_event(&self, action: &str, id: &str, name: &str, container: Option<&str>) {
        let mut attrs = serde_json::Map::new();
        attrs.insert("name".into(), name.into());
        attrs.insert("type".into(), "bridge".into());
        if let Some(c) = container {
            attrs.insert("container".into(), c.into());
        }
        self.publish("network", action, id, "", attrs);
    }

    fn publish(
        &self,
        kind: &str,
        action: &str,
        id: &str,
        from: &str,
        attrs: serde_json::Map<String, serde_json::Value>,
    ) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let ev = serde_json::json!({
            "status": action, "id": id, "from": from,
            "Type": kind, "Action": action,
            "Actor": {"ID": id, "Attributes": attrs},
            "scope": "local",
            "time": now.as_secs(), "timeNano": now.as_nanos() as u64,
        });
        let mut recent = self.recent.lock().expect("events lock");
        if recent.len() == RECENT_EVENTS {
            recent.pop_front();
        }
        recent.push_back(ev.clone());
        // Sent under the lock, so a reader that subscribes under it misses nothing and
        // sees nothing twice.
        let _ = self.events.send(ev);
    }
}

pub type Shared = Arc<Daemon>;

/// An error as the Engine API reports it: a status and `{"message": ...}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({"message": self.message})),
        )
            .into_response()
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> ApiError {
        let status = match &e {
            ImageError::NotFound(_) => StatusCode::NOT_FOUND,
            ImageError::Conflict(_) => StatusCode::CONFLICT,
            ImageError::Archive(_)
            | ImageError::Change(..)
            | ImageError::DiffIdMismatch { .. }
            | ImageError::Layer(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Runs blocking store work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

pub fn router(daemon: Shared) -> Router {
    let mut r = Router::new()
        .route("/_ping", get(system::ping).head(system::ping))
        .route("/version", get(system::version))
        .route("/info", get(system::info))
        .route("/events", get(system::events))
        .route("/volumes", get(volumes::list))
        .route("/volumes/create", post(volumes::create))
        .route("/volumes/prune", post(volumes::prune))
        .route(
            "/volumes/{name}",
            get(volumes::inspect).delete(volumes::remove),
        )
        .route("/build", post(build::build))
        .route("/build/prune", post(build::prune))
        .route("/networks", get(networks::list))
        .route("/networks/create", post(networks::create))
        .route("/networks/prune", post(networks::prune))
        .route(
            "/networks/{id}",
            get(networks::inspect).delete(networks::remove),
        )
        .route("/networks/{id}/connect", post(networks::connect))
        .route("/networks/{id}/disconnect", post(networks::disconnect))
        .route("/containers/json", get(containers::api::list))
        .route("/containers/create", post(containers::api::create))
        .route("/containers/prune", post(containers::api::prune))
        .route("/containers/{id}/json", get(containers::api::inspect))
        .route("/containers/{id}/start", post(containers::api::start))
        .route("/containers/{id}/stop", post(containers::api::stop))
        .route("/containers/{id}/restart", post(containers::api::restart))
        .route("/containers/{id}/kill", post(containers::api::kill))
        .route("/containers/{id}/pause", post(containers::api::pause))
        .route("/containers/{id}/unpause", post(containers::api::unpause))
        .route("/containers/{id}/wait", post(containers::api::wait))
        .route("/containers/{id}/rename", post(containers::api::rename))
        .route("/containers/{id}/resize", post(containers::api::resize))
        .route("/containers/{id}/top", get(containers::api::top))
        .route("/containers/{id}/stats", get(containers::stats::stats))
        .route(
            "/containers/{id}/changes",
            get(containers::changes::changes),
        )
        .route("/containers/{id}/export", get(containers::changes::export))
        .route("/containers/{id}/update", post(containers::changes::update))
        .route("/commit", post(containers::changes::commit))
        .route("/containers/{id}/attach", post(containers::attach::attach))
        .route("/containers/{id}/logs", get(containers::logs::logs))
        .route(
            "/containers/{id}/archive",
            get(containers::archive::archive)
                .head(containers::archive::archive)
                .put(containers::archive::archive),
        )
        .route("/containers/{id}/exec", post(containers::exec::create))
        .route("/exec/{id}/start", post(containers::exec::start))
        .route("/exec/{id}/json", get(containers::exec::inspect))
        .route("/exec/{id}/resize", post(containers::exec::resize))
        .route(
            "/containers/{id}",
            axum::routing::delete(containers::api::remove),
        )
        .route("/system/df", get(system::disk_usage))
        .route("/images/json", get(images::list))
        .route("/images/load", post(images::load))
        .route("/images/get", get(images::save_many))
        .route("/images/create", post(images::create))
        .route("/auth", post(images::login))
        .route("/images/search", get(images::search))
        .route("/distribution/{*rest}", get(images::distribution))
        .route("/images/prune", post(images::prune))
        .route(
            "/images/{*rest}",
            get(images::get_named)
                .post(images::post_named)
                .delete(images::remove),
        );
    // Swarm endpoints answer as a Docker daemon outside a swarm does.
    for p in [
        "/swarm",
        "/services",
        "/nodes",
        "/tasks",
        "/secrets",
        "/configs",
    ] {
        r = r.route(p, any(containers::changes::not_a_swarm)).route(
            &format!("{p}/{{*rest}}"),
            any(containers::changes::not_a_swarm),
        );
    }
    r.fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "page not found") })
        .with_state(daemon)
}

/// `/v1.47/images/json` is routed as `/images/json`; versions outside 1.24..=1.47 are refused
/// as Docker refuses them.
fn strip_version(mut req: Request<Body>) -> Request<Body> {
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/v") {
        if let Some((ver, tail)) = rest.split_once('/') {
            if ver
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            {
                let new = match req.uri().query() {
                    Some(q) => format!("/{tail}?{q}"),
                    None => format!("/{tail}"),
                };
                if let Ok(uri) = new.parse() {
                    *req.uri_mut() = uri;
                }
            }
        }
    }
    req
}

/// `berth daemon`: reads the configuration file, merges the flags, serves until SIGTERM
/// or SIGINT; returns the process exit code.
pub fn main(flags: config::Flags) -> i32 {
    let path = flags
        .config_file
        .clone()
        .unwrap_or_else(|| config::DEFAULT_CONFIG.into());
    let settings =
        config::read_file(&path, flags.config_file.is_some()).and_then(|(file, warnings)| {
            for w in warnings {
                eprintln!("berth daemon: warning: {w}");
            }
            config::merge(&flags, &file)
        });
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            eprintln!("berth daemon: {e}");
            return 1;
        }
    };
    let level = match settings.log_level.as_str() {
        "debug" => tracing::Level::DEBUG,
        "warn" => tracing::Level::WARN,
        "error" | "fatal" => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    // Before the runtime's threads exist: measured by benches/lifecycle.sh, the arenas
    // glibc gives each thread held 2 of the daemon's 17 MiB after a few dozen containers.
    berth_runtime::sys::limit_malloc_arenas(2);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking threads (file and store work) go once idle for a second: each keeps a
        // stack and malloc state resident while it waits (tokio's default is 10 s).
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth daemon: {e}");
            return 1;
        }
    };
    match rt.block_on(serve(settings, flags)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("berth daemon: {e}");
            1
        }
    }
}

/// Requests being answered, and a wake-up for the trimmer when none is left.
static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static QUIET: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Once the daemon has been quiet for half a second after some work, the memory that
/// work freed goes back to the kernel (glibc keeps freed pages otherwise: an image load
/// left ~1 MiB behind).
async fn trim_when_quiet() {
    use std::sync::atomic::Ordering;
    loop {
        QUIET.notified().await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if IN_FLIGHT.load(Ordering::Relaxed) == 0 {
            let _ = tokio::task::spawn_blocking(berth_runtime::sys::trim_malloc).await;
        }
    }
}

/// One line per request, at debug level (method, path, status, time), and the count of
/// requests in flight that [`trim_when_quiet`] waits on.
async fn log_request(req: Request<Body>, next: axum::middleware::Next) -> Response {
    use std::sync::atomic::Ordering;
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let t = std::time::Instant::now();
    IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
    let resp = next.run(req).await;
    if IN_FLIGHT.fetch_sub(1, Ordering::Relaxed) == 1 {
        QUIET.notify_one();
    }
    tracing::debug!(%method, %path, status = resp.status().as_u16(), elapsed_us = t.elapsed().as_micros() as u64, "request");
    resp
}

async fn serve(settings: config::Settings, flags: config::Flags) -> Result<(), String> {
    let mut sockets = Vec::new();
    let mut tcp = Vec::new();
    for h in &settings.hosts {
        if let Some(path) = h.strip_prefix("unix://") {
            sockets.push(PathBuf::from(path));
        } else if let Some(addr) = h.strip_prefix("tcp://") {
            let addr: std::net::SocketAddr = addr
                .trim_end_matches('/')
                .parse()
                .map_err(|e| format!("--host {h}: {e}"))?;
            // The API is root on this machine: beyond loopback, only clients holding a
            // certificate of our CA (dockerd warns and serves anyway; Berth refuses).
            let verified = settings.tls.as_ref().is_some_and(|t| t.verify);
            if !addr.ip().is_loopback() && !verified {
                return Err(format!(
                    "--host {h}: listening beyond loopback needs TLS client verification (--tlsverify with --tlscacert, --tlscert, --tlskey)"
                ));
            }
            tcp.push(addr);
        } else {
            return Err(format!(
                "--host {h}: use unix:///path or tcp://127.0.0.1:PORT"
            ));
        }
    }
    for d in [&settings.data_root, &settings.exec_root] {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let gid = match &settings.group {
        Some(g) => Some(config::group_id(g).ok_or_else(|| format!("group {g} not found"))?),
        // As dockerd with its docker group: the berth group when there is one.
        None => config::group_id("berth"),
    };
    let mut listeners = Vec::new();
    for socket in &sockets {
        if let Some(parent) = socket.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        // A socket file nobody answers on is left over from a daemon that died: replace it.
        if socket.exists() {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Err(format!(
                    "another daemon is listening on {}",
                    socket.display()
                ));
            }
            let _ = std::fs::remove_file(socket);
        }
        let listener = tokio::net::UnixListener::bind(socket)
            .map_err(|e| format!("binding {}: {e}", socket.display()))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660));
        if let Some(gid) = gid {
            let _ = std::os::unix::fs::chown(socket, None, Some(gid));
        }
        listeners.push(listener);
    }
    // The sockets are ours now, so no other daemon works in this data root.
    build::clean_leftovers(&settings.data_root);
    let store = Arc::new(ImageStore::open(&settings.data_root).map_err(|e| e.to_string())?);
    let networks = Arc::new(
        networks::Networks::open(
            &settings.data_root,
            &settings.exec_root,
            settings.bip.as_deref(),
            &settings.default_address_pools,
            settings.fixed_cidr_v6.as_deref(),
            settings.iptables,
        )
        .await
        .map_err(|e| format!("setting up networks: {e}"))?,
    );
    let containers = Arc::new(containers::Containers::new(
        store.clone(),
        networks.clone(),
        &settings.data_root,
        &settings.exec_root,
    ));
    let daemon = Arc::new(Daemon {
        store,
        volumes: containers.volumes.clone(),
        networks,
        containers,
        execs: Default::default(),
        registry: Arc::new(berth_distribution::client::Client::new(registry_options(
            &settings,
        ))),
        data_root: settings.data_root.clone(),
        events: tokio::sync::broadcast::channel(1024).0,
        settings: std::sync::RwLock::new(settings.clone()),
        recent: Default::default(),
    });
    let _ = daemon.containers.daemon.set(Arc::downgrade(&daemon));
    daemon.containers.restore().await;
    daemon.networks.reconcile().await;
    if let Some(p) = &settings.pidfile {
        std::fs::write(p, std::process::id().to_string())
            .map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    tokio::spawn(trim_when_quiet());
    let app: App = tower::util::MapRequestLayer::new(strip_version as fn(_) -> _)
        .layer(router(daemon.clone()).layer(axum::middleware::from_fn(log_request)));
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut servers = Vec::new();
    let tls = match &settings.tls {
        Some(files) if !tcp.is_empty() => Some(tls::server_config(files)?),
        _ => None,
    };
    for addr in tcp {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("binding {addr}: {e}"))?;
        match &tls {
            Some(cfg) => {
                let l = tls::TlsListener::new(listener, cfg.clone())
                    .map_err(|e| format!("binding {addr}: {e}"))?;
                servers.push(spawn_server(l, app.clone(), stop_tx.subscribe()));
            }
            None => servers.push(spawn_server(listener, app.clone(), stop_tx.subscribe())),
        }
    }
    for listener in listeners {
        servers.push(spawn_server(listener, app.clone(), stop_tx.subscribe()));
    }
    tracing::info!(hosts = ?settings.hosts, data_root = %settings.data_root.display(), "berth daemon serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => reload(&daemon, &flags),
        }
    }
    if !daemon.settings.read().expect("settings").live_restore {
        // Without live restore, containers stop with the daemon (dockerd's behaviour).
        for e in daemon.containers.all() {
            let _ = daemon.containers.stop(&e, None, None).await;
        }
    }
    let _ = stop_tx.send(());
    for s in servers {
        let _ = s.await;
    }
    // Links of containers that just stopped are removed before the daemon goes.
    daemon.networks.settle().await;
    for socket in &sockets {
        let _ = std::fs::remove_file(socket);
    }
    if let Some(p) = &settings.pidfile {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// Serves `app` on one listener until `stop` fires.
fn spawn_server<L>(
    listener: L,
    app: App,
    mut stop: tokio::sync::broadcast::Receiver<()>,
) -> tokio::task::JoinHandle<std::io::Result<()>>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        axum::serve(
            listener,
            axum::ServiceExt::<Request<Body>>::into_make_service(app),
        )
        .with_graceful_shutdown(async move {
            let _ = stop.recv().await;
        })
        .await
    })
}

/// The whole service: version prefixes stripped, requests logged, routed.
type App = tower::util::MapRequest<Router, fn(Request<Body>) -> Request<Body>>;

/// What the registry client takes from the settings.
fn registry_options(s: &config::Settings) -> berth_distribution::client::Options {
    berth_distribution::client::Options {
        insecure: s.insecure_registries.clone(),
        mirrors: s.registry_mirrors.clone(),
        certs_dir: Some(s.certs_dir.clone()),
        max_downloads: s.max_concurrent_downloads,
        max_uploads: s.max_concurrent_uploads,
        ..Default::default()
    }
}

/// SIGHUP: the configuration file again; what can change without a restart does.
fn reload(d: &Daemon, flags: &config::Flags) {
    let path = d.settings.read().expect("settings").config_file.clone();
    let merged = config::read_file(&path, false).and_then(|(f, _)| config::merge(flags, &f));
    match merged {
        Ok(new) => {
            let mut s = d.settings.write().expect("settings");
            s.log_driver = new.log_driver;
            s.log_opts = new.log_opts;
            s.default_ulimits = new.default_ulimits;
            s.insecure_registries = new.insecure_registries;
            s.registry_mirrors = new.registry_mirrors;
            s.max_concurrent_downloads = new.max_concurrent_downloads;
            s.max_concurrent_uploads = new.max_concurrent_uploads;
            d.registry.set_options(registry_options(&s));
            s.live_restore = new.live_restore;
            tracing::info!(config = %path.display(), "configuration reloaded");
        }
        Err(e) => tracing::warn!(error = %e, "configuration not reloaded"),
    }
}
