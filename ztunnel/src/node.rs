//! Assembly of a running node proxy: load the manifests and the local workloads' certificates, bind every
//! listener, spawn the accept loops, and shut them down gracefully.
//!
//! Readiness ([`crate::ops`]) is 200 once the config and certificates are loaded and every listener is bound,
//! 503 before and from the moment a drain begins. A drain ([`Ztunnel::drain`], what SIGTERM runs) stops the
//! accept loops (inbound HBONE listeners accept what the kernel queued, close, then GOAWAY every connection),
//! lets in-flight connections finish until the drain timeout, and cuts the rest.
//!
//! Listeners are bound once, at start, for the local workloads known then: a workload that becomes local later
//! (a new pod on the node) needs a restart to get its inbound listener and its certificate. Everything else
//! (services, endpoints, waypoints, remote workloads) follows the manifests directory live.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use mesh::config::Live;
use mesh::devca::workload_paths;
use mesh::hbone::{Pool, PoolOptions, ServerOptions};
use mesh::identity::{self, CertStore};
use mesh::ops::Readiness;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::drain::Drain;
use crate::inbound::InboundHandler;
use crate::ops::{Ops, OpsState, Servers};
use crate::outbound::{CertSet, Outbound};
use crate::source::{ConfigGuard, NodeSource};
use crate::stats::{Counters, Stats};
use crate::view::{NodeSpec, NodeView, WorkloadRef};
use crate::{redirect, socks5};

/// How long in-flight connections may run on after [`Ztunnel::shutdown`] before they are cut (Istio's default
/// `terminationDrainDuration`).
pub const SHUTDOWN_GRACE: Duration = mesh::ops::DEFAULT_DRAIN_TIMEOUT;

/// Quiet time before a manifests change is reloaded.
pub const CONFIG_DEBOUNCE: Duration = Duration::from_millis(100);

/// What a node proxy serves.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Manifests directory (watched, hot-swapped).
    pub manifests: PathBuf,
    /// Certificates directory in the `mesh::devca` layout; each local workload's certificate is loaded (and
    /// watched) from `<dir>/<ns>/<sa>/{cert,key}.pem` with `<dir>/ca.pem`.
    pub certs_dir: PathBuf,
    pub trust_domain: String,
    /// Local workloads are the pods with `spec.nodeName` equal to this ...
    pub node: Option<String>,
    /// ... and/or these `namespace/name`s.
    pub workloads: Vec<String>,
    /// Inbound HBONE listener port on each local workload IP; also the port dialled on remote pods.
    pub hbone_port: u16,
    /// SOCKS5 listener (port 0 allowed; see [`Ztunnel::socks5_addr`]).
    pub socks5: Option<SocketAddr>,
    /// `namespace/name` of the source workload for SOCKS clients whose IP is not a local workload.
    pub socks5_default_workload: Option<String>,
    /// iptables `REDIRECT` capture listener.
    pub redirect: Option<SocketAddr>,
}

/// A running node proxy.
pub struct Ztunnel {
    socks5: Option<SocketAddr>,
    redirect: Option<SocketAddr>,
    inbound: Vec<SocketAddr>,
    live: Arc<Live<NodeView>>,
    counters: Arc<Counters>,
    pool: Pool,
    drain: Drain,
    readiness: Readiness,
    servers: Servers,
    tasks: Vec<JoinHandle<()>>,
    _config_watch: ConfigGuard,
    _cert_watches: Vec<identity::WatchGuard>,
}

impl Ztunnel {
    /// [`Ztunnel::start_with`] without ops ports.
    pub async fn start(cfg: NodeConfig) -> anyhow::Result<Ztunnel> {
        Self::start_with(cfg, Ops::default()).await
    }

    /// Loads the config and certificates, binds every listener and returns once they are all listening.
    /// The readiness port is bound first and turns 200 at the end. The config comes from `cfg.manifests`;
    /// [`Ztunnel::start_from`] takes another source.
    pub async fn start_with(cfg: NodeConfig, ops: Ops) -> anyhow::Result<Ztunnel> {
        let source = NodeSource::Dir(cfg.manifests.clone());
        Self::start_from(cfg, source, ops).await
    }

    /// [`Ztunnel::start_with`] with the config from `source` (`cfg.manifests` is then unused); from the API
    /// server, readiness waits for every initial list.
    pub async fn start_from(
        cfg: NodeConfig,
        source: NodeSource,
        ops: Ops,
    ) -> anyhow::Result<Ztunnel> {
        let readiness = Readiness::default();
        let mut servers = crate::ops::start_readiness(&ops, &readiness).await?;
        // Config: the manifests (or API objects) as this node sees them, live from here on.
        let spec = node_spec(&cfg)?;
        let (live, config_watch) =
            crate::source::load(source, &cfg.trust_domain, spec.clone()).await?;
        let view = live.load();
        check_spec(&view, &spec)?;
        readiness.config_loaded();
        // Certificates of the workloads we speak for.
        let (certs, cert_watches) = load_certs(&view, &cfg)?;
        readiness.certs_loaded();
        // Listeners: all bound before anything is spawned, so a failure leaves nothing running.
        let listeners = Listeners::bind(&view, &certs, &cfg, ops.reuse_port).await?;
        let own = listeners.addrs();
        // Serve.
        let counters = Arc::new(Counters::default());
        let pool = Pool::new(PoolOptions::default());
        let drain = Drain::default();
        let outbound = Arc::new(Outbound {
            live: live.clone(),
            certs: Arc::new(certs),
            pool: pool.clone(),
            counters: counters.clone(),
            own,
        });
        let handler = Arc::new(InboundHandler {
            live: live.clone(),
            counters: counters.clone(),
            drain: drain.clone(),
        });
        let (inbound, socks5, redirect) = (
            listeners.inbound_addrs(),
            listeners.socks5.as_ref().map(addr_of),
            listeners.redirect.as_ref().map(addr_of),
        );
        let tasks = listeners.spawn(&outbound, &handler, &drain);
        let state = Arc::new(OpsState {
            live: live.clone(),
            counters: counters.clone(),
            pool: pool.clone(),
            readiness: readiness.clone(),
            log: ops.log.clone(),
        });
        crate::ops::start_rest(&mut servers, &ops, state).await?;
        readiness.listening();
        tracing::info!(?inbound, ?socks5, ?redirect, "ztunnel listening");
        Ok(Ztunnel {
            socks5,
            redirect,
            inbound,
            live,
            counters,
            pool,
            drain,
            readiness,
            servers,
            tasks,
            _config_watch: config_watch,
            _cert_watches: cert_watches,
        })
    }

    /// The SOCKS5 listener's address (with the real port when configured with port 0).
    pub fn socks5_addr(&self) -> Option<SocketAddr> {
        self.socks5
    }

    /// The redirect listener's address.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect
    }

    /// The inbound HBONE listeners (one per local workload IP).
    pub fn inbound_addrs(&self) -> &[SocketAddr] {
        &self.inbound
    }

    /// The current compiled config snapshot.
    pub fn view(&self) -> Arc<NodeView> {
        self.live.load()
    }

    /// How many config snapshots were installed (1 at start; +1 per accepted manifests change).
    pub fn config_generation(&self) -> u64 {
        self.live.generation()
    }

    pub fn stats(&self) -> Stats {
        self.counters.snapshot(self.pool.stats())
    }

    /// What `/healthz/ready` answers.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The address of ops server `what` (`"readiness"`, `"stats"`, `"admin"`), when enabled.
    pub fn ops_addr(&self, what: &str) -> Option<SocketAddr> {
        self.servers.addr(what)
    }

    /// Drains (see the module doc): true when every connection finished within `timeout`.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.readiness.draining();
        let finished = self.drain.shutdown(timeout).await;
        if !finished {
            tracing::warn!(
                remaining = self.drain.active(),
                "drain timeout elapsed; cutting connections"
            );
        }
        finished
    }

    /// [`Ztunnel::shutdown_within`] [`SHUTDOWN_GRACE`].
    pub async fn shutdown(self) {
        self.shutdown_within(SHUTDOWN_GRACE).await;
    }

    /// Drains for up to `timeout`, then stops every task.
    pub async fn shutdown_within(self, timeout: Duration) {
        self.drain(timeout).await;
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        tracing::info!("ztunnel stopped");
    }
}

fn node_spec(cfg: &NodeConfig) -> anyhow::Result<NodeSpec> {
    if cfg.hbone_port == 0 {
        bail!("the HBONE port must be a fixed port: remote ztunnels dial it");
    }
    let workloads = cfg
        .workloads
        .iter()
        .map(|w| w.parse::<WorkloadRef>())
        .collect::<Result<Vec<_>, _>>()?;
    let default_workload = cfg
        .socks5_default_workload
        .as_deref()
        .map(str::parse)
        .transpose()?;
    Ok(NodeSpec {
        trust_domain: cfg.trust_domain.clone(),
        node: cfg.node.clone(),
        workloads,
        default_workload,
        hbone_port: cfg.hbone_port,
    })
}

/// Named workloads must exist at start (later they may go away: the view just stops treating them as local).
fn check_spec(view: &NodeView, spec: &NodeSpec) -> anyhow::Result<()> {
    for r in spec.workloads.iter().chain(spec.default_workload.iter()) {
        if view.find(r).is_none() {
            bail!("workload {r} is not in the manifests");
        }
    }
    if view.local_workloads().next().is_none() && view.default_source().is_none() {
        tracing::warn!(
            "no local workloads and no default workload: every outbound connection will be refused"
        );
    }
    Ok(())
}

/// Loads (and watches) the certificate of every local workload and of the default workload.
fn load_certs(
    view: &NodeView,
    cfg: &NodeConfig,
) -> anyhow::Result<(CertSet, Vec<identity::WatchGuard>)> {
    let mut certs = CertSet::new();
    let mut guards = vec![];
    for w in view.local_workloads().chain(view.default_source()) {
        let id = w.identity(view.trust_domain());
        if certs.contains_key(&id) {
            continue;
        }
        let paths = workload_paths(&cfg.certs_dir, &id);
        let store = CertStore::load(&paths)
            .with_context(|| format!("certificate of {id} ({})", paths.cert.display()))?;
        if store.identity() != id {
            bail!(
                "{} holds a certificate for {}, not {id}",
                paths.cert.display(),
                store.identity()
            );
        }
        guards.push(store.watch(paths));
        certs.insert(id, store);
    }
    Ok((certs, guards))
}

/// Every listener of the node, bound.
struct Listeners {
    /// One per distinct local workload IP, with that workload's certificate.
    inbound: Vec<(CertStore, TcpListener)>,
    socks5: Option<TcpListener>,
    redirect: Option<TcpListener>,
}

impl Listeners {
    async fn bind(
        view: &NodeView,
        certs: &CertSet,
        cfg: &NodeConfig,
        reuse_port: bool,
    ) -> anyhow::Result<Listeners> {
        let mut seen = BTreeSet::<IpAddr>::new();
        let mut inbound = vec![];
        for w in view.local_workloads() {
            if !seen.insert(w.ip) {
                continue;
            }
            let addr = SocketAddr::new(w.ip, cfg.hbone_port);
            let listener = mesh::ops::bind(addr, reuse_port).with_context(|| {
                format!(
                    "inbound HBONE listener of {}/{} on {addr}",
                    w.namespace, w.name
                )
            })?;
            let id = w.identity(view.trust_domain());
            let store = certs
                .get(&id)
                .with_context(|| format!("no certificate loaded for {id}"))?;
            inbound.push((store.clone(), listener));
        }
        Ok(Listeners {
            inbound,
            socks5: bind_opt(cfg.socks5, "SOCKS5").await?,
            redirect: bind_opt(cfg.redirect, "redirect").await?,
        })
    }

    fn inbound_addrs(&self) -> Vec<SocketAddr> {
        self.inbound.iter().map(|(_, l)| addr_of(l)).collect()
    }

    /// All of them (the self-call guard).
    fn addrs(&self) -> Vec<SocketAddr> {
        let mut all = self.inbound_addrs();
        all.extend(self.socks5.iter().chain(self.redirect.iter()).map(addr_of));
        all
    }

    /// Spawns every accept loop.
    fn spawn(
        self,
        outbound: &Arc<Outbound>,
        handler: &Arc<InboundHandler>,
        drain: &Drain,
    ) -> Vec<JoinHandle<()>> {
        let mut tasks = vec![];
        for (store, listener) in self.inbound {
            let options = ServerOptions::default();
            let serve =
                mesh::hbone::serve(listener, store, handler.clone(), options, drain.stopping());
            tasks.push(tokio::spawn(serve));
        }
        if let Some(l) = self.socks5 {
            tasks.push(tokio::spawn(socks5::run(
                l,
                outbound.clone(),
                drain.clone(),
            )));
        }
        if let Some(l) = self.redirect {
            tasks.push(tokio::spawn(redirect::run(
                l,
                outbound.clone(),
                drain.clone(),
            )));
        }
        tasks
    }
}

fn addr_of(l: &TcpListener) -> SocketAddr {
    l.local_addr().expect("a bound listener has an address")
}

async fn bind_opt(addr: Option<SocketAddr>, what: &str) -> anyhow::Result<Option<TcpListener>> {
    match addr {
        None => Ok(None),
        Some(a) => Ok(Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("{what} listener on {a}"))?,
        )),
    }
}
