//! Bad policies: each error names the policy and the field, never panics; warnings for policies that compile
//! but will not do what they seem to.

mod policy_support;

use authz::policy::{validate, DiagnosticKind};
use policy_support::*;

#[test]
fn errors_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("rules: [{from: [{source: {ipBlocks: [10.0.0.0/8, 10.0.0.0/33]}}]}]", "spec.rules[0].from[0].source.ipBlocks[1]", "CIDR"),
        ("rules: [{}, {from: [{source: {notRemoteIpBlocks: [x]}}]}]", "spec.rules[1].from[0].source.notRemoteIpBlocks[0]", "not an IP"),
        ("rules: [{to: [{operation: {ports: ['80', http]}}]}]", "spec.rules[0].to[0].operation.ports[1]", "not a port"),
        ("rules: [{to: [{operation: {notPorts: ['0']}}]}]", "spec.rules[0].to[0].operation.notPorts[0]", "not a port"),
        ("rules: [{to: [{operation: {ports: ['65536']}}]}]", "spec.rules[0].to[0].operation.ports[0]", "not a port"),
        ("rules: [{to: [{operation: {paths: ['/a/{**}/{*}']}}]}]", "spec.rules[0].to[0].operation.paths[0]", "last operator"),
        ("rules: [{from: [{source: {}}]}]", "spec.rules[0].from[0].source", "must not be empty"),
        ("rules: [{to: [{}]}]", "spec.rules[0].to[0].operation", "must not be empty"),
        ("rules: [{when: [{key: request.method, values: [GET]}]}]", "spec.rules[0].when[0].key", "unknown attribute"),
        ("rules: [{when: [{key: source.user, values: [x]}]}]", "spec.rules[0].when[0].key", "unknown attribute"),
        ("rules: [{when: [{key: 'experimental.envoy.filters.x[y]', values: [x]}]}]", "spec.rules[0].when[0].key", "experimental"),
        ("rules: [{when: [{key: '', values: [x]}]}]", "spec.rules[0].when[0].key", "must not be empty"),
        ("rules: [{when: [{key: source.ip}]}]", "spec.rules[0].when[0]", "values"),
        ("rules: [{when: [{key: source.ip, values: [nope]}]}]", "spec.rules[0].when[0].values[0]", "not an IP"),
        ("rules: [{when: [{key: destination.port, notValues: ['80', x]}]}]", "spec.rules[0].when[0].notValues[1]", "not a port"),
        ("rules: [{when: [{key: 'request.headers[]', values: [x]}]}]", "spec.rules[0].when[0].key", "malformed"),
        ("rules: [{when: [{key: 'request.headers[a b]', values: [x]}]}]", "spec.rules[0].when[0].key", "not a header name"),
        ("rules: [{when: [{key: 'request.headers[a][b]', values: [x]}]}]", "spec.rules[0].when[0].key", "one header name"),
        ("rules: [{when: [{key: 'request.headers[:path]', values: [x]}]}]", "spec.rules[0].when[0].key", "pseudo-header"),
        ("rules: [{when: [{key: 'request.auth.claims[a', values: [x]}]}]", "spec.rules[0].when[0].key", "expected"),
        ("rules: [{when: [{key: 'request.auth.claims[a]x', values: [x]}]}]", "spec.rules[0].when[0].key", "expected"),
        ("{action: CUSTOM, rules: [{}]}", "spec.provider.name", "provider"),
        ("{action: DENY, provider: {name: x}, rules: [{}]}", "spec.provider", "only allowed with action CUSTOM"),
        ("{targetRef: {kind: Service, name: a}, targetRefs: [{kind: Service, name: b}]}", "spec.targetRef", "only one"),
        ("{selector: {matchLabels: {a: b}}, targetRefs: [{kind: Service, name: b}]}", "spec.selector", "only one"),
        ("{targetRefs: [{kind: Service, name: a}, {kind: Deployment, group: apps, name: b}]}", "spec.targetRefs[1].kind", "unsupported target"),
        ("{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: w, namespace: other}]}", "spec.targetRefs[0].namespace", "cross-namespace"),
        ("{targetRefs: [{kind: Service, name: ''}]}", "spec.targetRefs[0].name", "required"),
    ];
    for (yaml, field, message) in cases {
        let e = validate(&pol("ns/bad", yaml)).expect_err(yaml);
        assert_eq!(e.policy, "ns/bad", "{yaml}");
        assert_eq!(e.field, *field, "{yaml}: {e}");
        assert!(e.message.contains(message), "{yaml}: {e}");
        assert!(
            e.to_string().starts_with("AuthorizationPolicy ns/bad: "),
            "{e}"
        );
    }
}

#[test]
fn valid_policies_pass() {
    for yaml in [
        "{}",
        "rules: [{}]",
        "{action: DENY, rules: [{when: [{key: 'request.auth.claims[a.b][c]', values: [x]}]}]}",
        "{targetRefs: [{kind: Service, group: core, name: a, namespace: ns}], rules: [{}]}",
        "rules: [{when: [{key: 'request.headers[:authority]', values: [x]}, {key: connection.sni, values: [x]}]}]",
        "rules: [{from: [{source: {ipBlocks: ['10.0.0.1/8', 'fd00::/8', ' 1.2.3.4 ']}}]}]",
    ] {
        validate(&pol("ns/ok", yaml)).unwrap_or_else(|e| panic!("{yaml}: {e}"));
    }
}

#[test]
fn custom_without_rules_is_a_warning() {
    let d = validate(&pol("ns/c", "{action: CUSTOM, provider: {name: opa}}")).unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].kind, DiagnosticKind::CustomWithoutRules);
    assert!(validate(&pol(
        "ns/c",
        "{action: CUSTOM, provider: {name: opa}, rules: [{}]}"
    ))
    .unwrap()
    .is_empty());
}
