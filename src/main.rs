//! The `waypoint` binary: `run` a waypoint, `demo` a whole mesh on loopback, `certs` for a development CA,
//! `check` a manifests directory's routes (their status, as a Gateway API controller would write it).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use mesh::config::{GatewayRef, DEFAULT_TRUST_DOMAIN};
use mesh::identity::{CertPaths, CertStore, Identity};
use waypoint::demo::client::Proto;
use waypoint::server::{Waypoint, WaypointConfig};

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
    Run {
        /// The manifests directory (watched).
        #[arg(long)]
        manifests: PathBuf,
        /// This waypoint's Gateway, `namespace/name`.
        #[arg(long, default_value = "default/waypoint")]
        gateway: String,
        #[arg(long, default_value = "0.0.0.0:15008")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 15008)]
        hbone_port: u16,
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        #[arg(long, env = "WP_CERT")]
        cert: PathBuf,
        #[arg(long, env = "WP_KEY")]
        key: PathBuf,
        #[arg(long, env = "WP_CA")]
        ca: PathBuf,
        /// The admin endpoint (config dump, route status); loopback only. `off` to disable.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: String,
    },
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

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
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
            Cmd::Run {
                manifests,
                gateway,
                listen,
                hbone_port,
                trust_domain,
                cert,
                key,
                ca,
                admin,
            } => {
                let admin = match admin.as_str() {
                    "off" => None,
                    a => Some(
                        a.parse()
                            .map_err(|_| anyhow::anyhow!("--admin must be ip:port or off"))?,
                    ),
                };
                let (namespace, name) = gateway
                    .split_once('/')
                    .ok_or_else(|| anyhow::anyhow!("--gateway must be namespace/name"))?;
                let paths = CertPaths { cert, key, ca };
                let certs = CertStore::load(&paths)?;
                let _rotation = certs.watch(paths);
                let gateway = GatewayRef {
                    namespace: namespace.into(),
                    name: name.into(),
                };
                let cfg = WaypointConfig {
                    gateway,
                    manifests,
                    trust_domain,
                    listen,
                    hbone_port,
                    admin,
                };
                let wp = Waypoint::start(cfg, certs).await?;
                wait_for_signal().await;
                wp.shutdown(std::time::Duration::from_secs(10)).await;
                Ok(())
            }
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
