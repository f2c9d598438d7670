//! `waypoint controller`: the flags ([`ControllerArgs`]), the API client, the Lease election, and [`run`]
//! until SIGTERM/SIGINT (then the Lease is handed over at once).

use std::path::PathBuf;
use std::time::Duration;

use kube_source::{elect, kube_client, pod_identity, Leadership, LeaseConfig};

use crate::controller::{Controller, ControllerConfig};
use crate::desired::Options;

/// The Lease the replicas of the controller compete for.
pub const LEASE_NAME: &str = "waypoint-controller";

/// The flags of `waypoint controller` (each also an environment variable).
#[derive(Clone, Debug, clap::Args)]
pub struct ControllerArgs {
    /// A kubeconfig file (default: the in-cluster service account, else `$KUBECONFIG` / `~/.kube/config`).
    #[arg(long, env = "WC_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The API server's URL (overrides the kubeconfig's).
    #[arg(long, env = "WC_API_SERVER")]
    pub api_server: Option<String>,
    /// The waypoint image of the generated Deployments (`registry/waypoint:tag`).
    #[arg(long, env = "WC_IMAGE")]
    pub image: String,
    /// Watch and manage only this namespace (default: all namespaces).
    #[arg(long, env = "WC_NAMESPACE")]
    pub namespace: Option<String>,
    /// Write only while holding the Lease `waypoint-controller` in `--lease-namespace` (identity: `$POD_NAME`,
    /// else `$HOSTNAME`); `false`: always write (one replica).
    #[arg(long, env = "WC_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// The namespace of the election's Lease.
    #[arg(long, env = "WC_LEASE_NAMESPACE", default_value = "istio-system")]
    pub lease_namespace: String,
    /// SPIFFE trust domain, passed to every waypoint (`waypoint run --trust-domain`).
    #[arg(long, env = "WC_TRUST_DOMAIN", default_value = mesh::config::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Log filter directives (`info`, `debug`, `waypoint_controller=debug`).
    #[arg(long, env = "WC_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// The push control plane the waypoints get their config from: `https://host:15010` (mutual TLS) or
    /// `http://…` (plaintext). Set: every waypoint runs `--source push --control-plane <url>` and needs no RBAC;
    /// unset: `--source kube` (bind its ServiceAccount to the waypoint's kube-mode ClusterRole).
    #[arg(long, env = "WC_CONTROL_PLANE", value_parser = control_plane_url)]
    pub control_plane: Option<String>,
    /// The SPIFFE id the control plane presents over https, passed to every waypoint as
    /// `--control-plane-identity` (default: the waypoint's, `spiffe://<td>/ns/istio-system/sa/waypoint-control-plane`).
    #[arg(long, env = "WC_CONTROL_PLANE_IDENTITY", requires = "control_plane",
        value_parser = spiffe_id)]
    pub control_plane_identity: Option<String>,
}

/// `--control-plane`: an `http://` or `https://` URL with a host (what `waypoint run --control-plane` dials).
fn control_plane_url(s: &str) -> Result<String, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("{e}"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.host().is_none_or(str::is_empty) {
        return Err("must be http://host:port or https://host:port".into());
    }
    Ok(s.into())
}

/// `--control-plane-identity`: exactly `spiffe://<td>/ns/<ns>/sa/<sa>`.
fn spiffe_id(s: &str) -> Result<String, String> {
    s.parse::<mesh::identity::Identity>()
        .map(|_| s.into())
        .map_err(|e| e.to_string())
}

/// Why the controller could not run.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("--log-level: {0}")]
    LogLevel(String),
    #[error(transparent)]
    Client(#[from] kube_source::ClientError),
}

/// How often a pass runs without any change (Istio's controllers resync on a similar period).
const RESYNC: Duration = Duration::from_secs(60);

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(args: ControllerArgs) -> Result<(), ControllerError> {
    let _log = mesh::ops::LogControl::init(&args.log_level).map_err(ControllerError::LogLevel)?;
    let client = kube_client(args.kubeconfig.as_deref(), args.api_server.as_deref()).await?;
    let election = args.leader_elect.then(|| {
        let config = LeaseConfig::new(&args.lease_namespace, LEASE_NAME, &pod_identity());
        elect(client.clone(), config)
    });
    let leadership = election
        .as_ref()
        .map_or_else(Leadership::always, |e| e.leadership());
    let scope = args.namespace.clone().unwrap_or_else(|| "(all)".into());
    let controller = Controller::start(
        client,
        ControllerConfig {
            options: Options {
                image: args.image,
                trust_domain: args.trust_domain,
                control_plane: args.control_plane,
                control_plane_identity: args.control_plane_identity,
            },
            namespace: args.namespace,
            resync: RESYNC,
            leadership,
        },
    );
    tracing::warn!(namespace = %scope, leader_elect = args.leader_elect, "waypoint controller running");
    wait_for_signal().await;
    drop(controller);
    if let Some(e) = election {
        if let Err(err) = e.release().await {
            tracing::warn!(error = %err, "could not hand the Lease over; it expires on its own");
        }
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }

    #[test]
    fn flags_have_the_documented_defaults_and_image_is_required() {
        let cli = Cli::try_parse_from(["c", "--image", "w:1"]).unwrap();
        let a = cli.args;
        assert_eq!(
            (
                a.leader_elect,
                a.lease_namespace.as_str(),
                a.trust_domain.as_str()
            ),
            (true, "istio-system", "cluster.local")
        );
        assert_eq!((a.namespace, a.log_level.as_str()), (None, "info"));
        let off = Cli::try_parse_from(["c", "--image", "w:1", "--leader-elect", "false"]).unwrap();
        assert!(!off.args.leader_elect);
        // WC_IMAGE may be set in the environment of whoever runs the tests: only assert without it.
        if std::env::var_os("WC_IMAGE").is_none() {
            assert!(Cli::try_parse_from(["c"]).is_err());
        }
    }

    #[test]
    fn control_plane_flags_are_checked() {
        let parse = |extra: &[&str]| {
            let argv = ["c", "--image", "w:1"].iter().chain(extra).copied();
            Cli::try_parse_from(argv).map(|c| (c.args.control_plane, c.args.control_plane_identity))
        };
        let url = "https://waypoint-control-plane.istio-system.svc:15010";
        let id = "spiffe://cluster.local/ns/istio-system/sa/waypoint-control-plane";
        if std::env::var_os("WC_CONTROL_PLANE").is_none() {
            assert_eq!(parse(&[]).unwrap(), (None, None));
            // An identity alone says nothing: refused.
            assert!(parse(&["--control-plane-identity", id]).is_err());
        }
        assert_eq!(
            parse(&["--control-plane", url]).unwrap(),
            (Some(url.into()), None)
        );
        assert_eq!(
            parse(&["--control-plane", url, "--control-plane-identity", id]).unwrap(),
            (Some(url.into()), Some(id.into()))
        );
        assert!(parse(&["--control-plane", "http://cp:15010"]).is_ok());
        for bad in ["cp:15010", "grpc://cp:15010", "https://", "not a url"] {
            assert!(parse(&["--control-plane", bad]).is_err(), "{bad}");
        }
        for bad in ["waypoint-control-plane", "spiffe://cluster.local/sa/x"] {
            let r = parse(&["--control-plane", url, "--control-plane-identity", bad]);
            assert!(r.is_err(), "{bad}");
        }
    }
}
