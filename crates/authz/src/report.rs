//! What of a policy a waypoint enforces, and what not, as the one condition Istio's control plane writes on
//! ambient policies: `status.conditions[type=WaypointAccepted]` ([`PolicyReport`]).
//!
//! A pure function of the policy and of how its `targetRefs` resolve ([`Topology`]): every waypoint that
//! judges the same config computes the same report, so two waypoints writing it never flip each other's
//! condition. The binding part follows Istio (`WaypointPolicyStatusCollection` and `flattenConditions`):
//!
//! | each targetRef | bound | reason | message |
//! |---|---|---|---|
//! | `Gateway` that is a waypoint | yes | `Accepted` | `bound to ns/waypoint` |
//! | `Gateway` that is not | no | `TargetNotFound` | `Gateway ns/x was not found` |
//! | `Service` bound to a waypoint | yes | `Accepted` | `bound to ns/waypoint` |
//! | `Service` not bound | no | `AncestorNotBound` | `Service ns/x is not bound to a waypoint` |
//! | `Service` absent | no | `TargetNotFound` | `Service ns/x was not found` |
//! | `GatewayClass istio-waypoint` from the root namespace | yes (every waypoint) | `Accepted` | `bound to istio-waypoint` |
//! | `GatewayClass` elsewhere, `ServiceEntry` | no | `Invalid` | why |
//!
//! One targetRef gives its own condition. Several: `True` when any is bound, reason `Accepted`, or
//! `PartiallyInvalid` when some are not (`Invalid targetRefs: Service.core:ns/x`); none bound: `False`,
//! `Invalid`.
//!
//! Then what the waypoint does with the rules of a bound policy (this implementation's addition, the field
//! named): a `when` key a waypoint cannot observe (`connection.sni`: the request arrives inside HBONE, with no
//! TLS SNI of its own; see `Attr::Sni` in the rule evaluator) makes the policy `PartiallyInvalid` (other rules
//! enforced as written) or `Invalid` (`False`: no rule is); so does a CUSTOM policy without rules (never
//! triggered, `Invalid`). A spec that does not compile is `Invalid` with its field. A dry-run policy stays
//! `Accepted`, and its message says it is not enforced.
//!
//! Policies without `targetRefs` (`selector` or namespace-wide) have no report ([`authorization_policy`]
//! returns `None`): the node tier enforces them, and a waypoint has nothing to say about them.

use crate::model::{
    AuthorizationPolicySpec, Named, PolicyTargetReference, RequestAuthenticationSpec,
};
use crate::policy::{CompiledPolicy, DiagnosticKind, Tier, WAYPOINT_CLASS};

/// The condition type.
pub const WAYPOINT_ACCEPTED: &str = "WaypointAccepted";

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// The condition's `reason`, Istio's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Accepted,
    PartiallyInvalid,
    Invalid,
    AncestorNotBound,
    TargetNotFound,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Accepted => "Accepted",
            Reason::PartiallyInvalid => "PartiallyInvalid",
            Reason::Invalid => "Invalid",
            Reason::AncestorNotBound => "AncestorNotBound",
            Reason::TargetNotFound => "TargetNotFound",
        }
    }
}

/// How a `Service` resolves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceBinding {
    /// Bound to this waypoint (`namespace/name`).
    Bound(String),
    NotBound,
    NotFound,
}

/// The mesh as the report needs it.
pub trait Topology {
    fn service(&self, namespace: &str, name: &str) -> ServiceBinding;
    /// Whether `namespace/name` is a waypoint Gateway.
    fn waypoint_exists(&self, namespace: &str, name: &str) -> bool;
    /// The mesh root namespace (GatewayClass targets are only honoured from there).
    fn root_namespace(&self) -> &str;
}

/// The `WaypointAccepted` condition of one policy, and which waypoints it binds to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyReport {
    /// The condition's `status`.
    pub accepted: bool,
    pub reason: Reason,
    pub message: String,
    /// The waypoints (`namespace/name`) a targetRef binds the policy to, sorted, once each.
    pub bound_to: Vec<String>,
    /// A root-namespace `GatewayClass istio-waypoint` target: bound to every waypoint.
    pub all_waypoints: bool,
}

impl PolicyReport {
    /// Whether waypoint `namespace/name` enforces (part of) the policy.
    pub fn binds(&self, namespace: &str, name: &str) -> bool {
        self.all_waypoints
            || self
                .bound_to
                .iter()
                .any(|w| w.split_once('/') == Some((namespace, name)))
    }
}

/// One targetRef, resolved.
struct Binding {
    ancestor: String,
    bound_to: Option<String>,
    reason: Reason,
    message: String,
}

/// The report of an AuthorizationPolicy; `None` without targetRefs (not a waypoint's policy).
pub fn authorization_policy(
    policy: &Named<AuthorizationPolicySpec>,
    topology: &impl Topology,
) -> Option<PolicyReport> {
    let spec = &policy.spec;
    let targets: Vec<&PolicyTargetReference> =
        spec.target_ref.iter().chain(&spec.target_refs).collect();
    let mut report = bind("AuthorizationPolicy", &policy.namespace, &targets, topology)?;
    if !report.accepted {
        return Some(report);
    }
    let gaps = match CompiledPolicy::compile(policy, Tier::Waypoint) {
        Err(e) => {
            return Some(invalid(report, format!("{}: {}", e.field, e.message), true));
        }
        Ok((_, notes)) => notes
            .iter()
            .filter(|d| d.kind == DiagnosticKind::CustomWithoutRules)
            .map(|d| (None, format!("spec.rules: {}", d.message)))
            .chain(unobservable(spec))
            .collect::<Vec<_>>(),
    };
    if !gaps.is_empty() {
        let rules = spec.rules.as_ref().map_or(0, Vec::len);
        let mut gap_rules: Vec<usize> = gaps.iter().filter_map(|(r, _)| *r).collect();
        gap_rules.dedup();
        let none_enforced = gaps.iter().any(|(r, _)| r.is_none()) || gap_rules.len() >= rules;
        let what: Vec<String> = gaps.into_iter().map(|(_, m)| m).collect();
        report = invalid(
            report,
            format!("not enforced as written: {}", what.join("; ")),
            none_enforced,
        );
    }
    if policy.dry_run {
        report.message += "; dry-run (istio.io/dry-run): evaluated and logged, not enforced";
    }
    Some(report)
}

/// The report of a RequestAuthentication (bound like an AuthorizationPolicy; a `GatewayClass` or
/// `ServiceEntry` target is not supported for it here); `None` without targetRefs.
pub fn request_authentication(
    policy: &Named<RequestAuthenticationSpec>,
    topology: &impl Topology,
) -> Option<PolicyReport> {
    let spec = &policy.spec;
    let targets: Vec<&PolicyTargetReference> =
        spec.target_ref.iter().chain(&spec.target_refs).collect();
    let report = bind(
        "RequestAuthentication",
        &policy.namespace,
        &targets,
        topology,
    )?;
    if !report.accepted {
        return Some(report);
    }
    let missing_keys = spec
        .jwt_rules
        .iter()
        .position(|r| r.jwks.is_none() && r.jwks_uri.is_none());
    Some(match missing_keys {
        Some(i) => invalid(
            report,
            format!("spec.jwtRules[{i}].jwksUri: one of jwks or jwksUri is required (OpenID discovery is not supported)"),
            true,
        ),
        None => report,
    })
}

/// `Invalid` (`False`) when nothing is enforced as written, else `PartiallyInvalid`; `what` appended.
fn invalid(mut report: PolicyReport, what: String, nothing_enforced: bool) -> PolicyReport {
    report.accepted = !nothing_enforced;
    report.reason = match nothing_enforced {
        true => Reason::Invalid,
        false => Reason::PartiallyInvalid,
    };
    report.message = format!("{}; {what}", report.message);
    report
}

/// `when` keys a waypoint cannot observe, as `(rule, message naming the field)`.
fn unobservable(spec: &AuthorizationPolicySpec) -> Vec<(Option<usize>, String)> {
    let mut out = Vec::new();
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        for (j, c) in rule.when.iter().enumerate() {
            if c.key.trim() == "connection.sni" {
                out.push((Some(i), format!(
                    "spec.rules[{i}].when[{j}].key: connection.sni is not available at a waypoint (requests arrive inside HBONE, without TLS SNI): its values never match, its notValues always do")));
            }
        }
    }
    out
}

fn bind(
    kind: &str,
    namespace: &str,
    targets: &[&PolicyTargetReference],
    topology: &impl Topology,
) -> Option<PolicyReport> {
    if targets.is_empty() {
        return None;
    }
    let bindings: Vec<Binding> = targets
        .iter()
        .map(|t| resolve(kind, namespace, t, topology))
        .collect();
    let mut bound_to: Vec<String> = bindings.iter().filter_map(|b| b.bound_to.clone()).collect();
    bound_to.sort();
    bound_to.dedup();
    let all_waypoints = bound_to.iter().any(|b| b == WAYPOINT_CLASS);
    bound_to.retain(|b| b != WAYPOINT_CLASS);
    let any_bound = bindings.iter().any(|b| b.bound_to.is_some());
    let (reason, message) = match &bindings[..] {
        [one] => (one.reason, one.message.clone()),
        _ => {
            let unbound: Vec<&str> = bindings
                .iter()
                .filter(|b| b.bound_to.is_none())
                .map(|b| b.ancestor.as_str())
                .collect();
            let mut bound: Vec<&str> = bindings
                .iter()
                .filter_map(|b| b.bound_to.as_deref())
                .collect();
            bound.dedup();
            match (any_bound, unbound.is_empty()) {
                (true, true) => (Reason::Accepted, format!("bound to {}", bound.join(", "))),
                (true, false) => (
                    Reason::PartiallyInvalid,
                    format!(
                        "bound to {}; Invalid targetRefs: {}",
                        bound.join(", "),
                        unbound.join(", ")
                    ),
                ),
                (false, _) => (
                    Reason::Invalid,
                    format!("Invalid targetRefs: {}", unbound.join(", ")),
                ),
            }
        }
    };
    Some(PolicyReport {
        accepted: any_bound,
        reason,
        message,
        bound_to,
        all_waypoints,
    })
}

fn resolve(
    kind: &str,
    namespace: &str,
    t: &PolicyTargetReference,
    topology: &impl Topology,
) -> Binding {
    let ns = t
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(namespace);
    let key = format!("{ns}/{}", t.name);
    let group = if t.group.is_empty() { "core" } else { &t.group };
    let ancestor = format!("{}.{group}:{key}", t.kind);
    let no = |reason, message| Binding {
        ancestor: ancestor.clone(),
        bound_to: None,
        reason,
        message,
    };
    let yes = |waypoint: String| Binding {
        ancestor: ancestor.clone(),
        message: format!("bound to {waypoint}"),
        bound_to: Some(waypoint),
        reason: Reason::Accepted,
    };
    let root = topology.root_namespace();
    match (t.group.as_str(), t.kind.as_str()) {
        _ if ns != namespace => no(
            Reason::Invalid,
            format!("{} {key}: cross-namespace targets are not allowed", t.kind),
        ),
        (GATEWAY_GROUP, "Gateway") if topology.waypoint_exists(ns, &t.name) => yes(key),
        (GATEWAY_GROUP, "Gateway") => no(
            Reason::TargetNotFound,
            format!("Gateway {key} was not found"),
        ),
        (GATEWAY_GROUP, "GatewayClass") if kind != "AuthorizationPolicy" => no(
            Reason::Invalid,
            format!("GatewayClass targets of a {kind} are not supported by this waypoint"),
        ),
        (GATEWAY_GROUP, "GatewayClass") if ns != root => no(
            Reason::Invalid,
            format!(
                "{kind} must be in the root namespace `{root}` when referencing a GatewayClass"
            ),
        ),
        (GATEWAY_GROUP, "GatewayClass") if t.name == WAYPOINT_CLASS => yes(WAYPOINT_CLASS.into()),
        (GATEWAY_GROUP, "GatewayClass") => no(
            Reason::Invalid,
            format!(
                "GatewayClass {} is not the waypoint class `{WAYPOINT_CLASS}`",
                t.name
            ),
        ),
        ("" | "core", "Service") => match topology.service(ns, &t.name) {
            ServiceBinding::Bound(w) => yes(w),
            ServiceBinding::NotBound => no(
                Reason::AncestorNotBound,
                format!("Service {key} is not bound to a waypoint"),
            ),
            ServiceBinding::NotFound => no(
                Reason::TargetNotFound,
                format!("Service {key} was not found"),
            ),
        },
        (group, k) => no(
            Reason::Invalid,
            format!(
                "{k}.{} {key} is not a target this waypoint supports",
                if group.is_empty() { "core" } else { group }
            ),
        ),
    }
}

#[cfg(test)]
#[path = "report/tests.rs"]
mod tests;
