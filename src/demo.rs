//! `waypoint demo`: a whole ambient mesh on loopback, from `examples/demo-mesh.yaml`.
//!
//! client (productpage, 127.0.0.50) → ztunnel node-a (SOCKS5) =HBONE=> waypoint (127.0.0.20:15008, 90/10 split)
//! =HBONE=> ztunnel node-b → reviews-v1 (127.0.0.11:8080) | reviews-v2 (127.0.0.12:8080).
//!
//! [`DemoMesh`] starts it with every address in a chosen `127.a.b.0/24` and a chosen HBONE port, so the
//! end-to-end tests use it as their fixture (random subnet, ephemeral ports) and the CLI runs it on the
//! addresses the manifests name.

pub mod app;
pub mod client;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use mesh::config::{GatewayRef, DEFAULT_TRUST_DOMAIN};
use mesh::devca::DevCa;
use mesh::identity::{CertStore, Identity};
use serde::Serialize;
use ztunnel::{NodeConfig, Ztunnel};

use crate::server::{Waypoint, WaypointConfig};
use app::App;
use client::{Proto, Target};

/// The demo's manifests, as shipped in `examples/`.
pub const DEMO_MANIFESTS: &str = include_str!("../examples/demo-mesh.yaml");

/// Where the demo mesh lives.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// The first three octets of every address (`[127, 0, 0]` as in the manifests).
    pub net: [u8; 3],
    /// The HBONE port of every pod and the waypoint (15008 as in the manifests).
    pub hbone_port: u16,
    /// The SOCKS5 entry of node-a (on 127.0.0.1; 0 picks one).
    pub socks_port: u16,
    /// The applications' port (8080 as in the manifests).
    pub app_port: u16,
    /// Node-a's iptables-redirect capture listener (`127.0.0.1:port`), when wanted.
    pub redirect_port: Option<u16>,
    /// The manifests text (defaults to [`DEMO_MANIFESTS`]); addresses are rewritten to `net` and `hbone_port`.
    pub manifests: Option<String>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            net: [127, 0, 0],
            hbone_port: 15008,
            socks_port: 15080,
            app_port: 8080,
            redirect_port: None,
            manifests: None,
        }
    }
}

/// A running demo mesh.
pub struct DemoMesh {
    pub opts: DemoOptions,
    /// Keeps the temporary directory alive.
    pub dir: tempfile::TempDir,
    pub manifests_dir: PathBuf,
    pub certs_dir: PathBuf,
    pub ca: DevCa,
    pub waypoint: Waypoint,
    pub node_a: Ztunnel,
    pub node_b: Ztunnel,
    pub apps: Vec<App>,
}

impl DemoMesh {
    /// The address `.last` in the demo's subnet.
    pub fn ip(&self, last: u8) -> IpAddr {
        ip(self.opts.net, last)
    }

    /// Rewrites the manifests' `127.0.0.x`, `15008` and `8080` to this mesh's subnet and ports.
    pub fn rewrite(text: &str, opts: &DemoOptions) -> String {
        let [a, b, c] = opts.net;
        text.replace("127.0.0.", &format!("{a}.{b}.{c}."))
            .replace("port: 15008", &format!("port: {}", opts.hbone_port))
            .replace("8080", &opts.app_port.to_string())
    }

    pub async fn start(opts: DemoOptions) -> anyhow::Result<DemoMesh> {
        let dir = tempfile::tempdir()?;
        let manifests_dir = dir.path().join("manifests");
        let certs_dir = dir.path().join("certs");
        std::fs::create_dir_all(&manifests_dir)?;
        let text = opts
            .manifests
            .clone()
            .unwrap_or_else(|| DEMO_MANIFESTS.to_string());
        std::fs::write(manifests_dir.join("mesh.yaml"), Self::rewrite(&text, &opts))?;

        let td = DEFAULT_TRUST_DOMAIN;
        let ca = DevCa::generate(td)?;
        ca.write_ca(&certs_dir)?;
        for sa in ["bookinfo-productpage", "bookinfo-reviews", "waypoint"] {
            ca.write_workload(&certs_dir, &Identity::new(td, "default", sa))?;
        }

        let net = opts.net;
        let mut apps = Vec::new();
        for (last, version) in [(11, "v1"), (12, "v2")] {
            let addr = SocketAddr::new(ip(net, last), opts.app_port);
            apps.push(
                App::start(addr, version)
                    .await
                    .with_context(|| format!("starting app on {addr}"))?,
            );
        }
        let node =
            |name: &str, socks: Option<SocketAddr>, default: Option<&str>, redirect| NodeConfig {
                manifests: manifests_dir.clone(),
                certs_dir: certs_dir.clone(),
                trust_domain: td.to_string(),
                node: Some(name.to_string()),
                workloads: vec![],
                hbone_port: opts.hbone_port,
                socks5: socks,
                socks5_default_workload: default.map(str::to_string),
                redirect,
            };
        let socks = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), opts.socks_port);
        let redirect = opts
            .redirect_port
            .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p));
        let node_a = Ztunnel::start(node(
            "node-a",
            Some(socks),
            Some("default/productpage-0"),
            redirect,
        ))
        .await
        .context("starting ztunnel node-a")?;
        let node_b = Ztunnel::start(node("node-b", None, None, None))
            .await
            .context("starting ztunnel node-b")?;

        let wp_id = Identity::new(td, "default", "waypoint");
        let certs = CertStore::load(&mesh::devca::workload_paths(&certs_dir, &wp_id))?;
        let waypoint = Waypoint::start(
            WaypointConfig {
                gateway: GatewayRef {
                    namespace: "default".into(),
                    name: "waypoint".into(),
                },
                manifests: manifests_dir.clone(),
                trust_domain: td.to_string(),
                listen: SocketAddr::new(ip(net, 20), opts.hbone_port),
                hbone_port: opts.hbone_port,
                admin: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)),
                mesh_config: None,
            },
            certs,
        )
        .await
        .context("starting the waypoint")?;
        Ok(DemoMesh {
            opts,
            dir,
            manifests_dir,
            certs_dir,
            ca,
            waypoint,
            node_a,
            node_b,
            apps,
        })
    }

    /// The client pod's view of `reviews`: through node-a's SOCKS5 entry, from 127.0.0.50.
    pub fn target(&self) -> Target {
        Target {
            socks: self
                .node_a
                .socks5_addr()
                .expect("node-a has a SOCKS5 entry"),
            source_ip: self.ip(50),
            host: "reviews.default.svc.cluster.local".into(),
            port: 9080,
        }
    }

    /// The manifests file the mesh reads (edit it to hot-swap).
    pub fn manifests_file(&self) -> PathBuf {
        self.manifests_dir.join("mesh.yaml")
    }

    /// Writes `text` (rewritten to this mesh's addresses) as the manifests, atomically (write + rename).
    pub fn write_manifests(&self, text: &str) -> std::io::Result<()> {
        write_atomic(&self.manifests_file(), &Self::rewrite(text, &self.opts))
    }

    /// Application connections accepted, summed over the apps.
    pub fn app_connections(&self) -> u64 {
        self.apps
            .iter()
            .map(|a| {
                a.stats
                    .connections
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum()
    }

    pub async fn shutdown(self) {
        // Client side first, then the waypoint (which ends its upstream streams), then the destination node.
        self.node_a.shutdown().await;
        self.waypoint.shutdown(Duration::from_secs(2)).await;
        self.node_b.shutdown().await;
    }
}

/// `net.last`.
pub fn ip(net: [u8; 3], last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(net[0], net[1], net[2], last))
}

/// Writes a file by rename, so a watcher never reads half of it.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

/// What `waypoint demo` prints.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub by_version: std::collections::BTreeMap<String, u64>,
    pub share_v2: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests_per_second: f64,
    pub caller_identity_seen_by_app: Vec<String>,
    pub client_connections: usize,
    pub waypoint_hbone_connections: u64,
    pub waypoint_hbone_streams: u64,
    pub app_connections: u64,
    pub errors: std::collections::BTreeMap<String, u64>,
}

/// Runs the demo: `requests` requests (or keeps the mesh up when `None`).
pub async fn run(
    requests: Option<usize>,
    connections: usize,
    proto: Proto,
    json: bool,
) -> anyhow::Result<()> {
    let mesh = DemoMesh::start(DemoOptions::default()).await?;
    let t = mesh.target();
    let Some(n) = requests else {
        println!(
            "mesh is up; manifests in {} (edit to hot-swap)",
            mesh.manifests_dir.display()
        );
        println!(
            "try:  curl --interface {} --socks5-hostname {} http://{}:{}/reviews",
            mesh.ip(50),
            t.socks,
            t.host,
            t.port
        );
        println!("Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
        mesh.shutdown().await;
        return Ok(());
    };
    let out = client::run_load(&t, proto, "/reviews", n, connections, Duration::ZERO).await;
    let stats = mesh.waypoint.pool_stats();
    let summary = Summary {
        requests: out.requests,
        ok: out.ok,
        failed: out.failed,
        by_version: out.by_version.clone(),
        share_v2: out.share("v2"),
        p50_ms: out.percentile_us(0.5) as f64 / 1000.0,
        p99_ms: out.percentile_us(0.99) as f64 / 1000.0,
        requests_per_second: out.ok as f64 / (out.elapsed_ms.max(1) as f64 / 1000.0),
        caller_identity_seen_by_app: out.identities_seen_by_app.iter().cloned().collect(),
        client_connections: connections,
        waypoint_hbone_connections: stats.connections_opened,
        waypoint_hbone_streams: stats.streams_opened,
        app_connections: mesh.app_connections(),
        errors: out.errors.clone(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    mesh.shutdown().await;
    if summary.failed > 0 {
        anyhow::bail!("{} of {} requests failed", summary.failed, summary.requests);
    }
    Ok(())
}

fn print_summary(s: &Summary) {
    println!(
        "client -> ztunnel(node-a) =HBONE=> waypoint =HBONE=> ztunnel(node-b) -> reviews-v1|v2"
    );
    println!("requests {}  ok {}  failed {}", s.requests, s.ok, s.failed);
    for (v, n) in &s.by_version {
        println!(
            "  {v}: {n} ({:.1}%)",
            *n as f64 * 100.0 / s.ok.max(1) as f64
        );
    }
    println!(
        "latency p50 {:.2} ms  p99 {:.2} ms  throughput {:.0} req/s",
        s.p50_ms, s.p99_ms, s.requests_per_second
    );
    for id in &s.caller_identity_seen_by_app {
        println!("app saw x-forwarded-client-cert: {id}");
    }
    println!(
        "connections: client {}, waypoint outer HBONE {}, waypoint CONNECT streams {}, app {}",
        s.client_connections,
        s.waypoint_hbone_connections,
        s.waypoint_hbone_streams,
        s.app_connections
    );
    for (e, n) in &s.errors {
        println!("  error {e}: {n}");
    }
}
