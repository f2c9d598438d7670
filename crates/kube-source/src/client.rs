//! Making an API-server client and naming this replica — shared by every binary that talks to the API server
//! (`waypoint run --source kube`, `waypoint control-plane`, `waypoint controller`, the `waypoint` CLI, `ztunnel`).

use std::path::Path;

/// Why no client could be made; the message names the flag to fix.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--api-server {url:?}: {message}")]
    ApiServer { url: String, message: String },
    #[error("--kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("no API server: no in-cluster config or kubeconfig ({0}); give --kubeconfig or --api-server")]
    NoConfig(String),
    #[error("cannot make an API client: {0}")]
    Client(#[from] kube::Error),
}

/// A client for the API server: from `kubeconfig` when given, else inferred (in-cluster service account,
/// then `$KUBECONFIG` / `~/.kube/config`); `api_server` overrides the URL (with neither file nor cluster: a
/// plain client for that URL, as tests use).
pub async fn kube_client(
    kubeconfig: Option<&Path>,
    api_server: Option<&str>,
) -> Result<kube::Client, ClientError> {
    let url = api_server
        .map(|u| {
            u.parse::<http::Uri>().map_err(|e| ClientError::ApiServer {
                url: u.into(),
                message: e.to_string(),
            })
        })
        .transpose()?;
    let mut config = match (kubeconfig, &url) {
        (Some(path), _) => {
            let bad = |message: String| ClientError::Kubeconfig {
                path: path.display().to_string(),
                message,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| bad(e.to_string()))?
        }
        (None, Some(url)) => kube::Config::new(url.clone()),
        (None, None) => kube::Config::infer()
            .await
            .map_err(|e| ClientError::NoConfig(e.to_string()))?,
    };
    if let Some(url) = url {
        config.cluster_url = url;
    }
    Ok(kube::Client::try_from(config)?)
}

/// This replica's name (Lease holder, push node id): `$POD_NAME`, else `$HOSTNAME`, else `pid-<pid>`.
pub fn pod_identity() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| format!("pid-{}", std::process::id()))
}
