//! The admin endpoint (localhost only; port 15000 by default): what the running waypoint is doing.
//!
//! - `GET /config_dump`: the active snapshot's generation, the last rejected change, and per service its rules
//!   and backends with weights and endpoints.
//! - `GET /routes`: route status per route and parent of the active snapshot, as `waypoint check` prints it.
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

use crate::snapshot::Snapshot;

/// What the admin endpoint reads.
pub struct AdminState {
    pub live: Arc<Live<Snapshot>>,
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
