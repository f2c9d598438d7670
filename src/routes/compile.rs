//! HTTPRoutes and GRPCRoutes → per-service route tables (see the module doc of [`crate::routes`]).
//!
//! Contract used by the proxy (other code depends on these types; keep them):
//! - [`RouteTable::select`] picks the rule for a request from a caller namespace (consumer routes in the
//!   caller's namespace replace the producer routes for that caller, per GAMMA).
//! - A [`Rule`] carries its weighted [`crate::snapshot::Backend`]s, [`RuleFilters`], [`Timeouts`] and
//!   [`RetryPolicy`].
//!
//! How a config becomes tables ([`compile_tables`]):
//! 1. the routes of either kind with a parent this waypoint serves (a Service bound to it, or its Gateway) are
//!    read into one neutral form (`spec`); the rest of the mesh is skipped unread, so a waypoint's compile costs
//!    in proportion to its own services ([`Scope::Served`]; `waypoint check` reads every route, [`Scope::Mesh`]);
//! 2. each `parentRef` is resolved (`parents`): a Service bound to this waypoint (optionally one port, by `port`
//!    or by port name in `sectionName`), or this waypoint's Gateway (all its services, subject to the listener's
//!    `allowedRoutes`); anything else is `NoMatchingParent` / `NotAllowedByListeners`;
//! 3. each route is compiled once (`rules`, `filters`, `backends`): matches, filters, timeouts, retry, backends
//!    with ReferenceGrant checks. A value Kubernetes admits but the waypoint cannot honour (a filter type it
//!    does not implement, a regex that does not compile, a header value that is not a valid HTTP value) leaves
//!    the route out, with `Accepted=False, UnsupportedValue`; an invalid backend reference keeps the route and
//!    answers 500 for that backend's share, with `ResolvedRefs=False` and the reason;
//! 4. per bound Service port, the accepted routes attached to it are merged into one [`RouteTable`]: producer
//!    routes (the Service's namespace) and Gateway routes into `producer`, consumer routes into
//!    `consumers[route namespace]`, each ordered by the precedence in [`super::matching`]. A Service without an
//!    accepted producer route keeps a default rule to its own endpoints.
//!
//! `hostnames` are not matched: GAMMA routes are selected by their parent Service, and the spec leaves
//! `hostnames` without effect for Service parents.

mod backends;
mod destinations;
mod filters;
mod parents;
mod rules;
mod spec;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh::config::{ConfigError, Mesh, Service};
use waypoint_filters::{HeaderModifier, MirrorFraction, Redirect, UrlRewrite};

use super::matching::{MatchTable, Origin, RequestView, RouteMatch};
use super::status::RouteStatus;
use crate::resilience::ResilienceState;
use crate::snapshot::{Backend, WaypointSpec};

/// The protocol spoken to the application (from the Service port's `appProtocol`, or the route kind).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AppProtocol {
    #[default]
    Http1,
    /// HTTP/2 prior knowledge (`appProtocol: http2`, `grpc`, `kubernetes.io/h2c`, and GRPCRoute backends).
    H2c,
}

impl AppProtocol {
    /// From a Service port: `appProtocol` `http2`, `grpc`, `kubernetes.io/h2c`, or else (Istio's convention) a
    /// port name `http2`/`grpc` or starting with `http2-`/`grpc-` (not `grpc-web`, which is HTTP/1).
    pub fn of_port(app_protocol: Option<&str>, port_name: Option<&str>) -> AppProtocol {
        let h2 = |p: &str| matches!(p, "http2" | "grpc" | "kubernetes.io/h2c");
        let by_name = |n: &str| {
            let head = n.split('-').next().unwrap_or("");
            h2(head) && !n.starts_with("grpc-web")
        };
        match app_protocol {
            Some(p) if h2(p) => AppProtocol::H2c,
            Some(_) => AppProtocol::Http1,
            None if port_name.is_some_and(by_name) => AppProtocol::H2c,
            None => AppProtocol::Http1,
        }
    }
}

/// The routes of one Service port.
#[derive(Debug)]
pub struct RouteTable {
    /// `namespace/name`.
    pub name: String,
    pub hostname: String,
    pub rules: Vec<Rule>,
    /// Producer routes (in the Service's namespace) and routes attached to the waypoint Gateway.
    pub producer: MatchTable,
    /// Consumer routes by the caller namespace they apply to.
    pub consumers: HashMap<String, MatchTable>,
    /// How long an idle downstream keep-alive connection to this service is kept (Service label
    /// [`IDLE_TIMEOUT_LABEL`]); `None`: the proxy's default (`proxy::DOWNSTREAM_IDLE_TIMEOUT`, 1 h).
    pub downstream_idle: Option<Duration>,
}

/// The Service label that sets the downstream idle timeout of its connections through the waypoint
/// (a Gateway API duration, e.g. `30s`, `5m`, `1h`; whole seconds, at least 1 s). A label, not an
/// annotation, as the mesh model keeps a Service's labels.
pub const IDLE_TIMEOUT_LABEL: &str = "networking.waypoint.dev/idle-timeout";

/// The downstream idle timeout a Service's label asks for; an invalid value is reported and ignored.
fn downstream_idle(svc: &Service) -> Option<Duration> {
    let text = svc.labels.get(IDLE_TIMEOUT_LABEL)?;
    match mesh::config::gateway_duration(text) {
        Ok(d) if !d.is_zero() => Some(d),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(
                service = %format!("{}/{}", svc.namespace, svc.name),
                field = %format!("metadata.labels[{IDLE_TIMEOUT_LABEL}]"),
                "ignored: {e}"
            );
            None
        }
    }
}

impl RouteTable {
    /// The rule (index into `rules`) and the match that selected it, for a caller from `caller_namespace`.
    pub fn select<'a>(
        &'a self,
        caller_namespace: &str,
        req: &RequestView<'_>,
    ) -> Option<(usize, &'a RouteMatch)> {
        self.consumers
            .get(caller_namespace)
            .unwrap_or(&self.producer)
            .find(req)
    }
}

/// Which kind of route a rule came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    /// `HTTPRoute` or `GRPCRoute`.
    pub fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

/// One rule: where its traffic goes and what happens on the way.
#[derive(Clone, Debug)]
pub struct Rule {
    /// `HTTPRoute namespace/name rule N` (or `GRPCRoute ...`), for logs.
    pub name: String,
    pub kind: RouteKind,
    pub backends: Vec<Backend>,
    pub total_weight: u32,
    pub filters: RuleFilters,
    pub timeouts: Timeouts,
    pub retry: Option<RetryPolicy>,
    /// Resets before the response are retried for every method (route annotation
    /// `retry.waypoint.dev/reset-before-response: "true"`), not only for idempotent ones.
    pub retry_resets: bool,
}

/// A rule's (or a backend's) filters, compiled.
#[derive(Clone, Debug, Default)]
pub struct RuleFilters {
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    /// When set, the waypoint answers the redirect itself; backends are not used.
    pub redirect: Option<Redirect>,
    pub rewrite: Option<UrlRewrite>,
    pub mirrors: Vec<Mirror>,
}

impl RuleFilters {
    /// No filter at all.
    pub fn is_empty(&self) -> bool {
        self.request_headers.is_none()
            && self.response_headers.is_none()
            && self.redirect.is_none()
            && self.rewrite.is_none()
            && self.mirrors.is_empty()
    }
}

/// A `RequestMirror`: a copy of the request to another backend, fire-and-forget.
#[derive(Clone, Debug)]
pub struct Mirror {
    pub backend: Backend,
    pub fraction: MirrorFraction,
}

/// `timeouts` (GEP-1742).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole request, across retries.
    pub request: Option<Duration>,
    /// One try to a backend.
    pub backend_request: Option<Duration>,
}

/// `retry` (GEP-1731).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries after the first.
    pub attempts: u32,
    /// Response statuses that are retried: HTTPRoute `retry.codes` and the bare codes of the annotation.
    pub codes: Vec<u16>,
    /// Base of the exponential backoff between tries.
    pub backoff: Option<Duration>,
    /// The conditions retried (route annotation `retry.waypoint.dev/on`; [`RetryOn::DEFAULT`] without it).
    /// `codes` are retried under `retriable-status-codes`.
    pub on: crate::retry::RetryOn,
}

/// Everything the compiler reads, shared by the stages.
pub(crate) struct Cx<'a> {
    pub mesh: &'a Mesh,
    pub spec: &'a WaypointSpec,
    pub grants: backends::Grants<'a>,
    /// Destination Service ports resolved so far (policy, state handles, endpoints).
    pub destinations: destinations::Destinations<'a>,
}

impl Cx<'_> {
    /// Service `svc`'s port `port` as a destination (resolved once per compile).
    pub fn destination(&self, svc: &Service, port: u16) -> std::rc::Rc<destinations::Destination> {
        self.destinations.get(self.mesh, self.spec, svc, port)
    }
}

/// How an accepted route attaches to a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    /// The Service's own namespace, or the waypoint Gateway: all callers.
    Producer,
    /// Another namespace: callers from that namespace only.
    Consumer,
}

/// Route tables by Service VIP:port.
pub(crate) type Tables = HashMap<SocketAddr, Arc<RouteTable>>;

/// Which routes a compile reads, and so which statuses it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The routes with a parent this waypoint serves (a Service bound to it, or its Gateway), each with a
    /// status for each of its parents: what the proxy needs, in proportion to its own services.
    Served,
    /// Every route of the mesh, for each of its parents, as this waypoint sees them (`waypoint check`).
    Mesh,
}

/// The route tables of every Service port bound to this waypoint (by VIP:port), and the status of every route
/// of the mesh for each of its parents, as seen by this waypoint ([`Scope::Mesh`]).
/// Backends get state handles of their own (see [`compile_tables_with_state`]).
pub(crate) fn compile_tables(
    mesh: &Mesh,
    spec: &WaypointSpec,
) -> Result<(Tables, Vec<RouteStatus>), ConfigError> {
    compile_tables_with_state(mesh, spec, &ResilienceState::default(), Scope::Mesh)
}

/// [`compile_tables`] of the routes `scope` says, backends getting their Service port's policy and handles
/// into `state` (see `destinations`). The tables are the same in either scope.
pub(crate) fn compile_tables_with_state(
    mesh: &Mesh,
    spec: &WaypointSpec,
    state: &ResilienceState,
    scope: Scope,
) -> Result<(Tables, Vec<RouteStatus>), ConfigError> {
    let served =
        |ns: &str, p: spec::ParentName<'_>| parents::names_waypoint(mesh, &spec.gateway, ns, p);
    let keep: spec::Keep<'_> = match scope {
        Scope::Served => Some(&served),
        Scope::Mesh => None,
    };
    let routes = spec::routes(mesh, keep)?;
    let cx = Cx {
        mesh,
        spec,
        grants: backends::Grants::new(mesh),
        destinations: destinations::Destinations::new(state),
    };
    let mut statuses = Vec::new();
    // (service namespace, service name) → (route, port filter, section filter, role); Gateway routes apart.
    type Attach = (usize, Option<u16>, Option<String>, Role);
    let mut by_service: HashMap<(String, String), Vec<Attach>> = HashMap::new();
    let mut on_gateway: Vec<usize> = Vec::new();
    let mut compiled = Vec::with_capacity(routes.len());
    for (ri, route) in routes.iter().enumerate() {
        let outcomes: Vec<_> = route
            .body
            .parent_refs
            .iter()
            .map(|p| parents::resolve(&cx, route, p))
            .collect();
        let attached = outcomes.iter().any(|o| o.target.is_ok());
        let c = rules::compile_route(&cx, route, attached)?;
        let accepted = c.unsupported.is_empty();
        for o in outcomes {
            statuses.push(parents::status(route, &o, &c));
            match o.target {
                Ok(parents::Target::Gateway) if accepted => on_gateway.push(ri),
                Ok(parents::Target::Service {
                    namespace,
                    name,
                    port,
                    section,
                }) if accepted => {
                    let role = if namespace == route.namespace {
                        Role::Producer
                    } else {
                        Role::Consumer
                    };
                    by_service
                        .entry((namespace, name))
                        .or_default()
                        .push((ri, port, section, role));
                }
                _ => {}
            }
        }
        compiled.push(c);
    }
    let mut tables = HashMap::new();
    for svc in mesh.services_of_waypoint(&spec.gateway) {
        let Some(vip) = svc.vip else { continue };
        let attached = by_service.get(&(svc.namespace.clone(), svc.name.clone()));
        for port in &svc.ports {
            // Deduplicated, in a stable order: a route may name this Service twice (with and without port).
            let mut roles: Vec<(usize, Role)> = on_gateway
                .iter()
                .map(|&ri| (ri, Role::Producer))
                .chain(
                    attached
                        .into_iter()
                        .flatten()
                        .filter_map(|(ri, p, s, role)| {
                            let port_ok = p.is_none_or(|p| p == port.port);
                            let section_ok =
                                s.as_ref().is_none_or(|s| port.name.as_ref() == Some(s));
                            (port_ok && section_ok).then_some((*ri, *role))
                        }),
                )
                .collect();
            roles.sort_unstable();
            roles.dedup();
            let table = build_table(&cx, svc, port.port, &routes, &compiled, &roles);
            tables.insert(SocketAddr::new(vip, port.port), Arc::new(table));
        }
    }
    Ok((tables, statuses))
}

/// One Service port's table from the accepted routes attached to it.
fn build_table(
    cx: &Cx<'_>,
    svc: &Service,
    port: u16,
    routes: &[spec::RouteSpec],
    compiled: &[rules::CompiledRoute],
    roles: &[(usize, Role)],
) -> RouteTable {
    let mut rules: Vec<Rule> = Vec::new();
    let mut offsets: BTreeMap<usize, usize> = BTreeMap::new();
    let mut producer = Vec::new();
    let mut consumers: HashMap<String, Vec<_>> = HashMap::new();
    for &(ri, role) in roles {
        let (route, c) = (&routes[ri], &compiled[ri]);
        let offset = *offsets.entry(ri).or_insert_with(|| {
            rules.extend(c.rules.iter().cloned());
            rules.len() - c.rules.len()
        });
        let entries = match role {
            Role::Producer => &mut producer,
            Role::Consumer => consumers.entry(route.namespace.clone()).or_default(),
        };
        for (m, rule, match_index) in &c.matches {
            let origin = Origin {
                created: route.created.clone(),
                route: format!("{}/{}", route.namespace, route.name),
                rule: *rule,
                match_index: *match_index,
            };
            entries.push((m.clone(), origin, offset + rule));
        }
    }
    if producer.is_empty() {
        // No accepted producer route: every request (of callers without consumer routes) to the Service itself.
        producer.push((
            RouteMatch::any(),
            Origin {
                created: None,
                route: String::new(),
                rule: 0,
                match_index: 0,
            },
            rules.len(),
        ));
        rules.push(backends::default_rule(cx, svc, port));
    }
    RouteTable {
        downstream_idle: downstream_idle(svc),
        name: format!("{}/{}", svc.namespace, svc.name),
        hostname: svc.hostname(),
        rules,
        producer: MatchTable::new(producer),
        consumers: consumers
            .into_iter()
            .map(|(ns, entries)| (ns, MatchTable::new(entries)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use mesh::config::GatewayRef;

    use super::*;

    /// Namespace `a` uses waypoint `a/wp`, namespace `b` waypoint `b/wp`; a route on each one's Service, one
    /// on `a`'s Gateway, and one on a Service of no waypoint.
    const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {istio.io/use-waypoint: wp}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b, labels: {istio.io/use-waypoint: wp}}
---
apiVersion: v1
kind: Namespace
metadata: {name: c}
"#;

    fn mesh() -> Mesh {
        let mut text = MESH.to_string();
        for ns in ["a", "b", "c"] {
            text.push_str(&format!(
                "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: wp, namespace: {ns}}}\n\
                 spec: {{gatewayClassName: istio-waypoint, listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]}}\n\
                 ---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc, namespace: {ns}}}\n\
                 spec: {{clusterIP: 10.0.0.{n}, ports: [{{port: 80}}]}}\n\
                 ---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: {ns}}}\n\
                 spec: {{parentRefs: [{{group: \"\", kind: Service, name: svc}}], rules: [{{backendRefs: [{{name: svc, port: 80}}]}}]}}\n",
                n = ns.as_bytes()[0]
            ));
        }
        text.push_str(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: g, namespace: a}\n\
             spec: {parentRefs: [{name: wp}], rules: [{backendRefs: [{name: svc, port: 80}]}]}\n",
        );
        Mesh::from_documents(&[("m.yaml".into(), text)], "cluster.local").unwrap()
    }

    fn routes(statuses: &[RouteStatus]) -> Vec<String> {
        let mut r: Vec<String> = statuses.iter().map(|s| s.route.clone()).collect();
        r.sort();
        r
    }

    #[test]
    fn only_routes_with_a_parent_served_here_are_compiled() {
        let (mesh, state) = (mesh(), ResilienceState::default());
        let spec = WaypointSpec {
            gateway: GatewayRef {
                namespace: "a".into(),
                name: "wp".into(),
            },
            hbone_port: 15008,
        };
        let (served, mine) =
            compile_tables_with_state(&mesh, &spec, &state, Scope::Served).unwrap();
        let (all, every) = compile_tables_with_state(&mesh, &spec, &state, Scope::Mesh).unwrap();
        assert_eq!(routes(&mine), ["HTTPRoute a/g", "HTTPRoute a/r"]);
        assert_eq!(
            routes(&every),
            [
                "HTTPRoute a/g",
                "HTTPRoute a/r",
                "HTTPRoute b/r",
                "HTTPRoute c/r"
            ]
        );
        assert!(mine.iter().all(|s| !s.has_errors()), "{mine:#?}");
        assert_eq!(served.len(), 1);
        let rules = |t: &Tables| -> Vec<String> {
            t.values()
                .flat_map(|t| t.rules.iter().map(|r| r.name.clone()))
                .collect()
        };
        assert_eq!(rules(&served), rules(&all));
    }
}
