//! Replaying a request body: a POST whose first try the destination read and then reset is replayed on a route
//! that opts in (`retry.waypoint.dev/reset-before-response: "true"`) — with its whole body — but only while the
//! body fits Pingora's retry buffer (64 KiB). A larger body was streamed upstream and is gone: the waypoint
//! answers 503 `UC` instead of replaying a truncated request.

use super::*;

/// Pingora's retry buffer (`BODY_BUF_LIMIT`): a request body larger than this cannot be replayed.
const REPLAY_BUFFER: usize = 64 * 1024;

/// `pair` with the opt-in on every rule (`/`), and `echo` without it (the contrast).
fn routes() -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: pair
  namespace: {NS}
  annotations: {{retry.waypoint.dev/reset-before-response: \"true\"}}
spec:
  parentRefs: [{{group: \"\", kind: Service, name: pair, port: 80}}]
  rules:
  - backendRefs: [{{name: pair, port: 80}}]
---
{}",
        http_route(
            "echo",
            "echo",
            "  - backendRefs: [{name: echo, port: 80}]\n"
        )
    )
}

/// `len` bytes of printable ASCII (so the echo's lossy-UTF-8 `body` is the bytes themselves), never periodic
/// at a power of two.
fn ascii_body(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + (i % 23) as u8))
        .collect()
}

/// A POST to `authority` whose first try the echo reads in full, then resets.
fn reset_once(authority: &str, id: &str, body: &str) -> Req {
    Req::new("POST", authority, "/charge")
        .header("x-echo-request-id", id)
        .header("x-echo-fail-first", "1")
        .header("x-echo-fail-mode", "reset")
        .body(body.to_string())
}

/// What the echoes of `pods` saw of request `id`: `(attempt, body length)` of each try, in attempt order.
fn tries_seen(tb: &Testbed, pods: &[&str], id: &str) -> Vec<(u64, usize)> {
    let mut tries: Vec<(u64, usize)> = pods
        .iter()
        .flat_map(|p| tb.echo(p).seen())
        .filter(|e| e.header("x-echo-request-id") == Some(id))
        .map(|e| (e.attempt, e.body.len()))
        .collect();
    tries.sort_unstable();
    tries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_post_reset_after_delivery_is_replayed_whole_when_the_route_opts_in() {
    let tb = mesh(&routes()).await;
    let body = ascii_body(2 * 1024);

    let id = request_id("small-opted-in");
    let before = retries(&tb);
    let r = send(&tb, reset_once(PAIR, &id, &body)).await;
    assert_eq!(r.status, 200, "{}", outcome(&r));
    assert_eq!(tb.attempts(&id), 2, "the reset try, then one replay");
    let e = r.echo();
    assert_eq!(e.attempt, 2, "the answer is the replay's");
    assert_eq!(e.method, "POST");
    assert_eq!(
        e.body.len(),
        body.len(),
        "the replay carried the whole body"
    );
    assert!(
        e.body == body,
        "the replay's body differs from the one sent"
    );
    assert_eq!(
        tries_seen(&tb, &["pair-0", "pair-1"], &id),
        vec![(1, body.len()), (2, body.len())],
        "both tries delivered the whole body"
    );
    assert_eq!(retries(&tb) - before, 1, "one counted retry");

    // The contrast: without the opt-in the same POST is not replayed (it was processed once already).
    let id = request_id("small-no-opt-in");
    let r = send(&tb, reset_once(ECHO, &id, &body)).await;
    assert_eq!(tb.attempts(&id), 1, "not replayed: {}", outcome(&r));
    assert!(answered(&r, 503, "UC"), "{}", outcome(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_larger_than_the_replay_buffer_is_not_replayed() {
    let tb = mesh(&routes()).await;
    let body = ascii_body(200 * 1024);
    assert!(body.len() > REPLAY_BUFFER);

    let id = request_id("large-opted-in");
    let before = retries(&tb);
    let r = send(&tb, reset_once(PAIR, &id, &body)).await;
    let seen = tries_seen(&tb, &["pair-0", "pair-1"], &id);
    assert_eq!(
        tb.attempts(&id),
        1,
        "a 200 KiB body does not fit the 64 KiB replay buffer: no replay ({}; tries seen {seen:?})",
        outcome(&r)
    );
    assert_eq!(
        seen,
        vec![(1, body.len())],
        "the one try delivered the whole body"
    );
    assert!(answered(&r, 503, "UC"), "{}", outcome(&r));
    assert_eq!(flags(&r), ["UC"], "one try, so no URX");
    assert_eq!(retries(&tb), before, "no retry counted");

    // Just under the buffer, the same request is replayed whole: the size, not the route, decided.
    let body = ascii_body(REPLAY_BUFFER - 1024);
    let id = request_id("under-buffer");
    let r = send(&tb, reset_once(PAIR, &id, &body)).await;
    assert_eq!(r.status, 200, "{}", outcome(&r));
    assert_eq!(tb.attempts(&id), 2);
    assert!(
        r.echo().body == body,
        "the replay's body differs from the one sent"
    );
}
