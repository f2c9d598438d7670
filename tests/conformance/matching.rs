//! Matching: path `Exact`, `PathPrefix` (whole segments), `RegularExpression`; headers (Exact,
//! RegularExpression); query parameters; method; everything combined; several matches of a rule (OR); and the
//! specification's precedence between rules and between routes.

use super::*;

fn get(path: &str) -> Req {
    Req::get(ECHO, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_exact() {
    let tb = mesh(&http_route(
        "exact",
        "  - matches: [{path: {type: Exact, value: /exact}}]
    backendRefs: [{name: echo-v2, port: 80}]
  - backendRefs: [{name: echo-v1, port: 80}]
",
    ))
    .await;
    expect_outcomes(
        &tb,
        vec![
            (get("/exact"), "echo-v2-0"),
            (get("/exact?x=y"), "echo-v2-0"),
            (get("/exact/"), "echo-v1-0"),
            (get("/exactly"), "echo-v1-0"),
            (get("/"), "echo-v1-0"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_prefix_matches_whole_segments() {
    let tb = mesh(&http_route(
        "prefix",
        "  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /v3/}}]
    backendRefs: [{name: echo-v3, port: 80}]
  - backendRefs: [{name: echo-v1, port: 80}]
",
    ))
    .await;
    expect_outcomes(
        &tb,
        vec![
            (get("/v2"), "echo-v2-0"),
            (get("/v2/"), "echo-v2-0"),
            (get("/v2/deep/er"), "echo-v2-0"),
            (get("/v2?q=1"), "echo-v2-0"),
            (get("/v2example"), "echo-v1-0"),
            // A trailing `/` in the prefix is ignored: `/v3/` matches `/v3` and below.
            (get("/v3"), "echo-v3-0"),
            (get("/v3/x"), "echo-v3-0"),
            (get("/v3x"), "echo-v1-0"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_regular_expression_is_anchored() {
    let tb = mesh(&http_route(
        "regex",
        "  - matches: [{path: {type: RegularExpression, value: '/regex/[0-9]+'}}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: RegularExpression, value: '/regex/[a-z]+'}}]
    backendRefs: [{name: echo-v3, port: 80}]
",
    ))
    .await;
    // Where regex paths rank against prefixes is implementation-specific, so no other rule competes here; a
    // request no rule matches gets 404.
    expect_outcomes(
        &tb,
        vec![
            (get("/regex/123"), "echo-v2-0"),
            (get("/regex/123?x=1"), "echo-v2-0"),
            (get("/regex/abc"), "echo-v3-0"),
            (get("/x/regex/1"), "status 404"),
            (get("/regex/12/more"), "status 404"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_exact_all_must_hold() {
    let tb = mesh(&http_route(
        "headers",
        "  - matches: [{headers: [{name: version, value: two}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{headers: [{name: version, value: three}, {name: color, value: blue}]}]
    backendRefs: [{name: echo-v3, port: 80}]
  - backendRefs: [{name: echo-v1, port: 80}]
",
    ))
    .await;
    expect_outcomes(
        &tb,
        vec![
            (get("/").header("version", "two"), "echo-v2-0"),
            (get("/").header("Version", "two"), "echo-v2-0"),
            (get("/").header("version", "TWO"), "echo-v1-0"),
            (get("/"), "echo-v1-0"),
            (
                get("/").header("version", "three").header("color", "blue"),
                "echo-v3-0",
            ),
            (get("/").header("version", "three"), "echo-v1-0"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_regular_expression() {
    let tb = mesh(&http_route(
        "headers-regex",
        "  - matches: [{headers: [{type: RegularExpression, name: x-env, value: 'canary|beta-[0-9]+'}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - backendRefs: [{name: echo-v1, port: 80}]
",
    ))
    .await;
    expect_outcomes(
        &tb,
        vec![
            (get("/").header("x-env", "canary"), "echo-v2-0"),
            (get("/").header("x-env", "beta-7"), "echo-v2-0"),
            (get("/").header("x-env", "beta-x"), "echo-v1-0"),
            (get("/").header("x-env", "prod"), "echo-v1-0"),
            (get("/"), "echo-v1-0"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameters() {
    let tb = mesh(&http_route(
        "query",
        "  - matches: [{queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{queryParams: [{type: RegularExpression, name: color, value: 'bl.*'}]}]
    backendRefs: [{name: echo-v3, port: 80}]
  - backendRefs: [{name: echo-v1, port: 80}]
",
    ))
    .await;
    expect_outcomes(
        &tb,
        vec![
            (get("/?animal=whale"), "echo-v2-0"),
            (get("/path?x=1&animal=whale"), "echo-v2-0"),
            (get("/?animal=dolphin"), "echo-v1-0"),
            (get("/?Animal=whale"), "echo-v1-0"),
            (get("/?color=blue"), "echo-v3-0"),
            (get("/?color=red"), "echo-v1-0"),
            // Both rules match with one parameter each: rule order decides.
            (get("/?animal=whale&color=blue"), "echo-v2-0"),
            (get("/"), "echo-v1-0"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method() {
    let tb = mesh(&http_route(
        "method",
        "  - matches: [{method: POST}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{method: GET, path: {type: PathPrefix, value: /get-only}}]
    backendRefs: [{name: echo-v3, port: 80}]
  - backendRefs: [{name: echo-v1, port: 80}]
",
    ))
    .await;
    expect_outcomes(
        &tb,
        vec![
            (Req::new("POST", ECHO, "/"), "echo-v2-0"),
            (get("/"), "echo-v1-0"),
            (Req::new("PUT", ECHO, "/"), "echo-v1-0"),
            (get("/get-only"), "echo-v3-0"),
            (Req::new("POST", ECHO, "/get-only"), "echo-v2-0"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_combined_and_several_matches_or() {
    let tb = mesh(&http_route(
        "combined",
        "  - matches:
    - path: {type: PathPrefix, value: /combo}
      method: POST
      headers: [{name: x-combo, value: 'yes'}]
      queryParams: [{name: q, value: '1'}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches:
    - path: {type: Exact, value: /either}
    - headers: [{name: x-either, value: 'yes'}]
    backendRefs: [{name: echo-v3, port: 80}]
  - backendRefs: [{name: echo-v1, port: 80}]
",
    ))
    .await;
    let combo = |path: &str| Req::new("POST", ECHO, path).header("x-combo", "yes");
    expect_outcomes(
        &tb,
        vec![
            (combo("/combo/x?q=1"), "echo-v2-0"),
            (combo("/combo/x?q=2"), "echo-v1-0"),
            (combo("/other?q=1"), "echo-v1-0"),
            (Req::new("POST", ECHO, "/combo?q=1"), "echo-v1-0"),
            (get("/combo?q=1").header("x-combo", "yes"), "echo-v1-0"),
            (get("/either"), "echo-v3-0"),
            (get("/elsewhere").header("x-either", "yes"), "echo-v3-0"),
            (get("/elsewhere"), "echo-v1-0"),
        ],
    )
    .await;
}

/// Within one route, rules listed in the *reverse* of precedence order: Exact over PathPrefix, the longest
/// prefix, then method, then the number of header matches, then of query-parameter matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precedence_between_rules() {
    let tb = mesh(&http_route(
        "precedence",
        "  - matches: [{path: {type: PathPrefix, value: /p}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /p/longer}}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: Exact, value: /p/longer/exact}}]
    backendRefs: [{name: echo-v3, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /m}, headers: [{name: a, value: '1'}, {name: b, value: '1'}]}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /m}, method: GET}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /m/longer}}]
    backendRefs: [{name: echo-v3, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /h}, headers: [{name: a, value: '1'}]}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /h}, headers: [{name: a, value: '1'}, {name: b, value: '1'}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /h}, headers: [{name: a, value: '1'}], queryParams: [{name: q, value: '1'}, {name: r, value: '1'}]}]
    backendRefs: [{name: echo-v3, port: 80}]
",
    ))
    .await;
    let ab = |r: Req| r.header("a", "1").header("b", "1");
    expect_outcomes(
        &tb,
        vec![
            // Path first: exact, then the longest prefix.
            (get("/p/longer/exact"), "echo-v3-0"),
            (get("/p/longer/exact/x"), "echo-v2-0"),
            (get("/p/longer"), "echo-v2-0"),
            (get("/p/other"), "echo-v1-0"),
            // A longer prefix beats a method; a method beats more headers.
            (ab(get("/m/longer")), "echo-v3-0"),
            (ab(get("/m")), "echo-v2-0"),
            (ab(Req::new("POST", ECHO, "/m")), "echo-v1-0"),
            // More headers beat fewer; headers are counted before query parameters.
            (get("/h").header("a", "1"), "echo-v1-0"),
            (ab(get("/h")), "echo-v2-0"),
            (ab(get("/h?q=1&r=1")), "echo-v2-0"),
            (get("/h?q=1&r=1").header("a", "1"), "echo-v3-0"),
        ],
    )
    .await;
}

/// Between routes on one parent: specificity first, then the oldest route, then `namespace/name`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precedence_between_routes() {
    let tb = mesh(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: z-oldest, namespace: gateway-conformance-mesh, creationTimestamp: "2020-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /age}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /specific}}]
    backendRefs: [{name: echo-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a-newer, namespace: gateway-conformance-mesh, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /age}}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /specific/more}}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /name}}]
    backendRefs: [{name: echo-v2, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b-same-age, namespace: gateway-conformance-mesh, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /name}}]
    backendRefs: [{name: echo-v3, port: 80}]
"#,
    )
    .await;
    expect_outcomes(
        &tb,
        vec![
            (get("/age"), "echo-v1-0"),
            (get("/specific/more"), "echo-v2-0"),
            (get("/specific/less"), "echo-v1-0"),
            (get("/name"), "echo-v2-0"),
        ],
    )
    .await;
}
