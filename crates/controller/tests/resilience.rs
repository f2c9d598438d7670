//! The controller when things go wrong or are shared: a watch cut mid-stream, and two replicas of which only
//! the leader writes.

mod support;

use std::time::Duration;

use kube_source::testing::FakeApiServer;
use kube_source::{elect, Leadership, LeaseConfig};
use support::*;
use tokio::sync::watch;

#[tokio::test]
async fn a_gateway_created_after_a_watch_cut_is_still_reconciled() {
    let server = FakeApiServer::start().await.unwrap();
    let c = controller(&server, Leadership::always());
    server
        .wait_until("the Gateway watch open", PATIENCE, |s| {
            s.open_watches("gateways") > 0
        })
        .await
        .unwrap();
    server.cut_watches();
    server
        .apply(&gateway("ns", "late", "istio-waypoint", ""))
        .unwrap();
    wait_deployed(&server, "ns", "late").await;
    c.wait_for("a pass over the Gateway", PATIENCE, |r| r.gateways == 1)
        .await
        .unwrap();
    // It came back by watching again (resumed or relisted), not by luck: a new watch was opened.
    let watches_after_cut = server
        .requests()
        .iter()
        .filter(|r| r.is_watch() && r.path.ends_with("/gateways"))
        .count();
    assert!(watches_after_cut >= 2, "the Gateway watch was reopened");
}

#[tokio::test]
async fn only_the_leader_writes() {
    let server = FakeApiServer::start_with(&gateway("ns", "wp", "istio-waypoint", ""))
        .await
        .unwrap();
    let (a_tx, a_rx) = watch::channel(true);
    let (b_tx, b_rx) = watch::channel(false);
    let a = controller(&server, Leadership::from_receiver(a_rx));
    let b = controller(&server, Leadership::from_receiver(b_rx));
    wait_deployed(&server, "ns", "wp").await;
    // The follower has seen the Gateway and passed over it.
    let r = b
        .wait_for("the follower to see the Gateway", PATIENCE, |r| {
            r.gateways == 1
        })
        .await
        .unwrap();
    assert!(!r.leader && r.writes == 0, "{r:?}");
    let w = writes(&server);
    assert_eq!(
        w.len(),
        3 + 1,
        "3 creates and 1 status write, all by the leader: {:?}",
        describe(&w)
    );
    assert!(
        w.iter().all(|r| r.status == 200),
        "no lost races: {:?}",
        describe(&w)
    );

    // Leadership moves to b: a stops writing, b does the next work (deleting after the Gateway goes).
    a_tx.send_replace(false);
    a.wait_for("a to step down", PATIENCE, |r| !r.leader)
        .await
        .unwrap();
    b_tx.send_replace(true);
    b.wait_for("b to lead", PATIENCE, |r| r.leader)
        .await
        .unwrap();
    let a_passes = a.report().passes;
    server.delete("Gateway", "ns", "wp").unwrap();
    server
        .wait_until("wp's objects deleted", PATIENCE, |s| {
            ["Deployment", "Service", "ServiceAccount"]
                .iter()
                .all(|k| s.get(k, "ns", "wp").is_none())
        })
        .await
        .unwrap();
    let r = b
        .wait_for("b's deletes", PATIENCE, |r| r.gateways == 0)
        .await
        .unwrap();
    assert!(r.leader, "{r:?}");
    let a_now = a
        .wait_for("a to see the deletion", PATIENCE, |r| {
            r.passes > a_passes && r.gateways == 0
        })
        .await
        .unwrap();
    assert!(!a_now.leader && a_now.writes == 0, "{a_now:?}");
    let deletes = writes(&server)
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .count();
    assert_eq!(
        deletes,
        3,
        "each object deleted once: {:?}",
        describe(&writes(&server))
    );
}

#[tokio::test]
async fn with_a_real_lease_election_the_holder_writes_and_a_hand_over_moves_the_work() {
    let server = FakeApiServer::start().await.unwrap();
    let lease = |id: &str| LeaseConfig {
        lease_duration: Duration::from_secs(60),
        renew_deadline: Duration::from_secs(40),
        retry_every: Duration::from_millis(50),
        ..LeaseConfig::new("istio-system", "waypoint-controller", id)
    };
    let a_guard = elect(server.client().unwrap(), lease("a"));
    let mut a_leads = a_guard.leadership();
    tokio::time::timeout(PATIENCE, a_leads.wait_for(true))
        .await
        .unwrap();
    let b_guard = elect(server.client().unwrap(), lease("b"));
    let a = controller(&server, a_guard.leadership());
    let b = controller(&server, b_guard.leadership());

    server
        .apply(&gateway("ns", "wp", "istio-waypoint", ""))
        .unwrap();
    wait_deployed(&server, "ns", "wp").await;
    a.wait_for("a's pass", PATIENCE, |r| r.leader && r.gateways == 1)
        .await
        .unwrap();
    let r = b
        .wait_for("b's pass", PATIENCE, |r| r.gateways == 1)
        .await
        .unwrap();
    assert!(
        !r.leader && r.writes == 0,
        "b does not hold the Lease: {r:?}"
    );
    assert!(!b_guard.is_leader());
    let w = writes(&server);
    assert_eq!(w.len(), 3 + 1, "{:?}", describe(&w));

    // A clean shutdown of a hands the Lease over; b then does the deletes.
    drop(a);
    a_guard.release().await.unwrap();
    let mut b_leads = b_guard.leadership();
    tokio::time::timeout(PATIENCE, b_leads.wait_for(true))
        .await
        .unwrap();
    server.delete("Gateway", "ns", "wp").unwrap();
    server
        .wait_until("wp's objects deleted by b", PATIENCE, |s| {
            ["Deployment", "Service", "ServiceAccount"]
                .iter()
                .all(|k| s.get(k, "ns", "wp").is_none())
        })
        .await
        .unwrap();
    let deletes = writes(&server)
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .count();
    assert_eq!(deletes, 3);
}
