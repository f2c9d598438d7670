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
//! | `x-echo-fail-mode: close` | fail by closing the connection without an answer (FIN in HTTP/1.1) |
//! | `x-echo-fail-mode: hang` | fail by never answering (the request is read; the answer waits [`HANG_LIMIT`]) |
//! | `x-echo-grpc-status: N` | the `grpc-status` trailer of a gRPC answer (default 0) |
//! | `x-echo-body-bytes: N` | answer N bytes of [`pattern`] (`application/octet-stream`, in 64 KiB chunks) instead of the JSON; the [`Echo`] is still recorded in [`EchoServer::seen`] |
//!
//! Per instance ([`EchoOptions`], set at start; [`EchoServer::set_fault`], any time):
//!
//! - **idle close** ([`IdleClose`]): an HTTP/1.1 keep-alive connection left idle (no byte read or written, no
//!   request in flight) for a random time in `min..=max`, drawn anew for each idle period, is closed — the
//!   classic keep-alive race: a request the client sends just then meets a closed socket (a FIN, or a RST when
//!   its bytes arrived before the close). Counted in [`EchoServer::idle_closes`]. The testbed sets it from the
//!   Pod annotation `echo.waypoint.dev/idle-close-ms: "5-30"` (or `TestbedOptions::echo_idle_close`).
//! - **faults** ([`Fault`]): refuse (stop listening and reset open connections, until cleared), reset every
//!   request, close without answering, hang, answer a status, delay every answer. Header controls still apply
//!   on top of `Fault::None` and `Fault::Delay`.
//!
//! gRPC: a request whose `content-type` starts with `application/grpc` is answered `200`,
//! `content-type: application/grpc`, with one length-prefixed message whose payload is the JSON, and the trailer
//! `grpc-status` (normally over h2c, as gRPC is).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
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
use tokio::sync::watch;

/// At most this many answers are kept per instance for [`EchoServer::seen`].
const SEEN_CAP: usize = 10_000;
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long a hanging answer waits before the connection is dropped (so a test cannot leak it forever).
pub const HANG_LIMIT: Duration = Duration::from_secs(60);

/// Closing idle HTTP/1.1 keep-alive connections after a random idle time in `min..=max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleClose {
    pub min: Duration,
    pub max: Duration,
}

impl IdleClose {
    /// `"5-30"` (milliseconds, a range) or `"20"` (exactly).
    pub fn parse_ms(text: &str) -> Option<IdleClose> {
        let ms = |t: &str| t.trim().parse::<u64>().ok().map(Duration::from_millis);
        let (min, max) = match text.split_once('-') {
            Some((a, b)) => (ms(a)?, ms(b)?),
            None => (ms(text)?, ms(text)?),
        };
        (min <= max).then_some(IdleClose { min, max })
    }

    fn draw(&self) -> Duration {
        let (lo, hi) = (self.min.as_micros() as u64, self.max.as_micros() as u64);
        Duration::from_micros(fastrand::u64(lo..=hi))
    }
}

/// Options of one echo instance.
#[derive(Clone, Debug, Default)]
pub struct EchoOptions {
    pub idle_close: Option<IdleClose>,
}

/// An instance-wide failure, injected with [`EchoServer::set_fault`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// Stop listening (connections are refused) and reset every open connection, until cleared.
    Refuse,
    /// Read each request, then reset the connection (TCP RST; `RST_STREAM` in HTTP/2).
    Reset,
    /// Read each request, then close the connection without an answer (FIN).
    Close,
    /// Read each request and never answer (until [`HANG_LIMIT`]).
    Hang,
    /// Answer every request with this status (and the usual JSON body).
    Status(u16),
    /// Delay every answer by this much (header controls still apply).
    Delay(Duration),
}

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
    /// Keep-alive connections closed because they were idle ([`IdleClose`]).
    pub idle_closes: AtomicU64,
    /// Requests being answered now, and the most seen at once.
    pub in_flight: AtomicU32,
    pub max_in_flight: AtomicU32,
    /// Attempts per request id seen by this instance.
    attempts: Attempts,
    seen: Mutex<Vec<Echo>>,
}

/// A running echo instance; stops when dropped.
pub struct EchoServer {
    addr: SocketAddr,
    identity: EchoIdentity,
    stats: Arc<EchoStats>,
    fault: watch::Sender<Fault>,
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
    options: EchoOptions,
    fault: watch::Receiver<Fault>,
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
        Self::start_with(addr, identity, attempts, EchoOptions::default()).await
    }

    /// [`EchoServer::start_shared`] with options.
    pub async fn start_with(
        addr: SocketAddr,
        identity: EchoIdentity,
        attempts: Arc<Attempts>,
        options: EchoOptions,
    ) -> io::Result<EchoServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(EchoStats::default());
        let (fault, fault_rx) = watch::channel(Fault::None);
        let shared = Arc::new(Shared {
            identity: identity.clone(),
            stats: stats.clone(),
            attempts,
            options,
            fault: fault_rx,
        });
        let task = tokio::spawn(accept_loop(listener, addr, shared));
        Ok(EchoServer {
            addr,
            identity,
            stats,
            fault,
            task,
        })
    }

    /// Injects (or, with [`Fault::None`], clears) an instance-wide failure. [`Fault::Refuse`] takes effect at
    /// once: the listener is closed and open connections are reset; clearing it listens again on the same address.
    pub fn set_fault(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
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
    /// Keep-alive connections this instance closed because they were idle.
    pub fn idle_closes(&self) -> u64 {
        self.stats.idle_closes.load(Ordering::Relaxed)
    }
    /// The most requests this instance was answering at once.
    pub fn max_in_flight(&self) -> u32 {
        self.stats.max_in_flight.load(Ordering::Relaxed)
    }
    /// Requests being answered now.
    pub fn in_flight(&self) -> u32 {
        self.stats.in_flight.load(Ordering::Relaxed)
    }
    /// Starts counting [`EchoServer::max_in_flight`] afresh.
    pub fn reset_max_in_flight(&self) {
        self.stats.max_in_flight.store(
            self.stats.in_flight.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
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

/// Accepts until dropped; while [`Fault::Refuse`] holds, does not listen at all.
async fn accept_loop(listener: TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
    let mut fault = shared.fault.clone();
    let mut listener = Some(listener);
    loop {
        if *fault.borrow_and_update() == Fault::Refuse {
            listener = None;
            if fault.changed().await.is_err() {
                return;
            }
            continue;
        }
        let Some(l) = listener.as_ref() else {
            match TcpListener::bind(addr).await {
                Ok(l) => listener = Some(l),
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
            continue;
        };
        tokio::select! {
            accepted = l.accept() => {
                let Ok((tcp, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                shared.stats.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve_connection(tcp, shared.clone()));
            }
            changed = fault.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// What one connection's idle-close watch needs: when it last moved a byte, and whether a request is open.
#[derive(Default)]
struct Activity {
    /// Bumped on every read or write that moved bytes, and when an answer is ready.
    epoch: AtomicU64,
    in_flight: AtomicU32,
}

/// Serves one connection: HTTP/2 when it opens with the prior-knowledge preface, else HTTP/1.1 (closed when
/// idle, when the instance has [`IdleClose`]). A [`Fault::Refuse`] resets it.
async fn serve_connection(tcp: TcpStream, shared: Arc<Shared>) {
    let h2 = starts_with_h2_preface(&tcp).await;
    let reset = Arc::new(AtomicBool::new(false));
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(ResetOnDrop {
        tcp,
        reset: reset.clone(),
        activity: activity.clone(),
    });
    let svc = {
        let (shared, reset, activity) = (shared.clone(), reset.clone(), activity.clone());
        service_fn(move |req| answer(req, shared.clone(), reset.clone(), activity.clone()))
    };
    let conn: Pin<Box<dyn std::future::Future<Output = ()> + Send>> = if h2 {
        let c = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc);
        Box::pin(async move {
            let _ = c.await;
        })
    } else {
        let c = hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
        Box::pin(async move {
            let _ = c.await;
        })
    };
    let idle = shared.options.idle_close.filter(|_| !h2);
    let mut fault = shared.fault.clone();
    tokio::select! {
        () = conn => {}
        () = refused(&mut fault) => reset.store(true, Ordering::Relaxed),
        () = idle_closer(idle, &activity) => {
            shared.stats.idle_closes.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Dropping the connection closes the socket: a FIN, or a RST when `reset` is set (or bytes were unread).
}

/// Returns when the instance starts refusing.
async fn refused(fault: &mut watch::Receiver<Fault>) {
    loop {
        if *fault.borrow_and_update() == Fault::Refuse {
            return;
        }
        if fault.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Returns when the connection has been idle (no byte moved, no request open) for a random time of `idle`;
/// never without `idle`.
async fn idle_closer(idle: Option<IdleClose>, activity: &Activity) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    let mut seen = activity.epoch.load(Ordering::Acquire);
    let mut wait = idle.draw();
    loop {
        tokio::time::sleep(wait).await;
        let now = activity.epoch.load(Ordering::Acquire);
        if now == seen && activity.in_flight.load(Ordering::Acquire) == 0 {
            return;
        }
        if now != seen {
            // A new idle period: a new random length.
            (seen, wait) = (now, idle.draw());
        }
    }
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
    activity: Arc<Activity>,
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
        let before = buf.filled().len();
        let r = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.epoch.fetch_add(1, Ordering::AcqRel);
        }
        r
    }
}

impl AsyncWrite for ResetOnDrop {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.tcp).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.epoch.fetch_add(1, Ordering::AcqRel);
        }
        r
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
    fail_mode: FailMode,
    grpc_status: Option<String>,
    body_bytes: Option<u64>,
}

/// How a failing attempt fails (`x-echo-fail-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum FailMode {
    /// Answer 503.
    #[default]
    Status,
    Reset,
    Close,
    Hang,
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
            fail_mode: match text("x-echo-fail-mode") {
                Some("reset") => FailMode::Reset,
                Some("close") => FailMode::Close,
                Some("hang") => FailMode::Hang,
                _ => FailMode::Status,
            },
            grpc_status: text("x-echo-grpc-status").map(str::to_string),
            body_bytes: number("x-echo-body-bytes"),
        }
    }
}

/// Counts a request in flight (instance and connection) until dropped.
struct InFlight {
    stats: Arc<EchoStats>,
    activity: Arc<Activity>,
}

impl InFlight {
    fn new(stats: Arc<EchoStats>, activity: Arc<Activity>) -> InFlight {
        let now = stats.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::AcqRel);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight { stats, activity }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::AcqRel);
        // The answer is about to be written: a new idle period starts no earlier than now.
        self.activity.epoch.fetch_add(1, Ordering::AcqRel);
        self.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn answer(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    reset: Arc<AtomicBool>,
    activity: Arc<Activity>,
) -> io::Result<Response<Body>> {
    let _in_flight = InFlight::new(shared.stats.clone(), activity);
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
    let fault = *shared.fault.borrow();
    let failing = request_id.is_some() && attempt <= controls.fail_first;
    let mode = match fault {
        Fault::Reset => Some(FailMode::Reset),
        Fault::Close | Fault::Refuse => Some(FailMode::Close),
        Fault::Hang => Some(FailMode::Hang),
        _ if failing => Some(controls.fail_mode),
        _ => None,
    };
    let delay = match fault {
        Fault::Delay(d) => Some(d + controls.delay.unwrap_or_default()),
        _ => controls.delay,
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let json = Bytes::from(serde_json::to_vec(&echo).expect("an Echo serializes"));
    match mode {
        Some(FailMode::Reset) => {
            reset.store(true, Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "x-echo-fail-mode: reset",
            ));
        }
        Some(FailMode::Close) => {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "x-echo-fail-mode: close",
            ));
        }
        Some(FailMode::Hang) => {
            tokio::time::sleep(HANG_LIMIT).await;
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "x-echo-fail-mode: hang",
            ));
        }
        Some(FailMode::Status) | None => {}
    }
    let status = match fault {
        Fault::Status(s) => StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        _ if failing => StatusCode::SERVICE_UNAVAILABLE,
        _ => controls.status.unwrap_or(StatusCode::OK),
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
    let resp = if let Some(n) = controls.body_bytes {
        resp.header("content-type", "application/octet-stream")
            .body(pattern_body(n))
    } else if grpc {
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

/// The bytes `x-echo-body-bytes` answers: byte `i` is `i % 251` (a prime, so 64 KiB chunks do not repeat at
/// chunk boundaries and a dropped, duplicated or shifted chunk changes the content).
pub fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// [`pattern`]`(n)` as a body of 64 KiB frames (streamed, not one buffer).
fn pattern_body(n: u64) -> Body {
    PatternBody { next: 0, len: n }.boxed()
}

/// The frames of [`pattern_body`].
struct PatternBody {
    next: u64,
    len: u64,
}

impl hyper::body::Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        const CHUNK: u64 = 64 * 1024;
        if self.next >= self.len {
            return Poll::Ready(None);
        }
        let (start, end) = (self.next, (self.next + CHUNK).min(self.len));
        self.next = end;
        let chunk: Vec<u8> = (start..end).map(|i| (i % 251) as u8).collect();
        Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk.into()))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.len
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.len - self.next)
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
