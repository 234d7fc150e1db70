//! `docker pull`: the manifest (this platform's from an index), then the config and the
//! layers, a few at a time, each streamed into a content-store ingest and verified on
//! commit; an ingest left by an interrupted pull is continued with `Range`. Then the
//! layers are unpacked in order.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_store::content::Ingest;
use berth_store::image::{Image, ImageStore};
use berth_store::layer::{self, Applied};
use berth_types::auth::AuthConfig;
use berth_types::{Digest, Hasher, Reference};
use bytes::Bytes;
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

/// A pull's last line.
fn status_line(newer: bool, shown: &str) -> String {
    if newer {
        format!("Status: Downloaded newer image for {shown}")
    } else {
        format!("Status: Image is up to date for {shown}")
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
        let progress = Arc::new(progress);
        let (image, newer) = self
            .pull_one(store, reference, auth, platform, &progress)
            .await?;
        progress(json!({ "status": status_line(newer, &reference.familiar()) }));
        Ok(image)
    }

    /// `docker pull -a`: every tag of the repository, one after the other.
    pub async fn pull_all_tags(
        self: &Arc<Self>,
        store: Arc<ImageStore>,
        repository: &Reference,
        auth: &AuthConfig,
        platform: Option<&Platform>,
        progress: Progress,
    ) -> Result<Vec<Image>, String> {
        let progress = Arc::new(progress);
        let mut images = Vec::new();
        let mut newer = false;
        for tag in self.tags(repository, auth).await? {
            let r: Reference = format!("{}:{tag}", repository.name())
                .parse()
                .map_err(|e| format!("tag {tag:?}: {e}"))?;
            let (image, n) = self
                .pull_one(store.clone(), &r, auth, platform, &progress)
                .await?;
            newer |= n;
            images.push(image);
        }
        progress(json!({ "status": status_line(newer, &familiar_name(repository)) }));
        Ok(images)
    }

    /// A pull without its closing status line: the image, and whether it is newer (the
    /// tag moved).
    async fn pull_one(
        self: &Arc<Self>,
        store: Arc<ImageStore>,
        reference: &Reference,
        auth: &AuthConfig,
        platform: Option<&Platform>,
        progress: &Arc<Progress>,
    ) -> Result<(Image, bool), String> {
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
        // What the tag names (an index, perhaps): Docker's "Digest:" and RepoDigests.
        let named = digest.clone();
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
        // Already here, under this manifest or with this config (the image ID: the same
        // image pushed with its layers compressed): just the tag. As with Docker, the image
        // is "newer" when the tag did not name it before.
        let config_id = v["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let here = store
            .list()
            .into_iter()
            .find(|(i, _)| i.manifest == digest || i.config.to_string() == config_id);
        if let Some((img, _)) = here {
            let mut retagged = false;
            if reference.digest().is_none() {
                let before = store.resolve(&reference.to_string()).map(|i| i.manifest);
                retagged = before.as_ref() != Some(&img.manifest);
                store
                    .tag(&img.config.to_string(), reference)
                    .map_err(|e| e.to_string())?;
            }
            let _ = store.add_repo_digest(&img.manifest, &reference.name(), &named);
            progress(json!({"status": format!("Digest: {named}")}));
            return Ok((img, retagged));
        }
        let config = descriptor(&v["config"])?;
        let layers: Vec<Descriptor> = v["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(descriptor)
            .collect::<Result<_, _>>()?;
        // Everything this pull stores stays out of garbage collection until it is recorded.
        let lease = Arc::new(store.lease());
        lease.blob(&config.digest);
        let quiet: Progress = Box::new(|_| {});
        self.fetch_layer(&mut s, &store, &repo, &config, None, &quiet)
            .await?;
        // The config names each layer's diffID, so each layer's snapshot (keyed by the
        // chain of diffIDs below it) can be unpacked on its own, while it downloads.
        let config_json: Value = serde_json::from_slice(
            &store
                .content()
                .read(&config.digest)
                .map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("image config {}: {e}", config.digest))?;
        let diff_ids: Vec<Digest> =
            serde_json::from_value(config_json["rootfs"]["diff_ids"].clone())
                .map_err(|e| format!("image config {}: rootfs.diff_ids: {e}", config.digest))?;
        if diff_ids.len() != layers.len() {
            return Err(format!(
                "the manifest of {shown} has {} layers, its config {} diffIDs",
                layers.len(),
                diff_ids.len()
            ));
        }
        let mut chains: Vec<Digest> = Vec::new();
        for d in &diff_ids {
            chains.push(berth_store::image::chain_id(chains.last(), d));
        }
        for (l, chain) in layers.iter().zip(&chains) {
            lease.blob(&l.digest);
            lease.chain(chain);
            let short = &l.digest.hex()[..12];
            let status = if store.content().exists(&l.digest) && store.has_layer(chain) {
                "Already exists"
            } else {
                "Pulling fs layer"
            };
            progress(json!({"status": status, "progressDetail": {}, "id": short}));
        }
        // The layers, a few at a time, each in its own session (sharing the token).
        let limit = Arc::new(tokio::sync::Semaphore::new(
            self.options().max_downloads.max(1),
        ));
        let downloads = layers
            .iter()
            .zip(diff_ids.iter().zip(&chains))
            .map(|(l, unpack)| {
                let (store, progress, limit) = (store.clone(), progress.clone(), limit.clone());
                let mut s = s.fork();
                let this = self.clone();
                let repo = repo.clone();
                async move {
                    if store.content().exists(&l.digest) && store.has_layer(unpack.1) {
                        return Ok(());
                    }
                    let short = l.digest.hex()[..12].to_string();
                    let _permit = match limit.clone().try_acquire_owned() {
                        Ok(p) => p,
                        Err(_) => {
                            progress(
                                json!({"status": "Waiting", "progressDetail": {}, "id": short}),
                            );
                            limit.acquire_owned().await.map_err(|e| e.to_string())?
                        }
                    };
                    this.fetch_layer(&mut s, &store, &repo, l, Some(unpack), &progress)
                        .await
                }
            });
        // The first failure ends the pull (the others stop where they are; what they
        // downloaded stays for the next pull).
        futures_util::future::try_join_all(downloads).await?;
        let tags: Vec<Reference> = if reference.digest().is_none() {
            vec![reference.clone()]
        } else {
            Vec::new()
        };
        let entries: Vec<(Digest, String)> = layers
            .iter()
            .map(|l| (l.digest.clone(), l.media_type.clone()))
            .collect();
        let image = {
            let store = store.clone();
            let manifest_bytes = bytes.to_vec();
            let config = config.digest.clone();
            // Every layer is unpacked by now: this records the image.
            tokio::task::spawn_blocking(move || {
                store.add_pulled(&manifest_bytes, &config, &entries, &tags)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
        };
        drop(lease);
        let _ = store.add_repo_digest(&image.manifest, &reference.name(), &named);
        progress(json!({"status": format!("Digest: {named}")}));
        Ok((image, true))
    }

    /// One blob into the content store (verified on commit) unless it is there. With
    /// `unpack` (its diffID and chain ID), a layer is also unpacked into its snapshot in
    /// the same pass: the bytes go to the ingest and to the applier as they arrive, and
    /// the snapshot is published once both digests check out. A partial download left by
    /// an earlier pull, or by a dropped connection, is continued with `Range`.
    async fn fetch_layer(
        &self,
        s: &mut Session,
        store: &Arc<ImageStore>,
        repo: &str,
        blob: &Descriptor,
        unpack: Option<(&Digest, &Digest)>,
        progress: &Progress,
    ) -> Result<(), String> {
        let digest = &blob.digest;
        let short = digest.hex()[..12].to_string();
        let say = |status: &str| {
            progress(json!({"status": status, "progressDetail": {}, "id": &short}));
        };
        let lock = self.download_lock(digest);
        let _held = lock.lock().await;
        if store.content().exists(digest) {
            match unpack {
                Some(unpack) if !store.has_layer(unpack.1) => {
                    // Downloaded before (another image's layer) but not unpacked as this
                    // stack: from the stored blob.
                    say("Extracting");
                    let file = store
                        .content()
                        .open_blob(digest)
                        .map_err(|e| e.to_string())?;
                    let u = Unpacker::start(store, digest, Some((file, u64::MAX)))?;
                    let _ = u.finish_into(store, unpack, digest).await?;
                    say("Pull complete");
                    return Ok(());
                }
                _ => {
                    say("Already exists");
                    return Ok(());
                }
            }
        }
        let mut ingest = store
            .content()
            .ingest(&format!("pull-{digest}"), Some((digest.clone(), blob.size)))
            .map_err(|e| e.to_string())?;
        let mut unpacker = match unpack {
            Some(_) => Some(Unpacker::resume(store, digest, &ingest)?),
            None => None,
        };
        let url = s.url(&format!("/v2/{repo}/blobs/{digest}"));
        let mut failures = 0;
        let mut unpack_failed: Option<String> = None;
        // Where the time goes: storing (hash and write of the blob), waiting for the
        // applier, and the applier's own stages.
        let started = Instant::now();
        let (mut stored, mut held_back) = (Duration::ZERO, Duration::ZERO);
        let outcome: Result<(), String> = async {
            loop {
                let offset = ingest.offset();
                if blob.size > 0 && offset >= blob.size {
                    return Ok(());
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
                let from_start = match resp.status() {
                    StatusCode::PARTIAL_CONTENT if offset > 0 => false,
                    StatusCode::OK => offset > 0,
                    StatusCode::RANGE_NOT_SATISFIABLE => {
                        restart(store, digest, &mut ingest, &mut unpacker).await?;
                        continue;
                    }
                    st => {
                        let body = resp.bytes().await.unwrap_or_default();
                        let msg = error_message(&body).unwrap_or_else(|| status_text(st));
                        return Err(format!("fetching blob {digest}: {msg}"));
                    }
                };
                if from_start {
                    // The registry ignored the range: from the start again.
                    restart(store, digest, &mut ingest, &mut unpacker).await?;
                }
                let mut body = resp.bytes_stream();
                let mut broken = None;
                let mut shown = 0u64;
                while let Some(chunk) = body.next().await {
                    let data = match chunk {
                        Ok(data) => data,
                        Err(e) => {
                            broken = Some(super::error_text(&e));
                            break;
                        }
                    };
                    if blob.size > 0 && ingest.offset() + data.len() as u64 > blob.size {
                        return Err(format!(
                            "fetching blob {digest}: the registry sent more than its {} bytes",
                            blob.size
                        ));
                    }
                    let t = Instant::now();
                    ingest
                        .write_all(&data)
                        .map_err(|e| format!("storing {digest}: {e}"))?;
                    stored += t.elapsed();
                    if let Some(u) = &unpacker {
                        let t = Instant::now();
                        let sent = u.tx.send(data).await;
                        held_back += t.elapsed();
                        if sent.is_err() {
                            // The applier stopped. The download goes on: a blob that does
                            // not match its digest is reported as that, not as a bad tar.
                            let u = unpacker.take().expect("an unpacker");
                            unpack_failed = Some(u.abort(store).await);
                        }
                    }
                    let now = ingest.offset();
                    if now >= shown + PROGRESS_STEP || now == blob.size {
                        shown = now;
                        progress(json!({"status": "Downloading", "id": &short,
                            "progressDetail": {"current": now, "total": blob.size}}));
                    }
                }
                let short_of_size = ingest.offset() < blob.size;
                match broken {
                    None if !short_of_size => return Ok(()),
                    why => {
                        failures += 1;
                        let why = why.unwrap_or_else(|| {
                            format!(
                                "the registry sent {} of {} bytes",
                                ingest.offset(),
                                blob.size
                            )
                        });
                        if failures >= s.attempts {
                            return Err(format!(
                                "fetching blob {digest}: {why} (kept {} bytes for the next pull)",
                                ingest.offset()
                            ));
                        }
                        tracing::debug!("download of {digest} broke at {}: {why}", ingest.offset());
                    }
                }
            }
        }
        .await;
        if let Err(e) = outcome {
            if let Some(u) = unpacker {
                u.abort(store).await;
            }
            return Err(e);
        }
        say("Verifying Checksum");
        let committed = tokio::task::spawn_blocking(move || ingest.commit())
            .await
            .map_err(|e| e.to_string())?;
        if let Err(e) = committed {
            if let Some(u) = unpacker {
                u.abort(store).await;
            }
            return Err(match e {
                berth_store::content::ContentError::DigestMismatch { .. } => {
                    format!("filesystem layer verification failed for digest {digest}")
                }
                e => e.to_string(),
            });
        }
        say("Download complete");
        if let Some(e) = unpack_failed {
            return Err(format!("extracting {digest}: {e}"));
        }
        let (Some(u), Some(unpack)) = (unpacker, unpack) else {
            return Ok(());
        };
        say("Extracting");
        let t = u.finish_into(store, unpack, digest).await?;
        say("Pull complete");
        tracing::debug!(
            "layer {short}: {} bytes in {:.2?}; blob hash+write {:.2?}, download held back by the applier {:.2?}; applier waited for input {:.2?}, inflate {:.2?}, diffID hash {:.2?}, files {:.2?}",
            blob.size,
            started.elapsed(),
            stored,
            held_back,
            t.input,
            t.inflate,
            t.hash,
            t.write
        );
        Ok(())
    }
}

/// Starts a blob's download again from its first byte (a registry that would not continue
/// it), and its unpack with it.
async fn restart(
    store: &Arc<ImageStore>,
    digest: &Digest,
    ingest: &mut Ingest,
    unpacker: &mut Option<Unpacker>,
) -> Result<(), String> {
    ingest.restart().map_err(|e| e.to_string())?;
    if let Some(u) = unpacker.take() {
        u.abort(store).await;
        *unpacker = Some(Unpacker::start(store, digest, None)?);
    }
    Ok(())
}

/// The layer applier on a blocking thread, reading a layer's bytes as they are
/// downloaded (after what an earlier, interrupted pull left in the ingest, if anything).
struct Unpacker {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    staging: String,
    dir: std::path::PathBuf,
    task: tokio::task::JoinHandle<Result<Applied, String>>,
}

impl Unpacker {
    /// `prefix`: bytes read before the channel's (the ingest's earlier part, or a whole
    /// stored blob).
    fn start(
        store: &ImageStore,
        digest: &Digest,
        prefix: Option<(std::fs::File, u64)>,
    ) -> Result<Unpacker, String> {
        let (staging, dir) = store.stage_layer(digest).map_err(|e| e.to_string())?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let feed = Feed {
            prefix: prefix.map(|(f, n)| f.take(n)),
            rx,
            cur: Bytes::new(),
        };
        let d = dir.clone();
        let task =
            tokio::task::spawn_blocking(move || layer::apply(&d, feed).map_err(|e| e.to_string()));
        Ok(Unpacker {
            tx,
            staging,
            dir,
            task,
        })
    }

    /// For a download into `ingest`: what it holds already is read first.
    fn resume(store: &ImageStore, digest: &Digest, ingest: &Ingest) -> Result<Unpacker, String> {
        let prefix = if ingest.offset() > 0 {
            let f = std::fs::File::open(ingest.data_path()).map_err(|e| e.to_string())?;
            Some((f, ingest.offset()))
        } else {
            None
        };
        Unpacker::start(store, digest, prefix)
    }

    /// Stops the applier and drops its snapshot; returns its error, if it had one.
    async fn abort(self, store: &ImageStore) -> String {
        drop(self.tx);
        let e = match self.task.await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => "stopped".into(),
            Err(e) => e.to_string(),
        };
        store.discard_layer(&self.staging);
        e
    }

    /// Ends the input, waits for the applier and publishes the snapshot as `chain` if the
    /// diffID is the one the config names.
    async fn finish_into(
        self,
        store: &Arc<ImageStore>,
        (want, chain): (&Digest, &Digest),
        digest: &Digest,
    ) -> Result<layer::Timings, String> {
        let Unpacker {
            tx,
            staging,
            dir,
            task,
        } = self;
        drop(tx);
        let applied = match task.await.map_err(|e| e.to_string())? {
            Ok(a) => a,
            Err(e) => {
                store.discard_layer(&staging);
                return Err(format!("extracting {digest}: {e}"));
            }
        };
        if applied.diff_id != *want {
            store.discard_layer(&staging);
            return Err(format!(
                "layer {digest} unpacks to diffID {}, but the image config says {want}",
                applied.diff_id
            ));
        }
        let (store, chain) = (store.clone(), chain.clone());
        tokio::task::spawn_blocking(move || store.publish_layer(&staging, &dir, &chain))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(applied.timings)
    }
}

/// A `Read` over the prefix, then the bytes the download sends (end of input when the
/// sender is dropped).
struct Feed {
    prefix: Option<std::io::Take<std::fs::File>>,
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl Read for Feed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(p) = &mut self.prefix {
            match p.read(buf)? {
                0 => self.prefix = None,
                n => return Ok(n),
            }
        }
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// A manifest (or index) by tag or digest: checked against the digest asked for, or the
/// `Docker-Content-Digest` the registry sent; errors in Docker's words.
pub(super) async fn manifest(
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
