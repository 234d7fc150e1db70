//! Pulling (a first slice): anonymous, plain HTTP to registries on this machine
//! (127.0.0.0/8, localhost), manifests and indexes (this platform's manifest chosen), every
//! manifest and blob checked against its digest, layers downloaded in parallel and streamed
//! into the content store's ingests, blobs already there skipped. HTTPS, auth and resuming
//! come with the rest of issue 5.

use std::io::Write;
use std::sync::Arc;

use berth_store::image::{Image, ImageStore};
use berth_types::{Digest, Reference};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Progress lines in the shape `docker pull` prints (`{"status":..., "id":...}`).
pub type Progress = Box<dyn Fn(Value) + Send + Sync>;

/// Registries reachable over plain HTTP: this machine only.
fn local(host: &str) -> bool {
    let h = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    h == "localhost" || h.starts_with("127.") || h == "[::1]"
}

/// An HTTP/1 connection to the registry (one request each: registries on this machine).
async fn connect<B>(host: &str) -> Result<hyper::client::conn::http1::SendRequest<B>, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| format!("connecting to {host}: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn get(host: &str, path: &str, accept: &str) -> Result<Response<Incoming>, String> {
    let mut path = path.to_string();
    // Blob downloads may be redirected (to storage); follow a few, on this machine.
    for _ in 0..5 {
        let mut sender = connect(host).await?;
        let req = Request::get(path.as_str())
            .header("Host", host)
            .header("Accept", accept)
            .header("User-Agent", concat!("berth/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        if resp.status().is_redirection() {
            let loc = resp
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .unwrap_or_default()
                .to_string();
            path = match loc.strip_prefix(&format!("http://{host}")) {
                Some(p) => p.to_string(),
                None if loc.starts_with('/') => loc,
                None => return Err(format!("redirected off this registry to {loc}")),
            };
            continue;
        }
        return Ok(resp);
    }
    Err("too many redirects".into())
}

async fn body_bytes(resp: Response<Incoming>) -> Result<Bytes, String> {
    Ok(resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes())
}

/// A manifest (or index) by tag or digest, checked against the digest when one is known.
async fn manifest(
    host: &str,
    repo: &str,
    reference: &str,
    shown: &str,
) -> Result<(Bytes, Digest, String), String> {
    let resp = get(host, &format!("/v2/{repo}/manifests/{reference}"), ACCEPT).await?;
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => {
            return Err(format!(
                "manifest for {shown} not found: manifest unknown: manifest unknown"
            ))
        }
        StatusCode::UNAUTHORIZED => {
            return Err(format!(
                "pull access denied for {shown}: authentication is not built yet"
            ))
        }
        s => return Err(format!("registry answered {s} for {shown}")),
    }
    let kind = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = body_bytes(resp).await?;
    let digest = Digest::sha256(&bytes);
    if let Ok(want) = reference.parse::<Digest>() {
        if want != digest {
            return Err(format!(
                "manifest digest mismatch for {shown}: got {digest}"
            ));
        }
    }
    Ok((bytes, digest, kind))
}

/// Downloads one blob into the content store (verified on commit) unless it is there.
async fn fetch_blob(
    store: &ImageStore,
    host: &str,
    repo: &str,
    digest: &Digest,
    size: u64,
    progress: &Progress,
) -> Result<(), String> {
    let short = digest.hex()[..12].to_string();
    if store.content().path(digest).exists() {
        progress(json!({"status": "Already exists", "progressDetail": {}, "id": short}));
        return Ok(());
    }
    progress(json!({"status": "Pulling fs layer", "progressDetail": {}, "id": short}));
    let resp = get(host, &format!("/v2/{repo}/blobs/{digest}"), "*/*").await?;
    if resp.status() != StatusCode::OK {
        return Err(format!("fetching blob {digest}: {}", resp.status()));
    }
    let mut ingest = store
        .content()
        .ingest(&format!("pull-{digest}"), Some((digest.clone(), size)))
        .map_err(|e| e.to_string())?;
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("downloading {digest}: {e}"))?;
        if let Ok(data) = frame.into_data() {
            ingest
                .write_all(&data)
                .map_err(|e| format!("storing {digest}: {e}"))?;
            got += data.len() as u64;
            progress(json!({"status": "Downloading", "id": short,
                "progressDetail": {"current": got, "total": size}}));
        }
    }
    ingest.commit().map_err(|e| e.to_string())?;
    progress(json!({"status": "Download complete", "progressDetail": {}, "id": short}));
    Ok(())
}

/// `docker pull`: the image into the store, tagged by `reference` (if it has a tag).
pub async fn pull(
    store: Arc<ImageStore>,
    reference: &Reference,
    progress: Progress,
) -> Result<Image, String> {
    let host = reference.domain().to_string();
    let shown = reference.familiar();
    if !local(&host) {
        return Err(format!(
            "pulling {shown}: only registries on this machine (127.0.0.1, localhost) over plain HTTP so far; HTTPS and Docker Hub come with issue 5"
        ));
    }
    let repo = reference.path().to_string();
    let want = match (reference.digest(), reference.tag()) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.to_string(),
        (None, None) => "latest".to_string(),
    };
    if let Some(t) = reference.tag() {
        progress(json!({"status": format!("Pulling from {repo}"), "id": t}));
    }
    let (mut bytes, mut digest, kind) = manifest(&host, &repo, &want, &shown).await?;
    let mut v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("manifest: {e}"))?;
    if v["manifests"].is_array() || kind.contains("index") || kind.contains("list") {
        let arch = berth_store::image::go_arch();
        let pick = v["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch)
            .ok_or_else(|| {
                format!("no matching manifest for linux/{arch} in the manifest list entries")
            })?;
        let d = pick["digest"].as_str().unwrap_or_default().to_string();
        (bytes, digest, _) = manifest(&host, &repo, &d, &shown).await?;
        v = serde_json::from_slice(&bytes).map_err(|e| format!("manifest: {e}"))?;
    }
    if v["schemaVersion"] == 1 {
        return Err(format!(
            "{shown}: schema 1 manifests are not supported (the registry should convert them)"
        ));
    }
    let parse = |d: &Value| -> Result<(Digest, u64, String), String> {
        let digest: Digest = d["digest"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|e| format!("bad digest in the manifest: {e}"))?;
        Ok((
            digest,
            d["size"].as_u64().unwrap_or(0),
            d["mediaType"].as_str().unwrap_or_default().to_string(),
        ))
    };
    // Already here under this manifest: just the tag, as Docker does.
    if let Some((img, _)) = store.list().into_iter().find(|(i, _)| i.manifest == digest) {
        if reference.digest().is_none() {
            store
                .tag(&img.config.to_string(), reference)
                .map_err(|e| e.to_string())?;
        }
        let _ = store.add_repo_digest(&img.manifest, &reference.name());
        progress(json!({"status": format!("Digest: {digest}")}));
        progress(json!({"status": format!("Status: Image is up to date for {shown}")}));
        return Ok(img);
    }
    let (config, config_size, _) = parse(&v["config"])?;
    let layers: Vec<(Digest, u64, String)> = v["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(parse)
        .collect::<Result<_, _>>()?;
    // The config, then every layer at once.
    let progress = Arc::new(progress);
    let quiet: Progress = Box::new(|_| {});
    fetch_blob(&store, &host, &repo, &config, config_size, &quiet).await?;
    let downloads = layers.iter().map(|(d, size, _)| {
        let (store, host, repo, progress) =
            (store.clone(), host.clone(), repo.clone(), progress.clone());
        let d = d.clone();
        let size = *size;
        async move { fetch_blob(&store, &host, &repo, &d, size, &progress).await }
    });
    for r in futures_util::future::join_all(downloads).await {
        r?;
    }
    let tags: Vec<Reference> = if reference.digest().is_none() {
        vec![reference.clone()]
    } else {
        Vec::new()
    };
    let entries: Vec<(Digest, String)> = layers
        .iter()
        .map(|(d, _, m)| (d.clone(), m.clone()))
        .collect();
    let image = {
        let store = store.clone();
        let manifest_bytes = bytes.to_vec();
        tokio::task::spawn_blocking(move || {
            store.add_pulled(&manifest_bytes, &config, &entries, &tags)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?
    };
    let _ = store.add_repo_digest(&image.manifest, &reference.name());
    for (d, _, _) in &layers {
        progress(json!({"status": "Pull complete", "progressDetail": {}, "id": &d.hex()[..12]}));
    }
    progress(json!({"status": format!("Digest: {digest}")}));
    progress(json!({"status": format!("Status: Downloaded newer image for {shown}")}));
    Ok(image)
}

/// One request with a body (uploads, manifests): (status, Location header).
async fn send(
    host: &str,
    method: &str,
    path: &str,
    body: Bytes,
    content_type: &str,
) -> Result<(StatusCode, Option<String>), String> {
    let mut sender = connect(host).await?;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("Host", host)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let location = resp
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(String::from);
    let text = body_bytes(resp).await.unwrap_or_default();
    if !status.is_success() {
        return Err(format!(
            "{method} {path}: {status}: {}",
            String::from_utf8_lossy(&text)
        ));
    }
    Ok((status, location))
}

/// Uploads one blob unless the repository has it: POST for a session, PUT with the digest.
async fn push_blob(
    store: &ImageStore,
    host: &str,
    repo: &str,
    digest: &Digest,
    progress: &Progress,
) -> Result<(), String> {
    let short = digest.hex()[..12].to_string();
    let head = get(host, &format!("/v2/{repo}/blobs/{digest}"), "*/*").await?;
    if head.status() == StatusCode::OK {
        progress(json!({"status": "Layer already exists", "progressDetail": {}, "id": short}));
        return Ok(());
    }
    progress(json!({"status": "Preparing", "progressDetail": {}, "id": short}));
    let data = store.content().read(digest).map_err(|e| e.to_string())?;
    let (_, loc) = send(
        host,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        Bytes::new(),
        "application/octet-stream",
    )
    .await?;
    let loc = loc.ok_or("the registry gave no upload location")?;
    let loc = loc
        .strip_prefix(&format!("http://{host}"))
        .unwrap_or(&loc)
        .to_string();
    let sep = if loc.contains('?') { '&' } else { '?' };
    send(
        host,
        "PUT",
        &format!("{loc}{sep}digest={digest}"),
        Bytes::from(data),
        "application/octet-stream",
    )
    .await?;
    progress(json!({"status": "Pushed", "progressDetail": {}, "id": short}));
    Ok(())
}

/// `docker push`: the image's layers and config, then its manifest byte for byte (so the
/// digest is the same everywhere), to a registry on this machine.
pub async fn push(
    store: Arc<ImageStore>,
    reference: &Reference,
    progress: Progress,
) -> Result<Digest, String> {
    let host = reference.domain().to_string();
    let shown = reference.familiar();
    if !local(&host) {
        return Err(format!(
            "pushing {shown}: only registries on this machine (127.0.0.1, localhost) over plain HTTP so far"
        ));
    }
    let image = store
        .resolve(&reference.to_string())
        .ok_or_else(|| format!("An image does not exist locally with the tag: {shown}"))?;
    let repo = reference.path().to_string();
    let tag = reference.tag().unwrap_or("latest").to_string();
    progress(json!({"status": format!("The push refers to repository [{}]", reference.name())}));
    for l in &image.layers {
        push_blob(&store, &host, &repo, &l.blob, &progress).await?;
    }
    let quiet: Progress = Box::new(|_| {});
    push_blob(&store, &host, &repo, &image.config, &quiet).await?;
    let manifest = store
        .content()
        .read(&image.manifest)
        .map_err(|e| e.to_string())?;
    let kind = serde_json::from_slice::<Value>(&manifest)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(String::from))
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
    let size = manifest.len();
    send(
        &host,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        Bytes::from(manifest),
        &kind,
    )
    .await?;
    let _ = store.add_repo_digest(&image.manifest, &reference.name());
    progress(json!({"status": format!("{tag}: digest: {} size: {size}", image.manifest)}));
    Ok(image.manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_this_machine() {
        assert!(local("127.0.0.1:5000"));
        assert!(local("localhost:5000"));
        assert!(local("localhost"));
        assert!(!local("docker.io"));
        assert!(!local("example.com:5000"));
        assert!(!local("127example.com"));
    }
}
