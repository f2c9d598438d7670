//! `explain` from both sources over the mesh in `tests/explain/mesh.yaml` (a 90/10 split with retries and
//! timeouts, a DestinationRule on reviews-v1, DENY and ALLOW policies): compiled in-process, and through a
//! running waypoint's admin port (`/explain`, real sockets on 127.0.0.1:0) against its live snapshot — the
//! same answer, and a hot swap shows at once. Plus the `waypoint explain` binary itself and bad input.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mesh::config::{GatewayRef, DEFAULT_TRUST_DOMAIN};
use mesh::devca::DevCa;
use mesh::identity::{CertStore, Identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypoint::explain::{source, Explanation, Query};
use waypoint::server::{Waypoint, WaypointConfig};

const TD: &str = DEFAULT_TRUST_DOMAIN;
const PRODUCTPAGE: &str = "default/bookinfo-productpage";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/explain")
}

fn gateway() -> GatewayRef {
    GatewayRef {
        namespace: "default".into(),
        name: "waypoint".into(),
    }
}

fn query(from: &str, path: &str) -> Query {
    Query {
        from: Some(from.into()),
        to: "reviews.default.svc.cluster.local:9080".into(),
        method: Some("GET".into()),
        path: Some(path.into()),
        headers: vec![("x-user".into(), "jason".into())],
        source_ip: None,
    }
}

/// What the split rule must say, whichever source answered.
fn assert_split(e: &Explanation) {
    assert_eq!(e.service.name, "default/reviews");
    assert_eq!(e.service.address.to_string(), "127.0.0.100:9080");
    let r = e.route.as_ref().expect("a rule matches");
    assert_eq!(r.route.as_deref(), Some("default/reviews"));
    assert_eq!((r.route_rule, r.matched.as_str()), (3, "PathPrefix /"));
    let weights: Vec<(&str, u32)> = r
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.weight))
        .collect();
    assert_eq!(
        weights,
        [
            ("default/reviews-v1:9080", 90),
            ("default/reviews-v2:9080", 10)
        ]
    );
    assert_eq!(
        (r.timeouts.request_ms, r.timeouts.backend_request_ms),
        (Some(3000), Some(1000))
    );
    assert_eq!(
        (
            r.retry.configured,
            r.retry.attempts,
            &r.retry.codes[..],
            r.retry.backoff_ms
        ),
        (true, 3, &[503, 502][..], 100)
    );
    let v1 = &r.backends[0].policy;
    assert_eq!(v1.load_balancer, "LEAST_REQUEST");
    assert_eq!(
        (
            v1.connection_pool.max_connections,
            v1.connection_pool.max_requests,
            v1.connection_pool.max_retries
        ),
        (Some(10), Some(100), Some(5))
    );
    let outlier = v1.outlier_detection.as_ref().expect("outlier detection");
    assert_eq!(
        (outlier.consecutive_5xx, outlier.base_ejection_time_ms),
        (3, 15_000)
    );
    assert_eq!(r.backends[1].policy.load_balancer, "ROUND_ROBIN");
}

fn decided(e: &Explanation) -> (&str, Option<&str>, Option<u16>) {
    let a = &e.authorization;
    let by = a.decided_by.as_ref().map(|d| d.policy.as_str());
    (a.verdict.as_str(), by, e.outcome.status)
}

#[test]
fn in_process_from_manifests() {
    let e =
        source::from_manifests(&fixture(), &gateway(), TD, &query(PRODUCTPAGE, "/r/1")).unwrap();
    assert_split(&e);
    assert_eq!(decided(&e), ("allow", Some("default/reviews-allow"), None));
    let e = source::from_manifests(&fixture(), &gateway(), TD, &query(PRODUCTPAGE, "/admin/x"))
        .unwrap();
    assert_eq!(
        decided(&e),
        ("deny", Some("default/reviews-deny-admin"), Some(403))
    );
    let e = source::from_manifests(&fixture(), &gateway(), TD, &query("other/sa", "/")).unwrap();
    assert_eq!(
        decided(&e),
        ("deny", None, Some(403)),
        "no ALLOW policy matched"
    );

    let mut unknown = query(PRODUCTPAGE, "/");
    unknown.to = "details.default.svc.cluster.local:9080".into();
    let err = source::from_manifests(&fixture(), &gateway(), TD, &unknown).unwrap_err();
    assert!(err.to_string().contains("unknown service"), "{err}");
}

/// A waypoint serving a copy of the fixture, with its admin port on 127.0.0.1:0.
async fn running_waypoint(dir: &Path) -> Waypoint {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::copy(fixture().join("mesh.yaml"), manifests.join("mesh.yaml")).unwrap();
    let ca = DevCa::generate(TD).unwrap();
    let certs = ca
        .certs_for(&Identity::new(TD, "default", "waypoint"))
        .unwrap();
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cfg = WaypointConfig {
        gateway: gateway(),
        manifests,
        trust_domain: TD.into(),
        listen: local,
        hbone_port: 15008,
        admin: Some(local),
        mesh_config: None,
    };
    Waypoint::start(cfg, CertStore::new(certs)).await.unwrap()
}

/// `GET path` on `addr`: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("an answer within 10s")
        .unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("a response head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// The CLI's client to the admin endpoint (blocking I/O, off the runtime).
async fn from_admin(admin: SocketAddr, q: Query) -> anyhow::Result<Explanation> {
    tokio::task::spawn_blocking(move || source::from_admin(&format!("http://{admin}"), TD, &q))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_running_waypoint_admin_port() {
    let dir = tempfile::tempdir().unwrap();
    let wp = running_waypoint(dir.path()).await;
    let admin = wp.admin_addr().unwrap();

    // The same explanation as in-process, request by request.
    for (from, path) in [
        (PRODUCTPAGE, "/r/1"),
        (PRODUCTPAGE, "/admin/x"),
        ("frontend/web", "/"),
    ] {
        let q = query(from, path);
        let live = from_admin(admin, q.clone()).await.unwrap();
        let local = source::from_manifests(&fixture(), &gateway(), TD, &q).unwrap();
        assert_eq!(live, local, "{from} {path}");
    }
    let e = from_admin(admin, query(PRODUCTPAGE, "/r/1")).await.unwrap();
    assert_split(&e);
    assert_eq!(decided(&e), ("allow", Some("default/reviews-allow"), None));
    let e = from_admin(admin, query(PRODUCTPAGE, "/admin/x"))
        .await
        .unwrap();
    assert_eq!(
        decided(&e),
        ("deny", Some("default/reviews-deny-admin"), Some(403))
    );

    // The endpoint itself: text on request, JSON by default, clear errors.
    let (status, text) = get(
        admin,
        "/explain?to=reviews:9080&from=default/bookinfo-productpage&path=/admin/x&format=text",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("authorization  DENY"), "{text}");
    assert!(
        text.contains("decided by DENY default/reviews-deny-admin rules[0]"),
        "{text}"
    );
    let (status, json) = get(
        admin,
        "/explain?to=127.0.0.100:9080&h=x-canary:true&path=/api",
    )
    .await;
    assert_eq!(status, 200, "{json}");
    let e: Explanation = serde_json::from_str(&json).unwrap();
    assert_eq!(e.route.unwrap().route_rule, 0, "the header canary");
    let (status, body) = get(admin, "/explain?to=details:9080").await;
    assert_eq!(status, 404);
    assert!(body.contains("unknown service \"details:9080\""), "{body}");
    assert_eq!(get(admin, "/explain?from=x").await.0, 400, "to is required");
    assert_eq!(
        get(admin, "/explain?to=reviews:9080&from=nobody").await.0,
        400
    );
    let mut unknown = query(PRODUCTPAGE, "/");
    unknown.to = "details:9080".into();
    let err = from_admin(admin, unknown).await.unwrap_err();
    assert!(err.to_string().contains("404: unknown service"), "{err}");

    // Live: a hot swap to 50/50 shows without a restart.
    let path = dir.path().join("manifests/mesh.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let swapped = text
        .replace("port: 9080, weight: 90}", "port: 9080, weight: 50}")
        .replace("port: 9080, weight: 10}", "port: 9080, weight: 50}");
    assert_ne!(swapped, text);
    waypoint::demo::write_atomic(&path, &swapped).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let weights = loop {
        let e = from_admin(admin, query(PRODUCTPAGE, "/")).await.unwrap();
        let w: Vec<u32> = e.route.unwrap().backends.iter().map(|b| b.weight).collect();
        if w == [50, 50] || Instant::now() > deadline {
            break w;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(weights, [50, 50], "the swap shows within 10s");
    wp.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn the_binary_prints_text_json_and_errors() {
    let bin = env!("CARGO_BIN_EXE_waypoint");
    let run = |args: &[&str]| {
        let out = Command::new(bin)
            .arg("explain")
            .args(["--manifests", fixture().to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stdout, stderr)
    };
    let (code, text, _) = run(&[
        "--to",
        "reviews:9080",
        "--from",
        PRODUCTPAGE,
        "-H",
        "x-user: jason",
    ]);
    assert_eq!(code, Some(0));
    for want in [
        "route          HTTPRoute default/reviews rules[3] matches[0]: PathPrefix /",
        "default/reviews-v1:9080  weight 90 (90.0%)",
        "load balancer LEAST_REQUEST; breaker: maxConnections 10",
        "timeouts       request 3s, backendRequest 1s",
        "retry          3 retries on",
        "codes 503, 502; backoff >= 100ms",
        "decided by ALLOW default/reviews-allow rules[0]",
        "x-user: jason",
    ] {
        assert!(text.contains(want), "{want:?} in\n{text}");
    }
    let (code, json, _) = run(&["--to", "127.0.0.100:9080", "--path", "/admin", "--json"]);
    assert_eq!(code, Some(0));
    let e: Explanation = serde_json::from_str(&json).unwrap();
    assert_eq!(
        decided(&e),
        ("deny", Some("default/reviews-deny-admin"), Some(403))
    );
    let (code, _, err) = run(&["--to", "details:9080"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("error: unknown service \"details:9080\""),
        "{err}"
    );
}
