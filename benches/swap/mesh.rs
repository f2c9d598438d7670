//! The swapped config: `n` HTTPRoutes, each on its own Service bound to the waypoint, in a mesh the
//! [`waypoint::testbed::Testbed`] can run (every bound address is a `127.0.0.x`, so it needs no root).
//!
//! `hot_path/scale.rs` builds a larger mesh for the offline compile benches, but its pods sit on `10.64.x.x`
//! (nothing could serve them on loopback) and only 100 services are bound to the waypoint; here every route is
//! the waypoint's, and all of them share two echo pods:
//!
//! - namespace `bench` (ambient), Gateway `bench/waypoint` at `127.0.0.20`, its pod `waypoint-0`;
//! - a client pod `client-0` (`127.0.0.50`, node-a) and two echo pods `echo-a-0` / `echo-b-0` (`127.0.0.11` /
//!   `127.0.0.12`, node-b, container port 8080) behind Services `echo-a` / `echo-b` (not bound);
//! - Services `svc-0` … `svc-{n-1}` (VIPs `10.0.x.y`, never bound, port 80), each bound to the waypoint, each with
//!   an HTTPRoute of two rules, as in `scale.rs`: a `/api` prefix with a header match and a
//!   `RequestHeaderModifier` to `echo-b`, and a 90/10 split `echo-a` / `echo-b` — except `svc-0`'s (the probe),
//!   whose default rule goes to `echo-a` only and sets `x-config-generation: <gen>`, the value each round changes.

use std::fmt::Write as _;

/// Where the probe route's change shows: a request header the echo reports back.
pub const GEN_HEADER: &str = "x-config-generation";
/// The namespace of everything.
pub const NS: &str = "bench";

/// The VIP of `svc-i` (as written and as running: VIPs are never bound, so never rewritten).
pub fn vip(i: usize) -> String {
    format!("10.0.{}.{}", (i + 1) / 256, (i + 1) % 256)
}

/// The authority a client dials for `svc-i`.
pub fn authority(i: usize) -> String {
    format!("{}:80", vip(i))
}

/// The manifests with `routes` routes, the probe route setting [`GEN_HEADER`] to `gen`.
pub fn manifests(routes: usize, gen: u64) -> String {
    assert!((1..60_000).contains(&routes), "routes = {routes}");
    let mut t = String::with_capacity(routes * 1100 + 4096);
    let _ = write!(
        t,
        "apiVersion: v1\nkind: Namespace\n\
         metadata: {{name: {NS}, labels: {{istio.io/dataplane-mode: ambient}}}}\n\
         ---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: waypoint, namespace: {NS}, labels: {{istio.io/waypoint-for: service}}}}\n\
         spec: {{gatewayClassName: istio-waypoint, listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]}}\n\
         status: {{addresses: [{{type: IPAddress, value: 127.0.0.20}}]}}\n\
         ---\napiVersion: v1\nkind: Pod\n\
         metadata: {{name: waypoint-0, namespace: {NS}, labels: {{gateway.networking.k8s.io/gateway-name: waypoint}}}}\n\
         spec: {{nodeName: node-c, serviceAccountName: waypoint, containers: [{{name: istio-proxy, image: waypoint}}]}}\n\
         status: {{podIP: 127.0.0.20}}\n\
         ---\napiVersion: v1\nkind: Pod\n\
         metadata: {{name: client-0, namespace: {NS}, labels: {{app: client}}}}\n\
         spec: {{nodeName: node-a, serviceAccountName: client, containers: [{{name: client, image: client}}]}}\n\
         status: {{podIP: 127.0.0.50}}\n"
    );
    for (v, ip) in [("a", 11), ("b", 12)] {
        let _ = write!(
            t,
            "---\napiVersion: v1\nkind: Pod\n\
             metadata: {{name: echo-{v}-0, namespace: {NS}, labels: {{app: echo, version: {v}}}}}\n\
             spec: {{nodeName: node-b, serviceAccountName: echo, \
             containers: [{{name: echo, image: echo, ports: [{{containerPort: 8080}}]}}]}}\n\
             status: {{podIP: 127.0.0.{ip}}}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: echo-{v}, namespace: {NS}}}\n\
             spec: {{clusterIP: 10.1.0.{ip}, selector: {{app: echo, version: {v}}}, \
             ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n"
        );
    }
    for i in 0..routes {
        let _ = write!(
            t,
            "---\napiVersion: v1\nkind: Service\n\
             metadata: {{name: svc-{i}, namespace: {NS}, labels: {{istio.io/use-waypoint: waypoint}}}}\n\
             spec: {{clusterIP: {vip}, selector: {{app: echo}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n\
             ---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: svc-{i}, namespace: {NS}}}\n\
             spec:\n  parentRefs: [{{group: \"\", kind: Service, name: svc-{i}, port: 80}}]\n  rules:\n\
             \x20 - matches: [{{path: {{type: PathPrefix, value: /api}}, headers: [{{name: x-canary, value: \"true\"}}]}}]\n\
             \x20   filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-route, value: canary}}]}}}}]\n\
             \x20   backendRefs: [{{name: echo-b, port: 80}}]\n",
            vip = vip(i)
        );
        if i == 0 {
            let _ = write!(
                t,
                "\x20 - filters: [{{type: RequestHeaderModifier, \
                 requestHeaderModifier: {{set: [{{name: {GEN_HEADER}, value: \"{gen}\"}}]}}}}]\n\
                 \x20   backendRefs: [{{name: echo-a, port: 80}}]\n"
            );
        } else {
            t.push_str(
                "\x20 - backendRefs: [{name: echo-a, port: 80, weight: 90}, {name: echo-b, port: 80, weight: 10}]\n",
            );
        }
    }
    t
}
