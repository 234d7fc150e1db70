//! A container's filesystem as a whole or as changes: `GET /containers/{id}/changes`
//! (`docker diff`), `GET /containers/{id}/export`, `POST /commit`; and
//! `POST /containers/{id}/update` for its limits.

use std::path::{Path, PathBuf};

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::model::strip_nulls;
use crate::images::{param, params};
use crate::{ApiError, ApiResult, Shared};

/// Walks an overlay upper directory: (path, kind) with Docker's kinds (0 changed, 1 added,
/// 2 deleted). A path present in a lower layer is a change, otherwise an addition.
fn walk_upper(upper: &Path, rel: &Path, lowers: &[PathBuf], out: &mut Vec<(String, u8)>) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(rd) = std::fs::read_dir(upper.join(rel)) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = rel.join(e.file_name());
        let shown = format!("/{}", p.display());
        let Ok(md) = e.path().symlink_metadata() else {
            continue;
        };
        let in_lower = lowers.iter().any(|l| l.join(&p).symlink_metadata().is_ok());
        if md.file_type().is_char_device() && md.rdev() == 0 {
            out.push((shown, 2));
            continue;
        }
        out.push((shown, if in_lower { 0 } else { 1 }));
        if md.is_dir() {
            walk_upper(upper, &p, lowers, out);
        }
    }
}

pub async fn changes(
    State(d): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<Value>> {
    let e = d.containers.get(&id)?;
    let _g = e.op.lock().await;
    let rec = e.snapshot();
    let store = d.store.clone();
    let list = super::with_rootfs(&d, rec.clone(), false, move |_| {
        let Some(upper) = store.snapshots().upper(&rec.id) else {
            return Ok(Vec::new());
        };
        let lowers: Vec<PathBuf> = rec
            .layers
            .iter()
            .filter_map(|l| store.snapshots().layer_dir(l))
            .collect();
        let mut out = Vec::new();
        walk_upper(&upper, Path::new(""), &lowers, &mut out);
        Ok(out)
    })
    .await?;
    Ok(Json(Value::Array(
        list.into_iter()
            .map(|(p, k)| json!({"Path": p, "Kind": k}))
            .collect(),
    )))
}

pub async fn export(State(d): State<Shared>, UrlPath(id): UrlPath<String>) -> ApiResult<Response> {
    let e = d.containers.get(&id)?;
    let _g = e.op.lock().await;
    let rec = e.snapshot();
    let tmp = d.data_root.join("tmp");
    let file = super::with_rootfs(&d, rec, false, move |rootfs| {
        std::fs::create_dir_all(&tmp).map_err(ApiError::internal)?;
        let file = tempfile::tempfile_in(&tmp).map_err(ApiError::internal)?;
        let mut b = tar::Builder::new(file);
        b.follow_symlinks(false);
        b.append_dir_all(".", &rootfs).map_err(ApiError::internal)?;
        let mut file = b.into_inner().map_err(ApiError::internal)?;
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(0))
            .map_err(ApiError::internal)?;
        Ok(file)
    })
    .await?;
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `POST /commit?container=&repo=&tag=&comment=&changes=&pause=`: the container's changes
/// as a new layer on its image, with its command, entrypoint, working directory and user.
pub async fn commit(
    State(d): State<Shared>,
    RawQuery(q): RawQuery,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let ps = params(q.as_deref());
    let get = |k: &str| param(&ps, k).map(String::from);
    let name = get("container").ok_or_else(|| ApiError::bad_request("container is required"))?;
    let e = d.containers.get(&name)?;
    let _g = e.op.lock().await;
    let rec = e.snapshot();
    let tag = match get("repo").filter(|r| !r.is_empty()) {
        Some(repo) => {
            let t = get("tag")
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "latest".into());
            Some(
                format!("{repo}:{t}")
                    .parse::<berth_types::Reference>()
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
            )
        }
        None => None,
    };
    let c = &rec.config;
    let mut changes = Vec::new();
    if let Some(cmd) = &c.cmd {
        changes.push(format!("CMD {}", json!(cmd)));
    }
    if let Some(ep) = &c.entrypoint {
        changes.push(format!("ENTRYPOINT {}", json!(ep)));
    }
    if !c.working_dir.is_empty() {
        changes.push(format!("WORKDIR {}", c.working_dir));
    }
    if !c.user.is_empty() {
        changes.push(format!("USER {}", c.user));
    }
    changes.extend(
        ps.iter()
            .filter(|(k, _)| k == "changes")
            .map(|(_, v)| v.clone()),
    );
    let comment = get("comment").unwrap_or_default();
    let pause = !matches!(get("pause").as_deref(), Some("0" | "false"));
    let store = d.store.clone();
    let image = rec.image.clone();
    let id = rec.id.clone();
    let img = super::with_rootfs(&d, rec, pause, move |_| {
        store
            .commit(&id, &image, &changes, &comment, tag.as_ref())
            .map_err(ApiError::from)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"Id": img.config.to_string()})),
    ))
}

/// `POST /containers/{id}/update`: new limits, applied at once to a running container.
pub async fn update(
    State(d): State<Shared>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let mut v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    strip_nulls(&mut v);
    let e = d.containers.get(&id)?;
    let _g = e.op.lock().await;
    let mut hc = e.snapshot().host_config;
    let num = |k: &str| v[k].as_i64();
    if let Some(m) = num("Memory").filter(|&m| m != 0) {
        if m < 6 << 20 {
            return Err(ApiError::bad_request("Minimum memory limit allowed is 6MB"));
        }
        hc.memory = m;
    }
    if let Some(x) = num("MemorySwap").filter(|&x| x != 0) {
        hc.memory_swap = x;
    }
    if let Some(x) = num("NanoCpus").filter(|&x| x != 0) {
        hc.nano_cpus = x;
    }
    if let Some(x) = num("CpuShares").filter(|&x| x != 0) {
        hc.cpu_shares = x;
    }
    if let Some(x) = num("CpuQuota").filter(|&x| x != 0) {
        hc.cpu_quota = x;
    }
    if let Some(x) = num("CpuPeriod").filter(|&x| x != 0) {
        hc.cpu_period = x;
    }
    if let Some(x) = v["CpusetCpus"].as_str().filter(|x| !x.is_empty()) {
        hc.cpuset_cpus = x.to_string();
    }
    if let Some(x) = num("PidsLimit").filter(|&x| x != 0) {
        hc.pids_limit = Some(x);
    }
    if let Ok(p) = serde_json::from_value::<super::model::RestartPolicy>(v["RestartPolicy"].clone())
    {
        if !p.name.is_empty() {
            hc.restart_policy = p;
        }
    }
    let rec = {
        let mut r = e.rec.lock().expect("lock");
        r.host_config = hc.clone();
        r.clone()
    };
    if rec.state.running {
        let mut res = super::spec::resources(&hc);
        if let Some(o) = res.as_object_mut() {
            o.remove("devices");
        }
        let res: berth_runtime::oci_spec::runtime::LinuxResources =
            serde_json::from_value(res).map_err(ApiError::internal)?;
        d.containers.runtime.update(&rec.id, &res).map_err(|e| {
            ApiError::bad_request(format!("Cannot update container {}: {e}", rec.id))
        })?;
    }
    d.containers.persist(&rec)?;
    Ok(Json(json!({"Warnings": []})))
}

/// Swarm endpoints answer as a Docker daemon outside a swarm does.
pub async fn not_a_swarm() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.",
    )
}
