//! TLS 1.3 configuration (rustls with the ring provider) for `tls://` and
//! `quic://`, and development certificates (rcgen).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocol id of Valkyrie version 1.
pub const ALPN: &[u8] = b"valkyrie/1";

/// Why TLS could not be configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file holds no certificate or key.
    #[error("{path} holds no {what}")]
    Empty {
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
    },
    /// rustls refused the configuration.
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Generating a development certificate failed.
    #[error("cannot generate a development certificate: {0}")]
    Generate(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = std::fs::read(path).map_err(|source| TlsSetupError::Read {
        path: path.into(),
        source,
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsSetupError::Read {
            path: path.into(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Empty {
            path: path.into(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let pem = std::fs::read(path).map_err(|source| TlsSetupError::Read {
        path: path.into(),
        source,
    })?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| TlsSetupError::Read {
            path: path.into(),
            source,
        })?
        .ok_or_else(|| TlsSetupError::Empty {
            path: path.into(),
            what: "private key",
        })
}

/// Server-side TLS: a certificate chain and its key.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub(crate) config: Arc<rustls::ServerConfig>,
}

impl ServerTls {
    /// Loads a PEM certificate chain and a PEM private key. TLS 1.3 only,
    /// ALPN `valkyrie/1`.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsSetupError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(read_certs(cert)?, read_key(key)?)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

/// Client-side TLS: which certificate authorities to trust. Verification of
/// the server's certificate and name is always on.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub(crate) config: Arc<rustls::ClientConfig>,
}

impl ClientTls {
    /// Trusts the certificates in a PEM file (a CA, or a self-signed server
    /// certificate such as the development one).
    pub fn from_ca_file(ca: &Path) -> Result<Self, TlsSetupError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(ca)? {
            roots.add(cert)?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

/// Paths of a generated development certificate.
#[derive(Clone, Debug)]
pub struct DevCertificate {
    /// The self-signed certificate (PEM, mode 0600); clients trust this file.
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
}

/// Generates a self-signed certificate for `names` (DNS names or IP
/// literals) into `dir` as `dev-cert.pem` and `dev-key.pem`, unless both
/// already exist. For development and tests, never for production.
pub fn dev_certificate(dir: &Path, names: &[&str]) -> Result<DevCertificate, TlsSetupError> {
    let cert = dir.join("dev-cert.pem");
    let key = dir.join("dev-key.pem");
    if cert.exists() && key.exists() {
        return Ok(DevCertificate { cert, key });
    }
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsSetupError::Generate(e.to_string()))?;
    // Both private (0600), like every file the server writes; clients are
    // given the certificate by whoever runs them.
    let write = |path: &Path, data: String| -> Result<(), TlsSetupError> {
        crate::private_fs::write_file(path, data.as_bytes()).map_err(|source| TlsSetupError::Read {
            path: path.into(),
            source,
        })
    };
    write(&key, generated.key_pair.serialize_pem())?;
    write(&cert, generated.cert.pem())?;
    Ok(DevCertificate { cert, key })
}
