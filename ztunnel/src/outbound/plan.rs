//! Outbound planning: a pure function from (mesh snapshot, source workload, destination) to where the bytes go
//! and how — no sockets, so every decision is table-tested.
//!
//! Stages of [`plan_outbound`]:
//! 1. **resolve** a hostname destination to its Service VIP (`Mesh::service_by_hostname`);
//! 2. **guard** against a self-call (a destination that is one of this ztunnel's own listeners, or loopback on
//!    a well-known ztunnel port);
//! 3. **route**: a Service VIP:port goes to the service's waypoint (unless the source *is* that waypoint), else
//!    to one of its endpoints (HBONE when the endpoint is ambient, plain TCP otherwise); an ambient pod IP goes
//!    straight to its HBONE port; anything else passes through as plain TCP.
//!
//! Workload-scoped waypoints (`istio.io/use-waypoint` on a Pod) are not modelled yet: a pod dialled by IP is
//! reached directly.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderValue};
use mesh::config::{Service, ServicePort, Workload};
use mesh::identity::Identity;

use crate::view::NodeView;

/// Ports a ztunnel (or waypoint) listens on; loopback on one of these is a self-call.
pub const ZTUNNEL_PORTS: [u16; 7] = [15000, 15001, 15006, 15008, 15020, 15021, 15080];

/// Where a client asked to go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Addr(SocketAddr),
    /// A SOCKS5 domain name (a Service hostname) and port.
    Host {
        name: String,
        port: u16,
    },
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Addr(a) => write!(f, "{a}"),
            Destination::Host { name, port } => write!(f, "{name}:{port}"),
        }
    }
}

/// One outbound connection to plan.
#[derive(Clone, Debug)]
pub struct OutboundRequest<'a> {
    /// The workload whose identity the connection carries.
    pub source: &'a Workload,
    /// The client's address (for `forwarded: for=`).
    pub client: SocketAddr,
    pub dest: &'a Destination,
    /// Chooses the endpoint (`pick % endpoints.len()`): random in production, fixed in tests.
    pub pick: usize,
}

/// Which path the plan takes (also the stats bucket).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundKind {
    /// HBONE to the service's waypoint.
    Waypoint,
    /// HBONE straight to the destination pod's ztunnel.
    DirectHbone,
    /// Plain TCP: not in the mesh (unknown address, or a non-ambient service endpoint).
    Passthrough,
}

/// How to reach the upstream.
#[derive(Clone, Debug, PartialEq)]
pub enum Upstream {
    Hbone {
        /// The outer connection's address (`ip:15008`, or the waypoint's HBONE listener).
        hbone_addr: SocketAddr,
        /// The CONNECT `:authority`.
        authority: SocketAddr,
        /// The identity the server must present.
        expected: Identity,
        /// `forwarded` and `baggage`.
        headers: HeaderMap,
    },
    Tcp(SocketAddr),
}

/// The decision for one outbound connection.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboundPlan {
    pub kind: OutboundKind,
    pub upstream: Upstream,
    /// The Service hostname, when a Service was dialled.
    pub service: Option<String>,
}

/// Why a connection cannot be planned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{0} is this ztunnel's own listener (self-call)")]
    SelfCall(SocketAddr),
    #[error("unknown host {0:?}")]
    UnknownHost(String),
    #[error("service {0} has no cluster IP")]
    NoVip(String),
    #[error("service {service} has no port {port}")]
    NoServicePort { service: String, port: u16 },
    #[error("service {service} port {port} has no endpoints")]
    NoEndpoints { service: String, port: u16 },
}

/// Plans one outbound connection (see the module doc for the stages). `own` are this ztunnel's listener
/// addresses.
pub fn plan_outbound(
    view: &NodeView,
    own: &[SocketAddr],
    req: &OutboundRequest<'_>,
) -> Result<OutboundPlan, PlanError> {
    let (addr, service) = resolve(view, req.dest)?;
    guard_self_call(own, addr)?;
    let mesh = view.mesh();
    if let Some((svc, port)) = mesh.service_by_vip(addr) {
        return plan_service(view, req, addr, svc, port);
    }
    if let Some(svc) = service {
        return Err(PlanError::NoServicePort {
            service: svc.hostname(),
            port: addr.port(),
        });
    }
    match mesh.workload_by_ip(addr.ip()) {
        Some(w) if w.ambient => Ok(OutboundPlan {
            kind: OutboundKind::DirectHbone,
            upstream: Upstream::Hbone {
                hbone_addr: SocketAddr::new(addr.ip(), view.hbone_port()),
                authority: addr,
                expected: w.identity(view.trust_domain()),
                headers: connect_headers(req.source, req.client, None),
            },
            service: None,
        }),
        _ => Ok(OutboundPlan {
            kind: OutboundKind::Passthrough,
            upstream: Upstream::Tcp(addr),
            service: None,
        }),
    }
}

/// Stage 1: a hostname becomes its Service's VIP and the requested port.
fn resolve<'v>(
    view: &'v NodeView,
    dest: &Destination,
) -> Result<(SocketAddr, Option<&'v Service>), PlanError> {
    match dest {
        Destination::Addr(a) => Ok((*a, None)),
        Destination::Host { name, port } => {
            if let Ok(ip) = name.parse::<IpAddr>() {
                return Ok((SocketAddr::new(ip, *port), None));
            }
            let host = name.trim_end_matches('.');
            let svc = view
                .mesh()
                .service_by_hostname(host)
                .ok_or_else(|| PlanError::UnknownHost(name.clone()))?;
            let vip = svc.vip.ok_or_else(|| PlanError::NoVip(svc.hostname()))?;
            Ok((SocketAddr::new(vip, *port), Some(svc)))
        }
    }
}

/// Stage 2: refuse connecting to ourselves.
fn guard_self_call(own: &[SocketAddr], dest: SocketAddr) -> Result<(), PlanError> {
    let ours = own.iter().any(|l| {
        l.port() == dest.port()
            && (l.ip() == dest.ip()
                || (l.ip().is_unspecified()
                    && (dest.ip().is_loopback() || dest.ip().is_unspecified())))
    });
    let well_known = dest.ip().is_loopback() && ZTUNNEL_PORTS.contains(&dest.port());
    if ours || well_known || dest.ip().is_unspecified() {
        return Err(PlanError::SelfCall(dest));
    }
    Ok(())
}

/// Stage 3 for a Service VIP: its waypoint, else one of its endpoints.
fn plan_service(
    view: &NodeView,
    req: &OutboundRequest<'_>,
    vip: SocketAddr,
    svc: &Service,
    port: &ServicePort,
) -> Result<OutboundPlan, PlanError> {
    let mesh = view.mesh();
    let td = view.trust_domain();
    let host = svc.hostname();
    let headers = connect_headers(req.source, req.client, Some(&host));
    let waypoint = svc.waypoint.as_ref().and_then(|r| mesh.waypoint(r));
    if let Some((wp, wp_addr)) = waypoint.and_then(|wp| wp.addr.map(|a| (wp, a))) {
        let wp_id = wp.identity(td);
        let source_is_waypoint = req.source.identity(td) == wp_id || req.source.ip == wp_addr.ip();
        if !source_is_waypoint {
            return Ok(OutboundPlan {
                kind: OutboundKind::Waypoint,
                upstream: Upstream::Hbone {
                    hbone_addr: wp_addr,
                    authority: vip,
                    expected: wp_id,
                    headers,
                },
                service: Some(host),
            });
        }
    }
    let endpoints = mesh.endpoints(svc, port.port);
    if endpoints.is_empty() {
        return Err(PlanError::NoEndpoints {
            service: host,
            port: port.port,
        });
    }
    let ep = &endpoints[req.pick % endpoints.len()];
    let upstream = match ep.workload.as_ref().filter(|w| w.ambient) {
        Some(w) => Upstream::Hbone {
            hbone_addr: SocketAddr::new(ep.addr.ip(), view.hbone_port()),
            authority: ep.addr,
            expected: w.identity(td),
            headers,
        },
        None => Upstream::Tcp(ep.addr),
    };
    let kind = match upstream {
        Upstream::Hbone { .. } => OutboundKind::DirectHbone,
        Upstream::Tcp(_) => OutboundKind::Passthrough,
    };
    Ok(OutboundPlan {
        kind,
        upstream,
        service: Some(host),
    })
}

/// The CONNECT headers a ztunnel sends: `forwarded: for="<client>"[;host=<service hostname>]` and `baggage`
/// describing the source workload (`k8s.namespace.name`, `k8s.pod.name`, `service.name`/`service.version` from
/// the `app`/`version` labels when present).
pub fn connect_headers(
    source: &Workload,
    client: SocketAddr,
    service_host: Option<&str>,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut forwarded = format!("for=\"{client}\"");
    if let Some(host) = service_host {
        forwarded.push_str(";host=");
        forwarded.push_str(host);
    }
    insert(&mut headers, "forwarded", forwarded);
    let mut baggage = vec![
        format!("k8s.namespace.name={}", source.namespace),
        format!("k8s.pod.name={}", source.name),
    ];
    if let Some(app) = source.labels.get("app") {
        baggage.push(format!("service.name={app}"));
    }
    if let Some(version) = source.labels.get("version") {
        baggage.push(format!("service.version={version}"));
    }
    insert(&mut headers, "baggage", baggage.join(","));
    headers
}

/// A W3C `traceparent` for a new trace: version 00, the given (non-zero) ids, flags 00 (not sampled).
pub fn traceparent(trace_id: u128, span_id: u64) -> String {
    format!("00-{trace_id:032x}-{span_id:016x}-00")
}

/// Inserts a header, skipping a value that is not valid header text (label values are free-form).
fn insert(headers: &mut HeaderMap, name: &'static str, value: String) {
    match HeaderValue::try_from(value) {
        Ok(v) => {
            headers.insert(name, v);
        }
        Err(e) => tracing::debug!(name, "header value skipped: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;

    fn sa(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), port)
    }

    fn id(ns: &str, sa: &str) -> Identity {
        Identity::new("cluster.local", ns, sa)
    }

    fn host(name: &str, port: u16) -> Destination {
        Destination::Host {
            name: name.into(),
            port,
        }
    }

    /// Plans from `source` (by name) with the node-a view, own listener 127.0.0.1:15080.
    fn plan(source: &str, dest: Destination) -> Result<OutboundPlan, PlanError> {
        let view = testdata::view("node-a");
        let src = view
            .mesh()
            .workloads
            .iter()
            .find(|w| w.name == source)
            .unwrap()
            .clone();
        let own = [sa("127.0.0.1", 15080), sa("0.0.0.0", 15001)];
        let req = OutboundRequest {
            source: &src,
            client: sa("10.0.0.2", 40000),
            dest: &dest,
            pick: 0,
        };
        plan_outbound(&view, &own, &req)
    }

    /// (kind, hbone addr or tcp addr, authority, expected identity, service)
    type Row = (
        OutboundKind,
        SocketAddr,
        Option<SocketAddr>,
        Option<Identity>,
        Option<String>,
    );

    fn summary(p: &OutboundPlan) -> Row {
        let service = p.service.clone();
        match &p.upstream {
            Upstream::Hbone {
                hbone_addr,
                authority,
                expected,
                ..
            } => (
                p.kind,
                *hbone_addr,
                Some(*authority),
                Some(expected.clone()),
                service,
            ),
            Upstream::Tcp(a) => (p.kind, *a, None, None, service),
        }
    }

    #[test]
    fn plans_table() {
        use OutboundKind::*;
        let wp = Some(id("demo", "waypoint"));
        let app = Some(id("demo", "app"));
        let svc = |h: &str| Some(h.to_string());
        let echo = svc("echo.demo.svc.cluster.local");
        let plain = svc("plain.demo.svc.cluster.local");
        let cases: Vec<(&str, &str, Destination, Row)> = vec![
            (
                "service with waypoint, by VIP",
                "client",
                Destination::Addr(sa("10.96.0.10", 80)),
                (
                    Waypoint,
                    sa("10.0.9.9", 15008),
                    Some(sa("10.96.0.10", 80)),
                    wp.clone(),
                    echo.clone(),
                ),
            ),
            (
                "service with waypoint, by hostname",
                "client",
                host("echo.demo.svc.cluster.local", 80),
                (
                    Waypoint,
                    sa("10.0.9.9", 15008),
                    Some(sa("10.96.0.10", 80)),
                    wp.clone(),
                    echo.clone(),
                ),
            ),
            (
                "short hostname",
                "client",
                host("echo.demo", 80),
                (
                    Waypoint,
                    sa("10.0.9.9", 15008),
                    Some(sa("10.96.0.10", 80)),
                    wp.clone(),
                    echo.clone(),
                ),
            ),
            (
                "the waypoint itself goes to the endpoint (named targetPort resolved)",
                "wp-pod",
                Destination::Addr(sa("10.96.0.10", 80)),
                (
                    DirectHbone,
                    sa("10.0.1.3", 15008),
                    Some(sa("10.0.1.3", 8080)),
                    app.clone(),
                    echo.clone(),
                ),
            ),
            (
                "service without waypoint: direct HBONE to the endpoint",
                "client",
                Destination::Addr(sa("10.96.0.11", 80)),
                (
                    DirectHbone,
                    sa("10.0.1.3", 15008),
                    Some(sa("10.0.1.3", 8080)),
                    app.clone(),
                    plain,
                ),
            ),
            (
                "waypoint without an address: endpoint",
                "client",
                Destination::Addr(sa("10.96.0.13", 80)),
                (
                    DirectHbone,
                    sa("10.0.1.3", 15008),
                    Some(sa("10.0.1.3", 8080)),
                    app.clone(),
                    svc("lost.demo.svc.cluster.local"),
                ),
            ),
            (
                "ambient pod IP: direct HBONE, authority as dialled",
                "client",
                Destination::Addr(sa("10.0.1.3", 9999)),
                (
                    DirectHbone,
                    sa("10.0.1.3", 15008),
                    Some(sa("10.0.1.3", 9999)),
                    app.clone(),
                    None,
                ),
            ),
            (
                "non-ambient service endpoint: plain TCP",
                "client",
                Destination::Addr(sa("10.96.0.12", 5432)),
                (
                    Passthrough,
                    sa("10.0.2.4", 5432),
                    None,
                    None,
                    svc("db.legacy.svc.cluster.local"),
                ),
            ),
            (
                "non-ambient pod IP: passthrough",
                "client",
                Destination::Addr(sa("10.0.2.4", 5432)),
                (Passthrough, sa("10.0.2.4", 5432), None, None, None),
            ),
            (
                "unknown address: passthrough",
                "client",
                Destination::Addr(sa("93.184.216.34", 443)),
                (Passthrough, sa("93.184.216.34", 443), None, None, None),
            ),
            (
                "IP literal as a SOCKS hostname",
                "client",
                host("93.184.216.34", 443),
                (Passthrough, sa("93.184.216.34", 443), None, None, None),
            ),
        ];
        for (name, source, dest, want) in cases {
            let got = plan(source, dest).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(summary(&got), want, "{name}");
        }
    }

    #[test]
    fn refusals_table() {
        let cases: Vec<(&str, Destination, PlanError)> = vec![
            (
                "own SOCKS listener",
                Destination::Addr(sa("127.0.0.1", 15080)),
                PlanError::SelfCall(sa("127.0.0.1", 15080)),
            ),
            (
                "wildcard listener via loopback",
                Destination::Addr(sa("127.0.0.2", 15001)),
                PlanError::SelfCall(sa("127.0.0.2", 15001)),
            ),
            (
                "loopback HBONE port",
                Destination::Addr(sa("127.0.0.1", 15008)),
                PlanError::SelfCall(sa("127.0.0.1", 15008)),
            ),
            (
                "unknown hostname",
                host("nope.demo.svc.cluster.local", 80),
                PlanError::UnknownHost("nope.demo.svc.cluster.local".into()),
            ),
            (
                "service port not exposed",
                host("echo.demo.svc.cluster.local", 81),
                PlanError::NoServicePort {
                    service: "echo.demo.svc.cluster.local".into(),
                    port: 81,
                },
            ),
            (
                "no endpoints",
                Destination::Addr(sa("10.96.0.14", 80)),
                PlanError::NoEndpoints {
                    service: "empty.demo.svc.cluster.local".into(),
                    port: 80,
                },
            ),
        ];
        for (name, dest, want) in cases {
            assert_eq!(plan("client", dest), Err(want), "{name}");
        }
    }

    #[test]
    fn headers_name_client_service_and_source() {
        let p = plan("client", Destination::Addr(sa("10.96.0.10", 80))).unwrap();
        let Upstream::Hbone { headers, .. } = &p.upstream else {
            panic!("{p:?}")
        };
        assert_eq!(
            headers["forwarded"],
            "for=\"10.0.0.2:40000\";host=echo.demo.svc.cluster.local"
        );
        assert_eq!(
            headers["baggage"],
            "k8s.namespace.name=demo,k8s.pod.name=client,service.name=client,service.version=v1"
        );
        let p = plan("client", Destination::Addr(sa("10.0.1.3", 8080))).unwrap();
        let Upstream::Hbone { headers, .. } = &p.upstream else {
            panic!("{p:?}")
        };
        assert_eq!(headers["forwarded"], "for=\"10.0.0.2:40000\"");
    }

    #[test]
    fn traceparent_is_w3c_shaped() {
        assert_eq!(
            traceparent(0xabc, 0x12),
            "00-00000000000000000000000000000abc-0000000000000012-00"
        );
    }

    #[test]
    fn ipv6_client_is_bracketed() {
        let view = testdata::view("node-a");
        let src = view
            .mesh()
            .workloads
            .iter()
            .find(|w| w.name == "client")
            .unwrap();
        let h = connect_headers(src, "[fd00::1]:5000".parse().unwrap(), None);
        assert_eq!(h["forwarded"], "for=\"[fd00::1]:5000\"");
    }
}
