//! The demo client: HTTP/1.1 keep-alive or h2c through a ztunnel's SOCKS5 entry, from a pod's address, plus a
//! closed-loop load generator that records statuses, versions and latencies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The application protocol spoken inside the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Proto {
    Http1,
    H2c,
}

/// Where requests go and from where.
#[derive(Clone, Debug)]
pub struct Target {
    /// The ztunnel SOCKS5 entry.
    pub socks: SocketAddr,
    /// The client pod's address (the socket is bound to it so the ztunnel knows the source workload).
    pub source_ip: IpAddr,
    /// Destination as dialled: a service hostname or an IP.
    pub host: String,
    pub port: u16,
}

/// Connects through SOCKS5 (no auth, CONNECT) to `host:port`.
pub async fn socks5_connect(t: &Target) -> anyhow::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(t.source_ip, 0))
        .context("binding the client pod address")?;
    let mut s = sock
        .connect(t.socks)
        .await
        .with_context(|| format!("connecting to SOCKS5 {}", t.socks))?;
    s.set_nodelay(true)?;
    s.write_all(&[5, 1, 0]).await?;
    let mut two = [0u8; 2];
    s.read_exact(&mut two).await?;
    if two != [5, 0] {
        bail!("SOCKS5 method refused: {two:?}");
    }
    let mut req = vec![5, 1, 0];
    match t.host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            req.push(1);
            req.extend_from_slice(&ip.octets());
        }
        Ok(IpAddr::V6(ip)) => {
            req.push(4);
            req.extend_from_slice(&ip.octets());
        }
        Err(_) => {
            req.push(3);
            req.push(t.host.len() as u8);
            req.extend_from_slice(t.host.as_bytes());
        }
    }
    req.extend_from_slice(&t.port.to_be_bytes());
    s.write_all(&req).await?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    if head[1] != 0 {
        bail!(
            "SOCKS5 CONNECT to {}:{} failed with reply {}",
            t.host,
            t.port,
            head[1]
        );
    }
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => s.read_u8().await? as usize + 2,
        x => bail!("SOCKS5 reply with address type {x}"),
    };
    let mut skip = vec![0u8; rest];
    s.read_exact(&mut skip).await?;
    Ok(s)
}

/// One response, summarized.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub version: Option<String>,
    pub xfcc: Option<String>,
    pub error_flag: Option<String>,
    pub body: Bytes,
}

/// One client connection (HTTP/1.1 keep-alive or h2c).
pub enum Conn {
    Http1(http1::SendRequest<Empty<Bytes>>),
    H2c(http2::SendRequest<Empty<Bytes>>),
}

impl Conn {
    pub async fn open(t: &Target, proto: Proto) -> anyhow::Result<Conn> {
        let io = TokioIo::new(socks5_connect(t).await?);
        Ok(match proto {
            Proto::Http1 => {
                let (send, conn) = http1::handshake(io).await?;
                tokio::spawn(conn);
                Conn::Http1(send)
            }
            Proto::H2c => {
                let (send, conn) = http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(conn);
                Conn::H2c(send)
            }
        })
    }

    /// Sends `GET path` with `Host: host:port`.
    pub async fn get(&mut self, t: &Target, path: &str) -> anyhow::Result<Reply> {
        self.get_with(t, path, &[]).await
    }

    /// Sends `GET path` with `Host: host:port` and extra `headers`.
    pub async fn get_with(
        &mut self,
        t: &Target,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        let authority = format!("{}:{}", t.host, t.port);
        let mut req = match self {
            Conn::Http1(_) => Request::get(path).header("host", authority),
            Conn::H2c(_) => Request::get(format!("http://{authority}{path}")),
        };
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::new())?;
        let resp = match self {
            Conn::Http1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Conn::H2c(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (status, version, xfcc, error_flag) = (
            resp.status().as_u16(),
            header("x-version"),
            header("x-seen-xfcc"),
            header("x-waypoint-error"),
        );
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            version,
            xfcc,
            error_flag,
            body,
        })
    }
}

/// What a load run saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub by_version: BTreeMap<String, u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
    pub identities_seen_by_app: BTreeSet<String>,
    #[serde(skip)]
    pub latencies_us: Vec<u64>,
    pub elapsed_ms: u64,
}

impl Outcome {
    pub fn percentile_us(&self, p: f64) -> u64 {
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        if v.is_empty() {
            return 0;
        }
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
    pub fn share(&self, version: &str) -> f64 {
        *self.by_version.get(version).unwrap_or(&0) as f64 / self.ok.max(1) as f64
    }
    fn merge(&mut self, o: Outcome) {
        self.requests += o.requests;
        self.ok += o.ok;
        self.failed += o.failed;
        for (k, v) in o.by_version {
            *self.by_version.entry(k).or_default() += v;
        }
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.identities_seen_by_app.extend(o.identities_seen_by_app);
        self.latencies_us.extend(o.latencies_us);
    }
}

/// Sends `total` requests over `connections` keep-alive connections (closed loop), `pause` between requests of
/// one connection. A broken connection is reopened; its failure is counted.
pub async fn run_load(
    t: &Target,
    proto: Proto,
    path: &str,
    total: usize,
    connections: usize,
    pause: Duration,
) -> Outcome {
    let tickets = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections.max(1) {
        let (t, tickets, path) = (t.clone(), tickets.clone(), path.to_string());
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            let mut conn: Option<Conn> = None;
            while tickets.fetch_add(1, Ordering::Relaxed) < total {
                out.requests += 1;
                let t0 = Instant::now();
                let result = async {
                    if conn.is_none() {
                        conn = Some(Conn::open(&t, proto).await?);
                    }
                    conn.as_mut().expect("just opened").get(&t, &path).await
                }
                .await;
                match result {
                    Ok(r) if r.status == 200 => {
                        out.ok += 1;
                        out.latencies_us.push(t0.elapsed().as_micros() as u64);
                        *out.by_version
                            .entry(r.version.unwrap_or_default())
                            .or_default() += 1;
                        *out.statuses.entry(200).or_default() += 1;
                        if let Some(x) = r.xfcc {
                            out.identities_seen_by_app.insert(x);
                        }
                    }
                    Ok(r) => {
                        out.failed += 1;
                        *out.statuses.entry(r.status).or_default() += 1;
                        *out.errors
                            .entry(r.error_flag.unwrap_or_else(|| r.status.to_string()))
                            .or_default() += 1;
                    }
                    Err(e) => {
                        out.failed += 1;
                        *out.errors.entry(format!("{e:#}")).or_default() += 1;
                        conn = None;
                    }
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            out
        }));
    }
    let mut all = Outcome::default();
    for t in tasks {
        if let Ok(o) = t.await {
            all.merge(o);
        }
    }
    all.elapsed_ms = start.elapsed().as_millis() as u64;
    all
}
