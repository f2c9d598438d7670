//! The admin endpoint (localhost only; port 15000 by default): what the running waypoint is doing.
//!
//! - `GET /config_dump`: the active snapshot's generation, the last rejected change, and per service its rules
//!   and backends with weights and endpoints.
//! - `GET /routes`: route status per route and parent of the active snapshot, as `waypoint check` prints it.
//! - `GET /stats`: proxy health counters (requests, retries by cause, response flags, mirrors, HBONE pool,
//!   config generation) in the Prometheus text format.
//! - `GET /healthz/ready`: 200 once a config is loaded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mesh::config::Live;
use serde::Serialize;
use tokio::net::TcpListener;

use mesh::hbone::Pool;

use crate::mirror::MirrorStats;
use crate::proxy::{Stats, FLAGS, RETRY_CAUSES};
use crate::snapshot::Snapshot;

/// What the admin endpoint reads.
pub struct AdminState {
    pub live: Arc<Live<Snapshot>>,
    pub stats: Arc<Stats>,
    pub mirrors: Arc<MirrorStats>,
    pub pool: Pool,
}

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
    let _ = writeln!(
        out,
        "# TYPE waypoint_config_generation gauge\nwaypoint_config_generation {}",
        state.live.generation()
    );
    let rejected = u8::from(state.live.last_error().is_some());
    let _ = writeln!(out, "# TYPE waypoint_config_last_change_rejected gauge\nwaypoint_config_last_change_rejected {rejected}");
    out
}

#[derive(Serialize)]
struct Dump {
    generation: u64,
    last_error: Option<String>,
    services: Vec<ServiceDump>,
}

#[derive(Serialize)]
struct ServiceDump {
    address: String,
    name: String,
    rules: Vec<RuleDump>,
}

#[derive(Serialize)]
struct RuleDump {
    name: String,
    backends: Vec<BackendDump>,
}

#[derive(Serialize)]
struct BackendDump {
    name: String,
    weight: u32,
    invalid: Option<String>,
    endpoints: Vec<String>,
}

/// The config dump of `live`.
pub fn config_dump(live: &Live<Snapshot>) -> String {
    let snap = live.load();
    let mut services: Vec<ServiceDump> = snap
        .services
        .iter()
        .map(|(addr, t)| ServiceDump {
            address: addr.to_string(),
            name: t.name.clone(),
            rules: t
                .rules
                .iter()
                .map(|r| RuleDump {
                    name: r.name.clone(),
                    backends: r
                        .backends
                        .iter()
                        .map(|b| BackendDump {
                            name: b.name.clone(),
                            weight: b.weight,
                            invalid: b.invalid.clone(),
                            endpoints: b.endpoints.iter().map(|e| e.addr.to_string()).collect(),
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect();
    services.sort_by(|a, b| a.address.cmp(&b.address));
    let dump = Dump {
        generation: live.generation(),
        last_error: live.last_error().map(|e| e.to_string()),
        services,
    };
    serde_json::to_string_pretty(&dump).unwrap_or_default()
}

fn route_statuses(state: &AdminState) -> (StatusCode, String) {
    let snap = state.live.load();
    (
        StatusCode::OK,
        serde_json::to_string_pretty(&snap.statuses).unwrap_or_default(),
    )
}

fn answer(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body, kind) = match req.uri().path() {
        "/config_dump" => (StatusCode::OK, config_dump(&state.live), "application/json"),
        "/routes" => {
            let (s, b) = route_statuses(state);
            (s, b, "application/json")
        }
        "/healthz/ready" => (StatusCode::OK, "ready\n".to_string(), "text/plain"),
        "/stats" | "/stats/prometheus" => (
            StatusCode::OK,
            prometheus(state),
            "text/plain; version=0.0.4",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "try /config_dump, /routes, /healthz/ready\n".into(),
            "text/plain",
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", kind)
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}

/// Serves the admin endpoint on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = answer(&state, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// Binds `addr` (refusing anything but loopback: the admin endpoint is not for the network).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the admin endpoint binds loopback only",
        ));
    }
    TcpListener::bind(addr).await
}
