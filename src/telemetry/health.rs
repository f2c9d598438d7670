//! The proxy's own health, as plain gauges and counters the proxy feeds (names prefixed `waypoint_`).
//!
//! Every label here comes from a closed enum, so these metrics have a fixed number of series.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// An upstream connection pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// Outer HBONE connections (mTLS h2 to `podIP:15008`).
    HboneConnections,
    /// HBONE CONNECT streams open on them.
    HboneStreams,
    /// Pooled upstream connections (the direct path's, the relay's or plain TCP).
    Upstream,
}

impl Pool {
    const ALL: [Pool; 3] = [Pool::HboneConnections, Pool::HboneStreams, Pool::Upstream];
    fn as_str(self) -> &'static str {
        match self {
            Pool::HboneConnections => "hbone_connections",
            Pool::HboneStreams => "hbone_streams",
            Pool::Upstream => "upstream",
        }
    }
}

/// Why a try was retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryCause {
    ConnectFailure,
    /// Reset or closed before (a whole) response.
    Reset,
    /// A status listed in the route's retry codes.
    Status,
    Timeout,
}

impl RetryCause {
    const ALL: [RetryCause; 4] = [
        RetryCause::ConnectFailure,
        RetryCause::Reset,
        RetryCause::Status,
        RetryCause::Timeout,
    ];
    fn as_str(self) -> &'static str {
        match self {
            RetryCause::ConnectFailure => "connect_failure",
            RetryCause::Reset => "reset",
            RetryCause::Status => "status",
            RetryCause::Timeout => "timeout",
        }
    }
}

impl From<crate::retry::Failure> for RetryCause {
    fn from(f: crate::retry::Failure) -> Self {
        use crate::retry::Failure;
        match f {
            Failure::Connect => RetryCause::ConnectFailure,
            Failure::NotDelivered | Failure::ResetBeforeResponse => RetryCause::Reset,
            Failure::Status(_) => RetryCause::Status,
            Failure::Timeout => RetryCause::Timeout,
        }
    }
}

/// Which connection-pool limit a circuit breaker enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerLimit {
    Connections,
    PendingRequests,
    Requests,
    Retries,
}

impl BreakerLimit {
    const ALL: [BreakerLimit; 4] = [
        BreakerLimit::Connections,
        BreakerLimit::PendingRequests,
        BreakerLimit::Requests,
        BreakerLimit::Retries,
    ];
    fn as_str(self) -> &'static str {
        match self {
            BreakerLimit::Connections => "connections",
            BreakerLimit::PendingRequests => "pending_requests",
            BreakerLimit::Requests => "requests",
            BreakerLimit::Retries => "retries",
        }
    }
}

/// Gauges and counters about the proxy itself.
#[derive(Debug, Default)]
pub struct Health {
    pools: [AtomicU64; 3],
    retries: [AtomicU64; 4],
    breaker_trips: [AtomicU64; 4],
    ejections: AtomicU64,
    ejected: AtomicU64,
    config_generation: AtomicU64,
    config_loads_ok: AtomicU64,
    config_loads_err: AtomicU64,
    /// Unix time in milliseconds; 0 = never.
    config_last_error_ms: AtomicU64,
}

impl Health {
    /// Sets a pool's current size.
    pub fn set_pool_size(&self, pool: Pool, size: u64) {
        self.pools[pool as usize].store(size, Ordering::Relaxed);
    }
    pub fn retry(&self, cause: RetryCause) {
        self.retries[cause as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn breaker_trip(&self, limit: BreakerLimit) {
        self.breaker_trips[limit as usize].fetch_add(1, Ordering::Relaxed);
    }
    /// One endpoint ejected by outlier detection.
    pub fn ejection(&self) {
        self.ejections.fetch_add(1, Ordering::Relaxed);
    }
    /// Endpoints ejected right now.
    pub fn set_ejected(&self, n: u64) {
        self.ejected.store(n, Ordering::Relaxed);
    }
    /// A config snapshot went live.
    pub fn config_loaded(&self, generation: u64) {
        self.config_generation.store(generation, Ordering::Relaxed);
        self.config_loads_ok.fetch_add(1, Ordering::Relaxed);
    }
    /// A config change was rejected at `at` (the last good config keeps serving).
    pub fn config_error(&self, at: SystemTime) {
        let ms = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.config_last_error_ms.store(ms, Ordering::Relaxed);
        self.config_loads_err.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn render(&self, out: &mut String) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        head(
            out,
            "waypoint_pool_size",
            "gauge",
            "Connections or streams open in an upstream pool.",
        );
        for p in Pool::ALL {
            let _ = writeln!(
                out,
                "waypoint_pool_size{{pool=\"{}\"}} {}",
                p.as_str(),
                g(&self.pools[p as usize])
            );
        }
        head(
            out,
            "waypoint_retries_total",
            "counter",
            "Upstream tries retried, by cause.",
        );
        for c in RetryCause::ALL {
            let _ = writeln!(
                out,
                "waypoint_retries_total{{cause=\"{}\"}} {}",
                c.as_str(),
                g(&self.retries[c as usize])
            );
        }
        head(
            out,
            "waypoint_circuit_breaker_trips_total",
            "counter",
            "Requests refused by a connection-pool limit.",
        );
        for l in BreakerLimit::ALL {
            let v = g(&self.breaker_trips[l as usize]);
            let _ = writeln!(
                out,
                "waypoint_circuit_breaker_trips_total{{limit=\"{}\"}} {v}",
                l.as_str()
            );
        }
        head(
            out,
            "waypoint_outlier_ejections_total",
            "counter",
            "Endpoints ejected by outlier detection.",
        );
        let _ = writeln!(
            out,
            "waypoint_outlier_ejections_total {}",
            g(&self.ejections)
        );
        head(
            out,
            "waypoint_outlier_ejected_endpoints",
            "gauge",
            "Endpoints ejected right now.",
        );
        let _ = writeln!(
            out,
            "waypoint_outlier_ejected_endpoints {}",
            g(&self.ejected)
        );
        head(
            out,
            "waypoint_config_generation",
            "gauge",
            "Generation of the config snapshot serving.",
        );
        let _ = writeln!(
            out,
            "waypoint_config_generation {}",
            g(&self.config_generation)
        );
        head(
            out,
            "waypoint_config_loads_total",
            "counter",
            "Config loads, by result.",
        );
        let _ = writeln!(
            out,
            "waypoint_config_loads_total{{result=\"success\"}} {}",
            g(&self.config_loads_ok)
        );
        let _ = writeln!(
            out,
            "waypoint_config_loads_total{{result=\"error\"}} {}",
            g(&self.config_loads_err)
        );
        head(
            out,
            "waypoint_config_last_error_timestamp_seconds",
            "gauge",
            "Unix time of the last rejected config change (0: none).",
        );
        let ms = g(&self.config_last_error_ms);
        let _ = writeln!(
            out,
            "waypoint_config_last_error_timestamp_seconds {}",
            ms as f64 / 1000.0
        );
    }
}

pub(crate) fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::Failure;

    #[test]
    fn retry_causes_from_failures() {
        let cases = [
            (Failure::Connect, RetryCause::ConnectFailure),
            (Failure::NotDelivered, RetryCause::Reset),
            (Failure::ResetBeforeResponse, RetryCause::Reset),
            (Failure::Status(503), RetryCause::Status),
            (Failure::Timeout, RetryCause::Timeout),
        ];
        for (f, want) in cases {
            assert_eq!(RetryCause::from(f), want, "{f:?}");
        }
    }
}
