//! Enrollment: the `istio.io/use-waypoint` label on a Namespace (every service in it) or a Service (that one),
//! with `istio.io/use-waypoint-namespace` when the waypoint lives elsewhere and `none` to opt out.
//!
//! [`plan`] decides what to do with one object's label (set, leave, refuse to steal it from another waypoint,
//! remove); [`enrolled`] finds every object pointing at each waypoint (for `list`, `status` and `delete`'s
//! dangling-label warning). `waypoint enroll` is [`enroll`].

use std::collections::BTreeMap;

use kube::api::{ListParams, Patch, PatchParams};
use kube::Client;
use kube_source::Kind;
use serde_json::{json, Value};

use super::{api, objects, CommonArgs, CtlError, Outcome};

pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";

/// A waypoint by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct WaypointRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for WaypointRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What an object's labels say about its waypoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pointer {
    Unset,
    /// `istio.io/use-waypoint: none`.
    OptOut,
    Waypoint(WaypointRef),
}

/// Reads the labels of an object in namespace `own_ns` (a Namespace's own name for a Namespace).
pub fn pointer(object: &Value, own_ns: &str) -> Pointer {
    let labels = &object["metadata"]["labels"];
    match labels[USE_WAYPOINT].as_str() {
        None | Some("") => Pointer::Unset,
        Some("none") => Pointer::OptOut,
        Some(name) => Pointer::Waypoint(WaypointRef {
            namespace: labels[USE_WAYPOINT_NAMESPACE]
                .as_str()
                .unwrap_or(own_ns)
                .to_string(),
            name: name.into(),
        }),
    }
}

/// What to do with one object's label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelPlan {
    /// Write the label (merge patch [`set_patch`]).
    Set,
    /// Already points at the waypoint: nothing to write.
    AlreadySet,
    /// Points elsewhere (another waypoint, or `none`) and `--overwrite` was not given: refuse.
    Conflict(String),
    /// Remove the label (merge patch [`remove_patch`]).
    Remove,
    /// Unenrolling, and it does not point at this waypoint: leave it (what it says, for the message).
    Leave(String),
}

/// The decision for one object: enroll (or with `unenroll` remove) `want`, stealing a label from another
/// waypoint only with `overwrite`.
pub fn plan(current: &Pointer, want: &WaypointRef, unenroll: bool, overwrite: bool) -> LabelPlan {
    let says = |p: &Pointer| match p {
        Pointer::Unset => "no waypoint".to_string(),
        Pointer::OptOut => "none (opted out)".to_string(),
        Pointer::Waypoint(w) => w.to_string(),
    };
    match (current, unenroll) {
        (Pointer::Waypoint(w), false) if w == want => LabelPlan::AlreadySet,
        (Pointer::Unset, false) => LabelPlan::Set,
        (_, false) if overwrite => LabelPlan::Set,
        (other, false) => LabelPlan::Conflict(says(other)),
        (Pointer::Waypoint(w), true) if w == want => LabelPlan::Remove,
        (other, true) => LabelPlan::Leave(says(other)),
    }
}

/// The merge patch that points an object in `own_ns` at `want`.
pub fn set_patch(want: &WaypointRef, own_ns: &str) -> Value {
    let other_ns = (want.namespace != own_ns).then_some(want.namespace.as_str());
    json!({"metadata": {"labels": {USE_WAYPOINT: want.name, USE_WAYPOINT_NAMESPACE: other_ns}}})
}

/// The merge patch that removes both labels.
pub fn remove_patch() -> Value {
    json!({"metadata": {"labels": {USE_WAYPOINT: null, USE_WAYPOINT_NAMESPACE: null}}})
}

/// An object that names a waypoint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Enrolled {
    /// `namespace` or `service`.
    pub kind: &'static str,
    pub namespace: String,
    /// The Service's name; empty for a Namespace.
    pub name: String,
}

impl Enrolled {
    /// `ns:shop`, `svc:reviews` (a service in the waypoint's namespace), `svc:other/reviews`.
    pub fn short(&self, waypoint_ns: &str) -> String {
        match self.kind {
            "namespace" => format!("ns:{}", self.namespace),
            _ if self.namespace == waypoint_ns => format!("svc:{}", self.name),
            _ => format!("svc:{}/{}", self.namespace, self.name),
        }
    }

    /// `namespace shop`, `service shop/reviews`.
    pub fn long(&self) -> String {
        match self.kind {
            "namespace" => format!("namespace {}", self.namespace),
            _ => format!("service {}/{}", self.namespace, self.name),
        }
    }
}

/// Who points at which waypoint, from Namespaces and Services as listed (sorted, namespaces first).
pub fn enrolled(namespaces: &[Value], services: &[Value]) -> BTreeMap<WaypointRef, Vec<Enrolled>> {
    let mut out: BTreeMap<WaypointRef, Vec<Enrolled>> = BTreeMap::new();
    let name = |o: &Value| {
        o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for ns in namespaces {
        if let Pointer::Waypoint(w) = pointer(ns, &name(ns)) {
            let e = Enrolled {
                kind: "namespace",
                namespace: name(ns),
                name: String::new(),
            };
            out.entry(w).or_default().push(e);
        }
    }
    for svc in services {
        let own = svc["metadata"]["namespace"].as_str().unwrap_or_default();
        if let Pointer::Waypoint(w) = pointer(svc, own) {
            let e = Enrolled {
                kind: "service",
                namespace: own.into(),
                name: name(svc),
            };
            out.entry(w).or_default().push(e);
        }
    }
    for list in out.values_mut() {
        list.sort();
    }
    out
}

/// Lists Namespaces and Services and finds who points where: cluster-wide with `scope` `None`, else the one
/// Namespace and its Services.
pub async fn enrolled_in(
    client: &Client,
    scope: Option<&str>,
) -> Result<BTreeMap<WaypointRef, Vec<Enrolled>>, CtlError> {
    let lp = ListParams::default();
    let (namespaces, services) = match scope {
        None => {
            let ns = api(client, Kind::Namespace, None).list(&lp).await;
            let svc = api(client, Kind::Service, None).list(&lp).await;
            (
                objects(ns, "listing namespaces")?,
                objects(svc, "listing services")?,
            )
        }
        Some(scope) => {
            let ns = api(client, Kind::Namespace, None).get_opt(scope).await;
            let ns = ns.map_err(|e| CtlError::api(format!("reading namespace {scope}"), e))?;
            let svc = api(client, Kind::Service, Some(scope)).list(&lp).await;
            let ns: Vec<Value> = ns.into_iter().map(super::value).collect();
            (ns, objects(svc, &format!("listing services in {scope}"))?)
        }
    };
    Ok(enrolled(&namespaces, &services))
}

/// Applies a label plan to one object (`kind` Namespace or Service); returns the line to print.
pub async fn write_label(
    client: &Client,
    target: &Enrolled,
    want: &WaypointRef,
    plan: &LabelPlan,
) -> Result<String, CtlError> {
    let what = target.long();
    let (kind, ns, name) = match target.kind {
        "namespace" => (Kind::Namespace, None, target.namespace.as_str()),
        _ => (
            Kind::Service,
            Some(target.namespace.as_str()),
            target.name.as_str(),
        ),
    };
    let patch = match plan {
        LabelPlan::AlreadySet => return Ok(format!("{what} already uses waypoint {want}")),
        LabelPlan::Leave(says) => {
            return Ok(format!(
                "{what} does not use waypoint {want} (it says {says}): left alone"
            ))
        }
        LabelPlan::Conflict(says) => {
            return Err(CtlError::LabelConflict {
                what,
                current: says.clone(),
                wanted: want.to_string(),
            })
        }
        LabelPlan::Set => set_patch(want, &target.namespace),
        LabelPlan::Remove => remove_patch(),
    };
    api(client, kind, ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| CtlError::api(format!("labelling {what}"), e))?;
    Ok(match plan {
        LabelPlan::Set => format!("{what} enrolled: {USE_WAYPOINT}={}", want.name),
        _ => format!("{what} unenrolled from waypoint {want}"),
    })
}

/// Reads one Namespace or Service and plans its label; a missing object is an error.
pub async fn plan_for(
    client: &Client,
    target: &Enrolled,
    want: &WaypointRef,
    unenroll: bool,
    overwrite: bool,
) -> Result<LabelPlan, CtlError> {
    let (kind, ns, name) = match target.kind {
        "namespace" => (Kind::Namespace, None, target.namespace.as_str()),
        _ => (
            Kind::Service,
            Some(target.namespace.as_str()),
            target.name.as_str(),
        ),
    };
    let object = api(client, kind, ns)
        .get_opt(name)
        .await
        .map_err(|e| CtlError::api(format!("reading {}", target.long()), e))?
        .ok_or_else(|| CtlError::NotFound(target.long()))?;
    let current = pointer(&super::value(object), &target.namespace);
    Ok(plan(&current, want, unenroll, overwrite))
}

/// The flags of `waypoint enroll`.
#[derive(clap::Args, Clone, Debug)]
pub struct EnrollArgs {
    /// The namespace of the waypoint and of what is enrolled (default: the kubeconfig's namespace).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The waypoint (its Gateway's name).
    #[arg(long, default_value = "waypoint")]
    pub name: String,
    /// Enroll this Service (repeatable); without it, the namespace is enrolled.
    #[arg(long = "service", short = 's')]
    pub services: Vec<String>,
    /// Remove the label instead (only where it names this waypoint).
    #[arg(long)]
    pub unenroll: bool,
    /// Replace a label that names another waypoint (or `none`).
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `waypoint enroll`: every label is planned before any is written, so a conflict writes nothing.
pub async fn enroll(client: &Client, args: &EnrollArgs) -> Result<Outcome, CtlError> {
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().into());
    let want = WaypointRef {
        namespace: ns.clone(),
        name: args.name.clone(),
    };
    let targets: Vec<Enrolled> = match args.services.is_empty() {
        true => vec![Enrolled {
            kind: "namespace",
            namespace: ns.clone(),
            name: String::new(),
        }],
        false => args
            .services
            .iter()
            .map(|s| Enrolled {
                kind: "service",
                namespace: ns.clone(),
                name: s.clone(),
            })
            .collect(),
    };
    let mut plans = Vec::new();
    for t in &targets {
        let p = plan_for(client, t, &want, args.unenroll, args.overwrite).await?;
        if let LabelPlan::Conflict(says) = p {
            return Err(CtlError::LabelConflict {
                what: t.long(),
                current: says,
                wanted: want.to_string(),
            });
        }
        plans.push(p);
    }
    let mut out = Outcome::default();
    for (t, p) in targets.iter().zip(&plans) {
        out.line(write_label(client, t, &want, p).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wp(ns: &str, name: &str) -> WaypointRef {
        WaypointRef {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"name": "x", "namespace": "shop", "labels": labels}})
    }

    #[test]
    fn pointers_follow_istio_labels() {
        let cases = [
            (json!({}), Pointer::Unset),
            (json!({USE_WAYPOINT: ""}), Pointer::Unset),
            (json!({USE_WAYPOINT: "none"}), Pointer::OptOut),
            (
                json!({USE_WAYPOINT: "waypoint"}),
                Pointer::Waypoint(wp("shop", "waypoint")),
            ),
            (
                json!({USE_WAYPOINT: "egress", USE_WAYPOINT_NAMESPACE: "istio-egress"}),
                Pointer::Waypoint(wp("istio-egress", "egress")),
            ),
        ];
        for (labels, want) in cases {
            assert_eq!(pointer(&labelled(labels.clone()), "shop"), want, "{labels}");
        }
    }

    #[test]
    fn plans_never_steal_without_overwrite() {
        let ours = wp("shop", "waypoint");
        let theirs = Pointer::Waypoint(wp("shop", "other"));
        let mine = Pointer::Waypoint(ours.clone());
        let set = LabelPlan::Set;
        let conflict = |s: &str| LabelPlan::Conflict(s.into());
        let leave = |s: &str| LabelPlan::Leave(s.into());
        // (current, unenroll, overwrite) → plan
        let cases = [
            (Pointer::Unset, false, false, set.clone()),
            (mine.clone(), false, false, LabelPlan::AlreadySet),
            (theirs.clone(), false, false, conflict("shop/other")),
            (theirs.clone(), false, true, set.clone()),
            (Pointer::OptOut, false, false, conflict("none (opted out)")),
            (Pointer::OptOut, false, true, set),
            (mine.clone(), true, false, LabelPlan::Remove),
            (mine, true, true, LabelPlan::Remove),
            (theirs.clone(), true, false, leave("shop/other")),
            (theirs, true, true, leave("shop/other")),
            (Pointer::Unset, true, false, leave("no waypoint")),
        ];
        for (i, (current, unenroll, overwrite, want)) in cases.into_iter().enumerate() {
            assert_eq!(plan(&current, &ours, unenroll, overwrite), want, "case {i}");
        }
    }

    #[test]
    fn patches_name_the_namespace_only_across_namespaces() {
        let same = set_patch(&wp("shop", "waypoint"), "shop");
        assert_eq!(same["metadata"]["labels"][USE_WAYPOINT], "waypoint");
        assert!(same["metadata"]["labels"][USE_WAYPOINT_NAMESPACE].is_null());
        let other = set_patch(&wp("egress", "gw"), "shop");
        assert_eq!(
            other["metadata"]["labels"][USE_WAYPOINT_NAMESPACE],
            "egress"
        );
        assert!(remove_patch()["metadata"]["labels"][USE_WAYPOINT].is_null());
    }

    #[test]
    fn enrolled_groups_namespaces_and_services_by_waypoint() {
        let namespaces = [
            json!({"metadata": {"name": "shop", "labels": {USE_WAYPOINT: "waypoint"}}}),
            json!({"metadata": {"name": "quiet", "labels": {USE_WAYPOINT: "none"}}}),
        ];
        let services = [
            json!({"metadata": {"name": "reviews", "namespace": "shop", "labels": {USE_WAYPOINT: "waypoint"}}}),
            json!({"metadata": {"name": "api", "namespace": "web",
                "labels": {USE_WAYPOINT: "waypoint", USE_WAYPOINT_NAMESPACE: "shop"}}}),
            json!({"metadata": {"name": "plain", "namespace": "shop"}}),
        ];
        let got = enrolled(&namespaces, &services);
        assert_eq!(got.len(), 1);
        let short: Vec<String> = got[&wp("shop", "waypoint")]
            .iter()
            .map(|e| e.short("shop"))
            .collect();
        assert_eq!(short, ["ns:shop", "svc:reviews", "svc:web/api"]);
    }
}
