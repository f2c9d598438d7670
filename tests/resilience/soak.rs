//! The keep-alive race soak: `soak-0` and `soak-1` close every HTTP/1.1 keep-alive connection left idle for a
//! random 5–30 ms (drawn per idle period), so the waypoint keeps reusing pooled connections that the destination
//! is closing at that very moment. Many clients, each on its own keep-alive connection to the waypoint, send GET
//! and POST (small bodies) with random gaps of 0–40 ms, around that window. Bounded: a fixed request count.
//!
//! What must hold: no POST processed twice (a replay of a request the destination had already read would be
//! one), the race really happened (the echoes closed many idle connections), and no GET ever fails: the
//! close-detection retry hides the race for idempotent requests with no retry policy at all, and with Istio's
//! default-like policy (2 retries on 503). A POST is replayed only when it provably never arrived, so on those
//! routes a POST that was delivered into a connection the destination was closing may still fail — only ever as
//! `503 UC`, never processed. When the route opts into retrying resets before the response for every method,
//! there are zero client-visible errors. The waypoint's retry counter says how many retries made it so.
//!
//! The figures are printed (`cargo test --test resilience soak -- --nocapture`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;

use waypoint::testbed::Conn;

use super::*;

const ROUTES: &str = "  - matches: [{path: {type: PathPrefix, value: /retry}}]
    retry: {attempts: 2, codes: [503]}
    backendRefs: [{name: soak, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /plain}}]
    backendRefs: [{name: soak, port: 80}]
";

/// The load.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Concurrent clients, each on its own keep-alive connection (reopened after an error).
    pub connections: usize,
    pub per_connection: usize,
    /// Gaps between a client's requests: uniform in `0..=max_gap`.
    pub max_gap: Duration,
    /// Share of POST requests.
    pub post_share: f64,
}

const LOAD: Load = Load {
    connections: 24,
    per_connection: 60,
    max_gap: Duration::from_millis(40),
    post_share: 0.5,
};

/// What one soak saw.
#[derive(Debug, Default)]
pub struct Report {
    pub requests: u64,
    pub ok: u64,
    pub get_errors: u64,
    pub post_errors: u64,
    /// Error kind → count.
    pub errors: BTreeMap<String, u64>,
    /// Requests found unsent on a connection the waypoint had closed, sent again on a new one (not errors).
    pub not_sent: u64,
    /// The waypoint's retries during the soak.
    pub retries: u64,
    /// Keep-alive connections the echoes closed while idle during the soak.
    pub idle_closes: u64,
    /// Requests the echoes received (every try that reached one).
    pub echo_requests: u64,
    /// POST requests the echoes received more than once.
    pub posts_processed_twice: u64,
    /// Failed requests that no echo ever received (provably not processed: safe to have retried).
    pub failed_unprocessed: u64,
    failed_ids: Vec<String>,
    pub elapsed: Duration,
}

impl Report {
    pub fn errors_total(&self) -> u64 {
        self.get_errors + self.post_errors
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests in {:.1?}: {} ok, {} errors (GET {}, POST {}) {:?}; waypoint retries {}; echo idle closes {}, \
             echo requests {}, POST processed twice {}; failed requests no echo received {}; client resends of unsent \
             requests {}",
            self.requests,
            self.elapsed,
            self.ok,
            self.errors_total(),
            self.get_errors,
            self.post_errors,
            self.errors,
            self.retries,
            self.idle_closes,
            self.echo_requests,
            self.posts_processed_twice,
            self.failed_unprocessed,
            self.not_sent
        )
    }
}

fn idle_closes(tb: &Testbed) -> u64 {
    ["soak-0", "soak-1"]
        .iter()
        .map(|p| tb.echo(p).idle_closes())
        .sum()
}

fn echo_requests(tb: &Testbed) -> u64 {
    ["soak-0", "soak-1"].iter().map(|p| requests(tb, p)).sum()
}

/// A short description of a client-side failure.
fn kind(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let text = text.split(": ").last().unwrap_or(&text).to_string();
    text.chars().take(80).collect()
}

/// Whether the client side already knows `conn` is closed.
fn closed(conn: &Conn) -> bool {
    match conn {
        Conn::Http1(s) => s.is_closed(),
        Conn::H2c(s) => s.is_closed(),
    }
}

/// Whether a failed request was never sent (hyper: the connection was closed before it was written).
fn not_sent(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_closed() || h.is_canceled())
    })
}

/// Sends `req` on `conn`, opening it first when `None`; leaves it `None` after a failure.
async fn send_on(client: &Client, conn: &mut Option<Conn>, req: &Req) -> anyhow::Result<Resp> {
    if conn.is_none() {
        *conn = Some(client.connect(req).await.context("client connect")?);
    }
    let r = conn.as_mut().expect("connected").send(req).await;
    if r.is_err() {
        *conn = None;
    }
    r
}

/// Runs `load` against `path_prefix` on the `soak` service.
pub async fn soak(tb: &Testbed, path_prefix: &str, load: Load) -> Report {
    let report = Arc::new(Mutex::new(Report::default()));
    let (retries0, closes0, echo0) = (retries(tb), idle_closes(tb), echo_requests(tb));
    let started = Instant::now();
    let mut tasks = vec![];
    for c in 0..load.connections {
        let (client, report, prefix) = (client(tb), report.clone(), path_prefix.to_string());
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<Conn> = None;
            for i in 0..load.per_connection {
                let gap = fastrand::u64(0..=load.max_gap.as_micros() as u64);
                tokio::time::sleep(Duration::from_micros(gap)).await;
                let post = fastrand::f64() < load.post_share;
                let id = format!("{c}-{i}");
                let body: String = (0..fastrand::usize(16..512))
                    .map(|_| fastrand::alphanumeric())
                    .collect();
                let req = if post {
                    Req::new("POST", SOAK, &format!("{prefix}/post"))
                        .header("content-type", "text/plain")
                        .body(body.clone())
                } else {
                    Req::get(SOAK, &format!("{prefix}/get?i={i}"))
                }
                .header("x-soak-id", &id);
                // As any HTTP client pool: a connection known closed is not used, and a request that was never
                // sent (the connection closed before it was written) is sent on a new one. Neither is an error.
                if conn.as_ref().is_some_and(closed) {
                    conn = None;
                }
                let mut result = send_on(&client, &mut conn, &req).await;
                if result.as_ref().is_err_and(not_sent) {
                    report.lock().unwrap().not_sent += 1;
                    result = send_on(&client, &mut conn, &req).await;
                }
                if result.as_ref().is_ok_and(|r| {
                    r.header("connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                }) {
                    conn = None;
                }
                let failure = match &result {
                    Ok(r) if r.status == 200 => match &r.echo {
                        Some(e) if !post || e.body == body => None,
                        Some(_) => Some("POST body changed".to_string()),
                        None => Some("200 without an echo".to_string()),
                    },
                    Ok(r) => Some(format!(
                        "status {} {}",
                        r.status,
                        r.header("x-waypoint-error").unwrap_or("-")
                    )),
                    Err(e) => Some(format!("client: {}", kind(e))),
                };
                let mut rep = report.lock().unwrap();
                rep.requests += 1;
                match failure {
                    None => rep.ok += 1,
                    Some(k) => {
                        rep.failed_ids.push(id.clone());
                        let method = if post { "POST" } else { "GET" };
                        *rep.errors.entry(format!("{method} {k}")).or_default() += 1;
                        if post {
                            rep.post_errors += 1;
                        } else {
                            rep.get_errors += 1;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("a soak client task");
    }
    let mut rep = std::mem::take(&mut *report.lock().unwrap());
    rep.elapsed = started.elapsed();
    rep.retries = retries(tb) - retries0;
    rep.idle_closes = idle_closes(tb) - closes0;
    rep.echo_requests = echo_requests(tb) - echo0;
    let mut posts: HashMap<String, u64> = HashMap::new();
    let mut received = std::collections::HashSet::new();
    for pod in ["soak-0", "soak-1"] {
        for e in tb.echo(pod).seen() {
            if !e.path.starts_with(path_prefix) {
                continue;
            }
            if let Some(id) = e.header("x-soak-id") {
                received.insert(id.to_string());
                if e.method == "POST" {
                    *posts.entry(id.to_string()).or_default() += 1;
                }
            }
        }
    }
    rep.failed_unprocessed = rep
        .failed_ids
        .iter()
        .filter(|id| !received.contains(*id))
        .count() as u64;
    rep.posts_processed_twice = posts.values().filter(|n| **n > 1).count() as u64;
    rep
}

/// A second route on `soak`, opting into retrying resets before the response for every method.
const OPT_IN_ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: soak-opt-in
  namespace: resilience
  annotations: {retry.waypoint.dev/reset-before-response: \"true\"}
spec:
  parentRefs: [{group: \"\", kind: Service, name: soak, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /opt-in}}]
    backendRefs: [{name: soak, port: 80}]
";

/// What a route promises under the race.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Promise {
    /// Idempotent requests never fail; a POST fails only as `503 UC` (delivered into a closing connection).
    IdempotentOnly,
    /// Nothing fails.
    Everything,
}

/// Runs the soak on `path_prefix` and asserts what must hold (see the module doc).
async fn soak_must_hold(label: &str, path_prefix: &str, promise: Promise) {
    let tb = mesh(&format!(
        "{}\n---\n{OPT_IN_ROUTE}",
        http_route("soak", "soak", ROUTES)
    ))
    .await;
    let rep = soak(&tb, path_prefix, LOAD).await;
    eprintln!("keep-alive race soak, {label}: {rep}");
    let n = (LOAD.connections * LOAD.per_connection) as u64;
    assert_eq!(rep.requests, n);
    assert!(
        rep.idle_closes >= n / 25,
        "the race was not exercised: only {} idle closes for {n} requests ({rep})",
        rep.idle_closes
    );
    assert_eq!(
        rep.posts_processed_twice, 0,
        "a POST was replayed after it was processed: {rep}"
    );
    assert_eq!(rep.get_errors, 0, "GET errors, {label}: {rep}");
    match promise {
        Promise::Everything => assert_eq!(
            rep.errors_total(),
            0,
            "client-visible errors, {label}: {rep}"
        ),
        Promise::IdempotentOnly => {
            let only_uc = rep.errors.keys().all(|k| k == "POST status 503 UC");
            assert!(
                only_uc,
                "POST failures other than an unretried reset, {label}: {rep}"
            );
        }
    }
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_race_without_a_retry_policy() {
    soak_must_hold(
        "route without retry policy",
        "/plain",
        Promise::IdempotentOnly,
    )
    .await;
}

/// The route opts into retrying resets before the response for every method (`retry.waypoint.dev/
/// reset-before-response`): the POSTs lost to the race are retried too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_race_with_the_reset_retry_opt_in() {
    soak_must_hold(
        "route opting into reset-before-response retries",
        "/opt-in",
        Promise::Everything,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_race_with_a_retry_policy() {
    soak_must_hold(
        "route with retry {attempts: 2, codes: [503]}",
        "/retry",
        Promise::IdempotentOnly,
    )
    .await;
}
