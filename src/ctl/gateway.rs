//! A waypoint's `Gateway` as plain data: the object `generate` prints and `apply` writes, the apply plan
//! (create, patch, or nothing to do), and the conditions and addresses `status`, `list` and `--wait` read back.
//! Pure functions over `serde_json::Value`, table-tested; the API calls live in the subcommand modules.

/// One status condition: the shape route status uses.
pub use crate::routes::status::Condition;
use serde_json::{json, Map, Value};

/// The class every waypoint Gateway has.
pub const CLASS: &str = "istio-waypoint";
/// The listener every waypoint has: HBONE on 15008.
pub const MESH_LISTENER: (&str, u16, &str) = ("mesh", 15008, "HBONE");
/// What traffic the waypoint handles (`service`, `workload`, `all`, `none`).
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
/// A per-service-account waypoint names its service account here.
pub const FOR_SERVICE_ACCOUNT: &str = "istio.io/for-service-account";
/// The control-plane revision the waypoint belongs to.
pub const REVISION: &str = "istio.io/rev";

/// `--for`: the traffic a waypoint handles, its `istio.io/waypoint-for` label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TrafficType {
    /// Traffic addressed to services (the default).
    #[default]
    Service,
    /// Traffic addressed to workloads (pod IPs).
    Workload,
    All,
    None,
}

impl TrafficType {
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficType::Service => "service",
            TrafficType::Workload => "workload",
            TrafficType::All => "all",
            TrafficType::None => "none",
        }
    }
}

/// The waypoint to generate or apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waypoint {
    pub namespace: String,
    pub name: String,
    pub traffic: TrafficType,
    /// A per-service-account waypoint: the `istio.io/for-service-account` annotation.
    pub service_account: Option<String>,
    /// The `istio.io/rev` label.
    pub revision: Option<String>,
}

/// The name a waypoint gets when none is given: `<service-account>-waypoint` for a per-service-account
/// waypoint (as `examples/waypoint-per-service-account`), else `waypoint`.
pub fn default_name(service_account: Option<&str>) -> String {
    match service_account {
        Some(sa) => format!("{sa}-waypoint"),
        None => "waypoint".into(),
    }
}

impl Waypoint {
    /// The Gateway object, in the shape of `charts/waypoint` and `istioctl waypoint generate`.
    pub fn gateway(&self) -> Value {
        let mut metadata = json!({
            "name": self.name,
            "namespace": self.namespace,
            "labels": {WAYPOINT_FOR: self.traffic.as_str()},
        });
        if let Some(rev) = &self.revision {
            metadata["labels"][REVISION] = json!(rev);
        }
        if let Some(sa) = &self.service_account {
            metadata["annotations"] = json!({ FOR_SERVICE_ACCOUNT: sa });
        }
        let (name, port, protocol) = MESH_LISTENER;
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": metadata,
            "spec": {
                "gatewayClassName": CLASS,
                "listeners": [{"name": name, "port": port, "protocol": protocol}],
            },
        })
    }
}

/// The Gateway as YAML (what `waypoint generate` prints).
pub fn to_yaml(gateway: &Value) -> String {
    serde_yaml::to_string(gateway).expect("a JSON value is always YAML")
}

/// What `apply` does with the Gateway.
#[derive(Clone, Debug, PartialEq)]
pub enum ApplyPlan {
    /// It does not exist: create it.
    Create,
    /// It exists and differs: this merge patch (labels, annotations, spec) makes it match.
    Patch(Value),
    /// It already says everything we would write: write nothing.
    Unchanged,
}

/// Compares the existing Gateway with the desired one. Fields the API server or others added (defaults such as
/// `allowedRoutes`, other labels, status) do not count as a difference; only what we would write does.
pub fn plan_apply(existing: Option<&Value>, desired: &Value) -> ApplyPlan {
    let Some(existing) = existing else {
        return ApplyPlan::Create;
    };
    let mut patch = Map::new();
    let mut meta = Map::new();
    for key in ["labels", "annotations"] {
        let want = &desired["metadata"][key];
        if !want.is_null() && !contains(&existing["metadata"][key], want) {
            meta.insert(key.into(), want.clone());
        }
    }
    if !meta.is_empty() {
        patch.insert("metadata".into(), Value::Object(meta));
    }
    if !contains(&existing["spec"], &desired["spec"]) {
        patch.insert("spec".into(), desired["spec"].clone());
    }
    match patch.is_empty() {
        true => ApplyPlan::Unchanged,
        false => ApplyPlan::Patch(Value::Object(patch)),
    }
}

/// `have` says everything `want` says: objects key by key (extra keys in `have` allowed), arrays element by
/// element (same length), scalars equal.
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| contains(hv, v))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(h, w)| contains(h, w))
        }
        (h, w) => h == w,
    }
}

/// What a Gateway's status says.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GatewayState {
    pub conditions: Vec<Condition>,
    pub addresses: Vec<String>,
}

impl GatewayState {
    /// Reads `status.conditions` and `status.addresses` (missing fields are empty).
    pub fn of(gateway: &Value) -> Self {
        let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
        let list = |k: &str| gateway["status"][k].as_array().cloned().unwrap_or_default();
        GatewayState {
            conditions: list("conditions")
                .iter()
                .map(|c| Condition {
                    kind: text(c, "type"),
                    status: text(c, "status"),
                    reason: text(c, "reason"),
                    message: text(c, "message"),
                })
                .collect(),
            addresses: list("addresses").iter().map(|a| text(a, "value")).collect(),
        }
    }

    /// The status of a condition type: `True`, `False`, or `Unknown` when absent.
    pub fn condition(&self, kind: &str) -> &str {
        self.conditions
            .iter()
            .find(|c| c.kind == kind)
            .map_or("Unknown", |c| c.status.as_str())
    }

    pub fn programmed(&self) -> bool {
        self.condition("Programmed") == "True"
    }

    /// Why it is not programmed (for a timeout's message): the condition's reason and message, or that the
    /// status has none yet.
    pub fn why_not_programmed(&self) -> String {
        match self.conditions.iter().find(|c| c.kind == "Programmed") {
            Some(c) => format!("Programmed={} ({}: {})", c.status, c.reason, c.message),
            None => {
                "no Programmed condition yet (is a controller serving class istio-waypoint?)".into()
            }
        }
    }
}

/// Whether an object read back is a waypoint (class `istio-waypoint`).
pub fn is_waypoint(gateway: &Value) -> bool {
    gateway["spec"]["gatewayClassName"].as_str() == Some(CLASS)
}

/// A label of an object, if set.
pub fn label<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object["metadata"]["labels"][key].as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waypoint(traffic: TrafficType, sa: Option<&str>, rev: Option<&str>) -> Waypoint {
        Waypoint {
            namespace: "shop".into(),
            name: default_name(sa),
            traffic,
            service_account: sa.map(Into::into),
            revision: rev.map(Into::into),
        }
    }

    #[test]
    fn the_gateway_has_the_chart_shape() {
        let gw = waypoint(TrafficType::Service, None, None).gateway();
        let want = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "waypoint", "namespace": "shop", "labels": {"istio.io/waypoint-for": "service"}},
            "spec": {"gatewayClassName": "istio-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
        });
        assert_eq!(gw, want);
        let yaml = to_yaml(&gw);
        assert!(
            yaml.starts_with("apiVersion: gateway.networking.k8s.io/v1\n"),
            "{yaml}"
        );
        assert_eq!(serde_yaml::from_str::<Value>(&yaml).unwrap(), want);
    }

    #[test]
    fn options_become_labels_and_annotations() {
        // (traffic, service account, revision) → (name, waypoint-for, annotation, rev label)
        let cases = [
            (
                TrafficType::Service,
                None,
                None,
                "waypoint",
                "service",
                None,
                None,
            ),
            (
                TrafficType::Workload,
                Some("ledger"),
                None,
                "ledger-waypoint",
                "workload",
                Some("ledger"),
                None,
            ),
            (
                TrafficType::All,
                None,
                Some("canary"),
                "waypoint",
                "all",
                None,
                Some("canary"),
            ),
            (
                TrafficType::None,
                None,
                None,
                "waypoint",
                "none",
                None,
                None,
            ),
        ];
        for (traffic, sa, rev, name, for_, ann, rev_label) in cases {
            let gw = waypoint(traffic, sa, rev).gateway();
            assert_eq!(gw["metadata"]["name"], name);
            assert_eq!(label(&gw, WAYPOINT_FOR), Some(for_));
            assert_eq!(
                gw["metadata"]["annotations"][FOR_SERVICE_ACCOUNT].as_str(),
                ann
            );
            assert_eq!(label(&gw, REVISION), rev_label);
        }
    }

    #[test]
    fn apply_plans_only_what_differs() {
        let desired = waypoint(TrafficType::Service, None, None).gateway();
        // As an API server returns it: defaults filled in, other labels, status, bookkeeping.
        let mut served = desired.clone();
        served["metadata"]["resourceVersion"] = json!("7");
        served["metadata"]["labels"]["team"] = json!("a");
        served["spec"]["listeners"][0]["allowedRoutes"] = json!({"namespaces": {"from": "Same"}});
        served["status"] = json!({"conditions": []});
        let mut other_for = served.clone();
        other_for["metadata"]["labels"][WAYPOINT_FOR] = json!("workload");
        let mut other_port = served.clone();
        other_port["spec"]["listeners"][0]["port"] = json!(15009);
        let mut two_listeners = served.clone();
        two_listeners["spec"]["listeners"] = json!([{"name": "mesh", "port": 15008, "protocol": "HBONE"},
            {"name": "x", "port": 80, "protocol": "HTTP"}]);
        let spec = json!({"spec": desired["spec"]});
        let labels = json!({"metadata": {"labels": desired["metadata"]["labels"]}});
        let cases = [
            (None, ApplyPlan::Create),
            (Some(&desired), ApplyPlan::Unchanged),
            (Some(&served), ApplyPlan::Unchanged),
            (Some(&other_for), ApplyPlan::Patch(labels)),
            (Some(&other_port), ApplyPlan::Patch(spec.clone())),
            (Some(&two_listeners), ApplyPlan::Patch(spec)),
        ];
        for (i, (existing, want)) in cases.into_iter().enumerate() {
            assert_eq!(plan_apply(existing, &desired), want, "case {i}");
        }
    }

    #[test]
    fn status_reads_conditions_and_addresses() {
        let gw = json!({"spec": {"gatewayClassName": "istio-waypoint"}, "status": {
            "addresses": [{"type": "IPAddress", "value": "10.96.0.20"}],
            "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "ok"},
                {"type": "Programmed", "status": "False", "reason": "Pending", "message": "no address"}]}});
        let cases = [
            (json!({}), "Unknown", false, 0),
            (gw.clone(), "False", false, 1),
            (
                {
                    let mut g = gw.clone();
                    g["status"]["conditions"][1]["status"] = json!("True");
                    g
                },
                "True",
                true,
                1,
            ),
        ];
        for (object, programmed, is, addresses) in cases {
            let s = GatewayState::of(&object);
            assert_eq!(s.condition("Programmed"), programmed);
            assert_eq!(s.programmed(), is);
            assert_eq!(s.addresses.len(), addresses);
        }
        let s = GatewayState::of(&gw);
        assert_eq!(
            s.why_not_programmed(),
            "Programmed=False (Pending: no address)"
        );
        assert!(GatewayState::default()
            .why_not_programmed()
            .contains("no Programmed"));
        assert!(is_waypoint(&gw) && !is_waypoint(&json!({"spec": {"gatewayClassName": "istio"}})));
    }
}
