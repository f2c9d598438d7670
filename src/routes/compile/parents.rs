//! `parentRefs` → what a route attaches to on this waypoint, and the status a controller would write for it.
//!
//! A parent is a `Service` (group `""`; an omitted group is accepted too) bound to this waypoint, optionally one
//! of its ports (`port`, or the port's name in `sectionName`), or this waypoint's `Gateway` (group
//! `gateway.networking.k8s.io`, kind `Gateway` — the defaults), admitted by its HBONE listener's
//! `allowedRoutes` (namespaces `Same` by default; kinds). Anything else is `Accepted=False` with
//! `NoMatchingParent` (or `NotAllowedByListeners`), saying why.

use mesh::config::{GatewayRef, RouteNamespaces};

use super::rules::CompiledRoute;
use super::spec::{ParentName, ParentRef, RouteSpec};
use super::Cx;
use crate::routes::status::{Condition, RouteStatus};

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// What a parent reference attaches the route to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// One Service bound to this waypoint; all its ports unless `port` or `section` (a port name) says which.
    Service {
        namespace: String,
        name: String,
        port: Option<u16>,
        section: Option<String>,
    },
    /// This waypoint's Gateway: all its services.
    Gateway,
}

/// A resolved parent reference.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// `Service ns/name[:port]` or `Gateway ns/name`.
    pub parent: String,
    /// The target, or the `Accepted=False` reason and message.
    pub target: Result<Target, (&'static str, String)>,
}

/// Whether a parent reference of a route in `route_namespace` names something waypoint `gw` serves: a Service
/// bound to it (in `bound`, `(namespace, name)` of the Services bound to `gw`), or its Gateway (cheap, before the route is read: whether the route concerns this waypoint at
/// all; [`resolve`] then says whether it attaches).
pub(crate) fn names_waypoint(
    bound: &foldhash::HashSet<(&str, &str)>,
    gw: &GatewayRef,
    route_namespace: &str,
    p: ParentName<'_>,
) -> bool {
    let namespace = p.namespace.unwrap_or(route_namespace);
    let kind = p.kind.unwrap_or("Gateway");
    let group = p
        .group
        .unwrap_or(if kind == "Service" { "" } else { GATEWAY_GROUP });
    match (group, kind) {
        ("", "Service") => bound.contains(&(namespace, p.name)),
        (GATEWAY_GROUP, "Gateway") => gw.namespace == namespace && gw.name == p.name,
        _ => false,
    }
}

/// Resolves one parent reference of `route`.
pub(crate) fn resolve(cx: &Cx<'_>, route: &RouteSpec, p: &ParentRef) -> Outcome {
    let namespace = p
        .namespace
        .clone()
        .unwrap_or_else(|| route.namespace.clone());
    let kind = p.kind.as_deref().unwrap_or("Gateway");
    let group = p
        .group
        .as_deref()
        .unwrap_or(if kind == "Service" { "" } else { GATEWAY_GROUP });
    let mut parent = format!("{kind} {namespace}/{}", p.name);
    if let Some(port) = p.port {
        parent.push_str(&format!(":{port}"));
    }
    if let Some(section) = &p.section_name {
        parent.push_str(&format!(" ({section})"));
    }
    let target = match (group, kind) {
        ("", "Service") => service(cx, &namespace, p),
        (GATEWAY_GROUP, "Gateway") => gateway(cx, route, &namespace, p),
        _ => Err((
            "NoMatchingParent",
            format!("parent kind {kind} (group {group:?}) is not supported: use a Service or the waypoint Gateway"),
        )),
    };
    Outcome { parent, target }
}

fn service(cx: &Cx<'_>, namespace: &str, p: &ParentRef) -> Result<Target, (&'static str, String)> {
    let no = |m: String| Err(("NoMatchingParent", m));
    let Some(svc) = cx.mesh.service(namespace, &p.name) else {
        return no(format!("Service {namespace}/{} not found", p.name));
    };
    let gw = &cx.spec.gateway;
    match &svc.waypoint {
        Some(w) if w == gw => {}
        Some(w) => {
            return no(format!(
                "Service {namespace}/{} uses waypoint {}/{}, not {}/{}",
                p.name, w.namespace, w.name, gw.namespace, gw.name
            ))
        }
        None => {
            return no(format!(
                "Service {namespace}/{} is not bound to a waypoint (istio.io/use-waypoint)",
                p.name
            ))
        }
    }
    if svc.vip.is_none() {
        return no(format!("Service {namespace}/{} has no cluster IP", p.name));
    }
    let port = match p.port {
        None => None,
        Some(port) => match svc.ports.iter().find(|sp| i64::from(sp.port) == port) {
            Some(sp) => Some(sp.port),
            None => return no(format!("Service {namespace}/{} has no port {port}", p.name)),
        },
    };
    if let Some(section) = &p.section_name {
        if !svc.ports.iter().any(|sp| sp.name.as_ref() == Some(section)) {
            return no(format!(
                "Service {namespace}/{} has no port named {section}",
                p.name
            ));
        }
    }
    Ok(Target::Service {
        namespace: namespace.to_string(),
        name: p.name.clone(),
        port,
        section: p.section_name.clone(),
    })
}

fn gateway(
    cx: &Cx<'_>,
    route: &RouteSpec,
    namespace: &str,
    p: &ParentRef,
) -> Result<Target, (&'static str, String)> {
    let gw = &cx.spec.gateway;
    if gw.namespace != namespace || gw.name != p.name {
        return Err((
            "NoMatchingParent",
            format!(
                "Gateway {namespace}/{} is not this waypoint ({}/{})",
                p.name, gw.namespace, gw.name
            ),
        ));
    }
    let Some(wp) = cx.mesh.waypoint(gw) else {
        return Err((
            "NoMatchingParent",
            format!(
                "Gateway {namespace}/{} not found (class istio-waypoint)",
                p.name
            ),
        ));
    };
    if let (Some(port), Some(addr)) = (p.port, wp.addr) {
        if port != i64::from(addr.port()) {
            return Err((
                "NoMatchingParent",
                format!("the waypoint has no listener on port {port}"),
            ));
        }
    }
    let allowed = match &wp.route_namespaces {
        RouteNamespaces::Same => route.namespace == wp.namespace,
        RouteNamespaces::All => true,
        RouteNamespaces::Selector(sel) => cx
            .mesh
            .namespaces
            .get(&route.namespace)
            .is_some_and(|ns| sel.matches(&ns.labels)),
    };
    if !allowed {
        return Err((
            "NotAllowedByListeners",
            format!(
                "the waypoint's listener does not admit routes from namespace {}",
                route.namespace
            ),
        ));
    }
    if !wp.route_kinds.is_empty() && !wp.route_kinds.iter().any(|k| k == route.kind.name()) {
        return Err((
            "NotAllowedByListeners",
            format!(
                "the waypoint's listener does not admit {}s",
                route.kind.name()
            ),
        ));
    }
    Ok(Target::Gateway)
}

/// The status of `route` for one parent.
pub(crate) fn status(route: &RouteSpec, o: &Outcome, c: &CompiledRoute) -> RouteStatus {
    let accepted = match (&o.target, c.unsupported.is_empty()) {
        (Err((reason, message)), _) => Condition::new("Accepted", false, reason, message),
        (Ok(_), false) => Condition::new(
            "Accepted",
            false,
            "UnsupportedValue",
            &c.unsupported.join("; "),
        ),
        (Ok(_), true) => Condition::new("Accepted", true, "Accepted", "Route is accepted"),
    };
    let resolved = match c.refs.first() {
        None => Condition::new(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "All references are resolved",
        ),
        Some(first) => {
            let all: Vec<&str> = c.refs.iter().map(|r| r.message.as_str()).collect();
            Condition::new("ResolvedRefs", false, first.reason, &all.join("; "))
        }
    };
    RouteStatus {
        route: route.object(),
        parent: o.parent.clone(),
        conditions: vec![accepted, resolved],
    }
}
