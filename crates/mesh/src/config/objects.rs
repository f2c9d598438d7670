//! The reduced records of the core kinds (Namespace, Service, Pod, EndpointSlice, Gateway), each from one typed
//! object on its own; the checks across objects (VIPs, pod IPs) are left to the merge in [`super::parse`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use gateway_api::gateways::Gateway;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::parse::Ctx;
use super::{
    routes, ConfigError, Namespace, RouteNamespaces, Service, ServicePort, Slice, SliceEndpoint,
    TargetPort, Waypoint, Workload, SERVICE_NAME, WAYPOINT_CLASS, WAYPOINT_FOR,
};

/// The HBONE port, when a waypoint Gateway has no `HBONE` listener.
const HBONE_PORT: u16 = 15008;

pub(super) fn namespace_record(ns: core::Namespace) -> Namespace {
    Namespace {
        name: ns.metadata.name.unwrap_or_default(),
        labels: ns.metadata.labels.unwrap_or_default(),
    }
}

/// `vip` is set as soon as `spec.clusterIP` is read: its uniqueness is checked before the ports'.
pub(super) fn service(
    ctx: &Ctx<'_>,
    namespace: String,
    name: String,
    svc: core::Service,
    vip_out: &mut Option<IpAddr>,
) -> Result<Service, ConfigError> {
    let spec = svc.spec.unwrap_or_default();
    let vip = match spec.cluster_ip.as_deref() {
        None | Some("" | "None") => None,
        Some(ip) => Some(ctx.ip(|| "spec.clusterIP".into(), ip)?),
    };
    *vip_out = vip;
    let mut ports = Vec::new();
    for (i, p) in spec.ports.unwrap_or_default().into_iter().enumerate() {
        let port = ctx.port(|| format!("spec.ports[{i}].port"), p.port)?;
        let target_field = || format!("spec.ports[{i}].targetPort");
        let target_port = match p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => TargetPort::Number(ctx.port(target_field, n)?),
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => TargetPort::Number(ctx.port(target_field, n)?),
                Err(_) if s.is_empty() => TargetPort::Number(port),
                Err(_) => TargetPort::Name(s),
            },
        };
        let name = p.name.filter(|n| !n.is_empty());
        ports.push(ServicePort {
            name,
            port,
            target_port,
            app_protocol: p.app_protocol,
        });
    }
    Ok(Service {
        name,
        namespace,
        vip,
        ports,
        selector: spec.selector.unwrap_or_default(),
        labels: svc.metadata.labels.unwrap_or_default(),
        waypoint: None,
    })
}

/// `None` for a pod without an IP. Pod IPs shared by several pods are reported when merging.
pub(super) fn pod(
    ctx: &Ctx<'_>,
    namespace: String,
    name: String,
    pod: core::Pod,
) -> Result<Option<Workload>, ConfigError> {
    let spec = pod.spec.unwrap_or_default();
    let status = pod.status.unwrap_or_default();
    let mut ip = match status.pod_ip.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(ctx.ip(|| "status.podIP".into(), s)?),
        None => None,
    };
    for (i, pip) in status.pod_ips.iter().flatten().enumerate() {
        let parsed = ctx.ip(|| format!("status.podIPs[{i}].ip"), &pip.ip)?;
        ip.get_or_insert(parsed);
    }
    let mut named_ports = BTreeMap::new();
    for (ci, c) in spec.containers.iter().enumerate() {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let port = ctx.port(
                || format!("spec.containers[{ci}].ports[{pi}].containerPort"),
                p.container_port,
            )?;
            if let Some(n) = p.name.as_ref().filter(|n| !n.is_empty()) {
                named_ports.entry(n.clone()).or_insert(port);
            }
        }
    }
    let Some(ip) = ip else {
        tracing::debug!(file = %ctx.file.display(), object = %ctx.object, "pod has no IP yet: not a workload");
        return Ok(None);
    };
    let service_account = spec
        .service_account_name
        .or(spec.service_account)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    Ok(Some(Workload {
        name,
        namespace,
        ip,
        labels: pod.metadata.labels.unwrap_or_default(),
        service_account,
        node: spec.node_name.filter(|n| !n.is_empty()),
        ambient: false,
        named_ports,
    }))
}

pub(super) fn slice(
    ctx: &Ctx<'_>,
    namespace: String,
    slice: EndpointSlice,
) -> Result<Option<Slice>, ConfigError> {
    let labels = slice.metadata.labels.unwrap_or_default();
    let Some(service) = labels.get(SERVICE_NAME).filter(|s| !s.is_empty()) else {
        tracing::warn!(file = %ctx.file.display(), object = %ctx.object, "EndpointSlice without {SERVICE_NAME}: ignored");
        return Ok(None);
    };
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        tracing::debug!(file = %ctx.file.display(), object = %ctx.object, "EndpointSlice of non-IP addresses: ignored");
        return Ok(None);
    }
    let mut ports = Vec::new();
    for (i, p) in slice.ports.unwrap_or_default().into_iter().enumerate() {
        let Some(port) = p.port else { continue };
        ports.push((
            p.name.filter(|n| !n.is_empty()),
            ctx.port(|| format!("ports[{i}].port"), port)?,
        ));
    }
    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.into_iter().enumerate() {
        let addresses = ep
            .addresses
            .iter()
            .enumerate()
            .map(|(j, a)| ctx.ip(|| format!("endpoints[{i}].addresses[{j}]"), a))
            .collect::<Result<Vec<_>, _>>()?;
        if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
            continue;
        }
        let pod = ep
            .target_ref
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| {
                let ns = r
                    .namespace
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| namespace.clone());
                Some((ns, r.name?))
            });
        endpoints.push(SliceEndpoint { addresses, pod });
    }
    Ok(Some(Slice {
        namespace,
        service: service.clone(),
        ports,
        endpoints,
    }))
}

pub(super) fn gateway(
    ctx: &Ctx<'_>,
    namespace: String,
    name: String,
    gw: Gateway,
) -> Result<Option<Waypoint>, ConfigError> {
    let mut hbone_port = None;
    let mut allowed = (RouteNamespaces::Same, Vec::new());
    for (i, l) in gw.spec.listeners.iter().enumerate() {
        let port = ctx.port(|| format!("spec.listeners[{i}].port"), l.port)?;
        if l.protocol == "HBONE" && hbone_port.is_none() {
            hbone_port = Some(port);
            allowed = routes::allowed_routes(ctx, i, l.allowed_routes.as_ref())?;
        }
    }
    if gw.spec.gateway_class_name != WAYPOINT_CLASS {
        tracing::debug!(file = %ctx.file.display(), object = %ctx.object, "Gateway of another class: ignored");
        return Ok(None);
    }
    let is_ip = |ty: Option<&str>| ty.is_none_or(|t| t == "IPAddress");
    let mut ip = None;
    for (i, a) in gw
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .enumerate()
    {
        if is_ip(a.r#type.as_deref()) {
            let parsed = ctx.ip(|| format!("status.addresses[{i}].value"), &a.value)?;
            ip.get_or_insert(parsed);
        }
    }
    for (i, a) in gw.spec.addresses.iter().flatten().enumerate() {
        if let (true, Some(v)) = (
            is_ip(a.r#type.as_deref()),
            a.value.as_deref().filter(|v| !v.is_empty()),
        ) {
            let parsed = ctx.ip(|| format!("spec.addresses[{i}].value"), v)?;
            ip.get_or_insert(parsed);
        }
    }
    let labels = gw.metadata.labels.unwrap_or_default();
    let waypoint_for = labels
        .get(WAYPOINT_FOR)
        .filter(|v| !v.is_empty())
        .map_or("service", |v| v.as_str());
    Ok(Some(Waypoint {
        name,
        namespace,
        waypoint_for: waypoint_for.to_string(),
        addr: ip.map(|ip| SocketAddr::new(ip, hbone_port.unwrap_or(HBONE_PORT))),
        route_namespaces: allowed.0,
        route_kinds: allowed.1,
    }))
}
