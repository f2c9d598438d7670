//! The API-server source end to end, against `kube_source::testing::FakeApiServer` (a real HTTP server
//! speaking list/watch; no cluster runs on the build machines).
//!
//! A [`Testbed`] runs the demo mesh's echo backends and ztunnels from a folder; the API server holds the same
//! objects; a second waypoint takes its config from the API server, and every assertion is made through
//! real traffic: an HBONE CONNECT (mTLS, HTTP/2) from a client identity to that waypoint, an HTTP/1.1 request
//! inside, answered by an echo behind a ztunnel. A ztunnel from the API server is checked likewise: a client
//! pod that exists only in the API server reaches a Service through it over SOCKS5.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Empty};
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
use waypoint::testbed::{eventually, Req, Testbed};

/// How long any wait may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);
const TD: &str = mesh::config::DEFAULT_TRUST_DOMAIN;

/// The demo mesh with the `reviews` split set to `v1`/`v2` weights.
fn weights(v1: i32, v2: i32) -> String {
    DEMO_MANIFESTS
        .replace("weight: 90}", &format!("weight: {v1}}}"))
        .replace("weight: 10}", &format!("weight: {v2}}}"))
}

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new(TD, ns, sa)
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
    /// The testbed, an API server with the same (rewritten) objects, and a waypoint from the API server
    /// (status written while leading the Lease).
    async fn start() -> Fixture {
        let text = weights(100, 0);
        let tb = Testbed::start(&text).await.expect("testbed");
        let api = FakeApiServer::start_with(&tb.rewrite().manifests(&text).unwrap())
            .await
            .expect("fake API server");
        let mut kube = KubeSource::new(api.client().unwrap());
        kube.watch = WatchOptions {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            ..WatchOptions::default()
        };
        kube.leader_identity = Some("waypoint-0".into());
        let cfg = WaypointConfig {
            gateway: GatewayRef {
                namespace: "default".into(),
                name: "waypoint".into(),
            },
            manifests: Default::default(),
            trust_domain: TD.into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            hbone_port: tb.rewrite().hbone_port,
            admin: None,
            mesh_config: None,
        };
        let certs = CertStore::new(tb.ca.certs_for(&id("default", "waypoint")).unwrap());
        let ops = Ops {
            reuse_port: false,
            ..Ops::default()
        };
        let wp = Waypoint::start_from(cfg, ConfigSource::Kube(kube), certs, ops)
            .await
            .expect("waypoint from the API server");
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

    /// Pushes `text` (rewritten to the testbed's addresses) to the API server: MODIFIED events.
    fn push(&self, text: &str) {
        self.api
            .apply(&self.tb.rewrite().manifests(text).unwrap())
            .unwrap();
    }

    /// One request through the API-sourced waypoint: the pod that answered.
    async fn request(&self) -> anyhow::Result<String> {
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
            .await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = http::Request::get("/reviews")
            .header("host", "reviews.default.svc.cluster.local:9080")
            .body(Empty::<Bytes>::new())?;
        let resp = tokio::time::timeout(PATIENCE, send.send_request(req)).await??;
        anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
        let body = resp.into_body().collect().await?.to_bytes();
        let echo: Value = serde_json::from_slice(&body)?;
        Ok(echo["pod"].as_str().unwrap_or_default().to_string())
    }

    /// Sends until `pod` answers (bounded by [`PATIENCE`]), then asserts the next 20 requests all go to it.
    async fn converges_to(&self, pod: &str, what: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let got = self.request().await.expect("request");
            if got == pod {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: traffic still goes to {got}, not {pod}"
            );
        }
        self.all_go_to(pod, what).await;
    }

    async fn all_go_to(&self, pod: &str, what: &str) {
        for i in 0..20 {
            let got = self.request().await.expect("request");
            assert_eq!(got, pod, "{what}: request {i}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_changes_from_the_api_server_move_traffic_through_cuts_and_relists() {
    let fx = Fixture::start().await;
    let kube = fx.wp.kube().expect("an API-server source");
    assert!(kube.watch.is_ready());
    fx.all_go_to("reviews-v1-0", "initial list").await;

    // A weight change: a MODIFIED event on the open watch.
    fx.push(&weights(0, 100));
    fx.converges_to("reviews-v2-0", "MODIFIED event").await;

    // Every watch cut mid-event; the next change still arrives (resumed from the last resourceVersion).
    fx.api.cut_watches();
    fx.push(&weights(100, 0));
    fx.converges_to("reviews-v1-0", "after a cut watch").await;

    // The watchers are away while a change is made and the history compacted: 410 Gone, relist.
    for gone_as_http in [false, true] {
        fx.api.set_gone_as_http(gone_as_http);
        let relists = kube.watch.relists();
        fx.api.hold_watches();
        fx.api.end_watches();
        let (want, text) = match gone_as_http {
            false => ("reviews-v2-0", weights(0, 100)),
            true => ("reviews-v1-0", weights(100, 0)),
        };
        fx.push(&text);
        fx.api.compact();
        fx.api.release_watches();
        let what = format!("410 relist (HTTP status: {gone_as_http})");
        fx.converges_to(want, &what).await;
        assert!(kube.watch.relists() > relists, "{what}: no relist");
    }
    fx.tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_route_keeps_the_last_good_config_and_status_is_written() {
    let fx = Fixture::start().await;
    let live = fx.wp.live().clone();

    // Status: the route Accepted for its Service parent, the Gateway Programmed, by the Lease holder.
    fx.api
        .wait_until("route and Gateway status", PATIENCE, |api| {
            let p = api.status_patches();
            p.iter()
                .any(|r| r.path.ends_with("/httproutes/reviews/status"))
                && p.iter()
                    .any(|r| r.path.ends_with("/gateways/waypoint/status"))
        })
        .await
        .expect("status written");
    assert!(!fx.api.lease_writes().is_empty(), "no Lease taken");
    let route = fx.api.get("HTTPRoute", "default", "reviews").unwrap();
    let parent = &route["status"]["parents"][0];
    assert_eq!(parent["parentRef"]["kind"], "Service", "{route}");
    assert_eq!(parent["controllerName"], "istio.io/mesh-controller");
    let accepted = condition(&parent["conditions"], "Accepted");
    assert_eq!(
        (accepted["status"].as_str(), accepted["reason"].as_str()),
        (Some("True"), Some("Accepted"))
    );
    assert_eq!(
        condition(&parent["conditions"], "ResolvedRefs")["status"],
        "True"
    );
    let gw = fx.api.get("Gateway", "default", "waypoint").unwrap();
    assert_eq!(
        condition(&gw["status"]["conditions"], "Programmed")["status"],
        "True"
    );
    assert_eq!(
        gw["status"]["addresses"][0]["value"],
        fx.tb.ip("127.0.0.20").to_string()
    );

    // A broken route (negative weight): rejected whole, recorded, traffic unaffected.
    fx.push(&weights(0, 100).replace("weight: 0}", "weight: -5}"));
    assert!(
        eventually(PATIENCE, || live.last_error().is_some()).await,
        "the bad route was not reported"
    );
    let err = live.last_error().unwrap();
    assert_eq!(err.object, "HTTPRoute default/reviews", "{err}");
    fx.all_go_to("reviews-v1-0", "after a bad update").await;

    // Fixed: it serves, the error clears.
    fx.push(&weights(0, 100));
    fx.converges_to("reviews-v2-0", "after the fix").await;
    assert!(live.last_error().is_none());
    fx.tb.shutdown().await;
}

fn condition<'a>(conditions: &'a Value, kind: &str) -> &'a Value {
    let found = conditions
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind));
    found.unwrap_or_else(|| panic!("no {kind} condition in {conditions}"))
}

/// A client pod known only to the API server, on a node whose ztunnel takes its config from the API server:
/// it reaches `reviews-v1` through that ztunnel, and a selector change pushed to
/// the API server moves its traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ztunnel_from_the_api_server_carries_traffic_and_follows_changes() {
    let fx = Fixture::start().await;
    let client_pod = r#"
---
apiVersion: v1
kind: Pod
metadata: {name: ratings-0, namespace: default, labels: {app: ratings}}
spec:
  nodeName: node-z
  serviceAccountName: bookinfo-productpage
  containers: [{name: ratings, image: demo/client}]
status:
  podIP: 127.0.0.60
"#;
    let text = weights(100, 0) + client_pod;
    fx.push(&text);
    let cfg = ztunnel::NodeConfig {
        manifests: Default::default(),
        certs_dir: fx.tb.certs_dir.clone(),
        trust_domain: TD.into(),
        node: Some("node-z".into()),
        workloads: vec![],
        hbone_port: fx.tb.rewrite().hbone_port,
        socks5: Some("127.0.0.1:0".parse().unwrap()),
        socks5_default_workload: None,
        redirect: None,
    };
    let mut watch = ztunnel::source::node_watch_options(Some("node-z"), false);
    watch.initial_backoff = Duration::from_millis(20);
    let source = ztunnel::source::NodeSource::Kube {
        client: fx.api.client().unwrap(),
        watch,
    };
    let zt = ztunnel::Ztunnel::start_from(cfg, source, ztunnel::ops::Ops::default())
        .await
        .expect("ztunnel from the API server");
    assert_eq!(zt.view().local_workloads().count(), 1, "ratings-0 is local");

    let mut client = fx.tb.client("productpage-0");
    client.socks = zt.socks5_addr().unwrap();
    client.source_ip = fx.tb.ip("127.0.0.60");
    let pod_of = |r: anyhow::Result<waypoint::testbed::Resp>| {
        r.expect("request").pod().unwrap_or_default().to_string()
    };
    let req = Req::get("127.0.0.110:9080", "/");
    assert_eq!(pod_of(client.send(req.clone()).await), "reviews-v1-0");

    // reviews-v1 now selects the v2 pod: a MODIFIED Service (and its endpoints) reach the ztunnel.
    fx.push(
        &(text.replace(
            "selector: {app: reviews, version: v1}",
            "selector: {app: reviews, version: v2}",
        )),
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while pod_of(client.send(req.clone()).await) != "reviews-v2-0" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ztunnel did not follow the change"
        );
    }
    for _ in 0..10 {
        assert_eq!(pod_of(client.send(req.clone()).await), "reviews-v2-0");
    }
    zt.shutdown().await;
    fx.tb.shutdown().await;
}
