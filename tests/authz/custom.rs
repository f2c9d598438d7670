//! CUSTOM: the waypoint asks an external authorizer — a real tonic server built from waypoint-proto's
//! `envoy.service.auth.v3.Authorization` trait on 127.0.0.1:0 — named in a mesh config file. It allows (its
//! header reaches the application), denies (its status, headers and body reach the client), hangs (the
//! provider's timeout, then fail-closed 403 or fail-open 200) or is down (same fail modes). CUSTOM runs before
//! DENY: an allowed request still meets the DENY policies.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use waypoint::testbed::TestbedOptions;
use waypoint_proto::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use waypoint_proto::envoy::r#type::v3::HttpStatus;
use waypoint_proto::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use waypoint_proto::envoy::service::auth::v3::{
    check_response::HttpResponse, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use waypoint_proto::google::rpc::Status;

use super::*;

/// Every provider's timeout.
const TIMEOUT: Duration = Duration::from_millis(300);

/// What the test authorizer answers.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// OK, adding `x-authz-user: <the caller's principal>` to the request.
    Allow,
    /// 401, `x-authz-reason: no ticket`, body `ticket required`.
    Deny,
    /// Never answers.
    Hang,
}

#[derive(Clone)]
struct Authorizer {
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<CheckRequest>>>,
}

fn header(k: &str, v: &str) -> HeaderValueOption {
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

#[tonic::async_trait]
impl Authorization for Authorizer {
    async fn check(
        &self,
        req: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let req = req.into_inner();
        let principal = req
            .attributes
            .as_ref()
            .and_then(|a| a.source.as_ref())
            .map(|s| s.principal.clone())
            .unwrap_or_default();
        self.seen.lock().unwrap().push(req);
        let mode = *self.mode.lock().unwrap();
        let response = match mode {
            Mode::Allow => CheckResponse {
                status: status(0),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![header("x-authz-user", &principal)],
                    ..Default::default()
                })),
            },
            Mode::Deny => CheckResponse {
                status: status(7), // PERMISSION_DENIED
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: 401 }),
                    headers: vec![header("x-authz-reason", "no ticket")],
                    body: "ticket required".into(),
                })),
            },
            Mode::Hang => std::future::pending().await,
        };
        Ok(tonic::Response::new(response))
    }
}

/// The authorizer, serving on 127.0.0.1:0 until the test ends.
struct Server {
    port: u16,
    authz: Authorizer,
}

impl Server {
    async fn start(mode: Mode) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let authz = Authorizer {
            mode: Arc::new(Mutex::new(mode)),
            seen: Arc::default(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AuthorizationServer::new(authz.clone()))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        Server { port, authz }
    }

    fn set(&self, mode: Mode) {
        *self.authz.mode.lock().unwrap() = mode;
    }

    fn checks(&self) -> usize {
        self.authz.seen.lock().unwrap().len()
    }

    fn last(&self) -> CheckRequest {
        self.authz
            .seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a check")
    }
}

/// A port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The mesh: a mesh config with providers `checker` / `checker-open` (the server, fail-closed / fail-open) and
/// `gone` / `gone-open` (a closed port); CUSTOM policies on api sending `/<provider>/*` to each provider and
/// `/unknown/*` to a provider the mesh config does not define; a DENY of `/checker/deny`.
async fn custom_mesh(server: &Server) -> (Testbed, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let gone = closed_port();
    let t = format!("{}s", TIMEOUT.as_secs_f64());
    let config = format!(
        "extensionProviders:
- name: checker
  envoyExtAuthzGrpc: {{service: \"127.0.0.1\", port: {p}, timeout: {t}}}
- name: checker-open
  envoyExtAuthzGrpc: {{service: \"127.0.0.1\", port: {p}, timeout: {t}, failOpen: true}}
- name: gone
  envoyExtAuthzGrpc: {{service: \"127.0.0.1\", port: {gone}, timeout: {t}}}
- name: gone-open
  envoyExtAuthzGrpc: {{service: \"127.0.0.1\", port: {gone}, timeout: {t}, failOpen: true}}
",
        p = server.port
    );
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, config).unwrap();
    let mut manifests = String::new();
    for provider in ["checker", "checker-open", "gone", "gone-open", "unknown"] {
        manifests.push_str(&policy(
            &format!("ext-{provider}"),
            &service("api"),
            &format!(
                "  action: CUSTOM\n  provider: {{name: {provider}}}\n  rules:\n  - to: [{{operation: {{paths: [\"/{provider}/*\"]}}}}]"
            ),
        ));
    }
    manifests.push_str(&policy(
        "deny-checker-deny",
        &service("api"),
        "  action: DENY\n  rules:\n  - to: [{operation: {paths: [/checker/deny]}}]",
    ));
    let opts = TestbedOptions {
        mesh_config: Some(path),
        ..Default::default()
    };
    (mesh_with(&manifests, opts).await, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorizer_allows_with_headers_and_denies_with_its_own_answer() {
    let server = Server::start(Mode::Allow).await;
    let (tb, _dir) = custom_mesh(&server).await;

    let r = get(&tb, "frontend", API, "/checker/orders?id=7").await;
    assert_eq!(verdict(&r), "200 api-0");
    assert_eq!(
        r.echo().header("x-authz-user"),
        Some(format!("spiffe://{FRONTEND}").as_str()),
        "the authorizer's header reached the app, built from the verified caller"
    );
    let check = server.last();
    let attrs = check.attributes.unwrap();
    let http = attrs.request.unwrap().http.unwrap();
    assert_eq!(
        (http.method.as_str(), http.path.as_str()),
        ("GET", "/checker/orders?id=7")
    );
    assert_eq!(
        attrs.source.unwrap().principal,
        format!("spiffe://{FRONTEND}")
    );
    // A forged header does not become the caller's identity at the authorizer either.
    let forged = Req::get(API, "/checker/x").header("x-authz-user", "spiffe://evil");
    let r = send(&tb, "batch", forged).await;
    assert_eq!(
        r.echo().header_values("x-authz-user"),
        [format!("spiffe://{BATCH}")]
    );
    // Paths no CUSTOM policy names are not sent to the authorizer.
    let checks = server.checks();
    assert_eq!(
        verdict(&get(&tb, "frontend", API, "/public").await),
        "200 api-0"
    );
    assert_eq!(server.checks(), checks);
    // CUSTOM allowed, then DENY still applies.
    assert_rbac_denied(
        &get(&tb, "frontend", API, "/checker/deny").await,
        "DENY after CUSTOM",
    );
    assert_eq!(server.checks(), checks + 1);

    // The authorizer denies: its status, header and body reach the client, fail-open or not.
    server.set(Mode::Deny);
    for path in ["/checker/orders", "/checker-open/orders"] {
        let r = get(&tb, "frontend", API, path).await;
        assert_eq!(r.status, 401, "{path}: {}", verdict(&r));
        assert_eq!(r.header("x-authz-reason"), Some("no ticket"), "{path}");
        assert_eq!(&r.body[..], b"ticket required", "{path}");
        assert!(r.echo.is_none(), "{path}");
    }
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_authorizer_times_out_by_fail_mode() {
    let server = Server::start(Mode::Hang).await;
    let (tb, _dir) = custom_mesh(&server).await;
    for (path, want) in [("/checker/x", "403"), ("/checker-open/x", "200 api-0")] {
        let started = Instant::now();
        let r = get(&tb, "frontend", API, path).await;
        let took = started.elapsed();
        let got = if r.echo.is_some() {
            verdict(&r)
        } else {
            r.status.to_string()
        };
        assert_eq!(got, want, "{path}");
        assert!(
            took >= TIMEOUT,
            "{path}: answered in {took:?}, before the timeout"
        );
        assert!(
            took < TIMEOUT + Duration::from_secs(3),
            "{path}: the timeout was not enforced ({took:?})"
        );
    }
    // Back to answering: the next request is decided normally.
    server.set(Mode::Allow);
    assert_eq!(
        verdict(&get(&tb, "frontend", API, "/checker/x").await),
        "200 api-0"
    );
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_or_undefined_authorizer_fails_by_mode() {
    let server = Server::start(Mode::Allow).await;
    let (tb, _dir) = custom_mesh(&server).await;
    let mut seen = vec![];
    for path in ["/gone/x", "/gone-open/x", "/unknown/x", "/checker/x"] {
        let r = get(&tb, "frontend", API, path).await;
        let got = if r.echo.is_some() {
            verdict(&r)
        } else {
            r.status.to_string()
        };
        seen.push(format!("{path}: {got}"));
    }
    assert_eq!(
        seen,
        [
            "/gone/x: 403",            // fail-closed: statusOnError (403)
            "/gone-open/x: 200 api-0", // fail-open
            "/unknown/x: 403",         // a provider the mesh config does not define: fail closed
            "/checker/x: 200 api-0",
        ]
    );
    tb.shutdown().await;
}
