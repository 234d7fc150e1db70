//! `docker pull`: the manifest (this platform's from an index), then the config and the
//! layers, a few at a time, each streamed into a content-store ingest and verified on
//! commit; an ingest left by an interrupted pull is continued with `Range`. Then the
//! layers are unpacked in order.

use std::io::Write;
use std::sync::Arc;

use berth_store::image::{Image, ImageStore};
use berth_types::auth::AuthConfig;
use berth_types::{Digest, Hasher, Reference};
use futures_util::StreamExt;
use reqwest::header::{ACCEPT, RANGE};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::auth::error_message;
use super::push::PROGRESS_STEP;
use super::{api_host, status_text, Client, Progress, Session};

const MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Manifests larger than this are refused (registries refuse them too).
const MANIFEST_LIMIT: usize = 4 << 20;

/// `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// This machine's.
    pub fn host() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: berth_store::image::go_arch().into(),
            variant: None,
        }
    }

    /// `linux/arm64/v8`, `linux/amd64`, `arm64` (Linux implied).
    pub fn parse(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.trim().split('/').collect();
        let bad = || format!("\"{s}\": unknown operating system or architecture");
        let (os, arch, variant) = match parts.as_slice() {
            [arch] if !arch.is_empty() => ("linux", *arch, None),
            [os, arch] => (*os, *arch, None),
            [os, arch, v] => (*os, *arch, Some(v.to_string())),
            _ => return Err(bad()),
        };
        if os.is_empty() || arch.is_empty() {
            return Err(bad());
        }
        let arch = match arch {
            "x86_64" | "x86-64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        };
        Ok(Platform {
            os: os.to_lowercase(),
            architecture: arch.to_lowercase(),
            variant,
        })
    }

    fn matches(&self, p: &Value) -> bool {
        p["os"] == self.os.as_str()
            && p["architecture"] == self.architecture.as_str()
            && match (&self.variant, p["variant"].as_str()) {
                (Some(want), Some(got)) => want == got,
                _ => true,
            }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The repository as Docker names it in messages (`busybox`, `127.0.0.1:5000/a/b`).
pub fn familiar_name(r: &Reference) -> String {
    if r.domain() == "docker.io" {
        r.path()
            .strip_prefix("library/")
            .unwrap_or(r.path())
            .to_string()
    } else {
        r.name()
    }
}

fn digest_of(algorithm_of: &Digest, data: &[u8]) -> Digest {
    let mut h = Hasher::new(algorithm_of.algorithm());
    h.update(data);
    h.finish()
}

/// A blob as a manifest lists it.
struct Descriptor {
    digest: Digest,
    size: u64,
    media_type: String,
}

fn descriptor(d: &Value) -> Result<Descriptor, String> {
    let digest: Digest = d["digest"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("bad digest in the manifest: {e}"))?;
    Ok(Descriptor {
        digest,
        size: d["size"].as_u64().unwrap_or(0),
        media_type: d["mediaType"].as_str().unwrap_or_default().to_string(),
    })
}

impl Client {
    /// `docker pull`: the image into the store, tagged by `reference` (if it has a tag).
    pub async fn pull(
        self: &Arc<Self>,
        store: Arc<ImageStore>,
        reference: &Reference,
        auth: &AuthConfig,
        platform: Option<&Platform>,
        progress: Progress,
    ) -> Result<Image, String> {
        let repo = reference.path().to_string();
        let want = match (reference.digest(), reference.tag()) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) => "latest".to_string(),
        };
        let platform = platform.cloned().unwrap_or_else(Platform::host);
        if reference.digest().is_none() {
            progress(json!({"status": format!("Pulling from {repo}"), "id": &want}));
        }
        // Docker Hub's images come from the mirrors first, if any answer.
        let mut hosts: Vec<String> = Vec::new();
        if reference.domain() == "docker.io" {
            hosts.extend(self.options().mirrors);
        }
        hosts.push(api_host(reference.domain()).to_string());
        let scopes = vec![format!("repository:{repo}:pull")];
        let mut found = None;
        let mut last_err = String::new();
        for (i, host) in hosts.iter().enumerate() {
            let mirror = i + 1 < hosts.len();
            // Mirrors are asked anonymously: the credentials are Docker Hub's.
            let creds = if mirror {
                AuthConfig::default()
            } else {
                auth.clone()
            };
            let attempt = async {
                let mut s = self.session(host, scopes.clone(), &creds).await?;
                let m = manifest(&mut s, reference, &repo, &want).await?;
                Ok::<_, String>((s, m))
            };
            match attempt.await {
                Ok(x) => {
                    found = Some(x);
                    break;
                }
                Err(e) if mirror => {
                    tracing::info!("mirror {host} failed for {}: {e}", reference.familiar());
                }
                Err(e) => last_err = e,
            }
        }
        let Some((mut s, (mut bytes, mut digest, kind))) = found else {
            return Err(last_err);
        };
        let mut v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("manifest: {e}"))?;
        if v["manifests"].is_array() || kind.contains("index") || kind.contains("list") {
            let pick = v["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| platform.matches(&m["platform"]))
                .ok_or_else(|| {
                    format!("no matching manifest for {platform} in the manifest list entries")
                })?;
            let d = pick["digest"].as_str().unwrap_or_default().to_string();
            (bytes, digest, _) = manifest(&mut s, reference, &repo, &d).await?;
            v = serde_json::from_slice(&bytes).map_err(|e| format!("manifest: {e}"))?;
        }
        if v["schemaVersion"] == 1 {
            return Err(format!(
                "{}: schema 1 manifests are not supported (the registry should convert them)",
                reference.familiar()
            ));
        }
        let shown = reference.familiar();
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
        let config = descriptor(&v["config"])?;
        let layers: Vec<Descriptor> = v["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(descriptor)
            .collect::<Result<_, _>>()?;
        let progress = Arc::new(progress);
        let quiet: Progress = Box::new(|_| {});
        self.fetch_blob(&mut s, &store, &repo, &config, &quiet)
            .await?;
        // The layers, a few at a time, each in its own session (sharing the token).
        let limit = Arc::new(tokio::sync::Semaphore::new(
            self.options().max_downloads.max(1),
        ));
        for l in &layers {
            let short = &l.digest.hex()[..12];
            if !store.content().exists(&l.digest) {
                progress(json!({"status": "Pulling fs layer", "progressDetail": {}, "id": short}));
            }
        }
        let downloads = layers.iter().map(|l| {
            let (store, progress, limit) = (store.clone(), progress.clone(), limit.clone());
            let mut s = s.fork();
            let this = self.clone();
            let repo = repo.clone();
            async move {
                let short = l.digest.hex()[..12].to_string();
                let _permit = match limit.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        if !store.content().exists(&l.digest) {
                            progress(
                                json!({"status": "Waiting", "progressDetail": {}, "id": short}),
                            );
                        }
                        limit.acquire_owned().await.map_err(|e| e.to_string())?
                    }
                };
                this.fetch_blob(&mut s, &store, &repo, l, &progress).await
            }
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
            .map(|l| (l.digest.clone(), l.media_type.clone()))
            .collect();
        for l in &layers {
            progress(
                json!({"status": "Extracting", "progressDetail": {}, "id": &l.digest.hex()[..12]}),
            );
        }
        let image = {
            let store = store.clone();
            let manifest_bytes = bytes.to_vec();
            let config = config.digest.clone();
            tokio::task::spawn_blocking(move || {
                store.add_pulled(&manifest_bytes, &config, &entries, &tags)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
        };
        let _ = store.add_repo_digest(&image.manifest, &reference.name());
        for l in &layers {
            progress(
                json!({"status": "Pull complete", "progressDetail": {}, "id": &l.digest.hex()[..12]}),
            );
        }
        progress(json!({"status": format!("Digest: {digest}")}));
        progress(json!({"status": format!("Status: Downloaded newer image for {shown}")}));
        Ok(image)
    }

    /// Downloads one blob into the content store (verified on commit) unless it is there;
    /// continues a partial download left by an earlier pull, and resumes after a dropped
    /// connection, both with `Range`.
    async fn fetch_blob(
        &self,
        s: &mut Session,
        store: &ImageStore,
        repo: &str,
        blob: &Descriptor,
        progress: &Progress,
    ) -> Result<(), String> {
        let digest = &blob.digest;
        let short = digest.hex()[..12].to_string();
        let lock = self.download_lock(digest);
        let _held = lock.lock().await;
        if store.content().exists(digest) {
            progress(json!({"status": "Already exists", "progressDetail": {}, "id": short}));
            return Ok(());
        }
        let mut ingest = store
            .content()
            .ingest(&format!("pull-{digest}"), Some((digest.clone(), blob.size)))
            .map_err(|e| e.to_string())?;
        let url = s.url(&format!("/v2/{repo}/blobs/{digest}"));
        let mut failures = 0;
        loop {
            let offset = ingest.offset();
            if blob.size > 0 && offset >= blob.size {
                break;
            }
            let resp = s
                .send(
                    |c, _| {
                        let rb = c.get(&url);
                        if offset > 0 {
                            rb.header(RANGE, format!("bytes={offset}-"))
                        } else {
                            rb
                        }
                    },
                    true,
                )
                .await?;
            match resp.status() {
                StatusCode::PARTIAL_CONTENT if offset > 0 => {}
                StatusCode::OK => {
                    if offset > 0 {
                        // The registry ignored the range: from the start again.
                        ingest.restart().map_err(|e| e.to_string())?;
                    }
                }
                StatusCode::RANGE_NOT_SATISFIABLE => {
                    ingest.restart().map_err(|e| e.to_string())?;
                    continue;
                }
                st => {
                    let body = resp.bytes().await.unwrap_or_default();
                    let msg = error_message(&body).unwrap_or_else(|| status_text(st));
                    return Err(format!("fetching blob {digest}: {msg}"));
                }
            }
            let mut body = resp.bytes_stream();
            let mut broken = None;
            let mut shown = 0u64;
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(data) => {
                        if ingest.offset() + data.len() as u64 > blob.size && blob.size > 0 {
                            return Err(format!(
                                "fetching blob {digest}: the registry sent more than its {} bytes",
                                blob.size
                            ));
                        }
                        ingest
                            .write_all(&data)
                            .map_err(|e| format!("storing {digest}: {e}"))?;
                        let now = ingest.offset();
                        if now >= shown + PROGRESS_STEP || now == blob.size {
                            shown = now;
                            progress(json!({"status": "Downloading", "id": short,
                                "progressDetail": {"current": now, "total": blob.size}}));
                        }
                    }
                    Err(e) => {
                        broken = Some(super::error_text(&e));
                        break;
                    }
                }
            }
            match broken {
                Some(e) => {
                    failures += 1;
                    if failures >= s.attempts {
                        return Err(format!(
                            "fetching blob {digest}: {e} (kept {} bytes for the next pull)",
                            ingest.offset()
                        ));
                    }
                    tracing::debug!("download of {digest} broke at {}: {e}", ingest.offset());
                }
                None if ingest.offset() < blob.size => {
                    // A clean end short of the size: ask for the rest.
                    failures += 1;
                    if failures >= s.attempts {
                        return Err(format!(
                            "fetching blob {digest}: the registry sent {} of {} bytes",
                            ingest.offset(),
                            blob.size
                        ));
                    }
                }
                None => break,
            }
        }
        progress(json!({"status": "Verifying Checksum", "progressDetail": {}, "id": short}));
        ingest.commit().map_err(|e| match e {
            berth_store::content::ContentError::DigestMismatch { .. } => {
                format!("filesystem layer verification failed for digest {digest}")
            }
            e => e.to_string(),
        })?;
        progress(json!({"status": "Download complete", "progressDetail": {}, "id": short}));
        Ok(())
    }
}

/// A manifest (or index) by tag or digest: checked against the digest asked for, or the
/// `Docker-Content-Digest` the registry sent; errors in Docker's words.
async fn manifest(
    s: &mut Session,
    reference: &Reference,
    repo: &str,
    want: &str,
) -> Result<(Vec<u8>, Digest, String), String> {
    let url = s.url(&format!("/v2/{repo}/manifests/{want}"));
    let resp = s
        .send(|c, _| c.get(&url).header(ACCEPT, MANIFESTS), true)
        .await?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.bytes().await.unwrap_or_default();
        let detail = error_message(&body);
        return Err(match status {
            StatusCode::NOT_FOUND => format!(
                "manifest for {} not found: {}",
                reference.familiar(),
                detail.unwrap_or_else(|| "manifest unknown: manifest unknown".into())
            ),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => format!(
                "pull access denied for {}, repository does not exist or may require 'docker login': {}",
                familiar_name(reference),
                detail.unwrap_or_else(|| "denied: requested access to the resource is denied".into())
            ),
            st => format!(
                "{}: {}",
                s.endpoint.host,
                detail.unwrap_or_else(|| status_text(st))
            ),
        });
    }
    let kind = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let claimed: Option<Digest> = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if resp.content_length().unwrap_or(0) > MANIFEST_LIMIT as u64 {
        return Err(format!(
            "the manifest of {} is over 4 MiB",
            reference.familiar()
        ));
    }
    let mut bytes = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| format!("reading the manifest: {}", super::error_text(&e)))?;
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MANIFEST_LIMIT {
            return Err(format!(
                "the manifest of {} is over 4 MiB",
                reference.familiar()
            ));
        }
    }
    let check = want.parse::<Digest>().ok().or(claimed);
    let digest = match check {
        Some(d) => {
            let got = digest_of(&d, &bytes);
            if got != d {
                return Err(format!(
                    "manifest verification failed for {}: the registry sent content with digest {got}, not {d}",
                    reference.familiar()
                ));
            }
            Digest::sha256(&bytes)
        }
        None => Digest::sha256(&bytes),
    };
    Ok((bytes, digest, kind))
}

#[cfg(test)]
mod tests {
    use super::super::DOCKER_HUB_API;
    use super::*;

    #[test]
    fn platforms() {
        assert_eq!(
            Platform::parse("linux/arm64/v8").unwrap(),
            Platform {
                os: "linux".into(),
                architecture: "arm64".into(),
                variant: Some("v8".into())
            }
        );
        assert_eq!(
            Platform::parse("x86_64").unwrap().to_string(),
            "linux/amd64"
        );
        assert!(Platform::parse("linux/").is_err());
        assert!(Platform::parse("a/b/c/d").is_err());
        let p = Platform::parse("linux/arm/v7").unwrap();
        assert!(p.matches(&json!({"os": "linux", "architecture": "arm", "variant": "v7"})));
        assert!(!p.matches(&json!({"os": "linux", "architecture": "arm", "variant": "v6"})));
        assert!(Platform::parse("linux/amd64")
            .unwrap()
            .matches(&json!({"os": "linux", "architecture": "amd64"})));
    }

    #[test]
    fn familiar_names() {
        let r: Reference = "busybox:1".parse().unwrap();
        assert_eq!(familiar_name(&r), "busybox");
        let r: Reference = "127.0.0.1:5000/a/b:1".parse().unwrap();
        assert_eq!(familiar_name(&r), "127.0.0.1:5000/a/b");
        assert_eq!(DOCKER_HUB_API, "registry-1.docker.io");
    }
}
