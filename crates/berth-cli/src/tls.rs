//! TLS to a daemon on a tcp host, as the docker CLI does it: `--tlsverify` checks the
//! daemon's certificate against `--tlscacert` and shows ours (`--tlscert`/`--tlskey`);
//! `--tls` alone encrypts without checking the daemon. `DOCKER_TLS_VERIFY` and
//! `DOCKER_CERT_PATH` (ca.pem, cert.pem, key.pem; default ~/.docker) work as they do there.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// What the flags and environment ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub tls: bool,
    pub verify: bool,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsOptions {
    /// Flags first, then `DOCKER_TLS_VERIFY` / `DOCKER_CERT_PATH`.
    pub fn resolve(mut self) -> TlsOptions {
        if std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty()) {
            self.verify = true;
        }
        self.tls |= self.verify;
        if self.tls {
            let dir = std::env::var_os("DOCKER_CERT_PATH")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")));
            if let Some(dir) = dir {
                let pick = |given: &mut Option<PathBuf>, name: &str| {
                    if given.is_none() && dir.join(name).exists() {
                        *given = Some(dir.join(name));
                    }
                };
                pick(&mut self.ca, "ca.pem");
                pick(&mut self.cert, "cert.pem");
                pick(&mut self.key, "key.pem");
            }
        }
        self
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let list: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("could not read certificate {:?}: {e}", path.display()))?;
    if list.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(list)
}

/// Accepts any server certificate (`--tls` without `--tlsverify`), still checking that
/// the handshake's signatures are the certificate's.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The client configuration these options make.
pub fn client_config(o: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if o.verify {
        let ca = o
            .ca
            .as_deref()
            .ok_or("--tlsverify needs a CA certificate (--tlscacert or DOCKER_CERT_PATH/ca.pem)")?;
        let mut roots = RootCertStore::empty();
        for c in certs(ca)? {
            roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
    };
    let cfg = match (&o.cert, &o.key) {
        (Some(c), Some(k)) => {
            let key = PrivateKeyDer::from_pem_file(k)
                .map_err(|e| format!("could not read key {:?}: {e}", k.display()))?;
            builder
                .with_client_auth_cert(certs(c)?, key)
                .map_err(|e| format!("{}: {e}", c.display()))?
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err("--tlscert and --tlskey go together".into());
        }
        (None, None) => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_implies_tls_and_needs_a_ca() {
        let o = TlsOptions {
            verify: true,
            ..Default::default()
        };
        assert!(client_config(&o).unwrap_err().contains("CA certificate"));
        let half = TlsOptions {
            tls: true,
            cert: Some("/nonexistent/cert.pem".into()),
            ..Default::default()
        };
        assert!(client_config(&half).unwrap_err().contains("go together"));
        assert!(client_config(&TlsOptions {
            tls: true,
            ..Default::default()
        })
        .is_ok());
    }
}
