//! Circuit breaking from `DestinationRule.trafficPolicy.connectionPool`: over `http2MaxRequests`, a request fails
//! fast with 503 and the `UO` flag (it is not queued: bounded memory), the destination never sees more than the
//! limit at once, and the breaker closes again as soon as requests finish.

use std::time::Instant;

use waypoint::testbed::eventually;

use super::*;

fn limited(max_requests: u32) -> String {
    destination_rule(
        "pair",
        &format!("    connectionPool:\n      http: {{http2MaxRequests: {max_requests}}}\n"),
    )
}

/// Requests in flight through the breaker of `service` (`namespace/name`), summed over the waypoints.
fn breaker_in_flight(tb: &Testbed, service: &str) -> u32 {
    tb.waypoints()
        .flat_map(|(_, w)| {
            let snap = w.live().load();
            let mut n = Vec::new();
            for table in snap.services.values() {
                for rule in &table.rules {
                    for b in &rule.backends {
                        if b.name.starts_with(&format!("{service}:")) {
                            n.push(b.breaker.in_flight());
                        }
                    }
                }
            }
            n.into_iter().max()
        })
        .reduce(|a, b| a + b)
        .unwrap_or_else(|| panic!("no backend of {service} in any waypoint"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_max_requests_fails_fast_with_uo_then_recovers() {
    let tb = mesh(&limited(1)).await;
    // Warm up both endpoints (connections pooled), then measure concurrency from here.
    for _ in 0..2 {
        assert_eq!(send(&tb, Req::get(PAIR, "/")).await.status, 200);
    }
    tb.echo("pair-0").reset_max_in_flight();
    tb.echo("pair-1").reset_max_in_flight();
    // A request's permit is released when the waypoint finishes with it, a moment after the client has its
    // answer: wait until the warm-up requests have let go of the only slot.
    let idle = eventually(Duration::from_secs(5), || {
        breaker_in_flight(&tb, "resilience/pair") == 0
    })
    .await;
    assert!(idle, "the warm-up requests never released their permits");

    // One slow request holds the only slot; four more arrive while it runs.
    let slow = Req::get(PAIR, "/slow").header("x-echo-delay-ms", "800");
    let first = {
        let c = client(&tb);
        let slow = slow.clone();
        tokio::spawn(async move { c.send(slow).await })
    };
    let holding = eventually(Duration::from_secs(5), || {
        breaker_in_flight(&tb, "resilience/pair") == 1
    })
    .await;
    assert!(holding, "the slow request never took the slot");
    let mut rest = vec![];
    for _ in 0..4 {
        let (c, slow) = (client(&tb), slow.clone());
        rest.push(tokio::spawn(async move {
            let started = Instant::now();
            (c.send(slow).await, started.elapsed())
        }));
    }
    let mut tripped = vec![];
    for t in rest {
        let (r, took) = t.await.unwrap();
        let r = r.expect("an answer");
        tripped.push((r.status, flags(&r), took));
    }
    let first = first.await.unwrap().expect("an answer");
    assert_eq!(
        first.status,
        200,
        "the request holding the slot: {}",
        outcome(&first)
    );
    for (status, flags, took) in &tripped {
        assert!(
            *status == 503 && flags.iter().any(|f| f == "UO"),
            "over the limit: 503 UO; got {tripped:?}"
        );
        assert!(*took < MS(300), "failed fast, not queued: {tripped:?}");
    }
    // The UO flag is counted for metrics, once per tripped request.
    let uo = waypoint::proxy::FLAGS
        .iter()
        .position(|f| *f == "UO")
        .unwrap();
    let counted: u64 = tb
        .waypoints()
        .map(|(_, w)| w.stats().flags[uo].load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(
        counted,
        tripped.len() as u64,
        "UO counted per tripped request"
    );
    // ... and by the limit that tripped, in the waypoint's metrics.
    let trips = || breaker_trips(&tb, "http2MaxRequests");
    assert!(
        waypoint::testbed::eventually(MS(2000), || trips() == tripped.len() as f64).await,
        "{} trips counted, {} tripped",
        trips(),
        tripped.len()
    );
    let most = tb.echo("pair-0").max_in_flight() + tb.echo("pair-1").max_in_flight();
    assert!(
        most <= 1,
        "the destination saw {most} requests at once (limit 1)"
    );

    // Recovery: with the slot free, requests pass again, one after another.
    let counts = tally_sequential(&tb, &Req::get(PAIR, "/"), 6).await;
    let ok: u64 = ["pair-0", "pair-1"]
        .iter()
        .filter_map(|p| counts.get(*p))
        .sum();
    assert_eq!(ok, 6, "{counts:?}");
}

/// A caller that sends its next request as soon as it has the answer never finds the slot still held: the
/// permit is released when the destination's answer ends, before its last bytes reach the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_requests_at_the_limit_never_trip() {
    let tb = mesh(&limited(1)).await;
    let counts = tally_sequential(&tb, &Req::get(PAIR, "/"), 200).await;
    let ok: u64 = ["pair-0", "pair-1"]
        .iter()
        .filter_map(|p| counts.get(*p))
        .sum();
    assert_eq!(ok, 200, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_is_per_destination_service() {
    // `pair` is limited to 2; `echo` has no DestinationRule: 6 slow requests to it all pass at once.
    let tb = mesh(&limited(2)).await;
    let slow = |host: &str| Req::get(host, "/").header("x-echo-delay-ms", "400");
    let mut tasks = vec![];
    for host in [ECHO, PAIR] {
        for _ in 0..6 {
            let (c, req, host) = (client(&tb), slow(host), host.to_string());
            tasks.push(tokio::spawn(async move {
                (host, c.send(req).await.map(|r| r.status))
            }));
        }
    }
    let mut by_host: BTreeMap<String, BTreeMap<u16, u32>> = BTreeMap::new();
    for t in tasks {
        let (host, status) = t.await.unwrap();
        *by_host
            .entry(host)
            .or_default()
            .entry(status.expect("an answer"))
            .or_default() += 1;
    }
    assert_eq!(by_host[ECHO].get(&200), Some(&6), "{by_host:?}");
    let pair = &by_host[PAIR];
    assert!(
        pair.get(&200).is_some_and(|n| (1..=2).contains(n)) && pair.get(&503) >= Some(&4),
        "{by_host:?}"
    );
}
