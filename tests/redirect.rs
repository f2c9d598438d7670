//! The node tier's iptables capture, for real: in a private network namespace, an `iptables -t nat` REDIRECT
//! sends a client's connection to the service VIP into ztunnel node-a's capture listener, which recovers the
//! original destination with `SO_ORIGINAL_DST` and carries it over HBONE through the waypoint.
//!
//! Needs root, `unshare` and `iptables` (`.ci/run` installs iptables). The test re-runs itself inside
//! `unshare -n`, so the rule and every address live only in its own namespace. Where the prerequisites are
//! missing it says so and passes, except under CI (`CI` set), where that is a failure.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use waypoint::demo::{DemoMesh, DemoOptions};

const INSIDE: &str = "WAYPOINT_TEST_IN_NETNS";
const REDIRECT_PORT: u16 = 15001;

#[test]
fn iptables_redirect_is_captured_and_carried_through_the_waypoint() {
    if std::env::var_os(INSIDE).is_some() {
        inside_namespace();
        return;
    }
    let missing = prerequisites_missing();
    if let Some(why) = missing {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the redirect test: {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["-n", "--"])
        .arg(exe)
        .args([
            "--exact",
            "iptables_redirect_is_captured_and_carried_through_the_waypoint",
            "--nocapture",
        ])
        .env(INSIDE, "1")
        .output()
        .expect("running the test inside unshare -n");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && log.contains("1 passed"),
        "inside the namespace:\n{log}"
    );
}

fn prerequisites_missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["unshare", "iptables"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output();
        if !found.is_ok_and(|o| o.status.success()) {
            return Some(format!("{tool} not installed"));
        }
    }
    None
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn sh(cmd: &str) {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn inside_namespace() {
    // A fresh namespace: only our own loopback, so the demo's own addresses and ports are free.
    sh("ip link set lo up");
    let opts = DemoOptions {
        redirect_port: Some(REDIRECT_PORT),
        socks_port: 0,
        ..DemoOptions::default()
    };
    let vip = "127.0.0.100";
    sh(&format!("iptables -t nat -A OUTPUT -p tcp -d {vip} --dport 9080 -j REDIRECT --to-ports {REDIRECT_PORT}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mesh = DemoMesh::start(opts).await.expect("demo mesh");
        for _ in 0..20 {
            // The client pod dials the VIP as if there were no mesh.
            let sock = TcpSocket::new_v4().unwrap();
            sock.bind(SocketAddr::new(mesh.ip(50), 0)).unwrap();
            let tcp = tokio::time::timeout(
                Duration::from_secs(10),
                sock.connect(format!("{vip}:9080").parse().unwrap()),
            )
            .await
            .expect("connect in time")
            .expect("connect to the VIP");
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(conn);
            let req = http::Request::get("/reviews")
                .header("host", "reviews:9080")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let xfcc = resp
                .headers()
                .get("x-seen-xfcc")
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            assert!(
                xfcc.ends_with("URI=spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
                "{xfcc}"
            );
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(body.starts_with(b"reviews-v"), "{body:?}");
        }
        let stats = mesh.node_a.stats();
        assert_eq!(
            stats.outbound_waypoint, 20,
            "captured connections went to the waypoint: {stats:?}"
        );
        mesh.shutdown().await;
    });
}
