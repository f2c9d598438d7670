//! A test client in a pod: HTTP/1.1, h2c and gRPC requests through the pod's node SOCKS5 entry (the socket
//! bound to the pod's IP, so the node proxy knows the source workload), returning status, headers, body,
//! trailers and the parsed [`Echo`] when the answer is one.
//!
//! ```ignore
//! let c = testbed.client("client");
//! let r = c.send(Req::get("echo.ns.svc.cluster.local:80", "/v2?x=1").header("version", "two")).await?;
//! assert_eq!(r.echo().pod, "echo-v2-0");
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::echo::{grpc_frame, grpc_unframe, Echo};
use super::manifests::Rewrite;
use crate::demo::client::{socks5_connect, Target};

/// How long one request may take before the client gives up (so a hung proxy fails a test, not hangs it).
pub const REQUEST_PATIENCE: Duration = Duration::from_secs(15);

/// The protocol the client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge.
    H2c,
}

/// One request: where, what, how.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: Method,
    /// `host:port` as dialled (a service hostname or a `127.0.0.x` VIP as written); port 80 when left out.
    pub authority: String,
    /// Path with query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub protocol: Protocol,
}

impl Req {
    pub fn new(method: &str, authority: &str, path: &str) -> Req {
        Req {
            method: Method::from_bytes(method.as_bytes()).expect("a valid method"),
            authority: authority.to_string(),
            path: path.to_string(),
            headers: vec![],
            body: Bytes::new(),
            protocol: Protocol::Http1,
        }
    }

    pub fn get(authority: &str, path: &str) -> Req {
        Req::new("GET", authority, path)
    }

    /// A unary gRPC call of `/service/method` with `message` as the (opaque) payload, over h2c.
    pub fn grpc(authority: &str, service: &str, method: &str, message: &[u8]) -> Req {
        Req::new("POST", authority, &format!("/{service}/{method}"))
            .h2c()
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(grpc_frame(message))
    }

    /// Adds a header (repeatable). A `host` header replaces the `Host` / `:authority` sent.
    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Req {
        self.body = body.into();
        self
    }

    pub fn h2c(mut self) -> Req {
        self.protocol = Protocol::H2c;
        self
    }

    /// `(host, port)` of the authority.
    fn host_port(&self) -> anyhow::Result<(&str, u16)> {
        match self.authority.rsplit_once(':') {
            Some((h, p)) => Ok((h, p.parse().context("authority port")?)),
            None => Ok((self.authority.as_str(), 80)),
        }
    }

    /// The `Host` / `:authority` sent: an explicit `host` header, else the authority without `:80`.
    fn host_header(&self) -> String {
        if let Some((_, v)) = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        {
            return v.clone();
        }
        self.authority
            .strip_suffix(":80")
            .unwrap_or(&self.authority)
            .to_string()
    }

    fn build(&self) -> anyhow::Result<Request<Full<Bytes>>> {
        let host = self.host_header();
        let mut b = match self.protocol {
            Protocol::Http1 => Request::builder().uri(&self.path).header("host", &host),
            Protocol::H2c => Request::builder().uri(format!("http://{host}{}", self.path)),
        };
        b = b.method(self.method.clone());
        for (k, v) in &self.headers {
            if !k.eq_ignore_ascii_case("host") {
                b = b.header(k.as_str(), v.as_str());
            }
        }
        Ok(b.body(Full::new(self.body.clone()))?)
    }
}

/// One answer.
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
    /// The echo's description of the request, when the answer is one (JSON, or a gRPC message holding JSON).
    pub echo: Option<Echo>,
    pub elapsed: Duration,
}

impl Resp {
    /// The first value of response header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of response header `name`.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// The echo's answer; panics (showing the response) when it is not one.
    pub fn echo(&self) -> &Echo {
        match &self.echo {
            Some(e) => e,
            None => panic!(
                "not an echo answer: status {} headers {:?} body {:?}",
                self.status, self.headers, self.body
            ),
        }
    }

    /// The pod that answered, when an echo did.
    pub fn pod(&self) -> Option<&str> {
        self.echo.as_ref().map(|e| e.pod.as_str())
    }

    /// `grpc-status`, from the trailers or (trailers-only answers) the headers.
    pub fn grpc_status(&self) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
    }
}

/// A pod able to send requests.
#[derive(Clone, Debug)]
pub struct Client {
    /// Its node's SOCKS5 entry.
    pub socks: SocketAddr,
    /// Its IP (the client socket is bound to it).
    pub source_ip: IpAddr,
    pub(super) rewrite: Arc<Rewrite>,
}

/// A keep-alive connection from a [`Client`] to one authority.
pub enum Conn {
    Http1(http1::SendRequest<Full<Bytes>>),
    H2c(http2::SendRequest<Full<Bytes>>),
}

impl Client {
    /// Opens a connection to `req`'s authority, speaking `req`'s protocol.
    pub async fn connect(&self, req: &Req) -> anyhow::Result<Conn> {
        let (host, port) = req.host_port()?;
        let target = Target {
            socks: self.socks,
            source_ip: self.source_ip,
            host: self.rewrite.host(host),
            port,
        };
        Conn::handshake(socks5_connect(&target).await?, req.protocol).await
    }

    /// Sends `req` on a new connection.
    pub async fn send(&self, req: Req) -> anyhow::Result<Resp> {
        let started = Instant::now();
        let mut conn = self.connect(&req).await?;
        conn.send_at(&req, started).await
    }

    /// Sends `req` `n` times over `concurrency` keep-alive connections, the results in completion order. A
    /// request that fails on a reused connection is sent once more on a new one (a keep-alive connection the
    /// server closed meanwhile); a broken connection is reopened.
    pub async fn send_many(
        &self,
        req: &Req,
        n: usize,
        concurrency: usize,
    ) -> Vec<anyhow::Result<Resp>> {
        let tickets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = vec![];
        for _ in 0..concurrency.max(1) {
            let (client, req, tickets) = (self.clone(), req.clone(), tickets.clone());
            tasks.push(tokio::spawn(async move {
                let mut out = vec![];
                let mut conn: Option<Conn> = None;
                while tickets.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    let started = Instant::now();
                    let reused = conn.is_some();
                    let mut r = client.send_on(&mut conn, &req, started).await;
                    if r.is_err() && reused {
                        // The server may close an idle keep-alive connection at any time (and does after
                        // some error answers): retry once on a new connection, as HTTP clients do.
                        r = client.send_on(&mut conn, &req, started).await;
                    }
                    out.push(r);
                }
                out
            }));
        }
        let mut all = vec![];
        for t in tasks {
            match t.await {
                Ok(v) => all.extend(v),
                Err(e) => all.push(Err(anyhow::anyhow!("client task: {e}"))),
            }
        }
        all
    }

    /// Sends on `conn`, opening it first when `None`; leaves it `None` after a failure.
    async fn send_on(
        &self,
        conn: &mut Option<Conn>,
        req: &Req,
        started: Instant,
    ) -> anyhow::Result<Resp> {
        if conn.is_none() {
            *conn = Some(self.connect(req).await?);
        }
        let r = conn
            .as_mut()
            .expect("connected")
            .send_at(req, started)
            .await;
        if r.is_err() {
            *conn = None;
        }
        r
    }
}

impl Conn {
    /// Opens a connection straight to `addr` (no mesh), e.g. to test a backend itself.
    pub async fn direct(addr: SocketAddr, protocol: Protocol) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Conn::handshake(tcp, protocol).await
    }

    async fn handshake(tcp: TcpStream, protocol: Protocol) -> anyhow::Result<Conn> {
        let io = TokioIo::new(tcp);
        Ok(match protocol {
            Protocol::Http1 => {
                let (send, conn) = http1::handshake(io).await?;
                tokio::spawn(conn);
                Conn::Http1(send)
            }
            Protocol::H2c => {
                let (send, conn) = http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(conn);
                Conn::H2c(send)
            }
        })
    }
    /// Sends `req` on this connection.
    pub async fn send(&mut self, req: &Req) -> anyhow::Result<Resp> {
        self.send_at(req, Instant::now()).await
    }

    async fn send_at(&mut self, req: &Req, started: Instant) -> anyhow::Result<Resp> {
        let request = req.build()?;
        let exchange = async {
            let resp = match self {
                Conn::Http1(s) => {
                    s.ready().await?;
                    s.send_request(request).await?
                }
                Conn::H2c(s) => {
                    s.ready().await?;
                    s.send_request(request).await?
                }
            };
            let (parts, body) = resp.into_parts();
            let collected = body.collect().await?;
            let trailers = collected.trailers().cloned();
            anyhow::Ok((parts, collected.to_bytes(), trailers))
        };
        let Ok(done) = tokio::time::timeout(REQUEST_PATIENCE, exchange).await else {
            bail!(
                "{} {} {}: no answer within {REQUEST_PATIENCE:?}",
                req.method,
                req.authority,
                req.path
            );
        };
        let (parts, body, trailers) = done?;
        Ok(Resp {
            status: parts.status.as_u16(),
            echo: parse_echo(&parts.headers, &body),
            headers: parts.headers,
            body,
            trailers,
            elapsed: started.elapsed(),
        })
    }
}

fn parse_echo(headers: &HeaderMap, body: &[u8]) -> Option<Echo> {
    let grpc = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"));
    let json = if grpc { grpc_unframe(body)? } else { body };
    serde_json::from_slice(json).ok()
}
