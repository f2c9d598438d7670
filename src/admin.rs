//! The admin endpoint (loopback only; port 15000 by default): what the running waypoint is doing, and the
//! knobs an operator turns at runtime.
//!
//! - `GET /config_dump`: the active snapshot's generation, the last rejected change (text, file, object, field,
//!   time, and the generation that kept serving), and per service its rules and backends with weights and
//!   endpoints ([`dump`]).
//! - `GET /routes`: route status per route and parent of the active snapshot, as `waypoint check` prints it.
//! - `GET /stats`, `/stats/prometheus`: every metric in the Prometheus text format ([`render_metrics`]: the Istio
//!   metrics, the proxy's health ([`health_stats`]), authorization decisions).
//! - `GET /logging`, `POST /logging?level=debug` or `?level=waypoint::access=info`: the log filter
//!   (`mesh::ops::logging`).
//! - `GET /healthz/ready`: what the readiness port answers.
//! - `GET /explain?to=host:port&from=ns/sa&method=..&path=..&h=name:value`: what the waypoint would do with
//!   that request, against the live snapshot ([`explain`]; `format=text` for text).
//!
//! [`metrics`] is what port 15020 serves.

pub mod dump;
pub mod explain;
pub mod health_stats;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use mesh::config::Live;
use mesh::hbone::Pool;
use mesh::ops::{self, LogControl, OpsRequest, Readiness};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::mirror::MirrorStats;
use crate::proxy::Stats;
use crate::snapshot::Snapshot;

pub use dump::config_dump;
pub use health_stats::prometheus;

/// What the admin endpoint reads.
pub struct AdminState {
    pub live: Arc<Live<Snapshot>>,
    pub stats: Arc<Stats>,
    pub mirrors: Arc<MirrorStats>,
    pub pool: Pool,
    /// The direct path's keep-alive pool (HTTP/1.1 destinations).
    pub direct: crate::upstream::direct::Upstreams,
    pub readiness: Readiness,
    /// The process's log filter (`None`: `/logging` answers 501).
    pub log: Option<LogControl>,
    /// Authorization decisions (rendered with the proxy health counters).
    pub authz: Option<Arc<crate::proxy::authorize::AuthzStats>>,
    /// The Istio metrics (rendered before the proxy health counters).
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
}

/// What port 15020 (`/stats/prometheus`, `/metrics`) serves; the admin port's `/stats` serves the same.
pub fn metrics(state: Arc<AdminState>) -> ops::Render {
    Arc::new(move |out: &mut String| render_metrics(&state, out))
}

/// Every metric in the Prometheus text format: the Istio metrics ([`crate::telemetry`]), the proxy's health
/// ([`prometheus`]) and the authorization decisions.
pub fn render_metrics(state: &AdminState, out: &mut String) {
    if let Some(t) = &state.telemetry {
        t.render(out);
    }
    out.push_str(&prometheus(state));
    if let Some(a) = &state.authz {
        a.render(out);
    }
}

fn route_statuses(state: &AdminState) -> String {
    serde_json::to_string_pretty(&state.live.load().statuses).unwrap_or_default()
}

fn answer(state: &AdminState, req: &OpsRequest) -> Response<Full<Bytes>> {
    const JSON: &str = "application/json";
    match req.path.as_str() {
        "/config_dump" => ops::respond(StatusCode::OK, JSON, config_dump(&state.live)),
        "/routes" => ops::respond(StatusCode::OK, JSON, route_statuses(state)),
        "/explain" => explain::answer(&state.live, req),
        "/healthz/ready" => state.readiness.answer(),
        "/stats" | "/stats/prometheus" => {
            let mut out = String::new();
            render_metrics(state, &mut out);
            ops::respond(StatusCode::OK, ops::PROMETHEUS_TEXT, out)
        }
        "/logging" => match &state.log {
            Some(log) => log.answer(req),
            None => ops::text(
                StatusCode::NOT_IMPLEMENTED,
                "this process did not install a reloadable log filter\n".into(),
            ),
        },
        _ => ops::text(
            StatusCode::NOT_FOUND,
            "try /config_dump, /routes, /explain, /stats, /logging, /healthz/ready\n".into(),
        ),
    }
}

/// Serves the admin endpoint on `listener` until the returned task is aborted.
pub fn serve(listener: TcpListener, state: Arc<AdminState>) -> JoinHandle<()> {
    ops::serve(
        listener,
        Arc::new(move |req: &OpsRequest| answer(&state, req)),
    )
}

/// Binds `addr` (refusing anything but loopback: the admin endpoint is not for the network).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    ops::bind_loopback(addr).await
}
