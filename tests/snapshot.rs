//! The compiled snapshot: only this waypoint's services, routes in precedence order, endpoints with how to
//! reach them, invalid references kept as 500s rather than errors.

use std::net::SocketAddr;

use http::{HeaderMap, Method};
use mesh::config::{GatewayRef, Mesh};
use waypoint::demo::DEMO_MANIFESTS;
use waypoint::routes::compile::RouteTable;
use waypoint::routes::matching::{PathMatch, RequestView};
use waypoint::snapshot::{compile, compile_with_status, Snapshot, WaypointSpec};

fn spec() -> WaypointSpec {
    WaypointSpec {
        gateway: GatewayRef {
            namespace: "default".into(),
            name: "waypoint".into(),
        },
        hbone_port: 15008,
    }
}

fn compiled(text: &str) -> Snapshot {
    let mesh =
        Mesh::from_documents(&[("mesh.yaml".into(), text.to_string())], "cluster.local").unwrap();
    compile(&mesh, &spec()).unwrap()
}

/// The rule index a GET of `path` from the `default` namespace selects.
fn rule_of(table: &RouteTable, path: &str) -> Option<usize> {
    let h = HeaderMap::new();
    let req = RequestView::new(&Method::GET, path, &h);
    waypoint::route::route(table, "default", &req, 0)
        .ok()
        .map(|r| r.rule)
}

/// A path match as text, for comparisons.
fn show(m: &PathMatch) -> String {
    match m {
        PathMatch::Exact(p) => format!("Exact {p}"),
        PathMatch::Prefix(p) => format!("Prefix {p}"),
        PathMatch::Regex(r) => format!("Regex {}", r.as_str()),
    }
}

const EXTRA_RULES: &str = "
  - matches:
    - path: {type: Exact, value: /reviews/v2}
    backendRefs:
    - {name: reviews-v2, port: 9080}
  - matches:
    - path: {type: PathPrefix, value: /reviews/}
    - path: {type: PathPrefix, value: /ratings}
    backendRefs:
    - {name: reviews-v1, port: 9080}
    - {name: reviews-v9, port: 9080, weight: 1}
    - {name: reviews-v2, namespace: other, port: 9080, weight: 1}
";

#[test]
fn only_services_bound_to_this_waypoint_are_compiled() {
    let snap = compiled(DEMO_MANIFESTS);
    let keys: Vec<SocketAddr> = snap.services.keys().copied().collect();
    assert_eq!(
        keys,
        ["127.0.0.100:9080".parse::<SocketAddr>().unwrap()],
        "reviews-v1/v2 are not bound"
    );
    let other = WaypointSpec {
        gateway: GatewayRef {
            namespace: "default".into(),
            name: "other".into(),
        },
        hbone_port: 15008,
    };
    let mesh = Mesh::from_documents(
        &[("m.yaml".into(), DEMO_MANIFESTS.to_string())],
        "cluster.local",
    )
    .unwrap();
    assert!(
        compile(&mesh, &other).unwrap().services.is_empty(),
        "another waypoint serves nothing here"
    );
}

#[test]
fn endpoints_carry_the_hbone_address_and_workload_identity() {
    let snap = compiled(DEMO_MANIFESTS);
    let svc = snap.service("127.0.0.100:9080".parse().unwrap()).unwrap();
    assert_eq!(svc.name, "default/reviews");
    let rule = &svc.rules[0];
    assert_eq!(
        rule.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [90, 10]
    );
    assert_eq!(rule.total_weight, 100);
    let v1 = &rule.backends[0].endpoints;
    assert_eq!(v1.len(), 1);
    assert_eq!(v1[0].addr, "127.0.0.11:8080".parse().unwrap());
    let hbone = v1[0]
        .hbone
        .as_ref()
        .expect("an ambient pod is reached over HBONE");
    assert_eq!(hbone.hbone_addr, "127.0.0.11:15008".parse().unwrap());
    assert_eq!(
        hbone.identity.to_string(),
        "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    );
}

#[test]
fn matches_are_ordered_exact_then_longest_prefix_and_bad_refs_become_500s() {
    let text = DEMO_MANIFESTS.replace(
        "    - {name: reviews-v2, port: 9080, weight: 10}\n",
        &format!(
            "    - {{name: reviews-v2, port: 9080, weight: 10}}\n{}",
            EXTRA_RULES.trim_start_matches('\n')
        ),
    );
    let snap = compiled(&text);
    let svc = snap.service("127.0.0.100:9080".parse().unwrap()).unwrap();
    let order: Vec<(String, usize)> = svc
        .producer
        .entries()
        .into_iter()
        .map(|(m, r)| (show(&m.path), r))
        .collect();
    let want = [
        ("Exact /reviews/v2", 1),
        // Equal lengths keep their declaration order.
        ("Prefix /reviews", 2),
        ("Prefix /ratings", 2),
        ("Prefix /", 0),
    ];
    assert_eq!(order, want.map(|(m, r)| (m.to_string(), r)));
    let bad = &svc.rules[2].backends;
    assert!(bad[0].invalid.is_none());
    assert!(
        bad[1]
            .invalid
            .as_deref()
            .unwrap()
            .contains("BackendNotFound"),
        "{:?}",
        bad[1].invalid
    );
    assert!(
        bad[2]
            .invalid
            .as_deref()
            .unwrap()
            .contains("RefNotPermitted"),
        "{:?}",
        bad[2].invalid
    );
    for (path, rule) in [
        ("/reviews/v2", 1),
        ("/reviews/v2/x", 2),
        ("/ratings", 2),
        ("/reviewsx", 0),
        ("/", 0),
    ] {
        assert_eq!(rule_of(svc, path), Some(rule), "{path}");
    }
}

#[test]
fn a_service_without_routes_goes_to_its_own_endpoints_round_robin() {
    let text = DEMO_MANIFESTS
        .split("---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute")
        .next()
        .unwrap();
    let snap = compiled(text);
    let svc = snap.service("127.0.0.100:9080".parse().unwrap()).unwrap();
    assert_eq!(svc.rules.len(), 1);
    let b = &svc.rules[0].backends[0];
    assert_eq!(b.endpoints.len(), 2, "both reviews pods");
    assert_eq!(svc.producer.len(), 1);
    assert_eq!(rule_of(svc, "/anything?at=all"), Some(0));
    let picks: Vec<_> = (0..4)
        .map(|_| b.next_endpoint().unwrap().addr.to_string())
        .collect();
    assert_eq!(
        picks,
        [
            "127.0.0.11:8080",
            "127.0.0.12:8080",
            "127.0.0.11:8080",
            "127.0.0.12:8080"
        ]
    );
}

#[test]
fn the_demo_route_is_accepted_with_resolved_refs() {
    let mesh = Mesh::from_documents(
        &[("m.yaml".into(), DEMO_MANIFESTS.to_string())],
        "cluster.local",
    )
    .unwrap();
    let (snap, statuses) = compile_with_status(&mesh, &spec()).unwrap();
    assert_eq!(snap.statuses, statuses);
    assert_eq!(statuses.len(), 1);
    let s = &statuses[0];
    assert_eq!(
        (s.route.as_str(), s.parent.as_str()),
        ("HTTPRoute default/reviews", "Service default/reviews:9080")
    );
    let conditions: Vec<_> = s
        .conditions
        .iter()
        .map(|c| (c.kind.as_str(), c.status.as_str(), c.reason.as_str()))
        .collect();
    assert_eq!(
        conditions,
        [
            ("Accepted", "True", "Accepted"),
            ("ResolvedRefs", "True", "ResolvedRefs")
        ]
    );
}
