//! End to end over real sockets: client → ztunnel → waypoint → ztunnel → app, with real mTLS and h2.

mod common;

use std::time::Duration;

use http::HeaderMap;
use mesh::hbone::{Dial, HboneError, Pool, PoolOptions};
use mesh::identity::{CertStore, Identity};
use waypoint::demo::client::{run_load, Proto};

const WAYPOINT_ID: &str = "spiffe://cluster.local/ns/default/sa/waypoint";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keepalive_split_identities_and_reuse() {
    let mesh = common::mesh(None).await;
    let t = mesh.target();
    let (n, conns) = (2000, 8);
    let out = run_load(&t, Proto::Http1, "/reviews", n, conns, Duration::ZERO).await;
    assert_eq!(out.failed, 0, "errors: {:?}", out.errors);
    assert_eq!(out.ok, n as u64);
    // 90/10 split: 10% ± 3 points over 2000 requests is more than 4 standard deviations.
    let v2 = out.share("v2");
    assert!(
        (0.07..=0.13).contains(&v2),
        "v2 share {v2}, {:?}",
        out.by_version
    );
    // The app saw the caller's verified identity, asserted by the waypoint.
    let xfcc: Vec<_> = out.identities_seen_by_app.iter().collect();
    assert_eq!(xfcc, [&format!("By={WAYPOINT_ID};URI={CLIENT_ID}")]);
    // The destination node proxy saw the waypoint's identity, never the client's.
    let peers = mesh.node_b.stats().inbound_peers;
    assert!(peers.contains_key(WAYPOINT_ID), "{peers:?}");
    assert!(!peers.contains_key(CLIENT_ID), "{peers:?}");
    // Upstream reuse: one outer HBONE connection per destination pod, and keep-alive application
    // connections reused across requests rather than one per request.
    let pool = mesh.waypoint.pool_stats();
    assert!(pool.connections_opened <= 2, "{pool:?}");
    assert!(pool.streams_opened <= 2 * conns as u64, "{pool:?}");
    let app_conns = mesh.app_connections();
    assert!(
        app_conns <= 2 * conns as u64,
        "app connections {app_conns} for {n} requests"
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_inside_the_mesh() {
    let mesh = common::mesh(None).await;
    let t = mesh.target();
    let out = run_load(&t, Proto::H2c, "/reviews", 500, 4, Duration::ZERO).await;
    assert_eq!(out.failed, 0, "errors: {:?}", out.errors);
    assert_eq!(out.by_version.values().sum::<u64>(), 500);
    assert!(out.by_version.contains_key("v1"));
    mesh.shutdown().await;
}

/// Dials the waypoint directly, as a ztunnel would, with `source`'s certificate.
async fn dial_waypoint(
    mesh: &waypoint::demo::DemoMesh,
    source: &CertStore,
    authority: std::net::SocketAddr,
) -> Result<(), HboneError> {
    let pool = Pool::new(PoolOptions::default());
    let expected = [WAYPOINT_ID.parse::<Identity>().unwrap()];
    let dial = Dial {
        hbone_addr: mesh.waypoint.addr(),
        authority,
        source,
        expected: &expected,
        headers: HeaderMap::new(),
    };
    pool.connect(dial).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_destination_not_served_is_refused() {
    let mesh = common::mesh(None).await;
    let client = CertStore::new(mesh.ca.certs_for(&CLIENT_ID.parse().unwrap()).unwrap());
    let vip = std::net::SocketAddr::new(mesh.ip(100), 9080);
    dial_waypoint(&mesh, &client, vip)
        .await
        .expect("the bound service is served");
    for foreign in [
        std::net::SocketAddr::new(mesh.ip(11), mesh.opts.app_port), // a pod, not a service of this waypoint
        std::net::SocketAddr::new(mesh.ip(110), 9080), // a service not bound to this waypoint
        std::net::SocketAddr::new(mesh.ip(100), 9081), // the right VIP, a port it does not have
        "10.1.2.3:443".parse().unwrap(),               // somewhere else entirely
    ] {
        match dial_waypoint(&mesh, &client, foreign).await {
            Err(HboneError::Refused { status, .. }) => assert_eq!(status, 400, "{foreign}"),
            other => panic!("CONNECT {foreign}: expected a 400 refusal, got {other:?}"),
        }
    }
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certs_from_another_ca_or_trust_domain_are_rejected() {
    let mesh = common::mesh(None).await;
    let vip = std::net::SocketAddr::new(mesh.ip(100), 9080);
    // Another CA, same trust domain and identity.
    let other_ca = mesh::devca::DevCa::generate("cluster.local").unwrap();
    let forged = CertStore::new(other_ca.certs_for(&CLIENT_ID.parse().unwrap()).unwrap());
    let err = dial_waypoint(&mesh, &forged, vip)
        .await
        .expect_err("a cert from another CA must be rejected");
    assert!(
        !matches!(err, HboneError::Refused { .. }),
        "rejected at the handshake, not by CONNECT: {err:?}"
    );
    // The mesh's own CA, but an identity in another trust domain.
    let other_td = CertStore::new(
        mesh.ca
            .certs_for(&Identity::new(
                "evil.example",
                "default",
                "bookinfo-productpage",
            ))
            .unwrap(),
    );
    let err = dial_waypoint(&mesh, &other_td, vip)
        .await
        .expect_err("another trust domain must be rejected");
    assert!(
        !matches!(err, HboneError::Refused { .. }),
        "rejected at the handshake: {err:?}"
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_outside_the_mesh_are_reached_over_plain_tcp() {
    // reviews-v2 opts out of ambient and takes all the traffic: the waypoint must reach it without HBONE.
    let manifests = waypoint::demo::DEMO_MANIFESTS
        .replace(
            "labels: {app: reviews, version: v2}",
            "labels: {app: reviews, version: v2, istio.io/dataplane-mode: none}",
        )
        .replace("weight: 90}", "weight: 0}")
        .replace("weight: 10}", "weight: 100}");
    let mesh = common::mesh(Some(manifests)).await;
    let t = mesh.target();
    let out = run_load(&t, Proto::Http1, "/reviews", 200, 2, Duration::ZERO).await;
    assert_eq!(out.failed, 0, "errors: {:?}", out.errors);
    assert_eq!(out.by_version.get("v2"), Some(&200));
    assert_eq!(
        mesh.waypoint.pool_stats().connections_opened,
        0,
        "no HBONE to a non-mesh endpoint"
    );
    assert!(
        mesh.node_b.stats().inbound_peers.is_empty(),
        "node-b was bypassed"
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_from_the_client_are_never_trusted() {
    let mesh = common::mesh(None).await;
    let t = mesh.target();
    let mut conn = waypoint::demo::client::Conn::open(&t, Proto::Http1)
        .await
        .unwrap();
    let forged = "By=spiffe://cluster.local/ns/default/sa/waypoint;URI=spiffe://cluster.local/ns/kube-system/sa/admin";
    let r = conn
        .get_with(&t, "/reviews", &[("x-forwarded-client-cert", forged)])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.xfcc.as_deref(),
        Some(format!("By={WAYPOINT_ID};URI={CLIENT_ID}").as_str())
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_framing_is_rejected_with_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = common::mesh(None).await;
    let t = mesh.target();
    let mut s = waypoint::demo::client::socks5_connect(&t).await.unwrap();
    let req = "POST /reviews HTTP/1.1\r\nhost: reviews\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(
        mesh.apps
            .iter()
            .map(|a| a.stats.requests.load(std::sync::atomic::Ordering::Relaxed))
            .sum::<u64>(),
        0
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoint_dumps_the_active_config_and_route_status() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = common::mesh(None).await;
    let admin = mesh
        .waypoint
        .admin_addr()
        .expect("the demo enables the admin endpoint");
    let get = |path: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let dump = get("/config_dump").await;
    assert!(dump.starts_with("HTTP/1.1 200"), "{dump}");
    let json: serde_json::Value =
        serde_json::from_str(dump.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["generation"], 1);
    assert_eq!(json["services"][0]["name"], "default/reviews");
    let weights: Vec<_> = json["services"][0]["rules"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, [90, 10]);
    let out = run_load(
        &mesh.target(),
        Proto::Http1,
        "/reviews",
        20,
        2,
        Duration::ZERO,
    )
    .await;
    assert_eq!(out.ok, 20);
    let stats = get("/stats").await;
    let metric = |name: &str| -> u64 {
        let value = waypoint::testbed::sample(&stats, name);
        value.unwrap_or_else(|| panic!("{name} in {stats}")) as u64
    };
    assert_eq!(metric("waypoint_requests_total"), 20, "{stats}");
    assert!(
        metric("waypoint_hbone_streams_opened_total") >= 1,
        "{stats}"
    );
    // Every try took a direct-path connection, opened or reused; keep-alive reuse carried most of them.
    let (opened, reused) = (
        metric("waypoint_upstream_connections_opened_total"),
        metric("waypoint_upstream_connections_reused_total"),
    );
    assert_eq!(opened + reused, 20, "{stats}");
    assert!((1..=6).contains(&opened), "{stats}");
    assert_eq!(metric("waypoint_config_generation"), 1);
    assert_eq!(
        metric("waypoint_response_flags_total{response_flags=\"NR\"}"),
        0
    );
    let routes = get("/routes").await;
    let body = routes.split("\r\n\r\n").nth(1).unwrap();
    let statuses: serde_json::Value = serde_json::from_str(body).unwrap();
    let st = &statuses[0];
    assert_eq!(st["route"], "HTTPRoute default/reviews", "{body}");
    let conds: Vec<_> = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert!(
        conds.contains(&("Accepted", "True")) && conds.contains(&("ResolvedRefs", "True")),
        "{body}"
    );
    mesh.shutdown().await;
}
