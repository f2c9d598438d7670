//! Identity and TLS: SPIFFE parsing, the development CA, the mutual-TLS rules of HBONE over real loopback
//! sockets, and certificate rotation.

use std::sync::Arc;
use std::time::Duration;

use mesh::devca::DevCa;
use mesh::identity::{peer_identity, CertStore, Certs, Identity, IdentityError};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TD: &str = "cluster.local";
/// Bound on anything a test waits for.
const PATIENCE: Duration = Duration::from_secs(10);

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new(TD, ns, sa)
}

#[test]
fn identity_parse_table() {
    let valid = [
        (
            "spiffe://cluster.local/ns/default/sa/bookinfo",
            Identity::new("cluster.local", "default", "bookinfo"),
        ),
        ("spiffe://td/ns/a/sa/b", Identity::new("td", "a", "b")),
        (
            "spiffe://my-td_1.example/ns/kube-system/sa/my.sa_name-1",
            Identity::new("my-td_1.example", "kube-system", "my.sa_name-1"),
        ),
    ];
    for (s, want) in valid {
        let got: Identity = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(got, want, "{s}");
        assert_eq!(got.to_string(), s);
    }
    let invalid = [
        "",
        "spiffe://",
        "spiffe://cluster.local",
        "spiffe://cluster.local/",
        "spiffe://cluster.local/ns/default",
        "spiffe://cluster.local/ns/default/sa",
        "spiffe://cluster.local/ns/default/sa/",
        "spiffe://cluster.local/ns//sa/x",
        "spiffe:///ns/default/sa/x",
        "spiffe://cluster.local/ns/default/sa/x/",
        "spiffe://cluster.local/ns/default/sa/x/extra",
        "spiffe://cluster.local/sa/x/ns/default",
        "spiffe://cluster.local/NS/default/sa/x",
        "SPIFFE://cluster.local/ns/default/sa/x",
        "https://cluster.local/ns/default/sa/x",
        "spiffe://Cluster.Local/ns/default/sa/x",
        "spiffe://cluster.local:443/ns/default/sa/x",
        "spiffe://user@cluster.local/ns/default/sa/x",
        "spiffe://cluster.local/ns/default/sa/x?q=1",
        "spiffe://cluster.local/ns/default/sa/x#frag",
        "spiffe://cluster.local/ns/../sa/x",
        "spiffe://cluster.local/ns/a b/sa/x",
        " spiffe://cluster.local/ns/default/sa/x",
    ];
    for s in invalid {
        assert!(
            matches!(s.parse::<Identity>(), Err(IdentityError::BadSpiffe(_))),
            "{s:?} should not parse"
        );
    }
}

#[test]
fn devca_certs_carry_the_identity() {
    let ca = DevCa::generate(TD).unwrap();
    assert_eq!(ca.trust_domain(), TD);
    let me = id("default", "client");
    let certs = ca.certs_for(&me).unwrap();
    assert_eq!(certs.identity, me);
    assert_eq!(peer_identity(&certs.chain), Some(me));
    assert_eq!(certs.roots.len(), 1);
}

#[test]
fn pem_mismatch_and_missing_san_are_rejected() {
    let ca = DevCa::generate(TD).unwrap();
    let (cert_a, _key_a) = ca.issue(&id("a", "a"), 1).unwrap();
    let (_cert_b, key_b) = ca.issue(&id("b", "b"), 1).unwrap();
    let err =
        Certs::from_pem(cert_a.as_bytes(), key_b.as_bytes(), ca.ca_pem().as_bytes()).unwrap_err();
    assert!(matches!(err, IdentityError::Pem { .. }), "{err}");

    let err = Certs::from_pem(b"", key_b.as_bytes(), ca.ca_pem().as_bytes()).unwrap_err();
    assert!(matches!(err, IdentityError::Pem { .. }), "{err}");

    // A certificate with only a DNS SAN proves no identity.
    let key = rcgen::KeyPair::generate().unwrap();
    let dns_only = rcgen::CertificateParams::new(vec!["example.com".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let err = Certs::from_pem(
        dns_only.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
        ca.ca_pem().as_bytes(),
    )
    .unwrap_err();
    assert!(matches!(err, IdentityError::NoSpiffeSan), "{err}");
}

#[test]
fn devca_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate(TD).unwrap();
    ca.write_ca(dir.path()).unwrap();
    let me = id("ns1", "sa1");
    let paths = ca.write_workload(dir.path(), &me).unwrap();
    assert_eq!(paths.cert, dir.path().join("ns1/sa1/cert.pem"));
    assert_eq!(paths.ca, dir.path().join("ca.pem"));
    let certs = Certs::load(&paths).unwrap();
    assert_eq!(certs.identity, me);

    // A reloaded CA issues certificates that chain to the original `ca.pem`.
    let reloaded = DevCa::load(dir.path()).unwrap();
    assert_eq!(reloaded.trust_domain(), TD);
    assert_eq!(reloaded.ca_pem(), ca.ca_pem());
    let (cert, key) = reloaded.issue(&id("ns2", "sa2"), 1).unwrap();
    let issued = Certs::from_pem(cert.as_bytes(), key.as_bytes(), ca.ca_pem().as_bytes()).unwrap();
    let server = CertStore::new(ca.certs_for(&id("ns1", "server")).unwrap());
    let client = CertStore::new(issued);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let outcome = handshake(&server, &client, &[id("ns1", "server")]).await;
        assert_eq!(outcome.unwrap().0, id("ns2", "sa2"));
    });
}

/// What one handshake showed each side: (client identity seen by the server, server leaf seen by the client).
type Seen = (Identity, Vec<u8>);

/// One TLS connection over loopback; `Ok` only if both sides completed the handshake and exchanged a byte.
async fn handshake(
    server: &CertStore,
    client: &CertStore,
    expected: &[Identity],
) -> Result<Seen, String> {
    handshake_with(server, client.client_config(expected)).await
}

async fn handshake_with(
    server: &CertStore,
    client_config: Arc<rustls::ClientConfig>,
) -> Result<Seen, String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config());
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor
            .accept(tcp)
            .await
            .map_err(|e| format!("server: {e}"))?;
        let (_, session) = tls.get_ref();
        assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
        assert!(session.server_name().is_none(), "no SNI is sent");
        let peer = peer_identity(session.peer_certificates().unwrap()).unwrap();
        tls.write_all(b"k")
            .await
            .map_err(|e| format!("server write: {e}"))?;
        tls.flush().await.unwrap();
        Ok::<_, String>(peer)
    });
    let client_side = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(client_config);
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("client: {e}"))?;
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte)
            .await
            .map_err(|e| format!("client read: {e}"))?;
        Ok::<_, String>(leaf)
    };
    let run = async {
        let client = client_side.await;
        let server = server_side.await.unwrap();
        match (server, client) {
            (Ok(server), Ok(client)) => Ok((server, client)),
            (server, client) => Err(format!("{:?} | {:?}", server.err(), client.err())),
        }
    };
    tokio::time::timeout(PATIENCE, run)
        .await
        .expect("handshake hung")
}

#[tokio::test]
async fn tls_same_ca_connects() {
    let ca = DevCa::generate(TD).unwrap();
    let server_id = id("istio-system", "waypoint");
    let server = CertStore::new(ca.certs_for(&server_id).unwrap());
    let client = CertStore::new(ca.certs_for(&id("default", "client")).unwrap());
    let (seen_client, _) = handshake(&server, &client, &[id("x", "y"), server_id])
        .await
        .unwrap();
    assert_eq!(seen_client, id("default", "client"));
}

#[tokio::test]
async fn tls_client_from_another_ca_is_rejected() {
    let ca = DevCa::generate(TD).unwrap();
    let other_ca = DevCa::generate(TD).unwrap();
    let server_id = id("istio-system", "waypoint");
    let server = CertStore::new(ca.certs_for(&server_id).unwrap());
    // The client trusts the server's CA but presents a certificate from another one.
    let (cert, key) = other_ca.issue(&id("default", "client"), 1).unwrap();
    let client = CertStore::new(
        Certs::from_pem(cert.as_bytes(), key.as_bytes(), ca.ca_pem().as_bytes()).unwrap(),
    );
    let err = handshake(&server, &client, &[server_id]).await.unwrap_err();
    assert!(err.contains("server: invalid peer certificate"), "{err}");
}

#[tokio::test]
async fn tls_client_from_another_trust_domain_is_rejected() {
    let ca = DevCa::generate(TD).unwrap();
    let server_id = id("istio-system", "waypoint");
    let server = CertStore::new(ca.certs_for(&server_id).unwrap());
    let client = CertStore::new(
        ca.certs_for(&Identity::new("evil.local", "default", "client"))
            .unwrap(),
    );
    let err = handshake(&server, &client, &[server_id]).await.unwrap_err();
    assert!(
        err.contains("server: ") && err.contains("is not in trust domain cluster.local"),
        "{err}"
    );
}

#[tokio::test]
async fn tls_unexpected_server_identity_is_rejected() {
    let ca = DevCa::generate(TD).unwrap();
    let server = CertStore::new(ca.certs_for(&id("istio-system", "impostor")).unwrap());
    let client = CertStore::new(ca.certs_for(&id("default", "client")).unwrap());
    let err = handshake(&server, &client, &[id("istio-system", "waypoint")])
        .await
        .unwrap_err();
    assert!(
        err.contains("client: ") && err.contains("is not one of the expected"),
        "{err}"
    );

    // Nor does a server from another CA pass, whatever identity it claims.
    let other_ca = DevCa::generate(TD).unwrap();
    let server_id = id("istio-system", "waypoint");
    let server = CertStore::new(other_ca.certs_for(&server_id).unwrap());
    let err = handshake(&server, &client, &[server_id]).await.unwrap_err();
    assert!(err.contains("client: invalid peer certificate"), "{err}");
}

#[tokio::test]
async fn tls12_only_client_is_rejected() {
    let ca = DevCa::generate(TD).unwrap();
    let server_id = id("istio-system", "waypoint");
    let server = CertStore::new(ca.certs_for(&server_id).unwrap());
    let client_certs = ca.certs_for(&id("default", "client")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_certs.roots[0].clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(client_certs.chain.clone(), client_certs.key.clone_key())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let err = handshake_with(&server, Arc::new(config)).await.unwrap_err();
    assert!(err.contains("Tls12NotOfferedOrEnabled"), "{err}");
}

#[tokio::test]
async fn rotation_new_handshakes_present_the_new_cert() {
    let ca = DevCa::generate(TD).unwrap();
    let server_id = id("istio-system", "waypoint");
    let server = CertStore::new(ca.certs_for(&server_id).unwrap());
    let client = CertStore::new(ca.certs_for(&id("default", "client")).unwrap());
    let expected = [server_id.clone()];

    let (_, before) = handshake(&server, &client, &expected).await.unwrap();
    assert_eq!(before, server.current().chain[0].to_vec());
    let cached = client.client_config(&expected);
    assert!(
        Arc::ptr_eq(&cached, &client.client_config(&expected)),
        "client configs are cached"
    );

    let config_before = server.server_config();
    server.replace(ca.certs_for(&server_id).unwrap());
    client.replace(ca.certs_for(&id("default", "client")).unwrap());
    assert!(!Arc::ptr_eq(&config_before, &server.server_config()));
    assert!(
        !Arc::ptr_eq(&cached, &client.client_config(&expected)),
        "rotation clears the cache"
    );

    let (seen_client, after) = handshake(&server, &client, &expected).await.unwrap();
    assert_ne!(before, after);
    assert_eq!(after, server.current().chain[0].to_vec());
    assert_eq!(seen_client, id("default", "client"));
}

#[test]
fn client_config_cache_ignores_order_and_duplicates() {
    let ca = DevCa::generate(TD).unwrap();
    let store = CertStore::new(ca.certs_for(&id("default", "client")).unwrap());
    let (a, b) = (id("a", "a"), id("b", "b"));
    let one = store.client_config(&[a.clone(), b.clone()]);
    let two = store.client_config(&[b.clone(), a.clone(), b.clone()]);
    assert!(Arc::ptr_eq(&one, &two));
    assert!(!Arc::ptr_eq(&one, &store.client_config(&[a])));
    assert!(one.alpn_protocols == vec![b"h2".to_vec()] && !one.enable_sni);
}

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn watch_rereads_rotated_files_and_keeps_old_certs_on_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate(TD).unwrap();
    ca.write_ca(dir.path()).unwrap();
    let me = id("default", "client");
    let paths = ca.write_workload(dir.path(), &me).unwrap();
    let store = CertStore::load(&paths).unwrap();
    let _guard = store.watch(paths.clone());
    let first = store.current().chain[0].clone();

    // A garbage write is logged and ignored ...
    std::fs::write(&paths.cert, b"not a certificate").unwrap();
    // ... and a good one afterwards is picked up.
    ca.write_workload(dir.path(), &me).unwrap();
    eventually("the rotated certificate", || {
        store.current().chain[0] != first
    })
    .await;
    let second = store.current().chain[0].clone();
    assert_eq!(store.identity(), me);

    std::fs::write(&paths.key, b"garbage").unwrap();
    // Nothing to wait for but the debounce: give the watcher a moment, then check the old certs still serve.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.current().chain[0], second);
}
