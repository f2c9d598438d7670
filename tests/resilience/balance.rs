//! Load balancing from `DestinationRule.trafficPolicy.loadBalancer`, over the three pods of `echo`: consistent
//! hash on a header (sticky across requests and across a config swap that changes something unrelated),
//! LEAST_REQUEST (power of two choices: a slow pod gets fewer requests than round robin would give it) and
//! RANDOM (spread evenly, but not in a cycle).

use super::*;

const PODS: [&str; 3] = ["echo-0", "echo-1", "echo-2"];

fn lb(policy: &str) -> String {
    destination_rule("echo", &format!("    loadBalancer:\n{policy}"))
}

/// The pod answering each of `n` requests sent one after the other on one keep-alive connection.
async fn pods_answering(tb: &Testbed, req: &Req, n: usize) -> Vec<String> {
    let mut conn = client(tb).connect(req).await.expect("connect");
    let mut out = vec![];
    for _ in 0..n {
        let r = conn.send(req).await.expect("an answer");
        out.push(outcome(&r));
    }
    out
}

/// Which pod each user's 50 requests went to; panics when a user's requests went to more than one.
async fn placement(tb: &Testbed, users: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for u in users {
        let req = Req::get(ECHO, "/").header("x-user", u);
        let pods = pods_answering(tb, &req, 50).await;
        let mut distinct = pods.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 1, "user {u} was not sticky: {distinct:?}");
        assert!(
            PODS.contains(&distinct[0].as_str()),
            "user {u}: {distinct:?}"
        );
        out.insert(u.clone(), distinct[0].clone());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_a_header_is_sticky_across_requests_and_a_config_swap() {
    let dr = lb("      consistentHash: {httpHeaderName: x-user}\n");
    let tb = mesh(&dr).await;
    let users: Vec<String> = (0..12).map(|i| format!("user-{i}")).collect();
    let before = placement(&tb, &users).await;
    let mut used: Vec<_> = before.values().collect();
    used.sort();
    used.dedup();
    assert!(
        used.len() >= 2,
        "12 users all hashed to one pod: {before:?}"
    );

    // A swap that changes something unrelated (a route on another service) keeps every user where it was.
    let unrelated = http_route(
        "pair",
        "pair",
        "  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-swapped, value: yes}]}
    backendRefs: [{name: pair, port: 80}]
",
    );
    tb.apply(&with_base(&format!("{dr}\n---\n{unrelated}")))
        .await
        .expect("the swap is installed");
    let swapped = send(&tb, Req::get(PAIR, "/")).await;
    assert_eq!(
        swapped.header("x-swapped"),
        Some("yes"),
        "the new config is live"
    );
    let after = placement(&tb, &users).await;
    assert_eq!(
        before, after,
        "placement changed across an unrelated config swap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_less_to_a_slow_pod() {
    let tb = mesh(&lb("      simple: LEAST_REQUEST\n")).await;
    fault(&tb, "echo-0", Fault::Delay(MS(300)));
    // 6 clients, 15 requests each; round robin would give echo-0 a third (30) of them.
    let n = 90;
    let req = Req::get(ECHO, "/");
    let mut tasks = vec![];
    for _ in 0..6 {
        let (tb_client, req) = (client(&tb), req.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = tb_client.connect(&req).await.expect("connect");
            let mut out = vec![];
            for _ in 0..n / 6 {
                out.push(conn.send(&req).await.expect("an answer").status);
            }
            out
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().iter().all(|s| *s == 200));
    }
    let slow = requests(&tb, "echo-0");
    assert!(
        slow * 100 < n * 15,
        "echo-0 (300 ms per answer) got {slow} of {n} requests; least request keeps it under 15%, round robin gives 33%"
    );
    assert!(
        requests(&tb, "echo-1") > 0 && requests(&tb, "echo-2") > 0,
        "both fast pods serve"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_spreads_evenly_but_not_in_a_cycle() {
    let tb = mesh(&lb("      simple: RANDOM\n")).await;
    let n = 90;
    let seq = pods_answering(&tb, &Req::get(ECHO, "/"), n).await;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for p in &seq {
        *counts.entry(p.clone()).or_default() += 1;
    }
    // Binomial(90, 1/3): mean 30, sd 4.5; 5 sd either side.
    for pod in PODS {
        let got = counts.get(pod).copied().unwrap_or(0);
        assert!((8..=52).contains(&got), "{pod}: {got} of {n}: {counts:?}");
    }
    // Round robin never sends two requests in a row to the same pod; random does (all but surely: the chance of
    // no repeat in 90 draws is (2/3)^89, about 2e-16).
    let repeats = seq.windows(2).filter(|w| w[0] == w[1]).count();
    assert!(repeats > 0, "a strict cycle, not random: {seq:?}");
}
