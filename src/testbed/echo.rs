//! The echo backend: an HTTP server (HTTP/1.1 and h2c with prior knowledge on one port) that answers every
//! request with a JSON description of what it received and who it is, so tests assert what the application
//! actually saw rather than what the proxy meant to send.
//!
//! The answer ([`Echo`]): method, path with query, host (`Host`, or `:authority` in HTTP/2), every request
//! header, protocol (`HTTP/1.1` or `HTTP/2`), the request body (lossy UTF-8), the instance's identity (service,
//! namespace, pod, port as written in the manifests) and, for requests carrying `x-echo-request-id`, which
//! attempt of that request this is.
//!
//! Controls, as request headers (all ignored when `x-echo-controls-for` names another pod, so a test can make
//! one backend misbehave while its siblings and mirrors answer normally):
//!
//! | header | effect |
//! |---|---|
//! | `x-echo-status: 503` | answer that status (with the same JSON body) |
//! | `x-echo-delay-ms: N` | wait N ms before answering |
//! | `x-echo-set-header: name=value` | set a response header (repeatable) |
//! | `x-echo-fail-first: N` + `x-echo-request-id: ID` | fail the first N attempts of request ID (counted across every echo sharing the [`Attempts`] table: a whole testbed), then answer normally |
//! | `x-echo-fail-mode: reset` | fail by resetting the connection (TCP RST in HTTP/1.1, `RST_STREAM` in HTTP/2) instead of answering 503 |
//! | `x-echo-grpc-status: N` | the `grpc-status` trailer of a gRPC answer (default 0) |
//!
//! gRPC: a request whose `content-type` starts with `application/grpc` is answered `200`,
//! `content-type: application/grpc`, with one length-prefixed message whose payload is the JSON, and the trailer
//! `grpc-status` (normally over h2c, as gRPC is).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// At most this many answers are kept per instance for [`EchoServer::seen`].
const SEEN_CAP: usize = 10_000;
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Who an echo instance is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoIdentity {
    /// The `app` label of its pod (else the pod name).
    pub service: String,
    pub namespace: String,
    pub pod: String,
    /// The container port as written in the manifests (the listener may be on another, rewritten, port).
    pub port: u16,
}

/// What the echo answers: the request it saw, and who it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Echo {
    pub method: String,
    /// Path with query, as received.
    pub path: String,
    /// `Host`, or the `:authority` of an HTTP/2 request.
    pub host: String,
    /// Every request header: lowercase name → values in order.
    pub headers: BTreeMap<String, Vec<String>>,
    /// `HTTP/1.1`, `HTTP/2`, `HTTP/1.0`.
    pub protocol: String,
    pub body: String,
    pub service: String,
    pub namespace: String,
    pub pod: String,
    pub port: u16,
    /// Which attempt of `x-echo-request-id` this was (1 = first), 0 without an id.
    pub attempt: u64,
    /// When the echo received the request (local to the instance, not sent).
    #[serde(skip)]
    pub received_at: Option<Instant>,
}

impl Echo {
    /// The first value of request header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).first().map(String::as_str)
    }

    /// Every value of request header `name` (case-insensitive).
    pub fn header_values(&self, name: &str) -> &[String] {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map_or(&[], Vec::as_slice)
    }

    /// The path without the query.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }
}

/// Attempts per request id, shared by the echo instances of one testbed so that "fail the first N attempts"
/// holds however a retry is balanced.
#[derive(Debug, Default)]
pub struct Attempts(Mutex<HashMap<String, u64>>);

impl Attempts {
    /// Counts one more attempt of `id`; returns its number (1 = first).
    pub fn next(&self, id: &str) -> u64 {
        let mut map = self.0.lock().expect("attempts lock");
        let n = map.entry(id.to_string()).or_default();
        *n += 1;
        *n
    }

    /// Attempts of `id` so far.
    pub fn get(&self, id: &str) -> u64 {
        self.0
            .lock()
            .expect("attempts lock")
            .get(id)
            .copied()
            .unwrap_or(0)
    }
}

/// Counters of one echo instance.
#[derive(Debug, Default)]
pub struct EchoStats {
    pub requests: AtomicU64,
    pub connections: AtomicU64,
    /// Attempts per request id seen by this instance.
    attempts: Attempts,
    seen: Mutex<Vec<Echo>>,
}

/// A running echo instance; stops when dropped.
pub struct EchoServer {
    addr: SocketAddr,
    identity: EchoIdentity,
    stats: Arc<EchoStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What every connection of one instance shares.
struct Shared {
    identity: EchoIdentity,
    stats: Arc<EchoStats>,
    attempts: Arc<Attempts>,
}

impl EchoServer {
    /// Binds `addr` (port 0 picks one) and serves, with its own attempts table.
    pub async fn start(addr: SocketAddr, identity: EchoIdentity) -> io::Result<EchoServer> {
        Self::start_shared(addr, identity, Arc::default()).await
    }

    /// Binds `addr` and serves, counting attempts per request id in `attempts` (shared with other instances).
    pub async fn start_shared(
        addr: SocketAddr,
        identity: EchoIdentity,
        attempts: Arc<Attempts>,
    ) -> io::Result<EchoServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(EchoStats::default());
        let shared = Arc::new(Shared {
            identity: identity.clone(),
            stats: stats.clone(),
            attempts,
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                shared.stats.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve_connection(tcp, shared.clone()));
            }
        });
        Ok(EchoServer {
            addr,
            identity,
            stats,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn identity(&self) -> &EchoIdentity {
        &self.identity
    }
    /// Requests received (failed attempts included).
    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }
    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }
    /// Attempts of request `id` that reached this instance.
    pub fn attempts(&self, id: &str) -> u64 {
        self.stats.attempts.get(id)
    }
    /// What this instance answered (or would have), oldest first.
    pub fn seen(&self) -> Vec<Echo> {
        self.stats.seen.lock().expect("seen lock").clone()
    }
}

/// Serves one connection: HTTP/2 when it opens with the prior-knowledge preface, else HTTP/1.1.
async fn serve_connection(tcp: TcpStream, shared: Arc<Shared>) {
    let h2 = starts_with_h2_preface(&tcp).await;
    let reset = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(ResetOnDrop {
        tcp,
        reset: reset.clone(),
    });
    let svc = service_fn(move |req| answer(req, shared.clone(), reset.clone()));
    let _ = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await
    };
}

/// Peeks (without consuming) whether the client sent the HTTP/2 connection preface.
async fn starts_with_h2_preface(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 24];
    for _ in 0..1000 {
        let n = match tcp.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if buf[..n] != H2_PREFACE[..n] {
            return false;
        }
        if n == H2_PREFACE.len() {
            return true;
        }
        // A partial preface: wait for the rest (peek returns at once while data is buffered).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}

/// The connection's socket; when `reset` is set, closing it sends a TCP RST (zero linger) instead of a FIN.
struct ResetOnDrop {
    tcp: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Relaxed) {
            let _ = self.tcp.set_zero_linger();
        }
    }
}

impl AsyncRead for ResetOnDrop {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResetOnDrop {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// The controls of one request (see the module doc).
#[derive(Default)]
struct Controls {
    status: Option<StatusCode>,
    delay: Option<Duration>,
    set_headers: Vec<(String, String)>,
    fail_first: u64,
    reset: bool,
    grpc_status: Option<String>,
}

impl Controls {
    fn read(h: &HeaderMap, pod: &str) -> Controls {
        let text = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
        if text("x-echo-controls-for").is_some_and(|p| p != pod) {
            return Controls::default();
        }
        let number = |n: &str| text(n).and_then(|v| v.parse::<u64>().ok());
        Controls {
            status: number("x-echo-status")
                .and_then(|s| StatusCode::from_u16(u16::try_from(s).ok()?).ok()),
            delay: number("x-echo-delay-ms").map(Duration::from_millis),
            set_headers: h
                .get_all("x-echo-set-header")
                .iter()
                .filter_map(|v| v.to_str().ok()?.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect(),
            fail_first: number("x-echo-fail-first").unwrap_or(0),
            reset: text("x-echo-fail-mode") == Some("reset"),
            grpc_status: text("x-echo-grpc-status").map(str::to_string),
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    reset: Arc<AtomicBool>,
) -> io::Result<Response<Body>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let id = &shared.identity;
    let controls = Controls::read(&parts.headers, &id.pod);
    let request_id = parts
        .headers
        .get("x-echo-request-id")
        .and_then(|v| v.to_str().ok());
    let attempt = request_id.map_or(0, |r| {
        shared.stats.attempts.next(r);
        shared.attempts.next(r)
    });
    let echo = describe(&parts, &body, id, attempt);
    shared.stats.requests.fetch_add(1, Ordering::Relaxed);
    {
        let mut seen = shared.stats.seen.lock().expect("seen lock");
        if seen.len() < SEEN_CAP {
            seen.push(echo.clone());
        }
    }
    if let Some(d) = controls.delay {
        tokio::time::sleep(d).await;
    }
    let json = Bytes::from(serde_json::to_vec(&echo).expect("an Echo serializes"));
    let failing = request_id.is_some() && attempt <= controls.fail_first;
    if failing && controls.reset {
        reset.store(true, Ordering::Relaxed);
        return Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "x-echo-fail-mode: reset",
        ));
    }
    let status = if failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        controls.status.unwrap_or(StatusCode::OK)
    };
    let grpc = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"));
    let mut resp = Response::builder()
        .status(status)
        .header("x-echo-pod", id.pod.as_str());
    for (k, v) in &controls.set_headers {
        resp = resp.header(k.as_str(), v.as_str());
    }
    let resp = if grpc {
        let mut trailers = HeaderMap::new();
        let code = controls.grpc_status.as_deref().unwrap_or("0");
        let code = HeaderValue::from_str(code).unwrap_or(HeaderValue::from_static("2"));
        trailers.insert("grpc-status", code);
        let body = Full::new(grpc_frame(&json))
            .with_trailers(async move { Some(Ok(trailers)) })
            .boxed();
        resp.header("content-type", "application/grpc").body(body)
    } else {
        resp.header("content-type", "application/json")
            .body(Full::new(json).boxed())
    };
    Ok(resp.unwrap_or_else(|e| {
        let mut r = Response::new(Full::new(Bytes::from(e.to_string())).boxed());
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    }))
}

fn describe(parts: &http::request::Parts, body: &Bytes, id: &EchoIdentity, attempt: u64) -> Echo {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let host = match parts.version {
        Version::HTTP_2 => parts.uri.authority().map(|a| a.to_string()),
        _ => None,
    }
    .or_else(|| headers.get("host").and_then(|v| v.first().cloned()))
    .unwrap_or_default();
    let protocol = match parts.version {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    };
    Echo {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_string(), |p| p.to_string()),
        host,
        headers,
        protocol: protocol.to_string(),
        body: String::from_utf8_lossy(body).into_owned(),
        service: id.service.clone(),
        namespace: id.namespace.clone(),
        pod: id.pod.clone(),
        port: id.port,
        attempt,
        received_at: Some(Instant::now()),
    }
}

/// One gRPC length-prefixed message (uncompressed).
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.put_u8(0);
    b.put_u32(u32::try_from(message.len()).expect("a gRPC message under 4 GiB"));
    b.put_slice(message);
    b.freeze()
}

/// The payload of the first gRPC message in `body`, when it holds a whole one.
pub fn grpc_unframe(body: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(body.get(1..5)?.try_into().ok()?) as usize;
    body.get(5..5 + len)
}
