//! `DestinationRule.trafficPolicy.connectionPool` limits on upstream connections, through the real data path
//! (waypoint → HBONE → ztunnel → echo), counted where the backend sees them:
//!
//! - `tcp.maxConnections`: the backend never has more connections (nor requests at once) than the limit, however
//!   many clients; the excess waits as pending requests and still succeeds.
//! - `http.http1MaxPendingRequests`: with the only connection busy on a slow backend, the pending limit admits
//!   that many waiters; the rest get 503 `UO` at once; the waiters then succeed in turn.
//! - `http.maxRequestsPerConnection`: a connection is not reused after that many requests.

use std::time::Instant;

use waypoint::resilience::breaker::Overflow;
use waypoint::testbed::eventually;

use super::*;

/// One pod: `solo-0`, so every connection of the service meets the same echo.
const SOLO: &str = "solo.resilience.svc.cluster.local";

/// Service `solo` (one pod) and its `DestinationRule` with `traffic_policy`.
fn solo(traffic_policy: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: solo
  namespace: resilience
  labels: {{istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: 127.0.0.103
  selector: {{app: solo}}
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
---
apiVersion: v1
kind: Pod
metadata: {{name: solo-0, namespace: resilience, labels: {{app: solo}}}}
spec:
  nodeName: node-b
  serviceAccountName: solo
  containers: [{{name: echo, image: echo, ports: [{{containerPort: 8080}}]}}]
status: {{podIP: 127.0.0.41}}
---
{}",
        destination_rule("solo", traffic_policy)
    )
}

/// The breaker of Service `solo` in the waypoint's current snapshot.
fn solo_breaker(tb: &Testbed) -> std::sync::Arc<waypoint::resilience::breaker::ServiceBreaker> {
    let snap = tb.waypoint(WAYPOINT).live().load();
    snap.services
        .values()
        .flat_map(|t| t.rules.iter())
        .flat_map(|r| r.backends.iter())
        .find(|b| b.name.starts_with("resilience/solo:"))
        .map(|b| b.breaker.clone())
        .expect("a backend of solo")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_bounds_the_connections_the_backend_sees() {
    let tb = mesh(&solo(
        "    connectionPool:\n      tcp: {maxConnections: 2}\n      http: {http1MaxPendingRequests: 100}\n",
    ))
    .await;
    let req = Req::get(SOLO, "/").header("x-echo-delay-ms", "30");
    // 40 requests from 8 clients at once: without the limit the echo would see 8 connections.
    let results = client(&tb).send_many(&req, 40, 8).await;
    let statuses: Vec<u16> = results
        .iter()
        .map(|r| r.as_ref().map_or(0, |r| r.status))
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every request succeeds (the excess waits): {statuses:?}"
    );
    let echo = tb.echo("solo-0");
    assert!(
        echo.max_in_flight() <= 2,
        "at most 2 requests at once at the backend, saw {}",
        echo.max_in_flight()
    );
    assert_eq!(
        echo.max_in_flight(),
        2,
        "the limit was reached (the test had the concurrency to exceed it)"
    );
    assert!(
        echo.connections() <= 2,
        "at most maxConnections connections ever opened (each slot keeps its keep-alive connection), saw {}",
        echo.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http1_max_pending_requests_fails_fast_with_uo() {
    let tb = mesh(&solo(
        "    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 2}\n",
    ))
    .await;
    let slow = Req::get(SOLO, "/slow").header("x-echo-delay-ms", "600");
    let echo = tb.echo("solo-0");
    // The first request takes the only connection ...
    let first = {
        let (c, r) = (client(&tb), slow.clone());
        tokio::spawn(async move { c.send(r).await })
    };
    assert!(
        eventually(Duration::from_secs(5), || echo.in_flight() == 1).await,
        "the first request never reached the backend"
    );
    // ... then seven more arrive: two may wait, five are refused at once.
    let mut rest = vec![];
    for _ in 0..7 {
        let (c, r) = (client(&tb), slow.clone());
        rest.push(tokio::spawn(async move {
            let started = Instant::now();
            (c.send(r).await, started.elapsed())
        }));
    }
    let (mut ok, mut refused) = (vec![], vec![]);
    for t in rest {
        let (r, took) = t.await.expect("joined");
        let r = r.expect("an answer");
        if r.status == 200 {
            ok.push(took);
        } else {
            assert!(answered(&r, 503, "UO"), "{} {:?}", r.status, flags(&r));
            refused.push(took);
        }
    }
    assert_eq!(first.await.expect("joined").expect("answer").status, 200);
    assert_eq!(ok.len(), 2, "the two pending requests succeed in turn");
    assert_eq!(refused.len(), 5, "the rest are refused");
    // Counted by the limit that refused them, when each refused request ended.
    let pending = || breaker_trips(&tb, "http1MaxPendingRequests");
    assert!(
        eventually(Duration::from_secs(2), || pending() == 5.0).await,
        "5 pending-request trips: {}",
        pending()
    );
    assert_eq!(breaker_trips(&tb, "http2MaxRequests"), 0.0);
    for took in &refused {
        assert!(
            *took < MS(500),
            "refused at once, not after waiting for the slow backend: {took:?}"
        );
    }
    assert!(
        echo.max_in_flight() <= 1,
        "one connection, one request at a time"
    );
    let breaker = solo_breaker(&tb);
    assert_eq!(breaker.overflows_of(Overflow::Pending), 5);
    // Bounded: nothing is left pending or holding a connection slot.
    let drained = eventually(Duration::from_secs(5), || {
        breaker.held_now(Overflow::Pending) == 0 && breaker.in_flight() == 0
    })
    .await;
    assert!(drained, "pending permits are all released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_retires_connections() {
    let tb = mesh(&solo(
        "    connectionPool:\n      http: {maxRequestsPerConnection: 3}\n",
    ))
    .await;
    for i in 0..9 {
        let r = send(&tb, Req::get(SOLO, "/")).await;
        assert_eq!(r.status, 200, "request {i}");
    }
    // Pingora hands a connection back to its pool only after the answer's last bytes are written, so the next
    // request (sent the moment the client has them) can, rarely, find the pool empty and open one more
    // connection (about 1 run in 30 here; the control below shows the same race). At least 3: never reused after
    // its third request; at most one extra: the limit does not retire connections early.
    let conns = tb.echo("solo-0").connections();
    assert!(
        (3..=4).contains(&conns),
        "9 requests, 3 per connection (a connection is never reused after its third): {conns} connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_limits_one_connection_serves_sequential_requests() {
    let tb = mesh(&solo("    loadBalancer: {simple: ROUND_ROBIN}\n")).await;
    for _ in 0..9 {
        assert_eq!(send(&tb, Req::get(SOLO, "/")).await.status, 200);
    }
    // 1, or 2 when the release race above opens one more.
    let conns = tb.echo("solo-0").connections();
    assert!(
        (1..=2).contains(&conns),
        "the control: keep-alive reuse ({conns} connections for 9 requests)"
    );
}
