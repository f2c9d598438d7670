//! HBONE: HTTP/2 CONNECT inside mutual TLS, as a real Istio ztunnel speaks it (see `shared/notes/hbone.md`).
//!
//! - [`H2Stream`]: one CONNECT stream's payload as `AsyncRead + AsyncWrite`.
//! - [`serve`]: the inbound side (port 15008): TLS accept, h2 server, each CONNECT handed to a
//!   [`ConnectHandler`] with the caller's verified identity and the `:authority`.
//! - [`Pool`]: the outbound side: outer mTLS h2 connections pooled per (HBONE address, expected server
//!   identities, source identity), many CONNECT streams on each, bounded by our own limit and the peer's
//!   `SETTINGS_MAX_CONCURRENT_STREAMS`; GOAWAY and broken connections are dropped from the pool and redialled.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::identity::{CertStore, Identity};

/// The HBONE port.
pub const HBONE_PORT: u16 = 15008;

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("tls handshake with {addr}: {source}")]
    Tls { addr: SocketAddr, source: std::io::Error },
    #[error("h2 with {addr}: {source}")]
    H2 { addr: SocketAddr, source: h2::Error },
    #[error("CONNECT {authority} via {addr} answered {status}")]
    Refused { addr: SocketAddr, authority: SocketAddr, status: StatusCode },
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// One CONNECT stream's payload as a byte stream.
///
/// Reads return the peer's DATA (releasing flow-control capacity as they go); EOF on END_STREAM. A stream reset
/// or a connection GOAWAY/error surfaces as `io::Error::from_raw_os_error(ECONNRESET)` so callers (Pingora's
/// retry logic among them) see a connection reset. `poll_shutdown` sends END_STREAM; dropping an unfinished
/// stream also sends END_STREAM (never RST_STREAM(CANCEL), which would discard queued DATA).
pub struct H2Stream {
    // implementation detail: h2::SendStream<Bytes>, h2::RecvStream, pending read Bytes, state
}

impl H2Stream {
    pub fn new(send: h2::SendStream<Bytes>, recv: h2::RecvStream) -> Self {
        todo!("{:?}{:?}", send.capacity(), recv.is_end_stream())
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        todo!("{cx:?}{}", buf.remaining())
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        todo!("{cx:?}{}", buf.len())
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        todo!("{cx:?}")
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        todo!("{cx:?}")
    }
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("H2Stream")
    }
}

/// A CONNECT request received on the inbound side, after TLS verified the caller.
#[derive(Clone, Debug)]
pub struct InboundConnect {
    /// `:authority` parsed as `ip:port` (anything else was answered 400 before the handler saw it).
    pub authority: SocketAddr,
    /// From the verified peer certificate.
    pub peer_identity: Identity,
    /// The TCP peer of the outer connection.
    pub peer_addr: SocketAddr,
    /// The local address the outer connection arrived on.
    pub local_addr: SocketAddr,
    /// The CONNECT request's headers (`forwarded`, `baggage`, `traceparent`, ...).
    pub headers: HeaderMap,
}

/// Answers one inbound CONNECT: exactly one of `accept` (200, then the stream) or `refuse`.
/// Dropping it unanswered refuses with 503.
pub struct Respond {
    // implementation detail: h2::server::SendResponse<Bytes>, h2::RecvStream
}

impl Respond {
    /// Sends `200` and returns the stream's payload.
    pub fn accept(self) -> Result<H2Stream, HboneError> {
        todo!()
    }
    /// Sends `status` (400 malformed/wrong destination, 401 denied, 503 unreachable) and ends the stream.
    pub fn refuse(self, status: StatusCode) {
        todo!("{status}")
    }
}

/// What the inbound server does with each well-formed CONNECT.
#[async_trait::async_trait]
pub trait ConnectHandler: Send + Sync + 'static {
    async fn handle(self: Arc<Self>, req: InboundConnect, respond: Respond);
}

/// Inbound server tuning; defaults are what a ztunnel advertises.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub max_concurrent_streams: u32,
    pub stream_window: u32,
    pub connection_window: u32,
    pub max_frame_size: u32,
    pub handshake_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_concurrent_streams: 200,
            stream_window: 4 << 20,
            connection_window: 16 << 20,
            max_frame_size: 1 << 20,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves HBONE on `listener` until `shutdown` turns true (then GOAWAY on every connection, in-flight streams
/// run to completion). Non-CONNECT requests get 405; an `:authority` that is not `ip:port` gets 400; a TLS
/// handshake failure closes the connection. Each CONNECT runs `handler` on its own task.
pub async fn serve<H: ConnectHandler>(
    listener: TcpListener,
    certs: CertStore,
    handler: Arc<H>,
    options: ServerOptions,
    shutdown: watch::Receiver<bool>,
) {
    todo!("{listener:?}{}{}{options:?}{shutdown:?}", certs.identity(), Arc::strong_count(&handler))
}

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

/// Pooled outbound HBONE. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Pool {
    // implementation detail
}

impl Pool {
    pub fn new(options: PoolOptions) -> Self {
        todo!("{options:?}")
    }
    /// Opens a CONNECT stream, reusing an outer connection with spare stream capacity when one exists.
    /// A non-200 answer is [`HboneError::Refused`].
    pub async fn connect(&self, dial: Dial<'_>) -> Result<H2Stream, HboneError> {
        todo!("{}", dial.hbone_addr)
    }
    pub fn stats(&self) -> PoolStats {
        todo!()
    }
}

#[allow(dead_code)]
fn _unused(_: Bytes) {}
