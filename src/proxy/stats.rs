//! The proxy's counters: requests, local replies, retries by cause, requests by response flag, requests refused
//! by each circuit-breaker limit, and outlier ejections. Atomics only; read by the admin page
//! (`crate::admin::health_stats`) and the tests.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::ProxyError;
use crate::retry::Failure;

/// Counters of the proxy.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub local_replies: AtomicU64,
    /// Tries after the first (counted when the try starts).
    pub retries: AtomicU64,
    /// Retry decisions by cause: connect failure, not delivered, reset before response, status.
    pub retry_causes: [AtomicU64; 4],
    /// Requests answered with each response flag ([`FLAGS`] order).
    pub flags: [AtomicU64; FLAGS.len()],
    /// Requests refused by a circuit-breaker limit, by [`crate::resilience::breaker::Overflow::ALL`] order.
    pub breaker_trips: [AtomicU64; 4],
    /// Endpoints ejected by outlier detection.
    pub ejections: AtomicU64,
}

/// The response flags counted in [`Stats::flags`].
pub const FLAGS: [&str; 9] = ["NR", "UH", "UO", "UF", "UC", "UT", "URX", "DPE", "DC"];
/// The retry causes of [`Stats::retry_causes`].
pub const RETRY_CAUSES: [&str; 4] = [
    "connect_failure",
    "not_delivered",
    "reset_before_response",
    "status",
];

impl Stats {
    /// Counts what a request that ended showed: its response flags (a locally answered failure), the breaker
    /// limit that refused it, the endpoints its tries ejected.
    pub(crate) fn count_end(
        &self,
        flags: Option<&str>,
        error: Option<&ProxyError>,
        ejections: u32,
    ) {
        if let Some(flags) = flags {
            self.count_flags(flags);
        }
        if let Some(ProxyError::Overflow(limit)) = error {
            self.breaker_trips[limit.index()].fetch_add(1, Ordering::Relaxed);
        }
        if ejections > 0 {
            self.ejections
                .fetch_add(u64::from(ejections), Ordering::Relaxed);
        }
    }

    /// Counts each flag of a `UF,URX`-style list.
    pub(crate) fn count_flags(&self, flags: &str) {
        for f in flags.split(',') {
            if let Some(i) = FLAGS.iter().position(|k| *k == f) {
                self.flags[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts a retry decision by its cause.
    pub(crate) fn count_retry(&self, f: Failure) {
        let i = match f {
            Failure::Connect => 0,
            Failure::NotDelivered => 1,
            Failure::ResetBeforeResponse | Failure::Timeout => 2,
            Failure::Status(_) => 3,
        };
        self.retry_causes[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request answered by the waypoint itself.
    pub(crate) fn local_reply(&self) {
        self.local_replies.fetch_add(1, Ordering::Relaxed);
    }
}
