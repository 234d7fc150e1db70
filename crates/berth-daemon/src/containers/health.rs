//! Healthchecks (HEALTHCHECK in the image, or `--health-*`): while a container runs, its
//! probe runs as an exec every interval; State.Health follows Docker's rules (starting,
//! healthy, unhealthy after `retries` failures outside the start period; the last five
//! results kept) and each change of status is a `health_status` event.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use super::exec::{Exec, ExecConfig, ExecState};
use super::Entry;
use crate::Shared;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u64 = 3;
/// Docker keeps this much of a probe's output.
const MAX_OUTPUT: usize = 4096;

/// The probe of a healthcheck config: its command, or None for `NONE`/no test.
pub fn probe(hc: &Value) -> Option<Vec<String>> {
    let test: Vec<String> = hc["Test"]
        .as_array()?
        .iter()
        .filter_map(|x| x.as_str().map(String::from))
        .collect();
    match test.split_first() {
        Some((k, rest)) if k == "CMD" && !rest.is_empty() => Some(rest.to_vec()),
        Some((k, rest)) if k == "CMD-SHELL" && !rest.is_empty() => {
            Some(vec!["/bin/sh".into(), "-c".into(), rest.join(" ")])
        }
        _ => None,
    }
}

fn duration(v: &Value, default: Duration) -> Duration {
    match v.as_u64() {
        Some(ns) if ns > 0 => Duration::from_nanos(ns),
        _ => default,
    }
}

/// Runs `cmd` in the container as an exec (no TTY, no stdin): (exit code, output).
async fn run_probe(
    d: &Shared,
    container: &str,
    cmd: Vec<String>,
    timeout: Duration,
) -> (i64, String) {
    let exec = Arc::new(Exec {
        id: super::random_id(),
        container: container.to_string(),
        config: ExecConfig {
            attach_stdout: true,
            attach_stderr: true,
            cmd,
            ..ExecConfig::default()
        },
        state: std::sync::Mutex::new(ExecState::default()),
    });
    let fut = async {
        let (d2, e2) = (d.clone(), exec.clone());
        tokio::task::spawn_blocking(move || super::exec::spawn(&d2, &e2))
            .await
            .map_err(|e| e.to_string())??;
        let mut attach = d
            .containers
            .connect(
                &exec.id,
                json!({"op": "attach", "stdout": true, "stderr": true}),
            )
            .await?;
        let mut conn = d
            .containers
            .connect(&exec.id, json!({"op": "start"}))
            .await?;
        let mut raw = Vec::new();
        let _ = attach.read_to_end(&mut raw).await;
        let line = super::read_line(&mut conn).await.unwrap_or_default();
        let code = serde_json::from_slice::<Value>(&line)
            .ok()
            .and_then(|v| v["exit_code"].as_i64())
            .unwrap_or(-1);
        // Frames to text.
        let mut out = Vec::new();
        let mut rest = &raw[..];
        while rest.len() >= 8 {
            let n = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
            let end = (8 + n).min(rest.len());
            out.extend_from_slice(&rest[8..end]);
            rest = &rest[end..];
        }
        out.truncate(MAX_OUTPUT);
        Ok::<_, String>((code, String::from_utf8_lossy(&out).into_owned()))
    };
    let result = match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => (-1, e),
        Err(_) => (
            -1,
            format!("Health check exceeded timeout ({}s)", timeout.as_secs()),
        ),
    };
    super::exec::cleanup(d, &exec);
    result
}

/// Watches one container's health while it runs (started with the container).
pub fn watch(d: Shared, e: Arc<Entry>) {
    let rec = e.snapshot();
    let Some(hc) = rec.config.healthcheck.clone() else {
        return;
    };
    let Some(cmd) = probe(&hc) else {
        return;
    };
    let interval = duration(&hc["Interval"], DEFAULT_INTERVAL);
    let timeout = duration(&hc["Timeout"], DEFAULT_TIMEOUT);
    let start_period = duration(&hc["StartPeriod"], Duration::ZERO);
    let start_interval = duration(&hc["StartInterval"], Duration::from_secs(5));
    let retries = hc["Retries"]
        .as_u64()
        .filter(|&r| r > 0)
        .unwrap_or(DEFAULT_RETRIES);
    let exits = e.progress.borrow().exits;
    set_health(
        &e,
        json!({"Status": "starting", "FailingStreak": 0, "Log": []}),
    );
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut rx = e.progress.subscribe();
        loop {
            let in_start = started.elapsed() < start_period;
            let wait = if in_start && !start_period.is_zero() {
                start_interval.min(interval)
            } else {
                interval
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = rx.wait_for(|p| p.exits > exits || p.removed) => return,
            }
            let (id, running) = {
                let r = e.rec.lock().expect("lock");
                (r.id.clone(), r.state.running && !r.state.paused)
            };
            if !running {
                if e.progress.borrow().exits > exits {
                    return;
                }
                continue;
            }
            let begin = berth_types::time::now_rfc3339();
            let (code, output) = run_probe(&d, &id, cmd.clone(), timeout).await;
            let end = berth_types::time::now_rfc3339();
            if e.progress.borrow().exits > exits {
                return; // the container went while the probe ran
            }
            let (changed, status) = {
                let mut r = e.rec.lock().expect("lock");
                let mut h = r.state.health.clone().unwrap_or_else(|| json!({}));
                let old = h["Status"].as_str().unwrap_or("starting").to_string();
                let mut streak = h["FailingStreak"].as_u64().unwrap_or(0);
                let status = if code == 0 {
                    streak = 0;
                    "healthy".to_string()
                } else {
                    streak += 1;
                    if streak >= retries && !(in_start && old == "starting") {
                        "unhealthy".to_string()
                    } else {
                        old.clone()
                    }
                };
                let mut log: Vec<Value> = h["Log"].as_array().cloned().unwrap_or_default();
                log.push(json!({"Start": begin, "End": end, "ExitCode": code, "Output": output}));
                if log.len() > 5 {
                    log.drain(..log.len() - 5);
                }
                h = json!({"Status": status, "FailingStreak": streak, "Log": log});
                r.state.health = Some(h);
                (old != status, status)
            };
            if changed {
                let rec = e.snapshot();
                let _ = d.containers.persist(&rec);
                d.event(
                    "container",
                    &format!("health_status: {status}"),
                    &rec.id,
                    &rec,
                );
            }
        }
    });
}

fn set_health(e: &Entry, h: Value) {
    e.rec.lock().expect("lock").state.health = Some(h);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_from_test_forms() {
        assert_eq!(
            probe(&json!({"Test": ["CMD", "true", "x"]})),
            Some(vec!["true".to_string(), "x".into()])
        );
        assert_eq!(
            probe(&json!({"Test": ["CMD-SHELL", "exit 1"]})),
            Some(vec!["/bin/sh".to_string(), "-c".into(), "exit 1".into()])
        );
        assert_eq!(probe(&json!({"Test": ["NONE"]})), None);
        assert_eq!(probe(&json!({})), None);
    }
}
