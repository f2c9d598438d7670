//! Hot swap: a policy file written into (or removed from) the watched manifests folder flips the verdict of the
//! running waypoint, without a restart; a policy that does not compile is refused whole, naming the policy,
//! and the last good policies keep deciding.

use std::time::{Duration, Instant};

use waypoint::demo::write_atomic;

use super::*;

/// How long a change may take to show (the watcher debounces ~50 ms).
const PATIENCE: Duration = Duration::from_secs(10);

/// The waypoint's config generation.
fn generation(tb: &Testbed) -> u64 {
    tb.waypoint(WAYPOINT).live().generation()
}

fn last_error(tb: &Testbed) -> Option<String> {
    tb.waypoint(WAYPOINT)
        .live()
        .last_error()
        .map(|e| e.to_string())
}

/// Waits (bounded) until the waypoint installed a config newer than `after`; fails on a new rejection.
async fn installed(tb: &Testbed, after: u64) {
    let deadline = Instant::now() + PATIENCE;
    let before = last_error(tb);
    while generation(tb) <= after {
        // A new error is a rejection (a cleared one is the swap under way).
        if let Some(now) = last_error(tb).filter(|e| Some(e) != before.as_ref()) {
            panic!("the waypoint rejected the change: {now}");
        }
        assert!(
            Instant::now() < deadline,
            "no new config within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_file_flips_the_verdict_live() {
    let tb = mesh("").await;
    let file = tb.manifests_dir.join("policy.yaml");
    assert_eq!(verdict(&get(&tb, "batch", API, "/").await), "200 api-0");

    // Only frontend may call api.
    let gen = generation(&tb);
    let allow = policy(
        "allow-frontend",
        &service("api"),
        &format!(
            "  action: ALLOW\n  rules:\n  - from: [{{source: {{principals: [\"{FRONTEND}\"]}}}}]"
        ),
    );
    write_atomic(&file, &allow).unwrap();
    installed(&tb, gen).await;
    assert_rbac_denied(&get(&tb, "batch", API, "/").await, "after the ALLOW");
    assert_eq!(verdict(&get(&tb, "frontend", API, "/").await), "200 api-0");

    // An open keep-alive connection sees the change on its next request too (the snapshot is per request).
    let client = tb.client("frontend");
    let req = Req::get(API, "/");
    let mut conn = client.connect(&req).await.unwrap();
    assert_eq!(verdict(&conn.send(&req).await.unwrap()), "200 api-0");
    let gen = generation(&tb);
    let both = allow.replace(
        &format!("principals: [\"{FRONTEND}\"]"),
        &format!("principals: [\"{BATCH}\"]"),
    );
    write_atomic(&file, &both).unwrap();
    installed(&tb, gen).await;
    assert_rbac_denied(&conn.send(&req).await.unwrap(), "frontend, same connection");
    assert_eq!(verdict(&get(&tb, "batch", API, "/").await), "200 api-0");

    // A policy that does not compile is refused whole: the last good one keeps deciding.
    let bad = both.replace("principals:", "ipBlocks: [not-a-cidr], principals:");
    let good_gen = generation(&tb);
    write_atomic(&file, &bad).unwrap();
    let refused = waypoint::testbed::eventually(PATIENCE, || {
        tb.waypoint(WAYPOINT).live().last_error().is_some()
    })
    .await;
    assert!(refused, "the bad policy was not refused");
    let error = tb
        .waypoint(WAYPOINT)
        .live()
        .last_error()
        .unwrap()
        .to_string();
    assert!(
        error.contains("allow-frontend") && error.contains("ipBlocks"),
        "the error names the policy and field: {error}"
    );
    assert_eq!(generation(&tb), good_gen);
    assert_eq!(verdict(&get(&tb, "batch", API, "/").await), "200 api-0");
    assert_rbac_denied(&get(&tb, "frontend", API, "/").await, "last good policy");

    // The file removed: api is open again.
    let gen = generation(&tb);
    std::fs::remove_file(&file).unwrap();
    installed(&tb, gen).await;
    assert_eq!(verdict(&get(&tb, "frontend", API, "/").await), "200 api-0");
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_policy_is_enforced_once_the_annotation_goes() {
    let deny = policy(
        "deny-guests",
        &service("api"),
        "  action: DENY\n  rules:\n  - from: [{source: {namespaces: [guest]}}]",
    );
    let dry = deny.replace(
        "namespace: shop}",
        "namespace: shop, annotations: {istio.io/dry-run: \"true\"}}",
    );
    let tb = mesh(&dry).await;
    assert_eq!(verdict(&get(&tb, "visitor", API, "/").await), "200 api-0");
    tb.apply(&with_base(&deny)).await.unwrap();
    assert_rbac_denied(&get(&tb, "visitor", API, "/").await, "enforced");
    assert_eq!(verdict(&get(&tb, "frontend", API, "/").await), "200 api-0");
    tb.shutdown().await;
}
