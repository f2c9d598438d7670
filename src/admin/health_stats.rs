//! The proxy health counters (requests, retries by cause, response flags, mirrors, HBONE pool, the direct path's
//! upstream connections (opened, reused, discarded, idle), config generation
//! and last rejected change) in the Prometheus text format: the admin port's `/stats`, and for now also port
//! 15020 (see [`super::metrics`]).

use super::AdminState;
use crate::proxy::{FLAGS, RETRY_CAUSES};

/// Proxy health counters in the Prometheus text format (Istio's standard request metrics are issue 6's).
pub fn prometheus(state: &AdminState) -> String {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::with_capacity(2048);
    let s = &state.stats;
    let _ = writeln!(
        out,
        "# TYPE waypoint_requests_total counter\nwaypoint_requests_total {}",
        s.requests.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# TYPE waypoint_retries_total counter\nwaypoint_retries_total {}",
        s.retries.load(Relaxed)
    );
    let _ = writeln!(out, "# TYPE waypoint_retry_decisions_total counter");
    for (cause, n) in RETRY_CAUSES.iter().zip(&s.retry_causes) {
        let _ = writeln!(
            out,
            "waypoint_retry_decisions_total{{cause=\"{cause}\"}} {}",
            n.load(Relaxed)
        );
    }
    let _ = writeln!(out, "# TYPE waypoint_response_flags_total counter");
    for (flag, n) in FLAGS.iter().zip(&s.flags) {
        let _ = writeln!(
            out,
            "waypoint_response_flags_total{{response_flags=\"{flag}\"}} {}",
            n.load(Relaxed)
        );
    }
    let m = &state.mirrors;
    let _ = writeln!(out, "# TYPE waypoint_mirrors_total counter");
    for (result, n) in [
        ("sent", &m.sent),
        ("dropped", &m.dropped),
        ("failed", &m.failed),
    ] {
        let _ = writeln!(
            out,
            "waypoint_mirrors_total{{result=\"{result}\"}} {}",
            n.load(Relaxed)
        );
    }
    let p = state.pool.stats();
    let _ = writeln!(out, "# TYPE waypoint_hbone_connections_opened_total counter\nwaypoint_hbone_connections_opened_total {}", p.connections_opened);
    let _ = writeln!(out, "# TYPE waypoint_hbone_streams_opened_total counter\nwaypoint_hbone_streams_opened_total {}", p.streams_opened);
    let _ = writeln!(
        out,
        "# TYPE waypoint_hbone_connections gauge\nwaypoint_hbone_connections {}",
        p.connections_live
    );
    let d = state.direct.stats();
    for (what, n) in [
        ("opened", &d.opened),
        ("reused", &d.reused),
        ("discarded", &d.discarded),
    ] {
        let _ = writeln!(
            out,
            "# TYPE waypoint_upstream_connections_{what}_total counter\nwaypoint_upstream_connections_{what}_total {}",
            n.load(Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# TYPE waypoint_upstream_connections_idle gauge\nwaypoint_upstream_connections_idle {}",
        state.direct.idle_count()
    );
    let _ = writeln!(
        out,
        "# TYPE waypoint_config_generation gauge\nwaypoint_config_generation {}",
        state.live.generation()
    );
    let rejected = u8::from(state.live.last_error().is_some());
    let _ = writeln!(out, "# TYPE waypoint_config_last_change_rejected gauge\nwaypoint_config_last_change_rejected {rejected}");
    out
}
