//! `docker cp`: `HEAD`/`GET`/`PUT /containers/{id}/archive?path=`. Paths are resolved
//! inside the container's root filesystem with openat2(RESOLVE_IN_ROOT), so `..` and
//! symlinks (absolute or relative) stay inside it, as they would for a process in the
//! container; extraction goes through the layer applier, which resolves every entry the
//! same way. A container that is not running has its root filesystem mounted for the
//! duration of the call.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use serde_json::json;

use crate::images::{param, params, truthy};
use crate::{ApiError, ApiResult, Shared};

/// Go's os.FileMode bits, which the docker CLI reads in the path stat.
fn go_mode(st: &rustix::fs::Stat) -> u32 {
    let perm = st.st_mode & 0o777;
    let mut m = perm;
    let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
    m |= match kind {
        rustix::fs::FileType::Directory => 1 << 31,
        rustix::fs::FileType::Symlink => 1 << 27,
        rustix::fs::FileType::Fifo => 1 << 25,
        rustix::fs::FileType::Socket => 1 << 24,
        rustix::fs::FileType::BlockDevice => 1 << 26,
        rustix::fs::FileType::CharacterDevice => (1 << 26) | (1 << 21),
        _ => 0,
    };
    if st.st_mode & 0o4000 != 0 {
        m |= 1 << 23;
    }
    if st.st_mode & 0o2000 != 0 {
        m |= 1 << 22;
    }
    if st.st_mode & 0o1000 != 0 {
        m |= 1 << 20;
    }
    m
}

struct Resolved {
    /// The parent directory, opened inside the root.
    parent: OwnedFd,
    name: String,
    stat: rustix::fs::Stat,
}

fn not_found(path: &str, id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Could not find the file {path} in container {id}"),
    )
}

/// Resolves `path` in the root: the parent with RESOLVE_IN_ROOT, the last component
/// without following it (a symlink is reported and copied as a symlink).
fn resolve(root: &Path, path: &str, id: &str) -> ApiResult<Resolved> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(ApiError::internal)?;
    let trimmed = path.trim_end_matches('/');
    // A trailing slash follows the last component too (it must be a directory).
    if path.ends_with('/') && !trimmed.is_empty() {
        let dir = rustix::fs::openat2(
            &root_fd,
            trimmed.trim_start_matches('/'),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|_| not_found(path, id))?;
        let stat = rustix::fs::statat(&dir, ".", AtFlags::empty()).map_err(ApiError::internal)?;
        return Ok(Resolved {
            parent: dir,
            name: ".".into(),
            stat,
        });
    }
    let (dir, name) = match trimmed.rsplit_once('/') {
        Some((d, n)) => (if d.is_empty() { "/" } else { d }, n),
        None => (".", trimmed),
    };
    let how = rustix::fs::openat2(
        &root_fd,
        dir.trim_start_matches('/'),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    );
    let parent = match (dir, how) {
        ("/" | ".", _) => root_fd,
        (_, Ok(fd)) => fd,
        (_, Err(_)) => return Err(not_found(path, id)),
    };
    let name = if name.is_empty() || name == "." {
        "."
    } else {
        name
    };
    let stat = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|_| not_found(path, id))?;
    Ok(Resolved {
        parent,
        name: name.to_string(),
        stat,
    })
}

fn stat_header(path: &str, r: &Resolved) -> ApiResult<HeaderValue> {
    let link =
        if rustix::fs::FileType::from_raw_mode(r.stat.st_mode) == rustix::fs::FileType::Symlink {
            rustix::fs::readlinkat(&r.parent, r.name.as_str(), Vec::new())
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            String::new()
        };
    let base = Path::new(path.trim_end_matches('/'))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into());
    let mtime = berth_types::time::rfc3339(r.stat.st_mtime, r.stat.st_mtime_nsec as u32);
    let v = json!({
        "name": base, "size": r.stat.st_size, "mode": go_mode(&r.stat),
        "mtime": mtime, "linkTarget": link
    });
    HeaderValue::from_str(&base64(v.to_string().as_bytes())).map_err(ApiError::internal)
}

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

pub async fn archive(
    State(d): State<Shared>,
    method: Method,
    UrlPath(id): UrlPath<String>,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    let ps = params(q.as_deref());
    let path = param(&ps, "path")
        .filter(|p| !p.is_empty())
        .map(String::from)
        .ok_or_else(|| ApiError::bad_request("path is required"))?;
    let e = d.containers.get(&id)?;
    let _g = e.op.lock().await;
    let rec = e.snapshot();
    let id = rec.id.clone();
    match method {
        Method::HEAD => {
            let hv = super::with_rootfs(&d, rec, false, move |root| {
                let r = resolve(&root, &path, &id)?;
                stat_header(&path, &r)
            })
            .await?;
            Ok(([("X-Docker-Container-Path-Stat", hv)], StatusCode::OK).into_response())
        }
        Method::GET => {
            let tmp = d.data_root.join("tmp");
            let (hv, file) = super::with_rootfs(&d, rec, false, move |root| {
                let r = resolve(&root, &path, &id)?;
                let hv = stat_header(&path, &r)?;
                // Spooled to an unlinked file while mounted: the stream outlives the call.
                std::fs::create_dir_all(&tmp).map_err(ApiError::internal)?;
                let file = tempfile::tempfile_in(&tmp).map_err(ApiError::internal)?;
                let mut b = tar::Builder::new(file);
                b.follow_symlinks(false);
                let src =
                    PathBuf::from(format!("/proc/self/fd/{}", r.parent.as_raw_fd())).join(&r.name);
                let base = Path::new(path.trim_end_matches('/'))
                    .file_name()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("."));
                let is_dir = rustix::fs::FileType::from_raw_mode(r.stat.st_mode)
                    == rustix::fs::FileType::Directory;
                if is_dir {
                    b.append_dir_all(&base, &src).map_err(ApiError::internal)?;
                } else {
                    b.append_path_with_name(&src, &base)
                        .map_err(ApiError::internal)?;
                }
                let mut file = b.into_inner().map_err(ApiError::internal)?;
                use std::io::Seek;
                file.seek(std::io::SeekFrom::Start(0))
                    .map_err(ApiError::internal)?;
                Ok((hv, file))
            })
            .await?;
            let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
            Ok((
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/x-tar"),
                    ),
                    (
                        header::HeaderName::from_static("x-docker-container-path-stat"),
                        hv,
                    ),
                ],
                Body::from_stream(stream),
            )
                .into_response())
        }
        Method::PUT => {
            let copy_ids = truthy(param(&ps, "copyUIDGID"));
            let spooled = crate::images::body_to_file(&d, body).await?;
            let result = super::with_rootfs(&d, rec, false, move |root| {
                let r = resolve(&root, &path, &id)?;
                if rustix::fs::FileType::from_raw_mode(r.stat.st_mode)
                    != rustix::fs::FileType::Directory
                {
                    return Err(ApiError::bad_request(format!(
                        "extraction point is not a directory: {path}"
                    )));
                }
                let dir = rustix::fs::openat(
                    &r.parent,
                    r.name.as_str(),
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(ApiError::internal)?;
                let target = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
                let input = std::fs::File::open(&spooled).map_err(ApiError::internal)?;
                let _ = std::fs::remove_file(&spooled);
                // Docker's cp: root owns what comes in, unless copyUIDGID (`cp -a`).
                let owner = if copy_ids { None } else { Some((0, 0)) };
                berth_store::layer::extract(&target, input, owner)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                Ok(())
            })
            .await;
            result?;
            Ok(StatusCode::OK.into_response())
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
        )),
    }
}
