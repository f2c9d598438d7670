//! Figures of the push tier (run: `cargo test -p push --release --test figures -- --ignored --nocapture`):
//! for meshes of 1,000 and 10,000 services (generated in memory: 10 services per namespace, each namespace with
//! its waypoint, 2 pods per service), 100 waypoint and 20 ztunnel subscribers over real gRPC on loopback, each
//! acknowledging at once (no compile: this measures the push tier itself). Printed: the initial sync, the share
//! of the mesh each kind of subscriber receives, and the fan-out latency (publish → every concerned subscriber
//! acknowledged) and bytes per subscriber of a mesh-wide change and of a one-namespace change.

mod common;

use std::time::Instant;

use common::{serve, waypoint_sub, ztunnel_sub, GenMesh, PATIENCE};
use push::client::subscribe;
use push::{ControlPlane, DocumentSet, Stats};

const WAYPOINTS: usize = 100;
const ZTUNNELS: usize = 20;

fn raw_subscriber(endpoint: String, sub: push::proto::Subscribe) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut s = subscribe(&endpoint, sub, DocumentSet::default())
            .await
            .expect("subscribe");
        while let Ok(Some(r)) = s.next().await {
            if s.ack(r).await.is_err() {
                break;
            }
        }
    })
}

async fn synced(cp: &ControlPlane, v: u64) {
    let ok = cp
        .wait_for(PATIENCE * 5, |s| {
            s.nodes.len() == WAYPOINTS + ZTUNNELS && s.nodes.values().all(|n| n.synced_version == v)
        })
        .await;
    assert!(ok, "subscribers did not reach version {v}");
}

/// (updates, resources, bytes) sent between two stats, for node ids starting with `prefix`.
fn sent(before: &Stats, after: &Stats, prefix: &str) -> (u64, u64, u64) {
    let mut out = (0, 0, 0);
    for (id, a) in after.nodes.iter().filter(|(id, _)| id.starts_with(prefix)) {
        let b = before.nodes.get(id).cloned().unwrap_or_default();
        out.0 += a.updates - b.updates;
        out.1 += a.resources_sent - b.resources_sent;
        out.2 += a.bytes_sent - b.bytes_sent;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "figures: run with --release -- --ignored --nocapture"]
async fn fan_out_figures() {
    for services in [1_000, 10_000] {
        let mut gen = GenMesh::new(services / 10, 10, 2);
        let docs = gen.documents();
        let cp = ControlPlane::new();
        let t = Instant::now();
        let v1 = cp.publish(&docs).unwrap();
        let publish = t.elapsed();
        let set = cp.current();
        let (objects, bytes) = (set.objects.len(), set.bytes());
        let endpoint = serve(&cp).await;
        let t = Instant::now();
        let mut tasks: Vec<_> = (0..WAYPOINTS)
            .map(|n| {
                raw_subscriber(
                    endpoint.clone(),
                    waypoint_sub(&format!("wp-{n}"), &format!("ns-{n}")),
                )
            })
            .collect();
        tasks.extend(
            (0..ZTUNNELS)
                .map(|k| raw_subscriber(endpoint.clone(), ztunnel_sub(&format!("zt-{k}")))),
        );
        synced(&cp, v1).await;
        let initial = t.elapsed();
        let s0 = cp.stats();
        let (wp, zt) = (&s0.nodes["wp-0"], &s0.nodes["zt-0"]);
        println!("== mesh of {services} services: {objects} objects, {} KiB; publish (split + index) {publish:?}", bytes / 1024);
        println!(
            "initial sync of {} subscribers: {initial:?}, {} MiB sent",
            WAYPOINTS + ZTUNNELS,
            s0.bytes_sent >> 20
        );
        println!(
            "share per waypoint: {} objects ({:.2}%), {} KiB ({:.2}% of the bytes)",
            wp.subset_resources,
            100.0 * wp.subset_resources as f64 / objects as f64,
            wp.subset_bytes / 1024,
            100.0 * wp.subset_bytes as f64 / bytes as f64
        );
        println!(
            "share per ztunnel: {} objects ({:.2}%), {} KiB ({:.2}% of the bytes)",
            zt.subset_resources,
            100.0 * zt.subset_resources as f64 / objects as f64,
            zt.subset_bytes / 1024,
            100.0 * zt.subset_bytes as f64 / bytes as f64
        );

        // A mesh-wide change (the root namespace's AuthorizationPolicy): every subscriber is concerned.
        gen.rev = 1;
        let docs = gen.documents();
        let t = Instant::now();
        let v2 = cp.publish(&docs).unwrap();
        let published = t.elapsed();
        synced(&cp, v2).await;
        let fan_out = t.elapsed() - published;
        let s1 = cp.stats();
        let (wu, wr, wb) = sent(&s0, &s1, "wp-");
        let (zu, zr, zb) = sent(&s0, &s1, "zt-");
        println!(
            "mesh-wide change: publish {published:?}, then fan-out to all {} acknowledged in {fan_out:?}; per waypoint {} update, {} resource, {} bytes; per ztunnel {} update, {} resource, {} bytes",
            WAYPOINTS + ZTUNNELS,
            wu / WAYPOINTS as u64, wr / WAYPOINTS as u64, wb / WAYPOINTS as u64,
            zu / ZTUNNELS as u64, zr / ZTUNNELS as u64, zb / ZTUNNELS as u64
        );
        assert_eq!((wu, zu), (WAYPOINTS as u64, ZTUNNELS as u64));

        // A one-namespace change (a Service of ns-0): its waypoint and the ztunnels only.
        gen.touched = vec![(0, "x".into())];
        let docs = gen.documents();
        let t = Instant::now();
        let v3 = cp.publish(&docs).unwrap();
        let published = t.elapsed();
        synced(&cp, v3).await;
        let fan_out = t.elapsed() - published;
        let s2 = cp.stats();
        let (wu, _, wb) = sent(&s1, &s2, "wp-");
        let (zu, _, zb) = sent(&s1, &s2, "zt-");
        println!(
            "one-service change: publish {published:?}, then all in sync in {fan_out:?}; waypoints sent {wu} update(s), {wb} bytes in all; ztunnels {zu} updates, {} bytes each",
            zb / ZTUNNELS as u64
        );
        assert_eq!(wu, 1);
        for t in tasks {
            t.abort();
        }
    }
}

/// What a subscriber spends applying an update (parse + a trivial compile, the lanes included), for a ztunnel
/// holding the whole mesh: the first update (every object read) against a one-Service change (only that one
/// read again: the source's parse cache). Printed per mesh size, 5 changes each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "figures: run with --release -- --ignored --nocapture"]
async fn apply_figures() {
    use std::sync::Arc;

    use mesh::config::{Live, Mesh};
    for services in [1_000, 10_000] {
        let mut gen = GenMesh::new(services / 10, 10, 2);
        let cp = ControlPlane::new();
        cp.publish(&gen.documents()).unwrap();
        let endpoint = serve(&cp).await;
        let live = Arc::new(Live::new(0usize));
        let t = Instant::now();
        let guard = push::watch_push(
            endpoint.as_str(),
            ztunnel_sub("zt-0"),
            "cluster.local".into(),
            live.clone(),
            |m: &Mesh| Ok(m.services.len()),
        );
        let mut status = guard.status();
        common::until(&mut status, "the first update", |s| s.applied == 1).await;
        let first = t.elapsed();
        let objects = status.borrow().resources;
        let (mut changes, mut publishes) = (Vec::new(), Vec::new());
        for i in 1..=5 {
            gen.touched = vec![(i % gen.namespaces, format!("x{i}"))];
            let docs = gen.documents();
            let t = Instant::now();
            cp.publish(&docs).unwrap();
            let published = t.elapsed();
            common::until(&mut status, "the change", |s| s.applied == 1 + i as u64).await;
            changes.push(t.elapsed() - published);
            publishes.push(published);
        }
        changes.sort();
        publishes.sort();
        let s = status.borrow().clone();
        println!(
            "== {services} services, {objects} objects at the ztunnel: first update applied in {first:?}; \
             one-Service change, 5 runs: publish (median) {:?}, then applied in min {:?} median {:?} max {:?}; \
             objects parsed {} reused {}",
            publishes[2], changes[0], changes[2], changes[4], s.objects_parsed, s.objects_reused
        );
        assert_eq!(*live.load(), services);
    }
}
