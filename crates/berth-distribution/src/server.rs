//! `berth registry serve`: the OCI distribution API over a filesystem store (a first
//! slice: blobs, chunked and monolithic uploads, cross-repository mounts, manifests by tag
//! and digest, tag lists and the catalog).
//!
//! Layout under the root: `blobs/sha256/<hex>` (one copy of each blob, visible only once
//! its digest is verified, by rename), `uploads/<uuid>` (upload sessions; they survive a
//! restart), and per repository `repositories/<name>/{_layers,_manifests/revisions}/<alg>/<hex>`
//! links (a manifest's link holds its media type) and `_manifests/tags/<tag>` (its digest).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_types::Digest;
use futures_util::StreamExt;
use serde_json::json;

pub struct Registry {
    root: PathBuf,
}

type Shared = Arc<Registry>;

/// An error in the distribution spec's shape.
struct RegError(StatusCode, &'static str, String);

impl IntoResponse for RegError {
    fn into_response(self) -> Response {
        let body = json!({"errors": [{"code": self.1, "message": self.2, "detail": null}]});
        (self.0, axum::Json(body)).into_response()
    }
}

type Result<T> = std::result::Result<T, RegError>;

fn internal(e: impl std::fmt::Display) -> RegError {
    RegError(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string())
}

/// Repository names as the spec allows them.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 255
        && n.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
                && part.as_bytes()[0].is_ascii_alphanumeric()
                && part.as_bytes()[part.len() - 1].is_ascii_alphanumeric()
        })
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl Registry {
    pub fn open(root: &Path) -> std::io::Result<Registry> {
        for d in ["blobs/sha256", "uploads", "repositories"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        Ok(Registry {
            root: root.to_path_buf(),
        })
    }

    fn blob(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn repo(&self, name: &str) -> PathBuf {
        self.root.join("repositories").join(name)
    }

    fn layer_link(&self, name: &str, d: &Digest) -> PathBuf {
        self.repo(name)
            .join("_layers")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn revision(&self, name: &str, d: &Digest) -> PathBuf {
        self.repo(name)
            .join("_manifests/revisions")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    /// `manifest` names `subject` as its subject; the link holds its descriptor.
    fn referrer(&self, name: &str, subject: &Digest, manifest: &Digest) -> PathBuf {
        self.repo(name)
            .join("_referrers")
            .join(subject.hex())
            .join(manifest.hex())
    }

    fn tag_file(&self, name: &str, tag: &str) -> PathBuf {
        self.repo(name).join("_manifests/tags").join(tag)
    }

    fn link(&self, path: &Path, content: &str) -> std::io::Result<()> {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        berth_types::fs::atomic_write(path, content.as_bytes())
    }

    /// A blob this repository may see (pushed to it, mounted into it, or a manifest of it).
    fn visible(&self, name: &str, d: &Digest) -> bool {
        self.blob(d).exists()
            && (self.layer_link(name, d).exists() || self.revision(name, d).exists())
    }

    /// Moves a finished upload into the blob store once its digest checks out.
    fn commit_upload(&self, name: &str, upload: &Path, want: &Digest) -> Result<()> {
        let data = std::fs::read(upload).map_err(internal)?;
        let got = Digest::sha256(&data);
        if &got != want {
            return Err(RegError(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                format!("provided digest {want} does not match the content ({got})"),
            ));
        }
        let target = self.blob(want);
        // fsync before the rename: a blob visible under its digest is complete.
        std::fs::File::open(upload)
            .and_then(|f| f.sync_all())
            .map_err(internal)?;
        std::fs::rename(upload, &target).map_err(internal)?;
        self.link(&self.layer_link(name, want), "")
            .map_err(internal)
    }
}

fn uuid() -> String {
    let mut b = [0u8; 16];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    hex::encode(b)
}

fn query(raw: Option<&str>, key: &str) -> Option<String> {
    raw?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| {
            v.replace("%3A", ":")
                .replace("%3a", ":")
                .replace("%2F", "/")
                .replace("%2f", "/")
        })
    })
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

/// Streams a request body onto the end of `file`; returns the bytes written.
async fn append(file: &Path, body: Body) -> Result<u64> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(file)
        .map_err(|_| {
            RegError(
                StatusCode::NOT_FOUND,
                "BLOB_UPLOAD_UNKNOWN",
                "blob upload unknown to registry".into(),
            )
        })?;
    let mut n = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(internal)?;
        f.write_all(&chunk).map_err(internal)?;
        n += chunk.len() as u64;
    }
    Ok(n)
}

fn upload_response(status: StatusCode, name: &str, id: &str, size: u64) -> Response {
    let mut r = status.into_response();
    let h = r.headers_mut();
    let loc = format!("/v2/{name}/blobs/uploads/{id}");
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&loc).expect("ascii"),
    );
    h.insert(
        "Docker-Upload-UUID",
        HeaderValue::from_str(id).expect("ascii"),
    );
    let range = format!("0-{}", size.saturating_sub(1));
    h.insert(header::RANGE, HeaderValue::from_str(&range).expect("ascii"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}

fn blob_created(name: &str, d: &Digest) -> Response {
    created(&format!("/v2/{name}/blobs/{d}"), d)
}

/// 201 with the new object's location and digest.
fn created(location: &str, d: &Digest) -> Response {
    let mut r = StatusCode::CREATED.into_response();
    r.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(location).expect("ascii"),
    );
    r.headers_mut().insert(
        "Docker-Content-Digest",
        HeaderValue::from_str(&d.to_string()).expect("ascii"),
    );
    r
}

async fn api_base() -> Response {
    let mut r = axum::Json(json!({})).into_response();
    r.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    r
}

async fn dispatch(
    State(reg): State<Shared>,
    method: Method,
    UrlPath(rest): UrlPath<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let q = q.as_deref();
    if rest == "_catalog" && method == Method::GET {
        return catalog(&reg, q);
    }
    if let Some((name, d)) = rest.rsplit_once("/referrers/") {
        check_name(name)?;
        return referrers(&reg, name, &parse_digest(d)?, q);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        check_name(name)?;
        return tags(&reg, name, q);
    }
    if let Some((name, id)) = rest.split_once("/blobs/uploads/") {
        check_name(name)?;
        let cr = headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok());
        return uploads(&reg, &method, name, id, q, cr, body).await;
    }
    if let Some((name, d)) = rest.rsplit_once("/blobs/") {
        check_name(name)?;
        let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
        return blob(&reg, &method, name, &parse_digest(d)?, range);
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        check_name(name)?;
        return manifest(&reg, &method, name, reference, &headers, body).await;
    }
    Err(RegError(
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
        format!("unknown path /v2/{rest}"),
    ))
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

/// `bytes=a-b` or `bytes=a-` within a blob of `size` bytes.
fn parse_range(r: &str, size: u64) -> Option<(u64, u64)> {
    let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
    let a: u64 = a.parse().ok()?;
    let b: u64 = if b.is_empty() {
        size.checked_sub(1)?
    } else {
        b.parse().ok()?
    };
    (a <= b && b < size).then_some((a, b))
}

fn blob(
    reg: &Registry,
    method: &Method,
    name: &str,
    d: &Digest,
    range: Option<&str>,
) -> Result<Response> {
    if !reg.visible(name, d) {
        return Err(RegError(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("blob unknown to registry: {d}"),
        ));
    }
    let path = reg.blob(d);
    let size = std::fs::metadata(&path).map_err(internal)?.len();
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (header::CONTENT_LENGTH, size.to_string()),
        (
            header::HeaderName::from_static("docker-content-digest"),
            d.to_string(),
        ),
    ];
    match *method {
        Method::HEAD => Ok((headers, Body::empty()).into_response()),
        Method::GET => {
            let mut f = std::fs::File::open(&path).map_err(internal)?;
            // `Range: bytes=a-b`, as resuming clients send it: 206 with that part.
            if let Some((a, b)) = range.and_then(|r| parse_range(r, size)) {
                use std::io::Seek;
                use tokio::io::AsyncReadExt;
                f.seek(std::io::SeekFrom::Start(a)).map_err(internal)?;
                let part = tokio::fs::File::from_std(f).take(b - a + 1);
                let stream = tokio_util::io::ReaderStream::new(part);
                let mut r =
                    (StatusCode::PARTIAL_CONTENT, Body::from_stream(stream)).into_response();
                let h = r.headers_mut();
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(b - a + 1));
                let cr = format!("bytes {a}-{b}/{size}");
                h.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&cr).expect("ascii"),
                );
                h.insert(
                    "Docker-Content-Digest",
                    HeaderValue::from_str(&d.to_string()).expect("ascii"),
                );
                return Ok(r);
            }
            let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(f));
            Ok((headers, Body::from_stream(stream)).into_response())
        }
        Method::DELETE => {
            let _ = std::fs::remove_file(reg.layer_link(name, d));
            Ok(StatusCode::ACCEPTED.into_response())
        }
        _ => Err(RegError(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "method not allowed".into(),
        )),
    }
}

async fn uploads(
    reg: &Registry,
    method: &Method,
    name: &str,
    id: &str,
    q: Option<&str>,
    content_range: Option<&str>,
    body: Body,
) -> Result<Response> {
    if id.is_empty() && *method == Method::POST {
        // Cross-repository mount.
        if let (Some(m), Some(from)) = (query(q, "mount"), query(q, "from")) {
            let d = parse_digest(&m)?;
            if valid_name(&from) && reg.visible(&from, &d) {
                reg.link(&reg.layer_link(name, &d), "").map_err(internal)?;
                return Ok(blob_created(name, &d));
            }
        }
        let id = uuid();
        let file = reg.root.join("uploads").join(&id);
        std::fs::File::create(&file).map_err(internal)?;
        // Monolithic: the whole blob in this request.
        if let Some(d) = query(q, "digest") {
            let d = parse_digest(&d)?;
            append(&file, body).await?;
            reg.commit_upload(name, &file, &d)?;
            return Ok(blob_created(name, &d));
        }
        return Ok(upload_response(StatusCode::ACCEPTED, name, &id, 0));
    }
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RegError(
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
            "blob upload unknown to registry".into(),
        ));
    }
    let file = reg.root.join("uploads").join(id);
    let size = |f: &Path| std::fs::metadata(f).map(|m| m.len());
    match *method {
        Method::PATCH => {
            // Chunks in order only: a Content-Range must start where the upload ends.
            if let Some(cr) = content_range {
                let have = size(&file).map_err(|_| {
                    RegError(
                        StatusCode::NOT_FOUND,
                        "BLOB_UPLOAD_UNKNOWN",
                        "blob upload unknown to registry".into(),
                    )
                })?;
                let start = cr
                    .split('-')
                    .next()
                    .and_then(|x| x.trim().parse::<u64>().ok());
                if start != Some(have) {
                    let mut r = RegError(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        "BLOB_UPLOAD_INVALID",
                        format!("chunk {cr} does not follow the {have} bytes uploaded"),
                    )
                    .into_response();
                    let range = format!("0-{}", have.saturating_sub(1));
                    r.headers_mut()
                        .insert(header::RANGE, HeaderValue::from_str(&range).expect("ascii"));
                    return Ok(r);
                }
            }
            append(&file, body).await?;
            let n = size(&file).map_err(internal)?;
            Ok(upload_response(StatusCode::ACCEPTED, name, id, n))
        }
        Method::PUT => {
            let d = parse_digest(&query(q, "digest").unwrap_or_default())?;
            append(&file, body).await?;
            reg.commit_upload(name, &file, &d)?;
            Ok(blob_created(name, &d))
        }
        Method::GET => {
            let n = size(&file).map_err(|_| {
                RegError(
                    StatusCode::NOT_FOUND,
                    "BLOB_UPLOAD_UNKNOWN",
                    "blob upload unknown to registry".into(),
                )
            })?;
            Ok(upload_response(StatusCode::NO_CONTENT, name, id, n))
        }
        Method::DELETE => {
            std::fs::remove_file(&file).map_err(|_| {
                RegError(
                    StatusCode::NOT_FOUND,
                    "BLOB_UPLOAD_UNKNOWN",
                    "blob upload unknown to registry".into(),
                )
            })?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(RegError(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "method not allowed".into(),
        )),
    }
}

/// The media type of a manifest: the PUT's Content-Type, else its own `mediaType`, else an
/// OCI manifest or index by shape.
fn media_type(headers: &HeaderMap, bytes: &[u8]) -> String {
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        if ct.contains("manifest") || ct.contains("index") {
            return ct.to_string();
        }
    }
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    match v["mediaType"].as_str() {
        Some(t) => t.to_string(),
        None if v["manifests"].is_array() => "application/vnd.oci.image.index.v1+json".into(),
        None => "application/vnd.oci.image.manifest.v1+json".into(),
    }
}

async fn manifest(
    reg: &Registry,
    method: &Method,
    name: &str,
    reference: &str,
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
        let bytes: Bytes = axum::body::to_bytes(body, 4 << 20)
            .await
            .map_err(|e| RegError(StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID", e.to_string()))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            RegError(
                StatusCode::BAD_REQUEST,
                "MANIFEST_INVALID",
                format!("manifest invalid: {e}"),
            )
        })?;
        if v["schemaVersion"] == 1 {
            return Err(RegError(
                StatusCode::BAD_REQUEST,
                "MANIFEST_INVALID",
                "schema 1 manifests are not accepted".into(),
            ));
        }
        // Everything it refers to must already be here.
        let mut refs: Vec<&serde_json::Value> = Vec::new();
        refs.extend(v.get("config"));
        refs.extend(v["layers"].as_array().into_iter().flatten());
        refs.extend(v["manifests"].as_array().into_iter().flatten());
        for r in refs {
            let d = parse_digest(r["digest"].as_str().unwrap_or_default())?;
            if !reg.visible(name, &d) {
                return Err(RegError(
                    StatusCode::BAD_REQUEST,
                    if v["manifests"].is_array() {
                        "MANIFEST_UNKNOWN"
                    } else {
                        "MANIFEST_BLOB_UNKNOWN"
                    },
                    format!("blob unknown to registry: {d}"),
                ));
            }
        }
        let d = Digest::sha256(&bytes);
        if by_digest && parse_digest(reference)? != d {
            return Err(RegError(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                "manifest digest did not match".into(),
            ));
        }
        let blob = reg.blob(&d);
        if !blob.exists() {
            berth_types::fs::atomic_write(&blob, &bytes).map_err(internal)?;
        }
        let kind = media_type(headers, &bytes);
        reg.link(&reg.revision(name, &d), &kind).map_err(internal)?;
        if !by_digest {
            reg.link(&reg.tag_file(name, reference), &d.to_string())
                .map_err(internal)?;
        }
        let mut r = created(&format!("/v2/{name}/manifests/{d}"), &d);
        // A manifest with a subject is one of its referrers (the subject need not exist).
        if let Some(subject) = v["subject"]["digest"].as_str() {
            let sd = parse_digest(subject)?;
            let artifact = v["artifactType"]
                .as_str()
                .or_else(|| v["config"]["mediaType"].as_str())
                .unwrap_or_default();
            let mut desc = json!({"mediaType": kind, "digest": d.to_string(),
                "size": bytes.len(), "artifactType": artifact});
            if v["annotations"].is_object() {
                desc["annotations"] = v["annotations"].clone();
            }
            reg.link(&reg.referrer(name, &sd, &d), &desc.to_string())
                .map_err(internal)?;
            r.headers_mut().insert(
                "OCI-Subject",
                HeaderValue::from_str(&sd.to_string()).expect("ascii"),
            );
        }
        return Ok(r);
    }
    let d = if by_digest {
        parse_digest(reference)?
    } else {
        let text = std::fs::read_to_string(reg.tag_file(name, reference)).map_err(|_| unknown())?;
        parse_digest(text.trim())?
    };
    let kind = std::fs::read_to_string(reg.revision(name, &d)).map_err(|_| unknown())?;
    match *method {
        Method::DELETE => {
            if !by_digest {
                std::fs::remove_file(reg.tag_file(name, reference)).map_err(|_| unknown())?;
                return Ok(StatusCode::ACCEPTED.into_response());
            }
            std::fs::remove_file(reg.revision(name, &d)).map_err(|_| unknown())?;
            let refs = reg.repo(name).join("_referrers");
            for e in std::fs::read_dir(refs).into_iter().flatten().flatten() {
                let _ = std::fs::remove_file(e.path().join(d.hex()));
            }
            // Tags pointing at it go too.
            let tags = reg.repo(name).join("_manifests/tags");
            for e in std::fs::read_dir(tags).into_iter().flatten().flatten() {
                if std::fs::read_to_string(e.path()).is_ok_and(|t| t.trim() == d.to_string()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            Ok(StatusCode::ACCEPTED.into_response())
        }
        Method::GET | Method::HEAD => {
            let bytes = std::fs::read(reg.blob(&d)).map_err(|_| unknown())?;
            let headers = [
                (header::CONTENT_TYPE, kind),
                (header::CONTENT_LENGTH, bytes.len().to_string()),
                (
                    header::HeaderName::from_static("docker-content-digest"),
                    d.to_string(),
                ),
            ];
            let body = if *method == Method::GET {
                Body::from(bytes)
            } else {
                Body::empty()
            };
            Ok((headers, body).into_response())
        }
        _ => Err(RegError(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "method not allowed".into(),
        )),
    }
}

/// `GET /v2/<name>/referrers/<digest>`: an OCI index of the manifests whose subject it is,
/// filtered by `artifactType` when asked.
fn referrers(reg: &Registry, name: &str, subject: &Digest, q: Option<&str>) -> Result<Response> {
    let dir = reg.repo(name).join("_referrers").join(subject.hex());
    let want = query(q, "artifactType");
    let mut manifests: Vec<serde_json::Value> = list_dir(&dir)
        .iter()
        .filter_map(|f| std::fs::read(dir.join(f)).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    if let Some(t) = &want {
        manifests.retain(|m| m["artifactType"].as_str() == Some(t.as_str()));
    }
    let body = json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    let mut r = axum::Json(body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
    );
    if want.is_some() {
        r.headers_mut().insert(
            "OCI-Filters-Applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(r)
}

/// `GET /v1/search?q=&n=&page=`: repositories whose names contain `q`, in Docker Hub's
/// answer shape, so `docker search`-style clients work against a private registry.
async fn search(State(reg): State<Shared>, RawQuery(q): RawQuery) -> Result<Response> {
    let q = q.as_deref();
    let term = query(q, "q").unwrap_or_default();
    let size: usize = query(q, "n")
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(25);
    let page: usize = query(q, "page")
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1);
    let all = repositories(&reg);
    let hits: Vec<&String> = all.iter().filter(|r| r.contains(term.as_str())).collect();
    let results: Vec<serde_json::Value> = hits
        .iter()
        .skip((page - 1) * size)
        .take(size)
        .map(|name| {
            json!({"name": name, "description": "", "star_count": 0,
            "is_official": false, "is_automated": false})
        })
        .collect();
    Ok(axum::Json(json!({
        "query": term, "num_results": hits.len(), "num_pages": hits.len().div_ceil(size),
        "page": page, "page_size": size, "results": results
    }))
    .into_response())
}

fn list_dir(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
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
            format!("invalid n: {n}"),
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
    let dir = reg.repo(name).join("_manifests/tags");
    if !dir.exists() {
        return Err(RegError(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("repository name not known to registry: {name}"),
        ));
    }
    let (tags, link) = page(list_dir(&dir), q, &format!("/v2/{name}/tags/list"))?;
    Ok(with_link(
        axum::Json(json!({"name": name, "tags": tags})).into_response(),
        link,
    ))
}

fn repositories(reg: &Registry) -> Vec<String> {
    fn walk(base: &Path, rel: &str, out: &mut Vec<String>) {
        for e in std::fs::read_dir(base.join(rel))
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with('_') {
                continue;
            }
            let r = if rel.is_empty() {
                n.clone()
            } else {
                format!("{rel}/{n}")
            };
            if base.join(&r).join("_manifests").exists() {
                out.push(r.clone());
            }
            walk(base, &r, out);
        }
    }
    let mut repos = Vec::new();
    walk(&reg.root.join("repositories"), "", &mut repos);
    repos.sort();
    repos
}

fn catalog(reg: &Registry, q: Option<&str>) -> Result<Response> {
    let repos = repositories(reg);
    let (repos, link) = page(repos, q, "/v2/_catalog")?;
    Ok(with_link(
        axum::Json(json!({"repositories": repos})).into_response(),
        link,
    ))
}

pub fn router(root: &Path) -> std::io::Result<axum::Router> {
    let reg = Arc::new(Registry::open(root)?);
    Ok(axum::Router::new()
        .route("/v2/", axum::routing::get(api_base))
        .route("/v2", axum::routing::get(api_base))
        .route("/v2/{*rest}", axum::routing::any(dispatch))
        .route("/v1/search", axum::routing::get(search))
        .with_state(reg))
}

/// Serves until SIGTERM or ctrl-c.
pub async fn serve(addr: std::net::SocketAddr, root: &Path) -> std::io::Result<()> {
    let app = router(root)?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    // The address as bound (port 0 picks one), for whoever started this.
    eprintln!("berth registry: listening on {}", listener.local_addr()?);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags() {
        assert!(valid_name("library/busybox"));
        assert!(valid_name("a.b-c_d/e"));
        assert!(!valid_name("Upper"));
        assert!(!valid_name("a//b"));
        assert!(!valid_name("../x"));
        assert!(valid_tag("v1.2_3-x"));
        assert!(!valid_tag("-bad"));
        assert!(!valid_tag(""));
    }
}
