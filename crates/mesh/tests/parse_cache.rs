//! `ParseCache`: the cached parse gives exactly what the uncached one does (model or error), reads only what
//! changed and forgets what is gone; and `Live`'s graveyard frees replaced snapshots off the readers' threads (on the idle-priority config reaper).

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use mesh::config::{ConfigError, Live, Mesh, ParseCache, DEFAULT_TRUST_DOMAIN};

/// Everything public about a mesh, in a stable order (namespaces are a HashMap), with each service's endpoints.
fn fingerprint(m: &Mesh) -> String {
    let mut namespaces: Vec<_> = m.namespaces.values().map(|n| format!("{n:?}")).collect();
    namespaces.sort();
    let endpoints: Vec<_> = m
        .services
        .iter()
        .flat_map(|s| s.ports.iter().map(move |p| (s, p.port)))
        .map(|(s, port)| {
            format!(
                "{}/{}:{port} {:?}",
                s.namespace,
                s.name,
                m.endpoints(s, port)
            )
        })
        .collect();
    format!(
        "{namespaces:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{endpoints:?}",
        m.services,
        m.workloads,
        m.waypoints,
        m.http_routes,
        m.grpc_routes,
        m.reference_grants,
        m.destination_rules,
        m.authorization_policies,
        m.request_authentications,
        m.skipped,
    )
}

type Files = Vec<(PathBuf, String)>;

fn files(list: &[(&str, &str)]) -> Files {
    list.iter()
        .map(|(f, t)| (PathBuf::from(f), t.to_string()))
        .collect()
}

fn uncached(docs: &Files) -> Result<String, ConfigError> {
    Mesh::from_documents(docs, DEFAULT_TRUST_DOMAIN).map(|m| fingerprint(&m))
}

fn cached(docs: &Files, cache: &mut ParseCache) -> Result<String, ConfigError> {
    Mesh::from_documents_cached(docs, DEFAULT_TRUST_DOMAIN, cache).map(|m| fingerprint(&m))
}

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n";
const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop, labels: {istio.io/use-waypoint: wp}}\nspec: {clusterIP: 10.0.0.1, selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}\n";
const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: shop, labels: {app: web}}\nspec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}\nstatus: {podIP: 10.1.0.1}\n";
const SLICE: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-x, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 9090}]\nendpoints: [{addresses: [10.1.0.9]}]\n";
const GW: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp, namespace: shop}\nspec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\nstatus: {addresses: [{value: 10.2.0.1}]}\n";
const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web, namespace: shop}\nspec:\n  parentRefs: [{group: '', kind: Service, name: web}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]\n";

/// Documents joined with `---` lines.
fn multi(docs: &[&str]) -> String {
    docs.join("---\n")
}

/// (name, the files, an edited version: the failing document fixed or broken differently, or one changed).
fn cases() -> Vec<(&'static str, Files, Files)> {
    let valid = format!(
        "---\n# the shop\n{}---\n",
        multi(&[NS, SVC, POD, SLICE, GW, ROUTE])
    );
    let valid_edit = valid.replace("port: 80}]}]", "port: 80, weight: 3}]}]");
    let crlf = valid.replace('\n', "\r\n");
    let missing_kind = "apiVersion: v1\nmetadata: {name: x}\n";
    let mut out = vec![
        ("valid, leading and trailing markers", files(&[("a.yaml", &valid)]), files(&[("a.yaml", &valid_edit)])),
        ("valid, CRLF", files(&[("a.yaml", &crlf)]), files(&[("a.yaml", &valid_edit.replace('\n', "\r\n"))])),
        ("one document, no marker", files(&[("a.yaml", NS)]), files(&[("a.yaml", &NS.replace("shop", "shop2"))])),
        ("split across files", files(&[("a.yaml", &multi(&[NS, SVC])), ("b.yaml", &multi(&[POD, GW, ROUTE]))]),
            files(&[("a.yaml", &multi(&[NS, SVC])), ("b.yaml", &multi(&[POD, GW]))])),
        ("comments before the first marker, empty and comment-only documents",
            files(&[("a.yaml", &format!("# header\n\n---\n{NS}---\n# nothing\n---\n---\n{missing_kind}"))]),
            files(&[("a.yaml", &format!("# header\n\n---\n{NS}---\n# nothing\n---\n---\n{SVC}"))])),
        ("end markers", files(&[("a.yaml", &format!("{NS}...\n{missing_kind}...\n---\n{SVC}"))]),
            files(&[("a.yaml", &format!("{NS}...\n{POD}...\n---\n{SVC}"))])),
        ("end marker, then content in the first chunk", files(&[("a.yaml", &format!("...\n# c\n---\n{NS}---\n{missing_kind}"))]),
            files(&[("a.yaml", &format!("...\n# c\n---\n{NS}---\n{SVC}"))])),
        ("markers with comments and inline content",
            files(&[("a.yaml", &format!("--- # first\n{NS}--- {{apiVersion: v1, kind: Namespace, metadata: {{name: inline}}}}\n---\t\n{missing_kind}"))]),
            files(&[("a.yaml", &format!("--- # first\n{NS}--- {{apiVersion: v1, kind: Namespace, metadata: {{name: inline2}}}}\n---\t\n{SVC}"))])),
        ("not markers: ----, indented, in a plain scalar",
            files(&[("a.yaml", &format!("{NS}----\n  ---\n---\n{SVC}"))]),
            files(&[("a.yaml", &format!("{NS}---\n{SVC}"))])),
        ("List", files(&[("a.yaml", &format!("apiVersion: v1\nkind: List\nitems:\n- {}\n- {}\n---\n{ROUTE}", flow(NS), flow(SVC)))]),
            files(&[("a.yaml", &format!("apiVersion: v1\nkind: List\nitems:\n- {}\n- {{apiVersion: v1, kind: Pod}}\n---\n{ROUTE}", flow(NS)))])),
        ("List item errors", files(&[("a.yaml", &format!("{NS}---\napiVersion: v1\nkind: List\nitems:\n- {}\n- {{apiVersion: v1, kind: Service, metadata: {{name: s2}}, spec: {{ports: [{{port: 0}}]}}}}\n", flow(SVC)))]),
            files(&[("a.yaml", &format!("{NS}---\napiVersion: v1\nkind: List\nitems: 3\n"))])),
        ("duplicate in a file", files(&[("a.yaml", &multi(&[NS, SVC, POD, SVC]))]), files(&[("a.yaml", &multi(&[NS, SVC, POD]))])),
        ("duplicate across files", files(&[("a.yaml", &multi(&[NS, SVC])), ("b.yaml", &multi(&[POD, SVC]))]),
            files(&[("a.yaml", &multi(&[NS, SVC])), ("b.yaml", &multi(&[POD, &SVC.replace("name: web,", "name: web2,")]))])),
        ("duplicate VIP", files(&[("a.yaml", &multi(&[SVC])), ("b.yaml", &multi(&[&SVC.replace("name: web,", "name: web2,")]))]),
            files(&[("a.yaml", &multi(&[SVC])), ("b.yaml", &multi(&[&SVC.replace("name: web,", "name: web2,").replace("10.0.0.1", "10.0.0.2")]))])),
        ("duplicate VIP before a bad port", files(&[("a.yaml", &multi(&[SVC, &SVC.replace("name: web,", "name: web2,").replace("port: 80,", "port: 0,")]))]),
            files(&[("a.yaml", &multi(&[SVC, &SVC.replace("name: web,", "name: web2,").replace("port: 80,", "port: 0,").replace("10.0.0.1", "10.0.0.2")]))])),
        ("shared pod IP", files(&[("a.yaml", &multi(&[POD, &POD.replace("web-0", "web-1")]))]), files(&[("a.yaml", &multi(&[POD]))])),
        ("unknown kinds", files(&[("a.yaml", &multi(&[CM, CM, NS, ISTIO_GW])), ("b.yaml", CM)]), files(&[("a.yaml", &multi(&[CM, NS]))])),
        ("YAML error in document 3 (line numbers)", files(&[("a.yaml", &multi(&[NS, SVC, "a: [1\nb: 2\n", POD]))]),
            files(&[("a.yaml", &multi(&[NS, SVC, "a: {b\n", POD]))])),
        ("unknown anchor", files(&[("a.yaml", &multi(&["x: &a {b: 1}\n", "y: *a\n"]))]), files(&[("a.yaml", &multi(&["x: &a {b: 1}\n"]))])),
        ("duplicate key", files(&[("a.yaml", &multi(&[NS, "a: 1\na: 2\n"]))]), files(&[("a.yaml", &multi(&[NS, "a: 1\n"]))])),
        ("marker inside a quoted scalar", files(&[("a.yaml", &format!("{NS}---\na: \"x\n---\ny\"\n---\n{SVC}"))]),
            files(&[("a.yaml", &format!("{NS}---\na: \"x\n--- y\"\n---\n{SVC}"))])),
        ("marker inside a top-level block scalar", files(&[("a.yaml", &format!("--- |\nfoo\n---\nbar\n---\n{SVC}"))]),
            files(&[("a.yaml", &format!("--- >\nfoo\n---\n{NS}---\n{SVC}"))])),
        ("directive", files(&[("a.yaml", &format!("{NS}...\n%YAML 1.2\n---\n{SVC}---\n{missing_kind}"))]),
            files(&[("a.yaml", &format!("%YAML 1.2\n---\n{NS}---\n{SVC}"))])),
        ("type error", files(&[("a.yaml", &multi(&[NS, &SVC.replace("ports: [", "ports: 3, x: [")]))]),
            files(&[("a.yaml", &multi(&[NS, &SVC.replace("port: 80", "port: eighty")]))])),
        ("bad clusterIP", files(&[("a.yaml", &multi(&[NS, &SVC.replace("10.0.0.1", "ten")]))]), files(&[("a.yaml", &multi(&[NS, SVC]))])),
        ("not a mapping", files(&[("a.yaml", &multi(&[NS, "- 1\n- 2\n", SVC]))]), files(&[("a.yaml", &multi(&[NS, "just text\n", SVC]))])),
        ("empty, comment-only and marker-only files", files(&[("a.yaml", ""), ("b.yaml", "# nothing\n"), ("c.yaml", "---\n---\n"), ("d.yaml", NS)]),
            files(&[("a.yaml", "\n"), ("b.yaml", "# nothing\n---\n"), ("c.yaml", "---\n"), ("d.yaml", NS)])),
        ("byte order mark", files(&[("a.yaml", &format!("\u{feff}# c\n---\n{NS}---\n{missing_kind}"))]),
            files(&[("a.yaml", &format!("\u{feff}{NS}---\n{SVC}"))])),
    ];
    // The same on API-server style documents (one JSON object each).
    let json = |name: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}","namespace":"shop"}},"spec":{{"ports":[{{"port":80}}]}}}}"#
        )
    };
    out.push((
        "JSON objects",
        files(&[
            ("api/Service/shop/a", &json("a")),
            ("api/Service/shop/b", &json("b")),
        ]),
        files(&[
            ("api/Service/shop/a", &json("a")),
            ("api/Service/shop/b", &json("a")),
        ]),
    ));
    out
}

const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n";
const ISTIO_GW: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\n";

/// A block-style document as one flow mapping line (for `List` items).
fn flow(doc: &str) -> String {
    let v: serde_json::Value = serde_yaml::from_str(doc).expect("test document");
    v.to_string()
}

/// An unrelated file, edited between parses.
fn with_unrelated(docs: &Files, rev: u32) -> Files {
    let extra = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: unrelated, namespace: elsewhere, labels: {{rev: '{rev}'}}}}\n");
    let mut out = files(&[("00-unrelated.yaml", &extra)]);
    out.extend(docs.iter().cloned());
    out
}

#[test]
fn cached_parse_equals_uncached_parse() {
    let mut failures = Vec::new();
    let (mut oks, mut errs) = (0, 0);
    for (name, v1, v2) in cases() {
        let mut cache = ParseCache::new();
        let steps = [
            ("cold", with_unrelated(&v1, 1)),
            ("warm, unrelated edit", with_unrelated(&v1, 2)),
            ("edited", with_unrelated(&v2, 2)),
            ("back", with_unrelated(&v1, 2)),
            ("no unrelated file", v1.clone()),
        ];
        for (step, docs) in steps {
            let want = uncached(&docs);
            let got = cached(&docs, &mut cache);
            match &want {
                Ok(_) => oks += 1,
                Err(_) => errs += 1,
            }
            if got != want {
                failures.push(format!(
                    "{name} ({step}):\n  uncached: {want:?}\n  cached:   {got:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The table covers both outcomes.
    assert!(
        oks >= 40 && errs >= 40,
        "{oks} good and {errs} failed parses"
    );
}

#[test]
fn errors_are_those_of_the_uncached_parse() {
    // Spot checks that the table's errors are the expected ones (numbering, first file, VIP before port).
    let err = |docs: &Files| Mesh::from_documents(docs, DEFAULT_TRUST_DOMAIN).unwrap_err();
    let c = cases();
    let case = |n: &str| c.iter().find(|(name, ..)| *name == n).unwrap().1.clone();
    let e = err(&case(
        "comments before the first marker, empty and comment-only documents",
    ));
    assert_eq!(
        (e.object.as_str(), e.message.as_str()),
        ("document 4", "missing kind")
    );
    let e = err(&case("end markers"));
    assert_eq!(e.object, "document 2");
    let e = err(&case("duplicate across files"));
    assert_eq!(
        e.to_string(),
        "b.yaml: Service shop/web: metadata.name: duplicate Service: already defined in a.yaml"
    );
    let e = err(&case("duplicate VIP before a bad port"));
    assert_eq!(e.field, "spec.clusterIP");
    let e = err(&case("YAML error in document 3 (line numbers)"));
    // Lines of the file, not of the document.
    assert!(
        e.object == "document 3" && e.message.contains("at line 11 column 2"),
        "{e}"
    );
    let e = err(&case("List item errors"));
    assert_eq!(
        (e.object.as_str(), e.field.as_str()),
        ("Service default/s2", "items[1].spec.ports[0].port")
    );
    let mut cache = ParseCache::new();
    let e = Mesh::from_documents_cached(&case("directive"), DEFAULT_TRUST_DOMAIN, &mut cache)
        .unwrap_err();
    assert_eq!(e.object, "document 3");
}

#[test]
fn an_unchanged_document_is_not_parsed_again_and_a_removed_one_is_forgotten() {
    let routes: Vec<String> = (0..20)
        .map(|i| ROUTE.replace("name: web, namespace", &format!("name: r{i}, namespace")))
        .collect();
    let text = |routes: &[String]| {
        format!(
            "{}---\n{}",
            multi(&[NS, SVC, POD, GW]),
            routes.join("---\n")
        )
    };
    let mut cache = ParseCache::new();
    let v1 = files(&[("a.yaml", &text(&routes)), ("b.yaml", CM)]);
    cached(&v1, &mut cache).unwrap();
    let s = cache.stats();
    assert_eq!((s.parsed, s.reused, s.entries), (25, 0, 25));

    cached(&v1, &mut cache).unwrap();
    let s = cache.stats();
    assert_eq!(
        (s.parsed, s.reused, s.entries),
        (25, 25, 25),
        "nothing re-read"
    );

    let mut edited = routes.clone();
    edited[7] = edited[7].replace("port: 80", "port: 81");
    let v2 = files(&[("a.yaml", &text(&edited)), ("b.yaml", CM)]);
    assert_eq!(cached(&v2, &mut cache), uncached(&v2));
    let s = cache.stats();
    assert_eq!(
        (s.parsed, s.reused, s.entries),
        (26, 49, 25),
        "one document re-read, the old one dropped"
    );

    let v3 = files(&[("a.yaml", &text(&edited[..10]))]);
    assert_eq!(cached(&v3, &mut cache), uncached(&v3));
    let s = cache.stats();
    assert_eq!(
        (s.parsed, s.entries),
        (26, 14),
        "removed documents and files are forgotten"
    );

    // A failing document: the error each time, read again once fixed, and the cache still bounded.
    let broken = files(&[(
        "a.yaml",
        &text(&edited[..10]).replace("podIP: 10.1.0.1", "podIP: ten"),
    )]);
    for _ in 0..2 {
        assert_eq!(cached(&broken, &mut cache), uncached(&broken));
        assert!(cached(&broken, &mut cache).is_err());
    }
    assert_eq!(cache.stats().parsed, 27);
    assert_eq!(cached(&v3, &mut cache), uncached(&v3));
    assert!(cache.stats().entries <= 14);
    assert_eq!(cached(&Vec::new(), &mut cache), uncached(&Vec::new()));
    assert_eq!(cache.stats().entries, 0);
}

/// A snapshot recording the name of the thread that dropped it.
struct Tracked {
    id: u32,
    drops: mpsc::Sender<(u32, String)>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let name = thread::current().name().unwrap_or("").to_string();
        let _ = self.drops.send((self.id, name));
    }
}

#[test]
fn replaced_snapshots_are_freed_by_the_config_reaper_not_by_readers() {
    let (drops, dropped) = mpsc::channel();
    let snap = |id| Tracked {
        id,
        drops: drops.clone(),
    };
    let next_drop = || {
        dropped
            .recv_timeout(Duration::from_secs(10))
            .expect("a snapshot was freed")
    };
    let live = Arc::new(Live::new(snap(1)));
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let reader = thread::Builder::new()
        .name("reader".into())
        .spawn({
            let live = live.clone();
            move || {
                let held = live.load();
                held_tx.send(held.id).unwrap();
                release_rx.recv().unwrap();
                drop(held);
            }
        })
        .unwrap();
    assert_eq!(held_rx.recv().unwrap(), 1);
    live.store(snap(2));
    live.store(snap(3));
    // 2 is held by nobody: the second store hands it to the reaper; 1 is still held by the reader.
    assert_eq!(next_drop(), (2, "config-reaper".to_string()));
    release_tx.send(()).unwrap();
    reader.join().unwrap();
    assert!(
        dropped.try_recv().is_err(),
        "the reader let go of 1 and freed it"
    );
    assert_eq!(live.reap(), 0);
    assert_eq!(next_drop(), (1, "config-reaper".to_string()));
    assert_eq!(live.load().id, 3);
    assert_eq!(live.reap(), 0);
    assert!(
        dropped.recv_timeout(Duration::from_millis(200)).is_err(),
        "the current snapshot was freed"
    );
}
