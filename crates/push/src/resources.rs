//! The control plane's view of the config: every Kubernetes object of the document set, split out of its
//! multi-document YAML, named `Kind/namespace/name`, re-encoded as JSON and versioned by a hash of those bytes;
//! plus the per-subscriber subsets ([`Subset`], chosen by [`crate::select`]) and the difference between what a
//! subscriber holds and what it should hold ([`diff`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use crate::select::{self, Index, Target};

/// One Kubernetes object as the push tier carries it.
#[derive(Debug)]
pub struct Object {
    /// `Kind/namespace/name` (cluster-scoped: `Kind/name`).
    pub name: Arc<str>,
    pub kind: String,
    pub namespace: String,
    pub object_name: String,
    /// The object, for selection.
    pub value: Value,
    /// FNV-1a 64 of `payload`.
    pub version: u64,
    /// The object as JSON.
    pub payload: Bytes,
}

/// A document that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{file}: document {index}: {message}")]
pub struct DocumentError {
    pub file: PathBuf,
    pub index: usize,
    pub message: String,
}

/// Resource versions as the wire carries them (`{:016x}`).
pub fn version_string(v: u64) -> String {
    format!("{v:016x}")
}

/// FNV-1a, 64 bits: stable across processes and builds, so versions survive a control-plane restart.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Splits multi-document YAML texts into objects. Empty documents are skipped; a document without `kind` or
/// `metadata.name` is an error (so is YAML that does not parse). A later object of the same name replaces an
/// earlier one.
pub fn split_documents(docs: &[(PathBuf, String)]) -> Result<Vec<Object>, DocumentError> {
    let mut out: HashMap<Arc<str>, Object> = HashMap::new();
    for (file, text) in docs {
        for (index, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let err = |message: String| DocumentError {
                file: file.clone(),
                index,
                message,
            };
            let value = Value::deserialize(de).map_err(|e| err(e.to_string()))?;
            if value.is_null() {
                continue;
            }
            let obj = object(value).map_err(err)?;
            out.insert(obj.name.clone(), obj);
        }
    }
    let mut objects: Vec<Object> = out.into_values().collect();
    objects.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(objects)
}

fn object(value: Value) -> Result<Object, String> {
    let kind = value["kind"].as_str().ok_or("no `kind`")?.to_string();
    let meta = &value["metadata"];
    let object_name = meta["name"]
        .as_str()
        .ok_or("no `metadata.name`")?
        .to_string();
    let namespace = meta["namespace"].as_str().unwrap_or_default().to_string();
    let name: Arc<str> = if namespace.is_empty() {
        format!("{kind}/{object_name}").into()
    } else {
        format!("{kind}/{namespace}/{object_name}").into()
    };
    let payload = Bytes::from(serde_json::to_vec(&value).map_err(|e| e.to_string())?);
    Ok(Object {
        name,
        kind,
        namespace,
        object_name,
        version: fnv1a(&payload),
        value,
        payload,
    })
}

/// Reads the `*.yaml` / `*.yml` files of `dir` (not hidden, not recursive), in file-name order.
pub fn read_dir(dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if yaml && !name.starts_with('.') && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| std::fs::read_to_string(&p).map(|t| (p, t)))
        .collect()
}

/// One published config: all objects, indexed for selection, with the subsets computed so far (shared by
/// every subscriber of the same [`Target`]).
pub struct DocSet {
    pub system_version: u64,
    pub objects: Vec<Arc<Object>>,
    pub(crate) index: Index,
    subsets: Mutex<HashMap<Target, Arc<Subset>>>,
}

impl std::fmt::Debug for DocSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocSet")
            .field("system_version", &self.system_version)
            .field("objects", &self.objects.len())
            .finish_non_exhaustive()
    }
}

impl DocSet {
    pub fn new(system_version: u64, objects: Vec<Object>) -> DocSet {
        let objects: Vec<Arc<Object>> = objects.into_iter().map(Arc::new).collect();
        let index = Index::build(&objects);
        DocSet {
            system_version,
            objects,
            index,
            subsets: Mutex::new(HashMap::new()),
        }
    }
    /// Total payload bytes of the whole set.
    pub fn bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.payload.len() as u64).sum()
    }
    /// What a subscriber of `target` needs (computed once per target and set).
    pub fn subset(&self, target: &Target) -> Arc<Subset> {
        if let Some(s) = self.lock().get(target) {
            return s.clone();
        }
        let picked = select::select(self, target);
        let subset = Arc::new(Subset::new(picked));
        self.lock().insert(target.clone(), subset.clone());
        subset
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Target, Arc<Subset>>> {
        self.subsets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The objects one subscriber should hold.
#[derive(Debug)]
pub struct Subset {
    /// Sorted by name.
    pub objects: Vec<Arc<Object>>,
    pub versions: Arc<Versions>,
    /// A hash of every `(name, version)`: equal digests, equal sets.
    pub digest: u64,
    pub bytes: u64,
}

/// Name → version.
pub type Versions = HashMap<Arc<str>, u64>;

impl Subset {
    fn new(mut objects: Vec<Arc<Object>>) -> Subset {
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        objects.dedup_by(|a, b| a.name == b.name);
        let mut digest_input = Vec::with_capacity(objects.len() * 48);
        for o in &objects {
            digest_input.extend_from_slice(o.name.as_bytes());
            digest_input.extend_from_slice(&o.version.to_le_bytes());
        }
        Subset {
            versions: Arc::new(
                objects
                    .iter()
                    .map(|o| (o.name.clone(), o.version))
                    .collect(),
            ),
            digest: fnv1a(&digest_input),
            bytes: objects.iter().map(|o| o.payload.len() as u64).sum(),
            objects,
        }
    }
}

/// What turns `have` into `want`: objects to add or replace, names to remove.
#[derive(Debug, Default)]
pub struct Delta {
    pub changed: Vec<Arc<Object>>,
    pub removed: Vec<Arc<str>>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

pub fn diff(have: &Arc<Versions>, want: &Subset) -> Delta {
    if Arc::ptr_eq(have, &want.versions) {
        return Delta::default();
    }
    let changed = want
        .objects
        .iter()
        .filter(|o| have.get(&o.name) != Some(&o.version))
        .cloned()
        .collect();
    let mut removed: Vec<Arc<str>> = have
        .keys()
        .filter(|n| !want.versions.contains_key(*n))
        .cloned()
        .collect();
    removed.sort();
    Delta { changed, removed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_versions_and_replaces() {
        let docs = vec![(
            PathBuf::from("a.yaml"),
            "kind: Service\nmetadata: {name: r, namespace: d}\n---\n---\nkind: Namespace\nmetadata: {name: d}\n"
                .to_string(),
        )];
        let objs = split_documents(&docs).unwrap();
        let names: Vec<_> = objs.iter().map(|o| o.name.to_string()).collect();
        assert_eq!(names, ["Namespace/d", "Service/d/r"]);
        assert_eq!(objs[1].version, fnv1a(&objs[1].payload));
        let bad = vec![(PathBuf::from("b.yaml"), "metadata: {name: x}\n".to_string())];
        assert!(split_documents(&bad)
            .unwrap_err()
            .to_string()
            .contains("kind"));
    }

    #[test]
    fn diff_adds_changes_and_removes() {
        let docs = |v: &str| {
            vec![(
                PathBuf::from("a.yaml"),
                format!("kind: Namespace\nmetadata: {{name: a, labels: {{v: '{v}'}}}}\n---\nkind: Namespace\nmetadata: {{name: b}}\n"),
            )]
        };
        let one = Subset::new(DocSet::new(1, split_documents(&docs("1")).unwrap()).objects);
        let two = Subset::new(DocSet::new(2, split_documents(&docs("2")).unwrap()).objects);
        let d = diff(&one.versions, &two);
        assert_eq!(d.changed.len(), 1);
        assert_eq!(&*d.changed[0].name, "Namespace/a");
        assert!(d.removed.is_empty());
        let mut fewer = (*two.versions).clone();
        fewer.insert("Namespace/gone".into(), 7);
        let d = diff(&Arc::new(fewer), &two);
        assert!(d.changed.is_empty());
        assert_eq!(d.removed, vec![Arc::<str>::from("Namespace/gone")]);
        assert!(diff(&two.versions, &two).is_empty());
    }
}
