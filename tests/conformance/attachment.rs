//! Attachment: producer routes (the Service's namespace), consumer routes (another namespace: only for callers
//! from there), routes attached to the waypoint Gateway (all its services), `parentRef.port`, and several
//! routes on one parent merging.

use super::*;

const PRODUCER_TO_V1: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: producer, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - backendRefs: [{name: echo-v1, port: 80}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_route_applies_to_callers_from_every_namespace() {
    let tb = mesh(PRODUCER_TO_V1).await;
    for caller in ["client", "consumer-client"] {
        for _ in 0..6 {
            let r = send_from(&tb, caller, Req::get(ECHO, "/")).await;
            assert_eq!(outcome(&r), "echo-v1-0", "caller {caller}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_route_applies_only_to_callers_from_its_namespace() {
    let consumer = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: gateway-conformance-mesh-consumer}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, namespace: gateway-conformance-mesh, port: 80}]
  rules:
  - backendRefs: [{name: echo-v2, namespace: gateway-conformance-mesh, port: 80}]
---
# The backend is in the producer's namespace: like any cross-namespace backendRef, it needs a grant there.
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: consumer-routes, namespace: gateway-conformance-mesh}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: gateway-conformance-mesh-consumer}]
  to: [{group: "", kind: Service}]
"#;
    let tb = mesh(&format!("{PRODUCER_TO_V1}\n---\n{consumer}")).await;
    for _ in 0..6 {
        let mine = send_from(&tb, "consumer-client", Req::get(ECHO, "/")).await;
        assert_eq!(outcome(&mine), "echo-v2-0", "the consumer's own route");
        let theirs = send_from(&tb, "client", Req::get(ECHO, "/")).await;
        assert_eq!(
            outcome(&theirs),
            "echo-v1-0",
            "the producer route, for others"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_attached_to_the_waypoint_applies_to_all_its_services() {
    let tb = mesh(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: all-services, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-attached-to, value: waypoint}]
    backendRefs: [{name: echo-v3, port: 80}]
"#,
    )
    .await;
    for host in [ECHO, "echo-alt.gateway-conformance-mesh.svc.cluster.local"] {
        for _ in 0..4 {
            let r = send(&tb, Req::get(host, "/gw")).await;
            assert_eq!(outcome(&r), "echo-v3-0", "via {host}");
            assert_eq!(r.echo().header("x-attached-to"), Some("waypoint"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_ref_port_limits_a_route_to_that_port() {
    let tb = mesh(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a-port-80, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - backendRefs: [{name: echo-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b-port-8081, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 8081}]
  rules:
  - backendRefs: [{name: echo-v2, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: c-every-port, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /any}}]
    backendRefs: [{name: echo-v3, port: 80}]
"#,
    )
    .await;
    let alt = format!("{ECHO}:8081");
    expect_outcomes(
        &tb,
        vec![
            (Req::get(ECHO, "/"), "echo-v1-0"),
            (Req::get(&alt, "/"), "echo-v2-0"),
            (Req::get(ECHO, "/any"), "echo-v3-0"),
            (Req::get(&alt, "/any"), "echo-v3-0"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_routes_on_one_parent_merge() {
    let a = http_route(
        "route-a",
        "  - matches: [{path: {type: PathPrefix, value: /a}}]
    backendRefs: [{name: echo-v1, port: 80}]
",
    );
    let b = http_route(
        "route-b",
        "  - matches: [{path: {type: PathPrefix, value: /b}}]
    backendRefs: [{name: echo-v2, port: 80}]
",
    );
    let tb = mesh(&format!("{a}\n---\n{b}")).await;
    expect_outcomes(
        &tb,
        vec![
            (Req::get(ECHO, "/a"), "echo-v1-0"),
            (Req::get(ECHO, "/a/x"), "echo-v1-0"),
            (Req::get(ECHO, "/b"), "echo-v2-0"),
            (Req::get(ECHO, "/b/y"), "echo-v2-0"),
        ],
    )
    .await;
}
