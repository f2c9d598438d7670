//! Tables over [`super::explain`] on the mesh of `tests/explain/mesh.yaml`, compiled as the waypoint does.

use mesh::config::{GatewayRef, Mesh};

use super::*;
use crate::snapshot::{compile, WaypointSpec};

const MESH: &str = include_str!("../../tests/explain/mesh.yaml");
const TD: &str = "cluster.local";
const PRODUCTPAGE: &str = "default/bookinfo-productpage";

fn snapshot() -> Snapshot {
    let mesh = Mesh::from_documents(&[("mesh.yaml".into(), MESH.to_string())], TD).unwrap();
    let spec = WaypointSpec {
        gateway: GatewayRef {
            namespace: "default".into(),
            name: "waypoint".into(),
        },
        hbone_port: 15008,
    };
    compile(&mesh, &spec).unwrap()
}

fn query(
    from: Option<&str>,
    to: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Query {
    Query {
        from: from.map(str::to_string),
        to: to.into(),
        method: Some(method.into()),
        path: Some(path.into()),
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        source_ip: None,
    }
}

/// One row: the request, then the route (`namespace/name`, rule within it, the match), the backends with
/// weights, the verdict with the deciding policy, and the status the waypoint answers itself.
struct Row {
    from: Option<&'static str>,
    to: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    route: Option<(&'static str, usize, &'static str)>,
    backends: &'static [(&'static str, u32)],
    verdict: (&'static str, Option<&'static str>),
    status: Option<u16>,
}

#[test]
fn route_backends_verdict_and_outcome() {
    const V1: (&str, u32) = ("default/reviews-v1:9080", 90);
    const V2: (&str, u32) = ("default/reviews-v2:9080", 10);
    const ALLOWED: (&str, Option<&str>) = ("allow", Some("default/reviews-allow"));
    let rows = [
        // The 90/10 split, by hostname, short name and VIP alike.
        Row {
            from: Some(PRODUCTPAGE),
            to: "reviews.default.svc.cluster.local:9080",
            method: "GET",
            path: "/reviews/1",
            headers: &[],
            route: Some(("default/reviews", 3, "PathPrefix /")),
            backends: &[V1, V2],
            verdict: ALLOWED,
            status: None,
        },
        Row {
            from: Some("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
            to: "127.0.0.100:9080",
            method: "GET",
            path: "/",
            headers: &[],
            route: Some(("default/reviews", 3, "PathPrefix /")),
            backends: &[V1, V2],
            verdict: ALLOWED,
            status: None,
        },
        // The header canary, only with the header.
        Row {
            from: Some(PRODUCTPAGE),
            to: "reviews.default:9080",
            method: "GET",
            path: "/api/x",
            headers: &[("X-Canary", "true")],
            route: Some((
                "default/reviews",
                0,
                "PathPrefix /api, header x-canary Exact \"true\"",
            )),
            backends: &[("default/reviews-v2:9080", 1)],
            verdict: ALLOWED,
            status: None,
        },
        Row {
            from: Some(PRODUCTPAGE),
            to: "reviews:9080",
            method: "GET",
            path: "/api/x",
            headers: &[],
            route: Some(("default/reviews", 3, "PathPrefix /")),
            backends: &[V1, V2],
            verdict: ALLOWED,
            status: None,
        },
        // The redirect is answered by the waypoint.
        Row {
            from: Some(PRODUCTPAGE),
            to: "reviews:9080",
            method: "GET",
            path: "/legacy",
            headers: &[],
            route: Some(("default/reviews", 1, "Exact /legacy")),
            backends: &[],
            verdict: ALLOWED,
            status: Some(301),
        },
        // DENY before ALLOW: even the allowed caller.
        Row {
            from: Some(PRODUCTPAGE),
            to: "reviews:9080",
            method: "GET",
            path: "/admin/users",
            headers: &[],
            route: Some(("default/reviews", 3, "PathPrefix /")),
            backends: &[V1, V2],
            verdict: ("deny", Some("default/reviews-deny-admin")),
            status: Some(403),
        },
        // ALLOW policies apply and none matches: denied with no deciding policy.
        Row {
            from: Some("default/bookinfo-ratings"),
            to: "reviews:9080",
            method: "GET",
            path: "/",
            headers: &[],
            route: Some(("default/reviews", 3, "PathPrefix /")),
            backends: &[V1, V2],
            verdict: ("deny", None),
            status: Some(403),
        },
        Row {
            from: None,
            to: "reviews:9080",
            method: "GET",
            path: "/",
            headers: &[],
            route: Some(("default/reviews", 3, "PathPrefix /")),
            backends: &[V1, V2],
            verdict: ("deny", None),
            status: Some(403),
        },
        // A caller from frontend: its consumer route replaces the producer's, and the namespace rule allows.
        Row {
            from: Some("frontend/web"),
            to: "reviews:9080",
            method: "GET",
            path: "/legacy",
            headers: &[],
            route: Some(("frontend/reviews-from-frontend", 0, "PathPrefix /")),
            backends: &[("default/reviews-v2:9080", 1)],
            verdict: ALLOWED,
            status: None,
        },
        // No route and no policy: the default rule to the Service itself.
        Row {
            from: Some(PRODUCTPAGE),
            to: "ratings.default.svc.cluster.local",
            method: "DELETE",
            path: "/",
            headers: &[],
            route: None,
            backends: &[("default/ratings:9080", 1)],
            verdict: ("allow", None),
            status: None,
        },
    ];
    let snap = snapshot();
    for (i, row) in rows.iter().enumerate() {
        let q = query(row.from, row.to, row.method, row.path, row.headers);
        let e = explain(&snap, &q, TD).unwrap_or_else(|err| panic!("row {i}: {err}"));
        let r = e.route.as_ref().expect("every row routes");
        let got_route = r
            .route
            .as_deref()
            .map(|name| (name, r.route_rule, r.matched.as_str()));
        assert_eq!(got_route, row.route, "row {i}: route");
        let got: Vec<(&str, u32)> = r
            .backends
            .iter()
            .map(|b| (b.name.as_str(), b.weight))
            .collect();
        assert_eq!(got, row.backends, "row {i}: backends");
        let by = e
            .authorization
            .decided_by
            .as_ref()
            .map(|d| d.policy.as_str());
        assert_eq!(
            (e.authorization.verdict.as_str(), by),
            row.verdict,
            "row {i}: verdict"
        );
        assert_eq!(
            e.outcome.status, row.status,
            "row {i}: status ({})",
            e.outcome.summary
        );
    }
}

#[test]
fn retry_timeouts_filters_and_destination_rule_of_the_split() {
    let snap = snapshot();
    let q = query(Some(PRODUCTPAGE), "reviews:9080", "GET", "/", &[]);
    let e = explain(&snap, &q, TD).unwrap();
    let r = e.route.unwrap();
    assert_eq!(r.rule, "HTTPRoute default/reviews rule 3");
    assert_eq!(
        (r.timeouts.request_ms, r.timeouts.backend_request_ms),
        (Some(3000), Some(1000))
    );
    assert!(r.retry.configured);
    assert_eq!(
        (r.retry.attempts, &r.retry.codes[..], r.retry.backoff_ms),
        (3, &[503, 502][..], 100)
    );
    assert!(r
        .retry
        .retry_on
        .contains(&"retriable-status-codes".to_string()));
    let (v1, v2) = (&r.backends[0].policy, &r.backends[1].policy);
    assert_eq!(v1.load_balancer, "LEAST_REQUEST");
    let pool = &v1.connection_pool;
    assert_eq!(
        (
            pool.max_connections,
            pool.max_requests,
            pool.max_retries,
            pool.max_pending_requests
        ),
        (Some(10), Some(100), Some(5), Some(7))
    );
    let o = v1.outlier_detection.as_ref().expect("outlier detection");
    assert_eq!(
        (
            o.consecutive_5xx,
            o.base_ejection_time_ms,
            o.max_ejection_percent
        ),
        (3, 15_000, 50)
    );
    // reviews-v2 has no DestinationRule: the defaults.
    assert_eq!(v2.load_balancer, "ROUND_ROBIN");
    assert_eq!(v2.connection_pool, PoolInfo::default());
    assert_eq!(v2.outlier_detection, None);
    assert_eq!(
        (r.backends[0].share_percent, r.backends[1].share_percent),
        (90.0, 10.0)
    );
    assert_eq!(r.backends[0].endpoints.len(), 1);
    assert_eq!(
        r.backends[0].endpoints[0].identity.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/bookinfo-reviews")
    );

    // The canary rule: rewrite with the new path, header edit; no retry policy → close detection.
    let q = query(
        Some(PRODUCTPAGE),
        "reviews:9080",
        "GET",
        "/api/x?q=1",
        &[("x-canary", "true")],
    );
    let r = explain(&snap, &q, TD).unwrap().route.unwrap();
    let rw = r.filters.rewrite.as_ref().expect("a rewrite");
    assert_eq!(rw.new_path.as_deref(), Some("/v2/x?q=1"));
    let set = &r
        .filters
        .request_headers
        .as_ref()
        .expect("header edits")
        .set;
    assert_eq!(set, &[("x-canary-seen".to_string(), "yes".to_string())]);
    assert!(!r.retry.configured);
    assert_eq!((r.retry.attempts, r.retry.backoff_ms), (2, 25));
    assert_eq!(
        r.timeouts,
        TimeoutsInfo {
            request_ms: None,
            backend_request_ms: None
        }
    );

    // The redirect's Location, for this request's host.
    let q = query(Some(PRODUCTPAGE), "reviews:9080", "GET", "/legacy?a=b", &[]);
    let e = explain(&snap, &q, TD).unwrap();
    let redirect = e.route.unwrap().filters.redirect.expect("a redirect");
    assert_eq!(
        (redirect.status, redirect.location.as_str()),
        (301, "http://reviews:9080/new?a=b")
    );
}

#[test]
fn invalid_backends_authentication_and_diagnostics() {
    let snap = snapshot();
    let q = query(Some(PRODUCTPAGE), "reviews:9080", "GET", "/broken", &[]);
    let e = explain(&snap, &q, TD).unwrap();
    let r = e.route.as_ref().unwrap();
    assert_eq!(r.backends[0].invalid, None);
    assert!(r.backends[1].invalid.is_some(), "{:?}", r.backends[1]);
    assert!(
        e.outcome.summary.contains("50.0% answered 500"),
        "{}",
        e.outcome.summary
    );
    assert_eq!(e.authentication.len(), 1);
    assert_eq!(e.authentication[0].issuer, "https://issuer.example");
    assert_eq!(e.authentication[0].policy, "default/reviews-jwt");
    assert!(
        e.diagnostics
            .iter()
            .any(|d| d.policy == "default/pods-only"),
        "{:?}",
        e.diagnostics
    );
    // The trace names every policy and why a rule did not match.
    let allow = e
        .authorization
        .policies
        .iter()
        .find(|p| p.policy == "default/reviews-allow")
        .unwrap();
    assert_eq!(allow.matched_rule, Some(0));
    let deny = e
        .authorization
        .policies
        .iter()
        .find(|p| p.policy == "default/reviews-deny-admin")
        .unwrap();
    assert_eq!(deny.matched_rule, None);
    assert!(deny.rules[0].failed.as_deref().unwrap().contains("paths"));
    // The text names the same facts.
    let text = render::text(&e);
    for want in [
        "default/reviews-deny-admin",
        "INVALID",
        "https://issuer.example",
        "pods-only",
    ] {
        assert!(text.contains(want), "{want} in\n{text}");
    }
}

#[test]
fn bad_input_is_named() {
    let snap = snapshot();
    let cases: [(Option<&str>, &str, &str, &str); 7] = [
        (
            None,
            "details.default.svc.cluster.local:9080",
            "GET",
            "unknown service",
        ),
        (None, "reviews:9999", "GET", "unknown service"),
        (None, "127.0.0.99:9080", "GET", "unknown service"),
        (Some("not-an-identity"), "reviews:9080", "GET", "bad source"),
        (
            Some("spiffe://cluster.local/ns/x"),
            "reviews:9080",
            "GET",
            "bad source",
        ),
        (None, "reviews:notaport", "GET", "bad destination"),
        (None, "reviews:9080", "G T", "bad method"),
    ];
    for (from, to, method, want) in cases {
        let err = explain(&snap, &query(from, to, method, "/", &[]), TD).unwrap_err();
        assert!(err.to_string().contains(want), "{to}: {err}");
    }
    let err = explain(&snap, &query(None, "details:9080", "GET", "/", &[]), TD).unwrap_err();
    assert!(
        err.to_string()
            .contains("reviews.default.svc.cluster.local:9080 (127.0.0.100:9080)"),
        "the error lists what is served: {err}"
    );
    let err = explain(
        &snap,
        &query(None, "reviews:9080", "GET", "nopath", &[]),
        TD,
    )
    .unwrap_err();
    assert!(err.to_string().contains("must start with '/'"), "{err}");
}

#[test]
fn callers_and_destinations_parse() {
    for (from, want) in [
        (
            "default/sa",
            Ok(("cluster.local/ns/default/sa/sa", "default")),
        ),
        (
            "spiffe://td.example/ns/x/sa/y",
            Ok(("td.example/ns/x/sa/y", "x")),
        ),
        ("spiffe://td/ns/x/sa/", Err(())),
        ("a/b/c", Err(())),
        ("/sa", Err(())),
    ] {
        let got = caller(from, TD);
        let got = got
            .as_ref()
            .map(|(p, ns)| (p.as_str(), ns.as_str()))
            .map_err(|_| ());
        assert_eq!(got, want, "{from}");
    }
    for (to, want) in [
        ("reviews:9080", Some(("reviews", Some(9080)))),
        ("reviews", Some(("reviews", None))),
        ("[::1]:80", Some(("::1", Some(80)))),
        ("::1", Some(("::1", None))),
        (":80", None),
        ("", None),
    ] {
        assert_eq!(split_host_port(to), want, "{to}");
    }
}

#[test]
fn admin_query_strings_round_trip() {
    let q = Query {
        from: Some("spiffe://cluster.local/ns/default/sa/x y".into()),
        to: "reviews:9080".into(),
        method: Some("POST".into()),
        path: Some("/a b?c=d&e=%41".into()),
        headers: vec![("x-user".into(), "jason: & co".into())],
        source_ip: Some("10.0.0.1".parse().unwrap()),
    };
    let qs = source::query_string(&q);
    let pairs: Vec<(String, String)> = qs
        .split('&')
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.to_string(), percent_decode(v))
        })
        .collect();
    assert_eq!(source::parse_query(&pairs), Ok(q));
    assert!(source::parse_query(&[]).is_err(), "to is required");
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}
