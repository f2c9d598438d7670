//! The `ztunnel` binary: a node proxy configured by flags (each also an environment variable, see `--help` and
//! `docs/flags.md`), running until SIGTERM/SIGINT, then draining for up to `--drain-timeout` and exiting 0.
//!
//! ```text
//! ztunnel --manifests deploy/ --certs certs/ --node node-a --socks5 127.0.0.1:15080
//! ztunnel --source kube --certs certs/ --node "$NODE_NAME"     # config from the API server
//! ztunnel --source push --control-plane https://cp:15010 --certs certs/ --node "$NODE_NAME"
//! curl --socks5-hostname 127.0.0.1:15080 http://echo.demo.svc.cluster.local/
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use mesh::ops::{AddrOrOff, LogControl};
use ztunnel::ops::Ops;
use ztunnel::source::{kube_client, node_watch_options, NodeSource};
use ztunnel::{NodeConfig, Ztunnel};

mesh::global_allocator!();

/// `--source`: where the config comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Source {
    Dir,
    Kube,
    /// A push control plane (`--control-plane`).
    Push,
}

/// A minimal ambient node proxy: SOCKS5 and redirect capture out, HBONE in and out.
#[derive(Debug, Parser)]
#[command(name = "ztunnel", version)]
struct Args {
    /// Where the config comes from: `dir` (the `--manifests` folder), `kube` (the Kubernetes API server) or
    /// `push` (a push control plane, `--control-plane`).
    #[arg(long, env = "ZT_SOURCE", value_enum, default_value_t = Source::Dir)]
    source: Source,
    /// `--source push`: the control plane, `https://host:15010` (mutual TLS as `--identity`) or `http://…`
    /// (plaintext, development only).
    #[arg(long, env = "ZT_CONTROL_PLANE", required_if_eq("source", "push"))]
    control_plane: Option<String>,
    /// `--source push` over https: the identity the control plane must present (default
    /// `spiffe://<td>/ns/istio-system/sa/waypoint-control-plane`).
    #[arg(long, env = "ZT_CONTROL_PLANE_IDENTITY")]
    control_plane_identity: Option<String>,
    /// `--source push` over https: this ztunnel's own identity `namespace/service-account`, whose certificate
    /// under `--certs` it presents to the control plane.
    #[arg(long, env = "ZT_IDENTITY", default_value = "istio-system/ztunnel")]
    identity: String,
    /// Manifests directory (watched and hot-swapped); required with `--source dir`.
    #[arg(long, env = "ZT_MANIFESTS", required_if_eq("source", "dir"))]
    manifests: Option<PathBuf>,
    /// `--source kube`: a kubeconfig file (default: the in-cluster service account, else `$KUBECONFIG`).
    #[arg(long, env = "ZT_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// `--source kube`: the API server's URL (overrides the kubeconfig's).
    #[arg(long, env = "ZT_API_SERVER")]
    api_server: Option<String>,
    /// `--source kube`: watch only the Pods of `--node` (less API-server load; remote Pods are then unknown and
    /// their endpoints dialled without mTLS, see `ztunnel::source::node_watch_options`).
    #[arg(long, env = "ZT_PODS_ON_NODE_ONLY", default_value_t = false, action = clap::ArgAction::Set)]
    pods_on_node_only: bool,
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
    // The certificate presented to the control plane, re-read on rotation while this lives.
    let mut cert_watch = None;
    let source = match (args.source, &args.manifests) {
        (Source::Kube, _) => {
            let client =
                kube_client(args.kubeconfig.as_deref(), args.api_server.as_deref()).await?;
            let watch = node_watch_options(args.node.as_deref(), args.pods_on_node_only);
            NodeSource::Kube { client, watch }
        }
        (Source::Push, _) => NodeSource::Push {
            dial: push_dial(&args, &mut cert_watch)?,
            node_id: args
                .node
                .clone()
                .unwrap_or_else(ztunnel::source::pod_identity),
        },
        (Source::Dir, Some(dir)) => NodeSource::Dir(dir.clone()),
        (Source::Dir, None) => anyhow::bail!("--manifests is required with --source dir"),
    };
    let zt = Ztunnel::start_from(
        NodeConfig {
            manifests: args.manifests.unwrap_or_default(),
            certs_dir: args.certs,
            trust_domain: args.trust_domain,
            node: args.node,
            workloads: args.workloads,
            hbone_port: args.hbone_port,
            socks5: args.socks5,
            socks5_default_workload: args.socks5_default_workload,
            redirect: args.redirect,
        },
        source,
        ops,
    )
    .await?;
    wait_for_signal().await?;
    tracing::info!(timeout = ?args.drain_timeout, "signal received; draining");
    zt.shutdown_within(args.drain_timeout).await;
    Ok(())
}

/// The control plane to dial: over https with this ztunnel's own certificate (`--identity` under `--certs`,
/// watched for rotation through `cert_watch`).
fn push_dial(
    args: &Args,
    cert_watch: &mut Option<mesh::identity::WatchGuard>,
) -> anyhow::Result<push::Dial> {
    use anyhow::Context as _;
    let url = args
        .control_plane
        .clone()
        .context("--control-plane is required with --source push")?;
    if !url.starts_with("https://") {
        return Ok(push::Dial::new(url, None));
    }
    let (ns, sa) = args
        .identity
        .split_once('/')
        .context("--identity must be namespace/service-account")?;
    let own = mesh::identity::Identity::new(&args.trust_domain, ns, sa);
    let paths = mesh::devca::workload_paths(&args.certs, &own);
    let certs = mesh::identity::CertStore::load(&paths)
        .with_context(|| format!("the certificate of {own} under {}", args.certs.display()))?;
    *cert_watch = Some(certs.watch(paths));
    let control_plane = match &args.control_plane_identity {
        Some(id) => id.parse().context("--control-plane-identity")?,
        None => push::tls::default_control_plane_identity(&args.trust_domain),
    };
    Ok(push::Dial::new(
        url,
        Some(push::ClientTls {
            certs,
            control_plane,
        }),
    ))
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
