//! Outlier detection from `DestinationRule.trafficPolicy.outlierDetection`: an endpoint answering 5xx
//! `consecutive5xxErrors` times in a row is ejected (it stops receiving traffic), comes back after
//! `baseEjectionTime`, and the waypoint never ejects every endpoint of a service; a client leaving mid-request
//! is not the endpoint's failure.

use std::time::Instant;

use waypoint::testbed::eventually;

use super::*;

fn outlier(max_ejection_percent: u32) -> String {
    destination_rule(
        "pair",
        &format!(
            "    outlierDetection:
      consecutive5xxErrors: 2
      interval: 500ms
      baseEjectionTime: 2s
      maxEjectionPercent: {max_ejection_percent}
"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_5xx_eject_an_endpoint_which_comes_back_after_base_ejection_time() {
    let tb = mesh(&outlier(100)).await;
    fault(&tb, "pair-0", Fault::Status(500));
    let get = Req::get(PAIR, "/");

    // Round robin: pair-0 gets every other request until its second 500 in a row ejects it.
    let first = tally_sequential(&tb, &get, 10).await;
    let errors = first.get("pair-0 status 500").copied().unwrap_or(0);
    assert!(
        (2..=3).contains(&errors),
        "2 consecutive 5xx eject pair-0 (one more may be in flight): {first:?}"
    );
    let ejected_at = Instant::now();
    // Counted when the request that ejected it ends (after its answer went out).
    assert!(
        eventually(Duration::from_secs(2), || {
            metric(&tb, "waypoint_outlier_ejections_total") == 1.0
        })
        .await,
        "one ejection counted"
    );
    assert_eq!(metric(&tb, "waypoint_outlier_ejected_endpoints"), 1.0);

    // Ejected: pair-0 receives nothing.
    let seen = requests(&tb, "pair-0");
    let during = tally_sequential(&tb, &get, 20).await;
    assert_eq!(during.get("pair-1"), Some(&20), "{during:?}");
    assert_eq!(
        requests(&tb, "pair-0"),
        seen,
        "an ejected endpoint gets no traffic"
    );

    // Healthy again; it returns once baseEjectionTime (2 s) has passed, not before.
    fault(&tb, "pair-0", Fault::None);
    let mut back = None;
    while ejected_at.elapsed() < Duration::from_secs(6) {
        let r = send(&tb, get.clone()).await;
        if r.pod() == Some("pair-0") {
            back = Some(ejected_at.elapsed());
            break;
        }
        tokio::time::sleep(MS(50)).await;
    }
    let back = back.expect("pair-0 never came back within 6 s (baseEjectionTime 2 s)");
    assert_eq!(
        metric(&tb, "waypoint_outlier_ejected_endpoints"),
        0.0,
        "back: no endpoint ejected now"
    );
    assert!(
        back >= MS(1800),
        "back after {back:?}, before baseEjectionTime"
    );
    let after = tally_sequential(&tb, &get, 10).await;
    assert!(
        after.contains_key("pair-0") && after.contains_key("pair-1"),
        "{after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_failing_is_never_every_endpoint_ejected() {
    let tb = mesh(&outlier(100)).await;
    fault(&tb, "pair-0", Fault::Status(500));
    fault(&tb, "pair-1", Fault::Status(500));
    let counts = tally_sequential(&tb, &Req::get(PAIR, "/"), 20).await;
    // The client keeps getting the destination's own answers, never "no healthy upstream".
    let from_echo: u64 = ["pair-0 status 500", "pair-1 status 500"]
        .iter()
        .filter_map(|k| counts.get(*k))
        .sum();
    assert_eq!(from_echo, 20, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successes_reset_the_consecutive_count() {
    let tb = mesh(&outlier(100)).await;
    // pair-0 fails every other request it gets: never 2 in a row, so never ejected.
    let flaky = |i: usize| {
        let r = Req::get(PAIR, "/").header("x-echo-controls-for", "pair-0");
        if i.is_multiple_of(4) {
            r.header("x-echo-status", "500")
        } else {
            r
        }
    };
    let mut by_pod: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..24 {
        let r = send(&tb, flaky(i)).await;
        *by_pod
            .entry(r.pod().unwrap_or("none").to_string())
            .or_default() += 1;
    }
    assert!(
        by_pod.get("pair-0").is_some_and(|n| *n >= 10),
        "pair-0 was ejected without 2 consecutive errors: {by_pod:?}"
    );
    assert_eq!(metric(&tb, "waypoint_outlier_ejections_total"), 0.0);
}

/// A client that leaves while its request waits is not the endpoint's failure: with ejection after a single
/// 5xx, two clients leaving mid-request (one per endpoint, round robin) eject nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_mid_request_eject_nobody() {
    let rule = destination_rule(
        "pair",
        "    outlierDetection:
      consecutive5xxErrors: 1
      interval: 500ms
      baseEjectionTime: 30s
      maxEjectionPercent: 100
",
    );
    let tb = mesh(&rule).await;
    for pod in ["pair-0", "pair-1"] {
        fault(&tb, pod, Fault::Delay(MS(300)));
    }
    let dc = waypoint::proxy::FLAGS
        .iter()
        .position(|f| *f == "DC")
        .unwrap();
    let gone =
        || tb.waypoint(WAYPOINT).stats().flags[dc].load(std::sync::atomic::Ordering::Relaxed);
    let before = gone();
    for i in 0..2 {
        let id = request_id(&format!("leave-{i}"));
        let req = Req::get(PAIR, "/").header("x-echo-request-id", &id);
        leave_mid_request(&tb, &req, &id).await;
    }
    for pod in ["pair-0", "pair-1"] {
        fault(&tb, pod, Fault::None);
    }
    // Until the waypoint has ended both requests as "downstream gone" (DC), at most 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gone() < before + 2 && Instant::now() < deadline {
        tokio::time::sleep(MS(5)).await;
    }
    assert_eq!(
        gone(),
        before + 2,
        "the waypoint did not end both requests as DC"
    );
    let after = tally_sequential(&tb, &Req::get(PAIR, "/"), 10).await;
    assert_eq!(
        (after.get("pair-0"), after.get("pair-1")),
        (Some(&5), Some(&5)),
        "an endpoint was ejected for a client leaving: {after:?}"
    );
}
