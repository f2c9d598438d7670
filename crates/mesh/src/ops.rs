//! Operating a proxy, shared by the waypoint and the ztunnel binaries: readiness (port 15021), the Prometheus
//! endpoint (port 15020), a small HTTP/1.1 server for those and the admin port, listener binding with
//! `SO_REUSEPORT`, and the runtime log level ([`logging`]).
//!
//! Readiness is `GET /healthz/ready`: `200 ready` once the certificates, the first config and the listeners are
//! up, `503` before (naming what is missing) and `503 draining` once a drain began, so Kubernetes stops sending
//! new connections while in-flight ones finish.

pub mod logging;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

pub use logging::LogControl;

/// The readiness port of both tiers.
pub const READINESS_PORT: u16 = 15021;
/// The Prometheus port of both tiers.
pub const STATS_PORT: u16 = 15020;
/// The admin port (loopback only).
pub const ADMIN_PORT: u16 = 15000;
/// Istio's default `terminationDrainDuration`: the drain deadline of both binaries unless told otherwise.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections an ops server serves at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// A client must send its request head within this (slow clients must not hold a connection slot forever).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a proxy may receive traffic. Cheap to clone (shared state).
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    inner: Arc<ReadyInner>,
}

#[derive(Debug, Default)]
struct ReadyInner {
    certs: AtomicBool,
    config: AtomicBool,
    listening: AtomicBool,
    draining: AtomicBool,
}

/// What `/healthz/ready` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadyState {
    /// Still starting: the first thing missing.
    Starting(&'static str),
    Ready,
    Draining,
}

impl Readiness {
    pub fn certs_loaded(&self) {
        self.inner.certs.store(true, Ordering::SeqCst);
    }
    pub fn config_loaded(&self) {
        self.inner.config.store(true, Ordering::SeqCst);
    }
    pub fn listening(&self) {
        self.inner.listening.store(true, Ordering::SeqCst);
    }
    /// From now on not ready, for good.
    pub fn draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }
    pub fn state(&self) -> ReadyState {
        let i = &self.inner;
        if i.draining.load(Ordering::SeqCst) {
            return ReadyState::Draining;
        }
        for (done, what) in [
            (&i.certs, "certificates"),
            (&i.config, "config"),
            (&i.listening, "listeners"),
        ] {
            if !done.load(Ordering::SeqCst) {
                return ReadyState::Starting(what);
            }
        }
        ReadyState::Ready
    }
    pub fn is_ready(&self) -> bool {
        self.state() == ReadyState::Ready
    }

    /// The `/healthz/ready` answer.
    pub fn answer(&self) -> Response<Full<Bytes>> {
        match self.state() {
            ReadyState::Ready => text(StatusCode::OK, "ready\n".into()),
            ReadyState::Draining => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into()),
            ReadyState::Starting(what) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: waiting for {what}\n"),
            ),
        }
    }
}

/// The body type of every ops response.
pub type Body = Full<Bytes>;

/// A plain-text response.
pub fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

/// A response with a body of type `content_type`.
pub fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

/// Binds a TCP listener with `SO_REUSEADDR`, and `SO_REUSEPORT` when `reuse_port` (every socket sharing the
/// address must set it; the kernel then spreads new connections over them). Call inside a Tokio runtime.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Binds `addr`, refusing anything but a loopback address (for admin endpoints).
pub async fn bind_loopback(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr}: the admin endpoint binds loopback only"),
        ));
    }
    TcpListener::bind(addr).await
}

/// One request as an ops handler sees it: the method, the path and the raw query (bodies are not read).
#[derive(Clone, Debug)]
pub struct OpsRequest {
    pub method: Method,
    pub path: String,
    pub query: String,
}

impl OpsRequest {
    /// The decoded query pairs (`+` and `%XX` decoded).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.as_bytes())
            .into_owned()
            .collect()
    }
}

/// What an ops server answers.
pub type Handler = Arc<dyn Fn(&OpsRequest) -> Response<Full<Bytes>> + Send + Sync>;

/// Serves HTTP/1.1 on `listener` with `handler` until the returned task is aborted (or dropped with the
/// runtime). At most 64 connections at once; a request head must arrive within 5 s.
pub fn serve(listener: TcpListener, handler: Handler) -> JoinHandle<()> {
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::debug!(error = %e, "ops accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let req = OpsRequest {
                        method: req.method().clone(),
                        path: req.uri().path().to_string(),
                        query: req.uri().query().unwrap_or_default().to_string(),
                    };
                    let resp = handler(&req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}

/// Serves `GET /healthz/ready` from `readiness` on `listener` (anything else: 404).
pub fn serve_readiness(listener: TcpListener, readiness: Readiness) -> JoinHandle<()> {
    serve(
        listener,
        Arc::new(move |req: &OpsRequest| match req.path.as_str() {
            "/healthz/ready" => readiness.answer(),
            _ => text(StatusCode::NOT_FOUND, "try /healthz/ready\n".into()),
        }),
    )
}

/// Writes the Prometheus text exposition of a proxy's metrics into the buffer.
pub type Render = Arc<dyn Fn(&mut String) + Send + Sync>;

/// The Prometheus text exposition content type.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `render` on `GET /stats/prometheus` and `GET /metrics` (anything else: 404).
pub fn serve_metrics(listener: TcpListener, render: Render) -> JoinHandle<()> {
    serve(
        listener,
        Arc::new(move |req: &OpsRequest| match req.path.as_str() {
            "/stats/prometheus" | "/metrics" => {
                let mut out = String::with_capacity(4096);
                render(&mut out);
                respond(StatusCode::OK, PROMETHEUS_TEXT, out)
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "try /stats/prometheus or /metrics\n".into(),
            ),
        }),
    )
}

/// An address flag that also takes `off` (the listener is disabled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrOrOff(pub Option<SocketAddr>);

impl std::str::FromStr for AddrOrOff {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "off" | "" => Ok(AddrOrOff(None)),
            a => a
                .parse()
                .map(|a| AddrOrOff(Some(a)))
                .map_err(|_| format!("{a:?} is not ip:port or off")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_all_three_and_drain_is_final() {
        let r = Readiness::default();
        assert_eq!(r.state(), ReadyState::Starting("certificates"));
        r.certs_loaded();
        assert_eq!(r.state(), ReadyState::Starting("config"));
        r.config_loaded();
        assert_eq!(r.state(), ReadyState::Starting("listeners"));
        r.listening();
        assert!(r.is_ready());
        assert_eq!(r.answer().status(), StatusCode::OK);
        r.draining();
        assert_eq!(r.state(), ReadyState::Draining);
        assert_eq!(r.answer().status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn addr_or_off() {
        assert_eq!("off".parse(), Ok(AddrOrOff(None)));
        assert_eq!(
            "127.0.0.1:15000".parse(),
            Ok(AddrOrOff(Some("127.0.0.1:15000".parse().unwrap())))
        );
        assert!("localhost".parse::<AddrOrOff>().is_err());
    }

    #[tokio::test]
    async fn reuse_port_lets_two_listeners_share_an_address() {
        let a = bind("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let addr = a.local_addr().unwrap();
        let b = bind(addr, true).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
        // Without it on the newcomer, the address is taken.
        assert!(bind(addr, false).is_err());
    }
}
