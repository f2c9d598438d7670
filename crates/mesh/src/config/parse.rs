//! Reading manifests: files → YAML documents → a generic look at `apiVersion`/`kind`/`metadata` → the typed
//! object (`k8s-openapi`, `gateway-api`, the hand-written `DestinationRule` types), validated, and reduced to the plain records that `resolve` links up.
//!
//! Every failure is a [`ConfigError`] naming the file, the object (`Kind namespace/name`, or `document N` before
//! the object has a name) and the field path (from `serde_path_to_error` for type errors).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use gateway_api::gateways::Gateway;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

use super::destination::{self, DestinationRule};
use super::gateway::{GrpcRoute, HttpRoute, ReferenceGrant};
use super::security;
use super::{
    routes, ConfigError, Namespace, RouteNamespaces, Service, ServicePort, Slice, SliceEndpoint,
    Sourced, TargetPort, Waypoint, Workload, SERVICE_NAME, WAYPOINT_CLASS, WAYPOINT_FOR,
};

/// The HBONE port, when a waypoint Gateway has no `HBONE` listener.
const HBONE_PORT: u16 = 15008;

/// What the manifests say, object by object, before cross-object resolution.
#[derive(Default)]
pub(super) struct Parsed {
    pub namespaces: Vec<Namespace>,
    /// `waypoint` not yet resolved.
    pub services: Vec<Service>,
    /// `ambient` not yet resolved.
    pub workloads: Vec<Workload>,
    pub slices: Vec<Slice>,
    /// Gateways of class `istio-waypoint`.
    pub waypoints: Vec<Waypoint>,
    pub http_routes: Vec<Sourced<HttpRoute>>,
    pub grpc_routes: Vec<Sourced<GrpcRoute>>,
    pub reference_grants: Vec<Sourced<ReferenceGrant>>,
    pub destination_rules: Vec<Sourced<DestinationRule>>,
    pub authorization_policies: Vec<authz::model::Named<authz::model::AuthorizationPolicySpec>>,
    pub request_authentications: Vec<authz::model::Named<authz::model::RequestAuthenticationSpec>>,
    pub skipped: BTreeMap<String, usize>,
}

/// Reads the YAML files of `dir` (see [`super::Mesh::load_dir`]), sorted by file name.
pub(super) fn read_dir(dir: &Path) -> Result<Vec<(PathBuf, String)>, ConfigError> {
    let io_err = |file: &Path, e: std::io::Error| ConfigError {
        file: file.to_path_buf(),
        object: String::new(),
        field: String::new(),
        message: e.to_string(),
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let path = entry.path();
        // `metadata` follows symlinks: a ConfigMap volume's `x.yaml -> ..data/x.yaml` is a file.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => files.push(path),
            Ok(_) => {}
            // A dangling symlink, e.g. mid-swap: the next event reloads.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, e)),
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
            Ok((path, text))
        })
        .collect()
}

/// Parses and validates every document of every file.
pub(super) fn parse(docs: &[(PathBuf, String)]) -> Result<Parsed, ConfigError> {
    let mut p = Parser::default();
    for (file, text) in docs {
        p.file(file, text)?;
    }
    Ok(p.out)
}

/// The kinds read, by API group and kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Namespace,
    Service,
    Pod,
    EndpointSlice,
    Gateway,
    HttpRoute,
    GrpcRoute,
    ReferenceGrant,
    DestinationRule,
    AuthorizationPolicy,
    RequestAuthentication,
}

impl Kind {
    /// `None` for a kind not read, or a known kind in an API version not read.
    fn of(api_version: &str, kind: &str) -> Option<Kind> {
        const GATEWAY_V1: &str = "gateway.networking.k8s.io/v1";
        const GATEWAY_V1BETA1: &str = "gateway.networking.k8s.io/v1beta1";
        const SECURITY_V1: &str = "security.istio.io/v1";
        const SECURITY_V1BETA1: &str = "security.istio.io/v1beta1";
        const ISTIO: [&str; 3] = [
            "networking.istio.io/v1",
            "networking.istio.io/v1beta1",
            "networking.istio.io/v1alpha3",
        ];
        Some(match (api_version, kind) {
            ("v1", "Namespace") => Kind::Namespace,
            ("v1", "Service") => Kind::Service,
            ("v1", "Pod") => Kind::Pod,
            ("discovery.k8s.io/v1", "EndpointSlice") => Kind::EndpointSlice,
            (GATEWAY_V1 | GATEWAY_V1BETA1, "Gateway") => Kind::Gateway,
            (GATEWAY_V1 | GATEWAY_V1BETA1, "HTTPRoute") => Kind::HttpRoute,
            (GATEWAY_V1, "GRPCRoute") => Kind::GrpcRoute,
            (GATEWAY_V1 | GATEWAY_V1BETA1, "ReferenceGrant") => Kind::ReferenceGrant,
            (v, "DestinationRule") if ISTIO.contains(&v) => Kind::DestinationRule,
            (SECURITY_V1 | SECURITY_V1BETA1, "AuthorizationPolicy") => Kind::AuthorizationPolicy,
            (SECURITY_V1 | SECURITY_V1BETA1, "RequestAuthentication") => {
                Kind::RequestAuthentication
            }
            _ => return None,
        })
    }
    fn is_known_name(kind: &str) -> bool {
        matches!(
            kind,
            "Namespace"
                | "Service"
                | "Pod"
                | "EndpointSlice"
                | "Gateway"
                | "HTTPRoute"
                | "GRPCRoute"
                | "ReferenceGrant"
                | "DestinationRule"
                | "AuthorizationPolicy"
                | "RequestAuthentication"
        )
    }
    fn namespaced(self) -> bool {
        self != Kind::Namespace
    }
}

#[derive(Default)]
struct Parser {
    out: Parsed,
    /// (kind, namespace, name) → the file that defined it first.
    seen: HashMap<(Kind, String, String), PathBuf>,
    /// Service VIP → the Service that has it.
    vips: HashMap<IpAddr, String>,
    /// Pod IP → the Pod that has it.
    pod_ips: HashMap<IpAddr, String>,
}

/// Where an object is, for error messages.
pub(super) struct Ctx<'a> {
    pub file: &'a Path,
    pub object: String,
    /// Prepended to field paths (`items[3].` inside a `List`).
    pub prefix: &'a str,
}

impl Ctx<'_> {
    pub fn err(&self, field: &str, message: impl Into<String>) -> ConfigError {
        let field = match (self.prefix.is_empty(), field.is_empty()) {
            (true, _) => field.to_string(),
            (false, true) => self.prefix.trim_end_matches('.').to_string(),
            (false, false) => format!("{}{field}", self.prefix),
        };
        ConfigError {
            file: self.file.to_path_buf(),
            object: self.object.clone(),
            field,
            message: message.into(),
        }
    }
    /// Deserializes the whole object into its type, naming the field that does not fit.
    fn typed<T: DeserializeOwned>(&self, value: Value) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            self.err(&field, e.into_inner().to_string())
        })
    }
    pub fn port(&self, field: impl FnOnce() -> String, value: i32) -> Result<u16, ConfigError> {
        match u16::try_from(value) {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(self.err(&field(), format!("port {value} is out of range 1-65535"))),
        }
    }
    fn ip(&self, field: impl FnOnce() -> String, value: &str) -> Result<IpAddr, ConfigError> {
        value
            .parse()
            .map_err(|_| self.err(&field(), format!("{value:?} is not an IP address")))
    }
}

impl Parser {
    fn file(&mut self, file: &Path, text: &str) -> Result<(), ConfigError> {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let n = i + 1;
            let ctx = Ctx {
                file,
                object: format!("document {n}"),
                prefix: "",
            };
            let mut value = Value::deserialize(doc).map_err(|e| ctx.err("", e.to_string()))?;
            if value.is_null() {
                continue;
            }
            value
                .apply_merge()
                .map_err(|e| ctx.err("", e.to_string()))?;
            self.object(file, n, "", value)?;
        }
        Ok(())
    }

    fn object(
        &mut self,
        file: &Path,
        n: usize,
        prefix: &str,
        value: Value,
    ) -> Result<(), ConfigError> {
        let doc = Ctx {
            file,
            object: format!("document {n}"),
            prefix,
        };
        let Value::Mapping(map) = &value else {
            return Err(doc.err(
                "",
                "expected a Kubernetes object (a mapping with apiVersion, kind, metadata)",
            ));
        };
        let text = |key: &str| -> Result<&str, ConfigError> {
            match map.get(key) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s),
                Some(Value::String(_)) | None => Err(doc.err(key, format!("missing {key}"))),
                Some(_) => Err(doc.err(key, format!("{key} must be a string"))),
            }
        };
        let kind = text("kind")?;
        let api_version = text("apiVersion")?;
        if kind == "List" && api_version == "v1" {
            let Some(Value::Sequence(items)) = map.get("items") else {
                return Err(doc.err("items", "a List needs a sequence of items"));
            };
            for (i, item) in items.iter().enumerate() {
                self.object(file, n, &format!("{prefix}items[{i}]."), item.clone())?;
            }
            return Ok(());
        }
        let Some(k) = Kind::of(api_version, kind) else {
            let key = if Kind::is_known_name(kind) {
                format!("{kind} {api_version}")
            } else {
                kind.to_string()
            };
            let count = self.out.skipped.entry(key).or_default();
            *count += 1;
            // Once per kind and load: a directory of many such objects should not flood the log.
            if *count == 1 {
                tracing::warn!(file = %file.display(), document = n, kind, api_version,
                    "skipping a kind not read (further ones counted in Mesh::skipped)");
            }
            return Ok(());
        };
        let meta = map.get("metadata");
        let meta_str = |key: &str| {
            meta.and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let Some(name) = meta_str("name") else {
            return Err(doc.err("metadata.name", format!("{kind} has no metadata.name")));
        };
        let namespace = if k.namespaced() {
            meta_str("namespace").unwrap_or("default")
        } else {
            ""
        };
        let object = if k.namespaced() {
            format!("{kind} {namespace}/{name}")
        } else {
            format!("{kind} {name}")
        };
        let ctx = Ctx {
            file,
            object,
            prefix,
        };
        let key = (k, namespace.to_string(), name.to_string());
        if let Some(first) = self.seen.get(&key) {
            return Err(ctx.err(
                "metadata.name",
                format!("duplicate {kind}: already defined in {}", first.display()),
            ));
        }
        self.seen.insert(key, file.to_path_buf());
        let (namespace, name) = (namespace.to_string(), name.to_string());
        match k {
            Kind::Namespace => self.namespace(&ctx, ctx.typed(value)?),
            Kind::Service => self.service(&ctx, namespace, name, ctx.typed(value)?),
            Kind::Pod => self.pod(&ctx, namespace, name, ctx.typed(value)?),
            Kind::EndpointSlice => self.slice(&ctx, namespace, ctx.typed(value)?),
            Kind::Gateway => self.gateway(&ctx, namespace, name, ctx.typed(value)?),
            Kind::HttpRoute => {
                let route = routes::http_route(&ctx, namespace, ctx.typed(value)?)?;
                self.out.http_routes.push(route);
                Ok(())
            }
            Kind::GrpcRoute => {
                let route = routes::grpc_route(&ctx, namespace, ctx.typed(value)?)?;
                self.out.grpc_routes.push(route);
                Ok(())
            }
            Kind::ReferenceGrant => {
                let grant = routes::reference_grant(&ctx, namespace, ctx.typed(value)?)?;
                self.out.reference_grants.push(grant);
                Ok(())
            }
            Kind::DestinationRule => {
                let rule = destination::destination_rule(&ctx, namespace, name, ctx.typed(value)?)?;
                self.out.destination_rules.push(rule);
                Ok(())
            }
            Kind::AuthorizationPolicy => {
                let p = security::authorization_policy(&ctx, namespace, name, ctx.typed(value)?)?;
                self.out.authorization_policies.push(p);
                Ok(())
            }
            Kind::RequestAuthentication => {
                let r = security::request_authentication(&ctx, namespace, name, ctx.typed(value)?)?;
                self.out.request_authentications.push(r);
                Ok(())
            }
        }
    }

    fn namespace(&mut self, _ctx: &Ctx<'_>, ns: core::Namespace) -> Result<(), ConfigError> {
        let name = ns.metadata.name.unwrap_or_default();
        self.out.namespaces.push(Namespace {
            name,
            labels: ns.metadata.labels.unwrap_or_default(),
        });
        Ok(())
    }

    fn service(
        &mut self,
        ctx: &Ctx<'_>,
        namespace: String,
        name: String,
        svc: core::Service,
    ) -> Result<(), ConfigError> {
        let spec = svc.spec.unwrap_or_default();
        let vip = match spec.cluster_ip.as_deref() {
            None | Some("" | "None") => None,
            Some(ip) => Some(ctx.ip(|| "spec.clusterIP".into(), ip)?),
        };
        if let Some(vip) = vip {
            if let Some(other) = self.vips.insert(vip, format!("{namespace}/{name}")) {
                return Err(ctx.err(
                    "spec.clusterIP",
                    format!("{vip} is already the clusterIP of Service {other}"),
                ));
            }
        }
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
        self.out.services.push(Service {
            name,
            namespace,
            vip,
            ports,
            selector: spec.selector.unwrap_or_default(),
            labels: svc.metadata.labels.unwrap_or_default(),
            waypoint: None,
        });
        Ok(())
    }

    fn pod(
        &mut self,
        ctx: &Ctx<'_>,
        namespace: String,
        name: String,
        pod: core::Pod,
    ) -> Result<(), ConfigError> {
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
            return Ok(());
        };
        if let Some(other) = self.pod_ips.insert(ip, format!("{namespace}/{name}")) {
            tracing::warn!(file = %ctx.file.display(), object = %ctx.object, %ip, other,
                "pod IP shared with another pod: lookups by IP find the first");
        }
        let service_account = spec
            .service_account_name
            .or(spec.service_account)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        self.out.workloads.push(Workload {
            name,
            namespace,
            ip,
            labels: pod.metadata.labels.unwrap_or_default(),
            service_account,
            node: spec.node_name.filter(|n| !n.is_empty()),
            ambient: false,
            named_ports,
        });
        Ok(())
    }

    fn slice(
        &mut self,
        ctx: &Ctx<'_>,
        namespace: String,
        slice: EndpointSlice,
    ) -> Result<(), ConfigError> {
        let labels = slice.metadata.labels.unwrap_or_default();
        let Some(service) = labels.get(SERVICE_NAME).filter(|s| !s.is_empty()) else {
            tracing::warn!(file = %ctx.file.display(), object = %ctx.object, "EndpointSlice without {SERVICE_NAME}: ignored");
            return Ok(());
        };
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            tracing::debug!(file = %ctx.file.display(), object = %ctx.object, "EndpointSlice of non-IP addresses: ignored");
            return Ok(());
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
        self.out.slices.push(Slice {
            namespace,
            service: service.clone(),
            ports,
            endpoints,
        });
        Ok(())
    }

    fn gateway(
        &mut self,
        ctx: &Ctx<'_>,
        namespace: String,
        name: String,
        gw: Gateway,
    ) -> Result<(), ConfigError> {
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
            return Ok(());
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
        self.out.waypoints.push(Waypoint {
            name,
            namespace,
            waypoint_for: waypoint_for.to_string(),
            addr: ip.map(|ip| SocketAddr::new(ip, hbone_port.unwrap_or(HBONE_PORT))),
            route_namespaces: allowed.0,
            route_kinds: allowed.1,
        });
        Ok(())
    }
}
