//! SPIFFE identities and the certificates that prove them.
//!
//! An identity is exactly `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`. It comes only from a
//! verified certificate's URI SAN, never from a header. [`CertStore`] holds one workload's live certificates
//! (re-read when the PEM files change, as Kubernetes rotates mounted secrets) and hands out the rustls
//! configurations HBONE needs: TLS 1.3 only, ALPN exactly `h2`, no SNI, no resumption.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A SPIFFE workload identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl Identity {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Identity {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = IdentityError;
    /// Parses exactly `spiffe://td/ns/NS/sa/SA` (no other shape, no empty parts).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        todo!("{s}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("not a SPIFFE identity of the form spiffe://<td>/ns/<ns>/sa/<sa>: {0:?}")]
    BadSpiffe(String),
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("certificate carries no SPIFFE URI SAN")]
    NoSpiffeSan,
    #[error("tls: {0}")]
    Tls(String),
}

/// Where one workload's PEM files live.
#[derive(Clone, Debug)]
pub struct CertPaths {
    /// Leaf first, then intermediates.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The trust bundle (one or more CA certificates).
    pub ca: PathBuf,
}

/// One loaded, checked set of certificates.
pub struct Certs {
    /// From the leaf's URI SAN.
    pub identity: Identity,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Vec<CertificateDer<'static>>,
}

impl Certs {
    /// Parses PEM bytes; the key must match the leaf, the leaf must carry a SPIFFE URI SAN.
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Certs, IdentityError> {
        todo!("{cert:?}{key:?}{ca:?}")
    }
    pub fn load(paths: &CertPaths) -> Result<Certs, IdentityError> {
        todo!("{paths:?}")
    }
}

/// The live certificates of one workload: cheap to clone, swapped atomically on rotation.
#[derive(Clone)]
pub struct CertStore {
    // implementation detail: ArcSwap of the current Certs plus the rustls configs derived from them
}

impl CertStore {
    pub fn new(certs: Certs) -> Self {
        todo!("{}", certs.identity)
    }
    pub fn load(paths: &CertPaths) -> Result<Self, IdentityError> {
        Ok(Self::new(Certs::load(paths)?))
    }
    pub fn identity(&self) -> Identity {
        todo!()
    }
    pub fn current(&self) -> Arc<Certs> {
        todo!()
    }
    /// Replaces the certificates (rotation); new handshakes use them, live connections are untouched.
    pub fn replace(&self, certs: Certs) {
        todo!("{}", certs.identity)
    }
    /// Spawns a task (on the current tokio runtime) that re-reads `paths` whenever one of the files (or the
    /// directory holding it, for Kubernetes' `..data` symlink swap) changes. A bad read is logged and the
    /// old certificates keep serving. Stops when the returned handle is dropped.
    pub fn watch(&self, paths: CertPaths) -> WatchGuard {
        todo!("{paths:?}")
    }
    /// Server side of HBONE (port 15008): TLS 1.3 only, ALPN `h2`, client certificate required, chain verified
    /// against the trust bundle, and the client's SPIFFE SAN in this workload's own trust domain (else the
    /// handshake fails). Cached; rebuilt on rotation.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        todo!()
    }
    /// Client side of HBONE: presents this workload's certificate, verifies the server chain against the trust
    /// bundle and requires the server's SPIFFE SAN to be one of `expected` (else the handshake fails).
    /// No SNI is sent, no resumption. Cached per `expected` set; rebuilt on rotation.
    pub fn client_config(&self, expected: &[Identity]) -> Arc<rustls::ClientConfig> {
        todo!("{expected:?}")
    }
}

/// Stops a [`CertStore::watch`] task when dropped.
pub struct WatchGuard {
    // implementation detail
}

/// The SPIFFE identity of a verified peer: the first `spiffe://` URI SAN of the leaf certificate.
pub fn peer_identity(chain: &[CertificateDer<'_>]) -> Option<Identity> {
    todo!("{}", chain.len())
}
