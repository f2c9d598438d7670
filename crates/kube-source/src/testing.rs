//! A fake Kubernetes API server for tests (feature `testing`): a real hyper HTTP/1.1 server on `127.0.0.1:0`
//! that speaks the list/watch protocol for every [`Kind`] plus [`EXTRA_RESOURCES`] (`coordination.k8s.io/v1`
//! Leases, `apps/v1` Deployments, `v1` ServiceAccounts), and records the requests it answers.
//!
//! Like an API server without controllers: no garbage collector (ownerReferences are stored, never acted on)
//! and no Service clusterIP allocator (a test sets `spec.clusterIP` with [`FakeApiServer::apply`]).
//!
//! - list: the current objects with the current `resourceVersion` (one global counter, as etcd's), label and
//!   field selectors (equality-based) honoured; `limit` is ignored (one page).
//! - watch (`?watch=1`): a chunked stream of JSON lines, `ADDED`/`MODIFIED`/`DELETED` after the requested
//!   `resourceVersion` (replayed from the history, then live), `BOOKMARK`s when asked for
//!   (`allowWatchBookmarks`) and pushed by [`FakeApiServer::bookmark`]. A version older than the last
//!   [`FakeApiServer::compact`] is `410 Gone`: an `ERROR` event in a 200 stream (what API servers do), or an
//!   HTTP 410 after [`FakeApiServer::set_gone_as_http`].
//! - faults: [`FakeApiServer::cut_watches`] breaks every open stream in the middle of a line,
//!   [`FakeApiServer::end_watches`] ends them cleanly;
//!   [`FakeApiServer::hold_watches`] makes new watch requests wait (so changes and compactions can be made
//!   while every watcher is away) until [`FakeApiServer::release_watches`].
//! - writes: create (POST), replace (PUT, `resourceVersion` precondition → 409), merge patch (object or
//!   `/status`), delete — each makes its event. Status patches and Lease writes are in
//!   [`FakeApiServer::requests`].
//!
//! Objects are pushed with [`FakeApiServer::apply`] (multi-document YAML, create or replace, as `kubectl apply`
//! would from a test's point of view) and [`FakeApiServer::delete`].

mod http;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::kinds::Kind;
use http::Shared;
pub use state::{Recorded, Resource, EXTRA_RESOURCES};

/// What the fake server refused.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    #[error("bad YAML: {0}")]
    Yaml(String),
    #[error("the fake API server does not serve {0}")]
    UnknownKind(String),
    #[error("{code}: {message}")]
    Refused { code: u16, message: String },
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot make a client: {0}")]
    Client(#[from] kube::Error),
}

/// The running server; stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FakeApiServer {
    /// Starts an empty server on `127.0.0.1:0`.
    pub async fn start() -> Result<Self, FakeError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new());
        let task = tokio::spawn(http::serve(listener, shared.clone()));
        Ok(FakeApiServer { addr, shared, task })
    }

    /// Starts a server holding the objects of `yaml` (multi-document).
    pub async fn start_with(yaml: &str) -> Result<Self, FakeError> {
        let server = Self::start().await?;
        server.apply(yaml)?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client for this server (plain HTTP, no credentials).
    pub fn client(&self) -> Result<kube::Client, FakeError> {
        let url = self
            .url()
            .parse()
            .map_err(|e| FakeError::Yaml(format!("server URL: {e}")))?;
        let mut config = kube::Config::new(url);
        config.default_namespace = "default".into();
        Ok(kube::Client::try_from(config)?)
    }

    /// Creates or replaces every object of `yaml` (a missing namespace is `default`; an object given without
    /// `status` keeps the one it has). Returns the `resourceVersion` after the last one.
    pub fn apply(&self, yaml: &str) -> Result<u64, FakeError> {
        let mut rv = self.resource_version();
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let object = Value::deserialize(doc).map_err(|e| FakeError::Yaml(e.to_string()))?;
            if object.is_null() {
                continue;
            }
            let res = self.resource_of(&object)?;
            let ns = namespace_of(&res, &object);
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let out = self.shared.mutate(|s| match s.get(&res, &ns, &name) {
                Some(old) => {
                    let mut next = object.clone();
                    if next.get("status").is_none() {
                        if let Some(status) = old.get("status") {
                            next["status"] = status.clone();
                        }
                    }
                    s.replace(&res, &ns, &name, next, false)
                }
                None => s.create(&res, &ns, object.clone()),
            });
            out.map_err(refused)?;
            rv = self.resource_version();
        }
        Ok(rv)
    }

    /// Sets an object's status as another controller would (a MODIFIED event).
    pub fn set_status(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
        status: Value,
    ) -> Result<u64, FakeError> {
        let res = self.resource(kind)?;
        let object = json!({"status": status});
        self.shared
            .mutate(|s| s.replace(&res, ns, name, object, true))
            .map_err(refused)?;
        Ok(self.resource_version())
    }

    /// Deletes an object (a DELETED event); `kind` as in `kind:` (`HTTPRoute`, `Lease`, …).
    pub fn delete(&self, kind: &str, ns: &str, name: &str) -> Result<u64, FakeError> {
        let res = self.resource(kind)?;
        self.shared
            .mutate(|s| s.delete(&res, ns, name))
            .map_err(refused)?;
        Ok(self.resource_version())
    }

    /// The object as stored, if it exists.
    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let res = self.resource(kind).ok()?;
        self.shared.read().get(&res, ns, name).cloned()
    }

    /// The current `resourceVersion`.
    pub fn resource_version(&self) -> u64 {
        self.shared.read().rv
    }

    /// Sends a `BOOKMARK` at a new `resourceVersion` to every watch that asked for bookmarks; returns it.
    pub fn bookmark(&self) -> u64 {
        self.shared.mutate(|s| s.bookmark())
    }

    /// Forgets the history up to now: a watch from an older `resourceVersion` gets `410 Gone`.
    pub fn compact(&self) {
        self.shared.mutate(|s| {
            s.compacted = s.rv;
            s.log.clear();
        });
    }

    /// Answer `410` as an HTTP status (`true`) or as an `ERROR` event in the stream (`false`, the default).
    pub fn set_gone_as_http(&self, on: bool) {
        self.shared.mutate(|s| s.gone_as_http = on);
    }

    /// Breaks every open watch stream in the middle of an event: after the events so far, half a JSON line,
    /// then the connection is aborted. As in a real network failure, bytes still in flight may be lost.
    pub fn cut_watches(&self) {
        self.shared.mutate(|s| s.cuts += 1);
    }

    /// Ends every open watch stream cleanly after the events so far (as when its `timeoutSeconds` runs out):
    /// everything sent before reaches the client.
    pub fn end_watches(&self) {
        self.shared.mutate(|s| s.ends += 1);
    }

    /// New watch requests wait until [`FakeApiServer::release_watches`].
    pub fn hold_watches(&self) {
        self.shared.mutate(|s| s.held = true);
    }

    pub fn release_watches(&self) {
        self.shared.mutate(|s| s.held = false);
    }

    /// Open watch streams of a resource (`pods`, `httproutes`, …).
    pub fn open_watches(&self, plural: &str) -> usize {
        self.shared
            .read()
            .open_watches
            .get(plural)
            .copied()
            .unwrap_or(0)
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.read().requests.clone()
    }

    /// The successful PATCHes of `/status` subresources.
    pub fn status_patches(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "PATCH" && r.path.ends_with("/status") && r.status == 200)
            .collect()
    }

    /// The successful writes (create, replace) of Leases.
    pub fn lease_writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.contains("/leases") && matches!(r.method.as_str(), "POST" | "PUT"))
            .filter(|r| r.status == 200)
            .collect()
    }

    /// Waits until `done(self)` holds, re-checking on every change of the server's state, for at most
    /// `timeout`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Result<(), FakeError> {
        let mut tick = self.shared.tick.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            tick.borrow_and_update();
            if done(self) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, tick.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(FakeError::Timeout(what.into())),
            }
        }
    }

    fn resource(&self, kind: &str) -> Result<Resource, FakeError> {
        self.shared
            .resources
            .iter()
            .find(|r| r.kind == kind)
            .cloned()
            .ok_or_else(|| FakeError::UnknownKind(kind.into()))
    }

    fn resource_of(&self, object: &Value) -> Result<Resource, FakeError> {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        self.shared
            .resource_by_kind(group, kind)
            .ok_or_else(|| FakeError::UnknownKind(format!("{kind} ({api_version})")))
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
        // Connections already accepted live on: end their watches so no task waits forever.
        self.shared.mutate(|s| {
            s.held = false;
            s.ends += 1;
        });
    }
}

fn namespace_of(res: &Resource, object: &Value) -> String {
    match object["metadata"]["namespace"].as_str() {
        _ if !res.namespaced => String::new(),
        Some(ns) if !ns.is_empty() => ns.into(),
        _ => "default".into(),
    }
}

fn refused(r: state::Refused) -> FakeError {
    FakeError::Refused {
        code: r.code,
        message: r.message,
    }
}

/// The `kind:` names this server serves, for callers that build YAML.
pub fn served_kinds() -> Vec<&'static str> {
    Kind::ALL
        .iter()
        .map(|k| k.name())
        .chain(EXTRA_RESOURCES.map(|(_, kind, _)| kind))
        .collect()
}
