//! Compiled AuthorizationPolicies and their evaluation (CUSTOM → DENY → ALLOW, AUDIT, dry-run) for the
//! waypoint (L7) and the node tier (L4), with Istio's semantics.
//!
//! - [`CompiledPolicy::compile`] parses a `Named<AuthorizationPolicySpec>` once (CIDRs, ports, string forms,
//!   path templates, `when` keys) and validates it: a bad value is a [`PolicyError`] naming the policy and the
//!   field (`spec.rules[0].from[0].source.ipBlocks[1]`); an unknown `when` key is an error.
//! - [`PolicySet::for_waypoint`] / [`PolicySet::for_node`] pick the policies a destination enforces
//!   (attachment: see [`attach`]) and return shared sets plus [`Diagnostic`]s — policies not enforced where
//!   a user may expect them, rules not enforceable at L4.
//! - [`PolicySet::evaluate`] judges an [`attrs::Request`](crate::attrs::Request) without allocating and
//!   returns a [`Decision`]; [`PolicySet::explain`] returns the whole per-policy trace.
//!
//! Semantics, as Istio documents them:
//! - Order: CUSTOM policies that match name the providers to ask first ([`Decision::providers`]); then a
//!   matching DENY denies; then, when ALLOW policies apply, one must match; with none, the request is allowed.
//!   AUDIT policies only mark the request ([`Decision::audit`]). `istio.io/dry-run` policies are evaluated into
//!   [`Decision::shadow`], never enforced.
//! - Rules: missing `rules` and `rules: []` match nothing (an ALLOW policy without rules allows nothing: it
//!   denies all); a rule `{}` matches every request. A rule matches when `from` (any source), `to` (any
//!   operation) and every `when` condition match; a field matches any of its values; a `not*` field matches
//!   when none does; an absent attribute matches no value (so its `not*` form matches).
//! - Values: exact, `prefix*`, `*suffix`, `*` = present (for principals and namespaces: any authenticated
//!   caller). Hosts ignore case and match with or without the port. Paths are matched after
//!   [`crate::path::normalize`] (no query), with Envoy URI templates `{*}` / `{**}`. Several values of one
//!   header are matched joined with `,` (Envoy). Claims match a string, a list element or a boolean's text.
//! - [`Tier::Node`] follows Istio's ztunnel for HTTP attributes (`hosts`, `methods`, `paths`,
//!   `requestPrincipals`, `remoteIpBlocks`, `when` keys other than `source.ip`, `source.namespace`,
//!   `source.principal`, `destination.ip`, `destination.port`): an ALLOW rule using them never matches; a
//!   DENY rule is enforced with them dropped (fails closed). Each such rule is a
//!   [`DiagnosticKind::NotEnforceableAtL4`].

pub mod attach;
mod compile;
mod eval;
mod matcher;
mod rule;

use serde::Serialize;

pub use attach::{NodePolicies, WaypointPolicies, DEFAULT_ROOT_NAMESPACE, WAYPOINT_CLASS};
pub use compile::{validate, CompiledPolicy};
pub use eval::{
    DecidedBy, Decision, Explanation, Matched, PolicySet, PolicyTrace, Reason, RuleTrace, Shadow,
    Verdict, MAX_PROVIDERS,
};

/// Where policies are enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// The waypoint: L7, every attribute.
    #[default]
    Waypoint,
    /// The node proxy (ztunnel): L4 only; see the module doc for HTTP attributes.
    Node,
}

/// A policy that does not compile: which policy, which field, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("AuthorizationPolicy {policy}: {field}: {message}")]
pub struct PolicyError {
    /// `namespace/name`.
    pub policy: String,
    /// e.g. `spec.rules[0].from[0].source.ipBlocks[1]`.
    pub field: String,
    pub message: String,
}

/// Something a user should know about a policy that compiled: where it is not enforced, or not as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// `namespace/name`.
    pub policy: String,
    /// The rule index, when it concerns one rule.
    pub rule: Option<usize>,
    pub kind: DiagnosticKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiagnosticKind {
    /// A `selector` or namespace-wide policy near a waypoint: the node tier enforces it, the waypoint does not.
    NotEnforcedByWaypoint,
    /// A rule with HTTP attributes at the node tier.
    NotEnforceableAtL4,
    /// AUDIT or CUSTOM at the node tier.
    UnsupportedAction,
    /// A target this implementation does not attach to (`ServiceEntry`, a GatewayClass outside the root
    /// namespace).
    UnsupportedTarget,
    /// A CUSTOM policy without rules: never triggered.
    CustomWithoutRules,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthorizationPolicy {}", self.policy)?;
        if let Some(r) = self.rule {
            write!(f, " rules[{r}]")?;
        }
        write!(f, ": {}", self.message)
    }
}
