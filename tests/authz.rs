//! Authorization through the real data path (issue 5): caller pod → ztunnel (node-a, SOCKS5) =HBONE, the
//! caller's own certificate=> waypoint (JWT → CUSTOM → DENY → ALLOW) =HBONE=> ztunnel (node-b) → echo.
//!
//! Every test starts its own [`Testbed`] from [`BASE`]: the waypoint of namespace `shop`; two services bound to
//! it, `api` and `web` (one echo pod each); three callers of different identities — `frontend` and `batch` in
//! `shop`, `visitor` in `guest` — plus the policies under test, attached with `targetRefs` to a Service or to
//! the waypoint Gateway. Verdicts are asserted on what the client got (200 from the echo, 403
//! `RBAC: access denied`, 401 with `www-authenticate`, an authorizer's own answer) and, when a request was let
//! through, on what the application saw.
//!
//! - [`principals`]: ALLOW by principal, DENY beats ALLOW, `notPrincipals`, `when` on headers and
//!   `source.namespace`, AUDIT, `istio.io/dry-run`, a policy on the waypoint Gateway.
//! - [`paths`]: encoded-path bypass attempts against a DENY on `/admin*` (Istio's normalization).
//! - [`forged`]: forged `x-forwarded-client-cert` and other identity headers change nothing.
//! - [`jwt`]: RequestAuthentication, inline `jwks` and `jwksUri` (a JWKS server on 127.0.0.1:0), bad, expired
//!   and missing tokens, claims in `when`, a key rotation through the running waypoint.
//! - [`custom`]: CUSTOM with a tonic ext_authz server (allow with headers, deny, timeout, down; fail modes).
//! - [`hot_swap`]: a policy file changed in the manifests folder flips the verdict without a restart.

use waypoint::testbed::{Req, Resp, Testbed, TestbedOptions};

#[path = "authz/custom.rs"]
mod custom;
#[path = "authz/forged.rs"]
mod forged;
#[path = "authz/hot_swap.rs"]
mod hot_swap;
#[path = "authz/jwt.rs"]
mod jwt;
#[path = "authz/paths.rs"]
mod paths;
#[path = "authz/principals.rs"]
mod principals;
#[path = "authz/tokens.rs"]
mod tokens;

/// The namespace of the services and of callers `frontend` and `batch`.
pub const NS: &str = "shop";
/// The waypoint's Gateway.
pub const WAYPOINT: &str = "shop/waypoint";
/// Service `api` (pod `api-0`), port 80.
pub const API: &str = "api.shop.svc.cluster.local";
/// Service `web` (pod `web-0`), port 80.
pub const WEB: &str = "web.shop.svc.cluster.local";
/// The callers' principals, as Istio writes them in policies.
pub const FRONTEND: &str = "cluster.local/ns/shop/sa/frontend";
pub const BATCH: &str = "cluster.local/ns/shop/sa/batch";
pub const VISITOR: &str = "cluster.local/ns/guest/sa/visitor";
/// The waypoint's own SPIFFE identity (the `By=` of the `x-forwarded-client-cert` it writes).
pub const WAYPOINT_ID: &str = "spiffe://cluster.local/ns/shop/sa/waypoint";
/// The body of Envoy's RBAC denial.
pub const RBAC_DENIED: &str = "RBAC: access denied";

/// The mesh every test starts from.
pub const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Namespace
metadata:
  name: guest
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: shop
  labels: {istio.io/waypoint-for: service}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
status:
  addresses:
  - {type: IPAddress, value: 127.0.0.20}
---
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: shop
  labels: {istio.io/use-waypoint: waypoint}
spec:
  clusterIP: 127.0.0.100
  selector: {app: api}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {istio.io/use-waypoint: waypoint}
spec:
  clusterIP: 127.0.0.101
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Pod
metadata: {name: api-0, namespace: shop, labels: {app: api}}
spec:
  nodeName: node-b
  serviceAccountName: api
  containers: [{name: echo, image: echo, ports: [{containerPort: 8080}]}]
status: {podIP: 127.0.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-b
  serviceAccountName: web
  containers: [{name: echo, image: echo, ports: [{containerPort: 8080}]}]
status: {podIP: 127.0.0.12}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: shop, labels: {app: frontend}}
spec:
  nodeName: node-a
  serviceAccountName: frontend
  containers: [{name: client, image: curl}]
status: {podIP: 127.0.0.50}
---
apiVersion: v1
kind: Pod
metadata: {name: batch, namespace: shop, labels: {app: batch}}
spec:
  nodeName: node-a
  serviceAccountName: batch
  containers: [{name: client, image: curl}]
status: {podIP: 127.0.0.51}
---
apiVersion: v1
kind: Pod
metadata: {name: visitor, namespace: guest, labels: {app: visitor}}
spec:
  nodeName: node-a
  serviceAccountName: visitor
  containers: [{name: client, image: curl}]
status: {podIP: 127.0.0.52}
"#;

/// A testbed of [`BASE`] plus `manifests`.
pub async fn mesh(manifests: &str) -> Testbed {
    mesh_with(manifests, TestbedOptions::default()).await
}

/// [`mesh`] with options (a mesh config file for CUSTOM providers).
pub async fn mesh_with(manifests: &str, opts: TestbedOptions) -> Testbed {
    match Testbed::start_with(&with_base(manifests), opts).await {
        Ok(tb) => tb,
        Err(e) => panic!("testbed did not start: {e:#}"),
    }
}

/// [`BASE`] plus `manifests`, as one text.
pub fn with_base(manifests: &str) -> String {
    format!("{BASE}\n---\n{manifests}")
}

/// `targetRefs` naming Service `name` of [`NS`].
pub fn service(name: &str) -> String {
    format!(r#"[{{kind: Service, group: "", name: {name}}}]"#)
}

/// `targetRefs` naming the waypoint Gateway.
pub fn gateway() -> String {
    "[{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]".into()
}

/// An AuthorizationPolicy `name` in [`NS`] with `targets` (a `targetRefs` list) and `body`: the rest of the
/// spec (`action`, `rules`, ...) as YAML indented two spaces.
pub fn policy(name: &str, targets: &str, body: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {NS}}}
spec:
  targetRefs: {targets}
{body}
---
"
    )
}

/// Sends `req` from pod `pod` on a new connection; panics when no answer arrives.
pub async fn send(tb: &Testbed, pod: &str, req: Req) -> Resp {
    let what = format!("{pod}: {} {}{}", req.method, req.authority, req.path);
    match tb.client(pod).send(req).await {
        Ok(r) => r,
        Err(e) => panic!("{what}: {e:#}"),
    }
}

/// `GET authority path` from `pod`.
pub async fn get(tb: &Testbed, pod: &str, authority: &str, path: &str) -> Resp {
    send(tb, pod, Req::get(authority, path)).await
}

/// A short verdict: `200 <echo pod>` when an echo answered, `403 RBAC` for Envoy's RBAC denial, else
/// `<status> <body>`.
pub fn verdict(r: &Resp) -> String {
    let body = String::from_utf8_lossy(&r.body);
    match (&r.echo, r.status) {
        (Some(e), s) => format!("{s} {}", e.pod),
        (None, 403) if body.trim_end() == RBAC_DENIED => "403 RBAC".into(),
        (None, s) => format!("{s} {}", body.trim_end()),
    }
}

/// Asserts `r` is Envoy's RBAC denial, exactly: 403, `RBAC: access denied`, no echo reached.
#[track_caller]
pub fn assert_rbac_denied(r: &Resp, what: &str) {
    assert_eq!(r.status, 403, "{what}: {}", verdict(r));
    assert_eq!(
        String::from_utf8_lossy(&r.body).trim_end(),
        RBAC_DENIED,
        "{what}"
    );
    assert!(r.echo.is_none(), "{what}: the application answered");
}
