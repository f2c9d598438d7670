//! The test backend itself, straight over loopback (no mesh): the behaviour every other assertion relies on.

use std::net::SocketAddr;
use std::time::Duration;

use waypoint::testbed::{Conn, EchoIdentity, EchoServer, Protocol};

use super::*;

async fn echo() -> EchoServer {
    let identity = EchoIdentity {
        service: "svc".into(),
        namespace: "ns".into(),
        pod: "svc-0".into(),
        port: 8080,
    };
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    EchoServer::start(any, identity).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_describes_http1_and_h2c_requests() {
    let echo = echo().await;
    let req = Req::new("PUT", "h.example:8000", "/p/q?x=1&y=2")
        .header("x-a", "1")
        .header("x-a", "2")
        .body("hello");
    let mut h1 = Conn::direct(echo.addr(), Protocol::Http1).await.unwrap();
    let r = h1.send(&req).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo-pod"), Some("svc-0"));
    let e = r.echo();
    assert_eq!(
        (e.method.as_str(), e.path.as_str(), e.host.as_str()),
        ("PUT", "/p/q?x=1&y=2", "h.example:8000")
    );
    assert_eq!(e.path_only(), "/p/q");
    assert_eq!(e.header_values("x-a"), ["1", "2"]);
    assert_eq!(e.body, "hello");
    assert_eq!(e.protocol, "HTTP/1.1");
    assert_eq!(
        (
            e.service.as_str(),
            e.namespace.as_str(),
            e.pod.as_str(),
            e.port
        ),
        ("svc", "ns", "svc-0", 8080)
    );
    h1.send(&req).await.unwrap();

    let mut h2 = Conn::direct(echo.addr(), Protocol::H2c).await.unwrap();
    let e = h2.send(&req.clone().h2c()).await.unwrap().echo.unwrap();
    assert_eq!(e.protocol, "HTTP/2");
    assert_eq!(e.host, "h.example:8000");
    assert_eq!(echo.requests(), 3);
    assert_eq!(
        echo.connections(),
        2,
        "keep-alive: one connection per client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_controls_status_delay_headers_and_target_pod() {
    let echo = echo().await;
    let mut c = Conn::direct(echo.addr(), Protocol::Http1).await.unwrap();
    let base = Req::get("h", "/");
    let r = c
        .send(
            &base
                .clone()
                .header("x-echo-status", "418")
                .header("x-echo-delay-ms", "200")
                .header("x-echo-set-header", "a=b")
                .header("x-echo-set-header", "c = d"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 418);
    assert!(r.elapsed >= Duration::from_millis(200), "{:?}", r.elapsed);
    assert_eq!((r.header("a"), r.header("c")), (Some("b"), Some("d")));
    assert_eq!(r.echo().pod, "svc-0", "the JSON body comes with any status");
    let other = base
        .clone()
        .header("x-echo-status", "500")
        .header("x-echo-controls-for", "another-pod");
    assert_eq!(c.send(&other).await.unwrap().status, 200);
    let mine = base
        .header("x-echo-status", "500")
        .header("x-echo-controls-for", "svc-0");
    assert_eq!(c.send(&mine).await.unwrap().status, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_fails_the_first_attempts_with_503_or_a_reset() {
    let echo = echo().await;
    let req = Req::get("h", "/")
        .header("x-echo-request-id", "r1")
        .header("x-echo-fail-first", "2");
    let mut c = Conn::direct(echo.addr(), Protocol::Http1).await.unwrap();
    let statuses: Vec<u16> = [
        c.send(&req).await.unwrap(),
        c.send(&req).await.unwrap(),
        c.send(&req).await.unwrap(),
    ]
    .iter()
    .map(|r| r.status)
    .collect();
    assert_eq!(statuses, [503, 503, 200]);
    assert_eq!(echo.attempts("r1"), 3);

    let reset = Req::get("h", "/")
        .header("x-echo-request-id", "r2")
        .header("x-echo-fail-first", "1")
        .header("x-echo-fail-mode", "reset");
    let mut c = Conn::direct(echo.addr(), Protocol::Http1).await.unwrap();
    assert!(c.send(&reset).await.is_err(), "the connection was reset");
    let mut c = Conn::direct(echo.addr(), Protocol::Http1).await.unwrap();
    let r = c.send(&reset).await.unwrap();
    assert_eq!((r.status, r.echo().attempt), (200, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_answers_grpc_with_a_message_and_grpc_status() {
    let echo = echo().await;
    let mut c = Conn::direct(echo.addr(), Protocol::H2c).await.unwrap();
    let r = c
        .send(&Req::grpc("h:7070", "pkg.Svc", "Do", b"ping"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert_eq!(r.grpc_status(), Some("0"));
    let e = r.echo();
    assert_eq!(
        (e.method.as_str(), e.path.as_str()),
        ("POST", "/pkg.Svc/Do")
    );
    assert!(e.body.ends_with("ping"));
    let failing = Req::grpc("h:7070", "pkg.Svc", "Do", b"").header("x-echo-grpc-status", "14");
    assert_eq!(c.send(&failing).await.unwrap().grpc_status(), Some("14"));
}
