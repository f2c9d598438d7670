//! Pure decisions of a reconcile: whose an existing object is ([`ownership`]), whether it already says what
//! we want and if not the merge patch that makes it ([`patch_for`]), and which objects outlived their
//! Gateway ([`orphans`]).
//!
//! "Says what we want" is containment, not equality: the API server adds defaults (a Service's `clusterIP`,
//! a container's `terminationMessagePath`, …) and others may add their own labels, so an object is left alone
//! when every field we set has our value ([`contains`]) and no scope key we no longer want is left
//! ([`crate::desired::SCOPED_KEYS`]). Lists are ours whole (same length, element by element).

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::desired::{MANAGED_LABEL, MANAGED_VALUE, SCOPED_KEYS};

/// Whose an existing object of a waypoint's name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Ours: the owner label and a controller `ownerReference` to a Gateway of that name (its `uid` is
    /// refreshed when the Gateway was recreated).
    Ours,
    /// Someone else's: never changed, never deleted.
    Foreign,
}

/// The Gateway an object's controller `ownerReference` names, if the object carries our owner label.
pub fn owner_gateway(object: &Value) -> Option<&str> {
    if object["metadata"]["labels"][MANAGED_LABEL].as_str() != Some(MANAGED_VALUE) {
        return None;
    }
    let refs = object["metadata"]["ownerReferences"].as_array()?;
    refs.iter()
        .find(|r| r["kind"] == "Gateway" && r["controller"] == true)
        .and_then(|r| r["name"].as_str())
}

/// Whether `object` is ours to manage for the Gateway `gateway_name` (in the object's namespace).
pub fn ownership(object: &Value, gateway_name: &str) -> Ownership {
    match owner_gateway(object) {
        Some(name) if name == gateway_name => Ownership::Ours,
        _ => Ownership::Foreign,
    }
}

/// Whether every field of `want` is in `current` with the same value (see the module doc).
pub fn contains(current: &Value, want: &Value) -> bool {
    match (current, want) {
        (_, Value::Null) => current.is_null(),
        (Value::Object(c), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| contains(c.get(k).unwrap_or(&Value::Null), v)),
        (Value::Array(c), Value::Array(w)) => {
            c.len() == w.len() && c.iter().zip(w).all(|(c, w)| contains(c, w))
        }
        (Value::Number(c), Value::Number(w)) => c.as_f64() == w.as_f64(),
        _ => current == want,
    }
}

/// Where the scope keys may sit on an object.
const SCOPED_MAPS: [&[&str]; 4] = [
    &["metadata", "labels"],
    &["metadata", "annotations"],
    &["spec", "template", "metadata", "labels"],
    &["spec", "template", "metadata", "annotations"],
];

/// The merge patch that brings `current` to `want`, or `None` when it already says it: `want`'s labels,
/// annotations, `ownerReferences` and `spec`, with scope keys we no longer want set to `null` (removed).
pub fn patch_for(current: &Value, want: &Value) -> Option<Value> {
    let mut patch = json!({"metadata": {}});
    for key in ["labels", "annotations", "ownerReferences"] {
        if let Some(v) = want["metadata"].get(key) {
            patch["metadata"][key] = v.clone();
        }
    }
    if let Some(spec) = want.get("spec") {
        patch["spec"] = spec.clone();
    }
    let mut stale = false;
    for path in SCOPED_MAPS {
        let have = path.iter().fold(current, |v, k| &v[*k]);
        let wanted = path.iter().fold(want, |v, k| &v[*k]);
        for key in SCOPED_KEYS {
            if have.get(key).is_some() && wanted.get(key).is_none() {
                stale = true;
                let mut at = &mut patch;
                for k in path.iter() {
                    if at.get(*k).is_none() {
                        at[*k] = json!({});
                    }
                    at = &mut at[*k];
                }
                at[key] = Value::Null;
            }
        }
    }
    (stale || !contains(current, want)).then_some(patch)
}

/// `(namespace, name)` of a Gateway that still wants its waypoint.
pub type GatewayKey = (String, String);

/// The objects (of one kind) to delete: ours (owner label and controller `ownerReference`) whose Gateway is
/// not among `live` — deleted, or no longer of the waypoint class. Returns `(namespace, name, uid)`.
pub fn orphans<'a>(
    objects: impl IntoIterator<Item = &'a Value>,
    live: &BTreeSet<GatewayKey>,
) -> Vec<(String, String, String)> {
    objects
        .into_iter()
        .filter_map(|o| {
            let gateway = owner_gateway(o)?;
            let meta = &o["metadata"];
            let ns = meta["namespace"].as_str().unwrap_or_default().to_string();
            if live.contains(&(ns.clone(), gateway.to_string())) {
                return None;
            }
            let name = meta["name"].as_str()?.to_string();
            let uid = meta["uid"].as_str().unwrap_or_default().to_string();
            Some((ns, name, uid))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(name: &str, gateway: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
            "labels": {MANAGED_LABEL: MANAGED_VALUE},
            "ownerReferences": [{"kind": "Gateway", "name": gateway, "uid": "g", "controller": true}]}})
    }

    #[test]
    fn containment_ignores_server_defaults_but_not_our_fields() {
        let want =
            json!({"spec": {"ports": [{"port": 15008, "name": "mesh"}], "type": "ClusterIP"}});
        let cases = [
            ("equal", want.clone(), true),
            (
                "defaults added",
                json!({"spec": {"ports": [{"port": 15008, "name": "mesh", "protocol": "TCP"}],
                    "type": "ClusterIP", "clusterIP": "10.0.0.1"}}),
                true,
            ),
            (
                "a value changed",
                json!({"spec": {"ports": [{"port": 15009, "name": "mesh"}], "type": "ClusterIP"}}),
                false,
            ),
            (
                "a list element added",
                json!({"spec": {"ports": [{"port": 15008, "name": "mesh"}, {"port": 1}],
                    "type": "ClusterIP"}}),
                false,
            ),
            (
                "a field missing",
                json!({"spec": {"ports": [{"port": 15008, "name": "mesh"}]}}),
                false,
            ),
            (
                "1 and 1.0",
                json!({"spec": {"ports": [{"port": 15008.0, "name": "mesh"}], "type": "ClusterIP"}}),
                true,
            ),
        ];
        for (what, current, want_contained) in cases {
            assert_eq!(contains(&current, &want), want_contained, "{what}");
        }
    }

    #[test]
    fn patches_only_when_needed_and_remove_scope_keys_no_longer_wanted() {
        let want = json!({"metadata": {"name": "wp", "labels": {"a": "1", "istio.io/waypoint-for": "all"},
            "ownerReferences": [{"uid": "g"}]}, "spec": {"x": 1}});
        let mut current = want.clone();
        current["metadata"]["resourceVersion"] = json!("7");
        current["metadata"]["labels"]["someone-elses"] = json!("kept");
        assert_eq!(patch_for(&current, &want), None, "unchanged: no write");

        current["spec"]["x"] = json!(2);
        let p = patch_for(&current, &want).expect("spec drifted");
        assert_eq!(p["spec"], json!({"x": 1}));
        assert!(p["metadata"].get("resourceVersion").is_none());

        let mut scoped = want.clone();
        scoped["metadata"]["annotations"] = json!({"istio.io/for-service-account": "reviews"});
        let p = patch_for(&scoped, &want).expect("stale scope annotation");
        assert_eq!(
            p["metadata"]["annotations"]["istio.io/for-service-account"],
            Value::Null
        );

        let mut pods = want.clone();
        pods["spec"]["template"] =
            json!({"metadata": {"annotations": {"istio.io/for-service-account": "r"}}});
        let p = patch_for(&pods, &want).expect("stale pod annotation");
        assert_eq!(
            p["spec"]["template"]["metadata"]["annotations"]["istio.io/for-service-account"],
            Value::Null
        );
    }

    #[test]
    fn ownership_needs_the_label_and_a_controller_reference_to_that_gateway() {
        let mut no_label = owned("wp", "wp");
        no_label["metadata"]["labels"] = json!({});
        let mut not_controller = owned("wp", "wp");
        not_controller["metadata"]["ownerReferences"][0]["controller"] = json!(false);
        let mut no_refs = owned("wp", "wp");
        no_refs["metadata"]["ownerReferences"] = Value::Null;
        let cases = [
            ("ours", owned("wp", "wp"), Ownership::Ours),
            (
                "another gateway's",
                owned("wp", "other"),
                Ownership::Foreign,
            ),
            ("no owner label", no_label, Ownership::Foreign),
            ("owner not controller", not_controller, Ownership::Foreign),
            ("no ownerReferences", no_refs, Ownership::Foreign),
        ];
        for (what, object, want) in cases {
            assert_eq!(ownership(&object, "wp"), want, "{what}");
        }
    }

    #[test]
    fn orphans_are_ours_without_a_live_gateway() {
        let mut foreign = owned("wp", "gone");
        foreign["metadata"]["labels"] = json!({});
        let objects = [owned("a", "live"), owned("b", "gone"), foreign];
        let live = BTreeSet::from([("ns".to_string(), "live".to_string())]);
        let got = orphans(&objects, &live);
        assert_eq!(got, [("ns".into(), "b".into(), "uid-b".into())]);
    }
}
