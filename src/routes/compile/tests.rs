//! Tests of the route-table compiler: scope, and regular expressions shared within a compile.

use mesh::config::GatewayRef;

use super::*;

/// Namespace `a` uses waypoint `a/wp`, namespace `b` waypoint `b/wp`; a route on each one's Service, one
/// on `a`'s Gateway, and one on a Service of no waypoint.
const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {istio.io/use-waypoint: wp}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b, labels: {istio.io/use-waypoint: wp}}
---
apiVersion: v1
kind: Namespace
metadata: {name: c}
"#;

fn mesh() -> Mesh {
    let mut text = MESH.to_string();
    for ns in ["a", "b", "c"] {
        text.push_str(&format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: wp, namespace: {ns}}}\n\
             spec: {{gatewayClassName: istio-waypoint, listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]}}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc, namespace: {ns}}}\n\
             spec: {{clusterIP: 10.0.0.{n}, ports: [{{port: 80}}]}}\n\
             ---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: {ns}}}\n\
             spec: {{parentRefs: [{{group: \"\", kind: Service, name: svc}}], rules: [{{backendRefs: [{{name: svc, port: 80}}]}}]}}\n",
            n = ns.as_bytes()[0]
        ));
    }
    text.push_str(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: g, namespace: a}\n\
         spec: {parentRefs: [{name: wp}], rules: [{backendRefs: [{name: svc, port: 80}]}]}\n",
    );
    Mesh::from_documents(&[("m.yaml".into(), text)], "cluster.local").unwrap()
}

fn routes(statuses: &[RouteStatus]) -> Vec<String> {
    let mut r: Vec<String> = statuses.iter().map(|s| s.route.clone()).collect();
    r.sort();
    r
}

#[test]
fn only_routes_with_a_parent_served_here_are_compiled() {
    let (mesh, state) = (mesh(), ResilienceState::default());
    let spec = WaypointSpec {
        gateway: GatewayRef {
            namespace: "a".into(),
            name: "wp".into(),
        },
        hbone_port: 15008,
    };
    let (served, mine) = compile_tables_with_state(&mesh, &spec, &state, Scope::Served).unwrap();
    let (all, every) = compile_tables_with_state(&mesh, &spec, &state, Scope::Mesh).unwrap();
    assert_eq!(routes(&mine), ["HTTPRoute a/g", "HTTPRoute a/r"]);
    assert_eq!(
        routes(&every),
        [
            "HTTPRoute a/g",
            "HTTPRoute a/r",
            "HTTPRoute b/r",
            "HTTPRoute c/r"
        ]
    );
    assert!(mine.iter().all(|s| !s.has_errors()), "{mine:#?}");
    assert_eq!(served.len(), 1);
    let rules = |t: &Tables| -> Vec<String> {
        t.values()
            .flat_map(|t| t.rules.iter().map(|r| r.name.clone()))
            .collect()
    };
    assert_eq!(rules(&served), rules(&all));
}

/// Two Services bound to `a/wp`, each with a route whose only match is a header regex (`x-v: {one}` on
/// `s1`, `x-v: {two}` on `s2`).
fn regex_mesh(one: &str, two: &str) -> Mesh {
    let mut text = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {istio.io/use-waypoint: wp}}\n\
         ---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp, namespace: a}\n\
         spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n",
    );
    for (i, pattern) in [(1, one), (2, two)] {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: a}}\n\
             spec: {{clusterIP: 10.0.0.{i}, ports: [{{port: 80}}]}}\n\
             ---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i}, namespace: a}}\n\
             spec: {{parentRefs: [{{group: \"\", kind: Service, name: s{i}}}], rules: [{{matches: [{{headers: \
             [{{name: x-v, type: RegularExpression, value: \"{pattern}\"}}]}}], backendRefs: [{{name: s{i}, port: 80}}]}}]}}\n"
        ));
    }
    Mesh::from_documents(&[("m.yaml".into(), text)], "cluster.local").unwrap()
}

fn wp_a() -> WaypointSpec {
    WaypointSpec {
        gateway: GatewayRef {
            namespace: "a".into(),
            name: "wp".into(),
        },
        hbone_port: 15008,
    }
}

/// Whether Service `s{i}`'s table sends a request with `x-v: value` to its route.
fn routed(tables: &Tables, i: u8, value: &str) -> bool {
    let table = &tables[&SocketAddr::from(([10, 0, 0, i], 80))];
    let mut headers = http::HeaderMap::new();
    headers.insert("x-v", value.parse().unwrap());
    let method = http::Method::GET;
    table
        .select("a", &RequestView::new(&method, "/", &headers))
        .is_some()
}

#[test]
fn a_pattern_is_compiled_once_per_compile_and_clones_match_alone() {
    let (mesh, spec, state) = (regex_mesh("x", "y"), wp_a(), ResilienceState::default());
    let cx = Cx {
        mesh: &mesh,
        spec: &spec,
        grants: backends::Grants::new(&mesh),
        destinations: destinations::Destinations::new(&state),
        regexes: RefCell::default(),
    };
    let (one, two) = (cx.regex("v[0-9]+").unwrap(), cx.regex("v[0-9]+").unwrap());
    assert_eq!(
        cx.regexes.borrow().len(),
        1,
        "the second use is the cached one"
    );
    let other = cx.regex("w[0-9]+").unwrap();
    assert_eq!(cx.regexes.borrow().len(), 2);
    assert!(cx.regex("v[").is_err(), "a syntax error is reported");
    assert_eq!(cx.regexes.borrow().len(), 2, "and not cached");
    // Anchored, and each clone matches on its own.
    assert!(one.is_match("v12") && !one.is_match("xv12") && !one.is_match("v1x"));
    assert!(two.is_match("v7") && !two.is_match("w7"));
    assert!(other.is_match("w7") && !other.is_match("v7"));
}

#[test]
fn routes_sharing_a_pattern_match_independently_and_a_changed_one_recompiles() {
    let state = ResilienceState::default();
    let compile = |mesh: &Mesh| {
        compile_tables_with_state(mesh, &wp_a(), &state, Scope::Served)
            .unwrap()
            .0
    };
    let shared = compile(&regex_mesh("v[0-9]+", "v[0-9]+"));
    for i in [1, 2] {
        assert!(routed(&shared, i, "v12"), "s{i}");
        assert!(!routed(&shared, i, "v1x"), "s{i}: anchored");
    }
    // The next compile (a hot swap) with s2's pattern changed: s2 follows the new one, s1 keeps the old one.
    let changed = compile(&regex_mesh("v[0-9]+", "w[0-9]+"));
    assert!(routed(&changed, 1, "v12") && !routed(&changed, 1, "w12"));
    assert!(routed(&changed, 2, "w12") && !routed(&changed, 2, "v12"));
}
