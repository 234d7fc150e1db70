//! `RUN --mount`: cache directories that outlive builds, binds of the context or of a
//! stage, tmpfs, and secrets that never reach a layer. Each becomes a bind or tmpfs of
//! the step's container; the mount points the step's container had to create are
//! removed again before the commit.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use berth_build::plan::{MountKind, RunMount, Sharing};
use serde_json::{json, Value};

/// What a step's container gets for its mounts, and what to undo afterwards.
#[derive(Default)]
pub struct Prepared {
    pub binds: Vec<String>,
    pub tmpfs: HashMap<String, String>,
    /// `RUN --mount=type=secret,env=NAME`: the secret in the environment.
    pub env: Vec<String>,
    /// The targets, for removing the mount points the container created.
    pub targets: Vec<String>,
    /// Locks held for `sharing=locked` caches.
    pub locks: Vec<tokio::sync::OwnedMutexGuard<()>>,
    /// Scratch directories (private caches in use elsewhere, rw binds): removed after.
    pub scratch: Vec<PathBuf>,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        for s in &self.scratch {
            let _ = std::fs::remove_dir_all(s);
        }
    }
}

type Locks = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// One lock per cache id, shared by every build of this daemon.
static CACHE_LOCKS: LazyLock<Locks> = LazyLock::new(Default::default);

fn lock_for(id: &str) -> Arc<tokio::sync::Mutex<()>> {
    let mut m = CACHE_LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    m.entry(id.to_string()).or_default().clone()
}

/// Where the cache mount `id` keeps its files: under the data root, named by a digest
/// of the id so any id is a safe file name.
pub fn cache_dir(data_root: &Path, id: &str) -> PathBuf {
    let name = berth_types::Digest::sha256(id.as_bytes()).hex()[..32].to_string();
    data_root.join("build-cache").join(name)
}

/// A path inside `root` (lexically: `..` cannot leave it), for bind sources.
pub fn inside(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let mut out = root.to_path_buf();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                return Err(format!("--mount source {rel}: leaves the context"))
            }
            _ => {}
        }
    }
    // A symlink on the way could still point out: resolve and check.
    if let Ok(real) = out.canonicalize() {
        let base = root.canonicalize().map_err(|e| e.to_string())?;
        if !real.starts_with(&base) {
            return Err(format!("--mount source {rel}: leaves the context"));
        }
        return Ok(real);
    }
    Err(format!(
        "--mount source {rel}: not found in the build context"
    ))
}

/// Copies a tree (for rw binds, whose writes are thrown away).
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("copying {} for a rw bind failed", from.display()))
    }
}

/// What a stage's build needs from the outside for its mounts.
pub struct Sources<'a> {
    pub data_root: &'a Path,
    pub context: &'a super::copy::Context,
    /// The build's scratch directory (rw copies and private caches go there).
    pub scratch: &'a Path,
    /// Where secrets are written (a tmpfs when there is one).
    pub secret_dir: &'a Path,
    pub secrets: &'a HashMap<String, Vec<u8>>,
}

/// The mounts' part of a step's cache key: what each bind shows (a digest of the
/// context's files, or the image a `from=` names); caches, tmpfs and secrets are not in
/// it, as BuildKit leaves them out. `from` holds the images of the `from=` binds.
pub async fn key(
    mounts: &[RunMount],
    context: &super::copy::Context,
    from: &HashMap<usize, String>,
) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (n, m) in mounts.iter().enumerate() {
        let spec = json!({
            "kind": format!("{:?}", m.kind), "target": m.target, "source": m.source,
            "id": m.id, "ro": m.readonly, "env": m.env,
        });
        if m.kind != MountKind::Bind {
            out.push(spec);
            continue;
        }
        let source = m.source.clone().unwrap_or_else(|| ".".into());
        match from.get(&n) {
            Some(image) => out.push(json!({"mount": spec, "from": image})),
            None => {
                inside(&context.root, &source)?;
                let entries = super::copy::plan(context, &[source], &[], &[], "/", false, false)?;
                let sum = super::copy::sum(&entries, None)?;
                out.push(json!({"mount": spec, "sum": sum}));
            }
        }
    }
    Ok(out)
}

/// Turns the mounts into binds and tmpfs entries. `from` holds, for the binds with
/// `from=` (by their index), a copy of the source taken out of that stage or image.
pub async fn prepare(
    mounts: &[RunMount],
    src: &Sources<'_>,
    from: &HashMap<usize, PathBuf>,
) -> Result<Prepared, String> {
    let mut p = Prepared::default();
    for (n, m) in mounts.iter().enumerate() {
        match m.kind {
            MountKind::Ssh => {
                return Err("RUN --mount=type=ssh is not supported by Berth's builder".into())
            }
            MountKind::Tmpfs => {
                let target = m.target.clone().unwrap_or_default();
                let opts = m.size.map(|s| format!("size={s}")).unwrap_or_default();
                p.tmpfs.insert(target.clone(), opts);
                p.targets.push(target);
            }
            MountKind::Cache => {
                let target = m.target.clone().unwrap_or_default();
                let id = m.id.clone().unwrap_or_else(|| target.clone());
                let mut dir = cache_dir(src.data_root, &id);
                match m.sharing {
                    Sharing::Shared => {}
                    Sharing::Locked => p.locks.push(lock_for(&id).lock_owned().await),
                    Sharing::Private => match lock_for(&id).try_lock_owned() {
                        Ok(g) => p.locks.push(g),
                        // In use: this step gets a fresh directory of its own.
                        Err(_) => {
                            dir = src.scratch.join(format!(
                                "private-cache-{n}-{}",
                                berth_store::content::unique()
                            ));
                            p.scratch.push(dir.clone());
                        }
                    },
                }
                let fresh = !dir.exists();
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                if fresh {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = m.mode.unwrap_or(0o755);
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
                        .map_err(|e| e.to_string())?;
                    rustix::fs::chown(
                        &dir,
                        Some(rustix::fs::Uid::from_raw(m.uid.unwrap_or(0))),
                        Some(rustix::fs::Gid::from_raw(m.gid.unwrap_or(0))),
                    )
                    .map_err(|e| e.to_string())?;
                }
                p.binds.push(format!(
                    "{}:{target}{}",
                    dir.display(),
                    if m.readonly { ":ro" } else { "" }
                ));
                p.targets.push(target);
            }
            MountKind::Bind => {
                let target = m.target.clone().unwrap_or_default();
                let source = m.source.clone().unwrap_or_else(|| ".".into());
                let bound = if let Some(copy) = from.get(&n) {
                    // A copy already: what the step writes there goes with it.
                    copy.clone()
                } else {
                    let path = inside(&src.context.root, &source)?;
                    let filtered = src.context.ignore.as_ref().is_some_and(|i| !i.is_empty());
                    if filtered && path.is_dir() {
                        // An in-place context with a .dockerignore: a copy of what the
                        // build may see.
                        let copy = src
                            .scratch
                            .join(format!("bind-{n}-{}", berth_store::content::unique()));
                        std::fs::create_dir_all(&copy).map_err(|e| e.to_string())?;
                        let entries = super::copy::plan(
                            src.context,
                            std::slice::from_ref(&source),
                            &[],
                            &[],
                            "/",
                            false,
                            false,
                        )?;
                        let mut t = Vec::new();
                        super::copy::write_tar(&entries, None, None, &mut t)?;
                        berth_store::layer::extract(&copy, std::io::Cursor::new(t), None)
                            .map_err(|e| e.to_string())?;
                        p.scratch.push(copy.clone());
                        copy
                    } else if m.readonly {
                        path
                    } else {
                        let copy = src
                            .scratch
                            .join(format!("rw-bind-{n}-{}", berth_store::content::unique()));
                        copy_tree(&path, &copy)?;
                        p.scratch.push(copy.clone());
                        copy
                    }
                };
                p.binds.push(format!(
                    "{}:{target}{}",
                    bound.display(),
                    if m.readonly { ":ro" } else { "" }
                ));
                p.targets.push(target);
            }
            MountKind::Secret => {
                let id = m.secret_id().unwrap_or_default();
                let Some(bytes) = src.secrets.get(&id) else {
                    if m.required {
                        return Err(format!(
                            "secret {id}: not provided (berth build --secret id={id},src=...)"
                        ));
                    }
                    continue;
                };
                if let Some(var) = &m.env {
                    p.env
                        .push(format!("{var}={}", String::from_utf8_lossy(bytes)));
                    if m.target.is_none() {
                        continue;
                    }
                }
                let target = m.secret_target().unwrap_or_default();
                let file = src
                    .secret_dir
                    .join(format!("secret-{n}-{}", berth_store::content::unique()));
                {
                    use std::io::Write;
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(m.mode.unwrap_or(0o400))
                        .open(&file)
                        .map_err(|e| e.to_string())?;
                    f.write_all(bytes).map_err(|e| e.to_string())?;
                }
                rustix::fs::chown(
                    &file,
                    Some(rustix::fs::Uid::from_raw(m.uid.unwrap_or(0))),
                    Some(rustix::fs::Gid::from_raw(m.gid.unwrap_or(0))),
                )
                .map_err(|e| e.to_string())?;
                p.scratch.push(file.clone());
                p.binds.push(format!("{}:{target}:ro", file.display()));
                p.targets.push(target);
            }
        }
    }
    Ok(p)
}

/// For each target, the topmost path on its way that the image does not have (what the
/// container will create to mount on).
pub fn missing_tops(root: &Path, targets: &[String]) -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    for t in targets {
        let rel: PathBuf = Path::new(t)
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        let mut cur = PathBuf::new();
        for c in rel.components() {
            cur.push(c);
            if std::fs::symlink_metadata(root.join(&cur)).is_err() {
                out.push((cur.clone(), rel.clone()));
                break;
            }
        }
    }
    out
}

/// Removes a created mount point and the empty directories above it, up to `top`; what
/// the step wrote there stays.
pub fn remove_mount_point(root: &Path, top: &Path, target: &Path) {
    let t = root.join(target);
    match std::fs::symlink_metadata(&t) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir(&t);
        }
        Ok(m) if m.is_file() && m.len() == 0 => {
            let _ = std::fs::remove_file(&t);
        }
        _ => return,
    }
    let mut cur = target.to_path_buf();
    while cur != top && cur.pop() && !cur.as_os_str().is_empty() {
        if std::fs::remove_dir(root.join(&cur)).is_err() {
            break;
        }
        if cur == top {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_stay_inside_the_context() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("ctx/sub")).unwrap();
        std::fs::write(d.path().join("ctx/sub/f"), "x").unwrap();
        std::fs::write(d.path().join("outside"), "y").unwrap();
        std::os::unix::fs::symlink("../../outside", d.path().join("ctx/sub/esc")).unwrap();
        let ctx = d.path().join("ctx");
        assert!(inside(&ctx, "sub/f").is_ok());
        assert!(inside(&ctx, "../outside").is_err());
        assert!(inside(&ctx, "sub/esc").is_err());
    }

    #[test]
    fn created_mount_points_go_and_written_files_stay() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("run")).unwrap();
        let tops = missing_tops(root, &["/run/secrets/tok".into(), "/cache/a/b".into()]);
        assert_eq!(
            tops,
            vec![
                (
                    PathBuf::from("run/secrets"),
                    PathBuf::from("run/secrets/tok")
                ),
                (PathBuf::from("cache"), PathBuf::from("cache/a/b")),
            ]
        );
        // As the container leaves them: an empty file, and a step's own file beside a dir.
        std::fs::create_dir_all(root.join("run/secrets")).unwrap();
        std::fs::write(root.join("run/secrets/tok"), "").unwrap();
        std::fs::create_dir_all(root.join("cache/a/b")).unwrap();
        std::fs::write(root.join("cache/a/kept"), "k").unwrap();
        for (top, t) in &tops {
            remove_mount_point(root, top, t);
        }
        assert!(!root.join("run/secrets").exists());
        assert!(root.join("run").exists());
        assert!(!root.join("cache/a/b").exists());
        assert!(root.join("cache/a/kept").exists());
    }
}
