//! Which objects each subscriber needs.
//!
//! - A **waypoint** (Gateway `ns/name`): its Gateway; the Services bound to it (`istio.io/use-waypoint` on the
//!   Service, or else on its Namespace, as `mesh::config` resolves it) and the Services their routes send to
//!   (`backendRefs`, mirror `backendRef`); those Services' Namespaces, EndpointSlices and Pods (by selector and by
//!   slice `targetRef`); the HTTPRoutes/GRPCRoutes whose parent is a bound Service or the Gateway;
//!   DestinationRules and ReferenceGrants in those namespaces and DestinationRules whose host is one of the
//!   Services; AuthorizationPolicies and RequestAuthentications in the bound Services' namespaces, the
//!   Gateway's and the root namespace (`istio-system`).
//! - A **ztunnel**: every Namespace, Service and Pod (it addresses any destination), waypoint Gateways (where
//!   to send a service's traffic), EndpointSlices of Services without a selector, and the node-tier
//!   AuthorizationPolicies (those without `targetRef(s)`). The node name does not narrow it: every ztunnel gets
//!   the same set, computed once per config.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use crate::resources::{DocSet, Object};

/// The root namespace whose policies apply mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";
const USE_WAYPOINT: &str = "istio.io/use-waypoint";
const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";

/// What a subscriber serves, which decides what it receives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// The waypoint of Gateway `namespace/name`.
    Waypoint { namespace: String, name: String },
    /// Any ztunnel (all receive the same objects).
    Ztunnel,
}

type Key = (String, String);

/// Lookup tables built once per published config.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// (kind, namespace, name) → object.
    by_name: HashMap<(String, String, String), usize>,
    /// (kind, namespace) → objects.
    by_kind_ns: HashMap<(String, String), Vec<usize>>,
    /// Gateway (ns, name) → Services bound to it.
    bound: HashMap<Key, Vec<usize>>,
    /// Parent (kind, ns, name) → routes.
    routes_by_parent: HashMap<(String, String, String), Vec<usize>>,
    /// Service (ns, name) → EndpointSlices.
    slices: HashMap<Key, Vec<usize>>,
    /// Service (ns, name) named by a DestinationRule's host → rules.
    rules_by_host: HashMap<Key, Vec<usize>>,
}

fn label<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v["metadata"]["labels"][key].as_str()
}

impl Index {
    pub(crate) fn build(objects: &[Arc<Object>]) -> Index {
        let mut ix = Index::default();
        for (i, o) in objects.iter().enumerate() {
            ix.by_name.insert(
                (o.kind.clone(), o.namespace.clone(), o.object_name.clone()),
                i,
            );
            ix.by_kind_ns
                .entry((o.kind.clone(), o.namespace.clone()))
                .or_default()
                .push(i);
        }
        for (i, o) in objects.iter().enumerate() {
            match o.kind.as_str() {
                "Service" => {
                    if let Some(gw) = ix.binding(objects, o) {
                        ix.bound.entry(gw).or_default().push(i);
                    }
                }
                "HTTPRoute" | "GRPCRoute" => {
                    for p in o.value["spec"]["parentRefs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        let kind = p["kind"].as_str().unwrap_or("Gateway").to_string();
                        let ns = p["namespace"].as_str().unwrap_or(&o.namespace).to_string();
                        let name = p["name"].as_str().unwrap_or_default().to_string();
                        ix.routes_by_parent
                            .entry((kind, ns, name))
                            .or_default()
                            .push(i);
                    }
                }
                "EndpointSlice" => {
                    if let Some(svc) = label(&o.value, "kubernetes.io/service-name") {
                        let key = (o.namespace.clone(), svc.to_string());
                        ix.slices.entry(key).or_default().push(i);
                    }
                }
                "DestinationRule" => {
                    let host = o.value["spec"]["host"].as_str().unwrap_or_default();
                    let host = host.trim_end_matches('.');
                    let host = host.strip_suffix(".svc.cluster.local").unwrap_or(host);
                    let host = host.strip_suffix(".svc").unwrap_or(host);
                    let key = match host.split_once('.') {
                        Some((name, ns)) => (ns.to_string(), name.to_string()),
                        None => (o.namespace.clone(), host.to_string()),
                    };
                    ix.rules_by_host.entry(key).or_default().push(i);
                }
                _ => {}
            }
        }
        ix
    }

    /// The Gateway a Service uses: its own `istio.io/use-waypoint` label, or else its Namespace's.
    fn binding(&self, objects: &[Arc<Object>], svc: &Object) -> Option<Key> {
        let from = |v: &Value| {
            label(v, USE_WAYPOINT).map(|gw| {
                let ns = label(v, USE_WAYPOINT_NAMESPACE).unwrap_or(&svc.namespace);
                (ns.to_string(), gw.to_string())
            })
        };
        let ns_obj = self
            .get("Namespace", "", &svc.namespace)
            .map(|i| &objects[i].value);
        let (ns, gw) = from(&svc.value).or_else(|| ns_obj.and_then(from))?;
        (gw != "none").then_some((ns, gw))
    }

    fn get(&self, kind: &str, ns: &str, name: &str) -> Option<usize> {
        self.by_name
            .get(&(kind.to_string(), ns.to_string(), name.to_string()))
            .copied()
    }

    fn in_ns(&self, kind: &str, ns: &str) -> &[usize] {
        self.by_kind_ns
            .get(&(kind.to_string(), ns.to_string()))
            .map_or(&[], |v| v.as_slice())
    }
}

/// The objects `target` needs from `set` (unsorted, may repeat).
pub(crate) fn select(set: &DocSet, target: &Target) -> Vec<Arc<Object>> {
    let picked = match target {
        Target::Ztunnel => ztunnel(set),
        Target::Waypoint { namespace, name } => waypoint(set, namespace, name),
    };
    let mut picked: Vec<usize> = picked.into_iter().collect();
    picked.sort_unstable();
    picked.into_iter().map(|i| set.objects[i].clone()).collect()
}

fn ztunnel(set: &DocSet) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    for (i, o) in set.objects.iter().enumerate() {
        let spec = &o.value["spec"];
        let keep = match o.kind.as_str() {
            "Namespace" | "Service" | "Pod" => true,
            "Gateway" => spec["gatewayClassName"].as_str() == Some(mesh::config::WAYPOINT_CLASS),
            "AuthorizationPolicy" => {
                spec.get("targetRef").is_none() && spec.get("targetRefs").is_none()
            }
            "EndpointSlice" => label(&o.value, "kubernetes.io/service-name")
                .and_then(|svc| set.index.get("Service", &o.namespace, svc))
                .is_none_or(|s| {
                    let sel = &set.objects[s].value["spec"]["selector"];
                    sel.as_object().is_none_or(|m| m.is_empty())
                }),
            _ => false,
        };
        if keep {
            out.insert(i);
        }
    }
    out
}

fn waypoint(set: &DocSet, gw_ns: &str, gw_name: &str) -> BTreeSet<usize> {
    let ix = &set.index;
    let objects = &set.objects;
    let mut out = BTreeSet::new();
    let mut namespaces: BTreeSet<String> = [gw_ns.to_string(), ROOT_NAMESPACE.to_string()].into();
    // Where the policies the waypoint enforces live: its own, its bound services' and the root namespace.
    let mut policy_ns = namespaces.clone();
    out.extend(ix.get("Gateway", gw_ns, gw_name));

    // Bound services, the routes attached to them or to the Gateway, and the services those routes reach.
    let bound: Vec<usize> = ix
        .bound
        .get(&(gw_ns.to_string(), gw_name.to_string()))
        .cloned()
        .unwrap_or_default();
    let mut services: BTreeSet<usize> = bound.iter().copied().collect();
    let mut parents = vec![(
        "Gateway".to_string(),
        gw_ns.to_string(),
        gw_name.to_string(),
    )];
    for &s in &bound {
        let o = &objects[s];
        namespaces.insert(o.namespace.clone());
        policy_ns.insert(o.namespace.clone());
        parents.push(("Service".into(), o.namespace.clone(), o.object_name.clone()));
    }
    for parent in &parents {
        for &r in ix.routes_by_parent.get(parent).into_iter().flatten() {
            out.insert(r);
            let route = &objects[r];
            namespaces.insert(route.namespace.clone());
            let mut backends = Vec::new();
            collect_backends(&route.value["spec"], &route.namespace, &mut backends);
            for (ns, name) in backends {
                services.extend(ix.get("Service", &ns, &name));
            }
        }
    }

    // Each service: its namespace, slices, pods (by selector and by slice target), rules naming it.
    let mut pods: HashSet<usize> = HashSet::new();
    for &s in &services {
        out.insert(s);
        let svc = &objects[s];
        namespaces.insert(svc.namespace.clone());
        let key = (svc.namespace.clone(), svc.object_name.clone());
        for &sl in ix.slices.get(&key).into_iter().flatten() {
            out.insert(sl);
            for ep in objects[sl].value["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let t = &ep["targetRef"];
                if t["kind"].as_str() == Some("Pod") {
                    let ns = t["namespace"].as_str().unwrap_or(&svc.namespace);
                    pods.extend(ix.get("Pod", ns, t["name"].as_str().unwrap_or_default()));
                }
            }
        }
        out.extend(ix.rules_by_host.get(&key).into_iter().flatten());
        let selector: BTreeMap<String, String> = svc.value["spec"]["selector"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        if selector.is_empty() {
            continue;
        }
        for &p in ix.in_ns("Pod", &svc.namespace) {
            if selector
                .iter()
                .all(|(k, v)| label(&objects[p].value, k) == Some(v))
            {
                pods.insert(p);
            }
        }
    }
    out.extend(pods);

    for ns in &namespaces {
        out.extend(ix.get("Namespace", "", ns));
        for kind in ["DestinationRule", "ReferenceGrant"] {
            out.extend(ix.in_ns(kind, ns).iter().copied());
        }
    }
    for ns in &policy_ns {
        for kind in ["AuthorizationPolicy", "RequestAuthentication"] {
            out.extend(ix.in_ns(kind, ns).iter().copied());
        }
    }
    out
}

/// Every Service named by a `backendRefs` entry or a `backendRef` (mirror) under `v`: `(namespace, name)`.
fn collect_backends(v: &Value, default_ns: &str, out: &mut Vec<Key>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let refs: Vec<&Value> = match (k.as_str(), child) {
                    ("backendRefs", Value::Array(a)) => a.iter().collect(),
                    ("backendRef", o @ Value::Object(_)) => vec![o],
                    _ => Vec::new(),
                };
                for r in refs {
                    let kind = r["kind"].as_str().unwrap_or("Service");
                    let group = r["group"].as_str().unwrap_or("");
                    if kind == "Service" && group.is_empty() {
                        let ns = r["namespace"].as_str().unwrap_or(default_ns);
                        if let Some(name) = r["name"].as_str() {
                            out.push((ns.to_string(), name.to_string()));
                        }
                    }
                }
                collect_backends(child, default_ns, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| collect_backends(c, default_ns, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::split_documents;
    use std::path::PathBuf;

    const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/use-waypoint: wp}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 10.0.0.1, selector: {app: cart}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: other}
spec: {clusterIP: 10.0.0.2, selector: {app: db}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: lone, namespace: other}
spec: {clusterIP: 10.0.0.3, selector: {app: lone}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-1, namespace: shop, labels: {app: cart}}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: other, labels: {app: db}}
status: {podIP: 10.1.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: lone-1, namespace: other, labels: {app: lone}}
status: {podIP: 10.1.0.3}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cart, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: cart}]
  rules: [{backendRefs: [{name: cart, port: 80}, {name: db, namespace: other, port: 80}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec: {action: DENY, rules: [{from: [{source: {namespaces: [evil]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: at-waypoint, namespace: other}
spec: {targetRefs: [{kind: Service, group: "", name: lone}], action: ALLOW}
"#;

    fn names(set: &DocSet, target: &Target) -> Vec<String> {
        set.subset(target)
            .objects
            .iter()
            .map(|o| o.name.to_string())
            .collect()
    }

    #[test]
    fn waypoint_and_ztunnel_subsets() {
        let objs = split_documents(&[(PathBuf::from("m.yaml"), MESH.to_string())]).unwrap();
        let set = DocSet::new(1, objs);
        let wp = Target::Waypoint {
            namespace: "shop".into(),
            name: "wp".into(),
        };
        assert_eq!(
            names(&set, &wp),
            [
                "AuthorizationPolicy/istio-system/mesh-wide",
                "Gateway/shop/wp",
                "HTTPRoute/shop/cart",
                "Namespace/other",
                "Namespace/shop",
                "Pod/other/db-1",
                "Pod/shop/cart-1",
                "Service/other/db",
                "Service/shop/cart",
            ]
        );
        let zt = names(&set, &Target::Ztunnel);
        assert!(zt.contains(&"Pod/other/lone-1".to_string()));
        assert!(zt.contains(&"Gateway/shop/wp".to_string()));
        assert!(zt.contains(&"AuthorizationPolicy/istio-system/mesh-wide".to_string()));
        assert!(!zt.contains(&"AuthorizationPolicy/other/at-waypoint".to_string()));
        assert!(!zt.iter().any(|n| n.starts_with("HTTPRoute/")));
        let nobody = Target::Waypoint {
            namespace: "other".into(),
            name: "none".into(),
        };
        assert_eq!(
            names(&set, &nobody),
            [
                "AuthorizationPolicy/istio-system/mesh-wide",
                "AuthorizationPolicy/other/at-waypoint",
                "Namespace/other",
            ]
        );
    }
}
