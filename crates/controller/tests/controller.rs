//! The controller against the fake API server over HTTP: what a waypoint Gateway gets, how changes, resyncs,
//! a clusterIP and deletions are handled, and what it never touches.

mod support;

use kube_source::testing::FakeApiServer;
use kube_source::Leadership;
use serde_json::json;
use support::*;

#[tokio::test]
async fn a_waypoint_gateway_gets_its_objects_and_another_class_gets_nothing() {
    let yaml = [
        gateway("ns", "wp", "istio-waypoint", ""),
        gateway("ns", "ingress", "istio", ""),
    ]
    .join("---\n");
    let server = FakeApiServer::start_with(&yaml).await.unwrap();
    let uid = server.get("Gateway", "ns", "wp").unwrap()["metadata"]["uid"].clone();
    let c = controller(&server, Leadership::always());
    wait_deployed(&server, "ns", "wp").await;

    for kind in ["Deployment", "Service", "ServiceAccount"] {
        let o = server.get(kind, "ns", "wp").unwrap();
        let meta = &o["metadata"];
        assert_eq!(
            meta["ownerReferences"],
            json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "wp",
                "uid": uid, "controller": true, "blockOwnerDeletion": true}]),
            "{kind}"
        );
        let labels = &meta["labels"];
        assert_eq!(
            labels["gateway.istio.io/managed"], "waypoint-controller",
            "{kind}"
        );
        assert_eq!(
            labels["gateway.networking.k8s.io/gateway-name"], "wp",
            "{kind}"
        );
        assert_eq!(labels["istio.io/gateway-name"], "wp", "{kind}");
        assert_eq!(labels["istio.io/waypoint-for"], "service", "{kind}");
    }
    let svc = server.get("Service", "ns", "wp").unwrap();
    assert_eq!(svc["spec"]["ports"][0]["port"], 15008);
    let pod = &server.get("Deployment", "ns", "wp").unwrap()["spec"]["template"]["spec"];
    let args = &pod["containers"][0]["args"];
    for want in ["--source=kube", "--gateway=ns/wp", "--listen=0.0.0.0:15008"] {
        assert!(
            args.as_array().unwrap().contains(&json!(want)),
            "{want} in {args}"
        );
    }
    assert_eq!(pod["serviceAccountName"], "wp");

    for kind in ["Deployment", "Service", "ServiceAccount"] {
        assert!(
            server.get(kind, "ns", "ingress").is_none(),
            "{kind} for a non-waypoint class"
        );
    }
    let w = writes(&server);
    assert!(
        w.iter().all(|r| !r.path.contains("/ingress")),
        "nothing written for the other class: {:?}",
        describe(&w)
    );
    let r = c
        .wait_for("a pass over both", PATIENCE, |r| {
            r.gateways == 1 && r.writes == 0
        })
        .await
        .unwrap();
    assert!(r.errors.is_empty(), "{r:?}");
    // The Service has no clusterIP yet: accepted, not programmed.
    let (status, reason, _) = condition(&server, "ns", "wp", "Programmed").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "AddressNotAssigned")
    );
    assert_eq!(
        condition(&server, "ns", "wp", "Accepted").unwrap().0,
        "True"
    );
}

#[tokio::test]
async fn a_service_account_scoped_gateway_is_reflected_on_its_objects() {
    let meta = "annotations: {istio.io/for-service-account: reviews}, labels: {istio.io/waypoint-for: workload}";
    let server =
        FakeApiServer::start_with(&gateway("ns", "reviews-waypoint", "istio-waypoint", meta))
            .await
            .unwrap();
    let _c = controller(&server, Leadership::always());
    wait_deployed(&server, "ns", "reviews-waypoint").await;
    for kind in ["Deployment", "Service", "ServiceAccount"] {
        let o = server.get(kind, "ns", "reviews-waypoint").unwrap();
        assert_eq!(
            o["metadata"]["annotations"]["istio.io/for-service-account"], "reviews",
            "{kind}"
        );
        assert_eq!(
            o["metadata"]["labels"]["istio.io/waypoint-for"], "workload",
            "{kind}"
        );
    }
    let template = &server.get("Deployment", "ns", "reviews-waypoint").unwrap()["spec"]["template"];
    assert_eq!(
        template["metadata"]["annotations"]["istio.io/for-service-account"],
        "reviews"
    );
    assert_eq!(template["spec"]["serviceAccountName"], "reviews-waypoint");
    assert_eq!(
        template["spec"]["containers"][0]["args"][1],
        "--gateway=ns/reviews-waypoint"
    );
}

#[tokio::test]
async fn changing_the_gateway_patches_its_objects_once_each() {
    let server = FakeApiServer::start_with(&gateway("ns", "wp", "istio-waypoint", ""))
        .await
        .unwrap();
    let _c = controller(&server, Leadership::always());
    wait_deployed(&server, "ns", "wp").await;

    let before = writes(&server).len();
    let scoped =
        "labels: {istio.io/waypoint-for: all}, annotations: {istio.io/for-service-account: sa}";
    server
        .apply(&gateway("ns", "wp", "istio-waypoint", scoped))
        .unwrap();
    server
        .wait_until("objects relabelled", PATIENCE, |s| {
            ["Deployment", "Service", "ServiceAccount"].iter().all(|k| {
                let meta = &s.get(k, "ns", "wp").unwrap()["metadata"];
                meta["labels"]["istio.io/waypoint-for"] == "all"
                    && meta["annotations"]["istio.io/for-service-account"] == "sa"
            })
        })
        .await
        .unwrap();
    let w = writes(&server)[before..].to_vec();
    assert_eq!(w.len(), 3, "one patch per object: {:?}", describe(&w));
    assert!(
        w.iter().all(|r| r.method == "PATCH" && r.status == 200),
        "{:?}",
        describe(&w)
    );

    // Back to a namespace waypoint: the scope annotation goes, from the pods too.
    server
        .apply(&gateway("ns", "wp", "istio-waypoint", ""))
        .unwrap();
    server
        .wait_until("scope annotation removed", PATIENCE, |s| {
            let d = s.get("Deployment", "ns", "wp").unwrap();
            d["metadata"]["annotations"]
                .get("istio.io/for-service-account")
                .is_none()
                && d["spec"]["template"]["metadata"]["annotations"]
                    .get("istio.io/for-service-account")
                    .is_none()
                && d["metadata"]["labels"]["istio.io/waypoint-for"] == "service"
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unchanged_resync_writes_nothing() {
    let server = FakeApiServer::start_with(&gateway("ns", "wp", "istio-waypoint", ""))
        .await
        .unwrap();
    let c = controller(&server, Leadership::always());
    wait_deployed(&server, "ns", "wp").await;
    allocate(&server, "ns", "wp", "10.96.0.15");
    server
        .wait_until("programmed", PATIENCE, |s| {
            condition(s, "ns", "wp", "Programmed").is_some_and(|c| c.0 == "True")
        })
        .await
        .unwrap();
    // Let the pass that wrote the status finish, and one more confirm it.
    let passes = c.report().passes;
    c.resync();
    c.wait_for("a quiet pass", PATIENCE, |r| {
        r.passes > passes && r.writes == 0
    })
    .await
    .unwrap();
    let settled = writes(&server);
    assert_eq!(
        settled.len(),
        3 + 2,
        "3 creates, 2 status writes (waiting, then programmed): {:?}",
        describe(&settled)
    );
    for _ in 0..3 {
        let passes = c.report().passes;
        c.resync();
        let r = c
            .wait_for("a resync pass", PATIENCE, |r| r.passes > passes)
            .await
            .unwrap();
        assert_eq!(r.writes, 0, "{r:?}");
    }
    let after = writes(&server);
    assert_eq!(
        after.len(),
        settled.len(),
        "resyncs wrote: {:?}",
        describe(&after[settled.len()..])
    );
}

#[tokio::test]
async fn a_cluster_ip_makes_the_gateway_programmed_with_that_address() {
    let server = FakeApiServer::start_with(&gateway("ns", "wp", "istio-waypoint", ""))
        .await
        .unwrap();
    let _c = controller(&server, Leadership::always());
    wait_deployed(&server, "ns", "wp").await;
    assert!(server.get("Gateway", "ns", "wp").unwrap()["status"]
        .get("addresses")
        .is_none());

    allocate(&server, "ns", "wp", "10.96.0.42");
    server
        .wait_until("programmed", PATIENCE, |s| {
            condition(s, "ns", "wp", "Programmed").is_some_and(|c| c.0 == "True")
        })
        .await
        .unwrap();
    let gw = server.get("Gateway", "ns", "wp").unwrap();
    assert_eq!(
        gw["status"]["addresses"],
        json!([{"type": "IPAddress", "value": "10.96.0.42"}])
    );
    let (_, reason, message) = condition(&server, "ns", "wp", "Programmed").unwrap();
    assert_eq!(reason, "Programmed");
    assert!(message.contains("10.96.0.42"), "{message}");
    // The allocator's clusterIP is not ours: it survives the controller's passes.
    assert_eq!(
        server.get("Service", "ns", "wp").unwrap()["spec"]["clusterIP"],
        "10.96.0.42"
    );
}

#[tokio::test]
async fn deleting_the_gateway_deletes_what_it_owned_and_nothing_else() {
    // Someone's own ServiceAccount of the waypoint's name, and another waypoint's objects.
    let foreign_sa = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: wp, namespace: ns}\n";
    let yaml = [
        foreign_sa.to_string(),
        gateway("ns", "wp", "istio-waypoint", ""),
        gateway("ns", "keep", "istio-waypoint", ""),
    ]
    .join("---\n");
    let server = FakeApiServer::start_with(&yaml).await.unwrap();
    let _c = controller(&server, Leadership::always());
    wait_deployed(&server, "ns", "keep").await;
    server
        .wait_until("wp's conflict reported", PATIENCE, |s| {
            condition(s, "ns", "wp", "Programmed").is_some()
                && s.get("Deployment", "ns", "wp").is_some()
        })
        .await
        .unwrap();
    let (status, reason, message) = condition(&server, "ns", "wp", "Programmed").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Invalid"));
    assert!(message.contains("ServiceAccount ns/wp"), "{message}");
    let sa_before = server.get("ServiceAccount", "ns", "wp").unwrap();
    assert!(
        sa_before["metadata"].get("ownerReferences").is_none(),
        "the foreign SA was not adopted"
    );

    server.delete("Gateway", "ns", "wp").unwrap();
    server
        .wait_until("wp's objects deleted", PATIENCE, |s| {
            s.get("Deployment", "ns", "wp").is_none() && s.get("Service", "ns", "wp").is_none()
        })
        .await
        .unwrap();
    assert_eq!(
        server.get("ServiceAccount", "ns", "wp"),
        Some(sa_before),
        "the unowned ServiceAccount of the same name is untouched"
    );
    assert!(
        deployed(&server, "ns", "keep"),
        "another Gateway's waypoint stays"
    );
    let mut deletes: Vec<String> = writes(&server)
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.path)
        .collect();
    deletes.sort();
    assert_eq!(
        deletes,
        [
            "/api/v1/namespaces/ns/services/wp",
            "/apis/apps/v1/namespaces/ns/deployments/wp",
        ],
        "deleted exactly the owned objects"
    );
}

#[tokio::test]
async fn a_bad_gateway_gets_a_condition_naming_the_field_and_no_objects() {
    let http =
        gateway("ns", "http", "istio-waypoint", "").replace("protocol: HBONE", "protocol: HTTP");
    let yaml = [
        gateway(
            "ns",
            "typo",
            "istio-waypoint",
            "labels: {istio.io/waypoint-for: services}",
        ),
        http,
        gateway("ns", "good", "istio-waypoint", ""),
    ]
    .join("---\n");
    let server = FakeApiServer::start_with(&yaml).await.unwrap();
    let _c = controller(&server, Leadership::always());
    wait_deployed(&server, "ns", "good").await;
    let cases = [
        (
            "typo",
            "InvalidParameters",
            "metadata.labels[\"istio.io/waypoint-for\"]",
        ),
        ("http", "ListenersNotValid", "spec.listeners[0].protocol"),
    ];
    for (name, reason, field) in cases {
        server
            .wait_until(&format!("status of {name}"), PATIENCE, |s| {
                condition(s, "ns", name, "Accepted").is_some()
            })
            .await
            .unwrap();
        let (status, got_reason, message) = condition(&server, "ns", name, "Accepted").unwrap();
        assert_eq!(
            (status.as_str(), got_reason.as_str()),
            ("False", reason),
            "{name}"
        );
        assert!(message.contains(field), "{name}: {message}");
        assert_eq!(
            condition(&server, "ns", name, "Programmed").unwrap().0,
            "False",
            "{name}"
        );
        for kind in ["Deployment", "Service", "ServiceAccount"] {
            assert!(server.get(kind, "ns", name).is_none(), "{name}: no {kind}");
        }
    }
}
