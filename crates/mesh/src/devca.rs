//! A development certificate authority: a self-signed CA and workload certificates for SPIFFE identities,
//! written as PEM files in the layout every binary of this project reads.
//!
//! Layout of a certificates directory: `ca.pem` (trust bundle), `ca.key`, and for each identity
//! `<namespace>/<service-account>/cert.pem` and `key.pem`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::identity::{CertPaths, Certs, Identity, IdentityError};

/// How long a generated CA is valid.
const CA_DAYS: u64 = 3650;
/// Certificates are valid from this long ago, to absorb clock skew between hosts.
const BACKDATE: Duration = Duration::from_secs(3600);

/// A CA able to issue workload certificates.
pub struct DevCa {
    trust_domain: String,
    ca_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn rcgen_err(what: &str) -> impl Fn(rcgen::Error) -> IdentityError + '_ {
    move |e| IdentityError::Tls(format!("{what}: {e}"))
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl DevCa {
    /// A new self-signed CA (ECDSA P-256) named for `trust_domain`.
    pub fn generate(trust_domain: &str) -> Result<DevCa, IdentityError> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rcgen_err("CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, trust_domain);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_DAYS);
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_err("CA certificate"))?;
        Ok(DevCa {
            trust_domain: trust_domain.to_string(),
            ca_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads `ca.pem` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<DevCa, IdentityError> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        let ca_pem = std::fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let pem_err = |path: &PathBuf, message: String| IdentityError::Pem {
            path: path.clone(),
            message,
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| pem_err(&key_path, e.to_string()))?;
        let der = rustls_pemfile::certs(&mut ca_pem.as_bytes())
            .next()
            .ok_or_else(|| pem_err(&cert_path, "no CERTIFICATE found".into()))?
            .map_err(|e| pem_err(&cert_path, e.to_string()))?;
        let trust_domain = ca_common_name(&der)
            .ok_or_else(|| pem_err(&cert_path, "CA has no common name".into()))?;
        let issuer =
            Issuer::from_ca_cert_der(&der, key).map_err(|e| pem_err(&cert_path, e.to_string()))?;
        Ok(DevCa {
            trust_domain,
            ca_pem,
            key_pem,
            issuer,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// A leaf for `id`: URI SAN = the SPIFFE ID, valid from one hour ago for `days` days. Returns (cert PEM, key PEM).
    pub fn issue(&self, id: &Identity, days: u32) -> Result<(String, String), IdentityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(rcgen_err("workload key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, id.trust_domain.as_str());
        params.distinguished_name = dn;
        let uri = id
            .to_string()
            .try_into()
            .map_err(|_| IdentityError::BadSpiffe(id.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, u64::from(days));
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_err("workload certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues for `id` in memory (tests, the demo).
    pub fn certs_for(&self, id: &Identity) -> Result<Certs, IdentityError> {
        let (cert, key) = self.issue(id, 1)?;
        Certs::from_pem(cert.as_bytes(), key.as_bytes(), self.ca_pem.as_bytes())
    }

    /// Writes `ca.pem`/`ca.key` to `dir` (creating it).
    pub fn write_ca(&self, dir: &Path) -> Result<(), IdentityError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_atomic(&dir.join("ca.pem"), &self.ca_pem, false)?;
        write_atomic(&dir.join("ca.key"), &self.key_pem, true)
    }

    /// Issues for `id` and writes `<dir>/<ns>/<sa>/{cert,key}.pem`; returns the paths (with `ca` = `<dir>/ca.pem`).
    /// `ca.pem` is written too when missing (an existing bundle is left alone).
    pub fn write_workload(&self, dir: &Path, id: &Identity) -> Result<CertPaths, IdentityError> {
        let paths = crate::devca::workload_paths(dir, id);
        let (cert, key) = self.issue(id, 365)?;
        if let Some(parent) = paths.cert.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        if !paths.ca.exists() {
            write_atomic(&paths.ca, &self.ca_pem, false)?;
        }
        write_atomic(&paths.key, &key, true)?;
        write_atomic(&paths.cert, &cert, false)?;
        Ok(paths)
    }
}

/// Valid from `now - BACKDATE` to `now + days` (dates reached through `date_time_ymd`, so this crate needs no
/// direct dependency on `time`).
fn set_validity(params: &mut CertificateParams, days: u64) {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + since_epoch.saturating_sub(BACKDATE);
    params.not_after = epoch + (since_epoch + Duration::from_secs(days * 86_400));
}

fn ca_common_name(der: &rustls_pki_types::CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

/// Writes through a temporary file and a rename, so a watcher never reads half a file.
fn write_atomic(path: &Path, contents: &str, private: bool) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(io_err(&tmp))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(&tmp))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// The paths of `id`'s files in a certificates directory (they need not exist yet).
pub fn workload_paths(dir: &Path, id: &Identity) -> CertPaths {
    let base: PathBuf = dir.join(&id.namespace).join(&id.service_account);
    CertPaths {
        cert: base.join("cert.pem"),
        key: base.join("key.pem"),
        ca: dir.join("ca.pem"),
    }
}
