//! Test support: a whole mesh on loopback from any manifests text, with echo backends in every pod.
//!
//! [`Testbed::start`] reads the manifests and starts, over real sockets:
//! - an [`echo::EchoServer`] on each Pod's IP for each `containerPort` (identity: pod name, `app` label as the
//!   service, namespace, the port as written), all sharing one attempts table;
//! - one ztunnel per `spec.nodeName` (Pods without one share a node), speaking for that node's Pods, with a
//!   SOCKS5 entry on `127.0.0.1:0`;
//! - one waypoint per `istio-waypoint` Gateway, listening on its address;
//! - a development CA and a certificate for the service account of every Pod and for every waypoint.
//!
//! Addresses and ports: every `127.0.0.x` in the manifests becomes `127.a.b.x` in a random subnet; container
//! ports and the HBONE port become ports the kernel picked free (see [`manifests::Rewrite`]); Service ports keep
//! their numbers (VIPs are never bound). Nothing is bound on a shared address except SOCKS5 on `127.0.0.1:0`.
//! A start that meets a port taken meanwhile is retried on a new subnet.
//!
//! An echo closes idle HTTP/1.1 keep-alive connections after a random short time when its Pod has the annotation
//! `echo.waypoint.dev/idle-close-ms: "5-30"` (or every echo, with [`TestbedOptions::echo_idle_close`]); faults
//! are injected per instance with [`EchoServer::set_fault`] (see [`echo`]).
//!
//! Pods labelled `gateway.networking.k8s.io/gateway-name` (a waypoint's own pods) get neither echo nor
//! ztunnel. A hot swap ([`Testbed::apply`]) changes what the components route, not which processes run:
//! Pods or container ports added later get no echo or listener.

pub mod client;
pub mod echo;
pub mod manifests;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use mesh::config::{GatewayRef, Mesh, DEFAULT_TRUST_DOMAIN};
use mesh::devca::DevCa;
use mesh::identity::{CertStore, Identity};
use ztunnel::{NodeConfig, Ztunnel};

use crate::demo::write_atomic;
use crate::server::{Waypoint, WaypointConfig};
pub use client::{Client, Conn, Protocol, Req, Resp};
pub use echo::{Attempts, Echo, EchoIdentity, EchoOptions, EchoServer, Fault, IdleClose};
use manifests::{PodSpec, Rewrite};

/// How many subnets a start tries before giving up on a port conflict.
const START_TRIES: usize = 8;
/// How long [`Testbed::apply`] waits for every component to install a new config.
pub const APPLY_PATIENCE: Duration = Duration::from_secs(10);
/// The node name given to Pods without `spec.nodeName`.
pub const UNSCHEDULED_NODE: &str = "(none)";

/// Options of a testbed.
#[derive(Clone, Debug, Default)]
pub struct TestbedOptions {
    /// `namespace/name` of the source workload for SOCKS5 clients whose IP is not one of the node's pods.
    pub default_workload: Option<String>,
    /// Every echo closes idle keep-alive connections so (a Pod's `echo.waypoint.dev/idle-close-ms` annotation
    /// wins).
    pub echo_idle_close: Option<IdleClose>,
    /// The waypoints' mesh config file (CUSTOM authorization providers).
    pub mesh_config: Option<PathBuf>,
}

/// A running mesh (see the module doc). Dropping it stops the echo servers; [`Testbed::shutdown`] also drains.
pub struct Testbed {
    /// Keeps the manifests and certificates directory alive.
    pub dir: tempfile::TempDir,
    pub manifests_dir: PathBuf,
    pub certs_dir: PathBuf,
    pub ca: DevCa,
    rewrite: Arc<Rewrite>,
    attempts: Arc<Attempts>,
    pods: Vec<Pod>,
    echoes: Vec<EchoServer>,
    nodes: BTreeMap<String, Ztunnel>,
    waypoints: BTreeMap<String, Waypoint>,
}

/// A Pod the testbed runs.
struct Pod {
    spec: PodSpec,
    ip: IpAddr,
    node: String,
}

impl Testbed {
    /// Starts the mesh `manifests` describe (see the module doc).
    pub async fn start(manifests: &str) -> anyhow::Result<Testbed> {
        Self::start_with(manifests, TestbedOptions::default()).await
    }

    pub async fn start_with(manifests: &str, opts: TestbedOptions) -> anyhow::Result<Testbed> {
        let mut last = None;
        for _ in 0..START_TRIES {
            let net = [127, fastrand::u8(1..=254), fastrand::u8(1..=254)];
            match Self::start_on(net, manifests, &opts).await {
                Ok(tb) => return Ok(tb),
                Err(e) if is_addr_in_use(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last
            .expect("at least one try")
            .context("no free subnet and ports"))
    }

    async fn start_on(net: [u8; 3], text: &str, opts: &TestbedOptions) -> anyhow::Result<Testbed> {
        let rewrite = Arc::new(Rewrite::choose(net, text)?);
        let dir = tempfile::tempdir()?;
        let manifests_dir = dir.path().join("manifests");
        let certs_dir = dir.path().join("certs");
        std::fs::create_dir_all(&manifests_dir)?;
        write_atomic(&manifests_dir.join("mesh.yaml"), &rewrite.manifests(text)?)?;
        let td = DEFAULT_TRUST_DOMAIN;
        let mesh = Mesh::load_dir(&manifests_dir, td).context("reading the manifests")?;

        // Certificates: every pod's service account, every waypoint.
        let ca = DevCa::generate(td)?;
        ca.write_ca(&certs_dir)?;
        let mut ids: Vec<Identity> = mesh.workloads.iter().map(|w| w.identity(td)).collect();
        ids.extend(mesh.waypoints.iter().map(|w| w.identity(td)));
        ids.sort_by_key(|i| i.to_string());
        ids.dedup();
        for id in &ids {
            ca.write_workload(&certs_dir, id)?;
        }

        // Echo servers.
        let specs: Vec<PodSpec> = manifests::documents(text)?
            .iter()
            .flat_map(manifests::pods)
            .collect();
        let attempts = Arc::new(Attempts::default());
        let (mut pods, mut echoes) = (vec![], vec![]);
        for spec in specs {
            let Some(w) = mesh.workload(&spec.namespace, &spec.name) else {
                continue; // no IP: not running
            };
            if !spec.gateway_pod {
                for &port in &spec.ports {
                    let addr = SocketAddr::new(w.ip, rewrite.ports[&port]);
                    let identity = EchoIdentity {
                        service: spec.app.clone().unwrap_or_else(|| spec.name.clone()),
                        namespace: spec.namespace.clone(),
                        pod: spec.name.clone(),
                        port,
                    };
                    let idle_close = match &spec.idle_close {
                        Some(text) => Some(IdleClose::parse_ms(text).with_context(|| {
                            format!(
                                "pod {}/{}: annotation {}: {text:?} is not \"MIN-MAX\" or \"MS\"",
                                spec.namespace,
                                spec.name,
                                manifests::IDLE_CLOSE_ANNOTATION
                            )
                        })?),
                        None => opts.echo_idle_close,
                    };
                    let options = EchoOptions { idle_close };
                    let echo = EchoServer::start_with(addr, identity, attempts.clone(), options)
                        .await
                        .with_context(|| format!("echo of {}/{} on {addr}", w.namespace, w.name))?;
                    echoes.push(echo);
                }
            }
            let node = w.node.clone().unwrap_or_else(|| UNSCHEDULED_NODE.into());
            pods.push(Pod {
                spec,
                ip: w.ip,
                node,
            });
        }

        // One ztunnel per node, speaking for its (non-gateway) pods.
        let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in pods.iter().filter(|p| !p.spec.gateway_pod) {
            let name = format!("{}/{}", p.spec.namespace, p.spec.name);
            by_node.entry(p.node.clone()).or_default().push(name);
        }
        let mut nodes = BTreeMap::new();
        for (node, workloads) in by_node {
            let cfg = NodeConfig {
                manifests: manifests_dir.clone(),
                certs_dir: certs_dir.clone(),
                trust_domain: td.to_string(),
                node: None,
                workloads,
                hbone_port: rewrite.hbone_port,
                socks5: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)),
                socks5_default_workload: opts.default_workload.clone(),
                redirect: None,
            };
            let z = Ztunnel::start(cfg)
                .await
                .with_context(|| format!("starting ztunnel {node}"))?;
            nodes.insert(node, z);
        }

        // One waypoint per waypoint Gateway with an address.
        let mut waypoints = BTreeMap::new();
        for wp in &mesh.waypoints {
            let name = format!("{}/{}", wp.namespace, wp.name);
            let Some(listen) = wp.addr else {
                bail!(
                    "waypoint Gateway {name} has no address (status.addresses or spec.addresses)"
                );
            };
            let id = wp.identity(td);
            let certs = CertStore::load(&mesh::devca::workload_paths(&certs_dir, &id))?;
            let cfg = WaypointConfig {
                gateway: GatewayRef {
                    namespace: wp.namespace.clone(),
                    name: wp.name.clone(),
                },
                manifests: manifests_dir.clone(),
                trust_domain: td.to_string(),
                listen,
                hbone_port: rewrite.hbone_port,
                admin: None,
                mesh_config: opts.mesh_config.clone(),
            };
            let w = Waypoint::start(cfg, certs)
                .await
                .with_context(|| format!("starting waypoint {name}"))?;
            waypoints.insert(name, w);
        }
        Ok(Testbed {
            dir,
            manifests_dir,
            certs_dir,
            ca,
            rewrite,
            attempts,
            pods,
            echoes,
            nodes,
            waypoints,
        })
    }

    fn pod(&self, pod: &str) -> &Pod {
        let found = self
            .pods
            .iter()
            .find(|p| p.spec.name == pod || format!("{}/{}", p.spec.namespace, p.spec.name) == pod);
        found.unwrap_or_else(|| panic!("no running pod {pod:?}"))
    }

    /// A client in `pod` (`name` or `namespace/name`). Panics when there is no such running pod.
    pub fn client(&self, pod: &str) -> Client {
        let p = self.pod(pod);
        let socks = self.nodes[&p.node]
            .socks5_addr()
            .expect("every testbed node has a SOCKS5 entry");
        Client {
            socks,
            source_ip: p.ip,
            rewrite: self.rewrite.clone(),
        }
    }

    /// The echo instances of `pod` (`name` or `namespace/name`), one per container port.
    pub fn echoes_of(&self, pod: &str) -> Vec<&EchoServer> {
        let p = self.pod(pod);
        self.echoes
            .iter()
            .filter(|e| {
                e.identity().pod == p.spec.name && e.identity().namespace == p.spec.namespace
            })
            .collect()
    }

    /// The (first) echo instance of `pod`. Panics when it runs none.
    pub fn echo(&self, pod: &str) -> &EchoServer {
        self.echoes_of(pod)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("pod {pod:?} has no container port, so no echo"))
    }

    pub fn echoes(&self) -> &[EchoServer] {
        &self.echoes
    }

    /// Attempts of request id `id` over every echo.
    pub fn attempts(&self, id: &str) -> u64 {
        self.attempts.get(id)
    }

    /// An address as written (`127.0.0.x`) → as running.
    pub fn ip(&self, written: &str) -> IpAddr {
        self.rewrite
            .host(written)
            .parse()
            .unwrap_or_else(|_| panic!("{written:?} is not an IP"))
    }

    pub fn rewrite(&self) -> &Rewrite {
        &self.rewrite
    }

    /// The waypoint of Gateway `namespace/name`.
    pub fn waypoint(&self, gateway: &str) -> &Waypoint {
        &self.waypoints[gateway]
    }

    pub fn waypoints(&self) -> impl Iterator<Item = (&str, &Waypoint)> {
        self.waypoints.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The ztunnel of node `name`.
    pub fn node(&self, name: &str) -> &Ztunnel {
        &self.nodes[name]
    }

    /// The manifests file every component watches.
    pub fn manifests_file(&self) -> PathBuf {
        self.manifests_dir.join("mesh.yaml")
    }

    /// Replaces the manifests with `text` (rewritten like at start), atomically. Returns at once.
    pub fn write_manifests(&self, text: &str) -> anyhow::Result<()> {
        Ok(write_atomic(
            &self.manifests_file(),
            &self.rewrite.manifests(text)?,
        )?)
    }

    /// [`Testbed::write_manifests`], then waits until every waypoint and ztunnel installed it; fails with the
    /// waypoint's error when it rejected the change, or after [`APPLY_PATIENCE`].
    pub async fn apply(&self, text: &str) -> anyhow::Result<()> {
        let gens = self.generations();
        let errors: Vec<_> = self
            .waypoints
            .values()
            .map(|w| w.live().last_error())
            .collect();
        self.write_manifests(text)?;
        let deadline = Instant::now() + APPLY_PATIENCE;
        loop {
            let now = self.generations();
            if now.iter().zip(&gens).all(|(n, g)| n > g) {
                return Ok(());
            }
            for ((name, w), before) in self.waypoints.iter().zip(&errors) {
                match w.live().last_error() {
                    Some(e) if Some(&e) != before.as_ref() => {
                        bail!("waypoint {name} rejected the manifests: {e}")
                    }
                    _ => {}
                }
            }
            if Instant::now() > deadline {
                bail!("the manifests were not installed within {APPLY_PATIENCE:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn generations(&self) -> Vec<u64> {
        let w = self.waypoints.values().map(|w| w.live().generation());
        w.chain(self.nodes.values().map(Ztunnel::config_generation))
            .collect()
    }

    /// Stops the waypoints (each drains its in-flight requests), then the node proxies; echoes stop on drop.
    pub async fn shutdown(self) {
        for w in self.waypoints.into_values() {
            w.shutdown(Duration::from_secs(2)).await;
        }
        for z in self.nodes.into_values() {
            z.shutdown().await;
        }
    }
}

fn is_addr_in_use(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
    })
}

/// The ways out of a waypoint `default/waypoint` with a fresh dev CA's certificate (nothing is dialled until a
/// try connects): for unit tests and benches that build peers or open direct-path connections.
pub fn dev_ways() -> crate::upstream::Ways {
    let ca = mesh::devca::DevCa::generate("cluster.local").expect("a dev CA");
    let id = mesh::identity::Identity::new("cluster.local", "default", "waypoint");
    let certs = mesh::identity::CertStore::new(ca.certs_for(&id).expect("a dev certificate"));
    crate::upstream::Ways {
        relay: "/run/waypoint/relay.sock".into(),
        direct: crate::upstream::direct::Upstreams::new(
            mesh::hbone::Pool::new(Default::default()),
            certs,
        ),
    }
}

/// The value of one sample in a Prometheus text exposition: `series` is the name with its labels as written
/// (`waypoint_outlier_ejections_total`, `waypoint_response_flags_total{response_flags="UO"}`).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

/// Polls `f` until it is true or `patience` runs out; returns the last verdict.
pub async fn eventually(patience: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}
