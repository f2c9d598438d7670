//! Where a ztunnel's config comes from: a manifests folder ([`NodeSource::Dir`], watched with
//! [`mesh::config::watch_dir`]), the Kubernetes API server ([`NodeSource::Kube`], watched with
//! [`kube_source::watch_api`]) or a push control plane ([`NodeSource::Push`], [`push::watch_push`] as the
//! ztunnel target) — the same compile-and-swap path into one [`Live<NodeView>`].
//!
//! From the API server a ztunnel watches what a node proxy needs ([`node_watch_options`]): no routes, and,
//! when asked, only its node's Pods (`spec.nodeName` field selector) — per-node full watches are what
//! overload API servers, but a ztunnel needs remote Pods' identities for mTLS (see there). Also here: [`kube_client`] (kubeconfig, in-cluster or an explicit URL) and
//! [`pod_identity`] (the Lease holder name), shared with the waypoint binary.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use kube_source::{watch_api, ApiWatchGuard, Kind, WatchOptions};
use mesh::config::{self, Live, Mesh};

use crate::node::CONFIG_DEBOUNCE;
use crate::view::{NodeSpec, NodeView};

/// Where the config comes from.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // one per process, made once at start
pub enum NodeSource {
    /// A manifests directory, watched.
    Dir(PathBuf),
    /// The Kubernetes API server.
    Kube {
        client: kube::Client,
        watch: WatchOptions,
    },
    /// A push control plane (`waypoint control-plane`): what every ztunnel needs, as versioned incremental
    /// updates; one that does not compile is NACKed and the last good view keeps serving.
    Push {
        /// The control plane's URL and, for `https://`, this ztunnel's certificate and the identity to expect.
        dial: push::Dial,
        /// This instance (NACKs are remembered per node id).
        node_id: String,
    },
}

impl std::fmt::Debug for NodeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeSource::Dir(dir) => f.debug_tuple("Dir").field(dir).finish(),
            NodeSource::Kube { watch, .. } => f
                .debug_struct("Kube")
                .field("watch", watch)
                .finish_non_exhaustive(),
            NodeSource::Push { dial, node_id } => f
                .debug_struct("Push")
                .field("url", &dial.url)
                .field("node_id", node_id)
                .finish_non_exhaustive(),
        }
    }
}

/// What a node proxy watches: every kind but routes. With `pods_on_node_only` (and a `node`), only that
/// node's Pods (`spec.nodeName` field selector): far less API-server load, but remote Pods are then unknown,
/// so endpoints on other nodes have no known workload (no identity to expect, no HBONE): they are dialled in
/// plain TCP. Sound only where every remote destination is reached through a waypoint or is out of the mesh;
/// the push tier is the scalable answer.
pub fn node_watch_options(node: Option<&str>, pods_on_node_only: bool) -> WatchOptions {
    WatchOptions {
        kinds: Kind::ALL
            .into_iter()
            .filter(|k| !matches!(k, Kind::HttpRoute | Kind::GrpcRoute))
            .collect(),
        node_name: node.filter(|_| pods_on_node_only).map(str::to_string),
        ..WatchOptions::default()
    }
}

/// The API-server client and replica name, shared with the waypoint binaries (defined in `kube_source`).
pub use kube_source::{kube_client, pod_identity};

/// Keeps the config watch running; dropping it stops it.
pub enum ConfigGuard {
    Dir(config::live::WatchGuard),
    Kube(ApiWatchGuard),
    Push(push::PushGuard),
}

/// Loads the first view (failing when there is none: no last good config yet) and starts watching. From the
/// API server: returns once every initial list is in and compiled.
pub(crate) async fn load(
    source: NodeSource,
    trust_domain: &str,
    spec: NodeSpec,
) -> anyhow::Result<(Arc<Live<NodeView>>, ConfigGuard)> {
    let compile = move |mesh: &Mesh| Ok(NodeView::compile(Arc::new(mesh.clone()), &spec));
    match source {
        NodeSource::Dir(dir) => {
            let (d, td) = (dir.clone(), trust_domain.to_string());
            let mesh = tokio::task::spawn_blocking(move || Mesh::load_dir(&d, &td))
                .await?
                .with_context(|| format!("loading manifests from {}", dir.display()))?;
            let live = Arc::new(Live::new(compile(&mesh)?));
            let guard = config::watch_dir(
                dir,
                trust_domain.into(),
                CONFIG_DEBOUNCE,
                live.clone(),
                compile,
            );
            Ok((live, ConfigGuard::Dir(guard)))
        }
        NodeSource::Kube { client, watch } => {
            let empty = Mesh::from_documents(&[], trust_domain)?;
            let live = Arc::new(Live::new(compile(&empty)?));
            let guard = watch_api(
                client,
                watch,
                trust_domain.into(),
                CONFIG_DEBOUNCE,
                live.clone(),
                compile,
            );
            if let Err(why) = guard.first_render(&live).await {
                bail!("the config from the API server does not compile: {why}");
            }
            Ok((live, ConfigGuard::Kube(guard)))
        }
        NodeSource::Push { dial, node_id } => {
            let empty = Mesh::from_documents(&[], trust_domain)?;
            let live = Arc::new(Live::new(compile(&empty)?));
            let sub = push::proto::Subscribe {
                node_id,
                kind: push::proto::SubscriberKind::Ztunnel as i32,
                target: String::new(),
                resource_versions: Default::default(),
            };
            let guard = push::watch_push(dial, sub, trust_domain.into(), live.clone(), compile);
            // The first view must come from the control plane (`watch_push` logs each failed attempt).
            guard
                .status()
                .wait_for(|s| s.applied >= 1)
                .await
                .context("the push source stopped before the first config")?;
            Ok((live, ConfigGuard::Push(guard)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_scoping_is_opt_in_and_routes_are_not_watched() {
        let all = node_watch_options(Some("n"), false);
        assert_eq!(all.node_name, None);
        assert!(!all.kinds.contains(&Kind::HttpRoute) && all.kinds.contains(&Kind::Pod));
        assert_eq!(
            node_watch_options(Some("n"), true).node_name.as_deref(),
            Some("n")
        );
        assert_eq!(node_watch_options(None, true).node_name, None);
    }
}
