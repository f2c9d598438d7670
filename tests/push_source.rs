//! The push tier as the waypoint's third config source, end to end: `waypoint control-plane` (in process,
//! [`waypoint::control_plane::start`]) watches a manifests folder and serves mutual TLS with certificate files
//! of a `DevCa` made in the test; the waypoint (`ConfigSource::Push` over `https://`, its own certificate as
//! the client certificate) serves real traffic from it (HBONE CONNECT with mTLS from a client identity,
//! HTTP/1.1 inside, answered by an echo behind a ztunnel of a [`Testbed`]); a weight change in the folder moves
//! the traffic; a change the mesh model refuses is never pushed and the last good config keeps serving (NACKs
//! of pushed updates are tested in `crates/push`). And `control-plane --source kube` against the fake API
//! server: an object created there reaches a subscriber.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use mesh::config::GatewayRef;
use mesh::hbone::{Dial, Pool, PoolOptions};
use mesh::identity::{CertStore, Identity};
use waypoint::control_plane::{ControlPlaneArgs, CpSource};
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
    // The control plane's certificate files (its own identity, signed by the testbed's CA).
    let certs_dir = tempfile::tempdir().unwrap();
    tb.ca.write_ca(certs_dir.path()).unwrap();
    let own = push::tls::default_control_plane_identity(TD);
    let paths = tb.ca.write_workload(certs_dir.path(), &own).unwrap();
    let mut args = cp_args(CpSource::Dir);
    args.manifests = Some(folder.path().to_path_buf());
    (args.cert, args.key, args.ca) = (Some(paths.cert), Some(paths.key), Some(paths.ca));
    let cp = waypoint::control_plane::start(&args)
        .await
        .expect("control plane over mTLS");
    assert!(cp.url().starts_with("https://"), "{}", cp.url());

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
        dial: push::Dial::new(
            cp.url(),
            Some(push::ClientTls {
                certs: certs.clone(),
                control_plane: own,
            }),
        ),
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

    let stats = cp.control_plane().stats();
    assert_eq!(
        (stats.denied, stats.handshake_failures),
        (0, 0),
        "{stats:?}"
    );
    cp.shutdown()
        .await
        .expect("the control plane stops cleanly");
    tb.shutdown().await;
}

async fn next_update(sub: &mut push::Subscription) -> push::client::Received {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("an update in time")
        .expect("the stream is up")
        .expect("an update")
}

/// `waypoint control-plane` flags as parsed with nothing set but `source`, listening on `127.0.0.1:0`.
fn cp_args(source: CpSource) -> ControlPlaneArgs {
    ControlPlaneArgs {
        source,
        manifests: None,
        kubeconfig: None,
        api_server: None,
        listen: "127.0.0.1:0".parse().unwrap(),
        trust_domain: TD.into(),
        cert: None,
        key: None,
        ca: None,
        ztunnel_identity: None,
        log_level: "info".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_on_the_api_server_pushes_what_is_created_there() {
    use kube_source::testing::FakeApiServer;
    let api = FakeApiServer::start_with(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}\n",
    )
    .await
    .unwrap();
    let mut args = cp_args(CpSource::Kube);
    args.api_server = Some(api.url());
    let cp = tokio::time::timeout(PATIENCE, waypoint::control_plane::start(&args))
        .await
        .expect("the initial lists arrive")
        .expect("control plane on the API server");
    assert!(
        cp.url().starts_with("http://"),
        "plaintext without certificates"
    );

    let ztunnel = push::proto::Subscribe {
        node_id: "node-a".into(),
        kind: push::proto::SubscriberKind::Ztunnel as i32,
        target: String::new(),
        resource_versions: Default::default(),
    };
    let mut sub = push::client::subscribe(cp.url(), ztunnel, Default::default())
        .await
        .expect("subscribed");
    let first = next_update(&mut sub).await;
    assert!(
        !first
            .documents
            .resources
            .keys()
            .any(|k| k.starts_with("Service/")),
        "{:?}",
        first.documents.resources.keys()
    );
    sub.ack(first).await.unwrap();

    // Created in the API server: watched, published, pushed.
    api.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: demo}\n\
         spec: {clusterIP: 10.0.0.7, selector: {app: echo}, ports: [{name: http, port: 80}]}\n",
    )
    .unwrap();
    let update = next_update(&mut sub).await;
    assert!(
        update.documents.resources.contains_key("Service/demo/echo"),
        "{:?}",
        update.documents.resources.keys()
    );
    assert_eq!(update.changed, 1, "only the new object is sent");
    sub.ack(update).await.unwrap();
    cp.shutdown()
        .await
        .expect("the control plane stops cleanly");
}
