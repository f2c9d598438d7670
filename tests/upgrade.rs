//! Protocol upgrades (websocket-style) through the real data path: client pod → ztunnel (node-a, SOCKS5)
//! =HBONE=> waypoint =HBONE=> ztunnel (node-b) → echo, raw HTTP/1.1 on the client's socket.
//!
//! The route has `timeouts: {request: 2s, backendRequest: 500ms}`. An upgraded stream is long-lived by design:
//! it must survive silences longer than the per-try timeout and outlive the request deadline (as Envoy's route
//! timeout does not apply to an upgraded stream), while an ordinary request on the same route is still cut at
//! the per-try timeout (504 `UT`). The echo's own upgrade handling is tested first, without the mesh.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use waypoint::demo::client::{socks5_connect, Target};
use waypoint::testbed::{EchoIdentity, EchoServer, Req, Testbed};

/// The service every request goes to.
const WS: &str = "ws.upgrade.svc.cluster.local";
/// Bounds every read, so a broken upgrade fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(10);
/// The route's per-try timeout (`backendRequest`) and request deadline (`request`).
const PER_TRY: Duration = Duration::from_millis(500);
const DEADLINE: Duration = Duration::from_secs(2);

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: upgrade
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: upgrade
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
  name: ws
  namespace: upgrade
  labels: {istio.io/use-waypoint: waypoint}
spec:
  clusterIP: 127.0.0.100
  selector: {app: ws}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ws, namespace: upgrade}
spec:
  parentRefs: [{group: "", kind: Service, name: ws, port: 80}]
  rules:
  - timeouts: {request: 2s, backendRequest: 500ms}
    backendRefs: [{name: ws, port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: ws-0, namespace: upgrade, labels: {app: ws}}
spec:
  nodeName: node-b
  serviceAccountName: ws
  containers: [{name: echo, image: echo, ports: [{containerPort: 8080}]}]
status: {podIP: 127.0.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: upgrade, labels: {app: client}}
spec:
  nodeName: node-a
  serviceAccountName: client
  containers: [{name: client, image: curl}]
status: {podIP: 127.0.0.50}
"#;

async fn mesh() -> Testbed {
    match Testbed::start(MESH).await {
        Ok(tb) => tb,
        Err(e) => panic!("testbed did not start: {e:#}"),
    }
}

/// A raw connection from the client pod to [`WS`] through its node's SOCKS5 entry.
async fn dial(tb: &Testbed) -> TcpStream {
    let c = tb.client("client");
    let target = Target {
        socks: c.socks,
        source_ip: c.source_ip,
        host: WS.to_string(),
        port: 80,
    };
    let s = socks5_connect(&target).await.expect("SOCKS5 connect");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Sends an upgrade request for `path` (plus `extra` header lines) and reads the response head.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, path: &str, extra: &str) -> String {
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: {WS}\r\nconnection: Upgrade\r\nupgrade: websocket\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .expect("write the request");
    read_head(s).await
}

/// Reads a response head (through the blank line), byte by byte so nothing after it is consumed.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            let b = s.read_u8().await.expect("the response head");
            head.push(b);
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .unwrap_or_else(|_| panic!("no response head within {PATIENCE:?}"));
    String::from_utf8_lossy(&head).into_owned()
}

/// Whether the head carries `name: value` (both case-insensitive).
fn has_header(head: &str, name: &str, value: &str) -> bool {
    head.lines().any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case(name) && v.trim().eq_ignore_ascii_case(value)
        })
    })
}

/// Writes `bytes` on the upgraded stream and reads them back (the echo writes every byte it reads).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) {
    s.write_all(bytes)
        .await
        .expect("write on the upgraded stream");
    let mut back = vec![0u8; bytes.len()];
    match tokio::time::timeout(PATIENCE, s.read_exact(&mut back)).await {
        Ok(Ok(_)) => assert_eq!(back, bytes, "the echo sent back other bytes"),
        Ok(Err(e)) => panic!("the upgraded stream broke: {e}"),
        Err(_) => panic!("no echo within {PATIENCE:?}"),
    }
}

/// Closes our side and expects the far side to close too (no stray bytes).
async fn close<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
    s.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, s.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "the far side did not close cleanly: {read:?} {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_switches_protocols_and_echoes_the_raw_stream() {
    let id = EchoIdentity {
        pod: "ws-0".into(),
        ..EchoIdentity::default()
    };
    let echo = EchoServer::start("127.0.0.1:0".parse().unwrap(), id)
        .await
        .unwrap();
    // A status control refuses the upgrade: an ordinary answer, and the connection stays HTTP.
    let mut s = TcpStream::connect(echo.addr()).await.unwrap();
    let head = upgrade(&mut s, "/refused", "x-echo-status: 403\r\n").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(echo.upgrades(), 0);
    drop(s);
    let mut s = TcpStream::connect(echo.addr()).await.unwrap();
    let head = upgrade(&mut s, "/chat", "x-echo-set-header: x-room=7\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(has_header(&head, "upgrade", "websocket"), "{head}");
    assert!(has_header(&head, "x-echo-pod", "ws-0"), "{head}");
    assert!(has_header(&head, "x-room", "7"), "{head}");
    exchange(&mut s, b"GET / HTTP/1.1\r\n\r\n").await; // raw bytes, not parsed as HTTP any more
    exchange(&mut s, &waypoint::testbed::echo::pattern(200_000)).await;
    close(&mut s).await;
    assert_eq!(echo.upgrades(), 1);
    let seen = echo.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].path, "/chat");
    assert_eq!(seen[1].header("upgrade"), Some("websocket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_stream_survives_silences_longer_than_the_per_try_timeout() {
    let tb = mesh().await;
    let mut s = dial(&tb).await;
    let head = upgrade(&mut s, "/chat", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(has_header(&head, "upgrade", "websocket"), "{head}");
    assert!(has_header(&head, "x-echo-pod", "ws-0"), "{head}");
    exchange(&mut s, b"hello").await;
    // The test condition: silent in both directions for longer than backendRequest.
    tokio::time::sleep(PER_TRY * 12 / 5).await;
    exchange(&mut s, b"still there?").await;
    close(&mut s).await;
    assert_eq!(tb.echo("ws-0").upgrades(), 1);
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_stream_outlives_the_request_deadline() {
    let tb = mesh().await;
    let started = Instant::now();
    let mut s = dial(&tb).await;
    let head = upgrade(&mut s, "/chat", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Bytes keep flowing (so no per-try silence is involved) until well past `timeouts.request`.
    let mut n = 0u32;
    while started.elapsed() < DEADLINE + PER_TRY {
        exchange(&mut s, format!("message {n}").as_bytes()).await;
        n += 1;
        tokio::time::sleep(PER_TRY / 5).await;
    }
    exchange(&mut s, b"past the deadline").await;
    close(&mut s).await;
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_request_is_still_cut_at_the_per_try_timeout() {
    let tb = mesh().await;
    let id = format!("slow-{:016x}", fastrand::u64(..));
    // The echo would answer 200 after 1 s: only the per-try timeout makes it a 504.
    let req = Req::get(WS, "/slow")
        .header("x-echo-delay-ms", "1000")
        .header("x-echo-request-id", &id);
    let r = tb.client("client").send(req).await.expect("an answer");
    let flags = r.header("x-waypoint-error").unwrap_or("-");
    assert_eq!((r.status, flags), (504, "UT"), "{:?}", r.body);
    assert!(
        r.elapsed >= PER_TRY * 9 / 10 && r.elapsed < DEADLINE,
        "answered after {:?}",
        r.elapsed
    );
    assert_eq!(tb.attempts(&id), 1, "a timed-out GET is not retried here");
    assert_eq!(tb.echo("ws-0").upgrades(), 0);
    tb.shutdown().await;
}
