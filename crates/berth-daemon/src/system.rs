//! `/_ping`, `/version`, `/info`.

use axum::extract::{RawQuery, State};
use axum::http::header::HeaderName;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use crate::{ApiResult, Shared, API_VERSION, MIN_API_VERSION};

fn kernel() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// The CLI negotiates its API version from these headers.
pub async fn ping() -> impl IntoResponse {
    (
        [
            (HeaderName::from_static("api-version"), API_VERSION),
            (HeaderName::from_static("ostype"), "linux"),
            (HeaderName::from_static("docker-experimental"), "false"),
            (
                HeaderName::from_static("cache-control"),
                "no-cache, no-store, must-revalidate",
            ),
            (HeaderName::from_static("pragma"), "no-cache"),
        ],
        "OK",
    )
}

pub async fn version() -> Json<Value> {
    let arch = berth_store::image::go_arch();
    let v = env!("CARGO_PKG_VERSION");
    Json(json!({
        "Platform": {"Name": "Berth"},
        "Components": [{
            "Name": "Engine",
            "Version": v,
            "Details": {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "Os": "linux", "Arch": arch, "KernelVersion": kernel()}
        }],
        "Version": v,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": arch,
        "KernelVersion": kernel(),
        "BuildTime": ""
    }))
}

fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

pub async fn info(State(d): State<Shared>) -> Json<Value> {
    let images = d.store.list().len();
    let recs: Vec<_> = d.containers.all().iter().map(|e| e.snapshot()).collect();
    let running = recs
        .iter()
        .filter(|r| r.state.running && !r.state.paused)
        .count();
    let paused = recs.iter().filter(|r| r.state.paused).count();
    let cgroup_version = if std::fs::metadata("/sys/fs/cgroup/cgroup.controllers").is_ok() {
        "2"
    } else {
        "1"
    };
    Json(json!({
        "ID": "",
        "Containers": recs.len(), "ContainersRunning": running, "ContainersPaused": paused,
        "ContainersStopped": recs.len() - running - paused,
        "Images": images,
        "Driver": "overlay2",
        "DriverStatus": [["Backing Filesystem", "extfs"]],
        "DockerRootDir": d.data_root,
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": cgroup_version,
        "KernelVersion": kernel(),
        "OperatingSystem": os_name(),
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "NCPU": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "MemTotal": mem_total(),
        "Name": rustix::system::uname().nodename().to_string_lossy(),
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "Runtimes": {"berth": {"path": "berth-runc"}},
        "DefaultRuntime": "berth",
        "LoggingDriver": "json-file",
        "SecurityOptions": ["name=seccomp,profile=builtin"],
        "Swarm": {"LocalNodeState": "inactive", "NodeID": "", "NodeAddr": "", "ControlAvailable": false, "Error": "", "RemoteManagers": null},
        "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "none"], "Log": ["json-file", "none"]},
        "RegistryConfig": {"IndexConfigs": {}, "InsecureRegistryCIDRs": ["127.0.0.0/8"], "Mirrors": []},
        "Warnings": []
    }))
}

/// `GET /events`: what happens from now on (`since` in the past is not replayed yet),
/// one JSON object per line, filtered by type, event, container, image and label.
pub async fn events(
    State(d): State<Shared>,
    RawQuery(q): RawQuery,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let ps = crate::images::params(q.as_deref());
    let fs = crate::containers::api::filters(&ps)?;
    // Unix seconds with an optional fraction, as the docker CLI sends them.
    let nanos = |k: &str| -> ApiResult<Option<u64>> {
        match crate::images::param(&ps, k) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse::<f64>()
                .map(|s| Some((s * 1e9) as u64))
                .map_err(|_| crate::ApiError::bad_request(format!("invalid {k}: {v}"))),
        }
    };
    let since = nanos("since")?;
    let until_ns = nanos("until")?;
    let until = until_ns.map(|n| n / 1_000_000_000);
    let (rx, past) = {
        let recent = d.recent.lock().expect("events lock");
        let past: Vec<Value> = match since {
            Some(s) => recent
                .iter()
                .filter(|e| {
                    let t = e["timeNano"].as_u64().unwrap_or(0);
                    t >= s && until_ns.is_none_or(|u| t <= u)
                })
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        (d.events.subscribe(), past)
    };
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_nanos() as u64)
        .unwrap_or(0);
    let only_past = until_ns.is_some_and(|u| u <= now_ns);
    let keep = move |ev: &Value| {
        fs.iter().all(|(k, vals)| {
            let field = match k.as_str() {
                "type" => ev["Type"].as_str().map(String::from),
                "event" => ev["Action"].as_str().map(String::from),
                "container" => {
                    let id = ev["id"].as_str().unwrap_or("");
                    let name = ev["Actor"]["Attributes"]["name"].as_str().unwrap_or("");
                    return vals.iter().any(|v| v == name || id.starts_with(v.as_str()));
                }
                "image" => ev["from"].as_str().map(String::from),
                "label" => {
                    return vals.iter().all(|v| {
                        let (k, want) = v.split_once('=').unwrap_or((v, ""));
                        match ev["Actor"]["Attributes"][k].as_str() {
                            Some(have) => want.is_empty() || have == want,
                            None => false,
                        }
                    })
                }
                _ => return true,
            };
            field.is_some_and(|f| vals.contains(&f))
        })
    };
    let keep2 = keep.clone();
    let replay = futures_util::stream::iter(
        past.into_iter()
            .filter(move |e| keep2(e))
            .map(|e| Ok::<_, std::io::Error>(e.to_string() + "\n")),
    );
    let live = futures_util::stream::unfold(rx, move |mut rx| {
        let keep = keep.clone();
        async move {
            if only_past {
                return None;
            }
            loop {
                let deadline = until.map(|u| {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    std::time::Duration::from_secs(u).saturating_sub(now)
                });
                let next = match deadline {
                    Some(d) => match tokio::time::timeout(d, rx.recv()).await {
                        Ok(r) => r,
                        Err(_) => return None,
                    },
                    None => rx.recv().await,
                };
                match next {
                    Ok(ev) if keep(&ev) => {
                        let line = ev.to_string() + "\n";
                        return Some((Ok::<_, std::io::Error>(line), rx));
                    }
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return None,
                }
            }
        }
    });
    use futures_util::StreamExt;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(replay.chain(live)),
    )
        .into_response())
}

/// `GET /system/df`: images and the bytes their layers take.
pub async fn disk_usage(State(d): State<Shared>) -> Json<Value> {
    let mut layers = std::collections::BTreeMap::new();
    let images: Vec<Value> = d
        .store
        .list()
        .into_iter()
        .map(|(img, tags)| {
            let size: u64 = img.layers.iter().map(|l| l.size).sum();
            for l in &img.layers {
                layers.insert(l.chain_id.clone(), l.size);
            }
            json!({
                "Id": img.config,
                "ParentId": "",
                "RepoTags": tags,
                "RepoDigests": [],
                "Created": berth_types::time::parse_rfc3339(&img.created).unwrap_or(0),
                "Size": size,
                "SharedSize": 0,
                "VirtualSize": size,
                "Labels": {},
                "Containers": 0
            })
        })
        .collect();
    Json(json!({
        "LayersSize": layers.values().sum::<u64>(),
        "Images": images,
        "Containers": d.containers.all().iter().map(|e| {
            let r = e.snapshot();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|t| t.as_secs() as i64)
                .unwrap_or(0);
            crate::containers::api::summary(&d.containers, &r, now)
        }).collect::<Vec<_>>(),
        "Volumes": [],
        "BuildCache": build_cache_usage(&d)
    }))
}

/// The build cache as `system df` counts it: one record per layer that cached build steps
/// made. A layer some listed image also has is shared (builder prune would not free it).
fn build_cache_usage(d: &Shared) -> Vec<Value> {
    let kept: std::collections::BTreeSet<String> = d
        .store
        .list()
        .into_iter()
        .filter(|(img, _)| !d.store.is_intermediate(&img.manifest))
        .flat_map(|(img, _)| img.layers.into_iter().map(|l| l.chain_id.to_string()))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for img in d.store.build_cache_images() {
        // Layers the base image brought are not the cache's.
        let Some(l) = img.layers.last() else { continue };
        if !seen.insert(l.chain_id.to_string()) {
            continue;
        }
        let shared = kept.contains(&l.chain_id.to_string());
        out.push(json!({
            "ID": l.chain_id.hex()[..12].to_string(),
            "Parent": "",
            "Parents": [],
            "Type": "regular",
            "Description": format!("layer of {}", &img.config.hex()[..12]),
            "InUse": false,
            "Shared": shared,
            "Size": l.size,
            "CreatedAt": img.created,
            "LastUsedAt": img.created,
            "UsageCount": 1
        }));
    }
    out
}
