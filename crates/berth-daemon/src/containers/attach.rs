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
use crate::images::{param, params, truthy};
use crate::{ApiError, ApiResult, Shared};

/// Docker's detach key syntax: `ctrl-p,ctrl-q`, `a,ctrl-@`... as bytes.
pub fn detach_keys(spec: &str) -> Result<Vec<u8>, String> {
    spec.split(',')
        .map(|k| {
            let k = k.trim();
            if let Some(c) = k.strip_prefix("ctrl-") {
                let b = c.as_bytes();
                match b {
                    [x] if x.is_ascii_alphabetic() => Ok(x.to_ascii_lowercase() - b'a' + 1),
                    [b'@'] => Ok(0),
                    [b'['] => Ok(27),
                    [b'\\'] => Ok(28),
                    [b']'] => Ok(29),
                    [b'^'] => Ok(30),
                    [b'_'] => Ok(31),
                    _ => Err(format!("invalid detach keys: {spec}")),
                }
            } else if k.len() == 1 {
                Ok(k.as_bytes()[0])
            } else {
                Err(format!("invalid detach keys: {spec}"))
            }
        })
        .collect()
}

/// Forwards the client's input until its end (false) or the detach sequence (true; what
/// came before the sequence is forwarded, the sequence itself is not).
async fn copy_until_detach(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    keys: &[u8],
) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 8192];
    let mut matched = 0;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let mut out = Vec::with_capacity(n);
        for &b in &buf[..n] {
            if !keys.is_empty() && b == keys[matched] {
                matched += 1;
                if matched == keys.len() {
                    let _ = to.write_all(&out).await;
                    return true;
                }
                continue;
            }
            // A partial match that broke off is ordinary input after all.
            out.extend_from_slice(&keys[..matched]);
            matched = 0;
            if !keys.is_empty() && b == keys[0] {
                matched = 1;
            } else {
                out.push(b);
            }
        }
        if to.write_all(&out).await.is_err() {
            return false;
        }
    }
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
    let (stdin, stdout, stderr) = (
        truthy(param(&ps, "stdin")),
        truthy(param(&ps, "stdout")),
        truthy(param(&ps, "stderr")),
    );
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
    let keys = param(&ps, "detachKeys")
        .filter(|v| !v.is_empty())
        .unwrap_or("ctrl-p,ctrl-q");
    // Only with a terminal: piped input (`-i` alone) may be binary and must pass intact.
    let detach = if rec.config.tty {
        detach_keys(keys).map_err(ApiError::bad_request)?
    } else {
        Vec::new()
    };
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
                if copy_until_detach(&mut cr, &mut sw, &detach).await {
                    return; // detached: the container runs on, the client goes
                }
                let _ = sw.shutdown().await;
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = out => {}
            _ = inp => {}
        }
    });
    switching_protocols(rec.config.tty)
}

/// The 101 answer of a hijacked attach or exec: raw bytes with a terminal, Docker's
/// multiplexed frames without.
pub fn switching_protocols(tty: bool) -> ApiResult<Response> {
    let kind = if tty {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_key_syntax() {
        assert_eq!(detach_keys("ctrl-p,ctrl-q").unwrap(), vec![16, 17]);
        assert_eq!(detach_keys("a,ctrl-@").unwrap(), vec![b'a', 0]);
        assert!(detach_keys("ctrl-pp").is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn input_stops_at_the_sequence_and_keeps_the_rest() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let (mut sink_w, mut sink_r) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"ab\x10c\x10\x11zz")
            .await
            .unwrap();
        assert!(copy_until_detach(&mut server, &mut sink_w, &[16, 17]).await);
        drop(sink_w);
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut sink_r, &mut got)
            .await
            .unwrap();
        assert_eq!(got, b"ab\x10c");
    }
}
