//! `waypoint control-plane`: the push tier's server as a process. It watches the config once — a manifests
//! folder (`--source dir`) or the Kubernetes API server (`--source kube`, through `kube-source`) — publishes
//! every accepted change to a [`push::ControlPlane`] and serves `waypoint.push.v1.Push/Stream` on `--listen`.
//!
//! With `--cert`/`--key`/`--ca` it serves mutual TLS as its own SPIFFE identity and authorizes each
//! subscription by the client's verified identity ([`push::tls::authorize`]: a waypoint for a Gateway of its
//! own namespace, a ztunnel only as `--ztunnel-identity`); with none of the three, plaintext (a warning at
//! start). `docs/push.md` describes the tier.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mesh::config::{ConfigError, Live, DEFAULT_TRUST_DOMAIN};
use mesh::identity::{CertPaths, CertStore, Identity};
use mesh::ops::LogControl;
use push::{Access, ControlPlane};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Quiet time before a change is published.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// `--source`: where the control plane reads the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CpSource {
    /// The `--manifests` folder.
    Dir,
    /// The Kubernetes API server.
    Kube,
}

/// The flags of `waypoint control-plane`.
#[derive(Clone, Debug, clap::Args)]
pub struct ControlPlaneArgs {
    /// Where the config comes from: `dir` (the `--manifests` folder) or `kube` (the Kubernetes API server).
    #[arg(long, env = "CP_SOURCE", value_enum, default_value_t = CpSource::Dir)]
    pub source: CpSource,
    /// The manifests directory (watched); required with `--source dir`.
    #[arg(long, env = "CP_MANIFESTS", required_if_eq("source", "dir"))]
    pub manifests: Option<PathBuf>,
    /// `--source kube`: a kubeconfig file (default: the in-cluster service account, else `$KUBECONFIG`).
    #[arg(long, env = "CP_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// `--source kube`: the API server's URL (overrides the kubeconfig's).
    #[arg(long, env = "CP_API_SERVER")]
    pub api_server: Option<String>,
    /// The gRPC listener.
    #[arg(long, env = "CP_LISTEN", default_value = "0.0.0.0:15010")]
    pub listen: SocketAddr,
    /// SPIFFE trust domain.
    #[arg(long, env = "CP_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// The control plane's certificate chain (PEM, re-read on change). `--cert`, `--key` and `--ca` together:
    /// mutual TLS; none of them: plaintext.
    #[arg(long, env = "CP_CERT")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "CP_KEY")]
    pub key: Option<PathBuf>,
    /// The trust bundle (PEM): client certificates must chain to it.
    #[arg(long, env = "CP_CA")]
    pub ca: Option<PathBuf>,
    /// The only identity that may subscribe as a ztunnel (default `spiffe://<td>/ns/istio-system/sa/ztunnel`).
    #[arg(long, env = "CP_ZTUNNEL_IDENTITY")]
    pub ztunnel_identity: Option<String>,
    /// Log filter directives (`info`, `debug,push=debug`).
    #[arg(long, env = "CP_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl ControlPlaneArgs {
    /// The certificate files when all three are given; `None` when none are; an error naming the missing ones
    /// otherwise.
    pub fn cert_paths(&self) -> anyhow::Result<Option<CertPaths>> {
        match (&self.cert, &self.key, &self.ca) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some(CertPaths {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            })),
            (None, None, None) => Ok(None),
            (cert, key, ca) => {
                let missing: Vec<&str> = [("--cert", cert), ("--key", key), ("--ca", ca)]
                    .into_iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(n, _)| n)
                    .collect();
                anyhow::bail!(
                    "mutual TLS needs --cert, --key and --ca together (missing {}); give none of them for plaintext",
                    missing.join(", ")
                )
            }
        }
    }

    /// The identity a ztunnel subscription needs.
    pub fn ztunnel_identity(&self) -> anyhow::Result<Identity> {
        match &self.ztunnel_identity {
            Some(s) => Identity::from_str(s).context("--ztunnel-identity"),
            None => Ok(push::tls::default_ztunnel_identity(&self.trust_domain)),
        }
    }
}

/// What keeps the config watched (held for its `Drop`: the watch stops with it).
#[allow(dead_code)]
enum Watch {
    Dir(mesh::config::WatchGuard),
    Kube(kube_source::ApiWatchGuard),
}

/// A running control plane (see [`start`]).
pub struct Running {
    cp: ControlPlane,
    addr: SocketAddr,
    tls: bool,
    stop: Option<oneshot::Sender<()>>,
    serving: JoinHandle<anyhow::Result<()>>,
    _watch: Watch,
    _cert_watch: Option<mesh::identity::WatchGuard>,
}

impl Running {
    /// The bound listener address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The subscribers' URL (`http://` or `https://` and [`Running::addr`]).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
    /// The control plane (counters, the current set).
    pub fn control_plane(&self) -> &ControlPlane {
        &self.cp
    }
    /// Ends every stream and stops serving.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.serving).await??;
        Ok(())
    }
}

/// Loads and publishes the first config (from the API server: once every initial list is in), binds
/// `--listen` and serves. Fails on a first config that does not load, on a partial `--cert/--key/--ca`, on
/// certificates that do not load.
pub async fn start(args: &ControlPlaneArgs) -> anyhow::Result<Running> {
    let tls = args.cert_paths()?;
    let access = Access {
        ztunnel: args.ztunnel_identity()?,
    };
    let cp = ControlPlane::new();
    let watch = match args.source {
        CpSource::Dir => {
            let dir = args
                .manifests
                .clone()
                .context("--manifests is required with --source dir")?;
            let guard = cp
                .watch_dir(dir.clone(), args.trust_domain.clone(), DEBOUNCE)
                .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
            Watch::Dir(guard)
        }
        CpSource::Kube => {
            let client = ztunnel::source::kube_client(
                args.kubeconfig.as_deref(),
                args.api_server.as_deref(),
            )
            .await?;
            Watch::Kube(watch_kube(&cp, client, &args.trust_domain).await?)
        }
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    let (serving, cert_watch) = match &tls {
        Some(paths) => {
            let certs = CertStore::load(paths).context("the control plane's certificates")?;
            let own = certs.identity();
            let cert_watch = certs.watch(paths.clone());
            tracing::info!(%addr, identity = %own, ztunnel = %access.ztunnel,
                "push control plane serving mutual TLS");
            let cp2 = cp.clone();
            let task =
                tokio::spawn(
                    async move { Ok(cp2.serve_tls(listener, certs, access, shutdown).await?) },
                );
            (task, Some(cert_watch))
        }
        None => {
            tracing::warn!(%addr, "push control plane serving PLAINTEXT: no client is authenticated or \
                authorized; give --cert, --key and --ca for mutual TLS");
            let cp2 = cp.clone();
            (
                tokio::spawn(async move { Ok(cp2.serve(listener, shutdown).await?) }),
                None,
            )
        }
    };
    Ok(Running {
        cp,
        addr,
        tls: tls.is_some(),
        stop: Some(stop),
        serving,
        _watch: watch,
        _cert_watch: cert_watch,
    })
}

/// Publishes what the API server holds on `cp` after every change that the mesh model accepts; returns once
/// the initial lists are in and the first set is published (or fails when it does not load).
async fn watch_kube(
    cp: &ControlPlane,
    client: kube::Client,
    trust_domain: &str,
) -> anyhow::Result<kube_source::ApiWatchGuard> {
    // The `Live` only records the published system version and the last rejection.
    let live: Arc<Live<u64>> = Arc::new(Live::new(0));
    let cp2 = cp.clone();
    let parse = kube_source::cached_parse(trust_domain.to_string());
    let publish = move |docs: &[(PathBuf, String)]| {
        parse(docs)?;
        cp2.publish(docs).map_err(|e| ConfigError {
            file: e.file.clone(),
            object: String::new(),
            field: String::new(),
            message: e.to_string(),
        })
    };
    let guard = kube_source::watch_api_documents(
        client,
        kube_source::WatchOptions::default(),
        DEBOUNCE,
        live.clone(),
        publish,
    );
    if let Err(why) = guard.first_render(&live).await {
        anyhow::bail!("the config from the API server does not load: {why}");
    }
    Ok(guard)
}

/// `waypoint control-plane`: serves until SIGTERM/SIGINT.
pub async fn run(args: ControlPlaneArgs) -> anyhow::Result<()> {
    let _log =
        LogControl::init(&args.log_level).map_err(|e| anyhow::anyhow!("--log-level: {e}"))?;
    let running = start(&args).await?;
    tracing::info!(url = %running.url(), "push control plane listening");
    wait_for_signal().await?;
    tracing::info!("signal received; stopping");
    running.shutdown().await
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControlPlaneArgs,
    }

    fn parse(flags: &[&str]) -> Result<ControlPlaneArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("cp").chain(flags.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn tls_is_all_three_files_or_none() {
        let none = parse(&["--manifests", "m"]).unwrap();
        assert!(none.cert_paths().unwrap().is_none());
        let all = parse(&["--manifests", "m", "--cert", "c", "--key", "k", "--ca", "a"]).unwrap();
        assert!(all.cert_paths().unwrap().is_some());
        let some = parse(&["--manifests", "m", "--cert", "c"]).unwrap();
        let e = some.cert_paths().unwrap_err().to_string();
        assert!(e.contains("(missing --key, --ca)"), "{e}");
    }

    #[test]
    fn sources_and_identities() {
        assert!(
            parse(&["--source", "dir"]).is_err(),
            "--manifests is required with --source dir"
        );
        let kube = parse(&["--source", "kube", "--trust-domain", "td.example"]).unwrap();
        assert_eq!(kube.source, CpSource::Kube);
        assert_eq!(
            kube.ztunnel_identity().unwrap().to_string(),
            "spiffe://td.example/ns/istio-system/sa/ztunnel"
        );
        let custom = parse(&[
            "--source",
            "kube",
            "--ztunnel-identity",
            "spiffe://td/ns/kube-system/sa/zt",
        ])
        .unwrap();
        assert_eq!(custom.ztunnel_identity().unwrap().namespace, "kube-system");
        let bad = parse(&["--source", "kube", "--ztunnel-identity", "ztunnel"]).unwrap();
        assert!(bad.ztunnel_identity().is_err());
    }
}
