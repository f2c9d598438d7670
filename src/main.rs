//! The `waypoint` binary: `run` a waypoint, `demo` a whole mesh on loopback, `certs` for a development CA,
//! `check` a manifests directory's routes (their status, as a Gateway API controller would write it),
//! `explain` what a waypoint would do with one request (`waypoint::explain`).
//!
//! Every flag of `run` is also an environment variable (`--help`, `docs/flags.md`). `run` serves until
//! SIGTERM/SIGINT, then drains (`waypoint::server::Waypoint::drain`) for up to `--drain-timeout` and exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mesh::config::{GatewayRef, DEFAULT_TRUST_DOMAIN};
use mesh::identity::{CertPaths, CertStore, Identity};
use mesh::ops::{AddrOrOff, LogControl};
use waypoint::demo::client::Proto;
use waypoint::server::{Ops, Waypoint, WaypointConfig};
use waypoint::source::{ConfigSource, KubeSource};

mesh::global_allocator!();

#[derive(Parser)]
#[command(version, about = "The L7 waypoint of an ambient service mesh")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a complete demo mesh on loopback and send traffic through it.
    Demo {
        /// Exit after this many requests (else keep the mesh up and print a curl line).
        #[arg(long)]
        requests: Option<usize>,
        /// Concurrent client keep-alive connections.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Speak h2c (instead of HTTP/1.1) inside the mesh.
        #[arg(long)]
        h2c: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a waypoint.
    Run(Box<RunArgs>),
    /// Run a push control plane: watch a manifests folder or the API server once and stream to each subscribed
    /// proxy (`--source push`) only its share of the mesh, over mutual TLS (`docs/push.md`).
    ControlPlane(Box<waypoint::control_plane::ControlPlaneArgs>),
    /// Deploy a waypoint for each `istio-waypoint` Gateway (`docs/controller.md`).
    Controller(waypoint_controller::ControllerArgs),
    /// Print every route's status per parent (Accepted, ResolvedRefs); exit 1 when any is False, 2 when the
    /// manifests do not load.
    Check {
        #[arg(long)]
        manifests: PathBuf,
        /// Judge as this waypoint only (`namespace/name`); default: every waypoint in the manifests.
        #[arg(long)]
        gateway: Option<String>,
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Explain what a waypoint would do with one request (route, backends, filters, timeouts, retries,
    /// DestinationRule, authorization verdict), from manifests compiled here or a running waypoint's admin
    /// endpoint; exit 2 when it cannot be explained.
    Explain(Box<ExplainArgs>),
    /// Create a development CA (if absent) and certificates for the given identities (`ns/sa`).
    Certs {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Identities as `namespace/service-account`.
        identities: Vec<String>,
    },
    /// Manage waypoints on a cluster: `generate`, `apply`, `enroll`, `list`, `status`, `delete` (`docs/cli.md`).
    #[command(flatten)]
    Ctl(waypoint::ctl::Command),
}

/// `--source`: where `waypoint run` takes its config from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Source {
    Dir,
    Kube,
    /// A push control plane (`--control-plane`).
    Push,
}

/// The flags of `waypoint explain`.
#[derive(clap::Args)]
struct ExplainArgs {
    /// The caller: `spiffe://td/ns/x/sa/y` or `ns/sa`; omit for an unauthenticated caller.
    #[arg(long)]
    from: Option<String>,
    /// The destination as dialled: `host:port` (service hostname, `name.namespace`, or VIP).
    #[arg(long)]
    to: String,
    #[arg(long, short = 'X', default_value = "GET")]
    method: String,
    /// Path and query.
    #[arg(long, default_value = "/")]
    path: String,
    /// A request header, `name:value` (repeatable).
    #[arg(long = "header", short = 'H', value_parser = waypoint::explain::source::parse_header)]
    headers: Vec<(String, String)>,
    /// The caller's address (for `ipBlocks`); default 0.0.0.0.
    #[arg(long)]
    source_ip: Option<std::net::IpAddr>,
    /// Compile this manifests directory here ...
    #[arg(long, required_unless_present = "admin", conflicts_with = "admin")]
    manifests: Option<PathBuf>,
    /// ... as this waypoint (`namespace/name`).
    #[arg(long, default_value = "default/waypoint")]
    gateway: String,
    /// ... or ask a running waypoint's admin endpoint (`http://127.0.0.1:15000`), against its live config.
    #[arg(long)]
    admin: Option<String>,
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// The flags of `waypoint run`.
#[derive(clap::Args)]
struct RunArgs {
    /// Where the config comes from: `dir` (the `--manifests` folder) or `kube` (the Kubernetes API server).
    #[arg(long, env = "WP_SOURCE", value_enum, default_value_t = Source::Dir)]
    source: Source,
    /// The push control plane, with `--source push`: `https://host:15010` (mutual TLS, this waypoint's
    /// `--cert` as the client certificate) or `http://…` (plaintext, development only).
    #[arg(long, env = "WP_CONTROL_PLANE")]
    control_plane: Option<String>,
    /// The identity the control plane must present over https (default
    /// `spiffe://<td>/ns/istio-system/sa/waypoint-control-plane`).
    #[arg(long, env = "WP_CONTROL_PLANE_IDENTITY")]
    control_plane_identity: Option<String>,
    /// The manifests directory (watched and hot-swapped); required with `--source dir`.
    #[arg(long, env = "WP_MANIFESTS", required_if_eq("source", "dir"))]
    manifests: Option<PathBuf>,
    /// `--source kube`: a kubeconfig file (default: the in-cluster service account, else `$KUBECONFIG`).
    #[arg(long, env = "WP_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// `--source kube`: the API server's URL (overrides the kubeconfig's).
    #[arg(long, env = "WP_API_SERVER")]
    api_server: Option<String>,
    /// `--source kube`: write route and Gateway status only while holding the Lease `<gateway>-waypoint-status`
    /// (identity: `$POD_NAME`, else `$HOSTNAME`); `false`: always write (one replica).
    #[arg(long, env = "WP_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// This waypoint's Gateway, `namespace/name`.
    #[arg(long, env = "WP_GATEWAY", default_value = "default/waypoint")]
    gateway: String,
    /// The HBONE listener (mTLS + HTTP/2 CONNECT).
    #[arg(long, env = "WP_LISTEN", default_value = "0.0.0.0:15008")]
    listen: SocketAddr,
    /// The HBONE port dialled on endpoints.
    #[arg(long, env = "WP_HBONE_PORT", default_value_t = 15008)]
    hbone_port: u16,
    /// SPIFFE trust domain.
    #[arg(long, env = "WP_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// This waypoint's certificate chain (PEM; re-read when the file changes).
    #[arg(long, env = "WP_CERT")]
    cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long, env = "WP_KEY")]
    key: PathBuf,
    /// The trust bundle (PEM).
    #[arg(long, env = "WP_CA")]
    ca: PathBuf,
    /// The admin endpoint (config dump, route status, stats, log level); loopback only. `off` to disable.
    #[arg(long, env = "WP_ADMIN", default_value = "127.0.0.1:15000")]
    admin: AddrOrOff,
    /// Readiness (GET /healthz/ready): 200 once certificates, config and the HBONE listener are up; 503 before
    /// and while draining. `off` to disable.
    #[arg(long, env = "WP_READINESS", default_value = "0.0.0.0:15021")]
    readiness: AddrOrOff,
    /// Prometheus text on /stats/prometheus and /metrics. `off` to disable.
    #[arg(long, env = "WP_STATS", default_value = "0.0.0.0:15020")]
    stats: AddrOrOff,
    /// On SIGTERM/SIGINT, how long in-flight requests may finish before the rest are cut.
    #[arg(long, env = "WP_DRAIN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Bind the HBONE listener with SO_REUSEPORT (a new instance can start on the address while this one drains).
    #[arg(long, env = "WP_REUSE_PORT", default_value_t = true, action = clap::ArgAction::Set)]
    reuse_port: bool,
    /// The mesh config (Istio `MeshConfig` YAML, or the `istio` ConfigMap): the CUSTOM authorization providers
    /// (`extensionProviders[].envoyExtAuthzGrpc`). Unset: a CUSTOM policy denies (fails closed).
    #[arg(long, env = "WP_MESH_CONFIG")]
    mesh_config: Option<PathBuf>,
    /// The access log to stdout, one line per request: Istio's default `text` format, `json` (Istio's keys plus
    /// the deciding authorization policy and retry count), or `off`.
    #[arg(long, env = "WP_ACCESS_LOG", default_value = "text", value_parser = ["text", "json", "off"])]
    access_log: String,
    /// Export trace spans over OTLP/gRPC to this collector (e.g. `http://otel-collector.istio-system:4317`);
    /// unset: no tracing.
    #[arg(long, env = "WP_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Percentage of requests without a sampled parent that start a trace (Istio's default 1%).
    #[arg(long, env = "WP_TRACE_SAMPLING", default_value_t = 1.0)]
    trace_sampling: f64,
    /// Log filter directives (`info`, `warn,waypoint::access=debug`); changeable at runtime with
    /// `POST /logging?level=...` on the admin endpoint.
    #[arg(long, env = "WP_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !matches!(
        cli.cmd,
        Cmd::Run(_) | Cmd::ControlPlane(_) | Cmd::Controller(_)
    ) {
        // `run`, `control-plane` and `controller` install a filter from `--log-level` instead.
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            // Logs on stderr: stdout carries `check --json` / `explain --json` output.
            .with_writer(std::io::stderr)
            .init();
    }
    if let Cmd::Check {
        manifests,
        gateway,
        trust_domain,
        json,
    } = &cli.cmd
    {
        std::process::exit(check(manifests, gateway.as_deref(), trust_domain, *json)?);
    }
    if let Cmd::Explain(args) = &cli.cmd {
        std::process::exit(explain(args));
    }
    let rt = runtime()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Demo {
                requests,
                connections,
                h2c,
                json,
            } => {
                let proto = if h2c { Proto::H2c } else { Proto::Http1 };
                waypoint::demo::run(requests, connections, proto, json).await
            }
            Cmd::Run(args) => run(*args).await,
            Cmd::ControlPlane(args) => waypoint::control_plane::run(*args).await,
            Cmd::Ctl(cmd) => waypoint::ctl::main(cmd).await,
            Cmd::Controller(args) => Ok(waypoint_controller::run(args).await?),
            Cmd::Check { .. } | Cmd::Explain(_) => {
                unreachable!("handled before the runtime starts")
            }
            Cmd::Certs {
                out,
                trust_domain,
                identities,
            } => {
                let ca = match mesh::devca::DevCa::load(&out) {
                    Ok(ca) => ca,
                    Err(_) => {
                        let ca = mesh::devca::DevCa::generate(&trust_domain)?;
                        ca.write_ca(&out)?;
                        ca
                    }
                };
                for id in identities {
                    let (ns, sa) = id.split_once('/').ok_or_else(|| {
                        anyhow::anyhow!("identity {id:?} must be namespace/service-account")
                    })?;
                    let id = Identity::new(ca.trust_domain(), ns, sa);
                    let p = ca.write_workload(&out, &id)?;
                    println!("{id}: {} {}", p.cert.display(), p.key.display());
                }
                println!("trust bundle: {}", out.join("ca.pem").display());
                Ok(())
            }
        }
    })
}

/// The runtime: one worker thread per CPU this process may use (its affinity mask and cgroup quota, as
/// `available_parallelism` reads them); on a single CPU a current-thread runtime, which spares the
/// multi-thread scheduler's cross-thread wake-ups and work-stealing bookkeeping on every task switch (the
/// waypoint of `shared/bench` is pinned to one core). Blocking work (certificate and manifest reads) still goes
/// to the blocking pool.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cpus)
            .enable_all()
            .build()
    }
}

/// `waypoint run`: serves until SIGTERM/SIGINT, then drains.
async fn run(args: RunArgs) -> anyhow::Result<()> {
    let log = LogControl::init(&args.log_level).map_err(|e| anyhow::anyhow!("--log-level: {e}"))?;
    let (namespace, name) = args
        .gateway
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("--gateway must be namespace/name"))?;
    let paths = CertPaths {
        cert: args.cert,
        key: args.key,
        ca: args.ca,
    };
    let certs = CertStore::load(&paths)?;
    let _rotation = certs.watch(paths);
    let cfg = WaypointConfig {
        gateway: GatewayRef {
            namespace: namespace.into(),
            name: name.into(),
        },
        manifests: args.manifests.clone().unwrap_or_default(),
        trust_domain: args.trust_domain,
        listen: args.listen,
        hbone_port: args.hbone_port,
        admin: args.admin.0,
        mesh_config: args.mesh_config.clone(),
    };
    let ops = Ops {
        readiness: args.readiness.0,
        stats: args.stats.0,
        reuse_port: args.reuse_port,
        log: Some(log),
        access_log: match args.access_log.as_str() {
            "json" => Some(waypoint::telemetry::LogFormat::Json),
            "text" => Some(waypoint::telemetry::LogFormat::Text),
            _ => None,
        },
        tracing: args
            .otlp_endpoint
            .clone()
            .map(|endpoint| waypoint::telemetry::TracingConfig {
                endpoint,
                sampling_percent: args.trace_sampling,
                ..Default::default()
            }),
    };
    let source = match (args.source, args.manifests) {
        (Source::Kube, _) => {
            let client = ztunnel::source::kube_client(
                args.kubeconfig.as_deref(),
                args.api_server.as_deref(),
            )
            .await?;
            let mut kube = KubeSource::new(client);
            if args.leader_elect {
                kube.leader_identity = Some(ztunnel::source::pod_identity());
            }
            ConfigSource::Kube(kube)
        }
        (Source::Push, _) => ConfigSource::Push {
            dial: push::Dial::new(
                args.control_plane.clone().ok_or_else(|| {
                    anyhow::anyhow!("--control-plane is required with --source push")
                })?,
                Some(push::ClientTls {
                    certs: certs.clone(),
                    control_plane: match &args.control_plane_identity {
                        Some(id) => id
                            .parse()
                            .map_err(|e| anyhow::anyhow!("--control-plane-identity: {e}"))?,
                        None => push::tls::default_control_plane_identity(&cfg.trust_domain),
                    },
                }),
            ),
            node_id: ztunnel::source::pod_identity(),
        },
        (Source::Dir, Some(dir)) => ConfigSource::Dir(dir),
        (Source::Dir, None) => anyhow::bail!("--manifests is required with --source dir"),
    };
    let wp = Waypoint::start_from(cfg, source, certs, ops).await?;
    wait_for_signal().await;
    tracing::info!(timeout = ?args.drain_timeout, "signal received; draining");
    wp.shutdown(args.drain_timeout).await;
    Ok(())
}

/// `waypoint check`: the exit code (0 all True, 1 some False, 2 the manifests do not load).
fn check(
    dir: &std::path::Path,
    gateway: Option<&str>,
    trust_domain: &str,
    json: bool,
) -> anyhow::Result<i32> {
    let gateway = match gateway {
        None => None,
        Some(g) => {
            let (namespace, name) = g
                .split_once('/')
                .ok_or_else(|| anyhow::anyhow!("--gateway must be namespace/name"))?;
            Some(GatewayRef {
                namespace: namespace.into(),
                name: name.into(),
            })
        }
    };
    match waypoint::routes::status::check(dir, gateway, trust_domain, json) {
        Ok((text, ok)) => {
            print!("{text}");
            Ok(if ok { 0 } else { 1 })
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(2)
        }
    }
}

/// `waypoint explain`: prints the explanation (exit 0), or the reason it cannot be given (exit 2).
fn explain(args: &ExplainArgs) -> i32 {
    use waypoint::explain::{render, source, Query};
    let q = Query {
        from: args.from.clone(),
        to: args.to.clone(),
        method: Some(args.method.clone()),
        path: Some(args.path.clone()),
        headers: args.headers.clone(),
        source_ip: args.source_ip,
    };
    let explained = match (&args.admin, &args.manifests) {
        (Some(admin), _) => source::from_admin(admin, &args.trust_domain, &q),
        (None, Some(dir)) => match args.gateway.split_once('/') {
            Some((namespace, name)) => {
                let gw = GatewayRef {
                    namespace: namespace.into(),
                    name: name.into(),
                };
                source::from_manifests(dir, &gw, &args.trust_domain, &q)
            }
            None => Err(anyhow::anyhow!("--gateway must be namespace/name")),
        },
        (None, None) => Err(anyhow::anyhow!("give --manifests DIR or --admin URL")),
    };
    match explained {
        Ok(e) if args.json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&e).expect("explanations serialize")
            );
            0
        }
        Ok(e) => {
            print!("{}", render::text(&e));
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
