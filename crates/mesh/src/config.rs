//! The manifests directory both tiers read: ordinary Kubernetes YAML (multi-document), resolved into one
//! [`Mesh`] model, plus the machinery that watches the directory and hot-swaps what each binary compiles from it.
//!
//! Kinds read: `Namespace`, `Service`, `Pod`, `EndpointSlice` (discovery.k8s.io/v1), `Gateway`, `HTTPRoute`
//! (experimental channel types: a superset with `retry`), `GRPCRoute` (gateway.networking.k8s.io/v1) and
//! `ReferenceGrant` (v1beta1 and v1), Istio's `DestinationRule` (networking.istio.io v1, v1beta1, v1alpha3;
//! the fields read and ignored are listed in [`destination`]), `AuthorizationPolicy` and
//! `RequestAuthentication` (security.istio.io v1, v1beta1; see [`security`]). Other kinds are skipped with a
//! warning (counted by kind). Routes are checked as the API server would (the CRDs'
//! schema and CEL rules that matter here: negative weights, relative paths, a Service `backendRef` without
//! `port`, ...); what is valid Kubernetes but not supported is left to the compiler, which reports it in the
//! route's status instead of failing the load. Types come from `k8s-openapi` and
//! `gateway-api`; an object that does not parse, or fails validation, is a [`ConfigError`] naming the file,
//! the object (`Kind namespace/name`) and the field path.
//!
//! Waypoint binding follows Istio: a Service (or else its Namespace) labelled `istio.io/use-waypoint: <gw>`
//! (`istio.io/use-waypoint-namespace` when the waypoint lives in another namespace; `none` opts out) uses the
//! `Gateway` `<gw>` of class `istio-waypoint`, when that Gateway's `istio.io/waypoint-for` label is `service`
//! (the default) or `all`. The waypoint's address is the Gateway's `status.addresses` (or `spec.addresses`)
//! IP on its HBONE listener port; its identity is `spiffe://<td>/ns/<gw-namespace>/sa/<gw-name>`.
//! A workload is in the mesh (reached over HBONE) when its Pod or Namespace has `istio.io/dataplane-mode: ambient`.

pub mod background;
pub mod destination;
pub mod live;
mod objects;
mod parse;
mod parse_cache;
mod resolve;
mod routes;
pub mod security;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::identity::Identity;

pub use destination::DestinationRule;
pub use live::{watch_dir, Live, WatchGuard};
pub use parse_cache::{ParseCache, ParseStats};
pub use routes::{gateway_duration, LabelExpression, LabelSelector, RouteNamespaces};

/// The route and grant types the mesh keeps (gateway-api), re-exported so users need not track channels.
pub mod gateway {
    pub use gateway_api::experimental::httproutes::HttpRoute;
    pub use gateway_api::grpcroutes::GrpcRoute;
    pub use gateway_api::referencegrants::ReferenceGrant;
}

/// The default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The `gatewayClassName` of waypoints.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
const USE_WAYPOINT: &str = "istio.io/use-waypoint";
const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// A bad manifest: which file, which object, which field, and what is wrong.
///
/// Displayed as `file: object: field: message`, leaving out the parts that are empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// `Kind namespace/name`, or `document N` when the object cannot even be named.
    pub object: String,
    /// Dotted path into the object, e.g. `spec.rules[0].backendRefs[1].weight`; empty when it is the document.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        for part in [&self.object, &self.field] {
            if !part.is_empty() {
                write!(f, ": {part}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// A namespace and its labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// A workload (Pod): where it is, who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub ip: IpAddr,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// `spec.nodeName`, when set.
    pub node: Option<String>,
    /// In the ambient mesh (reached over HBONE), from the pod's or namespace's `istio.io/dataplane-mode`.
    pub ambient: bool,
    /// `containerPort`s by name, for named `targetPort`s.
    pub named_ports: BTreeMap<String, u16>,
}

impl Workload {
    pub fn identity(&self, trust_domain: &str) -> Identity {
        Identity::new(trust_domain, &self.namespace, &self.service_account)
    }
}

/// A Service's `targetPort`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: TargetPort,
    /// `appProtocol` (`http`, `http2`, `grpc`, `kubernetes.io/h2c`, ...).
    pub app_protocol: Option<String>,
}

/// A reference to a waypoint Gateway.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GatewayRef {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// `spec.clusterIP`, when it is an IP (not `None`).
    pub vip: Option<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// `spec.selector`; empty means endpoints come only from EndpointSlices.
    pub selector: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// The waypoint this service uses, resolved per the rules in the module doc (None: no waypoint).
    pub waypoint: Option<GatewayRef>,
}

impl Service {
    /// `name.namespace.svc.cluster.local`.
    pub fn hostname(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

/// One address a Service port resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `ip:targetPort` (the named target port resolved against the pod's container ports).
    pub addr: SocketAddr,
    /// The workload behind it, when known (from the selector's Pods or the EndpointSlice `targetRef`).
    pub workload: Option<Arc<Workload>>,
}

impl Endpoint {
    /// Reached over HBONE when its workload is in the ambient mesh; otherwise plain TCP.
    pub fn hbone(&self) -> bool {
        self.workload.as_ref().is_some_and(|w| w.ambient)
    }
}

/// A waypoint `Gateway` (class `istio-waypoint`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waypoint {
    pub name: String,
    pub namespace: String,
    /// `istio.io/waypoint-for`: `service` (default), `workload`, `all`, `none`.
    pub waypoint_for: String,
    /// Address of the HBONE listener (status/spec address IP, listener port), when known.
    pub addr: Option<SocketAddr>,
    /// The HBONE listener's `allowedRoutes.namespaces`: which namespaces' routes may attach to the Gateway
    /// (`Same` by default).
    pub route_namespaces: RouteNamespaces,
    /// The HBONE listener's `allowedRoutes.kinds` (kind names; empty: HTTPRoute and GRPCRoute).
    pub route_kinds: Vec<String>,
}

impl Waypoint {
    pub fn identity(&self, trust_domain: &str) -> Identity {
        Identity::new(trust_domain, &self.namespace, &self.name)
    }
}

/// Everything a manifests directory says, resolved. Built by [`load_dir`] / [`Mesh::from_documents`].
///
/// Lookups go through indexes built once at load ([`Mesh::reindex`]), so they cost one or two hash look-ups.
#[derive(Clone, Debug, Default)]
pub struct Mesh {
    pub trust_domain: String,
    pub namespaces: HashMap<String, Namespace>,
    pub services: Vec<Service>,
    pub workloads: Vec<Arc<Workload>>,
    pub waypoints: Vec<Waypoint>,
    /// HTTPRoutes as parsed (gateway-api experimental-channel types, a superset of the standard ones), with the
    /// file they came from. `metadata.namespace` is filled in (`default` when the manifest omits it).
    pub http_routes: Vec<Sourced<gateway::HttpRoute>>,
    /// GRPCRoutes (v1), namespace filled in as for `http_routes`.
    pub grpc_routes: Vec<Sourced<gateway::GrpcRoute>>,
    /// ReferenceGrants (v1beta1 and v1, read into the v1 type), namespace filled in.
    pub reference_grants: Vec<Sourced<gateway::ReferenceGrant>>,
    /// Istio DestinationRules (v1, v1beta1, v1alpha3), validated, their host resolved to a Service.
    pub destination_rules: Vec<Sourced<DestinationRule>>,
    /// Istio AuthorizationPolicies (`security.istio.io` v1, v1beta1), each compiled once at load (a bad one is
    /// a [`ConfigError`]), with `istio.io/dry-run` read. Which ones a proxy enforces:
    /// `authz::policy::PolicySet::for_waypoint` / `for_node`.
    pub authorization_policies: Vec<authz::model::Named<authz::model::AuthorizationPolicySpec>>,
    /// Istio RequestAuthentications (v1, v1beta1), checked as their CRD does.
    pub request_authentications: Vec<authz::model::Named<authz::model::RequestAuthenticationSpec>>,
    /// Kinds not understood, counted (skipped with a warning). Keyed by `kind`, or by `kind apiVersion` when the
    /// kind is known but not in that API version (e.g. an Istio `Gateway`).
    pub skipped: BTreeMap<String, usize>,
    index: Index,
}

/// Frees the objects one at a time, yielding on a config lane between them ([`background::drain`]): a
/// 1,000-route mesh is ~5 ms of frees, and a lane thread must not hold a core that long in one piece.
impl Drop for Mesh {
    fn drop(&mut self) {
        background::drain(&mut self.http_routes);
        background::drain(&mut self.grpc_routes);
        background::drain(&mut self.services);
        background::drain(&mut self.workloads);
        background::drain(&mut self.destination_rules);
        background::drain(&mut self.authorization_policies);
        background::drain(&mut self.request_authentications);
        background::drain(&mut self.reference_grants);
        background::drain(&mut self.namespaces);
    }
}

/// A parsed object and the file it came from (for error messages of later stages).
#[derive(Clone, Debug)]
pub struct Sourced<T> {
    pub file: PathBuf,
    pub object: T,
}

/// Reads a manifests directory: the same as [`Mesh::load_dir`].
pub fn load_dir(dir: &Path, trust_domain: &str) -> Result<Mesh, ConfigError> {
    Mesh::load_dir(dir, trust_domain)
}

impl Mesh {
    /// Reads every `*.yaml`/`*.yml` file in `dir` (not recursive; following symlinks, skipping hidden entries
    /// such as Kubernetes' `..data`), in file-name order.
    pub fn load_dir(dir: &Path, trust_domain: &str) -> Result<Mesh, ConfigError> {
        let docs = parse::read_dir(dir)?;
        Mesh::from_documents(&docs, trust_domain)
    }
    /// Parses multi-document YAML texts, each with the file name to report in errors.
    pub fn from_documents(
        docs: &[(PathBuf, String)],
        trust_domain: &str,
    ) -> Result<Mesh, ConfigError> {
        let parsed = parse::parse(docs)?;
        Ok(resolve::build(parsed, trust_domain))
    }
    /// [`Mesh::load_dir`], reading only the documents `cache` does not already hold.
    pub fn load_dir_cached(
        dir: &Path,
        trust_domain: &str,
        cache: &mut ParseCache,
    ) -> Result<Mesh, ConfigError> {
        let docs = parse::read_dir(dir)?;
        Mesh::from_documents_cached(&docs, trust_domain, cache)
    }
    /// [`Mesh::from_documents`], reading only the documents `cache` does not already hold: the same result or
    /// error. The cache then holds the documents of `docs` only.
    pub fn from_documents_cached(
        docs: &[(PathBuf, String)],
        trust_domain: &str,
        cache: &mut ParseCache,
    ) -> Result<Mesh, ConfigError> {
        let parsed = cache.parse(docs)?;
        Ok(resolve::build(parsed, trust_domain))
    }
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        let i = *self.index.service_by_name.get(namespace)?.get(name)?;
        self.services.get(i)
    }
    /// The Service whose VIP and port are `addr`, with that port.
    pub fn service_by_vip(&self, addr: SocketAddr) -> Option<(&Service, &ServicePort)> {
        let &(s, p) = self.index.service_by_vip.get(&addr)?;
        let service = self.services.get(s)?;
        Some((service, service.ports.get(p)?))
    }
    /// Resolves a `name.namespace[.svc[.cluster.local]]` hostname.
    pub fn service_by_hostname(&self, host: &str) -> Option<&Service> {
        let (name, namespace) = split_hostname(host)?;
        if name.bytes().any(|b| b.is_ascii_uppercase())
            || namespace.bytes().any(|b| b.is_ascii_uppercase())
        {
            return self.service(&namespace.to_ascii_lowercase(), &name.to_ascii_lowercase());
        }
        self.service(namespace, name)
    }
    /// The `DestinationRule` that applies to Service `namespace/name`, when one does (see [`destination`] for
    /// which one when several name it).
    pub fn destination_rule(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<&Sourced<DestinationRule>> {
        let key = (namespace.to_string(), name.to_string());
        self.destination_rules
            .get(*self.index.rule_by_service.get(&key)?)
    }
    /// The `DestinationRule` of `service` ([`Mesh::destination_rule`]).
    pub fn destination_rule_of(&self, service: &Service) -> Option<&DestinationRule> {
        self.destination_rule(&service.namespace, &service.name)
            .map(|r| &r.object)
    }
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads.get(*self.index.workload_by_ip.get(&ip)?)
    }
    /// The Pod named `namespace/name`, when it has an IP.
    pub fn workload(&self, namespace: &str, name: &str) -> Option<&Arc<Workload>> {
        self.workloads
            .get(*self.index.workload_by_name.get(namespace)?.get(name)?)
    }
    /// The endpoints of `service`'s port `port` (the Service port, not the target port), in a stable order.
    ///
    /// Pods matching a non-empty selector give `podIP:targetPort` (a named target port is looked up in the pod's
    /// container ports; a pod without that name is left out); EndpointSlices labelled
    /// `kubernetes.io/service-name` give their addresses on the slice port of the same name (endpoints whose
    /// `conditions.ready` is false are left out). Deduplicated by address, sorted by address.
    pub fn endpoints(&self, service: &Service, port: u16) -> Vec<Endpoint> {
        let Some(sp) = service.ports.iter().find(|p| p.port == port) else {
            return Vec::new();
        };
        let Some(&si) = self
            .index
            .service_by_name
            .get(&service.namespace)
            .and_then(|m| m.get(&service.name))
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for &wi in &self.index.service_pods[si] {
            let w = &self.workloads[wi];
            let target = match &sp.target_port {
                TargetPort::Number(n) => *n,
                TargetPort::Name(name) => match w.named_ports.get(name) {
                    Some(p) => *p,
                    None => continue,
                },
            };
            out.push(Endpoint {
                addr: SocketAddr::new(w.ip, target),
                workload: Some(w.clone()),
            });
        }
        let want = sp.name.as_deref().unwrap_or("");
        for &sl in &self.index.service_slices[si] {
            let slice = &self.index.slices[sl];
            let Some(&(_, slice_port)) = slice
                .ports
                .iter()
                .find(|(n, _)| n.as_deref().unwrap_or("") == want)
            else {
                continue;
            };
            for ep in &slice.endpoints {
                for &ip in &ep.addresses {
                    let workload = ep
                        .pod
                        .as_ref()
                        .and_then(|(ns, name)| self.workload(ns, name))
                        .or_else(|| self.workload_by_ip(ip))
                        .cloned();
                    out.push(Endpoint {
                        addr: SocketAddr::new(ip, slice_port),
                        workload,
                    });
                }
            }
        }
        out.sort_by_key(|e| e.addr);
        out.dedup_by(|later, kept| {
            if later.addr != kept.addr {
                return false;
            }
            if kept.workload.is_none() {
                kept.workload = later.workload.take();
            }
            true
        });
        out
    }
    pub fn waypoint(&self, r: &GatewayRef) -> Option<&Waypoint> {
        self.waypoints.get(*self.index.waypoint_by_ref.get(r)?)
    }
    /// The services bound to waypoint `r` (see the module doc).
    pub fn services_of_waypoint(&self, r: &GatewayRef) -> Vec<&Service> {
        self.index
            .services_by_waypoint
            .get(r)
            .map_or_else(Vec::new, |v| v.iter().map(|&i| &self.services[i]).collect())
    }
}

/// `name.ns`, `name.ns.svc`, `name.ns.svc.cluster.local`, each with an optional trailing dot → `(name, ns)`.
fn split_hostname(host: &str) -> Option<(&str, &str)> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let host = host
        .strip_suffix(".svc.cluster.local")
        .or_else(|| host.strip_suffix(".svc"))
        .unwrap_or(host);
    let (name, namespace) = host.split_once('.')?;
    if name.is_empty() || namespace.is_empty() || namespace.contains('.') {
        return None;
    }
    Some((name, namespace))
}

/// Lookup tables over [`Mesh`]'s public vectors (indexes into them), plus the EndpointSlices, which the public
/// model does not carry.
#[derive(Clone, Default)]
struct Index {
    /// namespace → name → index in `services`.
    service_by_name: HashMap<String, HashMap<String, usize>>,
    /// VIP:port → (index in `services`, index in its `ports`).
    service_by_vip: HashMap<SocketAddr, (usize, usize)>,
    workload_by_ip: HashMap<IpAddr, usize>,
    /// namespace → pod name → index in `workloads`.
    workload_by_name: HashMap<String, HashMap<String, usize>>,
    waypoint_by_ref: HashMap<GatewayRef, usize>,
    services_by_waypoint: HashMap<GatewayRef, Vec<usize>>,
    /// Per service: the workloads its selector matches.
    service_pods: Vec<Vec<usize>>,
    /// Per service: its EndpointSlices (indexes in `slices`).
    service_slices: Vec<Vec<usize>>,
    slices: Vec<Slice>,
    /// Service `(namespace, name)` → the index in `destination_rules` of the rule that applies.
    rule_by_service: HashMap<(String, String), usize>,
}

impl fmt::Debug for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Index")
            .field("services", &self.service_pods.len())
            .field("vips", &self.service_by_vip.len())
            .field("workloads", &self.workload_by_ip.len())
            .field("endpoint_slices", &self.slices.len())
            .finish_non_exhaustive()
    }
}

/// An EndpointSlice, reduced to what endpoint resolution needs.
#[derive(Clone, Debug, Default)]
struct Slice {
    namespace: String,
    /// The `kubernetes.io/service-name` label.
    service: String,
    /// `(name, port)`.
    ports: Vec<(Option<String>, u16)>,
    endpoints: Vec<SliceEndpoint>,
}

#[derive(Clone, Debug, Default)]
struct SliceEndpoint {
    addresses: Vec<IpAddr>,
    /// `targetRef` of kind Pod: `(namespace, name)`.
    pod: Option<(String, String)>,
}
