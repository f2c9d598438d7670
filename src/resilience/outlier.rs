//! Outlier detection: eject an endpoint after `consecutive5xxErrors` (or `consecutiveGatewayErrors`) in a row,
//! for `baseEjectionTime` × the number of times it was ejected; bring it back when that passes; never eject more
//! than `maxEjectionPercent` of a service's endpoints (and never all of them).
//!
//! The registry ([`Outliers`]) is touched only at compile time; the request path uses the per-endpoint
//! [`EndpointHealth`] and per-service [`ServiceHealth`] handles (atomics only: no lock, no allocation).
//!
//! # Semantics (Envoy's, as Istio configures them)
//!
//! - A [`Outcome::ServerError`] or [`Outcome::GatewayError`] adds one to the endpoint's consecutive-5xx count; a
//!   gateway error also adds one to its consecutive-gateway count, which a non-gateway 5xx resets (as Envoy);
//!   a [`Outcome::Success`] resets both. A threshold of 0 disables that detector.
//! - When a count reaches its threshold the endpoint is ejected, unless that would put more than
//!   [`max_ejected`] endpoints out at once; the count restarts either way, so a refused endpoint that keeps
//!   failing is tried again after another threshold's worth of errors (as Envoy).
//! - The ejection lasts `baseEjectionTime × n`, `n` the endpoint's ejection multiplier after this ejection,
//!   capped at Envoy's `max_ejection_time` (300 s, or `baseEjectionTime` when that is longer). It ends at its time:
//!   [`EndpointHealth::is_ejected`] compares with `now`, no sweeper runs.
//! - `interval`: Envoy lowers the multiplier by one at each interval the endpoint spends not ejected. Here that is
//!   computed when the endpoint is next ejected (whole intervals since its last ejection ended), the same count
//!   without a timer. The multiplier stops growing at the cap, so it decays from there.
//! - Outcomes recorded while the endpoint is ejected (tries that were already in flight) are ignored, and the
//!   counts restart at ejection: a returning endpoint starts clean, as after Envoy's uneject.
//!
//! # How the proxy uses it
//!
//! At compile time: `outliers.for_service(key)` and `health.endpoint(addr)` for each endpoint, kept in the
//! snapshot. Per try: the balancer skips endpoints with `is_ejected(now)`; after the try,
//! `health.record(&ep, outcome, &policy, endpoints_now, Instant::now())` with the outcome from the status (or
//! connect failure / reset = [`Outcome::GatewayError`]).

mod slots;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::breaker::registry::Registry;
use super::policy::OutlierDetection;
use slots::{nanos, stamp, Slots};

/// Envoy's default `max_ejection_time` (Istio does not set it).
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// What one try's outcome was, for outlier detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx other than 502/503/504.
    ServerError,
    /// 502, 503, 504, or a connect failure / reset (a "gateway error").
    GatewayError,
}

impl Outcome {
    /// The outcome of a try that got a response with `status`.
    pub fn from_status(status: u16) -> Outcome {
        match status {
            502..=504 => Outcome::GatewayError,
            500..=599 => Outcome::ServerError,
            _ => Outcome::Success,
        }
    }
}

/// How many of `endpoints` may be ejected at once under `maxEjectionPercent` = `percent`: Envoy ejects while
/// fewer than `percent` % are ejected, so the cap rounds up (10 endpoints at 10 % → 1, 5 at 10 % → 1, 3 at 50 % → 2),
/// and is at most `endpoints − 1`: never all, and none of a single endpoint.
pub fn max_ejected(endpoints: usize, percent: u32) -> u32 {
    if endpoints <= 1 || percent == 0 {
        return 0;
    }
    let endpoints = u64::try_from(endpoints).unwrap_or(u64::MAX);
    let cap = (endpoints * u64::from(percent.min(100))).div_ceil(100);
    u32::try_from(cap.min(endpoints - 1)).unwrap_or(u32::MAX)
}

/// How long the `n`th ejection lasts (`n` ≥ 1): `base × n`, at most `max(base, MAX_EJECTION_TIME)`.
pub fn ejection_time(base: Duration, n: u32) -> Duration {
    base.saturating_mul(n).min(base.max(MAX_EJECTION_TIME))
}

/// All services' health, kept across snapshots.
///
/// A service's health nothing holds any more is pruned when the registry has grown, or by
/// [`Outliers::retain_live`].
#[derive(Debug, Default)]
pub struct Outliers {
    services: Registry<Box<str>, ServiceHealth>,
}

impl Outliers {
    /// The health of service `key` (`namespace/name`), created on first use.
    pub fn for_service(&self, key: &str) -> Arc<ServiceHealth> {
        self.services
            .get_or_create(key, ServiceHealth::default, |_| {})
    }

    /// Drops services and endpoints no snapshot holds any more; returns how many services remain. Optional (the
    /// registries prune themselves as they grow); call it after a new snapshot is swapped in to free memory at
    /// once.
    pub fn retain_live(&self) -> usize {
        self.services.for_each(|_, health| {
            health.retain_live();
        });
        self.services.retain_live(|_| {})
    }

    /// Services held now (for tests and the admin page).
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether no service is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One service's ejection bookkeeping.
#[derive(Debug, Default)]
pub struct ServiceHealth {
    endpoints: Registry<SocketAddr, EndpointHealth>,
    slots: Slots,
    ejections: AtomicU64,
    refused: AtomicU64,
}

impl ServiceHealth {
    /// The health of endpoint `addr` of this service, created on first use (compile time).
    pub fn endpoint(&self, addr: SocketAddr) -> Arc<EndpointHealth> {
        let ep = self
            .endpoints
            .get_or_create(&addr, EndpointHealth::default, |gone| {
                gone.withdraw(&self.slots)
            });
        self.slots.ensure(self.endpoints.len());
        ep
    }

    /// Drops endpoints no snapshot holds any more (an ejection in force of one is withdrawn); returns how many
    /// remain.
    pub fn retain_live(&self) -> usize {
        self.endpoints
            .retain_live(|gone| gone.withdraw(&self.slots))
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
        let now = stamp(now);
        if ep.until.load(Ordering::Acquire) > now {
            return false;
        }
        let tripped = match outcome {
            Outcome::Success => {
                reset(&ep.consecutive_5xx);
                reset(&ep.consecutive_gateway);
                false
            }
            Outcome::ServerError => {
                reset(&ep.consecutive_gateway);
                count(&ep.consecutive_5xx, policy.consecutive_5xx)
            }
            Outcome::GatewayError => {
                let gateway = count(&ep.consecutive_gateway, policy.consecutive_gateway);
                count(&ep.consecutive_5xx, policy.consecutive_5xx) || gateway
            }
        };
        tripped && self.eject(ep, policy, endpoints, now)
    }

    fn eject(
        &self,
        ep: &EndpointHealth,
        policy: &OutlierDetection,
        endpoints: usize,
        now: u64,
    ) -> bool {
        let before = ep.until.load(Ordering::Acquire);
        if before > now {
            return false; // a racing call ejected it
        }
        let times = ep.decayed_times(before, now, policy) + 1;
        let until = now.saturating_add(nanos(ejection_time(policy.base_ejection_time, times)));
        let cap = max_ejected(endpoints, policy.max_ejection_percent);
        let Some(slot) = self.slots.take(cap, now, until) else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        if ep
            .until
            .compare_exchange(before, until, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.slots.give_back(slot, until); // a racing call ejected it first
            return false;
        }
        ep.times.store(times, Ordering::Release);
        ep.slot.store(slot as u32 + 1, Ordering::Release);
        reset(&ep.consecutive_5xx);
        reset(&ep.consecutive_gateway);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Endpoints ejected now.
    pub fn ejected(&self, now: Instant) -> u32 {
        self.slots.in_force(stamp(now))
    }

    /// Ejections made so far (Envoy's `ejections_enforced_total`).
    pub fn ejections_total(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Ejections refused because `maxEjectionPercent` was reached (Envoy's `ejections_overflow`).
    pub fn ejections_refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Endpoints held now (live or not yet pruned).
    pub fn endpoints_held(&self) -> usize {
        self.endpoints.len()
    }
}

/// Adds one error to `counter`; true when it reaches `threshold` (0 = disabled), which restarts it.
fn count(counter: &AtomicU32, threshold: u32) -> bool {
    if threshold == 0 {
        return false;
    }
    let n = counter.fetch_add(1, Ordering::AcqRel).saturating_add(1);
    if n >= threshold {
        counter.store(0, Ordering::Release);
        true
    } else {
        false
    }
}

/// Zeroes `counter` (skipping the write when it already is, to keep a hot endpoint's cache line shared).
fn reset(counter: &AtomicU32) {
    if counter.load(Ordering::Relaxed) != 0 {
        counter.store(0, Ordering::Release);
    }
}

/// One endpoint's state.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// Stamp the current (or last) ejection ends at; 0 = never ejected.
    until: AtomicU64,
    /// The ejection multiplier as of the last ejection.
    times: AtomicU32,
    /// The service slot of the last ejection, plus one (0 = none).
    slot: AtomicU32,
}

impl EndpointHealth {
    /// Whether it is ejected at `now` (an ejection that has run out is over).
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.until.load(Ordering::Acquire) > stamp(now)
    }

    /// The ejection multiplier now: how many `baseEjectionTime`s its next ejection would last, minus one
    /// (`interval` decay applied).
    pub fn multiplier(&self, policy: &OutlierDetection, now: Instant) -> u32 {
        let now = stamp(now);
        let until = self.until.load(Ordering::Acquire);
        if until > now {
            self.times.load(Ordering::Acquire)
        } else {
            self.decayed_times(until, now, policy)
        }
    }

    /// The multiplier after the whole `interval`s spent not ejected since the last ejection ended at `until`, capped
    /// where the ejection time stops growing.
    fn decayed_times(&self, until: u64, now: u64, policy: &OutlierDetection) -> u32 {
        let times = self.times.load(Ordering::Acquire);
        if until == 0 || times == 0 {
            return 0;
        }
        let healthy = match nanos(policy.interval) {
            0 => 0,
            interval => now.saturating_sub(until) / interval,
        };
        let times = times.saturating_sub(u32::try_from(healthy).unwrap_or(u32::MAX));
        times.min(multiplier_cap(policy.base_ejection_time).saturating_sub(1))
    }

    /// Frees this endpoint's slot if an ejection of it is in force (it is leaving the registry).
    fn withdraw(&self, slots: &Slots) {
        let until = self.until.load(Ordering::Acquire);
        if let Some(slot) = (self.slot.load(Ordering::Acquire) as usize).checked_sub(1) {
            slots.give_back(slot, until);
        }
    }
}

/// The smallest multiplier whose ejection time reaches the cap.
fn multiplier_cap(base: Duration) -> u32 {
    let cap = base.max(MAX_EJECTION_TIME);
    match nanos(base) {
        0 => 1,
        base => u32::try_from(nanos(cap).div_ceil(base)).unwrap_or(u32::MAX),
    }
}
