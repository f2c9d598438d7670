//! Lease election between two replicas on the fake API server: one leads, the other takes over only after the
//! first stops renewing and the lease has run out, or at once when the first releases it.

use std::time::{Duration, Instant};

use kube_source::testing::FakeApiServer;
use kube_source::{elect, Leadership, LeaseConfig};

const PATIENCE: Duration = Duration::from_secs(10);

fn config(identity: &str, lease: Duration) -> LeaseConfig {
    LeaseConfig {
        lease_duration: lease,
        renew_deadline: lease * 2 / 3,
        retry_every: Duration::from_millis(50),
        ..LeaseConfig::new("istio-system", "waypoint-status", identity)
    }
}

async fn leads(mut l: Leadership, what: &str) {
    tokio::time::timeout(PATIENCE, l.wait_for(true))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what} to lead"));
}

fn holder(server: &FakeApiServer) -> String {
    let lease = server
        .get("Lease", "istio-system", "waypoint-status")
        .unwrap();
    lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// GETs of the Lease so far.
fn reads(server: &FakeApiServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/leases/waypoint-status"))
        .count()
}

#[tokio::test]
async fn one_leads_and_the_other_takes_over_when_it_stops_renewing() {
    let server = FakeApiServer::start().await.unwrap();
    let lease = Duration::from_secs(1);
    let a = elect(server.client().unwrap(), config("a", lease));
    leads(a.leadership(), "a").await;
    let b = elect(server.client().unwrap(), config("b", lease));
    // b reads the Lease many times (well past one renewal of a's) and never leads meanwhile.
    let before = reads(&server);
    server
        .wait_until("b to try several times", PATIENCE, |s| {
            reads(s) >= before + 12
        })
        .await
        .unwrap();
    assert!(a.is_leader() && !b.is_leader());
    assert_eq!(holder(&server), "a");
    let renewals = server.lease_writes().len();
    assert!(renewals >= 3, "a renews: {renewals} writes");

    // a stops renewing (as a crash would): b takes over once the lease has run out on its own clock.
    let stopped = Instant::now();
    drop(a);
    leads(b.leadership(), "b").await;
    let waited = stopped.elapsed();
    assert!(
        waited >= lease / 2,
        "took over after {waited:?}, before the lease could run out"
    );
    assert_eq!(holder(&server), "b");
    let record = server
        .get("Lease", "istio-system", "waypoint-status")
        .unwrap();
    assert_eq!(record["spec"]["leaseTransitions"], 1);
}

#[tokio::test]
async fn a_released_lease_is_taken_at_once() {
    let server = FakeApiServer::start().await.unwrap();
    // A lease far longer than the wait below: only the release can explain a fast takeover.
    let lease = Duration::from_secs(60);
    let a = elect(server.client().unwrap(), config("a", lease));
    leads(a.leadership(), "a").await;
    let b = elect(server.client().unwrap(), config("b", lease));
    let before = reads(&server);
    server
        .wait_until("b to try", PATIENCE, |s| reads(s) >= before + 3)
        .await
        .unwrap();
    assert!(!b.is_leader());
    a.release().await.unwrap();
    leads(b.leadership(), "b").await;
    assert_eq!(holder(&server), "b");
}

#[tokio::test]
async fn two_candidates_for_a_free_lease_elect_exactly_one() {
    let server = FakeApiServer::start().await.unwrap();
    let lease = Duration::from_secs(5);
    let a = elect(server.client().unwrap(), config("a", lease));
    let b = elect(server.client().unwrap(), config("b", lease));
    server
        .wait_until("several rounds", PATIENCE, |s| reads(s) >= 20)
        .await
        .unwrap();
    assert!(a.is_leader() != b.is_leader(), "exactly one leads");
    let winner = if a.is_leader() { "a" } else { "b" };
    assert_eq!(holder(&server), winner);
}
