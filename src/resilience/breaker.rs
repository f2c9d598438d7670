//! Circuit breaking from `connectionPool`: per destination service, counters of requests in flight, pending
//! requests, retries in flight and upstream connections. A request over a limit fails fast with 503 `UO`.
//!
//! The registry ([`Breakers`]) is touched only when a snapshot is compiled ([`Breakers::for_service`]); the
//! request path uses the returned [`ServiceBreaker`] (atomics only, no lock, bounded memory).

use std::sync::Arc;

use super::policy::ConnectionPool;

/// Which limit was hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    Requests,
    Pending,
    Retries,
    Connections,
}

/// All services' breakers, kept across snapshots.
#[derive(Debug, Default)]
pub struct Breakers {
    // implementation detail: Mutex<HashMap<String, Arc<ServiceBreaker>>> (compile time only)
}

impl Breakers {
    /// The breaker of service `key` (`namespace/name`), created on first use.
    pub fn for_service(&self, key: &str) -> Arc<ServiceBreaker> {
        todo!("{key}")
    }
}

/// One service's counters.
#[derive(Debug, Default)]
pub struct ServiceBreaker {
    // implementation detail: atomics
}

/// Holds one unit of a limit; releases it when dropped.
#[derive(Debug)]
pub struct Permit {
    // implementation detail
}

impl ServiceBreaker {
    /// Admits a request (`http2MaxRequests`), or says which limit is full.
    pub fn try_request(self: &Arc<Self>, limits: &ConnectionPool) -> Result<Permit, Overflow> {
        todo!("{limits:?}")
    }
    /// Admits a retry (`maxRetries`).
    pub fn try_retry(self: &Arc<Self>, limits: &ConnectionPool) -> Result<Permit, Overflow> {
        todo!("{limits:?}")
    }
    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        todo!()
    }
    /// Times a limit refused a request (for metrics and tests).
    pub fn overflows(&self) -> u64 {
        todo!()
    }
}
