//! The Engine API over a unix socket, as the CLI needs it: JSON calls, streamed bodies
//! both ways, and upgraded (hijacked) connections for attach and exec.

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub type ReqBody = BoxBody<Bytes, std::io::Error>;

#[derive(Debug)]
pub enum Error {
    /// Nothing answers at the host (`unix:///path` or `tcp://addr`).
    Connect(String, std::io::Error),
    /// The daemon answered with an error status and message.
    Daemon(u16, String),
    Other(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Connect(h, e) => write!(
                f,
                "Cannot connect to the Berth daemon at {h}. Is the berth daemon running? ({e})"
            ),
            Error::Daemon(_, m) => write!(f, "Error response from daemon: {m}"),
            Error::Other(m) => f.write_str(m),
        }
    }
}

impl Error {
    pub fn status(&self) -> u16 {
        match self {
            Error::Daemon(s, _) => *s,
            _ => 0,
        }
    }
}

fn other(e: impl std::fmt::Display) -> Error {
    Error::Other(e.to_string())
}

async fn handshake<T>(io: T) -> Result<hyper::client::conn::http1::SendRequest<ReqBody>, Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(other)?;
    tokio::spawn(conn.with_upgrades());
    Ok(sender)
}

/// A whole answer's body.
pub async fn bytes_body(resp: Response<Incoming>) -> Result<bytes::Bytes, Error> {
    Ok(resp.into_body().collect().await.map_err(other)?.to_bytes())
}

/// A whole answer's body as JSON (Null when empty).
pub async fn json_body(resp: Response<Incoming>) -> Result<Value, Error> {
    let bytes = bytes_body(resp).await?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| other(format!("bad answer from daemon: {e}")))
}

pub fn empty() -> ReqBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full(b: impl Into<Bytes>) -> ReqBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A body streamed from a reader (an image archive, a tarball on stdin).
pub fn reader(r: impl tokio::io::AsyncRead + Send + Sync + 'static) -> ReqBody {
    let s = tokio_util::io::ReaderStream::new(r).map_ok(Frame::data);
    BodyExt::boxed(StreamBody::new(s))
}

/// TLS to a tcp host: the configuration and the name its certificate must carry.
pub type Tls = (
    std::sync::Arc<rustls::ClientConfig>,
    rustls_pki_types::ServerName<'static>,
);

#[derive(Clone)]
pub struct Client {
    pub socket: PathBuf,
    /// `tcp://HOST:PORT` hosts; the socket is unused then.
    pub tcp: Option<std::net::SocketAddr>,
    pub tls: Option<Tls>,
}

impl Client {
    pub fn unix(socket: PathBuf) -> Client {
        Client {
            socket,
            tcp: None,
            tls: None,
        }
    }

    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<ReqBody>, Error> {
        if let Some(addr) = self.tcp {
            let scheme = if self.tls.is_some() { "https" } else { "tcp" };
            let shown = format!("{scheme}://{addr}");
            let s = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| Error::Connect(shown.clone(), e))?;
            if let Some((cfg, name)) = &self.tls {
                let s = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name.clone(), s)
                    .await
                    .map_err(|e| other(format!("error during connect: {shown}: {e}")))?;
                return handshake(TokioIo::new(s)).await;
            }
            return handshake(TokioIo::new(s)).await;
        }
        let s = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| Error::Connect(format!("unix://{}", self.socket.display()), e))?;
        handshake(TokioIo::new(s)).await
    }

    /// Sends a request; error statuses become [`Error::Daemon`] with the daemon's message.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: ReqBody,
        content_type: Option<&str>,
        upgrade: bool,
    ) -> Result<Response<Incoming>, Error> {
        self.send_with(method, path, body, content_type, upgrade, &[])
            .await
    }

    /// [`Client::send`] with extra headers (`X-Registry-Auth`).
    pub async fn send_with(
        &self,
        method: Method,
        path: &str,
        body: ReqBody,
        content_type: Option<&str>,
        upgrade: bool,
        headers: &[(&str, String)],
    ) -> Result<Response<Incoming>, Error> {
        let mut sender = self.connect().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/v1.47{path}"))
            .header("Host", "berth");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        if upgrade {
            req = req.header("Connection", "Upgrade").header("Upgrade", "tcp");
        }
        let req = req.body(body).map_err(other)?;
        let resp = sender.send_request(req).await.map_err(other)?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let bytes = resp.into_body().collect().await.map_err(other)?.to_bytes();
            let msg = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["message"].as_str().map(String::from))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
            return Err(Error::Daemon(status, msg));
        }
        Ok(resp)
    }

    /// A JSON call: the body (if any) as JSON, the answer parsed (Null when empty).
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        let (b, ct) = match body {
            Some(v) => (full(v.to_string()), Some("application/json")),
            None => (empty(), None),
        };
        json_body(self.send(method, path, b, ct, false).await?).await
    }

    /// An upgraded connection (attach, exec start): raw bytes both ways.
    pub async fn hijack(
        &self,
        path: &str,
        body: Option<&Value>,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>, Error> {
        let (b, ct) = match body {
            Some(v) => (full(v.to_string()), Some("application/json")),
            None => (empty(), None),
        };
        let resp = self.send(Method::POST, path, b, ct, true).await?;
        let up = hyper::upgrade::on(resp).await.map_err(other)?;
        Ok(TokioIo::new(up))
    }
}

/// Splits Docker's multiplexed stream into (stream, payload) frames.
pub struct Demux {
    buf: Vec<u8>,
}

impl Demux {
    pub fn new() -> Demux {
        Demux { buf: Vec::new() }
    }

    pub fn push(&mut self, data: &[u8]) -> Vec<(u8, Vec<u8>)> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        while self.buf.len() >= 8 {
            let len =
                u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
            if self.buf.len() < 8 + len {
                break;
            }
            let stream = self.buf[0];
            let payload = self.buf[8..8 + len].to_vec();
            self.buf.drain(..8 + len);
            out.push((stream, payload));
        }
        out
    }
}

impl Default for Demux {
    fn default() -> Self {
        Demux::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demux_reassembles_split_frames() {
        let mut d = Demux::new();
        let mut wire = vec![1, 0, 0, 0, 0, 0, 0, 3];
        wire.extend_from_slice(b"abc");
        wire.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 2]);
        wire.extend_from_slice(b"de");
        assert!(d.push(&wire[..5]).is_empty());
        let got = d.push(&wire[5..12]);
        assert_eq!(got, vec![(1, b"abc".to_vec())]);
        let got = d.push(&wire[12..]);
        assert_eq!(got, vec![(2, b"de".to_vec())]);
    }
}
