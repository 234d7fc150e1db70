//! Images: manifests and configs in the content store, their layers unpacked once into
//! snapshots (keyed by chain ID, so images share layers), tags in crash-safe metadata, and
//! `index.json` naming every tag so OCI tools read the store (`skopeo inspect oci:...`).
//!
//! Operations: import of a root filesystem tarball (with Docker's `--change` edits), and
//! `save`/`load` in the docker-archive format (`docker save` / `docker load`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use berth_types::{Digest, Reference};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::content::{atomic_write, ContentError, ContentStore};
use crate::layer::{self, Compression, LayerError};
use crate::snapshot::{self, SnapshotError, Snapshotter};

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const REF_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// gzip level of layers compressed for a push. Measured with benches/pull.sh on two cores:
/// level 3 compresses about 1.35x faster than Docker's level 6 for about 3% more bytes.
const PUSH_GZIP_LEVEL: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("invalid image archive: {0}")]
    Archive(String),
    #[error("invalid --change {0:?}: {1}")]
    Change(String, String),
    #[error("No such image: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("layer {index} has diffID {actual}, but the image config says {expected}")]
    DiffIdMismatch {
        index: usize,
        expected: Digest,
        actual: Digest,
    },
}

type Result<T> = std::result::Result<T, ImageError>;

fn io_ctx<T>(r: io::Result<T>, ctx: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|source| ImageError::Io {
        context: ctx(),
        source,
    })
}

/// One layer of an image as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub blob: Digest,
    pub media_type: String,
    pub size: u64,
    pub diff_id: Digest,
    pub chain_id: Digest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The image ID, as Docker names it: the config's digest.
    pub config: Digest,
    pub manifest: Digest,
    pub layers: Vec<Layer>,
    pub created: String,
}

impl Image {
    /// Docker's short image ID (12 hex characters of the config digest).
    pub fn short_id(&self) -> &str {
        &self.config.hex()[..12]
    }
    /// The snapshot ids of the layers, bottom first (what a container rootfs mounts).
    pub fn snapshot_ids(&self) -> Vec<String> {
        self.layers
            .iter()
            .map(|l| l.chain_id.hex().to_string())
            .collect()
    }
}

/// What [`ImageStore::gc`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    pub blobs: u64,
    pub snapshots: u64,
    pub bytes_freed: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    /// By manifest digest.
    images: BTreeMap<String, Image>,
    /// Full reference -> manifest digest.
    tags: BTreeMap<String, String>,
    /// Chain IDs whose snapshot is complete.
    layers: BTreeSet<String>,
    /// Manifest digest -> `repository@digest` names it has in registries it was pulled
    /// from or pushed to (Docker's RepoDigests).
    #[serde(default)]
    repo_digests: BTreeMap<String, BTreeSet<String>>,
    /// diffID of an uncompressed layer -> its gzip blob, made once for pushes.
    #[serde(default)]
    compressed: BTreeMap<String, (Digest, u64)>,
    /// The build cache: a step's key (its parent, instruction and inputs) -> the manifest
    /// digest of the image the step made.
    #[serde(default)]
    build_cache: BTreeMap<String, String>,
    /// Images a build made along the way (manifest digests): listed only with `-a`, kept
    /// by dangling prunes, removed by `builder prune`.
    #[serde(default)]
    intermediate: BTreeSet<String>,
}

pub struct ImageStore {
    root: PathBuf,
    content: ContentStore,
    snapshots: Box<dyn Snapshotter + Send + Sync>,
    meta: Mutex<Meta>,
    /// Container id -> the image ID it runs from: such images are not deleted (untagging
    /// them needs force) and not pruned, so their layers stay under the containers.
    in_use: Mutex<BTreeMap<String, Digest>>,
    leases: std::sync::Arc<Mutex<Leases>>,
    /// One compression at a time (each uses every core), so two pushes of a layer share
    /// the work and its ingest.
    compressing: Mutex<()>,
}

/// Blobs and layer snapshots of work not yet recorded as an image (a pull in flight).
#[derive(Default)]
struct Leases {
    next: u64,
    held: BTreeMap<u64, (BTreeSet<Digest>, BTreeSet<String>)>,
}

impl Leases {
    fn blobs(&self) -> impl Iterator<Item = &Digest> {
        self.held.values().flat_map(|(b, _)| b)
    }
    fn chains(&self) -> impl Iterator<Item = &String> {
        self.held.values().flat_map(|(_, c)| c)
    }
}

/// Keeps what it names from garbage collection until dropped: a pull stores blobs and
/// publishes layers before the image that references them is recorded.
pub struct Lease {
    id: u64,
    leases: std::sync::Arc<Mutex<Leases>>,
}

impl Lease {
    pub fn blob(&self, d: &Digest) {
        let mut l = self.leases.lock().expect("leases lock");
        l.held.entry(self.id).or_default().0.insert(d.clone());
    }
    pub fn chain(&self, chain: &Digest) {
        let mut l = self.leases.lock().expect("leases lock");
        l.held
            .entry(self.id)
            .or_default()
            .1
            .insert(chain.hex().to_string());
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut l) = self.leases.lock() {
            l.held.remove(&self.id);
        }
    }
}

/// The chain ID of a layer stack (OCI image spec): the first layer's diffID, then
/// sha256("<parent chain> <diffID>").
pub fn chain_id(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
    match parent {
        None => diff_id.clone(),
        Some(p) => Digest::sha256(format!("{p} {diff_id}").as_bytes()),
    }
}

fn overlay_supported() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .is_ok_and(|s| s.lines().any(|l| l.ends_with("\toverlay")))
}

impl ImageStore {
    /// Opens the store under `data_root` (content/, snapshots/, meta/).
    pub fn open(data_root: &Path) -> Result<ImageStore> {
        let content = ContentStore::open(&data_root.join("content"))?;
        let snaps = data_root.join("snapshots");
        let snapshots: Box<dyn Snapshotter + Send + Sync> = if overlay_supported() {
            Box::new(snapshot::Overlay::new(&snaps)?)
        } else {
            Box::new(snapshot::Copy::new(&snaps)?)
        };
        let meta_dir = data_root.join("meta");
        for d in [&meta_dir, &data_root.join("tmp")] {
            io_ctx(std::fs::create_dir_all(d), || {
                format!("creating {}", d.display())
            })?;
        }
        // Debris of a process that died mid-load or mid-write: the store has one owner, so
        // nothing in flight can be using it while the store opens.
        for e in std::fs::read_dir(data_root.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
        for e in std::fs::read_dir(&meta_dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().contains(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let meta = match std::fs::read(meta_dir.join("images.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ImageError::Io {
                context: "reading meta/images.json".into(),
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Meta::default(),
            Err(e) => return io_ctx(Err(e), || "reading meta/images.json".into()),
        };
        let store = ImageStore {
            root: data_root.to_path_buf(),
            content,
            snapshots,
            meta: Mutex::new(meta),
            in_use: Mutex::new(BTreeMap::new()),
            leases: Default::default(),
            compressing: Mutex::new(()),
        };
        if !meta_dir.join("images.json").exists() {
            store.persist(&store.meta.lock().expect("meta lock"))?;
        }
        Ok(store)
    }

    /// A lease: what it names survives garbage collection until it drops.
    pub fn lease(&self) -> Lease {
        let mut l = self.leases.lock().expect("leases lock");
        l.next += 1;
        Lease {
            id: l.next,
            leases: self.leases.clone(),
        }
    }

    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    pub fn snapshots(&self) -> &dyn Snapshotter {
        self.snapshots.as_ref()
    }

    /// Writes metadata and index.json; called with the lock held.
    fn persist(&self, meta: &Meta) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(meta).expect("meta serialises");
        io_ctx(
            atomic_write(&self.root.join("meta/images.json"), &bytes),
            || "writing meta/images.json".into(),
        )?;
        let manifests: Vec<Value> = meta
            .tags
            .iter()
            .filter_map(|(name, digest)| {
                let img = meta.images.get(digest)?;
                let size = std::fs::metadata(self.content.path(&img.manifest))
                    .ok()?
                    .len();
                Some(json!({
                    "mediaType": MEDIA_MANIFEST,
                    "digest": img.manifest,
                    "size": size,
                    "annotations": {REF_ANNOTATION: name},
                    "platform": {"architecture": go_arch(), "os": "linux"},
                }))
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests});
        io_ctx(
            atomic_write(
                &self.content.root().join("index.json"),
                index.to_string().as_bytes(),
            ),
            || "writing index.json".into(),
        )
    }

    pub fn list(&self) -> Vec<(Image, Vec<String>)> {
        let meta = self.meta.lock().expect("meta lock");
        meta.images
            .values()
            .map(|img| {
                let tags = meta
                    .tags
                    .iter()
                    .filter(|(_, d)| **d == img.manifest.to_string())
                    .map(|(t, _)| t.clone())
                    .collect();
                (img.clone(), tags)
            })
            .collect()
    }

    /// Finds an image by reference (`busybox`, `host:5000/a:b`), by ID (`sha256:...`, or a
    /// unique prefix of at least 4 hex characters, as Docker accepts), or by manifest digest.
    pub fn resolve(&self, name: &str) -> Option<Image> {
        let meta = self.meta.lock().expect("meta lock");
        if let Ok(r) = name.parse::<Reference>() {
            if let Some(d) = meta.tags.get(&r.to_string()) {
                return meta.images.get(d).cloned();
            }
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<&Image> = meta
                .images
                .values()
                .filter(|i| i.config.hex().starts_with(hex) || i.manifest.hex().starts_with(hex))
                .collect();
            if hits.len() == 1 {
                return Some(hits[0].clone());
            }
        }
        None
    }

    pub fn tag(&self, image: &str, new: &Reference) -> Result<()> {
        let img = self
            .resolve(image)
            .ok_or_else(|| ImageError::NotFound(image.into()))?;
        let mut meta = self.meta.lock().expect("meta lock");
        meta.tags.insert(new.to_string(), img.manifest.to_string());
        self.persist(&meta)
    }

    /// Records that container `user` runs image `config` (see `in_use`).
    pub fn pin(&self, user: &str, config: &Digest) {
        self.in_use
            .lock()
            .expect("in_use lock")
            .insert(user.to_string(), config.clone());
    }

    pub fn unpin(&self, user: &str) {
        self.in_use.lock().expect("in_use lock").remove(user);
    }

    fn user_of(&self, config: &Digest) -> Option<String> {
        self.in_use
            .lock()
            .expect("in_use lock")
            .iter()
            .find(|(_, c)| *c == config)
            .map(|(u, _)| u.clone())
    }

    /// Records that the image with manifest `manifest` is `repository@manifest` in a
    /// registry (pulled from or pushed there).
    /// Records that the image with `manifest` is `repository@digest` in a registry (the
    /// digest is the manifest's, or that of the index it was chosen from).
    pub fn add_repo_digest(
        &self,
        manifest: &Digest,
        repository: &str,
        digest: &Digest,
    ) -> Result<()> {
        let mut meta = self.meta.lock().expect("meta lock");
        meta.repo_digests
            .entry(manifest.to_string())
            .or_default()
            .insert(format!("{repository}@{digest}"));
        self.persist(&meta)
    }

    /// The image's `repository@digest` names (Docker's RepoDigests).
    pub fn repo_digests(&self, manifest: &Digest) -> Vec<String> {
        self.meta
            .lock()
            .expect("meta lock")
            .repo_digests
            .get(&manifest.to_string())
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// `docker rmi`: untags a reference, and deletes the image when no tag is left. By ID,
    /// an image with several tags needs `force` (as in Docker). Returns Docker's lines
    /// ("Untagged: ...", "Deleted: ..."). Disk space comes back with [`ImageStore::gc`].
    pub fn remove(&self, name: &str, force: bool) -> Result<Vec<String>> {
        let img = self
            .resolve(name)
            .ok_or_else(|| ImageError::NotFound(name.into()))?;
        let mut meta = self.meta.lock().expect("meta lock");
        let manifest = img.manifest.to_string();
        let tags: Vec<String> = meta
            .tags
            .iter()
            .filter(|(_, d)| **d == manifest)
            .map(|(t, _)| t.clone())
            .collect();
        let by_tag = name
            .parse::<Reference>()
            .ok()
            .map(|r| r.to_string())
            .filter(|r| tags.contains(r));
        let mut out = Vec::new();
        let user = self.user_of(&img.config);
        let last_tag = by_tag.is_some() && tags.len() == 1 || by_tag.is_none();
        if let (Some(u), true, false) = (&user, last_tag, force) {
            let short = |s: &str| s.chars().take(12).collect::<String>();
            return Err(ImageError::Conflict(match &by_tag {
                Some(_) => format!(
                    "unable to remove repository reference \"{name}\" (must force) - container {} is using its referenced image {}",
                    short(u),
                    img.short_id()
                ),
                None => format!(
                    "unable to delete {} (must be forced) - image is being used by stopped container {}",
                    img.short_id(),
                    short(u)
                ),
            }));
        }
        let untag: Vec<String> = match by_tag {
            Some(t) => vec![t],
            None if tags.len() > 1 && !force => {
                return Err(ImageError::Conflict(format!(
                    "unable to delete {} (must be forced) - image is referenced in multiple repositories",
                    img.short_id()
                )))
            }
            None => tags.clone(),
        };
        for t in &untag {
            meta.tags.remove(t);
            let familiar = t
                .parse::<Reference>()
                .map(|r| r.familiar())
                .unwrap_or_else(|_| t.clone());
            out.push(format!("Untagged: {familiar}"));
        }
        if !meta.tags.values().any(|d| *d == manifest) && user.is_none() {
            meta.images.remove(&manifest);
            out.push(format!("Deleted: {}", img.config));
        }
        self.persist(&meta)?;
        Ok(out)
    }

    /// The configs of the images containers use.
    fn used_configs(&self) -> BTreeSet<Digest> {
        self.in_use
            .lock()
            .expect("in_use lock")
            .values()
            .cloned()
            .collect()
    }

    /// Removes images without tags (dangling), or with `all` every image; then collects
    /// garbage. Returns the removed image IDs and the bytes freed.
    pub fn prune(&self, all: bool) -> Result<(Vec<Digest>, u64)> {
        let removed: Vec<Digest> = {
            let mut meta = self.meta.lock().expect("meta lock");
            let tagged: BTreeSet<String> = meta.tags.values().cloned().collect();
            let used = self.used_configs();
            let doomed: Vec<String> = meta
                .images
                .iter()
                .filter(|(m, img)| {
                    (all || (!tagged.contains(*m) && !meta.intermediate.contains(*m)))
                        && !used.contains(&img.config)
                })
                .map(|(m, _)| m.clone())
                .collect();
            let mut ids = Vec::new();
            for m in doomed {
                if let Some(img) = meta.images.remove(&m) {
                    ids.push(img.config);
                }
            }
            if all {
                let kept: BTreeSet<String> = meta.images.keys().cloned().collect();
                meta.tags.retain(|_, d| kept.contains(d));
            }
            self.persist(&meta)?;
            ids
        };
        let freed = self.gc()?.bytes_freed;
        Ok((removed, freed))
    }

    /// Mark and sweep: every blob and layer snapshot no image references goes. Container
    /// snapshots (`active-*`) and in-flight ingests are not touched.
    pub fn gc(&self) -> Result<GcStats> {
        let mut meta = self.meta.lock().expect("meta lock");
        let mut blobs: BTreeSet<Digest> = BTreeSet::new();
        let mut chains: BTreeSet<String> = BTreeSet::new();
        let mut diff_ids: BTreeSet<String> = BTreeSet::new();
        for img in meta.images.values() {
            blobs.insert(img.manifest.clone());
            blobs.insert(img.config.clone());
            for l in &img.layers {
                blobs.insert(l.blob.clone());
                chains.insert(l.chain_id.hex().to_string());
                diff_ids.insert(l.diff_id.to_string());
            }
        }
        meta.compressed.retain(|d, _| diff_ids.contains(d));
        blobs.extend(meta.compressed.values().map(|(b, _)| b.clone()));
        {
            let leases = self.leases.lock().expect("leases lock");
            blobs.extend(leases.blobs().cloned());
            chains.extend(leases.chains().cloned());
            // A leased blob may be being unpacked into its staging snapshot.
            let staging: Vec<String> = leases
                .blobs()
                .map(|b| format!("unpack-{}", b.hex()))
                .collect();
            chains.extend(staging);
        }
        let mut stats = GcStats::default();
        for algo in ["sha256", "sha512"] {
            let dir = self.content.root().join("blobs").join(algo);
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let Ok(d) = format!("{algo}:{}", e.file_name().to_string_lossy()).parse::<Digest>()
                else {
                    continue;
                };
                if !blobs.contains(&d) {
                    stats.bytes_freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                    self.content.delete(&d)?;
                    stats.blobs += 1;
                }
            }
        }
        let snaps = self.root.join("snapshots");
        for e in std::fs::read_dir(&snaps).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "l" || name.starts_with("active-") || chains.contains(&name) {
                continue;
            }
            stats.bytes_freed += berth_types::fs::du(&e.path());
            self.snapshots.remove_layer(&name)?;
            stats.snapshots += 1;
        }
        // Short links of removed layers.
        for e in std::fs::read_dir(snaps.join("l"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if !e.path().exists() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        meta.layers.retain(|c| chains.contains(c));
        let images: BTreeSet<String> = meta.images.keys().cloned().collect();
        meta.repo_digests.retain(|m, _| images.contains(m));
        meta.build_cache.retain(|_, m| images.contains(m));
        meta.intermediate.retain(|m| images.contains(m));
        self.persist(&meta)?;
        Ok(stats)
    }

    /// Checks the whole store: every blob matches its digest (content `verify`), every tag
    /// names a recorded image, and every image's manifest, config, layer blobs and layer
    /// snapshots exist. Partial ingests and staging directories left by a crash are not
    /// problems (they are resumed or collected).
    pub fn fsck(&self) -> Result<Vec<String>> {
        let mut problems: Vec<String> = self
            .content
            .verify()?
            .into_iter()
            .map(|p| format!("{p:?}"))
            .collect();
        let meta = self.meta.lock().expect("meta lock");
        for (tag, manifest) in &meta.tags {
            if !meta.images.contains_key(manifest) {
                problems.push(format!(
                    "tag {tag} names {manifest}, which is not an image here"
                ));
            }
        }
        for img in meta.images.values() {
            let mut blobs = vec![&img.manifest, &img.config];
            blobs.extend(img.layers.iter().map(|l| &l.blob));
            for b in blobs {
                if !self.content.exists(b) {
                    problems.push(format!(
                        "image {} needs blob {b}, which is missing",
                        img.short_id()
                    ));
                }
            }
            for l in &img.layers {
                let dir = self
                    .root
                    .join("snapshots")
                    .join(l.chain_id.hex())
                    .join("fs");
                if !meta.layers.contains(l.chain_id.hex()) || !dir.is_dir() {
                    problems.push(format!(
                        "image {} needs layer snapshot {}, which is missing",
                        img.short_id(),
                        l.chain_id
                    ));
                }
            }
        }
        Ok(problems)
    }

    /// Unpacks `blob` as the layer on top of `parent` unless that snapshot exists already
    /// (known without reading the blob when the diffID is `expected` or the blob is an
    /// uncompressed tar).
    fn unpack(
        &self,
        parent: Option<&Digest>,
        blob: &Digest,
        media_type: &str,
        expected: Option<&Digest>,
        index: usize,
    ) -> Result<Layer> {
        let size = io_ctx(std::fs::metadata(self.content.path(blob)), || {
            format!("blob {blob}")
        })?
        .len();
        // The diffID of an uncompressed layer is its blob digest.
        if media_type == MEDIA_LAYER {
            if let Some(want) = expected.filter(|w| *w != blob) {
                return Err(ImageError::DiffIdMismatch {
                    index,
                    expected: want.clone(),
                    actual: blob.clone(),
                });
            }
        }
        let known = if media_type == MEDIA_LAYER {
            Some(blob)
        } else {
            expected
        };
        if let Some(diff_id) = known {
            let chain = chain_id(parent, diff_id);
            if self.has_layer(&chain) {
                return Ok(Layer {
                    blob: blob.clone(),
                    media_type: media_type.into(),
                    size,
                    diff_id: diff_id.clone(),
                    chain_id: chain,
                });
            }
        }
        let (staging, dir) = self.stage_layer(blob)?;
        let applied = match layer::apply(&dir, self.content.open_blob(blob)?) {
            Ok(a) => a,
            Err(e) => {
                let _ = self.snapshots.remove_layer(&staging);
                return Err(e.into());
            }
        };
        if let Some(want) = expected.filter(|w| **w != applied.diff_id) {
            let _ = self.snapshots.remove_layer(&staging);
            return Err(ImageError::DiffIdMismatch {
                index,
                expected: want.clone(),
                actual: applied.diff_id,
            });
        }
        let chain = chain_id(parent, &applied.diff_id);
        self.publish_layer(&staging, &dir, &chain)?;
        Ok(Layer {
            blob: blob.clone(),
            media_type: media_type.into(),
            size,
            diff_id: applied.diff_id,
            chain_id: chain,
        })
    }

    /// The gzip blob of an uncompressed layer, for a push: (digest, size). Made once, on
    /// every core, and kept (as long as an image has the layer) so later pushes, to this
    /// registry or another, send the same bytes without compressing again.
    pub fn compressed_layer(&self, l: &Layer) -> Result<(Digest, u64)> {
        let key = l.diff_id.to_string();
        let _one = self.compressing.lock().expect("compressing lock");
        if let Some((d, size)) = self.meta.lock().expect("meta lock").compressed.get(&key) {
            if self.content.exists(d) {
                return Ok((d.clone(), *size));
            }
        }
        let mut w = self.content.ingest(&format!("gzip-{key}"), None)?;
        w.restart()?;
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let input = std::io::BufReader::with_capacity(1 << 20, self.content.open_blob(&l.blob)?);
        io_ctx(
            crate::compress::gzip(input, &mut w, PUSH_GZIP_LEVEL, threads),
            || format!("compressing layer {}", l.diff_id),
        )?;
        let size = w.offset();
        let digest = w.commit()?;
        let mut meta = self.meta.lock().expect("meta lock");
        meta.compressed.insert(key, (digest.clone(), size));
        self.persist(&meta)?;
        Ok((digest, size))
    }

    /// Stores a layer tarball as a blob: gzip and zstd as they are (registries take them),
    /// bzip2 and xz decompressed (no layer media type names them). Returns the blob and
    /// its media type.
    fn store_layer(&self, input: impl Read + Send, what: &str) -> Result<(Digest, &'static str)> {
        let mut input = io::BufReader::with_capacity(1 << 20, input);
        let head = io_ctx(io::BufRead::fill_buf(&mut input), || {
            format!("reading {what}")
        })?;
        let kind = layer::detect(head);
        let key = format!("layer-{}-{}", std::process::id(), crate::content::unique());
        let mut ingest = self.content.ingest(&key, None)?;
        let copied = match kind {
            Compression::Bzip2 | Compression::Xz => {
                io::copy(&mut layer::decoder(input)?, &mut ingest)
            }
            _ => io::copy(&mut input, &mut ingest),
        };
        io_ctx(copied, || format!("storing {what}"))?;
        let media_type = match kind {
            Compression::Gzip => MEDIA_LAYER_GZIP,
            Compression::Zstd => MEDIA_LAYER_ZSTD,
            _ => MEDIA_LAYER,
        };
        Ok((ingest.commit()?, media_type))
    }

    /// Whether the snapshot of the layer stack `chain` is complete.
    pub fn has_layer(&self, chain: &Digest) -> bool {
        self.meta
            .lock()
            .expect("meta lock")
            .layers
            .contains(chain.hex())
    }

    /// An empty staging snapshot to unpack `blob` into: (its id, its directory). What an
    /// interrupted unpack of the same blob left there is cleared first.
    pub fn stage_layer(&self, blob: &Digest) -> Result<(String, PathBuf)> {
        let staging = format!("unpack-{}", blob.hex());
        let _ = self.snapshots.remove_layer(&staging);
        let dir = self.snapshots.create_layer(&staging)?;
        Ok((staging, dir))
    }

    /// Drops a staging snapshot (an unpack that failed or was not wanted).
    pub fn discard_layer(&self, staging: &str) {
        let _ = self.snapshots.remove_layer(staging);
    }

    /// Publishes the staging snapshot `dir` (whose diffID the caller checked) as the layer
    /// stack `chain`. Published only once complete: a crash leaves a staging directory,
    /// never a half-unpacked layer under a real name.
    pub fn publish_layer(&self, staging: &str, dir: &Path, chain: &Digest) -> Result<()> {
        let mut meta = self.meta.lock().expect("meta lock");
        if !meta.layers.contains(chain.hex()) {
            let _ = self.snapshots.remove_layer(chain.hex());
            let final_dir = self.snapshots.create_layer(chain.hex())?;
            io_ctx(std::fs::remove_dir(&final_dir), || {
                "preparing the layer directory".into()
            })?;
            io_ctx(std::fs::rename(dir, &final_dir), || {
                "publishing the layer".into()
            })?;
            meta.layers.insert(chain.hex().to_string());
            self.persist(&meta)?;
        }
        let _ = self.snapshots.remove_layer(staging);
        Ok(())
    }

    /// Records a pulled image: its manifest exactly as the registry served it (so its
    /// digest stays the registry's), its config and layer blobs (already in the content
    /// store, digests verified), unpacking each layer against the config's diff_ids.
    pub fn add_pulled(
        &self,
        manifest_bytes: &[u8],
        config: &Digest,
        layers: &[(Digest, String)],
        tags: &[Reference],
    ) -> Result<Image> {
        let config_json: Value = serde_json::from_slice(&self.content.read(config)?)
            .map_err(|e| ImageError::Archive(format!("config {config}: {e}")))?;
        let diff_ids: Vec<Digest> =
            serde_json::from_value(config_json["rootfs"]["diff_ids"].clone()).map_err(|e| {
                ImageError::Archive(format!("config {config}: rootfs.diff_ids: {e}"))
            })?;
        if diff_ids.len() != layers.len() {
            return Err(ImageError::Archive(format!(
                "the manifest has {} layers, the config {} diff_ids",
                layers.len(),
                diff_ids.len()
            )));
        }
        let mut out: Vec<Layer> = Vec::new();
        for (i, ((blob, media_type), want)) in layers.iter().zip(&diff_ids).enumerate() {
            // Docker's and OCI's names for an uncompressed layer are the same thing here.
            let media_type = match media_type.as_str() {
                "application/vnd.docker.image.rootfs.diff.tar" => MEDIA_LAYER,
                m => m,
            };
            let parent = out.last().map(|l| l.chain_id.clone());
            out.push(self.unpack(parent.as_ref(), blob, media_type, Some(want), i)?);
        }
        let manifest = self.content.write_blob(manifest_bytes)?;
        let image = Image {
            config: config.clone(),
            manifest: manifest.clone(),
            layers: out,
            created: config_json["created"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        };
        self.record(image, tags)
    }

    /// Adds an image and its tags to the metadata (written at once).
    fn record(&self, image: Image, tags: &[Reference]) -> Result<Image> {
        let mut meta = self.meta.lock().expect("meta lock");
        meta.images
            .insert(image.manifest.to_string(), image.clone());
        for t in tags {
            meta.tags.insert(t.to_string(), image.manifest.to_string());
        }
        self.persist(&meta)?;
        Ok(image)
    }

    /// A new image from `parent` whose image config (the whole document: `config`,
    /// `author`, ...) `edit` changes, with no new layer (a Dockerfile's metadata step):
    /// its history entry is an `empty_layer` one.
    pub fn configure(
        &self,
        parent: &str,
        created_by: &str,
        edit: impl FnOnce(&mut Value) -> std::result::Result<(), String>,
    ) -> Result<Image> {
        let parent_img = self
            .resolve(parent)
            .ok_or_else(|| ImageError::NotFound(parent.into()))?;
        let mut config: Value = serde_json::from_slice(&self.content.read(&parent_img.config)?)
            .map_err(|e| ImageError::Archive(format!("config of {parent}: {e}")))?;
        if !config["config"].is_object() {
            config["config"] = json!({});
        }
        edit(&mut config).map_err(|e| ImageError::Change(created_by.into(), e))?;
        let created = crate::content::now_rfc3339();
        config["created"] = json!(created);
        let entry = json!({"created": created, "created_by": created_by, "empty_layer": true});
        match config["history"].as_array_mut() {
            Some(h) => h.push(entry),
            None => config["history"] = json!([entry]),
        }
        let config = self.content.write_blob(config.to_string().as_bytes())?;
        self.commit_image(config, parent_img.layers.clone(), created, &[])
    }

    /// The image a build step with this `key` made before, if it is still here.
    pub fn cached_step(&self, key: &str) -> Option<Image> {
        let meta = self.meta.lock().expect("meta lock");
        let m = meta.build_cache.get(key)?;
        meta.images.get(m).cloned()
    }

    /// Remembers the image a build step made, as an intermediate image.
    pub fn remember_step(&self, key: &str, img: &Image) -> Result<()> {
        let mut meta = self.meta.lock().expect("meta lock");
        let m = img.manifest.to_string();
        if !meta.tags.values().any(|t| *t == m) {
            meta.intermediate.insert(m.clone());
        }
        meta.build_cache.insert(key.to_string(), m);
        self.persist(&meta)
    }

    /// The images the build cache names, with when each was made.
    pub fn build_cache_images(&self) -> Vec<Image> {
        let meta = self.meta.lock().expect("meta lock");
        let names: BTreeSet<&String> = meta.build_cache.values().collect();
        names
            .into_iter()
            .filter_map(|m| meta.images.get(m).cloned())
            .collect()
    }

    /// A build's result: no longer an intermediate image (listed, pruned when dangling).
    pub fn keep_result(&self, img: &Image) -> Result<()> {
        let mut meta = self.meta.lock().expect("meta lock");
        if meta.intermediate.remove(&img.manifest.to_string()) {
            self.persist(&meta)?;
        }
        Ok(())
    }

    /// Whether the image with this manifest is one a build made along the way.
    pub fn is_intermediate(&self, manifest: &Digest) -> bool {
        self.meta
            .lock()
            .expect("meta lock")
            .intermediate
            .contains(&manifest.to_string())
    }

    /// `builder prune -a`: the build cache forgotten and its intermediate images removed
    /// (those no tag names and no container uses). Returns (entries, bytes freed).
    pub fn prune_build_cache(&self) -> Result<(usize, u64)> {
        self.prune_build_cache_to(None, true)
    }

    /// `builder prune`: with `all`, every cached step; without, the dangling ones (whose
    /// layer no listed image has); with `keep`, the oldest first until what the rest's
    /// own layers take is at most `keep` bytes. Their intermediate images go too (those
    /// no tag names and no container uses). Returns (entries, bytes freed).
    pub fn prune_build_cache_to(&self, keep: Option<u64>, all: bool) -> Result<(usize, u64)> {
        let entries = {
            let mut meta = self.meta.lock().expect("meta lock");
            // The cached images, oldest first, with the size of their own layer.
            let mut cached: Vec<(String, u64, String)> = meta
                .build_cache
                .values()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter_map(|m| {
                    let img = meta.images.get(m)?;
                    let own = img.layers.last().map(|l| l.size).unwrap_or(0);
                    Some((img.created.clone(), own, m.clone()))
                })
                .collect();
            cached.sort();
            let dropped: BTreeSet<String> = match keep {
                Some(keep) => {
                    let mut total: u64 = cached.iter().map(|c| c.1).sum();
                    let mut out = BTreeSet::new();
                    for (_, size, m) in &cached {
                        if total <= keep {
                            break;
                        }
                        total -= size;
                        out.insert(m.clone());
                    }
                    out
                }
                None if all => cached.into_iter().map(|c| c.2).collect(),
                None => {
                    let kept: BTreeSet<&Digest> = meta
                        .images
                        .iter()
                        .filter(|(m, _)| !meta.intermediate.contains(*m))
                        .flat_map(|(_, i)| i.layers.iter().map(|l| &l.chain_id))
                        .collect();
                    cached
                        .iter()
                        .filter(|(_, _, m)| {
                            meta.images[m]
                                .layers
                                .last()
                                .is_none_or(|l| !kept.contains(&l.chain_id))
                        })
                        .map(|c| c.2.clone())
                        .collect()
                }
            };
            let before = meta.build_cache.len();
            meta.build_cache.retain(|_, m| !dropped.contains(m));
            let tagged: BTreeSet<String> = meta.tags.values().cloned().collect();
            let used = self.used_configs();
            for m in &dropped {
                let busy = meta.images.get(m).is_some_and(|i| used.contains(&i.config));
                if !busy && !tagged.contains(m) && meta.intermediate.remove(m) {
                    meta.images.remove(m);
                }
            }
            if meta.build_cache.is_empty() {
                // Intermediates no cache entry names any more (an interrupted build's).
                let orphans: Vec<String> = meta
                    .intermediate
                    .iter()
                    .filter(|m| !tagged.contains(*m))
                    .filter(|m| {
                        meta.images
                            .get(*m)
                            .is_some_and(|i| !used.contains(&i.config))
                    })
                    .cloned()
                    .collect();
                for m in &orphans {
                    meta.images.remove(m);
                    meta.intermediate.remove(m);
                }
            }
            self.persist(&meta)?;
            before - meta.build_cache.len()
        };
        Ok((entries, self.gc()?.bytes_freed))
    }

    /// Records an image whose config and layer blobs are stored, writing its manifest.
    fn commit_image(
        &self,
        config: Digest,
        layers: Vec<Layer>,
        created: String,
        tags: &[Reference],
    ) -> Result<Image> {
        let config_size = io_ctx(std::fs::metadata(self.content.path(&config)), || {
            format!("blob {config}")
        })?
        .len();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config, "size": config_size},
            "layers": layers.iter().map(|l| json!({"mediaType": l.media_type, "digest": l.blob, "size": l.size})).collect::<Vec<_>>(),
        });
        let manifest = self.content.write_blob(manifest.to_string().as_bytes())?;
        let image = Image {
            config,
            manifest: manifest.clone(),
            layers,
            created,
        };
        self.record(image, tags)
    }

    /// `docker import`: a root filesystem tarball (plain, gzip or zstd) as a one-layer image,
    /// with Dockerfile-style `changes` (CMD, ENTRYPOINT, ENV, WORKDIR, EXPOSE, USER, LABEL).
    pub fn import(
        &self,
        tarball: impl Read + Send,
        changes: &[String],
        tag: Option<&Reference>,
    ) -> Result<Image> {
        let (blob, media_type) = self.store_layer(tarball, "the tarball")?;
        let l = self.unpack(None, &blob, media_type, None, 0)?;
        let created = crate::content::now_rfc3339();
        let mut container_config =
            json!({"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]});
        for c in changes {
            apply_change(&mut container_config, c)?;
        }
        let config = json!({
            "architecture": go_arch(),
            "os": "linux",
            "created": created,
            "config": container_config,
            "rootfs": {"type": "layers", "diff_ids": [l.diff_id]},
            "history": [{"created": created, "created_by": "berth import", "comment": "Imported from tarball"}],
        });
        let config = self.content.write_blob(config.to_string().as_bytes())?;
        let tags: Vec<Reference> = tag.cloned().into_iter().collect();
        self.commit_image(config, vec![l], created, &tags)
    }

    /// `docker commit`: the changes of container snapshot `key` (made from `parent`) as a
    /// new layer on top of it, with `changes` applied to the config.
    pub fn commit(
        &self,
        key: &str,
        parent: &str,
        changes: &[String],
        comment: &str,
        tag: Option<&Reference>,
    ) -> Result<Image> {
        self.commit_with(key, parent, changes, comment, tag, false)
    }

    /// `commit` of a container that is gone for good once committed (a build step): its
    /// upper directory is moved into the layer store rather than copied. It must not be
    /// mounted.
    pub fn commit_taking(
        &self,
        key: &str,
        parent: &str,
        changes: &[String],
        comment: &str,
    ) -> Result<Image> {
        self.commit_with(key, parent, changes, comment, None, true)
    }

    fn commit_with(
        &self,
        key: &str,
        parent: &str,
        changes: &[String],
        comment: &str,
        tag: Option<&Reference>,
        adopt: bool,
    ) -> Result<Image> {
        let parent_img = self
            .resolve(parent)
            .ok_or_else(|| ImageError::NotFound(parent.into()))?;
        let upper = self.snapshots.upper(key).ok_or_else(|| {
            ImageError::Conflict(format!(
                "no record of the changes of {key} (needs the overlay snapshotter)"
            ))
        })?;
        let mut ingest = self
            .content
            .ingest(&format!("commit-{key}-{}", crate::content::unique()), None)?;
        let t0 = std::time::Instant::now();
        layer::diff_upper(&upper, &mut ingest)?;
        let t1 = t0.elapsed();
        let blob = ingest.commit()?;
        tracing::debug!(diff = ?t1, ingest_commit = ?(t0.elapsed() - t1), "commit");
        let parent_chain = parent_img.layers.last().map(|l| l.chain_id.clone());
        let chain = chain_id(parent_chain.as_ref(), &blob);
        if adopt && !self.has_layer(&chain) && upper_is_self_contained() {
            // The upper directory already is the layer, in the form overlay reads lower
            // layers in (0/0 whiteouts, opaque directories): it becomes the snapshot, so
            // the layer is not unpacked again from the blob just written.
            self.publish_layer("", &upper, &chain)?;
        }
        self.stack_layer(&parent_img, &blob, changes, comment, tag)
    }

    /// `COPY --link`: the image `parent` with the uncompressed layer `blob` (already in
    /// the content store) on top, unpacked over the parent's layers.
    pub fn add_layer(&self, parent: &str, blob: &Digest, comment: &str) -> Result<Image> {
        let parent_img = self
            .resolve(parent)
            .ok_or_else(|| ImageError::NotFound(parent.into()))?;
        self.stack_layer(&parent_img, blob, &[], comment, None)
    }

    /// Writes an uncompressed layer tar to the content store; returns its digest.
    pub fn write_layer(&self, tar: &[u8]) -> Result<Digest> {
        Ok(self.content.write_blob(tar)?)
    }

    fn stack_layer(
        &self,
        parent_img: &Image,
        blob: &Digest,
        changes: &[String],
        comment: &str,
        tag: Option<&Reference>,
    ) -> Result<Image> {
        let parent_chain = parent_img.layers.last().map(|l| l.chain_id.clone());
        let l = self.unpack(
            parent_chain.as_ref(),
            blob,
            MEDIA_LAYER,
            None,
            parent_img.layers.len(),
        )?;
        let mut config: Value = serde_json::from_slice(&self.content.read(&parent_img.config)?)
            .map_err(|e| ImageError::Archive(format!("config of {}: {e}", parent_img.config)))?;
        for c in changes {
            apply_change(&mut config["config"], c)?;
        }
        let created = crate::content::now_rfc3339();
        config["created"] = json!(created);
        match config["rootfs"]["diff_ids"].as_array_mut() {
            Some(ids) => ids.push(json!(l.diff_id)),
            None => config["rootfs"] = json!({"type": "layers", "diff_ids": [l.diff_id]}),
        }
        let entry = json!({"created": created, "created_by": comment});
        match config["history"].as_array_mut() {
            Some(h) => h.push(entry),
            None => config["history"] = json!([entry]),
        }
        let config = self.content.write_blob(config.to_string().as_bytes())?;
        let mut layers = parent_img.layers.clone();
        layers.push(l);
        let tags: Vec<Reference> = tag.cloned().into_iter().collect();
        self.commit_image(config, layers, created, &tags)
    }

    /// `docker load`: a docker-archive or OCI archive (plain, gzip, zstd, bzip2 or xz).
    /// Returns the loaded images
    /// with the tags they got.
    pub fn load(&self, archive: impl Read + Send) -> Result<Vec<(Image, Vec<String>)>> {
        let tmp = self.root.join("tmp").join(format!(
            "load-{}-{}",
            std::process::id(),
            crate::content::unique()
        ));
        io_ctx(std::fs::create_dir_all(&tmp), || {
            format!("creating {}", tmp.display())
        })?;
        let result = self.load_from(&tmp, archive);
        let _ = std::fs::remove_dir_all(&tmp);
        result
    }

    fn load_from(
        &self,
        tmp: &Path,
        archive: impl Read + Send,
    ) -> Result<Vec<(Image, Vec<String>)>> {
        // The archive is untrusted: unpack it with the path-safe layer applier.
        layer::apply(tmp, archive)?;
        let manifest: Value = if tmp.join("manifest.json").exists() {
            serde_json::from_slice(&io_ctx(std::fs::read(tmp.join("manifest.json")), || {
                "reading manifest.json".into()
            })?)
            .map_err(|e| ImageError::Archive(format!("manifest.json: {e}")))?
        } else if tmp.join("index.json").exists() {
            oci_layout_entries(tmp)?
        } else {
            return Err(ImageError::Archive(
                "neither a docker-archive (manifest.json) nor an OCI layout (index.json)".into(),
            ));
        };
        let entries = manifest
            .as_array()
            .ok_or_else(|| ImageError::Archive("manifest.json is not a list".into()))?;
        let mut out = Vec::new();
        for entry in entries {
            let field = |k: &str| {
                entry
                    .get(k)
                    .ok_or_else(|| ImageError::Archive(format!("manifest.json entry without {k}")))
            };
            let config_path = field("Config")?
                .as_str()
                .ok_or_else(|| ImageError::Archive("Config is not a string".into()))?;
            let config_bytes = io_ctx(std::fs::read(tmp.join(config_path)), || {
                format!("reading {config_path}")
            })?;
            let config_json: Value = serde_json::from_slice(&config_bytes)
                .map_err(|e| ImageError::Archive(format!("{config_path}: {e}")))?;
            let diff_ids: Vec<Digest> =
                serde_json::from_value(config_json["rootfs"]["diff_ids"].clone()).map_err(|e| {
                    ImageError::Archive(format!("{config_path}: rootfs.diff_ids: {e}"))
                })?;
            let layer_paths: Vec<String> = serde_json::from_value(field("Layers")?.clone())
                .map_err(|e| ImageError::Archive(format!("Layers: {e}")))?;
            if layer_paths.len() != diff_ids.len() {
                return Err(ImageError::Archive(format!(
                    "{} layers listed but the config has {} diff_ids",
                    layer_paths.len(),
                    diff_ids.len()
                )));
            }
            let config = self.content.write_blob(&config_bytes)?;
            let mut layers: Vec<Layer> = Vec::new();
            for (i, (path, want)) in layer_paths.iter().zip(&diff_ids).enumerate() {
                let file = io_ctx(File::open(tmp.join(path)), || {
                    format!("reading layer {path}")
                })?;
                let (blob, media_type) = self.store_layer(file, &format!("layer {path}"))?;
                let parent = layers.last().map(|l| l.chain_id.clone());
                layers.push(self.unpack(parent.as_ref(), &blob, media_type, Some(want), i)?);
            }
            let tags: Vec<Reference> = entry
                .get("RepoTags")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|t| t.as_str()?.parse().ok()).collect())
                .unwrap_or_default();
            let created = config_json["created"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let image = self.commit_image(config, layers, created, &tags)?;
            out.push((image, tags.iter().map(|t| t.to_string()).collect()));
        }
        Ok(out)
    }

    /// `docker save`: the named images in the layout Docker 25 writes, which is both an OCI
    /// image layout (`oci-layout`, `index.json`, `blobs/sha256/...`: skopeo's
    /// `oci-archive:`) and a docker-archive (`manifest.json`, `repositories`: every
    /// `docker load`). Layers are the uncompressed tars, named by their diffIDs.
    pub fn save(&self, names: &[&str], out: impl Write) -> Result<()> {
        let mut builder = tar::Builder::new(out);
        let mut manifest = Vec::new();
        let mut index = Vec::new();
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut written = BTreeSet::new();
        let mut blob = |builder: &mut tar::Builder<_>, d: &Digest, data: &[u8]| -> Result<String> {
            let path = format!("blobs/{}/{}", d.algorithm().as_str(), d.hex());
            if written.insert(path.clone()) {
                append(builder, &path, data)?;
            }
            Ok(path)
        };
        for name in names {
            let img = self
                .resolve(name)
                .ok_or_else(|| ImageError::NotFound(name.to_string()))?;
            let config = self.content.read(&img.config)?;
            let config_path = blob(&mut builder, &img.config, &config)?;
            let mut layer_paths = Vec::new();
            let mut descriptors = Vec::new();
            for l in &img.layers {
                let tar = self.uncompressed_layer(l)?;
                layer_paths.push(blob(&mut builder, &l.diff_id, &tar)?);
                descriptors.push(
                    json!({"mediaType": MEDIA_LAYER, "digest": l.diff_id, "size": tar.len()}),
                );
            }
            let oci = json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, "digest": img.config, "size": config.len()},
                "layers": descriptors,
            })
            .to_string();
            let oci_digest = Digest::sha256(oci.as_bytes());
            blob(&mut builder, &oci_digest, oci.as_bytes())?;
            let tags: Vec<Reference> = match name.parse::<Reference>() {
                Ok(r)
                    if self
                        .meta
                        .lock()
                        .expect("meta lock")
                        .tags
                        .contains_key(&r.to_string()) =>
                {
                    vec![r]
                }
                _ => Vec::new(),
            };
            let descriptor =
                json!({"mediaType": MEDIA_MANIFEST, "digest": oci_digest, "size": oci.len()});
            if tags.is_empty() {
                index.push(descriptor.clone());
            }
            for r in &tags {
                let mut d = descriptor.clone();
                d["annotations"] = json!({
                    "io.containerd.image.name": r.to_string(),
                    REF_ANNOTATION: r.tag().unwrap_or("latest"),
                });
                index.push(d);
                if let Some(top) = img.layers.last() {
                    let familiar = r.familiar();
                    let repo = familiar
                        .rsplit_once(':')
                        .map_or(familiar.as_str(), |(n, _)| n);
                    repositories.entry(repo.to_string()).or_default().insert(
                        r.tag().unwrap_or("latest").to_string(),
                        top.diff_id.hex().to_string(),
                    );
                }
            }
            let shown: Vec<String> = tags.iter().map(Reference::familiar).collect();
            manifest.push(json!({"Config": config_path, "RepoTags": shown, "Layers": layer_paths}));
        }
        let index = json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": index});
        for (name, data) in [
            (
                "oci-layout",
                r#"{"imageLayoutVersion":"1.0.0"}"#.to_string(),
            ),
            ("index.json", index.to_string()),
            ("manifest.json", Value::Array(manifest).to_string()),
            (
                "repositories",
                serde_json::to_string(&repositories).expect("json"),
            ),
        ] {
            append(&mut builder, name, data.as_bytes())?;
        }
        io_ctx(builder.finish(), || "writing the archive".into())
    }

    fn uncompressed_layer(&self, l: &Layer) -> Result<Vec<u8>> {
        let mut blob = self.content.open_blob(&l.blob)?;
        let mut out = Vec::new();
        let r = match l.media_type.as_str() {
            MEDIA_LAYER_GZIP => flate2::read::MultiGzDecoder::new(blob).read_to_end(&mut out),
            MEDIA_LAYER_ZSTD => zstd::Decoder::new(blob).and_then(|mut d| d.read_to_end(&mut out)),
            _ => blob.read_to_end(&mut out),
        };
        io_ctx(r, || format!("reading layer {}", l.blob))?;
        Ok(out)
    }
}

fn append(builder: &mut tar::Builder<impl Write>, name: &str, data: &[u8]) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    io_ctx(builder.append_data(&mut h, name, data), || {
        format!("writing {name} to the archive")
    })
}

/// The image config's architecture name (Go's GOARCH spelling).
/// An OCI image layout (`docker load` of an OCI archive) as the entries of a docker-archive
/// manifest.json: config and layer paths, and the names the index gives (the containerd
/// `io.containerd.image.name` annotation, or a full reference in
/// `org.opencontainers.image.ref.name`). Image indexes pick this machine's platform.
fn oci_layout_entries(dir: &Path) -> Result<Value> {
    let read = |rel: &str| -> Result<Value> {
        let bytes = io_ctx(std::fs::read(dir.join(rel)), || format!("reading {rel}"))?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Archive(format!("{rel}: {e}")))
    };
    let blob_path = |digest: &Value| -> Result<String> {
        let d: Digest = serde_json::from_value(digest.clone())
            .map_err(|e| ImageError::Archive(format!("bad digest: {e}")))?;
        Ok(format!("blobs/{}/{}", d.algorithm().as_str(), d.hex()))
    };
    let index = read("index.json")?;
    let mut entries = Vec::new();
    for desc in index["manifests"].as_array().into_iter().flatten() {
        let mut manifest = read(&blob_path(&desc["digest"])?)?;
        if manifest["manifests"].is_array() {
            // An index (or Docker manifest list): this platform's manifest, else the first.
            let list = manifest["manifests"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let pick = list
                .iter()
                .find(|m| {
                    m["platform"]["os"] == "linux" && m["platform"]["architecture"] == go_arch()
                })
                .or_else(|| list.first())
                .ok_or_else(|| ImageError::Archive("an empty image index".into()))?;
            manifest = read(&blob_path(&pick["digest"])?)?;
        }
        let layers: Vec<String> = manifest["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| blob_path(&l["digest"]))
            .collect::<Result<_>>()?;
        let annotations = &desc["annotations"];
        let name = annotations["io.containerd.image.name"]
            .as_str()
            .or_else(|| annotations["org.opencontainers.image.ref.name"].as_str())
            .filter(|n| n.parse::<Reference>().is_ok() && (n.contains(':') || n.contains('/')));
        entries.push(json!({
            "Config": blob_path(&manifest["config"]["digest"])?,
            "Layers": layers,
            "RepoTags": name.into_iter().collect::<Vec<_>>(),
        }));
    }
    Ok(Value::Array(entries))
}

pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// Applies one `--change` instruction to an image's container config.
fn apply_change(cfg: &mut Value, change: &str) -> Result<()> {
    let err = |m: &str| ImageError::Change(change.to_string(), m.to_string());
    let (instr, rest) = change
        .trim()
        .split_once(char::is_whitespace)
        .ok_or_else(|| err("expected INSTRUCTION arguments"))?;
    let rest = rest.trim();
    // Exec form (JSON array) or shell form (run by /bin/sh -c), as in a Dockerfile.
    let command = |rest: &str| -> Value {
        match serde_json::from_str::<Vec<String>>(rest) {
            Ok(v) => json!(v),
            Err(_) => json!(["/bin/sh", "-c", rest]),
        }
    };
    match instr.to_ascii_uppercase().as_str() {
        "CMD" => cfg["Cmd"] = command(rest),
        "ENTRYPOINT" => cfg["Entrypoint"] = command(rest),
        "WORKDIR" => cfg["WorkingDir"] = json!(rest),
        "USER" => cfg["User"] = json!(rest),
        "ENV" => {
            let (k, v) = rest
                .split_once('=')
                .or_else(|| rest.split_once(char::is_whitespace))
                .ok_or_else(|| err("ENV needs KEY=VALUE"))?;
            if !cfg["Env"].is_array() {
                cfg["Env"] = json!([]);
            }
            let env = cfg["Env"].as_array_mut().ok_or_else(|| err("bad Env"))?;
            env.retain(|e| e.as_str().and_then(|e| e.split_once('=')).map(|(ek, _)| ek) != Some(k));
            env.push(json!(format!("{k}={}", v.trim())));
        }
        "EXPOSE" => {
            for p in rest.split_whitespace() {
                let p = if p.contains('/') {
                    p.to_string()
                } else {
                    format!("{p}/tcp")
                };
                cfg["ExposedPorts"][p] = json!({});
            }
        }
        "LABEL" => {
            let (k, v) = rest
                .split_once('=')
                .ok_or_else(|| err("LABEL needs key=value"))?;
            cfg["Labels"][k.trim()] = json!(v.trim().trim_matches('"'));
        }
        "STOPSIGNAL" => cfg["StopSignal"] = json!(rest),
        "SHELL" => {
            let v: Vec<String> =
                serde_json::from_str(rest).map_err(|_| err("SHELL needs a JSON array"))?;
            cfg["Shell"] = json!(v);
        }
        "VOLUME" => {
            let list: Vec<String> = serde_json::from_str(rest)
                .unwrap_or_else(|_| rest.split_whitespace().map(String::from).collect());
            for v in list {
                cfg["Volumes"][v] = json!({});
            }
        }
        other => {
            return Err(err(&format!(
                "{other} is not one of CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, WORKDIR, STOPSIGNAL, SHELL, VOLUME"
            )))
        }
    }
    Ok(())
}

/// Whether an overlay upper directory holds everything of its files: not when overlay
/// may keep only metadata there (metacopy) or record renames as redirects to lower
/// layers (redirect_dir), which the module's parameters say.
fn upper_is_self_contained() -> bool {
    ["metacopy", "redirect_dir"].iter().all(|p| {
        match std::fs::read_to_string(format!("/sys/module/overlay/parameters/{p}")) {
            Ok(v) => matches!(v.trim(), "N" | "off" | "follow" | "nofollow"),
            Err(_) => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_edit_the_config() {
        let mut c = json!({"Env": ["PATH=/bin"]});
        for ch in [
            "CMD [\"sh\", \"-c\", \"x\"]",
            "ENTRYPOINT tini --",
            "ENV PATH=/usr/bin",
            "ENV A b",
            "WORKDIR /srv",
            "EXPOSE 80 53/udp",
            "USER nobody",
            "LABEL a=\"b\"",
        ] {
            apply_change(&mut c, ch).unwrap();
        }
        assert_eq!(c["Cmd"], json!(["sh", "-c", "x"]));
        assert_eq!(c["Entrypoint"], json!(["/bin/sh", "-c", "tini --"]));
        assert_eq!(c["Env"], json!(["PATH=/usr/bin", "A=b"]));
        assert_eq!(c["WorkingDir"], "/srv");
        assert!(c["ExposedPorts"]["80/tcp"].is_object() && c["ExposedPorts"]["53/udp"].is_object());
        assert_eq!(c["User"], "nobody");
        assert_eq!(c["Labels"]["a"], "b");
        assert!(apply_change(&mut c, "RUN echo")
            .unwrap_err()
            .to_string()
            .contains("RUN is not one of"));
        assert!(apply_change(&mut c, "CMD").is_err());
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = Digest::sha256(b"a");
        let b = Digest::sha256(b"b");
        assert_eq!(chain_id(None, &a), a);
        assert_eq!(
            chain_id(Some(&a), &b),
            Digest::sha256(format!("{a} {b}").as_bytes())
        );
    }
}
