//! The failure-injecting backend itself, straight over loopback (no mesh): what every other assertion relies on.

use std::net::SocketAddr;
use std::sync::Arc;

use waypoint::testbed::{Conn, EchoIdentity, EchoOptions, EchoServer, IdleClose, Protocol};

use super::*;

async fn echo(options: EchoOptions) -> EchoServer {
    let identity = EchoIdentity {
        service: "svc".into(),
        namespace: "ns".into(),
        pod: "svc-0".into(),
        port: 8080,
    };
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    EchoServer::start_with(any, identity, Arc::default(), options)
        .await
        .unwrap()
}

fn get() -> Req {
    Req::get("svc", "/")
}

#[test]
fn idle_close_ranges_parse() {
    let ic = |a, b| IdleClose {
        min: MS(a),
        max: MS(b),
    };
    assert_eq!(IdleClose::parse_ms("5-30"), Some(ic(5, 30)));
    assert_eq!(IdleClose::parse_ms(" 20 "), Some(ic(20, 20)));
    assert_eq!(IdleClose::parse_ms("30-5"), None);
    assert_eq!(IdleClose::parse_ms("fast"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_are_closed_and_counted() {
    let e = echo(EchoOptions {
        idle_close: IdleClose::parse_ms("20-30"),
    })
    .await;
    let mut c = Conn::direct(e.addr(), Protocol::Http1).await.unwrap();
    // Back to back (well under 20 ms apart): the connection stays open.
    for _ in 0..5 {
        assert_eq!(c.send(&get()).await.unwrap().status, 200);
    }
    // A slow answer is not idleness.
    let slow = get().header("x-echo-delay-ms", "80");
    assert_eq!(c.send(&slow).await.unwrap().status, 200);
    assert_eq!((e.connections(), e.idle_closes()), (1, 0));
    tokio::time::sleep(MS(100)).await;
    assert_eq!(e.idle_closes(), 1, "idle for 100 ms: closed");
    assert!(
        c.send(&get()).await.is_err(),
        "the client meets the closed connection"
    );
    // h2c connections are left alone.
    let mut h2 = Conn::direct(e.addr(), Protocol::H2c).await.unwrap();
    tokio::time::sleep(MS(100)).await;
    assert_eq!(h2.send(&get().h2c()).await.unwrap().status, 200);
    assert_eq!(e.idle_closes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_stops_listening_and_resets_open_connections_until_cleared() {
    let e = echo(EchoOptions::default()).await;
    let mut open = Conn::direct(e.addr(), Protocol::Http1).await.unwrap();
    assert_eq!(open.send(&get()).await.unwrap().status, 200);
    e.set_fault(Fault::Refuse);
    let refused = waypoint::testbed::eventually(MS(2000), || {
        std::net::TcpStream::connect_timeout(&e.addr(), MS(200)).is_err()
    })
    .await;
    assert!(refused, "still accepting while refusing");
    assert!(
        open.send(&get()).await.is_err(),
        "open connections are reset"
    );
    e.set_fault(Fault::None);
    let listening = waypoint::testbed::eventually(MS(2000), || {
        std::net::TcpStream::connect_timeout(&e.addr(), MS(200)).is_ok()
    })
    .await;
    assert!(listening, "listening again once cleared");
    let mut c = Conn::direct(e.addr(), Protocol::Http1).await.unwrap();
    assert_eq!(c.send(&get()).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_close_hang_status_and_delay_faults() {
    let e = echo(EchoOptions::default()).await;
    let conn = || Conn::direct(e.addr(), Protocol::Http1);

    e.set_fault(Fault::Reset);
    let err = conn().await.unwrap().send(&get()).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("reset") || format!("{err:#}").contains("closed"),
        "{err:#}"
    );
    e.set_fault(Fault::Close);
    assert!(conn().await.unwrap().send(&get()).await.is_err());

    e.set_fault(Fault::Hang);
    let mut c = conn().await.unwrap();
    let pending = tokio::spawn(async move { c.send(&get()).await.map(|r| r.status) });
    tokio::time::sleep(MS(300)).await;
    assert!(!pending.is_finished(), "answered while hanging");
    assert_eq!(e.in_flight(), 1, "the hanging request is in flight");
    pending.abort();
    let gone = waypoint::testbed::eventually(MS(2000), || e.in_flight() == 0).await;
    assert!(gone, "a hanging answer ends when its client goes away");

    e.set_fault(Fault::Status(500));
    let r = conn().await.unwrap().send(&get()).await.unwrap();
    assert_eq!((r.status, r.echo().pod.as_str()), (500, "svc-0"));

    e.set_fault(Fault::Delay(MS(150)));
    let r = conn().await.unwrap().send(&get()).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.elapsed >= MS(150), "{:?}", r.elapsed);

    e.set_fault(Fault::None);
    assert_eq!(
        conn().await.unwrap().send(&get()).await.unwrap().status,
        200
    );
    // Every request was read before it failed: the echo counted them all (reset, close, hang, 500, delay, ok).
    assert_eq!(e.requests(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_fail_modes_and_concurrency_high_water_mark() {
    let e = echo(EchoOptions::default()).await;
    let failing = |mode: &str| {
        get()
            .header("x-echo-request-id", &request_id(mode))
            .header("x-echo-fail-first", "1")
            .header("x-echo-fail-mode", mode)
    };
    let mut c = Conn::direct(e.addr(), Protocol::Http1).await.unwrap();
    assert!(c.send(&failing("close")).await.is_err());
    let mut c = Conn::direct(e.addr(), Protocol::Http1).await.unwrap();
    assert!(tokio::time::timeout(MS(300), c.send(&failing("hang")))
        .await
        .is_err());
    drop(c);
    assert!(waypoint::testbed::eventually(MS(2000), || e.in_flight() == 0).await);

    e.reset_max_in_flight();
    let slow = get().header("x-echo-delay-ms", "200");
    let sends = (0..4).map(|_| {
        let (slow, addr) = (slow.clone(), e.addr());
        tokio::spawn(async move {
            let mut c = Conn::direct(addr, Protocol::Http1).await.unwrap();
            c.send(&slow).await.unwrap().status
        })
    });
    for s in sends.collect::<Vec<_>>() {
        assert_eq!(s.await.unwrap(), 200);
    }
    assert_eq!(e.max_in_flight(), 4, "4 slow requests at once");
}
