//! Policy status end to end: a waypoint with `--source kube` against `kube_source::testing::FakeApiServer`
//! writes `WaypointAccepted` on the AuthorizationPolicies and RequestAuthentications it judges, and the traffic
//! through it matches what the condition says is enforced.
//!
//! The [`Testbed`] runs the demo mesh's echo backends and ztunnels from a folder without any policy; the API
//! server holds the same objects plus the policies (so only the API-sourced waypoint enforces them), a second
//! waypoint Gateway `other` with its Service `ratings`, and a namespace-wide policy (the node tier's). Requests
//! are HBONE CONNECTs (mTLS, HTTP/2) from `bookinfo-productpage` to the waypoint, HTTP/1.1 inside.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use kube_source::testing::FakeApiServer;
use kube_source::WatchOptions;
use mesh::config::GatewayRef;
use mesh::hbone::{Dial, Pool, PoolOptions};
use mesh::identity::{CertStore, Identity};
use serde_json::Value;
use waypoint::demo::DEMO_MANIFESTS;
use waypoint::server::{Ops, Waypoint, WaypointConfig};
use waypoint::source::{ConfigSource, KubeSource};
use waypoint::testbed::Testbed;

/// How long any wait may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);
const TD: &str = mesh::config::DEFAULT_TRUST_DOMAIN;

/// Another waypoint and a Service bound to it; a policy on that Service is the other waypoint's to judge.
const OTHER_WAYPOINT: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other, namespace: default, labels: {istio.io/waypoint-for: service}}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: default, labels: {istio.io/use-waypoint: other}}
spec: {clusterIP: 127.0.0.120, selector: {app: ratings}, ports: [{name: http, port: 9080, targetPort: 8080}]}
"#;

/// The DENY policy on `reviews`: `/admin*` denied; with `sni`, a second rule on `connection.sni`, which a
/// waypoint cannot observe.
fn deny_admin(sni: bool) -> String {
    let sni_rule = match sni {
        true => "\n  - when: [{key: connection.sni, values: [reviews.example]}]",
        false => "",
    };
    format!(
        r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin, namespace: default}}
spec:
  targetRefs: [{{kind: Service, group: "", name: reviews}}]
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/admin*"]}}}}]{sni_rule}
"#
    )
}

/// The policies; the RequestAuthentication targets Service `jwt_target`.
fn policies(jwt_target: &str) -> String {
    let ap = |name: &str, action: &str, targets: &str| {
        format!(
            "\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: {name}, namespace: default}}\nspec: {{{targets}action: {action}, rules: [{{}}]}}\n"
        )
    };
    let svc = |name: &str| format!("targetRefs: [{{kind: Service, group: \"\", name: {name}}}], ");
    [
        ap("allow-reviews", "ALLOW", &svc("reviews")),
        ap("deny-unbound", "DENY", &svc("reviews-v1")),
        ap("deny-ghost", "DENY", &svc("ghost")),
        ap("allow-ratings", "ALLOW", &svc("ratings")),
        ap("namespace-wide", "DENY", ""),
        format!(
            r#"
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt-unbound, namespace: default}}
spec:
  targetRefs: [{{kind: Service, group: "", name: {jwt_target}}}]
  jwtRules: [{{issuer: "https://issuer.example", jwks: '{JWKS}'}}]
"#
        ),
    ]
    .concat()
}

/// One Ed25519 public key (RFC 8037's example): a JWKS the waypoint can compile.
const JWKS: &str = r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new(TD, ns, sa)
}

/// A waypoint for Gateway `default/<name>` from the API server, writing status.
async fn waypoint(tb: &Testbed, api: &FakeApiServer, name: &str) -> Waypoint {
    let mut kube = KubeSource::new(api.client().unwrap());
    kube.watch = WatchOptions {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..WatchOptions::default()
    };
    let cfg = WaypointConfig {
        gateway: GatewayRef {
            namespace: "default".into(),
            name: name.into(),
        },
        manifests: Default::default(),
        trust_domain: TD.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        hbone_port: tb.rewrite().hbone_port,
        admin: None,
        mesh_config: None,
    };
    let certs = CertStore::new(tb.ca.certs_for(&id("default", name)).unwrap());
    let ops = Ops {
        reuse_port: false,
        ..Ops::default()
    };
    Waypoint::start_from(cfg, ConfigSource::Kube(kube), certs, ops)
        .await
        .expect("waypoint from the API server")
}

struct Fixture {
    tb: Testbed,
    api: FakeApiServer,
    wp: Waypoint,
    pool: Pool,
    client: CertStore,
    vip: SocketAddr,
}

impl Fixture {
    async fn start(api_text: &str) -> Fixture {
        let tb = Testbed::start(DEMO_MANIFESTS).await.expect("testbed");
        let api = FakeApiServer::start_with(&tb.rewrite().manifests(api_text).unwrap())
            .await
            .expect("fake API server");
        let wp = waypoint(&tb, &api, "waypoint").await;
        let client = CertStore::new(
            tb.ca
                .certs_for(&id("default", "bookinfo-productpage"))
                .unwrap(),
        );
        let vip = SocketAddr::new(tb.ip("127.0.0.100"), 9080);
        Fixture {
            tb,
            api,
            wp,
            pool: Pool::new(PoolOptions::default()),
            client,
            vip,
        }
    }

    /// `GET path` to `reviews` through the API-sourced waypoint: the status answered.
    async fn status_of(&self, path: &str) -> u16 {
        let expected = [id("default", "waypoint")];
        let stream = self
            .pool
            .connect(Dial {
                hbone_addr: self.wp.addr(),
                authority: self.vip,
                source: &self.client,
                expected: &expected,
                headers: HeaderMap::new(),
            })
            .await
            .expect("HBONE connect");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header("host", "reviews.default.svc.cluster.local:9080")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
            .await
            .expect("answer in time")
            .expect("answer");
        resp.status().as_u16()
    }

    /// The `WaypointAccepted` condition of `kind default/name`, once written.
    fn condition(&self, kind: &str, name: &str) -> Option<Value> {
        let obj = self.api.get(kind, "default", name)?;
        let found = obj["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "WaypointAccepted")
            .cloned();
        found
    }

    /// Successful status PATCHes of `plural/name`.
    fn writes(&self, plural: &str, name: &str) -> usize {
        let tail = format!("/{plural}/{name}/status");
        let patches = self.api.status_patches();
        patches.iter().filter(|r| r.path.ends_with(&tail)).count()
    }
}

/// `(status, reason)` of a condition.
fn verdict(c: &Value) -> (&str, &str) {
    (
        c["status"].as_str().unwrap_or_default(),
        c["reason"].as_str().unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_status_says_what_the_waypoint_enforces() {
    let version = |v: u8| match v {
        1 => format!(
            "{DEMO_MANIFESTS}{OTHER_WAYPOINT}{}{}",
            policies("reviews-v2"),
            deny_admin(true)
        ),
        _ => format!(
            "{DEMO_MANIFESTS}{OTHER_WAYPOINT}{}{}",
            policies("ghost"),
            deny_admin(false)
        ),
    };
    let fx = Fixture::start(&version(1)).await;
    let written = ["allow-reviews", "deny-unbound", "deny-ghost", "deny-admin"];
    fx.api
        .wait_until("policy statuses", PATIENCE, |_| {
            written
                .iter()
                .all(|n| fx.condition("AuthorizationPolicy", n).is_some())
                && fx
                    .condition("RequestAuthentication", "jwt-unbound")
                    .is_some()
        })
        .await
        .expect("policy statuses written");

    // Bound to this waypoint through the Service.
    let c = fx
        .condition("AuthorizationPolicy", "allow-reviews")
        .unwrap();
    assert_eq!(verdict(&c), ("True", "Accepted"), "{c}");
    assert_eq!(c["message"], "bound to default/waypoint", "{c}");
    let ap = fx
        .api
        .get("AuthorizationPolicy", "default", "allow-reviews")
        .unwrap();
    assert_eq!(ap["status"]["observedGeneration"], 1, "{ap}");

    // A Service bound to no waypoint, a Service that does not exist; a RequestAuthentication likewise.
    let c = fx.condition("AuthorizationPolicy", "deny-unbound").unwrap();
    assert_eq!(verdict(&c), ("False", "AncestorNotBound"), "{c}");
    assert_eq!(
        c["message"],
        "Service default/reviews-v1 is not bound to a waypoint"
    );
    let c = fx.condition("AuthorizationPolicy", "deny-ghost").unwrap();
    assert_eq!(verdict(&c), ("False", "TargetNotFound"), "{c}");
    assert_eq!(c["message"], "Service default/ghost was not found");
    let c = fx
        .condition("RequestAuthentication", "jwt-unbound")
        .unwrap();
    assert_eq!(verdict(&c), ("False", "AncestorNotBound"), "{c}");

    // The rule on connection.sni is named as not enforced; the other rule is, and still denies.
    let c = fx.condition("AuthorizationPolicy", "deny-admin").unwrap();
    assert_eq!(verdict(&c), ("True", "PartiallyInvalid"), "{c}");
    let message = c["message"].as_str().unwrap();
    assert!(
        message.contains("spec.rules[1].when[0].key: connection.sni"),
        "{message}"
    );
    assert_eq!(fx.status_of("/admin/users").await, 403, "the enforced rule");
    assert_eq!(
        fx.status_of("/reviews").await,
        200,
        "allowed by allow-reviews"
    );

    // Not this waypoint's: bound to the other waypoint only; namespace-wide (the node tier's).
    for name in ["allow-ratings", "namespace-wide"] {
        assert_eq!(
            fx.writes("authorizationpolicies", name),
            0,
            "{name} written"
        );
    }

    // The sni rule removed: the condition flips, with the new generation. The sync that carries it
    // recomputes every other status, unchanged: none is written again. (The RequestAuthentication, now on a
    // Service that does not exist, is written last in that sync: its new condition says the sync is done.)
    fx.api
        .apply(&fx.tb.rewrite().manifests(&version(2)).unwrap())
        .unwrap();
    fx.api
        .wait_until("deny-admin flips", PATIENCE, |_| {
            let flipped = fx
                .condition("AuthorizationPolicy", "deny-admin")
                .is_some_and(|c| verdict(&c) == ("True", "Accepted"));
            let moved = fx
                .condition("RequestAuthentication", "jwt-unbound")
                .is_some_and(|c| verdict(&c) == ("False", "TargetNotFound"));
            flipped && moved
        })
        .await
        .expect("deny-admin accepted, jwt-unbound TargetNotFound");
    let ap = fx
        .api
        .get("AuthorizationPolicy", "default", "deny-admin")
        .unwrap();
    assert_eq!(ap["status"]["observedGeneration"], 2, "{ap}");
    assert_eq!(
        ap["status"]["conditions"][0]["message"],
        "bound to default/waypoint"
    );
    assert_eq!(fx.writes("authorizationpolicies", "deny-admin"), 2);
    for name in ["allow-reviews", "deny-unbound", "deny-ghost"] {
        assert_eq!(
            fx.writes("authorizationpolicies", name),
            1,
            "{name} rewritten"
        );
    }
    for name in ["allow-ratings", "namespace-wide"] {
        assert_eq!(
            fx.writes("authorizationpolicies", name),
            0,
            "{name} written"
        );
    }
    assert_eq!(fx.status_of("/admin").await, 403, "still denied");
    assert_eq!(fx.status_of("/reviews").await, 200);
    fx.tb.shutdown().await;
}

/// Two waypoints judge one policy bound to both (through a Service each): they compute the same condition, so
/// the second finds it on the server and writes nothing; a change is written once, not flipped back and forth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_waypoints_do_not_flip_each_others_condition() {
    // One RequestAuthentication bound to each waypoint: written by it after every AuthorizationPolicy of the
    // same sync, so its condition says that waypoint's sync is done. Version 2 adds a targetRef to a Service
    // that does not exist to every object: each becomes PartiallyInvalid.
    let objects = |version: u8| {
        let ghost = match version {
            1 => "",
            _ => r#", {kind: Service, group: "", name: ghost}"#,
        };
        let ra = |name: &str, gateway: &str| {
            format!(
                r#"
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: {name}, namespace: default}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: {gateway}}}{ghost}]
  jwtRules: [{{issuer: "https://issuer.example", jwks: '{JWKS}'}}]
"#
            )
        };
        format!(
            r#"{DEMO_MANIFESTS}{OTHER_WAYPOINT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: shared, namespace: default}}
spec:
  targetRefs: [{{kind: Service, group: "", name: reviews}}, {{kind: Service, group: "", name: ratings}}{ghost}]
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/never*"]}}}}]}}]
{}{}"#,
            ra("waypoint-only", "waypoint"),
            ra("other-only", "other")
        )
    };
    let fx = Fixture::start(&objects(1)).await;
    fx.api
        .wait_until("the first waypoint synced", PATIENCE, |_| {
            fx.condition("RequestAuthentication", "waypoint-only")
                .is_some()
        })
        .await
        .expect("waypoint-only written by the first waypoint");
    let c = fx.condition("AuthorizationPolicy", "shared").unwrap();
    assert_eq!(verdict(&c), ("True", "Accepted"), "{c}");
    assert_eq!(c["message"], "bound to default/waypoint, default/other");

    // The second waypoint: the shared condition is left alone.
    let other = waypoint(&fx.tb, &fx.api, "other").await;
    fx.api
        .wait_until("the other waypoint synced", PATIENCE, |_| {
            fx.condition("RequestAuthentication", "other-only")
                .is_some()
        })
        .await
        .expect("other-only written by the other waypoint");
    assert_eq!(fx.writes("authorizationpolicies", "shared"), 1);
    assert_eq!(fx.condition("AuthorizationPolicy", "shared").unwrap(), c);

    // A change: one of them writes it, the other finds it written (or loses the 409 race and re-reads).
    fx.api
        .apply(&fx.tb.rewrite().manifests(&objects(2)).unwrap())
        .unwrap();
    let partial = |kind: &str, name: &str| {
        fx.condition(kind, name)
            .is_some_and(|c| verdict(&c) == ("True", "PartiallyInvalid"))
    };
    fx.api
        .wait_until("both waypoints synced version 2", PATIENCE, |_| {
            partial("AuthorizationPolicy", "shared")
                && partial("RequestAuthentication", "waypoint-only")
                && partial("RequestAuthentication", "other-only")
        })
        .await
        .expect("the change written");
    let c = fx.condition("AuthorizationPolicy", "shared").unwrap();
    assert_eq!(
        c["message"],
        "bound to default/waypoint, default/other; Invalid targetRefs: Service.core:default/ghost"
    );
    assert_eq!(
        fx.writes("authorizationpolicies", "shared"),
        2,
        "the waypoints rewrote each other's condition"
    );
    drop(other);
    fx.tb.shutdown().await;
}
