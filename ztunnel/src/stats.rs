//! Counters of a running ztunnel: lock-free where hot, a small mutex for the keyed maps. [`Stats`] is the
//! plain snapshot tests and the demo read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use mesh::hbone::PoolStats;

use crate::outbound::plan::OutboundKind;

/// A snapshot of a ztunnel's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Outbound connections established through the destination service's waypoint.
    pub outbound_waypoint: u64,
    /// Outbound connections established by HBONE straight to the destination pod.
    pub outbound_hbone: u64,
    /// Outbound connections established as plain TCP (not in the mesh).
    pub outbound_passthrough: u64,
    /// Outbound connections refused or failed before the upstream answered.
    pub outbound_failed: u64,
    /// Inbound CONNECTs answered 200.
    pub inbound_accepted: u64,
    /// Inbound CONNECTs refused, by HTTP status.
    pub inbound_refused: BTreeMap<u16, u64>,
    /// Inbound CONNECTs denied by AuthorizationPolicy (also counted as `401` in `inbound_refused`), by the
    /// deciding policy (`namespace/name`, or `crate::policy::NO_ALLOW_MATCHED`).
    pub inbound_denied: BTreeMap<String, u64>,
    /// SPIFFE identities of inbound HBONE callers (every CONNECT counted, accepted or not).
    pub inbound_peers: BTreeMap<String, u64>,
    /// The outbound HBONE pool.
    pub pool: PoolStats,
}

/// The live counters behind [`Stats`].
#[derive(Debug, Default)]
pub struct Counters {
    outbound_waypoint: AtomicU64,
    outbound_hbone: AtomicU64,
    outbound_passthrough: AtomicU64,
    outbound_failed: AtomicU64,
    inbound_accepted: AtomicU64,
    inbound: Mutex<InboundMaps>,
}

#[derive(Debug, Default)]
struct InboundMaps {
    refused: BTreeMap<u16, u64>,
    denied: BTreeMap<String, u64>,
    peers: BTreeMap<String, u64>,
}

impl Counters {
    pub fn outbound(&self, kind: OutboundKind) {
        let c = match kind {
            OutboundKind::Waypoint => &self.outbound_waypoint,
            OutboundKind::DirectHbone => &self.outbound_hbone,
            OutboundKind::Passthrough => &self.outbound_passthrough,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn outbound_failed(&self) {
        self.outbound_failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn inbound_peer(&self, identity: String) {
        *self.maps().peers.entry(identity).or_default() += 1;
    }

    pub fn inbound_accepted(&self) {
        self.inbound_accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn inbound_refused(&self, status: u16) {
        *self.maps().refused.entry(status).or_default() += 1;
    }

    pub fn inbound_denied(&self, policy: &str) {
        let mut maps = self.maps();
        match maps.denied.get_mut(policy) {
            Some(n) => *n += 1,
            None => {
                maps.denied.insert(policy.to_string(), 1);
            }
        }
    }

    pub fn snapshot(&self, pool: PoolStats) -> Stats {
        let maps = self.maps();
        Stats {
            outbound_waypoint: self.outbound_waypoint.load(Ordering::Relaxed),
            outbound_hbone: self.outbound_hbone.load(Ordering::Relaxed),
            outbound_passthrough: self.outbound_passthrough.load(Ordering::Relaxed),
            outbound_failed: self.outbound_failed.load(Ordering::Relaxed),
            inbound_accepted: self.inbound_accepted.load(Ordering::Relaxed),
            inbound_refused: maps.refused.clone(),
            inbound_denied: maps.denied.clone(),
            inbound_peers: maps.peers.clone(),
            pool,
        }
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, InboundMaps> {
        // A panic while holding this lock cannot leave the maps inconsistent: keep counting.
        self.inbound.lock().unwrap_or_else(|e| e.into_inner())
    }
}
