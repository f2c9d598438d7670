//! Who may call: ALLOW by principal, DENY beats ALLOW, `notPrincipals` and wildcard forms, `when` conditions on
//! request headers and `source.namespace`, AUDIT and dry-run (never change the verdict), Istio's empty-rules
//! semantics, and a policy on the waypoint Gateway (every service it serves).

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_by_principal_and_deny_by_path_beats_allow() {
    let allow = policy(
        "allow-frontend",
        &service("api"),
        &format!(
            "  action: ALLOW\n  rules:\n  - from: [{{source: {{principals: [\"{FRONTEND}\"]}}}}]"
        ),
    );
    let deny = policy(
        "deny-private",
        &service("api"),
        "  action: DENY\n  rules:\n  - to: [{operation: {paths: [\"/private/*\"]}}]",
    );
    let tb = mesh(&format!("{allow}{deny}")).await;

    let r = get(&tb, "frontend", API, "/orders").await;
    assert_eq!(verdict(&r), "200 api-0");
    assert_eq!(r.echo().path, "/orders");
    for caller in ["batch", "visitor"] {
        let r = get(&tb, caller, API, "/orders").await;
        assert_rbac_denied(&r, &format!("{caller}: not the allowed principal"));
    }
    // The DENY wins over the matching ALLOW, whoever calls.
    for caller in ["frontend", "batch"] {
        let r = get(&tb, caller, API, "/private/keys").await;
        assert_rbac_denied(&r, &format!("{caller}: DENY on /private/*"));
    }
    // The query is not part of the path: `/orders?next=/private/x` is `/orders`.
    let r = get(&tb, "frontend", API, "/orders?next=/private/x").await;
    assert_eq!(verdict(&r), "200 api-0");
    // A Service without policies stays open to everyone.
    for caller in ["frontend", "batch", "visitor"] {
        assert_eq!(verdict(&get(&tb, caller, WEB, "/").await), "200 web-0");
    }
    assert_eq!(
        tb.echo("api-0").requests(),
        2,
        "only allowed requests reach the app"
    );
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_principals_and_wildcard_forms() {
    // ALLOW everyone but frontend; DENY any `visitor` service account (suffix form) and, on `/ops`, anyone in
    // `shop` (prefix form).
    let allow = policy(
        "allow-not-frontend",
        &service("api"),
        &format!("  action: ALLOW\n  rules:\n  - from: [{{source: {{notPrincipals: [\"{FRONTEND}\"]}}}}]"),
    );
    let deny = policy(
        "deny-forms",
        &service("api"),
        "  action: DENY
  rules:
  - from: [{source: {principals: [\"*/sa/visitor\"]}}]
  - from: [{source: {principals: [\"cluster.local/ns/shop/*\"]}}]
    to: [{operation: {paths: [/ops]}}]",
    );
    let tb = mesh(&format!("{allow}{deny}")).await;
    let mut seen = vec![];
    for (caller, path) in [
        ("frontend", "/"),
        ("batch", "/"),
        ("visitor", "/"),
        ("batch", "/ops"),
        ("batch", "/ops/x"),
    ] {
        seen.push(format!(
            "{caller} {path}: {}",
            verdict(&get(&tb, caller, API, path).await)
        ));
    }
    assert_eq!(
        seen,
        [
            "frontend /: 403 RBAC",
            "batch /: 200 api-0",
            "visitor /: 403 RBAC",
            "batch /ops: 403 RBAC",
            "batch /ops/x: 200 api-0",
        ]
    );
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_conditions_on_headers_and_source_namespace() {
    // Rule 0: any caller with `x-tenant: acme` (but not `x-debug: on`); rule 1: GETs from namespace `guest`.
    let allow = policy(
        "allow-when",
        &service("api"),
        "  action: ALLOW
  rules:
  - when:
    - {key: \"request.headers[x-tenant]\", values: [acme, \"acme-*\"]}
    - {key: \"request.headers[x-debug]\", notValues: [\"on\"]}
  - to: [{operation: {methods: [GET], hosts: [\"api.shop.svc.cluster.local\"]}}]
    when: [{key: source.namespace, values: [guest]}]",
    );
    let tb = mesh(&allow).await;
    let req = |method: &str, headers: &[(&str, &str)]| {
        let mut r = Req::new(method, API, "/");
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r
    };
    let cases: Vec<(&str, Req, &str)> = vec![
        ("frontend", req("GET", &[]), "403 RBAC"),
        ("frontend", req("GET", &[("x-tenant", "acme")]), "200 api-0"),
        (
            "frontend",
            req("GET", &[("x-tenant", "acme-eu")]),
            "200 api-0",
        ),
        (
            "frontend",
            req("GET", &[("x-tenant", "globex")]),
            "403 RBAC",
        ),
        (
            "frontend",
            req("GET", &[("x-tenant", "acme"), ("x-debug", "on")]),
            "403 RBAC",
        ),
        ("batch", req("POST", &[("x-tenant", "acme")]), "200 api-0"),
        ("visitor", req("GET", &[]), "200 api-0"),
        ("visitor", req("DELETE", &[]), "403 RBAC"),
        // `source.namespace` comes from the certificate: a header naming the namespace is just a header.
        (
            "batch",
            req("GET", &[("x-source-namespace", "guest")]),
            "403 RBAC",
        ),
        // Hosts match case-insensitively, with or without the port.
        (
            "visitor",
            req("GET", &[("host", "API.shop.svc.cluster.local:80")]),
            "200 api-0",
        ),
        (
            "visitor",
            req("GET", &[("host", "other.example")]),
            "403 RBAC",
        ),
    ];
    let mut wrong = vec![];
    for (caller, r, want) in cases {
        let what = format!("{caller} {} {:?}", r.method, r.headers);
        let got = verdict(&send(&tb, caller, r).await);
        if got != want {
            wrong.push(format!("{what}: got {got}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_and_dry_run_never_change_the_verdict() {
    // api: AUDIT everything, a dry-run DENY of everything, a dry-run ALLOW of frontend only; the one enforced
    // policy denies `/blocked`.
    let audit = policy(
        "audit-all",
        &service("api"),
        "  action: AUDIT\n  rules: [{}]",
    );
    let dry_deny = policy(
        "dry-deny-all",
        &service("api"),
        "  action: DENY\n  rules: [{}]",
    )
    .replace(
        "namespace: shop}",
        "namespace: shop, annotations: {istio.io/dry-run: \"true\"}}",
    );
    let dry_allow = policy(
        "dry-allow-frontend",
        &service("api"),
        &format!(
            "  action: ALLOW\n  rules:\n  - from: [{{source: {{principals: [\"{FRONTEND}\"]}}}}]"
        ),
    )
    .replace(
        "namespace: shop}",
        "namespace: shop, annotations: {istio.io/dry-run: \"true\"}}",
    );
    let deny = policy(
        "deny-blocked",
        &service("api"),
        "  action: DENY\n  rules:\n  - to: [{operation: {paths: [/blocked]}}]",
    );
    assert!(dry_deny.contains("istio.io/dry-run") && dry_allow.contains("istio.io/dry-run"));
    let tb = mesh(&format!("{audit}{dry_deny}{dry_allow}{deny}")).await;
    for caller in ["frontend", "batch", "visitor"] {
        assert_eq!(
            verdict(&get(&tb, caller, API, "/").await),
            "200 api-0",
            "{caller}: AUDIT and dry-run policies are not enforced"
        );
        let r = get(&tb, caller, API, "/blocked").await;
        assert_rbac_denied(&r, &format!("{caller}: the enforced DENY still applies"));
    }
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_without_rules_denies_all_and_an_empty_rule_allows_all() {
    let nothing = policy("allow-nothing", &service("web"), "  action: ALLOW");
    let all = policy(
        "allow-all",
        &service("api"),
        "  action: ALLOW\n  rules: [{}]",
    );
    let tb = mesh(&format!("{nothing}{all}")).await;
    for caller in ["frontend", "visitor"] {
        assert_rbac_denied(&get(&tb, caller, WEB, "/").await, caller);
        assert_eq!(verdict(&get(&tb, caller, API, "/").await), "200 api-0");
    }
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_on_the_waypoint_gateway_covers_every_service() {
    let deny_guests = policy(
        "deny-guests",
        &gateway(),
        "  action: DENY\n  rules:\n  - from: [{source: {namespaces: [guest]}}]",
    );
    let allow = policy(
        "allow-frontend",
        &service("api"),
        &format!(
            "  action: ALLOW\n  rules:\n  - from: [{{source: {{principals: [\"{FRONTEND}\"]}}}}]"
        ),
    );
    let tb = mesh(&format!("{deny_guests}{allow}")).await;
    let mut seen = vec![];
    for caller in ["frontend", "batch", "visitor"] {
        for (svc, host) in [("api", API), ("web", WEB)] {
            seen.push(format!(
                "{caller}→{svc}: {}",
                verdict(&get(&tb, caller, host, "/").await)
            ));
        }
    }
    assert_eq!(
        seen,
        [
            "frontend→api: 200 api-0",
            "frontend→web: 200 web-0",
            "batch→api: 403 RBAC",
            "batch→web: 200 web-0",
            "visitor→api: 403 RBAC",
            "visitor→web: 403 RBAC",
        ]
    );
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_policy_is_reported_as_not_enforced_by_the_waypoint() {
    // A `selector` policy belongs to the node tier: there the caller is the waypoint (namespace `shop`), so
    // this DENY of `guest` does not stop visitor — the classic surprise. The waypoint says so.
    let selector = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-guests-by-selector, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  action: DENY
  rules:
  - from: [{source: {namespaces: [guest]}}]
";
    let tb = mesh(selector).await;
    assert_eq!(verdict(&get(&tb, "visitor", API, "/").await), "200 api-0");
    let snapshot = tb.waypoint(WAYPOINT).live().load();
    let reported: Vec<String> = snapshot
        .policy_diagnostics
        .iter()
        .map(|d| format!("{:?} {d}", d.kind))
        .collect();
    assert!(
        reported
            .iter()
            .any(|d| d.starts_with("NotEnforcedByWaypoint")
                && d.contains("shop/deny-guests-by-selector")),
        "{reported:#?}"
    );
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_blocks_match_the_callers_pod_address() {
    // `source.ip` / `ipBlocks` is the caller pod's address (the testbed moves `127.0.0.x` onto its subnet).
    let deny = policy(
        "deny-visitor-ip",
        &service("api"),
        "  action: DENY
  rules:
  - from: [{source: {ipBlocks: [127.0.0.52/32]}}]
  - when: [{key: source.ip, values: [127.0.0.51]}]",
    );
    let tb = mesh(&deny).await;
    let mut seen = vec![];
    for caller in ["frontend", "batch", "visitor"] {
        let r = send(
            &tb,
            caller,
            Req::get(API, "/").header("x-forwarded-for", "10.9.9.9"),
        )
        .await;
        seen.push(format!("{caller}: {}", verdict(&r)));
    }
    assert_eq!(
        seen,
        [
            "frontend: 200 api-0",
            "batch: 403 RBAC",
            "visitor: 403 RBAC"
        ]
    );
    tb.shutdown().await;
}
