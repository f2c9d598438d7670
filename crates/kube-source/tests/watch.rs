//! `watch_api` against the fake API server: initial list, events, a watch that dies mid-stream, `410 Gone`,
//! bookmarks, a bad object, readiness and scoping.

mod support;

use std::path::PathBuf;

use kube_source::testing::FakeApiServer;
use kube_source::{Kind, WatchOptions};
use support::*;

#[tokio::test]
async fn the_initial_list_fills_the_mesh() {
    let server = FakeApiServer::start_with(MESH).await.unwrap();
    let (live, guard) = watch_mesh(&server, fast_options());
    until_live(&guard, &live, "the first swap", |l| l.generation() == 2).await;
    assert!(guard.is_ready() && guard.pending().is_empty());
    let mesh = live.load();
    assert_eq!(mesh.namespaces.len(), 2);
    assert_eq!(mesh.services.len(), 4);
    assert_eq!(mesh.workloads.len(), 2);
    assert_eq!(weights(&mesh), vec![90, 10]);
    let reviews = mesh.service("default", "reviews").expect("reviews");
    let wp = reviews.waypoint.as_ref().expect("bound to the waypoint");
    let waypoint = mesh.waypoint(wp).expect("waypoint");
    assert_eq!(waypoint.addr, Some("127.0.0.20:15008".parse().unwrap()));
    assert_eq!(mesh.endpoints(reviews, 9080).len(), 2);
    assert!(live.last_error().is_none());
    // Nothing is listed twice on a quiet start.
    assert_eq!(lists(&server, "httproutes"), 1);
}

#[tokio::test]
async fn nothing_is_swapped_in_before_every_kind_has_listed() {
    let server = FakeApiServer::start_with(MESH).await.unwrap();
    let mut opts = fast_options();
    // A selector the server refuses: the Pod list keeps failing.
    opts.label_selectors
        .insert(Kind::Pod, "app in (reviews)".into());
    let (live, guard) = watch_mesh(&server, opts);
    server
        .wait_until(
            "every other kind listed, pods refused twice",
            PATIENCE,
            |s| {
                let reqs = s.requests();
                let refused = reqs
                    .iter()
                    .filter(|r| r.is_list("pods") && r.status == 400)
                    .count();
                refused >= 2 && guard.pending() == vec!["Pod".to_string()]
            },
        )
        .await
        .unwrap();
    assert!(!guard.is_ready());
    assert_eq!(guard.renders(), 0);
    assert_eq!(live.generation(), 1, "the empty initial value still serves");
}

#[tokio::test]
async fn added_modified_and_deleted_events_change_the_mesh() {
    let server = FakeApiServer::start_with(MESH).await.unwrap();
    let (live, guard) = watch_mesh(&server, fast_options());
    guard.ready().await;

    server.apply(&route_with_weights(50, 50)).unwrap();
    until_live(&guard, &live, "MODIFIED route", |l| {
        weights(&l.load()) == vec![50, 50]
    })
    .await;

    server
        .apply("apiVersion: v1\nkind: Service\nmetadata: {name: ratings, namespace: default}\nspec: {clusterIP: 10.0.0.120, ports: [{port: 80}]}\n")
        .unwrap();
    until_live(&guard, &live, "ADDED service", |l| {
        l.load().service("default", "ratings").is_some()
    })
    .await;

    server.delete("Pod", "default", "reviews-v2-0").unwrap();
    until_live(&guard, &live, "DELETED pod", |l| {
        l.load().workloads.len() == 1
    })
    .await;
    let mesh = live.load();
    assert_eq!(
        mesh.endpoints(mesh.service("default", "reviews").unwrap(), 9080)
            .len(),
        1
    );
    assert_eq!(guard.relists(), 0);
}

#[tokio::test]
async fn a_watch_cut_mid_event_resumes_from_the_last_version_seen() {
    let server = FakeApiServer::start_with(MESH).await.unwrap();
    let (live, guard) = watch_mesh(&server, fast_options());
    guard.ready().await;
    let seen = server.apply(&route_with_weights(80, 20)).unwrap();
    until_live(&guard, &live, "the first change", |l| {
        weights(&l.load()) == vec![80, 20]
    })
    .await;
    server
        .wait_until("routes watched", PATIENCE, |s| {
            s.open_watches("httproutes") == 1
        })
        .await
        .unwrap();

    // Every stream breaks in the middle of a line; changes happen while nobody watches.
    server.hold_watches();
    server.cut_watches();
    server
        .wait_until("streams closed", PATIENCE, |s| {
            s.open_watches("httproutes") == 0
        })
        .await
        .unwrap();
    server.apply(&route_with_weights(70, 30)).unwrap();
    server.delete("Pod", "default", "reviews-v1-0").unwrap();
    server.release_watches();

    until_live(&guard, &live, "the changes made while cut", |l| {
        let m = l.load();
        weights(&m) == vec![70, 30] && m.workloads.len() == 1
    })
    .await;
    let versions = watch_versions(&server, "httproutes");
    assert_eq!(versions.len(), 2, "one resumed watch: {versions:?}");
    assert_eq!(
        versions[1], seen,
        "resumed exactly after the last event delivered"
    );
    assert_eq!(lists(&server, "httproutes"), 1, "no relist");
    assert_eq!(guard.relists(), 0);
    assert!(live.last_error().is_none());
}

#[tokio::test]
async fn gone_410_relists_and_the_store_converges() {
    for as_http in [false, true] {
        let server = FakeApiServer::start_with(MESH).await.unwrap();
        server.set_gone_as_http(as_http);
        let (live, guard) = watch_mesh(&server, fast_options());
        guard.ready().await;
        // Let the services watch fall behind the global version.
        server.apply(&route_with_weights(60, 40)).unwrap();
        until_live(&guard, &live, "a change", |l| {
            weights(&l.load()) == vec![60, 40]
        })
        .await;
        server
            .wait_until("services watched", PATIENCE, |s| {
                s.open_watches("services") == 1
            })
            .await
            .unwrap();

        server.hold_watches();
        server.cut_watches();
        server
            .wait_until("streams closed", PATIENCE, |s| {
                s.open_watches("services") == 0
            })
            .await
            .unwrap();
        server.delete("Service", "other", "elsewhere").unwrap();
        server
            .apply("apiVersion: v1\nkind: Service\nmetadata: {name: late, namespace: other}\nspec: {ports: [{port: 80}]}\n")
            .unwrap();
        server.compact();
        server.release_watches();

        until_live(&guard, &live, "convergence after the relist", |l| {
            let m = l.load();
            m.service("other", "elsewhere").is_none() && m.service("other", "late").is_some()
        })
        .await;
        assert_eq!(
            lists(&server, "services"),
            2,
            "one relist (HTTP 410: {as_http})"
        );
        assert!(guard.relists() >= 1);
        let statuses: Vec<u16> = server
            .requests()
            .iter()
            .filter(|r| r.is_watch() && r.path.ends_with("/services"))
            .map(|r| r.status)
            .collect();
        assert_eq!(statuses.contains(&410), as_http, "{statuses:?}");
        assert_eq!(guard.count(Kind::Service), 4);
    }
}

#[tokio::test]
async fn bookmarks_advance_the_version_a_watch_resumes_from() {
    let server = FakeApiServer::start_with(MESH).await.unwrap();
    let (live, guard) = watch_mesh(&server, fast_options());
    guard.ready().await;
    server
        .wait_until("every kind watched", PATIENCE, |s| {
            Kind::ALL
                .iter()
                .all(|k| s.open_watches(&k.api_resource().plural) == 1)
        })
        .await
        .unwrap();
    // The services watch has seen nothing since its list; a bookmark carries it past the pod change.
    let listed_at = watch_versions(&server, "services")[0];
    server.delete("Pod", "default", "reviews-v2-0").unwrap();
    let mark = server.bookmark();
    server.end_watches();
    server
        .wait_until("streams closed", PATIENCE, |s| {
            s.open_watches("services") == 0
        })
        .await
        .unwrap();
    server.compact();
    server
        .wait_until("services watched again", PATIENCE, |s| {
            s.open_watches("services") == 1
        })
        .await
        .unwrap();
    let versions = watch_versions(&server, "services");
    assert_eq!(versions, vec![listed_at, mark]);
    assert_eq!(
        lists(&server, "services"),
        1,
        "no relist: the bookmark kept the watch fresh"
    );
    until_live(&guard, &live, "the pod deletion", |l| {
        l.load().workloads.len() == 1
    })
    .await;
    assert_eq!(guard.relists(), 0);
}

#[tokio::test]
async fn a_bad_object_keeps_the_last_good_config_and_names_itself() {
    let server = FakeApiServer::start_with(MESH).await.unwrap();
    let (live, guard) = watch_mesh(&server, fast_options());
    until_live(&guard, &live, "the first swap", |l| l.generation() == 2).await;

    server.apply(&route_with_weights(-1, 10)).unwrap();
    until_live(&guard, &live, "the rejection", |l| l.last_error().is_some()).await;
    let err = live.last_error().unwrap();
    assert_eq!(err.file, PathBuf::from("api/HTTPRoute/default/reviews"));
    assert!(err.field.contains("weight"), "{err}");
    assert_eq!(live.generation(), 2, "the last good config keeps serving");
    assert_eq!(weights(&live.load()), vec![90, 10]);

    server.apply(&route_with_weights(30, 70)).unwrap();
    until_live(&guard, &live, "the fix", |l| l.generation() == 3).await;
    assert!(live.last_error().is_none());
    assert_eq!(weights(&live.load()), vec![30, 70]);
}

#[tokio::test]
async fn scoping_watches_only_the_namespaces_and_node_asked_for() {
    let server = FakeApiServer::start_with(MESH).await.unwrap();
    let opts = WatchOptions {
        namespaces: Some(vec!["default".into()]),
        node_name: Some("node-a".into()),
        ..fast_options()
    };
    let (live, guard) = watch_mesh(&server, opts);
    until_live(&guard, &live, "the first swap", |l| l.generation() == 2).await;
    let mesh = live.load();
    assert_eq!(mesh.namespaces.keys().collect::<Vec<_>>(), vec!["default"]);
    assert!(mesh.service("other", "elsewhere").is_none());
    assert_eq!(mesh.services.len(), 3);
    let pods: Vec<&str> = mesh.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(pods, vec!["reviews-v1-0"]);
    let reqs = server.requests();
    assert!(
        reqs.iter()
            .filter(|r| r.method == "GET" && !r.path.ends_with("/namespaces"))
            .all(|r| r.path.contains("/namespaces/default/")),
        "namespaced paths only"
    );
    let pod_list = reqs.iter().find(|r| r.is_list("pods")).unwrap();
    assert_eq!(
        pod_list.query.get("fieldSelector").map(String::as_str),
        Some("spec.nodeName=node-a")
    );
    let ns_list = reqs.iter().find(|r| r.is_list("namespaces")).unwrap();
    assert_eq!(
        ns_list.query.get("fieldSelector").map(String::as_str),
        Some("metadata.name=default")
    );
}

#[tokio::test]
async fn the_documents_hold_kinds_the_mesh_skips() {
    let server = FakeApiServer::start_with(MESH).await.unwrap();
    let live = std::sync::Arc::new(mesh::config::Live::new(Vec::<(PathBuf, String)>::new()));
    let guard = kube_source::watch_api_documents(
        server.client().unwrap(),
        fast_options(),
        std::time::Duration::from_millis(20),
        live.clone(),
        |docs: &[(PathBuf, String)]| Ok(docs.to_vec()),
    );
    guard.ready().await;
    server
        .apply("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: default}\nspec: {action: DENY}\n")
        .unwrap();
    let path = PathBuf::from("api/AuthorizationPolicy/default/deny");
    until_live(&guard, &live, "the policy", |l| {
        l.load().iter().any(|(p, _)| *p == path)
    })
    .await;
    let docs = live.load();
    let (_, text) = docs.iter().find(|(p, _)| *p == path).unwrap();
    let policy: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(policy["apiVersion"], "security.istio.io/v1");
    assert_eq!(policy["spec"]["action"], "DENY");
    assert_eq!(docs.len(), 11, "10 objects of the mesh and the policy");
}
