//! Istio's peer labels, interned: a [`Source`] per caller and a [`Destination`] per (endpoint workload,
//! service), each an `Arc` with a process-unique id and its label text rendered once.
//!
//! A metric series is then keyed by two ids and a few small enums (all `Copy`), so recording a request hashes
//! integers and never builds a string. Equal label sets intern to the same id (two connections from one pod
//! share their series); the interner holds only weak references and sweeps dead ones as it grows, so it is
//! bounded by what is alive (series kept by the metrics, handles kept by the proxy).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// What Istio knows about one workload (either side). Empty fields print as `unknown`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo<'a> {
    pub workload: &'a str,
    pub namespace: &'a str,
    /// SPIFFE id, `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
    pub principal: &'a str,
    pub app: &'a str,
    pub version: &'a str,
    pub canonical_service: &'a str,
    pub canonical_revision: &'a str,
    pub cluster: &'a str,
}

impl<'a> PeerInfo<'a> {
    /// Fills the Istio fields from a pod's labels the way Istio does: canonical service from
    /// `service.istio.io/canonical-name`, else `app.kubernetes.io/name`, else `app`, else the workload name;
    /// canonical revision from `service.istio.io/canonical-revision`, else `app.kubernetes.io/version`, else
    /// `version`, else `latest`; `app` and `version` from `app`/`version` (or their `app.kubernetes.io` forms).
    pub fn from_pod_labels(
        workload: &'a str,
        namespace: &'a str,
        principal: &'a str,
        labels: &'a std::collections::BTreeMap<String, String>,
    ) -> Self {
        let get = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k)).map(String::as_str);
        PeerInfo {
            workload,
            namespace,
            principal,
            app: get(&["app", "app.kubernetes.io/name"]).unwrap_or(""),
            version: get(&["version", "app.kubernetes.io/version"]).unwrap_or(""),
            canonical_service: get(&[
                "service.istio.io/canonical-name",
                "app.kubernetes.io/name",
                "app",
            ])
            .unwrap_or(workload),
            canonical_revision: get(&[
                "service.istio.io/canonical-revision",
                "app.kubernetes.io/version",
                "version",
            ])
            .unwrap_or("latest"),
            cluster: "",
        }
    }
}

/// The destination service: `reviews.default.svc.cluster.local`, `reviews`, `default`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo<'a> {
    pub host: &'a str,
    pub name: &'a str,
    pub namespace: &'a str,
}

/// Label names in the order their values are stored and printed.
const SOURCE_LABELS: [&str; 8] = [
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
];
const DESTINATION_LABELS: [&str; 11] = [
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
];

/// An interned label set (one side of a request).
#[derive(Debug)]
pub struct LabelSet {
    id: u64,
    /// `name="value",...` with values escaped, no trailing comma.
    rendered: Arc<str>,
    values: Box<[Box<str>]>,
}

impl LabelSet {
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The Prometheus label text, `name="value",...`.
    pub fn rendered(&self) -> &str {
        &self.rendered
    }
}

/// The caller's labels (interned; clone freely, it is an `Arc`).
#[derive(Clone, Debug)]
pub struct Source(pub(crate) Arc<LabelSet>);

/// The destination's labels: endpoint workload plus service (interned; an `Arc`).
#[derive(Clone, Debug)]
pub struct Destination(pub(crate) Arc<LabelSet>);

impl Source {
    pub fn id(&self) -> u64 {
        self.0.id
    }
    pub fn labels(&self) -> &LabelSet {
        &self.0
    }
    pub fn workload(&self) -> &str {
        &self.0.values[0]
    }
    pub fn namespace(&self) -> &str {
        &self.0.values[1]
    }
    pub fn principal(&self) -> &str {
        &self.0.values[2]
    }
    pub fn canonical_service(&self) -> &str {
        &self.0.values[5]
    }
}

impl Destination {
    pub fn id(&self) -> u64 {
        self.0.id
    }
    pub fn labels(&self) -> &LabelSet {
        &self.0
    }
    pub fn workload(&self) -> &str {
        &self.0.values[0]
    }
    pub fn namespace(&self) -> &str {
        &self.0.values[1]
    }
    pub fn principal(&self) -> &str {
        &self.0.values[2]
    }
    /// `destination_service`, the service's host name.
    pub fn service(&self) -> &str {
        &self.0.values[5]
    }
    pub fn canonical_service(&self) -> &str {
        &self.0.values[8]
    }
}

fn or_unknown(v: &str) -> &str {
    if v.is_empty() {
        "unknown"
    } else {
        v
    }
}

/// Writes `v` as a Prometheus label value body: `\`, `"` and newline escaped.
pub(crate) fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn render(names: &[&str], values: &[&str]) -> String {
    let mut out = String::with_capacity(64 * names.len());
    for (i, (name, value)) in names.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{name}=\"");
        escape_label_value(&mut out, or_unknown(value));
        out.push('"');
    }
    out
}

/// Label-set ids, unique in the process (so sets from two interners can never share a series key).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Interns label sets by their rendered text.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    map: Mutex<InternMap>,
}

#[derive(Debug, Default)]
struct InternMap {
    sets: HashMap<Arc<str>, Weak<LabelSet>>,
    /// Sweep dead entries when the map reaches this size (doubles with what survives).
    sweep_at: usize,
}

impl Interner {
    fn intern(&self, names: &[&str], values: [&str; 19], n: usize) -> Arc<LabelSet> {
        let text = render(names, &values[..n]);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(live) = map.sets.get(text.as_str()).and_then(Weak::upgrade) {
            return live;
        }
        if map.sets.len() >= map.sweep_at.max(1024) {
            map.sets.retain(|_, w| w.strong_count() > 0);
            map.sweep_at = map.sets.len() * 2;
        }
        let rendered: Arc<str> = Arc::from(text);
        let set = Arc::new(LabelSet {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            rendered: rendered.clone(),
            values: values[..n]
                .iter()
                .map(|v| Box::from(or_unknown(v)))
                .collect(),
        });
        map.sets.insert(rendered, Arc::downgrade(&set));
        set
    }

    pub(crate) fn source(&self, p: &PeerInfo<'_>) -> Source {
        let mut v = [""; 19];
        v[..8].copy_from_slice(&[
            p.workload,
            p.namespace,
            p.principal,
            p.app,
            p.version,
            p.canonical_service,
            p.canonical_revision,
            p.cluster,
        ]);
        Source(self.intern(&SOURCE_LABELS, v, 8))
    }

    pub(crate) fn destination(&self, p: &PeerInfo<'_>, s: &ServiceInfo<'_>) -> Destination {
        let mut v = [""; 19];
        v[..11].copy_from_slice(&[
            p.workload,
            p.namespace,
            p.principal,
            p.app,
            p.version,
            s.host,
            s.name,
            s.namespace,
            p.canonical_service,
            p.canonical_revision,
            p.cluster,
        ]);
        Destination(self.intern(&DESTINATION_LABELS, v, 11))
    }

    /// Entries in the map, dead or alive (for tests of boundedness).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sets
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_peers_intern_to_one_id_and_unknown_fills_blanks() {
        let i = Interner::default();
        let p = PeerInfo {
            workload: "productpage-v1",
            namespace: "default",
            ..Default::default()
        };
        let a = i.source(&p);
        let b = i.source(&p);
        assert_eq!(a.id(), b.id());
        assert!(a.labels().rendered().starts_with(r#"source_workload="productpage-v1",source_workload_namespace="default",source_principal="unknown""#));
        let c = i.source(&PeerInfo {
            workload: "other",
            ..p
        });
        assert_ne!(a.id(), c.id());
        let svc = ServiceInfo {
            host: "reviews.default.svc.cluster.local",
            name: "reviews",
            namespace: "default",
        };
        let d = i.destination(&p, &svc);
        assert_eq!(d.service(), "reviews.default.svc.cluster.local");
        assert!(d
            .labels()
            .rendered()
            .contains(r#"destination_service_name="reviews""#));
    }

    #[test]
    fn label_values_are_escaped() {
        let cases = [
            ("a", "a"),
            ("a\"b", "a\\\"b"),
            ("a\\b", "a\\\\b"),
            ("a\nb", "a\\nb"),
            ("", ""),
        ];
        for (input, want) in cases {
            let mut out = String::new();
            escape_label_value(&mut out, input);
            assert_eq!(out, want);
        }
    }

    #[test]
    fn canonical_names_follow_istio_fallbacks() {
        use std::collections::BTreeMap;
        let labels = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let cases: Vec<(BTreeMap<String, String>, &str, &str)> = vec![
            (labels(&[]), "wl", "latest"),
            (
                labels(&[("app", "reviews"), ("version", "v2")]),
                "reviews",
                "v2",
            ),
            (
                labels(&[
                    ("app.kubernetes.io/name", "r"),
                    ("app", "x"),
                    ("app.kubernetes.io/version", "3"),
                ]),
                "r",
                "3",
            ),
            (
                labels(&[
                    ("service.istio.io/canonical-name", "c"),
                    ("service.istio.io/canonical-revision", "r1"),
                    ("app", "a"),
                ]),
                "c",
                "r1",
            ),
        ];
        for (l, svc, rev) in &cases {
            let p = PeerInfo::from_pod_labels("wl", "ns", "", l);
            assert_eq!(
                (p.canonical_service, p.canonical_revision),
                (*svc, *rev),
                "{l:?}"
            );
        }
    }

    #[test]
    fn dead_entries_are_swept() {
        let i = Interner::default();
        for n in 0..10_000 {
            let w = n.to_string();
            drop(i.source(&PeerInfo {
                workload: &w,
                ..Default::default()
            }));
        }
        assert!(i.len() <= 2048, "interner kept {} dead entries", i.len());
    }
}
