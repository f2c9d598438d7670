//! One waypoint instance, wired: config (watched, compiled, hot-swapped), certificates (watched), the HBONE
//! listener, Pingora's HTTP proxy, the upstream HBONE pool and relay.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mesh::config::{watch_dir, GatewayRef, Live, Mesh};
use mesh::hbone::{self, Pool, PoolOptions, PoolStats, ServerOptions};
use mesh::identity::CertStore;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::AdminState;
use crate::downstream::Inbound;
use crate::mirror::Mirrors;
use crate::proxy::{Stats, WaypointProxy};
use crate::resilience::ResilienceState;
use crate::snapshot::{compile_with_state, Snapshot, WaypointSpec};
use crate::upstream::Relay;

/// How to run one waypoint.
#[derive(Clone, Debug)]
pub struct WaypointConfig {
    /// This waypoint's Gateway.
    pub gateway: GatewayRef,
    /// The manifests directory (watched).
    pub manifests: PathBuf,
    pub trust_domain: String,
    /// Where to listen for HBONE (`ip:15008`; port 0 picks one).
    pub listen: SocketAddr,
    /// The HBONE port dialled on endpoints.
    pub hbone_port: u16,
    /// The admin endpoint (loopback only), when wanted.
    pub admin: Option<SocketAddr>,
}

/// A running waypoint.
pub struct Waypoint {
    addr: SocketAddr,
    live: Arc<Live<Snapshot>>,
    pool: Pool,
    stats: Arc<Stats>,
    mirrors: Arc<Mirrors>,
    admin: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    shutdown: watch::Sender<bool>,
    serve: tokio::task::JoinHandle<()>,
    _relay: Relay,
    _watch: mesh::config::live::WatchGuard,
}

impl Waypoint {
    /// Loads and compiles the config (failing on a bad one: there is no last good config yet), binds the
    /// listener and starts serving. `certs` is this waypoint's identity (watch it separately to rotate).
    pub async fn start(cfg: WaypointConfig, certs: CertStore) -> anyhow::Result<Waypoint> {
        let spec = WaypointSpec {
            gateway: cfg.gateway.clone(),
            hbone_port: cfg.hbone_port,
        };
        let mesh = Mesh::load_dir(&cfg.manifests, &cfg.trust_domain)?;
        // Breakers, ejections and balancer load outlive snapshots: every compile attaches the same handles.
        let resilience = Arc::new(ResilienceState::default());
        let live = Arc::new(Live::new(compile_with_state(&mesh, &spec, &resilience)?));
        drop(mesh);
        let watch_spec = spec.clone();
        let watch = watch_dir(
            cfg.manifests.clone(),
            cfg.trust_domain.clone(),
            Duration::from_millis(50),
            live.clone(),
            move |mesh| compile_with_state(mesh, &watch_spec, &resilience),
        );

        let pool = Pool::new(PoolOptions::default());
        let relay =
            Relay::start(pool.clone(), certs.clone()).context("starting the HBONE relay")?;
        let stats = Arc::new(Stats::default());
        let mirrors = Arc::new(Mirrors::new(relay.path().to_path_buf()));
        let proxy = WaypointProxy {
            live: live.clone(),
            relay: relay.path().to_path_buf(),
            identity: certs.identity(),
            stats: stats.clone(),
            mirrors: mirrors.clone(),
        };
        let admin = match cfg.admin {
            Some(addr) => {
                let listener = crate::admin::bind(addr)
                    .await
                    .with_context(|| format!("binding admin {addr}"))?;
                let admin_addr = listener.local_addr()?;
                let state = Arc::new(AdminState {
                    live: live.clone(),
                    stats: stats.clone(),
                    mirrors: mirrors.stats.clone(),
                    pool: pool.clone(),
                });
                Some((
                    admin_addr,
                    tokio::spawn(crate::admin::serve(listener, state)),
                ))
            }
            None => None,
        };
        let conf = Arc::new(ServerConf::default());
        let mut app = pingora::proxy::http_proxy(&conf, proxy);
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        app.server_options = Some(options);

        let (shutdown, shutdown_rx) = watch::channel(false);
        let inbound = Arc::new(Inbound {
            app: Arc::new(app),
            live: live.clone(),
            shutdown: shutdown_rx.clone(),
        });
        let listener = TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        let serve = tokio::spawn(hbone::serve(
            listener,
            certs,
            inbound,
            ServerOptions::default(),
            shutdown_rx,
        ));
        tracing::info!(%addr, gateway = ?cfg.gateway, services = live.load().services.len(), "waypoint listening");
        Ok(Waypoint {
            addr,
            live,
            pool,
            stats,
            mirrors,
            admin,
            shutdown,
            serve,
            _relay: relay,
            _watch: watch,
        })
    }

    /// The HBONE listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn live(&self) -> &Arc<Live<Snapshot>> {
        &self.live
    }
    /// Outbound HBONE pool counters (outer connections and CONNECT streams opened).
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
    /// Mirror counters (copies sent, dropped, failed).
    pub fn mirror_stats(&self) -> &Arc<crate::mirror::MirrorStats> {
        &self.mirrors.stats
    }
    /// The admin endpoint's address, when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(a, _)| *a)
    }

    /// Stops accepting, sends GOAWAY, and waits (at most `deadline`) for in-flight streams.
    pub async fn shutdown(self, deadline: Duration) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(deadline, self.serve).await;
        // In-flight requests are done: end the pooled upstream streams so destinations see a clean close.
        self._relay.close_streams();
        if let Some((_, task)) = self.admin {
            task.abort();
        }
    }
}
