//! The direct upstream path of HTTP/1.1 destinations: Pingora's HTTP/1.1 client runs straight on an HBONE
//! CONNECT stream (or, for a service with connection slots, a TCP connection), and the keep-alive connection
//! is pooled here, not in Pingora.
//!
//! Why not Pingora's pool: it hands a pooled connection back only when the peer address of the connection's
//! file descriptor matches the peer, and a stream that is not a socket of ours has none. So each try's peer
//! carries a [`Link`] (its `custom_l4` connector): Pingora asks it for a connection, the link takes an idle one
//! from [`Upstreams`] or opens one, and gives Pingora a [`Conn`] (a virtual socket) over it.
//!
//! How the connection comes back: when the destination's answer has been read to its end, the proxy marks the
//! link complete ([`Link::complete`]). Pingora, when it would pool the connection (request and answer whole,
//! keep-alive, nothing read beyond the answer), first tries a non-blocking read to check that the idle
//! connection is quiet; that read, on a complete link, is where the [`Conn`] hands its connection back to
//! [`Upstreams`] and answers end-of-stream, so Pingora lets go of its empty handle. Every other ending (an
//! error, `Connection: close`, an answer not read to its end) closes the connection: Pingora shuts the handle
//! down or drops it, and the connection goes with it. No read or write on the request path takes a lock of
//! ours; taking and returning a pooled connection takes one short one.
//!
//! A pooled connection is checked when taken (a non-blocking read must find nothing: no data, no end, no
//! reset), dropped after its idle timeout, and a sweep every [`SWEEP_EVERY`] closes expired ones. A connection
//! slot's pool key holds at most one connection: the slot's previous connection closes when a newer one is
//! pooled or opened for it (the slot is held by the try that opens it, so the old one is idle by construction).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::HeaderMap;
use mesh::hbone::{Dial, H2Stream, Pool};
use mesh::identity::{CertStore, Identity};
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::{Error, ErrorType};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::SlotTag;

/// How long a pooled connection may stay idle when the service does not say (`connectionPool.*.idleTimeout`).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);
/// Idle connections kept per destination (endpoint and identity, or slot), and in all.
const MAX_IDLE_PER_KEY: usize = 512;
const MAX_IDLE: usize = 4096;
/// How often expired idle connections are closed.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Where an endpoint is reached: built once per endpoint (see [`super::PeerTemplate`]).
#[derive(Debug)]
pub struct Target {
    /// `podIP:port`: the CONNECT authority, or the TCP destination.
    pub authority: SocketAddr,
    /// The HBONE address and the identity it must present; `None`: plain TCP.
    pub hbone: Option<(SocketAddr, Identity)>,
    /// A hash of the identity, for the pool key.
    identity_key: u64,
}

impl Target {
    pub fn new(authority: SocketAddr, hbone: Option<(SocketAddr, Identity)>) -> Target {
        let identity_key = hbone.as_ref().map_or(0, |(_, id)| {
            let mut h = std::hash::DefaultHasher::new();
            id.hash(&mut h);
            h.finish()
        });
        Target {
            authority,
            hbone,
            identity_key,
        }
    }

    fn key(&self, slot: Option<SlotTag>) -> PoolKey {
        PoolKey {
            authority: self.authority,
            hbone: self.hbone.as_ref().map(|(a, _)| (*a, self.identity_key)),
            slot,
        }
    }
}

/// Which pooled connections are interchangeable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    authority: SocketAddr,
    hbone: Option<(SocketAddr, u64)>,
    slot: Option<SlotTag>,
}

/// One open connection to a destination.
enum Io {
    Hbone(H2Stream),
    Tcp(TcpStream),
}

impl Io {
    fn pinned(&mut self) -> Pin<&mut dyn AsyncRw> {
        match self {
            Io::Hbone(s) => Pin::new(s),
            Io::Tcp(s) => Pin::new(s),
        }
    }

    /// Whether an idle connection is still quiet: a non-blocking read finds nothing.
    fn quiet(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(Waker::noop());
        matches!(self.pinned().poll_read(&mut cx, &mut buf), Poll::Pending)
    }

    /// The destination has already ended its side: a request written now would never be read.
    fn peer_ended(&self) -> bool {
        match self {
            Io::Hbone(s) => s.peer_ended(),
            Io::Tcp(_) => false,
        }
    }
}

trait AsyncRw: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRw for T {}

struct Idle {
    io: Io,
    uses: u32,
    expires: Instant,
}

#[derive(Default)]
struct IdleMap {
    by_key: HashMap<PoolKey, Vec<Idle>>,
    total: usize,
}

/// Counters of the direct path.
#[derive(Debug, Default)]
pub struct DirectStats {
    /// Connections opened (HBONE streams or TCP connections).
    pub opened: AtomicU64,
    /// Tries that took a pooled connection.
    pub reused: AtomicU64,
    /// Idle connections closed (expired, found closed when taken, over the limits, replaced in their slot).
    pub discarded: AtomicU64,
}

struct Shared {
    pool: Pool,
    certs: CertStore,
    idle: Mutex<IdleMap>,
    stats: DirectStats,
}

/// The pool of idle destination connections, and what opens new ones. Cheap to clone.
#[derive(Clone)]
pub struct Upstreams {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl Upstreams {
    /// Opens HBONE streams through `pool` with `certs`; on a runtime, a task closes expired idle connections
    /// until the last clone is dropped.
    pub fn new(pool: Pool, certs: CertStore) -> Upstreams {
        let shared = Arc::new(Shared {
            pool,
            certs,
            idle: Mutex::default(),
            stats: DirectStats::default(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&shared);
            rt.spawn(sweep(weak));
        }
        Upstreams { shared }
    }

    /// The connector of one try to `target` (see the module doc). `slot`: the connection slot the try holds;
    /// `fresh`: never take a pooled connection (a retry: the pooled ones may be stale the same way).
    pub fn link(
        &self,
        target: Arc<Target>,
        slot: Option<SlotTag>,
        fresh: bool,
        idle_timeout: Option<Duration>,
        connect_timeout: Option<Duration>,
    ) -> Arc<Link> {
        Arc::new_cyclic(|me| Link {
            me: me.clone(),
            shared: self.shared.clone(),
            target,
            slot,
            fresh,
            idle_timeout: idle_timeout.unwrap_or(DEFAULT_IDLE),
            connect_timeout,
            complete: AtomicBool::new(false),
            got: OnceLock::new(),
        })
    }

    /// Opens a new HBONE stream to `authority` through `hbone_addr`, which must present `identity` (for requests
    /// the proxy sends itself: mirrors).
    pub async fn open_hbone(
        &self,
        authority: SocketAddr,
        hbone_addr: SocketAddr,
        identity: &Identity,
    ) -> io::Result<H2Stream> {
        dial_hbone(&self.shared, authority, hbone_addr, identity).await
    }

    /// Idle connections pooled now.
    pub fn idle_count(&self) -> usize {
        self.shared.lock().total
    }

    pub fn stats(&self) -> &DirectStats {
        &self.shared.stats
    }

    /// Closes every idle connection (shutdown: nothing is in flight any more).
    pub fn close_idle(&self) {
        let drained = std::mem::take(&mut *self.shared.lock());
        drop(drained);
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, IdleMap> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A quiet pooled connection for `key`, most recently used first.
    fn take(&self, key: &PoolKey, now: Instant) -> Option<Idle> {
        let mut map = self.lock();
        let list = map.by_key.get_mut(key)?;
        let mut found = None;
        let mut dropped = 0;
        while let Some(mut idle) = list.pop() {
            if idle.expires > now && idle.io.quiet() {
                found = Some(idle);
                break;
            }
            dropped += 1;
        }
        let empty = list.is_empty();
        if empty {
            map.by_key.remove(key);
        }
        map.total -= dropped + usize::from(found.is_some());
        drop(map);
        self.stats
            .discarded
            .fetch_add(dropped as u64, Ordering::Relaxed);
        found
    }

    /// Pools a connection whose last answer was read whole.
    fn put(&self, key: PoolKey, idle: Idle) {
        let mut map = self.lock();
        let full = map.total >= MAX_IDLE;
        let list = map.by_key.entry(key).or_default();
        let mut replaced = Vec::new();
        if key.slot.is_some() {
            // One connection per slot: the newer one stays.
            replaced.append(list);
        } else if full || list.len() >= MAX_IDLE_PER_KEY {
            drop(map);
            self.stats.discarded.fetch_add(1, Ordering::Relaxed);
            return;
        }
        list.push(idle);
        map.total = map.total + 1 - replaced.len();
        drop(map);
        self.stats
            .discarded
            .fetch_add(replaced.len() as u64, Ordering::Relaxed);
    }

    /// Closes the idle connection of a slot a new connection is being opened for.
    fn clear_slot(&self, key: &PoolKey) {
        let mut map = self.lock();
        if let Some(old) = map.by_key.remove(key) {
            map.total -= old.len();
            drop(map);
            self.stats
                .discarded
                .fetch_add(old.len() as u64, Ordering::Relaxed);
        }
    }

    /// Closes expired idle connections and those the destination closed.
    fn sweep(&self, now: Instant) {
        let mut map = self.lock();
        let mut dropped = 0;
        map.by_key.retain(|_, list| {
            let before = list.len();
            list.retain_mut(|idle| idle.expires > now && idle.io.quiet());
            dropped += before - list.len();
            !list.is_empty()
        });
        map.total -= dropped;
        drop(map);
        self.stats
            .discarded
            .fetch_add(dropped as u64, Ordering::Relaxed);
    }
}

async fn sweep(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.sweep(Instant::now());
    }
}

async fn dial_hbone(
    shared: &Shared,
    authority: SocketAddr,
    hbone_addr: SocketAddr,
    identity: &Identity,
) -> io::Result<H2Stream> {
    let expected = [identity.clone()];
    let dial = Dial {
        hbone_addr,
        authority,
        source: &shared.certs,
        expected: &expected,
        headers: HeaderMap::new(),
    };
    shared
        .pool
        .connect(dial)
        .await
        .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e.to_string()))
}

/// One try's connector (Pingora's `custom_l4`), and what the proxy and the connection share about the try.
pub struct Link {
    me: Weak<Link>,
    shared: Arc<Shared>,
    target: Arc<Target>,
    slot: Option<SlotTag>,
    fresh: bool,
    idle_timeout: Duration,
    connect_timeout: Option<Duration>,
    /// The answer was read to its end (set by the proxy).
    complete: AtomicBool,
    /// Set when the connection is given: which request of the connection this is (1 = a new connection).
    got: OnceLock<u32>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("target", &self.target.authority)
            .field("slot", &self.slot)
            .field("fresh", &self.fresh)
            .finish()
    }
}

impl Link {
    /// The destination's answer has been read to its end: the connection may go back to the pool.
    pub fn complete(&self) {
        self.complete.store(true, Ordering::Release);
    }

    /// Whether the try's connection came from the pool, and which request of the connection it carries
    /// (1 = first); `None` before Pingora asked for the connection.
    pub fn connection_use(&self) -> Option<(bool, u32)> {
        self.got.get().map(|&nth| (nth > 1, nth))
    }

    async fn open(&self) -> io::Result<Io> {
        let t = &self.target;
        match &t.hbone {
            Some((hbone_addr, identity)) => Ok(Io::Hbone(
                dial_hbone(&self.shared, t.authority, *hbone_addr, identity).await?,
            )),
            None => {
                let tcp = TcpStream::connect(t.authority).await?;
                tcp.set_nodelay(true)?;
                Ok(Io::Tcp(tcp))
            }
        }
    }
}

#[async_trait]
impl L4Connect for Link {
    async fn connect(&self, _addr: &PingoraAddr) -> pingora::Result<L4Stream> {
        let key = self.target.key(self.slot);
        let pooled = if self.fresh {
            None
        } else {
            self.shared.take(&key, Instant::now())
        };
        let (io, uses) = match pooled {
            Some(idle) => {
                self.shared.stats.reused.fetch_add(1, Ordering::Relaxed);
                (idle.io, idle.uses + 1)
            }
            None => {
                if self.slot.is_some() {
                    self.shared.clear_slot(&key);
                }
                let opened = match self.connect_timeout {
                    Some(t) => match tokio::time::timeout(t, self.open()).await {
                        Ok(r) => r,
                        Err(_) => {
                            return Err(Error::explain(
                                ErrorType::ConnectTimedout,
                                format!("connecting to {} took over {t:?}", self.target.authority),
                            ))
                        }
                    },
                    None => self.open().await,
                };
                let io = opened.map_err(|e| {
                    let kind = match e.kind() {
                        io::ErrorKind::ConnectionRefused => ErrorType::ConnectRefused,
                        _ => ErrorType::ConnectError,
                    };
                    Error::because(kind, format!("connecting to {}", self.target.authority), e)
                })?;
                self.shared.stats.opened.fetch_add(1, Ordering::Relaxed);
                (io, 1)
            }
        };
        let _ = self.got.set(uses);
        let link = self.me.upgrade().expect("a link connects only while held");
        let conn = Conn {
            io: Some(io),
            link,
            key,
            uses,
            checked: uses == 1,
        };
        Ok(L4Stream::from(VirtualSocketStream::new(Box::new(conn))))
    }
}

/// Pingora's handle on one destination connection for one try (see the module doc).
pub struct Conn {
    /// `None` once handed back to the pool or shut down.
    io: Option<Io>,
    link: Arc<Link>,
    key: PoolKey,
    uses: u32,
    /// The first write of a reused connection checked that the destination had not ended it.
    checked: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("target", &self.key.authority)
            .field("uses", &self.uses)
            .field("open", &self.io.is_some())
            .finish()
    }
}

impl Conn {
    /// Pingora's quiet-check before pooling, on a complete try: the connection goes to our pool.
    fn hand_back(&mut self) {
        if let Some(io) = self.io.take() {
            let idle = Idle {
                io,
                uses: self.uses,
                expires: Instant::now() + self.link.idle_timeout,
            };
            self.link.shared.put(self.key, idle);
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.link.complete.load(Ordering::Acquire) {
            this.hand_back();
        }
        match this.io.as_mut() {
            Some(io) => io.pinned().poll_read(cx, buf),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(io) = this.io.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        if !this.checked {
            this.checked = true;
            // The destination closed this kept-alive connection before our request: nothing was delivered
            // (`retry::Failure::NotDelivered`), as a TCP peer's reset would say.
            if io.peer_ended() {
                return Poll::Ready(Err(mesh::hbone::connection_reset()));
            }
        }
        io.pinned().poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io.as_mut() {
            Some(io) => io.pinned().poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io.as_mut() {
            Some(io) => io.pinned().poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl VirtualSocket for Conn {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> io::Result<()> {
        // TCP connections are opened with NODELAY; HBONE streams have no socket of their own.
        Ok(())
    }
}

#[cfg(test)]
mod tests;
