//! Route status as a controller would write it, per route and parent: every reason, unsupported values leaving
//! a route out while the rest loads, values Kubernetes rejects failing the load, and `waypoint check`.

#[path = "routes/common.rs"]
mod common;

use std::process::Command;

use common::*;
use mesh::config::{GatewayRef, Mesh};
use waypoint::routes::status::{check, render_table, statuses, statuses_all};
use waypoint::snapshot::WaypointSpec;

fn rule_with(extra: &str) -> String {
    format!("  - matches: [{{path: {{value: /x}}}}]\n    backendRefs: [{{name: reviews-v1, port: 9080}}]\n{extra}")
}

#[test]
fn statuses_name_the_reason() {
    let grant_less = "  - backendRefs: [{name: shadow, namespace: other, port: 9080}]\n";
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, String, &str, &str)> = vec![
        ("accepted", REVIEWS, to("/", "reviews-v1"), "+Accepted", "+ResolvedRefs"),
        ("no such service", r#"{group: "", kind: Service, name: nope}"#, to("/", "reviews-v1"), "-NoMatchingParent", "+ResolvedRefs"),
        ("no such port", r#"{group: "", kind: Service, name: reviews, port: 1234}"#, to("/", "reviews-v1"), "-NoMatchingParent", "+ResolvedRefs"),
        ("no such port name", r#"{group: "", kind: Service, name: reviews, sectionName: grpc}"#, to("/", "reviews-v1"), "-NoMatchingParent", "+ResolvedRefs"),
        ("service of no waypoint", r#"{group: "", kind: Service, name: elsewhere, namespace: other}"#, to("/", "reviews-v1"), "-NoMatchingParent", "+ResolvedRefs"),
        ("another gateway", "{name: ingress}", to("/", "reviews-v1"), "-NoMatchingParent", "+ResolvedRefs"),
        ("unsupported parent kind", "{group: multicluster.x-k8s.io, kind: ServiceImport, name: reviews}", to("/", "reviews-v1"), "-NoMatchingParent", "+ResolvedRefs"),
        ("backend not found", REVIEWS, to("/", "nope"), "+Accepted", "-BackendNotFound"),
        ("backend port not found", REVIEWS, "  - backendRefs: [{name: reviews-v1, port: 1111}]\n".into(), "+Accepted", "-BackendNotFound"),
        ("backend kind", REVIEWS, "  - backendRefs: [{group: storage.example.com, kind: Bucket, name: b}]\n".into(), "+Accepted", "-InvalidKind"),
        ("cross-namespace backend", REVIEWS, grant_less.into(), "+Accepted", "-RefNotPermitted"),
        ("ExtensionRef filter", REVIEWS, rule_with("    filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Auth, name: a}}]\n"), "-UnsupportedValue", "+ResolvedRefs"),
        ("CORS filter", REVIEWS, rule_with("    filters: [{type: CORS, cors: {allowOrigins: [\"https://a.example\"]}}]\n"), "-UnsupportedValue", "+ResolvedRefs"),
        ("redirect on a backend", REVIEWS, "  - backendRefs: [{name: reviews-v1, port: 9080, filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301}}]}]\n".into(), "-UnsupportedValue", "+ResolvedRefs"),
        ("path regex", REVIEWS, "  - matches: [{path: {type: RegularExpression, value: \"/(unclosed\"}}]\n    backendRefs: [{name: reviews-v1, port: 9080}]\n".into(), "-UnsupportedValue", "+ResolvedRefs"),
        ("header regex", REVIEWS, "  - matches: [{headers: [{type: RegularExpression, name: x, value: \"[a-\"}]}]\n    backendRefs: [{name: reviews-v1, port: 9080}]\n".into(), "-UnsupportedValue", "+ResolvedRefs"),
        ("header value", REVIEWS, rule_with("    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x, value: \"a\\u0001b\"}]}}]\n"), "-UnsupportedValue", "+ResolvedRefs"),
        ("both at once", REVIEWS, "  - matches: [{path: {type: RegularExpression, value: \"(\"}}]\n    backendRefs: [{name: nope, port: 9080}]\n".into(), "-UnsupportedValue", "-BackendNotFound"),
    ];
    for (what, parent, rules, accepted, resolved) in cases {
        let (_, statuses) = load(&route("HTTPRoute", "default", "r", &[parent], &rules));
        assert_eq!(statuses.len(), 1, "{what}");
        let s = &statuses[0];
        let got = conditions(&statuses, "HTTPRoute default/r", &s.parent);
        assert_eq!(
            (got.0.as_str(), got.1.as_str()),
            (accepted, resolved),
            "{what}: {s:#?}"
        );
        assert_eq!(
            s.has_errors(),
            accepted.starts_with('-') || resolved.starts_with('-'),
            "{what}"
        );
        for c in s.conditions.iter().filter(|c| c.status == "False") {
            assert!(!c.message.is_empty(), "{what}: {c:?}");
        }
    }
}

#[test]
fn unsupported_routes_are_left_out_while_the_rest_loads() {
    let bad = route(
        "HTTPRoute",
        "default",
        "bad",
        &[REVIEWS],
        &rule_with("    filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Auth, name: a}}]\n"),
    );
    let (snap, statuses) = load(&bad);
    let t = table(&snap, REVIEWS_HTTP);
    // Not accepted: as if it were not there (the Service's own endpoints).
    assert_eq!(backend_of(t, "/x"), "default/reviews:9080");
    let message = &statuses[0].condition("Accepted").unwrap().message;
    assert!(
        message.contains("spec.rules[0].filters[0].type") && message.contains("ExtensionRef"),
        "{message}"
    );

    let good = route(
        "HTTPRoute",
        "default",
        "good",
        &[REVIEWS],
        &to("/y", "reviews-v2"),
    );
    let (snap, _) = load(&format!("{bad}{good}"));
    let t = table(&snap, REVIEWS_HTTP);
    assert_eq!(backend_of(t, "/y"), "default/reviews-v2:9080");
    assert!(
        send(t, "default", "GET", "/x", &[]).is_err(),
        "the bad route's rule is not in the table"
    );
    assert!(t.rules.iter().all(|r| !r.name.contains("bad")));
}

#[test]
fn values_kubernetes_rejects_fail_the_load_naming_the_field() {
    #[rustfmt::skip]
    let cases = [
        ("redirect status", "  - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 304}}]\n", "spec.rules[1].filters[0].requestRedirect.statusCode"),
        ("redirect with backends", "    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301}}]\n", "spec.rules[0].filters"),
        ("header name", "    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: \"a b\", value: v}]}}]\n", "spec.rules[0].filters[0].requestHeaderModifier"),
        ("mirror percent", "    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: reviews-v2, port: 9080}, percent: 101}}]\n", "spec.rules[0].filters[0].requestMirror.percent"),
        ("duration", "    timeouts: {request: 10 seconds}\n", "spec.rules[0].timeouts.request"),
        ("backend longer than request", "    timeouts: {request: 1s, backendRequest: 2s}\n", "spec.rules[0].timeouts.backendRequest"),
        ("retry code", "    retry: {codes: [200]}\n", "spec.rules[0].retry.codes[0]"),
        ("header match name", "  - matches: [{headers: [{name: \"bad name\", value: v}]}]\n", "spec.rules[1].matches[0].headers[0].name"),
    ];
    for (what, extra, field) in cases {
        let doc = route("HTTPRoute", "default", "r", &[REVIEWS], &rule_with(extra));
        let err = match parse_mesh(&doc) {
            Err(e) => e,
            Ok(mesh) => waypoint::snapshot::compile(&mesh, &spec()).expect_err(what),
        };
        assert_eq!(
            (err.object.as_str(), err.field.as_str()),
            ("HTTPRoute default/r", field),
            "{what}: {err}"
        );
    }
}

#[test]
fn statuses_across_waypoints_judge_each_parent_by_its_own() {
    let second = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp2, namespace: other}\n\
                  spec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n";
    let base = BASE.replace(
        "metadata: {name: other}",
        "metadata: {name: other, labels: {istio.io/use-waypoint: wp2}}",
    );
    let r = route(
        "HTTPRoute",
        "other",
        "r",
        &[r#"{group: "", kind: Service, name: elsewhere}"#],
        &to("/", "shadow"),
    );
    let mesh = Mesh::from_documents(
        &[("t.yaml".into(), format!("{base}{second}{r}"))],
        "cluster.local",
    )
    .unwrap();
    let mine = statuses(&mesh, &spec()).unwrap();
    assert_eq!(
        conditions(&mine, "HTTPRoute other/r", "Service other/elsewhere").0,
        "-NoMatchingParent"
    );
    assert!(
        mine[0].conditions[0]
            .message
            .contains("uses waypoint other/wp2"),
        "{:?}",
        mine[0]
    );
    let all = statuses_all(&mesh, 15008).unwrap();
    assert_eq!(
        conditions(&all, "HTTPRoute other/r", "Service other/elsewhere"),
        ("+Accepted".into(), "+ResolvedRefs".into())
    );
    let wp2 = WaypointSpec {
        gateway: GatewayRef {
            namespace: "other".into(),
            name: "wp2".into(),
        },
        hbone_port: 15008,
    };
    assert_eq!(statuses(&mesh, &wp2).unwrap(), all);
}

#[test]
fn check_prints_a_table_or_json_and_says_whether_all_is_true() {
    let dir = tempfile::tempdir().unwrap();
    let good = route(
        "HTTPRoute",
        "default",
        "good",
        &[REVIEWS],
        &to("/", "reviews-v1"),
    );
    let bad = route("HTTPRoute", "default", "bad", &[REVIEWS], &to("/", "nope"));
    std::fs::write(dir.path().join("mesh.yaml"), format!("{BASE}{good}")).unwrap();
    let (text, ok) = check(dir.path(), None, "cluster.local", false).unwrap();
    assert!(ok, "{text}");
    assert!(text.starts_with("ROUTE "), "{text}");
    assert!(
        text.contains("HTTPRoute default/good") && text.contains("True (Accepted)"),
        "{text}"
    );

    std::fs::write(dir.path().join("routes.yaml"), bad).unwrap();
    let (text, ok) = check(dir.path(), None, "cluster.local", false).unwrap();
    assert!(!ok);
    assert!(text.contains("False (BackendNotFound)"), "{text}");
    assert!(
        text.contains(
            "    ResolvedRefs: spec.rules[0].backendRefs[0]: Service default/nope not found"
        ),
        "{text}"
    );
    let gw = GatewayRef {
        namespace: "default".into(),
        name: "waypoint".into(),
    };
    let (json, _) = check(dir.path(), Some(gw), "cluster.local", true).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["conditions"][0]["type"], "Accepted");
    assert!(render_table(&[]).contains("No routes"));

    // The binary: exit 1 on a False condition, 0 when all is True, 2 when the manifests do not load.
    let run = |dir: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_waypoint"))
            .args(["check", "--manifests"])
            .arg(dir)
            .output()
            .unwrap()
    };
    let out = run(dir.path());
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::remove_file(dir.path().join("routes.yaml")).unwrap();
    assert_eq!(run(dir.path()).status.code(), Some(0));
    std::fs::write(
        dir.path().join("broken.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIP: bad}\n",
    )
    .unwrap();
    let out = run(dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("broken.yaml: Service default/x: spec.clusterIP"));
    assert!(check(&dir.path().join("missing"), None, "cluster.local", false).is_err());
}
