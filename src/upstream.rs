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
//!
//! Connection slots (`maxConnections`, see `resilience::breaker::slots`): a peer built for a slot carries its
//! tag ([`SlotTag`]); the relay keeps one open connection per slot and closes the slot's previous connection
//! when a new one is opened for it. A plain-TCP endpoint of a service with `maxConnections` goes through the
//! relay too (a CONNECT without the HBONE headers: the relay dials TCP), so every limited connection is seen.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::HeaderMap;
use mesh::hbone::{Dial, Pool};
use mesh::identity::{CertStore, Identity};
use pingora::upstreams::peer::HttpPeer;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tracing::debug;

use crate::snapshot::Upstream;

/// `<hbone address> <expected identity>`: one header, so a peer carries one entry to copy per try.
const HDR_HBONE: &str = "x-waypoint-hbone";
const HDR_SLOT: &str = "x-waypoint-slot";
/// The largest CONNECT head the relay reads (Pingora's is ~150 bytes).
const MAX_HEAD: usize = 4096;
/// Each direction's copy buffer of a relayed stream: one TLS record / default h2 frame, so a copy never splits
/// one; 32 KiB per open relayed connection, pooled keep-alive connections included (64 KiB buffers made 256
/// pooled connections cost 32 MiB of the waypoint's RSS in the c256 side-by-side run).
const RELAY_BUFFER: usize = 16 << 10;

/// Names one connection slot of a service: the breaker's id and the slot index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotTag {
    pub service: u64,
    pub index: u32,
}

impl SlotTag {
    /// The Pingora pool key of the slot's connection (distinct per service and slot; never 0, the default).
    pub fn group_key(self) -> u64 {
        (self.service << 20 | u64::from(self.index)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
    }
}

/// The Pingora peer for one endpoint; `slot`: the connection slot the try holds (see the module doc).
/// A relayed peer is a copy of the endpoint's [`PeerTemplate`] (built on its first try), plus the slot header.
pub fn peer(up: &Upstream, relay: &Path, slot: Option<SlotTag>) -> Box<HttpPeer> {
    if up.hbone.is_none() && slot.is_none() {
        return Box::new(HttpPeer::new(up.addr, false, String::new()));
    }
    let template = up.peer.0.get_or_init(|| Box::new(relayed(up, relay)));
    let same_relay = template
        .proxy
        .as_ref()
        .is_some_and(|p| &*p.next_hop == relay);
    let mut peer = Box::new(if same_relay {
        HttpPeer::clone(template)
    } else {
        relayed(up, relay)
    });
    if let (Some(t), Some(proxy)) = (slot, peer.proxy.as_mut()) {
        let value = format!("{}.{}", t.service, t.index).into_bytes();
        proxy.headers.insert(HDR_SLOT.to_string(), value);
        peer.group_key = t.group_key();
    }
    peer
}

/// The peer through `relay` to `up`, without a slot.
fn relayed(up: &Upstream, relay: &Path) -> HttpPeer {
    let mut headers = BTreeMap::new();
    if let Some(h) = &up.hbone {
        let value = format!("{} {}", h.hbone_addr, h.identity).into_bytes();
        headers.insert(HDR_HBONE.to_string(), value);
    }
    let next_hop = relay.to_str().expect("relay path is UTF-8");
    HttpPeer::new_proxy(next_hop, up.addr.ip(), up.addr.port(), false, "", headers)
}

/// The part of an endpoint's relayed Pingora peer that is the same for every try (CONNECT target, relay path,
/// HBONE header): built on the endpoint's first try, shared by the snapshot's copies of the endpoint, and
/// cloned per try ([`peer`]), so a try no longer formats addresses and identities. Boxed: an endpoint never
/// tried costs a pointer.
#[derive(Default)]
pub struct PeerTemplate(std::sync::OnceLock<Box<HttpPeer>>);

impl std::fmt::Debug for PeerTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let built = self.0.get().is_some();
        f.debug_struct("PeerTemplate")
            .field("built", &built)
            .finish()
    }
}

/// The in-process HBONE relay (see the module doc). Removes its socket directory when dropped.
pub struct Relay {
    path: PathBuf,
    dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
    /// Tells every relayed stream to end (on shutdown or drop).
    closing: tokio::sync::watch::Sender<bool>,
    slots: Arc<SlotConnections>,
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
        let slots = Arc::new(SlotConnections::default());
        let relay_slots = slots.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let (pool, certs, slots) = (pool.clone(), certs.clone(), relay_slots.clone());
                let mut closed = closed.clone();
                tokio::spawn(async move {
                    let relayed = relay_one(conn, &pool, &certs, &slots);
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
            slots,
        })
    }

    /// Connections open now for connection slots (all services).
    pub fn slot_connections(&self) -> usize {
        self.slots.len()
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
    /// The HBONE address and expected identity; `None`: plain TCP to `authority`.
    pub hbone: Option<(SocketAddr, Identity)>,
    /// The connection slot this connection is for.
    pub slot: Option<SlotTag>,
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
    let (mut hbone, mut slot) = (None, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case(HDR_HBONE) {
            let (addr, identity) = value
                .split_once(' ')
                .ok_or_else(|| format!("bad hbone target {value:?}: want <address> <identity>"))?;
            let addr = addr
                .parse()
                .map_err(|_| format!("bad hbone address {addr:?}"))?;
            let identity = identity.trim().parse().map_err(|e| format!("{e}"))?;
            hbone = Some((addr, identity));
        } else if name.eq_ignore_ascii_case(HDR_SLOT) {
            let bad = || format!("bad slot {value:?}");
            let (service, index) = value.split_once('.').ok_or_else(bad)?;
            slot = Some(SlotTag {
                service: service.parse().map_err(|_| bad())?,
                index: index.parse().map_err(|_| bad())?,
            });
        }
    }
    if hbone.is_none() && slot.is_none() {
        return Err("neither an HBONE target nor a connection slot".into());
    }
    Ok(RelayTarget {
        authority,
        hbone,
        slot,
    })
}

/// The open connection of each slot, so a slot's new connection closes its previous one. Touched when a
/// connection opens or closes, never per request; bounded by the connections open.
#[derive(Debug, Default)]
struct SlotConnections {
    open: Mutex<HashMap<SlotTag, (u64, oneshot::Sender<()>)>>,
    next: AtomicU64,
}

/// Unregisters a slot's connection when its relay task ends (unless a newer one replaced it).
struct SlotGuard<'a> {
    conns: &'a SlotConnections,
    tag: SlotTag,
    seq: u64,
}

impl SlotConnections {
    /// Registers a new connection for `tag`; the previous one is told to close (its sender is dropped).
    fn register(&self, tag: SlotTag) -> (SlotGuard<'_>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let previous = self.lock().insert(tag, (seq, tx));
        drop(previous);
        let guard = SlotGuard {
            conns: self,
            tag,
            seq,
        };
        (guard, rx)
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SlotTag, (u64, oneshot::Sender<()>)>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let mut open = self.conns.lock();
        if open.get(&self.tag).is_some_and(|(seq, _)| *seq == self.seq) {
            open.remove(&self.tag);
        }
    }
}

async fn relay_one(
    mut conn: UnixStream,
    pool: &Pool,
    certs: &CertStore,
    slots: &SlotConnections,
) -> io::Result<()> {
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
    // A slot's previous connection closes now: its slot is held by the try opening this one.
    let (_guard, replaced) = match target.slot {
        Some(tag) => {
            let (g, rx) = slots.register(tag);
            (Some(g), Some(rx))
        }
        None => (None, None),
    };
    let replaced = async move {
        match replaced {
            Some(rx) => {
                let _ = rx.await;
            }
            None => std::future::pending().await,
        }
    };
    let rest = buf.get(end + 4..).unwrap_or_default();
    match &target.hbone {
        Some((hbone_addr, identity)) => {
            let expected = [identity.clone()];
            let dial = Dial {
                hbone_addr: *hbone_addr,
                authority: target.authority,
                source: certs,
                expected: &expected,
                headers: HeaderMap::new(),
            };
            match pool.connect(dial).await {
                Ok(stream) => established(conn, stream, rest, replaced).await,
                Err(e) => refuse(conn, e.to_string()).await,
            }
        }
        None => match tokio::net::TcpStream::connect(target.authority).await {
            Ok(tcp) => {
                tcp.set_nodelay(true)?;
                established(conn, tcp, rest, replaced).await
            }
            Err(e) => refuse(conn, e.to_string()).await,
        },
    }
}

/// Answers the CONNECT with 503 (Pingora reports a connect failure).
async fn refuse(mut conn: UnixStream, why: String) -> io::Result<()> {
    conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
        .await?;
    Err(io::Error::other(why))
}

/// Answers the CONNECT with 200 and copies until either side ends or the slot's connection is replaced.
async fn established<S>(
    mut conn: UnixStream,
    mut stream: S,
    rest: &[u8],
    replaced: impl std::future::Future<Output = ()>,
) -> io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin,
{
    conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await?;
    // Anything Pingora sent after the head is already the application's bytes.
    if !rest.is_empty() {
        stream.write_all(rest).await?;
    }
    tokio::select! {
        r = pump(conn, stream) => r,
        () = replaced => Ok(()),
    }
}

/// Copies both ways. When the endpoint ends its side (END_STREAM or a reset: the application closed its
/// keep-alive connection), the relay stops at once and closes the Unix connection: request bytes Pingora wrote
/// that the relay had not read yet make Linux report `ECONNRESET` to Pingora, which is the proof that the
/// request was never delivered (`retry::Failure::NotDelivered`), so even a POST is safely retried. When Pingora
/// ends its side first, the response is still copied to the end.
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
        "CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n{HDR_HBONE}: {} {}\r\n\r\n",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::HboneUpstream;

    fn endpoint() -> Upstream {
        let hbone = HboneUpstream {
            hbone_addr: "10.1.0.1:15008".parse().unwrap(),
            identity: Identity::new("cluster.local", "default", "reviews"),
        };
        Upstream::new("10.1.0.1:8080".parse().unwrap(), Some(hbone))
    }

    #[test]
    fn a_relayed_peer_is_the_template_plus_the_slot() {
        let (up, relay) = (endpoint(), Path::new("/run/relay.sock"));
        let first = peer(&up, relay, None);
        let again = peer(&up, relay, None);
        assert_eq!(first.proxy.as_ref().unwrap().headers.len(), 1);
        assert_eq!(format!("{first:?}"), format!("{again:?}"));
        let tag = SlotTag {
            service: 7,
            index: 2,
        };
        let slotted = peer(&up, relay, Some(tag));
        let proxy = slotted.proxy.as_ref().unwrap();
        assert_eq!(proxy.headers[HDR_SLOT], b"7.2");
        assert_eq!(slotted.group_key, tag.group_key());
        let after = peer(&up, relay, None);
        assert_eq!(
            format!("{after:?}"),
            format!("{first:?}"),
            "the template is kept"
        );
        let elsewhere = peer(&up, Path::new("/other.sock"), None);
        assert_eq!(
            &*elsewhere.proxy.as_ref().unwrap().next_hop,
            Path::new("/other.sock")
        );
    }

    #[test]
    fn the_relay_reads_what_a_peer_sends() {
        let up = endpoint();
        let h = up.hbone.as_ref().unwrap();
        let head = format!(
            "CONNECT {} HTTP/1.1\r\nHost: {}\r\n{HDR_HBONE}: {} {}\r\n{HDR_SLOT}: 7.2",
            up.addr, up.addr, h.hbone_addr, h.identity
        );
        let target = parse_head(&head).unwrap();
        assert_eq!(target.authority, up.addr);
        assert_eq!(target.hbone, Some((h.hbone_addr, h.identity.clone())));
        assert_eq!(target.slot.map(|t| (t.service, t.index)), Some((7, 2)));
        assert!(
            parse_head("CONNECT 10.1.0.1:8080 HTTP/1.1\r\nx-waypoint-hbone: 10.1.0.1:15008")
                .is_err()
        );
        assert!(parse_head("CONNECT 10.1.0.1:8080 HTTP/1.1\r\nHost: x").is_err());
    }
}
