//! Where a waypoint's config comes from: a manifests folder ([`ConfigSource::Dir`], watched with
//! [`mesh::config::watch_dir`]) or the Kubernetes API server ([`ConfigSource::Kube`], watched with
//! [`kube_source::watch_api`]). Both feed the same compile-and-swap path: one [`Snapshot`] type, one
//! [`Live`], a bad change rejected whole while the last good snapshot keeps serving.
//!
//! With the API server the waypoint also writes status back, as a Gateway API controller would, after every
//! render ([`desired_statuses`]): each HTTPRoute/GRPCRoute's `status.parents` entry for the parents this
//! waypoint serves (`Accepted`, `ResolvedRefs` with the reasons of [`crate::routes::status`]), and its own
//! Gateway `Accepted`/`Programmed` with its address. With [`KubeSource::leader_identity`] set, only the
//! replica holding the `Lease` named `<gateway>-waypoint-status` (in the Gateway's namespace) writes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use kube_source::{
    elect, watch_api, ApiWatchGuard, DesiredStatus, Kind, LeaderGuard, Leadership, LeaseConfig,
    ObjectRef, StatusWriter, WatchOptions,
};
use mesh::config::{watch_dir, GatewayRef, Live, Mesh};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::resilience::ResilienceState;
use crate::routes::status::RouteStatus;
use crate::snapshot::{compile_with_state, Snapshot, WaypointSpec};

mod policy_status;

/// The `controllerName` of the `status.parents[]` entries the waypoint writes (Istio's, for waypoints).
pub const CONTROLLER_NAME: &str = "istio.io/mesh-controller";
/// Quiet time before a change is recompiled.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// After a failed status write, the next attempt comes this much later (or at the next render).
const STATUS_RETRY: Duration = Duration::from_secs(5);

/// Where the config comes from.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // one per process, made once at start
pub enum ConfigSource {
    /// A manifests directory, watched.
    Dir(PathBuf),
    /// The Kubernetes API server.
    Kube(KubeSource),
    /// A push control plane (`waypoint control-plane`): only this waypoint's share of the mesh, as versioned
    /// incremental updates; a config that does not compile is NACKed and the last good one keeps serving.
    Push {
        /// The control plane's URL (`http://host:port`, or `https://host:port` with this waypoint's own
        /// certificate as the client certificate and the control-plane identity to expect).
        dial: push::Dial,
        /// This proxy instance (NACKs are remembered per node id).
        node_id: String,
    },
}

/// The API-server source: what to watch, and whether to write status.
#[derive(Clone)]
pub struct KubeSource {
    pub client: kube::Client,
    pub watch: WatchOptions,
    /// Write route and Gateway status after each render.
    pub write_status: bool,
    /// Campaign for the status Lease as this identity (e.g. the Pod name) and write only while leading;
    /// `None`: write always (a single replica).
    pub leader_identity: Option<String>,
}

impl KubeSource {
    /// Watches everything, writes status, no election.
    pub fn new(client: kube::Client) -> Self {
        KubeSource {
            client,
            watch: WatchOptions::default(),
            write_status: true,
            leader_identity: None,
        }
    }
}

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::Dir(dir) => f.debug_tuple("Dir").field(dir).finish(),
            ConfigSource::Kube(k) => f
                .debug_struct("Kube")
                .field("watch", &k.watch)
                .field("write_status", &k.write_status)
                .field("leader_identity", &k.leader_identity)
                .finish_non_exhaustive(),
            ConfigSource::Push { dial, node_id } => f
                .debug_struct("Push")
                .field("url", &dial.url)
                .field("node_id", node_id)
                .finish_non_exhaustive(),
        }
    }
}

/// Keeps a source's watch (and status writer) running; dropping it stops them.
#[allow(clippy::large_enum_variant)] // one per process, made once at start
pub enum SourceGuard {
    Dir(mesh::config::live::WatchGuard),
    Kube(KubeGuard),
    Push(push::PushGuard),
}

/// The API-server side of a running waypoint.
pub struct KubeGuard {
    pub watch: ApiWatchGuard,
    status: Option<JoinHandle<()>>,
    leader: Option<LeaderGuard>,
}

impl KubeGuard {
    /// Whether this replica writes status now.
    pub fn is_leader(&self) -> bool {
        self.leader.as_ref().is_none_or(LeaderGuard::is_leader)
    }
}

impl Drop for KubeGuard {
    fn drop(&mut self) {
        if let Some(t) = &self.status {
            t.abort();
        }
    }
}

/// A loaded source: the live snapshot, the mesh it was first compiled from, the guard.
pub(crate) struct Loaded {
    pub live: Arc<Live<Snapshot>>,
    pub mesh: Arc<Mesh>,
    pub guard: SourceGuard,
}

/// Loads the first config (failing on a bad one: there is no last good config yet) and starts watching.
/// With the API server: waits for every initial list and the first compile (so readiness waits too).
pub(crate) async fn load(
    source: ConfigSource,
    spec: &WaypointSpec,
    trust_domain: &str,
    listen: SocketAddr,
    telemetry: Option<Arc<crate::telemetry::Telemetry>>,
) -> anyhow::Result<Loaded> {
    // Breakers, ejections and balancer load outlive snapshots: every compile attaches the same handles.
    let resilience = Arc::new(ResilienceState {
        telemetry,
        ..ResilienceState::default()
    });
    let watch_spec = spec.clone();
    match source {
        ConfigSource::Dir(dir) => {
            let mesh = Mesh::load_dir(&dir, trust_domain)?;
            let live = Arc::new(Live::new(compile_with_state(&mesh, spec, &resilience)?));
            let guard = watch_dir(dir, trust_domain.into(), DEBOUNCE, live.clone(), move |m| {
                compile_with_state(m, &watch_spec, &resilience)
            });
            Ok(Loaded {
                live,
                mesh: Arc::new(mesh),
                guard: SourceGuard::Dir(guard),
            })
        }
        ConfigSource::Push { dial, node_id } => {
            let empty = Mesh::from_documents(&[], trust_domain)?;
            let live = Arc::new(Live::new(compile_with_state(&empty, spec, &resilience)?));
            let latest: Arc<Mutex<Option<Arc<Mesh>>>> = Arc::default();
            let keep = latest.clone();
            let sub = push::proto::Subscribe {
                node_id,
                kind: push::proto::SubscriberKind::Waypoint as i32,
                target: format!("{}/{}", spec.gateway.namespace, spec.gateway.name),
                resource_versions: Default::default(),
            };
            let guard = push::watch_push(dial, sub, trust_domain.into(), live.clone(), move |m| {
                let snapshot = compile_with_state(m, &watch_spec, &resilience)?;
                *lock(&keep) = Some(Arc::new(m.clone()));
                Ok(snapshot)
            });
            let mut status = guard.status();
            let _ = status.wait_for(|s| s.applied >= 1).await;
            let mesh = lock(&latest)
                .clone()
                .context("no config compiled from the control plane")?;
            Ok(Loaded {
                live,
                mesh,
                guard: SourceGuard::Push(guard),
            })
        }
        ConfigSource::Kube(kube) => {
            let empty = Mesh::from_documents(&[], trust_domain)?;
            let live = Arc::new(Live::new(compile_with_state(&empty, spec, &resilience)?));
            let latest: Arc<Mutex<Option<Arc<Mesh>>>> = Arc::default();
            let keep = latest.clone();
            let watch = watch_api(
                kube.client.clone(),
                kube.watch.clone(),
                trust_domain.into(),
                DEBOUNCE,
                live.clone(),
                move |m| {
                    let snapshot = compile_with_state(m, &watch_spec, &resilience)?;
                    *lock(&keep) = Some(Arc::new(m.clone()));
                    Ok(snapshot)
                },
            );
            if let Err(why) = watch.first_render(&live).await {
                anyhow::bail!("the config from the API server does not compile: {why}");
            }
            let renders = watch.subscribe_renders();
            let mesh = lock(&latest).clone().context("no config compiled")?;
            let (status, leader) = if kube.write_status {
                start_status(&kube, spec, &live, latest, renders, listen)
            } else {
                (None, None)
            };
            let guard = KubeGuard {
                watch,
                status,
                leader,
            };
            Ok(Loaded {
                live,
                mesh,
                guard: SourceGuard::Kube(guard),
            })
        }
    }
}

type Latest = Arc<Mutex<Option<Arc<Mesh>>>>;

fn lock(m: &Latest) -> std::sync::MutexGuard<'_, Option<Arc<Mesh>>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the election (when asked for) and the status task.
fn start_status(
    kube: &KubeSource,
    spec: &WaypointSpec,
    live: &Arc<Live<Snapshot>>,
    latest: Latest,
    renders: watch::Receiver<u64>,
    listen: SocketAddr,
) -> (Option<JoinHandle<()>>, Option<LeaderGuard>) {
    let gw = spec.gateway.clone();
    let leader = kube.leader_identity.as_ref().map(|id| {
        let name = format!("{}-waypoint-status", gw.name);
        elect(
            kube.client.clone(),
            LeaseConfig::new(&gw.namespace, &name, id),
        )
    });
    let leadership = leader.as_ref().map(LeaderGuard::leadership);
    let writer = StatusWriter::new(
        kube.client.clone(),
        CONTROLLER_NAME,
        leadership.clone().unwrap_or_else(Leadership::always),
    );
    let live = live.clone();
    let task = tokio::spawn(async move {
        let mut renders = renders;
        let mut leadership = leadership;
        loop {
            if let Some(l) = leadership.as_mut() {
                l.wait_for(true).await;
            }
            let mesh = lock(&latest).clone();
            let desired = desired_statuses(&live.load().statuses, mesh.as_deref(), &gw, listen);
            let report = writer.sync(&desired).await;
            tracing::debug!(
                written = report.written,
                unchanged = report.unchanged,
                "status synced"
            );
            let retry = async {
                match report.failed.is_empty() {
                    true => std::future::pending().await,
                    false => tokio::time::sleep(STATUS_RETRY).await,
                }
            };
            let lost = async {
                match leadership.as_mut() {
                    Some(l) => l.wait_for(false).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = renders.changed() => if changed.is_err() { return },
                _ = retry => {}
                _ = lost => {}
            }
        }
    });
    (Some(task), leader)
}

/// The statuses to write: each route's `status.parents` for the parents this waypoint judges (a parent
/// another waypoint serves, `NoMatchingParent`, is left to it), and this waypoint's Gateway `Programmed` with
/// its address (the one the mesh knows from the Gateway, else the listener's when it is a specific IP).
pub fn desired_statuses(
    statuses: &[RouteStatus],
    mesh: Option<&Mesh>,
    gateway: &GatewayRef,
    listen: SocketAddr,
) -> Vec<DesiredStatus> {
    let mut routes: BTreeMap<ObjectRef, Vec<Value>> = BTreeMap::new();
    for s in statuses {
        let no_parent = s
            .condition("Accepted")
            .is_some_and(|c| c.reason == "NoMatchingParent");
        let (Some(object), Some(parent_ref)) = (route_ref(&s.route), parent_ref(&s.parent)) else {
            continue;
        };
        if no_parent {
            continue;
        }
        let conditions: Vec<Value> = s
            .conditions
            .iter()
            .map(|c| json!({"type": c.kind, "status": c.status, "reason": c.reason, "message": c.message}))
            .collect();
        routes.entry(object).or_default().push(json!({
            "parentRef": parent_ref,
            "controllerName": CONTROLLER_NAME,
            "conditions": conditions,
        }));
    }
    let mut out: Vec<DesiredStatus> = routes
        .into_iter()
        .map(|(object, parents)| DesiredStatus {
            object,
            generation: None,
            status: json!({ "parents": parents }),
        })
        .collect();
    let known = mesh.and_then(|m| {
        m.waypoints
            .iter()
            .find(|w| w.namespace == gateway.namespace && w.name == gateway.name)
            .and_then(|w| w.addr)
    });
    let ip = known
        .map(|a| a.ip())
        .or_else(|| (!listen.ip().is_unspecified()).then(|| listen.ip()));
    let mut status = json!({"conditions": [
        {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "accepted by the waypoint"},
        {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "the waypoint serves this config"},
    ]});
    if let Some(ip) = ip {
        status["addresses"] = json!([{"type": "IPAddress", "value": ip.to_string()}]);
    }
    out.push(DesiredStatus {
        object: ObjectRef {
            kind: Kind::Gateway,
            namespace: gateway.namespace.clone(),
            name: gateway.name.clone(),
        },
        generation: None,
        status,
    });
    // AuthorizationPolicy / RequestAuthentication `WaypointAccepted` (see `policy_status`).
    out.extend(mesh.map_or_else(Vec::new, |m| policy_status::policy_statuses(m, gateway)));
    out
}

/// `HTTPRoute ns/name` or `GRPCRoute ns/name`.
fn route_ref(route: &str) -> Option<ObjectRef> {
    let (kind, rest) = route.split_once(' ')?;
    let kind = match kind {
        "HTTPRoute" => Kind::HttpRoute,
        "GRPCRoute" => Kind::GrpcRoute,
        _ => return None,
    };
    let (namespace, name) = rest.split_once('/')?;
    Some(ObjectRef {
        kind,
        namespace: namespace.into(),
        name: name.into(),
    })
}

/// `Kind ns/name[:port][ (section)]` as a Gateway API `parentRef`.
fn parent_ref(parent: &str) -> Option<Value> {
    let (kind, rest) = parent.split_once(' ')?;
    let (target, section) = match rest.split_once(" (") {
        Some((t, s)) => (t, Some(s.trim_end_matches(')'))),
        None => (rest, None),
    };
    let (namespace, name_port) = target.split_once('/')?;
    let (name, port) = match name_port.split_once(':') {
        Some((n, p)) => (n, Some(p.parse::<u16>().ok()?)),
        None => (name_port, None),
    };
    let group = if kind == "Service" {
        ""
    } else {
        "gateway.networking.k8s.io"
    };
    let mut r = json!({"group": group, "kind": kind, "namespace": namespace, "name": name});
    if let Some(port) = port {
        r["port"] = json!(port);
    }
    if let Some(section) = section {
        r["sectionName"] = json!(section);
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::status::Condition;

    #[test]
    fn parents_and_routes_become_refs() {
        let r = route_ref("GRPCRoute demo/greeter").unwrap();
        assert_eq!((r.kind, r.namespace.as_str()), (Kind::GrpcRoute, "demo"));
        assert_eq!(
            parent_ref("Service default/reviews:9080 (http)").unwrap(),
            json!({"group": "", "kind": "Service", "namespace": "default", "name": "reviews",
                "port": 9080, "sectionName": "http"})
        );
        assert_eq!(
            parent_ref("Gateway default/waypoint").unwrap()["group"],
            "gateway.networking.k8s.io"
        );
        assert!(parent_ref("nonsense").is_none());
    }

    #[test]
    fn other_waypoints_parents_are_left_alone() {
        let s = |parent: &str, reason: &str| RouteStatus {
            route: "HTTPRoute default/r".into(),
            parent: parent.into(),
            conditions: vec![Condition::new("Accepted", reason == "Accepted", reason, "")],
        };
        let gw = GatewayRef {
            namespace: "default".into(),
            name: "waypoint".into(),
        };
        let statuses = [
            s("Service default/a", "Accepted"),
            s("Service default/b", "NoMatchingParent"),
        ];
        let out = desired_statuses(&statuses, None, &gw, "10.1.2.3:15008".parse().unwrap());
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].status["parents"].as_array().unwrap().len(), 1);
        assert_eq!(out[1].object.kind, Kind::Gateway);
        assert_eq!(out[1].status["addresses"][0]["value"], "10.1.2.3");
    }
}
