//! Reaching an endpoint: the peer Pingora connects to for one try, and the ways to the destination.
//!
//! - HTTP/1.1 over HBONE, and any HTTP/1.1 endpoint of a service with connection slots: the direct path
//!   ([`direct`]): Pingora's HTTP/1.1 client runs on the HBONE stream itself, kept-alive connections are pooled
//!   by [`direct::Upstreams`].
//! - h2c over HBONE: through an in-process relay so Pingora can pool and multiplex the h2 connection. Stock
//!   Pingora 0.9.1 reuses an h2 connection only when its file descriptor's peer matches the peer, so the h2c
//!   endpoint becomes an [`HttpPeer`] whose CONNECT-proxy `next_hop` is this process's relay socket: Pingora
//!   opens (and pools) a Unix connection and sends `CONNECT podIP:port` with the HBONE address and expected
//!   identity as a header; the [`Relay`] opens the HBONE stream through the shared outer connection pool,
//!   answers `200`, and copies bytes. The relay socket lives in a private (0700) directory: only this process
//!   can use it, so it is no open relay.
//! - Plain TCP without slots: Pingora's own TCP connector and pool.
//!
//! Connection slots (`maxConnections`, see `resilience::breaker::slots`) apply to HTTP/1.1 only: a try holding
//! a slot takes the slot's own pooled connection, and a slot has at most one open connection.

pub mod direct;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use mesh::hbone::{Dial, Pool};
use mesh::identity::{CertStore, Identity};
use pingora::upstreams::peer::HttpPeer;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::debug;

use crate::snapshot::Upstream;
use direct::{Link, Target, Upstreams};

/// `<hbone address> <expected identity>`: one header, so a peer carries one entry to copy per try.
const HDR_HBONE: &str = "x-waypoint-hbone";
/// The largest CONNECT head the relay reads (Pingora's is ~150 bytes).
const MAX_HEAD: usize = 4096;
/// Each direction's copy buffer of a relayed stream: one TLS record / default h2 frame, so a copy never splits
/// one; 32 KiB per open relayed connection.
const RELAY_BUFFER: usize = 16 << 10;

/// Names one connection slot of a service: the breaker's id and the slot index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotTag {
    pub service: u64,
    pub index: u32,
}

/// The ways out of this process: the relay (h2c over HBONE) and the direct path (HTTP/1.1).
#[derive(Clone, Debug)]
pub struct Ways {
    pub relay: PathBuf,
    pub direct: Upstreams,
}

/// What a try asks of its connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct TryOptions {
    /// The connection slot the try holds (HTTP/1.1 only).
    pub slot: Option<SlotTag>,
    /// A retry: never take a pooled connection (it may be stale the same way).
    pub fresh: bool,
    /// The destination speaks h2c.
    pub h2c: bool,
    /// How long the connection may stay pooled after the try (`None`: the default).
    pub idle_timeout: Option<Duration>,
    /// Bound on opening a connection.
    pub connect_timeout: Option<Duration>,
}

/// The Pingora peer for one try to `up`, and the try's link when it takes the direct path (see the module doc).
/// The parts that are the same for every try are built on the endpoint's first try ([`PeerTemplate`]).
pub fn peer(up: &Upstream, ways: &Ways, opts: TryOptions) -> (Box<HttpPeer>, Option<Arc<Link>>) {
    let template = up.peer.0.get_or_init(|| Box::new(Template::new(up)));
    if opts.h2c {
        let mut peer = match &up.hbone {
            Some(_) => {
                let cached = template.relayed.get_or_init(|| relayed(up, &ways.relay));
                let same_relay = cached
                    .proxy
                    .as_ref()
                    .is_some_and(|p| *p.next_hop == *ways.relay);
                Box::new(if same_relay {
                    HttpPeer::clone(cached)
                } else {
                    relayed(up, &ways.relay)
                })
            }
            None => Box::new(HttpPeer::clone(&template.plain)),
        };
        if opts.fresh {
            // A one-off pool key makes Pingora open a fresh connection.
            peer.group_key = fastrand::u64(..);
        }
        return (peer, None);
    }
    let mut peer = Box::new(HttpPeer::clone(&template.plain));
    if up.hbone.is_none() && opts.slot.is_none() {
        if opts.fresh {
            peer.group_key = fastrand::u64(..);
        }
        return (peer, None);
    }
    let link = ways.direct.link(
        template.target.clone(),
        opts.slot,
        opts.fresh,
        opts.idle_timeout,
        opts.connect_timeout,
    );
    peer.options.custom_l4 = Some(link.clone());
    (peer, Some(link))
}

/// The peer through `relay` to `up` (h2c over HBONE).
fn relayed(up: &Upstream, relay: &Path) -> HttpPeer {
    let mut headers = BTreeMap::new();
    if let Some(h) = &up.hbone {
        let value = format!("{} {}", h.hbone_addr, h.identity).into_bytes();
        headers.insert(HDR_HBONE.to_string(), value);
    }
    let next_hop = relay.to_str().expect("relay path is UTF-8");
    HttpPeer::new_proxy(next_hop, up.addr.ip(), up.addr.port(), false, "", headers)
}

/// What every try to one endpoint shares.
struct Template {
    /// The plain peer (`podIP:port`), copied per try.
    plain: HttpPeer,
    /// Where the direct path goes.
    target: Arc<Target>,
    /// The peer through the relay (h2c over HBONE), built on the first h2c try.
    relayed: std::sync::OnceLock<HttpPeer>,
}

impl Template {
    fn new(up: &Upstream) -> Template {
        let hbone = up
            .hbone
            .as_ref()
            .map(|h| (h.hbone_addr, h.identity.clone()));
        Template {
            plain: HttpPeer::new(up.addr, false, String::new()),
            target: Arc::new(Target::new(up.addr, hbone)),
            relayed: std::sync::OnceLock::new(),
        }
    }
}

/// The part of an endpoint's Pingora peer that is the same for every try: built on the endpoint's first try,
/// shared by the snapshot's copies of the endpoint, and cloned per try ([`peer`]), so a try no longer formats
/// addresses and identities. Boxed: an endpoint never tried costs a pointer.
#[derive(Default)]
pub struct PeerTemplate(std::sync::OnceLock<Box<Template>>);

impl std::fmt::Debug for PeerTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let built = self.0.get().is_some();
        f.debug_struct("PeerTemplate")
            .field("built", &built)
            .finish()
    }
}

/// The in-process HBONE relay of h2c destinations (see the module doc). Removes its socket directory when
/// dropped.
pub struct Relay {
    path: PathBuf,
    dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
    /// Tells every relayed stream to end (on shutdown or drop).
    closing: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    /// Binds the relay socket in a fresh private directory and serves it on the current runtime.
    pub fn start(pool: Pool, certs: CertStore) -> io::Result<Relay> {
        let dir = std::env::temp_dir().join(format!(
            "waypoint-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let path = dir.join("relay.sock");
        let listener = UnixListener::bind(&path)?;
        let (closing, closed) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let (pool, certs) = (pool.clone(), certs.clone());
                let mut closed = closed.clone();
                tokio::spawn(async move {
                    let relayed = relay_one(conn, &pool, &certs);
                    let result = tokio::select! {
                        r = relayed => r,
                        _ = closed.wait_for(|c| *c) => Ok(()),
                    };
                    if let Err(e) = result {
                        debug!("hbone relay: {e}");
                    }
                });
            }
        });
        Ok(Relay {
            path,
            dir,
            task,
            closing,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Ends every relayed stream (END_STREAM towards the endpoints); new ones are still accepted.
    pub fn close_streams(&self) {
        let _ = self.closing.send(true);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.close_streams();
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// What the relay needs from Pingora's CONNECT head.
#[derive(Debug, PartialEq, Eq)]
pub struct RelayTarget {
    pub authority: SocketAddr,
    /// The HBONE address and expected identity.
    pub hbone: (SocketAddr, Identity),
}

/// Parses `CONNECT ip:port HTTP/1.1` and the relay header.
pub fn parse_head(head: &str) -> Result<RelayTarget, String> {
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let (Some("CONNECT"), Some(auth)) = (parts.next(), parts.next()) else {
        return Err(format!("not a CONNECT: {first:?}"));
    };
    let authority: SocketAddr = auth
        .parse()
        .map_err(|_| format!("bad authority {auth:?}"))?;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !name.eq_ignore_ascii_case(HDR_HBONE) {
            continue;
        }
        let value = value.trim();
        let (addr, identity) = value
            .split_once(' ')
            .ok_or_else(|| format!("bad hbone target {value:?}: want <address> <identity>"))?;
        let addr = addr
            .parse()
            .map_err(|_| format!("bad hbone address {addr:?}"))?;
        let identity = identity.trim().parse().map_err(|e| format!("{e}"))?;
        return Ok(RelayTarget {
            authority,
            hbone: (addr, identity),
        });
    }
    Err("no HBONE target".into())
}

async fn relay_one(mut conn: UnixStream, pool: &Pool, certs: &CertStore) -> io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let end = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "CONNECT head too long",
            ));
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let target = match parse_head(&head) {
        Ok(t) => t,
        Err(e) => {
            conn.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await?;
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    };
    let rest = buf.get(end + 4..).unwrap_or_default();
    let (hbone_addr, identity) = &target.hbone;
    let expected = [identity.clone()];
    let dial = Dial {
        hbone_addr: *hbone_addr,
        authority: target.authority,
        source: certs,
        expected: &expected,
        headers: HeaderMap::new(),
    };
    match pool.connect(dial).await {
        Ok(stream) => established(conn, stream, rest).await,
        Err(e) => {
            conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await?;
            Err(io::Error::other(e.to_string()))
        }
    }
}

/// Answers the CONNECT with 200 and copies until either side ends.
async fn established<S>(mut conn: UnixStream, mut stream: S, rest: &[u8]) -> io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin,
{
    conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await?;
    // Anything Pingora sent after the head is already the application's bytes.
    if !rest.is_empty() {
        stream.write_all(rest).await?;
    }
    pump(conn, stream).await
}

/// Copies both ways. When the endpoint ends its side (END_STREAM or a reset) the relay stops at once and
/// closes the Unix connection, so Pingora sees the close; when Pingora ends its side first, the response is
/// still copied to the end.
async fn pump<S>(conn: UnixStream, stream: S) -> io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin,
{
    let (from_pingora, mut to_pingora) = conn.into_split();
    let (from_endpoint, mut to_endpoint) = tokio::io::split(stream);
    let mut from_pingora = BufReader::with_capacity(RELAY_BUFFER, from_pingora);
    let mut from_endpoint = BufReader::with_capacity(RELAY_BUFFER, from_endpoint);
    let up = async move {
        let copied = tokio::io::copy_buf(&mut from_pingora, &mut to_endpoint).await;
        let _ = to_endpoint.shutdown().await;
        (copied, from_pingora)
    };
    let down = async move {
        let copied = tokio::io::copy_buf(&mut from_endpoint, &mut to_pingora).await;
        let _ = to_pingora.shutdown().await;
        copied
    };
    tokio::pin!(up, down);
    tokio::select! {
        copied = &mut down => copied.map(drop),
        (copied, _still_open) = &mut up => {
            copied?;
            down.await.map(drop)
        }
    }
}

/// Opens a stream to `up` for a request the proxy sends itself (mirrors): a new HBONE stream, or plain TCP.
/// The stream carries the application's bytes.
pub async fn open(up: &Upstream, direct: &Upstreams) -> io::Result<Box<dyn Tunnel>> {
    let Some(h) = &up.hbone else {
        let tcp = tokio::net::TcpStream::connect(up.addr).await?;
        tcp.set_nodelay(true)?;
        return Ok(Box::new(tcp));
    };
    Ok(Box::new(
        direct
            .open_hbone(up.addr, h.hbone_addr, &h.identity)
            .await?,
    ))
}

/// A byte stream to an upstream.
pub trait Tunnel: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Tunnel for T {}

#[cfg(test)]
mod tests;
