//! What a waypoint `Gateway` asks for: [`desired`] turns one Gateway (as JSON, the way the API server serves
//! it) into the Deployment, Service and ServiceAccount of its waypoint — a pure function, no I/O.
//!
//! The objects mirror what `charts/waypoint` renders (same `waypoint run` flags, ports 15008/15020/15021,
//! probes, cert Secret mount, security contexts, labels), with `--gateway <ns>/<name>` and the config source
//! [`Options::control_plane`] picks: `--source push --control-plane <url>` (config pushed by the control plane,
//! as Istio's waypoints get it from istiod: the waypoint needs no RBAC), else `--source kube` (the waypoint
//! reads the API server: its ServiceAccount must be bound to the waypoint chart's kube-mode ClusterRole). No
//! manifests ConfigMap is mounted either way. All three are
//! named after the Gateway (as Istio names them), carry the owner label [`MANAGED_LABEL`] and a controller
//! `ownerReference` to the Gateway.
//!
//! Scope, as the Gateway says it:
//! - `istio.io/waypoint-for` (label): `service` (default when absent), `workload`, `all` or `none` — which
//!   traffic the waypoint takes; copied onto the objects and the pods. Any other value is refused.
//! - `istio.io/for-service-account` (annotation): a waypoint for the workloads running as that service
//!   account only (the chart's `scope: serviceAccount`, whose Gateway is `<sa>-waypoint`); without it, a
//!   waypoint for the namespace. Copied onto the objects and the pods as the same annotation.

use serde_json::{json, Map, Value};

/// The `gatewayClassName` this controller deploys.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// The owner label on everything this controller creates (with a controller `ownerReference`).
pub const MANAGED_LABEL: &str = "gateway.istio.io/managed";
/// [`MANAGED_LABEL`]'s value.
pub const MANAGED_VALUE: &str = "waypoint-controller";
/// The label that says which traffic a waypoint takes.
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
/// The annotation that scopes a waypoint to one service account.
pub const FOR_SERVICE_ACCOUNT: &str = "istio.io/for-service-account";
/// The pods' selector label (the chart's `waypoint.selectorLabels`).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The HBONE port: the listener's, the container's and the Service's.
pub const HBONE_PORT: u16 = 15008;
/// Readiness (`/healthz/ready`) port.
pub const READINESS_PORT: u16 = 15021;
/// Prometheus (`/stats/prometheus`) port.
pub const STATS_PORT: u16 = 15020;

/// Label and annotation keys whose presence depends on the Gateway: removed from an object when the Gateway
/// no longer asks for them.
pub const SCOPED_KEYS: [&str; 2] = [WAYPOINT_FOR, FOR_SERVICE_ACCOUNT];

const CERTS_PATH: &str = "/var/run/secrets/waypoint";
const DRAIN_SECONDS: i64 = 5;
const DRAIN_GRACE_SECONDS: i64 = 5;

/// What every generated Deployment gets from the controller's flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The waypoint image (`--image`).
    pub image: String,
    /// SPIFFE trust domain passed to `waypoint run --trust-domain`.
    pub trust_domain: String,
    /// The push control plane's URL (`--control-plane`): the waypoints run `--source push --control-plane
    /// <url>` and need no RBAC. `None`: they run `--source kube` and read the API server.
    pub control_plane: Option<String>,
    /// The identity the control plane presents (`--control-plane-identity`), passed on with `control_plane`
    /// (`None`: the waypoint's default, `spiffe://<td>/ns/istio-system/sa/waypoint-control-plane`).
    pub control_plane_identity: Option<String>,
}

/// What a waypoint is for (`istio.io/waypoint-for`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaypointFor {
    Service,
    Workload,
    All,
    None,
}

impl WaypointFor {
    pub fn as_str(self) -> &'static str {
        match self {
            WaypointFor::Service => "service",
            WaypointFor::Workload => "workload",
            WaypointFor::All => "all",
            WaypointFor::None => "none",
        }
    }
}

/// A waypoint for a namespace, or for one service account's workloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Namespace,
    ServiceAccount(String),
}

/// The three objects of one Gateway's waypoint, with what they were computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub namespace: String,
    /// The Gateway's name, also the name of the three objects.
    pub name: String,
    pub waypoint_for: WaypointFor,
    pub scope: Scope,
    pub service_account: Value,
    pub service: Value,
    pub deployment: Value,
}

impl Desired {
    /// `(kind, object)` in creation order: the pods' ServiceAccount before the Deployment.
    pub fn objects(&self) -> [(&'static str, &Value); 3] {
        [
            ("ServiceAccount", &self.service_account),
            ("Service", &self.service),
            ("Deployment", &self.deployment),
        ]
    }
}

/// Why a waypoint Gateway gets no objects: the field at fault and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Gateway {gateway}: {field}: {message}")]
pub struct InvalidGateway {
    /// `namespace/name`.
    pub gateway: String,
    /// The field, e.g. `spec.listeners[0].protocol`.
    pub field: String,
    pub message: String,
    /// The Gateway API condition reason (`ListenersNotValid`, `InvalidParameters`, …).
    pub reason: &'static str,
}

/// Whether this controller deploys `gateway` (its `gatewayClassName` is [`WAYPOINT_CLASS`]).
pub fn is_waypoint(gateway: &Value) -> bool {
    gateway["spec"]["gatewayClassName"].as_str() == Some(WAYPOINT_CLASS)
}

/// The objects a waypoint Gateway asks for; see the module doc. `gateway` must be of [`WAYPOINT_CLASS`].
pub fn desired(gateway: &Value, opts: &Options) -> Result<Desired, InvalidGateway> {
    let meta = &gateway["metadata"];
    let name = meta["name"].as_str().unwrap_or_default();
    let namespace = meta["namespace"].as_str().unwrap_or_default();
    let bad = |field: &str, reason: &'static str, message: String| InvalidGateway {
        gateway: format!("{namespace}/{name}"),
        field: field.into(),
        message,
        reason,
    };
    if !is_dns_label(name) {
        let msg = format!("{name:?} must be a DNS label (a Service is named after it)");
        return Err(bad("metadata.name", "InvalidParameters", msg));
    }
    let uid = meta["uid"].as_str().unwrap_or_default();
    if uid.is_empty() {
        let msg = "missing (an ownerReference needs it)".into();
        return Err(bad("metadata.uid", "InvalidParameters", msg));
    }
    let waypoint_for = match meta["labels"][WAYPOINT_FOR].as_str() {
        None | Some("service") => WaypointFor::Service,
        Some("workload") => WaypointFor::Workload,
        Some("all") => WaypointFor::All,
        Some("none") => WaypointFor::None,
        Some(other) => {
            let field = format!("metadata.labels[\"{WAYPOINT_FOR}\"]");
            let msg = format!("{other:?} is not one of service, workload, all, none");
            return Err(bad(&field, "InvalidParameters", msg));
        }
    };
    let scope = match meta["annotations"][FOR_SERVICE_ACCOUNT].as_str() {
        None => Scope::Namespace,
        Some(sa) if is_dns_subdomain(sa) => Scope::ServiceAccount(sa.into()),
        Some(sa) => {
            let field = format!("metadata.annotations[\"{FOR_SERVICE_ACCOUNT}\"]");
            let msg = format!("{sa:?} is not a service account name");
            return Err(bad(&field, "InvalidParameters", msg));
        }
    };
    check_listeners(&gateway["spec"]["listeners"])
        .map_err(|(field, msg)| bad(&field, "ListenersNotValid", msg))?;

    let owner = json!([{
        "apiVersion": gateway["apiVersion"].as_str().unwrap_or("gateway.networking.k8s.io/v1"),
        "kind": "Gateway",
        "name": name,
        "uid": uid,
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    let mut labels = Map::new();
    for (k, v) in [
        (GATEWAY_NAME_LABEL, name),
        ("istio.io/gateway-name", name),
        ("app.kubernetes.io/name", "waypoint"),
        ("app.kubernetes.io/instance", name),
        ("app.kubernetes.io/managed-by", MANAGED_VALUE),
        (MANAGED_LABEL, MANAGED_VALUE),
        (WAYPOINT_FOR, waypoint_for.as_str()),
    ] {
        labels.insert(k.into(), json!(v));
    }
    let mut annotations = Map::new();
    if let Scope::ServiceAccount(sa) = &scope {
        annotations.insert(FOR_SERVICE_ACCOUNT.into(), json!(sa));
    }
    let metadata = |kind_labels: &Map<String, Value>| {
        let mut m = json!({"name": name, "namespace": namespace, "labels": kind_labels,
            "ownerReferences": owner});
        if !annotations.is_empty() {
            m["annotations"] = json!(annotations);
        }
        m
    };
    let service_account = json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(&labels),
    });
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(&labels),
        "spec": {
            "type": "ClusterIP",
            "selector": {GATEWAY_NAME_LABEL: name},
            "ports": [
                {"name": "mesh", "port": HBONE_PORT, "targetPort": "mesh", "protocol": "TCP"},
                {"name": "status-port", "port": READINESS_PORT, "targetPort": "status-port",
                 "protocol": "TCP"},
            ],
        },
    });
    let mut pod_labels = labels.clone();
    // The waypoint's own traffic is not captured by the ztunnel.
    pod_labels.insert("istio.io/dataplane-mode".into(), json!("none"));
    let mut pod_annotations = annotations.clone();
    for (k, v) in [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", STATS_PORT.to_string()),
        ("prometheus.io/path", "/stats/prometheus".to_string()),
    ] {
        pod_annotations.insert(k.into(), json!(v));
    }
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(&labels),
        "spec": {
            // `replicas` is left to the user or an HPA (the API server defaults it to 1).
            "selector": {"matchLabels": {GATEWAY_NAME_LABEL: name}},
            "strategy": {"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                "spec": pod_spec(namespace, name, opts),
            },
        },
    });
    Ok(Desired {
        namespace: namespace.into(),
        name: name.into(),
        waypoint_for,
        scope,
        service_account,
        service,
        deployment,
    })
}

/// The pod: one `waypoint run` container, as the chart renders it with `flags.source: push` or `kube`.
fn pod_spec(namespace: &str, name: &str, opts: &Options) -> Value {
    let ready = json!({"path": "/healthz/ready", "port": READINESS_PORT});
    let cert_items = ["tls.crt", "tls.key", "ca.crt"].map(|k| json!({"key": k, "path": k}));
    json!({
        "serviceAccountName": name,
        "terminationGracePeriodSeconds": DRAIN_SECONDS + DRAIN_GRACE_SECONDS,
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "waypoint",
            "image": opts.image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/usr/local/bin/waypoint"],
            "args": run_args(namespace, name, opts),
            "ports": [
                {"name": "mesh", "containerPort": HBONE_PORT, "protocol": "TCP"},
                {"name": "status-port", "containerPort": READINESS_PORT, "protocol": "TCP"},
                {"name": "http-envoy-prom", "containerPort": STATS_PORT, "protocol": "TCP"},
            ],
            "readinessProbe": {"httpGet": ready, "periodSeconds": 2, "failureThreshold": 3},
            "startupProbe": {"httpGet": ready, "periodSeconds": 1, "failureThreshold": 60},
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                "limits": {"memory": "512Mi"}},
            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "certs", "mountPath": CERTS_PATH, "readOnly": true}],
        }],
        "volumes": [{"name": "certs", "secret": {
            "secretName": format!("{name}-certs"),
            "items": cert_items,
        }}],
    })
}

/// `waypoint run`'s arguments: the chart's (its default `flags`, in its order) with `--source=push
/// --control-plane=<url> [--control-plane-identity=<id>]` when [`Options::control_plane`] is set, else
/// `--source=kube`.
pub fn run_args(namespace: &str, name: &str, opts: &Options) -> Vec<String> {
    let mut args = vec![
        "run".to_string(),
        format!("--gateway={namespace}/{name}"),
        format!("--cert={CERTS_PATH}/tls.crt"),
        format!("--key={CERTS_PATH}/tls.key"),
        format!("--ca={CERTS_PATH}/ca.crt"),
    ];
    let push = opts.control_plane.as_ref().map(|url| {
        let id = opts.control_plane_identity.as_ref();
        let id = id.map(|id| ("control-plane-identity", id.clone()));
        [Some(("control-plane", url.clone())), id]
    });
    let source = if push.is_some() { "push" } else { "kube" };
    let flags = [
        ("access-log", "text".to_string()),
        ("admin", "127.0.0.1:15000".into()),
    ]
    .into_iter()
    .chain(push.into_iter().flatten().flatten())
    .chain([
        ("drain-timeout", format!("{DRAIN_SECONDS}s")),
        ("hbone-port", HBONE_PORT.to_string()),
        ("leader-elect", "true".into()),
        ("listen", format!("0.0.0.0:{HBONE_PORT}")),
        ("log-level", "info".into()),
        ("readiness", format!("0.0.0.0:{READINESS_PORT}")),
        ("reuse-port", "true".into()),
        ("source", source.into()),
        ("stats", format!("0.0.0.0:{STATS_PORT}")),
        ("trace-sampling", "1".into()),
        ("trust-domain", opts.trust_domain.clone()),
    ]);
    args.extend(flags.map(|(k, v)| format!("--{k}={v}")));
    args
}

/// Every listener must be the HBONE one on 15008 (a waypoint has no other), and there must be one.
fn check_listeners(listeners: &Value) -> Result<(), (String, String)> {
    let Some(list) = listeners.as_array().filter(|l| !l.is_empty()) else {
        let msg = format!("a waypoint needs one listener of protocol HBONE on port {HBONE_PORT}");
        return Err(("spec.listeners".into(), msg));
    };
    for (i, l) in list.iter().enumerate() {
        let protocol = l["protocol"].as_str().unwrap_or_default();
        if protocol != "HBONE" {
            let msg = format!("{protocol:?}: a waypoint listens for HBONE only");
            return Err((format!("spec.listeners[{i}].protocol"), msg));
        }
        if l["port"].as_u64() != Some(u64::from(HBONE_PORT)) {
            let msg = format!("{}: the HBONE listener must be on {HBONE_PORT}", l["port"]);
            return Err((format!("spec.listeners[{i}].port"), msg));
        }
    }
    Ok(())
}

/// RFC 1123 label: what a Service name must be.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: what a ServiceAccount name must be.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
#[path = "desired_tests.rs"]
mod tests;
