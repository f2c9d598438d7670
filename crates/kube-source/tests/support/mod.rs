//! Shared by the integration tests: a small mesh as YAML, a watch over the fake API server into a
//! `Live<Mesh>`, and a bounded wait on renders.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use kube_source::testing::FakeApiServer;
use kube_source::{watch_api, ApiWatchGuard, WatchOptions};
use mesh::config::{Live, Mesh};

/// How long any wait in these tests may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Two namespaces; `reviews` (bound to the waypoint) split 90/10 over two versions by an HTTPRoute.
pub const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
status:
  addresses: [{type: IPAddress, value: 127.0.0.20}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default, labels: {istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: 10.0.0.100
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v1, namespace: default}
spec:
  clusterIP: 10.0.0.110
  selector: {app: reviews, version: v1}
  ports: [{name: http, port: 9080, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: default}
spec:
  clusterIP: 10.0.0.111
  selector: {app: reviews, version: v2}
  ports: [{name: http, port: 9080, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: elsewhere, namespace: other}
spec:
  clusterIP: 10.0.0.200
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1-0, namespace: default, labels: {app: reviews, version: v1}}
spec:
  nodeName: node-a
  serviceAccountName: reviews
  containers: [{name: reviews, image: reviews}]
status: {podIP: 10.1.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2-0, namespace: default, labels: {app: reviews, version: v2}}
spec:
  nodeName: node-b
  serviceAccountName: reviews
  containers: [{name: reviews, image: reviews}]
status: {podIP: 10.1.0.12}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - backendRefs:
    - {name: reviews-v1, port: 9080, weight: 90}
    - {name: reviews-v2, port: 9080, weight: 10}
"#;

/// The route of [`MESH`] with other weights.
pub fn route_with_weights(v1: i32, v2: i32) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: reviews, namespace: default}}
spec:
  parentRefs: [{{group: "", kind: Service, name: reviews, port: 9080}}]
  rules:
  - backendRefs:
    - {{name: reviews-v1, port: 9080, weight: {v1}}}
    - {{name: reviews-v2, port: 9080, weight: {v2}}}
"#
    )
}

/// The weights of the `reviews` route's backends, as the mesh holds them.
pub fn weights(mesh: &Mesh) -> Vec<i32> {
    mesh.http_routes
        .iter()
        .filter(|r| r.object.metadata.name.as_deref() == Some("reviews"))
        .flat_map(|r| r.object.spec.rules.iter().flatten())
        .flat_map(|rule| rule.backend_refs.iter().flatten())
        .map(|b| b.weight.unwrap_or(1))
        .collect()
}

/// Options with short retries, so that tests recover fast.
pub fn fast_options() -> WatchOptions {
    WatchOptions {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
        ..WatchOptions::default()
    }
}

/// Watches `server` into a `Live<Mesh>` (the compile step keeps the whole mesh).
pub fn watch_mesh(server: &FakeApiServer, opts: WatchOptions) -> (Arc<Live<Mesh>>, ApiWatchGuard) {
    // `RUST_LOG=kube_source=debug,kube_runtime=debug` shows what the watchers do.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let live = Arc::new(Live::new(Mesh::default()));
    let guard = watch_api(
        server.client().expect("client"),
        opts,
        "cluster.local".into(),
        Duration::from_millis(20),
        live.clone(),
        |mesh: &Mesh| Ok(mesh.clone()),
    );
    (live, guard)
}

/// Waits (re-checking after every render) until `done` holds of the live value, or panics after [`PATIENCE`].
pub async fn until_live<T>(
    guard: &ApiWatchGuard,
    live: &Live<T>,
    what: &str,
    done: impl Fn(&Live<T>) -> bool,
) {
    let mut renders = guard.subscribe_renders();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        renders.borrow_and_update();
        if done(live) {
            return;
        }
        match tokio::time::timeout_at(deadline, renders.changed()).await {
            Ok(Ok(())) => {}
            _ => panic!("timed out waiting for {what}"),
        }
    }
}

/// The number of lists of `plural` the server answered.
pub fn lists(server: &FakeApiServer, plural: &str) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.is_list(plural))
        .count()
}

/// The `resourceVersion`s of the watch requests for `plural`, in order.
pub fn watch_versions(server: &FakeApiServer, plural: &str) -> Vec<u64> {
    server
        .requests()
        .iter()
        .filter(|r| r.is_watch() && r.path.ends_with(&format!("/{plural}")))
        .map(|r| r.resource_version().unwrap_or(0))
        .collect()
}
