//! `berth registry serve`: the OCI distribution API ([`api`]) over a storage driver
//! ([`storage`]), with basic or token auth ([`auth`]), TLS, a read-only mode, body limits,
//! an access log and `/metrics` ([`metrics`]); `berth registry gc` and `verify` ([`gc`])
//! work on a stopped registry's store.
//!
//! One handler takes every request: it names the route, asks auth whether the caller may,
//! runs the endpoint, and counts and logs the answer, so no endpoint can skip any of that.

pub mod api;
pub mod auth;
pub mod config;
pub mod gc;
pub mod metrics;
pub mod storage;
#[cfg(test)]
mod tests;
pub mod zerocopy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use api::{RegError, Registry, Route};
use auth::{Auth, Refusal};
pub use config::Config;
use metrics::AccessLog;
use storage::Driver;

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The registry as it serves: the store's endpoints and what guards them.
pub struct App {
    pub registry: Registry,
    auth: Option<Auth>,
    log: AccessLog,
    tls: bool,
}

/// The driver a configuration names.
pub fn open_store(cfg: &Config) -> std::io::Result<Arc<dyn Driver>> {
    Ok(match cfg.storage {
        config::StorageKind::Filesystem => Arc::new(storage::Filesystem::new(&cfg.root)?),
        config::StorageKind::Memory => Arc::new(storage::Memory::default()),
    })
}

impl App {
    pub fn new(cfg: &Config, store: Arc<dyn Driver>) -> Result<App, String> {
        cfg.check().map_err(|e| e.to_string())?;
        let mut registry = Registry::new(store);
        registry.readonly = cfg.readonly;
        registry.blob_limit = cfg.limits.blob;
        registry.manifest_limit = cfg.limits.manifest;
        let auth = match &cfg.auth {
            Some(a) => Some(Auth::new(a).map_err(|e| e.to_string())?),
            None => None,
        };
        let log = AccessLog::open(&cfg.log.access)
            .map_err(|e| format!("access log {}: {e}", cfg.log.access))?;
        Ok(App {
            registry,
            auth,
            log,
            tls: cfg.tls.is_some(),
        })
    }

    fn refuse(&self, r: Refusal) -> Response {
        match r {
            Refusal::Unauthorized { challenge, message } => {
                let mut resp =
                    RegError(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message).into_response();
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, api_header(&challenge));
                resp
            }
            Refusal::Denied(m) => RegError(StatusCode::FORBIDDEN, "DENIED", m).into_response(),
        }
    }

    /// Answers one request: (route, account, response).
    async fn answer(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Body,
    ) -> (Route, Option<String>, Response) {
        let path = uri.path();
        let q = uri.query();
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let scheme = if self.tls { "https" } else { "http" };
        let check = |needs: &[auth::Need]| match &self.auth {
            None => Ok(None),
            Some(a) => a.check(headers, needs, host, scheme),
        };
        let may_pull = |account: &Option<String>, name: &str| match &self.auth {
            None => true,
            Some(a) => a.allowed(account.as_deref(), name, "pull"),
        };
        match path {
            "/metrics" => {
                let mut r = self.registry.metrics.render().into_response();
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                return (Route::Metrics, None, r);
            }
            "/token" => {
                let Some(a) = &self.auth else {
                    return (Route::Token, None, StatusCode::NOT_FOUND.into_response());
                };
                let answer = if *method == Method::POST {
                    match axum::body::to_bytes(body, 64 << 10).await {
                        Ok(form) => a.issue_oauth(&String::from_utf8_lossy(&form)),
                        Err(_) => Err(Refusal::Denied("token request too large".into())),
                    }
                } else {
                    a.issue(headers, &api::query_all(q, "scope"))
                };
                return match answer {
                    Ok(t) => (Route::Token, None, axum::Json(t).into_response()),
                    Err(r) => (Route::Token, None, self.refuse(r)),
                };
            }
            "/v1/search" => {
                return match check(&[]) {
                    Ok(account) => {
                        let r = api::search(&self.registry, q, &|n| may_pull(&account, n));
                        (Route::Search, account, r)
                    }
                    Err(_) if self.auth.is_some() => {
                        // Anonymous search sees what anonymous may pull.
                        let r = api::search(&self.registry, q, &|n| may_pull(&None, n));
                        (Route::Search, None, r)
                    }
                    Err(r) => (Route::Search, None, self.refuse(r)),
                };
            }
            _ => {}
        }
        let Some(rest) = path
            .strip_prefix("/v2/")
            .or_else(|| (path == "/v2").then_some(""))
        else {
            let r = RegError(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                format!("unknown path {path}"),
            );
            return (Route::Other, None, r.into_response());
        };
        let (route, name) = api::classify(rest);
        if route == Route::Base {
            return match check(&[]) {
                Ok(account) => (route, account, axum::Json(json!({})).into_response()),
                Err(r) => (route, None, self.refuse(r)),
            };
        }
        let needs = api::needs(route, method, name.filter(|n| api::valid_name(n)), q);
        let mut mount = true;
        let account = match check(&needs) {
            Ok(a) => a,
            Err(r) => {
                // A mount from a repository the caller may not read is only a plain upload.
                let plain: Vec<_> = needs
                    .iter()
                    .filter(|n| n.action != "pull" || Some(n.name.as_str()) == name)
                    .cloned()
                    .collect();
                // With tokens, a caller whose token lacks a pull it may have is asked to
                // get it, so its mount can happen.
                let could_mount = |a: &Option<String>| {
                    let auth = self.auth.as_ref().expect("checks fail only with auth");
                    auth.uses_tokens()
                        && needs
                            .iter()
                            .filter(|n| !plain.contains(n))
                            .all(|n| auth.allowed(a.as_deref(), &n.name, "pull"))
                };
                match check(&plain) {
                    Ok(a)
                        if route == Route::Upload
                            && plain.len() < needs.len()
                            && !could_mount(&a) =>
                    {
                        mount = false;
                        a
                    }
                    _ => return (route, None, self.refuse(r)),
                }
            }
        };
        let req = api::Req {
            method,
            rest,
            q,
            headers,
            mount,
            mount_anywhere: self.auth.is_none(),
        };
        let r = if route == Route::Catalog && *method == Method::GET {
            api::catalog_filtered(&self.registry, q, &|n| may_pull(&account, n))
        } else {
            api::dispatch(&self.registry, req, body).await
        };
        (
            route,
            account,
            r.unwrap_or_else(IntoResponse::into_response),
        )
    }
}

/// The peer of a connection, plain or TLS, for the access log.
#[derive(Clone, Copy)]
pub struct Peer(SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, zerocopy::Listener>>
    for Peer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, zerocopy::Listener>) -> Peer {
        Peer(*s.remote_addr())
    }
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, crate::tls::TlsListener>>
    for Peer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, crate::tls::TlsListener>) -> Peer {
        Peer(*s.remote_addr())
    }
}

fn api_header(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

async fn handle(
    State(app): State<Arc<App>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    let (route, account, mut resp) = app.answer(&method, &uri, &headers, body).await;
    resp.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    let secs = start.elapsed().as_secs_f64();
    let status = resp.status().as_u16();
    let sent = if method == Method::HEAD {
        0
    } else {
        resp.headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    app.registry
        .metrics
        .observe(route.as_str(), method.as_str(), status, secs, sent);
    if app.log.enabled() {
        app.log.write(&json!({
            "time": berth_types::time::now_rfc3339(),
            "remote": peer.to_string(),
            "method": method.as_str(),
            "path": uri.path(),
            "route": route.as_str(),
            "status": status,
            "bytes": sent,
            "ms": (secs * 1e6).round() / 1e3,
            "account": account,
            "agent": headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()),
        }));
    }
    resp
}

pub fn router(app: Arc<App>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(app)
}

/// Holds a shared lock on a filesystem store while it serves, so `gc` (which takes it
/// exclusively) never sweeps under a running registry.
pub fn lock_store(root: &std::path::Path, exclusive: bool) -> Result<std::fs::File, String> {
    use rustix::fs::FlockOperation;
    std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let path = root.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let op = if exclusive {
        FlockOperation::NonBlockingLockExclusive
    } else {
        FlockOperation::NonBlockingLockShared
    };
    rustix::fs::flock(&f, op).map_err(|_| {
        if exclusive {
            format!(
                "a registry is serving {}: stop it first (gc and verify work on a stopped registry)",
                root.display()
            )
        } else {
            format!("{} is locked by a running gc", root.display())
        }
    })?;
    Ok(f)
}

/// Serves until SIGTERM or ctrl-c; then requests in flight get `shutdown_timeout` seconds
/// to finish (uploads cut off after that resume from what they wrote).
pub async fn serve(cfg: Config) -> Result<(), String> {
    let _lock = match cfg.storage {
        config::StorageKind::Filesystem => Some(lock_store(&cfg.root, false)?),
        config::StorageKind::Memory => None,
    };
    let store = open_store(&cfg).map_err(|e| format!("{}: {e}", cfg.root.display()))?;
    let app = Arc::new(App::new(&cfg, store)?);
    let make = router(app).into_make_service_with_connect_info::<Peer>();
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .map_err(|e| format!("listening on {}: {e}", cfg.addr))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    // The address as bound (port 0 picks one), for whoever started this.
    eprintln!("berth registry: listening on {local}");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = stop_tx.send(true);
    });
    let stopping = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let grace = std::time::Duration::from_secs(cfg.shutdown_timeout);
    let deadline = {
        let rx = stop_rx.clone();
        async move {
            stopping(rx).await;
            tokio::time::sleep(grace).await;
        }
    };
    let served = async {
        match &cfg.tls {
            Some(t) => {
                let files = crate::tls::TlsFiles {
                    verify: false,
                    ca: Default::default(),
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                };
                let tls = crate::tls::server_config(&files)?;
                let l = crate::tls::TlsListener::new(listener, tls).map_err(|e| e.to_string())?;
                axum::serve(l, make)
                    .with_graceful_shutdown(stopping(stop_rx))
                    .await
                    .map_err(|e| e.to_string())
            }
            None => axum::serve(zerocopy::Listener(listener), make)
                .with_graceful_shutdown(stopping(stop_rx))
                .await
                .map_err(|e| e.to_string()),
        }
    };
    tokio::select! {
        r = served => r,
        _ = deadline => {
            eprintln!("berth registry: requests still running after {}s cut off; their uploads resume from what they wrote", cfg.shutdown_timeout);
            Ok(())
        }
    }
}
