//! `docker exec`: `POST /containers/{id}/exec`, `POST /exec/{id}/start` (hijacked like
//! attach, or detached), `GET /exec/{id}/json`, `POST /exec/{id}/resize`. Each exec gets its
//! own shim in exec mode, the parent of the process, so it too survives the daemon.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, Request, StatusCode};
use axum::response::Response;
use axum::Json;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use super::model::strip_nulls;
use crate::{ApiError, ApiResult, Shared};

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExecConfig {
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub tty: bool,
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub privileged: bool,
    pub user: String,
    pub working_dir: String,
    pub detach_keys: String,
    /// [height, width], as for containers.
    pub console_size: Option<Vec<u16>>,
}

#[derive(Debug, Clone, Default)]
pub struct ExecState {
    pub running: bool,
    pub started: bool,
    pub exit_code: Option<i32>,
    pub pid: i32,
}

pub struct Exec {
    pub id: String,
    pub container: String,
    pub config: ExecConfig,
    pub state: Mutex<ExecState>,
}

#[derive(Default)]
pub struct Execs {
    by_id: Mutex<HashMap<String, Arc<Exec>>>,
}

impl Execs {
    fn get(&self, id: &str) -> ApiResult<Arc<Exec>> {
        self.by_id
            .lock()
            .expect("execs lock")
            .get(id)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("No such exec instance: {id}"),
                )
            })
    }
}

fn not_running(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!("container {id} is not running"),
    )
}

pub async fn create(
    State(d): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let mut v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    strip_nulls(&mut v);
    let config: ExecConfig = serde_json::from_value(v)
        .map_err(|e| ApiError::bad_request(format!("invalid exec body: {e}")))?;
    if config.cmd.is_empty() {
        return Err(ApiError::bad_request("No exec command specified"));
    }
    let e = d.containers.get(&name)?;
    let rec = e.snapshot();
    if !rec.state.running {
        return Err(not_running(&rec.id));
    }
    if rec.state.paused {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "Container {} is paused, unpause the container before exec",
                rec.id
            ),
        ));
    }
    let id = super::random_id();
    let exec = Arc::new(Exec {
        id: id.clone(),
        container: rec.id.clone(),
        config,
        state: Mutex::new(ExecState::default()),
    });
    d.execs
        .by_id
        .lock()
        .expect("execs lock")
        .insert(id.clone(), exec);
    d.event(
        "container",
        &format!("exec_create: {}", rec.path),
        &rec.id,
        &rec,
    );
    Ok((StatusCode::CREATED, Json(json!({"Id": id}))))
}

/// The OCI process for the exec: the container's own process with the exec's changes.
fn process_json(d: &Shared, exec: &Exec) -> Result<Value, String> {
    let dir = d.containers.dir(&exec.container);
    let spec: Value = std::fs::read(dir.join("config.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))?;
    let mut p = spec["process"].clone();
    let c = &exec.config;
    p["args"] = json!(c.cmd);
    p["terminal"] = json!(c.tty);
    // The container's terminal size is not the exec's.
    p.as_object_mut().map(|o| o.remove("consoleSize"));
    if let Some(size) = super::spec::console_size(c.tty, c.console_size.as_deref()) {
        p["consoleSize"] = size;
    }
    if let Some(env) = p["env"].as_array_mut() {
        for e in &c.env {
            let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
            env.retain(|x| {
                x.as_str()
                    .and_then(|x| x.split_once('='))
                    .is_none_or(|(k, _)| k != key)
            });
            env.push(json!(e));
        }
    }
    if !c.working_dir.is_empty() {
        p["cwd"] = json!(c.working_dir);
    }
    if !c.user.is_empty() {
        let u = super::spec::resolve_user(&dir.join("rootfs"), &c.user)?;
        p["user"] = json!({"uid": u.uid, "gid": u.gid, "additionalGids": u.additional_gids});
    }
    if c.privileged {
        let all = super::spec::capabilities(&super::model::HostConfig {
            privileged: true,
            ..Default::default()
        })?;
        p["capabilities"] = json!({"bounding": all, "effective": all, "permitted": all});
    }
    Ok(p)
}

/// Writes the process file and starts the exec's shim (which waits for `start`).
pub(crate) fn spawn(d: &Shared, exec: &Exec) -> Result<(), String> {
    let process = process_json(d, exec)?;
    let sock = d.containers.socket(&exec.id);
    if let Some(dir) = sock.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let file = std::path::PathBuf::from(format!("{}.json", sock.display()));
    std::fs::write(&file, process.to_string()).map_err(|e| e.to_string())?;
    d.containers
        .spawner
        .spawn(&berth_shim::Options {
            id: exec.container.clone(),
            bundle: d.containers.dir(&exec.container),
            runtime_root: d.containers.runtime.root.clone(),
            socket: sock.clone(),
            exit_file: std::path::PathBuf::from(format!("{}.exit", sock.display())),
            log: None,
            tty: exec.config.tty,
            stdin: exec.config.attach_stdin,
            stdin_once: exec.config.attach_stdin,
            exec: Some(file),
        })
        .map(|_| ())
}

pub(crate) fn cleanup(d: &Shared, exec: &Exec) {
    let sock = d.containers.socket(&exec.id);
    for ext in ["json", "exit"] {
        let _ = std::fs::remove_file(format!("{}.{ext}", sock.display()));
    }
    let _ = std::fs::remove_file(sock);
}

/// Sends `start`, then waits for the exit line and records it.
async fn run(d: &Shared, exec: &Arc<Exec>) -> Result<tokio::net::UnixStream, ApiError> {
    let conn = d
        .containers
        .connect(&exec.id, json!({"op": "start"}))
        .await
        .map_err(|msg| {
            let code = if super::names_a_missing_program(&msg) {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            ApiError::new(code, format!("OCI runtime exec failed: {msg}: unknown"))
        })?;
    {
        let mut st = exec.state.lock().expect("lock");
        st.running = true;
        st.started = true;
    }
    Ok(conn)
}

async fn finish(d: Shared, exec: Arc<Exec>, mut conn: tokio::net::UnixStream) {
    let line = super::read_line(&mut conn).await.unwrap_or_default();
    let code = serde_json::from_slice::<Value>(&line)
        .ok()
        .and_then(|v| v["exit_code"].as_i64())
        .map(|c| c as i32)
        .unwrap_or(255);
    {
        let mut st = exec.state.lock().expect("lock");
        st.running = false;
        st.exit_code = Some(code);
    }
    cleanup(&d, &exec);
    if let Ok(e) = d.containers.get(&exec.container) {
        d.event("container", "exec_die", &exec.container, &e.snapshot());
    }
}

pub async fn start(
    State(d): State<Shared>,
    Path(id): Path<String>,
    req: Request<Body>,
) -> ApiResult<Response> {
    let exec = d.execs.get(&id)?;
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"tcp"));
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut v: Value = if bytes.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    strip_nulls(&mut v);
    let detach = v["Detach"].as_bool().unwrap_or(false);
    {
        let mut st = exec.state.lock().expect("lock");
        if st.started {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("Error: Exec command {id} has already run"),
            ));
        }
        st.started = true;
    }
    let c = d.containers.get(&exec.container)?;
    if !c.snapshot().state.running {
        return Err(not_running(&exec.container));
    }
    let launch = {
        let (d2, exec2) = (d.clone(), exec.clone());
        move || async move {
            tokio::task::spawn_blocking(move || spawn(&d2, &exec2))
                .await
                .map_err(ApiError::internal)?
                .map_err(|e| ApiError::internal(format!("OCI runtime exec failed: {e}: unknown")))
        }
    };
    if detach || !upgrade {
        launch().await?;
        let conn = match run(&d, &exec).await {
            Ok(c) => c,
            Err(e) => {
                cleanup(&d, &exec);
                return Err(e);
            }
        };
        tokio::spawn(finish(d.clone(), exec.clone(), conn));
        return Response::builder()
            .status(StatusCode::OK)
            .body(Body::empty())
            .map_err(ApiError::internal);
    }
    let cfg = exec.config.clone();
    let req = Request::from_parts(parts, Body::empty());
    let on_upgrade = hyper::upgrade::on(req);
    let (d2, exec2) = (d.clone(), exec.clone());
    tokio::spawn(async move {
        let Ok(up) = on_upgrade.await else {
            return;
        };
        let (mut cr, mut cw) = tokio::io::split(TokioIo::new(up));
        // As in Docker, a failed start is told on the stream; the exit code (126, or 127
        // when the program is missing) is the exec's.
        let started = async {
            launch().await?;
            let attach = d2
                .containers
                .connect(
                    &exec2.id,
                    json!({"op": "attach", "stdin": cfg.attach_stdin,
                           "stdout": cfg.attach_stdout, "stderr": cfg.attach_stderr}),
                )
                .await
                .map_err(ApiError::internal)?;
            let conn = run(&d2, &exec2).await?;
            Ok::<_, ApiError>((attach, conn))
        };
        let (attach, conn) = match started.await {
            Ok(x) => x,
            Err(e) => {
                {
                    let mut st = exec2.state.lock().expect("lock");
                    let code = if super::names_a_missing_program(&e.message) {
                        127
                    } else {
                        126
                    };
                    st.exit_code = Some(code);
                    st.running = false;
                }
                cleanup(&d2, &exec2);
                let msg = format!("{}\r\n", e.message);
                let mut frame = Vec::new();
                if !cfg.tty {
                    frame.extend_from_slice(&[2, 0, 0, 0]);
                    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
                }
                frame.extend_from_slice(msg.as_bytes());
                let _ = cw.write_all(&frame).await;
                let _ = cw.shutdown().await;
                return;
            }
        };
        let done = tokio::spawn(finish(d2, exec2, conn));
        let (mut sr, mut sw) = attach.into_split();
        let stdin = cfg.attach_stdin;
        let out = async {
            let _ = tokio::io::copy(&mut sr, &mut cw).await;
            // The exit code is recorded before the client sees the end of the stream:
            // the CLI asks for it right after.
            let _ = done.await;
            let _ = cw.shutdown().await;
        };
        let inp = async {
            if stdin {
                let _ = tokio::io::copy(&mut cr, &mut sw).await;
                let _ = sw.shutdown().await;
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = out => {}
            _ = inp => {}
        }
    });
    super::attach::switching_protocols(cfg.tty)
}

pub async fn inspect(State(d): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let exec = d.execs.get(&id)?;
    let st = exec.state.lock().expect("lock").clone();
    let c = &exec.config;
    Ok(Json(json!({
        "ID": exec.id,
        "Running": st.running,
        "ExitCode": st.exit_code,
        "ProcessConfig": {
            "tty": c.tty, "entrypoint": c.cmd.first(), "arguments": c.cmd.get(1..).unwrap_or(&[]),
            "privileged": c.privileged, "user": c.user
        },
        "OpenStdin": c.attach_stdin,
        "OpenStderr": c.attach_stderr,
        "OpenStdout": c.attach_stdout,
        "CanRemove": false,
        "ContainerID": exec.container,
        "DetachKeys": c.detach_keys,
        "Pid": st.pid
    })))
}

pub async fn resize(
    State(d): State<Shared>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<StatusCode> {
    let op = super::api::resize_op(q.as_deref())?;
    let exec = d.execs.get(&id)?;
    d.containers
        .connect(&exec.id, op)
        .await
        .map_err(ApiError::internal)?;
    Ok(StatusCode::CREATED)
}
