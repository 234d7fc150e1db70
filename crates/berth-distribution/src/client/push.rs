//! `docker push`: the layers a few at a time (skipped when the repository has them, mounted
//! from another repository of the same registry when the image came from there, otherwise
//! streamed from the content store: POST, one PATCH, PUT), then the config, then the
//! manifest byte for byte so its digest is the same everywhere. Layers are stored
//! compressed, so nothing is compressed again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use berth_store::image::{ImageStore, Layer};
use berth_types::auth::AuthConfig;
use berth_types::{Digest, Reference};
use futures_util::StreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use super::auth::error_message;
use super::{api_host, status_text, Client, Progress, Session};

/// Progress is reported at most once per this many bytes.
pub(super) const PROGRESS_STEP: u64 = 512 << 10;

impl Client {
    /// `docker push`; returns the manifest's digest.
    pub async fn push(
        self: &Arc<Self>,
        store: Arc<ImageStore>,
        reference: &Reference,
        auth: &AuthConfig,
        progress: Progress,
    ) -> Result<Digest, String> {
        let shown = reference.familiar();
        let image = store
            .resolve(&reference.to_string())
            .ok_or_else(|| format!("An image does not exist locally with the tag: {shown}"))?;
        let host = api_host(reference.domain()).to_string();
        let repo = reference.path().to_string();
        let tag = reference.tag().unwrap_or("latest").to_string();
        progress(
            json!({"status": format!("The push refers to repository [{}]", reference.name())}),
        );
        // A repository of the same registry this image came from or went to: its blobs
        // can be mounted rather than sent.
        let from: Option<String> = store
            .repo_digests(&image.manifest)
            .iter()
            .filter_map(|r| r.split_once('@').map(|(n, _)| n.to_string()))
            .filter_map(|n| n.parse::<Reference>().ok())
            .find(|r| r.domain() == reference.domain() && r.path() != repo)
            .map(|r| r.path().to_string());
        let mut scopes = vec![format!("repository:{repo}:pull,push")];
        if let Some(f) = &from {
            scopes.push(format!("repository:{f}:pull"));
        }
        let s = self.session(&host, scopes, auth).await?;
        let progress = Arc::new(progress);
        let limit = Arc::new(tokio::sync::Semaphore::new(
            self.options().max_uploads.max(1),
        ));
        for l in &image.layers {
            progress(
                json!({"status": "Preparing", "progressDetail": {}, "id": &l.blob.hex()[..12]}),
            );
        }
        // Registries get compressed layers, as from Docker: uncompressed ones are
        // compressed once (each on every core, one after another) and kept for later
        // pushes. Largest first: what is left to upload after the last compression is
        // then the smallest layer.
        let mut jobs: Vec<(usize, Layer)> = image
            .layers
            .iter()
            .cloned()
            .enumerate()
            .filter(|(_, l)| uncompressed(&l.media_type))
            .collect();
        jobs.sort_by_key(|(_, l)| std::cmp::Reverse(l.size));
        let mut ready: Vec<Option<Compressed>> = image.layers.iter().map(|_| None).collect();
        let mut senders = Vec::new();
        for (i, _) in &jobs {
            let (tx, rx) = tokio::sync::oneshot::channel();
            ready[*i] = Some(rx);
            senders.push(tx);
        }
        let compressor = {
            let store = store.clone();
            tokio::spawn(async move {
                for ((_, layer), tx) in jobs.into_iter().zip(senders) {
                    let store = store.clone();
                    let r = tokio::task::spawn_blocking(move || store.compressed_layer(&layer))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()));
                    let _ = tx.send(r);
                }
            })
        };
        // A push that ends early stops the compressions it no longer needs.
        let _stop = AbortOnDrop(compressor);
        let uploads = image.layers.iter().zip(ready).map(|(l, compressed)| {
            let (store, progress, limit) = (store.clone(), progress.clone(), limit.clone());
            let mut s = s.fork();
            let (repo, from) = (repo.clone(), from.clone());
            async move {
                let short = l.blob.hex()[..12].to_string();
                let t0 = std::time::Instant::now();
                let sent = match compressed {
                    Some(rx) => Some(rx.await.map_err(|e| e.to_string())??),
                    None => None,
                };
                let t1 = t0.elapsed();
                let _permit = match limit.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        progress(json!({"status": "Waiting", "progressDetail": {}, "id": short}));
                        limit.acquire_owned().await.map_err(|e| e.to_string())?
                    }
                };
                let blob = sent.as_ref().map_or(&l.blob, |(d, _)| d);
                let t = Target::new(&s, &store, &repo, from.as_deref(), &progress)?;
                push_blob(&mut s, &t, blob, &short).await?;
                tracing::debug!(
                    "layer {short}: compressed (or found) after {t1:.2?}, pushed in {:.2?}",
                    t0.elapsed() - t1
                );
                Ok::<_, String>(sent)
            }
        });
        let sent = futures_util::future::try_join_all(uploads).await?;
        let mut s = s.fork();
        let quiet: Progress = Box::new(|_| {});
        let short = image.config.hex()[..12].to_string();
        let t = Target::new(&s, &store, &repo, from.as_deref(), &quiet)?;
        push_blob(&mut s, &t, &image.config, &short).await?;
        let stored = store
            .content()
            .read(&image.manifest)
            .map_err(|e| e.to_string())?;
        let mut v: Value = serde_json::from_slice(&stored).map_err(|e| format!("manifest: {e}"))?;
        let kind = v["mediaType"]
            .as_str()
            .unwrap_or("application/vnd.oci.image.manifest.v1+json")
            .to_string();
        // The stored manifest byte for byte, unless layers were compressed for the push.
        let manifest = if sent.iter().all(Option::is_none) {
            stored
        } else {
            let gzip = if kind.contains("docker") {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            } else {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            };
            let layers = v["layers"]
                .as_array_mut()
                .ok_or("manifest without layers")?;
            for (l, sent) in layers.iter_mut().zip(&sent) {
                if let Some((d, size)) = sent {
                    l["mediaType"] = json!(gzip);
                    l["digest"] = json!(d.to_string());
                    l["size"] = json!(size);
                }
            }
            serde_json::to_vec(&v).map_err(|e| e.to_string())?
        };
        let digest = Digest::sha256(&manifest);
        let size = manifest.len();
        let url = s.url(&format!("/v2/{repo}/manifests/{tag}"));
        let resp = s
            .send(
                |c, _| {
                    c.put(&url)
                        .header(CONTENT_TYPE, &kind)
                        .body(manifest.clone())
                },
                true,
            )
            .await?;
        expect(
            resp,
            &[StatusCode::CREATED, StatusCode::OK, StatusCode::ACCEPTED],
            reference,
        )
        .await?;
        let _ = store.add_repo_digest(&image.manifest, &reference.name(), &digest);
        progress(json!({"status": format!("{tag}: digest: {digest} size: {size}")}));
        Ok(digest)
    }
}

impl Session {
    /// Another session with the same registry, scopes and authorization (parallel work).
    pub(super) fn fork(&self) -> Session {
        Session {
            client: self.client.clone(),
            endpoint: self.endpoint.clone(),
            scopes: self.scopes.clone(),
            auth: self.auth.clone(),
            authorization: self.authorization.clone(),
            attempts: self.attempts,
        }
    }
}

/// The response if its status is one of `ok`; otherwise the registry's error in Docker's
/// words.
async fn expect(resp: Response, ok: &[StatusCode], r: &Reference) -> Result<Response, String> {
    let status = resp.status();
    if ok.contains(&status) {
        return Ok(resp);
    }
    let body = resp.bytes().await.unwrap_or_default();
    let detail = error_message(&body).unwrap_or_else(|| status_text(status));
    Err(match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            format!("denied: requested access to the resource is denied ({detail})")
        }
        _ => format!("pushing {}: {detail}", r.familiar()),
    })
}

fn location(resp: &Response) -> Result<String, String> {
    resp.headers()
        .get(LOCATION)
        .and_then(|l| l.to_str().ok())
        .map(String::from)
        .ok_or_else(|| "the registry gave no upload location".to_string())
}

/// A layer's compressed blob (digest, size), when it is ready.
type Compressed = tokio::sync::oneshot::Receiver<Result<(Digest, u64), String>>;

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether a layer's media type is an uncompressed tar.
fn uncompressed(media_type: &str) -> bool {
    media_type == berth_store::image::MEDIA_LAYER
        || media_type == "application/vnd.docker.image.rootfs.diff.tar"
}

/// Blobs above this size are streamed in a PATCH; smaller ones go in the closing PUT.
const MONOLITHIC: u64 = 256 << 10;

/// The first chunk size when a registry (or the proxy in front of it) refuses a whole
/// blob in one request: halved on each refusal.
const FIRST_CHUNK: u64 = 16 << 20;

/// Where one push's blobs go.
struct Target<'a> {
    store: &'a ImageStore,
    repo: &'a str,
    /// A repository of the same registry to mount blobs from.
    from: Option<&'a str>,
    progress: &'a Progress,
    /// The repository, for error messages.
    name: Reference,
}

impl<'a> Target<'a> {
    fn new(
        s: &Session,
        store: &'a ImageStore,
        repo: &'a str,
        from: Option<&'a str>,
        progress: &'a Progress,
    ) -> Result<Target<'a>, String> {
        let name = format!("{}/{repo}", s.endpoint.host)
            .parse()
            .map_err(|e| format!("{e}"))?;
        Ok(Target {
            store,
            repo,
            from,
            progress,
            name,
        })
    }

    fn say(&self, status: &str, short: &str) {
        (self.progress)(json!({"status": status, "progressDetail": {}, "id": short}));
    }
}

/// One blob, unless the repository has it; retried from a fresh upload a few times.
/// `short` names it in the progress (the layer as the image lists it).
async fn push_blob(
    s: &mut Session,
    t: &Target<'_>,
    digest: &Digest,
    short: &str,
) -> Result<(), String> {
    let head_url = s.url(&format!("/v2/{}/blobs/{digest}", t.repo));
    let head = s.send(|c, _| c.head(&head_url), true).await?;
    if head.status() == StatusCode::OK {
        t.say("Layer already exists", short);
        return Ok(());
    }
    let mut attempt = 1;
    loop {
        match upload(s, t, digest, short).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < s.attempts && !e.starts_with("denied") => {
                tracing::debug!("upload of {digest} failed ({e}), again");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// POST (or a cross-repository mount), then the bytes: small blobs in the closing PUT,
/// others streamed in one PATCH, or in chunks when a registry refuses that as too large.
async fn upload(
    s: &mut Session,
    t: &Target<'_>,
    digest: &Digest,
    short: &str,
) -> Result<(), String> {
    let mut start = s.url(&format!("/v2/{}/blobs/uploads/", t.repo));
    if let Some(f) = t.from {
        start = format!("{start}?mount={digest}&from={f}");
    }
    let resp = s
        .send(|c, _| c.post(&start).header(CONTENT_LENGTH, 0), true)
        .await?;
    if let (StatusCode::CREATED, Some(f)) = (resp.status(), t.from) {
        t.say(&format!("Mounted from {f}"), short);
        return Ok(());
    }
    let resp = expect(resp, &[StatusCode::ACCEPTED], &t.name).await?;
    let mut loc = s.resolve(&location(&resp)?);
    let path = t.store.content().path(digest);
    let size = std::fs::metadata(&path)
        .map_err(|e| format!("blob {digest}: {e}"))?
        .len();
    let mut last: Vec<u8> = Vec::new();
    if size <= MONOLITHIC {
        last = std::fs::read(&path).map_err(|e| format!("blob {digest}: {e}"))?;
    } else {
        let resp = patch_stream(s, &loc, &path, size, short, t.progress).await?;
        loc = if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
            tracing::debug!(
                "{}: a whole blob is too large, sending chunks",
                s.endpoint.host
            );
            patch_chunks(s, t, loc, &path, size, short).await?
        } else {
            let resp = expect(
                resp,
                &[StatusCode::ACCEPTED, StatusCode::NO_CONTENT],
                &t.name,
            )
            .await?;
            s.resolve(&location(&resp)?)
        };
    }
    let sep = if loc.contains('?') { '&' } else { '?' };
    let done = format!("{loc}{sep}digest={digest}");
    let resp = s
        .send(
            |c, _| {
                c.put(&done)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, last.len())
                    .body(last.clone())
            },
            false,
        )
        .await?;
    expect(
        resp,
        &[StatusCode::CREATED, StatusCode::NO_CONTENT],
        &t.name,
    )
    .await?;
    t.say("Pushed", short);
    Ok(())
}

/// The whole blob in one streamed PATCH, its progress reported as it goes.
async fn patch_stream(
    s: &Session,
    loc: &str,
    path: &std::path::Path,
    size: u64,
    short: &str,
    progress: &Progress,
) -> Result<Response, String> {
    let sent = Arc::new(AtomicU64::new(0));
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // The body counts what it sent; the progress is read from the counter below.
    let stream = {
        let sent = sent.clone();
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 256 << 10).map(
            move |chunk| {
                if let Ok(c) = &chunk {
                    sent.fetch_add(c.len() as u64, Ordering::Relaxed);
                }
                chunk
            },
        )
    };
    let patch = s
        .endpoint
        .http
        .patch(loc)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(stream));
    let patch = match &s.authorization {
        Some(a) => patch.header(reqwest::header::AUTHORIZATION, a.clone()),
        None => patch,
    };
    let send = patch.send();
    tokio::pin!(send);
    let mut shown = 0u64;
    loop {
        tokio::select! {
            r = &mut send => return r.map_err(|e| super::error_text(&e)),
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                let now = sent.load(Ordering::Relaxed);
                if now >= shown + PROGRESS_STEP {
                    shown = now;
                    progress(json!({"status": "Pushing", "id": short,
                        "progressDetail": {"current": now, "total": size}}));
                }
            }
        }
    }
}

/// The blob in chunks (`Content-Range`), each PATCH to the location the last answer gave;
/// a chunk refused as too large is sent again in halves. Returns the final location.
async fn patch_chunks(
    s: &mut Session,
    t: &Target<'_>,
    mut loc: String,
    path: &std::path::Path,
    size: u64,
    short: &str,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let (mut offset, mut chunk) = (0u64, FIRST_CHUNK);
    while offset < size {
        let n = chunk.min(size - offset);
        let mut buf = vec![0u8; n as usize];
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .and(file.read_exact(&mut buf).await.map(|_| ()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let buf = bytes::Bytes::from(buf);
        let range = format!("{offset}-{}", offset + n - 1);
        let resp = s
            .send(
                |c, _| {
                    c.patch(&loc)
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, n)
                        .header("Content-Range", &range)
                        .body(buf.clone())
                },
                true,
            )
            .await?;
        if resp.status() == StatusCode::PAYLOAD_TOO_LARGE && n > 64 << 10 {
            chunk = n / 2;
            continue;
        }
        let resp = expect(
            resp,
            &[StatusCode::ACCEPTED, StatusCode::NO_CONTENT],
            &t.name,
        )
        .await?;
        loc = s.resolve(&location(&resp)?);
        offset += n;
        (t.progress)(json!({"status": "Pushing", "id": short,
            "progressDetail": {"current": offset, "total": size}}));
    }
    Ok(loc)
}
