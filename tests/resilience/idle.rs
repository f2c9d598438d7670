//! The downstream idle timeout: the waypoint closes a client's keep-alive connection (the L7 connection inside
//! the HBONE stream) once it has been idle that long (1 h by default, as Envoy; per Service with the label
//! `networking.waypoint.dev/idle-timeout`), and never a connection with a request in progress, however long
//! the answer takes.

use std::time::Instant;

use waypoint::testbed::{eventually, Conn};

use super::*;

/// Service `lazy` (pod `lazy-0`) with a 1 s downstream idle timeout.
const LAZY_SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: lazy
  namespace: resilience
  labels: {istio.io/use-waypoint: waypoint, networking.waypoint.dev/idle-timeout: 1s}
spec:
  clusterIP: 127.0.0.104
  selector: {app: lazy}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Pod
metadata: {name: lazy-0, namespace: resilience, labels: {app: lazy}}
spec:
  nodeName: node-b
  serviceAccountName: lazy
  containers: [{name: echo, image: echo, ports: [{containerPort: 8080}]}]
status: {podIP: 127.0.0.42}
";
const LAZY: &str = "lazy.resilience.svc.cluster.local";

fn closed(conn: &Conn) -> bool {
    match conn {
        Conn::Http1(s) => s.is_closed(),
        Conn::H2c(s) => s.is_closed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let tb = mesh(LAZY_SERVICE).await;
    let req = Req::get(LAZY, "/");
    let mut conn = client(&tb).connect(&req).await.expect("connected");
    // A request longer than the idle timeout is not cut: idle means between requests.
    let slow = conn
        .send(&req.clone().header("x-echo-delay-ms", "1500"))
        .await
        .expect("an answer");
    assert_eq!(slow.status, 200);
    let idle_since = Instant::now();
    // Reused at once: still open.
    assert_eq!(conn.send(&req).await.expect("reused").status, 200);
    let idle_since = idle_since.max(Instant::now());
    let gone = eventually(Duration::from_secs(6), || closed(&conn)).await;
    let after = idle_since.elapsed();
    assert!(gone, "the idle connection was never closed");
    assert!(
        after >= MS(900),
        "closed only after the idle timeout (1 s), not after {after:?}"
    );
    assert_eq!(tb.echo("lazy-0").requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_an_idle_connection_stays_open() {
    let tb = mesh("").await;
    let req = Req::get(ECHO, "/");
    let mut conn = client(&tb).connect(&req).await.expect("connected");
    assert_eq!(conn.send(&req).await.expect("answer").status, 200);
    // Well past the 1 s of the other test; the default is an hour.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!closed(&conn), "closed before the default idle timeout");
    assert_eq!(conn.send(&req).await.expect("reused").status, 200);
}
