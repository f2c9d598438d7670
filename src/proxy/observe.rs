//! Stage "observe": a finished request becomes one [`RequestRecord`] for the Istio metrics, the access log and
//! the trace span ([`crate::telemetry`]).
//!
//! Label sets are interned ahead of the request path: the destination's per endpoint when a snapshot is
//! compiled ([`Destinations`]), the caller's once per downstream connection (cached on [`ConnInfo`]). Recording
//! then takes no lock and builds no label string.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use mesh::config::Mesh;
use pingora::proxy::Session;

use super::RequestCtx;
use crate::downstream::ConnInfo;
use crate::routes::compile::RouteTable;
use crate::telemetry::{
    Destination, PeerInfo, RequestProtocol, RequestRecord, ResponseFlags, ServiceInfo, Source,
    Telemetry,
};

/// The destinations of one snapshot, interned: per backend (`namespace/name:port`) and endpoint, plus a
/// service-only one per served service (`namespace/name`) for requests answered before an endpoint was chosen.
#[derive(Debug, Default)]
pub struct Destinations {
    endpoints: HashMap<String, HashMap<SocketAddr, Destination>>,
    services: HashMap<String, Destination>,
}

impl Destinations {
    /// Interns the destinations of `tables` (the snapshot's services) with `telemetry`.
    pub fn compile<'a>(
        mesh: &Mesh,
        tables: impl IntoIterator<Item = &'a Arc<RouteTable>>,
        telemetry: &Telemetry,
    ) -> Destinations {
        let mut out = Destinations::default();
        for table in tables {
            mesh::config::background::checkpoint();
            if !out.services.contains_key(&table.name) {
                let (ns, name) = table.name.split_once('/').unwrap_or(("", &table.name));
                let service = ServiceInfo {
                    host: &table.hostname,
                    name,
                    namespace: ns,
                };
                let d = telemetry.destination(&PeerInfo::default(), &service);
                out.services.insert(table.name.clone(), d);
            }
            for backend in table.rules.iter().flat_map(|r| &r.backends) {
                if out.endpoints.contains_key(&backend.name) {
                    continue;
                }
                let svc = backend
                    .name
                    .rsplit_once(':')
                    .map_or(&*backend.name, |(s, _)| s);
                let (ns, name) = svc.split_once('/').unwrap_or(("", svc));
                let host = format!("{name}.{ns}.svc.{}", mesh.trust_domain);
                let service = ServiceInfo {
                    host: &host,
                    name,
                    namespace: ns,
                };
                let mut by_addr = HashMap::new();
                for up in &backend.endpoints {
                    let principal = up
                        .hbone
                        .as_ref()
                        .map(|h| h.identity.to_string())
                        .unwrap_or_default();
                    let d = match mesh.workload_by_ip(up.addr.ip()) {
                        Some(w) => telemetry.destination(
                            &PeerInfo::from_pod_labels(
                                &w.name,
                                &w.namespace,
                                &principal,
                                &w.labels,
                            ),
                            &service,
                        ),
                        None => telemetry.destination(
                            &PeerInfo {
                                principal: &principal,
                                ..PeerInfo::default()
                            },
                            &service,
                        ),
                    };
                    by_addr.insert(up.addr, d);
                }
                out.endpoints.insert(backend.name.clone(), by_addr);
            }
        }
        out
    }

    fn get(
        &self,
        backend: Option<&str>,
        endpoint: Option<SocketAddr>,
        service: &str,
    ) -> Option<&Destination> {
        backend
            .zip(endpoint)
            .and_then(|(b, e)| self.endpoints.get(b)?.get(&e))
            .or_else(|| self.services.get(service))
    }
}

/// The proxy's telemetry: metrics and access log, labels for unknown peers, the tracer when tracing is on.
pub struct Observer {
    pub telemetry: Arc<Telemetry>,
    pub unknown: (Source, Destination),
    pub tracer: Option<crate::telemetry::Tracer>,
}

impl Observer {
    pub fn new(telemetry: Arc<Telemetry>, tracer: Option<crate::telemetry::Tracer>) -> Observer {
        let unknown = (
            telemetry.source(&PeerInfo::default()),
            telemetry.destination(&PeerInfo::default(), &ServiceInfo::default()),
        );
        Observer {
            telemetry,
            unknown,
            tracer,
        }
    }
}

/// The caller's labels, interned once per downstream connection.
pub fn source<'c>(telemetry: &Telemetry, conn: &'c ConnInfo) -> &'c Source {
    conn.telemetry_source.get_or_init(|| {
        let principal = conn.peer_identity.to_string();
        telemetry.source(&PeerInfo {
            namespace: &conn.peer_identity.namespace,
            principal: &principal,
            ..PeerInfo::default()
        })
    })
}

/// Records the finished request (metrics, access log line, span end).
pub fn record(
    telemetry: &Telemetry,
    unknown: &(Source, Destination),
    session: &Session,
    ctx: &mut RequestCtx,
) {
    let source = match ctx.conn.as_deref() {
        Some(conn) => source(telemetry, conn),
        None => &unknown.0,
    };
    let chosen = ctx.chosen.as_ref();
    let endpoint = ctx.current.as_ref().map(|(a, _)| *a);
    let service = chosen.map_or("", |c| c.table.name.as_str());
    let destination = ctx
        .snapshot
        .destinations
        .get(chosen.map(|c| c.backend().name.as_str()), endpoint, service)
        .or_else(|| {
            let conn = ctx.conn.as_deref()?;
            let table = ctx.snapshot.service(conn.destination)?;
            ctx.snapshot.destinations.get(None, None, &table.name)
        })
        .unwrap_or(&unknown.1);
    let (start_time, started) = ctx.started.unwrap_or((SystemTime::now(), Instant::now()));
    let req = session.req_header();
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let mut r = RequestRecord::new(source, destination, start_time);
    r.duration = started.elapsed();
    r.method = req.method.as_str();
    r.path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    r.version = req.version;
    r.protocol = if header("content-type").starts_with("application/grpc") {
        RequestProtocol::Grpc
    } else {
        RequestProtocol::Http
    };
    r.status = session.response_written().map_or(0, |h| h.status.as_u16());
    if let Some(flags) = &ctx.flags {
        r.flags = ResponseFlags::parse(flags).unwrap_or(ResponseFlags::NONE);
    }
    r.response_code_details = match (&ctx.flags, r.status) {
        (None, s) if s > 0 => "via_upstream",
        _ => "",
    };
    r.bytes_received = session.body_bytes_read() as u64;
    r.bytes_sent = session.body_bytes_sent() as u64;
    r.user_agent = header("user-agent");
    r.request_id = header("x-request-id");
    r.x_forwarded_for = header("x-forwarded-for");
    r.authority = req
        .uri
        .authority()
        .map(|a| a.as_str())
        .unwrap_or_else(|| header("host"));
    r.upstream_host = endpoint;
    r.upstream_cluster = chosen.map_or("", |c| c.backend().name.as_str());
    r.downstream_local_address = ctx.conn.as_ref().map(|c| c.destination);
    r.downstream_remote_address = ctx.conn.as_ref().map(|c| c.peer_addr);
    r.route_name = service;
    r.authz_policy = ctx
        .authorized
        .as_ref()
        .and_then(|a| a.policy.as_deref())
        .unwrap_or("");
    r.tries = ctx.attempts.tries;
    telemetry.record(&r);
    if let Some(span) = ctx.span.take() {
        span.end(&r);
    }
}
