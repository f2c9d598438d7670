//! The recipes in `examples/recipes/`, each run as shipped on the mesh of `examples/recipes/mesh.yaml`.

use std::time::Duration;

use waypoint::testbed::{eventually, Testbed};

use super::*;

const MESH: &str = include_str!("../../examples/recipes/mesh.yaml");
const CANARY_90_10: &str = include_str!("../../examples/recipes/canary-90-10.yaml");
const CANARY_50_50: &str = include_str!("../../examples/recipes/canary-50-50.yaml");
const CANARY_100: &str = include_str!("../../examples/recipes/canary-100.yaml");
const HEADER_TO_V2: &str = include_str!("../../examples/recipes/header-to-v2.yaml");
const PATH_REWRITE: &str = include_str!("../../examples/recipes/path-rewrite.yaml");
const MIRROR: &str = include_str!("../../examples/recipes/mirror-to-shadow.yaml");
const GRPC_SPLIT: &str = include_str!("../../examples/recipes/grpc-split.yaml");

const REVIEWS: &str = "reviews.default.svc.cluster.local:9080";
const RATINGS: &str = "ratings.default.svc.cluster.local:9090";
const CLIENT: &str = "productpage-0";

fn with_mesh(recipe: &str) -> String {
    format!("{MESH}\n---\n{recipe}")
}

async fn recipe_mesh(recipe: &str) -> Testbed {
    match Testbed::start(&with_mesh(recipe)).await {
        Ok(tb) => tb,
        Err(e) => panic!("testbed did not start: {e:#}"),
    }
}

async fn tally_from(tb: &Testbed, req: &Req, n: usize) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for r in tb.client(CLIENT).send_many(req, n, 4).await {
        let key = r.map_or_else(|_| "error".to_string(), |r| outcome(&r));
        *counts.entry(key).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipe_canary_90_10_then_50_50_then_100() {
    let tb = recipe_mesh(CANARY_90_10).await;
    let req = Req::get(REVIEWS, "/reviews");
    let n = 400;
    let counts = tally_from(&tb, &req, n).await;
    assert_share(&counts, "reviews-v2-0", n, 0.1);
    assert_share(&counts, "reviews-v1-0", n, 0.9);

    tb.apply(&with_mesh(CANARY_50_50))
        .await
        .expect("50/50 applied");
    let counts = tally_from(&tb, &req, n).await;
    assert_share(&counts, "reviews-v2-0", n, 0.5);

    tb.apply(&with_mesh(CANARY_100)).await.expect("100 applied");
    let counts = tally_from(&tb, &req, 100).await;
    assert_eq!(counts.get("reviews-v2-0"), Some(&100), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipe_header_based_routing_to_v2() {
    let tb = recipe_mesh(HEADER_TO_V2).await;
    for _ in 0..5 {
        let jason = send_from(
            &tb,
            CLIENT,
            Req::get(REVIEWS, "/reviews").header("end-user", "jason"),
        )
        .await;
        assert_eq!(outcome(&jason), "reviews-v2-0");
        let other = send_from(
            &tb,
            CLIENT,
            Req::get(REVIEWS, "/reviews").header("end-user", "alice"),
        )
        .await;
        assert_eq!(outcome(&other), "reviews-v1-0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipe_path_rewrite() {
    let tb = recipe_mesh(PATH_REWRITE).await;
    let r = send_from(&tb, CLIENT, Req::get(REVIEWS, "/api/v1/reviews/1?full=1")).await;
    assert_eq!(outcome(&r), "reviews-v1-0");
    assert_eq!(r.echo().path, "/reviews/1?full=1");
    let plain = send_from(&tb, CLIENT, Req::get(REVIEWS, "/reviews/2")).await;
    assert_eq!(plain.echo().path, "/reviews/2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipe_mirror_to_a_shadow_service() {
    let tb = recipe_mesh(MIRROR).await;
    for i in 0..5 {
        let r = send_from(&tb, CLIENT, Req::get(REVIEWS, &format!("/reviews/{i}"))).await;
        assert_eq!(outcome(&r), "reviews-v1-0");
    }
    let shadow = tb.echo("reviews-shadow-0");
    assert!(
        eventually(Duration::from_secs(5), || shadow.requests() == 5).await,
        "the shadow saw {} of 5 copies",
        shadow.requests()
    );
    let paths: Vec<_> = shadow.seen().into_iter().map(|e| e.path).collect();
    assert!(paths.contains(&"/reviews/3".to_string()), "{paths:?}");
    assert_eq!(tb.echo("reviews-v2-0").requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipe_grpc_split() {
    let tb = recipe_mesh(GRPC_SPLIT).await;
    let n = 300;
    let call = Req::grpc(RATINGS, "bookinfo.Ratings", "Get", b"{}");
    let counts = tally_from(&tb, &call, n).await;
    assert_share(&counts, "ratings-v2-0", n, 0.2);
    assert_share(&counts, "ratings-v1-0", n, 0.8);
    let one = send_from(&tb, CLIENT, call).await;
    assert_eq!(one.grpc_status(), Some("0"));
}
