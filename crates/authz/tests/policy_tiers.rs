//! The two tiers: the node tier's (ztunnel's) treatment of HTTP attributes, and which policies each tier
//! picks up (attachment), with the diagnostics that say what is not enforced where.

mod policy_support;

use std::collections::BTreeMap;

use authz::policy::{DiagnosticKind, PolicySet, Reason, Tier, DEFAULT_ROOT_NAMESPACE};
use policy_support::*;

/// Verdict of `policies` at the node tier for an L4 connection from `r`.
fn node(
    policies: &[authz::model::Named<authz::model::AuthorizationPolicySpec>],
    r: &R,
) -> authz::policy::Verdict {
    let r = R {
        http: false,
        ..r.clone()
    };
    decide(&set(Tier::Node, policies), &r).verdict
}

#[test]
fn l4_fields_are_enforced_at_the_node() {
    let bob = R::from("b", "bob");
    let cases = [
        (
            "rules: [{from: [{source: {principals: ['*/sa/bob']}}]}]",
            bob.clone(),
            ALLOW,
        ),
        (
            "rules: [{from: [{source: {principals: ['*/sa/eve']}}]}]",
            bob.clone(),
            DENY,
        ),
        (
            "rules: [{from: [{source: {notNamespaces: [b]}}]}]",
            bob.clone(),
            DENY,
        ),
        (
            "rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]",
            bob.clone(),
            ALLOW,
        ),
        (
            "rules: [{to: [{operation: {ports: ['8080']}}]}]",
            bob.clone(),
            ALLOW,
        ),
        (
            "rules: [{to: [{operation: {notPorts: ['8080']}}]}]",
            bob.clone(),
            DENY,
        ),
        (
            "rules: [{when: [{key: destination.port, values: ['8080']}]}]",
            bob.clone(),
            ALLOW,
        ),
        (
            "rules: [{when: [{key: source.principal, values: ['*']}]}]",
            R::plaintext(),
            DENY,
        ),
        (
            "{action: DENY, rules: [{from: [{source: {notPrincipals: ['*']}}]}]}",
            R::plaintext(),
            DENY,
        ),
        (
            "{action: DENY, rules: [{from: [{source: {notPrincipals: ['*']}}]}]}",
            bob.clone(),
            ALLOW,
        ),
    ];
    for (i, (yaml, r, want)) in cases.into_iter().enumerate() {
        assert_eq!(node(&[pol("b/p", yaml)], &r), want, "case {i}: {yaml}");
    }
}

#[test]
fn http_attributes_fail_closed_at_the_node() {
    let bob = R::from("b", "bob");
    let cases = [
        // ALLOW: a rule with an HTTP attribute never matches (the other rules still can)
        ("rules: [{to: [{operation: {methods: [GET]}}]}]", ALLOW, DENY),
        ("rules: [{from: [{source: {principals: ['*/sa/bob'], requestPrincipals: ['*']}}]}]", DENY, DENY),
        ("rules: [{to: [{operation: {paths: [/]}}]}, {from: [{source: {namespaces: [b]}}]}]", ALLOW, ALLOW),
        ("rules: [{when: [{key: 'request.headers[x]', notValues: [y]}]}]", ALLOW, DENY),
        ("rules: [{when: [{key: remote.ip, values: [10.0.0.0/8]}]}]", ALLOW, DENY),
        // DENY: the HTTP fields are dropped, so the rule applies more widely
        ("{action: DENY, rules: [{to: [{operation: {methods: [POST]}}]}]}", ALLOW, DENY),
        ("{action: DENY, rules: [{from: [{source: {namespaces: [b]}}], to: [{operation: {paths: ['/admin*']}}]}]}", ALLOW, DENY),
        ("{action: DENY, rules: [{from: [{source: {namespaces: [c]}}], to: [{operation: {paths: ['/admin*']}}]}]}", ALLOW, ALLOW),
        ("{action: DENY, rules: [{to: [{operation: {ports: ['9090'], hosts: [x]}}]}]}", ALLOW, ALLOW),
        ("{action: DENY, rules: [{when: [{key: 'request.auth.claims[g]', values: [x]}]}]}", ALLOW, DENY),
    ];
    for (i, (yaml, waypoint_verdict, node_verdict)) in cases.into_iter().enumerate() {
        let p = pol("b/p", yaml);
        assert_eq!(
            verdict(std::slice::from_ref(&p), &bob),
            waypoint_verdict,
            "waypoint, case {i}: {yaml}"
        );
        assert_eq!(node(&[p], &bob), node_verdict, "node, case {i}: {yaml}");
    }
}

#[test]
fn rules_not_enforceable_at_l4_are_reported() {
    let p = pol(
        "b/p",
        "rules: [{from: [{source: {namespaces: [b]}}]}, {to: [{operation: {methods: [GET], paths: [/x]}}], when: [{key: 'request.headers[x]', values: ['1']}]}]",
    );
    let out = PolicySet::for_node(&[p], "b", &BTreeMap::new(), DEFAULT_ROOT_NAMESPACE).unwrap();
    assert_eq!(out.diagnostics.len(), 1, "{:?}", out.diagnostics);
    let d = &out.diagnostics[0];
    assert_eq!(
        (d.policy.as_str(), d.rule, d.kind),
        ("b/p", Some(1), DiagnosticKind::NotEnforceableAtL4)
    );
    for field in ["methods", "paths", "request.headers[x]"] {
        assert!(d.message.contains(field), "{d}");
    }
    let e = out.set.explain(&R::l4().request()).unwrap();
    assert_eq!(
        e.policies[0].rules[1].failed.as_deref(),
        Some("uses HTTP attributes: never matches at L4")
    );
}

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn node_attachment() {
    let policies = [
        pol(
            "b/by-selector",
            "{selector: {matchLabels: {app: web}}, rules: [{}]}",
        ),
        pol(
            "b/other-app",
            "{selector: {matchLabels: {app: db}}, action: DENY, rules: [{}]}",
        ),
        pol(
            "b/namespace-wide",
            "{action: DENY, rules: [{from: [{source: {namespaces: [evil]}}]}]}",
        ),
        pol("c/elsewhere", "{action: DENY, rules: [{}]}"),
        pol(
            "istio-system/mesh-wide",
            "{action: DENY, rules: [{from: [{source: {ipBlocks: [6.6.6.6]}}]}]}",
        ),
        pol(
            "b/waypoint-only",
            "{targetRefs: [{kind: Service, group: '', name: web}], action: DENY, rules: [{}]}",
        ),
        pol("b/audit", "{action: AUDIT, rules: [{}]}"),
        pol(
            "b/custom",
            "{action: CUSTOM, provider: {name: opa}, rules: [{}]}",
        ),
    ];
    let out = PolicySet::for_node(
        &policies,
        "b",
        &labels(&[("app", "web"), ("v", "1")]),
        "istio-system",
    )
    .unwrap();
    let mut keys: Vec<_> = out.set.policies().map(|p| p.key().to_string()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "b/by-selector",
            "b/namespace-wide",
            "istio-system/mesh-wide"
        ]
    );
    let unsupported: Vec<_> = out
        .diagnostics
        .iter()
        .filter(|d| d.kind == DiagnosticKind::UnsupportedAction)
        .map(|d| d.policy.as_str())
        .collect();
    assert_eq!(unsupported, ["b/audit", "b/custom"]);
    assert_eq!(
        decide(&out.set, &R::from("b", "x").ip("6.6.6.6")).verdict,
        DENY
    );
    assert_eq!(decide(&out.set, &R::from("evil", "x")).verdict, DENY);
    assert_eq!(decide(&out.set, &R::from("b", "x")).verdict, ALLOW);
    // another workload: the selector policy does not apply, so no ALLOW policy: allowed unless denied
    let db =
        PolicySet::for_node(&policies, "b", &labels(&[("app", "db")]), "istio-system").unwrap();
    assert_eq!(decide(&db.set, &R::from("b", "x")).verdict, DENY);
    let api =
        PolicySet::for_node(&policies, "b", &labels(&[("app", "api")]), "istio-system").unwrap();
    assert_eq!(
        decide(&api.set, &R::from("b", "x")).reason,
        Reason::NoDenyMatched
    );
}

#[test]
fn waypoint_attachment() {
    let policies = [
        pol("ns/to-reviews", "{targetRefs: [{kind: Service, group: '', name: reviews}], action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}"),
        pol("ns/to-ratings", "{targetRef: {kind: Service, group: '', name: ratings}, rules: [{from: [{source: {namespaces: [ns]}}]}]}"),
        pol("ns/to-gateway", "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], action: DENY, rules: [{to: [{operation: {paths: ['/admin*']}}]}]}"),
        pol("istio-system/all-waypoints", "{targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}], action: DENY, rules: [{from: [{source: {notPrincipals: ['*']}}]}]}"),
        pol("ns/class-not-root", "{targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}], action: DENY, rules: [{}]}"),
        pol("ns/other-gateway", "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: other}], action: DENY, rules: [{}]}"),
        pol("other/same-name", "{targetRefs: [{kind: Service, group: '', name: reviews}], action: DENY, rules: [{}]}"),
        pol("ns/selector", "{selector: {matchLabels: {app: reviews}}, action: DENY, rules: [{}]}"),
        pol("ns/namespace-wide", "{action: DENY, rules: [{}]}"),
        pol("far/selector", "{selector: {matchLabels: {app: x}}, action: DENY, rules: [{}]}"),
        pol("ns/entry", "{targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: ext}], rules: [{}]}"),
    ];
    let services = [("ns", "reviews"), ("ns", "ratings"), ("ns", "details")];
    let out =
        PolicySet::for_waypoint(&policies, ("ns", "waypoint"), services, "istio-system").unwrap();
    let keys = |ns: &str, name: &str| {
        let mut k: Vec<_> = out
            .for_service(ns, name)
            .policies()
            .map(|p| p.key().to_string())
            .collect();
        k.sort();
        k
    };
    let wide = ["istio-system/all-waypoints", "ns/to-gateway"];
    assert_eq!(keys("ns", "details"), wide);
    assert_eq!(
        keys("ns", "reviews"),
        [
            "istio-system/all-waypoints",
            "ns/to-gateway",
            "ns/to-reviews"
        ]
    );
    assert_eq!(
        keys("ns", "ratings"),
        [
            "istio-system/all-waypoints",
            "ns/to-gateway",
            "ns/to-ratings"
        ]
    );
    assert_eq!(keys("ns", "unknown"), wide);
    // shared, not copied: details has no own policy, so it is the gateway-wide set itself
    assert!(std::sync::Arc::ptr_eq(
        out.for_service("ns", "details"),
        &out.gateway
    ));

    let mut reported: Vec<_> = out
        .diagnostics
        .iter()
        .map(|d| (d.policy.as_str(), d.kind))
        .collect();
    reported.sort();
    assert_eq!(
        reported,
        [
            ("ns/class-not-root", DiagnosticKind::UnsupportedTarget),
            ("ns/entry", DiagnosticKind::UnsupportedTarget),
            ("ns/namespace-wide", DiagnosticKind::NotEnforcedByWaypoint),
            ("ns/selector", DiagnosticKind::NotEnforcedByWaypoint),
        ]
    );

    let reviews = out.for_service("ns", "reviews");
    assert_eq!(
        decide(reviews, &R::default().method("DELETE")).verdict,
        DENY
    );
    assert_eq!(decide(reviews, &R::default().path("/admin")).verdict, DENY);
    assert_eq!(decide(reviews, &R::plaintext()).verdict, DENY);
    assert_eq!(decide(reviews, &R::default()).verdict, ALLOW);
    let ratings = out.for_service("ns", "ratings");
    assert_eq!(decide(ratings, &R::from("ns", "x")).verdict, ALLOW);
    assert_eq!(decide(ratings, &R::from("other", "x")).verdict, DENY);
}

#[test]
fn a_broken_policy_fails_attachment() {
    let bad = pol("ns/bad", "{targetRefs: [{kind: Service, group: '', name: reviews}], rules: [{from: [{source: {ipBlocks: [nope]}}]}]}");
    let e = PolicySet::for_waypoint(
        std::slice::from_ref(&bad),
        ("ns", "wp"),
        [("ns", "reviews")],
        "istio-system",
    )
    .unwrap_err();
    assert_eq!(e.field, "spec.rules[0].from[0].source.ipBlocks[0]");
    // not attached here: not compiled here
    assert!(
        PolicySet::for_waypoint(&[bad], ("ns", "wp"), [("ns", "ratings")], "istio-system").is_ok()
    );
}
