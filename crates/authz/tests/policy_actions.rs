//! Actions and their combination: CUSTOM → DENY → ALLOW, AUDIT, dry-run, empty vs missing rules, the deciding
//! policy, and the explain trace.

mod policy_support;

use authz::model::Action;
use authz::policy::{Reason, Tier};
use policy_support::*;

const ANY: &str = "rules: [{}]";

#[test]
fn empty_and_missing_rules() {
    let r = R::default();
    let cases: &[(&str, &str, authz::policy::Verdict)] = &[
        // ALLOW without rules allows nothing: the policy exists, so everything else is denied
        ("action: ALLOW", "missing rules", DENY),
        ("{action: ALLOW, rules: []}", "empty rules", DENY),
        ("{}", "empty spec (allow-nothing)", DENY),
        ("{action: ALLOW, rules: [{}]}", "rule {} matches all", ALLOW),
        // DENY without rules never matches
        ("action: DENY", "missing rules", ALLOW),
        ("{action: DENY, rules: []}", "empty rules", ALLOW),
        ("{action: DENY, rules: [{}]}", "deny all", DENY),
        // AUDIT never changes the verdict
        ("{action: AUDIT, rules: [{}]}", "audit all", ALLOW),
    ];
    for (yaml, what, want) in cases {
        assert_eq!(verdict(&[pol("ns/p", yaml)], &r), *want, "{what}: {yaml}");
    }
}

#[test]
fn deny_then_allow() {
    let allow_bob = pol(
        "ns/allow-bob",
        "rules: [{from: [{source: {principals: ['*/sa/bob']}}]}]",
    );
    let allow_get = pol(
        "ns/allow-get",
        "rules: [{to: [{operation: {methods: [GET]}}]}]",
    );
    let deny_admin = pol(
        "ns/deny-admin",
        "{action: DENY, rules: [{to: [{operation: {paths: ['/admin*']}}]}]}",
    );
    let bob = R::from("x", "bob");
    let eve = R::from("x", "eve");
    let cases = [
        (vec![], eve.clone(), ALLOW, Reason::NoPolicy),
        (
            vec![deny_admin.clone()],
            eve.clone(),
            ALLOW,
            Reason::NoDenyMatched,
        ),
        (
            vec![deny_admin.clone()],
            eve.clone().path("/admin"),
            DENY,
            Reason::DenyMatched,
        ),
        (
            vec![allow_bob.clone()],
            bob.clone(),
            ALLOW,
            Reason::AllowMatched,
        ),
        (
            vec![allow_bob.clone()],
            eve.clone(),
            DENY,
            Reason::NoAllowMatched,
        ),
        // ALLOW policies are OR-ed
        (
            vec![allow_bob.clone(), allow_get.clone()],
            eve.clone(),
            ALLOW,
            Reason::AllowMatched,
        ),
        (
            vec![allow_bob.clone(), allow_get.clone()],
            eve.clone().method("POST"),
            DENY,
            Reason::NoAllowMatched,
        ),
        // DENY wins over ALLOW
        (
            vec![allow_bob.clone(), deny_admin.clone()],
            bob.clone().path("/admin/x"),
            DENY,
            Reason::DenyMatched,
        ),
        (
            vec![allow_bob.clone(), deny_admin.clone()],
            bob.clone().path("/public"),
            ALLOW,
            Reason::AllowMatched,
        ),
        // an encoded path does not escape the DENY
        (
            vec![allow_bob.clone(), deny_admin.clone()],
            bob.clone().path("/x/%2e%2e/./%61dmin"),
            DENY,
            Reason::DenyMatched,
        ),
    ];
    for (i, (policies, r, want, reason)) in cases.into_iter().enumerate() {
        let s = set(Tier::Waypoint, &policies);
        let d = decide(&s, &r);
        assert_eq!((d.verdict, d.reason), (want, reason), "case {i}");
    }
}

#[test]
fn deciding_policy_and_rule() {
    let s = set(
        Tier::Waypoint,
        &[
            pol("b/allow", "rules: [{to: [{operation: {methods: [POST]}}]}, {to: [{operation: {methods: [GET]}}]}]"),
            pol("a/allow", "rules: [{to: [{operation: {paths: [/x]}}]}]"),
            pol("ns/deny", "{action: DENY, rules: [{when: [{key: 'request.headers[x-bad]', values: ['*']}]}]}"),
        ],
    );
    let d = decide(&s, &R::default());
    let m = d.decided_by.expect("an ALLOW decided");
    assert_eq!(
        (m.policy.key(), m.policy.action(), m.rule),
        ("b/allow", Action::Allow, 1)
    );
    assert_eq!((m.policy.namespace(), m.policy.name()), ("b", "allow"));
    // policies are tried in namespace/name order: a/allow before b/allow
    let d = decide(&s, &R::default().path("/x"));
    assert_eq!(d.decided_by.map(|m| m.policy.key()), Some("a/allow"));
    let d = decide(&s, &R::default().header("x-bad", "1"));
    let m = d.decided_by.unwrap();
    assert_eq!((m.policy.key(), m.rule, d.verdict), ("ns/deny", 0, DENY));
}

#[test]
fn custom_names_providers_first() {
    let s = set(
        Tier::Waypoint,
        &[
            pol("ns/opa", "{action: CUSTOM, provider: {name: opa}, rules: [{to: [{operation: {paths: ['/api/*']}}]}]}"),
            pol("ns/opa2", "{action: CUSTOM, provider: {name: opa}, rules: [{to: [{operation: {methods: [POST]}}]}]}"),
            pol("ns/ldap", "{action: CUSTOM, provider: {name: ldap}, rules: [{to: [{operation: {methods: [POST]}}]}]}"),
            pol("ns/deny", "{action: DENY, rules: [{to: [{operation: {paths: [/api/secret]}}]}]}"),
        ],
    );
    assert_eq!(s.providers(), ["ldap", "opa"]);
    let providers = |r: &R| decide(&s, r).providers().collect::<Vec<_>>();
    assert!(providers(&R::default()).is_empty());
    assert_eq!(providers(&R::default().path("/api/v1")), ["opa"]);
    assert_eq!(
        providers(&R::default().path("/api/v1").method("POST")),
        ["ldap", "opa"]
    );
    assert_eq!(providers(&R::default().method("POST")), ["ldap", "opa"]);
    // CUSTOM does not decide by itself: the DENY/ALLOW verdict is computed alongside
    let d = decide(&s, &R::default().path("/api/secret"));
    assert_eq!(d.custom.map(|m| m.policy.key()), Some("ns/opa"));
    assert_eq!(d.verdict, DENY);
    assert_eq!(decide(&s, &R::default().path("/api/v1")).verdict, ALLOW);
}

#[test]
fn audit_records_without_deciding() {
    let s = set(
        Tier::Waypoint,
        &[
            pol(
                "ns/audit",
                "{action: AUDIT, rules: [{to: [{operation: {methods: [DELETE]}}]}]}",
            ),
            pol("ns/allow", ANY),
        ],
    );
    let d = decide(&s, &R::default().method("DELETE"));
    assert_eq!(d.audit.map(|m| m.policy.key()), Some("ns/audit"));
    assert_eq!((d.verdict, d.reason), (ALLOW, Reason::AllowMatched));
    assert!(decide(&s, &R::default()).audit.is_none());
    // AUDIT alone is not an ALLOW policy: nothing is denied
    let s = set(
        Tier::Waypoint,
        &[pol("ns/audit", "{action: AUDIT, rules: [{}]}")],
    );
    assert_eq!(decide(&s, &R::default()).reason, Reason::NoPolicy);
}

#[test]
fn dry_run_is_recorded_never_enforced() {
    let deny_all = dry(pol("ns/deny-all", "{action: DENY, rules: [{}]}"));
    let allow_bob = dry(pol(
        "ns/allow-bob",
        "rules: [{from: [{source: {principals: ['*/sa/bob']}}]}]",
    ));
    let s = set(Tier::Waypoint, &[deny_all]);
    let d = decide(&s, &R::default());
    assert_eq!((d.verdict, d.reason), (ALLOW, Reason::NoPolicy));
    let shadow = d.shadow.expect("a dry-run policy applies");
    assert_eq!(shadow.verdict, DENY);
    assert_eq!(
        shadow.decided_by.map(|m| m.policy.key()),
        Some("ns/deny-all")
    );

    // a dry-run ALLOW: would deny eve, does not
    let s = set(Tier::Waypoint, &[allow_bob]);
    let eve = decide(&s, &R::from("x", "eve"));
    assert_eq!(eve.verdict, ALLOW);
    let shadow = eve.shadow.unwrap();
    assert_eq!(
        (shadow.verdict, shadow.reason),
        (DENY, Reason::NoAllowMatched)
    );
    let bob = decide(&s, &R::from("x", "bob")).shadow.unwrap();
    assert_eq!(bob.verdict, ALLOW);
    assert_eq!(bob.decided_by.map(|m| m.rule), Some(0));

    // dry-run CUSTOM and AUDIT: recorded, no provider asked
    let s = set(
        Tier::Waypoint,
        &[
            dry(pol(
                "ns/c",
                "{action: CUSTOM, provider: {name: opa}, rules: [{}]}",
            )),
            dry(pol("ns/a", "{action: AUDIT, rules: [{}]}")),
        ],
    );
    let d = decide(&s, &R::default());
    assert_eq!(d.providers().count(), 0);
    assert!(d.custom.is_none() && d.audit.is_none());
    let shadow = d.shadow.unwrap();
    assert_eq!(shadow.custom.map(|m| m.policy.key()), Some("ns/c"));
    assert_eq!(shadow.audit.map(|m| m.policy.key()), Some("ns/a"));
    // no dry-run policy: no shadow
    assert!(
        decide(&set(Tier::Waypoint, &[pol("ns/p", ANY)]), &R::default())
            .shadow
            .is_none()
    );
}

#[test]
fn explain_traces_every_policy() {
    let s = set(
        Tier::Waypoint,
        &[
            pol("ns/allow", "rules: [{from: [{source: {principals: ['*/sa/bob']}}]}, {to: [{operation: {methods: [GET]}, }], when: [{key: 'request.headers[x]', values: ['1']}]}]"),
            pol("ns/deny", "{action: DENY, rules: [{to: [{operation: {paths: ['/admin*']}}]}]}"),
            dry(pol("ns/dry", "{action: DENY, rules: [{}]}")),
            pol("ns/none", "action: ALLOW"),
        ],
    );
    let e = s.explain(&R::from("x", "eve").request()).unwrap();
    assert_eq!((e.verdict, e.reason), (DENY, Reason::NoAllowMatched));
    assert_eq!(e.shadow_verdict, Some(DENY));
    assert_eq!(
        e.shadow_decided_by.as_ref().map(|d| d.policy.as_str()),
        Some("ns/dry")
    );
    let keys: Vec<_> = e.policies.iter().map(|p| p.policy.as_str()).collect();
    assert_eq!(keys, ["ns/deny", "ns/allow", "ns/none", "ns/dry"]);
    let allow = &e.policies[1];
    assert_eq!(allow.matched_rule, None);
    assert_eq!(
        allow.rules[0].failed.as_deref(),
        Some("spec.rules[0].from[0].source.principals")
    );
    assert_eq!(
        allow.rules[1].failed.as_deref(),
        Some("spec.rules[1].when[0].values (request.headers[x])")
    );
    assert_eq!(
        e.policies[0].rules[0].failed.as_deref(),
        Some("spec.rules[0].to[0].operation.paths")
    );
    assert!(e.policies[2].rules.is_empty());
    assert_eq!(e.policies[3].matched_rule, Some(0));
    // serializable for a debug endpoint
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["verdict"], "deny");
    assert_eq!(json["reason"], "no_allow_matched");
}

#[test]
fn invalid_paths_are_errors_not_verdicts() {
    let s = set(
        Tier::Waypoint,
        &[pol("ns/p", "rules: [{to: [{operation: {paths: [/x]}}]}]")],
    );
    assert!(s.evaluate(&R::default().path("/x%00").request()).is_err());
    assert!(s.evaluate(&R::default().path("/x%zz").request()).is_err());
    // a set that never reads the path does not refuse it
    let s = set(Tier::Waypoint, &[pol("ns/p", ANY)]);
    assert!(s.evaluate(&R::default().path("/x%zz").request()).is_ok());
}
