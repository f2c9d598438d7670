//! Reaching an endpoint: plain TCP, or HBONE through an in-process relay so Pingora can pool the connection.
//!
//! Stock Pingora 0.9.1 only reuses an upstream connection whose file descriptor's peer matches the peer, so an
//! HBONE stream handed over through `custom_l4` is never reused. Its CONNECT-over-Unix-socket proxy support is
//! reused, though: an HBONE endpoint becomes an [`HttpPeer`] whose proxy `next_hop` is this process's relay
//! socket. Pingora opens (and pools, keep-alive) a Unix connection and sends `CONNECT podIP:port` with the HBONE
//! address and expected identity as headers; the [`Relay`] opens the HBONE stream through the shared outer
//! connection pool, answers `200`, and copies bytes. One pooled Unix connection = one CONNECT stream = one
//! keep-alive application connection, reused across requests. The relay socket lives in a private (0700)
//! directory: only this process can use it, so it is no open relay.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::HeaderMap;
use mesh::hbone::{Dial, Pool};
use mesh::identity::{CertStore, Identity};
use pingora::upstreams::peer::HttpPeer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tracing::debug;

use crate::snapshot::Upstream;

const HDR_HBONE_ADDR: &str = "x-waypoint-hbone-addr";
const HDR_IDENTITY: &str = "x-waypoint-hbone-identity";
/// The largest CONNECT head the relay reads (Pingora's is ~150 bytes).
const MAX_HEAD: usize = 4096;

/// The Pingora peer for one endpoint.
pub fn peer(up: &Upstream, relay: &Path) -> Box<HttpPeer> {
    match &up.hbone {
        None => Box::new(HttpPeer::new(up.addr, false, String::new())),
        Some(h) => {
            let mut headers = BTreeMap::new();
            headers.insert(
                HDR_HBONE_ADDR.to_string(),
                h.hbone_addr.to_string().into_bytes(),
            );
            headers.insert(
                HDR_IDENTITY.to_string(),
                h.identity.to_string().into_bytes(),
            );
            let next_hop = relay.to_str().expect("relay path is UTF-8");
            Box::new(HttpPeer::new_proxy(
                next_hop,
                up.addr.ip(),
                up.addr.port(),
                false,
                "",
                headers,
            ))
        }
    }
}

/// The in-process HBONE relay (see the module doc). Removes its socket directory when dropped.
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
    pub hbone_addr: SocketAddr,
    pub identity: Identity,
}

/// Parses `CONNECT ip:port HTTP/1.1` and the relay headers.
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
    let (mut hbone_addr, mut identity) = (None, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case(HDR_HBONE_ADDR) {
            hbone_addr = Some(
                value
                    .parse()
                    .map_err(|_| format!("bad hbone address {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case(HDR_IDENTITY) {
            identity = Some(value.parse().map_err(|e| format!("{e}"))?);
        }
    }
    Ok(RelayTarget {
        authority,
        hbone_addr: hbone_addr.ok_or("missing hbone address")?,
        identity: identity.ok_or("missing identity")?,
    })
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
    let expected = [target.identity.clone()];
    let dial = Dial {
        hbone_addr: target.hbone_addr,
        authority: target.authority,
        source: certs,
        expected: &expected,
        headers: HeaderMap::new(),
    };
    let mut stream = match pool.connect(dial).await {
        Ok(s) => s,
        Err(e) => {
            conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await?;
            return Err(io::Error::other(e.to_string()));
        }
    };
    conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await?;
    // Anything Pingora sent after the head is already the application's bytes.
    if buf.len() > end + 4 {
        stream.write_all(&buf[end + 4..]).await?;
    }
    pump(conn, stream).await
}

/// Copies both ways. When the endpoint ends its side (END_STREAM or a reset: the application closed its
/// keep-alive connection), the relay stops at once and closes the Unix connection: request bytes Pingora wrote
/// that the relay had not read yet make Linux report `ECONNRESET` to Pingora, which is the proof that the
/// request was never delivered (`retry::Failure::NotDelivered`), so even a POST is safely retried. When Pingora
/// ends its side first, the response is still copied to the end.
async fn pump(conn: UnixStream, stream: mesh::hbone::H2Stream) -> io::Result<()> {
    let (mut from_pingora, mut to_pingora) = conn.into_split();
    let (mut from_endpoint, mut to_endpoint) = tokio::io::split(stream);
    let up = async move {
        let copied = tokio::io::copy(&mut from_pingora, &mut to_endpoint).await;
        let _ = to_endpoint.shutdown().await;
        (copied, from_pingora)
    };
    let down = async move {
        let copied = tokio::io::copy(&mut from_endpoint, &mut to_pingora).await;
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

/// Opens a stream to `up` for a request the proxy sends itself (mirrors): through the relay (HBONE) or plain
/// TCP. The stream carries the application's bytes.
pub async fn open(up: &Upstream, relay: &Path) -> io::Result<Box<dyn Tunnel>> {
    let Some(h) = &up.hbone else {
        let tcp = tokio::net::TcpStream::connect(up.addr).await?;
        tcp.set_nodelay(true)?;
        return Ok(Box::new(tcp));
    };
    let mut conn = UnixStream::connect(relay).await?;
    let head = format!(
        "CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n{HDR_HBONE_ADDR}: {}\r\n{HDR_IDENTITY}: {}\r\n\r\n",
        h.hbone_addr,
        h.identity,
        a = up.addr
    );
    conn.write_all(head.as_bytes()).await?;
    let mut buf = Vec::with_capacity(64);
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).await? == 0 || buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "relay closed during CONNECT",
            ));
        }
        buf.push(byte[0]);
    }
    if !buf.starts_with(b"HTTP/1.1 200") {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "HBONE CONNECT refused",
        ));
    }
    Ok(Box::new(conn))
}

/// A byte stream to an upstream.
pub trait Tunnel: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Tunnel for T {}
