//! Outlier detection: eject an endpoint after `consecutive5xxErrors` (or `consecutiveGatewayErrors`) in a row,
//! for `baseEjectionTime` × the number of times it was ejected; bring it back when that passes; never eject more
//! than `maxEjectionPercent` of a service's endpoints (and never all of them).
//!
//! The registry ([`Outliers`]) is touched only at compile time; the request path uses the per-endpoint
//! [`EndpointHealth`] and per-service [`ServiceHealth`] handles (atomics only).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::policy::OutlierDetection;

/// What one try's outcome was, for outlier detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx other than 502/503/504.
    ServerError,
    /// 502, 503, 504, or a connect failure / reset (a "gateway error").
    GatewayError,
}

/// All services' health, kept across snapshots.
#[derive(Debug, Default)]
pub struct Outliers {
    // implementation detail
}

impl Outliers {
    /// The health of service `key` (`namespace/name`), created on first use.
    pub fn for_service(&self, key: &str) -> Arc<ServiceHealth> {
        todo!("{key}")
    }
}

/// One service's ejection bookkeeping.
#[derive(Debug, Default)]
pub struct ServiceHealth {
    // implementation detail
}

impl ServiceHealth {
    /// The health of endpoint `addr` of this service, created on first use (compile time).
    pub fn endpoint(&self, addr: SocketAddr) -> Arc<EndpointHealth> {
        todo!("{addr}")
    }
    /// Records a try's outcome on `ep`; may eject it (respecting `maxEjectionPercent` of `endpoints`, the
    /// number of endpoints the service has now). Returns true when this call ejected it.
    pub fn record(
        &self,
        ep: &EndpointHealth,
        outcome: Outcome,
        policy: &OutlierDetection,
        endpoints: usize,
        now: Instant,
    ) -> bool {
        todo!("{ep:?}{outcome:?}{policy:?}{endpoints}{now:?}")
    }
    /// Endpoints ejected now.
    pub fn ejected(&self, now: Instant) -> u32 {
        todo!("{now:?}")
    }
}

/// One endpoint's state.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    // implementation detail: atomics
}

impl EndpointHealth {
    /// Whether it is ejected at `now` (an ejection that has run out is over).
    pub fn is_ejected(&self, now: Instant) -> bool {
        todo!("{now:?}")
    }
}
