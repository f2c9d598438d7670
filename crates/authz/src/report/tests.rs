//! Tables of [`super::authorization_policy`] / [`super::request_authentication`]: binding per target, the
//! flattening of several targets, what of the rules is not enforced, and that the report does not depend on
//! which waypoint computes it.

use super::*;
use crate::model::{AuthorizationPolicySpec, Named, RequestAuthenticationSpec};

/// `ns/reviews` bound to `ns/waypoint`, `ns/ratings` to `ns/other`, `ns/plain` not bound.
struct Mesh;

impl Topology for Mesh {
    fn service(&self, namespace: &str, name: &str) -> ServiceBinding {
        match (namespace, name) {
            ("ns", "reviews") => ServiceBinding::Bound("ns/waypoint".into()),
            ("ns", "ratings") => ServiceBinding::Bound("ns/other".into()),
            ("ns", "plain") => ServiceBinding::NotBound,
            _ => ServiceBinding::NotFound,
        }
    }
    fn waypoint_exists(&self, namespace: &str, name: &str) -> bool {
        namespace == "ns" && matches!(name, "waypoint" | "other")
    }
    fn root_namespace(&self) -> &str {
        "istio-system"
    }
}

fn ap(ns: &str, yaml: &str) -> Named<AuthorizationPolicySpec> {
    Named {
        namespace: ns.into(),
        name: "p".into(),
        dry_run: false,
        spec: serde_yaml::from_str(yaml).unwrap(),
    }
}

const SVC: &str = "kind: Service, group: \"\"";
const GW: &str = "kind: Gateway, group: gateway.networking.k8s.io";
const CLASS: &str = "kind: GatewayClass, group: gateway.networking.k8s.io";

#[test]
fn binding_follows_istio() {
    use Reason::*;
    let cases: Vec<(&str, String, bool, Reason, &str)> = vec![
        (
            "ns",
            format!("targetRefs: [{{{SVC}, name: reviews}}]"),
            true,
            Accepted,
            "bound to ns/waypoint",
        ),
        (
            "ns",
            format!("targetRefs: [{{{GW}, name: waypoint}}]"),
            true,
            Accepted,
            "bound to ns/waypoint",
        ),
        (
            "ns",
            format!("targetRef: {{{GW}, name: other}}"),
            true,
            Accepted,
            "bound to ns/other",
        ),
        (
            "ns",
            format!("targetRefs: [{{{SVC}, name: plain}}]"),
            false,
            AncestorNotBound,
            "Service ns/plain is not bound to a waypoint",
        ),
        (
            "ns",
            format!("targetRefs: [{{{SVC}, name: ghost}}]"),
            false,
            TargetNotFound,
            "Service ns/ghost was not found",
        ),
        (
            "ns",
            format!("targetRefs: [{{{GW}, name: ghost}}]"),
            false,
            TargetNotFound,
            "Gateway ns/ghost was not found",
        ),
        (
            "istio-system",
            format!("targetRefs: [{{{CLASS}, name: istio-waypoint}}]"),
            true,
            Accepted,
            "bound to istio-waypoint",
        ),
        (
            "ns",
            format!("targetRefs: [{{{CLASS}, name: istio-waypoint}}]"),
            false,
            Invalid,
            "must be in the root namespace `istio-system`",
        ),
        (
            "istio-system",
            format!("targetRefs: [{{{CLASS}, name: istio}}]"),
            false,
            Invalid,
            "is not the waypoint class",
        ),
        (
            "ns",
            "targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: ext}]".into(),
            false,
            Invalid,
            "ServiceEntry.networking.istio.io ns/ext is not a target this waypoint supports",
        ),
        (
            "ns",
            format!("targetRefs: [{{{SVC}, name: reviews}}, {{{SVC}, name: ratings}}]"),
            true,
            Accepted,
            "bound to ns/waypoint, ns/other",
        ),
        (
            "ns",
            format!("targetRefs: [{{{SVC}, name: reviews}}, {{{SVC}, name: plain}}]"),
            true,
            PartiallyInvalid,
            "bound to ns/waypoint; Invalid targetRefs: Service.core:ns/plain",
        ),
        (
            "ns",
            format!("targetRefs: [{{{SVC}, name: plain}}, {{{SVC}, name: ghost}}]"),
            false,
            Invalid,
            "Invalid targetRefs: Service.core:ns/plain, Service.core:ns/ghost",
        ),
    ];
    for (ns, yaml, accepted, reason, message) in cases {
        let r = authorization_policy(&ap(ns, &format!("{yaml}\nrules: [{{}}]")), &Mesh).unwrap();
        assert_eq!((r.accepted, r.reason), (accepted, reason), "{yaml}: {r:?}");
        assert!(
            r.message.contains(message),
            "{yaml}: {:?} lacks {message:?}",
            r.message
        );
    }
}

#[test]
fn what_of_the_rules_is_not_enforced_is_named() {
    use Reason::*;
    let target = format!("targetRefs: [{{{SVC}, name: reviews}}]");
    let sni = "{when: [{key: connection.sni, values: [a.example]}]}";
    let cases: Vec<(String, bool, Reason, &str)> = vec![
        (
            format!("action: DENY\nrules: [{{to: [{{operation: {{paths: [/admin*]}}}}]}}, {sni}]"),
            true,
            PartiallyInvalid,
            "spec.rules[1].when[0].key: connection.sni",
        ),
        (
            format!("action: ALLOW\nrules: [{sni}]"),
            false,
            Invalid,
            "spec.rules[0].when[0].key: connection.sni",
        ),
        (
            "action: CUSTOM\nprovider: {name: opa}".into(),
            false,
            Invalid,
            "spec.rules: a CUSTOM policy without rules is never triggered",
        ),
        (
            r#"action: DENY
rules: [{when: [{key: "request.headers[x-a]", values: [b]}]}]"#
                .into(),
            true,
            Accepted,
            "bound to ns/waypoint",
        ),
        // Not bound: the rules are not judged (nothing here enforces them anyway).
        (
            format!("action: ALLOW\nrules: [{sni}]"),
            false,
            AncestorNotBound,
            "not bound",
        ),
    ];
    for (i, (rest, accepted, reason, message)) in cases.into_iter().enumerate() {
        let target = match i {
            4 => format!("targetRefs: [{{{SVC}, name: plain}}]"),
            _ => target.clone(),
        };
        let r = authorization_policy(&ap("ns", &format!("{target}\n{rest}")), &Mesh).unwrap();
        assert_eq!((r.accepted, r.reason), (accepted, reason), "{rest}: {r:?}");
        assert!(
            r.message.contains(message),
            "{rest}: {:?} lacks {message:?}",
            r.message
        );
    }
    let mut dry = ap("ns", &format!("{target}\nrules: [{{}}]"));
    dry.dry_run = true;
    let r = authorization_policy(&dry, &Mesh).unwrap();
    assert_eq!((r.accepted, r.reason), (true, Accepted));
    assert!(r.message.contains("dry-run"), "{r:?}");
}

#[test]
fn node_tier_policies_have_no_report() {
    for yaml in [
        "rules: [{}]",
        "selector: {matchLabels: {app: a}}\nrules: [{}]",
    ] {
        assert_eq!(authorization_policy(&ap("ns", yaml), &Mesh), None, "{yaml}");
    }
    let ra = Named {
        namespace: "ns".into(),
        name: "jwt".into(),
        dry_run: false,
        spec: RequestAuthenticationSpec::default(),
    };
    assert_eq!(request_authentication(&ra, &Mesh), None);
}

#[test]
fn every_waypoint_computes_the_same_report_and_knows_whether_it_is_bound() {
    let p = ap(
        "ns",
        &format!("targetRefs: [{{{SVC}, name: reviews}}, {{{SVC}, name: ratings}}]\nrules: [{{}}]"),
    );
    let r = authorization_policy(&p, &Mesh).unwrap();
    assert_eq!(r.bound_to, ["ns/other", "ns/waypoint"]);
    assert!(r.binds("ns", "waypoint") && r.binds("ns", "other") && !r.binds("ns", "third"));
    let class = ap(
        "istio-system",
        &format!("targetRefs: [{{{CLASS}, name: istio-waypoint}}]"),
    );
    let r = authorization_policy(&class, &Mesh).unwrap();
    assert!(r.all_waypoints && r.binds("any", "waypoint"), "{r:?}");
}

#[test]
fn request_authentications_bind_like_policies() {
    use Reason::*;
    let ra = |yaml: &str| Named {
        namespace: "ns".into(),
        name: "jwt".into(),
        dry_run: false,
        spec: serde_yaml::from_str::<RequestAuthenticationSpec>(yaml).unwrap(),
    };
    let keys = "jwtRules: [{issuer: i, jwks: '{\"keys\": []}'}]";
    let cases = [
        (
            format!("targetRefs: [{{{GW}, name: waypoint}}]\n{keys}"),
            true,
            Accepted,
            "bound to ns/waypoint",
        ),
        (
            format!("targetRefs: [{{{SVC}, name: plain}}]\n{keys}"),
            false,
            AncestorNotBound,
            "not bound",
        ),
        (
            format!("targetRefs: [{{{CLASS}, name: istio-waypoint}}]\n{keys}"),
            false,
            Invalid,
            "GatewayClass targets of a RequestAuthentication are not supported",
        ),
        (
            format!("targetRefs: [{{{SVC}, name: reviews}}]\njwtRules: [{{issuer: i}}]"),
            false,
            Invalid,
            "spec.jwtRules[0].jwksUri: one of jwks or jwksUri is required",
        ),
    ];
    for (yaml, accepted, reason, message) in cases {
        let r = request_authentication(&ra(&yaml), &Mesh).unwrap();
        assert_eq!((r.accepted, r.reason), (accepted, reason), "{yaml}: {r:?}");
        assert!(
            r.message.contains(message),
            "{yaml}: {:?} lacks {message:?}",
            r.message
        );
    }
}
