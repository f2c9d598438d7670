//! [`watch_api`]: the API-server twin of [`mesh::config::watch_dir`] — same compile callback, same [`Live`]
//! contract, objects from list/watch instead of files.
//!
//! One `kube::runtime::watcher` per kind (per kind and namespace when scoped) keeps its partition of the
//! [`Store`](crate::store) current: it lists, then watches from the list's `resourceVersion` with bookmarks,
//! resumes a broken watch from the last version seen (event or bookmark), and relists on `410 Gone`, whether the
//! server says it as an `ERROR` event in the stream or as an HTTP 410 answer to the watch request (kube's
//! watcher only relists on the former; this loop restarts it on the latter). Failures back off exponentially.
//!
//! Any change wakes one render task, which waits for `debounce` of quiet (at most ten debounces), renders the store into documents
//! (`api/<Kind>/<namespace>/<name>`, JSON), parses them with [`Mesh::from_documents_cached`] (only the objects
//! that changed are read again) and compiles them off the async threads, at idle priority
//! ([`mesh::config::background`]); success is stored in the [`Live`],
//! failure recorded with [`Live::set_error`] while the last good value keeps serving. When idle, the render task
//! wakes every [`REAP_EVERY`] to free, off the async threads, the snapshots readers have let go of
//! ([`Live::reap`]). Nothing is compiled before every watcher's initial list has completed
//! ([`ApiWatchGuard::is_ready`]), so a proxy never serves a half-listed cluster.
//!
//! Scoping, to cut API-server load: [`WatchOptions::namespaces`] watches namespaced kinds only in those
//! namespaces (and those Namespace objects by name); [`WatchOptions::node_name`] watches only the Pods on one
//! node (`spec.nodeName` field selector), for a ztunnel that needs its local workloads only;
//! [`WatchOptions::label_selectors`] adds a label selector to a kind. Scoping a waypoint to namespaces is sound
//! only when the list holds the Gateway's namespace, every namespace whose Services bind to it, and every
//! namespace its routes send to (backends and their Pods/EndpointSlices, ReferenceGrants): an object outside
//! the list is simply absent, so a route to it resolves as a missing backend. Nothing is scoped by default.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher;
use mesh::config::live::REAP_EVERY;
use mesh::config::{ConfigError, Live, Mesh, ParseCache};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::kinds::Kind;
use crate::store::{PartitionId, Store};

/// What to watch, and how to retry.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// The kinds watched (default: all of [`Kind::ALL`]). A ztunnel, for one, has no use for routes.
    pub kinds: Vec<Kind>,
    /// Watch namespaced kinds only in these namespaces, and only these Namespaces (default: all). See the module
    /// doc for when this is sound.
    pub namespaces: Option<Vec<String>>,
    /// Watch only the Pods with this `spec.nodeName` (field selector).
    pub node_name: Option<String>,
    /// A label selector per kind (e.g. `istio.io/dataplane-mode=ambient` on Namespaces).
    pub label_selectors: BTreeMap<Kind, String>,
    /// Page size of lists (`limit`); `None`: unpaged.
    pub page_size: Option<u32>,
    /// First wait after a failure; doubles per failure in a row up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            kinds: Kind::ALL.to_vec(),
            namespaces: None,
            node_name: None,
            label_selectors: BTreeMap::new(),
            page_size: Some(500),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// State shared by the watchers, the render task and the guard.
struct Shared {
    store: Mutex<Store>,
    /// Woken by every change of the store.
    changed: Notify,
    /// True once every watcher has listed.
    ready: watch::Sender<bool>,
    /// Renders attempted (successful or not), for those waiting on a change to land.
    renders: watch::Sender<u64>,
    relists: AtomicU64,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        // Store methods leave it consistent at every step; a panic elsewhere cannot half-write it.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Watches the API server and keeps `live` compiled from it until dropped. See the module doc.
///
/// Must be called inside a Tokio runtime (the watchers are tasks on it); outside one, the failure is recorded
/// with [`Live::set_error`] and the guard watches nothing. `compile` runs on the config lanes
/// ([`mesh::config::background::run`]: idle priority first), waited for on the blocking pool.
pub fn watch_api<T, F>(
    client: kube::Client,
    opts: WatchOptions,
    trust_domain: String,
    debounce: Duration,
    live: Arc<Live<T>>,
    compile: F,
) -> ApiWatchGuard
where
    T: Send + Sync + 'static,
    F: Fn(&Mesh) -> Result<T, ConfigError> + Send + Sync + 'static,
{
    let parse = cached_parse(trust_domain);
    watch_api_documents(client, opts, debounce, live, move |docs| {
        compile(&parse(docs)?)
    })
}

/// A parse of rendered documents that re-reads only the documents that changed since its last call (its own
/// [`ParseCache`]), for a [`watch_api_documents`] render step.
pub fn cached_parse(
    trust_domain: String,
) -> impl Fn(&[(PathBuf, String)]) -> Result<Mesh, ConfigError> + Send + Sync + 'static {
    // Renders run one at a time, off the request path: the lock is never contended.
    let cache = Mutex::new(ParseCache::new());
    move |docs| {
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        Mesh::from_documents_cached(docs, &trust_domain, &mut cache)
    }
}

/// [`watch_api`] for a compile step that reads the rendered documents itself (e.g. to parse kinds the
/// [`Mesh`] skips, such as `AuthorizationPolicy`, from the same objects); each is `(api/<Kind>/<ns>/<name>,
/// JSON)`, in [`Kind::ALL`] order.
pub fn watch_api_documents<T, F>(
    client: kube::Client,
    opts: WatchOptions,
    debounce: Duration,
    live: Arc<Live<T>>,
    compile: F,
) -> ApiWatchGuard
where
    T: Send + Sync + 'static,
    F: Fn(&[(PathBuf, String)]) -> Result<T, ConfigError> + Send + Sync + 'static,
{
    let (ready, _) = watch::channel(false);
    let (renders, _) = watch::channel(0);
    let shared = Arc::new(Shared {
        store: Mutex::new(Store::default()),
        changed: Notify::new(),
        ready,
        renders,
        relists: AtomicU64::new(0),
    });
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        let err = ConfigError {
            file: PathBuf::from("api"),
            object: String::new(),
            field: String::new(),
            message: "watch_api needs a Tokio runtime: the API server is not watched".into(),
        };
        tracing::error!(error = %err, "config not watched");
        live.set_error(err);
        return ApiWatchGuard {
            shared,
            tasks: Vec::new(),
        };
    };
    let watchers = plan(&client, &opts);
    {
        let mut store = shared.store();
        for (id, _, _) in &watchers {
            store.add_partition(id.clone());
        }
    }
    let mut tasks = Vec::with_capacity(watchers.len() + 1);
    for (id, api, config) in watchers {
        let backoff = (opts.initial_backoff, opts.max_backoff);
        tasks.push(runtime.spawn(run_watcher(id, api, config, shared.clone(), backoff)));
    }
    let render = render_loop(shared.clone(), debounce, live, Arc::new(compile));
    tasks.push(runtime.spawn(render));
    ApiWatchGuard { shared, tasks }
}

/// One watcher per kind, or per kind and namespace when scoped.
fn plan(
    client: &kube::Client,
    opts: &WatchOptions,
) -> Vec<(PartitionId, Api<DynamicObject>, watcher::Config)> {
    let mut out = Vec::new();
    let mut kinds = opts.kinds.clone();
    kinds.sort();
    kinds.dedup();
    for kind in kinds {
        let ar = kind.api_resource();
        let mut config = watcher::Config {
            page_size: opts.page_size,
            ..Default::default()
        };
        if let Some(sel) = opts.label_selectors.get(&kind) {
            config = config.labels(sel);
        }
        if kind == Kind::Pod {
            if let Some(node) = &opts.node_name {
                config = config.fields(&format!("spec.nodeName={node}"));
            }
        }
        let id = |scope: &str| PartitionId {
            kind,
            scope: scope.to_string(),
        };
        match &opts.namespaces {
            None => out.push((id(""), Api::all_with(client.clone(), &ar), config)),
            Some(namespaces) => {
                for ns in namespaces {
                    if kind.namespaced() {
                        let api = Api::namespaced_with(client.clone(), ns, &ar);
                        out.push((id(ns), api, config.clone()));
                    } else {
                        let by_name = config.clone().fields(&format!("metadata.name={ns}"));
                        out.push((id(ns), Api::all_with(client.clone(), &ar), by_name));
                    }
                }
            }
        }
    }
    out
}

/// Feeds one watcher's events into its partition, forever (until aborted).
async fn run_watcher(
    id: PartitionId,
    api: Api<DynamicObject>,
    config: watcher::Config,
    shared: Arc<Shared>,
    (initial, max): (Duration, Duration),
) {
    let mut delay = initial;
    loop {
        let mut stream = std::pin::pin!(watcher(api.clone(), config.clone()));
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    delay = initial;
                    apply(&id, event, &shared);
                }
                Err(
                    watcher::Error::WatchStartFailed(kube::Error::Api(status))
                    | watcher::Error::WatchFailed(kube::Error::Api(status)),
                ) if status.code == 410 => {
                    // kube's watcher retries the same version forever on an HTTP 410: start over with a list.
                    tracing::info!(kind = %id.kind, scope = %id.scope, "resource version expired (HTTP 410): relisting");
                    break;
                }
                Err(err) => {
                    if matches!(&err, watcher::Error::WatchError(s) if s.code == 410) {
                        tracing::info!(kind = %id.kind, scope = %id.scope, "resource version expired (410 Gone): relisting");
                    } else {
                        tracing::warn!(kind = %id.kind, scope = %id.scope, error = %err, retry_in = ?delay, "watch failed");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(max);
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(max);
    }
}

/// Applies one watcher event to the store, waking the render task on a change.
fn apply(id: &PartitionId, event: watcher::Event<DynamicObject>, shared: &Shared) {
    let to_value = |obj: DynamicObject| serde_json::to_value(obj).unwrap_or_default();
    let mut store = shared.store();
    let changed = match event {
        watcher::Event::Init => {
            store.list_start(id);
            false
        }
        watcher::Event::InitApply(obj) => {
            store.list_item(id, to_value(obj));
            false
        }
        watcher::Event::InitDone => {
            if store.is_listed(id) {
                shared.relists.fetch_add(1, Ordering::Relaxed);
            }
            let changed = store.list_done(id);
            tracing::debug!(kind = %id.kind, scope = %id.scope, objects = store.count(id.kind), "listed");
            if store.all_listed() {
                shared.ready.send_replace(true);
            }
            changed
        }
        watcher::Event::Apply(obj) => store.apply(id, to_value(obj)),
        watcher::Event::Delete(obj) => store.delete(id, &to_value(obj)),
    };
    drop(store);
    if changed {
        shared.changed.notify_one();
    }
}

/// Waits for a change, then for `debounce` of quiet, then renders, parses, compiles and swaps.
async fn render_loop<T, F>(
    shared: Arc<Shared>,
    debounce: Duration,
    live: Arc<Live<T>>,
    compile: Arc<F>,
) where
    T: Send + Sync + 'static,
    F: Fn(&[(PathBuf, String)]) -> Result<T, ConfigError> + Send + Sync + 'static,
{
    loop {
        if tokio::time::timeout(REAP_EVERY, shared.changed.notified())
            .await
            .is_err()
        {
            // Idle: free what readers let go of, on the blocking pool (a snapshot can take milliseconds).
            let live = live.clone();
            let _ = tokio::task::spawn_blocking(move || live.reap()).await;
            continue;
        }
        // Quiet for `debounce`, but never wait more than ten of them: a busy cluster still gets renders.
        let latest = tokio::time::Instant::now() + debounce * 10;
        while tokio::time::timeout(debounce, shared.changed.notified())
            .await
            .is_ok()
            && tokio::time::Instant::now() < latest
        {}
        let docs = {
            let store = shared.store();
            if !store.all_listed() {
                continue; // the last initial list wakes us again
            }
            store.render()
        };
        let (live, compile) = (live.clone(), compile.clone());
        let done = tokio::task::spawn_blocking(move || {
            let objects = docs.len();
            // on an idle-priority thread: a compile does not take a core from in-flight requests
            match mesh::config::background::run(move || compile(&docs)) {
                Ok(next) => {
                    live.store(next);
                    tracing::info!(objects, generation = live.generation(), "config from the API server installed");
                }
                Err(err) => {
                    tracing::error!(error = %err, object = %err.file.display(), field = %err.field,
                        "config change from the API server rejected: the previous config keeps serving");
                    live.set_error(err);
                }
            }
        })
        .await;
        if let Err(e) = done {
            tracing::error!(error = %e, "config compile panicked: the previous config keeps serving");
        }
        shared.renders.send_modify(|n| *n += 1);
    }
}

/// Keeps [`watch_api`]'s tasks running; dropping it stops them.
pub struct ApiWatchGuard {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl ApiWatchGuard {
    /// Whether every watcher has completed its initial list (the first compile happens only then).
    pub fn is_ready(&self) -> bool {
        *self.shared.ready.borrow()
    }
    /// Waits until [`ApiWatchGuard::is_ready`].
    pub async fn ready(&self) {
        let mut rx = self.shared.ready.subscribe();
        // The sender lives in `self.shared`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|r| *r).await;
    }
    /// The watchers still waiting for their initial list (`Kind`, or `Kind in namespace`), for a readiness probe.
    pub fn pending(&self) -> Vec<String> {
        self.shared.store().unlisted()
    }
    /// Waits for every initial list and the first render; `Err` names why that render left `live` without a
    /// config (it still holds the value it was made with).
    pub async fn first_render<T>(&self, live: &Live<T>) -> Result<(), String> {
        self.ready().await;
        let mut renders = self.subscribe_renders();
        // The sender lives in `self.shared`, so the channel cannot close while we wait.
        let _ = renders.wait_for(|n| *n >= 1).await;
        if live.generation() > 1 {
            return Ok(());
        }
        Err(live
            .last_error()
            .map_or("no config".into(), |e| e.to_string()))
    }
    /// How many renders (compile attempts, good or bad) have completed.
    pub fn renders(&self) -> u64 {
        *self.shared.renders.borrow()
    }
    /// A receiver of [`ApiWatchGuard::renders`], to await the next render.
    pub fn subscribe_renders(&self) -> watch::Receiver<u64> {
        self.shared.renders.subscribe()
    }
    /// How many lists replaced an already-listed partition (relists after `410 Gone`).
    pub fn relists(&self) -> u64 {
        self.shared.relists.load(Ordering::Relaxed)
    }
    /// How many objects of `kind` are currently held.
    pub fn count(&self, kind: Kind) -> usize {
        self.shared.store().count(kind)
    }
}

impl Drop for ApiWatchGuard {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl std::fmt::Debug for ApiWatchGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiWatchGuard")
            .field("ready", &self.is_ready())
            .field("renders", &self.renders())
            .field("relists", &self.relists())
            .finish_non_exhaustive()
    }
}
