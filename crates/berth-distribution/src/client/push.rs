//! `docker push`: the layers a few at a time (skipped when the repository has them, mounted
//! from another repository of the same registry when the image came from there, otherwise
//! streamed from the content store: POST, one PATCH, PUT), then the config, then the
//! manifest byte for byte so its digest is the same everywhere. Layers are stored
//! compressed, so nothing is compressed again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use berth_store::image::ImageStore;
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
        let uploads = image.layers.iter().map(|l| {
            let (store, progress, limit) = (store.clone(), progress.clone(), limit.clone());
            let mut s = s.fork();
            let (repo, from) = (repo.clone(), from.clone());
            async move {
                let short = l.blob.hex()[..12].to_string();
                let _permit = match limit.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        progress(json!({"status": "Waiting", "progressDetail": {}, "id": short}));
                        limit.acquire_owned().await.map_err(|e| e.to_string())?
                    }
                };
                push_blob(&mut s, &store, &repo, from.as_deref(), &l.blob, &progress).await
            }
        });
        for r in futures_util::future::join_all(uploads).await {
            r?;
        }
        let mut s = s.fork();
        let quiet: Progress = Box::new(|_| {});
        push_blob(
            &mut s,
            &store,
            &repo,
            from.as_deref(),
            &image.config,
            &quiet,
        )
        .await?;
        let manifest = store
            .content()
            .read(&image.manifest)
            .map_err(|e| e.to_string())?;
        let kind = serde_json::from_slice::<Value>(&manifest)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(String::from))
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
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
        let _ = store.add_repo_digest(&image.manifest, &reference.name(), &image.manifest);
        progress(json!({"status": format!("{tag}: digest: {} size: {size}", image.manifest)}));
        Ok(image.manifest)
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

/// One blob, unless the repository has it; retried from a fresh upload a few times.
async fn push_blob(
    s: &mut Session,
    store: &ImageStore,
    repo: &str,
    from: Option<&str>,
    digest: &Digest,
    progress: &Progress,
) -> Result<(), String> {
    let short = digest.hex()[..12].to_string();
    let r: Reference = format!("{}/{repo}", s.endpoint.host)
        .parse()
        .map_err(|e| format!("{e}"))?;
    let head_url = s.url(&format!("/v2/{repo}/blobs/{digest}"));
    let head = s.send(|c, _| c.head(&head_url), true).await?;
    if head.status() == StatusCode::OK {
        progress(json!({"status": "Layer already exists", "progressDetail": {}, "id": short}));
        return Ok(());
    }
    let mut attempt = 1;
    loop {
        match upload(s, store, repo, from, digest, progress, &r).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < s.attempts && !e.starts_with("denied") => {
                tracing::debug!("upload of {digest} failed ({e}), again");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn upload(
    s: &mut Session,
    store: &ImageStore,
    repo: &str,
    from: Option<&str>,
    digest: &Digest,
    progress: &Progress,
    r: &Reference,
) -> Result<(), String> {
    let short = digest.hex()[..12].to_string();
    let mut start = s.url(&format!("/v2/{repo}/blobs/uploads/"));
    if let Some(f) = from {
        start = format!("{start}?mount={digest}&from={f}");
    }
    let resp = s
        .send(|c, _| c.post(&start).header(CONTENT_LENGTH, 0), true)
        .await?;
    if resp.status() == StatusCode::CREATED && from.is_some() {
        let f = from.unwrap_or_default();
        progress(json!({"status": format!("Mounted from {f}"), "progressDetail": {}, "id": short}));
        return Ok(());
    }
    let resp = expect(resp, &[StatusCode::ACCEPTED], r).await?;
    let loc = s.resolve(&location(&resp)?);
    let path = store.content().path(digest);
    let size = std::fs::metadata(&path)
        .map_err(|e| format!("blob {digest}: {e}"))?
        .len();
    let sent = Arc::new(AtomicU64::new(0));
    let file = std::fs::File::open(&path).map_err(|e| format!("blob {digest}: {e}"))?;
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
    let body = reqwest::Body::wrap_stream(stream);
    let patch = s
        .endpoint
        .http
        .patch(&loc)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_LENGTH, size)
        .body(body);
    let patch = match &s.authorization {
        Some(a) => patch.header(reqwest::header::AUTHORIZATION, a.clone()),
        None => patch,
    };
    let send = patch.send();
    tokio::pin!(send);
    let mut shown = 0u64;
    let resp = loop {
        tokio::select! {
            r = &mut send => break r.map_err(|e| super::error_text(&e))?,
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                let now = sent.load(Ordering::Relaxed);
                if now >= shown + PROGRESS_STEP {
                    shown = now;
                    progress(json!({"status": "Pushing", "id": short,
                        "progressDetail": {"current": now, "total": size}}));
                }
            }
        }
    };
    let resp = expect(resp, &[StatusCode::ACCEPTED, StatusCode::NO_CONTENT], r).await?;
    let loc = s.resolve(&location(&resp)?);
    let sep = if loc.contains('?') { '&' } else { '?' };
    let done = format!("{loc}{sep}digest={digest}");
    let resp = s
        .send(|c, _| c.put(&done).header(CONTENT_LENGTH, 0), false)
        .await?;
    expect(resp, &[StatusCode::CREATED, StatusCode::NO_CONTENT], r).await?;
    progress(json!({"status": "Pushed", "progressDetail": {}, "id": short}));
    Ok(())
}
