//! The operations endpoints over real sockets: readiness (200 once up, 503 once draining), the Prometheus port,
//! and the admin port's config dump (generation, last rejected change with object, field, time and the
//! generation it kept) and runtime log filter. Both binaries' in-process forms: waypoint and ztunnel.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use mesh::config::{GatewayRef, DEFAULT_TRUST_DOMAIN};
use mesh::identity::{CertStore, Identity};
use mesh::ops::{LogControl, ReadyState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypoint::demo::DEMO_MANIFESTS;
use waypoint::server::{Ops, Waypoint, WaypointConfig};

const LOCAL_ANY: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// `method path` on `addr` (HTTP/1.1, `Connection: close`): (status, body).
async fn call(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: ops\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("an answer within 10s")
        .unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

/// A waypoint with every ops port on loopback, beside the demo mesh's own.
async fn ops_waypoint(mesh: &waypoint::demo::DemoMesh, log: LogControl) -> Waypoint {
    let id = Identity::new(DEFAULT_TRUST_DOMAIN, "default", "waypoint");
    let certs = CertStore::load(&mesh::devca::workload_paths(&mesh.certs_dir, &id)).unwrap();
    let cfg = WaypointConfig {
        gateway: GatewayRef {
            namespace: "default".into(),
            name: "waypoint".into(),
        },
        manifests: mesh.manifests_dir.clone(),
        trust_domain: DEFAULT_TRUST_DOMAIN.into(),
        listen: SocketAddr::new(mesh.ip(21), 0),
        hbone_port: mesh.opts.hbone_port,
        admin: Some(LOCAL_ANY),
        mesh_config: None,
    };
    let ops = Ops {
        readiness: Some(LOCAL_ANY),
        stats: Some(LOCAL_ANY),
        reuse_port: true,
        log: Some(log),
        ..Ops::default()
    };
    Waypoint::start_with(cfg, certs, ops).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_metrics_and_logging_of_the_waypoint() {
    let mesh = common::mesh(None).await;
    let (log, _layer) = LogControl::layer("info").unwrap();
    let wp = ops_waypoint(&mesh, log).await;
    let (ready, stats, admin) = (
        wp.readiness_addr().unwrap(),
        wp.stats_addr().unwrap(),
        wp.admin_addr().unwrap(),
    );

    assert_eq!(
        call(ready, "GET", "/healthz/ready").await,
        (200, "ready\n".into())
    );
    assert_eq!(call(ready, "GET", "/other").await.0, 404);
    for path in ["/stats/prometheus", "/metrics"] {
        let (status, body) = call(stats, "GET", path).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            body.contains("\nwaypoint_config_generation 1\n"),
            "{path}: {body}"
        );
        // One exposition: each family declared once, and the whole text parses.
        let mut types: Vec<&str> = body.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let declared = types.len();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), declared, "a family declared twice: {body}");
        let lines = body.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
        assert!(scrape.samples.len() > 40, "{body}");
    }

    // The log filter: read, merge a target directive, refuse nonsense.
    assert_eq!(call(admin, "GET", "/logging").await, (200, "info\n".into()));
    let changed = call(admin, "POST", "/logging?level=waypoint%3A%3Aaccess%3Ddebug").await;
    assert_eq!(changed, (200, "info,waypoint::access=debug\n".into()));
    assert_eq!(
        call(admin, "POST", "/logging?level=debug").await.1,
        "debug,waypoint::access=debug\n"
    );
    assert_eq!(
        call(admin, "POST", "/logging?level=waypoint%3Dloud")
            .await
            .0,
        400
    );
    assert_eq!(call(admin, "GET", "/logging?level=warn").await.0, 405);
    assert_eq!(
        call(admin, "GET", "/logging").await.1,
        "debug,waypoint::access=debug\n"
    );

    // Draining: 503 from the first moment, on the readiness port and the admin port alike.
    assert!(wp.drain(Duration::from_secs(2)).await, "nothing in flight");
    assert_eq!(wp.readiness().state(), ReadyState::Draining);
    assert_eq!(
        call(ready, "GET", "/healthz/ready").await,
        (503, "draining\n".into())
    );
    assert_eq!(call(admin, "GET", "/healthz/ready").await.0, 503);
    wp.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_names_the_rejected_change_and_the_generation_kept() {
    let mesh = common::mesh(None).await;
    let admin = mesh.waypoint.admin_addr().unwrap();
    let (status, body) = call(admin, "GET", "/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["generation"], 1);
    assert!(dump["last_error"].is_null(), "{dump}");

    let before = std::time::SystemTime::now();
    let broken = DEMO_MANIFESTS.replace("weight: 10}", "weight: -5}");
    assert_ne!(broken, DEMO_MANIFESTS);
    mesh.write_manifests(&broken).unwrap();
    let live = mesh.waypoint.live().clone();
    assert!(
        common::eventually(Duration::from_secs(10), || live.last_error().is_some()).await,
        "the broken change was not reported"
    );
    let dump: serde_json::Value =
        serde_json::from_str(&call(admin, "GET", "/config_dump").await.1).unwrap();
    let err = &dump["last_error"];
    assert_eq!(dump["generation"], 1, "{dump}");
    assert_eq!(err["kept_generation"], 1, "{err}");
    assert_eq!(err["object"], "HTTPRoute default/reviews", "{err}");
    assert!(err["field"].as_str().unwrap().contains("weight"), "{err}");
    assert!(err["text"].as_str().unwrap().contains("mesh.yaml"), "{err}");
    let at = humantime::parse_rfc3339(err["at"].as_str().unwrap()).unwrap();
    assert!(at >= before - Duration::from_secs(1), "{err}");
    // The last good config still serves.
    assert_eq!(dump["services"][0]["rules"][0]["backends"][1]["weight"], 10);
    // The metrics say so too: one rejection, in force, and when.
    let stats = call(admin, "GET", "/stats").await.1;
    let metric = |series: &str| {
        waypoint::testbed::sample(&stats, series).unwrap_or_else(|| panic!("{series} in {stats}"))
    };
    assert_eq!(metric("waypoint_config_rejected_total"), 1.0);
    assert_eq!(metric("waypoint_config_last_change_rejected"), 1.0);
    let at_s = metric("waypoint_config_last_error_timestamp_seconds");
    let at = std::time::UNIX_EPOCH + Duration::from_secs_f64(at_s);
    assert!(at >= before - Duration::from_secs(1), "{at_s}");

    // A good change clears it and moves the generation.
    mesh.write_manifests(DEMO_MANIFESTS).unwrap();
    assert!(common::eventually(Duration::from_secs(10), || live.generation() == 2).await);
    let dump: serde_json::Value =
        serde_json::from_str(&call(admin, "GET", "/config_dump").await.1).unwrap();
    assert_eq!(dump["generation"], 2);
    assert!(dump["last_error"].is_null(), "{dump}");
    let stats = call(admin, "GET", "/stats").await.1;
    for (series, want) in [
        ("waypoint_config_generation", 2.0),
        ("waypoint_config_rejected_total", 1.0),
        ("waypoint_config_last_change_rejected", 0.0),
        ("waypoint_config_last_error_timestamp_seconds", 0.0),
    ] {
        assert_eq!(
            waypoint::testbed::sample(&stats, series),
            Some(want),
            "{series}: {stats}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnel_readiness_stats_and_admin() {
    let mesh = common::mesh(None).await;
    let (log, _layer) = LogControl::layer("info").unwrap();
    let cfg = ztunnel::NodeConfig {
        manifests: mesh.manifests_dir.clone(),
        certs_dir: mesh.certs_dir.clone(),
        trust_domain: DEFAULT_TRUST_DOMAIN.into(),
        node: None,
        workloads: vec![],
        hbone_port: mesh.opts.hbone_port,
        socks5: Some(LOCAL_ANY),
        socks5_default_workload: Some("default/productpage-0".into()),
        redirect: None,
    };
    let ops = ztunnel::ops::Ops {
        readiness: Some(LOCAL_ANY),
        stats: Some(LOCAL_ANY),
        admin: Some(LOCAL_ANY),
        reuse_port: true,
        log: Some(log),
    };
    let zt = ztunnel::Ztunnel::start_with(cfg, ops).await.unwrap();
    let ready = zt.ops_addr("readiness").unwrap();
    assert_eq!(
        call(ready, "GET", "/healthz/ready").await,
        (200, "ready\n".into())
    );
    let (status, body) = call(zt.ops_addr("stats").unwrap(), "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("\nztunnel_config_generation 1\n"), "{body}");
    let admin = zt.ops_addr("admin").unwrap();
    let dump: serde_json::Value =
        serde_json::from_str(&call(admin, "GET", "/config_dump").await.1).unwrap();
    assert_eq!(dump["generation"], 1, "{dump}");
    assert_eq!(
        call(admin, "POST", "/logging?level=ztunnel%3Ddebug").await,
        (200, "info,ztunnel=debug\n".into())
    );
    assert!(zt.drain(Duration::from_secs(2)).await);
    assert_eq!(
        call(ready, "GET", "/healthz/ready").await,
        (503, "draining\n".into())
    );
    zt.shutdown_within(Duration::from_secs(1)).await;
}
