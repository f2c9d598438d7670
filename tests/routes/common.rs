//! The mesh the route compile tests share, and helpers to compile extra routes into it and send requests
//! through the result (`route::route`, no sockets).

#![allow(dead_code)]

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use mesh::config::{GatewayRef, Mesh};
use waypoint::error::ProxyError;
use waypoint::routes::compile::RouteTable;
use waypoint::routes::matching::RequestView;
use waypoint::routes::status::RouteStatus;
use waypoint::snapshot::{compile_with_status, Snapshot, WaypointSpec};

/// `default` is ambient and bound to the waypoint `default/waypoint` (all its services); `frontend` and
/// `other` are not bound. `reviews` has two ports (9080 `http`, 9081 `admin`).
pub const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Namespace
metadata: {name: frontend, labels: {team: web}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
status:
  addresses: [{type: IPAddress, value: 10.0.0.20}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.0.0.1
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 8080}, {name: admin, port: 9081, targetPort: 8081}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v1, namespace: default}
spec:
  clusterIP: 10.0.0.2
  selector: {app: reviews, version: v1}
  ports: [{name: http, port: 9080, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: default}
spec:
  clusterIP: 10.0.0.3
  selector: {app: reviews, version: v2}
  ports: [{name: http, port: 9080, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-h2, namespace: default}
spec:
  clusterIP: 10.0.0.4
  selector: {app: reviews, version: v2}
  ports: [{name: web, port: 8080, appProtocol: kubernetes.io/h2c}]
---
apiVersion: v1
kind: Service
metadata: {name: shadow, namespace: other}
spec:
  clusterIP: 10.0.0.6
  selector: {app: shadow}
  ports: [{name: http, port: 9080, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: elsewhere, namespace: other}
spec:
  clusterIP: 10.0.0.7
  ports: [{port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1-0, namespace: default, labels: {app: reviews, version: v1}}
spec:
  containers: [{name: c, ports: [{containerPort: 8080}]}]
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2-0, namespace: default, labels: {app: reviews, version: v2}}
spec:
  containers: [{name: c, ports: [{containerPort: 8080}]}]
status: {podIP: 10.1.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: shadow-0, namespace: other, labels: {app: shadow}}
spec:
  containers: [{name: c, ports: [{containerPort: 8080}]}]
status: {podIP: 10.1.0.3}
"#;

/// `parentRefs` entries.
pub const REVIEWS: &str = r#"{group: "", kind: Service, name: reviews, namespace: default}"#;
pub const WAYPOINT: &str =
    r#"{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint, namespace: default}"#;

/// `reviews:9080`, the table most tests look at.
pub const REVIEWS_HTTP: &str = "10.0.0.1:9080";

pub fn spec() -> WaypointSpec {
    WaypointSpec {
        gateway: GatewayRef {
            namespace: "default".into(),
            name: "waypoint".into(),
        },
        hbone_port: 15008,
    }
}

/// An HTTPRoute (`kind` may be `GRPCRoute`) document; `rules` is YAML indented by two spaces.
pub fn route(kind: &str, ns: &str, name: &str, parents: &[&str], rules: &str) -> String {
    route_at(kind, ns, name, None, parents, rules)
}

/// [`route`] with a creation timestamp.
pub fn route_at(
    kind: &str,
    ns: &str,
    name: &str,
    created: Option<&str>,
    parents: &[&str],
    rules: &str,
) -> String {
    let created = created.map_or(String::new(), |c| format!(", creationTimestamp: \"{c}\""));
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {ns}{created}}}\n\
         spec:\n  parentRefs: [{}]\n  rules:\n{rules}\n",
        parents.join(", ")
    )
}

/// A rule sending `path` (a PathPrefix) to `backend` (port 9080).
pub fn to(path: &str, backend: &str) -> String {
    format!(
        "  - matches: [{{path: {{type: PathPrefix, value: \"{path}\"}}}}]\n    backendRefs: [{{name: {backend}, port: 9080}}]\n"
    )
}

/// A ReferenceGrant in `default` letting HTTPRoutes in `frontend` reference its Services.
pub const GRANT_FRONTEND: &str = "---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
    metadata: {name: frontend, namespace: default}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: frontend}]\n\
    \x20 to: [{group: \"\", kind: Service}]\n";

/// A rule sending `path` (a PathPrefix) to `backend` in `default` (port 9080), for routes in other namespaces.
pub fn to_default(path: &str, backend: &str) -> String {
    format!(
        "  - matches: [{{path: {{type: PathPrefix, value: \"{path}\"}}}}]\n    backendRefs: [{{name: {backend}, namespace: default, port: 9080}}]\n"
    )
}

pub fn parse_mesh(extra: &str) -> Result<Mesh, mesh::config::ConfigError> {
    Mesh::from_documents(
        &[("t.yaml".into(), format!("{BASE}{extra}"))],
        "cluster.local",
    )
}

/// Compiles [`BASE`] plus `extra`, panicking with the error.
pub fn load(extra: &str) -> (Snapshot, Vec<RouteStatus>) {
    let mesh = parse_mesh(extra).unwrap_or_else(|e| panic!("{e}"));
    compile_with_status(&mesh, &spec()).unwrap_or_else(|e| panic!("{e}"))
}

pub fn table<'a>(snap: &'a Snapshot, addr: &str) -> &'a RouteTable {
    snap.service(addr.parse().unwrap())
        .unwrap_or_else(|| panic!("no table for {addr}"))
}

/// Routes a request: (rule name, backend name or `None` for a redirect).
pub fn send(
    t: &RouteTable,
    caller_ns: &str,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<(String, Option<String>), ProxyError> {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let req = RequestView::new(&method, path_and_query, &h);
    let routed = waypoint::route::route(t, caller_ns, &req, 0)?;
    let rule = &t.rules[routed.rule];
    Ok((
        rule.name.clone(),
        routed.backend.map(|b| rule.backends[b].name.clone()),
    ))
}

/// A GET from `default`: the backend name.
pub fn backend_of(t: &RouteTable, path: &str) -> String {
    send(t, "default", "GET", path, &[])
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .1
        .unwrap_or_else(|| panic!("{path}: redirected"))
}

/// (route, parent) → (Accepted reason, ResolvedRefs reason), each prefixed `+` when True and `-` when False.
pub fn conditions(statuses: &[RouteStatus], route: &str, parent: &str) -> (String, String) {
    let s = statuses
        .iter()
        .find(|s| s.route == route && s.parent == parent)
        .unwrap_or_else(|| panic!("no status for {route} / {parent}: {statuses:#?}"));
    let c = |kind: &str| {
        let c = s.condition(kind).unwrap();
        let sign = if c.status == "True" { "+" } else { "-" };
        format!("{sign}{}", c.reason)
    };
    (c("Accepted"), c("ResolvedRefs"))
}
