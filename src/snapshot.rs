//! The waypoint's compiled config: only the services bound to this waypoint, ready for the request path.
//!
//! [`compile`] turns a [`Mesh`] (everything the manifests say) into a [`Snapshot`] holding, per bound Service
//! VIP:port, its routes in precedence order and, per backend, the resolved endpoints with how to reach each
//! one (HBONE with the expected workload identity, or plain TCP). A mesh of 10,000 services costs the snapshot
//! only what this waypoint's own services cost. The snapshot is immutable; a new one is swapped in whole.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gateway_api::httproutes::{HttpRoute, HttpRouteRulesMatchesPathType};
use mesh::config::{ConfigError, GatewayRef, Mesh, Service};
use mesh::identity::Identity;

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
    pub services: HashMap<SocketAddr, Arc<ServiceRoutes>>,
}

impl Snapshot {
    /// The service a CONNECT to `authority` is for, if this waypoint serves it.
    pub fn service(&self, authority: SocketAddr) -> Option<&Arc<ServiceRoutes>> {
        self.services.get(&authority)
    }
}

/// The routes of one Service port.
#[derive(Debug)]
pub struct ServiceRoutes {
    /// `namespace/name`.
    pub name: String,
    pub hostname: String,
    /// Flattened (match, rule) pairs in Gateway API precedence order: the first that matches wins.
    pub matches: Vec<(PathMatch, usize)>,
    pub rules: Vec<Rule>,
}

/// A path match, normalized (a prefix has no trailing `/` unless it is `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

impl PathMatch {
    /// Whether `path` (without query) matches. Prefixes match whole segments: `/foo` matches `/foo`,
    /// `/foo/` and `/foo/bar`, never `/foobar`.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) if p == "/" => true,
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str())
                    && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
        }
    }

    /// Sort key: exact before prefix, then longer first.
    fn precedence(&self) -> (u8, std::cmp::Reverse<usize>) {
        match self {
            PathMatch::Exact(p) => (0, std::cmp::Reverse(p.len())),
            PathMatch::Prefix(p) => (1, std::cmp::Reverse(p.len())),
        }
    }
}

/// One route rule: where its traffic goes.
#[derive(Debug)]
pub struct Rule {
    /// `HTTPRoute namespace/name rule N`, for logs.
    pub name: String,
    pub backends: Vec<Backend>,
    pub total_weight: u32,
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
    next: AtomicUsize,
}

impl Backend {
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
/// is answered 500, as the Gateway API says); malformed values that survived parsing are.
pub fn compile(mesh: &Mesh, spec: &WaypointSpec) -> Result<Snapshot, ConfigError> {
    let mut services = HashMap::new();
    for svc in mesh.services_of_waypoint(&spec.gateway) {
        let Some(vip) = svc.vip else { continue };
        for port in &svc.ports {
            let routes = compile_service(mesh, spec, svc, port.port)?;
            services.insert(SocketAddr::new(vip, port.port), Arc::new(routes));
        }
    }
    Ok(Snapshot { services })
}

/// A match keyed for sorting: (precedence, route order, the match, rule index).
type Keyed = ((u8, std::cmp::Reverse<usize>), usize, PathMatch, usize);

fn compile_service(
    mesh: &Mesh,
    spec: &WaypointSpec,
    svc: &Service,
    port: u16,
) -> Result<ServiceRoutes, ConfigError> {
    let name = format!("{}/{}", svc.namespace, svc.name);
    let mut rules = Vec::new();
    // (precedence, route order, rule index) for a stable sort.
    let mut keyed: Vec<Keyed> = Vec::new();
    let mut attached: Vec<&mesh::config::Sourced<HttpRoute>> = mesh
        .http_routes
        .iter()
        .filter(|r| attaches_to(&r.object, svc, port))
        .collect();
    // Older routes win ties; without timestamps, order by namespace/name as the spec's last tie-breaker.
    attached.sort_by_key(|r| route_key(&r.object));
    for (route_order, route) in attached.iter().enumerate() {
        let (rns, rname) = route_key(&route.object);
        for (ri, rule) in route.object.spec.rules.iter().flatten().enumerate() {
            let object = format!("HTTPRoute {rns}/{rname}");
            warn_unsupported(rule, &object, ri);
            let rule_index = rules.len();
            let mut backends = Vec::new();
            for (bi, b) in rule.backend_refs.iter().flatten().enumerate() {
                let field = format!("spec.rules[{ri}].backendRefs[{bi}]");
                backends.push(compile_backend(
                    mesh,
                    spec,
                    &rns,
                    b,
                    &route.file,
                    &object,
                    &field,
                )?);
            }
            let total_weight = backends.iter().map(|b| b.weight).sum();
            rules.push(Rule {
                name: format!("{object} rule {ri}"),
                backends,
                total_weight,
            });
            let matches: Vec<PathMatch> = match &rule.matches {
                None => vec![PathMatch::Prefix("/".into())],
                Some(ms) if ms.is_empty() => vec![PathMatch::Prefix("/".into())],
                Some(ms) => ms
                    .iter()
                    .enumerate()
                    .map(|(mi, m)| {
                        let field = format!("spec.rules[{ri}].matches[{mi}].path");
                        path_match(m.path.as_ref(), &route.file, &object, &field)
                    })
                    .collect::<Result<_, _>>()?,
            };
            for m in matches {
                keyed.push((m.precedence(), route_order, m, rule_index));
            }
        }
    }
    if rules.is_empty() {
        // No HTTPRoute: the Service's own endpoints, round robin.
        let endpoints = upstreams(mesh, spec, svc, port);
        rules.push(Rule {
            name: format!("Service {name} (no route)"),
            backends: vec![Backend {
                name: format!("{name}:{port}"),
                weight: 1,
                endpoints,
                invalid: None,
                next: AtomicUsize::new(0),
            }],
            total_weight: 1,
        });
        keyed.push((
            (1, std::cmp::Reverse(1)),
            0,
            PathMatch::Prefix("/".into()),
            0,
        ));
    }
    keyed.sort_by_key(|k| (k.0, k.1));
    Ok(ServiceRoutes {
        name,
        hostname: svc.hostname(),
        matches: keyed.into_iter().map(|(_, _, m, r)| (m, r)).collect(),
        rules,
    })
}

fn route_key(r: &HttpRoute) -> (String, String) {
    (
        r.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        r.metadata.name.clone().unwrap_or_default(),
    )
}

/// A GAMMA route attaches to a Service by a `parentRef` of kind Service (group `""`), in the route's namespace
/// unless it names one, with no port or this port.
fn attaches_to(route: &HttpRoute, svc: &Service, port: u16) -> bool {
    let rns = route.metadata.namespace.as_deref().unwrap_or("default");
    route.spec.parent_refs.iter().flatten().any(|p| {
        p.kind.as_deref() == Some("Service")
            && p.group.as_deref().unwrap_or("").is_empty()
            && p.name == svc.name
            && p.namespace.as_deref().unwrap_or(rns) == svc.namespace
            && p.port.is_none_or(|pp| pp == i32::from(port))
    })
}

fn path_match(
    path: Option<&gateway_api::httproutes::HttpRouteRulesMatchesPath>,
    file: &std::path::Path,
    object: &str,
    field: &str,
) -> Result<PathMatch, ConfigError> {
    let err = |message: String| ConfigError {
        file: file.to_path_buf(),
        object: object.to_string(),
        field: field.to_string(),
        message,
    };
    let Some(path) = path else {
        return Ok(PathMatch::Prefix("/".into()));
    };
    let value = path.value.clone().unwrap_or_else(|| "/".into());
    if !value.starts_with('/') {
        return Err(err(format!("path {value:?} must start with '/'")));
    }
    match path
        .r#type
        .clone()
        .unwrap_or(HttpRouteRulesMatchesPathType::PathPrefix)
    {
        HttpRouteRulesMatchesPathType::Exact => Ok(PathMatch::Exact(value)),
        HttpRouteRulesMatchesPathType::PathPrefix => {
            let trimmed = value.trim_end_matches('/');
            Ok(PathMatch::Prefix(if trimmed.is_empty() {
                "/".into()
            } else {
                trimmed.into()
            }))
        }
        HttpRouteRulesMatchesPathType::RegularExpression => Err(err(
            "RegularExpression path matches are not supported yet".into(),
        )),
    }
}

fn compile_backend(
    mesh: &Mesh,
    spec: &WaypointSpec,
    route_ns: &str,
    b: &gateway_api::httproutes::HttpRouteRulesBackendRefs,
    file: &std::path::Path,
    object: &str,
    field: &str,
) -> Result<Backend, ConfigError> {
    let weight = match b.weight.unwrap_or(1) {
        w if w < 0 => {
            return Err(ConfigError {
                file: file.to_path_buf(),
                object: object.to_string(),
                field: format!("{field}.weight"),
                message: format!("weight {w} is negative"),
            })
        }
        w => w as u32,
    };
    let ns = b.namespace.as_deref().unwrap_or(route_ns);
    let port = b.port.and_then(|p| u16::try_from(p).ok());
    let name = format!(
        "{ns}/{}:{}",
        b.name,
        port.map_or("?".into(), |p| p.to_string())
    );
    let invalid = if b.kind.as_deref().unwrap_or("Service") != "Service"
        || !b.group.as_deref().unwrap_or("").is_empty()
    {
        Some(format!("{field}: unsupported kind (InvalidKind)"))
    } else if ns != route_ns {
        Some(format!(
            "{field}: cross-namespace reference needs a ReferenceGrant (RefNotPermitted)"
        ))
    } else if port.is_none() {
        Some(format!("{field}: port is required for a Service backend"))
    } else if mesh.service(ns, &b.name).is_none() {
        Some(format!(
            "{field}: Service {ns}/{} not found (BackendNotFound)",
            b.name
        ))
    } else {
        None
    };
    let endpoints = match (&invalid, mesh.service(ns, &b.name), port) {
        (None, Some(svc), Some(port)) => upstreams(mesh, spec, svc, port),
        _ => Vec::new(),
    };
    Ok(Backend {
        name,
        weight,
        endpoints,
        invalid,
        next: AtomicUsize::new(0),
    })
}

fn upstreams(mesh: &Mesh, spec: &WaypointSpec, svc: &Service, port: u16) -> Vec<Upstream> {
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

/// Says which parts of a rule this waypoint does not apply yet (full Gateway API coverage is its own work),
/// rather than ignoring them silently.
fn warn_unsupported(rule: &gateway_api::httproutes::HttpRouteRules, object: &str, ri: usize) {
    let mut parts = Vec::new();
    if rule.filters.as_ref().is_some_and(|f| !f.is_empty()) {
        parts.push("filters");
    }
    if rule.timeouts.is_some() {
        parts.push("timeouts");
    }
    if rule
        .matches
        .iter()
        .flatten()
        .any(|m| m.headers.is_some() || m.query_params.is_some() || m.method.is_some())
    {
        parts.push("header/query/method matches");
    }
    if !parts.is_empty() {
        tracing::warn!(
            "{object}: spec.rules[{ri}]: {} not applied by this waypoint yet",
            parts.join(", ")
        );
    }
}
