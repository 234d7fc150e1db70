//! `GET /containers/{id}/logs` from the json-file log the shim writes: tail, since/until,
//! timestamps, and follow (reading on as the file grows and across rotations until the
//! container stops).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::images::{param, params, truthy};
use crate::{ApiError, ApiResult, Shared};

/// Seconds since the epoch, with the fraction, of an RFC 3339 time.
fn time_of(s: &str) -> Option<f64> {
    let secs = berth_types::time::parse_rfc3339(s)? as f64;
    let frac = s
        .split_once('.')
        .map(|(_, f)| {
            let digits: String = f.chars().take_while(|c| c.is_ascii_digit()).collect();
            format!("0.{digits}").parse::<f64>().unwrap_or(0.0)
        })
        .unwrap_or(0.0);
    Some(secs + frac)
}

/// `since`/`until` as Docker takes them: unix seconds with an optional fraction, or an
/// RFC 3339 time.
fn parse_when(s: &str) -> ApiResult<Option<f64>> {
    if s.is_empty() || s == "0" {
        return Ok(None);
    }
    s.parse::<f64>()
        .ok()
        .or_else(|| time_of(s))
        .map(Some)
        .ok_or_else(|| ApiError::bad_request(format!("invalid time value: {s}")))
}

struct Filter {
    stdout: bool,
    stderr: bool,
    since: Option<f64>,
    until: Option<f64>,
    timestamps: bool,
    tty: bool,
}

impl Filter {
    /// One log line as the client gets it, or None when filtered out.
    fn render(&self, line: &[u8]) -> Option<Vec<u8>> {
        let v: Value = serde_json::from_slice(line).ok()?;
        let stream = match v["stream"].as_str()? {
            "stdout" if self.stdout => 1u8,
            "stderr" if self.stderr => 2,
            _ => return None,
        };
        let time = v["time"].as_str().unwrap_or("");
        let t = time_of(time).unwrap_or(0.0);
        if self.since.is_some_and(|s| t < s) || self.until.is_some_and(|u| t > u) {
            return None;
        }
        let log = v["log"].as_str().unwrap_or("");
        let mut payload = Vec::with_capacity(log.len() + 32);
        if self.timestamps {
            payload.extend_from_slice(time.as_bytes());
            payload.push(b' ');
        }
        payload.extend_from_slice(log.as_bytes());
        if self.tty {
            return Some(payload);
        }
        let mut frame = vec![stream, 0, 0, 0];
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&payload);
        Some(frame)
    }
}

pub async fn logs(
    State(d): State<Shared>,
    UrlPath(id): UrlPath<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let ps = params(q.as_deref());
    let get = |k: &str| param(&ps, k);
    let on = |k: &str| truthy(param(&ps, k));
    let e = d.containers.get(&id)?;
    let rec = e.snapshot();
    let filter = Filter {
        stdout: on("stdout"),
        stderr: on("stderr"),
        since: parse_when(get("since").unwrap_or(""))?,
        until: parse_when(get("until").unwrap_or(""))?,
        timestamps: on("timestamps"),
        tty: rec.config.tty,
    };
    if !filter.stdout && !filter.stderr {
        return Err(ApiError::bad_request(
            "Bad parameters: you must choose at least one stream",
        ));
    }
    if rec.host_config.log_config.kind == "none" {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "configured logging driver does not support reading",
        ));
    }
    let tail: Option<usize> = match get("tail").unwrap_or("all") {
        "all" | "" => None,
        n => Some(
            n.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid tail: {n}")))?
                .max(0) as usize,
        ),
    };
    let follow = on("follow");
    let path = d.containers.log_path(&rec.id);
    let progress = e.progress.subscribe();
    let start = *progress.borrow();
    let running = rec.state.running || rec.state.restarting;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::task::spawn_blocking(move || {
        let send = |b: Vec<u8>| tx.blocking_send(Bytes::from(b)).is_ok();
        // What is there now: all files, oldest first, keeping only the tail if asked.
        let files = berth_shim::log::files(&path);
        let mut lines: VecDeque<Vec<u8>> = VecDeque::new();
        let mut cur: Option<(BufReader<File>, u64)> = None;
        for (i, f) in files.iter().enumerate() {
            let Ok(file) = File::open(f) else { continue };
            let ino = file.metadata().map(|m| m.ino()).unwrap_or(0);
            let mut r = BufReader::new(file);
            let mut line = Vec::new();
            while r.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                if line.last() == Some(&b'\n') {
                    if let Some(out) = filter.render(&line) {
                        lines.push_back(out);
                        if tail.is_some_and(|t| lines.len() > t) {
                            lines.pop_front();
                        }
                    }
                    line.clear();
                } else {
                    // A line being written: start from it when following.
                    let back = line.len() as i64;
                    let _ = r.seek(SeekFrom::Current(-back));
                    break;
                }
            }
            if i == files.len() - 1 {
                cur = Some((r, ino));
            }
        }
        if tail == Some(0) {
            lines.clear();
        }
        for l in lines {
            if !send(l) {
                return;
            }
        }
        if !follow || !running {
            return;
        }
        follow_file(&path, cur, &filter, &progress, start.exits, &tx);
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    let kind = if rec.config.tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    };
    Ok(([(header::CONTENT_TYPE, kind)], Body::from_stream(stream)).into_response())
}

/// Reads on from `cur` as the log grows, following rotations, until the container's exit
/// count moves past `exits` (and what it wrote before exiting is sent) or the client goes.
fn follow_file(
    path: &Path,
    mut cur: Option<(BufReader<File>, u64)>,
    filter: &Filter,
    progress: &tokio::sync::watch::Receiver<super::Progress>,
    exits: u64,
    tx: &tokio::sync::mpsc::Sender<Bytes>,
) {
    let send = |b: Vec<u8>| tx.blocking_send(Bytes::from(b)).is_ok();
    let mut line = Vec::new();
    loop {
        if tx.is_closed() {
            return;
        }
        let done = {
            let p = progress.borrow();
            p.exits > exits || p.removed
        };
        let mut got = false;
        if let Some((r, _)) = cur.as_mut() {
            loop {
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line.last() == Some(&b'\n') => {
                        got = true;
                        if let Some(out) = filter.render(&line) {
                            if !send(out) {
                                return;
                            }
                        }
                        line.clear();
                    }
                    Ok(_) => {}
                }
            }
        }
        // Rotated: the file at `path` is a new one; what we hold is drained.
        let now_ino = std::fs::metadata(path).map(|m| m.ino()).ok();
        if now_ino.is_some() && now_ino != cur.as_ref().map(|(_, i)| *i) {
            if let Ok(f) = File::open(path) {
                cur = Some((BufReader::new(f), now_ino.unwrap_or(0)));
                line.clear();
                continue;
            }
        }
        if done && !got {
            return;
        }
        if !got {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
