//! `GET /containers/{id}/stats`: the container's cgroup figures (through the runtime and
//! libcgroups, v1 or v2) in Docker's stats shape, once or every second.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::images::{param, params, truthy};
use crate::{ApiResult, Shared};

/// Host CPU time in nanoseconds (the `cpu` line of /proc/stat), Docker's system_cpu_usage.
fn system_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .take(8)
                .filter_map(|x| x.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    // USER_HZ is 100 on Linux.
    ticks * 10_000_000
}

fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// One sample in Docker's shape (without `precpu_stats`).
fn sample(raw: &Value) -> Value {
    let cpu = &raw["cpu"]["usage"];
    let mem = &raw["memory"];
    let host = host_memory();
    let limit = mem["memory"]["limit"].as_u64().unwrap_or(0);
    let limit = if limit == 0 || limit > host {
        host
    } else {
        limit
    };
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut stats = mem["stats"].clone();
    if !stats.is_object() {
        stats = json!({});
    }
    json!({
        "cpu_usage": {
            "total_usage": cpu["usage_total"],
            "percpu_usage": cpu["per_core_usage_total"],
            "usage_in_kernelmode": cpu["usage_kernel"],
            "usage_in_usermode": cpu["usage_user"],
        },
        "system_cpu_usage": system_cpu_ns(),
        "online_cpus": online,
        "throttling_data": {
            "periods": raw["cpu"]["throttling"]["periods"],
            "throttled_periods": raw["cpu"]["throttling"]["throttled_periods"],
            "throttled_time": raw["cpu"]["throttling"]["throttled_time"],
        },
        "memory_stats": {
            "usage": mem["memory"]["usage"],
            "max_usage": mem["memory"]["max_usage"],
            "failcnt": mem["memory"]["fail_count"],
            "limit": limit,
            "stats": stats,
        },
        "pids_stats": {"current": raw["pids"]["current"], "limit": raw["pids"]["limit"]},
        "blkio_stats": {
            "io_service_bytes_recursive": raw["blkio"]["service_bytes"],
            "io_serviced_recursive": raw["blkio"]["serviced"],
        },
    })
}

/// Per-interface counters of a network namespace (`/proc/<pid>/net/dev`), `lo` left
/// out, in Docker's shape.
fn parse_net_dev(text: &str) -> Value {
    let mut out = serde_json::Map::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let n: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if name == "lo" || n.len() < 12 {
            continue;
        }
        out.insert(
            name.to_string(),
            json!({"rx_bytes": n[0], "rx_packets": n[1], "rx_errors": n[2], "rx_dropped": n[3],
                   "tx_bytes": n[8], "tx_packets": n[9], "tx_errors": n[10], "tx_dropped": n[11]}),
        );
    }
    Value::Object(out)
}

fn zero_cpu() -> Value {
    json!({"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
           "system_cpu_usage": 0, "online_cpus": 0,
           "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}})
}

fn entry(
    id: &str,
    name: &str,
    now: &Value,
    prev: Option<&Value>,
    read: &str,
    preread: &str,
) -> Value {
    let cpu = |v: &Value| {
        json!({"cpu_usage": v["cpu_usage"], "system_cpu_usage": v["system_cpu_usage"],
               "online_cpus": v["online_cpus"], "throttling_data": v["throttling_data"]})
    };
    json!({
        "read": read,
        "preread": preread,
        "pids_stats": now["pids_stats"],
        "blkio_stats": now["blkio_stats"],
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": cpu(now),
        "precpu_stats": prev.map(cpu).unwrap_or_else(zero_cpu),
        "memory_stats": now["memory_stats"],
        "name": format!("/{name}"),
        "id": id,
        "networks": now["networks"],
    })
}

pub async fn stats(
    State(d): State<Shared>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let ps = params(q.as_deref());
    let flag = |k: &str, default: bool| param(&ps, k).map_or(default, |v| truthy(Some(v)));
    let stream = flag("stream", true);
    let one_shot = flag("one-shot", false);
    let e = d.containers.get(&id)?;
    let rec = e.snapshot();
    let take = {
        let (c, id) = (d.containers.clone(), rec.id.clone());
        let pid = rec.state.pid;
        move || -> Option<Value> {
            let mut v = c.runtime.stats(&id).ok().map(|raw| sample(&raw))?;
            let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_default();
            v["networks"] = parse_net_dev(&dev);
            Some(v)
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let (cid, name) = (rec.id.clone(), rec.name.clone());
    let running = rec.state.running;
    tokio::task::spawn_blocking(move || {
        let mut prev: Option<(Value, String)> = None;
        loop {
            let read = berth_types::time::now_rfc3339();
            let now = if running { take() } else { None };
            let Some(now) = now else {
                // A stopped container: Docker's zeroed sample.
                let v = json!({"read": berth_types::time::rfc3339(-62135596800, 0), "id": cid,
                    "name": format!("/{name}"), "pids_stats": {}, "blkio_stats": {},
                    "cpu_stats": zero_cpu(), "precpu_stats": zero_cpu(), "memory_stats": {},
                    "networks": {}});
                let _ = tx.blocking_send(Bytes::from(v.to_string() + "\n"));
                return;
            };
            if prev.is_none() && !stream && !one_shot {
                // A single answer still carries a CPU delta, as Docker's does.
                prev = Some((now, read));
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            let (p, pr) = match &prev {
                Some((p, pr)) => (Some(p), pr.clone()),
                None => (None, crate::containers::model::ZERO_TIME.to_string()),
            };
            let v = entry(&cid, &name, &now, p, &read, &pr);
            if tx.blocking_send(Bytes::from(v.to_string() + "\n")).is_err() || !stream {
                return;
            }
            prev = Some((now, read));
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_take_docker_s_shape() {
        let raw = json!({"cpu": {"usage": {"usage_total": 5, "per_core_usage_total": [2, 3],
            "usage_kernel": 1, "usage_user": 4}, "throttling": {}},
            "memory": {"memory": {"usage": 100, "limit": 9223372036854771712u64}},
            "pids": {"current": 2, "limit": 0}, "blkio": {}});
        let s = sample(&raw);
        assert_eq!(s["cpu_usage"]["total_usage"], 5);
        assert_eq!(s["memory_stats"]["usage"], 100);
        // Unlimited memory reads as the host's.
        assert_eq!(s["memory_stats"]["limit"], host_memory());
        let e = entry("x", "n", &s, None, "t", "p");
        assert_eq!(e["name"], "/n");
        assert_eq!(e["precpu_stats"]["system_cpu_usage"], 0);
    }

    #[test]
    fn network_counters_leave_out_loopback() {
        let text = "Inter-|   Receive                            |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n  eth0:    1296      16    1    2    0     0          0         0      726       9    3    4    0     0       0          0\n";
        let v = parse_net_dev(text);
        assert!(v.get("lo").is_none());
        assert_eq!(v["eth0"]["rx_bytes"], 1296);
        assert_eq!(v["eth0"]["rx_dropped"], 2);
        assert_eq!(v["eth0"]["tx_packets"], 9);
        assert_eq!(v["eth0"]["tx_dropped"], 4);
    }
}
