//! `/metrics` in Prometheus' text format, and the access log: one JSON line per request.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

#[derive(Default)]
pub struct Metrics {
    /// (route, method, status) → requests.
    requests: Mutex<BTreeMap<(&'static str, String, u16), u64>>,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum of latencies in microseconds.
    sum_us: AtomicU64,
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub uploads_started: AtomicU64,
    pub blobs_committed: AtomicU64,
}

impl Metrics {
    pub fn observe(&self, route: &'static str, method: &str, status: u16, secs: f64, sent: u64) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route, method.to_string(), status))
            .or_default() += 1;
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add((secs * 1e6) as u64, Relaxed);
        self.sent.fetch_add(sent, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        o.push_str("# HELP berth_registry_requests_total Requests answered, by route, method and status.\n");
        o.push_str("# TYPE berth_registry_requests_total counter\n");
        for ((route, method, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            o.push_str(&format!(
                "berth_registry_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}\n"
            ));
        }
        o.push_str("# HELP berth_registry_request_duration_seconds Time to the response's head.\n");
        o.push_str("# TYPE berth_registry_request_duration_seconds histogram\n");
        for (i, le) in BUCKETS.iter().enumerate() {
            o.push_str(&format!(
                "berth_registry_request_duration_seconds_bucket{{le=\"{le}\"}} {}\n",
                self.buckets[i].load(Relaxed)
            ));
        }
        let count = self.count.load(Relaxed);
        o.push_str(&format!(
            "berth_registry_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n"
        ));
        o.push_str(&format!(
            "berth_registry_request_duration_seconds_sum {}\n",
            self.sum_us.load(Relaxed) as f64 / 1e6
        ));
        o.push_str(&format!(
            "berth_registry_request_duration_seconds_count {count}\n"
        ));
        for (name, help, v) in [
            (
                "bytes_received_total",
                "Bytes of blob and manifest bodies received.",
                &self.received,
            ),
            (
                "bytes_sent_total",
                "Bytes of response bodies sent.",
                &self.sent,
            ),
            (
                "uploads_started_total",
                "Blob uploads begun.",
                &self.uploads_started,
            ),
            (
                "blobs_committed_total",
                "Blobs verified and stored.",
                &self.blobs_committed,
            ),
        ] {
            o.push_str(&format!(
                "# HELP berth_registry_{name} {help}\n# TYPE berth_registry_{name} counter\nberth_registry_{name} {}\n",
                v.load(Relaxed)
            ));
        }
        o
    }
}

/// Where access log lines go.
pub enum AccessLog {
    Off,
    Stderr,
    File(Mutex<std::fs::File>),
}

impl AccessLog {
    pub fn open(spec: &str) -> std::io::Result<AccessLog> {
        Ok(match spec {
            "off" | "" => AccessLog::Off,
            "stderr" => AccessLog::Stderr,
            path => AccessLog::File(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )),
        })
    }

    pub fn write(&self, line: &serde_json::Value) {
        let mut text = line.to_string();
        text.push('\n');
        // A log that cannot be written (a closed stderr) never fails a request.
        match self {
            AccessLog::Off => {}
            AccessLog::Stderr => {
                let _ = std::io::stderr().write_all(text.as_bytes());
            }
            AccessLog::File(f) => {
                let _ = f
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write_all(text.as_bytes());
            }
        }
    }

    pub fn enabled(&self) -> bool {
        !matches!(self, AccessLog::Off)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_format() {
        let m = super::Metrics::default();
        m.observe("blob", "HEAD", 200, 0.0007, 0);
        m.observe("blob", "GET", 200, 0.02, 100);
        m.observe("blob", "HEAD", 200, 0.0001, 0);
        let t = m.render();
        assert!(
            t.contains(
                "berth_registry_requests_total{route=\"blob\",method=\"HEAD\",status=\"200\"} 2\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("berth_registry_request_duration_seconds_bucket{le=\"0.0005\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("berth_registry_request_duration_seconds_bucket{le=\"0.001\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("berth_registry_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{t}"
        );
        assert!(t.contains("berth_registry_bytes_sent_total 100\n"), "{t}");
    }
}
