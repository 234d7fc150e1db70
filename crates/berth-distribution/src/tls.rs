//! TLS for tcp listeners. The daemon uses it as dockerd does: `--tlsverify` serves TLS and requires a client
//! certificate signed by `--tlscacert` (the only way Berth listens beyond loopback, since
//! the API is root on the machine); `--tls` serves TLS without asking for one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub verify: bool,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, String> {
    let list: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("reading {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    if list.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(list)
}

pub fn server_config(f: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::from_pem_file(&f.key)
        .map_err(|e| format!("reading {}: {e}", f.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if f.verify {
        let mut roots = RootCertStore::empty();
        for c in certs(&f.ca)? {
            roots
                .add(c)
                .map_err(|e| format!("{}: {e}", f.ca.display()))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("client verification: {e}"))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let cfg = builder
        .with_single_cert(certs(&f.cert)?, key)
        .map_err(|e| format!("{}: {e}", f.cert.display()))?;
    Ok(Arc::new(cfg))
}

/// A listener whose connections have finished their TLS handshake; handshakes run on
/// their own tasks, so a slow or failing client holds up no one else.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, cfg: Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = TlsAcceptor::from(cfg);
        tokio::spawn(async move {
            loop {
                let Ok((conn, peer)) = tcp.accept().await else {
                    continue;
                };
                if tx.is_closed() {
                    return;
                }
                let (acceptor, sender) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let shake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(conn),
                    )
                    .await;
                    match shake {
                        Ok(Ok(s)) => {
                            let _ = sender.send((s, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
