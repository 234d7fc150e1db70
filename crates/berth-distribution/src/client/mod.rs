//! The registry client: pull, push and login against any registry that speaks the
//! distribution API, over HTTPS (the system's roots plus `certs.d`) or plain HTTP for
//! registries on this machine and `insecure-registries`, with bearer-token and basic auth.
//!
//! One [`Client`] lives in the daemon: it keeps a connection pool per registry, bearer
//! tokens per scope until they expire, and one lock per blob being downloaded, so two
//! pulls sharing a layer download it once. Partial downloads stay in the content store's
//! ingests and the next pull continues them with `Range`.

mod auth;
mod pull;
mod push;
mod query;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use berth_types::auth::AuthConfig;
use berth_types::Digest;
use reqwest::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::Value;

pub use auth::Challenge;
pub use pull::{familiar_name, Platform};
pub use query::{search_target, Resolved};

/// Progress lines in the shape `docker pull`/`push` print (`{"status":..., "id":...}`).
pub type Progress = Box<dyn Fn(Value) + Send + Sync>;

/// Docker Hub's API host for references on `docker.io`.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// What the daemon's configuration says about registries.
#[derive(Debug, Clone)]
pub struct Options {
    /// `insecure-registries`: `host[:port]` or IPv4 CIDRs (TLS unverified, plain HTTP
    /// allowed). Registries on 127.0.0.0/8, `localhost` and `::1` are always treated so.
    pub insecure: Vec<String>,
    /// `registry-mirrors`: URLs tried in order for `docker.io` pulls.
    pub mirrors: Vec<String>,
    /// `certs.d`: `<dir>/<host:port>/*.crt` are extra roots, `*.cert` + `*.key` a client
    /// certificate.
    pub certs_dir: Option<PathBuf>,
    /// Layers of one pull downloaded at once.
    pub max_downloads: usize,
    /// Layers of one push uploaded at once.
    pub max_uploads: usize,
    /// Attempts per request on connection errors and 5xx answers.
    pub attempts: u32,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            insecure: Vec::new(),
            mirrors: Vec::new(),
            certs_dir: None,
            max_downloads: 3,
            max_uploads: 5,
            attempts: 4,
        }
    }
}

/// A registry's address: the URL requests go to and the name tokens are asked for.
#[derive(Debug, Clone)]
struct Endpoint {
    /// `https://host:port` or `http://host:port`, no trailing slash.
    base: String,
    /// `host:port` (certs.d's directory name, credential lookups).
    host: String,
    http: reqwest::Client,
}

/// The registry client. Cheap to share (`Arc`); options can be replaced on reload.
pub struct Client {
    opts: RwLock<Options>,
    /// Per `host` (or mirror URL): the endpoint once the scheme is known.
    endpoints: Mutex<HashMap<String, Endpoint>>,
    /// Bearer tokens by (realm, service, scopes, user) with their expiry.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    /// One lock per blob being downloaded.
    downloads: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

impl Default for Client {
    fn default() -> Client {
        Client::new(Options::default())
    }
}

/// The registry's API host for a reference's domain.
pub fn api_host(domain: &str) -> &str {
    match domain {
        "docker.io" | "index.docker.io" => DOCKER_HUB_API,
        d => d,
    }
}

/// Whether `host` (`name[:port]`) is on this machine.
fn local(host: &str) -> bool {
    let h = strip_port(host);
    h == "localhost" || h == "[::1]" || h == "::1" || is_loopback_v4(h)
}

fn is_loopback_v4(h: &str) -> bool {
    h.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|ip| ip.is_loopback())
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Whether `ip` lies in the IPv4 CIDR `net` (`10.0.0.0/8`).
fn in_cidr(ip: &str, net: &str) -> bool {
    let (Some((base, bits)), Ok(ip)) = (net.split_once('/'), ip.parse::<std::net::Ipv4Addr>())
    else {
        return false;
    };
    let (Ok(base), Ok(bits)) = (base.parse::<std::net::Ipv4Addr>(), bits.parse::<u32>()) else {
        return false;
    };
    if bits > 32 {
        return false;
    }
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    u32::from(ip) & mask == u32::from(base) & mask
}

impl Client {
    pub fn new(opts: Options) -> Client {
        Client {
            opts: RwLock::new(opts),
            endpoints: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            downloads: Mutex::new(HashMap::new()),
        }
    }

    /// New options (a configuration reload); connections are made afresh.
    pub fn set_options(&self, opts: Options) {
        *self.opts.write().expect("options lock") = opts;
        self.endpoints.lock().expect("endpoints lock").clear();
    }

    fn options(&self) -> Options {
        self.opts.read().expect("options lock").clone()
    }

    /// Whether TLS is unverified and plain HTTP allowed for `host`.
    pub fn insecure(&self, host: &str) -> bool {
        if local(host) {
            return true;
        }
        let bare = strip_port(host);
        self.options()
            .insecure
            .iter()
            .any(|e| e == host || e == bare || in_cidr(bare, e))
    }

    fn http_client(&self, host: &str, insecure: bool) -> Result<reqwest::Client, String> {
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .pool_idle_timeout(Duration::from_secs(90));
        if insecure {
            b = b.danger_accept_invalid_certs(true);
        }
        // Proxies come from the environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), but never
        // for registries on this machine, as Go's clients (and so Docker) do.
        if local(host) {
            b = b.no_proxy();
        }
        if let Some(dir) = self.options().certs_dir {
            let dir = dir.join(host);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
            files.sort();
            for f in &files {
                let name = f.to_string_lossy();
                let read = || std::fs::read(f).map_err(|e| format!("reading {name}: {e}"));
                if name.ends_with(".crt") {
                    let cert = reqwest::Certificate::from_pem(&read()?)
                        .map_err(|e| format!("{name}: {e}"))?;
                    b = b.add_root_certificate(cert);
                } else if let Some(stem) = name.strip_suffix(".cert") {
                    let key = PathBuf::from(format!("{stem}.key"));
                    let mut pem = read()?;
                    pem.push(b'\n');
                    pem.extend(std::fs::read(&key).map_err(|e| {
                        format!(
                            "client certificate {name} needs its key {}: {e}",
                            key.display()
                        )
                    })?);
                    let id =
                        reqwest::Identity::from_pem(&pem).map_err(|e| format!("{name}: {e}"))?;
                    b = b.identity(id);
                }
            }
        }
        b.build()
            .map_err(|e| format!("setting up a client for {host}: {e}"))
    }

    /// The endpoint for `host`: HTTPS, or for insecure registries HTTPS if it answers
    /// and plain HTTP otherwise (as Docker does). `host` may be a mirror's URL.
    async fn endpoint(&self, host: &str) -> Result<Endpoint, String> {
        // certs.d is read again when its directory for the host changes (a CA added).
        let stamp = self
            .options()
            .certs_dir
            .and_then(|d| std::fs::metadata(d.join(host)).ok())
            .and_then(|m| m.modified().ok());
        let key = format!("{host}|{stamp:?}");
        if let Some(e) = self.endpoints.lock().expect("endpoints lock").get(&key) {
            return Ok(e.clone());
        }
        let e = if let Some(rest) = host
            .strip_prefix("https://")
            .or_else(|| host.strip_prefix("http://"))
        {
            // A mirror: the scheme is given.
            let name = rest.split('/').next().unwrap_or(rest).to_string();
            let insecure = self.insecure(&name);
            Endpoint {
                base: host.trim_end_matches('/').to_string(),
                http: self.http_client(&name, insecure)?,
                host: name,
            }
        } else if self.insecure(host) {
            let http = self.http_client(host, true)?;
            let https = format!("https://{host}");
            let probe = http
                .get(format!("{https}/v2/"))
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let base = match probe {
                Ok(_) => https,
                Err(e) if e.is_connect() || e.is_request() => format!("http://{host}"),
                Err(e) => return Err(format!("{https}/v2/: {}", error_text(&e))),
            };
            Endpoint {
                base,
                host: host.to_string(),
                http,
            }
        } else {
            Endpoint {
                base: format!("https://{host}"),
                host: host.to_string(),
                http: self.http_client(host, false)?,
            }
        };
        let mut endpoints = self.endpoints.lock().expect("endpoints lock");
        endpoints.retain(|k, _| !k.starts_with(&format!("{host}|")));
        endpoints.insert(key, e.clone());
        Ok(e)
    }

    /// A session with the registry at `host` for `scopes` (`repository:a/b:pull`), with
    /// these credentials.
    async fn session(
        self: &Arc<Self>,
        host: &str,
        scopes: Vec<String>,
        auth: &AuthConfig,
    ) -> Result<Session, String> {
        let endpoint = self.endpoint(host).await?;
        Ok(Session {
            client: self.clone(),
            endpoint,
            scopes,
            auth: auth.clone(),
            authorization: None,
            attempts: self.options().attempts.max(1),
        })
    }

    /// The lock a download of `digest` holds.
    fn download_lock(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.downloads.lock().expect("downloads lock");
        map.retain(|_, l| Arc::strong_count(l) > 1);
        map.entry(digest.clone()).or_default().clone()
    }

    /// `docker login`: checks `auth` against the registry at `server` (any of Docker's
    /// spellings: `host:port`, `https://host/v1/`, `docker.io`). Returns the identity
    /// token a token server handed out, if any.
    pub async fn login(
        self: &Arc<Self>,
        server: &str,
        auth: &AuthConfig,
    ) -> Result<String, String> {
        let host = login_host(server);
        let mut s = self.session(&host, Vec::new(), auth).await?;
        let resp = s.send(|c, base| c.get(format!("{base}/v2/")), true).await?;
        match resp.status() {
            s if s.is_success() => Ok(String::new()),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(format!(
                "login attempt to {}/v2/ failed with status: {}",
                s.endpoint.base,
                status_text(resp.status())
            )),
            st => Err(format!(
                "login attempt to {}/v2/ failed with status: {}",
                s.endpoint.base,
                status_text(st)
            )),
        }
    }
}

/// A server address as `docker login` takes it, as a registry host.
pub fn login_host(server: &str) -> String {
    let s = server
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let s = s.split('/').next().unwrap_or(s);
    if s.is_empty() {
        return DOCKER_HUB_API.to_string();
    }
    api_host(s).to_string()
}

/// `401 Unauthorized`, as Go prints a status.
fn status_text(s: StatusCode) -> String {
    format!("{} {}", s.as_u16(), s.canonical_reason().unwrap_or(""))
}

/// A reqwest error with its causes (reqwest's own text leaves them out).
fn error_text(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s = format!("{s}: {c}");
        }
        src = cause.source();
    }
    s
}

/// Requests to one registry for one set of scopes, answering its auth challenges.
struct Session {
    client: Arc<Client>,
    endpoint: Endpoint,
    scopes: Vec<String>,
    auth: AuthConfig,
    /// The `Authorization` value once a challenge was answered.
    authorization: Option<HeaderValue>,
    attempts: u32,
}

impl Session {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint.base)
    }

    /// Resolves an upload `Location` (absolute, or a path on this registry).
    fn resolve(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else if location.starts_with('/') {
            self.url(location)
        } else {
            format!("{}/{location}", self.endpoint.base)
        }
    }

    /// Sends the request `build` makes (again for each attempt): with the session's
    /// authorization, answering a 401 challenge once, and when `retry`, retrying
    /// connection errors and 5xx answers with doubling pauses.
    async fn send(
        &mut self,
        build: impl Fn(&reqwest::Client, &str) -> RequestBuilder,
        retry: bool,
    ) -> Result<Response, String> {
        if self.authorization.is_none() {
            self.authorization = self.cached_authorization();
        }
        let mut answered = false;
        let mut attempt = 1;
        loop {
            let mut rb = build(&self.endpoint.http, &self.endpoint.base);
            if let Some(a) = &self.authorization {
                rb = rb.header(AUTHORIZATION, a.clone());
            }
            let pause = Duration::from_millis(200 << attempt.min(6));
            match rb.send().await {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !answered => {
                    let challenge = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(Challenge::parse);
                    let Some(challenge) = challenge else {
                        return Ok(resp);
                    };
                    answered = true;
                    self.answer(&challenge).await?;
                }
                Ok(resp) if retry && resp.status().is_server_error() && attempt < self.attempts => {
                    tracing::debug!("{}: {}, retrying", resp.url(), resp.status());
                    attempt += 1;
                    tokio::time::sleep(pause).await;
                }
                Ok(resp) => return Ok(resp),
                Err(e) if retry && attempt < self.attempts && !e.is_builder() => {
                    tracing::debug!("{}, retrying", error_text(&e));
                    attempt += 1;
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(error_text(&e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_registries_are_local_or_listed() {
        let c = Client::new(Options {
            insecure: vec![
                "reg.example:5000".into(),
                "10.1.0.0/16".into(),
                "plain".into(),
            ],
            ..Options::default()
        });
        assert!(c.insecure("127.0.0.1:5000"));
        assert!(c.insecure("127.8.9.1"));
        assert!(c.insecure("localhost:5000"));
        assert!(c.insecure("localhost"));
        assert!(c.insecure("[::1]:5000"));
        assert!(c.insecure("reg.example:5000"));
        assert!(!c.insecure("reg.example:5001"));
        assert!(c.insecure("plain:443"));
        assert!(c.insecure("10.1.200.3:5000"));
        assert!(!c.insecure("10.2.0.1:5000"));
        assert!(!c.insecure("docker.io"));
        assert!(!c.insecure("127example.com"));
        assert!(!c.insecure("example.com:5000"));
    }

    #[test]
    fn docker_hub_and_login_spellings() {
        assert_eq!(api_host("docker.io"), DOCKER_HUB_API);
        assert_eq!(login_host("https://index.docker.io/v1/"), DOCKER_HUB_API);
        assert_eq!(login_host(""), DOCKER_HUB_API);
        assert_eq!(login_host("docker.io"), DOCKER_HUB_API);
        assert_eq!(login_host("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(login_host("http://127.0.0.1:5000/"), "127.0.0.1:5000");
    }

    #[test]
    fn cidrs() {
        assert!(in_cidr("192.168.1.7", "192.168.0.0/16"));
        assert!(!in_cidr("192.169.1.7", "192.168.0.0/16"));
        assert!(in_cidr("1.2.3.4", "0.0.0.0/0"));
        assert!(!in_cidr("host", "0.0.0.0/0"));
        assert!(!in_cidr("1.2.3.4", "1.2.3.4/33"));
    }
}
