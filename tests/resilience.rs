//! Resilience over the real data path (issue 4): client pod → ztunnel (node-a, SOCKS5) =HBONE=> waypoint
//! =HBONE=> ztunnel (node-b) → echo backends that misbehave on purpose.
//!
//! Every test starts its own [`Testbed`] from [`BASE`] (the waypoint; three services bound to it: `echo` with
//! three pods, `pair` with two, `soak` with two pods whose echoes close idle keep-alive connections after 5–30 ms;
//! one client pod) plus the routes and `DestinationRule`s of the behaviour under test. Failures are injected per
//! echo instance ([`Fault`]: refuse, reset, close, hang, status, delay) or per request (the echo's
//! `x-echo-fail-first` / `x-echo-fail-mode` headers), and asserted on what the client got (status, the
//! `x-waypoint-error` flag, elapsed time) and on what each echo saw (requests, attempts per request id, the most
//! requests in flight at once).
//!
//! - [`echo`]: the failure-injecting backend itself (no mesh).
//! - [`soak`]: the keep-alive race soak: GET and POST with random gaps around the backends' idle-close window;
//!   zero client-visible errors, and the retries that made it so (run with `--nocapture` to see the figures).
//! - [`retries`]: retry on refused connections, resets and listed 5xx codes; a different endpoint on retry; a
//!   non-idempotent request that was processed is not replayed; the retry budget (`maxRetries`).
//! - [`deadlines`]: `timeouts.request` across retries, a hanging endpoint.
//! - [`breaker`]: `DestinationRule` circuit breaking (`http2MaxRequests`): fail fast with 503 `UO`, recover.
//! - [`outlier`]: outlier detection: ejection, return after `baseEjectionTime`, never all endpoints.
//! - [`replay`]: a POST reset after delivery is replayed whole on a route that opts in, unless its body
//!   outgrew the 64 KiB replay buffer (503 `UC`, one try).
//! - [`streams`]: no timeout configured, no cut: a 3 s answer, 8 MiB up and down; `timeouts.request` cuts only
//!   its own route.
//! - [`retry_on`]: Istio's retry-on conditions (`retry.waypoint.dev/on`): `5xx`, `gateway-error`,
//!   `retriable-4xx`, bare codes, `connect-failure`; an unknown condition refused naming the annotation.
//! - [`pool`]: `maxConnections` (the backend never sees more), `http1MaxPendingRequests` (the excess 503 `UO` at
//!   once), `maxRequestsPerConnection` (connections retired).
//! - [`idle`]: the downstream idle timeout closes an idle keep-alive connection, not a busy one.
//! - [`balance`]: consistent hash (sticky across requests and across a config swap), LEAST_REQUEST, RANDOM.
//!
//! The `DestinationRule` tests are written to the issue's specification and fail until the waypoint implements it.

use std::collections::BTreeMap;
use std::time::Duration;

use waypoint::testbed::{Client, Fault, Req, Resp, Testbed};

#[path = "resilience/balance.rs"]
mod balance;
#[path = "resilience/breaker.rs"]
mod breaker;
#[path = "resilience/deadlines.rs"]
mod deadlines;
#[path = "resilience/echo.rs"]
mod echo;
#[path = "resilience/idle.rs"]
mod idle;
#[path = "resilience/outlier.rs"]
mod outlier;
#[path = "resilience/pool.rs"]
mod pool;
#[path = "resilience/replay.rs"]
mod replay;
#[path = "resilience/retries.rs"]
mod retries;
#[path = "resilience/retry_on.rs"]
mod retry_on;
#[path = "resilience/soak.rs"]
mod soak;
#[path = "resilience/streams.rs"]
mod streams;

/// The namespace of everything.
pub const NS: &str = "resilience";
/// The waypoint's Gateway.
pub const WAYPOINT: &str = "resilience/waypoint";
/// Three pods: `echo-0..2`.
pub const ECHO: &str = "echo.resilience.svc.cluster.local";
/// Two pods: `pair-0`, `pair-1`.
pub const PAIR: &str = "pair.resilience.svc.cluster.local";
/// Two pods closing idle keep-alive connections after 5–30 ms: `soak-0`, `soak-1`.
pub const SOAK: &str = "soak.resilience.svc.cluster.local";

/// The mesh every test starts from.
pub const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: resilience
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: resilience
  labels: {istio.io/waypoint-for: service}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
status:
  addresses:
  - {type: IPAddress, value: 127.0.0.20}
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: resilience
  labels: {istio.io/use-waypoint: waypoint}
spec:
  clusterIP: 127.0.0.100
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata:
  name: pair
  namespace: resilience
  labels: {istio.io/use-waypoint: waypoint}
spec:
  clusterIP: 127.0.0.101
  selector: {app: pair}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata:
  name: soak
  namespace: resilience
  labels: {istio.io/use-waypoint: waypoint}
spec:
  clusterIP: 127.0.0.102
  selector: {app: soak}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Pod
metadata: {name: echo-0, namespace: resilience, labels: {app: echo}}
spec:
  nodeName: node-b
  serviceAccountName: echo
  containers: [{name: echo, image: echo, ports: [{containerPort: 8080}]}]
status: {podIP: 127.0.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: echo-1, namespace: resilience, labels: {app: echo}}
spec:
  nodeName: node-b
  serviceAccountName: echo
  containers: [{name: echo, image: echo, ports: [{containerPort: 8080}]}]
status: {podIP: 127.0.0.12}
---
apiVersion: v1
kind: Pod
metadata: {name: echo-2, namespace: resilience, labels: {app: echo}}
spec:
  nodeName: node-b
  serviceAccountName: echo
  containers: [{name: echo, image: echo, ports: [{containerPort: 8080}]}]
status: {podIP: 127.0.0.13}
---
apiVersion: v1
kind: Pod
metadata: {name: pair-0, namespace: resilience, labels: {app: pair}}
spec:
  nodeName: node-b
  serviceAccountName: pair
  containers: [{name: echo, image: echo, ports: [{containerPort: 8080}]}]
status: {podIP: 127.0.0.21}
---
apiVersion: v1
kind: Pod
metadata: {name: pair-1, namespace: resilience, labels: {app: pair}}
spec:
  nodeName: node-b
  serviceAccountName: pair
  containers: [{name: echo, image: echo, ports: [{containerPort: 8080}]}]
status: {podIP: 127.0.0.22}
---
apiVersion: v1
kind: Pod
metadata:
  name: soak-0
  namespace: resilience
  labels: {app: soak}
  annotations: {echo.waypoint.dev/idle-close-ms: "5-30"}
spec:
  nodeName: node-b
  serviceAccountName: soak
  containers: [{name: echo, image: echo, ports: [{containerPort: 8080}]}]
status: {podIP: 127.0.0.31}
---
apiVersion: v1
kind: Pod
metadata:
  name: soak-1
  namespace: resilience
  labels: {app: soak}
  annotations: {echo.waypoint.dev/idle-close-ms: "5-30"}
spec:
  nodeName: node-b
  serviceAccountName: soak
  containers: [{name: echo, image: echo, ports: [{containerPort: 8080}]}]
status: {podIP: 127.0.0.32}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: resilience, labels: {app: client}}
spec:
  nodeName: node-a
  serviceAccountName: client
  containers: [{name: client, image: curl}]
status: {podIP: 127.0.0.50}
"#;

/// A testbed of [`BASE`] plus `manifests`.
pub async fn mesh(manifests: &str) -> Testbed {
    match Testbed::start(&with_base(manifests)).await {
        Ok(tb) => tb,
        Err(e) => panic!("testbed did not start: {e:#}"),
    }
}

/// [`BASE`] plus `manifests`, as one text.
pub fn with_base(manifests: &str) -> String {
    format!("{BASE}\n---\n{manifests}")
}

pub fn client(tb: &Testbed) -> Client {
    tb.client("client")
}

/// Sends `req` from the client pod on a new connection; panics when no answer arrives.
pub async fn send(tb: &Testbed, req: Req) -> Resp {
    let what = format!("{} {}{}", req.method, req.authority, req.path);
    match client(tb).send(req).await {
        Ok(r) => r,
        Err(e) => panic!("{what}: {e:#}"),
    }
}

/// Who answered: the echo pod, or `status N FLAG` when the waypoint did.
pub fn outcome(r: &Resp) -> String {
    match (&r.echo, r.status) {
        (Some(e), 200) => e.pod.clone(),
        (Some(e), s) => format!("{} status {s}", e.pod),
        (None, s) => format!("status {s} {}", r.header("x-waypoint-error").unwrap_or("-")),
    }
}

/// The response flags of a waypoint answer (`x-waypoint-error: UT,URX` → `["UT", "URX"]`).
pub fn flags(r: &Resp) -> Vec<String> {
    r.header("x-waypoint-error")
        .map(|f| f.split(',').map(|x| x.trim().to_string()).collect())
        .unwrap_or_default()
}

/// Whether the waypoint answered `status` with response flag `flag` (among others).
pub fn answered(r: &Resp, status: u16, flag: &str) -> bool {
    r.status == status && flags(r).iter().any(|f| f == flag)
}

/// Sends `req` `n` times, one after the other on new connections, and counts outcomes.
pub async fn tally_sequential(tb: &Testbed, req: &Req, n: usize) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        *counts
            .entry(outcome(&send(tb, req.clone()).await))
            .or_default() += 1;
    }
    counts
}

/// A sample of the waypoints' metrics (`series` as written: name and labels), summed over the testbed's
/// waypoints; panics when none has it.
pub fn metric(tb: &Testbed, series: &str) -> f64 {
    let texts: Vec<String> = tb.waypoints().map(|(_, w)| w.metrics_text()).collect();
    let found: Vec<f64> = texts
        .iter()
        .filter_map(|t| waypoint::testbed::sample(t, series))
        .collect();
    assert!(!found.is_empty(), "{series} in\n{}", texts.join("\n"));
    found.iter().sum()
}

/// Requests refused by the `connectionPool` field `limit`, as the metrics count them.
pub fn breaker_trips(tb: &Testbed, limit: &str) -> f64 {
    metric(
        tb,
        &format!("waypoint_circuit_breaker_trips_total{{limit=\"{limit}\"}}"),
    )
}

/// The waypoint's retry counter.
pub fn retries(tb: &Testbed) -> u64 {
    tb.waypoint(WAYPOINT)
        .stats()
        .retries
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// An HTTPRoute `name` attached to Service `service` (port 80) with `rules` (YAML, indented two spaces).
pub fn http_route(name: &str, service: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {NS}}}
spec:
  parentRefs: [{{group: \"\", kind: Service, name: {service}, port: 80}}]
  rules:
{rules}"
    )
}

/// An Istio `DestinationRule` for Service `service` with `traffic_policy` (YAML, indented four spaces).
pub fn destination_rule(service: &str, traffic_policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {service}, namespace: {NS}}}
spec:
  host: {service}.{NS}.svc.cluster.local
  trafficPolicy:
{traffic_policy}"
    )
}

/// Sets `fault` on the (only) echo of `pod`.
pub fn fault(tb: &Testbed, pod: &str, fault: Fault) {
    tb.echo(pod).set_fault(fault);
}

/// Requests received by `pod`'s echo.
pub fn requests(tb: &Testbed, pod: &str) -> u64 {
    tb.echo(pod).requests()
}

/// Sends `req` (carrying request id `id`) from the client pod and closes the connection once the request has
/// reached an echo, before any answer (the echoes must be slow: `Fault::Delay`). Panics if it is answered first
/// or reaches no echo within 10 s.
pub async fn leave_mid_request(tb: &Testbed, req: &Req, id: &str) {
    let mut conn = client(tb).connect(req).await.expect("connect");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    tokio::select! {
        r = conn.send(req) => panic!("answered before the client left: {r:?}"),
        _ = async {
            while tb.attempts(id) == 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(MS(2)).await;
            }
        } => {}
    }
    assert_eq!(tb.attempts(id), 1, "the request never reached an echo");
}

/// A unique request id (for the echo's attempt counters).
pub fn request_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}", fastrand::u64(..))
}

pub const MS: fn(u64) -> Duration = Duration::from_millis;
