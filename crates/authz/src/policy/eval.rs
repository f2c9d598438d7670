//! [`PolicySet`]: the compiled policies that apply to one destination, and their evaluation — CUSTOM, then
//! DENY, then ALLOW, AUDIT on the side, dry-run policies evaluated as a shadow that is never enforced.
//!
//! [`PolicySet::evaluate`] allocates nothing on the common path (a path with nothing to normalize, at most one
//! value per matched header): it returns a [`Decision`] of references into the set. [`PolicySet::explain`]
//! allocates a full per-policy trace for a debug view.

use std::sync::Arc;

use serde::Serialize;

use super::compile::CompiledPolicy;
use super::rule::View;
use super::{PolicyError, Tier};
use crate::attrs::Request;
use crate::model::Action;
use crate::path::PathError;

/// The policies that apply to one destination (a service behind the waypoint, or a workload at the node).
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    tier: Tier,
    custom: Vec<Arc<CompiledPolicy>>,
    deny: Vec<Arc<CompiledPolicy>>,
    allow: Vec<Arc<CompiledPolicy>>,
    audit: Vec<Arc<CompiledPolicy>>,
    /// Every dry-run policy, any action.
    dry_run: Vec<Arc<CompiledPolicy>>,
    /// Whether any dry-run policy is an ALLOW (the shadow then needs an ALLOW match).
    dry_allow: bool,
    /// CUSTOM providers, indexed by the bits of [`Decision::custom_providers`].
    providers: Vec<String>,
    /// Per policy in `custom`: its provider's index.
    custom_provider: Vec<u8>,
    uses_path: bool,
}

/// The most CUSTOM providers one set may consult (the bits of a `u64`).
pub const MAX_PROVIDERS: usize = 64;

/// Allowed or denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

/// Why the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No enforced ALLOW or DENY policy applies.
    NoPolicy,
    /// DENY policies apply, none matched, and no ALLOW policy applies.
    NoDenyMatched,
    /// A DENY policy matched ([`Decision::decided_by`]).
    DenyMatched,
    /// An ALLOW policy matched ([`Decision::decided_by`]).
    AllowMatched,
    /// ALLOW policies apply and none matched.
    NoAllowMatched,
}

/// A policy and the index of its rule that matched.
#[derive(Clone, Copy, Debug)]
pub struct Matched<'p> {
    pub policy: &'p CompiledPolicy,
    pub rule: usize,
}

/// What dry-run policies would have done (never enforced). The shadow verdict is the verdict had the dry-run
/// policies been enforced alongside the enforced ones.
#[derive(Clone, Copy, Debug)]
pub struct Shadow<'p> {
    pub verdict: Verdict,
    pub reason: Reason,
    /// The first dry-run DENY that matched, else the first dry-run ALLOW that matched.
    pub decided_by: Option<Matched<'p>>,
    /// The first dry-run AUDIT / CUSTOM policy that matched.
    pub audit: Option<Matched<'p>>,
    pub custom: Option<Matched<'p>>,
}

/// The outcome of [`PolicySet::evaluate`].
///
/// The caller first asks the CUSTOM providers ([`Decision::providers`]) — any that denies decides (its own
/// response) — and then obeys [`Decision::verdict`] (403 `RBAC: access denied` / 401 at the node tier).
#[derive(Clone, Copy, Debug)]
pub struct Decision<'p> {
    set: &'p PolicySet,
    /// The DENY/ALLOW verdict.
    pub verdict: Verdict,
    pub reason: Reason,
    /// The DENY or ALLOW policy (and rule) that decided, when one matched.
    pub decided_by: Option<Matched<'p>>,
    /// The first enforced CUSTOM policy that matched.
    pub custom: Option<Matched<'p>>,
    /// Bit `i` set: provider `i` of the set must be asked ([`Decision::providers`]).
    pub custom_providers: u64,
    /// The first AUDIT policy that matched: log this request for audit.
    pub audit: Option<Matched<'p>>,
    /// `Some` when the set has dry-run policies.
    pub shadow: Option<Shadow<'p>>,
}

impl<'p> Decision<'p> {
    /// The CUSTOM providers to ask, by name, in a stable order.
    pub fn providers(&self) -> impl Iterator<Item = &'p str> + 'p {
        let mask = self.custom_providers;
        self.set
            .providers
            .iter()
            .enumerate()
            .filter(move |(i, _)| mask & (1 << i) != 0)
            .map(|(_, p)| p.as_str())
    }
    pub fn allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}

impl PolicySet {
    /// A set from compiled policies (any order; each kept in `namespace/name` order within its action).
    /// Errors when the policies name more than [`MAX_PROVIDERS`] CUSTOM providers.
    pub fn new(
        tier: Tier,
        policies: impl IntoIterator<Item = Arc<CompiledPolicy>>,
    ) -> Result<PolicySet, PolicyError> {
        let mut all: Vec<_> = policies.into_iter().collect();
        all.sort_by(|a, b| a.key().cmp(b.key()));
        all.dedup_by(|a, b| a.key() == b.key());
        let mut set = PolicySet {
            tier,
            ..PolicySet::default()
        };
        for p in all {
            set.uses_path |= p.uses_path;
            if p.dry_run() {
                set.dry_allow |= p.action() == Action::Allow;
                set.dry_run.push(p);
                continue;
            }
            match p.action() {
                Action::Custom => {
                    let name = p.provider().unwrap_or_default();
                    let i = match set.providers.iter().position(|n| n == name) {
                        Some(i) => i,
                        None if set.providers.len() < MAX_PROVIDERS => {
                            set.providers.push(name.to_string());
                            set.providers.len() - 1
                        }
                        None => {
                            return Err(PolicyError {
                                policy: p.key().to_string(),
                                field: "spec.provider.name".into(),
                                message: format!("more than {MAX_PROVIDERS} CUSTOM providers apply to one destination"),
                            })
                        }
                    };
                    set.custom_provider.push(i as u8);
                    set.custom.push(p);
                }
                Action::Deny => set.deny.push(p),
                Action::Allow => set.allow.push(p),
                Action::Audit => set.audit.push(p),
            }
        }
        Ok(set)
    }

    pub fn tier(&self) -> Tier {
        self.tier
    }
    /// No policy at all: every request is allowed.
    pub fn is_empty(&self) -> bool {
        self.policies().next().is_none()
    }
    /// Every policy of the set: CUSTOM, DENY, ALLOW, AUDIT, then dry-run ones.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<CompiledPolicy>> {
        self.custom
            .iter()
            .chain(&self.deny)
            .chain(&self.allow)
            .chain(&self.audit)
            .chain(&self.dry_run)
    }
    /// The CUSTOM providers some enforced policy of the set names.
    pub fn providers(&self) -> &[String] {
        &self.providers
    }

    /// Judges `req`. Errors only when the path cannot be normalized (the proxy answers 400).
    pub fn evaluate<'p>(&'p self, req: &Request<'_>) -> Result<Decision<'p>, PathError> {
        let view = View::new(req, self.uses_path)?;
        let first = |list: &'p [Arc<CompiledPolicy>]| {
            list.iter()
                .find_map(|p| matching_rule(p, &view).map(|rule| Matched { policy: p, rule }))
        };
        let mut custom = None;
        let mut custom_providers = 0u64;
        for (p, &i) in self.custom.iter().zip(&self.custom_provider) {
            if let Some(rule) = matching_rule(p, &view) {
                custom.get_or_insert(Matched { policy: p, rule });
                custom_providers |= 1 << i;
            }
        }
        let deny = first(&self.deny);
        let allow = if deny.is_none() {
            first(&self.allow)
        } else {
            None
        };
        let (verdict, reason, decided_by) =
            verdict_of(deny, allow, !self.deny.is_empty(), !self.allow.is_empty());
        let audit = first(&self.audit);
        let shadow = (!self.dry_run.is_empty()).then(|| {
            let mut dry = [None; 4];
            for p in &self.dry_run {
                let slot = &mut dry[p.action() as usize];
                if slot.is_none() {
                    *slot = matching_rule(p, &view).map(|rule| Matched { policy: p, rule });
                }
            }
            let [dry_allow, dry_deny, dry_audit, dry_custom] = dry;
            let deny = deny.or(dry_deny);
            // The enforced ALLOW match was computed whenever no enforced DENY matched (else `deny` decides).
            let allow = allow.or(dry_allow);
            let has_deny = !self.deny.is_empty() || dry_deny.is_some();
            let has_allow = !self.allow.is_empty() || self.dry_allow;
            let (verdict, reason, _) = verdict_of(deny, allow, has_deny, has_allow);
            Shadow {
                verdict,
                reason,
                decided_by: dry_deny.or(dry_allow),
                audit: dry_audit,
                custom: dry_custom,
            }
        });
        Ok(Decision {
            set: self,
            verdict,
            reason,
            decided_by,
            custom,
            custom_providers,
            audit,
            shadow,
        })
    }

    /// [`PolicySet::evaluate`] plus, for every policy, whether it matched and why each rule did not.
    pub fn explain(&self, req: &Request<'_>) -> Result<Explanation, PathError> {
        let d = self.evaluate(req)?;
        let view = View::new(req, self.uses_path)?;
        let policies = self
            .policies()
            .map(|p| {
                let rules: Vec<RuleTrace> = p
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let failed = r.mismatch(&view).map(str::to_string);
                        RuleTrace {
                            rule: i,
                            matched: failed.is_none(),
                            failed,
                        }
                    })
                    .collect();
                PolicyTrace {
                    policy: p.key().to_string(),
                    action: p.action(),
                    dry_run: p.dry_run(),
                    provider: p.provider().map(str::to_string),
                    matched_rule: rules.iter().find(|r| r.matched).map(|r| r.rule),
                    rules,
                }
            })
            .collect();
        let named = |m: Option<Matched<'_>>| {
            m.map(|m| DecidedBy {
                policy: m.policy.key().to_string(),
                action: m.policy.action(),
                rule: m.rule,
            })
        };
        Ok(Explanation {
            tier: self.tier,
            verdict: d.verdict,
            reason: d.reason,
            decided_by: named(d.decided_by),
            custom_providers: d.providers().map(str::to_string).collect(),
            audit: named(d.audit),
            shadow_verdict: d.shadow.map(|s| s.verdict),
            shadow_decided_by: named(d.shadow.and_then(|s| s.decided_by)),
            policies,
        })
    }
}

/// Index of the first rule of `p` that matches (a policy without rules matches nothing).
fn matching_rule(p: &CompiledPolicy, view: &View<'_>) -> Option<usize> {
    p.rules.iter().position(|r| r.mismatch(view).is_none())
}

type Outcome<'p> = (Verdict, Reason, Option<Matched<'p>>);

/// CUSTOM aside: a matching DENY denies; else no ALLOW policy allows; else a matching ALLOW allows; else deny.
fn verdict_of<'p>(
    deny: Option<Matched<'p>>,
    allow: Option<Matched<'p>>,
    has_deny: bool,
    has_allow: bool,
) -> Outcome<'p> {
    match (deny, allow) {
        (Some(d), _) => (Verdict::Deny, Reason::DenyMatched, Some(d)),
        (None, Some(a)) => (Verdict::Allow, Reason::AllowMatched, Some(a)),
        (None, None) if has_allow => (Verdict::Deny, Reason::NoAllowMatched, None),
        (None, None) if has_deny => (Verdict::Allow, Reason::NoDenyMatched, None),
        (None, None) => (Verdict::Allow, Reason::NoPolicy, None),
    }
}

/// The full trace of [`PolicySet::explain`], serializable for a debug endpoint or `check --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub tier: Tier,
    pub verdict: Verdict,
    pub reason: Reason,
    pub decided_by: Option<DecidedBy>,
    /// CUSTOM providers that must be asked first.
    pub custom_providers: Vec<String>,
    pub audit: Option<DecidedBy>,
    pub shadow_verdict: Option<Verdict>,
    pub shadow_decided_by: Option<DecidedBy>,
    pub policies: Vec<PolicyTrace>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DecidedBy {
    pub policy: String,
    pub action: Action,
    pub rule: usize,
}

/// One policy in an [`Explanation`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyTrace {
    pub policy: String,
    pub action: Action,
    pub dry_run: bool,
    pub provider: Option<String>,
    /// The first rule that matched; `None` when none did (or the policy has no rules).
    pub matched_rule: Option<usize>,
    pub rules: Vec<RuleTrace>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleTrace {
    pub rule: usize,
    pub matched: bool,
    /// The first field that did not match, e.g. `spec.rules[0].from[0].source.principals`.
    pub failed: Option<String>,
}
