//! The current objects, as the watchers last saw them, and their rendering into the documents
//! [`mesh::config::Mesh::from_documents`] reads.
//!
//! The store is split into partitions, one per watcher (a kind, or a kind in one namespace when the source is
//! scoped): a relist (after `410 Gone`) replaces exactly that watcher's objects, so an object deleted while the
//! watch was down disappears, and no other watcher's objects are touched.
//!
//! Objects are kept normalised: `metadata.managedFields` and `metadata.resourceVersion` are dropped, and so is
//! `status` for the kinds whose status the mesh does not read (routes, grants, policies, rules): a status write
//! by this very controller (or another) then compares equal and does not trigger a re-render — which is what
//! keeps status write-back from feeding on itself. Of a Pod's status only `podIP`/`podIPs` are kept, of a
//! Gateway's only `addresses` (what the mesh reads): condition heartbeats do not re-render either.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use crate::kinds::Kind;

/// Which watcher a partition belongs to: a kind, and the namespace it is scoped to (empty: all).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PartitionId {
    pub kind: Kind,
    pub scope: String,
}

#[derive(Debug, Default)]
struct Partition {
    /// `(namespace, name)` → normalised object.
    objects: BTreeMap<(String, String), Value>,
    /// The objects of a list in progress (initial or relist), swapped in whole when it completes.
    pending: Option<BTreeMap<(String, String), Value>>,
    /// Whether a list has completed at least once.
    listed: bool,
}

/// All watched objects, by partition.
#[derive(Debug, Default)]
pub(crate) struct Store {
    partitions: BTreeMap<PartitionId, Partition>,
}

impl Store {
    /// Registers a watcher's partition (not listed yet).
    pub fn add_partition(&mut self, id: PartitionId) {
        self.partitions.entry(id).or_default();
    }

    /// Whether every partition has completed its initial list.
    pub fn all_listed(&self) -> bool {
        self.partitions.values().all(|p| p.listed)
    }

    /// Whether partition `id` has completed a list.
    pub fn is_listed(&self, id: &PartitionId) -> bool {
        self.partitions.get(id).is_some_and(|p| p.listed)
    }

    /// The partitions still waiting for their initial list, as `Kind` or `Kind in namespace`.
    pub fn unlisted(&self) -> Vec<String> {
        self.partitions
            .iter()
            .filter(|(_, p)| !p.listed)
            .map(|(id, _)| match id.scope.as_str() {
                "" => id.kind.to_string(),
                ns => format!("{} in {ns}", id.kind),
            })
            .collect()
    }

    /// A list starts: objects are collected apart until [`Store::list_done`].
    pub fn list_start(&mut self, id: &PartitionId) {
        self.partitions.entry(id.clone()).or_default().pending = Some(BTreeMap::new());
    }

    /// One object of a list in progress.
    pub fn list_item(&mut self, id: &PartitionId, object: Value) {
        let p = self.partitions.entry(id.clone()).or_default();
        if let Some((key, obj)) = normalise(id.kind, object) {
            p.pending.get_or_insert_with(BTreeMap::new).insert(key, obj);
        }
    }

    /// The list completed: its objects replace the partition's. Returns whether anything changed (a first list
    /// always counts as a change, so the first render happens even for an empty cluster).
    pub fn list_done(&mut self, id: &PartitionId) -> bool {
        let p = self.partitions.entry(id.clone()).or_default();
        let listed = p.pending.take().unwrap_or_default();
        let changed = !p.listed || p.objects != listed;
        p.objects = listed;
        p.listed = true;
        changed
    }

    /// An ADDED or MODIFIED object; returns whether the stored view changed.
    pub fn apply(&mut self, id: &PartitionId, object: Value) -> bool {
        let p = self.partitions.entry(id.clone()).or_default();
        let Some((key, obj)) = normalise(id.kind, object) else {
            return false;
        };
        if p.objects.get(&key) == Some(&obj) {
            return false;
        }
        p.objects.insert(key, obj);
        true
    }

    /// A DELETED object; returns whether it was there.
    pub fn delete(&mut self, id: &PartitionId, object: &Value) -> bool {
        let p = self.partitions.entry(id.clone()).or_default();
        p.objects.remove(&object_key(object)).is_some()
    }

    /// How many objects of `kind` are stored.
    pub fn count(&self, kind: Kind) -> usize {
        self.partitions
            .iter()
            .filter(|(id, _)| id.kind == kind)
            .map(|(_, p)| p.objects.len())
            .sum()
    }

    /// Every stored object as one JSON document named `api/<Kind>/<namespace>/<name>` (cluster-scoped:
    /// `api/<Kind>/<name>`), in kind order then by namespace and name.
    pub fn render(&self) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        for (id, p) in &self.partitions {
            for ((ns, name), obj) in &p.objects {
                out.push((document_path(id.kind, ns, name), obj.to_string()));
            }
        }
        out
    }
}

/// The pseudo-file name an object is rendered under, so that a [`mesh::config::ConfigError`] names it.
pub fn document_path(kind: Kind, namespace: &str, name: &str) -> PathBuf {
    if kind.namespaced() {
        PathBuf::from(format!("api/{kind}/{namespace}/{name}"))
    } else {
        PathBuf::from(format!("api/{kind}/{name}"))
    }
}

/// `(namespace, name)` of an object (empty strings where absent).
fn object_key(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    let field = |f: &str| meta[f].as_str().unwrap_or_default().to_string();
    (field("namespace"), field("name"))
}

/// Fills in `apiVersion`/`kind` (list items omit them) and drops what changes without changing the config.
/// `None` for an object without a name, which the API server never sends.
fn normalise(kind: Kind, mut object: Value) -> Option<((String, String), Value)> {
    let key = object_key(&object);
    if key.1.is_empty() {
        tracing::warn!(%kind, "object without metadata.name ignored");
        return None;
    }
    let map = object.as_object_mut()?;
    let ar = kind.api_resource();
    map.insert("apiVersion".into(), Value::String(ar.api_version));
    map.insert("kind".into(), Value::String(ar.kind));
    if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        meta.remove("resourceVersion");
    }
    let keep: &[&str] = match kind {
        Kind::Pod => &["podIP", "podIPs"],
        Kind::Gateway => &["addresses"],
        _ => &[],
    };
    match map.get_mut("status").and_then(Value::as_object_mut) {
        Some(status) if !keep.is_empty() => status.retain(|k, _| keep.contains(&k.as_str())),
        _ => {
            map.remove("status");
        }
    }
    Some((key, object))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(kind: Kind) -> PartitionId {
        PartitionId {
            kind,
            scope: String::new(),
        }
    }

    fn route(name: &str, rv: &str, status: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "resourceVersion": rv,
            "managedFields": [{}]}, "spec": {}, "status": {"x": status}})
    }

    #[test]
    fn status_and_versions_do_not_count_as_changes_of_a_route() {
        let mut s = Store::default();
        let id = id(Kind::HttpRoute);
        s.add_partition(id.clone());
        assert!(!s.all_listed());
        s.list_start(&id);
        s.list_item(&id, route("r", "1", "a"));
        assert!(s.list_done(&id));
        assert!(s.all_listed());
        assert!(!s.apply(&id, route("r", "2", "b")));
        let docs = s.render();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].0, PathBuf::from("api/HTTPRoute/default/r"));
        let doc: Value = serde_json::from_str(&docs[0].1).unwrap();
        assert_eq!(doc["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(doc["kind"], "HTTPRoute");
        assert!(doc.get("status").is_none() && doc["metadata"].get("resourceVersion").is_none());
    }

    #[test]
    fn a_relist_replaces_the_partition_whole() {
        let mut s = Store::default();
        let id = id(Kind::HttpRoute);
        s.list_start(&id);
        s.list_item(&id, route("a", "1", ""));
        s.list_item(&id, route("b", "2", ""));
        s.list_done(&id);
        s.list_start(&id);
        s.list_item(&id, route("b", "3", ""));
        assert_eq!(
            s.count(Kind::HttpRoute),
            2,
            "the old view serves during the relist"
        );
        assert!(s.list_done(&id));
        assert_eq!(s.count(Kind::HttpRoute), 1);
        s.list_start(&id);
        s.list_item(&id, route("b", "4", ""));
        assert!(!s.list_done(&id), "an identical relist is no change");
        assert!(s.delete(&id, &route("b", "5", "")));
        assert!(!s.delete(&id, &route("b", "5", "")));
    }

    #[test]
    fn cluster_scoped_paths_have_no_namespace() {
        assert_eq!(
            document_path(Kind::Namespace, "", "prod"),
            PathBuf::from("api/Namespace/prod")
        );
    }
}
