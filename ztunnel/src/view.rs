//! The node's compiled view of the mesh: the [`Mesh`] snapshot plus what is specific to this node — which
//! workloads are local (by `spec.nodeName` and/or an explicit list), the fallback source workload for SOCKS
//! clients that are not local pods, and, per local workload, the waypoint identities allowed to send it
//! traffic addressed to another IP (see [`NodeView::is_waypoint_of`]), and the L4 AuthorizationPolicies each
//! local workload enforces ([`NodeView::authz`], compiled and its diagnostics logged here, once per snapshot).
//!
//! A [`NodeView`] is compiled off the request path (at start and on every manifests change) and read once per
//! connection through [`mesh::config::Live`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use mesh::config::{Mesh, Workload};
use mesh::identity::Identity;

use crate::policy::NodeAuthz;

/// A workload named `namespace/name` (a Pod).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadRef {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
#[error("not a workload reference of the form <namespace>/<name>: {0:?}")]
pub struct BadWorkloadRef(String);

impl FromStr for WorkloadRef {
    type Err = BadWorkloadRef;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(WorkloadRef {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(BadWorkloadRef(s.to_string())),
        }
    }
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What makes a view specific to this node; fixed for the life of the process.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub trust_domain: String,
    /// Local workloads: pods whose `spec.nodeName` is this ...
    pub node: Option<String>,
    /// ... and/or these.
    pub workloads: Vec<WorkloadRef>,
    /// Source workload of SOCKS clients whose IP is not a local workload.
    pub default_workload: Option<WorkloadRef>,
    /// The HBONE port: inbound listeners, and the port dialled on remote pods.
    pub hbone_port: u16,
}

/// One compiled snapshot: the mesh and this node's place in it.
#[derive(Debug)]
pub struct NodeView {
    mesh: Arc<Mesh>,
    trust_domain: String,
    hbone_port: u16,
    local: BTreeMap<IpAddr, Arc<Workload>>,
    default_source: Option<Arc<Workload>>,
    /// Local workload IP -> identities of the waypoints of the services it backs.
    waypoint_callers: HashMap<IpAddr, BTreeSet<Identity>>,
    /// What each local workload enforces on inbound.
    authz: NodeAuthz,
}

impl NodeView {
    /// Compiles `mesh` for this node. Never fails: a listed workload missing from the manifests is simply not
    /// local (it may have been deleted); [`crate::Ztunnel::start`] checks the list once at start.
    pub fn compile(mesh: Arc<Mesh>, spec: &NodeSpec) -> NodeView {
        let local: BTreeMap<IpAddr, Arc<Workload>> = mesh
            .workloads
            .iter()
            .filter(|w| is_local(w, spec))
            .map(|w| (w.ip, w.clone()))
            .collect();
        let default_source = spec
            .default_workload
            .as_ref()
            .and_then(|r| find(&mesh, r).cloned());
        let waypoint_callers = waypoint_callers(&mesh, &spec.trust_domain, &local);
        let authz = NodeAuthz::compile(
            &mesh.authorization_policies,
            local.values().map(|w| w.as_ref()),
        );
        authz.log();
        NodeView {
            mesh,
            trust_domain: spec.trust_domain.clone(),
            hbone_port: spec.hbone_port,
            local,
            default_source,
            waypoint_callers,
            authz,
        }
    }

    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn hbone_port(&self) -> u16 {
        self.hbone_port
    }

    /// The local workload at `ip`.
    pub fn local_workload(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.local.get(&ip)
    }

    /// Local workloads, by IP.
    pub fn local_workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.local.values()
    }

    /// The source workload of an outbound connection from `client`: the local workload with that IP, else the
    /// configured default workload, else none (refuse).
    pub fn source_for(&self, client: IpAddr) -> Option<&Arc<Workload>> {
        self.local.get(&client).or(self.default_source.as_ref())
    }

    /// The configured default source workload, when it exists in the mesh.
    pub fn default_source(&self) -> Option<&Arc<Workload>> {
        self.default_source.as_ref()
    }

    /// True when `caller` is the waypoint of a service that the local workload at `ip` backs.
    pub fn is_waypoint_of(&self, ip: IpAddr, caller: &Identity) -> bool {
        self.waypoint_callers
            .get(&ip)
            .is_some_and(|ids| ids.contains(caller))
    }

    /// The node-tier authorization of the local workloads.
    pub fn authz(&self) -> &NodeAuthz {
        &self.authz
    }

    /// Finds a workload of the mesh by `namespace/name` (local or not).
    pub fn find(&self, r: &WorkloadRef) -> Option<&Arc<Workload>> {
        find(&self.mesh, r)
    }
}

fn is_local(w: &Workload, spec: &NodeSpec) -> bool {
    let on_node = spec.node.is_some() && w.node == spec.node;
    on_node
        || spec
            .workloads
            .iter()
            .any(|r| r.namespace == w.namespace && r.name == w.name)
}

fn find<'m>(mesh: &'m Mesh, r: &WorkloadRef) -> Option<&'m Arc<Workload>> {
    mesh.workloads
        .iter()
        .find(|w| w.namespace == r.namespace && w.name == r.name)
}

/// For each local workload, the identities of the waypoints of every service (any port) it is an endpoint of.
fn waypoint_callers(
    mesh: &Mesh,
    trust_domain: &str,
    local: &BTreeMap<IpAddr, Arc<Workload>>,
) -> HashMap<IpAddr, BTreeSet<Identity>> {
    let mut out: HashMap<IpAddr, BTreeSet<Identity>> = HashMap::new();
    for svc in &mesh.services {
        mesh::config::background::checkpoint();
        let Some(wp) = svc.waypoint.as_ref().and_then(|r| mesh.waypoint(r)) else {
            continue;
        };
        let id = wp.identity(trust_domain);
        for port in &svc.ports {
            for ep in mesh.endpoints(svc, port.port) {
                if local.contains_key(&ep.addr.ip()) {
                    out.entry(ep.addr.ip()).or_default().insert(id.clone());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_ref_parses_ns_slash_name_only() {
        let r: WorkloadRef = "demo/client".parse().unwrap();
        assert_eq!(r.namespace, "demo");
        assert_eq!(r.name, "client");
        assert_eq!(r.to_string(), "demo/client");
        for bad in ["", "demo", "/x", "x/", "a/b/c"] {
            assert!(bad.parse::<WorkloadRef>().is_err(), "{bad:?}");
        }
    }
}
