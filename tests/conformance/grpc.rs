//! GRPCRoute: gRPC over h2c inside HBONE end to end (`grpc-status: 0` in the trailers), service/method
//! matching (Exact, RegularExpression), header matching, weights, header modifiers.

use super::*;

const SERVICE: &str = "grpc.testing.EchoService";

/// A GRPCRoute `name` attached to Service `echo` port 7070, with `rules` (YAML, indented two spaces).
fn grpc_route(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: {name}, namespace: {NS}}}
spec:
  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 7070}}]
  rules:
{rules}"
    )
}

fn call(service: &str, method: &str) -> Req {
    Req::grpc(ECHO_GRPC, service, method, b"ping")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_end_to_end() {
    let tb = mesh(&grpc_route(
        "grpc",
        "  - backendRefs: [{name: echo-v1, port: 7070}]
",
    ))
    .await;
    let r = send(&tb, call(SERVICE, "Echo")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert_eq!(r.grpc_status(), Some("0"), "trailers {:?}", r.trailers);
    let e = r.echo();
    assert_eq!(e.pod, "echo-v1-0");
    assert_eq!(e.protocol, "HTTP/2", "h2c all the way to the backend");
    assert_eq!(e.method, "POST");
    assert_eq!(e.path, format!("/{SERVICE}/Echo"));
    assert_eq!(e.header("content-type"), Some("application/grpc"));
    assert_eq!(e.header("te"), Some("trailers"));
    assert!(
        e.body.ends_with("ping"),
        "the request message arrived: {:?}",
        e.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_method_exact() {
    let tb = mesh(&grpc_route(
        "exact",
        "  - matches: [{method: {type: Exact, service: grpc.testing.EchoService, method: Echo}}]
    backendRefs: [{name: echo-v1, port: 7070}]
  - matches: [{method: {type: Exact, service: grpc.testing.EchoService}}]
    backendRefs: [{name: echo-v2, port: 7070}]
  - matches: [{method: {type: Exact, method: Ping}}]
    backendRefs: [{name: echo-v3, port: 7070}]
",
    ))
    .await;
    expect_outcomes(
        &tb,
        vec![
            (call(SERVICE, "Echo"), "echo-v1-0"),
            (call(SERVICE, "Other"), "echo-v2-0"),
            (call("other.Health", "Ping"), "echo-v3-0"),
            (call(SERVICE, "Ping"), "echo-v2-0"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_method_regular_expression() {
    let tb = mesh(&grpc_route(
        "regex",
        "  - matches: [{method: {type: RegularExpression, service: 'grpc\\.testing\\..*', method: 'Ech.*'}}]
    backendRefs: [{name: echo-v2, port: 7070}]
  - matches: [{method: {type: Exact, service: grpc.testing.EchoService, method: Ping}}]
    backendRefs: [{name: echo-v1, port: 7070}]
",
    ))
    .await;
    // Where regex matches rank against exact ones is implementation-specific: each call matches one rule.
    expect_outcomes(
        &tb,
        vec![
            (call(SERVICE, "Echo"), "echo-v2-0"),
            (call(SERVICE, "Echoes"), "echo-v2-0"),
            (call(SERVICE, "Ping"), "echo-v1-0"),
        ],
    )
    .await;
    // No rule matches these (the service regex is anchored): no backend may answer.
    for service in ["other.Svc", "xgrpc.testing.EchoService"] {
        let r = send(&tb, call(service, "Echo")).await;
        assert!(
            r.echo.is_none(),
            "{service}/Echo answered by {}",
            outcome(&r)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_header_matching() {
    let tb = mesh(&grpc_route(
        "headers",
        "  - matches: [{headers: [{name: x-canary, value: 'true'}]}]
    backendRefs: [{name: echo-v2, port: 7070}]
  - matches: [{headers: [{type: RegularExpression, name: x-tier, value: 'gold|silver'}]}]
    backendRefs: [{name: echo-v3, port: 7070}]
  - backendRefs: [{name: echo-v1, port: 7070}]
",
    ))
    .await;
    expect_outcomes(
        &tb,
        vec![
            (
                call(SERVICE, "Echo").header("x-canary", "true"),
                "echo-v2-0",
            ),
            (
                call(SERVICE, "Echo").header("x-canary", "false"),
                "echo-v1-0",
            ),
            (
                call(SERVICE, "Echo").header("x-tier", "silver"),
                "echo-v3-0",
            ),
            (call(SERVICE, "Echo"), "echo-v1-0"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_weighted_split() {
    let tb = mesh(&grpc_route(
        "split",
        "  - backendRefs:
    - {name: echo-v1, port: 7070, weight: 70}
    - {name: echo-v2, port: 7070, weight: 30}
",
    ))
    .await;
    let n = 300;
    let counts = tally(&tb, &call(SERVICE, "Echo"), n).await;
    assert_share(&counts, "echo-v2-0", n, 0.3);
    assert_share(&counts, "echo-v1-0", n, 0.7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_header_modifiers() {
    let tb = mesh(&grpc_route(
        "modifiers",
        "  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-grpc-set, value: 'yes'}], remove: [x-grpc-remove]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-grpc-added, value: 'yes'}]}
    backendRefs: [{name: echo-v1, port: 7070}]
",
    ))
    .await;
    let r = send(&tb, call(SERVICE, "Echo").header("x-grpc-remove", "1")).await;
    assert_eq!(r.grpc_status(), Some("0"));
    assert_eq!(r.echo().header("x-grpc-set"), Some("yes"));
    assert_eq!(r.echo().header("x-grpc-remove"), None);
    assert_eq!(r.header("x-grpc-added"), Some("yes"));
}
