//! `POST /containers/{id}/attach`: the HTTP connection is upgraded and then relays the
//! shim's attach stream (multiplexed frames without a tty, raw bytes with one) and the
//! client's input.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, Request, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use super::PendingAttach;
use crate::images::params;
use crate::{ApiError, ApiResult, Shared};

fn flag(ps: &[(String, String)], key: &str) -> bool {
    ps.iter()
        .any(|(k, v)| k == key && matches!(v.as_str(), "1" | "true" | "True"))
}

pub async fn attach(
    State(d): State<Shared>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    req: Request<Body>,
) -> ApiResult<Response> {
    let ps = params(q.as_deref());
    let e = d.containers.get(&id)?;
    let rec = e.snapshot();
    let (stdin, stdout, stderr) = (flag(&ps, "stdin"), flag(&ps, "stdout"), flag(&ps, "stderr"));
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"tcp"));
    if !upgrade {
        return Err(ApiError::bad_request(
            "attach needs an upgraded connection (Connection: Upgrade, Upgrade: tcp)",
        ));
    }
    let request = json!({"op": "attach", "stdin": stdin, "stdout": stdout, "stderr": stderr});
    // Decide under the container's lock whether the shim is there or the attach waits for
    // the start (which hands it its connection before the program runs).
    let shim = {
        let _g = e.op.lock().await;
        if e.snapshot().state.running {
            let s = d
                .containers
                .connect(&rec.id, request)
                .await
                .map_err(ApiError::internal)?;
            Ok(s)
        } else {
            let (tx, rx) = oneshot::channel();
            e.pending
                .lock()
                .expect("lock")
                .push(PendingAttach { request, reply: tx });
            Err(rx)
        }
    };
    let on_upgrade = hyper::upgrade::on(req);
    let events = d.clone();
    events.event("container", "attach", &rec.id, &rec);
    tokio::spawn(async move {
        let Ok(up) = on_upgrade.await else {
            return;
        };
        let shim = match shim {
            Ok(s) => s,
            Err(rx) => match rx.await {
                Ok(s) => s,
                Err(_) => return, // removed or failed before it ran
            },
        };
        let client = TokioIo::new(up);
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut sr, mut sw) = shim.into_split();
        let out = async {
            let _ = tokio::io::copy(&mut sr, &mut cw).await;
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
    let kind = if rec.config.tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    };
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .header(header::CONTENT_TYPE, kind)
        .body(Body::empty())
        .map_err(ApiError::internal)
}
