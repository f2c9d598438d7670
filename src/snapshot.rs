//! The waypoint's compiled config: only the services bound to this waypoint, ready for the request path.
//!
//! [`compile`] turns a [`Mesh`] (everything the manifests say) into a [`Snapshot`] holding, per bound Service
//! VIP:port, its [`RouteTable`] (rules in precedence order, built by [`crate::routes::compile`]) and, per
//! backend, the resolved endpoints with how to reach each one (HBONE with the expected workload identity, or
//! plain TCP) and the protocol the application speaks. A mesh of 10,000 services costs the snapshot only what
//! this waypoint's own services cost. The snapshot is immutable; a new one is swapped in whole.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mesh::config::{ConfigError, GatewayRef, Mesh, Service};
use mesh::identity::Identity;

use crate::routes::compile::{compile_tables, AppProtocol, RouteTable, RuleFilters};
use crate::routes::status::RouteStatus;

/// What this waypoint is: its Gateway and how endpoints are reached.
#[derive(Clone, Debug)]
pub struct WaypointSpec {
    pub gateway: GatewayRef,
    /// The HBONE port dialled on endpoints (15008).
    pub hbone_port: u16,
}

/// One compiled config generation.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Bound services by VIP:port (the CONNECT `:authority` a ztunnel sends).
    pub services: HashMap<SocketAddr, Arc<RouteTable>>,
    /// The status of every route for each parent, as this waypoint sees them (for the admin endpoint).
    pub statuses: Vec<RouteStatus>,
}

impl Snapshot {
    /// The service a CONNECT to `authority` is for, if this waypoint serves it.
    pub fn service(&self, authority: SocketAddr) -> Option<&Arc<RouteTable>> {
        self.services.get(&authority)
    }
}

/// One weighted backend of a rule.
#[derive(Debug)]
pub struct Backend {
    /// `namespace/name:port` of the backend Service.
    pub name: String,
    pub weight: u32,
    /// Empty when the reference did not resolve (that share of traffic gets 500) or has no endpoints (503).
    pub endpoints: Vec<Upstream>,
    /// Why the reference is invalid, when it is (its share of traffic is answered 500).
    pub invalid: Option<String>,
    /// What the application speaks: h2c when the Service port's `appProtocol` says so, and for GRPCRoutes.
    pub protocol: AppProtocol,
    /// Backend-level filters (applied after the rule's).
    pub filters: RuleFilters,
    next: AtomicUsize,
}

impl Clone for Backend {
    /// A copy with its own round-robin position (starting over).
    fn clone(&self) -> Backend {
        Backend {
            name: self.name.clone(),
            weight: self.weight,
            endpoints: self.endpoints.clone(),
            invalid: self.invalid.clone(),
            protocol: self.protocol,
            filters: self.filters.clone(),
            next: AtomicUsize::new(0),
        }
    }
}

impl Backend {
    /// A backend speaking HTTP/1.1, without filters (set `protocol` and `filters` after).
    pub fn new(
        name: String,
        weight: u32,
        endpoints: Vec<Upstream>,
        invalid: Option<String>,
    ) -> Backend {
        Backend {
            name,
            weight,
            endpoints,
            invalid,
            protocol: AppProtocol::Http1,
            filters: RuleFilters::default(),
            next: AtomicUsize::new(0),
        }
    }

    /// Round robin over the endpoints.
    pub fn next_endpoint(&self) -> Option<&Upstream> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.endpoints.get(i % self.endpoints.len())
    }
}

/// How to reach one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// `podIP:targetPort`.
    pub addr: SocketAddr,
    /// `Some` when the endpoint is in the mesh: dial HBONE there and expect that identity.
    pub hbone: Option<HboneUpstream>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HboneUpstream {
    pub hbone_addr: SocketAddr,
    pub identity: Identity,
}

/// Compiles what this waypoint serves. Unresolvable backend references are not errors (their share of traffic
/// is answered 500, as the Gateway API says), nor are values the waypoint does not support (the route is left
/// out and its status says why); malformed values that survived parsing are.
pub fn compile(mesh: &Mesh, spec: &WaypointSpec) -> Result<Snapshot, ConfigError> {
    compile_with_status(mesh, spec).map(|(snapshot, _)| snapshot)
}

/// [`compile`], also returning the status of every route for each parent (also kept in
/// [`Snapshot::statuses`]).
pub fn compile_with_status(
    mesh: &Mesh,
    spec: &WaypointSpec,
) -> Result<(Snapshot, Vec<RouteStatus>), ConfigError> {
    let (services, statuses) = compile_tables(mesh, spec)?;
    let snapshot = Snapshot {
        services,
        statuses: statuses.clone(),
    };
    Ok((snapshot, statuses))
}

/// The endpoints of `svc`'s port `port`, with how to reach each.
pub(crate) fn upstreams(
    mesh: &Mesh,
    spec: &WaypointSpec,
    svc: &Service,
    port: u16,
) -> Vec<Upstream> {
    mesh.endpoints(svc, port)
        .into_iter()
        .map(|ep| {
            let hbone = ep.hbone().then(|| {
                let w = ep
                    .workload
                    .as_ref()
                    .expect("hbone endpoints have a workload");
                HboneUpstream {
                    hbone_addr: SocketAddr::new(ep.addr.ip(), spec.hbone_port),
                    identity: w.identity(&mesh.trust_domain),
                }
            });
            Upstream {
                addr: ep.addr,
                hbone,
            }
        })
        .collect()
}
