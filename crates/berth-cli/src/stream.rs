//! The interactive part: attaching to a container or an exec, pumping its streams to the
//! terminal (raw mode with a tty, resized on SIGWINCH, detached with ctrl-p ctrl-q) and
//! waiting for its exit code.

use std::io::Write;
use std::os::fd::AsFd;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{Client, Demux};

/// The terminal's settings, restored when dropped.
pub struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    pub fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, &raw)
            .ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin().as_fd(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// Asks on the terminal; without `echo` the answer is not shown (passwords).
pub fn prompt(question: &str, echo: bool) -> Result<String, crate::client::Error> {
    let stdin = std::io::stdin();
    print!("{question}");
    let _ = std::io::stdout().flush();
    let saved = rustix::termios::tcgetattr(stdin.as_fd()).ok();
    if let (false, Some(saved)) = (echo, &saved) {
        let mut quiet = saved.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        let _ = rustix::termios::tcsetattr(
            stdin.as_fd(),
            rustix::termios::OptionalActions::Now,
            &quiet,
        );
    }
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    if let (false, Some(saved)) = (echo, &saved) {
        let _ =
            rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, saved);
        println!();
    }
    read.map_err(|e| crate::client::Error::Other(e.to_string()))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

pub fn is_terminal(fd: impl AsFd) -> bool {
    rustix::termios::isatty(fd)
}

pub fn terminal_size() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout().as_fd()).ok()?;
    (ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Tells the daemon the terminal's size now and whenever it changes (until dropped).
pub fn follow_resize(client: &Client, path: String) -> tokio::task::JoinHandle<()> {
    let c = client.clone();
    tokio::spawn(async move {
        resize_once(&c, &path).await;
        let Ok(mut winch) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        else {
            return;
        };
        while winch.recv().await.is_some() {
            resize_once(&c, &path).await;
        }
    })
}

/// Docker's signal proxy, for a container attached without a terminal: the signals this
/// CLI gets (interrupt, terminate, hangup, quit, user 1 and 2) go to the container through
/// the kill API instead of ending the CLI, which then ends with the container. Stops when
/// dropped. (With a terminal, ctrl-c and the like reach the container through its pty.)
pub struct SignalProxy(tokio::task::JoinHandle<()>);

impl Drop for SignalProxy {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn proxy_signals(client: &Client, id: &str) -> SignalProxy {
    use tokio::signal::unix::{signal, SignalKind};
    let c = client.clone();
    let path = format!("/containers/{id}/kill?signal=");
    // The handlers are in place before this returns, so no signal is missed after start.
    let streams = (|| {
        Some([
            (signal(SignalKind::interrupt()).ok()?, "SIGINT"),
            (signal(SignalKind::terminate()).ok()?, "SIGTERM"),
            (signal(SignalKind::hangup()).ok()?, "SIGHUP"),
            (signal(SignalKind::quit()).ok()?, "SIGQUIT"),
            (signal(SignalKind::user_defined1()).ok()?, "SIGUSR1"),
            (signal(SignalKind::user_defined2()).ok()?, "SIGUSR2"),
        ])
    })();
    SignalProxy(tokio::spawn(async move {
        let Some(mut streams) = streams else {
            return;
        };
        loop {
            let waits = streams
                .iter_mut()
                .map(|(s, name)| Box::pin(async move { s.recv().await.map(|_| *name) }));
            let (got, _, _) = futures_util::future::select_all(waits).await;
            let Some(name) = got else {
                return;
            };
            let _ = c
                .json(hyper::Method::POST, &format!("{path}{name}"), None)
                .await;
        }
    }))
}

async fn resize_once(c: &Client, path: &str) {
    if let Some((h, w)) = terminal_size() {
        let _ = c
            .json(hyper::Method::POST, &format!("{path}?h={h}&w={w}"), None)
            .await;
    }
}

/// How a stream ended.
pub enum Ended {
    /// The other side closed the output.
    Closed,
    /// The user typed the detach keys.
    Detached,
}

/// Pumps an attached connection: output to stdout/stderr (demultiplexed without a tty),
/// and, with `stdin`, our input to it (ctrl-p ctrl-q detaches on a tty).
pub async fn pump(conn: TokioIo<Upgraded>, tty: bool, stdin: bool) -> Ended {
    let (mut r, mut w) = tokio::io::split(conn);
    let output = async {
        let mut buf = vec![0u8; 32 * 1024];
        let mut demux = Demux::new();
        let mut out = std::io::stdout();
        let mut err = std::io::stderr();
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if tty {
                let _ = out.write_all(&buf[..n]);
                let _ = out.flush();
                continue;
            }
            for (stream, payload) in demux.push(&buf[..n]) {
                if stream == 2 {
                    let _ = err.write_all(&payload);
                    let _ = err.flush();
                } else {
                    let _ = out.write_all(&payload);
                    let _ = out.flush();
                }
            }
        }
    };
    let input = async {
        if !stdin {
            return std::future::pending::<Ended>().await;
        }
        let mut inp = tokio::io::stdin();
        let mut buf = vec![0u8; 8192];
        let mut after_ctrl_p = false;
        loop {
            let n = match inp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if tty {
                for &b in &buf[..n] {
                    if after_ctrl_p && b == 0x11 {
                        return Ended::Detached;
                    }
                    after_ctrl_p = b == 0x10;
                }
            }
            if w.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
        std::future::pending::<Ended>().await
    };
    tokio::select! {
        _ = output => Ended::Closed,
        e = input => e,
    }
}

/// `POST /containers/{id}/wait` started before the container is, so no exit is missed.
pub fn wait_for_exit(
    client: &Client,
    id: &str,
    condition: &str,
) -> tokio::task::JoinHandle<Result<i32, crate::client::Error>> {
    let c = client.clone();
    let path = format!("/containers/{id}/wait?condition={condition}");
    tokio::spawn(async move {
        let v = c.json(hyper::Method::POST, &path, None).await?;
        Ok(v["StatusCode"].as_i64().unwrap_or(255) as i32)
    })
}

/// Attaches to a container's streams (a created one before starting it, or a running one),
/// with other detach keys than the daemon's if given.
pub async fn attach(
    client: &Client,
    id: &str,
    stdin: bool,
    detach_keys: Option<&str>,
) -> Result<TokioIo<Upgraded>, crate::client::Error> {
    let mut path = format!(
        "/containers/{id}/attach?stream=1&stdout=1&stderr=1{}",
        if stdin { "&stdin=1" } else { "" }
    );
    if let Some(k) = detach_keys {
        path.push_str(&format!("&detachKeys={}", crate::commands::q(k)));
    }
    client.hijack(&path, None).await
}

/// The body of an exec's start.
pub fn exec_start_body(detach: bool, tty: bool) -> serde_json::Value {
    json!({"Detach": detach, "Tty": tty})
}
