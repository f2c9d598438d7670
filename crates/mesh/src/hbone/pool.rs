//! The outbound side of HBONE: outer mTLS h2 connections pooled per (HBONE address, expected server
//! identities, source identity), many CONNECT streams on each.
//!
//! A connection takes new streams while it has fewer live ones than `min(our limit, the peer's
//! SETTINGS_MAX_CONCURRENT_STREAMS)`; when every connection of a key is full, one new connection is dialled
//! (concurrent callers share that dial). Each connection has a driver task that polls it, sends keepalive
//! PINGs, closes it once idle for `idle_timeout`, and drops it from the pool when it ends. A connection that
//! fails to open a stream (GOAWAY raced, connection gone) is dropped and the CONNECT retried once.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use http::{HeaderMap, Method, Request, StatusCode};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{keepalive, H2Stream, HboneError, MAX_SEND_BUFFER};
use crate::identity::{CertStore, Identity};

/// One outbound CONNECT.
pub struct Dial<'a> {
    /// Where the outer connection goes (`ip:15008`).
    pub hbone_addr: SocketAddr,
    /// The CONNECT `:authority`.
    pub authority: SocketAddr,
    /// Whose certificate we present.
    pub source: &'a CertStore,
    /// The server must present one of these.
    pub expected: &'a [Identity],
    /// Extra CONNECT headers (`forwarded`, `baggage`, `traceparent`).
    pub headers: HeaderMap,
}

/// Outbound pool tuning.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// At most this many concurrent CONNECT streams per outer connection (and never more than the peer allows).
    pub max_streams_per_connection: u32,
    /// Outer connections idle this long are closed.
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            max_streams_per_connection: 100,
            idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Counters of a [`Pool`], for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Outer (TLS + h2) connections ever opened.
    pub connections_opened: u64,
    /// CONNECT streams ever opened.
    pub streams_opened: u64,
    /// Outer connections in the pool now.
    pub connections_live: u64,
}

/// Windows and frame size of outer connections we open (what a ztunnel uses).
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
const MAX_FRAME_SIZE: u32 = 1 << 20;

/// Pooled outbound HBONE. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("options", &self.inner.options)
            .field("stats", &self.stats())
            .finish()
    }
}

struct Inner {
    options: PoolOptions,
    /// Never held across an await.
    state: Mutex<HashMap<Key, Entry>>,
    next_id: AtomicU64,
    connections_opened: AtomicU64,
    streams_opened: AtomicU64,
    connections_live: AtomicU64,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    addr: SocketAddr,
    /// Sorted, de-duplicated.
    expected: Vec<Identity>,
    source: Identity,
}

type DialResult = Result<Arc<Outer>, Arc<HboneError>>;

#[derive(Default)]
struct Entry {
    conns: Vec<Arc<Outer>>,
    /// The dial in progress for this key, shared by every caller that found the pool full.
    dialing: Option<Shared<BoxFuture<'static, DialResult>>>,
}

/// One outer connection as the pool sees it (its driver task owns the h2 `Connection`).
struct Outer {
    id: u64,
    send: h2::client::SendRequest<Bytes>,
    slots: Arc<Slots>,
}

/// Live-stream accounting of one outer connection; shared with its streams and its driver.
struct Slots {
    live: AtomicUsize,
    /// When `live` last dropped to zero, as milliseconds since `epoch`.
    idle_since_ms: AtomicU64,
    epoch: Instant,
}

impl Slots {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// One stream's hold on a slot of its outer connection; released when the [`H2Stream`] holding it is dropped.
pub(crate) struct StreamSlot(Arc<Slots>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        // Stamp first, so the reaper never sees `live == 0` with a stale stamp.
        self.0
            .idle_since_ms
            .store(self.0.now_ms(), Ordering::SeqCst);
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why one attempt to open a stream failed: `retry` when the CONNECT surely never reached the application
/// (the connection was going away, or the stream was refused before processing).
struct Failed {
    error: HboneError,
    retry: bool,
}

impl Pool {
    pub fn new(options: PoolOptions) -> Self {
        Pool {
            inner: Arc::new(Inner {
                options,
                state: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                connections_opened: AtomicU64::new(0),
                streams_opened: AtomicU64::new(0),
                connections_live: AtomicU64::new(0),
            }),
        }
    }

    /// Opens a CONNECT stream, reusing an outer connection with spare stream capacity when one exists.
    /// A non-200 answer is [`HboneError::Refused`].
    pub async fn connect(&self, dial: Dial<'_>) -> Result<H2Stream, HboneError> {
        let mut expected = dial.expected.to_vec();
        expected.sort();
        expected.dedup();
        let key = Key {
            addr: dial.hbone_addr,
            expected,
            source: dial.source.identity(),
        };
        let mut retried = false;
        loop {
            let (outer, slot) = self.checkout(&key, dial.source).await?;
            match self.open_stream(&outer, slot, &dial).await {
                Ok(stream) => return Ok(stream),
                Err(failed) if failed.retry => {
                    tracing::debug!(addr = %key.addr, error = %failed.error, retried, "hbone connection unusable; dropping it");
                    self.inner.remove(&key, outer.id);
                    if retried {
                        return Err(failed.error);
                    }
                    retried = true;
                }
                Err(failed) => return Err(failed.error),
            }
        }
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            connections_opened: self.inner.connections_opened.load(Ordering::Relaxed),
            streams_opened: self.inner.streams_opened.load(Ordering::Relaxed),
            connections_live: self.inner.connections_live.load(Ordering::Relaxed),
        }
    }

    /// A connection with a free stream slot, dialling one when all are full.
    async fn checkout(
        &self,
        key: &Key,
        source: &CertStore,
    ) -> Result<(Arc<Outer>, StreamSlot), HboneError> {
        loop {
            let dialing = {
                let mut state = self.inner.state.lock().unwrap();
                let found = state.get(key).and_then(|entry| {
                    entry
                        .conns
                        .iter()
                        .find_map(|c| self.inner.try_reserve(c).map(|slot| (c.clone(), slot)))
                });
                if let Some(found) = found {
                    return Ok(found);
                }
                state
                    .entry(key.clone())
                    .or_default()
                    .dialing
                    .get_or_insert_with(|| {
                        let task =
                            tokio::spawn(dial(self.inner.clone(), key.clone(), source.clone()));
                        let addr = key.addr;
                        async move {
                            task.await.unwrap_or_else(|e| {
                                Err(Arc::new(HboneError::Connect {
                                    addr,
                                    source: io::Error::other(e.to_string()),
                                }))
                            })
                        }
                        .boxed()
                        .shared()
                    })
                    .clone()
            };
            let outer = dialing.await.map_err(|e| clone_error(&e))?;
            let state = self.inner.state.lock().unwrap();
            let pooled = state
                .get(key)
                .is_some_and(|e| e.conns.iter().any(|c| c.id == outer.id));
            if let Some(slot) = pooled.then(|| self.inner.try_reserve(&outer)).flatten() {
                return Ok((outer, slot));
            }
            // Others filled the new connection first: look again (and dial again if needed).
        }
    }

    async fn open_stream(
        &self,
        outer: &Outer,
        slot: StreamSlot,
        dial: &Dial<'_>,
    ) -> Result<H2Stream, Failed> {
        let addr = dial.hbone_addr;
        let h2_failed = |source: h2::Error, retry: bool| Failed {
            error: HboneError::H2 { addr, source },
            retry,
        };
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(dial.authority.to_string())
            .body(())
            .expect("ip:port is a valid authority");
        *req.headers_mut() = dial.headers.clone();

        let mut send = outer
            .send
            .clone()
            .ready()
            .await
            .map_err(|e| h2_failed(e, true))?;
        let (response, mut stream) = send
            .send_request(req, false)
            .map_err(|e| h2_failed(e, true))?;
        self.inner.streams_opened.fetch_add(1, Ordering::Relaxed);
        let response = response.await.map_err(|e| {
            let retry =
                e.reason() == Some(h2::Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote());
            h2_failed(e, retry)
        })?;
        if response.status() != StatusCode::OK {
            let _ = stream.send_data(Bytes::new(), true);
            return Err(Failed {
                error: HboneError::Refused {
                    addr,
                    authority: dial.authority,
                    status: response.status(),
                },
                retry: false,
            });
        }
        Ok(H2Stream::pooled(stream, response.into_body(), slot))
    }
}

impl Inner {
    /// Takes a stream slot on `outer` if it has one free. Call with the state lock held, so the idle reaper
    /// (which checks `live` under the same lock) never closes a connection that was just picked.
    fn try_reserve(&self, outer: &Arc<Outer>) -> Option<StreamSlot> {
        let limit = (self.options.max_streams_per_connection as usize)
            .min(outer.send.current_max_send_streams());
        let live = outer.slots.live.load(Ordering::SeqCst);
        if live >= limit {
            return None;
        }
        outer.slots.live.fetch_add(1, Ordering::SeqCst);
        Some(StreamSlot(outer.slots.clone()))
    }

    /// Drops connection `id` from the pool (no-op if already gone). Its streams keep running; the connection
    /// closes once they are done.
    fn remove(&self, key: &Key, id: u64) {
        let mut state = self.state.lock().unwrap();
        Self::remove_locked(&mut state, &self.connections_live, key, id);
    }

    fn remove_locked(state: &mut HashMap<Key, Entry>, live: &AtomicU64, key: &Key, id: u64) {
        let Some(entry) = state.get_mut(key) else {
            return;
        };
        let before = entry.conns.len();
        entry.conns.retain(|c| c.id != id);
        if entry.conns.len() != before {
            live.fetch_sub(1, Ordering::Relaxed);
        }
        if entry.conns.is_empty() && entry.dialing.is_none() {
            state.remove(key);
        }
    }

    /// Removes `id` if it has had no stream for `idle_timeout`; otherwise says when to look again.
    fn reap_if_idle(&self, key: &Key, id: u64, slots: &Slots) -> Result<(), Instant> {
        let timeout = self.options.idle_timeout;
        let mut state = self.state.lock().unwrap();
        if slots.live.load(Ordering::SeqCst) != 0 {
            return Err(Instant::now() + timeout);
        }
        let idle_for = Duration::from_millis(
            slots
                .now_ms()
                .saturating_sub(slots.idle_since_ms.load(Ordering::SeqCst)),
        );
        if idle_for < timeout {
            return Err(Instant::now() + (timeout - idle_for));
        }
        Self::remove_locked(&mut state, &self.connections_live, key, id);
        Ok(())
    }
}

/// Dials one outer connection for `key`, adds it to the pool and starts its driver. Runs as its own task so
/// it completes (and the connection is pooled) even if every caller waiting on it gave up.
async fn dial(inner: Arc<Inner>, key: Key, source: CertStore) -> DialResult {
    let result = establish(&inner.options, key.addr, &source, &key.expected).await;
    let mut state = inner.state.lock().unwrap();
    let entry = state.entry(key.clone()).or_default();
    entry.dialing = None;
    match result {
        Ok((send, conn)) => {
            let now = Instant::now();
            let slots = Arc::new(Slots {
                live: AtomicUsize::new(0),
                idle_since_ms: AtomicU64::new(0),
                epoch: now,
            });
            let outer = Arc::new(Outer {
                id: inner.next_id.fetch_add(1, Ordering::Relaxed),
                send,
                slots: slots.clone(),
            });
            entry.conns.push(outer.clone());
            inner.connections_opened.fetch_add(1, Ordering::Relaxed);
            inner.connections_live.fetch_add(1, Ordering::Relaxed);
            drop(state);
            tracing::debug!(addr = %key.addr, id = outer.id, "hbone outer connection opened");
            tokio::spawn(drive(Arc::downgrade(&inner), key, outer.id, slots, conn));
            Ok(outer)
        }
        Err(e) => {
            if entry.conns.is_empty() {
                state.remove(&key);
            }
            Err(Arc::new(e))
        }
    }
}

type Connection = h2::client::Connection<tokio_rustls::client::TlsStream<TcpStream>, Bytes>;

async fn establish(
    options: &PoolOptions,
    addr: SocketAddr,
    source: &CertStore,
    expected: &[Identity],
) -> Result<(h2::client::SendRequest<Bytes>, Connection), HboneError> {
    let tcp = tokio::time::timeout(options.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| HboneError::Timeout("hbone tcp connect"))?
        .map_err(|source| HboneError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(source.client_config(expected));
    let tls = tokio::time::timeout(
        options.connect_timeout,
        connector.connect(crate::identity::dummy_server_name(), tcp),
    )
    .await
    .map_err(|_| HboneError::Timeout("hbone tls handshake"))?
    .map_err(|source| HboneError::Tls { addr, source })?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(HboneError::Tls {
            addr,
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                "server did not negotiate ALPN h2",
            ),
        });
    }
    h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        // Until the peer's SETTINGS arrive, assume it allows what we would use anyway.
        .initial_max_send_streams(options.max_streams_per_connection as usize)
        .enable_push(false)
        .handshake(tls)
        .await
        .map_err(|source| HboneError::H2 { addr, source })
}

/// Polls one outer connection until it ends: keepalive PINGs, idle reaping, then removal from the pool.
async fn drive(pool: Weak<Inner>, key: Key, id: u64, slots: Arc<Slots>, mut conn: Connection) {
    let idle_timeout = match pool.upgrade() {
        Some(inner) => inner.options.idle_timeout,
        None => return,
    };
    let alive = keepalive(conn.ping_pong());
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(alive, idle);
    let mut reaped = false;
    loop {
        tokio::select! {
            result = &mut conn => {
                if let Err(e) = result {
                    tracing::debug!(addr = %key.addr, id, error = %e, "hbone outer connection failed");
                }
                break;
            }
            _ = &mut alive => {
                tracing::debug!(addr = %key.addr, id, "hbone peer stopped answering PING; closing");
                break;
            }
            _ = &mut idle, if !reaped => {
                let Some(inner) = pool.upgrade() else {
                    reaped = true;
                    continue;
                };
                match inner.reap_if_idle(&key, id, &slots) {
                    // The pool's handle is gone and no stream is left: h2 sends GOAWAY and the connection ends.
                    Ok(()) => {
                        tracing::debug!(addr = %key.addr, id, "hbone outer connection idle; closing");
                        reaped = true;
                    }
                    Err(next) => idle.as_mut().reset(next),
                }
            }
        }
    }
    if let Some(inner) = pool.upgrade() {
        inner.remove(&key, id);
    }
}

/// A copy of a dial error for each caller that shared the dial (the sources are not `Clone`).
fn clone_error(e: &HboneError) -> HboneError {
    let copy_io = |e: &io::Error| io::Error::new(e.kind(), e.to_string());
    match e {
        HboneError::Connect { addr, source } => HboneError::Connect {
            addr: *addr,
            source: copy_io(source),
        },
        HboneError::Tls { addr, source } => HboneError::Tls {
            addr: *addr,
            source: copy_io(source),
        },
        HboneError::H2 { addr, source } => match source.reason() {
            Some(reason) => HboneError::H2 {
                addr: *addr,
                source: reason.into(),
            },
            // h2 errors are built only from a reason; keep the message on an I/O error instead.
            None => HboneError::Connect {
                addr: *addr,
                source: io::Error::other(format!("h2: {source}")),
            },
        },
        HboneError::Refused {
            addr,
            authority,
            status,
        } => HboneError::Refused {
            addr: *addr,
            authority: *authority,
            status: *status,
        },
        HboneError::Timeout(what) => HboneError::Timeout(what),
    }
}
