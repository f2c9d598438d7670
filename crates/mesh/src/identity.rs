//! SPIFFE identities and the certificates that prove them.
//!
//! An identity is exactly `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`. It comes only from a
//! verified certificate's URI SAN, never from a header. [`CertStore`] holds one workload's live certificates
//! (re-read when the PEM files change, as Kubernetes rotates mounted secrets) and hands out the rustls
//! configurations HBONE needs: TLS 1.3 only, ALPN exactly `h2`, no SNI, no resumption.

mod tls;
mod watch;

pub(crate) use tls::dummy_server_name;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
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
        let bad = || IdentityError::BadSpiffe(s.to_string());
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        if !valid_trust_domain(td) || !valid_segment(ns) || !valid_segment(sa) {
            return Err(bad());
        }
        Ok(Identity::new(td, ns, sa))
    }
}

/// SPIFFE: a trust domain is lowercase letters, digits, `.`, `-` and `_`.
fn valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

/// SPIFFE: a path segment is letters, digits, `.`, `-` and `_`, and not `.` or `..`.
fn valid_segment(seg: &str) -> bool {
    !seg.is_empty()
        && seg != "."
        && seg != ".."
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("not a SPIFFE identity of the form spiffe://<td>/ns/<ns>/sa/<sa>: {0:?}")]
    BadSpiffe(String),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
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

impl fmt::Debug for Certs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certs")
            .field("identity", &self.identity.to_string())
            .field("chain", &self.chain.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl Certs {
    /// Parses PEM bytes; the key must match the leaf, the leaf must carry a SPIFFE URI SAN.
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Certs, IdentityError> {
        Self::from_pem_named(
            cert,
            key,
            ca,
            Path::new("<cert>"),
            Path::new("<key>"),
            Path::new("<ca>"),
        )
    }

    pub fn load(paths: &CertPaths) -> Result<Certs, IdentityError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| IdentityError::Io {
                path: path.clone(),
                source,
            })
        };
        let (cert, key, ca) = (read(&paths.cert)?, read(&paths.key)?, read(&paths.ca)?);
        Self::from_pem_named(&cert, &key, &ca, &paths.cert, &paths.key, &paths.ca)
    }

    fn from_pem_named(
        cert: &[u8],
        key: &[u8],
        ca: &[u8],
        cert_path: &Path,
        key_path: &Path,
        ca_path: &Path,
    ) -> Result<Certs, IdentityError> {
        let pem_err = |path: &Path, message: String| IdentityError::Pem {
            path: path.to_path_buf(),
            message,
        };
        let chain = parse_certs(cert).map_err(|m| pem_err(cert_path, m))?;
        let roots = parse_certs(ca).map_err(|m| pem_err(ca_path, m))?;
        let key = rustls_pemfile::private_key(&mut &key[..])
            .map_err(|e| pem_err(key_path, e.to_string()))?
            .ok_or_else(|| pem_err(key_path, "no private key found".into()))?;
        let identity = spiffe_ids(&chain[0])
            .into_iter()
            .next()
            .ok_or(IdentityError::NoSpiffeSan)?;
        tls::check_key_matches(&chain, &key).map_err(|m| pem_err(key_path, m))?;
        tls::root_store(&roots).map_err(|m| pem_err(ca_path, m))?;
        Ok(Certs {
            identity,
            chain,
            key,
            roots,
        })
    }
}

fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE found".into());
    }
    Ok(certs)
}

/// The current certificates and everything derived from them. Swapped as a whole on rotation, so a reader
/// never sees a server config of one generation and a client cache of another.
struct State {
    certs: Arc<Certs>,
    server: Arc<rustls::ServerConfig>,
    roots: Arc<rustls::RootCertStore>,
    /// Client configs per sorted, de-duplicated expected set. Only hit when opening outer connections.
    clients: Mutex<HashMap<Vec<Identity>, Arc<rustls::ClientConfig>>>,
}

/// Bound on cached client configs; past it the cache starts over (it only saves a rebuild).
const MAX_CACHED_CLIENT_CONFIGS: usize = 1024;

impl State {
    fn build(certs: Certs) -> Result<State, IdentityError> {
        let roots = Arc::new(tls::root_store(&certs.roots).map_err(IdentityError::Tls)?);
        let server = tls::server_config(&certs, roots.clone())?;
        Ok(State {
            certs: Arc::new(certs),
            server,
            roots,
            clients: Mutex::new(HashMap::new()),
        })
    }
}

/// The live certificates of one workload: cheap to clone, swapped atomically on rotation.
#[derive(Clone)]
pub struct CertStore {
    state: Arc<ArcSwap<State>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("identity", &self.identity().to_string())
            .finish()
    }
}

impl CertStore {
    /// Panics if rustls refuses the certificates, which [`Certs::from_pem`] already checked; see
    /// [`CertStore::try_new`] for hand-built [`Certs`].
    pub fn new(certs: Certs) -> Self {
        Self::try_new(certs).expect("certificates rejected by rustls")
    }
    /// Like [`CertStore::new`], reporting certificates rustls cannot use instead of panicking.
    pub fn try_new(certs: Certs) -> Result<Self, IdentityError> {
        Ok(CertStore {
            state: Arc::new(ArcSwap::from_pointee(State::build(certs)?)),
        })
    }
    pub fn load(paths: &CertPaths) -> Result<Self, IdentityError> {
        Ok(Self::new(Certs::load(paths)?))
    }
    pub fn identity(&self) -> Identity {
        self.state.load().certs.identity.clone()
    }
    pub fn current(&self) -> Arc<Certs> {
        self.state.load().certs.clone()
    }
    /// Replaces the certificates (rotation); new handshakes use them, live connections are untouched.
    /// Certificates rustls cannot use are logged and the old ones keep serving (see [`CertStore::try_replace`]).
    pub fn replace(&self, certs: Certs) {
        if let Err(e) = self.try_replace(certs) {
            tracing::warn!(error = %e, "rotated certificates rejected; keeping the old ones");
        }
    }
    /// Like [`CertStore::replace`], returning why the new certificates were refused.
    pub fn try_replace(&self, certs: Certs) -> Result<(), IdentityError> {
        let state = State::build(certs)?;
        tracing::info!(identity = %state.certs.identity, "certificates replaced");
        self.state.store(Arc::new(state));
        Ok(())
    }
    /// Spawns a task (on the current tokio runtime) that re-reads `paths` whenever one of the files (or the
    /// directory holding it, for Kubernetes' `..data` symlink swap) changes. A bad read is logged and the
    /// old certificates keep serving. Stops when the returned handle is dropped.
    pub fn watch(&self, paths: CertPaths) -> WatchGuard {
        watch::spawn(self.clone(), paths)
    }
    /// Server side of HBONE (port 15008): TLS 1.3 only, ALPN `h2`, client certificate required, chain verified
    /// against the trust bundle, and the client's SPIFFE SAN in this workload's own trust domain (else the
    /// handshake fails). Cached; rebuilt on rotation.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.state.load().server.clone()
    }
    /// Client side of HBONE: presents this workload's certificate, verifies the server chain against the trust
    /// bundle and requires the server's SPIFFE SAN to be one of `expected` (else the handshake fails).
    /// No SNI is sent, no resumption. Cached per `expected` set; rebuilt on rotation.
    pub fn client_config(&self, expected: &[Identity]) -> Arc<rustls::ClientConfig> {
        let state = self.state.load_full();
        let mut key = expected.to_vec();
        key.sort();
        key.dedup();
        if let Some(config) = state.clients.lock().unwrap().get(&key) {
            return config.clone();
        }
        // Built outside the lock; a racing builder just produces an equal config.
        let config = tls::client_config(&state.certs, state.roots.clone(), key.clone());
        let mut cache = state.clients.lock().unwrap();
        if cache.len() >= MAX_CACHED_CLIENT_CONFIGS {
            cache.clear();
        }
        cache.entry(key).or_insert(config).clone()
    }
}

/// Stops a [`CertStore::watch`] task when dropped.
pub struct WatchGuard {
    _watcher: Option<notify::RecommendedWatcher>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The SPIFFE identity of a verified peer: the first `spiffe://` URI SAN of the leaf certificate.
pub fn peer_identity(chain: &[CertificateDer<'_>]) -> Option<Identity> {
    spiffe_ids(chain.first()?).into_iter().next()
}

/// Every well-formed SPIFFE identity among a certificate's URI SANs, in order. DNS SANs are ignored.
pub(crate) fn spiffe_ids(cert: &CertificateDer<'_>) -> Vec<Identity> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => uri.parse().ok(),
            _ => None,
        })
        .collect()
}
