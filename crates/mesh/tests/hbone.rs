//! HBONE over real loopback sockets: the inbound server, the outbound pool and the stream adapter, with
//! certificates from a development CA generated per test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use mesh::devca::DevCa;
use mesh::hbone::{
    serve, ConnectHandler, Dial, H2Stream, HboneError, InboundConnect, Pool, PoolOptions, Respond,
    ServerOptions,
};
use mesh::identity::{CertStore, Identity};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const TD: &str = "cluster.local";
/// Bound on anything a test waits for.
const PATIENCE: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A CA, a server (the waypoint) and a client workload.
struct Certs {
    ca: DevCa,
    server_id: Identity,
    server: CertStore,
    client_id: Identity,
    client: CertStore,
}

fn certs() -> Certs {
    let ca = DevCa::generate(TD).unwrap();
    let server_id = Identity::new(TD, "istio-system", "waypoint");
    let client_id = Identity::new(TD, "default", "client");
    Certs {
        server: CertStore::new(ca.certs_for(&server_id).unwrap()),
        client: CertStore::new(ca.certs_for(&client_id).unwrap()),
        ca,
        server_id,
        client_id,
    }
}

/// What a handler does with each CONNECT; every request is reported on `seen`.
enum Behaviour {
    Echo,
    /// Accept, write this many bytes, drop the stream without shutdown.
    SendAndDrop(usize),
    Refuse(StatusCode),
    Ignore,
}

struct Handler {
    behaviour: Behaviour,
    seen: mpsc::UnboundedSender<InboundConnect>,
}

#[async_trait::async_trait]
impl ConnectHandler for Handler {
    async fn handle(self: Arc<Self>, req: InboundConnect, respond: Respond) {
        let _ = self.seen.send(req);
        match self.behaviour {
            Behaviour::Echo => {
                let stream = respond.accept().unwrap();
                echo(stream).await;
            }
            Behaviour::SendAndDrop(n) => {
                let mut stream = respond.accept().unwrap();
                stream.write_all(&vec![9u8; n]).await.unwrap();
            }
            Behaviour::Refuse(status) => respond.refuse(status),
            Behaviour::Ignore => drop(respond),
        }
    }
}

async fn echo(stream: H2Stream) {
    let (mut read, mut write) = tokio::io::split(stream);
    let _ = tokio::io::copy(&mut read, &mut write).await;
    let _ = write.shutdown().await;
}

struct Server {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    seen: mpsc::UnboundedReceiver<InboundConnect>,
}

async fn start(certs: &CertStore, behaviour: Behaviour, options: ServerOptions) -> Server {
    start_on(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        certs,
        behaviour,
        options,
    )
}

fn start_on(
    listener: TcpListener,
    certs: &CertStore,
    behaviour: Behaviour,
    options: ServerOptions,
) -> Server {
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let handler = Arc::new(Handler {
        behaviour,
        seen: seen_tx,
    });
    let task = tokio::spawn(serve(
        listener,
        certs.clone(),
        handler,
        options,
        shutdown_rx,
    ));
    Server {
        addr,
        shutdown,
        task,
        seen,
    }
}

fn dial<'a>(addr: SocketAddr, source: &'a CertStore, expected: &'a [Identity]) -> Dial<'a> {
    Dial {
        hbone_addr: addr,
        authority: "10.0.0.7:8080".parse().unwrap(),
        source,
        expected,
        headers: HeaderMap::new(),
    }
}

/// Writes `msg`, reads the echo back, leaving the stream open.
async fn ping(stream: &mut H2Stream, msg: &[u8]) {
    stream.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    within("echo", stream.read_exact(&mut back)).await.unwrap();
    assert_eq!(back, msg);
}

#[test]
fn h2stream_and_connect_are_thread_safe() {
    fn send_sync_unpin<T: Send + Sync + Unpin + std::fmt::Debug>() {}
    send_sync_unpin::<H2Stream>();
    fn send<T: Send>(_: &T) {}
    let c = certs();
    let pool = Pool::new(PoolOptions::default());
    let expected = [c.server_id.clone()];
    let fut = pool.connect(dial("127.0.0.1:1".parse().unwrap(), &c.client, &expected));
    send(&fut);
}

#[tokio::test]
async fn round_trip_carries_authority_identity_and_headers() {
    let c = certs();
    let mut server = start(&c.server, Behaviour::Echo, ServerOptions::default()).await;
    let pool = Pool::new(PoolOptions::default());
    let expected = [c.server_id.clone()];
    let mut d = dial(server.addr, &c.client, &expected);
    d.headers.insert(
        "forwarded",
        HeaderValue::from_static("for=\"10.0.0.1:4000\";host=svc.ns.svc.cluster.local"),
    );
    d.headers.insert(
        "traceparent",
        HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    );
    let mut stream = within("connect", pool.connect(d)).await.unwrap();
    ping(&mut stream, b"hello through the mesh").await;
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("eof", stream.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());

    let seen = server.seen.recv().await.unwrap();
    assert_eq!(seen.authority, "10.0.0.7:8080".parse().unwrap());
    assert_eq!(seen.peer_identity, c.client_id);
    assert_eq!(seen.local_addr, server.addr);
    assert!(seen.peer_addr.ip().is_loopback());
    assert_eq!(
        seen.headers["forwarded"],
        "for=\"10.0.0.1:4000\";host=svc.ns.svc.cluster.local"
    );
    assert!(seen.headers.contains_key("traceparent"));
    assert_eq!(
        pool.stats(),
        mesh::hbone::PoolStats {
            connections_opened: 1,
            streams_opened: 1,
            connections_live: 1
        }
    );
}

/// An h2 server over our TLS that hands each request to `on_request` (to see the raw CONNECT, or misbehave).
async fn raw_server(
    certs: &CertStore,
    on_request: impl Fn(Request<h2::RecvStream>, h2::server::SendResponse<Bytes>) + Send + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config());
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let mut conn = h2::server::handshake(tls).await.unwrap();
        while let Some(Ok((req, send))) = conn.accept().await {
            on_request(req, send);
        }
    });
    addr
}

#[tokio::test]
async fn connect_request_has_only_method_and_authority() {
    let c = certs();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = raw_server(&c.server, move |req, mut send| {
        let _ = tx.send((
            req.method().clone(),
            req.uri().clone(),
            req.version(),
            req.headers().clone(),
        ));
        let mut body = send.send_response(http::Response::new(()), false).unwrap();
        body.send_data(Bytes::from_static(b"hi"), true).unwrap();
        std::mem::forget(req); // keep the stream's receive side open until the test ends
    })
    .await;
    let pool = Pool::new(PoolOptions::default());
    let expected = [c.server_id.clone()];
    let mut d = dial(addr, &c.client, &expected);
    d.authority = "[fd00::7]:9080".parse().unwrap();
    d.headers.insert(
        "baggage",
        HeaderValue::from_static("k8s.namespace.name=default"),
    );
    let mut stream = within("connect", pool.connect(d)).await.unwrap();
    let mut got = Vec::new();
    within("read", stream.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"hi");

    let (method, uri, version, headers) = rx.recv().await.unwrap();
    assert_eq!(method, Method::CONNECT);
    assert_eq!(version, http::Version::HTTP_2);
    // h2 rejects a CONNECT carrying :scheme or :path as malformed; the URI holds nothing but the authority.
    assert_eq!(uri.scheme(), None);
    assert_eq!(uri.path_and_query(), None);
    assert_eq!(uri.authority().unwrap().as_str(), "[fd00::7]:9080");
    assert_eq!(headers["baggage"], "k8s.namespace.name=default");
    assert_eq!(headers.len(), 1);
}

#[tokio::test]
async fn stream_reset_reads_as_connection_reset() {
    let c = certs();
    // Answers 200, waits for the first DATA, then resets the stream.
    let addr = raw_server(&c.server, |req, mut send| {
        let mut body = send.send_response(http::Response::new(()), false).unwrap();
        tokio::spawn(async move {
            let _ = req.into_body().data().await;
            body.send_reset(h2::Reason::INTERNAL_ERROR);
        });
    })
    .await;
    let pool = Pool::new(PoolOptions::default());
    let expected = [c.server_id.clone()];
    let mut stream = within("connect", pool.connect(dial(addr, &c.client, &expected)))
        .await
        .unwrap();
    stream.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 8];
    let err = within("read", stream.read(&mut buf)).await.unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECONNRESET), "{err}");
}

#[tokio::test]
async fn inbound_answers_405_and_400_to_malformed_requests() {
    let c = certs();
    let server = start(&c.server, Behaviour::Echo, ServerOptions::default()).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(
        c.client.client_config(std::slice::from_ref(&c.server_id)),
    );
    let tls = connector
        .connect(
            ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            tcp,
        )
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);

    let status = |req: Request<()>| {
        let send = send.clone();
        async move {
            let mut send = send.ready().await.unwrap();
            let (resp, _body) = send.send_request(req, true).unwrap();
            within("response", resp).await.unwrap().status()
        }
    };
    let get = Request::get("https://10.0.0.7:8080/").body(()).unwrap();
    assert_eq!(status(get).await, StatusCode::METHOD_NOT_ALLOWED);
    let by_name = Request::builder()
        .method(Method::CONNECT)
        .uri("reviews.default.svc:9080")
        .body(())
        .unwrap();
    assert_eq!(status(by_name).await, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn streams_share_one_outer_connection() {
    let c = certs();
    let server = start(&c.server, Behaviour::Echo, ServerOptions::default()).await;
    let pool = Pool::new(PoolOptions::default());
    let expected = [c.server_id.clone()];
    for i in 0..20u32 {
        let mut stream = within(
            "connect",
            pool.connect(dial(server.addr, &c.client, &expected)),
        )
        .await
        .unwrap();
        ping(&mut stream, &i.to_be_bytes()).await;
    }
    let concurrent = (0..20u32).map(|i| {
        let (pool, client, expected) = (pool.clone(), c.client.clone(), expected.clone());
        tokio::spawn(async move {
            let mut stream = pool
                .connect(dial(server.addr, &client, &expected))
                .await
                .unwrap();
            ping(&mut stream, &i.to_be_bytes()).await;
            stream
        })
    });
    let held: Vec<H2Stream> = within("concurrent", futures_util::future::try_join_all(concurrent))
        .await
        .unwrap();
    let stats = pool.stats();
    assert_eq!(
        (
            stats.connections_opened,
            stats.streams_opened,
            stats.connections_live
        ),
        (1, 40, 1)
    );
    drop(held);
}

#[tokio::test]
async fn our_stream_limit_opens_another_connection() {
    let c = certs();
    let server = start(&c.server, Behaviour::Echo, ServerOptions::default()).await;
    let pool = Pool::new(PoolOptions {
        max_streams_per_connection: 2,
        ..Default::default()
    });
    let expected = [c.server_id.clone()];
    let mut held = Vec::new();
    for i in 0..5u8 {
        let mut stream = within(
            "connect",
            pool.connect(dial(server.addr, &c.client, &expected)),
        )
        .await
        .unwrap();
        ping(&mut stream, &[i]).await;
        held.push(stream);
    }
    assert_eq!(pool.stats().connections_opened, 3);
    // A freed slot is reused before anything new is dialled.
    held.remove(0);
    let mut stream = within(
        "connect",
        pool.connect(dial(server.addr, &c.client, &expected)),
    )
    .await
    .unwrap();
    ping(&mut stream, b"again").await;
    assert_eq!(pool.stats().connections_opened, 3);
}

#[tokio::test]
async fn peer_stream_limit_opens_another_connection() {
    let c = certs();
    let options = ServerOptions {
        max_concurrent_streams: 2,
        ..Default::default()
    };
    let server = start(&c.server, Behaviour::Echo, options).await;
    let pool = Pool::new(PoolOptions::default());
    let expected = [c.server_id.clone()];
    let mut held = Vec::new();
    for i in 0..3u8 {
        let mut stream = within(
            "connect",
            pool.connect(dial(server.addr, &c.client, &expected)),
        )
        .await
        .unwrap();
        // The first echo also guarantees the server's SETTINGS (sent before any response) were applied.
        ping(&mut stream, &[i]).await;
        held.push(stream);
    }
    assert_eq!(pool.stats().connections_opened, 2);
}

#[tokio::test]
async fn refused_connect_is_an_error_with_the_status() {
    let c = certs();
    let expected = [c.server_id.clone()];
    let pool = Pool::new(PoolOptions::default());
    for (behaviour, want) in [
        (
            Behaviour::Refuse(StatusCode::UNAUTHORIZED),
            StatusCode::UNAUTHORIZED,
        ),
        (
            Behaviour::Refuse(StatusCode::BAD_REQUEST),
            StatusCode::BAD_REQUEST,
        ),
        (Behaviour::Ignore, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let server = start(&c.server, behaviour, ServerOptions::default()).await;
        let err = within(
            "connect",
            pool.connect(dial(server.addr, &c.client, &expected)),
        )
        .await
        .unwrap_err();
        match err {
            HboneError::Refused {
                addr,
                authority,
                status,
            } => {
                assert_eq!((addr, status), (server.addr, want));
                assert_eq!(authority, "10.0.0.7:8080".parse().unwrap());
            }
            other => panic!("expected Refused, got {other}"),
        }
    }
    // A refusal is an answer on a healthy connection: it stays pooled.
    assert_eq!(pool.stats().connections_live, 3);
}

#[tokio::test]
async fn pool_redials_after_server_shutdown() {
    let c = certs();
    let server = start(&c.server, Behaviour::Echo, ServerOptions::default()).await;
    let addr = server.addr;
    let pool = Pool::new(PoolOptions::default());
    let expected = [c.server_id.clone()];
    let mut in_flight = within("connect", pool.connect(dial(addr, &c.client, &expected)))
        .await
        .unwrap();
    ping(&mut in_flight, b"before").await;

    // GOAWAY: the listener closes, but the in-flight stream runs to completion.
    server.shutdown.send(true).unwrap();
    ping(&mut in_flight, b"during shutdown").await;
    in_flight.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("eof", in_flight.read_to_end(&mut rest))
        .await
        .unwrap();
    drop(in_flight);
    within("serve to return", server.task).await.unwrap();

    // A new server on the same address: the pool notices the old connection is gone and dials again.
    let listener = TcpListener::bind(addr).await.unwrap();
    let _server = start_on(
        listener,
        &c.server,
        Behaviour::Echo,
        ServerOptions::default(),
    );
    let mut stream = within("redial", pool.connect(dial(addr, &c.client, &expected)))
        .await
        .unwrap();
    ping(&mut stream, b"after").await;
    assert_eq!(pool.stats().connections_opened, 2);
}

#[tokio::test]
async fn idle_outer_connections_are_closed() {
    let c = certs();
    let server = start(&c.server, Behaviour::Echo, ServerOptions::default()).await;
    let pool = Pool::new(PoolOptions {
        idle_timeout: Duration::from_millis(200),
        ..Default::default()
    });
    let expected = [c.server_id.clone()];
    let mut stream = within(
        "connect",
        pool.connect(dial(server.addr, &c.client, &expected)),
    )
    .await
    .unwrap();
    ping(&mut stream, b"x").await;
    // Busy connections are not reaped, however long the stream lasts.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(pool.stats().connections_live, 1);
    ping(&mut stream, b"still here").await;
    drop(stream);
    eventually("the idle connection to close", || {
        pool.stats().connections_live == 0
    })
    .await;
    let mut stream = within(
        "connect",
        pool.connect(dial(server.addr, &c.client, &expected)),
    )
    .await
    .unwrap();
    ping(&mut stream, b"y").await;
    assert_eq!(pool.stats().connections_opened, 2);
}

#[tokio::test]
async fn large_transfer_both_ways() {
    let c = certs();
    let server = start(&c.server, Behaviour::Echo, ServerOptions::default()).await;
    let pool = Pool::new(PoolOptions::default());
    let expected = [c.server_id.clone()];
    let stream = within(
        "connect",
        pool.connect(dial(server.addr, &c.client, &expected)),
    )
    .await
    .unwrap();
    // Larger than the 16 MiB connection window: only works if reads give the window back.
    let payload: Vec<u8> = (0..24 << 20).map(|i: u32| (i % 251) as u8).collect();
    let (mut read, mut write) = tokio::io::split(stream);
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(payload.len());
    within("echo of 24 MiB", read.read_to_end(&mut back))
        .await
        .unwrap();
    writer.await.unwrap();
    assert!(back == payload, "echo differs");
}

#[tokio::test]
async fn dropping_a_stream_ends_it_cleanly() {
    let c = certs();
    let (tx, mut rx) = mpsc::unbounded_channel();
    struct Collect(mpsc::UnboundedSender<std::io::Result<Vec<u8>>>);
    #[async_trait::async_trait]
    impl ConnectHandler for Collect {
        async fn handle(self: Arc<Self>, _req: InboundConnect, respond: Respond) {
            let mut stream = respond.accept().unwrap();
            let mut got = Vec::new();
            let result = stream.read_to_end(&mut got).await.map(|_| got);
            let _ = self.0.send(result);
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stop_rx) = watch::channel(false);
    tokio::spawn(serve(
        listener,
        c.server.clone(),
        Arc::new(Collect(tx)),
        ServerOptions::default(),
        stop_rx,
    ));

    let pool = Pool::new(PoolOptions::default());
    let expected = [c.server_id.clone()];
    let mut stream = within("connect", pool.connect(dial(addr, &c.client, &expected)))
        .await
        .unwrap();
    let payload = vec![7u8; 300_000];
    stream.write_all(&payload).await.unwrap();
    drop(stream); // no shutdown: the drop must send END_STREAM after the queued data, not a reset
    let got = within("server read", rx.recv()).await.unwrap();
    assert_eq!(got.expect("clean EOF, not a reset").len(), payload.len());

    // The other way round: a server handler that writes and drops while the client's side is still open.
    let server = start(
        &c.server,
        Behaviour::SendAndDrop(300_000),
        ServerOptions::default(),
    )
    .await;
    let mut stream = within(
        "connect",
        pool.connect(dial(server.addr, &c.client, &expected)),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    within("client read", stream.read_to_end(&mut got))
        .await
        .expect("clean EOF, not a reset");
    assert_eq!(got.len(), 300_000);
}

#[tokio::test]
async fn goaway_connection_is_dropped_and_the_connect_retried() {
    let c = certs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(c.server.server_config());
    // Every connection answers 200 and keeps its streams open; the first one sends GOAWAY (graceful, so its
    // first stream goes on) before it answers that first stream.
    tokio::spawn(async move {
        for index in 0.. {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let tls = acceptor.accept(tcp).await.unwrap();
                let mut conn = h2::server::handshake(tls).await.unwrap();
                let mut open = Vec::new();
                while let Some(Ok((req, mut send))) = conn.accept().await {
                    if index == 0 {
                        conn.graceful_shutdown();
                    }
                    let body = send.send_response(http::Response::new(()), false).unwrap();
                    open.push((req, body));
                }
            });
        }
    });
    let pool = Pool::new(PoolOptions::default());
    let expected = [c.server_id.clone()];
    let first = within("connect", pool.connect(dial(addr, &c.client, &expected)))
        .await
        .unwrap();
    // The pool still holds the first connection (its stream is live), but it is going away: the CONNECT
    // fails there, the connection is dropped and the CONNECT succeeds on a new one.
    let second = within("connect", pool.connect(dial(addr, &c.client, &expected)))
        .await
        .unwrap();
    let stats = pool.stats();
    assert_eq!((stats.connections_opened, stats.connections_live), (2, 1));
    drop((first, second));
}

#[tokio::test]
async fn pool_enforces_identities_both_ways() {
    let c = certs();
    let server = start(&c.server, Behaviour::Echo, ServerOptions::default()).await;
    let pool = Pool::new(PoolOptions::default());

    // The server is not who we expect.
    let expected = [Identity::new(TD, "default", "reviews")];
    let err = within(
        "connect",
        pool.connect(dial(server.addr, &c.client, &expected)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, HboneError::Tls { .. }), "{err}");

    // We are from another trust domain: the server ends the handshake (seen on the first read in TLS 1.3).
    let outsider = CertStore::new(
        c.ca.certs_for(&Identity::new("evil.local", "default", "client"))
            .unwrap(),
    );
    let expected = [c.server_id.clone()];
    let err = within(
        "connect",
        pool.connect(dial(server.addr, &outsider, &expected)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            HboneError::H2 { .. } | HboneError::Tls { .. } | HboneError::Connect { .. }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn connect_to_nothing_fails_fast() {
    let c = certs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let pool = Pool::new(PoolOptions::default());
    let expected = [c.server_id.clone()];
    let err = within("connect", pool.connect(dial(addr, &c.client, &expected)))
        .await
        .unwrap_err();
    assert!(matches!(err, HboneError::Connect { .. }), "{err}");
    assert_eq!(pool.stats().connections_live, 0);
}
