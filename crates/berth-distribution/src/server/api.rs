//! The distribution API's endpoints over a storage [`Driver`].
//!
//! Keys: `blobs/<alg>/<hex>` (one copy of each blob, visible only once its digest is
//! verified, by rename), `uploads/<id>` (upload sessions; they survive a restart), and per
//! repository `repositories/<name>/` with `_layers/<alg>/<hex>` (the blobs it may see),
//! `_manifests/revisions/<alg>/<hex>` (its manifests; the link holds the media type),
//! `_manifests/tags/<tag>` (a digest) and `_referrers/<alg>/<hex>/<alg>-<hex>` (the
//! descriptor of a manifest whose subject is that digest).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_types::digest::{Algorithm, Hasher};
use berth_types::Digest;
use futures_util::StreamExt;
use serde_json::json;

use super::auth::Need;
use super::metrics::Metrics;
use super::storage::Driver;

/// An error in the distribution spec's shape.
pub struct RegError(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for RegError {
    fn into_response(self) -> Response {
        let body = json!({"errors": [{"code": self.1, "message": self.2, "detail": null}]});
        (self.0, axum::Json(body)).into_response()
    }
}

pub type Result<T> = std::result::Result<T, RegError>;

fn internal(e: impl std::fmt::Display) -> RegError {
    RegError(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string())
}

fn upload_unknown() -> RegError {
    RegError(
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
        "blob upload unknown to registry".into(),
    )
}

fn blob_unknown(d: &Digest) -> RegError {
    RegError(
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
        format!("blob unknown to registry: {d}"),
    )
}

fn unsupported() -> RegError {
    RegError(
        StatusCode::METHOD_NOT_ALLOWED,
        "UNSUPPORTED",
        "the operation is unsupported".into(),
    )
}

/// Repository names as the spec allows them: path components of lowercase alphanumerics
/// joined by `.`, `_`, `__` or runs of `-`.
pub fn valid_name(n: &str) -> bool {
    fn component(p: &str) -> bool {
        let b = p.as_bytes();
        if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric()
        {
            return false;
        }
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'a'..=b'z' | b'0'..=b'9' => i += 1,
                b'.' | b'_' => {
                    // `.`, `_` or `__`, then an alphanumeric.
                    let run = b[i..].iter().take_while(|&&c| c == b'_').count();
                    let step = if b[i] == b'.' { 1 } else { run };
                    if step > 2 || !b.get(i + step).is_some_and(u8::is_ascii_alphanumeric) {
                        return false;
                    }
                    i += step;
                }
                b'-' => {
                    let run = b[i..].iter().take_while(|&&c| c == b'-').count();
                    if !b.get(i + run).is_some_and(u8::is_ascii_alphanumeric) {
                        return false;
                    }
                    i += run;
                }
                _ => return false,
            }
        }
        true
    }
    !n.is_empty() && n.len() <= 255 && n.split('/').all(component)
}

pub fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

pub fn blob_key(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().as_str(), d.hex())
}

pub fn repo_key(name: &str) -> String {
    format!("repositories/{name}")
}

pub fn layer_key(name: &str, d: &Digest) -> String {
    format!(
        "repositories/{name}/_layers/{}/{}",
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn revision_key(name: &str, d: &Digest) -> String {
    format!(
        "repositories/{name}/_manifests/revisions/{}/{}",
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn tag_key(name: &str, tag: &str) -> String {
    format!("repositories/{name}/_manifests/tags/{tag}")
}

fn referrers_key(name: &str, subject: &Digest) -> String {
    format!(
        "repositories/{name}/_referrers/{}/{}",
        subject.algorithm().as_str(),
        subject.hex()
    )
}

fn referrer_key(name: &str, subject: &Digest, m: &Digest) -> String {
    format!(
        "{}/{}-{}",
        referrers_key(name, subject),
        m.algorithm().as_str(),
        m.hex()
    )
}

fn upload_key(id: &str) -> String {
    format!("uploads/{id}")
}

/// What an upload has hashed so far, so its PUT needs no second read of the data.
struct Progress {
    len: u64,
    hash: Hasher,
}

type Session = Arc<tokio::sync::Mutex<Option<Progress>>>;

pub struct Registry {
    pub store: Arc<dyn Driver>,
    pub readonly: bool,
    pub blob_limit: Option<u64>,
    pub manifest_limit: u64,
    pub metrics: Metrics,
    /// Upload sessions in this process; one request at a time appends to each.
    sessions: Mutex<HashMap<String, Session>>,
}

pub fn uuid() -> String {
    let mut b = [0u8; 16];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    hex::encode(b)
}

/// A query parameter, percent-decoded.
pub fn query(raw: Option<&str>, key: &str) -> Option<String> {
    query_all(raw, key).into_iter().next()
}

pub fn query_all(raw: Option<&str>, key: &str) -> Vec<String> {
    let Some(raw) = raw else {
        return Vec::new();
    };
    raw.split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then(|| percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 3 <= b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_digest(s: &str) -> Result<Digest> {
    s.parse().map_err(|_| {
        RegError(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!("invalid digest {s:?}"),
        )
    })
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

fn upload_response(status: StatusCode, name: &str, id: &str, size: u64) -> Response {
    let mut r = status.into_response();
    let h = r.headers_mut();
    h.insert(
        header::LOCATION,
        hv(&format!("/v2/{name}/blobs/uploads/{id}")),
    );
    h.insert("Docker-Upload-UUID", hv(id));
    h.insert(header::RANGE, hv(&format!("0-{}", size.saturating_sub(1))));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}

/// 201 with the new object's location and digest.
fn created(location: &str, d: &Digest) -> Response {
    let mut r = StatusCode::CREATED.into_response();
    r.headers_mut().insert(header::LOCATION, hv(location));
    r.headers_mut()
        .insert("Docker-Content-Digest", hv(&d.to_string()));
    r
}

fn blob_created(name: &str, d: &Digest) -> Response {
    created(&format!("/v2/{name}/blobs/{d}"), d)
}

/// Reads a stored object on a blocking thread and hashes it.
async fn rehash(store: Arc<dyn Driver>, key: String, alg: Algorithm) -> Result<(u64, Hasher)> {
    tokio::task::spawn_blocking(move || {
        let mut r = store.reader(&key, 0)?;
        let mut h = Hasher::new(alg);
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = r.read(&mut buf)?;
            if k == 0 {
                return Ok::<_, std::io::Error>((n, h));
            }
            h.update(&buf[..k]);
            n += k as u64;
        }
    })
    .await
    .map_err(internal)?
    .map_err(internal)
}

/// An object's bytes from `offset`, `len` of them, from the driver's mapping of it (sent
/// by sendfile on plain connections, see `zerocopy`).
fn mapped_body(store: &dyn Driver, key: &str, offset: u64, len: u64) -> Result<Body> {
    let b = store.map(key).map_err(internal)?;
    let (a, n) = (offset as usize, len as usize);
    if a + n > b.len() {
        return Err(internal(format!("{key}: shorter than its size")));
    }
    Ok(Body::from(b.slice(a..a + n)))
}

/// What a request does, for auth, metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Base,
    Catalog,
    Tags,
    Manifest,
    Blob,
    Upload,
    Referrers,
    Search,
    Token,
    Metrics,
    Other,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags => "tags",
            Route::Manifest => "manifest",
            Route::Blob => "blob",
            Route::Upload => "upload",
            Route::Referrers => "referrers",
            Route::Search => "search",
            Route::Token => "token",
            Route::Metrics => "metrics",
            Route::Other => "other",
        }
    }
}

/// A `/v2/…` path taken apart: the route and the repository it names.
pub fn classify(rest: &str) -> (Route, Option<&str>) {
    if rest.is_empty() {
        return (Route::Base, None);
    }
    if rest == "_catalog" {
        return (Route::Catalog, None);
    }
    if let Some((name, _)) = rest.rsplit_once("/referrers/") {
        return (Route::Referrers, Some(name));
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return (Route::Tags, Some(name));
    }
    if let Some((name, _)) = rest.split_once("/blobs/uploads") {
        return (Route::Upload, Some(name));
    }
    if let Some((name, _)) = rest.rsplit_once("/blobs/") {
        return (Route::Blob, Some(name));
    }
    if let Some((name, _)) = rest.rsplit_once("/manifests/") {
        return (Route::Manifest, Some(name));
    }
    (Route::Other, None)
}

/// What a request needs to be allowed.
pub fn needs(route: Route, method: &Method, name: Option<&str>, q: Option<&str>) -> Vec<Need> {
    let Some(name) = name else {
        return match route {
            Route::Catalog => vec![Need::catalog()],
            _ => vec![],
        };
    };
    let action = match *method {
        Method::GET | Method::HEAD => "pull",
        Method::DELETE if route != Route::Upload => "delete",
        _ => "push",
    };
    let mut v = vec![Need::repo(name, action)];
    if action == "push" && route == Route::Manifest {
        // Docker asks for both when it pushes; a push that may not pull is odd anyway.
        v.insert(0, Need::repo(name, "pull"));
    }
    if route == Route::Upload && *method == Method::POST {
        if let Some(from) = query(q, "from").filter(|f| valid_name(f) && f != name) {
            v.push(Need::repo(&from, "pull"));
        }
    }
    v
}

impl Registry {
    pub fn new(store: Arc<dyn Driver>) -> Registry {
        Registry {
            store,
            readonly: false,
            blob_limit: None,
            manifest_limit: 4 << 20,
            metrics: Metrics::default(),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn exists(&self, key: &str) -> bool {
        self.store.size(key).is_ok()
    }

    /// A blob this repository may see (pushed to it, mounted into it, or a manifest of it).
    pub fn visible(&self, name: &str, d: &Digest) -> bool {
        (self.exists(&layer_key(name, d)) || self.exists(&revision_key(name, d)))
            && self.exists(&blob_key(d))
    }

    fn session(&self, id: &str) -> Session {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    fn end_session(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    fn discard_upload(&self, id: &str) {
        let _ = self.store.delete(&upload_key(id));
        self.end_session(id);
    }

    /// The upload's progress, hashing what is stored when this process has not seen it all
    /// (a restart, or a request that broke off).
    async fn progress(&self, id: &str, p: &mut Option<Progress>) -> Result<u64> {
        let size = self
            .store
            .size(&upload_key(id))
            .map_err(|_| upload_unknown())?;
        if p.as_ref().map(|p| p.len) != Some(size) {
            let (len, hash) = rehash(self.store.clone(), upload_key(id), Algorithm::Sha256).await?;
            *p = Some(Progress { len, hash });
        }
        Ok(size)
    }

    /// Streams a request body onto the end of the upload. Every chunk written is counted in
    /// the progress before the next is read, so a body that breaks off leaves an upload
    /// that resumes where it stopped.
    async fn append(&self, id: &str, p: &mut Option<Progress>, body: Body) -> Result<u64> {
        self.progress(id, p).await?;
        let progress = p.as_mut().expect("set by progress");
        let mut w = self
            .store
            .append(&upload_key(id))
            .map_err(|_| upload_unknown())?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                RegError(
                    StatusCode::BAD_REQUEST,
                    "BLOB_UPLOAD_INVALID",
                    e.to_string(),
                )
            })?;
            if let Some(limit) = self.blob_limit {
                if progress.len + chunk.len() as u64 > limit {
                    drop(w);
                    self.discard_upload(id);
                    return Err(too_large(limit));
                }
            }
            w.write_all(&chunk).map_err(internal)?;
            progress.hash.update(&chunk);
            progress.len += chunk.len() as u64;
            self.metrics
                .received
                .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        w.flush().map_err(internal)?;
        Ok(progress.len)
    }

    /// Moves a finished upload into the blob store once its digest checks out; a wrong
    /// digest ends the upload and stores nothing.
    async fn commit(
        &self,
        name: &str,
        id: &str,
        p: &mut Option<Progress>,
        want: &Digest,
    ) -> Result<()> {
        self.progress(id, p).await?;
        let progress = p.take().expect("set by progress");
        let got = if want.algorithm() == Algorithm::Sha256 {
            progress.hash.finish()
        } else {
            rehash(self.store.clone(), upload_key(id), want.algorithm())
                .await?
                .1
                .finish()
        };
        if &got != want {
            self.discard_upload(id);
            return Err(RegError(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                format!("provided digest {want} does not match the content ({got})"),
            ));
        }
        let key = upload_key(id);
        if self.exists(&blob_key(want)) {
            let _ = self.store.delete(&key);
        } else {
            // Durable before it is visible: a blob under its digest is always complete.
            self.store.sync(&key).map_err(internal)?;
            self.store.rename(&key, &blob_key(want)).map_err(internal)?;
        }
        self.end_session(id);
        self.metrics
            .blobs_committed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.store
            .put(&layer_key(name, want), b"")
            .map_err(internal)
    }
}

fn too_large(limit: u64) -> RegError {
    RegError(
        StatusCode::PAYLOAD_TOO_LARGE,
        "SIZE_INVALID",
        format!("upload is larger than this registry's limit of {limit} bytes"),
    )
}

fn check_name(name: &str) -> Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(RegError(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            format!("invalid repository name {name:?}"),
        ))
    }
}

/// A `Range` header against an object of `size` bytes: `Some(Ok((a, b)))` for the bytes
/// to send, `Some(Err(()))` when nothing of it can be (416), `None` to send it all (no
/// header, or a form this server does not do, such as several ranges).
fn parse_range(r: Option<&str>, size: u64) -> Option<std::result::Result<(u64, u64), ()>> {
    let spec = r?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        // The last b bytes.
        let n: u64 = b.parse().ok()?;
        if n == 0 || size == 0 {
            return Some(Err(()));
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let a: u64 = a.parse().ok()?;
        let b: u64 = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse().ok()?
        };
        if a >= size || b < a {
            return Some(Err(()));
        }
        (a, b.min(size - 1))
    };
    Some(Ok(range))
}

/// The request, taken apart.
pub struct Req<'a> {
    pub method: &'a Method,
    pub rest: &'a str,
    pub q: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The caller may read the repository a mount names.
    pub mount: bool,
    /// Auth is on and refuses anonymous mounts of blobs from unnamed repositories.
    pub mount_anywhere: bool,
}

pub async fn dispatch(reg: &Registry, req: Req<'_>, body: Body) -> Result<Response> {
    let Req {
        method,
        rest,
        q,
        headers,
        ..
    } = req;
    let writes = !matches!(*method, Method::GET | Method::HEAD);
    let (route, name) = classify(rest);
    if let Some(n) = name {
        check_name(n)?;
    }
    if writes && reg.readonly && route != Route::Other {
        return Err(unsupported());
    }
    let name = name.unwrap_or_default();
    match route {
        Route::Catalog if *method == Method::GET => catalog(reg, q),
        Route::Referrers if *method == Method::GET => {
            let (_, d) = rest.rsplit_once("/referrers/").unwrap_or_default();
            referrers(reg, name, &parse_digest(d)?, q)
        }
        Route::Tags if *method == Method::GET => tags(reg, name, q),
        Route::Upload => {
            let id = rest
                .split_once("/blobs/uploads")
                .map(|(_, id)| id.trim_start_matches('/'))
                .unwrap_or_default();
            let cr = headers
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok());
            let len = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let q = if req.mount { q } else { None };
            uploads(reg, method, name, id, q, cr, len, req.mount_anywhere, body).await
        }
        Route::Blob => {
            let (_, d) = rest.rsplit_once("/blobs/").unwrap_or_default();
            let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
            blob(reg, method, name, &parse_digest(d)?, range)
        }
        Route::Manifest => {
            let (_, reference) = rest.rsplit_once("/manifests/").unwrap_or_default();
            manifest(reg, method, name, reference, q, headers, body).await
        }
        Route::Other => Err(RegError(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("unknown path /v2/{rest}"),
        )),
        _ => Err(unsupported()),
    }
}

fn blob(
    reg: &Registry,
    method: &Method,
    name: &str,
    d: &Digest,
    range: Option<&str>,
) -> Result<Response> {
    if !reg.visible(name, d) {
        return Err(blob_unknown(d));
    }
    let key = blob_key(d);
    let size = reg.store.size(&key).map_err(|_| blob_unknown(d))?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert("Docker-Content-Digest", hv(&d.to_string()));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::ETAG, hv(&format!("\"{d}\"")));
    match *method {
        Method::HEAD => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            Ok((headers, Body::empty()).into_response())
        }
        Method::GET => match parse_range(range, size) {
            Some(Ok((a, b))) => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(b - a + 1));
                headers.insert(header::CONTENT_RANGE, hv(&format!("bytes {a}-{b}/{size}")));
                let body = mapped_body(&*reg.store, &key, a, b - a + 1)?;
                Ok((StatusCode::PARTIAL_CONTENT, headers, body).into_response())
            }
            Some(Err(())) => {
                let mut r = RegError(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "BLOB_UNKNOWN",
                    format!("range not satisfiable in {size} bytes"),
                )
                .into_response();
                r.headers_mut()
                    .insert(header::CONTENT_RANGE, hv(&format!("bytes */{size}")));
                Ok(r)
            }
            None => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
                let body = mapped_body(&*reg.store, &key, 0, size)?;
                Ok((headers, body).into_response())
            }
        },
        Method::DELETE => {
            reg.store
                .delete(&layer_key(name, d))
                .map_err(|_| blob_unknown(d))?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        _ => Err(unsupported()),
    }
}

/// Where a chunk says it starts: `Content-Range: <start>-<end>` (with or without `bytes `).
fn chunk_start(cr: &str) -> Option<(u64, Option<u64>)> {
    let cr = cr.trim().trim_start_matches("bytes").trim();
    let (a, b) = cr.split_once('-')?;
    let b = b.split('/').next().unwrap_or("").trim();
    Some((a.trim().parse().ok()?, b.parse().ok()))
}

#[allow(clippy::too_many_arguments)]
async fn uploads(
    reg: &Registry,
    method: &Method,
    name: &str,
    id: &str,
    q: Option<&str>,
    content_range: Option<&str>,
    content_length: Option<u64>,
    mount_anywhere: bool,
    body: Body,
) -> Result<Response> {
    if let (Some(limit), Some(n)) = (reg.blob_limit, content_length) {
        if n > limit {
            if !id.is_empty() {
                reg.discard_upload(id);
            }
            return Err(too_large(limit));
        }
    }
    if id.is_empty() {
        if *method != Method::POST {
            return Err(unsupported());
        }
        // A cross-repository mount: from a named repository, or (without auth) from
        // wherever the blob already is.
        if let Some(m) = query(q, "mount") {
            let d = parse_digest(&m)?;
            let from = query(q, "from");
            let ok = match &from {
                Some(f) => valid_name(f) && reg.visible(f, &d),
                None => mount_anywhere && reg.exists(&blob_key(&d)),
            };
            if ok {
                reg.store.put(&layer_key(name, &d), b"").map_err(internal)?;
                return Ok(blob_created(name, &d));
            }
        }
        let id = uuid();
        reg.store.create(&upload_key(&id)).map_err(internal)?;
        reg.metrics
            .uploads_started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Monolithic: the whole blob in this request.
        if let Some(d) = query(q, "digest") {
            let d = parse_digest(&d)?;
            let session = reg.session(&id);
            let mut p = session.lock().await;
            reg.append(&id, &mut p, body).await?;
            reg.commit(name, &id, &mut p, &d).await?;
            return Ok(blob_created(name, &d));
        }
        return Ok(upload_response(StatusCode::ACCEPTED, name, &id, 0));
    }
    if !id.bytes().all(|b| b.is_ascii_hexdigit()) || id.len() != 32 {
        return Err(upload_unknown());
    }
    let session = reg.session(id);
    let mut p = session.lock().await;
    match *method {
        Method::PATCH | Method::PUT => {
            // Chunks in order only: a Content-Range must start where the upload ends.
            if let Some(cr) = content_range {
                let have = reg.progress(id, &mut p).await?;
                let fits = match chunk_start(cr) {
                    Some((start, end)) => {
                        start == have
                            && end.is_none_or(|e| {
                                e >= start && content_length.is_none_or(|n| n == e - start + 1)
                            })
                    }
                    None => false,
                };
                if !fits {
                    let mut r = RegError(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        "BLOB_UPLOAD_INVALID",
                        format!("chunk {cr} does not follow the {have} bytes uploaded"),
                    )
                    .into_response();
                    let h = r.headers_mut();
                    h.insert(header::RANGE, hv(&format!("0-{}", have.saturating_sub(1))));
                    h.insert(
                        header::LOCATION,
                        hv(&format!("/v2/{name}/blobs/uploads/{id}")),
                    );
                    h.insert("Docker-Upload-UUID", hv(id));
                    return Ok(r);
                }
            }
            if *method == Method::PATCH {
                let n = reg.append(id, &mut p, body).await?;
                return Ok(upload_response(StatusCode::ACCEPTED, name, id, n));
            }
            let d = parse_digest(&query(q, "digest").unwrap_or_default())?;
            reg.append(id, &mut p, body).await?;
            reg.commit(name, id, &mut p, &d).await?;
            Ok(blob_created(name, &d))
        }
        Method::GET => {
            let n = reg
                .store
                .size(&upload_key(id))
                .map_err(|_| upload_unknown())?;
            Ok(upload_response(StatusCode::NO_CONTENT, name, id, n))
        }
        Method::DELETE => {
            reg.store
                .delete(&upload_key(id))
                .map_err(|_| upload_unknown())?;
            drop(p);
            reg.end_session(id);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(unsupported()),
    }
}

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The media type of a manifest: the PUT's Content-Type, else its own `mediaType`, else an
/// OCI manifest or index by shape.
fn media_type(headers: &HeaderMap, v: &serde_json::Value) -> Result<String> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
        .filter(|c| c.contains("manifest") || c.contains("index"));
    let own = v["mediaType"].as_str();
    match (ct, own) {
        (Some(ct), Some(own)) if ct != own => Err(RegError(
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
            format!("manifest invalid: its mediaType {own} is not the Content-Type {ct}"),
        )),
        (Some(ct), _) => Ok(ct),
        (None, Some(own)) => Ok(own.to_string()),
        (None, None) if v["manifests"].is_array() => Ok(INDEX.into()),
        (None, None) => Ok("application/vnd.oci.image.manifest.v1+json".into()),
    }
}

/// Layers that need not be in the registry: foreign (Docker) or non-distributable (OCI)
/// ones, which name where they are fetched from instead.
fn foreign(desc: &serde_json::Value) -> bool {
    let t = desc["mediaType"].as_str().unwrap_or_default();
    t.contains("foreign") || t.contains("nondistributable")
}

fn manifest_invalid(msg: String) -> RegError {
    RegError(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", msg)
}

async fn manifest(
    reg: &Registry,
    method: &Method,
    name: &str,
    reference: &str,
    q: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let unknown = || {
        RegError(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("manifest unknown: {name}:{reference}"),
        )
    };
    let by_digest = reference.contains(':');
    if !by_digest && !valid_tag(reference) {
        return Err(RegError(
            StatusCode::BAD_REQUEST,
            "TAG_INVALID",
            format!("invalid tag {reference:?}"),
        ));
    }
    if *method == Method::PUT {
        return put_manifest(reg, name, reference, by_digest, q, headers, body).await;
    }
    let d = if by_digest {
        parse_digest(reference)?
    } else {
        let text = reg
            .store
            .get(&tag_key(name, reference))
            .map_err(|_| unknown())?;
        parse_digest(String::from_utf8_lossy(&text).trim())?
    };
    let kind = reg
        .store
        .get(&revision_key(name, &d))
        .map_err(|_| unknown())?;
    let kind = String::from_utf8_lossy(&kind).into_owned();
    match *method {
        Method::DELETE => {
            if !by_digest {
                reg.store
                    .delete(&tag_key(name, reference))
                    .map_err(|_| unknown())?;
                return Ok(StatusCode::ACCEPTED.into_response());
            }
            // Its entry in its subject's referrers goes with it.
            if let Ok(bytes) = reg.store.get(&blob_key(&d)) {
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                if let Some(s) = v["subject"]["digest"].as_str().and_then(|s| s.parse().ok()) {
                    let _ = reg.store.delete(&referrer_key(name, &s, &d));
                }
            }
            reg.store
                .delete(&revision_key(name, &d))
                .map_err(|_| unknown())?;
            // Tags pointing at it go too.
            let tags = format!("{}/_manifests/tags", repo_key(name));
            for t in reg.store.list(&tags).unwrap_or_default() {
                let key = format!("{tags}/{t}");
                if reg
                    .store
                    .get(&key)
                    .is_ok_and(|b| String::from_utf8_lossy(&b).trim() == d.to_string())
                {
                    let _ = reg.store.delete(&key);
                }
            }
            Ok(StatusCode::ACCEPTED.into_response())
        }
        Method::GET | Method::HEAD => {
            let bytes = reg.store.get(&blob_key(&d)).map_err(|_| unknown())?;
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, hv(&kind));
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            h.insert("Docker-Content-Digest", hv(&d.to_string()));
            h.insert(header::ETAG, hv(&format!("\"{d}\"")));
            let body = if *method == Method::GET {
                Body::from(bytes)
            } else {
                Body::empty()
            };
            Ok((h, body).into_response())
        }
        _ => Err(unsupported()),
    }
}

async fn put_manifest(
    reg: &Registry,
    name: &str,
    reference: &str,
    by_digest: bool,
    q: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let limit = reg.manifest_limit;
    let bytes: Bytes = axum::body::to_bytes(body, limit as usize)
        .await
        .map_err(|_| {
            RegError(
                StatusCode::PAYLOAD_TOO_LARGE,
                "SIZE_INVALID",
                format!("manifest is larger than this registry's limit of {limit} bytes"),
            )
        })?;
    reg.metrics
        .received
        .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
    // The digest first: a reference that is no digest is refused before anything else.
    let d = if by_digest {
        let want = parse_digest(reference)?;
        let mut h = Hasher::new(want.algorithm());
        h.update(&bytes);
        let got = h.finish();
        if got != want {
            return Err(RegError(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                format!("manifest digest {want} does not match the content ({got})"),
            ));
        }
        got
    } else {
        Digest::sha256(&bytes)
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| manifest_invalid(format!("manifest invalid: {e}")))?;
    if !v.is_object() {
        return Err(manifest_invalid(
            "manifest invalid: not a JSON object".into(),
        ));
    }
    if v["schemaVersion"] != 2 {
        return Err(manifest_invalid(
            "manifest invalid: only schemaVersion 2 manifests are accepted".into(),
        ));
    }
    let kind = media_type(headers, &v)?;
    let is_index = kind == INDEX || kind == DOCKER_LIST || v["manifests"].is_array();
    // Everything it refers to must already be here.
    let mut refs: Vec<&serde_json::Value> = Vec::new();
    if !is_index {
        let config = v
            .get("config")
            .filter(|c| c.is_object())
            .ok_or_else(|| manifest_invalid("manifest invalid: no config".into()))?;
        refs.push(config);
        refs.extend(
            v["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|l| !foreign(l)),
        );
    } else {
        refs.extend(v["manifests"].as_array().into_iter().flatten());
    }
    for r in refs {
        let rd = parse_digest(r["digest"].as_str().unwrap_or_default())?;
        if !reg.visible(name, &rd) {
            let code = if is_index {
                "MANIFEST_UNKNOWN"
            } else {
                "MANIFEST_BLOB_UNKNOWN"
            };
            return Err(RegError(
                StatusCode::BAD_REQUEST,
                code,
                format!("blob unknown to registry: {rd}"),
            ));
        }
    }
    let key = blob_key(&d);
    if !reg.exists(&key) {
        reg.store.put(&key, &bytes).map_err(internal)?;
    }
    reg.store
        .put(&revision_key(name, &d), kind.as_bytes())
        .map_err(internal)?;
    let mut tags: Vec<String> = query_all(q, "tag");
    if !by_digest {
        tags.insert(0, reference.to_string());
    }
    for t in &tags {
        if !valid_tag(t) {
            return Err(RegError(
                StatusCode::BAD_REQUEST,
                "TAG_INVALID",
                format!("invalid tag {t:?}"),
            ));
        }
    }
    for t in &tags {
        reg.store
            .put(&tag_key(name, t), d.to_string().as_bytes())
            .map_err(internal)?;
    }
    let mut r = created(&format!("/v2/{name}/manifests/{d}"), &d);
    if by_digest && !tags.is_empty() {
        r.headers_mut().insert("OCI-Tag", hv(&tags.join(",")));
    }
    // A manifest with a subject is one of its referrers (the subject need not exist).
    if let Some(subject) = v["subject"]["digest"].as_str() {
        let sd = parse_digest(subject)?;
        let artifact = v["artifactType"].as_str().or_else(|| {
            (!is_index)
                .then(|| v["config"]["mediaType"].as_str())
                .flatten()
        });
        let mut desc = json!({"mediaType": kind, "digest": d.to_string(), "size": bytes.len()});
        if let Some(a) = artifact {
            desc["artifactType"] = json!(a);
        }
        if v["annotations"].is_object() {
            desc["annotations"] = v["annotations"].clone();
        }
        reg.store
            .put(&referrer_key(name, &sd, &d), desc.to_string().as_bytes())
            .map_err(internal)?;
        r.headers_mut().insert("OCI-Subject", hv(&sd.to_string()));
    }
    Ok(r)
}

/// `GET /v2/<name>/referrers/<digest>`: an OCI index of the manifests whose subject it is,
/// filtered by `artifactType` when asked.
fn referrers(reg: &Registry, name: &str, subject: &Digest, q: Option<&str>) -> Result<Response> {
    let dir = referrers_key(name, subject);
    let want = query(q, "artifactType");
    let mut manifests: Vec<serde_json::Value> = reg
        .store
        .list(&dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|f| reg.store.get(&format!("{dir}/{f}")).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    if let Some(t) = &want {
        manifests.retain(|m| m["artifactType"].as_str() == Some(t.as_str()));
    }
    let body = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests});
    let mut r = axum::Json(body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(INDEX));
    if want.is_some() {
        r.headers_mut().insert(
            "OCI-Filters-Applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(r)
}

/// A page of a sorted list: `n` entries after `last`, and the `Link` to the next page.
fn page(all: Vec<String>, q: Option<&str>, path: &str) -> Result<(Vec<String>, Option<String>)> {
    let last = query(q, "last");
    let mut items: Vec<String> = match &last {
        Some(l) => all.into_iter().filter(|t| t > l).collect(),
        None => all,
    };
    let Some(n) = query(q, "n") else {
        return Ok((items, None));
    };
    let n: usize = n.parse().map_err(|_| {
        RegError(
            StatusCode::BAD_REQUEST,
            "PAGINATION_NUMBER_INVALID",
            format!("invalid number of results requested: {n}"),
        )
    })?;
    let more = items.len() > n;
    items.truncate(n);
    let link = match (more, items.last()) {
        (true, Some(l)) => Some(format!("<{path}?n={n}&last={l}>; rel=\"next\"")),
        _ => None,
    };
    Ok((items, link))
}

fn with_link(mut r: Response, link: Option<String>) -> Response {
    if let Some(l) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        r.headers_mut().insert(header::LINK, l);
    }
    r
}

fn tags(reg: &Registry, name: &str, q: Option<&str>) -> Result<Response> {
    let repo = reg.store.list(&repo_key(name)).unwrap_or_default();
    if repo.is_empty() {
        return Err(RegError(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("repository name not known to registry: {name}"),
        ));
    }
    let all = reg
        .store
        .list(&format!("{}/_manifests/tags", repo_key(name)))
        .unwrap_or_default();
    let (tags, link) = page(all, q, &format!("/v2/{name}/tags/list"))?;
    Ok(with_link(
        axum::Json(json!({"name": name, "tags": tags})).into_response(),
        link,
    ))
}

/// Every repository: a path below `repositories/` that has something of its own.
pub fn repositories(store: &dyn Driver) -> Vec<String> {
    fn walk(store: &dyn Driver, rel: &str, out: &mut Vec<String>) {
        let key = if rel.is_empty() {
            "repositories".to_string()
        } else {
            format!("repositories/{rel}")
        };
        let children = store.list(&key).unwrap_or_default();
        if !rel.is_empty() && children.iter().any(|c| c.starts_with('_')) {
            out.push(rel.to_string());
        }
        for c in children.iter().filter(|c| !c.starts_with('_')) {
            let r = if rel.is_empty() {
                c.clone()
            } else {
                format!("{rel}/{c}")
            };
            walk(store, &r, out);
        }
    }
    let mut repos = Vec::new();
    walk(store, "", &mut repos);
    repos.sort();
    repos
}

/// The catalog, as far as `may_pull` lets the caller see it.
pub fn catalog_filtered(
    reg: &Registry,
    q: Option<&str>,
    may_pull: &dyn Fn(&str) -> bool,
) -> Result<Response> {
    let repos = repositories(&*reg.store)
        .into_iter()
        .filter(|r| may_pull(r))
        .collect();
    let (repos, link) = page(repos, q, "/v2/_catalog")?;
    Ok(with_link(
        axum::Json(json!({"repositories": repos})).into_response(),
        link,
    ))
}

fn catalog(reg: &Registry, q: Option<&str>) -> Result<Response> {
    catalog_filtered(reg, q, &|_| true)
}

/// `GET /v1/search?q=&n=&page=`: repositories whose names contain `q` that the caller may
/// pull, in Docker Hub's answer shape, so `docker search`-style clients work against a
/// private registry.
pub fn search(reg: &Registry, q: Option<&str>, may_pull: &dyn Fn(&str) -> bool) -> Response {
    let term = query(q, "q").unwrap_or_default();
    let size: usize = query(q, "n")
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(25)
        .min(100);
    let page: usize = query(q, "page")
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1);
    let hits: Vec<String> = repositories(&*reg.store)
        .into_iter()
        .filter(|r| r.contains(term.as_str()) && may_pull(r))
        .collect();
    let results: Vec<serde_json::Value> = hits
        .iter()
        .skip((page - 1) * size)
        .take(size)
        .map(|name| {
            json!({"name": name, "description": "", "star_count": 0,
            "is_official": false, "is_automated": false})
        })
        .collect();
    axum::Json(json!({
        "query": term, "num_results": hits.len(), "num_pages": hits.len().div_ceil(size),
        "page": page, "page_size": size, "results": results
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags() {
        for ok in [
            "library/busybox",
            "a.b-c_d/e",
            "a__b",
            "a--b",
            "x/y/z",
            "a0",
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "Upper", "a//b", "../x", "a/..", "-a", "a-", "a___b", "a..b", "a._b", "",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(!valid_name(&"a".repeat(256)));
        assert!(valid_tag("v1.2_3-x"));
        assert!(valid_tag("_x"));
        assert!(!valid_tag("-bad"));
        assert!(!valid_tag(""));
        assert!(!valid_tag(&"a".repeat(129)));
    }

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range(Some("bytes=500-1499"), 2048),
            Some(Ok((500, 1499)))
        );
        assert_eq!(parse_range(Some("bytes=500-"), 2048), Some(Ok((500, 2047))));
        assert_eq!(
            parse_range(Some("bytes=-500"), 2048),
            Some(Ok((1548, 2047)))
        );
        assert_eq!(
            parse_range(Some("bytes=2000-5000"), 2048),
            Some(Ok((2000, 2047)))
        );
        assert_eq!(parse_range(Some("bytes=500-0"), 2048), Some(Err(())));
        assert_eq!(parse_range(Some("bytes=5000-10000"), 2048), Some(Err(())));
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 2048), None);
        assert_eq!(parse_range(None, 2048), None);
    }

    #[test]
    fn queries_are_decoded() {
        let q = Some("mount=sha256%3Aab&from=a%2Fb&tag=x&tag=y&q=a+b");
        assert_eq!(query(q, "mount").unwrap(), "sha256:ab");
        assert_eq!(query(q, "from").unwrap(), "a/b");
        assert_eq!(query_all(q, "tag"), ["x", "y"]);
        assert_eq!(query(q, "q").unwrap(), "a b");
        assert_eq!(query(Some("x=%zz%4"), "x").unwrap(), "%zz%4");
    }
}
