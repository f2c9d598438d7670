//! Hot swap under load: weights change many times (and the config breaks once) while traffic flows;
//! no request fails, each new split takes effect, the broken config is reported and never serves.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use waypoint::demo::client::{run_load, Conn, Proto};
use waypoint::demo::DEMO_MANIFESTS;

fn with_weights(v1: u32, v2: u32) -> String {
    DEMO_MANIFESTS
        .replace("weight: 90}", &format!("weight: {v1}}}"))
        .replace("weight: 10}", &format!("weight: {v2}}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_swap_under_load_without_a_failed_request() {
    let mesh = Arc::new(common::mesh(None).await);
    let live = mesh.waypoint.live().clone();
    let t = mesh.target();

    // Continuous background load until told to stop (bounded by a request cap).
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (t, stop) = (t.clone(), stop.clone());
        tokio::spawn(async move {
            let mut total = waypoint::demo::client::Outcome::default();
            for _ in 0..200 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let o = run_load(&t, Proto::Http1, "/reviews", 200, 4, Duration::ZERO).await;
                total.requests += o.requests;
                total.ok += o.ok;
                total.failed += o.failed;
                for (k, v) in o.errors {
                    *total.errors.entry(k).or_default() += v;
                }
            }
            total
        })
    };

    let mut conn = Conn::open(&t, Proto::Http1).await.unwrap();
    for round in 0..8u32 {
        // Alternate all-v1 and all-v2 so each swap is observable request by request.
        let (v1, v2, want) = if round % 2 == 0 {
            (0, 100, "v2")
        } else {
            (100, 0, "v1")
        };
        let before = live.generation();
        mesh.write_manifests(&with_weights(v1, v2)).unwrap();
        assert!(
            common::eventually(Duration::from_secs(10), || live.generation() > before).await,
            "round {round}: the change was not picked up"
        );
        for _ in 0..20 {
            let r = conn.get(&t, "/reviews").await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(
                r.version.as_deref(),
                Some(want),
                "round {round}: new weights in effect"
            );
        }
        if round == 4 {
            // Break it: a negative weight. Rejected whole; the last good config keeps serving.
            let gen = live.generation();
            mesh.write_manifests(&with_weights(100, 0).replace("weight: 0}", "weight: -5}"))
                .unwrap();
            assert!(
                common::eventually(Duration::from_secs(10), || live.last_error().is_some()).await,
                "the broken config was not reported"
            );
            let err = live.last_error().unwrap();
            assert_eq!(err.object, "HTTPRoute default/reviews", "{err}");
            assert!(err.field.contains("weight"), "{err}");
            assert_eq!(
                live.generation(),
                gen,
                "a broken config must not be installed"
            );
            for _ in 0..20 {
                let r = conn.get(&t, "/reviews").await.unwrap();
                assert_eq!(
                    r.version.as_deref(),
                    Some(want),
                    "still serving the last good config"
                );
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let total = load.await.unwrap();
    assert!(total.ok > 0);
    assert_eq!(
        total.failed, 0,
        "failed requests during swaps: {:?}",
        total.errors
    );
    assert!(
        live.last_error().is_none(),
        "a good config clears the error"
    );
    if let Ok(mesh) = Arc::try_unwrap(mesh) {
        mesh.shutdown().await;
    }
}
