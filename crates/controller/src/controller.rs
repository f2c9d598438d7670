//! The control loop: kube-rs reflectors keep Gateways and the objects we own (selected by the owner label)
//! in memory — resumed after a disconnect, relisted on `410 Gone` — and every change, every `resync` and
//! every change of leadership runs one *pass*:
//!
//! 1. each Gateway of class `istio-waypoint` (not being deleted) → [`desired`] → [`reconcile::apply`]
//!    (a refused Gateway gets no new objects; objects it had are kept until it is fixed or deleted);
//! 2. once every reflector has listed: our objects whose Gateway is gone (or no longer a waypoint) are
//!    deleted — found by the owner label *and* the controller `ownerReference`, never by name;
//! 3. each Gateway's status ([`gateway_status`]) through [`StatusWriter`] (only what changed; a status
//!    someone else overwrote — [`drifted`] — is written again).
//!
//! Only the leader passes; a follower keeps its caches warm and writes nothing. Every pass ends in a
//! [`PassReport`] (what tests and logs read).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube_source::{DesiredStatus, Kind, Leadership, ObjectRef, StatusWriter};
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::desired::{desired, is_waypoint, Options, MANAGED_LABEL, MANAGED_VALUE};
use crate::diff::{orphans, GatewayKey};
use crate::gateway_status::{drifted, gateway_status, Outcome};
use crate::reconcile::{self, owned_resource, OWNED};

/// The `controllerName` given to the status writer (Istio's for waypoints).
pub const CONTROLLER_NAME: &str = "istio.io/mesh-controller";

/// How the loop runs.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub options: Options,
    /// Watch and manage only this namespace (default: all).
    pub namespace: Option<String>,
    /// A pass at least this often, changes or not.
    pub resync: Duration,
    /// Whether this replica may write.
    pub leadership: Leadership,
}

/// What the last pass did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassReport {
    /// Passes so far (a follower's count too).
    pub passes: u64,
    /// Whether the pass ran as leader (a follower's pass writes nothing).
    pub leader: bool,
    /// Waypoint Gateways seen.
    pub gateways: usize,
    /// Creates, patches, deletes and status writes made.
    pub writes: usize,
    /// Failures, each naming the object.
    pub errors: Vec<String>,
}

/// The running controller; stops when dropped.
pub struct Controller {
    tasks: Vec<JoinHandle<()>>,
    reports: watch::Receiver<PassReport>,
    wake: Arc<Notify>,
}

impl Controller {
    /// Starts the reflectors and the loop. Must be called inside a Tokio runtime.
    pub fn start(client: kube::Client, config: ControllerConfig) -> Controller {
        let wake = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        let ns = config.namespace.as_deref();
        let (gateways, task) = Reflected::spawn(
            &client,
            ns,
            Kind::Gateway.api_resource(),
            watcher::Config::default(),
            &wake,
        );
        tasks.push(task);
        let selector = format!("{MANAGED_LABEL}={MANAGED_VALUE}");
        let owned = OWNED.map(|(kind, ..)| {
            let cfg = watcher::Config::default().labels(&selector);
            let (r, task) = Reflected::spawn(&client, ns, owned_resource(kind), cfg, &wake);
            tasks.push(task);
            (kind, r)
        });
        let (tx, reports) = watch::channel(PassReport::default());
        let status = StatusWriter::new(client.clone(), CONTROLLER_NAME, config.leadership.clone());
        let looped = Loop {
            client,
            config,
            gateways,
            owned,
            status,
            reports: tx,
        };
        tasks.push(tokio::spawn(looped.run(wake.clone())));
        Controller {
            tasks,
            reports,
            wake,
        }
    }

    /// The last pass's report.
    pub fn report(&self) -> PassReport {
        self.reports.borrow().clone()
    }

    /// Asks for a pass now (as the resync timer does).
    pub fn resync(&self) {
        self.wake.notify_one();
    }

    /// Waits, at most `timeout`, until a pass's report satisfies `done`; returns that report.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&PassReport) -> bool,
    ) -> Result<PassReport, String> {
        let mut rx = self.reports.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|r| done(r))).await;
        match waited {
            Ok(Ok(r)) => Ok(r.clone()),
            _ => Err(format!(
                "timed out after {timeout:?} waiting for {what}; last pass: {:?}",
                self.report()
            )),
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One reflector's cache, and whether it has listed once.
struct Reflected {
    store: Store<DynamicObject>,
    ready: Arc<AtomicBool>,
}

impl Reflected {
    fn spawn(
        client: &kube::Client,
        ns: Option<&str>,
        ar: ApiResource,
        cfg: watcher::Config,
        wake: &Arc<Notify>,
    ) -> (Reflected, JoinHandle<()>) {
        let api: Api<DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        let plural = ar.plural.clone();
        let writer = reflector::store::Writer::new(ar);
        let store = writer.as_reader();
        let ready = Arc::new(AtomicBool::new(false));
        let (flag, wake) = (ready.clone(), wake.clone());
        let task = tokio::spawn(async move {
            let stream = watcher(api, cfg).default_backoff().reflect(writer);
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    // The store swaps a relist in whole at InitDone: nothing to look at before.
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                    Ok(watcher::Event::InitDone) => {
                        flag.store(true, Ordering::Release);
                        wake.notify_one();
                    }
                    Ok(_) => wake.notify_one(),
                    Err(e) => {
                        tracing::warn!(resource = %plural, error = %e, "watch failed; retrying")
                    }
                }
            }
        });
        (Reflected { store, ready }, task)
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn values(&self) -> Vec<Value> {
        self.store
            .state()
            .iter()
            .filter_map(|o| serde_json::to_value(&**o).ok())
            .collect()
    }
}

struct Loop {
    client: kube::Client,
    config: ControllerConfig,
    gateways: Reflected,
    owned: [(&'static str, Reflected); 3],
    status: StatusWriter,
    reports: watch::Sender<PassReport>,
}

impl Loop {
    async fn run(self, wake: Arc<Notify>) {
        let mut leadership = self.config.leadership.clone();
        // An elector that stopped (or `Leadership::always`) never changes again: stop following it.
        let mut follow = true;
        let mut passes = 0;
        loop {
            let was = leadership.is_leader();
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(self.config.resync) => {}
                _ = leadership.wait_for(!was), if follow => {
                    follow = leadership.is_leader() != was;
                }
            }
            passes += 1;
            let mut report = self.pass().await;
            report.passes = passes;
            if report.writes > 0 || !report.errors.is_empty() {
                tracing::info!(writes = report.writes, errors = ?report.errors, "reconciled");
            }
            self.reports.send_replace(report);
        }
    }

    async fn pass(&self) -> PassReport {
        let gateways: Vec<Value> = self
            .gateways
            .values()
            .into_iter()
            .filter(is_waypoint)
            .filter(|g| g["metadata"]["deletionTimestamp"].is_null())
            .collect();
        let mut report = PassReport {
            leader: self.config.leadership.is_leader(),
            gateways: gateways.len(),
            ..PassReport::default()
        };
        if !report.leader || !self.gateways.ready() {
            return report;
        }
        let mut live = BTreeSet::<GatewayKey>::new();
        let mut statuses = Vec::new();
        let mut stale = Vec::new();
        for gw in &gateways {
            let meta = &gw["metadata"];
            let ns = meta["namespace"].as_str().unwrap_or_default().to_string();
            let name = meta["name"].as_str().unwrap_or_default().to_string();
            let outcome = match desired(gw, &self.config.options) {
                Err(e) => {
                    tracing::warn!(error = %e, "refused");
                    Outcome::Invalid(e)
                }
                Ok(d) => {
                    let (outcome, writes) = reconcile::apply(&self.client, &d).await;
                    report.writes += writes;
                    if let Outcome::Failed(e) = &outcome {
                        report.errors.push(e.clone());
                    }
                    outcome
                }
            };
            let status = gateway_status(&outcome);
            let object = ObjectRef {
                kind: Kind::Gateway,
                namespace: ns.clone(),
                name: name.clone(),
            };
            if drifted(&gw["status"], &status) {
                stale.push(object.clone());
            }
            statuses.push(DesiredStatus {
                object,
                generation: meta["generation"].as_i64(),
                status,
            });
            live.insert((ns, name));
        }
        if self.owned.iter().all(|(_, r)| r.ready()) {
            self.collect_orphans(&live, &mut report).await;
        }
        if !stale.is_empty() {
            // The writer remembers what it wrote; forgetting the drifted ones makes it read and rewrite them.
            let keep: Vec<DesiredStatus> = statuses
                .iter()
                .filter(|s| !stale.contains(&s.object))
                .cloned()
                .collect();
            report.writes += self.status.sync(&keep).await.written;
        }
        let synced = self.status.sync(&statuses).await;
        report.writes += synced.written;
        for (object, e) in synced.failed {
            report.errors.push(format!("status of {object}: {e}"));
        }
        report
    }

    /// Deletes our objects whose Gateway is not in `live`.
    async fn collect_orphans(&self, live: &BTreeSet<GatewayKey>, report: &mut PassReport) {
        for (kind, reflected) in &self.owned {
            let objects = reflected.values();
            for (ns, name, uid) in orphans(&objects, live) {
                match reconcile::delete(&self.client, kind, &ns, &name, &uid).await {
                    Ok(sent) => {
                        report.writes += usize::from(sent);
                        tracing::info!(object = %format!("{kind} {ns}/{name}"), "deleted: its Gateway is gone");
                    }
                    Err(e) => report
                        .errors
                        .push(format!("deleting {kind} {ns}/{name}: {e}")),
                }
            }
        }
    }
}
