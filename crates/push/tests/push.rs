//! The push tier end to end over real gRPC on loopback: hundreds of subscribers on one control plane, a change
//! reaching only those it concerns, a NACKed update, and a control-plane restart resumed without a resend.

mod common;

use std::sync::Arc;

use common::{serve, until, waypoint_sub, ztunnel_sub, GenMesh, Isolated, PATIENCE};
use mesh::config::{ConfigError, GatewayRef, Live, Mesh};
use push::{watch_push, ControlPlane, PushGuard};

/// The services a waypoint serves, as its compile step sees them.
fn waypoint_compile(
    ns: String,
) -> impl Fn(&Mesh) -> Result<Vec<String>, ConfigError> + Send + Sync {
    move |m: &Mesh| {
        let gw = GatewayRef {
            namespace: ns.clone(),
            name: "wp".into(),
        };
        let mut names: Vec<String> = m
            .services_of_waypoint(&gw)
            .iter()
            .map(|s| s.name.clone())
            .collect();
        names.sort();
        Ok(names)
    }
}

struct Waypoint {
    node: String,
    ns: usize,
    live: Arc<Live<Vec<String>>>,
    guard: PushGuard,
}

struct Ztunnel {
    node: String,
    live: Arc<Live<usize>>,
    guard: PushGuard,
}

fn start_waypoint(endpoint: &str, node: String, ns: usize) -> Waypoint {
    let live = Arc::new(Live::new(Vec::new()));
    let sub = waypoint_sub(&node, &format!("ns-{ns}"));
    let guard = watch_push(
        endpoint,
        sub,
        "cluster.local".into(),
        live.clone(),
        waypoint_compile(format!("ns-{ns}")),
    );
    Waypoint {
        node,
        ns,
        live,
        guard,
    }
}

fn start_ztunnel(endpoint: &str, node: String) -> Ztunnel {
    let live = Arc::new(Live::new(0));
    let sub = ztunnel_sub(&node);
    let guard = watch_push(
        endpoint,
        sub,
        "cluster.local".into(),
        live.clone(),
        |m: &Mesh| Ok(m.services.len()),
    );
    Ztunnel { node, live, guard }
}

async fn all_synced(cp: &ControlPlane, nodes: usize, version: u64) {
    let ok = cp
        .wait_for(PATIENCE, |s| {
            s.nodes.len() == nodes && s.nodes.values().all(|n| n.synced_version == version)
        })
        .await;
    assert!(
        ok,
        "not every subscriber reached version {version}: {:?}",
        cp.stats()
            .nodes
            .values()
            .filter(|n| n.synced_version != version)
            .count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_subscribers_get_only_what_concerns_them() {
    let mut gen = GenMesh::new(50, 4, 2);
    let cp = ControlPlane::new();
    let v1 = cp.publish(&gen.documents()).unwrap();
    let endpoint = serve(&cp).await;
    let waypoints: Vec<Waypoint> = (0..250)
        .map(|i| start_waypoint(&endpoint, format!("wp-{}-{}", i / 5, i % 5), i / 5))
        .collect();
    let ztunnels: Vec<Ztunnel> = (0..50)
        .map(|k| start_ztunnel(&endpoint, format!("node-{k}")))
        .collect();
    all_synced(&cp, 300, v1).await;

    for w in &waypoints {
        assert_eq!(
            *w.live.load(),
            ["svc-0", "svc-1", "svc-2", "svc-3"],
            "{}",
            w.node
        );
    }
    for z in &ztunnels {
        assert_eq!(*z.live.load(), 200, "{}", z.node);
    }
    let before = cp.stats();
    let total = cp.current().objects.len();
    let wp = &before.nodes["wp-0-0"];
    let zt = &before.nodes["node-0"];
    println!(
        "initial sync: waypoint {} of {total} objects ({} bytes), ztunnel {} ({} bytes), {} bytes in all",
        wp.subset_resources, wp.subset_bytes, zt.subset_resources, zt.subset_bytes, before.bytes_sent
    );
    assert!(
        wp.subset_resources < total / 20,
        "a waypoint receives a small share"
    );

    // One Service of ns-7 changes: its five waypoints and every ztunnel get that one object, nobody else anything.
    let generations: Vec<u64> = waypoints.iter().map(|w| w.live.generation()).collect();
    gen.touched = vec![(7, "x".into())];
    let v2 = cp.publish(&gen.documents()).unwrap();
    all_synced(&cp, 300, v2).await;
    let after = cp.stats();
    for (w, g) in waypoints.iter().zip(&generations) {
        let (b, a) = (&before.nodes[&w.node], &after.nodes[&w.node]);
        if w.ns == 7 {
            assert_eq!(
                (a.updates - b.updates, a.resources_sent - b.resources_sent),
                (1, 1),
                "{}",
                w.node
            );
            assert_eq!(w.live.generation(), g + 1);
            assert_eq!(
                w.guard.status().borrow().resources_received,
                u64::try_from(wp.subset_resources).unwrap() + 1
            );
        } else {
            assert_eq!(
                a.updates, b.updates,
                "{} was sent an update that does not concern it",
                w.node
            );
            assert_eq!(w.live.generation(), *g);
        }
    }
    for z in &ztunnels {
        let (b, a) = (&before.nodes[&z.node], &after.nodes[&z.node]);
        assert_eq!(
            (a.updates - b.updates, a.resources_sent - b.resources_sent),
            (1, 1),
            "{}",
            z.node
        );
        assert_eq!(z.guard.status().borrow().applied, 2);
    }
    assert_eq!(after.resources_sent - before.resources_sent, 55);
    assert_eq!(after.nacks, 0);
}

/// An update is parsed incrementally: the objects it did not change are not read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_rereads_only_the_objects_it_changed() {
    let mut gen = GenMesh::new(3, 4, 2);
    let cp = ControlPlane::new();
    cp.publish(&gen.documents()).unwrap();
    let endpoint = serve(&cp).await;
    let wp = start_waypoint(&endpoint, "wp-1".into(), 1);
    let mut status = wp.guard.status();
    until(&mut status, "the first config", |s| s.applied == 1).await;
    let objects = status.borrow().resources;
    assert!(objects > 4, "{:?}", *status.borrow());
    // A parse that has the cache reports when it ends: on a busy machine a lane's copy overtaken by the
    // fallback may finish after the update was applied, and both copies may parse with it in turn (the second
    // reusing everything), so only the count of objects read is exact.
    until(&mut status, "the first update read", |s| {
        s.objects_parsed >= objects as u64
    })
    .await;
    assert_eq!(
        status.borrow().objects_parsed,
        objects as u64,
        "the first update reads every object once"
    );

    gen.touched = vec![(1, "changed".into())];
    cp.publish(&gen.documents()).unwrap();
    until(&mut status, "the change", |s| s.applied == 2).await;
    until(&mut status, "the change parsed with the cache", |s| {
        s.objects_reused >= objects as u64 - 1
    })
    .await;
    let second = status.borrow().clone();
    assert_eq!(second.resources, objects);
    assert_eq!(
        second.objects_parsed,
        objects as u64 + 1,
        "only the changed Service is read again: {second:?}"
    );
    assert_eq!(*wp.live.load(), ["svc-0", "svc-1", "svc-2", "svc-3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_update_keeps_the_last_good_config_and_is_not_resent() {
    let mut gen = GenMesh::new(3, 2, 1);
    let cp = ControlPlane::new();
    cp.publish(&gen.documents()).unwrap();
    let endpoint = serve(&cp).await;
    let live = Arc::new(Live::new(Vec::<String>::new()));
    let good = waypoint_compile("ns-1".into());
    let compile = move |m: &Mesh| {
        if m.services
            .iter()
            .any(|s| s.labels.get("touched").map(String::as_str) == Some("bad"))
        {
            return Err(ConfigError {
                file: "push".into(),
                object: "Service ns-1/svc-0".into(),
                field: "metadata.labels.touched".into(),
                message: "rejected by the test's compile step".into(),
            });
        }
        good(m)
    };
    let guard = watch_push(
        endpoint.clone(),
        waypoint_sub("wp-1", "ns-1"),
        "cluster.local".into(),
        live.clone(),
        compile,
    );
    let zt = start_ztunnel(&endpoint, "node-0".into());
    let mut status = guard.status();
    until(&mut status, "the first config", |s| s.applied == 1).await;
    let generation = live.generation();
    assert_eq!(*live.load(), ["svc-0", "svc-1"]);

    gen.touched = vec![(1, "bad".into())];
    cp.publish(&gen.documents()).unwrap();
    until(&mut status, "the NACK", |s| s.nacked == 1).await;
    assert!(
        cp.wait_for(PATIENCE, |s| s.nacks == 1).await,
        "the server did not record the NACK"
    );
    let node = &cp.stats().nodes["wp-1"];
    assert!(
        node.last_nack
            .as_deref()
            .unwrap_or_default()
            .contains("rejected by the test"),
        "{node:?}"
    );
    assert_eq!(
        live.generation(),
        generation,
        "a rejected update must not be installed"
    );
    assert_eq!(*live.load(), ["svc-0", "svc-1"]);
    assert!(live
        .last_error()
        .is_some_and(|e| e.field == "metadata.labels.touched"));

    // A change elsewhere leaves wp-1's set equal to the one it rejected: the server does not send it again.
    gen.touched = vec![(1, "bad".into()), (2, "elsewhere".into())];
    let v3 = cp.publish(&gen.documents()).unwrap();
    assert!(
        cp.wait_for(PATIENCE, |s| s.nodes["wp-1"].seen_version == v3
            && s.nodes["node-0"].synced_version == v3)
            .await
    );
    assert_eq!(
        cp.stats().nodes["wp-1"].updates,
        2,
        "the rejected set was sent again"
    );

    // A fixed config is sent and installed.
    gen.touched = vec![(1, "good".into()), (2, "elsewhere".into())];
    cp.publish(&gen.documents()).unwrap();
    until(&mut status, "the fixed config", |s| s.applied == 2).await;
    assert_eq!(live.generation(), generation + 1);
    assert!(live.last_error().is_none());
    let s = cp.stats();
    assert_eq!(
        (
            s.nodes["wp-1"].updates,
            s.nodes["wp-1"].nacks,
            status.borrow().nacked
        ),
        (3, 1, 1)
    );
    assert_eq!(zt.guard.status().borrow().nacked, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_resumes_without_a_resend() {
    let mut gen = GenMesh::new(10, 3, 2);
    let cp1 = ControlPlane::new();
    let v = cp1.publish(&gen.documents()).unwrap();
    let (server, addr) = Isolated::start(cp1.clone(), "127.0.0.1:0".parse().unwrap());
    let endpoint = format!("http://{addr}");
    let waypoints: Vec<Waypoint> = (0..10)
        .map(|n| start_waypoint(&endpoint, format!("wp-{n}"), n))
        .collect();
    let ztunnels: Vec<Ztunnel> = (0..10)
        .map(|k| start_ztunnel(&endpoint, format!("node-{k}")))
        .collect();
    all_synced(&cp1, 20, v).await;
    let first = cp1.stats();
    let generations: Vec<u64> = waypoints
        .iter()
        .map(|w| w.live.generation())
        .chain(ztunnels.iter().map(|z| z.live.generation()))
        .collect();
    let guards: Vec<&PushGuard> = waypoints
        .iter()
        .map(|w| &w.guard)
        .chain(ztunnels.iter().map(|z| &z.guard))
        .collect();

    server.stop();
    for g in &guards {
        until(&mut g.status(), "the disconnect", |s| !s.connected).await;
    }
    let cp2 = ControlPlane::new();
    let v = cp2.publish(&gen.documents()).unwrap();
    let (server, _) = Isolated::start(cp2.clone(), addr);
    all_synced(&cp2, 20, v).await;
    let resumed = cp2.stats();
    println!(
        "first sync: {} resources, {} bytes; resume after restart: {} resources, {} bytes ({} empty updates)",
        first.resources_sent, first.bytes_sent, resumed.resources_sent, resumed.bytes_sent, resumed.updates
    );
    assert!(first.resources_sent > 0);
    assert_eq!(
        (resumed.resources_sent, resumed.bytes_sent),
        (0, 0),
        "the resume resent resources"
    );
    for g in &guards {
        assert_eq!(g.status().borrow().connects, 2);
    }
    let now: Vec<u64> = waypoints
        .iter()
        .map(|w| w.live.generation())
        .chain(ztunnels.iter().map(|z| z.live.generation()))
        .collect();
    assert_eq!(
        now, generations,
        "a resume with nothing new must not recompile"
    );

    // After the resume, changes flow as before: one object to whom it concerns.
    gen.touched = vec![(3, "x".into())];
    let v2 = cp2.publish(&gen.documents()).unwrap();
    all_synced(&cp2, 20, v2).await;
    assert_eq!(cp2.stats().resources_sent, 11);
    assert_eq!(waypoints[3].live.generation(), generations[3] + 1);
    server.stop();
}
