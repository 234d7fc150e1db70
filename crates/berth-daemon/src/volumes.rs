//! Volumes (the `local` driver): `<data-root>/volumes/<name>/_data` with its record in
//! `volume.json` beside it (write, fsync, rename). Options `type`/`device`/`o` mount a
//! filesystem there on first use (tmpfs, or a bind with `o=bind`), as Docker's local driver
//! does. Containers name their volumes in their records, which is what "in use" means.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::images::params;
use crate::{ApiError, ApiResult, Shared};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Volume {
    pub name: String,
    pub driver: String,
    pub mountpoint: PathBuf,
    pub created_at: String,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub scope: String,
    /// Made for one container (`-v /path`, an image's VOLUME): `rm -v` and prune take it.
    #[serde(skip_serializing)]
    pub anonymous: bool,
}

#[derive(Deserialize, Serialize)]
struct Stored {
    #[serde(flatten)]
    volume: Volume,
    anonymous: bool,
    /// The image content was copied in (or the volume was used without it).
    initialized: bool,
}

pub struct Volumes {
    root: PathBuf,
    lock: Mutex<()>,
}

pub fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("get {name}: no such volume"))
}

impl Volumes {
    pub fn new(data_root: &Path) -> Volumes {
        Volumes {
            root: data_root.join("volumes"),
            lock: Mutex::new(()),
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn load(&self, name: &str) -> Option<Stored> {
        if !valid_name(name) {
            return None;
        }
        let b = std::fs::read(self.dir(name).join("volume.json")).ok()?;
        serde_json::from_slice(&b).ok()
    }

    fn save(&self, s: &Stored) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec_pretty(s).map_err(ApiError::internal)?;
        berth_types::fs::atomic_write(&self.dir(&s.volume.name).join("volume.json"), &bytes)
            .map_err(ApiError::internal)
    }

    pub fn get(&self, name: &str) -> Result<Volume, ApiError> {
        self.load(name)
            .map(|s| Volume {
                anonymous: s.anonymous,
                ..s.volume
            })
            .ok_or_else(|| not_found(name))
    }

    pub fn list(&self) -> Vec<Volume> {
        let mut out: Vec<Volume> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| self.get(&e.file_name().to_string_lossy()).ok())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Creates the volume, or returns the existing one of that name (Docker's rule).
    pub fn create(
        &self,
        name: Option<&str>,
        driver: &str,
        options: BTreeMap<String, String>,
        labels: BTreeMap<String, String>,
        anonymous: bool,
    ) -> Result<Volume, ApiError> {
        let _g = self.lock.lock().expect("volumes lock");
        let name = match name.filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => crate::containers::random_id(),
        };
        if !valid_name(&name) {
            return Err(ApiError::bad_request(format!(
                "create {name}: \"{name}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
            )));
        }
        if !matches!(driver, "" | "local") {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("create {name}: error looking up volume plugin {driver}: plugin \"{driver}\" not found"),
            ));
        }
        for k in options.keys() {
            if !matches!(k.as_str(), "type" | "device" | "o" | "size") {
                return Err(ApiError::bad_request(format!(
                    "create {name}: invalid option key: {k:?}"
                )));
            }
        }
        if let Some(s) = self.load(&name) {
            return Ok(s.volume);
        }
        let dir = self.dir(&name);
        std::fs::create_dir_all(dir.join("_data")).map_err(ApiError::internal)?;
        let volume = Volume {
            name: name.clone(),
            driver: "local".into(),
            mountpoint: dir.join("_data"),
            created_at: berth_types::time::now_rfc3339(),
            labels,
            options,
            scope: "local".into(),
            anonymous,
        };
        self.save(&Stored {
            volume: volume.clone(),
            anonymous,
            initialized: false,
        })?;
        Ok(volume)
    }

    /// The host path to bind for a container, with the volume's filesystem mounted there
    /// if its options ask for one; and whether it is new (to copy the image's content in).
    pub fn attach(&self, name: &str) -> Result<(PathBuf, bool), String> {
        let _g = self.lock.lock().expect("volumes lock");
        let mut s = self
            .load(name)
            .ok_or_else(|| format!("get {name}: no such volume"))?;
        let data = s.volume.mountpoint.clone();
        if let Some(kind) = s.volume.options.get("type") {
            if !is_mountpoint(&data) {
                let device = s.volume.options.get("device").cloned().unwrap_or_default();
                let o = s.volume.options.get("o").cloned().unwrap_or_default();
                mount_volume(kind, &device, &o, &data).map_err(|e| {
                    format!("error while mounting volume '{}': {e}", data.display())
                })?;
            }
        }
        let fresh = !s.initialized;
        if fresh {
            s.initialized = true;
            self.save(&s).map_err(|e| e.message)?;
        }
        Ok((data, fresh))
    }

    /// Removes a volume no container uses (the caller checks use).
    pub fn remove(&self, name: &str) -> Result<u64, ApiError> {
        let _g = self.lock.lock().expect("volumes lock");
        let s = self.load(name).ok_or_else(|| not_found(name))?;
        if is_mountpoint(&s.volume.mountpoint) {
            rustix::mount::unmount(&s.volume.mountpoint, rustix::mount::UnmountFlags::DETACH)
                .map_err(|e| ApiError::internal(format!("unmounting {name}: {e}")))?;
        }
        let size = berth_types::fs::du(&s.volume.mountpoint);
        // Renamed first, so a crash never leaves a half-deleted volume under its name.
        let trash = self.root.join(format!(".removing-{name}"));
        std::fs::rename(self.dir(name), &trash).map_err(ApiError::internal)?;
        std::fs::remove_dir_all(&trash).map_err(ApiError::internal)?;
        Ok(size)
    }
}

fn is_mountpoint(p: &Path) -> bool {
    let want = p.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_ref()))
}

/// `type=tmpfs,device=tmpfs,o=size=64m` or `type=none,device=/src,o=bind`.
fn mount_volume(kind: &str, device: &str, o: &str, target: &Path) -> std::io::Result<()> {
    use rustix::mount::{mount, mount_bind, MountFlags};
    let opts: Vec<&str> = o.split(',').filter(|x| !x.is_empty()).collect();
    if opts.contains(&"bind") || opts.contains(&"rbind") {
        return mount_bind(device, target).map_err(Into::into);
    }
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    for opt in opts {
        match opt {
            "ro" => flags |= MountFlags::RDONLY,
            "nosuid" => flags |= MountFlags::NOSUID,
            "nodev" => flags |= MountFlags::NODEV,
            "noexec" => flags |= MountFlags::NOEXEC,
            other => data.push(other),
        }
    }
    let data = std::ffi::CString::new(data.join(","))
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    mount(device, target, kind, flags, Some(data.as_c_str())).map_err(Into::into)
}

/// Copies `src` (the image's content at the mount point) into a new volume, keeping
/// owners, modes and links, as Docker does for a volume's first use.
pub fn copy_up(src: &Path, dst: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(md) = std::fs::symlink_metadata(src) else {
        return Ok(()); // nothing there in the image
    };
    if !md.is_dir() {
        return Ok(());
    }
    std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid()))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(md.mode() & 0o7777))?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let from = e.path();
        let to = dst.join(e.file_name());
        let md = std::fs::symlink_metadata(&from)?;
        let ft = md.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&to)?;
            copy_up(&from, &to)?;
            continue;
        }
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if ft.is_file() {
            std::fs::copy(&from, &to)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(md.mode() & 0o7777))?;
        } else {
            continue; // devices, fifos and sockets are not copied
        }
        std::os::unix::fs::lchown(&to, Some(md.uid()), Some(md.gid()))?;
    }
    Ok(())
}

fn volume_json(v: &Volume) -> Value {
    let mut j = serde_json::to_value(v).unwrap_or_default();
    if v.labels.is_empty() {
        j["Labels"] = json!({});
    }
    if v.options.is_empty() {
        j["Options"] = Value::Null;
    }
    j
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    name: String,
    driver: String,
    driver_opts: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
}

pub async fn create(State(d): State<Shared>, body: Bytes) -> ApiResult<(StatusCode, Json<Value>)> {
    let mut v: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    crate::containers::model::strip_nulls(&mut v);
    let b: CreateBody = serde_json::from_value(v)
        .map_err(|e| ApiError::bad_request(format!("invalid volume body: {e}")))?;
    let d2 = d.clone();
    let vol = crate::blocking(move || {
        d2.volumes.create(
            Some(&b.name).filter(|n| !n.is_empty()).map(String::as_str),
            &b.driver,
            b.driver_opts,
            b.labels,
            false,
        )
    })
    .await?;
    d.volume_event("create", &vol.name, &vol.driver);
    Ok((StatusCode::CREATED, Json(volume_json(&vol))))
}

/// Names of volumes containers refer to, with the containers.
pub fn users(d: &Shared) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in d.containers.all() {
        let r = e.snapshot();
        for v in &r.volumes {
            m.entry(v.name.clone()).or_default().push(r.id.clone());
        }
    }
    m
}

pub async fn list(State(d): State<Shared>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let ps = params(q.as_deref());
    let fs = crate::containers::api::filters(&ps)?;
    let used = users(&d);
    let mut out = Vec::new();
    for v in d.volumes.list() {
        let mut keep = true;
        for (k, vals) in &fs {
            keep &= match k.as_str() {
                "name" => vals.iter().any(|x| v.name.contains(x.as_str())),
                "driver" => vals.iter().any(|x| x == &v.driver),
                "dangling" => vals
                    .iter()
                    .any(|x| matches!(x.as_str(), "true" | "1") != used.contains_key(&v.name)),
                // Every label asked for (Docker ANDs label filters).
                "label" => vals.iter().all(|x| match x.split_once('=') {
                    Some((k, val)) => v.labels.get(k).is_some_and(|l| l == val),
                    None => v.labels.contains_key(x),
                }),
                other => return Err(ApiError::bad_request(format!("invalid filter '{other}'"))),
            };
        }
        if keep {
            out.push(volume_json(&v));
        }
    }
    Ok(Json(json!({"Volumes": out, "Warnings": []})))
}

pub async fn inspect(
    State(d): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(volume_json(&d.volumes.get(&name)?)))
}

pub async fn remove(
    State(d): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<StatusCode> {
    d.volumes.get(&name)?;
    if let Some(ids) = users(&d).get(&name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("remove {name}: volume is in use - [{}]", ids.join(", ")),
        ));
    }
    let (d2, n2) = (d.clone(), name.clone());
    crate::blocking(move || d2.volumes.remove(&n2)).await?;
    d.volume_event("destroy", &name, "local");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /volumes/prune`: unused anonymous volumes (all unused ones with `all=true`), as
/// Docker 23 and later do.
pub async fn prune(State(d): State<Shared>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let ps = params(q.as_deref());
    let fs = crate::containers::api::filters(&ps)?;
    let all = fs
        .iter()
        .any(|(k, v)| k == "all" && v.iter().any(|x| matches!(x.as_str(), "true" | "1")));
    let used = users(&d);
    let mut deleted = Vec::new();
    let mut reclaimed = 0;
    for v in d.volumes.list() {
        if used.contains_key(&v.name) || !(all || v.anonymous) {
            continue;
        }
        let (d2, name) = (d.clone(), v.name.clone());
        reclaimed += crate::blocking(move || d2.volumes.remove(&name)).await?;
        d.volume_event("destroy", &v.name, &v.driver);
        deleted.push(v.name);
    }
    Ok(Json(
        json!({"VolumesDeleted": deleted, "SpaceReclaimed": reclaimed}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_is_idempotent_and_names_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let vs = Volumes::new(d.path());
        let a = vs
            .create(
                Some("data"),
                "local",
                BTreeMap::new(),
                BTreeMap::new(),
                false,
            )
            .unwrap();
        let b = vs
            .create(Some("data"), "", BTreeMap::new(), BTreeMap::new(), false)
            .unwrap();
        assert_eq!(a.created_at, b.created_at);
        assert!(a.mountpoint.ends_with("volumes/data/_data"));
        assert!(vs
            .create(
                Some("../x"),
                "local",
                BTreeMap::new(),
                BTreeMap::new(),
                false
            )
            .is_err());
        let anon = vs
            .create(None, "local", BTreeMap::new(), BTreeMap::new(), true)
            .unwrap();
        assert_eq!(anon.name.len(), 64);
        assert_eq!(vs.list().len(), 2);
        let (path, fresh) = vs.attach("data").unwrap();
        assert!(fresh && path.is_dir());
        assert!(!vs.attach("data").unwrap().1);
        vs.remove("data").unwrap();
        assert!(vs.get("data").is_err());
    }

    #[test]
    fn copy_up_keeps_modes_and_links() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/f"), "x").unwrap();
        std::fs::set_permissions(src.join("sub/f"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        std::os::unix::fs::symlink("sub/f", src.join("link")).unwrap();
        let dst = d.path().join("dst");
        std::fs::create_dir(&dst).unwrap();
        copy_up(&src, &dst).unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("link")).unwrap(), "x");
        let mode = std::fs::metadata(dst.join("sub/f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
    }
}
