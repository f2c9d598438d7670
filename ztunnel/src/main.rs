//! The `ztunnel` binary: a node proxy configured by flags, running until SIGINT/SIGTERM.
//!
//! ```text
//! ztunnel --manifests deploy/ --certs certs/ --node node-a --socks5 127.0.0.1:15080
//! curl --socks5-hostname 127.0.0.1:15080 http://echo.demo.svc.cluster.local/
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use ztunnel::{NodeConfig, Ztunnel};

/// A minimal ambient node proxy: SOCKS5 and redirect capture out, HBONE in and out.
#[derive(Debug, Parser)]
#[command(name = "ztunnel", version)]
struct Args {
    /// Manifests directory (watched and hot-swapped).
    #[arg(long)]
    manifests: PathBuf,
    /// Certificates directory: `ca.pem` and `<ns>/<sa>/{cert,key}.pem`.
    #[arg(long = "certs")]
    certs: PathBuf,
    #[arg(long, default_value = mesh::config::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Local workloads: pods with this `spec.nodeName`.
    #[arg(long)]
    node: Option<String>,
    /// A local workload `namespace/name` (repeatable).
    #[arg(long = "workload")]
    workloads: Vec<String>,
    /// Inbound HBONE port on each local workload IP, and the port dialled on remote pods.
    #[arg(long, default_value_t = mesh::hbone::HBONE_PORT)]
    hbone_port: u16,
    /// SOCKS5 listener, e.g. 127.0.0.1:15080.
    #[arg(long)]
    socks5: Option<SocketAddr>,
    /// Source workload `namespace/name` for SOCKS clients that are not local workloads.
    #[arg(long)]
    socks5_default_workload: Option<String>,
    /// iptables REDIRECT capture listener, e.g. 0.0.0.0:15001.
    #[arg(long)]
    redirect: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let zt = Ztunnel::start(NodeConfig {
        manifests: args.manifests,
        certs_dir: args.certs,
        trust_domain: args.trust_domain,
        node: args.node,
        workloads: args.workloads,
        hbone_port: args.hbone_port,
        socks5: args.socks5,
        socks5_default_workload: args.socks5_default_workload,
        redirect: args.redirect,
    })
    .await?;
    wait_for_signal().await?;
    tracing::info!("shutting down");
    zt.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
