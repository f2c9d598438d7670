//! The `ztunnel` binary: a node proxy configured by flags (each also an environment variable, see `--help` and
//! `docs/flags.md`), running until SIGTERM/SIGINT, then draining for up to `--drain-timeout` and exiting 0.
//!
//! ```text
//! ztunnel --manifests deploy/ --certs certs/ --node node-a --socks5 127.0.0.1:15080
//! curl --socks5-hostname 127.0.0.1:15080 http://echo.demo.svc.cluster.local/
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use mesh::ops::{AddrOrOff, LogControl};
use ztunnel::ops::Ops;
use ztunnel::{NodeConfig, Ztunnel};

/// A minimal ambient node proxy: SOCKS5 and redirect capture out, HBONE in and out.
#[derive(Debug, Parser)]
#[command(name = "ztunnel", version)]
struct Args {
    /// Manifests directory (watched and hot-swapped).
    #[arg(long, env = "ZT_MANIFESTS")]
    manifests: PathBuf,
    /// Certificates directory: `ca.pem` and `<ns>/<sa>/{cert,key}.pem`.
    #[arg(long = "certs", env = "ZT_CERTS")]
    certs: PathBuf,
    /// SPIFFE trust domain.
    #[arg(long, env = "ZT_TRUST_DOMAIN", default_value = mesh::config::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Local workloads: pods with this `spec.nodeName`.
    #[arg(long, env = "ZT_NODE")]
    node: Option<String>,
    /// A local workload `namespace/name` (repeatable; comma-separated in the environment variable).
    #[arg(long = "workload", env = "ZT_WORKLOADS", value_delimiter = ',')]
    workloads: Vec<String>,
    /// Inbound HBONE port on each local workload IP, and the port dialled on remote pods.
    #[arg(long, env = "ZT_HBONE_PORT", default_value_t = mesh::hbone::HBONE_PORT)]
    hbone_port: u16,
    /// SOCKS5 listener, e.g. 127.0.0.1:15080.
    #[arg(long, env = "ZT_SOCKS5")]
    socks5: Option<SocketAddr>,
    /// Source workload `namespace/name` for SOCKS clients that are not local workloads.
    #[arg(long, env = "ZT_SOCKS5_DEFAULT_WORKLOAD")]
    socks5_default_workload: Option<String>,
    /// iptables REDIRECT capture listener, e.g. 0.0.0.0:15001.
    #[arg(long, env = "ZT_REDIRECT")]
    redirect: Option<SocketAddr>,
    /// Admin endpoint (loopback only): /config_dump, /stats, /logging. `off` to disable.
    #[arg(long, env = "ZT_ADMIN", default_value = "127.0.0.1:15000")]
    admin: AddrOrOff,
    /// Readiness endpoint (GET /healthz/ready). `off` to disable.
    #[arg(long, env = "ZT_READINESS", default_value = "0.0.0.0:15021")]
    readiness: AddrOrOff,
    /// Prometheus endpoint (/stats/prometheus, /metrics). `off` to disable.
    #[arg(long, env = "ZT_STATS", default_value = "0.0.0.0:15020")]
    stats: AddrOrOff,
    /// On SIGTERM/SIGINT, how long in-flight connections may finish before the rest are cut.
    #[arg(long, env = "ZT_DRAIN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Bind the inbound HBONE listeners with SO_REUSEPORT (a new ztunnel can start while this one drains).
    #[arg(long, env = "ZT_REUSE_PORT", default_value_t = true, action = clap::ArgAction::Set)]
    reuse_port: bool,
    /// Log filter directives (`info`, `warn,ztunnel=debug`); changeable at runtime on the admin port.
    #[arg(long, env = "ZT_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let log = LogControl::init(&args.log_level).map_err(|e| anyhow::anyhow!("--log-level: {e}"))?;
    let ops = Ops {
        readiness: args.readiness.0,
        stats: args.stats.0,
        admin: args.admin.0,
        reuse_port: args.reuse_port,
        log: Some(log),
    };
    let zt = Ztunnel::start_with(
        NodeConfig {
            manifests: args.manifests,
            certs_dir: args.certs,
            trust_domain: args.trust_domain,
            node: args.node,
            workloads: args.workloads,
            hbone_port: args.hbone_port,
            socks5: args.socks5,
            socks5_default_workload: args.socks5_default_workload,
            redirect: args.redirect,
        },
        ops,
    )
    .await?;
    wait_for_signal().await?;
    tracing::info!(timeout = ?args.drain_timeout, "signal received; draining");
    zt.shutdown_within(args.drain_timeout).await;
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
