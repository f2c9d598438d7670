//! Criterion benchmarks of the request path's pure functions: route match, weighted pick, snapshot compile.
//!
//! `cargo bench --bench hot_path` (save a baseline with `-- --save-baseline before`, compare with
//! `-- --baseline before`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mesh::config::{GatewayRef, Mesh};
use waypoint::route;
use waypoint::snapshot::{compile, WaypointSpec};

fn demo_mesh(extra_services: usize) -> Mesh {
    let mut text = waypoint::demo::DEMO_MANIFESTS.to_string();
    for i in 0..extra_services {
        text.push_str(&format!(
            "\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: default}}\n\
             spec: {{clusterIP: 10.{}.{}.{}, ports: [{{port: 80, targetPort: 8080}}]}}\n",
            i / 65536 % 256,
            i / 256 % 256,
            i % 256
        ));
    }
    Mesh::from_documents(&[("mesh.yaml".into(), text)], "cluster.local").expect("valid manifests")
}

fn spec() -> WaypointSpec {
    WaypointSpec {
        gateway: GatewayRef {
            namespace: "default".into(),
            name: "waypoint".into(),
        },
        hbone_port: 15008,
    }
}

fn bench(c: &mut Criterion) {
    let snap = compile(&demo_mesh(0), &spec()).unwrap();
    let svc = snap.services.values().next().unwrap().clone();
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    g.bench_function("route/match_and_pick", |b| {
        let mut draw = 0u32;
        b.iter(|| {
            draw = draw.wrapping_add(7);
            black_box(route::route(&svc, black_box("/reviews/1?x=y"), draw).unwrap())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("snapshot");
    for n in [100usize, 1000] {
        let mesh = demo_mesh(n);
        g.bench_function(format!("snapshot/compile_{n}_mesh_services"), |b| {
            b.iter(|| black_box(compile(&mesh, &spec()).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
