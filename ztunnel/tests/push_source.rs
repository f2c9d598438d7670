//! A ztunnel configured by a push control plane over mutual TLS (`NodeSource::Push`), in process on loopback:
//! the control plane serves as `istio-system/waypoint-control-plane`, the node subscribes as
//! `istio-system/ztunnel` (certificates from a `DevCa` made here). Traffic goes through the node's real
//! HBONE inbound (the raw caller of the authorization tests), then a node-tier AuthorizationPolicy published on
//! the control plane starts denying that caller — the same compile-and-swap as the folder source.

#[allow(dead_code)]
#[path = "e2e/fixture.rs"]
mod fixture;

#[path = "authz/caller.rs"]
mod caller;

use std::io;
use std::path::PathBuf;

use caller::Caller;
use fixture::{addr_in_use, echo_server, id, probe_port, round_trip, Net, PATIENCE, TD};
use http::StatusCode;
use mesh::devca::DevCa;
use mesh::identity::CertStore;
use push::tls::{default_control_plane_identity, default_ztunnel_identity};
use push::{Access, ClientTls, ControlPlane, Dial};
use ztunnel::ops::Ops;
use ztunnel::source::NodeSource;
use ztunnel::{NodeConfig, Ztunnel};

const DENY_CLIENT: &str = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
    metadata: {name: deny-client, namespace: demo}\n\
    spec: {action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]}\n";

struct Setup {
    net: Net,
    hbone_port: u16,
    app: std::net::SocketAddr,
    ca: DevCa,
    cp: ControlPlane,
    manifests: String,
    node: Ztunnel,
    _certs: tempfile::TempDir,
    _app: tokio::task::JoinHandle<()>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// The control plane over mTLS with the e2e cluster's manifests, and node-b subscribed to it. `Ok(None)`: a
/// port was taken (the caller retries on another subnet).
async fn setup() -> io::Result<Option<Setup>> {
    let net = Net::random();
    let hbone_port = probe_port(net.ip(1));
    let (app, app_task) = echo_server(net.addr(3, 0)).await?;
    let ca = DevCa::generate(TD).unwrap();
    let certs = tempfile::tempdir()?;
    ca.write_ca(certs.path()).unwrap();
    for sa in ["app", "other"] {
        ca.write_workload(certs.path(), &id(sa)).unwrap();
    }
    let manifests = fixture::manifests(net, hbone_port, app.port());
    let cp = ControlPlane::new();
    cp.publish(&[(PathBuf::from("cluster.yaml"), manifests.clone())])
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let own = CertStore::new(ca.certs_for(&default_control_plane_identity(TD)).unwrap());
    let access = Access {
        ztunnel: default_ztunnel_identity(TD),
    };
    let serving = cp.clone();
    tokio::spawn(async move {
        serving
            .serve_tls(listener, own, access, async {
                let _ = stopped.await;
            })
            .await
    });

    let source = NodeSource::Push {
        dial: Dial::new(
            url,
            Some(ClientTls {
                certs: CertStore::new(ca.certs_for(&default_ztunnel_identity(TD)).unwrap()),
                control_plane: default_control_plane_identity(TD),
            }),
        ),
        node_id: "node-b".into(),
    };
    let cfg = NodeConfig {
        manifests: PathBuf::new(),
        certs_dir: certs.path().to_path_buf(),
        trust_domain: TD.into(),
        node: Some("node-b".into()),
        workloads: vec![],
        hbone_port,
        socks5: None,
        socks5_default_workload: None,
        redirect: None,
    };
    let started = tokio::time::timeout(PATIENCE, Ztunnel::start_from(cfg, source, Ops::default()))
        .await
        .expect("the first push arrives in time");
    let node = match started {
        Ok(z) => z,
        Err(e) if addr_in_use(&e) => return Ok(None),
        Err(e) => panic!("node-b from the control plane: {e:#}"),
    };
    Ok(Some(Setup {
        net,
        hbone_port,
        app,
        ca,
        cp,
        manifests,
        node,
        _certs: certs,
        _app: app_task,
        _stop: stop,
    }))
}

impl Setup {
    /// demo/client CONNECTs to the echo app through node-b's HBONE inbound; on `200` a round trip must work.
    async fn call(&self) -> StatusCode {
        let client = Caller {
            store: CertStore::new(self.ca.certs_for(&id("client")).unwrap()),
            from: self.net.ip(2),
        };
        let hbone = self.net.addr(3, self.hbone_port);
        let (status, stream) = client.connect(hbone, &id("app"), self.app).await;
        if let Some(mut s) = stream {
            assert_eq!(round_trip(&mut s, b"pushed").await, b"pushed");
        }
        status
    }
}

#[tokio::test]
async fn a_ztunnel_serves_what_the_control_plane_pushes_over_mtls() {
    let mut s = None;
    for _ in 0..5 {
        match setup().await {
            Ok(Some(ok)) => {
                s = Some(ok);
                break;
            }
            Ok(None) => continue,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("setup: {e}"),
        }
    }
    let s = s.expect("no free ports after 5 attempts");
    assert!(
        s.cp.wait_for(PATIENCE, |st| st
            .nodes
            .get("node-b")
            .is_some_and(|n| n.connected && n.synced_version == 1))
            .await,
        "node-b acknowledged the first set: {:?}",
        s.cp.stats()
    );

    // Traffic through the push-configured node.
    for _ in 0..3 {
        assert_eq!(s.call().await, StatusCode::OK);
    }
    assert_eq!(s.node.stats().inbound_accepted, 3);

    // A DENY published on the control plane reaches the node and is enforced.
    let before = s.node.view();
    let version =
        s.cp.publish(&[(
            PathBuf::from("cluster.yaml"),
            s.manifests.clone() + DENY_CLIENT,
        )])
        .unwrap();
    assert!(
        s.cp.wait_for(PATIENCE, |st| st.nodes["node-b"].synced_version == version)
            .await,
        "node-b acknowledged the policy: {:?}",
        s.cp.stats()
    );
    assert!(
        !std::sync::Arc::ptr_eq(&before, &s.node.view()),
        "a new view was swapped in"
    );
    assert_eq!(s.call().await, StatusCode::UNAUTHORIZED);
    let stats = s.node.stats();
    assert_eq!(
        stats.inbound_denied.get("demo/deny-client"),
        Some(&1),
        "{stats:?}"
    );
    assert!(s.cp.stats().denied == 0);
    s.node.shutdown().await;
}
