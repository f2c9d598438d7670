//! Route compilation, end to end from manifests to the decision `route::route` makes: GAMMA attachment
//! (producer, consumer, port, the waypoint Gateway), merging several routes by precedence, backends (weights,
//! ReferenceGrant, protocol), GRPCRoute, timeouts, retry and filters. Statuses are in `routes_status.rs`.

#[path = "routes/common.rs"]
mod common;

use std::time::Duration;

use common::*;
use waypoint::error::ProxyError;
use waypoint::routes::compile::{AppProtocol, RetryPolicy, RouteKind, Timeouts};

#[test]
fn producer_routes_apply_to_every_caller() {
    let (snap, _) = load(&route(
        "HTTPRoute",
        "default",
        "r",
        &[REVIEWS],
        &to("/", "reviews-v2"),
    ));
    let t = table(&snap, REVIEWS_HTTP);
    for ns in ["default", "frontend", "other"] {
        let (rule, backend) = send(t, ns, "GET", "/x", &[]).unwrap();
        assert_eq!(
            (rule.as_str(), backend.unwrap().as_str()),
            ("HTTPRoute default/r rule 0", "default/reviews-v2:9080"),
            "{ns}"
        );
    }
    // Without a port, the route applies to every port of the Service.
    assert_eq!(
        backend_of(table(&snap, "10.0.0.1:9081"), "/"),
        "default/reviews-v2:9080"
    );
    // Other services keep their default rule.
    assert_eq!(
        backend_of(table(&snap, "10.0.0.2:9080"), "/"),
        "default/reviews-v1:9080"
    );
}

#[test]
fn consumer_routes_apply_only_to_callers_from_their_namespace() {
    let producer = route(
        "HTTPRoute",
        "default",
        "p",
        &[REVIEWS],
        &to("/", "reviews-v1"),
    );
    let consumer = route(
        "HTTPRoute",
        "frontend",
        "c",
        &[REVIEWS],
        &to_default("/v2", "reviews-v2"),
    );
    let (snap, statuses) = load(&format!("{producer}{consumer}{GRANT_FRONTEND}"));
    let t = table(&snap, REVIEWS_HTTP);
    assert_eq!(
        send(t, "default", "GET", "/v2", &[]).unwrap().1.unwrap(),
        "default/reviews-v1:9080"
    );
    assert_eq!(
        send(t, "other", "GET", "/v2", &[]).unwrap().1.unwrap(),
        "default/reviews-v1:9080"
    );
    assert_eq!(
        send(t, "frontend", "GET", "/v2/x", &[]).unwrap().1.unwrap(),
        "default/reviews-v2:9080"
    );
    // The consumer's routes replace the producer's for its callers: nothing else matches for them.
    assert_eq!(
        send(t, "frontend", "GET", "/other", &[]),
        Err(ProxyError::NoRoute)
    );
    assert_eq!(
        conditions(&statuses, "HTTPRoute frontend/c", "Service default/reviews"),
        ("+Accepted".into(), "+ResolvedRefs".into())
    );

    // A consumer route alone: other callers keep the Service's default rule.
    let (snap, _) = load(&format!("{consumer}{GRANT_FRONTEND}"));
    let t = table(&snap, REVIEWS_HTTP);
    assert_eq!(
        send(t, "default", "GET", "/v2", &[]).unwrap().1.unwrap(),
        "default/reviews:9080"
    );
    assert_eq!(
        send(t, "frontend", "GET", "/v2", &[]).unwrap().1.unwrap(),
        "default/reviews-v2:9080"
    );
}

#[test]
fn a_parent_port_or_section_selects_one_service_port() {
    let by_port = r#"{group: "", kind: Service, name: reviews, port: 9081}"#;
    let by_name = r#"{group: "", kind: Service, name: reviews, sectionName: http}"#;
    for (parent, routed, untouched) in [
        (by_port, "10.0.0.1:9081", "10.0.0.1:9080"),
        (by_name, "10.0.0.1:9080", "10.0.0.1:9081"),
    ] {
        let (snap, statuses) = load(&route(
            "HTTPRoute",
            "default",
            "r",
            &[parent],
            &to("/", "reviews-v2"),
        ));
        assert_eq!(
            backend_of(table(&snap, routed), "/"),
            "default/reviews-v2:9080",
            "{parent}"
        );
        assert_eq!(
            backend_of(table(&snap, untouched), "/"),
            format!("default/reviews:{}", &untouched[9..]),
            "{parent}"
        );
        assert_eq!(statuses.len(), 1);
        assert_eq!(
            statuses[0].conditions[0].status, "True",
            "{parent}: {:?}",
            statuses[0]
        );
    }
}

#[test]
fn gateway_parent_routes_apply_to_every_service_of_the_waypoint() {
    let (snap, statuses) = load(&route(
        "HTTPRoute",
        "default",
        "g",
        &[WAYPOINT],
        &to("/gw", "reviews-v2"),
    ));
    for addr in [
        REVIEWS_HTTP,
        "10.0.0.1:9081",
        "10.0.0.2:9080",
        "10.0.0.3:9080",
        "10.0.0.4:8080",
    ] {
        let t = table(&snap, addr);
        assert_eq!(backend_of(t, "/gw/x"), "default/reviews-v2:9080", "{addr}");
        // Outside the route's matches: 404, since the route is the producer route now.
        assert_eq!(
            send(t, "default", "GET", "/", &[]),
            Err(ProxyError::NoRoute),
            "{addr}"
        );
    }
    assert_eq!(
        conditions(&statuses, "HTTPRoute default/g", "Gateway default/waypoint"),
        ("+Accepted".into(), "+ResolvedRefs".into())
    );

    // The listener admits routes from its own namespace only, unless allowedRoutes says otherwise.
    let foreign = route(
        "HTTPRoute",
        "frontend",
        "g",
        &[WAYPOINT],
        &to_default("/gw", "reviews-v2"),
    );
    let foreign = format!("{foreign}{GRANT_FRONTEND}");
    let (snap, statuses) = load(&foreign);
    assert_eq!(
        backend_of(table(&snap, REVIEWS_HTTP), "/gw"),
        "default/reviews:9080"
    );
    assert_eq!(
        conditions(
            &statuses,
            "HTTPRoute frontend/g",
            "Gateway default/waypoint"
        )
        .0,
        "-NotAllowedByListeners"
    );
    for allowed in [
        "{from: All}",
        "{from: Selector, selector: {matchLabels: {team: web}}}",
    ] {
        let base_listener = "listeners: [{name: mesh, port: 15008, protocol: HBONE}]";
        let listener = format!("listeners: [{{name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {{namespaces: {allowed}}}}}]");
        let text = format!("{}{foreign}", BASE.replace(base_listener, &listener));
        let mesh = mesh::config::Mesh::from_documents(&[("t.yaml".into(), text)], "cluster.local")
            .unwrap();
        let snap = waypoint::snapshot::compile(&mesh, &spec()).unwrap();
        assert_eq!(
            backend_of(table(&snap, REVIEWS_HTTP), "/gw"),
            "default/reviews-v2:9080",
            "{allowed}"
        );
    }
}

#[test]
fn routes_on_one_parent_merge_by_precedence() {
    let older = Some("2024-01-01T00:00:00Z");
    let newer = Some("2024-06-01T00:00:00Z");
    let docs = [
        // Same prefix in two routes: the older wins, whatever the names.
        route_at("HTTPRoute", "default", "b-old", older, &[REVIEWS], &to("/same", "reviews-v1")),
        route_at("HTTPRoute", "default", "a-new", newer, &[REVIEWS], &to("/same", "reviews-v2")),
        // No timestamps: namespace/name decides.
        route("HTTPRoute", "default", "y", &[REVIEWS], &to("/named", "reviews-v2")),
        route("HTTPRoute", "default", "x", &[REVIEWS], &to("/named", "reviews-v1")),
        // An Exact match of a newer route beats a longer prefix of an older one.
        route_at("HTTPRoute", "default", "exact", newer, &[REVIEWS], "  - matches: [{path: {type: Exact, value: /p/q}}]\n    backendRefs: [{name: reviews-v2, port: 9080}]\n"),
        route_at("HTTPRoute", "default", "prefix", older, &[REVIEWS], &to("/p/q", "reviews-v1")),
        // Method, then header count, then query count, across routes.
        route("HTTPRoute", "default", "m1", &[REVIEWS], "  - matches: [{path: {value: /m}, headers: [{name: a, value: '1'}, {name: b, value: '1'}]}]\n    backendRefs: [{name: reviews-v1, port: 9080}]\n"),
        route("HTTPRoute", "default", "m2", &[REVIEWS], "  - matches: [{path: {value: /m}, method: GET}]\n    backendRefs: [{name: reviews-v2, port: 9080}]\n"),
        route("HTTPRoute", "default", "q1", &[REVIEWS], "  - matches: [{path: {value: /q}, queryParams: [{name: x, value: '1'}, {name: y, value: '1'}]}]\n    backendRefs: [{name: reviews-v1, port: 9080}]\n"),
        route("HTTPRoute", "default", "q2", &[REVIEWS], "  - matches: [{path: {value: /q}, headers: [{name: a, value: '1'}]}]\n    backendRefs: [{name: reviews-v2, port: 9080}]\n"),
    ];
    let (snap, _) = load(&docs.concat());
    let t = table(&snap, REVIEWS_HTTP);
    let h = [("a", "1"), ("b", "1")];
    for (path, want) in [
        ("/same", "HTTPRoute default/b-old rule 0"),
        ("/named", "HTTPRoute default/x rule 0"),
        ("/p/q", "HTTPRoute default/exact rule 0"),
        ("/p/q/r", "HTTPRoute default/prefix rule 0"),
        ("/m", "HTTPRoute default/m2 rule 0"),
        ("/q?x=1&y=1", "HTTPRoute default/q2 rule 0"),
    ] {
        assert_eq!(
            send(t, "default", "GET", path, &h).unwrap().0,
            want,
            "{path}"
        );
    }
    assert_eq!(
        send(t, "default", "POST", "/m", &h).unwrap().0,
        "HTTPRoute default/m1 rule 0"
    );
}

#[test]
fn cross_namespace_backends_need_a_reference_grant() {
    let rule = "  - backendRefs: [{name: shadow, namespace: other, port: 9080}]\n";
    let grant = |from_kind: &str, from_ns: &str, to_name: &str| {
        format!("---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: other}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: {from_kind}, namespace: {from_ns}}}]\n  to: [{{group: \"\", kind: Service{to_name}}}]\n")
    };
    let r = route("HTTPRoute", "default", "r", &[REVIEWS], rule);
    for (what, grant, ok) in [
        ("no grant", String::new(), false),
        ("grant", grant("HTTPRoute", "default", ""), true),
        (
            "grant naming the service",
            grant("HTTPRoute", "default", ", name: shadow"),
            true,
        ),
        (
            "grant naming another service",
            grant("HTTPRoute", "default", ", name: other"),
            false,
        ),
        (
            "grant for GRPCRoutes",
            grant("GRPCRoute", "default", ""),
            false,
        ),
        (
            "grant for another namespace",
            grant("HTTPRoute", "frontend", ""),
            false,
        ),
    ] {
        let (snap, statuses) = load(&format!("{r}{grant}"));
        let t = table(&snap, REVIEWS_HTTP);
        let b = &t.rules[0].backends[0];
        let resolved = conditions(&statuses, "HTTPRoute default/r", "Service default/reviews").1;
        if ok {
            assert_eq!(
                (b.invalid.as_deref(), resolved.as_str()),
                (None, "+ResolvedRefs"),
                "{what}"
            );
            assert_eq!(b.endpoints.len(), 1, "{what}");
            assert_eq!(backend_of(t, "/"), "other/shadow:9080", "{what}");
        } else {
            assert!(
                b.invalid.as_deref().unwrap().contains("RefNotPermitted"),
                "{what}: {:?}",
                b.invalid
            );
            assert_eq!(resolved, "-RefNotPermitted", "{what}");
            assert_eq!(
                send(t, "default", "GET", "/", &[]).unwrap_err().status(),
                500,
                "{what}"
            );
        }
    }
}

#[test]
fn grpc_routes_match_service_and_method_and_speak_h2c() {
    let rules = r#"  - matches: [{method: {service: helloworld.Greeter, method: SayHello}}]
    backendRefs: [{name: reviews-v1, port: 9080}]
  - matches: [{method: {service: helloworld.Greeter}}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - matches: [{method: {method: Check}}]
    backendRefs: [{name: reviews-v1, port: 9080}]
  - matches: [{method: {type: RegularExpression, service: "grpc\\.health\\..*", method: "W.*"}, headers: [{name: x-env, value: canary}]}]
    backendRefs: [{name: reviews-v2, port: 9080, weight: 0}, {name: reviews-v1, port: 9080}]
"#;
    let (snap, statuses) = load(&route("GRPCRoute", "default", "g", &[REVIEWS], rules));
    let t = table(&snap, REVIEWS_HTTP);
    let send_grpc =
        |path: &str, h: &[(&str, &str)]| send(t, "default", "POST", path, h).map(|(r, _)| r);
    let rule = |n: usize| Ok(format!("GRPCRoute default/g rule {n}"));
    assert_eq!(send_grpc("/helloworld.Greeter/SayHello", &[]), rule(0));
    assert_eq!(send_grpc("/helloworld.Greeter/SayGoodbye", &[]), rule(1));
    assert_eq!(send_grpc("/grpc.health.v1.Health/Check", &[]), rule(2));
    assert_eq!(
        send_grpc("/grpc.health.v1.Health/Watch", &[("x-env", "canary")]),
        rule(3)
    );
    assert_eq!(
        send_grpc("/grpc.health.v1.Health/Watch", &[]),
        Err(ProxyError::NoRoute)
    );
    assert_eq!(
        send_grpc("/other.Service/Method", &[]),
        Err(ProxyError::NoRoute)
    );
    for r in &t.rules {
        assert_eq!(r.kind, RouteKind::Grpc);
        assert!(
            r.backends.iter().all(|b| b.protocol == AppProtocol::H2c),
            "{}",
            r.name
        );
    }
    // Weight 0 never gets traffic.
    let (_, backend) = send(
        t,
        "default",
        "POST",
        "/grpc.health.v1.Health/Watch",
        &[("x-env", "canary")],
    )
    .unwrap();
    assert_eq!(backend.unwrap(), "default/reviews-v1:9080");
    assert_eq!(
        conditions(&statuses, "GRPCRoute default/g", "Service default/reviews"),
        ("+Accepted".into(), "+ResolvedRefs".into())
    );
}

#[test]
fn weights_zero_single_and_no_backends() {
    let rules = "  - matches: [{path: {value: /split}}]\n    backendRefs: [{name: reviews-v1, port: 9080, weight: 0}, {name: reviews-v2, port: 9080, weight: 3}]\n\
                 \x20 - matches: [{path: {value: /single}}]\n    backendRefs: [{name: reviews-v1, port: 9080}]\n\
                 \x20 - matches: [{path: {value: /none}}]\n\
                 \x20 - matches: [{path: {value: /zero}}]\n    backendRefs: [{name: reviews-v1, port: 9080, weight: 0}]\n";
    let (snap, _) = load(&route("HTTPRoute", "default", "w", &[REVIEWS], rules));
    let t = table(&snap, REVIEWS_HTTP);
    for draw in 0..9 {
        let h = http::HeaderMap::new();
        let req = waypoint::routes::matching::RequestView::new(&http::Method::GET, "/split", &h);
        assert_eq!(
            waypoint::route::route(t, "default", &req, draw)
                .unwrap()
                .backend,
            Some(1)
        );
    }
    assert_eq!(backend_of(t, "/single"), "default/reviews-v1:9080");
    assert_eq!(t.rules[1].total_weight, 1);
    for path in ["/none", "/zero"] {
        let err = send(t, "default", "GET", path, &[]).unwrap_err();
        assert_eq!(
            (err.clone(), err.status()),
            (ProxyError::NoBackend, 500),
            "{path}"
        );
    }
}

#[test]
fn backend_protocol_follows_the_service_port() {
    let rules = "  - backendRefs: [{name: echo-h2, port: 8080}, {name: reviews-v1, port: 9080}]\n";
    let (snap, _) = load(&route("HTTPRoute", "default", "p", &[REVIEWS], rules));
    let t = table(&snap, REVIEWS_HTTP);
    let protocols: Vec<_> = t.rules[0].backends.iter().map(|b| b.protocol).collect();
    assert_eq!(protocols, [AppProtocol::H2c, AppProtocol::Http1]);
    // The default rule of a Service speaks what its own port says.
    assert_eq!(
        table(&snap, "10.0.0.4:8080").rules[0].backends[0].protocol,
        AppProtocol::H2c
    );
    for (app, name, want) in [
        (Some("http2"), None, AppProtocol::H2c),
        (Some("grpc"), None, AppProtocol::H2c),
        (Some("http"), Some("grpc"), AppProtocol::Http1),
        (None, Some("grpc-api"), AppProtocol::H2c),
        (None, Some("grpc-web"), AppProtocol::Http1),
        (None, Some("http"), AppProtocol::Http1),
    ] {
        assert_eq!(AppProtocol::of_port(app, name), want, "{app:?} {name:?}");
    }
}

#[test]
fn timeouts_and_retry_follow_the_geps() {
    let rules = "  - matches: [{path: {value: /a}}]\n    backendRefs: [{name: reviews-v1, port: 9080}]\n    timeouts: {request: 1h2m, backendRequest: 500ms}\n    retry: {attempts: 3, codes: [502, 503], backoff: 100ms}\n\
                 \x20 - matches: [{path: {value: /b}}]\n    backendRefs: [{name: reviews-v1, port: 9080}]\n    timeouts: {request: 0s}\n    retry: {codes: [503]}\n\
                 \x20 - matches: [{path: {value: /c}}]\n    backendRefs: [{name: reviews-v1, port: 9080}]\n    retry: {attempts: 0}\n";
    let (snap, _) = load(&route("HTTPRoute", "default", "t", &[REVIEWS], rules));
    let t = table(&snap, REVIEWS_HTTP);
    assert_eq!(
        t.rules[0].timeouts,
        Timeouts {
            request: Some(Duration::from_secs(3720)),
            backend_request: Some(Duration::from_millis(500))
        }
    );
    assert_eq!(
        t.rules[0].retry,
        Some(RetryPolicy {
            attempts: 3,
            codes: vec![502, 503],
            backoff: Some(Duration::from_millis(100)),
            on: waypoint::retry::RetryOn::DEFAULT,
        })
    );
    assert_eq!(t.rules[1].timeouts, Timeouts::default(), "0s is no timeout");
    assert_eq!(
        t.rules[1].retry.as_ref().map(|r| r.attempts),
        Some(2),
        "default attempts"
    );
    assert_eq!(t.rules[2].retry, None, "attempts 0: no retry");
}

#[test]
fn filters_compile_on_rules_and_backends() {
    let grant = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: other}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}]\n  to: [{group: \"\", kind: Service}]\n";
    let rules = r#"  - matches: [{path: {value: /h}}]
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-A, value: "1"}], add: [{name: x-b, value: "2"}], remove: [x-c]}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-r, value: "3"}]}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: shadow, namespace: other, port: 9080}, percent: 50}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: reviews-v2, port: 9080}}}
    backendRefs:
    - name: reviews-v1
      port: 9080
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-backend, value: v1}]}}]
  - matches: [{path: {value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.com, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]
  - matches: [{path: {value: /rw}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: internal.example, path: {type: ReplaceFullPath, replaceFullPath: /x}}}]
    backendRefs: [{name: reviews-v2, port: 9080}]
"#;
    let (snap, statuses) = load(&format!(
        "{}{grant}",
        route("HTTPRoute", "default", "f", &[REVIEWS], rules)
    ));
    assert_eq!(
        conditions(&statuses, "HTTPRoute default/f", "Service default/reviews"),
        ("+Accepted".into(), "+ResolvedRefs".into())
    );
    let t = table(&snap, REVIEWS_HTTP);
    let f = &t.rules[0].filters;
    let req = f.request_headers.as_ref().unwrap();
    assert_eq!((req.set.len(), req.add.len(), req.remove.len()), (1, 1, 1));
    assert_eq!(req.set[0].0.as_str(), "x-a");
    assert_eq!(f.response_headers.as_ref().unwrap().set.len(), 1);
    let mirrors: Vec<_> = f
        .mirrors
        .iter()
        .map(|m| {
            (
                m.backend.name.as_str(),
                m.fraction.ppm,
                m.backend.endpoints.len(),
            )
        })
        .collect();
    assert_eq!(
        mirrors,
        [
            ("other/shadow:9080", 500_000, 1),
            ("default/reviews-v2:9080", 1_000_000, 1)
        ]
    );
    let b = &t.rules[0].backends[0];
    assert_eq!(
        b.filters.request_headers.as_ref().unwrap().set[0]
            .0
            .as_str(),
        "x-backend"
    );

    let (rule, backend) = send(t, "default", "GET", "/old/page", &[]).unwrap();
    assert_eq!(
        (rule.as_str(), backend),
        ("HTTPRoute default/f rule 1", None),
        "a redirect needs no backend"
    );
    let redirect = t.rules[1].filters.redirect.as_ref().unwrap();
    assert_eq!(
        (redirect.status, redirect.hostname.as_deref()),
        (301, Some("example.com"))
    );
    let h = http::HeaderMap::new();
    let view = waypoint::routes::matching::RequestView::new(&http::Method::GET, "/old/page", &h);
    let routed = waypoint::route::route(t, "default", &view, 0).unwrap();
    assert_eq!(routed.matched_prefix, Some("/old"));
    let rewrite = t.rules[2].filters.rewrite.as_ref().unwrap();
    assert_eq!(rewrite.hostname.as_deref(), Some("internal.example"));
}
