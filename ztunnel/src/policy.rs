//! Node-tier authorization: the L4 `AuthorizationPolicy` each local workload enforces on inbound HBONE.
//!
//! **Compile** ([`NodeAuthz::compile`], from [`crate::view::NodeView::compile`], so once per config snapshot):
//! per local workload, `authz::policy::PolicySet::for_node` with the pod's namespace and labels and the root
//! namespace [`ROOT_NAMESPACE`] — policies without `targetRefs` whose `selector` matches the pod, namespace-wide
//! ones (no selector) for every pod of the namespace, root-namespace ones for every pod. Pods with the same
//! namespace and labels share one compiled set.
//!
//! **Judge** ([`NodeAuthz::authorize`], per CONNECT, before the application is dialled): source principal
//! (`td/ns/<ns>/sa/<sa>`) and namespace from the verified peer certificate — for traffic relayed by a waypoint
//! that is the waypoint's identity, as in Istio — source IP = the TCP peer of the outer connection, destination =
//! the CONNECT's `pod ip:port`, no HTTP part. A denial is answered `401` (what Istio's ztunnel answers, flag
//! `AuthorizationPolicyDenied`) and names the deciding policy. The principal is formatted on the stack: judging
//! allocates nothing, and a pod without policies costs one hash look-up.
//!
//! **Report**: what the node tier cannot enforce as written — rules with HTTP attributes
//! (`DiagnosticKind::NotEnforceableAtL4`: an ALLOW rule never matches, a DENY rule applies without them, so
//! both fail closed), AUDIT and CUSTOM actions — is logged once per compiled snapshot ([`NodeAuthz::log`]) and
//! listed by [`NodeAuthz::summary`] in the admin `/config_dump`, each with the local workloads it concerns.
//! A policy set that fails to compile (the manifests loader validates every policy first, so this is a
//! backstop) denies everything to its workload.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use authz::attrs::Request;
use authz::model::{Action, AuthorizationPolicySpec, Named};
use authz::policy::{Diagnostic, PolicyError, PolicySet, Reason, Verdict};
use mesh::config::Workload;
use mesh::identity::Identity;
use serde::Serialize;

/// The mesh root namespace: its policies apply to every workload (Istio's default).
pub const ROOT_NAMESPACE: &str = authz::policy::DEFAULT_ROOT_NAMESPACE;

/// The counter/log label of a denial no policy decided: ALLOW policies apply and none matched.
pub const NO_ALLOW_MATCHED: &str = "(no ALLOW policy matched)";

/// The counter/log label of a denial because the workload's policies did not compile.
pub const NOT_COMPILED: &str = "(policies did not compile)";

/// What one local workload enforces (only workloads with at least one policy have one).
#[derive(Debug)]
struct Enforced {
    /// `namespace/name`.
    workload: String,
    set: Result<Arc<PolicySet>, Arc<PolicyError>>,
}

/// The compiled node-tier authorization of one config snapshot.
#[derive(Debug, Default)]
pub struct NodeAuthz {
    by_ip: HashMap<IpAddr, Enforced>,
    reports: Vec<Report>,
}

/// A [`Diagnostic`] and the local workloads (`namespace/name`) it concerns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub diagnostic: Diagnostic,
    pub workloads: Vec<String>,
}

/// Why a CONNECT is denied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("denied by AuthorizationPolicy {policy} (DENY, rules[{rule}])")]
    DenyMatched { policy: String, rule: usize },
    #[error("denied: ALLOW policies apply to this workload and none matched")]
    NoAllowMatched,
    #[error("denied: the workload's policies did not compile: {0}")]
    NotCompiled(Arc<PolicyError>),
}

impl Denial {
    /// The deciding policy (`namespace/name`), or [`NO_ALLOW_MATCHED`] / [`NOT_COMPILED`]: the counter label.
    pub fn label(&self) -> &str {
        match self {
            Denial::DenyMatched { policy, .. } => policy,
            Denial::NoAllowMatched => NO_ALLOW_MATCHED,
            Denial::NotCompiled(_) => NOT_COMPILED,
        }
    }
}

impl NodeAuthz {
    /// Compiles what each of the `local` workloads enforces (see the module doc).
    pub fn compile<'w>(
        policies: &[Named<AuthorizationPolicySpec>],
        local: impl IntoIterator<Item = &'w Workload>,
    ) -> NodeAuthz {
        type Compiled = Result<(Arc<PolicySet>, Vec<Diagnostic>), Arc<PolicyError>>;
        let mut shared: HashMap<(&str, &BTreeMap<String, String>), Compiled> = HashMap::new();
        let mut reports: BTreeMap<String, Report> = BTreeMap::new();
        let mut by_ip = HashMap::new();
        for w in local {
            let compiled = shared
                .entry((w.namespace.as_str(), &w.labels))
                .or_insert_with(|| {
                    PolicySet::for_node(policies, &w.namespace, &w.labels, ROOT_NAMESPACE)
                        .map(|np| (np.set, np.diagnostics))
                        .map_err(Arc::new)
                });
            let workload = format!("{}/{}", w.namespace, w.name);
            let set = match compiled {
                Ok((set, diagnostics)) => {
                    for d in diagnostics.iter() {
                        reports
                            .entry(d.to_string())
                            .or_insert_with(|| Report {
                                diagnostic: d.clone(),
                                workloads: vec![],
                            })
                            .workloads
                            .push(workload.clone());
                    }
                    if set.is_empty() {
                        continue;
                    }
                    Ok(set.clone())
                }
                Err(e) => Err(e.clone()),
            };
            by_ip.insert(w.ip, Enforced { workload, set });
        }
        NodeAuthz {
            by_ip,
            reports: reports.into_values().collect(),
        }
    }

    /// Judges a CONNECT from `peer` (verified certificate) at `source` to the local workload `destination`.
    pub fn authorize(
        &self,
        peer: &Identity,
        source: IpAddr,
        destination: SocketAddr,
    ) -> Result<(), Denial> {
        let Some(enforced) = self.by_ip.get(&destination.ip()) else {
            return Ok(());
        };
        let set = match &enforced.set {
            Ok(set) => set,
            Err(e) => return Err(Denial::NotCompiled(e.clone())),
        };
        with_principal(peer, |principal| {
            let req = Request {
                source_principal: Some(principal),
                source_namespace: Some(&peer.namespace),
                source_ip: source,
                remote_ip: source,
                destination_ip: destination.ip(),
                destination_port: destination.port(),
                http: None,
            };
            // Without an HTTP part there is no path to normalize: an error cannot happen; fail closed anyway.
            let Ok(d) = set.evaluate(&req) else {
                return Err(Denial::NoAllowMatched);
            };
            if let Some(shadow) = d.shadow.filter(|s| s.verdict != d.verdict) {
                let by = shadow.decided_by.map(|m| m.policy.key());
                let would = match shadow.verdict {
                    Verdict::Deny => "denied",
                    Verdict::Allow => "allowed",
                };
                tracing::info!(peer = %peer, %source, %destination, dry_run_policy = ?by,
                    "a dry-run AuthorizationPolicy would have {would} this connection");
            }
            match (d.verdict, d.decided_by) {
                (Verdict::Allow, _) => Ok(()),
                (Verdict::Deny, Some(m)) if d.reason == Reason::DenyMatched => {
                    Err(Denial::DenyMatched {
                        policy: m.policy.key().to_string(),
                        rule: m.rule,
                    })
                }
                (Verdict::Deny, _) => Err(Denial::NoAllowMatched),
            }
        })
    }

    /// What cannot be enforced as written, deduplicated, each with the workloads it concerns.
    pub fn reports(&self) -> &[Report] {
        &self.reports
    }

    /// Logs every report (warn) and every set that did not compile (error): called once per compiled snapshot.
    pub fn log(&self) {
        for r in &self.reports {
            tracing::warn!(kind = ?r.diagnostic.kind, workloads = ?r.workloads, "node tier: {}", r.diagnostic);
        }
        for e in self.by_ip.values() {
            if let Err(err) = &e.set {
                tracing::error!(workload = %e.workload, "node tier: every inbound connection will be denied: {err}");
            }
        }
    }

    /// The admin view: per workload its policies (`namespace/name ACTION`, `dry-run` marked), the reports, and
    /// the sets that did not compile.
    pub fn summary(&self) -> Summary {
        let mut workloads = BTreeMap::new();
        let mut errors = BTreeMap::new();
        for e in self.by_ip.values() {
            match &e.set {
                Ok(set) => {
                    let policies = set
                        .policies()
                        .map(|p| {
                            let dry = if p.dry_run() { " (dry-run)" } else { "" };
                            format!("{} {}{dry}", p.key(), action_name(p.action()))
                        })
                        .collect();
                    workloads.insert(e.workload.clone(), policies);
                }
                Err(err) => {
                    errors.insert(e.workload.clone(), err.to_string());
                }
            }
        }
        Summary {
            workloads,
            not_enforced_as_written: self.reports.clone(),
            errors,
        }
    }
}

/// [`NodeAuthz::summary`]: serialized into `/config_dump` as `authorization`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Workload → the policies it enforces (workloads without policies are not listed).
    pub workloads: BTreeMap<String, Vec<String>>,
    /// Rules with HTTP attributes, AUDIT/CUSTOM actions: see the module doc.
    pub not_enforced_as_written: Vec<Report>,
    /// Workload → why its policies did not compile (it denies everything).
    pub errors: BTreeMap<String, String>,
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Allow => "ALLOW",
        Action::Deny => "DENY",
        Action::Audit => "AUDIT",
        Action::Custom => "CUSTOM",
    }
}

/// Calls `f` with Istio's principal form of `id` (`td/ns/<ns>/sa/<sa>`), formatted on the stack when it fits.
fn with_principal<R>(id: &Identity, f: impl FnOnce(&str) -> R) -> R {
    let mut buf = [0u8; 512];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let written = write!(cursor, "{}", Principal(id)).is_ok();
    let len = cursor.position() as usize;
    match written
        .then(|| std::str::from_utf8(&buf[..len]).ok())
        .flatten()
    {
        Some(s) => f(s),
        None => f(&Principal(id).to_string()),
    }
}

struct Principal<'a>(&'a Identity);

impl fmt::Display for Principal<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.0;
        write!(
            f,
            "{}/ns/{}/sa/{}",
            id.trust_domain, id.namespace, id.service_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authz::policy::DiagnosticKind;
    use mesh::config::Mesh;
    use std::path::PathBuf;

    /// node-b of `testdata` (demo/app-1 10.0.1.3 app=echo; legacy/db 10.0.2.4 app=db) under `policies`.
    fn node_b(policies: &str) -> NodeAuthz {
        let docs = [(
            PathBuf::from("test.yaml"),
            format!("{}---\n{policies}", crate::testdata::MANIFESTS),
        )];
        let mesh = Mesh::from_documents(&docs, "cluster.local").expect("manifests parse");
        let local = mesh
            .workloads
            .iter()
            .filter(|w| w.node.as_deref() == Some("node-b"));
        NodeAuthz::compile(&mesh.authorization_policies, local.map(|w| w.as_ref()))
    }

    const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}], to: [{operation: {ports: ["8080"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-lab, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [lab], notIpBlocks: [10.9.0.0/16]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-post, namespace: legacy}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["*/sa/batch"]}}], to: [{operation: {methods: [POST]}}]}]
"#;

    #[test]
    fn authorize_table() {
        let authz = node_b(POLICIES);
        let app: SocketAddr = "10.0.1.3:8080".parse().unwrap();
        let db: SocketAddr = "10.0.2.4:5432".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases = [
            (
                "allowed principal",
                ("demo", "client"),
                "10.0.0.2",
                app,
                None,
            ),
            (
                "other principal",
                ("demo", "other"),
                "10.0.0.2",
                app,
                Some(NO_ALLOW_MATCHED),
            ),
            (
                "allowed principal, other port",
                ("demo", "client"),
                "10.0.0.2",
                "10.0.1.3:9090".parse().unwrap(),
                Some(NO_ALLOW_MATCHED),
            ),
            (
                "root-namespace DENY",
                ("lab", "client"),
                "10.0.0.2",
                db,
                Some("istio-system/deny-lab"),
            ),
            (
                "root-namespace DENY, excepted ipBlock",
                ("lab", "x"),
                "10.9.1.1",
                db,
                None,
            ),
            (
                "DENY with methods fails closed",
                ("ops", "batch"),
                "10.0.0.2",
                db,
                Some("legacy/deny-post"),
            ),
            (
                "no ALLOW policy on db",
                ("ops", "cron"),
                "10.0.0.2",
                db,
                None,
            ),
            (
                "not a local workload: nothing to enforce",
                ("x", "y"),
                "10.0.0.2",
                "10.0.0.2:80".parse().unwrap(),
                None,
            ),
        ];
        for (name, (ns, sa), from, to, want) in cases {
            let peer = Identity::new("cluster.local", ns, sa);
            let got = authz.authorize(&peer, ip(from), to);
            assert_eq!(
                got.as_ref().err().map(Denial::label),
                want,
                "{name}: {got:?}"
            );
        }
        let deny = authz.authorize(
            &Identity::new("cluster.local", "lab", "a"),
            ip("10.0.0.2"),
            db,
        );
        assert_eq!(
            deny,
            Err(Denial::DenyMatched {
                policy: "istio-system/deny-lab".into(),
                rule: 0
            })
        );
    }

    #[test]
    fn reports_name_the_policy_rule_and_workloads_once() {
        let authz = node_b(POLICIES);
        let reports = authz.reports();
        assert_eq!(reports.len(), 1, "{reports:?}");
        let r = &reports[0];
        assert_eq!(r.diagnostic.policy, "legacy/deny-post");
        assert_eq!(r.diagnostic.rule, Some(0));
        assert_eq!(r.diagnostic.kind, DiagnosticKind::NotEnforceableAtL4);
        assert_eq!(r.workloads, ["legacy/db"]);

        // A root-namespace rule with paths concerns every local workload: one report listing both.
        let authz = node_b(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: api, namespace: istio-system}\n\
             spec: {rules: [{to: [{operation: {paths: [/api]}}]}]}\n",
        );
        let reports = authz.reports();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].workloads, ["demo/app-1", "legacy/db"]);
        let summary = authz.summary();
        assert_eq!(summary.workloads["demo/app-1"], ["istio-system/api ALLOW"]);
        assert_eq!(summary.workloads.len(), 2);
        assert!(summary.errors.is_empty());
    }

    #[test]
    fn no_policies_nothing_enforced() {
        let authz = node_b("apiVersion: v1\nkind: Namespace\nmetadata: {name: lab}\n");
        assert!(authz.by_ip.is_empty());
        assert!(authz.reports().is_empty());
    }

    #[test]
    fn principal_is_istio_form_even_when_long() {
        let short = Identity::new("cluster.local", "demo", "client");
        assert_eq!(
            with_principal(&short, str::to_string),
            "cluster.local/ns/demo/sa/client"
        );
        let long = Identity::new("td", "ns", &"s".repeat(600));
        let got = with_principal(&long, str::to_string);
        assert_eq!(got.len(), "td/ns/ns/sa/".len() + 600);
    }
}
