//! Backend references → [`Backend`]s: kind, namespace (a `ReferenceGrant` in the backend's namespace must allow
//! a cross-namespace reference), Service and port, protocol, endpoints with the destination's policy and state
//! handles (`destinations`), backend-level filters.
//!
//! A reference that does not resolve is kept as a backend with `invalid` set (its share of traffic is answered
//! 500, as the Gateway API says) and reported as `ResolvedRefs=False` with `InvalidKind`, `RefNotPermitted` or
//! `BackendNotFound`.

use std::collections::HashMap;

use mesh::config::gateway::ReferenceGrant;
use mesh::config::{ConfigError, Mesh, Service};

use super::filters::{self, Level};
use super::rules::{RefProblem, RouteCx};
use super::spec::BackendRefSpec;
use super::{AppProtocol, Cx, RouteKind, Rule, RuleFilters, Timeouts};
use crate::snapshot::Backend;

/// The API group of routes, in ReferenceGrant `from`.
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// ReferenceGrants by the namespace they are in (the namespace of the referenced objects).
pub(crate) struct Grants<'a> {
    by_namespace: HashMap<&'a str, Vec<&'a ReferenceGrant>>,
}

impl<'a> Grants<'a> {
    pub fn new(mesh: &'a Mesh) -> Grants<'a> {
        let mut by_namespace: HashMap<&str, Vec<&ReferenceGrant>> = HashMap::new();
        for g in &mesh.reference_grants {
            let ns = g.object.metadata.namespace.as_deref().unwrap_or("default");
            by_namespace.entry(ns).or_default().push(&g.object);
        }
        Grants { by_namespace }
    }

    /// Whether a route of `kind` in `from_namespace` may reference Service `to_namespace/name`.
    pub fn permits(
        &self,
        kind: RouteKind,
        from_namespace: &str,
        to_namespace: &str,
        name: &str,
    ) -> bool {
        self.by_namespace
            .get(to_namespace)
            .into_iter()
            .flatten()
            .any(|g| {
                g.spec.from.iter().any(|f| {
                    f.group == GATEWAY_GROUP
                        && f.kind == kind.name()
                        && f.namespace == from_namespace
                }) && g.spec.to.iter().any(|t| {
                    t.group.is_empty()
                        && t.kind == "Service"
                        && t.name.as_deref().is_none_or(|n| n.is_empty() || n == name)
                })
            })
    }
}

/// A rule's (or mirror's, `mirror`) backend reference at `field`.
pub(crate) fn backend(
    rc: &mut RouteCx<'_>,
    field: &str,
    b: &BackendRefSpec,
    mirror: bool,
) -> Result<Backend, ConfigError> {
    let route = rc.route;
    let weight = match b.weight.unwrap_or(1) {
        _ if mirror => 1,
        w => u32::try_from(w).map_err(|_| {
            rc.err(
                &format!("{field}.weight"),
                format!("weight {w} is negative"),
            )
        })?,
    };
    let namespace = b.namespace.as_deref().unwrap_or(&route.namespace);
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    let port = match b.port {
        None => None,
        Some(p) => Some(u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| {
            rc.err(
                &format!("{field}.port"),
                format!("port {p} is out of range 1-65535"),
            )
        })?),
    };
    let name = format!(
        "{namespace}/{}:{}",
        b.name,
        port.map_or("?".into(), |p| p.to_string())
    );
    let problem = |reason: &'static str, what: String| {
        Some(RefProblem {
            reason,
            message: format!("{field}: {what} ({reason})"),
        })
    };
    let svc = rc.cx.mesh.service(namespace, &b.name);
    let mut protocol = AppProtocol::Http1;
    let problem = if !group.is_empty() || kind != "Service" {
        let gk = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        problem(
            "InvalidKind",
            format!("backend kind {gk} is not supported (only Service)"),
        )
    } else if port.is_none() {
        return Err(rc.err(
            &format!("{field}.port"),
            "port is required for a Service reference",
        ));
    } else if namespace != route.namespace
        && !rc
            .cx
            .grants
            .permits(route.kind, &route.namespace, namespace, &b.name)
    {
        problem(
            "RefNotPermitted",
            format!(
                "a reference to Service {namespace}/{} from namespace {} needs a ReferenceGrant in {namespace}",
                b.name, route.namespace
            ),
        )
    } else if let (Some(svc), Some(port)) = (svc, port) {
        match svc.ports.iter().find(|p| p.port == port) {
            Some(sp) => {
                protocol = AppProtocol::of_port(sp.app_protocol.as_deref(), sp.name.as_deref());
                None
            }
            None => problem(
                "BackendNotFound",
                format!("Service {namespace}/{} has no port {port}", b.name),
            ),
        }
    } else {
        problem(
            "BackendNotFound",
            format!("Service {namespace}/{} not found", b.name),
        )
    };
    if route.kind == RouteKind::Grpc {
        protocol = AppProtocol::H2c;
    }
    let destination = match (&problem, svc, port) {
        (None, Some(svc), Some(port)) if rc.endpoints => Some(rc.cx.destination(svc, port)),
        _ => None,
    };
    let filters = if mirror {
        RuleFilters::default()
    } else {
        filters::compile(rc, field, &b.filters, Level::Backend)?
    };
    let invalid = problem.as_ref().map(|p| p.message.clone());
    rc.out.refs.extend(problem);
    let mut backend = Backend::new(name, weight, Vec::new(), invalid);
    if let Some(d) = destination {
        d.apply(&mut backend);
    }
    backend.protocol = protocol;
    backend.filters = filters;
    Ok(backend)
}

/// The rule of a Service port without an accepted producer route: all traffic to the Service itself.
pub(crate) fn default_rule(cx: &Cx<'_>, svc: &Service, port: u16) -> Rule {
    let name = format!("{}/{}", svc.namespace, svc.name);
    let mut backend = Backend::new(format!("{name}:{port}"), 1, Vec::new(), None);
    cx.destination(svc, port).apply(&mut backend);
    if let Some(sp) = svc.ports.iter().find(|p| p.port == port) {
        backend.protocol = AppProtocol::of_port(sp.app_protocol.as_deref(), sp.name.as_deref());
    }
    Rule {
        name: format!("Service {name} (no route)"),
        kind: RouteKind::Http,
        backends: vec![backend],
        total_weight: 1,
        filters: RuleFilters::default(),
        timeouts: Timeouts::default(),
        retry: None,
        retry_resets: false,
    }
}
