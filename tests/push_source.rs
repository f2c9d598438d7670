//! The push tier as the waypoint's third config source, end to end: a control plane watches a manifests folder
//! and streams this waypoint's share of the mesh; the waypoint (`ConfigSource::Push`) serves real traffic from
//! it (HBONE CONNECT with mTLS from a client identity, HTTP/1.1 inside, answered by an echo behind a ztunnel of a
//! [`Testbed`]); a weight change in the folder moves the traffic; a change the mesh model refuses is never
//! pushed and the last good config keeps serving (NACKs of pushed updates are tested in `crates/push`).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use mesh::config::GatewayRef;
use mesh::hbone::{Dial, Pool, PoolOptions};
use mesh::identity::{CertStore, Identity};
use waypoint::demo::DEMO_MANIFESTS;
use waypoint::server::{Ops, Waypoint, WaypointConfig};
use waypoint::source::ConfigSource;
use waypoint::testbed::Testbed;

const TD: &str = mesh::config::DEFAULT_TRUST_DOMAIN;
const PATIENCE: Duration = Duration::from_secs(10);

fn split(v1: i32, v2: i32) -> String {
    DEMO_MANIFESTS
        .replace("weight: 90}", &format!("weight: {v1}}}"))
        .replace("weight: 10}", &format!("weight: {v2}}}"))
}

/// The pod that answered one `GET /reviews` sent through `wp` as `client`.
async fn answered_by(wp: &Waypoint, pool: &Pool, client: &CertStore, vip: SocketAddr) -> String {
    let expected = [Identity::new(TD, "default", "waypoint")];
    let stream = pool
        .connect(Dial {
            hbone_addr: wp.addr(),
            authority: vip,
            source: client,
            expected: &expected,
            headers: http::HeaderMap::new(),
        })
        .await
        .expect("CONNECT to the push-sourced waypoint");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/reviews")
        .header("host", "reviews.default.svc.cluster.local:9080")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    echo["pod"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waypoint_serves_what_the_control_plane_pushes() {
    let tb = Testbed::start(&split(100, 0)).await.expect("testbed");
    // The control plane's own folder, with the testbed's addresses.
    let folder = tempfile::tempdir().unwrap();
    let file = folder.path().join("mesh.yaml");
    let write = |text: &str| {
        let tmp = folder.path().join(".mesh.yaml.tmp");
        std::fs::write(&tmp, tb.rewrite().manifests(text).unwrap()).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    write(&split(100, 0));
    let cp = push::ControlPlane::new();
    let _watch = cp
        .watch_dir(
            folder.path().to_path_buf(),
            TD.into(),
            Duration::from_millis(20),
        )
        .expect("control plane watches the folder");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = {
        let cp = cp.clone();
        tokio::spawn(async move {
            let _ = cp
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await;
        })
    };

    let cfg = WaypointConfig {
        gateway: GatewayRef {
            namespace: "default".into(),
            name: "waypoint".into(),
        },
        manifests: Default::default(),
        trust_domain: TD.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        hbone_port: tb.rewrite().hbone_port,
        admin: None,
        mesh_config: None,
    };
    let certs = CertStore::new(
        tb.ca
            .certs_for(&Identity::new(TD, "default", "waypoint"))
            .unwrap(),
    );
    let source = ConfigSource::Push {
        endpoint,
        node_id: "waypoint-0".into(),
    };
    let ops = Ops {
        reuse_port: false,
        ..Ops::default()
    };
    let wp = tokio::time::timeout(PATIENCE, Waypoint::start_from(cfg, source, certs, ops))
        .await
        .expect("the first push arrives")
        .expect("waypoint from the control plane");
    let client = CertStore::new(
        tb.ca
            .certs_for(&Identity::new(TD, "default", "bookinfo-productpage"))
            .unwrap(),
    );
    let vip = SocketAddr::new(tb.ip("127.0.0.100"), 9080);
    let pool = Pool::new(PoolOptions::default());
    for _ in 0..10 {
        assert_eq!(answered_by(&wp, &pool, &client, vip).await, "reviews-v1-0");
    }

    // A weight change in the control plane's folder moves the traffic.
    write(&split(0, 100));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while answered_by(&wp, &pool, &client, vip).await != "reviews-v2-0" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pushed change never took effect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..10 {
        assert_eq!(answered_by(&wp, &pool, &client, vip).await, "reviews-v2-0");
    }
    let generation = wp.live().generation();

    // A change the mesh model refuses never reaches the waypoint; the last good config keeps serving.
    write(&split(0, 100).replace("weight: 100}", "weight: -1}"));
    tokio::time::sleep(Duration::from_millis(300)).await; // the condition under test is "nothing happens"
    assert_eq!(wp.live().generation(), generation);
    assert_eq!(answered_by(&wp, &pool, &client, vip).await, "reviews-v2-0");

    let _ = stop.send(());
    let _ = serving.await;
    tb.shutdown().await;
}
