//! The manifests directory both tiers read: ordinary Kubernetes YAML (multi-document), resolved into one
//! [`Mesh`] model, plus the machinery that watches the directory and hot-swaps what each binary compiles from it.
//!
//! Kinds read: `Namespace`, `Service`, `Pod`, `EndpointSlice` (discovery.k8s.io/v1), `Gateway` and `HTTPRoute`
//! (gateway.networking.k8s.io/v1). Other kinds are skipped with a warning (kept by kind, so later stages can
//! add `GRPCRoute`, `AuthorizationPolicy`, `DestinationRule` here). Types come from `k8s-openapi` and
//! `gateway-api`; an object that does not parse, or fails validation, is a [`ConfigError`] naming the file,
//! the object (`Kind namespace/name`) and the field path.
//!
//! Waypoint binding follows Istio: a Service (or else its Namespace) labelled `istio.io/use-waypoint: <gw>`
//! (`istio.io/use-waypoint-namespace` when the waypoint lives in another namespace; `none` opts out) uses the
//! `Gateway` `<gw>` of class `istio-waypoint`, when that Gateway's `istio.io/waypoint-for` label is `service`
//! (the default) or `all`. The waypoint's address is the Gateway's `status.addresses` (or `spec.addresses`)
//! IP on its HBONE listener port; its identity is `spiffe://<td>/ns/<gw-namespace>/sa/<gw-name>`.
//! A workload is in the mesh (reached over HBONE) when its Pod or Namespace has `istio.io/dataplane-mode: ambient`.

pub mod live;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::identity::Identity;

pub use live::{watch_dir, Live};

/// The default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// A bad manifest: which file, which object, which field, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {object}: {field}: {message}")]
pub struct ConfigError {
    pub file: PathBuf,
    /// `Kind namespace/name`, or `document N` when the object cannot even be named.
    pub object: String,
    /// Dotted path into the object, e.g. `spec.rules[0].backendRefs[1].weight`; empty when it is the document.
    pub field: String,
    pub message: String,
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
}

impl Waypoint {
    pub fn identity(&self, trust_domain: &str) -> Identity {
        Identity::new(trust_domain, &self.namespace, &self.name)
    }
}

/// Everything a manifests directory says, resolved. Built by [`load_dir`] / [`Mesh::from_documents`].
#[derive(Clone, Debug, Default)]
pub struct Mesh {
    pub trust_domain: String,
    pub namespaces: HashMap<String, Namespace>,
    pub services: Vec<Service>,
    pub workloads: Vec<Arc<Workload>>,
    pub waypoints: Vec<Waypoint>,
    /// HTTPRoutes as parsed (gateway-api types), with the file they came from.
    pub http_routes: Vec<Sourced<gateway_api::httproutes::HttpRoute>>,
    /// Kinds not understood, counted (skipped with a warning).
    pub skipped: BTreeMap<String, usize>,
    // implementation detail: indexes (service by VIP, by ns/name; workload by IP; endpoint slices)
}

/// A parsed object and the file it came from (for error messages of later stages).
#[derive(Clone, Debug)]
pub struct Sourced<T> {
    pub file: PathBuf,
    pub object: T,
}

impl Mesh {
    /// Reads every `*.yaml`/`*.yml` file in `dir` (not recursive; following symlinks, skipping hidden entries
    /// such as Kubernetes' `..data`), in file-name order.
    pub fn load_dir(dir: &Path, trust_domain: &str) -> Result<Mesh, ConfigError> {
        todo!("{dir:?}{trust_domain}")
    }
    /// Parses multi-document YAML texts, each with the file name to report in errors.
    pub fn from_documents(docs: &[(PathBuf, String)], trust_domain: &str) -> Result<Mesh, ConfigError> {
        todo!("{}{trust_domain}", docs.len())
    }
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        todo!("{namespace}{name}")
    }
    /// The Service whose VIP and port are `addr`, with that port.
    pub fn service_by_vip(&self, addr: SocketAddr) -> Option<(&Service, &ServicePort)> {
        todo!("{addr}")
    }
    /// Resolves a `name.namespace[.svc[.cluster.local]]` hostname.
    pub fn service_by_hostname(&self, host: &str) -> Option<&Service> {
        todo!("{host}")
    }
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        todo!("{ip}")
    }
    /// The endpoints of `service`'s port `port` (the Service port, not the target port), in a stable order.
    pub fn endpoints(&self, service: &Service, port: u16) -> Vec<Endpoint> {
        todo!("{}{port}", service.name)
    }
    pub fn waypoint(&self, r: &GatewayRef) -> Option<&Waypoint> {
        todo!("{r:?}")
    }
    /// The services bound to waypoint `r` (see the module doc).
    pub fn services_of_waypoint(&self, r: &GatewayRef) -> Vec<&Service> {
        todo!("{r:?}")
    }
}
