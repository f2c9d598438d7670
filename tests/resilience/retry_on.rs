//! Istio's retry-on conditions (route annotation `retry.waypoint.dev/on`) end to end: what is retried follows
//! the listed conditions, not only the HTTPRoute `retry.codes`; an unknown condition is refused naming the
//! annotation.

use super::*;

/// An HTTPRoute on `echo` with `retry: {attempts: 2, backoff: 1ms}` and, when given, the annotation.
fn route(on: Option<&str>) -> String {
    let annotations = on.map_or_else(String::new, |on| {
        format!(", annotations: {{retry.waypoint.dev/on: \"{on}\"}}")
    });
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo, namespace: {NS}{annotations}}}
spec:
  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 80}}]
  rules:
  - backendRefs: [{{name: echo, port: 80}}]
    retry: {{attempts: 2, backoff: 1ms}}
"
    )
}

/// Sends a request failing its first attempt with 503; returns (status, attempts the backends saw).
async fn fail_first_503(tb: &Testbed) -> (u16, u64) {
    let id = request_id("on");
    let r = send(
        tb,
        Req::get(ECHO, "/")
            .header("x-echo-request-id", &id)
            .header("x-echo-fail-first", "1"),
    )
    .await;
    (r.status, tb.attempts(&id))
}

/// Sends a request the backends always answer with `status`; returns (status, attempts).
async fn always(tb: &Testbed, status: u16) -> (u16, u64) {
    let id = request_id("on");
    let r = send(
        tb,
        Req::get(ECHO, "/")
            .header("x-echo-request-id", &id)
            .header("x-echo-status", &status.to_string()),
    )
    .await;
    (r.status, tb.attempts(&id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_annotation_statuses_are_not_retried() {
    let tb = mesh(&route(None)).await;
    assert_eq!(fail_first_503(&tb).await, (503, 1), "no codes listed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_xx_retries_any_5xx() {
    let tb = mesh(&route(Some("5xx"))).await;
    assert_eq!(fail_first_503(&tb).await, (200, 2));
    assert_eq!(always(&tb, 500).await, (500, 3), "1 + 2 attempts");
    assert_eq!(always(&tb, 429).await, (429, 1), "not a 5xx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_error_retries_502_to_504_only() {
    let tb = mesh(&route(Some("gateway-error"))).await;
    assert_eq!(always(&tb, 504).await, (504, 3));
    assert_eq!(always(&tb, 500).await, (500, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_4xx_and_bare_codes() {
    let tb = mesh(&route(Some("retriable-4xx, 429"))).await;
    assert_eq!(always(&tb, 409).await, (409, 3));
    assert_eq!(always(&tb, 429).await, (429, 3), "a bare code");
    assert_eq!(always(&tb, 503).await, (503, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_only_does_not_retry_resets() {
    let tb = mesh(&route(Some("connect-failure"))).await;
    let id = request_id("on");
    let r = send(
        &tb,
        Req::get(ECHO, "/")
            .header("x-echo-request-id", &id)
            .header("x-echo-fail-first", "1")
            .header("x-echo-fail-mode", "reset"),
    )
    .await;
    assert_eq!(r.status, 503, "{:?}", flags(&r));
    assert_eq!(tb.attempts(&id), 1, "a reset is not a connect failure");
    // A refused endpoint is: the retry goes to another one.
    fault(&tb, "echo-0", Fault::Refuse);
    for _ in 0..6 {
        assert_eq!(send(&tb, Req::get(ECHO, "/")).await.status, 200);
    }
}

#[tokio::test]
async fn an_unknown_condition_is_refused_naming_the_annotation() {
    let Err(e) = Testbed::start(&with_base(&route(Some("5xx,teapot")))).await else {
        panic!("a route with an unknown retry condition was accepted");
    };
    let msg = format!("{e:#}");
    assert!(
        msg.contains("retry.waypoint.dev/on") && msg.contains("teapot"),
        "{msg}"
    );
}
