//! Node-tier AuthorizationPolicy end to end: callers of different identities and source addresses
//! ([`caller::Caller`]: mutual TLS with their own certificate, HTTP/2 CONNECT) through node-b's real HBONE
//! inbound (demo/app `.3`, label `app=echo`, echo on the app port; demo/other `.4`, label `app=other`,
//! nothing listening: a CONNECT that passes authorization there is answered `503`, one denied `401`).
//! Policies are real manifests in the watched directory; see `e2e/fixture.rs` for the addresses.

#[allow(dead_code)]
#[path = "e2e/fixture.rs"]
mod fixture;

#[path = "authz/caller.rs"]
mod caller;

use std::net::SocketAddr;

use caller::Caller;
use fixture::{cluster_with, eventually, id, round_trip, Cluster, PATIENCE, TD};
use http::StatusCode;
use mesh::identity::{CertStore, Identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztunnel::ops::Ops;
use ztunnel::policy::NO_ALLOW_MATCHED;
use ztunnel::Ztunnel;

const CLIENT: u8 = 2;
const APP: u8 = 3;
const OTHER: u8 = 4;
/// A port on demo/other: nothing listens there.
const OTHER_PORT: u16 = 7070;

/// `AuthorizationPolicy` `namespace/name` with `spec` (YAML, indented by two).
fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )
}

/// `ns/sa` calling from `.from`.
fn caller(c: &Cluster, ns: &str, sa: &str, from: u8) -> Caller {
    let certs = c.ca.certs_for(&Identity::new(TD, ns, sa)).unwrap();
    Caller {
        store: CertStore::new(certs),
        from: c.net.ip(from),
    }
}

/// CONNECT to `pod:port` through that pod's HBONE listener; on `200`, one echoed round trip must work.
async fn call(c: &Cluster, who: &Caller, pod: u8, port: u16) -> StatusCode {
    let sa = if pod == APP { "app" } else { "other" };
    let hbone = c.net.addr(pod, c.hbone_port);
    let (status, stream) = who.connect(hbone, &id(sa), c.net.addr(pod, port)).await;
    if let Some(mut s) = stream {
        assert_eq!(round_trip(&mut s, b"through").await, b"through");
    }
    status
}

async fn start(policies: impl Fn(&Cluster) -> String) -> (Cluster, Ztunnel, Ztunnel) {
    cluster_with(policies, |_, _| {}, Ops::default()).await
}

async fn stop(a: Ztunnel, b: Ztunnel) {
    a.shutdown().await;
    b.shutdown().await;
}

const OK: StatusCode = StatusCode::OK;
const DENIED: StatusCode = StatusCode::UNAUTHORIZED;
const PASSED_NO_APP: StatusCode = StatusCode::SERVICE_UNAVAILABLE;

#[tokio::test]
async fn allow_by_principal_namespace_wide_and_the_waypoint_is_its_own_source() {
    let (c, a, b) = start(|_| {
        policy(
            "demo",
            "allow-client",
            "  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]",
        )
    })
    .await;
    let app = c.app.port();
    let client = caller(&c, "demo", "client", CLIENT);
    let stranger = caller(&c, "demo", "stranger", CLIENT);
    let waypoint = caller(&c, "demo", "waypoint", CLIENT);
    assert_eq!(call(&c, &client, APP, app).await, OK);
    assert_eq!(call(&c, &stranger, APP, app).await, DENIED);
    // Traffic relayed by a waypoint carries the waypoint's identity (as in Istio).
    assert_eq!(call(&c, &waypoint, APP, app).await, DENIED);
    // Namespace-wide: the neighbour enforces it too (passed → the missing app answers 503).
    assert_eq!(call(&c, &client, OTHER, OTHER_PORT).await, PASSED_NO_APP);
    assert_eq!(call(&c, &stranger, OTHER, OTHER_PORT).await, DENIED);

    let s = b.stats();
    assert_eq!(s.inbound_accepted, 1, "{s:?}");
    assert_eq!(s.inbound_refused.get(&401), Some(&3), "{s:?}");
    assert_eq!(s.inbound_denied.get(NO_ALLOW_MATCHED), Some(&3), "{s:?}");
    assert!(b.view().authz().reports().is_empty());
    stop(a, b).await;
}

#[tokio::test]
async fn deny_by_namespace_from_the_root_namespace_and_other_namespaces_do_not_apply() {
    let (c, a, b) = start(|_| {
        policy(
            "istio-system",
            "deny-lab",
            "  action: DENY\n  rules: [{from: [{source: {namespaces: [lab]}}]}]",
        ) + &policy("prod", "deny-all", "  {}")
    })
    .await;
    let app = c.app.port();
    assert_eq!(
        call(&c, &caller(&c, "lab", "x", CLIENT), APP, app).await,
        DENIED
    );
    assert_eq!(
        call(&c, &caller(&c, "lab", "y", CLIENT), OTHER, OTHER_PORT).await,
        DENIED
    );
    assert_eq!(
        call(&c, &caller(&c, "demo", "client", CLIENT), APP, app).await,
        OK
    );
    assert_eq!(
        call(&c, &caller(&c, "prod", "x", CLIENT), APP, app).await,
        OK
    );
    let s = b.stats();
    assert_eq!(
        s.inbound_denied.get("istio-system/deny-lab"),
        Some(&2),
        "{s:?}"
    );
    assert_eq!(
        s.inbound_denied.len(),
        1,
        "prod/deny-all selects no demo pod: {s:?}"
    );
    stop(a, b).await;
}

#[tokio::test]
async fn deny_not_principals() {
    let (c, a, b) = start(|_| {
        policy(
            "demo",
            "only-client",
            "  action: DENY\n  rules: [{from: [{source: {notPrincipals: [cluster.local/ns/demo/sa/client]}}]}]",
        )
    })
    .await;
    let app = c.app.port();
    assert_eq!(
        call(&c, &caller(&c, "demo", "client", CLIENT), APP, app).await,
        OK
    );
    assert_eq!(
        call(&c, &caller(&c, "demo", "other", CLIENT), APP, app).await,
        DENIED
    );
    assert_eq!(
        call(&c, &caller(&c, "prod", "client", CLIENT), APP, app).await,
        DENIED
    );
    let s = b.stats();
    assert_eq!(s.inbound_denied.get("demo/only-client"), Some(&2), "{s:?}");
    stop(a, b).await;
}

#[tokio::test]
async fn ip_blocks_and_not_ip_blocks_judge_the_peer_address() {
    let (c, a, b) = start(|c| {
        let ip = |n| c.net.ip(n);
        policy(
            "demo",
            "deny-50",
            &format!(
                "  action: DENY\n  rules: [{{from: [{{source: {{ipBlocks: [{}/32]}}}}]}}]",
                ip(50)
            ),
        ) + &policy(
            "demo",
            "allow-not-60",
            &format!(
                "  rules: [{{from: [{{source: {{notIpBlocks: [{}/32]}}}}]}}]",
                ip(60)
            ),
        )
    })
    .await;
    let app = c.app.port();
    assert_eq!(
        call(&c, &caller(&c, "demo", "client", 50), APP, app).await,
        DENIED
    );
    assert_eq!(
        call(&c, &caller(&c, "demo", "client", 60), APP, app).await,
        DENIED
    );
    assert_eq!(
        call(&c, &caller(&c, "demo", "client", 51), APP, app).await,
        OK
    );
    let s = b.stats();
    assert_eq!(s.inbound_denied.get("demo/deny-50"), Some(&1), "{s:?}");
    assert_eq!(s.inbound_denied.get(NO_ALLOW_MATCHED), Some(&1), "{s:?}");
    stop(a, b).await;
}

#[tokio::test]
async fn ports_and_not_ports_judge_the_destination_port_before_the_app_is_dialled() {
    let (c, a, b) = start(|c| {
        policy(
            "demo",
            "echo-port",
            &format!("  selector: {{matchLabels: {{app: echo}}}}\n  rules: [{{to: [{{operation: {{ports: [\"{}\"]}}}}]}}]", c.app.port()),
        ) + &policy(
            "demo",
            "other-port",
            &format!("  selector: {{matchLabels: {{app: other}}}}\n  action: DENY\n  rules: [{{to: [{{operation: {{notPorts: [\"{OTHER_PORT}\"]}}}}]}}]"),
        )
    })
    .await;
    let client = caller(&c, "demo", "client", CLIENT);
    let dead = fixture::probe_port(c.net.ip(APP));
    assert_eq!(call(&c, &client, APP, c.app.port()).await, OK);
    assert_eq!(call(&c, &client, APP, dead).await, DENIED, "401, not 503");
    assert_eq!(call(&c, &client, OTHER, OTHER_PORT).await, PASSED_NO_APP);
    assert_eq!(call(&c, &client, OTHER, OTHER_PORT + 1).await, DENIED);
    let s = b.stats();
    assert_eq!(s.inbound_denied.get("demo/other-port"), Some(&1), "{s:?}");
    assert_eq!(s.inbound_denied.get(NO_ALLOW_MATCHED), Some(&1), "{s:?}");
    stop(a, b).await;
}

#[tokio::test]
async fn a_selector_policy_applies_to_its_pod_and_not_to_the_neighbour() {
    let (c, a, b) = start(|_| {
        policy(
            "demo",
            "echo-from-client",
            "  selector: {matchLabels: {app: echo}}\n  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]",
        )
    })
    .await;
    let stranger = caller(&c, "demo", "stranger", CLIENT);
    assert_eq!(call(&c, &stranger, APP, c.app.port()).await, DENIED);
    assert_eq!(call(&c, &stranger, OTHER, OTHER_PORT).await, PASSED_NO_APP);
    let summary = b.view().authz().summary();
    assert_eq!(
        summary.workloads.get("demo/app").map(Vec::as_slice),
        Some(&["demo/echo-from-client ALLOW".to_string()][..])
    );
    assert!(!summary.workloads.contains_key("demo/other"), "{summary:?}");
    stop(a, b).await;
}

#[tokio::test]
async fn an_allow_rule_with_paths_never_matches_at_l4_and_is_reported_on_the_admin_port() {
    let ops = Ops {
        admin: Some("127.0.0.1:0".parse().unwrap()),
        stats: Some("127.0.0.1:0".parse().unwrap()),
        ..Ops::default()
    };
    let (c, a, b) = cluster_with(
        |_| {
            policy(
                "demo",
                "api-only",
                "  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}], to: [{operation: {paths: [/api]}}]}]",
            )
        },
        |_, _| {},
        ops,
    )
    .await;
    let client = caller(&c, "demo", "client", CLIENT);
    assert_eq!(call(&c, &client, APP, c.app.port()).await, DENIED);

    let reports = b.view().authz().reports().to_vec();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].diagnostic.policy, "demo/api-only");
    assert_eq!(
        reports[0].diagnostic.kind,
        authz::policy::DiagnosticKind::NotEnforceableAtL4
    );
    assert_eq!(reports[0].workloads, ["demo/app", "demo/other"]);

    let dump = http_get(b.ops_addr("admin").unwrap(), "/config_dump").await;
    let json: serde_json::Value =
        serde_json::from_str(dump.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let report = &json["authorization"]["not_enforced_as_written"][0];
    assert_eq!(report["policy"], "demo/api-only", "{json:#}");
    assert_eq!(report["kind"], "not_enforceable_at_l4", "{json:#}");
    assert_eq!(report["rule"], 0, "{json:#}");
    assert_eq!(
        json["authorization"]["workloads"]["demo/app"][0],
        "demo/api-only ALLOW"
    );
    let metrics = http_get(b.ops_addr("stats").unwrap(), "/metrics").await;
    assert!(
        metrics.contains(&format!(
            "ztunnel_inbound_denied_total{{policy=\"{NO_ALLOW_MATCHED}\"}} 1"
        )),
        "{metrics}"
    );
    stop(a, b).await;
}

#[tokio::test]
async fn a_deny_rule_with_methods_applies_without_them_and_fails_closed() {
    let (c, a, b) = start(|_| {
        policy(
            "demo",
            "no-post-from-client",
            "  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}], to: [{operation: {methods: [POST]}}]}]",
        )
    })
    .await;
    let app = c.app.port();
    assert_eq!(
        call(&c, &caller(&c, "demo", "client", CLIENT), APP, app).await,
        DENIED
    );
    assert_eq!(
        call(&c, &caller(&c, "demo", "other", CLIENT), APP, app).await,
        OK
    );
    let s = b.stats();
    assert_eq!(
        s.inbound_denied.get("demo/no-post-from-client"),
        Some(&1),
        "{s:?}"
    );
    let reports = b.view().authz().reports().to_vec();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(
        reports[0].diagnostic.message.contains("methods"),
        "{reports:?}"
    );
    stop(a, b).await;
}

#[tokio::test]
async fn a_hot_swap_flips_the_verdict() {
    let allow = |sa: &str| {
        policy(
            "demo",
            "allow-one",
            &format!("  rules: [{{from: [{{source: {{principals: [cluster.local/ns/demo/sa/{sa}]}}}}]}}]"),
        )
    };
    let (c, a, b) = start(|_| allow("client")).await;
    let app = c.app.port();
    let client = caller(&c, "demo", "client", CLIENT);
    let stranger = caller(&c, "demo", "stranger", CLIENT);
    assert_eq!(call(&c, &client, APP, app).await, OK);
    assert_eq!(call(&c, &stranger, APP, app).await, DENIED);

    // Written aside and renamed in, so the watcher never reads half a file.
    let generation = b.config_generation();
    let tmp = c.manifests.join(".extra.yaml.tmp");
    std::fs::write(&tmp, allow("stranger")).unwrap();
    std::fs::rename(&tmp, c.manifests.join("extra.yaml")).unwrap();
    eventually("node-b to swap its config", || {
        b.config_generation() > generation
    })
    .await;
    assert!(b
        .view()
        .mesh()
        .authorization_policies
        .iter()
        .all(|p| p.name == "allow-one"));

    assert_eq!(call(&c, &stranger, APP, app).await, OK);
    assert_eq!(call(&c, &client, APP, app).await, DENIED);
    let s = b.stats();
    assert_eq!(s.inbound_accepted, 2, "{s:?}");
    assert_eq!(s.inbound_denied.get(NO_ALLOW_MATCHED), Some(&2), "{s:?}");
    stop(a, b).await;
}

/// `GET path` over HTTP/1.1; the whole response (head and body).
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    tokio::time::timeout(PATIENCE, work)
        .await
        .expect("admin answered in time")
}
