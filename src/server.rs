//! One waypoint instance, wired: config (watched, compiled, hot-swapped), certificates (watched), the HBONE
//! listener, Pingora's HTTP proxy, the upstream HBONE pool, the direct path and the h2c relay, and the
//! operations endpoints (readiness on 15021, Prometheus on 15020, admin on loopback 15000).
//!
//! Drain ([`Waypoint::drain`], what SIGTERM runs): readiness turns 503; the HBONE listener accepts what the
//! kernel queued and closes (with `SO_REUSEPORT` a new instance on the same address takes every new
//! connection); every HBONE connection gets a graceful GOAWAY; inside the tunnels Pingora answers each next
//! HTTP/1.1 request with `Connection: close` (h2c: GOAWAY). In-flight requests finish; at 80% of the drain
//! timeout idle keep-alive connections are closed; at the timeout whatever is left is cut.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mesh::config::{GatewayRef, Live, Mesh};
use mesh::hbone::{self, Pool, PoolOptions, PoolStats, ServerOptions};
use mesh::identity::CertStore;
use mesh::ops::{LogControl, Readiness};
use pingora::apps::{HttpServerOptions, ServerApp as _};
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

use crate::admin::AdminState;
use crate::downstream::Inbound;
use crate::mirror::Mirrors;
use crate::proxy::{Stats, WaypointProxy};
use crate::snapshot::{Snapshot, WaypointSpec};
use crate::source::{self, ConfigSource, KubeGuard, Loaded, SourceGuard};
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
    /// The mesh config file (Istio `MeshConfig`, or the `istio` ConfigMap): the CUSTOM authorization
    /// providers (`extensionProviders[].envoyExtAuthzGrpc`).
    pub mesh_config: Option<PathBuf>,
}

/// The operations side of a waypoint ([`Waypoint::start_with`]); the default serves no ops port and binds the
/// HBONE listener with `SO_REUSEPORT`.
#[derive(Clone, Debug)]
pub struct Ops {
    /// `GET /healthz/ready` (15021), when wanted.
    pub readiness: Option<SocketAddr>,
    /// Prometheus text on `/stats/prometheus` and `/metrics` (15020), when wanted.
    pub stats: Option<SocketAddr>,
    /// Bind the HBONE listener with `SO_REUSEPORT`, so a new instance can take the address while this one drains.
    pub reuse_port: bool,
    /// The process's log filter, for the admin port's `/logging`.
    pub log: Option<LogControl>,
    /// The Istio-format access log to stdout (`None`: off).
    pub access_log: Option<crate::telemetry::LogFormat>,
    /// OTLP/gRPC trace export (`None`: no tracing).
    pub tracing: Option<crate::telemetry::TracingConfig>,
}

impl Default for Ops {
    fn default() -> Self {
        Ops {
            readiness: None,
            stats: None,
            reuse_port: true,
            log: None,
            access_log: None,
            tracing: None,
        }
    }
}

/// Idle keep-alive connections are closed at this share of the drain timeout (busy ones close sooner, after
/// their next response).
const IDLE_CLOSE_AT: f64 = 0.8;

/// A running waypoint. Dropping it stops every task it started.
pub struct Waypoint {
    addr: SocketAddr,
    live: Arc<Live<Snapshot>>,
    pool: Pool,
    stats: Arc<Stats>,
    mirrors: Arc<Mirrors>,
    readiness: Readiness,
    app: Arc<HttpProxy<WaypointProxy>>,
    /// Admin, readiness and stats servers: (address, task).
    admin: Option<(SocketAddr, JoinHandle<()>)>,
    readiness_server: Option<(SocketAddr, JoinHandle<()>)>,
    stats_server: Option<(SocketAddr, JoinHandle<()>)>,
    shutdown: watch::Sender<bool>,
    /// Turns true once the HBONE server returned (every connection drained).
    drained: watch::Receiver<bool>,
    serve: AbortHandle,
    relay: Relay,
    direct: crate::upstream::direct::Upstreams,
    source: SourceGuard,
    /// What the admin and stats ports read.
    metrics: Arc<AdminState>,
}

impl Waypoint {
    /// [`Waypoint::start_with`] without ops ports.
    pub async fn start(cfg: WaypointConfig, certs: CertStore) -> anyhow::Result<Waypoint> {
        Self::start_with(cfg, certs, Ops::default()).await
    }

    /// Loads and compiles the config (failing on a bad one: there is no last good config yet), binds the
    /// listeners and starts serving. `certs` is this waypoint's identity (watch it separately to rotate).
    /// Readiness is bound first, so a probe sees 503 until the config is loaded and the HBONE listener is up.
    /// The config comes from `cfg.manifests`; [`Waypoint::start_from`] takes another source.
    pub async fn start_with(
        cfg: WaypointConfig,
        certs: CertStore,
        ops: Ops,
    ) -> anyhow::Result<Waypoint> {
        let source = ConfigSource::Dir(cfg.manifests.clone());
        Self::start_from(cfg, source, certs, ops).await
    }

    /// [`Waypoint::start_with`] with the config from `source` (`cfg.manifests` is then unused): a folder, or
    /// the API server — readiness then waits for every initial list and the first compile, and route and
    /// Gateway status are written back after each swap ([`crate::source`]).
    pub async fn start_from(
        cfg: WaypointConfig,
        source: ConfigSource,
        certs: CertStore,
        ops: Ops,
    ) -> anyhow::Result<Waypoint> {
        let readiness = Readiness::default();
        let readiness_server = match ops.readiness {
            Some(addr) => Some(spawn_server(addr, "readiness", |l| {
                mesh::ops::serve_readiness(l, readiness.clone())
            })?),
            None => None,
        };
        readiness.certs_loaded();
        let spec = WaypointSpec {
            gateway: cfg.gateway.clone(),
            hbone_port: cfg.hbone_port,
        };
        let telemetry = Arc::new(crate::telemetry::Telemetry::new(
            &crate::telemetry::TelemetryConfig {
                access_log: ops.access_log,
                ..Default::default()
            },
        )?);
        let tracer = match &ops.tracing {
            Some(t) => {
                Some(crate::telemetry::Tracer::new(t).context("starting the trace exporter")?)
            }
            None => None,
        };
        let Loaded { live, mesh, guard } = source::load(
            source,
            &spec,
            &cfg.trust_domain,
            cfg.listen,
            Some(telemetry.clone()),
        )
        .await?;
        readiness.config_loaded();

        let ext_authz = match &cfg.mesh_config {
            Some(path) => Some(Arc::new(ext_providers(path, &mesh)?)),
            None => None,
        };
        drop(mesh);
        let pool = Pool::new(PoolOptions::default());
        let relay =
            Relay::start(pool.clone(), certs.clone()).context("starting the HBONE relay")?;
        let stats = Arc::new(Stats::default());
        let direct = crate::upstream::direct::Upstreams::new(pool.clone(), certs.clone());
        let ways = crate::upstream::Ways {
            relay: relay.path().to_path_buf(),
            direct: direct.clone(),
        };
        let mirrors = Arc::new(Mirrors::new(direct.clone()));
        let authz_stats: Arc<crate::proxy::authorize::AuthzStats> = Arc::default();
        let proxy = WaypointProxy {
            live: live.clone(),
            ways,
            identity: certs.identity(),
            stats: stats.clone(),
            mirrors: mirrors.clone(),
            ext_authz,
            authz_stats: authz_stats.clone(),
            observer: Some(Arc::new(crate::proxy::observe::Observer::new(
                telemetry.clone(),
                tracer,
            ))),
        };
        let state = Arc::new(AdminState {
            authz: Some(authz_stats.clone()),
            telemetry: Some(telemetry.clone()),
            live: live.clone(),
            stats: stats.clone(),
            mirrors: mirrors.stats.clone(),
            pool: pool.clone(),
            direct: direct.clone(),
            readiness: readiness.clone(),
            log: ops.log.clone(),
        });
        let admin = match cfg.admin {
            Some(addr) => {
                let listener = crate::admin::bind(addr)
                    .await
                    .with_context(|| format!("binding admin {addr}"))?;
                let admin_addr = listener.local_addr()?;
                Some((admin_addr, crate::admin::serve(listener, state.clone())))
            }
            None => None,
        };
        let stats_server = match ops.stats {
            Some(addr) => Some(spawn_server(addr, "stats", |l| {
                mesh::ops::serve_metrics(l, crate::admin::metrics(state.clone()))
            })?),
            None => None,
        };
        let conf = Arc::new(ServerConf::default());
        let mut app = pingora::proxy::http_proxy(&conf, proxy);
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        app.server_options = Some(options);
        let app = Arc::new(app);

        let (shutdown, shutdown_rx) = watch::channel(false);
        let inbound = Arc::new(Inbound {
            app: app.clone(),
            live: live.clone(),
            shutdown: shutdown_rx.clone(),
        });
        let listener = mesh::ops::bind(cfg.listen, ops.reuse_port)
            .with_context(|| format!("binding {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        let (drained_tx, drained) = watch::channel(false);
        let serve = tokio::spawn(async move {
            hbone::serve(
                listener,
                certs,
                inbound,
                ServerOptions::default(),
                shutdown_rx,
            )
            .await;
            drained_tx.send_replace(true);
        });
        readiness.listening();
        tracing::info!(%addr, gateway = ?cfg.gateway, services = live.load().services.len(), "waypoint listening");
        Ok(Waypoint {
            addr,
            live,
            pool,
            stats,
            mirrors,
            readiness,
            app,
            admin,
            readiness_server,
            stats_server,
            shutdown,
            drained,
            serve: serve.abort_handle(),
            relay,
            direct,
            source: guard,
            metrics: state,
        })
    }

    /// The HBONE listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn live(&self) -> &Arc<Live<Snapshot>> {
        &self.live
    }
    /// The API-server source (watch state, leadership), when the config comes from it.
    pub fn kube(&self) -> Option<&KubeGuard> {
        match &self.source {
            SourceGuard::Kube(k) => Some(k),
            SourceGuard::Dir(_) | SourceGuard::Push(_) => None,
        }
    }
    /// Outbound HBONE pool counters (outer connections and CONNECT streams opened).
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
    /// Every metric in the Prometheus text format, as the stats port serves it ([`crate::admin::render_metrics`]).
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        crate::admin::render_metrics(&self.metrics, &mut out);
        out
    }
    /// Mirror counters (copies sent, dropped, failed).
    pub fn mirror_stats(&self) -> &Arc<crate::mirror::MirrorStats> {
        &self.mirrors.stats
    }
    /// The admin endpoint's address, when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(a, _)| *a)
    }
    /// The readiness endpoint's address, when enabled.
    pub fn readiness_addr(&self) -> Option<SocketAddr> {
        self.readiness_server.as_ref().map(|(a, _)| *a)
    }
    /// The Prometheus endpoint's address, when enabled.
    pub fn stats_addr(&self) -> Option<SocketAddr> {
        self.stats_server.as_ref().map(|(a, _)| *a)
    }
    /// What `/healthz/ready` answers.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Drains (see the module doc): returns once every HBONE connection has ended (true) or `timeout` passed
    /// and the rest were cut (false). What SIGTERM runs; calling it again just waits again.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.readiness.draining();
        self.shutdown.send_replace(true);
        tracing::info!(addr = %self.addr, ?timeout, "draining");
        let idle_close = timeout.mul_f64(IDLE_CLOSE_AT);
        let mut finished = self.wait_drained(idle_close).await;
        if !finished {
            // Wake the keep-alive connections parked waiting for a next request: they close now.
            self.app.cleanup().await;
            finished = self.wait_drained(timeout.saturating_sub(idle_close)).await;
        }
        if !finished {
            tracing::warn!(addr = %self.addr, "drain timeout; cutting the remaining connections");
            self.serve.abort();
        }
        // No request is in flight any more: end the pooled upstream streams so destinations see a clean close.
        self.relay.close_streams();
        self.direct.close_idle();
        finished
    }

    async fn wait_drained(&self, within: Duration) -> bool {
        let mut drained = self.drained.clone();
        tokio::time::timeout(within, drained.wait_for(|d| *d))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// [`Waypoint::drain`], then stops every task.
    pub async fn shutdown(self, deadline: Duration) {
        self.drain(deadline).await;
    }
}

impl Drop for Waypoint {
    fn drop(&mut self) {
        self.serve.abort();
        for (_, task) in [&self.admin, &self.readiness_server, &self.stats_server]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

/// Binds `addr` and starts `serve` on it (an ops endpoint).
fn spawn_server(
    addr: SocketAddr,
    what: &str,
    serve: impl FnOnce(tokio::net::TcpListener) -> JoinHandle<()>,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener =
        mesh::ops::bind(addr, false).with_context(|| format!("binding {what} on {addr}"))?;
    let bound = listener.local_addr()?;
    Ok((bound, serve(listener)))
}

/// The CUSTOM providers of the mesh config at `path`. A provider's `service` is an IP, or a Service host name
/// (`name.namespace.svc.cluster.local`) resolved to its first endpoint in the manifests (plain TCP: the
/// authorizer is reached directly, as a sidecar-less local service would be).
fn ext_providers(path: &std::path::Path, mesh: &Mesh) -> anyhow::Result<authz::ext::Providers> {
    use authz::ext::{parse_mesh_config, Limits, Providers, ServiceRef};
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the mesh config {}", path.display()))?;
    let config =
        parse_mesh_config(&text).with_context(|| format!("mesh config {}", path.display()))?;
    let mut endpoints: std::collections::HashMap<(String, u16), SocketAddr> = Default::default();
    for p in &config.providers {
        let ServiceRef { host, .. } = &p.service;
        if let Some(svc) = mesh.service_by_hostname(host) {
            if let Some(ep) = mesh.endpoints(svc, p.port).first() {
                endpoints.insert((host.clone(), p.port), ep.addr);
            }
        }
    }
    let resolve = move |s: &ServiceRef, port: u16| endpoints.get(&(s.host.clone(), port)).copied();
    Providers::new(config, Arc::new(resolve), Limits::default())
        .with_context(|| format!("mesh config {}", path.display()))
}
