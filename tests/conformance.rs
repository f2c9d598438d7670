//! Gateway API conformance for the mesh (GAMMA) profile, over the real data path:
//! client pod → ztunnel (node-a, SOCKS5) =HBONE=> waypoint =HBONE=> ztunnel (node-b) → echo backend.
//!
//! Every test starts its own [`Testbed`] from [`BASE`] (namespaces, the waypoint, the `echo` service bound to it,
//! `echo-v1..3` backends with one pod each, a cross-namespace `web-backend`, two client pods) plus the small
//! manifests of the feature under test, in the style of the upstream conformance suite
//! (`gateway-conformance-mesh`, `echo`, `echo-v1`, `echo-v2`). Assertions are on what the client got (status,
//! headers, `Location`) and on what the echo saw (which pod answered, path, host, headers present and absent).
//!
//! Weighted outcomes are asserted with [`assert_share`]: the count of an outcome over `n` independent requests
//! with probability `p` is binomial, mean `np`, standard deviation `σ = sqrt(np(1-p))`; the test accepts
//! `|count - np| <= 5σ + 1`, which a correct implementation fails with probability under 1e-6, while the
//! splits tested are chosen so that any other plausible split (even, inverted, all-or-nothing) lies further away.
//!
//! [`echo`] checks the test backend itself. Feature groups: [`attachment`], [`matching`], [`backends`], [`filters`], [`timeouts`] (and retry), [`grpc`],
//! and [`recipes`] (the manifests in `examples/recipes/`). `docs/features.md` maps features to these tests.

use std::collections::BTreeMap;
use std::time::Duration;

use waypoint::testbed::{Client, Req, Resp, Testbed};

#[path = "conformance/attachment.rs"]
mod attachment;
#[path = "conformance/backends.rs"]
mod backends;
#[path = "conformance/echo.rs"]
mod echo;
#[path = "conformance/filters.rs"]
mod filters;
#[path = "conformance/grpc.rs"]
mod grpc;
#[path = "conformance/matching.rs"]
mod matching;
#[path = "conformance/recipes.rs"]
mod recipes;
#[path = "conformance/timeouts.rs"]
mod timeouts;

/// The namespace of the services under test.
pub const NS: &str = "gateway-conformance-mesh";
/// The service under test, as dialled (port 80).
pub const ECHO: &str = "echo.gateway-conformance-mesh.svc.cluster.local";
/// Its gRPC port (`appProtocol: grpc`).
pub const ECHO_GRPC: &str = "echo.gateway-conformance-mesh.svc.cluster.local:7070";

/// The mesh every conformance test starts from.
pub const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: gateway-conformance-mesh
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Namespace
metadata:
  name: gateway-conformance-mesh-consumer
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Namespace
metadata:
  name: gateway-conformance-web-backend
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: gateway-conformance-mesh
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
  namespace: gateway-conformance-mesh
  labels: {istio.io/use-waypoint: waypoint}
spec:
  clusterIP: 127.0.0.100
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: http-alt, port: 8081, targetPort: 8080}
  - {name: grpc, port: 7070, targetPort: 8080, appProtocol: grpc}
---
apiVersion: v1
kind: Service
metadata:
  name: echo-alt
  namespace: gateway-conformance-mesh
  labels: {istio.io/use-waypoint: waypoint}
spec:
  clusterIP: 127.0.0.104
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v1, namespace: gateway-conformance-mesh}
spec:
  clusterIP: 127.0.0.101
  selector: {app: echo, version: v1}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: http-alt, port: 81, targetPort: 8081}
  - {name: grpc, port: 7070, targetPort: 8080, appProtocol: grpc}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: gateway-conformance-mesh}
spec:
  clusterIP: 127.0.0.102
  selector: {app: echo, version: v2}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: grpc, port: 7070, targetPort: 8080, appProtocol: grpc}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v3, namespace: gateway-conformance-mesh}
spec:
  clusterIP: 127.0.0.103
  selector: {app: echo, version: v3}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: grpc, port: 7070, targetPort: 8080, appProtocol: grpc}
---
apiVersion: v1
kind: Pod
metadata:
  name: echo-v1-0
  namespace: gateway-conformance-mesh
  labels: {app: echo, version: v1}
spec:
  nodeName: node-b
  serviceAccountName: echo
  containers:
  - {name: echo, image: echo, ports: [{containerPort: 8080}, {containerPort: 8081}]}
status: {podIP: 127.0.0.11}
---
apiVersion: v1
kind: Pod
metadata:
  name: echo-v2-0
  namespace: gateway-conformance-mesh
  labels: {app: echo, version: v2}
spec:
  nodeName: node-b
  serviceAccountName: echo
  containers:
  - {name: echo, image: echo, ports: [{containerPort: 8080}]}
status: {podIP: 127.0.0.12}
---
apiVersion: v1
kind: Pod
metadata:
  name: echo-v3-0
  namespace: gateway-conformance-mesh
  labels: {app: echo, version: v3}
spec:
  nodeName: node-b
  serviceAccountName: echo
  containers:
  - {name: echo, image: echo, ports: [{containerPort: 8080}]}
status: {podIP: 127.0.0.13}
---
apiVersion: v1
kind: Service
metadata: {name: web-backend, namespace: gateway-conformance-web-backend}
spec:
  clusterIP: 127.0.0.110
  selector: {app: web-backend}
  ports:
  - {name: http, port: 8080, targetPort: 8080}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-backend-0
  namespace: gateway-conformance-web-backend
  labels: {app: web-backend}
spec:
  nodeName: node-b
  serviceAccountName: web-backend
  containers:
  - {name: echo, image: echo, ports: [{containerPort: 8080}]}
status: {podIP: 127.0.0.30}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: gateway-conformance-mesh
  labels: {app: client}
spec:
  nodeName: node-a
  serviceAccountName: client
  containers:
  - {name: client, image: curl}
status: {podIP: 127.0.0.50}
---
apiVersion: v1
kind: Pod
metadata:
  name: consumer-client
  namespace: gateway-conformance-mesh-consumer
  labels: {app: consumer-client}
spec:
  nodeName: node-a
  serviceAccountName: client
  containers:
  - {name: client, image: curl}
status: {podIP: 127.0.0.51}
"#;

/// A testbed of [`BASE`] plus `manifests`.
pub async fn mesh(manifests: &str) -> Testbed {
    let text = format!("{BASE}\n---\n{manifests}");
    match Testbed::start(&text).await {
        Ok(tb) => tb,
        Err(e) => panic!("testbed did not start: {e:#}"),
    }
}

/// The client pod in the services' namespace.
pub fn client(tb: &Testbed) -> Client {
    tb.client("client")
}

/// Sends `req` from the `client` pod; panics when no answer arrives.
pub async fn send(tb: &Testbed, req: Req) -> Resp {
    send_from(tb, "client", req).await
}

pub async fn send_from(tb: &Testbed, pod: &str, req: Req) -> Resp {
    let what = format!("{} {}{}", req.method, req.authority, req.path);
    match tb.client(pod).send(req).await {
        Ok(r) => r,
        Err(e) => panic!("{what} from {pod}: {e:#}"),
    }
}

/// `GET ECHO path` from `client`.
pub async fn get(tb: &Testbed, path: &str) -> Resp {
    send(tb, Req::get(ECHO, path)).await
}

/// Who answered: the echo pod, or `status N` when no echo did.
pub fn outcome(r: &Resp) -> String {
    match (&r.echo, r.status) {
        (Some(e), 200) => e.pod.clone(),
        (Some(e), s) => format!("{} status {s}", e.pod),
        (None, s) => format!("status {s}"),
    }
}

/// Who answered `req`, from `client`.
pub async fn who(tb: &Testbed, req: Req) -> String {
    outcome(&send(tb, req).await)
}

/// Checks a table of `(request, expected outcome)`; reports every mismatch at once.
pub async fn expect_outcomes(tb: &Testbed, cases: Vec<(Req, &str)>) {
    let mut wrong = vec![];
    for (req, want) in cases {
        let what = format!(
            "{} {}{} {:?}",
            req.method, req.authority, req.path, req.headers
        );
        let got = who(tb, req).await;
        if got != want {
            wrong.push(format!("{what}: want {want}, got {got}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Sends `req` `n` times (4 keep-alive connections) and counts outcomes (transport errors as `error`).
pub async fn tally(tb: &Testbed, req: &Req, n: usize) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for r in client(tb).send_many(req, n, 4).await {
        let key = match r {
            Ok(r) => outcome(&r),
            Err(_) => "error".to_string(),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// Asserts that `key` took a share `p` of `n` requests, within 5 standard deviations of the binomial
/// distribution (see the module doc).
pub fn assert_share(counts: &BTreeMap<String, u64>, key: &str, n: usize, p: f64) {
    let got = *counts.get(key).unwrap_or(&0) as f64;
    let (n, mean) = (n as f64, n as f64 * p);
    let tolerance = 5.0 * (n * p * (1.0 - p)).sqrt() + 1.0;
    assert!(
        (got - mean).abs() <= tolerance,
        "{key}: {got} of {n}, expected {mean} ± {tolerance:.0} (p = {p}); all outcomes: {counts:?}"
    );
}

/// Waits until `f` stops changing for `quiet` (at most `patience`), then returns its value.
pub async fn settled(quiet: Duration, patience: Duration, f: impl Fn() -> u64) -> u64 {
    let deadline = std::time::Instant::now() + patience;
    let mut last = f();
    let mut since = std::time::Instant::now();
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = f();
        if now != last {
            (last, since) = (now, std::time::Instant::now());
        } else if since.elapsed() >= quiet {
            break;
        }
    }
    last
}

/// An HTTPRoute `name` in [`NS`] attached to Service `echo` port 80, with `rules` (YAML, indented two spaces).
pub fn http_route(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {NS}}}
spec:
  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 80}}]
  rules:
{rules}"
    )
}

/// The suite's own fixture works without any route: `echo` balances over its three pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testbed_reaches_every_echo_without_routes() {
    let tb = mesh("").await;
    let counts = tally(&tb, &Req::get(ECHO, "/"), 30).await;
    for pod in ["echo-v1-0", "echo-v2-0", "echo-v3-0"] {
        assert!(counts.contains_key(pod), "{pod} never answered: {counts:?}");
    }
    let r = get(&tb, "/hello?x=1").await;
    let e = r.echo();
    assert_eq!(
        (e.method.as_str(), e.path.as_str(), e.host.as_str()),
        ("GET", "/hello?x=1", ECHO)
    );
    assert_eq!(e.protocol, "HTTP/1.1");
    assert_eq!(e.namespace, NS);
    assert!(
        e.header("x-forwarded-client-cert")
            .is_some_and(|x| x.ends_with("/ns/gateway-conformance-mesh/sa/client")),
        "{e:?}"
    );
}
