//! Status write-back, as a Gateway API / Istio controller does it: the caller says what each object's status
//! should be ([`DesiredStatus`]), [`StatusWriter::sync`] writes only what changed, to the `/status` subresource,
//! and only while this replica leads ([`crate::lease`]).
//!
//! No write storms: the last status written per object is remembered, and an unchanged desired status costs
//! nothing. An object not yet written by this writer (start-up, new leader) is read first, and left alone when
//! the server already has that status — a restart or a change of leader does not rewrite the cluster.
//!
//! What is written: the desired status with `observedGeneration` stamped on every condition (and at the top
//! for Istio kinds, whose status carries it there) and `lastTransitionTime` kept from the server's condition of
//! the same type when its `status` did not change (else now). A route's `status.parents[]` is shared between
//! controllers: entries of other `controllerName`s are kept, ours replaced. The write is a JSON merge patch
//! carrying the `resourceVersion` read (a concurrent change answers `409 Conflict`, and the write is redone on
//! a fresh read); top-level status fields we no longer set are nulled so the status is replaced whole.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{json, Map, Value};

use crate::kinds::Kind;
use crate::lease::Leadership;

/// Which object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: Kind,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// The status an object should have.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredStatus {
    pub object: ObjectRef,
    /// The `metadata.generation` the status was computed from (stamped as `observedGeneration`); `None`: the
    /// generation the server reports when the status is written.
    pub generation: Option<i64>,
    /// The `status` object, e.g. `{"parents": [{"parentRef": …, "controllerName": …, "conditions": […]}]}`.
    pub status: Value,
}

/// What one [`StatusWriter::sync`] did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Statuses patched.
    pub written: usize,
    /// Statuses left alone because they had not changed (in our memory or on the server).
    pub unchanged: usize,
    /// Objects that no longer exist (404).
    pub missing: usize,
    /// Nothing was done: this replica does not lead.
    pub not_leader: bool,
    /// Objects whose write failed, with the error.
    pub failed: Vec<(ObjectRef, String)>,
}

/// Writes statuses; see the module doc.
pub struct StatusWriter {
    client: kube::Client,
    controller_name: String,
    leadership: Leadership,
    /// The desired status last written (or found on the server) per object.
    written: Mutex<HashMap<ObjectRef, Value>>,
}

/// How many times a write is redone after a `409 Conflict`.
const CONFLICT_RETRIES: usize = 3;

impl StatusWriter {
    /// `controller_name` is the `controllerName` of our `status.parents[]` entries (Istio's waypoints use
    /// `istio.io/mesh-controller`).
    pub fn new(client: kube::Client, controller_name: &str, leadership: Leadership) -> Self {
        StatusWriter {
            client,
            controller_name: controller_name.into(),
            leadership,
            written: Mutex::new(HashMap::new()),
        }
    }

    /// Brings the statuses of `desired` onto the server, writing only the changed ones. Objects not in
    /// `desired` are forgotten (written again in full if they come back).
    pub async fn sync(&self, desired: &[DesiredStatus]) -> SyncReport {
        let mut report = SyncReport::default();
        if !self.leadership.is_leader() {
            // Another replica writes meanwhile: what we remember may be stale when we lead again.
            self.memory().clear();
            report.not_leader = true;
            return report;
        }
        self.memory()
            .retain(|k, _| desired.iter().any(|d| &d.object == k));
        for d in desired {
            let want = self.normalise(d);
            if self.memory().get(&d.object) == Some(&want) {
                report.unchanged += 1;
                continue;
            }
            match self.write(d, &want).await {
                Ok(Outcome::Written) => report.written += 1,
                Ok(Outcome::Unchanged) => report.unchanged += 1,
                Ok(Outcome::Missing) => {
                    report.missing += 1;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(object = %d.object, error = %e, "status write failed");
                    report.failed.push((d.object.clone(), e.to_string()));
                    continue;
                }
            }
            self.memory().insert(d.object.clone(), want);
        }
        report
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef, Value>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The desired status with our `controllerName` filled in, for comparisons.
    fn normalise(&self, d: &DesiredStatus) -> Value {
        let mut status = d.status.clone();
        if let Some(parents) = status.get_mut("parents").and_then(Value::as_array_mut) {
            for p in parents.iter_mut().filter_map(Value::as_object_mut) {
                p.entry("controllerName")
                    .or_insert_with(|| Value::String(self.controller_name.clone()));
            }
        }
        json!({"generation": d.generation, "status": status})
    }

    async fn write(&self, d: &DesiredStatus, want: &Value) -> Result<Outcome, kube::Error> {
        let ar = d.object.kind.api_resource();
        let api: Api<DynamicObject> = if d.object.kind.namespaced() {
            Api::namespaced_with(self.client.clone(), &d.object.namespace, &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        };
        let mut attempt = 0;
        loop {
            let current = match api.get_status(&d.object.name).await {
                Ok(obj) => obj,
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Outcome::Missing),
                Err(e) => return Err(e),
            };
            let old = current.data.get("status").cloned().unwrap_or(Value::Null);
            let generation = d.generation.or(current.metadata.generation);
            let next = self.compose(d.object.kind, &want["status"], &old, generation);
            if next == old {
                return Ok(Outcome::Unchanged);
            }
            let mut status_patch = next;
            if let (Some(patch), Some(old)) = (status_patch.as_object_mut(), old.as_object()) {
                for k in old.keys() {
                    patch.entry(k.clone()).or_insert(Value::Null);
                }
            }
            let body = json!({
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "status": status_patch,
            });
            let pp = PatchParams::default();
            match api
                .patch_status(&d.object.name, &pp, &Patch::Merge(&body))
                .await
            {
                Ok(_) => return Ok(Outcome::Written),
                Err(kube::Error::Api(s)) if s.code == 409 && attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Outcome::Missing),
                Err(e) => return Err(e),
            }
        }
    }

    /// The status to write: `want` stamped against the server's `old`, other controllers' parents kept.
    fn compose(&self, kind: Kind, want: &Value, old: &Value, generation: Option<i64>) -> Value {
        let now = Timestamp::now().to_string();
        let mut next = want.clone();
        stamp(&mut next, old, generation, &now);
        if let (Some(mine), Some(theirs)) = (
            next.get("parents").and_then(Value::as_array).cloned(),
            old.get("parents").and_then(Value::as_array),
        ) {
            let others = theirs
                .iter()
                .filter(|p| p["controllerName"].as_str() != Some(self.controller_name.as_str()));
            next["parents"] = Value::Array(others.cloned().chain(mine).collect());
        }
        let istio = matches!(
            kind,
            Kind::AuthorizationPolicy | Kind::RequestAuthentication | Kind::DestinationRule
        );
        if let (true, Some(g), Some(map)) = (istio, generation, next.as_object_mut()) {
            map.entry("observedGeneration").or_insert(json!(g));
        }
        next
    }
}

enum Outcome {
    Written,
    Unchanged,
    Missing,
}

/// Stamps `observedGeneration` and `lastTransitionTime` on every `conditions[]` under `status`, matching each
/// against `old` (the server's status at the same place: list entries matched by `parentRef`, `name`, or
/// position).
fn stamp(status: &mut Value, old: &Value, generation: Option<i64>, now: &str) {
    let Some(map) = status.as_object_mut() else {
        return;
    };
    for (key, value) in map.iter_mut() {
        let old_here = &old[key.as_str()];
        match (key.as_str(), value) {
            ("conditions", Value::Array(conds)) => {
                for c in conds.iter_mut().filter_map(Value::as_object_mut) {
                    stamp_condition(c, old_here, generation, now);
                }
            }
            (_, Value::Array(items)) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let prev = matching(old_here, item, i);
                    stamp(item, &prev, generation, now);
                }
            }
            (_, v @ Value::Object(_)) => stamp(v, old_here, generation, now),
            _ => {}
        }
    }
}

fn stamp_condition(c: &mut Map<String, Value>, old: &Value, generation: Option<i64>, now: &str) {
    if let Some(g) = generation {
        c.entry("observedGeneration").or_insert(json!(g));
    }
    if c.contains_key("lastTransitionTime") {
        return;
    }
    let same = old.as_array().and_then(|olds| {
        olds.iter()
            .find(|o| o["type"] == c["type"] && o["status"] == c["status"])
    });
    let since = same
        .and_then(|o| o.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| Value::String(now.into()));
    c.insert("lastTransitionTime".into(), since);
}

/// The entry of the old list that `item` (at `index`) continues.
fn matching(old: &Value, item: &Value, index: usize) -> Value {
    let Some(olds) = old.as_array() else {
        return Value::Null;
    };
    let found = if item.get("parentRef").is_some() {
        olds.iter().find(|o| {
            o["parentRef"] == item["parentRef"] && o["controllerName"] == item["controllerName"]
        })
    } else if item.get("name").is_some() {
        olds.iter().find(|o| o["name"] == item["name"])
    } else {
        olds.get(index)
    };
    found.cloned().unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_times_survive_when_the_status_holds() {
        let old = json!({"parents": [{"parentRef": {"name": "a"}, "controllerName": "c", "conditions": [
            {"type": "Accepted", "status": "True", "lastTransitionTime": "then", "observedGeneration": 1},
            {"type": "ResolvedRefs", "status": "True", "lastTransitionTime": "then"}]}]});
        let mut want = json!({"parents": [{"parentRef": {"name": "a"}, "controllerName": "c", "conditions": [
            {"type": "Accepted", "status": "True"}, {"type": "ResolvedRefs", "status": "False"}]}]});
        stamp(&mut want, &old, Some(2), "now");
        let conds = &want["parents"][0]["conditions"];
        assert_eq!(conds[0]["lastTransitionTime"], "then");
        assert_eq!(conds[0]["observedGeneration"], 2);
        assert_eq!(conds[1]["lastTransitionTime"], "now");
    }

    #[test]
    fn listeners_match_by_name_and_gateway_conditions_at_the_top() {
        let old = json!({"conditions": [{"type": "Programmed", "status": "True", "lastTransitionTime": "t0"}],
            "listeners": [{"name": "mesh", "conditions": [{"type": "Programmed", "status": "True",
            "lastTransitionTime": "t1"}]}]});
        let mut want = json!({"conditions": [{"type": "Programmed", "status": "True"}],
            "listeners": [{"name": "other", "conditions": []}, {"name": "mesh", "conditions": [
            {"type": "Programmed", "status": "True"}]}]});
        stamp(&mut want, &old, None, "now");
        assert_eq!(want["conditions"][0]["lastTransitionTime"], "t0");
        assert!(want["conditions"][0].get("observedGeneration").is_none());
        assert_eq!(
            want["listeners"][1]["conditions"][0]["lastTransitionTime"],
            "t1"
        );
    }
}
