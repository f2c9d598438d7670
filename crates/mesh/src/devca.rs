//! A development certificate authority: a self-signed CA and workload certificates for SPIFFE identities,
//! written as PEM files in the layout every binary of this project reads.
//!
//! Layout of a certificates directory: `ca.pem` (trust bundle), `ca.key`, and for each identity
//! `<namespace>/<service-account>/cert.pem` and `key.pem`.

use std::path::{Path, PathBuf};

use crate::identity::{CertPaths, Certs, Identity, IdentityError};

/// A CA able to issue workload certificates.
pub struct DevCa {
    // implementation detail (rcgen)
}

impl DevCa {
    /// A new self-signed CA (ECDSA P-256) named for `trust_domain`.
    pub fn generate(trust_domain: &str) -> Result<DevCa, IdentityError> {
        todo!("{trust_domain}")
    }
    /// Loads `ca.pem` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<DevCa, IdentityError> {
        todo!("{dir:?}")
    }
    pub fn trust_domain(&self) -> &str {
        todo!()
    }
    pub fn ca_pem(&self) -> String {
        todo!()
    }
    /// A leaf for `id`: URI SAN = the SPIFFE ID, valid from one hour ago for `days` days. Returns (cert PEM, key PEM).
    pub fn issue(&self, id: &Identity, days: u32) -> Result<(String, String), IdentityError> {
        todo!("{id}{days}")
    }
    /// Issues for `id` in memory (tests, the demo).
    pub fn certs_for(&self, id: &Identity) -> Result<Certs, IdentityError> {
        todo!("{id}")
    }
    /// Writes `ca.pem`/`ca.key` to `dir` (creating it).
    pub fn write_ca(&self, dir: &Path) -> Result<(), IdentityError> {
        todo!("{dir:?}")
    }
    /// Issues for `id` and writes `<dir>/<ns>/<sa>/{cert,key}.pem`; returns the paths (with `ca` = `<dir>/ca.pem`).
    pub fn write_workload(&self, dir: &Path, id: &Identity) -> Result<CertPaths, IdentityError> {
        todo!("{dir:?}{id}")
    }
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
