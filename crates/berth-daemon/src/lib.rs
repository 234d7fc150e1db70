//! `berth daemon`: the Docker Engine API over a unix socket.
//!
//! So far: version negotiation (`/_ping`, `/version`, the `/v1.NN/` prefix), `/info`,
//! events, the image endpoints over berth-store (list, inspect, tag, remove, prune, load,
//! save, import), and containers through one `berth shim` each (create, start, attach,
//! wait, logs, stop, kill, restart, pause, rename, top, remove, prune, live restore).
//! Pulls, builds and networks come with their issues.

pub mod containers;
mod images;
mod system;
pub mod volumes;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
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
    pub data_root: PathBuf,
    pub events: tokio::sync::broadcast::Sender<serde_json::Value>,
}

impl Daemon {
    /// Publishes an event in the Engine API's shape (`docker events`).
    pub fn event(&self, kind: &str, action: &str, id: &str, rec: &containers::model::Record) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
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
        let _ = self.events.send(serde_json::json!({
            "status": action, "id": id, "from": rec.config.image,
            "Type": kind, "Action": action,
            "Actor": {"ID": id, "Attributes": attrs},
            "scope": "local",
            "time": now.as_secs(), "timeNano": now.as_nanos() as u64,
        }));
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
    Router::new()
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
        .route("/swarm", get(containers::changes::not_a_swarm))
        .route(
            "/swarm/{*rest}",
            get(containers::changes::not_a_swarm).post(containers::changes::not_a_swarm),
        )
        .route("/services", get(containers::changes::not_a_swarm))
        .route(
            "/services/{*rest}",
            get(containers::changes::not_a_swarm)
                .post(containers::changes::not_a_swarm)
                .delete(containers::changes::not_a_swarm),
        )
        .route("/nodes", get(containers::changes::not_a_swarm))
        .route(
            "/nodes/{*rest}",
            get(containers::changes::not_a_swarm)
                .post(containers::changes::not_a_swarm)
                .delete(containers::changes::not_a_swarm),
        )
        .route("/tasks", get(containers::changes::not_a_swarm))
        .route("/tasks/{*rest}", get(containers::changes::not_a_swarm))
        .route("/secrets", get(containers::changes::not_a_swarm))
        .route(
            "/secrets/{*rest}",
            get(containers::changes::not_a_swarm)
                .post(containers::changes::not_a_swarm)
                .delete(containers::changes::not_a_swarm),
        )
        .route("/configs", get(containers::changes::not_a_swarm))
        .route(
            "/configs/{*rest}",
            get(containers::changes::not_a_swarm)
                .post(containers::changes::not_a_swarm)
                .delete(containers::changes::not_a_swarm),
        )
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
        .route("/images/prune", post(images::prune))
        .route(
            "/images/{*rest}",
            get(images::get_named)
                .post(images::post_named)
                .delete(images::remove),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "page not found") })
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

/// Options of `berth daemon` (dockerd's names).
pub struct Options {
    pub host: String,
    pub data_root: PathBuf,
    pub exec_root: PathBuf,
    pub pidfile: Option<PathBuf>,
}

/// Serves until SIGTERM or SIGINT; returns the process exit code.
pub fn main(opts: Options) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth daemon: {e}");
            return 1;
        }
    };
    match rt.block_on(serve(opts)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("berth daemon: {e}");
            1
        }
    }
}

async fn serve(opts: Options) -> Result<(), String> {
    let socket = opts.host.strip_prefix("unix://").ok_or_else(|| {
        format!(
            "--host {}: only unix:// sockets are served so far",
            opts.host
        )
    })?;
    let socket = Path::new(socket);
    for d in [&opts.data_root, &opts.exec_root] {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
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
    let store = Arc::new(ImageStore::open(&opts.data_root).map_err(|e| e.to_string())?);
    let containers = Arc::new(containers::Containers::new(
        store.clone(),
        &opts.data_root,
        &opts.exec_root,
    ));
    let daemon = Arc::new(Daemon {
        store,
        volumes: containers.volumes.clone(),
        containers,
        execs: Default::default(),
        data_root: opts.data_root.clone(),
        events: tokio::sync::broadcast::channel(1024).0,
    });
    let _ = daemon.containers.daemon.set(Arc::downgrade(&daemon));
    daemon.containers.restore().await;
    let listener = tokio::net::UnixListener::bind(socket)
        .map_err(|e| format!("binding {}: {e}", socket.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660));
    if let Some(p) = &opts.pidfile {
        std::fs::write(p, std::process::id().to_string())
            .map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    let app = tower::util::MapRequestLayer::new(strip_version).layer(router(daemon));
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let served = axum::serve(
        listener,
        axum::ServiceExt::<Request<Body>>::into_make_service(app),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    let _ = std::fs::remove_file(socket);
    if let Some(p) = &opts.pidfile {
        let _ = std::fs::remove_file(p);
    }
    served.map_err(|e| e.to_string())
}
