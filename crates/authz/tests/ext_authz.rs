//! The ext_authz client against a real tonic `Authorization` server on 127.0.0.1:0: allow (with header edits),
//! deny (custom status, headers, body), timeouts and a closed port in both fail modes, unknown status codes,
//! RPC errors, the concurrency cap, connection reuse, name resolution and providers from a mesh config file.
//! The server records every `CheckRequest` it gets, so the attributes sent are asserted too.

use authz::attrs;
use authz::ext::{
    parse_mesh_config, AppendAction, Authorizer, BuildError, CheckError, CheckExtra, Limits,
    ProviderConfig, Providers, Resolve, ServiceRef, UnknownProvider, Verdict,
};
use http::{HeaderMap, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use tokio_stream::StreamExt;
use waypoint_proto::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use waypoint_proto::envoy::r#type::v3::HttpStatus;
use waypoint_proto::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use waypoint_proto::envoy::service::auth::v3::{
    check_response::HttpResponse, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use waypoint_proto::google::rpc::Status;

/// What the test server does with a check.
#[derive(Clone)]
enum Behave {
    Answer(CheckResponse),
    /// Waits for `release` (past any client timeout unless released), then allows.
    Hang(Arc<Notify>),
    Fail(tonic::Code),
}

struct Authz {
    behave: Behave,
    seen: mpsc::Sender<CheckRequest>,
}

#[tonic::async_trait]
impl Authorization for Authz {
    async fn check(
        &self,
        req: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let _ = self.seen.try_send(req.into_inner());
        match &self.behave {
            Behave::Answer(r) => Ok(tonic::Response::new(r.clone())),
            Behave::Hang(release) => {
                release.notified().await;
                Ok(tonic::Response::new(CheckResponse::default()))
            }
            Behave::Fail(code) => Err(tonic::Status::new(*code, "test server says no")),
        }
    }
}

/// A real ext_authz server on 127.0.0.1:0, counting the TCP connections it accepts.
struct Server {
    addr: SocketAddr,
    seen: mpsc::Receiver<CheckRequest>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(behave: Behave) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(move |conn| {
            counter.fetch_add(1, Ordering::SeqCst);
            conn
        });
        let (tx, seen) = mpsc::channel(64);
        let svc = AuthorizationServer::new(Authz { behave, seen: tx });
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .serve_with_incoming(svc, incoming)
                .await
                .unwrap();
        });
        Server {
            addr,
            seen,
            connections,
            task,
        }
    }

    /// The next `CheckRequest` the server got (bounded wait).
    async fn next_seen(&mut self) -> CheckRequest {
        tokio::time::timeout(Duration::from_secs(5), self.seen.recv())
            .await
            .expect("server got no check")
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn provider(addr: SocketAddr, fail_open: bool) -> ProviderConfig {
    ProviderConfig {
        name: "opa".into(),
        service: ServiceRef {
            namespace: None,
            host: addr.ip().to_string(),
        },
        port: addr.port(),
        timeout: Duration::from_millis(150),
        fail_open,
        status_on_error: StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn no_resolver() -> Arc<dyn Resolve> {
    Arc::new(|_: &ServiceRef, _: u16| -> Option<SocketAddr> { None })
}

fn authorizer(cfg: ProviderConfig) -> Authorizer {
    Authorizer::new(cfg, no_resolver(), Limits::default()).unwrap()
}

/// A request from productpage to reviews, as the waypoint sees it.
fn with_request<R>(f: impl FnOnce(&attrs::Request<'_>) -> R) -> R {
    let mut headers = HeaderMap::new();
    headers.insert("x-user", "alice".parse().unwrap());
    headers.insert("authorization", "Bearer secret".parse().unwrap());
    headers.insert("x-request-id", "req-42".parse().unwrap());
    let req = attrs::Request {
        source_principal: Some("cluster.local/ns/default/sa/productpage"),
        source_namespace: Some("default"),
        source_ip: "10.0.0.5".parse().unwrap(),
        remote_ip: "10.0.0.5".parse().unwrap(),
        destination_ip: "10.96.0.20".parse().unwrap(),
        destination_port: 9080,
        http: Some(attrs::Http {
            host: "reviews.default.svc.cluster.local:9080",
            method: "DELETE",
            path: "/reviews/7?force=1",
            headers: &headers,
            auth: None,
        }),
    };
    f(&req)
}

async fn check(a: &Authorizer) -> authz::ext::Decision {
    let req = with_request(|r| {
        authz::ext::build_check_request(
            r,
            &CheckExtra {
                source_port: 41000,
                ..Default::default()
            },
        )
    });
    a.check_request(req).await
}

fn hv(k: &str, v: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn status(code: i32) -> Option<Status> {
    Some(Status {
        code,
        ..Default::default()
    })
}

#[tokio::test]
async fn allows_with_headers_and_sees_the_attributes() {
    let mut server = Server::start(Behave::Answer(CheckResponse {
        status: status(0),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![hv("x-authz-user", "alice@example.com")],
            headers_to_remove: vec!["authorization".into()],
            response_headers_to_add: vec![hv("x-authz-checked", "1")],
        })),
    }))
    .await;
    let a = authorizer(provider(server.addr, false));
    // Through the attrs-based entry point.
    let extra = CheckExtra {
        source_port: 41000,
        destination_principal: Some("cluster.local/ns/default/sa/waypoint"),
        ..Default::default()
    };
    let mut upstream = HeaderMap::new();
    upstream.insert("authorization", "Bearer secret".parse().unwrap());
    let fut = with_request(|r| {
        let req = authz::ext::build_check_request(r, &extra);
        a.check_request(req)
    });
    let d = fut.await;
    assert_eq!(d.error, None);
    let Verdict::Allow(allowed) = d.verdict else {
        panic!("denied: {d:?}")
    };
    assert_eq!(allowed.request_headers[0].action, AppendAction::Overwrite);
    allowed.apply_to_request(&mut upstream);
    assert_eq!(upstream.get("x-authz-user").unwrap(), "alice@example.com");
    assert!(upstream.get("authorization").is_none());
    let mut response = HeaderMap::new();
    allowed.apply_to_response(&mut response);
    assert_eq!(response.get("x-authz-checked").unwrap(), "1");

    let got = server.next_seen().await.attributes.unwrap();
    let source = got.source.unwrap();
    assert_eq!(
        source.principal,
        "spiffe://cluster.local/ns/default/sa/productpage"
    );
    assert_eq!(
        got.destination.unwrap().principal,
        "spiffe://cluster.local/ns/default/sa/waypoint"
    );
    let http = got.request.unwrap().http.unwrap();
    assert_eq!(http.method, "DELETE");
    assert_eq!(http.path, "/reviews/7?force=1");
    assert_eq!(http.host, "reviews.default.svc.cluster.local:9080");
    assert_eq!(http.id, "req-42");
    assert_eq!(
        http.headers.get("x-user").map(String::as_str),
        Some("alice")
    );
    assert_eq!(
        http.headers.get("authorization").map(String::as_str),
        Some("Bearer secret")
    );
    assert_eq!(
        http.headers.get(":path").map(String::as_str),
        Some("/reviews/7?force=1")
    );
    assert_eq!(
        http.headers.get(":method").map(String::as_str),
        Some("DELETE")
    );
}

#[tokio::test]
async fn check_builds_from_attrs() {
    let mut server = Server::start(Behave::Answer(CheckResponse {
        status: status(0),
        http_response: None,
    }))
    .await;
    let a = authorizer(provider(server.addr, false));
    let mut headers = HeaderMap::new();
    headers.insert("x-team", "blue".parse().unwrap());
    let req = attrs::Request {
        source_principal: Some("cluster.local/ns/shop/sa/cart"),
        source_namespace: Some("shop"),
        source_ip: "10.0.0.9".parse().unwrap(),
        remote_ip: "10.0.0.9".parse().unwrap(),
        destination_ip: "10.96.0.1".parse().unwrap(),
        destination_port: 80,
        http: Some(attrs::Http {
            host: "pay",
            method: "POST",
            path: "/charge",
            headers: &headers,
            auth: None,
        }),
    };
    assert!(a.check(&req, &CheckExtra::default()).await.is_allowed());
    let http = server
        .next_seen()
        .await
        .attributes
        .unwrap()
        .request
        .unwrap()
        .http
        .unwrap();
    assert_eq!(
        (http.method.as_str(), http.path.as_str()),
        ("POST", "/charge")
    );
    assert_eq!(http.headers.get("x-team").map(String::as_str), Some("blue"));
}

#[tokio::test]
async fn denies_with_the_servers_response() {
    let server = Server::start(Behave::Answer(CheckResponse {
        status: status(7),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: 401 }),
            headers: vec![hv("www-authenticate", "Bearer realm=\"mesh\"")],
            body: "token required".into(),
        })),
    }))
    .await;
    for fail_open in [false, true] {
        let d = check(&authorizer(provider(server.addr, fail_open))).await;
        assert_eq!(d.error, None, "a denial is a decision, not an error");
        let Verdict::Deny(denied) = d.verdict else {
            panic!("allowed: {d:?}")
        };
        assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
        assert_eq!(denied.headers.len(), 1);
        assert_eq!(denied.headers[0].0, "www-authenticate");
        assert_eq!(denied.headers[0].1, "Bearer realm=\"mesh\"");
        assert_eq!(denied.body, "token required");
    }
}

#[tokio::test]
async fn times_out_by_fail_mode() {
    let release = Arc::new(Notify::new());
    let server = Server::start(Behave::Hang(release.clone())).await;
    for fail_open in [false, true] {
        let a = authorizer(provider(server.addr, fail_open));
        let start = Instant::now();
        let d = check(&a).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(150),
            "gave up early: {took:?}"
        );
        assert!(
            took < Duration::from_secs(3),
            "timeout not enforced: {took:?}"
        );
        assert_eq!(
            d.error,
            Some(CheckError::Timeout(Duration::from_millis(150))),
            "{d:?}"
        );
        match (fail_open, d.verdict) {
            (true, Verdict::Allow(a)) => assert!(a.is_empty()),
            (false, Verdict::Deny(denied)) => {
                assert_eq!(denied.status, StatusCode::SERVICE_UNAVAILABLE);
                assert!(denied.body.is_empty() && denied.headers.is_empty());
            }
            (fail_open, v) => panic!("failOpen={fail_open}: {v:?}"),
        }
    }
    release.notify_waiters();
}

#[tokio::test]
async fn down_by_fail_mode() {
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    for fail_open in [false, true] {
        let d = check(&authorizer(provider(closed, fail_open))).await;
        assert_eq!(
            d.error.as_ref().map(CheckError::kind),
            Some("unavailable"),
            "{d:?}"
        );
        assert_eq!(d.is_allowed(), fail_open, "{d:?}");
        if let Verdict::Deny(denied) = d.verdict {
            assert_eq!(denied.status, StatusCode::SERVICE_UNAVAILABLE);
        }
    }
}

#[tokio::test]
async fn unknown_status_codes() {
    // A CheckResponse with a gRPC code no one defined: not OK, so a denial (403, nothing else to go on).
    let server = Server::start(Behave::Answer(CheckResponse {
        status: status(99),
        http_response: None,
    }))
    .await;
    let d = check(&authorizer(provider(server.addr, true))).await;
    assert_eq!(d.error, None);
    let Verdict::Deny(denied) = d.verdict else {
        panic!("allowed: {d:?}")
    };
    assert_eq!(denied.status, StatusCode::FORBIDDEN);

    // A denial with an HTTP status that is not one: 403.
    let server = Server::start(Behave::Answer(CheckResponse {
        status: status(7),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: 799 }),
            headers: vec![],
            body: "odd".into(),
        })),
    }))
    .await;
    let Verdict::Deny(denied) = check(&authorizer(provider(server.addr, true)))
        .await
        .verdict
    else {
        panic!()
    };
    assert_eq!(
        (denied.status, denied.body.as_str()),
        (StatusCode::FORBIDDEN, "odd")
    );

    // The RPC itself fails (the server does not implement Check properly): no decision → fail mode.
    let server = Server::start(Behave::Fail(tonic::Code::Unimplemented)).await;
    for fail_open in [false, true] {
        let d = check(&authorizer(provider(server.addr, fail_open))).await;
        assert_eq!(
            d.error,
            Some(CheckError::Rpc {
                code: tonic::Code::Unimplemented as i32,
                message: "test server says no".into()
            })
        );
        assert_eq!(d.is_allowed(), fail_open);
    }
}

#[tokio::test]
async fn reuses_one_connection() {
    let server = Server::start(Behave::Answer(CheckResponse {
        status: status(0),
        http_response: None,
    }))
    .await;
    let a = Arc::new(authorizer(provider(server.addr, false)));
    for _ in 0..5 {
        assert!(check(&a).await.is_allowed());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let a = a.clone();
        tasks.spawn(async move { check(&a).await.is_allowed() });
    }
    while let Some(allowed) = tasks.join_next().await {
        assert!(allowed.unwrap());
    }
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn caps_checks_in_flight() {
    let release = Arc::new(Notify::new());
    let mut server = Server::start(Behave::Hang(release.clone())).await;
    let mut cfg = provider(server.addr, false);
    cfg.timeout = Duration::from_secs(10);
    let limits = Limits {
        max_in_flight: 1,
        ..Limits::default()
    };
    let a = Arc::new(Authorizer::new(cfg, no_resolver(), limits).unwrap());
    let first = tokio::spawn({
        let a = a.clone();
        async move { check(&a).await }
    });
    server.next_seen().await; // the first check is at the server, holding the only permit
    let start = Instant::now();
    let second = check(&a).await;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "an over-cap check must not wait"
    );
    assert_eq!(second.error, Some(CheckError::Overloaded(1)));
    assert!(!second.is_allowed());
    release.notify_waiters();
    let first = tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .unwrap()
        .unwrap();
    assert!(first.is_allowed() && first.error.is_none(), "{first:?}");
    // The permit is back: the next check goes through (the stored notification lets the server answer at once).
    release.notify_one();
    let third = check(&a).await;
    assert!(third.is_allowed() && third.error.is_none(), "{third:?}");
}

#[tokio::test]
async fn resolves_host_names_through_the_caller() {
    let server = Server::start(Behave::Answer(CheckResponse {
        status: status(0),
        http_response: None,
    }))
    .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let resolver: Arc<dyn Resolve> = {
        let (calls, addr) = (calls.clone(), server.addr);
        Arc::new(move |svc: &ServiceRef, port: u16| {
            calls.fetch_add(1, Ordering::SeqCst);
            (svc.host == "opa.opa-system.svc.cluster.local" && port == 9191).then_some(addr)
        })
    };
    let yaml = "extensionProviders:\n- name: opa\n  envoyExtAuthzGrpc:\n    service: opa.opa-system.svc.cluster.local\n    \
                port: 9191\n- name: nowhere\n  envoyExtAuthzGrpc:\n    service: nowhere.example\n    port: 9191\n    \
                timeout: 2s\n- name: tracing\n  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}\n";
    let providers = Providers::new(
        parse_mesh_config(yaml).unwrap(),
        resolver,
        Limits::default(),
    )
    .unwrap();
    let opa = providers.get("opa").unwrap();
    assert_eq!(
        opa.config().timeout,
        Duration::from_millis(200),
        "the documented default"
    );
    for _ in 0..3 {
        assert!(check(opa).await.is_allowed());
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "resolved once per connection, not per check"
    );
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);

    let start = Instant::now();
    let d = check(providers.get("nowhere").unwrap()).await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "an unresolvable name fails fast, not at the timeout"
    );
    assert_eq!(
        d.error.as_ref().map(CheckError::kind),
        Some("unavailable"),
        "{d:?}"
    );
    assert!(!d.is_allowed());

    assert_eq!(
        providers.get("tracing").unwrap_err(),
        UnknownProvider::WrongKind {
            name: "tracing".into(),
            kind: "zipkin".into()
        }
    );
    assert_eq!(
        providers.get("missing").unwrap_err(),
        UnknownProvider::Missing("missing".into())
    );
    let mut names: Vec<_> = providers.names().collect();
    names.sort();
    assert_eq!(names, ["nowhere", "opa"]);
}

#[test]
fn needs_a_runtime() {
    let cfg = provider("127.0.0.1:1".parse().unwrap(), false);
    let err = Authorizer::new(cfg.clone(), no_resolver(), Limits::default()).unwrap_err();
    assert!(
        matches!(err, BuildError::NoRuntime(ref n) if n == "opa"),
        "{err}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let err = Authorizer::new(
        cfg,
        no_resolver(),
        Limits {
            max_in_flight: 0,
            ..Limits::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, BuildError::NoCapacity(_)), "{err}");
}
