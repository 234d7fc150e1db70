//! Docker's `json-file` log format, bounded: one JSON object per line
//! (`{"log":"hi\n","stream":"stdout","time":"..."}`), rotated at `max_size` bytes keeping
//! `max_file` files (`<path>`, `<path>.1`, ... oldest last), as `--log-opt max-size/max-file`
//! do in Docker. Docker's own default is unbounded; ours is not.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Docker splits lines longer than this into partial messages.
const MAX_LINE: usize = 16 * 1024;

pub struct JsonLog {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_file: u32,
    /// Unterminated output per stream (0 stdout, 1 stderr).
    partial: [Vec<u8>; 2],
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl JsonLog {
    pub fn new(path: &Path, max_size: u64, max_file: u32) -> std::io::Result<JsonLog> {
        let file = open(path)?;
        let size = file.metadata()?.len();
        Ok(JsonLog {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
            max_file: max_file.max(1),
            partial: [Vec::new(), Vec::new()],
        })
    }

    pub fn write(&mut self, stream: usize, mut data: &[u8]) {
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.partial[stream]);
            line.extend_from_slice(&data[..=nl]);
            self.emit(stream, &line);
            data = &data[nl + 1..];
        }
        self.partial[stream].extend_from_slice(data);
        while self.partial[stream].len() >= MAX_LINE {
            let rest = self.partial[stream].split_off(MAX_LINE);
            let line = std::mem::replace(&mut self.partial[stream], rest);
            self.emit(stream, &line);
        }
    }

    /// Writes out what is left of unterminated lines (at exit).
    pub fn flush(&mut self) {
        for stream in 0..2 {
            let line = std::mem::take(&mut self.partial[stream]);
            if !line.is_empty() {
                self.emit(stream, &line);
            }
        }
    }

    fn emit(&mut self, stream: usize, line: &[u8]) {
        let entry = serde_json::json!({
            "log": String::from_utf8_lossy(line),
            "stream": if stream == 0 { "stdout" } else { "stderr" },
            "time": berth_types::time::now_rfc3339(),
        });
        let mut bytes = entry.to_string().into_bytes();
        bytes.push(b'\n');
        // A full disk loses log lines, never the container.
        if self.file.write_all(&bytes).is_ok() {
            self.size += bytes.len() as u64;
        }
        if self.max_size > 0 && self.size >= self.max_size {
            self.rotate();
        }
    }

    fn rotate(&mut self) {
        let name = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.max_file > 1 {
            for n in (1..self.max_file - 1).rev() {
                let _ = std::fs::rename(name(n), name(n + 1));
            }
            let _ = std::fs::rename(&self.path, name(1));
        } else {
            let _ = std::fs::remove_file(&self.path);
        }
        if let Ok(f) = open(&self.path) {
            self.file = f;
            self.size = 0;
        }
    }
}

/// The files of a log, oldest first.
pub fn files(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut n = 1;
    loop {
        let p = PathBuf::from(format!("{}.{n}", path.display()));
        if !p.exists() {
            break;
        }
        out.push(p);
        n += 1;
    }
    out.reverse();
    out.push(path.to_path_buf());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(p: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn splits_lines_per_stream_and_keeps_partials() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c-json.log");
        let mut log = JsonLog::new(&p, 0, 1).unwrap();
        log.write(0, b"hel");
        log.write(1, b"oops\n");
        log.write(0, b"lo\nwor");
        log.flush();
        let l = lines(&p);
        assert_eq!(l.len(), 3);
        assert_eq!(l[0]["log"], "oops\n");
        assert_eq!(l[0]["stream"], "stderr");
        assert_eq!(l[1]["log"], "hello\n");
        assert_eq!(l[1]["stream"], "stdout");
        assert_eq!(l[2]["log"], "wor");
        assert!(l[2]["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn long_lines_become_partial_messages() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let mut log = JsonLog::new(&p, 0, 1).unwrap();
        log.write(0, &vec![b'x'; MAX_LINE + 10]);
        log.write(0, b"\n");
        let l = lines(&p);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0]["log"].as_str().unwrap().len(), MAX_LINE);
        assert_eq!(l[1]["log"].as_str().unwrap().len(), 11);
    }

    #[test]
    fn rotation_bounds_the_disk_used() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let mut log = JsonLog::new(&p, 1000, 3).unwrap();
        for i in 0..1000 {
            log.write(0, format!("line {i}\n").as_bytes());
        }
        let fs = files(&p);
        assert_eq!(fs.len(), 3, "{fs:?}");
        let total: u64 = fs.iter().map(|f| f.metadata().unwrap().len()).sum();
        assert!(total < 3 * 1100, "{total}");
        // Oldest first, and the newest line is last in the current file.
        let last = lines(&p);
        assert_eq!(last.last().unwrap()["log"], "line 999\n");
        let first = lines(&fs[0]);
        let n0: u32 = first[0]["log"].as_str().unwrap()[5..]
            .trim()
            .parse()
            .unwrap();
        let n1: u32 = last[0]["log"].as_str().unwrap()[5..]
            .trim()
            .parse()
            .unwrap();
        assert!(n0 < n1);
    }
}
