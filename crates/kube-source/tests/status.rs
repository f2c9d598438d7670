//! `StatusWriter` against the fake API server: one write per change, transition times kept, other controllers'
//! entries kept, nothing rewritten by a new leader, nothing written by a follower.

mod support;

use kube_source::testing::FakeApiServer;
use kube_source::{DesiredStatus, Kind, Leadership, ObjectRef, StatusWriter};
use serde_json::{json, Value};
use support::MESH;

const CONTROLLER: &str = "istio.io/mesh-controller";

fn route_status(resolved: bool) -> DesiredStatus {
    let (status, reason) = match resolved {
        true => ("True", "ResolvedRefs"),
        false => ("False", "BackendNotFound"),
    };
    DesiredStatus {
        object: ObjectRef {
            kind: Kind::HttpRoute,
            namespace: "default".into(),
            name: "reviews".into(),
        },
        generation: Some(1),
        status: json!({"parents": [{
            "parentRef": {"group": "", "kind": "Service", "name": "reviews", "port": 9080},
            "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""},
                {"type": "ResolvedRefs", "status": status, "reason": reason, "message": ""},
            ],
        }]}),
    }
}

fn our_conditions(server: &FakeApiServer) -> Vec<Value> {
    let route = server.get("HTTPRoute", "default", "reviews").unwrap();
    let parents = route["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ours = parents
        .iter()
        .find(|p| p["controllerName"] == CONTROLLER)
        .unwrap();
    ours["conditions"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_status_is_written_once_per_change() {
    let server = FakeApiServer::start_with(MESH).await.unwrap();
    let writer = StatusWriter::new(server.client().unwrap(), CONTROLLER, Leadership::always());

    let r = writer.sync(&[route_status(true)]).await;
    assert_eq!((r.written, r.unchanged, r.failed.len()), (1, 0, 0), "{r:?}");
    let r = writer.sync(&[route_status(true)]).await;
    assert_eq!((r.written, r.unchanged), (0, 1));
    assert_eq!(
        server.status_patches().len(),
        1,
        "no write for an unchanged status"
    );
    let conds = our_conditions(&server);
    assert_eq!(conds[0]["observedGeneration"], 1);
    let accepted_since = conds[0]["lastTransitionTime"].clone();
    assert!(accepted_since.is_string());

    let r = writer.sync(&[route_status(false)]).await;
    assert_eq!(r.written, 1);
    assert_eq!(server.status_patches().len(), 2);
    let conds = our_conditions(&server);
    assert_eq!(conds[1]["reason"], "BackendNotFound");
    assert_eq!(
        conds[0]["lastTransitionTime"], accepted_since,
        "Accepted did not transition"
    );
    let patch = &server.status_patches()[1];
    assert!(
        patch.body.as_ref().unwrap()["metadata"]["resourceVersion"].is_string(),
        "optimistic concurrency"
    );
}

#[tokio::test]
async fn other_controllers_entries_are_kept_and_a_new_leader_rewrites_nothing() {
    let server = FakeApiServer::start_with(MESH).await.unwrap();
    let theirs = json!({"parentRef": {"name": "ingress"}, "controllerName": "example.com/ingress",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted"}]});
    server
        .set_status(
            "HTTPRoute",
            "default",
            "reviews",
            json!({"parents": [theirs.clone()]}),
        )
        .unwrap();
    let first = StatusWriter::new(server.client().unwrap(), CONTROLLER, Leadership::always());
    assert_eq!(first.sync(&[route_status(true)]).await.written, 1);
    let route = server.get("HTTPRoute", "default", "reviews").unwrap();
    let parents = route["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 2);
    assert_eq!(parents[0], theirs);

    // A new leader (empty memory) reads, finds the status in place, and leaves it alone.
    let second = StatusWriter::new(server.client().unwrap(), CONTROLLER, Leadership::always());
    let r = second.sync(&[route_status(true)]).await;
    assert_eq!((r.written, r.unchanged), (0, 1), "{r:?}");
    assert_eq!(server.status_patches().len(), 1);
}

#[tokio::test]
async fn a_follower_writes_nothing_and_a_gone_object_is_reported() {
    let server = FakeApiServer::start_with(MESH).await.unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let follower = StatusWriter::new(server.client().unwrap(), CONTROLLER, leadership_from(rx));
    let r = follower.sync(&[route_status(true)]).await;
    assert!(r.not_leader && r.written == 0);
    assert!(server
        .requests()
        .iter()
        .all(|q| !q.path.contains("httproutes")));

    tx.send_replace(true);
    let mut gone = route_status(true);
    gone.object.name = "missing".into();
    let r = follower.sync(&[gone, route_status(true)]).await;
    assert_eq!((r.missing, r.written), (1, 1), "{r:?}");
}

#[tokio::test]
async fn gateway_programmed_and_policy_status_carry_generations() {
    let server = FakeApiServer::start_with(MESH).await.unwrap();
    server
        .apply("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: default}\nspec: {action: DENY}\n")
        .unwrap();
    let writer = StatusWriter::new(server.client().unwrap(), CONTROLLER, Leadership::always());
    let gateway = DesiredStatus {
        object: ObjectRef {
            kind: Kind::Gateway,
            namespace: "default".into(),
            name: "waypoint".into(),
        },
        generation: None,
        status: json!({"addresses": [{"type": "IPAddress", "value": "127.0.0.20"}],
            "conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed", "message": ""}]}),
    };
    let policy = DesiredStatus {
        object: ObjectRef {
            kind: Kind::AuthorizationPolicy,
            namespace: "default".into(),
            name: "deny".into(),
        },
        generation: Some(1),
        status: json!({"conditions": [{"type": "WaypointAccepted", "status": "True", "reason": "Accepted"}]}),
    };
    let r = writer.sync(&[gateway, policy]).await;
    assert_eq!(r.written, 2, "{r:?}");
    let gw = server.get("Gateway", "default", "waypoint").unwrap();
    assert_eq!(
        gw["status"]["conditions"][0]["observedGeneration"], 1,
        "the server's generation"
    );
    let ap = server
        .get("AuthorizationPolicy", "default", "deny")
        .unwrap();
    assert_eq!(ap["status"]["observedGeneration"], 1);
    assert_eq!(ap["status"]["conditions"][0]["reason"], "Accepted");
}

/// A leadership handle driven by the test.
fn leadership_from(rx: tokio::sync::watch::Receiver<bool>) -> Leadership {
    Leadership::from_receiver(rx)
}
