//! Which policies a destination enforces, per tier (Istio ambient's attachment rules).
//!
//! **Waypoint** ([`PolicySet::for_waypoint`]): a policy applies when its `targetRefs` name
//! - the waypoint `Gateway` itself (`gateway.networking.k8s.io`, same namespace): all its traffic;
//! - the `GatewayClass` `istio-waypoint`, from the root namespace: all traffic of every waypoint;
//! - a `Service` (core group, same namespace) the waypoint serves: traffic to that service.
//!
//! `selector` policies and policies with neither (namespace-wide) belong to the node tier: in the namespaces
//! the waypoint serves (and the root namespace), each is reported as [`DiagnosticKind::NotEnforcedByWaypoint`]
//! instead of silently not applying. `ServiceEntry` targets are reported as unsupported.
//!
//! **Node** ([`PolicySet::for_node`], the ztunnel): policies without `targetRefs`, in the workload's namespace
//! or the root namespace, whose `selector` (when set) matches the workload's labels. AUDIT and CUSTOM are not
//! enforced at L4 ([`DiagnosticKind::UnsupportedAction`]); HTTP attributes follow ztunnel's rules (see
//! [`super::Tier::Node`]). Dry-run policies are evaluated and recorded, never enforced, at both tiers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::compile::CompiledPolicy;
use super::eval::PolicySet;
use super::{Diagnostic, DiagnosticKind, PolicyError, Tier};
use crate::model::{Action, AuthorizationPolicySpec, Named, PolicyTargetReference};

/// The `gatewayClassName` of waypoints; root-namespace policies targeting it apply to every waypoint.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";

/// Istio's default root namespace.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// What one waypoint enforces: a set per served Service, plus diagnostics.
#[derive(Clone, Debug, Default)]
pub struct WaypointPolicies {
    /// The Gateway- and GatewayClass-wide policies only: for traffic to no known service.
    pub gateway: Arc<PolicySet>,
    /// namespace → service name → its set (the gateway-wide policies included).
    pub services: HashMap<String, HashMap<String, Arc<PolicySet>>>,
    pub diagnostics: Vec<Diagnostic>,
}

impl WaypointPolicies {
    /// The set for Service `namespace/name` (the gateway-wide set when the service is not served).
    pub fn for_service(&self, namespace: &str, name: &str) -> &Arc<PolicySet> {
        self.services
            .get(namespace)
            .and_then(|m| m.get(name))
            .unwrap_or(&self.gateway)
    }
}

/// What the node tier enforces for one workload.
#[derive(Clone, Debug, Default)]
pub struct NodePolicies {
    pub set: Arc<PolicySet>,
    pub diagnostics: Vec<Diagnostic>,
}

fn targets(spec: &AuthorizationPolicySpec) -> impl Iterator<Item = &PolicyTargetReference> {
    spec.target_ref.iter().chain(&spec.target_refs)
}

impl PolicySet {
    /// The policies waypoint `gateway` (`(namespace, name)`) enforces for each of `services`
    /// (`(namespace, name)` of the Services bound to it), compiled once and shared. `root_ns` is the mesh root
    /// namespace ([`DEFAULT_ROOT_NAMESPACE`] unless configured). A policy that does not compile is an error.
    pub fn for_waypoint<'s>(
        policies: &[Named<AuthorizationPolicySpec>],
        gateway: (&str, &str),
        services: impl IntoIterator<Item = (&'s str, &'s str)>,
        root_ns: &str,
    ) -> Result<WaypointPolicies, PolicyError> {
        let served: HashSet<(&str, &str)> = services.into_iter().collect();
        let served_ns: HashSet<&str> = served.iter().map(|(ns, _)| *ns).collect();
        let relevant_ns = |ns: &str| ns == root_ns || ns == gateway.0 || served_ns.contains(ns);
        let mut out = WaypointPolicies::default();
        let mut wide: Vec<Arc<CompiledPolicy>> = Vec::new();
        let mut per_service: HashMap<(&str, &str), Vec<Arc<CompiledPolicy>>> = HashMap::new();
        let mut sorted: Vec<&Named<AuthorizationPolicySpec>> = policies.iter().collect();
        sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for p in sorted {
            let ns = p.namespace.as_str();
            let mut all = false;
            let mut svcs = Vec::new();
            let mut any_target = false;
            for t in targets(&p.spec) {
                any_target = true;
                match (t.group.as_str(), t.kind.as_str()) {
                    (GATEWAY_GROUP, "Gateway") if ns == gateway.0 && t.name == gateway.1 => {
                        all = true
                    }
                    (GATEWAY_GROUP, "GatewayClass") if t.name == WAYPOINT_CLASS => {
                        if ns == root_ns {
                            all = true;
                        } else if relevant_ns(ns) {
                            out.diagnostics.push(diag(p, DiagnosticKind::UnsupportedTarget, format!(
                                "targets GatewayClass {WAYPOINT_CLASS} outside the root namespace {root_ns}: ignored")));
                        }
                    }
                    ("" | "core", "Service") => {
                        if let Some(&key) = served.get(&(ns, t.name.as_str())) {
                            svcs.push(key);
                        }
                    }
                    ("networking.istio.io", "ServiceEntry") if relevant_ns(ns) => {
                        out.diagnostics.push(diag(p, DiagnosticKind::UnsupportedTarget, format!(
                            "ServiceEntry {} is not supported by this waypoint: the policy does not apply", t.name)));
                    }
                    _ => {}
                }
            }
            if !any_target {
                if relevant_ns(ns) {
                    let what = if p.spec.selector.is_some() {
                        "a selector policy"
                    } else {
                        "a policy without targetRefs"
                    };
                    out.diagnostics.push(diag(p, DiagnosticKind::NotEnforcedByWaypoint, format!(
                        "{what} is enforced by the node tier (ztunnel), not by waypoint {}/{}: attach it with targetRefs to the Service or the Gateway",
                        gateway.0, gateway.1)));
                }
                continue;
            }
            if !all && svcs.is_empty() {
                continue;
            }
            let (compiled, notes) = CompiledPolicy::compile(p, Tier::Waypoint)?;
            out.diagnostics.extend(notes);
            let compiled = Arc::new(compiled);
            if all {
                wide.push(compiled);
            } else {
                for s in svcs {
                    per_service.entry(s).or_default().push(compiled.clone());
                }
            }
        }
        out.gateway = Arc::new(PolicySet::new(Tier::Waypoint, wide.iter().cloned())?);
        for (ns, name) in served {
            let own = per_service.remove(&(ns, name)).unwrap_or_default();
            let set = if own.is_empty() {
                out.gateway.clone()
            } else {
                Arc::new(PolicySet::new(
                    Tier::Waypoint,
                    wide.iter().cloned().chain(own),
                )?)
            };
            out.services
                .entry(ns.to_string())
                .or_default()
                .insert(name.to_string(), set);
        }
        Ok(out)
    }

    /// The policies the node tier enforces for a workload in `namespace` with `labels` (see the module doc).
    pub fn for_node(
        policies: &[Named<AuthorizationPolicySpec>],
        namespace: &str,
        labels: &BTreeMap<String, String>,
        root_ns: &str,
    ) -> Result<NodePolicies, PolicyError> {
        let mut out = NodePolicies::default();
        let mut selected = Vec::new();
        for p in policies {
            if targets(&p.spec).next().is_some()
                || (p.namespace != namespace && p.namespace != root_ns)
            {
                continue;
            }
            let selects = p
                .spec
                .selector
                .as_ref()
                .is_none_or(|s| s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)));
            if !selects {
                continue;
            }
            if matches!(p.spec.action, Action::Audit | Action::Custom) {
                // Still validated: a broken policy is an error at every tier.
                CompiledPolicy::compile(p, Tier::Node)?;
                out.diagnostics.push(diag(p, DiagnosticKind::UnsupportedAction, format!(
                    "the node tier (ztunnel) does not support the {:?} action: not enforced; attach it to a waypoint",
                    p.spec.action)));
                continue;
            }
            let (compiled, notes) = CompiledPolicy::compile(p, Tier::Node)?;
            out.diagnostics.extend(notes);
            selected.push(Arc::new(compiled));
        }
        out.set = Arc::new(PolicySet::new(Tier::Node, selected)?);
        Ok(out)
    }
}

fn diag(p: &Named<AuthorizationPolicySpec>, kind: DiagnosticKind, message: String) -> Diagnostic {
    Diagnostic {
        policy: p.key(),
        rule: None,
        kind,
        message,
    }
}
