//! Forged identity headers: the source principal and namespace come from the caller's HBONE certificate only.
//! A caller claiming another identity in `x-forwarded-client-cert` (or any other header a proxy might trust)
//! is judged as itself, and the application sees the waypoint's own `x-forwarded-client-cert`, never the
//! forged one.

use waypoint::testbed::Protocol;

use super::*;

/// Headers a caller may send to pass for `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
fn forged(ns: &str, sa: &str) -> Vec<(String, String)> {
    let id = format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
    vec![
        (
            "x-forwarded-client-cert".into(),
            format!("By={WAYPOINT_ID};Hash=00;URI={id}"),
        ),
        ("x-forwarded-client-cert".into(), format!("URI={id}")),
        ("x-client-cert".into(), id.clone()),
        (
            "x-envoy-peer-metadata-id".into(),
            format!("sidecar~10.0.0.9~{sa}.{ns}~{ns}.svc.cluster.local"),
        ),
        (
            "x-istio-attributes".into(),
            format!("source.principal={id}"),
        ),
        ("x-forwarded-for".into(), "10.0.0.9".into()),
        ("forwarded".into(), "for=10.0.0.9".into()),
        ("x-real-ip".into(), "10.0.0.9".into()),
        ("x-source-principal".into(), id.clone()),
        ("x-spiffe-id".into(), id),
    ]
}

fn request(authority: &str, path: &str, headers: &[(String, String)], protocol: Protocol) -> Req {
    let mut r = Req::get(authority, path);
    for (k, v) in headers {
        r = r.header(k, v);
    }
    if protocol == Protocol::H2c {
        r = r.h2c();
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_identity_is_judged_as_the_real_caller() {
    // Only `shop/admin` (no pod runs it) may call api; a DENY keeps `guest` out of web; and a DENY on a remote
    // IP block the forged `x-forwarded-for` names (remote.ip is the connection's peer: no trusted proxies).
    let allow_admin = policy(
        "allow-admin",
        &service("api"),
        "  action: ALLOW\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/shop/sa/admin]}}]",
    );
    let deny_guest = policy(
        "deny-guest",
        &service("web"),
        "  action: DENY
  rules:
  - from: [{source: {namespaces: [guest]}}]
  - from: [{source: {remoteIpBlocks: [10.0.0.0/8]}}]
  - when: [{key: source.principal, values: [cluster.local/ns/shop/sa/admin]}]",
    );
    let tb = mesh(&format!("{allow_admin}{deny_guest}")).await;
    for protocol in [Protocol::Http1, Protocol::H2c] {
        // batch pretends to be shop/admin: still batch, still denied.
        let r = send(
            &tb,
            "batch",
            request(API, "/", &forged(NS, "admin"), protocol),
        )
        .await;
        assert_rbac_denied(&r, &format!("{protocol:?}: batch forging shop/admin"));
        // visitor pretends to be shop/frontend: still in `guest`, still denied.
        let r = send(
            &tb,
            "visitor",
            request(WEB, "/", &forged(NS, "frontend"), protocol),
        )
        .await;
        assert_rbac_denied(&r, &format!("{protocol:?}: visitor forging shop/frontend"));
        // frontend names 10.0.0.9 and shop/admin in headers: neither is its connection's, so no DENY matches.
        let r = send(
            &tb,
            "frontend",
            request(WEB, "/", &forged(NS, "admin"), protocol),
        )
        .await;
        assert_eq!(verdict(&r), "200 web-0", "{protocol:?}: frontend on web");
    }
    assert_eq!(tb.echo("api-0").requests(), 0);
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_sees_the_waypoints_xfcc_not_the_forged_one() {
    let allow_batch = policy(
        "allow-batch",
        &service("api"),
        &format!(
            "  action: ALLOW\n  rules:\n  - from: [{{source: {{principals: [\"{BATCH}\"]}}}}]"
        ),
    );
    let tb = mesh(&allow_batch).await;
    let want = format!("By={WAYPOINT_ID};URI=spiffe://{BATCH}");
    for protocol in [Protocol::Http1, Protocol::H2c] {
        let r = send(
            &tb,
            "batch",
            request(API, "/", &forged(NS, "frontend"), protocol),
        )
        .await;
        assert_eq!(verdict(&r), "200 api-0", "{protocol:?}");
        let e = r.echo();
        assert_eq!(
            e.header_values("x-forwarded-client-cert"),
            std::slice::from_ref(&want),
            "{protocol:?}: exactly one XFCC, the waypoint's, naming the real caller"
        );
        // The other headers are passed on as the caller sent them (they assert nothing here), but no value
        // of any of them came to name the caller's real identity by accident.
        assert_eq!(
            e.header("x-spiffe-id"),
            Some("spiffe://cluster.local/ns/shop/sa/frontend")
        );
    }
    // A caller the policy does not allow gets nothing through, forged headers or not.
    let r = send(
        &tb,
        "frontend",
        request(API, "/", &forged(NS, "batch"), Protocol::Http1),
    )
    .await;
    assert_rbac_denied(&r, "frontend forging shop/batch");
    tb.shutdown().await;
}
