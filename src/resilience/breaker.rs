//! Circuit breaking from `connectionPool`: per destination service, counters of requests in flight, pending
//! requests, retries in flight and upstream connections. A request over a limit fails fast with 503 `UO`.
//!
//! The registry ([`Breakers`]) is touched only when a snapshot is compiled ([`Breakers::for_service`]); the
//! request path uses the returned [`ServiceBreaker`] (atomics only, no lock, no allocation, bounded memory).
//!
//! # How the proxy uses it
//!
//! Each `try_*` takes one unit of a limit and returns a [`Permit`] that gives it back when dropped (exactly once:
//! on success, error, panic unwind or a cancelled future alike), or the [`Overflow`] naming the full limit, which
//! the proxy answers with 503 and the `UO` flag. A limit of `None` is unlimited (Istio's default, 2^32-1);
//! `Some(0)` admits nothing (the compiler maps an Istio `0`, which means "default", to `None`).
//!
//! | limit | field | take | hold until |
//! |---|---|---|---|
//! | [`try_request`](ServiceBreaker::try_request) | `http2MaxRequests` | when the request is routed to the service | the downstream request ends (all its tries) |
//! | [`try_retry`](ServiceBreaker::try_retry) | `maxRetries` | before each retry (not the first try) | that retry's try ends |
//! | [`try_pending`](ServiceBreaker::try_pending) | `http1MaxPendingRequests` | when a try starts waiting for an upstream connection | it is connected (or fails) |
//! | [`slots`](ServiceBreaker::slots) | `maxConnections` | before a try gets its connection (waiting as pending while all are held) | that try ends |
//!
//! Istio's `maxRetries` is concurrent retries; Envoy's own default is 3, but Istio sets it to 2^32-1, so `None`
//! here is unlimited; a retry budget bounds retries separately.
//!
//! A try is "pending" from `upstream_peer` until `connected_to_upstream` or `fail_to_connect`: while it waits
//! for a connection slot and while its connection is being opened. `maxConnections` is enforced exactly for
//! HTTP/1.1 upstreams by connection slots ([`slots`]): at most N tries hold a connection, each slot names one
//! pooled connection, and the direct path (`crate::upstream::direct`) keeps at most one open connection per slot.
//! `maxRequestsPerConnection` is enforced by the proxy per connection (`crate::resilience::reuse`).

pub(in crate::resilience) mod registry;
pub mod slots;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::policy::ConnectionPool;
use registry::Registry;
use slots::SlotPool;

/// Which limit was hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    Requests,
    Pending,
    Retries,
    Connections,
}

impl Overflow {
    /// Every limit, in counter order.
    pub const ALL: [Overflow; 4] = [
        Overflow::Requests,
        Overflow::Pending,
        Overflow::Retries,
        Overflow::Connections,
    ];

    /// Its place in [`Overflow::ALL`] (and in per-limit counters).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The limit's name in Istio's `connectionPool`, for logs and metrics labels.
    pub fn field(self) -> &'static str {
        match self {
            Overflow::Requests => "http2MaxRequests",
            Overflow::Pending => "http1MaxPendingRequests",
            Overflow::Retries => "maxRetries",
            Overflow::Connections => "maxConnections",
        }
    }
}

/// All services' breakers, kept across snapshots.
///
/// A breaker nothing holds any more (no snapshot, no permit) is pruned when the registry has grown, or by
/// [`Breakers::retain_live`].
#[derive(Debug, Default)]
pub struct Breakers {
    services: Registry<Box<str>, ServiceBreaker>,
}

impl Breakers {
    /// The breaker of service `key` (`namespace/name`), created on first use.
    pub fn for_service(&self, key: &str) -> Arc<ServiceBreaker> {
        self.services
            .get_or_create(key, ServiceBreaker::default, |_| {})
    }

    /// Drops the breakers of services no snapshot or permit holds any more; returns how many remain. Optional
    /// (the registry also prunes itself as it grows); call it after a new snapshot is swapped in to free memory
    /// at once.
    pub fn retain_live(&self) -> usize {
        self.services.retain_live(|_| {})
    }

    /// Breakers held now (for tests and the admin page).
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether no breaker is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One service's counters.
#[derive(Debug)]
pub struct ServiceBreaker {
    /// Units held now, by [`Overflow::index`].
    held: [AtomicU32; 4],
    /// Refusals, by [`Overflow::index`].
    refused: [AtomicU64; 4],
    /// Unique in the process: names the service's connection slots to the direct path's pool.
    id: u64,
    /// The connection slots for the current `maxConnections` ([`slots`]).
    slots: arc_swap::ArcSwapOption<SlotPool>,
}

impl Default for ServiceBreaker {
    fn default() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        ServiceBreaker {
            held: Default::default(),
            refused: Default::default(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            slots: Default::default(),
        }
    }
}

/// Holds one unit of a limit; releases it when dropped.
///
/// Not `Clone`; dropping it (or the future that owns it) releases exactly once. `mem::forget` leaks the unit.
#[derive(Debug)]
#[must_use = "the unit is released as soon as the permit is dropped"]
pub struct Permit {
    breaker: Arc<ServiceBreaker>,
    kind: Overflow,
}

impl Permit {
    /// The limit this permit holds a unit of.
    pub fn kind(&self) -> Overflow {
        self.kind
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.breaker.held[self.kind.index()].fetch_sub(1, Ordering::AcqRel);
    }
}

impl ServiceBreaker {
    /// Admits a request (`http2MaxRequests`), or says which limit is full.
    pub fn try_request(self: &Arc<Self>, limits: &ConnectionPool) -> Result<Permit, Overflow> {
        self.try_take(Overflow::Requests, limits.max_requests)
    }

    /// Admits a retry (`maxRetries`: concurrent retries; `None` is unlimited).
    pub fn try_retry(self: &Arc<Self>, limits: &ConnectionPool) -> Result<Permit, Overflow> {
        self.try_take(Overflow::Retries, limits.max_retries)
    }

    /// Admits a try waiting for an upstream connection (`http1MaxPendingRequests`; an approximation, see the module
    /// documentation).
    pub fn try_pending(self: &Arc<Self>, limits: &ConnectionPool) -> Result<Permit, Overflow> {
        self.try_take(Overflow::Pending, limits.max_pending_requests)
    }

    /// Admits a new upstream connection (`maxConnections`; an approximation, see the module documentation).
    pub fn try_connection(self: &Arc<Self>, limits: &ConnectionPool) -> Result<Permit, Overflow> {
        self.try_take(Overflow::Connections, limits.max_connections)
    }

    /// Takes one unit of `kind` if fewer than `max` are held (compare-and-swap, so the limit is never exceeded
    /// even for a moment); counts a refusal otherwise.
    fn try_take(self: &Arc<Self>, kind: Overflow, max: Option<u32>) -> Result<Permit, Overflow> {
        let held = &self.held[kind.index()];
        let admitted = match max {
            None => {
                held.fetch_add(1, Ordering::AcqRel);
                true
            }
            Some(max) => held
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok(),
        };
        if admitted {
            Ok(Permit {
                breaker: self.clone(),
                kind,
            })
        } else {
            self.refused[kind.index()].fetch_add(1, Ordering::Relaxed);
            Err(kind)
        }
    }

    /// The connection slots for `maxConnections` = `max` (HTTP/1.1 upstreams; see [`slots`]): the same pool
    /// while the limit stays the same; a new one when a config swap changes it (tries holding slots of the old
    /// pool finish on it). `None` when `max` exceeds [`slots::MAX_SLOTS`] (not enforced).
    ///
    /// Tries racing here all get the pool that is stored: a new pool replaces the current one only by
    /// compare-and-swap (two first tries must never each take slots of a pool of their own).
    pub fn slots(&self, max: u32) -> Option<Arc<SlotPool>> {
        if max > slots::MAX_SLOTS {
            return None;
        }
        let current = self.slots.load();
        if let Some(p) = current.as_ref().filter(|p| p.max() == max) {
            return Some(p.clone());
        }
        let mut stored = None;
        self.slots.rcu(|now| match now {
            Some(p) if p.max() == max => {
                stored = Some(p.clone());
                now.clone()
            }
            _ => {
                let fresh = Arc::new(SlotPool::new(max));
                stored = Some(fresh.clone());
                Some(fresh)
            }
        });
        stored
    }

    /// The process-unique id of this service's breaker (names its connection slots).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.held_now(Overflow::Requests)
    }

    /// Units of `kind` held now (requests, pending tries, retries or connections).
    pub fn held_now(&self, kind: Overflow) -> u32 {
        self.held[kind.index()].load(Ordering::Acquire)
    }

    /// Times a limit refused a request (for metrics and tests).
    pub fn overflows(&self) -> u64 {
        Overflow::ALL.iter().map(|&k| self.overflows_of(k)).sum()
    }

    /// Times the `kind` limit refused (Envoy's `upstream_rq_pending_overflow`, `upstream_rq_retry_overflow`, …).
    pub fn overflows_of(&self, kind: Overflow) -> u64 {
        self.refused[kind.index()].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first tries of a burst race to create the slot pool: every one must get the same pool, or each
    /// would hold slots of its own and the backend would see more than `maxConnections` at once.
    #[test]
    fn racing_first_tries_share_one_slot_pool() {
        const THREADS: usize = 4;
        for _ in 0..200 {
            let breaker = Arc::new(ServiceBreaker::default());
            let start = Arc::new(std::sync::Barrier::new(THREADS));
            let pools: Vec<Arc<SlotPool>> = (0..THREADS)
                .map(|_| {
                    let (b, start) = (breaker.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        b.slots(2).expect("2 is enforced")
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().expect("joined"))
                .collect();
            let stored = breaker.slots(2).expect("stored");
            for p in &pools {
                assert!(
                    Arc::ptr_eq(p, &stored),
                    "a try got a pool that is not the stored one"
                );
            }
        }
    }

    #[test]
    fn a_changed_limit_replaces_the_pool_and_the_same_limit_keeps_it() {
        let b = ServiceBreaker::default();
        let two = b.slots(2).expect("enforced");
        assert!(Arc::ptr_eq(&two, &b.slots(2).expect("enforced")));
        let three = b.slots(3).expect("enforced");
        assert_eq!(three.max(), 3);
        assert!(!Arc::ptr_eq(&two, &three));
        assert!(b.slots(slots::MAX_SLOTS + 1).is_none());
    }
}
