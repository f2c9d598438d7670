//! Retries with failure-injecting backends: a refused connection, a reset, a listed 5xx code; a retry goes to
//! the other endpoint when there is one; a request the destination read and then lost is replayed only when it is
//! idempotent; and the budget: `attempts` per request, `maxRetries` (concurrent retries) per destination.

use super::*;

/// `/retry`: 2 retries on 503 (Istio's default count); `/` : no retry policy.
const ROUTES: &str = "  - matches: [{path: {type: PathPrefix, value: /retry}}]
    retry: {attempts: 2, codes: [503], backoff: 10ms}
    backendRefs: [{name: pair, port: 80}]
  - backendRefs: [{name: pair, port: 80}]
";

fn routes() -> String {
    http_route("pair", "pair", ROUTES)
}

/// GET `/retry` with a request id, so the echoes count its attempts.
fn tracked(method: &str, id: &str) -> Req {
    Req::new(method, PAIR, "/retry").header("x-echo-request-id", id)
}

/// Sends `n` tracked requests one after the other; returns `(outcome, attempts at the echoes)` of each.
async fn tracked_run(tb: &Testbed, method: &str, n: usize) -> Vec<(String, u64)> {
    let mut out = vec![];
    for i in 0..n {
        let id = request_id(&format!("{method}-{i}"));
        let r = send(tb, tracked(method, &id)).await;
        out.push((outcome(&r), tb.attempts(&id)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_retried_on_the_other_endpoint() {
    let tb = mesh(&routes()).await;
    fault(&tb, "pair-0", Fault::Refuse);
    let before = retries(&tb);
    let runs = tracked_run(&tb, "GET", 20).await;
    let wrong: Vec<_> = runs
        .iter()
        .filter(|(o, a)| o != "pair-1" || *a != 1)
        .collect();
    assert!(
        wrong.is_empty(),
        "every request answered by pair-1 on its only try to reach an echo: {wrong:?}"
    );
    assert_eq!(requests(&tb, "pair-0"), 0);
    assert!(
        retries(&tb) > before,
        "round robin sends about half the first tries to the refusing pod: they must have been retried"
    );
    // Cleared: both serve again.
    fault(&tb, "pair-0", Fault::None);
    let counts = tally_sequential(&tb, &Req::get(PAIR, "/retry"), 10).await;
    assert!(counts.contains_key("pair-0"), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_of_idempotent_requests_are_retried_on_the_other_endpoint() {
    let tb = mesh(&routes()).await;
    fault(&tb, "pair-0", Fault::Reset);
    let runs = tracked_run(&tb, "GET", 20).await;
    for (o, attempts) in &runs {
        assert_eq!(o, "pair-1", "{runs:?}");
        assert!(
            *attempts <= 2,
            "a reset try, then the other endpoint: {runs:?}"
        );
    }
    let reset_tries = requests(&tb, "pair-0");
    assert!(reset_tries >= 1, "pair-0 never got a first try: {runs:?}");
    assert_eq!(
        runs.iter().map(|(_, a)| a).sum::<u64>(),
        20 + reset_tries,
        "each reset try was retried exactly once, on pair-1"
    );
    // A connection closed without an answer (FIN) is the same failure.
    fault(&tb, "pair-0", Fault::Close);
    let runs = tracked_run(&tb, "GET", 10).await;
    assert!(runs.iter().all(|(o, _)| o == "pair-1"), "{runs:?}");
}

/// Issue 4: a request lost to a close or reset before any byte of the response is retried on another connection,
/// for idempotent requests always, whatever the route's retry policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_of_idempotent_requests_are_retried_even_without_a_policy() {
    let tb = mesh(&routes()).await;
    fault(&tb, "pair-0", Fault::Reset);
    let before = retries(&tb);
    let counts = tally_sequential(&tb, &Req::get(PAIR, "/"), 20).await;
    assert_eq!(counts.get("pair-1"), Some(&20), "{counts:?}");
    assert_eq!(
        retries(&tb) - before,
        requests(&tb, "pair-0"),
        "one counted retry per reset try"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_the_destination_read_is_not_replayed() {
    let tb = mesh(&routes()).await;
    for mode in ["reset", "close"] {
        let id = request_id(mode);
        let r = send(
            &tb,
            tracked("POST", &id)
                .header("x-echo-fail-first", "1")
                .header("x-echo-fail-mode", mode)
                .body("charge the card"),
        )
        .await;
        assert_eq!(
            tb.attempts(&id),
            1,
            "POST {mode}: the destination read it; a replay could charge twice ({})",
            outcome(&r)
        );
        assert!(
            r.status == 502 || r.status == 503,
            "POST {mode}: an error answer, got {}",
            outcome(&r)
        );
    }
    // The same failure on a GET is retried.
    let id = request_id("get-reset");
    let r = send(
        &tb,
        tracked("GET", &id)
            .header("x-echo-fail-first", "1")
            .header("x-echo-fail-mode", "reset"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", outcome(&r));
    assert_eq!(tb.attempts(&id), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_5xx_codes_are_retried_up_to_attempts() {
    let tb = mesh(&routes()).await;
    // Fails twice, then answers: the third try (two retries) succeeds.
    let id = request_id("two-failures");
    let r = send(&tb, tracked("GET", &id).header("x-echo-fail-first", "2")).await;
    assert_eq!(r.status, 200, "{}", outcome(&r));
    assert_eq!(tb.attempts(&id), 3);
    // Always failing: 1 try + 2 retries, then the last 503 is the answer.
    fault(&tb, "pair-0", Fault::Status(503));
    fault(&tb, "pair-1", Fault::Status(503));
    let id = request_id("always");
    let r = send(&tb, tracked("GET", &id)).await;
    assert_eq!(r.status, 503);
    assert!(r.echo.is_some(), "the echo's own 503 is passed on");
    assert_eq!(tb.attempts(&id), 3, "the attempts budget");
    // No policy: no retry of a 503.
    let id = request_id("no-policy");
    let r = send(&tb, Req::get(PAIR, "/").header("x-echo-request-id", &id)).await;
    assert_eq!((r.status, tb.attempts(&id)), (503, 1));
    // 500 is not listed: answered as is.
    fault(&tb, "pair-0", Fault::Status(500));
    fault(&tb, "pair-1", Fault::Status(500));
    let id = request_id("unlisted");
    let r = send(&tb, tracked("GET", &id)).await;
    assert_eq!((r.status, tb.attempts(&id)), (500, 1));
}

/// `connectionPool.http.maxRetries: 1`: at most one retry in flight for the destination, however many requests
/// fail at once — retries cannot multiply an outage. Without the budget, 6 always-failing requests make 18 tries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_concurrent_retries() {
    let dr = destination_rule("pair", "    connectionPool:\n      http: {maxRetries: 1}\n");
    let tb = mesh(&format!("{}\n---\n{dr}", routes())).await;
    let ids: Vec<String> = (0..6).map(|i| request_id(&format!("budget-{i}"))).collect();
    let sends = ids.iter().map(|id| {
        let (c, req) = (
            client(&tb),
            tracked("GET", id)
                .header("x-echo-status", "503")
                .header("x-echo-delay-ms", "300"),
        );
        tokio::spawn(async move { c.send(req).await })
    });
    let mut statuses = vec![];
    for s in sends.collect::<Vec<_>>() {
        statuses.push(s.await.unwrap().expect("an answer").status);
    }
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    let tries: u64 = ids.iter().map(|id| tb.attempts(id)).sum();
    // 6 first tries; one retry at a time: the request holding the budget may use both of its retries.
    assert!(
        (6..=9).contains(&tries),
        "{tries} tries for 6 failing requests with maxRetries 1 (18 without a budget)"
    );
}

/// A client that goes away while its request waits for an answer is not retried for: the try it started is the
/// only one the echoes see, and the retry counter does not move (Pingora reports the client's close as an error
/// of the try; only the destination's failures are retried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_mid_request_is_not_retried_for() {
    let tb = mesh(&routes()).await;
    for pod in ["pair-0", "pair-1"] {
        fault(&tb, pod, Fault::Delay(MS(400)));
    }
    let before = retries(&tb);
    let id = request_id("gone");
    leave_mid_request(&tb, &tracked("GET", &id), &id).await;
    // A retry would reach the other echo within milliseconds of the close; watch for one past the first try's
    // own delay.
    let until = tokio::time::Instant::now() + MS(800);
    while tokio::time::Instant::now() < until {
        assert_eq!(
            tb.attempts(&id),
            1,
            "the request was retried after its client left"
        );
        tokio::time::sleep(MS(10)).await;
    }
    assert_eq!(
        retries(&tb),
        before,
        "a retry was counted for a client that left"
    );
}
