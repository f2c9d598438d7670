//! Fixtures for the end-to-end tests: a two-node "cluster" on a random 127.a.b.0/24 (pod IPs are loopback
//! addresses), certificates from a fresh `DevCa`, manifests in a temp dir, an echo application, and a SOCKS5
//! client bound to a pod IP.
//!
//! Addresses (last octet): .1 probe for the HBONE port, .2 demo/client (node-a), .3 demo/app (node-b, echo on
//! the app port), .4 demo/other (node-b, nothing listening), .9 the waypoint demo/waypoint,
//! .100 Service demo/echo (port 80 → app), .101 Service demo/echo-wp (port 80 → app, via the waypoint).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use mesh::devca::DevCa;
use mesh::identity::{CertStore, Identity};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use ztunnel::{NodeConfig, Ztunnel};

pub const TD: &str = "cluster.local";

/// Every wait in these tests is bounded by this.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn id(sa: &str) -> Identity {
    Identity::new(TD, "demo", sa)
}

/// A random 127.a.b.0/24.
#[derive(Clone, Copy, Debug)]
pub struct Net {
    a: u8,
    b: u8,
}

impl Net {
    pub fn random() -> Net {
        Net {
            a: fastrand::u8(16..=250),
            b: fastrand::u8(1..=254),
        }
    }
    pub fn ip(&self, last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.a, self.b, last))
    }
    pub fn addr(&self, last: u8, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(last), port)
    }
}

/// A port that was free on `ip` a moment ago.
pub fn probe_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tiny TCP echo server: each connection's bytes come back; EOF is echoed as a half-close.
pub async fn echo_server(addr: SocketAddr) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok((local, task))
}

/// The manifests of the test cluster.
pub fn manifests(net: Net, hbone_port: u16, app_port: u16) -> String {
    let ip = |n| net.ip(n);
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: demo, labels: {{istio.io/dataplane-mode: ambient}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: demo, labels: {{app: client, version: v1}}}}
spec: {{nodeName: node-a, serviceAccountName: client, containers: [{{name: c, image: client}}]}}
status: {{podIP: {client}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: app, namespace: demo, labels: {{app: echo}}}}
spec:
  nodeName: node-b
  serviceAccountName: app
  containers: [{{name: c, image: echo, ports: [{{name: http, containerPort: {app_port}}}]}}]
status: {{podIP: {app}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: other, namespace: demo, labels: {{app: other}}}}
spec: {{nodeName: node-b, serviceAccountName: other, containers: [{{name: c, image: other}}]}}
status: {{podIP: {other}}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: demo}}
spec:
  clusterIP: {vip}
  selector: {{app: echo}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo-wp, namespace: demo, labels: {{istio.io/use-waypoint: waypoint}}}}
spec:
  clusterIP: {vip_wp}
  selector: {{app: echo}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: demo}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: {hbone_port}, protocol: HBONE}}]
status:
  addresses: [{{type: IPAddress, value: {waypoint}}}]
"#,
        client = ip(2),
        app = ip(3),
        other = ip(4),
        waypoint = ip(9),
        vip = ip(100),
        vip_wp = ip(101),
    )
}

/// The cluster's files, CA, addresses and running echo app.
pub struct Cluster {
    pub net: Net,
    pub hbone_port: u16,
    /// The echo app's address (`.3:app_port`).
    pub app: SocketAddr,
    pub ca: DevCa,
    pub manifests: PathBuf,
    pub certs: PathBuf,
    _dir: tempfile::TempDir,
    _app: JoinHandle<()>,
}

impl Cluster {
    async fn new() -> io::Result<Cluster> {
        let net = Net::random();
        let hbone_port = probe_port(net.ip(1));
        let (app, app_task) = echo_server(net.addr(3, 0)).await?;
        let dir = tempfile::tempdir()?;
        let manifests = dir.path().join("manifests");
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&manifests)?;
        std::fs::write(
            manifests.join("cluster.yaml"),
            self::manifests(net, hbone_port, app.port()),
        )?;
        let ca = DevCa::generate(TD).unwrap();
        ca.write_ca(&certs).unwrap();
        for sa in ["client", "app", "other", "waypoint"] {
            ca.write_workload(&certs, &id(sa)).unwrap();
        }
        Ok(Cluster {
            net,
            hbone_port,
            app,
            ca,
            manifests,
            certs,
            _dir: dir,
            _app: app_task,
        })
    }

    /// A node config for `node`, with no SOCKS5 or redirect listener.
    pub fn node_config(&self, node: &str) -> NodeConfig {
        NodeConfig {
            manifests: self.manifests.clone(),
            certs_dir: self.certs.clone(),
            trust_domain: TD.into(),
            node: Some(node.into()),
            workloads: vec![],
            hbone_port: self.hbone_port,
            socks5: None,
            socks5_default_workload: None,
            redirect: None,
        }
    }

    /// In-memory certificates for `sa` (a caller or a fake waypoint).
    pub fn store(&self, sa: &str) -> CertStore {
        CertStore::new(self.ca.certs_for(&id(sa)).unwrap())
    }
}

/// A cluster with node-a (SOCKS5 on 127.0.0.1:0, then `tweak_a`) and node-b running. Retries the whole setup
/// (new subnet, new HBONE port) when a port turns out to be taken.
pub async fn cluster(tweak_a: impl Fn(&mut NodeConfig, &Cluster)) -> (Cluster, Ztunnel, Ztunnel) {
    cluster_with(|_| String::new(), tweak_a, ztunnel::ops::Ops::default()).await
}

/// [`cluster`] with `extra(&cluster)` written to `extra.yaml` before the nodes start, and node-b started with
/// `ops_b`.
pub async fn cluster_with(
    extra: impl Fn(&Cluster) -> String,
    tweak_a: impl Fn(&mut NodeConfig, &Cluster),
    ops_b: ztunnel::ops::Ops,
) -> (Cluster, Ztunnel, Ztunnel) {
    let mut last = None;
    for _ in 0..5 {
        let c = match Cluster::new().await {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("cluster setup: {e}"),
        };
        std::fs::write(c.manifests.join("extra.yaml"), extra(&c)).unwrap();
        let mut cfg_a = c.node_config("node-a");
        cfg_a.socks5 = Some("127.0.0.1:0".parse().unwrap());
        tweak_a(&mut cfg_a, &c);
        let a = match Ztunnel::start(cfg_a).await {
            Ok(z) => z,
            Err(e) if addr_in_use(&e) => {
                last = Some(e);
                continue;
            }
            Err(e) => panic!("start node-a: {e:#}"),
        };
        match Ztunnel::start_with(c.node_config("node-b"), ops_b.clone()).await {
            Ok(b) => return (c, a, b),
            Err(e) if addr_in_use(&e) => {
                a.shutdown().await;
                last = Some(e);
            }
            Err(e) => panic!("start node-b: {e:#}"),
        }
    }
    panic!("no free ports after 5 attempts: {last:?}");
}

pub fn addr_in_use(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::AddrInUse)
    })
}

/// A SOCKS5 destination.
pub enum To<'a> {
    Addr(SocketAddr),
    Host(&'a str, u16),
}

/// Connects to `socks` from `from` (a pod IP) and sends CONNECT; returns the reply code and the stream.
pub async fn socks_connect(
    from: IpAddr,
    socks: SocketAddr,
    to: To<'_>,
) -> io::Result<(u8, TcpStream)> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(from, 0))?;
    let mut s = sock.connect(socks).await?;
    s.write_all(&[5, 1, 0]).await?;
    let mut method = [0u8; 2];
    s.read_exact(&mut method).await?;
    assert_eq!(method, [5, 0], "no-auth method chosen");
    let mut req = vec![5, 1, 0];
    match to {
        To::Addr(SocketAddr::V4(a)) => {
            req.push(1);
            req.extend(a.ip().octets());
            req.extend(a.port().to_be_bytes());
        }
        To::Addr(SocketAddr::V6(a)) => {
            req.push(4);
            req.extend(a.ip().octets());
            req.extend(a.port().to_be_bytes());
        }
        To::Host(name, port) => {
            req.push(3);
            req.push(name.len() as u8);
            req.extend(name.as_bytes());
            req.extend(port.to_be_bytes());
        }
    }
    s.write_all(&req).await?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await?;
    assert_eq!(reply[0], 5);
    Ok((reply[1], s))
}

/// Sends `msg`, half-closes, and reads everything back until EOF (bounded by [`PATIENCE`]).
pub async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) -> Vec<u8> {
    let work = async {
        s.write_all(msg).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = vec![];
        s.read_to_end(&mut out).await.unwrap();
        out
    };
    tokio::time::timeout(PATIENCE, work)
        .await
        .expect("round trip timed out")
}

/// Polls `cond` until true, for at most [`PATIENCE`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
