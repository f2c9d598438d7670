//! HBONE: HTTP/2 CONNECT inside mutual TLS, as a real Istio ztunnel speaks it (see `shared/notes/hbone.md`).
//!
//! - [`H2Stream`]: one CONNECT stream's payload as `AsyncRead + AsyncWrite`.
//! - [`serve`]: the inbound side (port 15008): TLS accept, h2 server, each CONNECT handed to a
//!   [`ConnectHandler`] with the caller's verified identity and the `:authority`.
//! - [`Pool`]: the outbound side: outer mTLS h2 connections pooled per (HBONE address, expected server
//!   identities, source identity), many CONNECT streams on each, bounded by our own limit and the peer's
//!   `SETTINGS_MAX_CONCURRENT_STREAMS`; GOAWAY and broken connections are dropped from the pool and redialled.

mod pool;
mod server;
mod stream;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use tokio::sync::watch;

pub use pool::{Dial, Pool, PoolOptions, PoolStats};
pub use server::{serve, ConnectHandler, InboundConnect, Respond, ServerOptions};
pub use stream::{connection_reset, H2Stream};

/// The HBONE port.
pub const HBONE_PORT: u16 = 15008;

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("tls handshake with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("h2 with {addr}: {source}")]
    H2 { addr: SocketAddr, source: h2::Error },
    #[error("CONNECT {authority} via {addr} answered {status}")]
    Refused {
        addr: SocketAddr,
        authority: SocketAddr,
        status: StatusCode,
    },
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// Per-stream send buffer of both sides: how much DATA one stream may queue in h2 ahead of the socket.
const MAX_SEND_BUFFER: usize = 1 << 20;
/// Both sides PING an idle-looking peer this often, and give up on it after `KEEPALIVE_TIMEOUT` without PONG.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Completes when the peer fails to answer a PING in time. Never completes otherwise (also not when the
/// connection ends: its own future reports that).
async fn keepalive(ping_pong: Option<h2::PingPong>) {
    let Some(mut ping_pong) = ping_pong else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(KEEPALIVE_INTERVAL).await;
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return,
        }
    }
}

/// Completes once `shutdown` turns true; never if its sender is dropped without doing so.
async fn shutdown_signal(mut shutdown: watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}
