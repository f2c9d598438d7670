//! The subscriber side: [`subscribe`] opens a `Push/Stream` and yields each update applied to the documents
//! held so far; [`watch_push`] runs that as a config source for a proxy — the same contract as
//! [`mesh::config::watch_dir`]: every update is parsed (re-reading only the objects that changed since the last
//! parse: a [`ParseCache`] kept for the source's life) and compiled (at idle
//! priority first: [`mesh::config::background::run`]), success is
//! stored in the [`Live`], failure is NACKed and recorded with [`Live::set_error`] while the last good snapshot
//! keeps serving. When the stream breaks it reconnects with jittered exponential backoff, reporting the versions
//! it holds so that only the difference is sent.
//!
//! Both take a [`Dial`]: a plain `http://` URL (a `String` converts), or `https://` with the subscriber's own
//! certificate and the control-plane identity to expect ([`crate::tls`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mesh::config::{ConfigError, Live, Mesh, ParseCache};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use waypoint_proto::push::v1 as pb;
use waypoint_proto::push::v1::push_client::PushClient;

pub use crate::tls::{ClientTls, Dial};

pub use pb::{Subscribe, SubscriberKind};

/// The documents a subscriber holds: name → (version, JSON payload).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DocumentSet {
    pub resources: BTreeMap<String, (String, Bytes)>,
}

impl DocumentSet {
    /// This set with `update` applied.
    pub fn apply(&self, update: &pb::Update) -> DocumentSet {
        let mut next = self.clone();
        for name in &update.removed {
            next.resources.remove(name);
        }
        for r in &update.resources {
            next.resources
                .insert(r.name.clone(), (r.version.clone(), r.payload.clone()));
        }
        next
    }
    /// The versions to report when resuming.
    pub fn versions(&self) -> HashMap<String, String> {
        self.resources
            .iter()
            .map(|(n, (v, _))| (n.clone(), v.clone()))
            .collect()
    }
    /// As [`Mesh::from_documents`] reads them: one document per object, named `push/<Kind>/<ns>/<name>`.
    pub fn documents(&self) -> Vec<(PathBuf, String)> {
        self.resources
            .iter()
            .map(|(n, (_, p))| {
                (
                    PathBuf::from(format!("push/{n}")),
                    String::from_utf8_lossy(p).into_owned(),
                )
            })
            .collect()
    }
    pub fn bytes(&self) -> u64 {
        self.resources.values().map(|(_, p)| p.len() as u64).sum()
    }
}

/// An update received, applied to the held documents but not yet acknowledged.
#[derive(Debug)]
pub struct Received {
    pub nonce: String,
    pub system_version: String,
    /// The held documents with this update applied.
    pub documents: DocumentSet,
    pub changed: usize,
    pub removed: usize,
    /// Payload bytes in this update.
    pub bytes: u64,
}

/// One open `Push/Stream`.
#[derive(Debug)]
pub struct Subscription {
    inbound: Streaming<pb::Update>,
    outbound: mpsc::Sender<pb::SubscriberMessage>,
    held: DocumentSet,
}

/// Connects to `endpoint` (`http://host:port`, or `https://` with a [`Dial`]'s credentials) and subscribes,
/// reporting the versions of `held` (empty for a first start). Errors are connection failures (including a
/// failed TLS handshake) or the server's refusal (a bad `Subscribe`, `PermissionDenied` for an identity that
/// may not subscribe for that target).
pub async fn subscribe(
    endpoint: impl Into<Dial>,
    mut sub: pb::Subscribe,
    held: DocumentSet,
) -> Result<Subscription, Status> {
    let channel = crate::tls::channel(&endpoint.into()).await?;
    let mut client = PushClient::new(channel).max_decoding_message_size(256 << 20);
    sub.resource_versions = held.versions();
    let (outbound, rx) = mpsc::channel(4);
    outbound
        .send(pb::SubscriberMessage {
            message: Some(pb::subscriber_message::Message::Subscribe(sub)),
        })
        .await
        .map_err(|_| Status::internal("request stream closed"))?;
    let inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    Ok(Subscription {
        inbound,
        outbound,
        held,
    })
}

impl Subscription {
    /// The next update (None: the server ended the stream).
    pub async fn next(&mut self) -> Result<Option<Received>, Status> {
        let Some(update) = self.inbound.message().await? else {
            return Ok(None);
        };
        Ok(Some(Received {
            documents: self.held.apply(&update),
            changed: update.resources.len(),
            removed: update.removed.len(),
            bytes: update
                .resources
                .iter()
                .map(|r| r.payload.len() as u64)
                .sum(),
            nonce: update.nonce,
            system_version: update.system_version,
        }))
    }
    /// Accepts `r`: its documents become the held ones.
    pub async fn ack(&mut self, r: Received) -> Result<(), Status> {
        self.held = r.documents;
        self.send(pb::subscriber_message::Message::Ack(pb::Ack {
            nonce: r.nonce,
        }))
        .await
    }
    /// Rejects `r`: the held documents stay as they were.
    pub async fn nack(&mut self, r: &Received, error: String) -> Result<(), Status> {
        self.send(pb::subscriber_message::Message::Nack(pb::Nack {
            nonce: r.nonce.clone(),
            error_detail: error,
        }))
        .await
    }
    /// The documents last acknowledged.
    pub fn held(&self) -> &DocumentSet {
        &self.held
    }
    /// Ends the stream, returning the held documents (to resume with).
    pub fn into_held(self) -> DocumentSet {
        self.held
    }
    async fn send(&self, m: pb::subscriber_message::Message) -> Result<(), Status> {
        self.outbound
            .send(pb::SubscriberMessage { message: Some(m) })
            .await
            .map_err(|_| Status::unavailable("stream closed"))
    }
}

/// What a [`watch_push`] source has done so far.
#[derive(Clone, Debug, Default)]
pub struct PushStatus {
    pub connected: bool,
    /// Streams opened (1 + reconnects).
    pub connects: u64,
    /// Updates received, applied (compiled and stored or already in sync) and rejected.
    pub updates: u64,
    pub applied: u64,
    pub nacked: u64,
    pub resources_received: u64,
    pub bytes_received: u64,
    /// Objects held now.
    pub resources: usize,
    /// The system version last applied.
    pub system_version: String,
    pub last_error: Option<String>,
    /// Objects read with YAML/JSON so far, and objects whose earlier reading was reused (unchanged since), by
    /// the parses that had the cache (a compile lane's copy that found it taken parses without it; an overtaken
    /// copy still reports when it finishes).
    pub objects_parsed: u64,
    pub objects_reused: u64,
}

/// Stops a [`watch_push`] source when dropped.
#[derive(Debug)]
pub struct PushGuard {
    stop: watch::Sender<bool>,
    status: watch::Receiver<PushStatus>,
}

impl PushGuard {
    /// The source's progress, to observe or await (`wait_for`).
    pub fn status(&self) -> watch::Receiver<PushStatus> {
        self.status.clone()
    }
}

impl Drop for PushGuard {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Subscribes to the control plane at `endpoint` and keeps `live` compiled from what it pushes (see the module
/// doc), until the guard is dropped. Runs on the current Tokio runtime when there is one, else on a thread of
/// its own.
pub fn watch_push<T, F>(
    endpoint: impl Into<Dial>,
    sub: pb::Subscribe,
    trust_domain: String,
    live: Arc<Live<T>>,
    compile: F,
) -> PushGuard
where
    T: Send + Sync + 'static,
    F: Fn(&Mesh) -> Result<T, ConfigError> + Send + Sync + 'static,
{
    let (stop, stop_rx) = watch::channel(false);
    let (status_tx, status) = watch::channel(PushStatus::default());
    let run = run(
        endpoint.into(),
        sub,
        trust_domain,
        live,
        Arc::new(compile),
        stop_rx,
        Arc::new(status_tx),
    );
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(run);
        }
        Err(_) => {
            let spawned = std::thread::Builder::new()
                .name("push-watch".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(run),
                        Err(e) => tracing::error!(error = %e, "push: cannot start a runtime"),
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "push: cannot start the subscriber thread");
            }
        }
    }
    PushGuard { stop, status }
}

async fn run<T, F>(
    endpoint: Dial,
    sub: pb::Subscribe,
    trust_domain: String,
    live: Arc<Live<T>>,
    compile: Arc<F>,
    mut stop: watch::Receiver<bool>,
    status: Arc<watch::Sender<PushStatus>>,
) where
    T: Send + Sync + 'static,
    F: Fn(&Mesh) -> Result<T, ConfigError> + Send + Sync + 'static,
{
    let mut held = DocumentSet::default();
    let mut applied_once = false;
    // Updates are parsed one at a time; a lane's copy that finds it taken (by the copy it overtook) parses
    // without it.
    let cache = Arc::new(Mutex::new(ParseCache::new()));
    let mut backoff = Duration::from_millis(100);
    loop {
        let session = async {
            let mut s = subscribe(endpoint.clone(), sub.clone(), held.clone()).await?;
            status.send_modify(|st| {
                st.connected = true;
                st.connects += 1;
            });
            while let Some(r) = s.next().await? {
                backoff = Duration::from_millis(100);
                status.send_modify(|st| {
                    st.updates += 1;
                    st.resources_received += r.changed as u64;
                    st.bytes_received += r.bytes;
                });
                if applied_once && r.changed == 0 && r.removed == 0 {
                    status.send_modify(|st| {
                        st.applied += 1;
                        st.system_version = r.system_version.clone();
                    });
                    s.ack(r).await?;
                    continue;
                }
                let docs = r.documents.documents();
                let (td, compile, live2) = (trust_domain.clone(), compile.clone(), live.clone());
                let (c, st) = (cache.clone(), status.clone());
                let compiled = tokio::task::spawn_blocking(move || {
                    // on an idle-priority thread: a compile does not take a core from in-flight requests
                    let job = move || {
                        let mesh = match c.try_lock() {
                            Ok(mut cache) => {
                                let mesh = Mesh::from_documents_cached(&docs, &td, &mut cache);
                                let stats = cache.stats();
                                drop(cache);
                                // Sent by whichever copy parsed with the cache, even one overtaken.
                                st.send_modify(|st| {
                                    st.objects_parsed = stats.parsed;
                                    st.objects_reused = stats.reused;
                                });
                                mesh
                            }
                            Err(_) => Mesh::from_documents(&docs, &td),
                        };
                        mesh.and_then(|m| compile(&m))
                    };
                    match mesh::config::background::run(job) {
                        Ok(next) => {
                            live2.store(next);
                            Ok(())
                        }
                        Err(e) => {
                            live2.set_error(e.clone());
                            Err(e)
                        }
                    }
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
                match compiled {
                    Ok(()) => {
                        applied_once = true;
                        let (n, v) = (r.documents.resources.len(), r.system_version.clone());
                        s.ack(r).await?;
                        held = s.held().clone();
                        status.send_modify(|st| {
                            st.applied += 1;
                            st.resources = n;
                            st.system_version = v;
                        });
                    }
                    Err(e) => {
                        tracing::error!(error = %e, system_version = %r.system_version,
                            "push: update rejected: the previous config keeps serving");
                        s.nack(&r, e.to_string()).await?;
                        status.send_modify(|st| {
                            st.nacked += 1;
                            st.last_error = Some(e.to_string());
                        });
                    }
                }
            }
            Ok::<(), Status>(())
        };
        let ended = tokio::select! {
            r = session => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        status.send_modify(|st| st.connected = false);
        let url = &endpoint.url;
        match ended {
            Ok(()) => tracing::info!(%url, "push: stream ended; reconnecting"),
            Err(e) => {
                tracing::warn!(%url, error = %e, "push: stream failed; reconnecting");
                status.send_modify(|st| st.last_error = Some(e.message().to_string()));
            }
        }
        let delay = backoff.mul_f64(0.5 + fastrand::f64());
        backoff = (backoff * 2).min(Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
