//! The status of Istio's ambient policies, as istiod writes it: `status.conditions` holds one
//! `WaypointAccepted` condition per `AuthorizationPolicy` / `RequestAuthentication` with `targetRefs`, computed
//! by [`authz::report`] from the mesh this waypoint compiled (binding per targetRef, then what of the rules it
//! does not enforce, with the field named). `observedGeneration` is stamped by the status writer.
//!
//! Who writes ([`writes`]): a waypoint the policy binds to (a targetRef names its Gateway or a Service bound
//! to it; a root-namespace `GatewayClass istio-waypoint` binds every waypoint); and, for a policy bound to no
//! waypoint at all (`AncestorNotBound`, `TargetNotFound`, `Invalid`), the waypoints of the policy's
//! namespace. A policy bound only to *other* waypoints is left to them. Since the report is a pure function of
//! the config and never names the waypoint computing it, two waypoints that both write a policy write the
//! same condition: neither flips the other's (the writer leaves an equal status alone).
//!
//! Policies without `targetRefs` (`selector` or namespace-wide) are the node tier's (ztunnel): no write.
//! A policy that does not compile never reaches this point (the whole config is rejected, the last good one
//! serves, and its status stays as it was).

use authz::report::{self, PolicyReport, ServiceBinding, Topology, WAYPOINT_ACCEPTED};
use kube_source::{DesiredStatus, Kind, ObjectRef};
use mesh::config::{GatewayRef, Mesh};
use serde_json::json;

use crate::security::ROOT_NAMESPACE;

/// The statuses waypoint `gateway` writes for the policies of `mesh`.
pub(crate) fn policy_statuses(mesh: &Mesh, gateway: &GatewayRef) -> Vec<DesiredStatus> {
    let topology = MeshTopology(mesh);
    let aps = mesh.authorization_policies.iter().map(|p| {
        let r = report::authorization_policy(p, &topology);
        (Kind::AuthorizationPolicy, &p.namespace, &p.name, r)
    });
    let ras = mesh.request_authentications.iter().map(|p| {
        let r = report::request_authentication(p, &topology);
        (Kind::RequestAuthentication, &p.namespace, &p.name, r)
    });
    aps.chain(ras)
        .filter_map(|(kind, namespace, name, r)| {
            let r = r.filter(|r| writes(r, namespace, gateway))?;
            Some(DesiredStatus {
                object: ObjectRef {
                    kind,
                    namespace: namespace.clone(),
                    name: name.clone(),
                },
                generation: None,
                status: condition(&r),
            })
        })
        .collect()
}

/// Whether waypoint `gateway` writes the report of a policy in `namespace` (see the module doc).
pub(crate) fn writes(r: &PolicyReport, namespace: &str, gateway: &GatewayRef) -> bool {
    let bound_nowhere = r.bound_to.is_empty() && !r.all_waypoints;
    r.binds(&gateway.namespace, &gateway.name) || (bound_nowhere && namespace == gateway.namespace)
}

/// `{"conditions": [WaypointAccepted]}`.
fn condition(r: &PolicyReport) -> serde_json::Value {
    let status = if r.accepted { "True" } else { "False" };
    json!({"conditions": [{
        "type": WAYPOINT_ACCEPTED,
        "status": status,
        "reason": r.reason.as_str(),
        "message": r.message,
    }]})
}

struct MeshTopology<'m>(&'m Mesh);

impl Topology for MeshTopology<'_> {
    fn service(&self, namespace: &str, name: &str) -> ServiceBinding {
        match self.0.service(namespace, name) {
            None => ServiceBinding::NotFound,
            Some(s) => match &s.waypoint {
                Some(w) => ServiceBinding::Bound(format!("{}/{}", w.namespace, w.name)),
                None => ServiceBinding::NotBound,
            },
        }
    }
    fn waypoint_exists(&self, namespace: &str, name: &str) -> bool {
        let r = GatewayRef {
            namespace: namespace.into(),
            name: name.into(),
        };
        self.0.waypoint(&r).is_some()
    }
    fn root_namespace(&self) -> &str {
        ROOT_NAMESPACE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authz::report::Reason;

    fn gw(namespace: &str, name: &str) -> GatewayRef {
        GatewayRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn report(bound_to: &[&str], all_waypoints: bool) -> PolicyReport {
        PolicyReport {
            accepted: !bound_to.is_empty() || all_waypoints,
            reason: Reason::Accepted,
            message: String::new(),
            bound_to: bound_to.iter().map(|s| s.to_string()).collect(),
            all_waypoints,
        }
    }

    #[test]
    fn who_writes() {
        // (bound to, every waypoint, policy namespace, this waypoint, writes)
        type Case<'a> = (&'a [&'a str], bool, &'a str, (&'a str, &'a str), bool);
        let cases: &[Case] = &[
            (&["ns/a"], false, "ns", ("ns", "a"), true),
            (&["ns/a"], false, "ns", ("ns", "b"), false), // bound to another waypoint: its business
            (&["ns/a", "ns/b"], false, "ns", ("ns", "b"), true), // both write the same condition
            (&[], true, "istio-system", ("ns", "a"), true), // the waypoint GatewayClass: every waypoint
            (&[], false, "ns", ("ns", "a"), true), // bound nowhere: the namespace's waypoints
            (&[], false, "other", ("ns", "a"), false), // bound nowhere, another namespace
        ];
        for (bound, all, ns, (gns, gname), want) in cases {
            let got = writes(&report(bound, *all), ns, &gw(gns, gname));
            assert_eq!(
                got, *want,
                "{bound:?} all={all} ns={ns} waypoint={gns}/{gname}"
            );
        }
    }

    #[test]
    fn statuses_from_a_mesh() {
        let yaml = r#"
apiVersion: v1
kind: Namespace
metadata: {name: ns}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: ns}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: ns, labels: {istio.io/use-waypoint: waypoint}}
spec: {clusterIP: 10.0.0.1, ports: [{port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: ns}
spec: {clusterIP: 10.0.0.2, ports: [{port: 9080}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bound, namespace: ns}
spec: {targetRefs: [{kind: Service, group: "", name: reviews}], rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: unbound, namespace: ns}
spec: {targetRefs: [{kind: Service, group: "", name: plain}], rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: namespace-wide, namespace: ns}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: ns}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  jwtRules: [{issuer: i, jwksUri: "http://127.0.0.1:1/jwks"}]
"#;
        let mesh =
            Mesh::from_documents(&[("m.yaml".into(), yaml.into())], "cluster.local").unwrap();
        let out = policy_statuses(&mesh, &gw("ns", "waypoint"));
        let got: Vec<(String, String, String)> = out
            .iter()
            .map(|d| {
                let c = &d.status["conditions"][0];
                assert_eq!(c["type"], WAYPOINT_ACCEPTED);
                (
                    d.object.to_string(),
                    c["status"].as_str().unwrap().to_string(),
                    c["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want = [
            ("AuthorizationPolicy ns/bound", "True", "Accepted"),
            (
                "AuthorizationPolicy ns/unbound",
                "False",
                "AncestorNotBound",
            ),
            ("RequestAuthentication ns/jwt", "True", "Accepted"),
        ];
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        assert_eq!(got, want);
        // Another waypoint of the same namespace: the same unbound verdict, nothing of ns/waypoint's.
        let other = policy_statuses(&mesh, &gw("ns", "other"));
        assert_eq!(other.len(), 1);
        assert_eq!(other[0], out[1]);
    }
}
