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

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh::config::{background, ConfigError, Mesh, Service};
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
    /// Regular expressions compiled so far, by pattern as written (see [`Cx::regex`]).
    pub regexes: RefCell<HashMap<String, regex::Regex>>,
}

impl Cx<'_> {
    /// Service `svc`'s port `port` as a destination (resolved once per compile).
    pub fn destination(&self, svc: &Service, port: u16) -> std::rc::Rc<destinations::Destination> {
        self.destinations.get(self.mesh, self.spec, svc, port)
    }

    /// `pattern`, anchored ([`super::matching::anchored`]) and compiled once per compile: matches with the same
    /// pattern share one compiled program (a `Regex` clone shares it; each search has state of its own).
    pub fn regex(&self, pattern: &str) -> Result<regex::Regex, regex::Error> {
        if let Some(r) = self.regexes.borrow().get(pattern) {
            return Ok(r.clone());
        }
        let r = super::matching::anchored(pattern)?;
        self.regexes
            .borrow_mut()
            .insert(pattern.to_string(), r.clone());
        Ok(r)
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
    // The Services bound here, by name: a small set, so checking every route of a large mesh against it does
    // not walk the mesh-wide service index (the same answer as `Mesh::service`: the service a name finds).
    // foldhash: every route of the mesh is checked against it, so the hash is on the path of a large mesh.
    let bound: foldhash::HashSet<(&str, &str)> = mesh
        .services_of_waypoint(&spec.gateway)
        .into_iter()
        .filter(|s| {
            mesh.service(&s.namespace, &s.name)
                .is_some_and(|f| std::ptr::eq(f, *s))
        })
        .map(|s| (s.namespace.as_str(), s.name.as_str()))
        .collect();
    let served =
        |ns: &str, p: spec::ParentName<'_>| parents::names_waypoint(&bound, &spec.gateway, ns, p);
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
        regexes: RefCell::default(),
    };
    let mut statuses = Vec::new();
    // (service namespace, service name) → (route, port filter, section filter, role); Gateway routes apart.
    type Attach = (usize, Option<u16>, Option<String>, Role);
    let mut by_service: HashMap<(String, String), Vec<Attach>> = HashMap::new();
    let mut on_gateway: Vec<usize> = Vec::new();
    let mut compiled: Vec<rules::CompiledRoute> = Vec::with_capacity(routes.len());
    for (ri, route) in routes.iter().enumerate() {
        background::checkpoint();
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
    // Each table's (route, role) list first, so a route's rules and matches are moved into the last table that
    // takes them rather than cloned (most routes attach to one table).
    let mut plans = Vec::new();
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
            plans.push((SocketAddr::new(vip, port.port), svc, port.port, roles));
        }
    }
    let mut uses = Uses {
        tables: vec![0; routes.len()],
        entries: vec![0; routes.len()],
    };
    for (_, _, _, roles) in &plans {
        for (i, &(ri, _)) in roles.iter().enumerate() {
            uses.entries[ri] += 1;
            // Sorted: a route's entries (producer, consumer) are adjacent.
            if i == 0 || roles[i - 1].0 != ri {
                uses.tables[ri] += 1;
            }
        }
    }
    let mut tables = HashMap::with_capacity(plans.len());
    for (addr, svc, port, roles) in plans {
        background::checkpoint();
        let table = build_table(&cx, svc, port, &routes, &mut compiled, &mut uses, &roles);
        tables.insert(addr, Arc::new(table));
    }
    Ok((tables, statuses))
}

/// Per route, how many tables (for its rules) and (table, role) entries (for its matches) still take it: the
/// last one moves them out of the compiled route instead of cloning.
struct Uses {
    tables: Vec<usize>,
    entries: Vec<usize>,
}

/// One Service port's table from the accepted routes attached to it.
fn build_table(
    cx: &Cx<'_>,
    svc: &Service,
    port: u16,
    routes: &[spec::RouteSpec],
    compiled: &mut [rules::CompiledRoute],
    uses: &mut Uses,
    roles: &[(usize, Role)],
) -> RouteTable {
    let mut rules: Vec<Rule> = Vec::new();
    let mut offsets: BTreeMap<usize, usize> = BTreeMap::new();
    let mut producer = Vec::new();
    let mut consumers: HashMap<String, Vec<_>> = HashMap::new();
    for &(ri, role) in roles {
        let (route, c) = (&routes[ri], &mut compiled[ri]);
        let offset = *offsets.entry(ri).or_insert_with(|| {
            let n = c.rules.len();
            uses.tables[ri] -= 1;
            if uses.tables[ri] == 0 {
                rules.append(&mut c.rules);
            } else {
                rules.extend(c.rules.iter().cloned());
            }
            rules.len() - n
        });
        let entries = match role {
            Role::Producer => &mut producer,
            Role::Consumer => consumers.entry(route.namespace.clone()).or_default(),
        };
        uses.entries[ri] -= 1;
        let matches = if uses.entries[ri] == 0 {
            std::mem::take(&mut c.matches)
        } else {
            c.matches.clone()
        };
        let name = format!("{}/{}", route.namespace, route.name);
        for (m, rule, match_index) in matches {
            let origin = Origin {
                created: route.created.clone(),
                route: name.clone(),
                rule,
                match_index,
            };
            entries.push((m, origin, offset + rule));
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
mod tests;
