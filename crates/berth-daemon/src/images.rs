//! Image endpoints over berth-store.

use std::io::Write;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_distribution::client::{Platform, Progress};
use berth_store::image::Image;
use berth_types::auth::AuthConfig;
use berth_types::Reference;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::{blocking, ApiError, ApiResult, Shared};

/// Query parameters in order, repeated keys kept (`names=a&names=b`).
pub fn params(raw: Option<&str>) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(v) => {
                            out.push(v);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    raw.unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The first value of `key`.
pub(crate) fn param<'a>(ps: &'a [(String, String)], key: &str) -> Option<&'a str> {
    ps.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A boolean query value as Docker's clients write it.
pub(crate) fn truthy(v: Option<&str>) -> bool {
    matches!(v, Some("1" | "true" | "True" | "yes"))
}

fn familiar(tag: &str) -> String {
    tag.parse::<Reference>()
        .map(|r| r.familiar())
        .unwrap_or_else(|_| tag.to_string())
}

fn config_json(d: &Shared, img: &Image) -> ApiResult<Value> {
    let bytes = d
        .store
        .content()
        .read(&img.config)
        .map_err(ApiError::internal)?;
    serde_json::from_slice(&bytes).map_err(ApiError::internal)
}

/// Docker's RepoDigests in the familiar form (`127.0.0.1:5000/x@sha256:...`).
fn repo_digests(d: &Shared, img: &Image) -> Vec<String> {
    d.store
        .repo_digests(&img.manifest)
        .into_iter()
        .map(|r| {
            let short = r
                .strip_prefix("docker.io/library/")
                .or_else(|| r.strip_prefix("docker.io/"));
            short.map(String::from).unwrap_or(r)
        })
        .collect()
}

fn size(img: &Image) -> u64 {
    img.layers.iter().map(|l| l.size).sum()
}

fn created_secs(img: &Image) -> i64 {
    berth_types::time::parse_rfc3339(&img.created).unwrap_or(0)
}

/// `GET /images/json`: Docker's ImageSummary list.
/// Go's path.Match for the patterns people use (`*` within a path segment, `?`).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], text)
                || (!text.is_empty() && text[0] != b'/' && glob(pattern, &text[1..]))
        }
        (Some(b'?'), Some(&c)) if c != b'/' => glob(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p == t => glob(&pattern[1..], &text[1..]),
        _ => false,
    }
}

/// `GET /images/json` with Docker's filters: dangling, reference, label, before, since.
pub async fn list(State(d): State<Shared>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let ps = params(q.as_deref());
    let all = truthy(param(&ps, "all"));
    let fs = crate::containers::api::filters(&ps)?;
    for (k, _) in &fs {
        if !matches!(
            k.as_str(),
            "dangling" | "reference" | "label" | "before" | "since"
        ) {
            return Err(ApiError::bad_request(format!("invalid filter '{k}'")));
        }
    }
    let time_of = |name: &str| -> ApiResult<i64> {
        d.store
            .resolve(name)
            .map(|i| created_secs(&i))
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("No such image: {name}")))
    };
    let mut bounds = (None, None);
    for (k, vals) in &fs {
        if let Some(v) = vals.first() {
            match k.as_str() {
                "before" => bounds.0 = Some(time_of(v)?),
                "since" => bounds.1 = Some(time_of(v)?),
                _ => {}
            }
        }
    }
    let users = d.containers.images_in_use();
    blocking(move || {
        let mut out = Vec::new();
        for (img, tags) in d.store.list() {
            let dangling = tags.is_empty();
            let wants_dangling = fs
                .iter()
                .find(|(k, _)| k == "dangling")
                .map(|(_, v)| v.iter().any(|x| matches!(x.as_str(), "true" | "1")));
            // Images a build made along the way show with -a only; a dangling image (a
            // rebuild's old result, say) shows, as with Docker.
            let intermediate = d.store.is_intermediate(&img.manifest);
            if intermediate && !all {
                continue;
            }
            match wants_dangling {
                Some(w) if w != (dangling && !intermediate) => continue,
                _ => {}
            }
            let mut familiar_tags: Vec<String> = tags.iter().map(|t| familiar(t)).collect();
            let mut digests = repo_digests(&d, &img);
            if let Some((_, pats)) = fs.iter().find(|(k, _)| k == "reference") {
                // Only the matching tags and digests are listed, as Docker does.
                let matching = |t: &String, sep: char| {
                    let repo = t.rsplit_once(sep).map_or(t.as_str(), |(r, _)| r);
                    pats.iter().any(|p| {
                        glob(p.as_bytes(), t.as_bytes()) || glob(p.as_bytes(), repo.as_bytes())
                    })
                };
                familiar_tags.retain(|t| matching(t, ':'));
                digests.retain(|t| matching(t, '@'));
                if familiar_tags.is_empty() {
                    continue;
                }
            }
            let config = config_json(&d, &img)?;
            let labels = config["config"]["Labels"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            if let Some((_, want)) = fs.iter().find(|(k, _)| k == "label") {
                let ok = want.iter().all(|w| match w.split_once('=') {
                    Some((k, v)) => labels.get(k).and_then(|x| x.as_str()) == Some(v),
                    None => labels.contains_key(w),
                });
                if !ok {
                    continue;
                }
            }
            let created = created_secs(&img);
            if bounds.0.is_some_and(|b| created >= b) || bounds.1.is_some_and(|s| created <= s) {
                continue;
            }
            let id = img.config.to_string();
            out.push(json!({
                "Id": img.config,
                "ParentId": "",
                "RepoTags": familiar_tags,
                "RepoDigests": digests,
                "Created": created,
                "Size": size(&img),
                "SharedSize": -1,
                "VirtualSize": size(&img),
                "Labels": labels,
                "Containers": users.iter().filter(|u| **u == id).count()
            }));
        }
        out.sort_by_key(|v| std::cmp::Reverse(v["Created"].as_i64().unwrap_or(0)));
        Ok(Json(Value::Array(out)))
    })
    .await
}

fn inspect(d: &Shared, name: &str) -> ApiResult<Value> {
    let img = d
        .store
        .resolve(name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("No such image: {name}")))?;
    let config = config_json(d, &img)?;
    let tags: Vec<String> = d
        .store
        .list()
        .into_iter()
        .find(|(i, _)| i.manifest == img.manifest)
        .map(|(_, t)| t.iter().map(|t| familiar(t)).collect())
        .unwrap_or_default();
    Ok(json!({
        "Id": img.config,
        "RepoTags": tags,
        "RepoDigests": repo_digests(d, &img),
        "Parent": "",
        "Comment": config["history"].as_array().and_then(|h| h.last()).and_then(|h| h["comment"].as_str()).unwrap_or(""),
        "Created": img.created,
        "DockerVersion": "",
        "Author": config["author"].as_str().unwrap_or(""),
        "Config": config["config"],
        "Architecture": config["architecture"],
        "Os": config["os"],
        "Size": size(&img),
        "GraphDriver": {"Name": "overlay2", "Data": {}},
        "RootFS": {"Type": "layers", "Layers": img.layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"}
    }))
}

/// `GET /images/{name}/json`, `/images/{name}/get`, `/images/{name}/history`: names may
/// contain slashes, so the suffix picks the operation.
pub async fn get_named(State(d): State<Shared>, Path(rest): Path<String>) -> ApiResult<Response> {
    if let Some(name) = rest.strip_suffix("/json") {
        let name = name.to_string();
        return blocking(move || inspect(&d, &name))
            .await
            .map(|v| Json(v).into_response());
    }
    if let Some(name) = rest.strip_suffix("/get") {
        return save(d, vec![name.to_string()]).await;
    }
    if let Some(name) = rest.strip_suffix("/history") {
        let name = name.to_string();
        return blocking(move || history(&d, &name))
            .await
            .map(|v| Json(v).into_response());
    }
    Err(ApiError::new(StatusCode::NOT_FOUND, "page not found"))
}

fn history(d: &Shared, name: &str) -> ApiResult<Value> {
    let img = d
        .store
        .resolve(name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("No such image: {name}")))?;
    let config = config_json(d, &img)?;
    let mut out = Vec::new();
    let mut layers = img.layers.iter();
    for (i, h) in config["history"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let empty = h["empty_layer"].as_bool().unwrap_or(false);
        let size = if empty {
            0
        } else {
            layers.next().map_or(0, |l| l.size)
        };
        out.push(json!({
            "Id": if i == 0 { img.config.to_string() } else { "<missing>".into() },
            "Created": h["created"].as_str().and_then(berth_types::time::parse_rfc3339).unwrap_or(0),
            "CreatedBy": h["created_by"].as_str().unwrap_or(""),
            "Tags": null,
            "Size": size,
            "Comment": h["comment"].as_str().unwrap_or("")
        }));
    }
    out.reverse();
    Ok(Value::Array(out))
}

/// `POST /images/{name}/tag?repo=&tag=`.
pub async fn post_named(
    State(d): State<Shared>,
    Path(rest): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Some(name) = rest.strip_suffix("/tag") else {
        if let Some(image) = rest.strip_suffix("/push") {
            let ps = params(q.as_deref());
            let full = match param(&ps, "tag").filter(|t| !t.is_empty()) {
                Some(t) => format!("{image}:{t}"),
                None => image.to_string(),
            };
            let reference: Reference = full
                .parse()
                .map_err(|e: berth_types::ReferenceError| ApiError::bad_request(e.to_string()))?;
            if d.store.resolve(&reference.to_string()).is_none() {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("No such image: {}", reference.familiar()),
                ));
            }
            return Ok(push(d, reference, registry_auth(&headers)?));
        }
        return Err(ApiError::new(StatusCode::NOT_FOUND, "page not found"));
    };
    let ps = params(q.as_deref());
    let repo = param(&ps, "repo").unwrap_or("").to_string();
    let tag = param(&ps, "tag")
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let target = match tag {
        Some(t) => format!("{repo}:{t}"),
        None => repo,
    };
    let reference: Reference = target
        .parse()
        .map_err(|e: berth_types::ReferenceError| ApiError::bad_request(e.to_string()))?;
    let name = name.to_string();
    blocking(move || {
        d.store.tag(&name, &reference)?;
        if let Some(img) = d.store.resolve(&name) {
            d.image_event("tag", &img.config.to_string(), &reference.familiar());
        }
        Ok(StatusCode::CREATED.into_response())
    })
    .await
}

/// `DELETE /images/{name}?force=`: Docker's list of Untagged/Deleted, then the space is
/// reclaimed (Docker removes layers at once).
pub async fn remove(
    State(d): State<Shared>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let ps = params(q.as_deref());
    let force = truthy(param(&ps, "force"));
    blocking(move || {
        let id = d
            .store
            .resolve(&name)
            .map(|i| i.config.to_string())
            .unwrap_or_default();
        let lines = d.store.remove(&name, force)?;
        d.store.gc()?;
        for l in &lines {
            match l.split_once(": ") {
                Some(("Untagged", r)) => d.image_event("untag", &id, r),
                Some(("Deleted", i)) => d.image_event("delete", i, &name),
                _ => {}
            }
        }
        let items: Vec<Value> = lines
            .iter()
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                Some(json!({k: v}))
            })
            .collect();
        Ok(Json(Value::Array(items)))
    })
    .await
}

/// `POST /images/prune?filters={"dangling":["false"]}`.
pub async fn prune(State(d): State<Shared>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let ps = params(q.as_deref());
    let filters: Value = param(&ps, "filters")
        .filter(|f| !f.is_empty())
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("invalid filters: {e}")))?
        .unwrap_or(Value::Null);
    let dangling_false = |v: &Value| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|x| x == "false" || x == "0"))
            || v.as_object()
                .is_some_and(|o| o.contains_key("false") || o.contains_key("0"))
    };
    let all = dangling_false(&filters["dangling"]);
    blocking(move || {
        let (ids, freed) = d.store.prune(all)?;
        Ok(Json(json!({
            "ImagesDeleted": ids.iter().map(|i| json!({"Deleted": i})).collect::<Vec<_>>(),
            "SpaceReclaimed": freed
        })))
    })
    .await
}

/// Writes a request body to a temporary file under the data root (loads and imports can be
/// far bigger than memory should hold).
pub(crate) async fn body_to_file(d: &Shared, body: Body) -> ApiResult<std::path::PathBuf> {
    let dir = d.data_root.join("tmp");
    let path = dir.join(format!(
        "upload-{}-{}",
        std::process::id(),
        berth_store::content::unique()
    ));
    let mut f = tokio::fs::File::create(&path)
        .await
        .map_err(ApiError::internal)?;
    let mut stream = body.into_data_stream();
    use tokio::io::AsyncWriteExt;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        f.write_all(&chunk).await.map_err(ApiError::internal)?;
    }
    f.flush().await.map_err(ApiError::internal)?;
    Ok(path)
}

fn json_stream(lines: Vec<Value>) -> Response {
    let mut body = String::new();
    for l in lines {
        body.push_str(&l.to_string());
        body.push('\n');
    }
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `POST /images/load`: a docker-archive in the body.
pub async fn load(State(d): State<Shared>, body: Body) -> ApiResult<Response> {
    let path = body_to_file(&d, body).await?;
    let d2 = d.clone();
    let p2 = path.clone();
    let loaded = blocking(move || {
        Ok(d2
            .store
            .load(std::fs::File::open(&p2).map_err(ApiError::internal)?)?)
    })
    .await;
    let _ = std::fs::remove_file(&path);
    let mut lines = Vec::new();
    for (img, tags) in loaded? {
        let names: Vec<String> = tags.iter().map(|t| familiar(t)).collect();
        d.image_event("load", &img.config.to_string(), &names.join(","));
        if tags.is_empty() {
            lines.push(json!({"stream": format!("Loaded image ID: {}\n", img.config)}));
        }
        for t in tags {
            lines.push(json!({"stream": format!("Loaded image: {}\n", familiar(&t))}));
        }
    }
    Ok(json_stream(lines))
}

/// A registry operation's progress as Docker's JSON lines; its failure becomes an `error`
/// line (the status is sent by then, as with Docker).
fn progress_stream<F, Fut>(work: F) -> Response
where
    F: FnOnce(Progress) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let progress_tx = tx.clone();
    tokio::spawn(async move {
        let progress: Progress = Box::new(move |v| {
            let _ = progress_tx.send(v);
        });
        // A client that goes away (ctrl-c on `docker pull`) cancels the work; what was
        // downloaded stays in the ingests for the next pull.
        tokio::select! {
            r = work(progress) => {
                if let Err(e) = r {
                    let _ = tx.send(json!({"errorDetail": {"message": e}, "error": e}));
                }
            }
            _ = tx.closed() => tracing::info!("registry operation cancelled by the client"),
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|v| (Ok::<_, std::io::Error>(v.to_string() + "\r\n"), rx))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// `X-Registry-Auth`, empty when absent.
fn registry_auth(headers: &HeaderMap) -> ApiResult<AuthConfig> {
    match headers.get("x-registry-auth").map(|v| v.to_str()) {
        None => Ok(AuthConfig::default()),
        Some(Ok(v)) => AuthConfig::from_header(v).map_err(ApiError::bad_request),
        Some(Err(_)) => Err(ApiError::bad_request("X-Registry-Auth is not text")),
    }
}

/// `docker pull` through `POST /images/create?fromImage=`.
/// With `all_tags` (no tag given: `docker pull -a`), every tag of the repository.
fn pull(
    d: Shared,
    reference: Reference,
    auth: AuthConfig,
    platform: Option<Platform>,
    all_tags: bool,
) -> Response {
    progress_stream(move |progress| async move {
        let images = if all_tags {
            d.registry
                .pull_all_tags(
                    d.store.clone(),
                    &reference,
                    &auth,
                    platform.as_ref(),
                    progress,
                )
                .await?
        } else {
            vec![
                d.registry
                    .pull(
                        d.store.clone(),
                        &reference,
                        &auth,
                        platform.as_ref(),
                        progress,
                    )
                    .await?,
            ]
        };
        for img in images {
            d.image_event("pull", &img.config.to_string(), &reference.familiar());
        }
        Ok(())
    })
}

/// `docker push` through `POST /images/{name}/push`.
fn push(d: Shared, reference: Reference, auth: AuthConfig) -> Response {
    progress_stream(move |progress| async move {
        let digest = d
            .registry
            .push(d.store.clone(), &reference, &auth, progress)
            .await?;
        d.image_event("push", &digest.to_string(), &reference.familiar());
        Ok(())
    })
}

/// `GET /images/search?term=&limit=&filters=`: Docker Hub's search, or a private
/// registry's when the term names one (`127.0.0.1:5000/name`).
pub async fn search(
    State(d): State<Shared>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let ps = params(q.as_deref());
    let term = param(&ps, "term").unwrap_or_default().to_string();
    if term.is_empty() {
        return Err(ApiError::bad_request("a search term is required (term=)"));
    }
    let limit: usize = match param(&ps, "limit").filter(|l| !l.is_empty()) {
        None => 25,
        Some(l) => match l.parse() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid limit {l:?}: the limit must be between 1 and 100"
                )))
            }
        },
    };
    let filters = crate::containers::api::filters(&ps)?;
    for (k, _) in &filters {
        if !["is-official", "is-automated", "stars"].contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!("invalid filter '{k}'")));
        }
    }
    let official = filter_bool(&filters, "is-official")?;
    let automated = filter_bool(&filters, "is-automated")?;
    let stars: u64 = match last_filter(&filters, "stars") {
        None => 0,
        Some(s) => s
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid filter 'stars={s}'")))?,
    };
    let auth = registry_auth(&headers)?;
    let results = d
        .registry
        .search(&term, limit, &auth)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let kept: Vec<Value> = results
        .into_iter()
        .filter(|r| official.is_none_or(|o| r["is_official"].as_bool() == Some(o)))
        .filter(|r| automated.is_none_or(|a| r["is_automated"].as_bool() == Some(a)))
        .filter(|r| r["star_count"].as_u64().unwrap_or(0) >= stars)
        .collect();
    Ok(Json(kept).into_response())
}

fn last_filter<'a>(filters: &'a [(String, Vec<String>)], key: &str) -> Option<&'a String> {
    filters
        .iter()
        .filter(|(k, _)| k == key)
        .flat_map(|(_, v)| v)
        .last()
}

/// A `true`/`false` filter, when given.
fn filter_bool(filters: &[(String, Vec<String>)], key: &str) -> ApiResult<Option<bool>> {
    match last_filter(filters, key).map(String::as_str) {
        None => Ok(None),
        Some("true" | "1") => Ok(Some(true)),
        Some("false" | "0") => Ok(Some(false)),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid filter '{key}={other}'"
        ))),
    }
}

/// `GET /distribution/{name}/json`: what the name resolves to in its registry (the
/// descriptor and its images' platforms); and, Berth's own,
/// `GET /distribution/{name}/manifest`: the manifest as the registry serves it (for
/// `berth manifest inspect`).
pub async fn distribution(
    State(d): State<Shared>,
    Path(rest): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (name, raw) = match (rest.strip_suffix("/json"), rest.strip_suffix("/manifest")) {
        (Some(n), _) => (n, false),
        (_, Some(n)) => (n, true),
        _ => return Err(ApiError::new(StatusCode::NOT_FOUND, "page not found")),
    };
    let reference: Reference = name
        .parse()
        .map_err(|e: berth_types::ReferenceError| ApiError::bad_request(e.to_string()))?;
    let auth = registry_auth(&headers)?;
    let r = d.registry.resolve(&reference, &auth).await.map_err(|e| {
        let status = if e.contains("not found") || e.contains("denied") {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError::new(status, e)
    })?;
    if raw {
        return Ok(([(header::CONTENT_TYPE, r.media_type)], r.bytes).into_response());
    }
    Ok(Json(json!({
        "Descriptor": {"mediaType": r.media_type, "digest": r.digest, "size": r.bytes.len()},
        "Platforms": r.platforms,
    }))
    .into_response())
}

/// `POST /auth` (`docker login`): the credentials checked against the registry.
pub async fn login(State(d): State<Shared>, body: axum::body::Bytes) -> ApiResult<Response> {
    let auth: AuthConfig = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    let token = d
        .registry
        .login(&auth.serveraddress, &auth)
        .await
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e))?;
    Ok(Json(json!({"Status": "Login Succeeded", "IdentityToken": token})).into_response())
}

/// `GET /images/get?names=a&names=b`.
pub async fn save_many(State(d): State<Shared>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let names: Vec<String> = params(q.as_deref())
        .into_iter()
        .filter(|(k, _)| k == "names")
        .map(|(_, v)| v)
        .collect();
    if names.is_empty() {
        return Err(ApiError::bad_request("no image names given"));
    }
    save(d, names).await
}

async fn save(d: Shared, names: Vec<String>) -> ApiResult<Response> {
    let path = d.data_root.join("tmp").join(format!(
        "save-{}-{}",
        std::process::id(),
        berth_store::content::unique()
    ));
    let p2 = path.clone();
    let written = blocking(move || {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(&p2).map_err(ApiError::internal)?);
        d.store.save(&refs, &mut f)?;
        f.flush().map_err(ApiError::internal)?;
        Ok(())
    })
    .await;
    if let Err(e) = written {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(ApiError::internal)?;
    // Unlinked while open: the stream keeps the data, the disk forgets it when done.
    let _ = std::fs::remove_file(&path);
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], body).into_response())
}

/// `POST /images/create`: `fromSrc=-` imports the body (docker import); pulls come with
/// the registry client.
pub async fn create(
    State(d): State<Shared>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let ps = params(q.as_deref());
    if let Some(image) = param(&ps, "fromImage") {
        let full = match param(&ps, "tag").filter(|t| !t.is_empty()) {
            Some(t) if t.contains(':') => format!("{image}@{t}"),
            Some(t) => format!("{image}:{t}"),
            None => image.to_string(),
        };
        let reference: Reference = full
            .parse()
            .map_err(|e: berth_types::ReferenceError| ApiError::bad_request(e.to_string()))?;
        let platform = param(&ps, "platform")
            .filter(|p| !p.is_empty())
            .map(Platform::parse)
            .transpose()
            .map_err(ApiError::bad_request)?;
        // No tag anywhere: every tag, as Docker does (its CLI sends "latest" otherwise).
        let all_tags = reference.is_name_only();
        return Ok(pull(
            d,
            reference,
            registry_auth(&headers)?,
            platform,
            all_tags,
        ));
    }
    match param(&ps, "fromSrc") {
        Some("-") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
            "importing from {other:?} is not supported: send the tarball in the body (fromSrc=-)"
        )))
        }
        None => return Err(ApiError::bad_request("fromImage or fromSrc is required")),
    }
    let repo = param(&ps, "repo").unwrap_or("").to_string();
    let tag = param(&ps, "tag")
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let reference = if repo.is_empty() {
        None
    } else {
        let full = match tag {
            Some(t) => format!("{repo}:{t}"),
            None => repo,
        };
        Some(
            full.parse::<Reference>()
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        )
    };
    let changes: Vec<String> = ps
        .iter()
        .filter(|(k, _)| k == "changes")
        .map(|(_, v)| v.clone())
        .collect();
    let shown = reference.as_ref().map(|r| r.familiar()).unwrap_or_default();
    let d2 = d.clone();
    let path = body_to_file(&d, body).await?;
    let p2 = path.clone();
    let imported = blocking(move || {
        let f = std::fs::File::open(&p2).map_err(ApiError::internal)?;
        Ok(d.store.import(f, &changes, reference.as_ref())?)
    })
    .await;
    let _ = std::fs::remove_file(&path);
    let img = imported?;
    d2.image_event("import", &img.config.to_string(), &shown);
    Ok(json_stream(vec![json!({"status": img.config.to_string()})]))
}

#[cfg(test)]
mod glob_tests {
    use super::glob;

    #[test]
    fn go_path_match() {
        assert!(glob(b"busy*", b"busybox"));
        assert!(glob(b"localhost/*", b"localhost/bb"));
        assert!(!glob(b"*", b"a/b"));
        assert!(glob(b"b?sybox:*", b"busybox:latest"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_keep_repeats_and_decode() {
        let ps = params(Some(
            "names=busybox&names=a%2Fb%3A1&changes=CMD+%5B%22sh%22%5D&flag",
        ));
        assert_eq!(ps[0], ("names".into(), "busybox".into()));
        assert_eq!(ps[1], ("names".into(), "a/b:1".into()));
        assert_eq!(ps[2], ("changes".into(), "CMD [\"sh\"]".into()));
        assert_eq!(ps[3], ("flag".into(), String::new()));
        assert!(params(None).is_empty());
        assert_eq!(params(Some("x=%zz%2"))[0].1, "%zz%2");
    }
}
