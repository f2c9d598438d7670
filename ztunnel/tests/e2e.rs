//! End-to-end tests over real loopback sockets: two ztunnels (node-a with demo/client, node-b with demo/app
//! and demo/other), SOCKS5 clients bound to the client pod IP, `mesh::hbone::Pool` as a raw caller, and a fake
//! waypoint built from `mesh::hbone::serve`. See `e2e/fixture.rs` for the addresses.

#[path = "e2e/fixture.rs"]
mod fixture;

use std::sync::{Arc, Mutex};

use fixture::{cluster, eventually, id, round_trip, socks_connect, To, PATIENCE};
use http::{HeaderMap, StatusCode};
use mesh::hbone::{
    ConnectHandler, Dial, HboneError, InboundConnect, Pool, PoolOptions, Respond, ServerOptions,
};

const CLIENT: u8 = 2;
const APP: u8 = 3;
const OTHER: u8 = 4;
const WAYPOINT: u8 = 9;
const VIP: u8 = 100;
const VIP_WP: u8 = 101;

#[tokio::test]
async fn socks_by_hostname_and_vip_round_trips_over_hbone() {
    let (c, a, b) = cluster(|_, _| {}).await;
    let socks = a.socks5_addr().unwrap();
    let from = c.net.ip(CLIENT);

    let (reply, mut s) = socks_connect(from, socks, To::Host("echo.demo.svc.cluster.local", 80))
        .await
        .unwrap();
    assert_eq!(reply, 0);
    assert_eq!(round_trip(&mut s, b"hello by name").await, b"hello by name");

    let (reply, mut s) = socks_connect(from, socks, To::Addr(c.net.addr(VIP, 80)))
        .await
        .unwrap();
    assert_eq!(reply, 0);
    assert_eq!(round_trip(&mut s, b"hello by vip").await, b"hello by vip");

    let stats = a.stats();
    assert_eq!(stats.outbound_hbone, 2, "{stats:?}");
    assert_eq!(
        stats.outbound_waypoint + stats.outbound_passthrough,
        0,
        "{stats:?}"
    );
    let stats = b.stats();
    assert_eq!(stats.inbound_accepted, 2, "{stats:?}");
    assert_eq!(
        stats.inbound_peers.get(&id("client").to_string()),
        Some(&2),
        "{stats:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn inbound_refuses_foreign_authority_and_unreachable_app() {
    let (c, a, b) = cluster(|_, _| {}).await;
    let pool = Pool::new(PoolOptions::default());
    let client = c.store("client");
    let app_id = id("app");
    let dial = |authority| Dial {
        hbone_addr: c.net.addr(APP, c.hbone_port),
        authority,
        source: &client,
        expected: std::slice::from_ref(&app_id),
        headers: HeaderMap::new(),
    };
    let status = |r: Result<_, HboneError>| match r {
        Err(HboneError::Refused { status, .. }) => status,
        Ok(_) => StatusCode::OK,
        Err(e) => panic!("unexpected: {e}"),
    };
    // Not a workload of node-b.
    assert_eq!(
        status(pool.connect(dial(c.net.addr(77, 80))).await),
        StatusCode::BAD_REQUEST
    );
    // A workload of node-b, but not the one this connection arrived on.
    assert_eq!(
        status(pool.connect(dial(c.net.addr(OTHER, 80))).await),
        StatusCode::BAD_REQUEST
    );
    // The right pod, nothing listening on that port.
    let dead = fixture::probe_port(c.net.ip(APP));
    assert_eq!(
        status(pool.connect(dial(c.net.addr(APP, dead))).await),
        StatusCode::SERVICE_UNAVAILABLE
    );
    // And the app itself.
    let mut s = pool.connect(dial(c.app)).await.unwrap();
    assert_eq!(round_trip(&mut s, b"direct").await, b"direct");

    let stats = b.stats();
    assert_eq!(stats.inbound_refused.get(&400), Some(&2), "{stats:?}");
    assert_eq!(stats.inbound_refused.get(&503), Some(&1), "{stats:?}");
    assert_eq!(stats.inbound_accepted, 1, "{stats:?}");
    assert_eq!(
        stats.inbound_peers.get(&id("client").to_string()),
        Some(&4),
        "{stats:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn many_connections_share_one_outer_hbone_connection() {
    let (c, a, b) = cluster(|_, _| {}).await;
    let socks = a.socks5_addr().unwrap();
    let from = c.net.ip(CLIENT);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let to = c.net.addr(VIP, 80);
        tasks.spawn(async move {
            let (reply, mut s) = socks_connect(from, socks, To::Addr(to)).await.unwrap();
            assert_eq!(reply, 0);
            let msg = format!("message {i}");
            assert_eq!(round_trip(&mut s, msg.as_bytes()).await, msg.as_bytes());
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let pool = a.stats().pool;
    assert_eq!(pool.connections_opened, 1, "{pool:?}");
    assert_eq!(pool.streams_opened, 20, "{pool:?}");
    assert_eq!(b.stats().inbound_accepted, 20);
    a.shutdown().await;
    b.shutdown().await;
}

/// A fake waypoint: records each CONNECT, then echoes.
struct FakeWaypoint(Mutex<Vec<InboundConnect>>);

#[async_trait::async_trait]
impl ConnectHandler for FakeWaypoint {
    async fn handle(self: Arc<Self>, req: InboundConnect, respond: Respond) {
        self.0.lock().unwrap().push(req);
        if let Ok(s) = respond.accept() {
            let (mut r, mut w) = tokio::io::split(s);
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
        }
    }
}

#[tokio::test]
async fn service_with_waypoint_goes_through_the_waypoint() {
    let (c, a, b) = cluster(|_, _| {}).await;
    let listener = tokio::net::TcpListener::bind(c.net.addr(WAYPOINT, c.hbone_port))
        .await
        .unwrap();
    let wp = Arc::new(FakeWaypoint(Mutex::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(mesh::hbone::serve(
        listener,
        c.store("waypoint"),
        wp.clone(),
        ServerOptions::default(),
        stop_rx,
    ));

    let socks = a.socks5_addr().unwrap();
    let (reply, mut s) = socks_connect(
        c.net.ip(CLIENT),
        socks,
        To::Host("echo-wp.demo.svc.cluster.local", 80),
    )
    .await
    .unwrap();
    assert_eq!(reply, 0);
    assert_eq!(round_trip(&mut s, b"via waypoint").await, b"via waypoint");

    let seen = wp.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(
        req.authority,
        c.net.addr(VIP_WP, 80),
        "authority is the VIP as dialled"
    );
    assert_eq!(
        req.peer_identity,
        id("client"),
        "the source workload's own certificate"
    );
    let forwarded = req.headers["forwarded"].to_str().unwrap();
    assert!(
        forwarded.starts_with(&format!("for=\"{}:", c.net.ip(CLIENT))),
        "{forwarded}"
    );
    assert!(
        forwarded.ends_with(";host=echo-wp.demo.svc.cluster.local"),
        "{forwarded}"
    );
    let baggage = req.headers["baggage"].to_str().unwrap();
    assert!(
        baggage.contains("k8s.pod.name=client") && baggage.contains("service.name=client"),
        "{baggage}"
    );
    let traceparent = req.headers["traceparent"].to_str().unwrap();
    assert_eq!(traceparent.len(), 55, "{traceparent}");
    assert!(
        traceparent.starts_with("00-") && traceparent.ends_with("-00"),
        "{traceparent}"
    );
    assert_eq!(a.stats().outbound_waypoint, 1);

    stop_tx.send_replace(true);
    let _ = tokio::time::timeout(PATIENCE, server).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn socks_failures_get_the_right_reply_codes() {
    let (c, a, b) = cluster(|cfg, c| cfg.redirect = Some(c.net.addr(1, 0))).await;
    let socks = a.socks5_addr().unwrap();
    let from = c.net.ip(CLIENT);
    let reply = |to| async move { socks_connect(from, socks, to).await.unwrap().0 };
    assert_eq!(
        reply(To::Host("nope.demo.svc.cluster.local", 80)).await,
        0x04,
        "unknown hostname"
    );
    assert_eq!(reply(To::Addr(socks)).await, 0x02, "self-call");
    let dead = fixture::probe_port(c.net.ip(OTHER));
    assert_eq!(
        reply(To::Addr(c.net.addr(OTHER, dead))).await,
        0x05,
        "app down behind HBONE (503)"
    );
    let (code, _) = socks_connect(c.net.ip(50), socks, To::Addr(c.net.addr(VIP, 80)))
        .await
        .unwrap();
    assert_eq!(
        code, 0x02,
        "client is no local workload and there is no default"
    );

    // Redirect without netfilter: the original destination falls back to the listener itself: refused.
    let mut s = tokio::net::TcpStream::connect(a.redirect_addr().unwrap())
        .await
        .unwrap();
    let mut buf = vec![];
    let read = tokio::time::timeout(
        PATIENCE,
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf),
    )
    .await;
    assert!(
        read.expect("closed promptly").map_or(true, |n| n == 0),
        "closed without data"
    );
    eventually("5 failed outbound", || a.stats().outbound_failed == 5).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn default_workload_speaks_for_non_local_clients() {
    let (c, a, b) = cluster(|cfg, _| {
        cfg.node = None;
        cfg.socks5_default_workload = Some("demo/client".into());
    })
    .await;
    let (reply, mut s) = socks_connect(
        c.net.ip(50),
        a.socks5_addr().unwrap(),
        To::Addr(c.net.addr(VIP, 80)),
    )
    .await
    .unwrap();
    assert_eq!(reply, 0);
    assert_eq!(round_trip(&mut s, b"from afar").await, b"from afar");
    assert_eq!(
        b.stats().inbound_peers.get(&id("client").to_string()),
        Some(&1)
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn manifests_change_is_picked_up_live() {
    let (c, a, b) = cluster(|_, _| {}).await;
    let socks = a.socks5_addr().unwrap();
    let from = c.net.ip(CLIENT);
    let name = "late.demo.svc.cluster.local";
    assert_eq!(
        socks_connect(from, socks, To::Host(name, 80))
            .await
            .unwrap()
            .0,
        0x04
    );

    let late = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: late, namespace: demo}}\nspec:\n  clusterIP: {}\n  \
         selector: {{app: echo}}\n  ports: [{{port: 80, targetPort: http}}]\n",
        c.net.ip(102)
    );
    std::fs::write(c.manifests.join("late.yaml"), late).unwrap();
    eventually("the new service", || {
        a.view().mesh().service_by_hostname(name).is_some()
    })
    .await;

    let (reply, mut s) = socks_connect(from, socks, To::Host(name, 80))
        .await
        .unwrap();
    assert_eq!(reply, 0);
    assert_eq!(round_trip(&mut s, b"late").await, b"late");
    assert!(a.config_generation() >= 2);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_connections_finish() {
    let (c, a, b) = cluster(|_, _| {}).await;
    let socks = a.socks5_addr().unwrap();
    let (reply, mut s) = socks_connect(c.net.ip(CLIENT), socks, To::Addr(c.net.addr(VIP, 80)))
        .await
        .unwrap();
    assert_eq!(reply, 0);

    let shutdown = tokio::spawn(a.shutdown());
    // New clients are turned away once the listener is closed ...
    eventually("the SOCKS listener to close", || {
        std::net::TcpStream::connect(socks).is_err()
    })
    .await;
    // ... while the open one still works end to end.
    assert_eq!(round_trip(&mut s, b"still here").await, b"still here");
    tokio::time::timeout(PATIENCE, shutdown)
        .await
        .expect("shutdown is bounded")
        .unwrap();
    b.shutdown().await;
}
