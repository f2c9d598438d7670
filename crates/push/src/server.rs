//! The control plane: holds the current document set ([`ControlPlane::publish`], or
//! [`ControlPlane::watch_dir`] for a folder) and serves `waypoint.push.v1.Push/Stream`.
//!
//! Per stream (one subscriber): after its `Subscribe`, the server computes the subscriber's [`Subset`] of the
//! current set, sends the difference from the versions it reported, and waits for the ACK or NACK of that nonce
//! before sending anything else; config changes meanwhile are coalesced. An ACK makes the sent versions the
//! subscriber's; a NACK leaves its versions as they were, is counted and logged, and the rejected set (by
//! digest) is remembered per node id, so the same bad versions are not sent again — the next different config
//! is. A subscriber whose subset did not change is marked in sync without a message.
//!
//! Served with [`ControlPlane::serve_tls`], every stream carries the client's verified SPIFFE identity and a
//! `Subscribe` is authorized by that identity alone ([`crate::tls::authorize`]); a refusal is
//! `PermissionDenied`, logged and counted ([`Stats::denied`]). [`ControlPlane::serve`] is plaintext and
//! authorizes nothing (tests, development).

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use waypoint_proto::push::v1 as pb;
use waypoint_proto::push::v1::push_server::{Push, PushServer};

use crate::resources::{self, diff, version_string, DocSet, DocumentError, Subset, Versions};
use crate::select::Target;
use crate::tls::{self, Access};

/// Counters of one subscriber (by node id), kept after it disconnects.
#[derive(Clone, Debug, Default)]
pub struct NodeStats {
    pub connected: bool,
    pub streams: u64,
    pub updates: u64,
    pub resources_sent: u64,
    pub bytes_sent: u64,
    pub nacks: u64,
    pub last_nack: Option<String>,
    /// The latest system version evaluated for this subscriber (sent, found unchanged, or withheld as rejected).
    pub seen_version: u64,
    /// The system version this subscriber last acknowledged (or was found in sync with).
    pub synced_version: u64,
    /// Resources and bytes of its current subset.
    pub subset_resources: usize,
    pub subset_bytes: u64,
}

/// Control-plane counters.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub connected: usize,
    pub updates: u64,
    pub resources_sent: u64,
    pub bytes_sent: u64,
    pub acks: u64,
    pub nacks: u64,
    /// Subscriptions refused by identity (`PermissionDenied`), and the last refusal's message.
    pub denied: u64,
    pub last_denied: Option<String>,
    /// TLS handshakes that failed (no client certificate, another CA, another trust domain, ...).
    pub handshake_failures: u64,
    pub nodes: HashMap<String, NodeStats>,
}

struct Inner {
    current: watch::Sender<Arc<DocSet>>,
    shutdown: watch::Sender<bool>,
    stats: Mutex<Stats>,
    events: watch::Sender<u64>,
    /// Node id → digest of the subset it rejected.
    nacked: Mutex<HashMap<String, u64>>,
    nonces: AtomicU64,
}

/// The push tier's server side. Cheap to clone (shared state).
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
    /// Set on the service [`ControlPlane::serve_tls`] runs: every `Subscribe` is then authorized.
    access: Option<Arc<Access>>,
}

impl Default for ControlPlane {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("current", &*self.current())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ControlPlane {
    /// A control plane serving an empty set (system version 0) until the first [`ControlPlane::publish`].
    pub fn new() -> ControlPlane {
        let (current, _) = watch::channel(Arc::new(DocSet::new(0, Vec::new())));
        ControlPlane {
            inner: Arc::new(Inner {
                current,
                shutdown: watch::channel(false).0,
                stats: Mutex::new(Stats::default()),
                events: watch::channel(0).0,
                nacked: Mutex::new(HashMap::new()),
                nonces: AtomicU64::new(0),
            }),
            access: None,
        }
    }

    /// Replaces the whole document set (multi-document YAML texts, each with a file name for errors) and
    /// returns its system version. Subscribers receive what changed for them.
    pub fn publish(&self, docs: &[(PathBuf, String)]) -> Result<u64, DocumentError> {
        let objects = resources::split_documents(docs)?;
        let mut version = 0;
        self.inner.current.send_modify(|cur| {
            version = cur.system_version + 1;
            *cur = Arc::new(DocSet::new(version, objects));
        });
        tracing::info!(system_version = version, "push: config published");
        Ok(version)
    }

    /// The current document set.
    pub fn current(&self) -> Arc<DocSet> {
        self.inner.current.borrow().clone()
    }

    /// Publishes the YAML files of `dir` now, then again whenever they change (through
    /// [`mesh::config::watch_dir`]: only a folder that the mesh model accepts is published).
    pub fn watch_dir(
        &self,
        dir: PathBuf,
        trust_domain: String,
        debounce: Duration,
    ) -> Result<mesh::config::WatchGuard, mesh::config::ConfigError> {
        let to_config_error = |dir: &std::path::Path, message: String| mesh::config::ConfigError {
            file: dir.to_path_buf(),
            object: String::new(),
            field: String::new(),
            message,
        };
        let read = {
            let cp = self.clone();
            move |dir: &std::path::Path| {
                let docs =
                    resources::read_dir(dir).map_err(|e| to_config_error(dir, e.to_string()))?;
                cp.publish(&docs)
                    .map_err(|e| to_config_error(&e.file, e.to_string()))
            }
        };
        mesh::config::Mesh::load_dir(&dir, &trust_domain)?;
        let first = read(&dir)?;
        let live = Arc::new(mesh::config::Live::new(first));
        let watched = dir.clone();
        Ok(mesh::config::watch_dir(
            dir,
            trust_domain,
            debounce,
            live,
            move |_| read(&watched),
        ))
    }

    /// A copy of the counters.
    pub fn stats(&self) -> Stats {
        lock(&self.inner.stats).clone()
    }

    /// Waits until `pred` holds for the counters, for at most `timeout`; returns whether it held.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&Stats) -> bool) -> bool {
        let mut events = self.inner.events.subscribe();
        let wait = async {
            loop {
                if pred(&lock(&self.inner.stats)) {
                    return;
                }
                if events.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// The gRPC service, to add to a tonic server.
    pub fn service(&self) -> PushServer<ControlPlane> {
        PushServer::new(self.clone()).max_decoding_message_size(64 << 20)
    }

    /// Serves on `listener` until `shutdown` resolves; then every stream ends (subscribers reconnect elsewhere
    /// or later) and the server stops.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let inner = self.inner.clone();
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(self.service())
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                inner.shutdown.send_replace(true);
            })
            .await
    }

    /// Serves mutual TLS on `listener` with `certs` (the control plane's own identity and the trust bundle)
    /// until `shutdown` resolves: a client certificate chained to the bundle is required, and each
    /// subscription is authorized by the client's identity under `access` (see [`crate::tls`]).
    pub async fn serve_tls(
        &self,
        listener: tokio::net::TcpListener,
        certs: mesh::identity::CertStore,
        access: Access,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let inner = self.inner.clone();
        let failed = {
            let cp = self.clone();
            Arc::new(move |why: String| {
                tracing::debug!(error = %why, "push: refused a connection");
                cp.record_global(|s| s.handshake_failures += 1);
            })
        };
        let incoming = ReceiverStream::new(tls::accept_loop(listener, certs, failed));
        let service = ControlPlane {
            inner: self.inner.clone(),
            access: Some(Arc::new(access)),
        };
        tonic::transport::Server::builder()
            .add_service(service.service())
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                inner.shutdown.send_replace(true);
            })
            .await
    }

    fn record_global(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut lock(&self.inner.stats));
        self.inner.events.send_modify(|e| *e += 1);
    }

    fn record(&self, node: &str, f: impl FnOnce(&mut Stats, &mut NodeStats)) {
        {
            let mut stats = lock(&self.inner.stats);
            let mut n = stats.nodes.remove(node).unwrap_or_default();
            f(&mut stats, &mut n);
            stats.nodes.insert(node.to_string(), n);
        }
        self.inner.events.send_modify(|e| *e += 1);
    }
}

type UpdateStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Update, Status>> + Send>>;

#[tonic::async_trait]
impl Push for ControlPlane {
    type StreamStream = UpdateStream;

    async fn stream(
        &self,
        request: Request<Streaming<pb::SubscriberMessage>>,
    ) -> Result<Response<UpdateStream>, Status> {
        let peer = tls::peer_of(&request);
        let mut inbound = request.into_inner();
        let first = inbound.message().await?;
        let Some(pb::SubscriberMessage {
            message: Some(pb::subscriber_message::Message::Subscribe(sub)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message must be a Subscribe",
            ));
        };
        let target = target_of(&sub)?;
        if let Some(access) = &self.access {
            self.authorize(access, peer.as_ref(), &sub.node_id, &target)?;
        }
        let (tx, rx) = mpsc::channel(2);
        let cp = self.clone();
        tokio::spawn(async move { cp.session(sub, target, inbound, tx).await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl ControlPlane {
    /// The verified `peer` may subscribe for `target`, or the refusal (logged and counted).
    fn authorize(
        &self,
        access: &Access,
        peer: Option<&tls::Peer>,
        node: &str,
        target: &Target,
    ) -> Result<(), Status> {
        let verdict = match peer.and_then(|p| p.identity.as_ref()) {
            Some(identity) => tls::authorize(access, identity, target),
            None => Err("no verified SPIFFE identity on this connection".to_string()),
        };
        verdict.map_err(|why| {
            let message = format!("node {node:?}: {why}");
            let addr = peer.map(|p| p.addr);
            tracing::warn!(%message, ?addr, "push: subscription refused");
            self.record_global(|s| {
                s.denied += 1;
                s.last_denied = Some(message.clone());
            });
            Status::permission_denied(message)
        })
    }
}

fn target_of(sub: &pb::Subscribe) -> Result<Target, Status> {
    if sub.node_id.is_empty() {
        return Err(Status::invalid_argument("Subscribe.node_id is empty"));
    }
    match pb::SubscriberKind::try_from(sub.kind) {
        Ok(pb::SubscriberKind::Waypoint) => match sub.target.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok(Target::Waypoint {
                namespace: ns.to_string(),
                name: name.to_string(),
            }),
            _ => Err(Status::invalid_argument(
                "a WAYPOINT target is the Gateway as namespace/name",
            )),
        },
        Ok(pb::SubscriberKind::Ztunnel) => Ok(Target::Ztunnel),
        _ => Err(Status::invalid_argument(
            "Subscribe.kind must be WAYPOINT or ZTUNNEL",
        )),
    }
}

/// An update sent and not yet answered.
struct Pending {
    nonce: String,
    subset: Arc<Subset>,
    system_version: u64,
}

impl ControlPlane {
    async fn session(
        self,
        sub: pb::Subscribe,
        target: Target,
        mut inbound: Streaming<pb::SubscriberMessage>,
        tx: mpsc::Sender<Result<pb::Update, Status>>,
    ) {
        let node = sub.node_id.clone();
        let mut have: Arc<Versions> = Arc::new(
            sub.resource_versions
                .iter()
                .map(|(k, v)| {
                    (
                        Arc::from(k.as_str()),
                        u64::from_str_radix(v, 16).unwrap_or(0),
                    )
                })
                .collect(),
        );
        tracing::debug!(node = %node, ?target, resumed = have.len(), "push: subscriber connected");
        self.record(&node, |s, n| {
            s.connected += 1;
            n.connected = true;
            n.streams += 1;
        });
        let mut current = self.inner.current.subscribe();
        let mut shutdown = self.inner.shutdown.subscribe();
        let mut pending: Option<Pending> = None;
        let mut dirty = true;
        let mut first = true;
        loop {
            if pending.is_none() && dirty {
                dirty = false;
                let set = current.borrow_and_update().clone();
                let subset = set.subset(&target);
                let rejected = lock(&self.inner.nacked).get(&node) == Some(&subset.digest);
                let delta = diff(&have, &subset);
                self.record(&node, |_, n| n.seen_version = set.system_version);
                if rejected {
                    tracing::debug!(node = %node, "push: not resending a rejected update");
                } else if delta.is_empty() && !first {
                    have = subset.versions.clone();
                    self.record(&node, |_, n| n.synced_version = set.system_version);
                } else {
                    let nonce = format!(
                        "{}-{}",
                        set.system_version,
                        self.inner.nonces.fetch_add(1, Ordering::Relaxed)
                    );
                    let bytes: u64 = delta.changed.iter().map(|o| o.payload.len() as u64).sum();
                    let count = delta.changed.len() as u64;
                    let update = pb::Update {
                        nonce: nonce.clone(),
                        system_version: set.system_version.to_string(),
                        resources: delta
                            .changed
                            .iter()
                            .map(|o| pb::Resource {
                                name: o.name.to_string(),
                                version: version_string(o.version),
                                payload: o.payload.clone(),
                            })
                            .collect(),
                        removed: delta.removed.iter().map(|n| n.to_string()).collect(),
                    };
                    if tx.send(Ok(update)).await.is_err() {
                        break;
                    }
                    self.record(&node, |s, n| {
                        s.updates += 1;
                        s.resources_sent += count;
                        s.bytes_sent += bytes;
                        n.updates += 1;
                        n.resources_sent += count;
                        n.bytes_sent += bytes;
                        n.subset_resources = subset.objects.len();
                        n.subset_bytes = subset.bytes;
                    });
                    pending = Some(Pending {
                        nonce,
                        subset,
                        system_version: set.system_version,
                    });
                }
                first = false;
            }
            tokio::select! {
                changed = current.changed() => {
                    if changed.is_err() { break; }
                    dirty = true;
                }
                _ = shutdown.wait_for(|s| *s) => break,
                msg = inbound.message() => {
                    let Ok(Some(msg)) = msg else { break };
                    self.answer(&node, msg.message, &mut pending, &mut have);
                }
            }
        }
        self.record(&node, |s, n| {
            s.connected -= 1;
            n.connected = false;
        });
        tracing::debug!(node = %node, "push: subscriber gone");
    }

    /// Applies an ACK or NACK to the session state.
    fn answer(
        &self,
        node: &str,
        msg: Option<pb::subscriber_message::Message>,
        pending: &mut Option<Pending>,
        have: &mut Arc<Versions>,
    ) {
        use pb::subscriber_message::Message;
        let (nonce, nack) = match msg {
            Some(Message::Ack(a)) => (a.nonce, None),
            Some(Message::Nack(n)) => (n.nonce, Some(n.error_detail)),
            _ => {
                tracing::warn!(node, "push: unexpected message on a subscribed stream");
                return;
            }
        };
        if pending.as_ref().is_none_or(|p| p.nonce != nonce) {
            tracing::debug!(node, nonce, "push: stale nonce ignored");
            return;
        }
        let Some(p) = pending.take() else { return };
        match nack {
            None => {
                *have = p.subset.versions.clone();
                lock(&self.inner.nacked).remove(node);
                self.record(node, |s, n| {
                    s.acks += 1;
                    n.synced_version = p.system_version;
                });
            }
            Some(error) => {
                tracing::warn!(node, nonce, system_version = p.system_version, error = %error,
                    "push: update rejected by the subscriber: it keeps its previous config");
                lock(&self.inner.nacked).insert(node.to_string(), p.subset.digest);
                self.record(node, |s, n| {
                    s.nacks += 1;
                    n.nacks += 1;
                    n.last_nack = Some(error);
                });
            }
        }
    }
}
