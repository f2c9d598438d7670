//! The manifests model: parsing, validation errors, resolution (waypoint binding, ambient, endpoints), lookups,
//! and the directory watcher's hot swap (including the Kubernetes ConfigMap `..data` symlink swap).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh::config::{watch_dir, GatewayRef, Live, Mesh, TargetPort, DEFAULT_TRUST_DOMAIN};

/// The bench topology as a user writes it (like `shared/bench/manifests/bench-mesh.yaml`).
const BENCH: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: default
  labels:
    istio.io/waypoint-for: service
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
status:
  addresses:
  - type: IPAddress
    value: 127.0.0.20
---
apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: default
  labels:
    istio.io/use-waypoint: waypoint
spec:
  clusterIP: 127.0.0.100
  selector: {app: reviews}
  ports:
  - {name: http, port: 9080, targetPort: 8080, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata:
  name: reviews-v1
  namespace: default
spec:
  clusterIP: 127.0.0.110
  selector: {app: reviews, version: v1}
  ports:
  - {name: http, port: 9080, targetPort: 8080, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata:
  name: reviews-v2
  namespace: default
spec:
  clusterIP: 127.0.0.111
  selector: {app: reviews, version: v2}
  ports:
  - {name: http, port: 9080, targetPort: 8080, protocol: TCP}
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v1-0
  namespace: default
  labels: {app: reviews, version: v1}
spec:
  serviceAccountName: bookinfo-reviews
  containers:
  - {name: reviews, image: bench/backend, ports: [{containerPort: 8080}]}
status:
  podIP: 127.0.0.11
  podIPs: [{ip: 127.0.0.11}]
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v2-0
  namespace: default
  labels: {app: reviews, version: v2}
spec:
  serviceAccountName: bookinfo-reviews
  containers:
  - {name: reviews, image: bench/backend, ports: [{containerPort: 8080}]}
status:
  podIP: 127.0.0.12
  podIPs: [{ip: 127.0.0.12}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
  namespace: default
spec:
  parentRefs:
  - {group: "", kind: Service, name: reviews, port: 9080}
  rules:
  - backendRefs:
    - {name: reviews-v1, port: 9080, weight: 90}
    - {name: reviews-v2, port: 9080, weight: 10}
    timeouts:
      request: 10s
    retry:
      attempts: 2
      codes: [503]
"#;

fn mesh(yaml: &str) -> Mesh {
    Mesh::from_documents(
        &[(PathBuf::from("test.yaml"), yaml.to_string())],
        DEFAULT_TRUST_DOMAIN,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn addrs(mesh: &Mesh, ns: &str, name: &str, port: u16) -> Vec<String> {
    let svc = mesh
        .service(ns, name)
        .unwrap_or_else(|| panic!("no service {ns}/{name}"));
    mesh.endpoints(svc, port)
        .iter()
        .map(|e| e.addr.to_string())
        .collect()
}

#[test]
fn bench_manifest_resolves() {
    let m = mesh(BENCH);
    assert_eq!(m.trust_domain, "cluster.local");
    let mut names: Vec<_> = m.services.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["reviews", "reviews-v1", "reviews-v2"]);
    assert!(m.skipped.is_empty());

    let (svc, port) = m.service_by_vip(sa("127.0.0.100:9080")).expect("VIP");
    assert_eq!(
        (
            svc.name.as_str(),
            port.name.as_deref(),
            port.target_port.clone()
        ),
        ("reviews", Some("http"), TargetPort::Number(8080))
    );
    assert!(m.service_by_vip(sa("127.0.0.100:9081")).is_none());

    let v1 = m.service("default", "reviews-v1").unwrap();
    let eps = m.endpoints(v1, 9080);
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].addr, sa("127.0.0.11:8080"));
    let w = eps[0].workload.as_ref().expect("workload");
    assert_eq!(
        w.identity(&m.trust_domain).to_string(),
        "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    );
    assert!(eps[0].hbone(), "namespace is ambient");
    assert!(
        m.endpoints(v1, 8080).is_empty(),
        "by service port, not target port"
    );
    assert_eq!(
        addrs(&m, "default", "reviews", 9080),
        ["127.0.0.11:8080", "127.0.0.12:8080"]
    );

    let wp_ref = GatewayRef {
        namespace: "default".into(),
        name: "waypoint".into(),
    };
    assert_eq!(
        m.service("default", "reviews").unwrap().waypoint,
        Some(wp_ref.clone())
    );
    assert_eq!(v1.waypoint, None);
    let wp = m.waypoint(&wp_ref).expect("waypoint");
    assert_eq!(
        (wp.addr, wp.waypoint_for.as_str()),
        (Some(sa("127.0.0.20:15008")), "service")
    );
    assert_eq!(
        wp.identity(&m.trust_domain).to_string(),
        "spiffe://cluster.local/ns/default/sa/waypoint"
    );
    let bound: Vec<_> = m
        .services_of_waypoint(&wp_ref)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(bound, ["reviews"]);

    let w = m
        .workload_by_ip("127.0.0.12".parse().unwrap())
        .expect("workload by IP");
    assert_eq!((w.name.as_str(), w.ambient), ("reviews-v2-0", true));
    assert_eq!(m.http_routes.len(), 1);
    assert_eq!(
        m.http_routes[0].object.metadata.namespace.as_deref(),
        Some("default")
    );
    assert_eq!(m.http_routes[0].file, PathBuf::from("test.yaml"));
    // The experimental-channel type keeps `retry`.
    let rule = &m.http_routes[0].object.spec.rules.as_ref().unwrap()[0];
    let retry = rule.retry.as_ref().expect("retry is read");
    assert_eq!(
        (retry.attempts, retry.codes.as_deref()),
        (Some(2), Some(&[503][..]))
    );
}

#[test]
fn grpc_routes_and_reference_grants_are_read() {
    let m = mesh(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g, namespace: apps}\n\
         spec:\n  parentRefs: [{group: \"\", kind: Service, name: greeter, port: 9090}]\n  rules:\n\
         \x20 - matches: [{method: {service: helloworld.Greeter, method: SayHello}}]\n\
         \x20   backendRefs: [{name: greeter-v2, port: 9090, weight: 10}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: a, namespace: backends}\n\
         spec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: apps}]\n  to: [{group: \"\", kind: Service}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: ReferenceGrant\nmetadata: {name: b}\n\
         spec:\n  from: [{group: gateway.networking.k8s.io, kind: GRPCRoute, namespace: apps}]\n  to: [{group: \"\", kind: Service, name: greeter}]\n",
    );
    assert_eq!(m.grpc_routes.len(), 1);
    let g = &m.grpc_routes[0].object;
    assert_eq!(g.metadata.namespace.as_deref(), Some("apps"));
    let method = g.spec.rules.as_ref().unwrap()[0].matches.as_ref().unwrap()[0]
        .method
        .as_ref()
        .unwrap();
    assert_eq!(method.service.as_deref(), Some("helloworld.Greeter"));
    let grants: Vec<_> = m
        .reference_grants
        .iter()
        .map(|g| {
            let o = &g.object;
            (
                o.metadata.namespace.as_deref().unwrap(),
                o.spec.from[0].kind.as_str(),
                o.spec.to[0].name.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        grants,
        [
            ("backends", "HTTPRoute", None),
            ("default", "GRPCRoute", Some("greeter"))
        ]
    );
    assert!(m.skipped.is_empty(), "{:?}", m.skipped);
}

#[test]
fn waypoint_listener_allowed_routes() {
    use mesh::config::{LabelExpression, LabelSelector, RouteNamespaces};
    let gw = |allowed: &str| {
        let w = &mesh(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: w}}\nspec:\n  gatewayClassName: istio-waypoint\n\
             \x20 listeners: [{{name: mesh, port: 15008, protocol: HBONE{allowed}}}]\n"
        ))
        .waypoints[0];
        (w.route_namespaces.clone(), w.route_kinds.clone())
    };
    assert_eq!(gw(""), (RouteNamespaces::Same, vec![]));
    assert_eq!(
        gw(", allowedRoutes: {namespaces: {from: All}, kinds: [{kind: HTTPRoute}]}"),
        (RouteNamespaces::All, vec!["HTTPRoute".to_string()])
    );
    let (sel, _) = gw(", allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {a: b}, matchExpressions: [{key: env, operator: In, values: [prod]}]}}}");
    let want = LabelSelector {
        match_labels: [("a".to_string(), "b".to_string())].into(),
        match_expressions: vec![LabelExpression {
            key: "env".into(),
            operator: "In".into(),
            values: vec!["prod".into()],
        }],
    };
    assert_eq!(sel, RouteNamespaces::Selector(want.clone()));
    let labels = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert!(want.matches(&labels(&[("a", "b"), ("env", "prod")])));
    assert!(!want.matches(&labels(&[("a", "b"), ("env", "dev")])));
    assert!(!want.matches(&labels(&[("env", "prod")])));
}

#[test]
fn hostname_lookup() {
    let m = mesh(BENCH);
    for (host, found) in [
        ("reviews.default", Some("reviews")),
        ("reviews.default.svc", Some("reviews")),
        ("reviews.default.svc.cluster.local", Some("reviews")),
        ("reviews.default.svc.cluster.local.", Some("reviews")),
        ("Reviews-V1.Default.svc", Some("reviews-v1")),
        ("reviews", None),
        ("reviews.other", None),
        ("reviews.default.svc.example.com", None),
        ("", None),
        (".default", None),
    ] {
        assert_eq!(
            m.service_by_hostname(host).map(|s| s.name.as_str()),
            found,
            "{host}"
        );
    }
}

#[test]
fn config_errors() {
    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n";
    let route = |rules: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: n}}\nspec:\n  rules:\n{rules}")
    };
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("yaml syntax", "a: [1, 2\n".into(), "document 1", ""),
        ("not a mapping", "- 1\n- 2\n".into(), "document 1", ""),
        ("missing kind", "apiVersion: v1\nmetadata: {name: x}\n".into(), "document 1", "kind"),
        ("missing name, counted past an empty doc", "---\n---\napiVersion: v1\nkind: Pod\nmetadata: {namespace: a}\n".into(), "document 2", "metadata.name"),
        ("type error", format!("{SVC}spec:\n  ports: [{{port: abc}}]\n"), "Service default/x", "spec.ports[0].port"),
        ("clusterIP", format!("{SVC}spec: {{clusterIP: 10.0.0.300}}\n"), "Service default/x", "spec.clusterIP"),
        ("port range", format!("{SVC}spec:\n  ports: [{{port: 80}}, {{port: 70000}}]\n"), "Service default/x", "spec.ports[1].port"),
        ("target port", format!("{SVC}spec:\n  ports: [{{port: 80, targetPort: 0}}]\n"), "Service default/x", "spec.ports[0].targetPort"),
        ("duplicate VIP", format!("{SVC}spec: {{clusterIP: 10.0.0.1}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: y}}\nspec: {{clusterIP: 10.0.0.1}}\n"), "Service default/y", "spec.clusterIP"),
        ("pod IP", "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\nstatus: {podIP: nope}\n".into(), "Pod a/p", "status.podIP"),
        ("container port", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, ports: [{containerPort: -1}]}]\n".into(), "Pod default/p", "spec.containers[0].ports[0].containerPort"),
        ("weight", route("  - backendRefs: [{name: a, port: 80}, {name: b, port: 80, weight: -1}]\n"), "HTTPRoute n/r", "spec.rules[0].backendRefs[1].weight"),
        ("path", route("  - matches: [{path: {type: PathPrefix, value: api}}]\n"), "HTTPRoute n/r", "spec.rules[0].matches[0].path.value"),
        ("path segment", route("  - matches: [{path: {type: Exact, value: /a//b}}]\n"), "HTTPRoute n/r", "spec.rules[0].matches[0].path.value"),
        ("weight range", route("  - backendRefs: [{name: a, port: 80, weight: 1000001}]\n"), "HTTPRoute n/r", "spec.rules[0].backendRefs[0].weight"),
        ("backend port required", route("  - backendRefs: [{name: a}]\n"), "HTTPRoute n/r", "spec.rules[0].backendRefs[0].port"),
        ("mirror port required", route("  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a}}}]\n"), "HTTPRoute n/r", "spec.rules[0].filters[0].requestMirror.backendRef.port"),
        ("filter config missing", route("  - filters: [{type: RequestHeaderModifier}]\n"), "HTTPRoute n/r", "spec.rules[0].filters[0].requestHeaderModifier"),
        ("filter config of another type", route("  - filters: [{type: URLRewrite, urlRewrite: {}, requestRedirect: {}}]\n"), "HTTPRoute n/r", "spec.rules[0].filters[0].requestRedirect"),
        ("filter repeated", route("  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}}, {type: RequestHeaderModifier, requestHeaderModifier: {}}]\n"), "HTTPRoute n/r", "spec.rules[0].filters[1]"),
        ("redirect and rewrite", route("  - filters: [{type: RequestRedirect, requestRedirect: {}}, {type: URLRewrite, urlRewrite: {}}]\n"), "HTTPRoute n/r", "spec.rules[0].filters"),
        ("prefix rewrite of an exact match", route("  - matches: [{path: {type: Exact, value: /a}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]\n"), "HTTPRoute n/r", "spec.rules[0].matches"),
        ("path modifier value", route("  - filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath}}}]\n"), "HTTPRoute n/r", "spec.rules[0].filters[0].urlRewrite.path.replaceFullPath"),
        ("timeout", route("  - timeouts: {request: 1.5s}\n"), "HTTPRoute n/r", "spec.rules[0].timeouts.request"),
        ("retry code", route("  - retry: {codes: [302]}\n"), "HTTPRoute n/r", "spec.rules[0].retry.codes[0]"),
        ("grpc weight", "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  rules: [{backendRefs: [{name: a, port: 80, weight: -2}]}]\n".into(), "GRPCRoute default/g", "spec.rules[0].backendRefs[0].weight"),
        ("grpc method", "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  rules: [{matches: [{method: {type: Exact}}]}]\n".into(), "GRPCRoute default/g", "spec.rules[0].matches[0].method"),
        ("grpc method name", "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  rules: [{matches: [{method: {service: a/b}}]}]\n".into(), "GRPCRoute default/g", "spec.rules[0].matches[0].method.service"),
        ("grant from", "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute}]\n  to: []\n".into(), "ReferenceGrant default/g", "spec.from[0]"),
        ("listener selector", "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: w}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: m, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: Selector}}}]\n".into(), "Gateway default/w", "spec.listeners[0].allowedRoutes.namespaces.selector"),
        ("duplicate", format!("{SVC}---\n{SVC}"), "Service default/x", "metadata.name"),
        ("gateway address", "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: w}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\nstatus:\n  addresses: [{type: IPAddress, value: not-ip}]\n".into(), "Gateway default/w", "status.addresses[0].value"),
        ("slice address", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, labels: {kubernetes.io/service-name: x}}\naddressType: IPv4\nendpoints: [{addresses: [1.2.3.4]}, {addresses: [bad]}]\n".into(), "EndpointSlice default/s", "endpoints[1].addresses[0]"),
        ("list item", "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n- {apiVersion: v1, kind: Service, metadata: {name: x}, spec: {clusterIP: bad}}\n".into(), "Service default/x", "items[1].spec.clusterIP"),
    ];
    for (what, yaml, object, field) in cases {
        let err = Mesh::from_documents(&[(PathBuf::from("bad.yaml"), yaml)], DEFAULT_TRUST_DOMAIN)
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(
            (err.file.as_path(), err.object.as_str(), err.field.as_str()),
            (Path::new("bad.yaml"), object, field),
            "{what}: {err}"
        );
        assert!(!err.message.is_empty(), "{what}");
        eprintln!("{what}: {err}");
    }
}

#[test]
fn duplicate_across_files_names_the_second() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: a}\n".to_string();
    let err = Mesh::from_documents(
        &[("1.yaml".into(), svc.clone()), ("2.yaml".into(), svc)],
        "td",
    )
    .unwrap_err();
    assert_eq!(
        (err.file.as_path(), err.object.as_str(), err.field.as_str()),
        (Path::new("2.yaml"), "Service a/x", "metadata.name")
    );
    assert!(err.message.contains("1.yaml"), "{}", err.message);
    assert!(
        err.to_string()
            .starts_with("2.yaml: Service a/x: metadata.name: "),
        "{err}"
    );
}

#[test]
fn unknown_kinds_are_skipped_and_counted() {
    let m = mesh(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\n---\n# only a comment\n---\n\
         apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: b}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\n---\n\
         apiVersion: v1\nkind: ConfigMap\n",
    );
    let skipped: Vec<_> = m.skipped.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        skipped,
        [
            ("ConfigMap", 1),
            ("Gateway networking.istio.io/v1", 1),
            ("PeerAuthentication", 2)
        ]
    );
    assert!(m.services.is_empty() && m.waypoints.is_empty());
}

/// `istio.io/use-waypoint` and `istio.io/use-waypoint-namespace`, when set.
type UseWaypoint = (Option<&'static str>, Option<&'static str>);

fn labels((name, ns): UseWaypoint) -> String {
    let name = name.map(|n| format!("istio.io/use-waypoint: {n}, "));
    let ns = ns.map(|n| format!("istio.io/use-waypoint-namespace: {n}"));
    format!("{}{}", name.unwrap_or_default(), ns.unwrap_or_default())
}

/// Namespaces `a` (labels vary), `b`; a Service `a/s` (labels vary); waypoints: a/wp (for service), a/wl
/// (workload), a/all (all), b/wp (service), a/other (not of the waypoint class).
fn binding_mesh(ns: UseWaypoint, svc: UseWaypoint) -> Mesh {
    let gw = |ns: &str, name: &str, class: &str, for_: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {{name: {name}, namespace: {ns}, labels: {{istio.io/waypoint-for: {for_}}}}}\n\
             spec: {{gatewayClassName: {class}, listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]}}\n"
        )
    };
    let yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: a, labels: {{{}}}}}\n\
         ---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: b}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: a, labels: {{{}}}}}\n{}{}{}{}{}",
        labels(ns),
        labels(svc),
        gw("a", "wp", "istio-waypoint", "service"),
        gw("a", "wl", "istio-waypoint", "workload"),
        gw("a", "all", "istio-waypoint", "all"),
        gw("b", "wp", "istio-waypoint", "service"),
        gw("a", "other", "istio", "service"),
    );
    mesh(&yaml)
}

#[test]
fn waypoint_binding() {
    const NONE: UseWaypoint = (None, None);
    let cases: [(&str, UseWaypoint, UseWaypoint, Option<&str>); 11] = [
        ("none anywhere", NONE, NONE, None),
        ("service label", NONE, (Some("wp"), None), Some("a/wp")),
        ("namespace label", (Some("wp"), None), NONE, Some("a/wp")),
        (
            "service overrides namespace",
            (Some("wp"), None),
            (Some("all"), None),
            Some("a/all"),
        ),
        (
            "service opts out",
            (Some("wp"), None),
            (Some("none"), None),
            None,
        ),
        (
            "other namespace",
            NONE,
            (Some("wp"), Some("b")),
            Some("b/wp"),
        ),
        (
            "namespace label's namespace",
            (Some("wp"), Some("b")),
            NONE,
            Some("b/wp"),
        ),
        (
            "namespace from the same object",
            (None, Some("b")),
            (Some("wp"), None),
            Some("a/wp"),
        ),
        ("for workloads only", NONE, (Some("wl"), None), None),
        ("missing gateway", NONE, (Some("nope"), None), None),
        ("not a waypoint class", NONE, (Some("other"), None), None),
    ];
    for (what, ns, svc, want) in cases {
        let m = binding_mesh(ns, svc);
        let want = want.map(|w| {
            let (namespace, name) = w.split_once('/').unwrap();
            GatewayRef {
                namespace: namespace.into(),
                name: name.into(),
            }
        });
        let got = m.service("a", "s").unwrap().waypoint.clone();
        assert_eq!(got, want, "{what}");
        if let Some(r) = &want {
            assert_eq!(m.services_of_waypoint(r).len(), 1, "{what}");
        }
    }
    let m = binding_mesh(NONE, NONE);
    let mut wps: Vec<_> = m
        .waypoints
        .iter()
        .map(|w| format!("{}/{} {}", w.namespace, w.name, w.waypoint_for))
        .collect();
    wps.sort();
    assert_eq!(
        wps,
        ["a/all all", "a/wl workload", "a/wp service", "b/wp service"]
    );
}

#[test]
fn waypoint_address() {
    let gw = |spec_extra: &str, status: &str| {
        mesh(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: w}}\nspec:\n  gatewayClassName: istio-waypoint\n{spec_extra}{status}"
        ))
        .waypoints[0]
            .addr
    };
    let hbone = "  listeners: [{name: http, port: 80, protocol: HTTP}, {name: mesh, port: 15009, protocol: HBONE}]\n";
    let status = "status:\n  addresses: [{type: Hostname, value: wp.example}, {value: 10.0.0.2}, {value: 10.0.0.3}]\n";
    for (what, got, want) in [
        (
            "status, HBONE listener port",
            gw(hbone, status),
            Some("10.0.0.2:15009"),
        ),
        (
            "spec address, default port",
            gw(
                "  listeners: []\n  addresses: [{type: IPAddress, value: 10.0.0.9}]\n",
                "",
            ),
            Some("10.0.0.9:15008"),
        ),
        (
            "status wins over spec",
            gw(
                &format!("{hbone}  addresses: [{{value: 10.0.0.9}}]\n"),
                status,
            ),
            Some("10.0.0.2:15009"),
        ),
        ("no address", gw(hbone, ""), None),
    ] {
        assert_eq!(got, want.map(sa), "{what}");
    }
}

#[test]
fn ambient_and_identity() {
    let pod = |name: &str, ns: &str, labels: &str, ip: &str, sa: &str| {
        format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\nspec: {{{sa}containers: []}}\nstatus: {{podIP: {ip}}}\n")
    };
    let yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: amb, labels: {{istio.io/dataplane-mode: ambient}}}}\n{}{}{}{}{}\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: pending, namespace: amb}}\n",
        pod("in-ns", "amb", "", "10.0.0.1", "serviceAccountName: api, "),
        pod("opt-out", "amb", "istio.io/dataplane-mode: none", "10.0.0.2", ""),
        pod("opt-in", "plain", "istio.io/dataplane-mode: ambient", "10.0.0.3", ""),
        pod("outside", "plain", "", "10.0.0.4", ""),
        pod("v6", "nowhere", "", "fd00::5", ""),
    );
    let m = mesh(&yaml);
    assert_eq!(
        m.workloads.len(),
        5,
        "a pod without an IP is not a workload"
    );
    for (ip, name, ambient, id) in [
        (
            "10.0.0.1",
            "in-ns",
            true,
            "spiffe://cluster.local/ns/amb/sa/api",
        ),
        (
            "10.0.0.2",
            "opt-out",
            false,
            "spiffe://cluster.local/ns/amb/sa/default",
        ),
        (
            "10.0.0.3",
            "opt-in",
            true,
            "spiffe://cluster.local/ns/plain/sa/default",
        ),
        (
            "10.0.0.4",
            "outside",
            false,
            "spiffe://cluster.local/ns/plain/sa/default",
        ),
        (
            "fd00::5",
            "v6",
            false,
            "spiffe://cluster.local/ns/nowhere/sa/default",
        ),
    ] {
        let w = m
            .workload_by_ip(ip.parse::<IpAddr>().unwrap())
            .unwrap_or_else(|| panic!("{ip}"));
        assert_eq!(
            (
                w.name.as_str(),
                w.ambient,
                w.identity(&m.trust_domain).to_string().as_str()
            ),
            (name, ambient, id)
        );
    }
    assert!(m.workload("amb", "in-ns").is_some());
}

const ENDPOINTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: web-http}
  - {name: admin, port: 9000, targetPort: "9001"}
---
apiVersion: v1
kind: Service
metadata: {name: external, namespace: shop}
spec:
  ports:
  - {name: http, port: 80}
---
apiVersion: v1
kind: Pod
metadata: {name: web-b, namespace: shop, labels: {app: web}}
spec:
  containers: [{name: c, ports: [{name: web-http, containerPort: 8080}]}]
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: web-a, namespace: shop, labels: {app: web, extra: x}}
spec:
  containers: [{name: c, ports: [{name: web-http, containerPort: 8081}]}]
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: web-unnamed, namespace: shop, labels: {app: web}}
spec:
  containers: [{name: c, ports: [{containerPort: 8080}]}]
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: web-elsewhere, namespace: other, labels: {app: web}}
spec:
  containers: [{name: c, ports: [{name: web-http, containerPort: 8080}]}]
status: {podIP: 10.0.9.9}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-extra
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: admin, port: 9999}]
endpoints:
- addresses: [10.0.0.2]
- addresses: [10.0.0.7]
- addresses: [10.0.0.8]
  conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: external-1
  namespace: shop
  labels: {kubernetes.io/service-name: external}
addressType: IPv4
ports: [{name: http, port: 3000}]
endpoints:
- addresses: [10.0.0.1]
  targetRef: {kind: Pod, name: web-a}
- addresses: [192.168.1.1, 192.168.1.2]
"#;

#[test]
fn endpoints_from_selector_and_slices() {
    let m = mesh(ENDPOINTS);
    for (svc, port, want) in [
        // Named target port resolved per pod; a pod without the name is left out; slices add, dedup by address.
        (
            "web",
            80,
            vec!["10.0.0.1:8081", "10.0.0.2:8080", "10.0.0.7:8080"],
        ),
        (
            "web",
            9000,
            vec![
                "10.0.0.1:9001",
                "10.0.0.2:9001",
                "10.0.0.2:9999",
                "10.0.0.3:9001",
                "10.0.0.7:9999",
            ],
        ),
        ("web", 81, vec![]),
        (
            "external",
            80,
            vec!["10.0.0.1:3000", "192.168.1.1:3000", "192.168.1.2:3000"],
        ),
    ] {
        assert_eq!(addrs(&m, "shop", svc, port), want, "{svc}:{port}");
    }
    let web = m.service("shop", "web").unwrap();
    assert_eq!(web.ports[1].target_port, TargetPort::Number(9001));
    let eps = m.endpoints(web, 80);
    assert_eq!(
        eps[1].workload.as_ref().map(|w| w.name.as_str()),
        Some("web-b"),
        "pod endpoint keeps its workload"
    );
    assert!(eps[2].workload.is_none(), "unknown slice address");
    let ext = m.endpoints(m.service("shop", "external").unwrap(), 80);
    assert_eq!(
        ext[0].workload.as_ref().map(|w| w.name.as_str()),
        Some("web-a"),
        "from targetRef"
    );
    assert!(!ext[0].hbone(), "not ambient");
    assert_eq!(
        m.service_by_vip(sa("10.96.0.10:9000")).map(|(_, p)| p.port),
        Some(9000)
    );
}

#[test]
fn scale_ten_thousand_services() {
    let mut yaml = String::with_capacity(6 << 20);
    for i in 0..10_000u32 {
        let ns = format!("ns{}", i % 20);
        let (b, c) = (i / 256, i % 256);
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{i}, namespace: {ns}}}\nspec:\n  clusterIP: 10.96.{b}.{c}\n  selector: {{app: app{i}, tier: web}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n\
             ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: pod{i}, namespace: {ns}, labels: {{app: app{i}, tier: web}}}}\nspec: {{containers: []}}\nstatus: {{podIP: 10.1.{b}.{c}}}\n"
        ));
    }
    let started = Instant::now();
    let m = mesh(&yaml);
    let elapsed = started.elapsed();
    assert_eq!((m.services.len(), m.workloads.len()), (10_000, 10_000));
    let svc = m
        .service_by_hostname("svc9999.ns19.svc.cluster.local")
        .expect("hostname");
    assert_eq!(addrs(&m, "ns19", "svc9999", 80), ["10.1.39.15:8080"]);
    assert_eq!(
        m.service_by_vip(sa("10.96.39.15:80"))
            .map(|(s, _)| s.name.as_str()),
        Some(svc.name.as_str())
    );
    assert!(
        elapsed < Duration::from_secs(60),
        "parsing 10k services took {elapsed:?}"
    );
    eprintln!("10k services + 10k pods parsed in {elapsed:?}");
}

#[test]
fn load_dir_reads_yaml_files_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let svc = |name: &str| format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n");
    std::fs::write(dir.path().join("b.yml"), svc("b")).unwrap();
    std::fs::write(dir.path().join("a.yaml"), svc("a")).unwrap();
    std::fs::write(dir.path().join(".hidden.yaml"), "not: [valid").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not: [valid").unwrap();
    std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
    let m = Mesh::load_dir(dir.path(), "td").unwrap();
    let names: Vec<_> = m.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(m.trust_domain, "td");

    std::fs::write(
        dir.path().join("c.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {}\n",
    )
    .unwrap();
    let err = Mesh::load_dir(dir.path(), "td").unwrap_err();
    assert_eq!(
        (err.file, err.field.as_str()),
        (dir.path().join("c.yaml"), "metadata.name")
    );
    assert!(Mesh::load_dir(&dir.path().join("missing"), "td").is_err());
}

/// Waits (bounded) until `cond` holds.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn service_names(m: &Mesh) -> Vec<String> {
    m.services.iter().map(|s| s.name.clone()).collect()
}

/// Replaces `dir/name` atomically (write a hidden file, rename), so the watcher never sees half a file.
fn replace(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn start(dir: &Path) -> (Arc<Live<Vec<String>>>, mesh::config::WatchGuard) {
    let initial = service_names(&Mesh::load_dir(dir, "td").unwrap());
    let live = Arc::new(Live::new(initial));
    let guard = watch_dir(
        dir.to_path_buf(),
        "td".into(),
        Duration::from_millis(50),
        live.clone(),
        |m| Ok(service_names(m)),
    );
    (live, guard)
}

#[test]
fn watch_dir_swaps_good_changes_and_keeps_serving_on_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let svc = |name: &str| format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n");
    std::fs::write(dir.path().join("mesh.yaml"), svc("one")).unwrap();
    let (live, guard) = start(dir.path());
    assert!(guard.is_watching());
    assert_eq!(
        (live.generation(), live.load().as_slice()),
        (1, ["one".to_string()].as_slice())
    );

    replace(dir.path(), "mesh.yaml", &svc("two"));
    eventually("the change", || *live.load() == ["two"]);
    let good = live.generation();
    assert!(good > 1);
    assert!(live.last_error().is_none());

    replace(
        dir.path(),
        "mesh.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIP: nope}\n",
    );
    eventually("the error", || live.last_error().is_some());
    let err = live.last_error().unwrap();
    assert_eq!(
        (err.object.as_str(), err.field.as_str()),
        ("Service default/x", "spec.clusterIP")
    );
    assert_eq!(
        (live.generation(), live.load().as_slice()),
        (good, ["two".to_string()].as_slice())
    );

    replace(dir.path(), "mesh.yaml", &svc("three"));
    eventually("the fix", || *live.load() == ["three"]);
    assert!(
        live.last_error().is_none(),
        "a good change clears the error"
    );

    drop(guard);
    let last = live.generation();
    replace(dir.path(), "mesh.yaml", &svc("four"));
    std::thread::sleep(Duration::from_millis(300)); // nothing to wait for: proving a non-event
    assert_eq!(
        live.generation(),
        last,
        "no reloads after the guard is dropped"
    );
}

/// The calling thread's nice value (`/proc/thread-self/stat`, field 19).
#[cfg(target_os = "linux")]
fn thread_nice() -> i32 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 1..];
    after_name
        .split_whitespace()
        .nth(16)
        .unwrap()
        .parse()
        .unwrap()
}

#[cfg(target_os = "linux")]
#[test]
fn watch_dir_reloads_below_the_request_path_priority() {
    let dir = tempfile::tempdir().unwrap();
    let svc = |name: &str| format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n");
    std::fs::write(dir.path().join("mesh.yaml"), svc("one")).unwrap();
    let base = thread_nice();
    // The compile reports the nice value of the thread it runs on.
    let live = Arc::new(Live::new(base));
    let _guard = watch_dir(
        dir.path().to_path_buf(),
        "td".into(),
        Duration::from_millis(50),
        live.clone(),
        |_| Ok(thread_nice()),
    );
    replace(dir.path(), "mesh.yaml", &svc("two"));
    eventually("the reload", || live.generation() > 1);
    assert_eq!(
        *live.load(),
        mesh::config::live::BACKGROUND_NICE.max(base),
        "parse and compile run at a lower priority than the proxy's threads"
    );
    assert_eq!(thread_nice(), base, "only the watcher's own thread changes");
}

#[cfg(unix)]
#[test]
fn watch_dir_follows_configmap_symlink_swap() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let svc = |name: &str| format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n");
    std::fs::create_dir(d.join("..2024_a")).unwrap();
    std::fs::write(d.join("..2024_a/x.yaml"), svc("a")).unwrap();
    symlink("..2024_a", d.join("..data")).unwrap();
    symlink("..data/x.yaml", d.join("x.yaml")).unwrap();
    let (live, _guard) = start(d);
    assert_eq!(
        *live.load(),
        ["a"],
        "symlinked file read, hidden entries skipped"
    );

    std::fs::create_dir(d.join("..2024_b")).unwrap();
    std::fs::write(d.join("..2024_b/x.yaml"), svc("b")).unwrap();
    symlink("..2024_b", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..2024_a")).unwrap();
    eventually("the swap", || *live.load() == ["b"]);
    assert!(live.last_error().is_none());
}

#[test]
fn live_store_and_errors() {
    let live = Live::new(1);
    assert_eq!(
        (live.generation(), *live.load(), live.last_error()),
        (1, 1, None)
    );
    let err = Mesh::from_documents(&[("e.yaml".into(), "kind: 1".into())], "td").unwrap_err();
    live.set_error(err.clone());
    assert_eq!(live.last_error(), Some(err));
    let held = live.load();
    live.store(2);
    assert_eq!(
        (live.generation(), *live.load(), *held, live.last_error()),
        (2, 2, 1, None)
    );
}

/// A DestinationRule for `host` in `namespace` with `spec.trafficPolicy` = `policy` (indented YAML).
fn destination_rule(
    version: &str,
    name: &str,
    namespace: &str,
    host: &str,
    policy: &str,
) -> String {
    format!(
        "---\napiVersion: networking.istio.io/{version}\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  host: {host}\n  trafficPolicy:\n{policy}"
    )
}

#[test]
fn destination_rules_are_read_in_every_version() {
    use mesh::config::destination::{HttpCookieSpec, SimpleLb};
    let full = "    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 1000, maxRequestsPerConnection: 5, maxRetries: 3, idleTimeout: 1m}
    outlierDetection: {consecutive5xxErrors: 7, consecutiveGatewayErrors: 2, interval: 1.5s, baseEjectionTime: 1h30m, maxEjectionPercent: 50}
    loadBalancer: {simple: LEAST_CONN}
    portLevelSettings:
    - port: {number: 9081}
      loadBalancer:
        consistentHash:
          httpCookie: {name: user, path: /, ttl: 0s}
";
    let m = mesh(&format!(
        "{BENCH}{}{}{}",
        destination_rule("v1", "reviews", "default", "reviews", full),
        destination_rule(
            "v1beta1",
            "v1",
            "default",
            "reviews-v1.default",
            "    loadBalancer: {simple: RANDOM}\n"
        ),
        destination_rule(
            "v1alpha3",
            "v2",
            "other",
            "reviews-v2.default.svc.cluster.local",
            "    loadBalancer: {consistentHash: {useSourceIp: true}}\n"
        ),
    ));
    assert_eq!(m.destination_rules.len(), 3);
    let r = &m
        .destination_rule("default", "reviews")
        .expect("short name")
        .object;
    assert_eq!(r.service, Some(("default".into(), "reviews".into())));
    let p = r.policy_for_port(9080).unwrap();
    let pool = p.connection_pool.unwrap();
    let (tcp, http) = (pool.tcp.unwrap(), pool.http.unwrap());
    assert_eq!(
        (tcp.max_connections, tcp.connect_timeout),
        (Some(100), Some(Duration::from_millis(30)))
    );
    assert_eq!(
        (
            http.http1_max_pending_requests,
            http.http2_max_requests,
            http.max_requests_per_connection,
            http.max_retries,
            http.idle_timeout
        ),
        (
            Some(10),
            Some(1000),
            Some(5),
            Some(3),
            Some(Duration::from_secs(60))
        )
    );
    let o = p.outlier_detection.unwrap();
    assert_eq!(
        (
            o.consecutive_5xx_errors,
            o.consecutive_gateway_errors,
            o.interval,
            o.base_ejection_time,
            o.max_ejection_percent
        ),
        (
            Some(7),
            Some(2),
            Some(Duration::from_millis(1500)),
            Some(Duration::from_secs(5400)),
            Some(50)
        )
    );
    assert_eq!(
        p.load_balancer.unwrap().simple,
        Some(SimpleLb::LeastRequest),
        "LEAST_CONN is LEAST_REQUEST"
    );
    // The port-level loadBalancer replaces the top-level one; the other fields stay.
    let p = r.policy_for_port(9081).unwrap();
    let lb = p.load_balancer.unwrap();
    assert_eq!(lb.simple, None);
    assert_eq!(
        lb.consistent_hash.unwrap().http_cookie,
        Some(HttpCookieSpec {
            name: "user".into(),
            path: Some("/".into()),
            ttl: Some(Duration::ZERO)
        })
    );
    assert!(p.connection_pool.is_some() && p.outlier_detection.is_some());

    let v1 = m
        .destination_rule_of(m.service("default", "reviews-v1").unwrap())
        .expect("name.ns");
    assert_eq!(
        v1.policy_for_port(9080)
            .unwrap()
            .load_balancer
            .unwrap()
            .simple,
        Some(SimpleLb::Random)
    );
    let v2 = m
        .destination_rule("default", "reviews-v2")
        .expect("FQDN from another namespace");
    assert_eq!(v2.object.namespace, "other");
    assert!(
        v2.object
            .policy_for_port(9080)
            .unwrap()
            .load_balancer
            .unwrap()
            .consistent_hash
            .unwrap()
            .use_source_ip
    );
    assert!(m.destination_rule("default", "ratings").is_none());
    assert!(m.skipped.is_empty(), "{:?}", m.skipped);
}

#[test]
fn destination_rule_hosts_and_precedence() {
    let lb = |simple: &str| format!("    loadBalancer: {{simple: {simple}}}\n");
    let m = mesh(&format!(
        "{}{}{}{}{}",
        destination_rule("v1", "elsewhere", "other", "reviews.default", &lb("RANDOM")),
        destination_rule("v1", "own", "default", "reviews", &lb("ROUND_ROBIN")),
        destination_rule(
            "v1",
            "second",
            "default",
            "reviews.default.svc",
            &lb("LEAST_REQUEST")
        ),
        destination_rule(
            "v1",
            "wild",
            "default",
            "\"*.default.svc.cluster.local\"",
            &lb("RANDOM")
        ),
        destination_rule(
            "v1",
            "external",
            "default",
            "www.example.com",
            &lb("RANDOM")
        ),
    ));
    let r = &m.destination_rule("default", "reviews").unwrap().object;
    assert_eq!(
        r.name, "own",
        "the Service's namespace wins, then the first read"
    );
    assert_eq!(m.destination_rules[3].object.service, None, "wildcard");
    assert_eq!(m.destination_rules[4].object.service, None, "external host");
    // The oldest wins among rules in the same tier.
    let dated = |name: &str, at: &str| {
        format!("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, creationTimestamp: \"{at}\"}}\nspec: {{host: reviews}}\n")
    };
    let m = mesh(&format!(
        "{}{}",
        dated("newer", "2024-05-01T00:00:00Z"),
        dated("older", "2023-05-01T00:00:00Z")
    ));
    assert_eq!(
        m.destination_rule("default", "reviews")
            .unwrap()
            .object
            .name,
        "older"
    );
}

#[test]
fn istio_durations() {
    use mesh::config::destination::parse_duration;
    for (text, want) in [
        ("1s", Some(Duration::from_secs(1))),
        ("500ms", Some(Duration::from_millis(500))),
        ("1m", Some(Duration::from_secs(60))),
        ("1h30m", Some(Duration::from_secs(5400))),
        ("1.5s", Some(Duration::from_millis(1500))),
        ("250us", Some(Duration::from_micros(250))),
        ("0", Some(Duration::ZERO)),
        ("10", None),
        ("-1s", None),
        ("1d", None),
        ("", None),
        ("s", None),
    ] {
        assert_eq!(parse_duration(text).ok(), want, "{text:?}");
    }
}

#[test]
fn destination_rule_errors() {
    let dr = |policy: &str| destination_rule("v1", "d", "n", "reviews", policy);
    let cases: Vec<(&str, String, &str)> = vec![
        ("no host", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: n}\nspec: {}\n".into(), "spec.host"),
        ("unknown simple", dr("    loadBalancer: {simple: FASTEST}\n"), "spec.trafficPolicy.loadBalancer.simple"),
        ("simple and hash", dr("    loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}\n"), "spec.trafficPolicy.loadBalancer"),
        ("no hash key", dr("    loadBalancer: {consistentHash: {}}\n"), "spec.trafficPolicy.loadBalancer.consistentHash"),
        ("two hash keys", dr("    loadBalancer: {consistentHash: {useSourceIp: true, httpHeaderName: x-user}}\n"), "spec.trafficPolicy.loadBalancer.consistentHash"),
        ("header name", dr("    loadBalancer: {consistentHash: {httpHeaderName: \"bad header\"}}\n"), "spec.trafficPolicy.loadBalancer.consistentHash.httpHeaderName"),
        ("cookie name", dr("    loadBalancer: {consistentHash: {httpCookie: {ttl: 1s}}}\n"), "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name"),
        ("cookie ttl", dr("    loadBalancer: {consistentHash: {httpCookie: {name: c, ttl: soon}}}\n"), "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl"),
        ("negative limit", dr("    connectionPool: {tcp: {maxConnections: -1}}\n"), "spec.trafficPolicy.connectionPool.tcp.maxConnections"),
        ("limit type", dr("    connectionPool: {http: {maxRetries: lots}}\n"), "spec.trafficPolicy.connectionPool.http.maxRetries"),
        ("connect timeout unit", dr("    connectionPool: {tcp: {connectTimeout: 10}}\n"), "spec.trafficPolicy.connectionPool.tcp.connectTimeout"),
        ("connect timeout zero", dr("    connectionPool: {tcp: {connectTimeout: 0s}}\n"), "spec.trafficPolicy.connectionPool.tcp.connectTimeout"),
        ("idle timeout", dr("    connectionPool: {http: {idleTimeout: 1x}}\n"), "spec.trafficPolicy.connectionPool.http.idleTimeout"),
        ("interval", dr("    outlierDetection: {interval: fast}\n"), "spec.trafficPolicy.outlierDetection.interval"),
        ("ejection time zero", dr("    outlierDetection: {baseEjectionTime: 0ms}\n"), "spec.trafficPolicy.outlierDetection.baseEjectionTime"),
        ("ejection percent", dr("    outlierDetection: {maxEjectionPercent: 101}\n"), "spec.trafficPolicy.outlierDetection.maxEjectionPercent"),
        ("5xx type", dr("    outlierDetection: {consecutive5xxErrors: many}\n"), "spec.trafficPolicy.outlierDetection.consecutive5xxErrors"),
        ("port number", dr("    portLevelSettings: [{port: {number: 70000}}]\n"), "spec.trafficPolicy.portLevelSettings[0].port.number"),
        ("port missing", dr("    portLevelSettings: [{loadBalancer: {simple: RANDOM}}]\n"), "spec.trafficPolicy.portLevelSettings[0].port.number"),
        ("port twice", dr("    portLevelSettings: [{port: {number: 80}}, {port: {number: 80}}]\n"), "spec.trafficPolicy.portLevelSettings[1].port.number"),
        ("port-level enum", dr("    portLevelSettings: [{port: {number: 80}, loadBalancer: {simple: NOPE}}]\n"), "spec.trafficPolicy.portLevelSettings[0].loadBalancer.simple"),
        ("port-level hash", dr("    portLevelSettings: [{port: {number: 80}, loadBalancer: {consistentHash: {}}}]\n"), "spec.trafficPolicy.portLevelSettings[0].loadBalancer.consistentHash"),
    ];
    for (what, yaml, field) in cases {
        let err = Mesh::from_documents(&[(PathBuf::from("dr.yaml"), yaml)], DEFAULT_TRUST_DOMAIN)
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(
            (err.file.as_path(), err.object.as_str(), err.field.as_str()),
            (Path::new("dr.yaml"), "DestinationRule n/d", field),
            "{what}: {err}"
        );
        eprintln!("{what}: {err}");
    }
    // Another version of the kind is skipped and counted, not misread.
    let m = mesh("apiVersion: networking.istio.io/v2\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: x}\n");
    assert_eq!(
        m.skipped.get("DestinationRule networking.istio.io/v2"),
        Some(&1)
    );
    assert!(m.destination_rules.is_empty());
}
