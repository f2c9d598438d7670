//! The inbound side of HBONE (port 15008): TLS accept with the workload's current certificates, an h2 server
//! per connection, and each well-formed CONNECT handed to a [`ConnectHandler`] on its own task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{keepalive, shutdown_signal, H2Stream, HboneError};
use crate::identity::{peer_identity, CertStore, Identity};

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
    /// `None` once answered.
    pending: Option<(h2::server::SendResponse<Bytes>, h2::RecvStream)>,
    peer_addr: SocketAddr,
}

impl Respond {
    /// Sends `200` and returns the stream's payload.
    pub fn accept(mut self) -> Result<H2Stream, HboneError> {
        let (mut send, recv) = self.pending.take().expect("answered once");
        let send = send
            .send_response(status_only(StatusCode::OK), false)
            .map_err(|source| HboneError::H2 {
                addr: self.peer_addr,
                source,
            })?;
        Ok(H2Stream::new(send, recv))
    }
    /// Sends `status` (400 malformed/wrong destination, 401 denied, 503 unreachable) and ends the stream.
    pub fn refuse(mut self, status: StatusCode) {
        if let Some((mut send, _recv)) = self.pending.take() {
            reply(&mut send, status);
        }
    }
}

impl Drop for Respond {
    fn drop(&mut self) {
        if let Some((mut send, _recv)) = self.pending.take() {
            reply(&mut send, StatusCode::SERVICE_UNAVAILABLE);
        }
    }
}

impl std::fmt::Debug for Respond {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Respond")
            .field("peer_addr", &self.peer_addr)
            .field("answered", &self.pending.is_none())
            .finish()
    }
}

fn status_only(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}

/// A final answer without a body. Fails only if the stream is already gone, which leaves nothing to do.
fn reply(send: &mut h2::server::SendResponse<Bytes>, status: StatusCode) {
    let _ = send.send_response(status_only(status), true);
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

/// Serves HBONE on `listener` until `shutdown` turns true. Non-CONNECT requests get 405; an `:authority` that is
/// not `ip:port` gets 400; a TLS handshake failure closes the connection. Each CONNECT runs `handler` on its own
/// task.
///
/// Drain, in this order: connections already queued in the kernel are accepted, the listener is closed (so with
/// `SO_REUSEPORT` the kernel sends new connections to another instance on the address), and only then every
/// connection gets an HTTP/2 graceful GOAWAY; a client redialling on GOAWAY thus never meets the closing
/// listener. In-flight streams run to completion. Returns once every connection has drained.
pub async fn serve<H: ConnectHandler>(
    listener: TcpListener,
    certs: CertStore,
    handler: Arc<H>,
    options: ServerOptions,
    shutdown: watch::Receiver<bool>,
) {
    let options = Arc::new(options);
    let mut connections = JoinSet::new();
    // Connections hear of the drain only after the listener is closed (see above).
    let (goaway, goaway_rx) = watch::channel(false);
    let spawn = |connections: &mut JoinSet<()>, tcp: TcpStream, peer_addr: SocketAddr| {
        connections.spawn(serve_connection(
            tcp,
            peer_addr,
            certs.clone(),
            handler.clone(),
            options.clone(),
            goaway_rx.clone(),
        ));
    };
    let stop = shutdown_signal(shutdown);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer_addr)) => spawn(&mut connections, tcp, peer_addr),
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "hbone accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    for (tcp, peer_addr) in accept_queued(listener) {
        spawn(&mut connections, tcp, peer_addr);
    }
    goaway.send_replace(true);
    tracing::debug!(
        connections = connections.len(),
        "hbone listener closed; draining"
    );
    while connections.join_next().await.is_some() {}
}

/// Accepts what the kernel already queued on `listener` (a handshake completed but not yet accepted would be
/// reset when the listener closes), then closes it. At most a listen backlog's worth.
fn accept_queued(listener: TcpListener) -> Vec<(TcpStream, SocketAddr)> {
    let Ok(listener) = listener.into_std() else {
        return vec![];
    };
    let mut queued = vec![];
    // `into_std` keeps the socket non-blocking: `accept` says `WouldBlock` once the queue is empty.
    while queued.len() < ACCEPT_QUEUED_MAX {
        let Ok((tcp, peer_addr)) = listener.accept() else {
            break;
        };
        match tcp
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(tcp))
        {
            Ok(tcp) => queued.push((tcp, peer_addr)),
            Err(e) => tracing::debug!(%peer_addr, error = %e, "hbone queued connection lost"),
        }
    }
    queued
}

/// Bound of [`accept_queued`] (a listen backlog is at most this on Linux by default).
const ACCEPT_QUEUED_MAX: usize = 4096;

async fn serve_connection<H: ConnectHandler>(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    certs: CertStore,
    handler: Arc<H>,
    options: Arc<ServerOptions>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let local_addr = match tcp.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            tracing::debug!(%peer_addr, error = %e, "hbone connection gone before accept");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config());
    let tls = match tokio::time::timeout(options.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer_addr, error = %e, "hbone tls handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer_addr, "hbone tls handshake timed out");
            return;
        }
    };
    let session = tls.get_ref().1;
    if session.alpn_protocol() != Some(b"h2") {
        tracing::debug!(%peer_addr, "hbone client did not negotiate ALPN h2");
        return;
    }
    let Some(peer_id) = session.peer_certificates().and_then(peer_identity) else {
        tracing::debug!(%peer_addr, "hbone client certificate has no SPIFFE identity");
        return;
    };

    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(options.max_concurrent_streams)
        .initial_window_size(options.stream_window)
        .initial_connection_window_size(options.connection_window)
        .max_frame_size(options.max_frame_size)
        .max_send_buffer_size(super::MAX_SEND_BUFFER)
        .handshake::<_, Bytes>(tls);
    let mut conn = match tokio::time::timeout(options.handshake_timeout, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(%peer_addr, error = %e, "hbone h2 handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer_addr, "hbone h2 handshake timed out");
            return;
        }
    };

    let alive = keepalive(conn.ping_pong());
    let stop = shutdown_signal(shutdown);
    tokio::pin!(alive, stop);
    let mut draining = false;
    loop {
        tokio::select! {
            _ = &mut stop, if !draining => {
                conn.graceful_shutdown();
                draining = true;
            }
            _ = &mut alive => {
                tracing::debug!(%peer_addr, "hbone peer stopped answering PING; closing");
                break;
            }
            next = conn.accept() => match next {
                Some(Ok((req, send))) => {
                    on_request(req, send, &handler, &peer_id, peer_addr, local_addr);
                }
                Some(Err(e)) => {
                    tracing::debug!(%peer_addr, error = %e, "hbone connection error");
                    break;
                }
                None => break,
            }
        }
    }
}

fn on_request<H: ConnectHandler>(
    req: Request<h2::RecvStream>,
    mut send: h2::server::SendResponse<Bytes>,
    handler: &Arc<H>,
    peer_identity: &Identity,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
) {
    if req.method() != Method::CONNECT {
        reply(&mut send, StatusCode::METHOD_NOT_ALLOWED);
        return;
    }
    let Some(authority) = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        reply(&mut send, StatusCode::BAD_REQUEST);
        return;
    };
    let (parts, recv) = req.into_parts();
    let connect = InboundConnect {
        authority,
        peer_identity: peer_identity.clone(),
        peer_addr,
        local_addr,
        headers: parts.headers,
    };
    let respond = Respond {
        pending: Some((send, recv)),
        peer_addr,
    };
    tokio::spawn(handler.clone().handle(connect, respond));
}
