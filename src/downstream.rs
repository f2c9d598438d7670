//! HBONE in: each accepted CONNECT stream becomes one Pingora connection.
//!
//! [`Inbound`] is the [`ConnectHandler`] of the waypoint's port 15008. It refuses (400) a CONNECT whose
//! `:authority` is not a service VIP:port of this waypoint (no open relay), answers 200 otherwise, and hands the
//! stream's bytes (plaintext HTTP/1.1 or h2c) to Pingora's HTTP proxy. The caller's SPIFFE identity (from the
//! verified peer certificate) and the original destination ride along as [`ConnInfo`] in the stream's proxy
//! digest, so every L7 stage can read them with [`conn_info`]; `session.client_addr()` reports the outer peer
//! and `session.server_addr()` the destination.

use std::any::Any;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::StatusCode;
use mesh::config::Live;
use mesh::hbone::{ConnectHandler, H2Stream, InboundConnect, Respond};
use mesh::identity::Identity;
use pingora::apps::ServerApp;
use pingora::http::ResponseHeader;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{GetProxyDigest, GetSocketDigest, SocketDigest};
use pingora::proxy::{HttpProxy, Session};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tracing::debug;

use crate::proxy::WaypointProxy;
use crate::snapshot::Snapshot;

/// What the L7 stages know about the connection a request arrived on.
#[derive(Debug)]
pub struct ConnInfo {
    /// The caller, from its verified certificate.
    pub peer_identity: Identity,
    /// The CONNECT `:authority`: the service VIP:port the caller dialled.
    pub destination: SocketAddr,
    /// The caller's address: the CONNECT's `forwarded: for=` (set by the caller's node proxy, which holds the
    /// caller's certificate), else the outer TCP peer. `source.ip` of authorization, `useSourceIp`.
    pub peer_addr: SocketAddr,
    /// `peer_identity` as Istio writes principals (`<td>/ns/<ns>/sa/<sa>`), built once per stream for
    /// authorization.
    pub principal: String,
    /// The caller's telemetry labels, interned on the connection's first request.
    pub telemetry_source: std::sync::OnceLock<crate::telemetry::Source>,
    /// The `x-forwarded-client-cert` value naming the caller, built on the connection's first request
    /// ([`ConnInfo::xfcc`]).
    pub xfcc: std::sync::OnceLock<http::HeaderValue>,
}

impl ConnInfo {
    /// The `x-forwarded-client-cert` value for this connection's requests forwarded by `by`
    /// ([`crate::proxy::xfcc`]): formatted once per connection (`by` is the proxy's own, fixed identity), then
    /// a reference-counted copy per request.
    pub fn xfcc(&self, by: &Identity) -> http::HeaderValue {
        self.xfcc
            .get_or_init(|| {
                let value = crate::proxy::xfcc(by, &self.peer_identity);
                http::HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
                    .expect("identities are valid header values")
            })
            .clone()
    }
}

/// The connection info of a Pingora session that arrived over HBONE.
pub fn conn_info(session: &Session) -> Option<Arc<ConnInfo>> {
    let user_data = session
        .digest()?
        .proxy_digest
        .as_ref()?
        .user_data
        .as_ref()?;
    (user_data.as_ref() as &dyn Any)
        .downcast_ref::<Arc<ConnInfo>>()
        .cloned()
}

/// The waypoint's HBONE handler.
pub struct Inbound {
    pub app: Arc<HttpProxy<WaypointProxy>>,
    pub live: Arc<Live<Snapshot>>,
    pub shutdown: watch::Receiver<bool>,
}

#[async_trait::async_trait]
impl ConnectHandler for Inbound {
    async fn handle(self: Arc<Self>, req: InboundConnect, respond: Respond) {
        if self.live.load().service(req.authority).is_none() {
            debug!(authority = %req.authority, peer = %req.peer_identity, "CONNECT refused: not served here");
            respond.refuse(StatusCode::BAD_REQUEST);
            return;
        }
        let stream = match respond.accept() {
            Ok(s) => s,
            Err(e) => {
                debug!("CONNECT accept failed: {e}");
                return;
            }
        };
        let principal = format!(
            "{}/ns/{}/sa/{}",
            req.peer_identity.trust_domain,
            req.peer_identity.namespace,
            req.peer_identity.service_account
        );
        let info = Arc::new(ConnInfo {
            principal,
            telemetry_source: std::sync::OnceLock::new(),
            xfcc: std::sync::OnceLock::new(),
            peer_identity: req.peer_identity,
            destination: req.authority,
            peer_addr: forwarded_for(&req.headers).unwrap_or(req.peer_addr),
        });
        let stream = into_pingora_stream(stream, info);
        self.app.process_new(stream, &self.shutdown).await;
    }
}

/// The address of `forwarded: for="<ip:port>"` (RFC 7239; the first element, quotes and brackets allowed).
fn forwarded_for(headers: &http::HeaderMap) -> Option<SocketAddr> {
    let value = headers.get(http::header::FORWARDED)?.to_str().ok()?;
    let first = value.split(',').next()?;
    let node = first.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.eq_ignore_ascii_case("for").then_some(v.trim_matches('"'))
    })?;
    node.parse()
        .ok()
        .or_else(|| node.parse().ok().map(|ip| SocketAddr::new(ip, 0)))
}

/// Wraps a CONNECT stream as a Pingora stream carrying `info` and preset socket addresses.
pub fn into_pingora_stream(stream: H2Stream, info: Arc<ConnInfo>) -> pingora::protocols::Stream {
    let (peer, dst) = (info.peer_addr, info.destination);
    let mut l4 = L4Stream::from(VirtualSocketStream::new(Box::new(Tunnel(stream))));
    let resp = ResponseHeader::build(200, Some(0)).expect("static status");
    let user_data: Box<dyn Any + Send + Sync> = Box::new(info);
    l4.set_proxy_digest(ProxyDigest::new(Box::new(resp), Some(user_data)));
    let digest = SocketDigest::from_raw_fd(-1);
    let _ = digest.peer_addr.set(Some(peer.into()));
    let _ = digest.local_addr.set(Some(dst.into()));
    let _ = digest.original_dst.set(Some(dst.into()));
    l4.set_socket_digest(digest);
    Box::new(l4)
}

/// An [`H2Stream`] as a Pingora virtual socket. The TLS methods stay at their defaults on purpose: reporting
/// an SSL digest would disable h2c detection on the inner bytes.
#[derive(Debug)]
struct Tunnel(H2Stream);

impl VirtualSocket for Tunnel {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> std::io::Result<()> {
        Ok(())
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
