//! The push tier over mutual TLS on loopback, with certificates from a `DevCa` made in the test: a waypoint
//! identity receives its own namespace's Gateway config and is refused (`PermissionDenied`, counted) another
//! namespace's or the ztunnel share; the ztunnel identity subscribes as a ztunnel; a client certificate from
//! another CA fails the handshake; a client expecting another control-plane identity refuses the server.

mod common;

use std::sync::Arc;

use common::{until, waypoint_sub, ztunnel_sub, GenMesh, PATIENCE};
use mesh::config::Live;
use mesh::devca::DevCa;
use mesh::identity::{CertStore, Certs, Identity};
use push::client::{subscribe, DocumentSet};
use push::tls::{default_control_plane_identity, default_ztunnel_identity};
use push::{Access, ClientTls, ControlPlane, Dial};
use tonic::Code;

const TD: &str = "cluster.local";

struct Tier {
    ca: DevCa,
    cp: ControlPlane,
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Tier {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
    }
}

/// A control plane serving mutual TLS as `istio-system/waypoint-control-plane`, with a 2-namespace mesh.
async fn tier() -> Tier {
    let ca = DevCa::generate(TD).unwrap();
    let cp = ControlPlane::new();
    cp.publish(&GenMesh::new(2, 2, 1).documents()).unwrap();
    let certs = CertStore::new(ca.certs_for(&default_control_plane_identity(TD)).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let access = Access {
        ztunnel: default_ztunnel_identity(TD),
    };
    let serving = cp.clone();
    tokio::spawn(async move {
        serving
            .serve_tls(listener, certs, access, async {
                let _ = stopped.await;
            })
            .await
    });
    Tier {
        ca,
        cp,
        url,
        stop: Some(stop),
    }
}

impl Tier {
    /// Dials as `ns/sa` (certified by this tier's CA), expecting the default control-plane identity.
    fn dial(&self, ns: &str, sa: &str) -> Dial {
        self.dial_expecting(ns, sa, default_control_plane_identity(TD))
    }
    fn dial_expecting(&self, ns: &str, sa: &str, expect: Identity) -> Dial {
        let certs = CertStore::new(self.ca.certs_for(&Identity::new(TD, ns, sa)).unwrap());
        Dial::new(
            self.url.clone(),
            Some(ClientTls {
                certs,
                control_plane: expect,
            }),
        )
    }
}

#[tokio::test]
async fn a_waypoint_identity_subscribes_only_for_its_own_namespace() {
    let t = tier().await;
    // ns-0's waypoint identity, for ns-0's Gateway: its config arrives.
    let mut s = tokio::time::timeout(
        PATIENCE,
        subscribe(
            t.dial("ns-0", "wp"),
            waypoint_sub("wp-0", "ns-0"),
            DocumentSet::default(),
        ),
    )
    .await
    .unwrap()
    .expect("ns-0/wp subscribes for ns-0/wp");
    let first = tokio::time::timeout(PATIENCE, s.next())
        .await
        .unwrap()
        .unwrap()
        .expect("an update");
    let names: Vec<&String> = first.documents.resources.keys().collect();
    assert!(
        names.iter().any(|n| n.as_str() == "Gateway/ns-0/wp"),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.contains("/ns-1/")),
        "nothing of ns-1: {names:?}"
    );
    s.ack(first).await.unwrap();
    assert_eq!(t.cp.stats().denied, 0);

    // The same identity asking for ns-1's Gateway: refused by its certificate, whatever it claims.
    let refused = subscribe(
        t.dial("ns-0", "wp"),
        waypoint_sub("wp-0", "ns-1"),
        DocumentSet::default(),
    )
    .await
    .expect_err("ns-0/wp may not subscribe for ns-1/wp");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let m = refused.message();
    assert!(
        m.contains("spiffe://cluster.local/ns/ns-0/sa/wp") && m.contains("ns-1/wp"),
        "names the identity and the Gateway: {m}"
    );
    // ... and as a ztunnel.
    let as_ztunnel = subscribe(
        t.dial("ns-0", "wp"),
        ztunnel_sub("wp-0"),
        DocumentSet::default(),
    )
    .await
    .expect_err("a waypoint identity is not the ztunnel");
    assert_eq!(as_ztunnel.code(), Code::PermissionDenied);
    let stats = t.cp.stats();
    assert_eq!(stats.denied, 2, "{stats:?}");
    assert!(stats.last_denied.unwrap().contains("ztunnel"));
    assert!(
        !stats.nodes.contains_key("wp-0") || stats.nodes["wp-0"].streams == 1,
        "refused subscriptions open no session"
    );
}

#[tokio::test]
async fn the_ztunnel_identity_watches_the_ztunnel_share() {
    let t = tier().await;
    let live = Arc::new(Live::new(0usize));
    let guard = push::watch_push(
        t.dial("istio-system", "ztunnel"),
        ztunnel_sub("node-0"),
        TD.into(),
        live.clone(),
        |m: &mesh::config::Mesh| Ok(m.services.len()),
    );
    until(&mut guard.status(), "the ztunnel's first update", |s| {
        s.applied >= 1
    })
    .await;
    assert_eq!(*live.load(), 4, "every Service of the 2 namespaces");
    assert_eq!(t.cp.stats().denied, 0);
}

#[tokio::test]
async fn a_client_certificate_of_another_ca_fails_the_handshake() {
    let t = tier().await;
    // Certified by a stranger CA (same trust domain, same names), trusting the tier's CA: only the server's
    // check of the client certificate is under test.
    let stranger = DevCa::generate(TD).unwrap();
    let (cert, key) = stranger.issue(&Identity::new(TD, "ns-0", "wp"), 1).unwrap();
    let certs = Certs::from_pem(cert.as_bytes(), key.as_bytes(), t.ca.ca_pem().as_bytes()).unwrap();
    let dial = Dial::new(
        t.url.clone(),
        Some(ClientTls {
            certs: CertStore::new(certs),
            control_plane: default_control_plane_identity(TD),
        }),
    );
    let e = tokio::time::timeout(
        PATIENCE,
        subscribe(dial, waypoint_sub("x", "ns-0"), DocumentSet::default()),
    )
    .await
    .unwrap()
    .expect_err("a certificate of another CA is refused");
    assert_ne!(e.code(), Code::Ok);
    assert!(
        t.cp.wait_for(PATIENCE, |s| s.handshake_failures >= 1).await,
        "the control plane counts the failed handshake: {:?}",
        t.cp.stats()
    );
    let stats = t.cp.stats();
    assert_eq!(
        (stats.denied, stats.nodes.len()),
        (0, 0),
        "never reached gRPC"
    );
}

#[tokio::test]
async fn a_client_expecting_another_control_plane_identity_refuses_to_connect() {
    let t = tier().await;
    let impostor_check = Identity::new(TD, "istio-system", "istiod");
    let dial = t.dial_expecting("ns-0", "wp", impostor_check);
    let e = tokio::time::timeout(
        PATIENCE,
        subscribe(dial, waypoint_sub("x", "ns-0"), DocumentSet::default()),
    )
    .await
    .unwrap()
    .expect_err("the server is not the expected identity");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("waypoint-control-plane") && e.message().contains("istiod"),
        "says what was presented and what was expected: {}",
        e.message()
    );
    assert!(t.cp.stats().nodes.is_empty());
}
