//! Leader election among replicas with a `coordination.k8s.io/v1` `Lease`, as client-go's `leaderelection` does
//! it: so that exactly one replica writes status.
//!
//! Every `retry_every` each candidate reads the Lease. A free or absent Lease is taken; the holder renews it
//! (`renewTime`); another holder's Lease is taken over only once its record (holder, `renewTime`, transitions)
//! has not changed for `leaseDurationSeconds` *as measured on this replica's own clock since it first saw that
//! record* — so clock skew between replicas does not matter. Every write is a replace carrying the
//! `resourceVersion` that was read: of two candidates racing for a free Lease, the API server lets one win
//! (the other gets `409 Conflict`). The leader steps down when it has not renewed for `renew_deadline`
//! (shorter than the lease duration, so it stops writing before anyone may take over), or sees another holder.
//!
//! A replica that stops (crash, or [`LeaderGuard`] dropped) simply stops renewing, and another takes over after
//! the lease duration; [`LeaderGuard::release`] hands the Lease over at once on a clean shutdown.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Which Lease, who we are, and the timings (client-go's defaults: 15 s, 10 s, 2 s).
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (e.g. the Pod name); must differ between replicas.
    pub identity: String,
    /// How long a Lease stays another's without being renewed before it may be taken over.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down (must be less than `lease_duration`).
    pub renew_deadline: Duration,
    /// How often candidates try to acquire and the leader renews.
    pub retry_every: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_every: Duration::from_secs(2),
        }
    }
}

/// Whether this replica leads, as a cheap clonable handle (e.g. for [`crate::StatusWriter`]).
#[derive(Clone, Debug)]
pub struct Leadership(watch::Receiver<bool>);

impl Leadership {
    /// A handle that always leads (a single replica, or tests).
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        // Keep the value readable after the sender is gone.
        drop(tx);
        Leadership(rx)
    }
    /// A handle that follows `rx` (e.g. another election mechanism).
    pub fn from_receiver(rx: watch::Receiver<bool>) -> Self {
        Leadership(rx)
    }
    pub fn is_leader(&self) -> bool {
        *self.0.borrow()
    }
    /// Waits until leadership is `leader` (returns at once if it already is; also returns if the elector stops).
    pub async fn wait_for(&mut self, leader: bool) {
        let _ = self.0.wait_for(|l| *l == leader).await;
    }
}

/// Runs the election until dropped (dropping stops renewing without releasing, as a crash would).
pub struct LeaderGuard {
    leader: watch::Receiver<bool>,
    task: JoinHandle<()>,
    api: Api<Lease>,
    config: LeaseConfig,
}

/// Starts campaigning for the Lease. Must be called inside a Tokio runtime.
pub fn elect(client: kube::Client, config: LeaseConfig) -> LeaderGuard {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let (tx, rx) = watch::channel(false);
    let mut elector = Elector {
        api: api.clone(),
        config: config.clone(),
        observed: None,
        last_renew: None,
    };
    let task = tokio::spawn(async move {
        loop {
            let leads = elector.step().await;
            tx.send_if_modified(|l| std::mem::replace(l, leads) != leads);
            tokio::time::sleep(elector.config.retry_every).await;
        }
    });
    LeaderGuard {
        leader: rx,
        task,
        api,
        config,
    }
}

impl LeaderGuard {
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }
    pub fn leadership(&self) -> Leadership {
        Leadership(self.leader.clone())
    }
    /// Stops campaigning and, if this replica holds the Lease, frees it so another takes over at once.
    pub async fn release(self) -> Result<(), kube::Error> {
        self.task.abort();
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        let name = self.config.name.clone();
        self.api
            .replace(&name, &PostParams::default(), &lease)
            .await
            .map(drop)
    }
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One candidate's view.
struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The other holder's record last seen, and when it was first seen on our clock.
    observed: Option<(Record, Instant)>,
    /// When we last wrote the Lease as its holder.
    last_renew: Option<Instant>,
}

/// What identifies one renewal of a Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: String,
    renew: Option<Timestamp>,
    transitions: i32,
}

impl Elector {
    /// One round: acquire, renew or wait. Returns whether we lead after it.
    async fn step(&mut self) -> bool {
        match self.try_acquire_or_renew().await {
            Ok(true) => {
                self.last_renew = Some(Instant::now());
                true
            }
            Ok(false) => {
                self.last_renew = None;
                false
            }
            Err(e) => {
                tracing::warn!(lease = %self.config.name, error = %e, "lease update failed");
                // Keep leading only while the last renewal is recent enough that nobody else may take over.
                let recent = self
                    .last_renew
                    .is_some_and(|t| t.elapsed() < self.config.renew_deadline);
                if !recent {
                    self.last_renew = None;
                }
                recent
            }
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let me = self.config.identity.clone();
        let duration =
            i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return conflict_is_false(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let record = Record {
            holder: spec.holder_identity.clone().unwrap_or_default(),
            renew: spec.renew_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
        };
        let held_by_me = record.holder == me;
        if !held_by_me && !record.holder.is_empty() {
            let first_seen = match &self.observed {
                Some((r, at)) if *r == record => *at,
                _ => {
                    self.observed = Some((record.clone(), Instant::now()));
                    return Ok(false);
                }
            };
            let theirs = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.config.lease_duration, Duration::from_secs);
            if first_seen.elapsed() < theirs {
                return Ok(false);
            }
            tracing::info!(lease = %self.config.name, previous = %record.holder, "lease expired: taking over");
        }
        if !held_by_me {
            spec.holder_identity = Some(me);
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(record.transitions.saturating_add(1));
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(duration);
        let name = self.config.name.clone();
        conflict_is_false(
            self.api
                .replace(&name, &PostParams::default(), &lease)
                .await,
        )
    }
}

/// A write that lost a race (409 Conflict) means someone else holds the Lease now.
fn conflict_is_false(res: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match res {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
