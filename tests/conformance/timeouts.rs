//! Timeouts (GEP-1742: `timeouts.request`, `timeouts.backendRequest`) and retry (GEP-1731: `attempts`,
//! `codes`, `backoff`), asserted with the echo's delays, its fail-first-N control and its attempt counters.

use std::time::Duration;

use super::*;

fn delayed(path: &str, ms: u64) -> Req {
    Req::get(ECHO, path).header("x-echo-delay-ms", &ms.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_answers_504() {
    let tb = mesh(&http_route(
        "timeout",
        "  - timeouts: {request: 500ms}
    backendRefs: [{name: echo-v1, port: 80}]
",
    ))
    .await;
    let fast = send(&tb, delayed("/", 0)).await;
    assert_eq!(outcome(&fast), "echo-v1-0");
    let slow = send(&tb, delayed("/", 3000)).await;
    assert_eq!(slow.status, 504, "{}", outcome(&slow));
    assert!(
        slow.elapsed >= Duration::from_millis(450) && slow.elapsed < Duration::from_millis(2500),
        "answered after {:?}",
        slow.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_request_timeout_answers_504() {
    let tb = mesh(&http_route(
        "backend-timeout",
        "  - timeouts: {request: 10s, backendRequest: 300ms}
    backendRefs: [{name: echo-v1, port: 80}]
",
    ))
    .await;
    let slow = send(&tb, delayed("/", 2000)).await;
    assert_eq!(slow.status, 504, "{}", outcome(&slow));
    assert!(
        slow.elapsed < Duration::from_millis(1500),
        "answered after {:?}",
        slow.elapsed
    );
    assert_eq!(outcome(&send(&tb, delayed("/", 50)).await), "echo-v1-0");
}

const RETRY: &str = "  - matches: [{path: {type: PathPrefix, value: /retry}}]
    retry: {attempts: 2, codes: [503]}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /other-codes}}]
    retry: {attempts: 2, codes: [500]}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /backoff}}]
    retry: {attempts: 2, codes: [503], backoff: 200ms}
    backendRefs: [{name: echo-v1, port: 80}]
  - backendRefs: [{name: echo-v1, port: 80}]
";

/// A request whose first `fail` attempts the echo fails (503, or a reset); `id` must be unique per test.
fn failing(path: &str, id: &str, fail: u32) -> Req {
    Req::get(ECHO, path)
        .header("x-echo-request-id", id)
        .header("x-echo-fail-first", &fail.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_attempts_until_success_then_gives_up() {
    let tb = mesh(&http_route("retry", RETRY)).await;
    let ok = send(&tb, failing("/retry", "two-failures", 2)).await;
    assert_eq!(outcome(&ok), "echo-v1-0");
    assert_eq!(ok.echo().attempt, 3, "the third try answered");
    assert_eq!(tb.attempts("two-failures"), 3);

    let exhausted = send(&tb, failing("/retry", "five-failures", 5)).await;
    assert_eq!(exhausted.status, 503);
    assert_eq!(tb.attempts("five-failures"), 3, "1 try + 2 retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_only_listed_codes_and_never_without_a_policy() {
    let tb = mesh(&http_route("retry-codes", RETRY)).await;
    let r = send(&tb, failing("/other-codes", "not-listed", 1)).await;
    assert_eq!(r.status, 503, "503 is not in codes: answered as is");
    assert_eq!(tb.attempts("not-listed"), 1);
    let r = send(&tb, failing("/no-policy", "no-policy", 1)).await;
    assert_eq!(r.status, 503);
    assert_eq!(tb.attempts("no-policy"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_a_connection_reset() {
    let tb = mesh(&http_route("retry-reset", RETRY)).await;
    let r = send(
        &tb,
        failing("/retry", "reset-once", 1).header("x-echo-fail-mode", "reset"),
    )
    .await;
    assert_eq!(outcome(&r), "echo-v1-0");
    assert_eq!(tb.attempts("reset-once"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_backoff_waits_between_tries() {
    let tb = mesh(&http_route("retry-backoff", RETRY)).await;
    let r = send(&tb, failing("/backoff", "backoff", 2)).await;
    assert_eq!(outcome(&r), "echo-v1-0");
    assert_eq!(tb.attempts("backoff"), 3);
    // GEP-1731: `backoff` is the minimum wait between tries (jitter and growth may only add to it): every gap
    // between two tries' arrivals at the echo is at least 200 ms.
    let arrivals: Vec<_> = tb
        .echo("echo-v1-0")
        .seen()
        .into_iter()
        .filter(|e| e.header("x-echo-request-id") == Some("backoff"))
        .filter_map(|e| e.received_at)
        .collect();
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps.len(), 2);
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(200)),
        "gaps between tries: {gaps:?}"
    );
}
