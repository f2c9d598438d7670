//! Loading Istio security objects from manifests: AuthorizationPolicy and RequestAuthentication (v1 and
//! v1beta1), the dry-run annotation, errors naming file, object and field, and the loaded policies attached
//! to a waypoint's services.

use std::path::PathBuf;

use authz::model::Action;
use authz::policy::{DiagnosticKind, PolicySet, Verdict, DEFAULT_ROOT_NAMESPACE};
use mesh::config::{ConfigError, GatewayRef, Mesh};

fn load(yaml: &str) -> Result<Mesh, ConfigError> {
    Mesh::from_documents(
        &[(PathBuf::from("sec.yaml"), yaml.to_string())],
        "cluster.local",
    )
}

const MESH: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop, labels: {istio.io/use-waypoint: waypoint}}
spec: {clusterIP: 10.96.0.10, ports: [{port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop, labels: {istio.io/use-waypoint: waypoint}}
spec: {clusterIP: 10.96.0.11, ports: [{port: 9080}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-viewers, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/productpage"]}}]
    to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: no-admin
  namespace: shop
  annotations: {istio.io/dry-run: "true"}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: pods-only, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing}
spec: {}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  jwtRules:
  - issuer: https://idp.example
    jwksUri: https://idp.example/jwks.json
    fromHeaders: [{name: x-jwt, prefix: "Bearer "}]
---
apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {name: inline, namespace: shop}
spec:
  jwtRules: [{issuer: me, jwks: '{"keys": []}'}]
"#;

#[test]
fn loads_policies_of_both_versions() {
    let mesh = load(MESH).unwrap();
    let keys: Vec<_> = mesh
        .authorization_policies
        .iter()
        .map(|p| (p.key(), p.dry_run))
        .collect();
    assert_eq!(
        keys,
        [
            ("shop/reviews-viewers".to_string(), false),
            ("shop/no-admin".to_string(), true),
            ("shop/pods-only".to_string(), false),
            ("default/allow-nothing".to_string(), false),
        ]
    );
    assert_eq!(mesh.authorization_policies[1].spec.action, Action::Deny);
    assert_eq!(mesh.authorization_policies[3].spec.rules, None);
    let ra: Vec<_> = mesh
        .request_authentications
        .iter()
        .map(|r| r.key())
        .collect();
    assert_eq!(ra, ["shop/jwt", "shop/inline"]);
    assert_eq!(
        mesh.request_authentications[0].spec.jwt_rules[0].from_headers[0].name,
        "x-jwt"
    );
    assert!(mesh.skipped.is_empty(), "{:?}", mesh.skipped);
}

#[test]
fn loaded_policies_attach_to_the_waypoint_services() {
    let mesh = load(MESH).unwrap();
    let gw = GatewayRef {
        namespace: "shop".into(),
        name: "waypoint".into(),
    };
    let services = mesh.services_of_waypoint(&gw);
    let attached = PolicySet::for_waypoint(
        &mesh.authorization_policies,
        ("shop", "waypoint"),
        services
            .iter()
            .map(|s| (s.namespace.as_str(), s.name.as_str())),
        DEFAULT_ROOT_NAMESPACE,
    )
    .unwrap();
    let not_here: Vec<_> = attached
        .diagnostics
        .iter()
        .filter(|d| d.kind == DiagnosticKind::NotEnforcedByWaypoint)
        .map(|d| d.policy.as_str())
        .collect();
    assert_eq!(not_here, ["shop/pods-only"]);

    let headers = http::HeaderMap::new();
    let req = |principal: &'static str, path: &'static str| authz::attrs::Request {
        source_principal: Some(principal),
        source_namespace: Some("shop"),
        source_ip: "10.0.0.1".parse().unwrap(),
        remote_ip: "10.0.0.1".parse().unwrap(),
        destination_ip: "10.96.0.10".parse().unwrap(),
        destination_port: 9080,
        http: Some(authz::attrs::Http {
            host: "reviews.shop.svc.cluster.local:9080",
            method: "GET",
            path,
            headers: &headers,
            auth: None,
        }),
    };
    let reviews = attached.for_service("shop", "reviews");
    let ok = reviews
        .evaluate(&req("cluster.local/ns/shop/sa/productpage", "/reviews/1"))
        .unwrap();
    assert_eq!(ok.verdict, Verdict::Allow);
    assert_eq!(
        ok.decided_by.map(|m| m.policy.key()),
        Some("shop/reviews-viewers")
    );
    let other = reviews
        .evaluate(&req("cluster.local/ns/shop/sa/other", "/reviews/1"))
        .unwrap();
    assert_eq!(other.verdict, Verdict::Deny);
    // the dry-run DENY is recorded, not enforced
    let admin = reviews
        .evaluate(&req("cluster.local/ns/shop/sa/productpage", "/admin/x"))
        .unwrap();
    assert_eq!(admin.verdict, Verdict::Allow);
    assert_eq!(admin.shadow.map(|s| s.verdict), Some(Verdict::Deny));
    // ratings has no policy of its own: only the gateway-wide dry-run one
    let ratings = attached.for_service("shop", "ratings");
    assert_eq!(
        ratings
            .evaluate(&req("cluster.local/ns/x/sa/y", "/"))
            .unwrap()
            .verdict,
        Verdict::Allow
    );
}

fn object(kind: &str, spec: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata: {{name: bad, namespace: ns}}\nspec: {spec}\n")
}

#[test]
fn bad_objects_name_file_object_and_field() {
    let ap = "AuthorizationPolicy";
    let ra = "RequestAuthentication";
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            ap,
            "{rules: [{from: [{source: {ipBlocks: [10.0.0.0/8, 300.0.0.1]}}]}]}",
            "spec.rules[0].from[0].source.ipBlocks[1]",
            "not an IP",
        ),
        (
            ap,
            "{rules: [{from: [{source: {notPrincipal: [x]}}]}]}",
            "spec.rules[0].from[0].source.notPrincipal",
            "unknown field `notPrincipal`",
        ),
        (ap, "{action: ALLOWED}", "spec.action", "unknown variant"),
        (
            ap,
            "{rules: [{when: [{key: request.bogus, values: [x]}]}]}",
            "spec.rules[0].when[0].key",
            "unknown attribute",
        ),
        (
            ap,
            "{rules: [{to: [{operation: {ports: [http]}}]}]}",
            "spec.rules[0].to[0].operation.ports[0]",
            "not a port",
        ),
        (
            ap,
            "{action: CUSTOM, rules: [{}]}",
            "spec.provider.name",
            "provider",
        ),
        (
            ap,
            "{targetRefs: [{kind: Service, name: a, namespace: other}]}",
            "spec.targetRefs[0].namespace",
            "cross-namespace",
        ),
        (
            ra,
            "{jwtRules: [{issuer: ''}]}",
            "spec.jwtRules[0].issuer",
            "required",
        ),
        (
            ra,
            "{jwtRules: [{issuer: a}, {issuer: b, jwksUri: 'ftp://x/jwks'}]}",
            "spec.jwtRules[1].jwksUri",
            "http(s)",
        ),
        (
            ra,
            "{jwtRules: [{issuer: a, jwks: '{nope'}]}",
            "spec.jwtRules[0].jwks",
            "JSON",
        ),
        (
            ra,
            "{jwtRules: [{issuer: a, fromHeaders: [{name: 'bad header'}]}]}",
            "spec.jwtRules[0].fromHeaders[0].name",
            "header name",
        ),
        (
            ra,
            "{jwtRules: [{issuer: a, fromParams: ['']}]}",
            "spec.jwtRules[0].fromParams[0]",
            "required",
        ),
        (
            ra,
            "{selector: {matchLabels: {a: b}}, targetRefs: [{kind: Service, name: a}]}",
            "spec.selector",
            "only one",
        ),
        (
            ra,
            "{jwtRules: [{issuer: a, jwks_uri: x}]}",
            "spec.jwtRules[0].jwks_uri",
            "unknown field `jwks_uri`",
        ),
    ];
    for (kind, spec, field, message) in cases {
        let e = load(&object(kind, spec)).expect_err(spec);
        assert_eq!(e.file, PathBuf::from("sec.yaml"));
        assert_eq!(e.object, format!("{kind} ns/bad"), "{spec}");
        assert_eq!(e.field, *field, "{spec}: {e}");
        assert!(e.message.contains(message), "{spec}: {e}");
    }
}

#[test]
fn dry_run_annotation() {
    let with = |v: &str| {
        format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, annotations: {{istio.io/dry-run: '{v}'}}}}\nspec: {{}}\n")
    };
    assert!(load(&with("true")).unwrap().authorization_policies[0].dry_run);
    assert!(load(&with("TRUE")).unwrap().authorization_policies[0].dry_run);
    assert!(!load(&with("false")).unwrap().authorization_policies[0].dry_run);
    let e = load(&with("yes")).unwrap_err();
    assert_eq!(e.field, "metadata.annotations[istio.io/dry-run]");
}

#[test]
fn duplicates_and_other_versions() {
    let p = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: ns}\n";
    let e = load(&format!("{p}---\n{p}")).unwrap_err();
    assert_eq!(
        (e.object.as_str(), e.field.as_str()),
        ("AuthorizationPolicy ns/p", "metadata.name")
    );
    assert!(e.message.contains("duplicate"), "{e}");
    // a policy and a RequestAuthentication may share a name
    let r = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: p, namespace: ns}\n";
    load(&format!("{p}---\n{r}")).unwrap();
    let old =
        "apiVersion: security.istio.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n";
    let mesh = load(old).unwrap();
    assert!(mesh.authorization_policies.is_empty());
    assert_eq!(
        mesh.skipped
            .get("AuthorizationPolicy security.istio.io/v1alpha1"),
        Some(&1)
    );
}

#[test]
fn a_bad_policy_in_a_directory_names_its_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a-ok.yaml"), MESH).unwrap();
    std::fs::write(
        dir.path().join("b-bad.yaml"),
        object(
            "AuthorizationPolicy",
            "{rules: [{when: [{key: destination.port, values: ['99999']}]}]}",
        ),
    )
    .unwrap();
    let e = Mesh::load_dir(dir.path(), "cluster.local").unwrap_err();
    assert_eq!(e.file, dir.path().join("b-bad.yaml"));
    assert_eq!(e.field, "spec.rules[0].when[0].values[0]");
    let shown = e.to_string();
    assert!(
        shown.contains("b-bad.yaml: AuthorizationPolicy ns/bad: spec.rules[0].when[0].values[0]: "),
        "{shown}"
    );
}
