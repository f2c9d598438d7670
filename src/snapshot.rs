//! The waypoint's compiled config: only the services bound to this waypoint, ready for the request path.
//!
//! [`compile`] turns a [`Mesh`] (everything the manifests say) into a [`Snapshot`] holding, per bound Service
//! VIP:port, its [`RouteTable`] (rules in precedence order, built by [`crate::routes::compile`]) and, per
//! backend, the resolved endpoints with how to reach each one (HBONE with the expected workload identity, or
//! plain TCP) and the protocol the application speaks; with the Service port's `DestinationRule` policy and
//! handles to the state that outlives snapshots (breaker, health, in-flight counters:
//! [`crate::resilience::ResilienceState`]), so a request takes no lock. A mesh of 10,000 services costs the
//! snapshot only what this waypoint's own services cost. The snapshot is immutable; a new one is swapped in whole.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use mesh::config::{background, ConfigError, GatewayRef, Mesh, Service};
use mesh::identity::Identity;

use crate::resilience::balance::{self, EndpointLoad, PickKey, PickOutcome, Ring};
use crate::resilience::breaker::ServiceBreaker;
use crate::resilience::outlier::{EndpointHealth, ServiceHealth};
use crate::resilience::policy::TrafficPolicy;
use crate::resilience::ResilienceState;
use crate::routes::compile::{
    compile_tables_with_state, AppProtocol, RouteTable, RuleFilters, Scope,
};
use crate::routes::status::RouteStatus;
use crate::security::{self, ServiceSecurity};

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
    /// The status of each route with a parent this waypoint serves (a Service bound to it, or its Gateway), for
    /// each of the route's parents, as this waypoint sees them (the admin endpoint, status write-back). Routes
    /// of other waypoints are left out: [`crate::routes::status::statuses`] judges the whole mesh.
    pub statuses: Vec<RouteStatus>,
    /// The security of each bound service, by VIP:port as `services` ([`crate::security`]).
    pub security: HashMap<SocketAddr, Arc<ServiceSecurity>>,
    /// Policies near this waypoint that it does not enforce, or not as written.
    pub policy_diagnostics: Vec<authz::policy::Diagnostic>,
    /// The destinations' telemetry labels, interned (empty without telemetry).
    pub destinations: crate::proxy::observe::Destinations,
}

/// Frees the tables one at a time, yielding between them when on a config lane (the reaper frees replaced
/// snapshots there: [`mesh::config::background::drain`]).
impl Drop for Snapshot {
    fn drop(&mut self) {
        background::drain(&mut self.services);
        background::drain(&mut self.security);
        background::drain(&mut self.statuses);
    }
}

impl Snapshot {
    /// The service a CONNECT to `authority` is for, if this waypoint serves it.
    pub fn service(&self, authority: SocketAddr) -> Option<&Arc<RouteTable>> {
        self.services.get(&authority)
    }
    /// The security of the service at `authority` (`None`: not served).
    pub fn security(&self, authority: SocketAddr) -> Option<&Arc<ServiceSecurity>> {
        self.security.get(&authority)
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
    /// The Service port's `DestinationRule.trafficPolicy` (defaults without one).
    pub policy: Arc<TrafficPolicy>,
    /// The Service's circuit breaker (`ResilienceState::breakers`, kept across snapshots).
    pub breaker: Arc<ServiceBreaker>,
    /// The Service's outlier-detection bookkeeping (`ResilienceState::outliers`, kept across snapshots).
    pub health: Arc<ServiceHealth>,
    /// The round-robin position.
    pub(crate) next: AtomicUsize,
    /// The consistent-hash ring of `endpoints`, built at compile time for a hashing policy, else on first use.
    ring: OnceLock<Arc<Ring>>,
}

impl Clone for Backend {
    /// A copy with its own round-robin position (starting over), sharing the policy, state handles and ring.
    fn clone(&self) -> Backend {
        Backend {
            name: self.name.clone(),
            weight: self.weight,
            endpoints: self.endpoints.clone(),
            invalid: self.invalid.clone(),
            protocol: self.protocol,
            filters: self.filters.clone(),
            policy: self.policy.clone(),
            breaker: self.breaker.clone(),
            health: self.health.clone(),
            next: AtomicUsize::new(0),
            ring: self.ring.clone(),
        }
    }
}

impl Backend {
    /// A backend speaking HTTP/1.1, without filters, with the default policy and state of its own (set
    /// `protocol`, `filters`, `policy`, ... after).
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
            policy: Arc::default(),
            breaker: Arc::default(),
            health: Arc::default(),
            next: AtomicUsize::new(0),
            ring: OnceLock::new(),
        }
    }

    /// Chooses the endpoint for one try by the backend's load balancer, skipping ejected endpoints (unless all
    /// are) and `key.exclude` (unless it is the only candidate); see [`crate::resilience::balance`]. Hold the
    /// outcome's `in_flight` guard for the try and send its `set_cookie`, if any, on the response. `None` only
    /// when there is no endpoint.
    pub fn pick(&self, key: &PickKey<'_>, now: Instant) -> Option<PickOutcome<'_>> {
        balance::pick(self, key, now)
    }

    /// Round robin over the endpoints, ignoring policy and health (superseded by [`Backend::pick`]).
    pub fn next_endpoint(&self) -> Option<&Upstream> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.endpoints.get(i % self.endpoints.len())
    }

    /// The consistent-hash ring of the endpoints (built once).
    pub fn ring(&self) -> &Arc<Ring> {
        self.ring
            .get_or_init(|| Arc::new(Ring::new(self.endpoints.iter().map(|u| u.addr))))
    }

    /// Sets the ring (shared between backends of one Service port); it must be `endpoints`' ring.
    pub(crate) fn set_ring(&mut self, ring: Arc<Ring>) {
        self.ring = OnceLock::from(ring);
    }
}

/// How to reach one endpoint, and its state handles.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// `podIP:targetPort`.
    pub addr: SocketAddr,
    /// `Some` when the endpoint is in the mesh: dial HBONE there and expect that identity.
    pub hbone: Option<HboneUpstream>,
    /// Its outlier-detection state (ejected or not), kept across snapshots.
    pub health: Arc<EndpointHealth>,
    /// Its requests in flight (`LEAST_REQUEST`), kept across snapshots.
    pub load: Arc<EndpointLoad>,
    /// What every try to it shares (its Pingora peer, its direct-path target), built on first use
    /// ([`crate::upstream::peer`]).
    pub peer: Arc<crate::upstream::PeerTemplate>,
}

impl Upstream {
    /// An endpoint with state of its own (not registered in a [`ResilienceState`]).
    pub fn new(addr: SocketAddr, hbone: Option<HboneUpstream>) -> Upstream {
        Upstream {
            addr,
            hbone,
            health: Arc::default(),
            load: Arc::default(),
            peer: Arc::default(),
        }
    }
}

impl PartialEq for Upstream {
    /// Where and how it is reached (not its state).
    fn eq(&self, other: &Upstream) -> bool {
        self.addr == other.addr && self.hbone == other.hbone
    }
}

impl Eq for Upstream {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HboneUpstream {
    pub hbone_addr: SocketAddr,
    pub identity: Identity,
}

/// Compiles what this waypoint serves, with resilience state of its own (see [`compile_with_state`]).
/// Unresolvable backend references are not errors (their share of traffic is answered 500, as the Gateway API
/// says), nor are values the waypoint does not support (the route is left out and its status says why);
/// malformed values that survived parsing are.
pub fn compile(mesh: &Mesh, spec: &WaypointSpec) -> Result<Snapshot, ConfigError> {
    compile_with_state(mesh, spec, &ResilienceState::default())
}

/// [`compile`], also returning the status of every route of the mesh for each parent
/// ([`crate::routes::status::statuses`]; [`Snapshot::statuses`] keeps those of the routes this waypoint serves).
pub fn compile_with_status(
    mesh: &Mesh,
    spec: &WaypointSpec,
) -> Result<(Snapshot, Vec<RouteStatus>), ConfigError> {
    compile_with_state_and_status(mesh, spec, &ResilienceState::default())
}

/// [`compile`] against the proxy's long-lived `state`: each backend gets its Service's breaker and health, and
/// each endpoint its health and load counter, from `state` (the same handles as the previous snapshot's for the
/// same Service and address), so a hot swap keeps in-flight counts, ejections and hash placement.
/// Only the routes with a parent this waypoint serves are compiled ([`Scope::Served`]).
pub fn compile_with_state(
    mesh: &Mesh,
    spec: &WaypointSpec,
    state: &ResilienceState,
) -> Result<Snapshot, ConfigError> {
    let (services, statuses) = compile_tables_with_state(mesh, spec, state, Scope::Served)?;
    let mut names: Vec<&str> = services.values().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let compiled = security::compile(mesh, &spec.gateway, names, &state.authn)?;
    let security = services
        .iter()
        .map(|(addr, t)| {
            let sec = compiled.services.get(&t.name).cloned().unwrap_or_default();
            (*addr, sec)
        })
        .collect();
    for d in &compiled.diagnostics {
        tracing::warn!(target: "waypoint::authz", "{d}");
    }
    let destinations = match &state.telemetry {
        Some(t) => crate::proxy::observe::Destinations::compile(mesh, services.values(), t),
        None => Default::default(),
    };
    let snapshot = Snapshot {
        destinations,
        services,
        statuses,
        security,
        policy_diagnostics: compiled.diagnostics,
    };
    Ok(snapshot)
}

/// [`compile_with_state`], also returning the statuses of the whole mesh (as [`compile_with_status`]).
pub fn compile_with_state_and_status(
    mesh: &Mesh,
    spec: &WaypointSpec,
    state: &ResilienceState,
) -> Result<(Snapshot, Vec<RouteStatus>), ConfigError> {
    let snapshot = compile_with_state(mesh, spec, state)?;
    Ok((snapshot, crate::routes::status::statuses(mesh, spec)?))
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
            Upstream::new(ep.addr, hbone)
        })
        .collect()
}
