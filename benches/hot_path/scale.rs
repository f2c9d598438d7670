//! `snapshot/*`: a mesh of `n` services (100 of them bound to the waypoint) parsed and compiled, with what the
//! result costs in heap bytes (see [`super::alloc`]).
//!
//! The mesh, per service `svc-i` (namespace `ns-{i/100}`, 100 services per namespace, each namespace ambient):
//! a Service with a VIP and one port, two Pods (v1, v2) selected by it, and an HTTPRoute on it with two rules (a
//! `/api` prefix with a header match and a `RequestHeaderModifier` to the next service of the namespace, and a
//! 90/10 split between itself and that next service). Every `n/100`th service is bound to the waypoint
//! `ns-0/waypoint` (`istio.io/use-waypoint` + `istio.io/use-waypoint-namespace`); the others belong to the mesh
//! but not to this waypoint, as in a cluster with many waypoints.

use std::cell::OnceCell;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::PathBuf;

use criterion::{BatchSize, Criterion, SamplingMode};
use mesh::config::{GatewayRef, Mesh};
use waypoint::snapshot::{compile, Snapshot, WaypointSpec};

use super::alloc;

/// Services bound to the waypoint, whatever the mesh size.
pub const BOUND: usize = 100;
/// Services per namespace.
const PER_NAMESPACE: usize = 100;

pub fn spec() -> WaypointSpec {
    WaypointSpec {
        gateway: GatewayRef {
            namespace: "ns-0".into(),
            name: "waypoint".into(),
        },
        hbone_port: 15008,
    }
}

/// `10.(base + i/65536).(i/256).(i%256)`.
fn ip(base: usize, i: usize) -> String {
    format!("10.{}.{}.{}", base + i / 65536, i / 256 % 256, i % 256)
}

/// The manifests of a mesh of `n` services (`n` a multiple of [`BOUND`]), as one multi-document YAML text.
pub fn manifests(n: usize) -> String {
    assert!(n >= BOUND && n / BOUND * BOUND == n, "n = {n}");
    let every = n / BOUND;
    let mut t = String::with_capacity(n * 1600);
    for ns in 0..n.div_ceil(PER_NAMESPACE) {
        let _ = write!(
            t,
            "---\napiVersion: v1\nkind: Namespace\n\
             metadata: {{name: ns-{ns}, labels: {{istio.io/dataplane-mode: ambient}}}}\n"
        );
    }
    t.push_str(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {name: waypoint, namespace: ns-0, labels: {istio.io/waypoint-for: service}}\n\
         spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n\
         status: {addresses: [{type: IPAddress, value: 10.255.0.1}]}\n",
    );
    for i in 0..n {
        let ns = i / PER_NAMESPACE;
        let next = ns * PER_NAMESPACE + (i + 1) % PER_NAMESPACE;
        let labels = if i % every == 0 {
            "labels: {istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: ns-0}"
        } else {
            "labels: {}"
        };
        let _ = write!(
            t,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: ns-{ns}, {labels}}}\n\
             spec: {{clusterIP: {vip}, selector: {{app: svc-{i}}}, \
             ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n",
            vip = ip(0, i)
        );
        for v in 0..2 {
            let _ = write!(
                t,
                "---\napiVersion: v1\nkind: Pod\n\
                 metadata: {{name: svc-{i}-v{v}, namespace: ns-{ns}, labels: {{app: svc-{i}, version: v{v}}}}}\n\
                 spec: {{nodeName: node-{node}, serviceAccountName: svc-{i}, \
                 containers: [{{name: app, image: app, ports: [{{containerPort: 8080}}]}}]}}\n\
                 status: {{podIP: {pod}}}\n",
                node = i % 16,
                pod = ip(64, 2 * i + v)
            );
        }
        let _ = write!(
            t,
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: svc-{i}, namespace: ns-{ns}}}\n\
             spec:\n  parentRefs: [{{group: \"\", kind: Service, name: svc-{i}, port: 80}}]\n  rules:\n\
             \x20 - matches: [{{path: {{type: PathPrefix, value: /api}}, headers: [{{name: x-canary, value: \"true\"}}]}}]\n\
             \x20   filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-route, value: canary}}]}}}}]\n\
             \x20   backendRefs: [{{name: svc-{next}, port: 80}}]\n\
             \x20 - backendRefs: [{{name: svc-{i}, port: 80, weight: 90}}, {{name: svc-{next}, port: 80, weight: 10}}]\n"
        );
    }
    t
}

pub fn parse(text: &str) -> Mesh {
    Mesh::from_documents(
        &[(PathBuf::from("mesh.yaml"), text.to_string())],
        "cluster.local",
    )
    .expect("valid manifests")
}

/// What a snapshot holds: (services, rules, backends, endpoints, statuses).
fn counts(s: &Snapshot) -> (usize, usize, usize, usize, usize) {
    let rules = s.services.values().map(|t| t.rules.len()).sum();
    let backends = s.services.values().flat_map(|t| &t.rules);
    let (b, e) = backends.fold((0, 0), |(b, e), r| {
        let eps: usize = r.backends.iter().map(|b| b.endpoints.len()).sum();
        (b + r.backends.len(), e + eps)
    });
    (s.services.len(), rules, b, e, s.statuses.len())
}

/// One mesh size, built on first use.
struct Case {
    text: String,
    mesh: Mesh,
}

impl Case {
    /// Builds the mesh and prints what it and its snapshot cost (heap bytes still held after the build).
    fn new(n: usize) -> Case {
        let text = manifests(n);
        let (mesh, mesh_cost) = alloc::retained(|| parse(&text));
        let (snap, snap_cost) = alloc::retained(|| compile(&mesh, &spec()).unwrap());
        let (services, rules, backends, endpoints, statuses) = counts(&snap);
        assert_eq!(services, BOUND, "bound services at n = {n}");
        println!(
            "snapshot size n={n}: manifests {} KiB; mesh {} KiB in {} allocations; snapshot {} KiB in {} \
             allocations ({services} services, {rules} rules, {backends} backends, {endpoints} endpoints, \
             {statuses} route statuses)",
            text.len() / 1024,
            mesh_cost.bytes / 1024,
            mesh_cost.allocations,
            snap_cost.bytes / 1024,
            snap_cost.allocations,
        );
        Case { text, mesh }
    }
}

pub fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10).sampling_mode(SamplingMode::Flat);
    for n in [100usize, 1_000, 10_000] {
        // Built on first use, so filtering on other benches does not build (or need) the big meshes.
        let case = OnceCell::new();
        g.bench_function(format!("parse_{n}_services"), |b| {
            let case = case.get_or_init(|| Case::new(n));
            b.iter(|| black_box(parse(&case.text)))
        });
        g.bench_function(format!("compile_{n}_services"), |b| {
            let case = case.get_or_init(|| Case::new(n));
            // The snapshot is dropped outside the measurement.
            b.iter_batched(
                || (),
                |()| compile(&case.mesh, &spec()).unwrap(),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}
