//! The fake API server's data: objects, the event history every watch replays from, selectors, and the record
//! of requests. All behind one mutex; every change bumps a `tick` that waiting streams and helpers watch.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::kinds::Kind;

/// A resource the server serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    pub group: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
}

/// Resources served beyond [`Kind::ALL`] (which is what the mesh source watches, so these stay out of it):
/// `(group, kind, plural)`, all namespaced — Leases for the election, and what a controller creates.
pub const EXTRA_RESOURCES: [(&str, &str, &str); 3] = [
    ("coordination.k8s.io", "Lease", "leases"),
    ("apps", "Deployment", "deployments"),
    ("", "ServiceAccount", "serviceaccounts"),
];

/// Every kind [`Kind`] watches, plus [`EXTRA_RESOURCES`].
pub(crate) fn resources() -> Vec<Resource> {
    let mut out: Vec<Resource> = Kind::ALL
        .into_iter()
        .map(|k| {
            let ar = k.api_resource();
            Resource {
                group: ar.group,
                kind: ar.kind,
                plural: ar.plural,
                namespaced: k.namespaced(),
            }
        })
        .collect();
    out.extend(EXTRA_RESOURCES.map(|(group, kind, plural)| Resource {
        group: group.into(),
        kind: kind.into(),
        plural: plural.into(),
        namespaced: true,
    }));
    out
}

/// What a watch event says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
    /// To every resource's watches that asked for bookmarks.
    Bookmark,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
            EventType::Bookmark => "BOOKMARK",
        }
    }
}

/// One entry of the history.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub rv: u64,
    pub event: EventType,
    /// `(group, plural)`; empty for a bookmark.
    pub resource: (String, String),
    pub object: Value,
}

/// One request the server answered.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub body: Option<Value>,
    /// The HTTP status answered (200 for a watch stream, even one that then says `410`).
    pub status: u16,
}

impl Recorded {
    pub fn is_watch(&self) -> bool {
        matches!(
            self.query.get("watch").map(String::as_str),
            Some("1" | "true")
        )
    }
    /// A GET of a collection that is not a watch.
    pub fn is_list(&self, plural: &str) -> bool {
        self.method == "GET" && !self.is_watch() && self.path.ends_with(&format!("/{plural}"))
    }
    /// The `resourceVersion` query parameter.
    pub fn resource_version(&self) -> Option<u64> {
        self.query.get("resourceVersion")?.parse().ok()
    }
}

/// Everything the server holds.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub rv: u64,
    /// `((group, plural), namespace, name)` → object (with `resourceVersion` etc. filled in).
    pub objects: BTreeMap<((String, String), String, String), Value>,
    pub log: Vec<Entry>,
    /// Watches from a `resourceVersion` below this are answered `410 Gone`.
    pub compacted: u64,
    pub requests: Vec<Recorded>,
    /// Answer a too-old `resourceVersion` with HTTP 410 instead of an `ERROR` event.
    pub gone_as_http: bool,
    /// New watch requests wait while set.
    pub held: bool,
    /// Bumped by [`crate::testing::FakeApiServer::cut_watches`]: open streams break off mid-event.
    pub cuts: u64,
    /// Bumped by [`crate::testing::FakeApiServer::end_watches`]: open streams end cleanly.
    pub ends: u64,
    /// Open watch streams by plural.
    pub open_watches: BTreeMap<String, usize>,
    uid: u64,
}

/// A change refused, as the API server would refuse it.
#[derive(Debug)]
pub(crate) struct Refused {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl State {
    fn refused(code: u16, reason: &'static str, message: String) -> Refused {
        Refused {
            code,
            reason,
            message,
        }
    }

    fn record_event(&mut self, event: EventType, res: &Resource, object: Value) -> u64 {
        self.log.push(Entry {
            rv: self.rv,
            event,
            resource: (res.group.clone(), res.plural.clone()),
            object,
        });
        self.rv
    }

    /// Creates `object` (POST): `409 AlreadyExists` when it does.
    pub fn create(
        &mut self,
        res: &Resource,
        ns: &str,
        mut object: Value,
    ) -> Result<Value, Refused> {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            return Err(Self::refused(
                422,
                "Invalid",
                "metadata.name: Required value".into(),
            ));
        }
        let key = (
            (res.group.clone(), res.plural.clone()),
            ns.to_string(),
            name.clone(),
        );
        if self.objects.contains_key(&key) {
            let msg = format!("{} \"{name}\" already exists", res.plural);
            return Err(Self::refused(409, "AlreadyExists", msg));
        }
        self.rv += 1;
        self.uid += 1;
        let meta = object["metadata"]
            .as_object_mut()
            .ok_or_else(|| Self::refused(400, "BadRequest", "metadata is not an object".into()))?;
        if res.namespaced {
            meta.insert("namespace".into(), json!(ns));
        }
        meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        meta.insert("uid".into(), json!(format!("uid-{}", self.uid)));
        meta.insert("generation".into(), json!(1));
        self.objects.insert(key, object.clone());
        self.record_event(EventType::Added, res, object.clone());
        Ok(object)
    }

    /// Replaces `object` (PUT), or with `status_only` its status (PATCH of `/status`, already merged). A
    /// `metadata.resourceVersion` in `object` must match (`409 Conflict`). `generation` moves when `spec` does.
    pub fn replace(
        &mut self,
        res: &Resource,
        ns: &str,
        name: &str,
        mut object: Value,
        status_only: bool,
    ) -> Result<Value, Refused> {
        let key = (
            (res.group.clone(), res.plural.clone()),
            ns.to_string(),
            name.to_string(),
        );
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(Self::refused(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", res.plural),
            ));
        };
        let sent = object["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
        if sent.is_some_and(|v| Some(v.as_str()) != old["metadata"]["resourceVersion"].as_str()) {
            let msg = format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified",
                res.plural
            );
            return Err(Self::refused(409, "Conflict", msg));
        }
        if status_only {
            let mut next = old.clone();
            next["status"] = object.get("status").cloned().unwrap_or(Value::Null);
            object = next;
        } else {
            object["metadata"]["uid"] = old["metadata"]["uid"].clone();
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
            let moved = i64::from(object.get("spec") != old.get("spec"));
            object["metadata"]["generation"] = json!(generation + moved);
            if res.namespaced {
                object["metadata"]["namespace"] = json!(ns);
            }
        }
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key, object.clone());
        self.record_event(EventType::Modified, res, object.clone());
        Ok(object)
    }

    /// Deletes an object; its last state goes out in the DELETED event.
    pub fn delete(&mut self, res: &Resource, ns: &str, name: &str) -> Result<Value, Refused> {
        let key = (
            (res.group.clone(), res.plural.clone()),
            ns.to_string(),
            name.to_string(),
        );
        let Some(mut object) = self.objects.remove(&key) else {
            return Err(Self::refused(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", res.plural),
            ));
        };
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record_event(EventType::Deleted, res, object.clone());
        Ok(object)
    }

    /// A bookmark at a fresh `resourceVersion`, to every resource.
    pub fn bookmark(&mut self) -> u64 {
        self.rv += 1;
        self.log.push(Entry {
            rv: self.rv,
            event: EventType::Bookmark,
            resource: (String::new(), String::new()),
            object: Value::Null,
        });
        self.rv
    }

    pub fn get(&self, res: &Resource, ns: &str, name: &str) -> Option<&Value> {
        let key = (
            (res.group.clone(), res.plural.clone()),
            ns.to_string(),
            name.to_string(),
        );
        self.objects.get(&key)
    }

    /// The objects of `res` in `ns` (all namespaces when `None`) that `sel` selects.
    pub fn list(&self, res: &Resource, ns: Option<&str>, sel: &Selector) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((r, n, _), _)| {
                r.0 == res.group && r.1 == res.plural && ns.is_none_or(|ns| ns == n)
            })
            .map(|(_, o)| o)
            .filter(|o| sel.matches(o))
            .cloned()
            .collect()
    }
}

/// A list/watch's label and field selectors.
#[derive(Clone, Debug, Default)]
pub(crate) struct Selector {
    labels: Vec<Term>,
    fields: Vec<Term>,
}

#[derive(Clone, Debug)]
enum Term {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

impl Selector {
    /// Equality-based selectors (`a=b`, `a==b`, `a!=b`, and for labels `a`, `!a`); anything else is refused.
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Selector, String> {
        Ok(Selector {
            labels: parse_terms(labels.unwrap_or_default(), true)?,
            fields: parse_terms(fields.unwrap_or_default(), false)?,
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label = |k: &str| labels[k].as_str();
        let field = |path: &str| {
            let v = path.split('.').fold(object, |v, part| &v[part]);
            v.as_str().map(str::to_string)
        };
        self.labels.iter().all(|t| match t {
            Term::Eq(k, v) => label(k) == Some(v.as_str()),
            Term::Ne(k, v) => label(k) != Some(v.as_str()),
            Term::Exists(k) => label(k).is_some(),
            Term::Absent(k) => label(k).is_none(),
        }) && self.fields.iter().all(|t| match t {
            Term::Eq(k, v) => field(k).unwrap_or_default() == *v,
            Term::Ne(k, v) => field(k).unwrap_or_default() != *v,
            Term::Exists(_) | Term::Absent(_) => false,
        })
    }
}

fn parse_terms(text: &str, labels: bool) -> Result<Vec<Term>, String> {
    let mut out = Vec::new();
    for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let t = if let Some((k, v)) = term.split_once("!=") {
            Term::Ne(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Term::Eq(k.trim().into(), v.trim().into())
        } else if labels && term.starts_with('!') {
            Term::Absent(term[1..].trim().into())
        } else if labels && !term.contains([' ', '(']) {
            Term::Exists(term.into())
        } else {
            return Err(format!("unsupported selector term {term:?}"));
        };
        out.push(t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_labels_and_fields() {
        let pod =
            json!({"metadata": {"name": "p", "labels": {"app": "a"}}, "spec": {"nodeName": "n1"}});
        let sel = |l: &str, f: &str| Selector::parse(Some(l), Some(f)).unwrap();
        assert!(sel("app=a", "spec.nodeName=n1").matches(&pod));
        assert!(!sel("app!=a", "").matches(&pod));
        assert!(!sel("", "spec.nodeName=n2").matches(&pod));
        assert!(sel("app,!tier", "metadata.name==p").matches(&pod));
        assert!(Selector::parse(Some("app in (a)"), None).is_err());
    }

    #[test]
    fn controller_kinds_are_served_but_not_watched_by_the_mesh_source() {
        let all = resources();
        for (group, kind, plural) in EXTRA_RESOURCES {
            assert!(all.iter().any(|r| r.group == group && r.plural == plural));
            assert_eq!(
                Kind::from_name(kind),
                None,
                "{kind} must stay out of Kind::ALL"
            );
        }
    }

    #[test]
    fn replace_checks_the_resource_version_and_moves_generation_with_spec() {
        let res = &resources()[5];
        let mut s = State::default();
        let obj = json!({"metadata": {"name": "r"}, "spec": {"a": 1}});
        s.create(res, "default", obj.clone()).unwrap();
        assert_eq!(s.create(res, "default", obj).unwrap_err().code, 409);
        let stale = json!({"metadata": {"name": "r", "resourceVersion": "0"}, "spec": {}});
        assert_eq!(
            s.replace(res, "default", "r", stale, false)
                .unwrap_err()
                .code,
            409
        );
        let next = json!({"metadata": {"name": "r"}, "spec": {"a": 2}});
        let got = s.replace(res, "default", "r", next, false).unwrap();
        assert_eq!(got["metadata"]["generation"], 2);
        let status = json!({"status": {"x": 1}});
        let got = s.replace(res, "default", "r", status, true).unwrap();
        assert_eq!(
            (
                got["metadata"]["generation"].clone(),
                got["spec"]["a"].clone()
            ),
            (json!(2), json!(2))
        );
        assert_eq!(s.delete(res, "default", "r").unwrap()["status"]["x"], 1);
        assert_eq!(s.log.len(), 4);
    }
}
