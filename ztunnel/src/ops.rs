//! The node proxy's operations side: readiness (`/healthz/ready`, 15021), Prometheus (`/stats/prometheus` and
//! `/metrics`, 15020) and a loopback admin port (`/config_dump`, `/stats`, `/logging`; 15000). The servers
//! themselves are `mesh::ops`'; this module says what a ztunnel answers on them.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use http::StatusCode;
use mesh::config::Live;
use mesh::ops::{self, LogControl, OpsRequest, Readiness};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::stats::{Counters, Stats};
use crate::view::NodeView;
use mesh::hbone::Pool;

/// The operations side of a ztunnel ([`crate::Ztunnel::start_with`]); the default serves no ops port and binds
/// the inbound HBONE listeners with `SO_REUSEPORT`.
#[derive(Clone, Debug)]
pub struct Ops {
    /// `GET /healthz/ready`, when wanted.
    pub readiness: Option<SocketAddr>,
    /// Prometheus text, when wanted.
    pub stats: Option<SocketAddr>,
    /// The admin endpoint (loopback only), when wanted.
    pub admin: Option<SocketAddr>,
    /// Bind the inbound HBONE listeners with `SO_REUSEPORT` (a new ztunnel can take them while this one drains).
    pub reuse_port: bool,
    /// The process's log filter, for `/logging`.
    pub log: Option<LogControl>,
}

impl Default for Ops {
    fn default() -> Self {
        Ops {
            readiness: None,
            stats: None,
            admin: None,
            reuse_port: true,
            log: None,
        }
    }
}

/// What the ops servers read.
pub(crate) struct OpsState {
    pub live: Arc<Live<NodeView>>,
    pub counters: Arc<Counters>,
    pub pool: Pool,
    pub readiness: Readiness,
    pub log: Option<LogControl>,
}

/// The running ops servers: (what, address, task).
#[derive(Default)]
pub(crate) struct Servers(Vec<(&'static str, SocketAddr, JoinHandle<()>)>);

impl Servers {
    /// Binds and starts `what` on `addr` (loopback only when `loopback`).
    pub async fn start(
        &mut self,
        what: &'static str,
        addr: SocketAddr,
        loopback: bool,
        serve: impl FnOnce(tokio::net::TcpListener) -> JoinHandle<()>,
    ) -> anyhow::Result<()> {
        let listener = if loopback {
            ops::bind_loopback(addr).await
        } else {
            ops::bind(addr, false)
        }
        .with_context(|| format!("{what} listener on {addr}"))?;
        let bound = listener.local_addr()?;
        self.0.push((what, bound, serve(listener)));
        Ok(())
    }

    pub fn addr(&self, what: &str) -> Option<SocketAddr> {
        self.0.iter().find(|(w, ..)| *w == what).map(|(_, a, _)| *a)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for (_, _, task) in &self.0 {
            task.abort();
        }
    }
}

/// Starts the readiness server first (so a probe sees 503 while the rest loads).
pub(crate) async fn start_readiness(ops: &Ops, readiness: &Readiness) -> anyhow::Result<Servers> {
    let mut servers = Servers::default();
    if let Some(addr) = ops.readiness {
        let r = readiness.clone();
        servers
            .start("readiness", addr, false, |l| ops::serve_readiness(l, r))
            .await?;
    }
    Ok(servers)
}

/// Starts the stats and admin servers.
pub(crate) async fn start_rest(
    servers: &mut Servers,
    ops: &Ops,
    state: Arc<OpsState>,
) -> anyhow::Result<()> {
    if let Some(addr) = ops.stats {
        let s = state.clone();
        let render: ops::Render = Arc::new(move |out: &mut String| render(&s, out));
        servers
            .start("stats", addr, false, |l| ops::serve_metrics(l, render))
            .await?;
    }
    if let Some(addr) = ops.admin {
        let s = state.clone();
        servers
            .start("admin", addr, true, |l| {
                ops::serve(l, Arc::new(move |req: &OpsRequest| admin(&s, req)))
            })
            .await?;
    }
    Ok(())
}

fn admin(state: &OpsState, req: &OpsRequest) -> http::Response<ops::Body> {
    match req.path.as_str() {
        "/config_dump" => ops::respond(StatusCode::OK, "application/json", config_dump(state)),
        "/stats" | "/stats/prometheus" => {
            let mut out = String::with_capacity(2048);
            render(state, &mut out);
            ops::respond(StatusCode::OK, ops::PROMETHEUS_TEXT, out)
        }
        "/healthz/ready" => state.readiness.answer(),
        "/logging" => match &state.log {
            Some(log) => log.answer(req),
            None => ops::text(
                StatusCode::NOT_IMPLEMENTED,
                "this process did not install a reloadable log filter\n".into(),
            ),
        },
        _ => ops::text(
            StatusCode::NOT_FOUND,
            "try /config_dump, /stats, /logging, /healthz/ready\n".into(),
        ),
    }
}

#[derive(Serialize)]
struct Dump {
    generation: u64,
    /// The last rejected change (text), until a good one replaces it.
    last_error: Option<String>,
    local_workloads: Vec<String>,
    /// Node-tier AuthorizationPolicy: what each local workload enforces, and what is not enforced as written.
    authorization: crate::policy::Summary,
}

fn config_dump(state: &OpsState) -> String {
    let view = state.live.load();
    let dump = Dump {
        generation: state.live.generation(),
        last_error: state.live.last_error().map(|e| e.to_string()),
        local_workloads: view
            .local_workloads()
            .map(|w| format!("{}/{} {}", w.namespace, w.name, w.ip))
            .collect(),
        authorization: view.authz().summary(),
    };
    serde_json::to_string_pretty(&dump).unwrap_or_default()
}

/// The ztunnel's counters in the Prometheus text format.
fn render(state: &OpsState, out: &mut String) {
    let s: Stats = state.counters.snapshot(state.pool.stats());
    let _ = writeln!(out, "# TYPE ztunnel_outbound_connections_total counter");
    for (kind, n) in [
        ("waypoint", s.outbound_waypoint),
        ("hbone", s.outbound_hbone),
        ("passthrough", s.outbound_passthrough),
    ] {
        let _ = writeln!(
            out,
            "ztunnel_outbound_connections_total{{kind=\"{kind}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# TYPE ztunnel_outbound_failed_total counter\nztunnel_outbound_failed_total {}",
        s.outbound_failed
    );
    let _ = writeln!(
        out,
        "# TYPE ztunnel_inbound_accepted_total counter\nztunnel_inbound_accepted_total {}",
        s.inbound_accepted
    );
    let _ = writeln!(out, "# TYPE ztunnel_inbound_refused_total counter");
    for (status, n) in &s.inbound_refused {
        let _ = writeln!(
            out,
            "ztunnel_inbound_refused_total{{status=\"{status}\"}} {n}"
        );
    }
    let _ = writeln!(out, "# TYPE ztunnel_inbound_denied_total counter");
    for (policy, n) in &s.inbound_denied {
        let _ = writeln!(
            out,
            "ztunnel_inbound_denied_total{{policy=\"{policy}\"}} {n}"
        );
    }
    let p = s.pool;
    let _ = writeln!(
        out,
        "# TYPE ztunnel_hbone_connections_opened_total counter\nztunnel_hbone_connections_opened_total {}",
        p.connections_opened
    );
    let _ = writeln!(
        out,
        "# TYPE ztunnel_hbone_streams_opened_total counter\nztunnel_hbone_streams_opened_total {}",
        p.streams_opened
    );
    let _ = writeln!(
        out,
        "# TYPE ztunnel_hbone_connections gauge\nztunnel_hbone_connections {}",
        p.connections_live
    );
    let _ = writeln!(
        out,
        "# TYPE ztunnel_config_generation gauge\nztunnel_config_generation {}",
        state.live.generation()
    );
    let rejected = u8::from(state.live.last_error().is_some());
    let _ = writeln!(
        out,
        "# TYPE ztunnel_config_last_change_rejected gauge\nztunnel_config_last_change_rejected {rejected}"
    );
}
