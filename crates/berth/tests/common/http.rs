//! A small HTTP/1.1 server for the peers tests script (a registry that misbehaves on cue,
//! a token server): one thread per connection, one request per connection, and answers
//! that can stop short or stall as a broken server's would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub struct Request {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn param(&self, name: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A gate a stalled answer waits at; opened once, for every waiter.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    fn wait(&self, timeout: Duration) -> bool {
        let (lock, cv) = &*self.0;
        let g = lock.lock().unwrap();
        let (g, _) = cv.wait_timeout_while(g, timeout, |open| !*open).unwrap();
        *g
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send only this many bytes of the body (Content-Length still says all of them),
    /// then close: a connection that breaks.
    pub cut: Option<usize>,
    /// After `cut` bytes (or all of them), wait at this gate, watching for the client to
    /// go away; once it opens, the rest of the body follows.
    pub stall: Option<Gate>,
    /// Bytes per write, with a pause between writes: a slow server.
    pub pace: Option<(usize, Duration)>,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            cut: None,
            stall: None,
            pace: None,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn json(status: u16, v: serde_json::Value) -> Reply {
        Reply::new(status, v.to_string()).header("Content-Type", "application/json")
    }
}

/// Answers a request.
pub type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

pub struct Server {
    pub port: u16,
    /// Stalled answers whose client went away while they waited.
    pub abandoned: Arc<Mutex<u32>>,
}

/// Serves `handler` on 127.0.0.1 in the network namespace `netns` (or here).
pub fn serve(netns: Option<&Path>, handler: Arc<Handler>) -> Server {
    let listener = super::net(netns.map(Path::to_path_buf).as_deref(), || {
        TcpListener::bind("127.0.0.1:0").unwrap()
    });
    let port = listener.local_addr().unwrap().port();
    let abandoned = Arc::new(Mutex::new(0));
    let gone = abandoned.clone();
    // The listener belongs to the namespace it was made in; the thread may be anywhere.
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (handler, gone) = (handler.clone(), gone.clone());
            std::thread::spawn(move || {
                let _ = answer(conn, &*handler, &gone);
            });
        }
    });
    Server { port, abandoned }
}

fn answer(conn: TcpStream, handler: &Handler, gone: &Mutex<u32>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter(|q| !q.is_empty())
        .map(|q| {
            let (k, v) = q.split_once('=').unwrap_or((q, ""));
            (unescape(k), unescape(v))
        })
        .collect();
    let req = Request {
        method,
        path: path.to_string(),
        query,
        headers,
        body,
    };
    let reply = handler(&req);
    let mut out = conn;
    let reason = match reply.status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        206 => "Partial Content",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", reply.status);
    for (n, v) in &reply.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        reply.body.len()
    ));
    out.write_all(head.as_bytes())?;
    if req.method == "HEAD" {
        return Ok(());
    }
    let send = reply.cut.unwrap_or(reply.body.len()).min(reply.body.len());
    match reply.pace {
        Some((step, pause)) => {
            for chunk in reply.body[..send].chunks(step.max(1)) {
                out.write_all(chunk)?;
                std::thread::sleep(pause);
            }
        }
        None => out.write_all(&reply.body[..send])?,
    }
    out.flush()?;
    if let Some(gate) = reply.stall {
        // Wait for the gate, watching for the client to hang up meanwhile.
        out.set_read_timeout(Some(Duration::from_millis(50)))?;
        loop {
            if gate.wait(Duration::from_millis(50)) {
                break;
            }
            let mut b = [0u8; 1];
            match out.read(&mut b) {
                Ok(0) => {
                    *gone.lock().unwrap() += 1;
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    *gone.lock().unwrap() += 1;
                    return Ok(());
                }
                _ => {}
            }
        }
        if reply.cut.is_some() {
            out.write_all(&reply.body[send..])?;
        }
    }
    Ok(())
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
