//! Backends: weighted splits (0 and a single backend included), `port`, cross-namespace references (only with
//! a `ReferenceGrant`), and 500 for a rule without backends or for the share of invalid ones.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_80_20() {
    let tb = mesh(&http_route(
        "split",
        "  - backendRefs:
    - {name: echo-v1, port: 80, weight: 80}
    - {name: echo-v2, port: 80, weight: 20}
",
    ))
    .await;
    let n = 400;
    let counts = tally(&tb, &Req::get(ECHO, "/"), n).await;
    assert_share(&counts, "echo-v2-0", n, 0.2);
    assert_share(&counts, "echo-v1-0", n, 0.8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_zero_gets_nothing_and_a_single_backend_everything() {
    let tb = mesh(&http_route(
        "weights",
        "  - matches: [{path: {type: PathPrefix, value: /zero}}]
    backendRefs:
    - {name: echo-v1, port: 80, weight: 1}
    - {name: echo-v2, port: 80, weight: 0}
  - backendRefs:
    - {name: echo-v3, port: 80}
",
    ))
    .await;
    let zero = tally(&tb, &Req::get(ECHO, "/zero"), 60).await;
    assert_eq!(zero.get("echo-v1-0"), Some(&60), "{zero:?}");
    let single = tally(&tb, &Req::get(ECHO, "/"), 30).await;
    assert_eq!(single.get("echo-v3-0"), Some(&30), "{single:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_port_selects_the_service_port() {
    let tb = mesh(&http_route(
        "port",
        "  - matches: [{path: {type: PathPrefix, value: /alt}}]
    backendRefs: [{name: echo-v1, port: 81}]
  - backendRefs: [{name: echo-v1, port: 80}]
",
    ))
    .await;
    for _ in 0..4 {
        let alt = get(&tb, "/alt").await;
        assert_eq!(outcome(&alt), "echo-v1-0");
        assert_eq!(alt.echo().port, 8081, "service port 81 targets 8081");
        let main = get(&tb, "/").await;
        assert_eq!(main.echo().port, 8080, "service port 80 targets 8080");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_without_backends_or_with_only_invalid_ones_answers_500() {
    let tb = mesh(&http_route(
        "invalid",
        "  - matches: [{path: {type: PathPrefix, value: /none}}]
  - matches: [{path: {type: PathPrefix, value: /missing}}]
    backendRefs: [{name: does-not-exist, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /kind}}]
    backendRefs: [{group: example.com, kind: Unknown, name: echo-v1, port: 80}]
  - backendRefs: [{name: echo-v1, port: 80}]
",
    ))
    .await;
    expect_outcomes(
        &tb,
        vec![
            (Req::get(ECHO, "/none"), "status 500"),
            (Req::get(ECHO, "/missing"), "status 500"),
            (Req::get(ECHO, "/kind"), "status 500"),
            (Req::get(ECHO, "/"), "echo-v1-0"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_backend_answers_500_for_its_share() {
    let tb = mesh(&http_route(
        "half-invalid",
        "  - backendRefs:
    - {name: echo-v1, port: 80, weight: 1}
    - {name: does-not-exist, port: 80, weight: 1}
",
    ))
    .await;
    let n = 300;
    let counts = tally(&tb, &Req::get(ECHO, "/"), n).await;
    assert_share(&counts, "status 500", n, 0.5);
    assert_share(&counts, "echo-v1-0", n, 0.5);
}

const TO_WEB_BACKEND: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cross-namespace, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - backendRefs: [{name: web-backend, namespace: gateway-conformance-web-backend, port: 8080}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_namespace_backend_without_a_reference_grant_answers_500() {
    // A grant exists, but for routes of another namespace: it does not count.
    let grant = r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: other-namespace-only, namespace: gateway-conformance-web-backend}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: gateway-conformance-mesh-consumer}]
  to: [{group: "", kind: Service}]
"#;
    let tb = mesh(&format!("{TO_WEB_BACKEND}\n---\n{grant}")).await;
    for _ in 0..4 {
        assert_eq!(outcome(&get(&tb, "/").await), "status 500");
    }
    assert_eq!(tb.echo("web-backend-0").requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_namespace_backend_with_a_reference_grant() {
    let grant = r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: allow-mesh-routes, namespace: gateway-conformance-web-backend}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: gateway-conformance-mesh}]
  to: [{group: "", kind: Service, name: web-backend}]
"#;
    let tb = mesh(&format!("{TO_WEB_BACKEND}\n---\n{grant}")).await;
    for _ in 0..4 {
        let r = get(&tb, "/").await;
        assert_eq!(outcome(&r), "web-backend-0");
        assert_eq!(r.echo().namespace, "gateway-conformance-web-backend");
    }
}
