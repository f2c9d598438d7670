//! The proxy's own health in the Prometheus text format (`waypoint_*`): requests and local replies, retries by
//! cause, response flags, circuit-breaker refusals by limit, outlier ejections (total, and in force now),
//! mirrors, the HBONE pool, the direct path's upstream connections, and the config (generation, rejected
//! changes, the last rejection). The admin port's `/stats`, and port 15020 after the Istio metrics
//! (see [`super::metrics`]).
//!
//! Every value is read when scraped: counters the proxy keeps ([`crate::proxy::Stats`], the pools, `mesh::config::Live`),
//! and gauges computed from the live snapshot. Every label comes from a closed list, so the number of series
//! is fixed.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Instant, UNIX_EPOCH};

use super::AdminState;
use crate::proxy::{FLAGS, RETRY_CAUSES};
use crate::resilience::breaker::Overflow;
use crate::snapshot::Snapshot;

/// One metric family: its name, type, help and samples (a label's name, and per sample its value and number).
struct Family<'a> {
    name: &'a str,
    kind: &'a str,
    help: &'a str,
    label: Option<&'a str>,
    samples: Vec<(&'a str, f64)>,
}

impl<'a> Family<'a> {
    fn one(name: &'a str, kind: &'a str, help: &'a str, value: f64) -> Self {
        Family {
            name,
            kind,
            help,
            label: None,
            samples: vec![("", value)],
        }
    }

    fn by(
        name: &'a str,
        kind: &'a str,
        help: &'a str,
        label: &'a str,
        samples: Vec<(&'a str, f64)>,
    ) -> Self {
        Family {
            name,
            kind,
            help,
            label: Some(label),
            samples,
        }
    }

    fn write(&self, out: &mut String) {
        let name = self.name;
        crate::telemetry::metrics::family(out, name, self.kind, self.help);
        for (value, n) in &self.samples {
            match self.label {
                Some(label) => writeln!(out, "{name}{{{label}=\"{value}\"}} {n}"),
                None => writeln!(out, "{name} {n}"),
            }
            .expect("writing to a String");
        }
    }
}

fn n(a: &AtomicU64) -> f64 {
    a.load(Relaxed) as f64
}

/// Samples named by `names`, valued by `counters` (in the same order).
fn labelled<'n, 'c>(
    names: &[&'n str],
    counters: impl IntoIterator<Item = &'c AtomicU64>,
) -> Vec<(&'n str, f64)> {
    names
        .iter()
        .copied()
        .zip(counters.into_iter().map(n))
        .collect()
}

/// Proxy health counters in the Prometheus text format (the Istio request metrics are [`crate::telemetry`]'s).
pub fn prometheus(state: &AdminState) -> String {
    let s = &state.stats;
    let m = &state.mirrors;
    let p = state.pool.stats();
    let d = state.direct.stats();
    let live = &state.live;
    let snapshot = live.load();
    let rejected_at = live.last_error_at();
    let last_error = rejected_at
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    let limits: Vec<&'static str> = Overflow::ALL.iter().map(|o| o.field()).collect();
    let families = [
        Family::one(
            "waypoint_requests_total",
            "counter",
            "Requests received.",
            n(&s.requests),
        ),
        Family::one(
            "waypoint_local_replies_total",
            "counter",
            "Requests the waypoint answered itself (errors, redirects, direct responses).",
            n(&s.local_replies),
        ),
        Family::one(
            "waypoint_retries_total",
            "counter",
            "Upstream tries after a request's first.",
            n(&s.retries),
        ),
        Family::by(
            "waypoint_retry_decisions_total",
            "counter",
            "Retries decided, by the failure that caused them.",
            "cause",
            labelled(&RETRY_CAUSES, &s.retry_causes),
        ),
        Family::by(
            "waypoint_response_flags_total",
            "counter",
            "Requests answered with each Envoy response flag.",
            "response_flags",
            labelled(&FLAGS, &s.flags),
        ),
        Family::by(
            "waypoint_circuit_breaker_trips_total",
            "counter",
            "Requests refused (503 UO) by a DestinationRule connectionPool limit, by its field.",
            "limit",
            labelled(&limits, &s.breaker_trips),
        ),
        Family::one(
            "waypoint_outlier_ejections_total",
            "counter",
            "Endpoints ejected by outlier detection.",
            n(&s.ejections),
        ),
        Family::one(
            "waypoint_outlier_ejected_endpoints",
            "gauge",
            "Endpoints of the bound services ejected now.",
            ejected_now(&snapshot, Instant::now()) as f64,
        ),
        Family::by(
            "waypoint_mirrors_total",
            "counter",
            "Mirrored requests, by what became of them.",
            "result",
            labelled(
                &["sent", "dropped", "failed"],
                [&m.sent, &m.dropped, &m.failed],
            ),
        ),
        Family::one(
            "waypoint_hbone_connections_opened_total",
            "counter",
            "Outer HBONE connections (mTLS, HTTP/2) opened.",
            p.connections_opened as f64,
        ),
        Family::one(
            "waypoint_hbone_streams_opened_total",
            "counter",
            "HBONE CONNECT streams opened.",
            p.streams_opened as f64,
        ),
        Family::one(
            "waypoint_hbone_connections",
            "gauge",
            "Outer HBONE connections open now.",
            p.connections_live as f64,
        ),
        Family::one(
            "waypoint_upstream_connections_opened_total",
            "counter",
            "Upstream connections the direct path opened.",
            n(&d.opened),
        ),
        Family::one(
            "waypoint_upstream_connections_reused_total",
            "counter",
            "Upstream tries that took a pooled keep-alive connection.",
            n(&d.reused),
        ),
        Family::one(
            "waypoint_upstream_connections_discarded_total",
            "counter",
            "Idle upstream connections closed (expired, found closed, over the limits, replaced).",
            n(&d.discarded),
        ),
        Family::one(
            "waypoint_upstream_connections_idle",
            "gauge",
            "Idle upstream connections pooled now.",
            state.direct.idle_count() as f64,
        ),
        Family::one(
            "waypoint_config_generation",
            "gauge",
            "Generation of the config snapshot serving (the first is 1).",
            live.generation() as f64,
        ),
        Family::one(
            "waypoint_config_rejected_total",
            "counter",
            "Config changes rejected (the last good config kept serving).",
            live.rejected() as f64,
        ),
        Family::one(
            "waypoint_config_last_change_rejected",
            "gauge",
            "1 while the last config change was rejected, 0 once a good one is live.",
            f64::from(u8::from(rejected_at.is_some())),
        ),
        Family::one(
            "waypoint_config_last_error_timestamp_seconds",
            "gauge",
            "Unix time of the rejection in force (0: none).",
            last_error,
        ),
    ];
    let mut out = String::with_capacity(4096);
    for f in &families {
        f.write(&mut out);
    }
    out
}

/// Endpoints ejected now, over the services the snapshot routes to (each service's health counted once).
fn ejected_now(snapshot: &Snapshot, now: Instant) -> u32 {
    let mut seen = HashSet::new();
    snapshot
        .services
        .values()
        .flat_map(|t| t.rules.iter())
        .flat_map(|r| r.backends.iter())
        .filter(|b| seen.insert(std::sync::Arc::as_ptr(&b.health)))
        .map(|b| b.health.ejected(now))
        .sum()
}
