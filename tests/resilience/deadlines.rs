//! Deadlines: `timeouts.request` bounds the whole request across its retries and backoffs; a hanging endpoint
//! costs the client the deadline, not forever; `timeouts.backendRequest` bounds each try.

use std::time::Instant;

use super::*;

const ROUTES: &str = "  - matches: [{path: {type: PathPrefix, value: /many-retries}}]
    timeouts: {request: 600ms}
    retry: {attempts: 10, codes: [503], backoff: 50ms}
    backendRefs: [{name: pair, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /deadline}}]
    timeouts: {request: 500ms}
    backendRefs: [{name: pair, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /per-try}}]
    timeouts: {request: 3s, backendRequest: 200ms}
    backendRefs: [{name: pair, port: 80}]
  - backendRefs: [{name: pair, port: 80}]
";

fn routes() -> String {
    http_route("pair", "pair", ROUTES)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_bounds_retries() {
    let tb = mesh(&routes()).await;
    let id = request_id("always-503");
    // Every try takes 150 ms and fails; 10 retries would take well over 2 s.
    let req = Req::get(PAIR, "/many-retries")
        .header("x-echo-request-id", &id)
        .header("x-echo-fail-first", "100")
        .header("x-echo-delay-ms", "150");
    let r = send(&tb, req).await;
    assert!(answered(&r, 504, "UT"), "{}", outcome(&r));
    assert!(
        r.elapsed >= MS(550) && r.elapsed < MS(1200),
        "answered after {:?} (deadline 600 ms)",
        r.elapsed
    );
    let tries = tb.attempts(&id);
    assert!(
        (2..=5).contains(&tries),
        "{tries} tries: retries happened, and stopped at the deadline"
    );
    // No try is started once the deadline passed: the echoes go quiet.
    let settled = requests(&tb, "pair-0") + requests(&tb, "pair-1");
    tokio::time::sleep(MS(400)).await;
    assert_eq!(requests(&tb, "pair-0") + requests(&tb, "pair-1"), settled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_costs_the_deadline_not_forever() {
    let tb = mesh(&routes()).await;
    fault(&tb, "pair-0", Fault::Hang);
    let mut hung = 0;
    for _ in 0..4 {
        let started = Instant::now();
        let r = send(&tb, Req::get(PAIR, "/deadline")).await;
        match outcome(&r).as_str() {
            "pair-1" => assert!(r.elapsed < MS(400), "{:?}", r.elapsed),
            _ => {
                hung += 1;
                assert!(answered(&r, 504, "UT"), "{}", outcome(&r));
                let e = started.elapsed();
                assert!(e >= MS(450) && e < MS(1500), "answered after {e:?}");
            }
        }
    }
    assert!(hung >= 1, "round robin sent no request to the hanging pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_try_timeout_bounds_each_try() {
    let tb = mesh(&routes()).await;
    let r = send(
        &tb,
        Req::get(PAIR, "/per-try").header("x-echo-delay-ms", "1000"),
    )
    .await;
    assert!(answered(&r, 504, "UT"), "{}", outcome(&r));
    assert!(r.elapsed < MS(900), "answered after {:?}", r.elapsed);
    let ok = send(
        &tb,
        Req::get(PAIR, "/per-try").header("x-echo-delay-ms", "50"),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", outcome(&ok));
}
