//! Linking parsed objects into a [`Mesh`]: which workloads are ambient, which waypoint each Service uses, and
//! the indexes behind every lookup (by name, by VIP, by IP, selector → pods, service → EndpointSlices).
//!
//! Selector matching is indexed (namespace, label key, label value) → pods, and each service scans only the
//! shortest candidate list, so a mesh of many services and pods resolves in about linear time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::destination;
use super::parse::Parsed;
use super::{
    GatewayRef, Index, Mesh, Namespace, Service, Waypoint, Workload, DATAPLANE_MODE, USE_WAYPOINT,
    USE_WAYPOINT_NAMESPACE,
};

/// Resolves what was parsed into a [`Mesh`] and indexes it.
pub(super) fn build(parsed: Parsed, trust_domain: &str) -> Mesh {
    let namespaces: HashMap<String, Namespace> = parsed
        .namespaces
        .into_iter()
        .map(|ns| (ns.name.clone(), ns))
        .collect();
    let workloads = parsed
        .workloads
        .into_iter()
        .map(|mut w| {
            w.ambient = ambient(&w, &namespaces);
            Arc::new(w)
        })
        .collect();
    let waypoints: HashMap<GatewayRef, &Waypoint> = parsed
        .waypoints
        .iter()
        .map(|w| {
            (
                GatewayRef {
                    namespace: w.namespace.clone(),
                    name: w.name.clone(),
                },
                w,
            )
        })
        .collect();
    let mut services = parsed.services;
    for s in &mut services {
        super::background::checkpoint();
        s.waypoint = binding(s, &namespaces, &waypoints);
    }
    drop(waypoints);
    let mut mesh = Mesh {
        trust_domain: trust_domain.to_string(),
        namespaces,
        services,
        workloads,
        waypoints: parsed.waypoints,
        http_routes: parsed.http_routes,
        grpc_routes: parsed.grpc_routes,
        reference_grants: parsed.reference_grants,
        destination_rules: parsed.destination_rules,
        authorization_policies: parsed.authorization_policies,
        request_authentications: parsed.request_authentications,
        skipped: parsed.skipped,
        index: Index {
            slices: parsed.slices,
            ..Index::default()
        },
    };
    mesh.reindex();
    mesh
}

/// In the ambient mesh: the pod's `istio.io/dataplane-mode` (`ambient`, or `none` to opt out), else its
/// namespace's.
fn ambient(w: &Workload, namespaces: &HashMap<String, Namespace>) -> bool {
    match w.labels.get(DATAPLANE_MODE).map(String::as_str) {
        Some("ambient") => true,
        Some("none") => false,
        _ => namespaces
            .get(&w.namespace)
            .and_then(|ns| ns.labels.get(DATAPLANE_MODE))
            .is_some_and(|m| m == "ambient"),
    }
}

/// The waypoint a Service uses: its own `istio.io/use-waypoint` label, else its namespace's; effective only when
/// that Gateway is a known waypoint for services (`istio.io/waypoint-for` `service` or `all`).
fn binding(
    svc: &Service,
    namespaces: &HashMap<String, Namespace>,
    waypoints: &HashMap<GatewayRef, &Waypoint>,
) -> Option<GatewayRef> {
    let (labels, own_namespace, from) = if svc.labels.contains_key(USE_WAYPOINT) {
        (&svc.labels, svc.namespace.as_str(), "Service")
    } else {
        let ns = namespaces.get(&svc.namespace)?;
        (&ns.labels, ns.name.as_str(), "Namespace")
    };
    let name = labels
        .get(USE_WAYPOINT)
        .filter(|n| !n.is_empty() && *n != "none")?;
    let namespace = labels
        .get(USE_WAYPOINT_NAMESPACE)
        .filter(|n| !n.is_empty())
        .map_or(own_namespace, |n| n);
    let r = GatewayRef {
        namespace: namespace.to_string(),
        name: name.clone(),
    };
    let Some(wp) = waypoints.get(&r) else {
        tracing::warn!(service = %format!("{}/{}", svc.namespace, svc.name), from,
            waypoint = %format!("{}/{}", r.namespace, r.name), "use-waypoint names no istio-waypoint Gateway: no waypoint");
        return None;
    };
    if !matches!(wp.waypoint_for.as_str(), "service" | "all") {
        tracing::debug!(service = %format!("{}/{}", svc.namespace, svc.name), waypoint_for = %wp.waypoint_for,
            "waypoint is not for services: no waypoint");
        return None;
    }
    Some(r)
}

impl Mesh {
    /// Rebuilds the lookup indexes from the public fields (`services`, `workloads`, `waypoints`). [`Mesh::load_dir`]
    /// and [`Mesh::from_documents`] do it; call it after changing those fields by hand (e.g. in tests).
    pub fn reindex(&mut self) {
        let mut ix = Index {
            slices: std::mem::take(&mut self.index.slices),
            ..Index::default()
        };
        for (i, s) in self.services.iter().enumerate() {
            ix.service_by_name
                .entry(s.namespace.clone())
                .or_default()
                .entry(s.name.clone())
                .or_insert(i);
            if let Some(vip) = s.vip {
                for (pi, p) in s.ports.iter().enumerate() {
                    ix.service_by_vip
                        .entry(SocketAddr::new(vip, p.port))
                        .or_insert((i, pi));
                }
            }
            if let Some(w) = &s.waypoint {
                ix.services_by_waypoint
                    .entry(w.clone())
                    .or_default()
                    .push(i);
            }
        }
        for (i, w) in self.workloads.iter().enumerate() {
            ix.workload_by_ip.entry(w.ip).or_insert(i);
            ix.workload_by_name
                .entry(w.namespace.clone())
                .or_default()
                .entry(w.name.clone())
                .or_insert(i);
        }
        for (i, w) in self.waypoints.iter().enumerate() {
            let r = GatewayRef {
                namespace: w.namespace.clone(),
                name: w.name.clone(),
            };
            ix.waypoint_by_ref.entry(r).or_insert(i);
        }

        // Selector → pods: (namespace, key, value) → workloads carrying that label.
        let mut by_label: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::new();
        for (i, w) in self.workloads.iter().enumerate() {
            for (k, v) in &w.labels {
                by_label.entry((&w.namespace, k, v)).or_default().push(i);
            }
        }
        ix.service_pods = self
            .services
            .iter()
            .map(|s| {
                let candidates = s
                    .selector
                    .iter()
                    .map(|(k, v)| by_label.get(&(s.namespace.as_str(), k.as_str(), v.as_str())))
                    .collect::<Option<Vec<_>>>();
                let Some(shortest) = candidates.and_then(|c| c.into_iter().min_by_key(|v| v.len()))
                else {
                    return Vec::new(); // empty selector, or a label no pod has
                };
                shortest
                    .iter()
                    .copied()
                    .filter(|&i| {
                        let labels = &self.workloads[i].labels;
                        s.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
                    })
                    .collect()
            })
            .collect();

        let mut slices_of: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (i, sl) in ix.slices.iter().enumerate() {
            slices_of
                .entry((&sl.namespace, &sl.service))
                .or_default()
                .push(i);
        }
        let service_slices = self
            .services
            .iter()
            .map(|s| {
                slices_of
                    .get(&(s.namespace.as_str(), s.name.as_str()))
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        drop(slices_of);
        ix.service_slices = service_slices;
        ix.rule_by_service = self.index_destination_rules();
        self.index = ix;
    }
}

impl Mesh {
    /// Service `(namespace, name)` → the index in `destination_rules` of the rule that applies to it (see
    /// [`super::destination`] for the precedence); the others are ignored with a warning.
    fn index_destination_rules(&self) -> HashMap<(String, String), usize> {
        let mut out: HashMap<(String, String), usize> = HashMap::new();
        for (i, r) in self.destination_rules.iter().enumerate() {
            let Some(key) = r.object.service.clone() else {
                continue;
            };
            match out.get(&key).copied() {
                None => {
                    out.insert(key, i);
                }
                Some(kept) => {
                    let rules = &self.destination_rules;
                    let (winner, loser) = if destination::precedes(r, &rules[kept], &key.0) {
                        out.insert(key.clone(), i);
                        (i, kept)
                    } else {
                        (kept, i)
                    };
                    tracing::warn!(service = %format!("{}/{}", key.0, key.1),
                        applied = %destination::describe(&rules[winner]),
                        ignored = %destination::describe(&rules[loser]),
                        "several DestinationRules for one Service: one applies");
                }
            }
        }
        out
    }
}
