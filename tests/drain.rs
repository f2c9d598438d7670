//! Graceful drain: a rolling restart under load loses no request.
//!
//! Many keep-alive clients send through the client ztunnel (node-a) to waypoint A; waypoint B starts on the
//! same address (`SO_REUSEPORT`); A drains by the path SIGTERM takes ([`Waypoint::drain`]) while the load goes
//! on. Every client request must succeed (a client honours `Connection: close` and retries nothing), A must
//! finish before its deadline, and B must serve the requests after A left.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use mesh::config::{GatewayRef, DEFAULT_TRUST_DOMAIN};
use mesh::identity::{CertStore, Identity};
use mesh::ops::ReadyState;
use waypoint::demo::client::{socks5_connect, Target};
use waypoint::server::{Ops, Waypoint, WaypointConfig};

/// Keep-alive clients sending back to back.
const CLIENTS: usize = 16;
/// Upper bounds, so a broken drain fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(30);
const REQUEST_CAP: u64 = 200_000;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors: AtomicU64,
    /// Connections the server closed with `Connection: close` (the drain's doing).
    closed_by_server: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Tally {
    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::SeqCst);
        self.first_error.lock().unwrap().get_or_insert(e);
    }
}

/// One client: a keep-alive connection, requests back to back; a new connection only after the server said
/// `Connection: close` (or after a failure, which is counted). Nothing is retried.
async fn client(t: Target, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let authority = format!("{}:{}", t.host, t.port);
    let mut conn: Option<http1::SendRequest<Empty<Bytes>>> = None;
    while !stop.load(Ordering::Relaxed) && tally.ok.load(Ordering::Relaxed) < REQUEST_CAP {
        if conn.is_none() {
            let opened = async {
                let io = TokioIo::new(socks5_connect(&t).await?);
                let (send, c) = http1::handshake(io).await?;
                tokio::spawn(c);
                anyhow::Ok(send)
            };
            match opened.await {
                Ok(s) => conn = Some(s),
                Err(e) => {
                    tally.error(format!("connect: {e:#}"));
                    continue;
                }
            }
        }
        let send = conn.as_mut().expect("connected");
        let req = http::Request::get("/reviews")
            .header("host", &authority)
            .body(Empty::new())
            .expect("static request");
        let exchange = async {
            send.ready().await?;
            let resp = send.send_request(req).await?;
            let close = resp
                .headers()
                .get(http::header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let status = resp.status();
            resp.into_body().collect().await?;
            anyhow::Ok((status, close))
        };
        match tokio::time::timeout(Duration::from_secs(10), exchange).await {
            Ok(Ok((status, close))) if status == 200 => {
                tally.ok.fetch_add(1, Ordering::SeqCst);
                if close {
                    tally.closed_by_server.fetch_add(1, Ordering::SeqCst);
                    conn = None;
                }
            }
            Ok(Ok((status, _))) => {
                tally.error(format!("status {status}"));
                conn = None;
            }
            Ok(Err(e)) => {
                tally.error(format!("request: {e:#}"));
                conn = None;
            }
            Err(_) => {
                tally.error("no answer within 10s".into());
                conn = None;
            }
        }
    }
}

/// Polls `f` (async) until true or [`PATIENCE`] runs out.
async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load_loses_no_request() {
    let mesh = common::mesh(None).await;
    let a = &mesh.waypoint;
    assert_eq!(a.readiness().state(), ReadyState::Ready);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(mesh.target(), stop.clone(), tally.clone())))
        .collect();
    wait_until("load through waypoint A", || {
        tally.ok.load(Ordering::SeqCst) >= 200
    })
    .await;

    // B: a new instance on A's very address (what a rolling restart on one node does).
    let id = Identity::new(DEFAULT_TRUST_DOMAIN, "default", "waypoint");
    let certs = CertStore::load(&mesh::devca::workload_paths(&mesh.certs_dir, &id)).unwrap();
    let cfg = WaypointConfig {
        gateway: GatewayRef {
            namespace: "default".into(),
            name: "waypoint".into(),
        },
        manifests: mesh.manifests_dir.clone(),
        trust_domain: DEFAULT_TRUST_DOMAIN.into(),
        listen: a.addr(),
        hbone_port: mesh.opts.hbone_port,
        admin: None,
        mesh_config: None,
    };
    let b = Waypoint::start_with(cfg, certs, Ops::default())
        .await
        .expect("B binds A's address with SO_REUSEPORT");
    assert_eq!(b.addr(), a.addr());

    // Drain A under load, as SIGTERM does.
    let a_before = a.stats().requests.load(Ordering::SeqCst);
    let drained = a.drain(Duration::from_secs(20)).await;
    assert!(drained, "A's connections all finished before the deadline");
    assert_eq!(a.readiness().state(), ReadyState::Draining);
    let a_after = a.stats().requests.load(Ordering::SeqCst);
    let (ok_at_exit, b_at_exit) = (
        tally.ok.load(Ordering::SeqCst),
        b.stats().requests.load(Ordering::SeqCst),
    );
    assert!(a_after > a_before, "A served requests while draining");

    // The load goes on, all on B now.
    wait_until("requests served by B after A left", || {
        b.stats().requests.load(Ordering::SeqCst) >= b_at_exit + 500
            && tally.ok.load(Ordering::SeqCst) >= ok_at_exit + 500
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let errors = tally.errors.load(Ordering::SeqCst);
    assert_eq!(
        errors,
        0,
        "client-visible errors: {errors}, first: {:?}",
        tally.first_error.lock().unwrap()
    );
    assert_eq!(
        a.stats().requests.load(Ordering::SeqCst),
        a_after,
        "A served nothing after it drained"
    );
    assert!(
        mesh.node_a.stats().pool.connections_opened >= 2,
        "node-a redialled after A's GOAWAY"
    );
    assert!(
        tally.closed_by_server.load(Ordering::SeqCst) >= 1,
        "the drain closed keep-alive connections with Connection: close"
    );
    eprintln!(
        "ok {} (A {a_after}, B {}), connections closed by the drain {}",
        tally.ok.load(Ordering::SeqCst),
        b.stats().requests.load(Ordering::SeqCst),
        tally.closed_by_server.load(Ordering::SeqCst)
    );
    b.shutdown(Duration::from_secs(2)).await;
}

/// A free port on 127.0.0.1 (the kernel's pick; released for the child to bind).
fn free_local_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_turns_ready_then_drains_on_sigterm_and_exits_0() {
    let mesh = common::mesh(None).await;
    let paths = mesh::devca::workload_paths(
        &mesh.certs_dir,
        &Identity::new(DEFAULT_TRUST_DOMAIN, "default", "waypoint"),
    );
    let ready = std::net::SocketAddr::from(([127, 0, 0, 1], free_local_port()));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .arg("run")
        .env("WP_MANIFESTS", &mesh.manifests_dir)
        .env("WP_READINESS", ready.to_string())
        .args(["--listen", &format!("{}:0", mesh.ip(22))])
        .arg("--cert")
        .arg(&paths.cert)
        .arg("--key")
        .arg(&paths.key)
        .arg("--ca")
        .arg(mesh.certs_dir.join("ca.pem"))
        .args(["--admin", "off", "--stats", "off", "--drain-timeout", "3s"])
        .args(["--log-level", "warn"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "the binary never turned ready");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the binary exited early: {status}");
        }
        if probe(ready).await == Some(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id().unwrap().to_string();
    let kill = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits within the drain timeout")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
}

/// The status of `GET /healthz/ready` on `addr`, `None` while nothing listens.
async fn probe(addr: std::net::SocketAddr) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /healthz/ready HTTP/1.1\r\nhost: probe\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    out.split(' ').nth(1)?.parse().ok()
}
