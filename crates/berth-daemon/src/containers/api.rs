//! The `/containers/...` endpoints.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::model::{strip_nulls, CreateBody, Record, State as CState, VolumeMount, ZERO_TIME};
use super::{parse_signal, Containers, Entry};
use crate::images::{param, params, truthy};
use crate::{ApiError, ApiResult, Shared};

fn not_running(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!("Container {id} is not running"),
    )
}

pub(crate) fn image_config(d: &Shared, img: &berth_store::image::Image) -> ApiResult<Value> {
    let bytes = d
        .store
        .content()
        .read(&img.config)
        .map_err(ApiError::internal)?;
    let v: Value = serde_json::from_slice(&bytes).map_err(ApiError::internal)?;
    Ok(v["config"].clone())
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| {
        a.iter()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    })
}

/// `NetworkingConfig.EndpointsConfig` of a create body: what the container asks of each
/// network (`--ip`, `--network-alias`), by network name.
async fn endpoint_requests(
    d: &Shared,
    mode: &str,
    networking: &Value,
) -> ApiResult<std::collections::BTreeMap<String, crate::networks::EndpointRequest>> {
    let mut out = std::collections::BTreeMap::new();
    for (key, cfg) in networking["EndpointsConfig"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let key = if key == "default" {
            "bridge"
        } else {
            key.as_str()
        };
        let name = d
            .networks
            .name_of(key)
            .await
            .unwrap_or_else(|| key.to_string());
        if !crate::networks::is_network_name(&name) {
            continue;
        }
        let req = crate::networks::endpoint_request(cfg)?;
        if (req.ipv4.is_some() || req.ipv6.is_some()) && name == "bridge" {
            return Err(ApiError::bad_request(
                "user specified IP address is supported on user defined networks only",
            ));
        }
        out.insert(name, req);
    }
    if crate::networks::is_network_name(mode) {
        out.entry(mode.to_string()).or_default();
    }
    Ok(out)
}

/// `POST /containers/create`: the body merged over the image's config, as Docker does.
pub async fn create(
    State(d): State<Shared>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let ps = params(q.as_deref());
    let name = param(&ps, "name").filter(|n| !n.is_empty());
    let mut v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "invalid JSON body: expected an object",
        ));
    }
    strip_nulls(&mut v);
    let body: CreateBody = serde_json::from_value(v)
        .map_err(|e| ApiError::bad_request(format!("invalid create body: {e}")))?;
    let mut config = body.config;
    let hc = body.host_config;
    if config.image.is_empty() {
        return Err(ApiError::bad_request("no image specified"));
    }
    if hc.memory < 0 || (hc.memory > 0 && hc.memory < 6 << 20) {
        return Err(ApiError::bad_request("Minimum memory limit allowed is 6MB"));
    }
    if hc.memory > 0 && hc.memory_swap > 0 && hc.memory_swap < hc.memory {
        return Err(ApiError::bad_request(
            "Minimum memoryswap limit should be larger than memory limit, see usage",
        ));
    }
    if hc.nano_cpus < 0 || hc.cpu_shares < 0 {
        return Err(ApiError::bad_request("invalid CPU limit: negative value"));
    }
    if let Err(e) = super::spec::capabilities(&hc) {
        return Err(ApiError::bad_request(e));
    }
    for m in hc.devices.iter().flatten() {
        if super::spec::device(std::path::Path::new(&m.path_on_host)).is_none() {
            return Err(ApiError::bad_request(format!(
                "error gathering device information while adding custom device \"{}\": not a device node",
                m.path_on_host
            )));
        }
    }
    match hc.restart_policy.name.as_str() {
        "" | "no" | "always" | "unless-stopped" | "on-failure" => {}
        other => {
            return Err(ApiError::bad_request(format!(
                "invalid restart policy: unknown policy '{other}'; use one of 'no', 'always', 'on-failure', or 'unless-stopped'"
            )))
        }
    }
    if hc.auto_remove && !matches!(hc.restart_policy.name.as_str(), "" | "no") {
        return Err(ApiError::bad_request(
            "can't create 'AutoRemove' container with restart policy",
        ));
    }
    let img = d.store.resolve(&config.image).ok_or_else(|| {
        let shown = config
            .image
            .parse::<berth_types::Reference>()
            .map(|r| r.familiar())
            .unwrap_or_else(|_| config.image.clone());
        ApiError::new(StatusCode::NOT_FOUND, format!("No such image: {shown}"))
    })?;
    let ic = image_config(&d, &img)?;

    // Entrypoint and Cmd: a given entrypoint drops the image's Cmd.
    let (entrypoint, cmd) = match config.entrypoint.clone() {
        Some(ep) => (ep, config.cmd.clone().unwrap_or_default()),
        None => (
            strings(&ic["Entrypoint"]).unwrap_or_default(),
            config
                .cmd
                .clone()
                .or_else(|| strings(&ic["Cmd"]))
                .unwrap_or_default(),
        ),
    };
    let mut argv: Vec<String> = entrypoint.iter().chain(cmd.iter()).cloned().collect();
    if argv.is_empty() || (argv.len() == 1 && argv[0].is_empty()) {
        return Err(ApiError::bad_request("No command specified"));
    }
    let path = argv.remove(0);
    let mut env = strings(&ic["Env"]).unwrap_or_default();
    for e in &config.env {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        env.retain(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) != key);
        env.push(e.clone());
    }
    config.env = env;
    if config.entrypoint.is_none() {
        config.entrypoint = strings(&ic["Entrypoint"]);
    }
    config.cmd = Some(cmd);
    if config.working_dir.is_empty() {
        config.working_dir = ic["WorkingDir"].as_str().unwrap_or("").to_string();
    }
    if config.user.is_empty() {
        config.user = ic["User"].as_str().unwrap_or("").to_string();
    }
    if config.stop_signal.is_none() {
        config.stop_signal = ic["StopSignal"].as_str().map(String::from);
    }
    if let Some(labels) = ic["Labels"].as_object() {
        for (k, v) in labels {
            if let Some(v) = v.as_str() {
                config
                    .labels
                    .entry(k.clone())
                    .or_insert_with(|| v.to_string());
            }
        }
    }
    if config.exposed_ports.is_none() {
        config.exposed_ports = ic["ExposedPorts"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    }
    if config.volumes.is_none() {
        config.volumes = ic["Volumes"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    }
    // The image's healthcheck, with what the flags set taking precedence.
    if ic["Healthcheck"].is_object() {
        let mut merged = ic["Healthcheck"].clone();
        if let Some(Value::Object(given)) = &config.healthcheck {
            for (k, v) in given {
                let unset = v.is_null() || v == &json!(0) || v == &json!([]);
                if !unset {
                    merged[k] = v.clone();
                }
            }
        }
        config.healthcheck = Some(merged);
    }
    if let Some(sig) = &config.stop_signal {
        if parse_signal(sig).is_none() {
            return Err(ApiError::bad_request(format!("Invalid signal: {sig}")));
        }
    }
    let mut hc = hc;
    if hc.network_mode.is_empty() || hc.network_mode == "default" {
        hc.network_mode = "bridge".into();
    }
    let published = hc
        .port_bindings
        .values()
        .any(|v| v.as_array().is_some_and(|a| !a.is_empty()))
        || hc.publish_all_ports;
    // Networks by name (a network given by id or id prefix is recorded by name); an
    // unknown one is refused at start, as Docker does (a 404 here would make the docker
    // CLI try to pull the image).
    if let Some(name) = d.networks.name_of(&hc.network_mode).await {
        hc.network_mode = name;
    }
    let networks = endpoint_requests(&d, &hc.network_mode, &body.networking_config).await?;
    let mode = hc.network_mode.as_str();
    if published && (mode == "none" || mode.starts_with("container:")) {
        return Err(ApiError::bad_request(
            "conflicting options: port publishing and the container type network mode",
        ));
    }
    {
        // The daemon's defaults (daemon.json, flags) for what the body leaves out.
        let s = d.settings.read().expect("settings");
        if hc.log_config.kind.is_empty() {
            hc.log_config.kind = s.log_driver.clone();
            if hc.log_config.config.is_empty() {
                hc.log_config.config = s.log_opts.clone();
            }
        }
        let ulimits = hc.ulimits.get_or_insert_with(Vec::new);
        for (name, (soft, hard)) in &s.default_ulimits {
            if !ulimits.iter().any(|u| &u.name == name) {
                ulimits.push(super::model::Ulimit {
                    name: name.clone(),
                    soft: *soft,
                    hard: *hard,
                });
            }
        }
    }
    let volumes = {
        let (d2, config2, hc2) = (d.clone(), config.clone(), hc.clone());
        crate::blocking(move || container_volumes(&d2, &config2, &hc2)).await?
    };
    let rec = Record {
        id: String::new(),
        name: String::new(),
        created: berth_types::time::now_rfc3339(),
        image: img.config.to_string(),
        path,
        args: argv,
        config,
        host_config: hc,
        state: CState::created(),
        restart_count: 0,
        layers: img.snapshot_ids(),
        stopped_by_user: false,
        volumes,
        networks,
        network: None,
    };
    let c = d.containers.clone();
    let name = name.map(String::from);
    let e = crate::blocking(move || c.add(rec, name.as_deref())).await?;
    let id = e.snapshot().id;
    d.event("container", "create", &id, &e.snapshot());
    Ok((StatusCode::CREATED, Json(json!({"Id": id, "Warnings": []}))))
}

/// The volumes a new container mounts: named ones from binds and `--mount` (made if
/// missing), and an anonymous one for every VOLUME (image or config) nothing else covers.
fn container_volumes(
    d: &Shared,
    config: &super::model::Config,
    hc: &super::model::HostConfig,
) -> ApiResult<Vec<VolumeMount>> {
    use std::collections::BTreeMap;
    let mut out: Vec<VolumeMount> = Vec::new();
    let mut taken: Vec<String> = Vec::new();
    let mut named = |name: Option<String>, dst: String, rw: bool, nocopy: bool| -> ApiResult<()> {
        let anonymous = name.is_none();
        let v = d.volumes.create(
            name.as_deref(),
            "local",
            BTreeMap::new(),
            BTreeMap::new(),
            anonymous,
        )?;
        out.push(VolumeMount {
            name: v.name,
            destination: dst,
            rw,
            anonymous,
            nocopy,
        });
        Ok(())
    };
    for b in hc.binds.iter().flatten() {
        match super::spec::volume_bind(b).map_err(ApiError::bad_request)? {
            Some((name, dst, rw, nocopy)) => {
                taken.push(dst.clone());
                named(Some(name), dst, rw, nocopy)?;
            }
            None => {
                if let Some(dst) = b.split(':').nth(1) {
                    taken.push(dst.to_string());
                }
            }
        }
    }
    for m in hc.mounts.iter().flatten() {
        let target = m["Target"].as_str().unwrap_or("").to_string();
        if m["Type"] == "volume" {
            if !target.starts_with('/') {
                return Err(ApiError::bad_request(format!(
                    "invalid mount config for type \"volume\": invalid mount path: '{target}' mount path must be absolute"
                )));
            }
            let name = m["Source"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(String::from);
            let rw = !m["ReadOnly"].as_bool().unwrap_or(false);
            let nocopy = m["VolumeOptions"]["NoCopy"].as_bool().unwrap_or(false);
            named(name, target.clone(), rw, nocopy)?;
        }
        taken.push(target);
    }
    for dst in config.volumes.iter().flat_map(|v| v.keys()) {
        if !taken.iter().any(|t| t == dst) {
            taken.push(dst.clone());
            named(None, dst.clone(), true, false)?;
        }
    }
    Ok(out)
}

fn lookup(d: &Shared, name: &str) -> ApiResult<Arc<Entry>> {
    d.containers.get(name)
}

pub async fn start(State(d): State<Shared>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let e = lookup(&d, &id)?;
    let _g = e.op.lock().await;
    match d.containers.start(&e).await {
        Ok(true) => {
            d.event("container", "start", &id, &e.snapshot());
            Ok(StatusCode::NO_CONTENT)
        }
        Ok(false) => Ok(StatusCode::NOT_MODIFIED),
        Err(err) => {
            // Docker removes an --rm container that could not start (the CLI waits for that).
            if e.snapshot().host_config.auto_remove {
                let _ = d.containers.remove_stopped(&e).await;
                d.event("container", "destroy", &id, &e.snapshot());
            }
            Err(err)
        }
    }
}

fn signal_param(ps: &[(String, String)]) -> ApiResult<Option<i32>> {
    match param(ps, "signal").filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => parse_signal(s)
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("Invalid signal: {s}"))),
    }
}

fn timeout_param(ps: &[(String, String)]) -> ApiResult<Option<i64>> {
    match param(ps, "t").filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(t) => t
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid timeout: {t}"))),
    }
}

/// `signal` and `t` of stop and restart.
fn stop_params(q: Option<&str>) -> ApiResult<(Option<i32>, Option<i64>)> {
    let ps = params(q);
    Ok((signal_param(&ps)?, timeout_param(&ps)?))
}

pub async fn stop(
    State(d): State<Shared>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<StatusCode> {
    let (sig, t) = stop_params(q.as_deref())?;
    let e = lookup(&d, &id)?;
    let _g = e.op.lock().await;
    if d.containers.stop(&e, t, sig).await? {
        d.event("container", "stop", &id, &e.snapshot());
        Ok(StatusCode::NO_CONTENT)
    } else {
        Ok(StatusCode::NOT_MODIFIED)
    }
}

pub async fn restart(
    State(d): State<Shared>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<StatusCode> {
    let (sig, t) = stop_params(q.as_deref())?;
    let e = lookup(&d, &id)?;
    let _g = e.op.lock().await;
    d.containers.stop(&e, t, sig).await?;
    d.containers.start(&e).await?;
    d.event("container", "restart", &id, &e.snapshot());
    Ok(StatusCode::NO_CONTENT)
}

pub async fn kill(
    State(d): State<Shared>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<StatusCode> {
    let ps = params(q.as_deref());
    let sig = signal_param(&ps)?.unwrap_or(libc::SIGKILL);
    let e = lookup(&d, &id)?;
    if sig == libc::SIGKILL || sig == libc::SIGTERM {
        e.rec.lock().expect("lock").stopped_by_user = true;
    }
    d.containers.kill(&e, sig)?;
    d.event("container", "kill", &id, &e.snapshot());
    Ok(StatusCode::NO_CONTENT)
}

pub async fn pause(State(d): State<Shared>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    set_paused(d, id, true).await
}

pub async fn unpause(State(d): State<Shared>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    set_paused(d, id, false).await
}

async fn set_paused(d: Shared, id: String, on: bool) -> ApiResult<StatusCode> {
    let e = lookup(&d, &id)?;
    let rec = e.snapshot();
    if !rec.state.running {
        return Err(not_running(&rec.id));
    }
    if rec.state.paused == on {
        let msg = if on {
            format!("Container {} is already paused", rec.id)
        } else {
            format!("Container {} is not paused", rec.id)
        };
        return Err(ApiError::new(StatusCode::CONFLICT, msg));
    }
    d.containers
        .runtime
        .pause(&rec.id, on)
        .map_err(ApiError::internal)?;
    e.rec.lock().expect("lock").state.paused = on;
    d.containers.persist(&e.snapshot())?;
    d.event(
        "container",
        if on { "pause" } else { "unpause" },
        &id,
        &e.snapshot(),
    );
    Ok(StatusCode::NO_CONTENT)
}

pub async fn remove(
    State(d): State<Shared>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<StatusCode> {
    let ps = params(q.as_deref());
    let force = truthy(param(&ps, "force"));
    let e = lookup(&d, &id)?;
    let _g = e.op.lock().await;
    let rec = e.snapshot();
    if rec.state.running || rec.state.restarting {
        if !force {
            let what = if rec.state.paused {
                "container is paused and must be unpaused first"
            } else {
                "container is running: stop the container before removing or force remove"
            };
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("cannot remove container \"/{}\": {what}", rec.name),
            ));
        }
        e.rec.lock().expect("lock").stopped_by_user = true;
        d.containers.stop(&e, Some(0), Some(libc::SIGKILL)).await?;
    }
    d.containers.remove_stopped(&e).await?;
    d.event("container", "destroy", &id, &rec);
    if truthy(param(&ps, "v")) {
        let used = crate::volumes::users(&d);
        for v in rec.volumes.iter().filter(|v| v.anonymous) {
            if !used.contains_key(&v.name) {
                let (d2, name) = (d.clone(), v.name.clone());
                let _ = crate::blocking(move || d2.volumes.remove(&name)).await;
            }
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/wait`: headers at once, the body when the condition is met.
pub async fn wait(
    State(d): State<Shared>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let ps = params(q.as_deref());
    let cond = param(&ps, "condition").unwrap_or("not-running").to_string();
    if !matches!(cond.as_str(), "not-running" | "next-exit" | "removed" | "") {
        return Err(ApiError::bad_request(format!(
            "invalid condition: \"{cond}\""
        )));
    }
    let e = lookup(&d, &id)?;
    let mut rx = e.progress.subscribe();
    let start = *rx.borrow();
    let rec = e.snapshot();
    let fut = async move {
        let done = match cond.as_str() {
            "removed" => rx.wait_for(|p| p.removed).await.map(|p| *p),
            "next-exit" => rx
                .wait_for(|p| p.exits > start.exits || p.removed)
                .await
                .map(|p| *p),
            _ if !rec.state.running && !rec.state.restarting => Ok(start),
            _ => rx
                .wait_for(|p| p.exits > start.exits || p.removed)
                .await
                .map(|p| *p),
        };
        let code = match done {
            Ok(p) if p.exits > start.exits || p.removed => p.code,
            _ => rec.state.exit_code,
        };
        let body = json!({"StatusCode": code, "Error": null}).to_string() + "\n";
        Ok::<_, std::io::Error>(Bytes::from(body))
    };
    let stream = futures_util::stream::once(fut);
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

pub async fn rename(
    State(d): State<Shared>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<StatusCode> {
    let ps = params(q.as_deref());
    let new = param(&ps, "name").unwrap_or("").trim_start_matches('/');
    if !super::valid_name(new) {
        return Err(ApiError::bad_request(format!(
            "Invalid container name ({new}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )));
    }
    let e = lookup(&d, &id)?;
    if let Ok(other) = d.containers.get(new) {
        let o = other.snapshot();
        if o.name == new {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("Conflict. The container name \"/{new}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.", o.id),
            ));
        }
    }
    e.rec.lock().expect("lock").name = new.to_string();
    d.containers.persist(&e.snapshot())?;
    d.event("container", "rename", &id, &e.snapshot());
    Ok(StatusCode::NO_CONTENT)
}

/// The shim's resize request for a `?h=&w=` query, shared by container and exec resize;
/// a size that is not a number is the client's error, as in Docker.
pub(super) fn resize_op(q: Option<&str>) -> ApiResult<Value> {
    let ps = params(q);
    let num = |k: &str| -> ApiResult<u16> {
        param(&ps, k)
            .unwrap_or("0")
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid {k}")))
    };
    Ok(json!({"op": "resize", "h": num("h")?, "w": num("w")?}))
}

pub async fn resize(
    State(d): State<Shared>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<StatusCode> {
    let op = resize_op(q.as_deref())?;
    let e = lookup(&d, &id)?;
    let rec = e.snapshot();
    if !rec.state.running {
        return Err(not_running(&rec.id));
    }
    d.containers
        .connect(&rec.id, op)
        .await
        .map_err(ApiError::internal)?;
    Ok(StatusCode::OK)
}

pub fn inspect_json(c: &Containers, r: &Record) -> Value {
    let dir = c.dir(&r.id);
    let mut state = serde_json::to_value(&r.state).unwrap_or_default();
    if r.state.started_at.is_empty() {
        state["StartedAt"] = json!(ZERO_TIME);
    }
    json!({
        "Id": r.id,
        "Created": r.created,
        "Path": r.path,
        "Args": r.args,
        "State": state,
        "Image": r.image,
        "ResolvConfPath": dir.join("resolv.conf"),
        "HostnamePath": dir.join("hostname"),
        "HostsPath": dir.join("hosts"),
        "LogPath": if r.host_config.log_config.kind == "none" { json!("") } else { json!(c.log_path(&r.id)) },
        "Name": format!("/{}", r.name),
        "RestartCount": r.restart_count,
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": null,
        "HostConfig": r.host_config,
        "GraphDriver": {"Name": "overlay2", "Data": {"MergedDir": dir.join("rootfs")}},
        "Mounts": mounts_json(c, r),
        "Config": r.config,
        "NetworkSettings": crate::networks::settings_json(r)
    })
}

fn mounts_json(c: &Containers, r: &Record) -> Value {
    let mut out = Vec::new();
    for b in r.host_config.binds.iter().flatten() {
        let p: Vec<&str> = b.split(':').collect();
        if p.len() >= 2 && p[0].starts_with('/') {
            let mode = p.get(2).copied().unwrap_or("");
            out.push(json!({"Type": "bind", "Source": p[0], "Destination": p[1],
                "Mode": mode, "RW": !mode.split(',').any(|o| o == "ro"), "Propagation": "rprivate"}));
        }
    }
    for m in r.host_config.mounts.iter().flatten() {
        if m["Type"] == "volume" {
            continue;
        }
        out.push(
            json!({"Type": m["Type"], "Source": m["Source"].as_str().unwrap_or(""),
            "Destination": m["Target"], "Mode": "", "RW": !m["ReadOnly"].as_bool().unwrap_or(false),
            "Propagation": ""}),
        );
    }
    for v in &r.volumes {
        out.push(json!({"Type": "volume", "Name": v.name,
            "Source": c.data_root.join("volumes").join(&v.name).join("_data"),
            "Destination": v.destination, "Driver": "local", "Mode": "z", "RW": v.rw,
            "Propagation": ""}));
    }
    Value::Array(out)
}

pub async fn inspect(State(d): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let e = lookup(&d, &id)?;
    Ok(Json(inspect_json(&d.containers, &e.snapshot())))
}

/// Docker's `filters` query: `{"status":["exited"]}` (or the old `{"status":{"exited":true}}`).
pub fn filters(ps: &[(String, String)]) -> ApiResult<Vec<(String, Vec<String>)>> {
    let Some(raw) = param(ps, "filters").filter(|f| !f.is_empty()) else {
        return Ok(Vec::new());
    };
    let v: Value = serde_json::from_str(raw)
        .map_err(|e| ApiError::bad_request(format!("invalid filters: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::bad_request("invalid filters: expected an object"))?;
    Ok(obj
        .iter()
        .map(|(k, v)| {
            let vals = match v {
                Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect(),
                Value::Object(m) => m.keys().cloned().collect(),
                Value::String(s) => vec![s.clone()],
                _ => Vec::new(),
            };
            (k.clone(), vals)
        })
        .collect())
}

fn matches(d: &Shared, r: &Record, key: &str, vals: &[String]) -> ApiResult<bool> {
    let any = |f: &dyn Fn(&str) -> bool| vals.iter().any(|v| f(v));
    Ok(match key {
        "id" => any(&|v| r.id.starts_with(v)),
        "name" => any(&|v| r.name.contains(v.trim_start_matches('/'))),
        "status" => {
            for v in vals {
                if !matches!(
                    v.as_str(),
                    "created"
                        | "restarting"
                        | "running"
                        | "removing"
                        | "paused"
                        | "exited"
                        | "dead"
                ) {
                    return Err(ApiError::bad_request(format!(
                        "invalid filter 'status={v}'"
                    )));
                }
            }
            let s = if r.state.paused {
                "paused"
            } else {
                r.state.status.as_str()
            };
            any(&|v| v == s)
        }
        "health" => {
            let h = r
                .state
                .health
                .as_ref()
                .and_then(|h| h["Status"].as_str())
                .unwrap_or("none");
            any(&|v| v == h)
        }
        // Every label asked for (Docker ANDs label filters).
        "label" => vals.iter().all(|v| match v.split_once('=') {
            Some((k, val)) => r.config.labels.get(k).is_some_and(|x| x == val),
            None => r.config.labels.contains_key(v),
        }),
        "exited" => {
            any(&|v| r.state.status == "exited" && v.parse::<i32>().ok() == Some(r.state.exit_code))
        }
        "ancestor" => any(&|v| {
            r.config.image == v
                || d.store
                    .resolve(v)
                    .is_some_and(|img| img.config.to_string() == r.image)
        }),
        "before" | "since" => {
            let mut hit = false;
            for v in vals {
                let other = d.containers.get(v)?.snapshot();
                hit |= if key == "before" {
                    r.created < other.created
                } else {
                    r.created > other.created
                };
            }
            hit
        }
        other => return Err(ApiError::bad_request(format!("invalid filter '{other}'"))),
    })
}

pub fn summary(c: &Containers, r: &Record, now: i64) -> Value {
    let mut command = r.path.clone();
    for a in &r.args {
        command.push(' ');
        command.push_str(a);
    }
    json!({
        "Id": r.id,
        "Names": [format!("/{}", r.name)],
        "Image": r.config.image,
        "ImageID": r.image,
        "Command": command,
        "Created": berth_types::time::parse_rfc3339(&r.created).unwrap_or(0),
        "Ports": crate::networks::summary_ports(r),
        "Labels": r.config.labels,
        "State": if r.state.paused { "paused" } else { r.state.status.as_str() },
        "Status": r.status_text(now),
        "HostConfig": {"NetworkMode": r.host_config.network_mode},
        "NetworkSettings": {"Networks": crate::networks::summary_networks(r)},
        "Mounts": mounts_json(c, r)
    })
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `GET /containers/json`.
pub async fn list(State(d): State<Shared>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let ps = params(q.as_deref());
    let all = truthy(param(&ps, "all"));
    let size = truthy(param(&ps, "size"));
    let limit: Option<usize> = param(&ps, "limit")
        .and_then(|l| l.parse::<i64>().ok())
        .filter(|&l| l > 0)
        .map(|l| l as usize);
    let fs = filters(&ps)?;
    let mut recs: Vec<Record> = d.containers.all().iter().map(|e| e.snapshot()).collect();
    recs.sort_by(|a, b| b.created.cmp(&a.created));
    let now = now_secs();
    let mut out = Vec::new();
    for r in recs {
        // Filters on status imply all.
        if !all && limit.is_none() && !r.state.running && !fs.iter().any(|(k, _)| k == "status") {
            continue;
        }
        let mut keep = true;
        for (k, vals) in &fs {
            keep &= matches(&d, &r, k, vals)?;
        }
        if !keep {
            continue;
        }
        let mut s = summary(&d.containers, &r, now);
        if size {
            let upper = d.store.snapshots().upper(&r.id);
            let rw = upper.as_deref().map(berth_types::fs::du).unwrap_or(0);
            s["SizeRw"] = json!(rw);
            let img: u64 = d
                .store
                .resolve(&r.image)
                .map(|i| i.layers.iter().map(|l| l.size).sum())
                .unwrap_or(0);
            s["SizeRootFs"] = json!(rw + img);
        }
        out.push(s);
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
    }
    Ok(Json(Value::Array(out)))
}

/// `POST /containers/prune`: every stopped container goes.
pub async fn prune(State(d): State<Shared>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let ps = params(q.as_deref());
    let fs = filters(&ps)?;
    let mut deleted = Vec::new();
    let mut reclaimed = 0u64;
    for e in d.containers.all() {
        let _g = e.op.lock().await;
        let r = e.snapshot();
        if r.state.running || r.state.restarting {
            continue;
        }
        let mut keep = false;
        for (k, vals) in &fs {
            if k == "label" && !matches(&d, &r, k, vals)? {
                keep = true;
            }
        }
        if keep {
            continue;
        }
        reclaimed += d
            .store
            .snapshots()
            .upper(&r.id)
            .as_deref()
            .map(berth_types::fs::du)
            .unwrap_or(0);
        d.containers.remove_stopped(&e).await?;
        d.event("container", "destroy", &r.id, &r);
        deleted.push(r.id);
    }
    Ok(Json(
        json!({"ContainersDeleted": deleted, "SpaceReclaimed": reclaimed}),
    ))
}

/// `GET /containers/{id}/top`: `ps -ef`'s columns, from /proc.
pub async fn top(State(d): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let e = lookup(&d, &id)?;
    let rec = e.snapshot();
    if !rec.state.running {
        return Err(not_running(&rec.id));
    }
    let pids = d
        .containers
        .runtime
        .ps(&rec.id)
        .map_err(ApiError::internal)?;
    let procs: Vec<Value> = pids
        .iter()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let field = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.split_whitespace().next())
                    .unwrap_or("?")
                    .to_string()
            };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    b.split(|&c| c == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            json!([
                field("Uid:"),
                pid.to_string(),
                field("PPid:"),
                "0",
                "-",
                "?",
                "00:00:00",
                cmd
            ])
        })
        .collect();
    Ok(Json(json!({
        "Titles": ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
        "Processes": procs
    })))
}
