//! The `waypoint` binary: `run` a waypoint, `demo` a whole mesh on loopback, `certs` for a development CA,
//! `check` a manifests directory's routes (their status, as a Gateway API controller would write it).
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
    /// Create a development CA (if absent) and certificates for the given identities (`ns/sa`).
    Certs {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Identities as `namespace/service-account`.
        identities: Vec<String>,
    },
}

/// The flags of `waypoint run`.
#[derive(clap::Args)]
struct RunArgs {
    /// The manifests directory (watched and hot-swapped).
    #[arg(long, env = "WP_MANIFESTS")]
    manifests: PathBuf,
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
    /// Log filter directives (`info`, `warn,waypoint::access=info`); changeable at runtime with
    /// `POST /logging?level=...` on the admin endpoint.
    #[arg(long, env = "WP_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Run(_)) {
        // `run` installs a reloadable filter from `--log-level` instead.
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
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
            Cmd::Check { .. } => unreachable!("handled before the runtime starts"),
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
        manifests: args.manifests,
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
    };
    let wp = Waypoint::start_with(cfg, certs, ops).await?;
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

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
