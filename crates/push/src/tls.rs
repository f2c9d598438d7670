//! Mutual TLS and identity on the push tier.
//!
//! - Server side ([`ControlPlane::serve_tls`](crate::ControlPlane::serve_tls)): the control plane's own SPIFFE
//!   certificate ([`CertStore::server_config`]: TLS 1.3, ALPN `h2`, a client certificate chained to the trust
//!   bundle and in the same trust domain required). Handshakes run on a listener of our own, so a slow or
//!   failed one never holds the others up; each established stream goes to tonic with the verified peer chain
//!   as its connect info, and [`authorize`] decides each `Subscribe` from the peer's identity alone.
//! - Client side ([`Dial`]): `http://` dials plaintext (tests, development); `https://` dials with the
//!   subscriber's own certificate ([`CertStore::client_config`]) and accepts only a server presenting the
//!   expected control-plane identity.
//!
//! The identity rules ([`authorize`]): a waypoint identity `spiffe://<td>/ns/<N>/sa/<S>` may subscribe only for
//! a Gateway in namespace `N` (namespace is the trust boundary, as in Istio; a per-namespace waypoint runs as
//! the service account named after its Gateway); a ztunnel subscription needs exactly the ztunnel identity.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use mesh::identity::{CertStore, Identity};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::select::Target;

/// A TLS handshake that takes longer than this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The control plane's identity as subscribers expect it by default: `spiffe://<td>/ns/istio-system/sa/waypoint-control-plane`.
pub fn default_control_plane_identity(trust_domain: &str) -> Identity {
    Identity::new(trust_domain, "istio-system", "waypoint-control-plane")
}

/// The identity a ztunnel subscription needs by default: `spiffe://<td>/ns/istio-system/sa/ztunnel`.
pub fn default_ztunnel_identity(trust_domain: &str) -> Identity {
    Identity::new(trust_domain, "istio-system", "ztunnel")
}

/// Who may subscribe, on a control plane serving mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// The only identity that may subscribe as a ztunnel.
    pub ztunnel: Identity,
}

/// Whether `peer` (a verified identity) may receive what `target` receives; the error says who asked for
/// what, for a `PermissionDenied` and the log.
pub fn authorize(access: &Access, peer: &Identity, target: &Target) -> Result<(), String> {
    match target {
        Target::Waypoint { namespace, .. } if peer.namespace == *namespace => Ok(()),
        Target::Waypoint { namespace, name } => Err(format!(
            "{peer} may not subscribe for Gateway {namespace}/{name}: a waypoint identity subscribes only for a \
             Gateway of its own namespace ({})",
            peer.namespace
        )),
        Target::Ztunnel if *peer == access.ztunnel => Ok(()),
        Target::Ztunnel => Err(format!(
            "{peer} may not subscribe as a ztunnel: that needs {}",
            access.ztunnel
        )),
    }
}

/// What tonic hands each request of a TLS connection (as a request extension): the verified peer.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    /// The SPIFFE identity of the verified client certificate.
    pub identity: Option<Identity>,
    pub addr: SocketAddr,
}

/// The verified peer of a request that came over [`serve_tls`](crate::ControlPlane::serve_tls) (`None`:
/// plaintext).
pub(crate) fn peer_of<T>(request: &tonic::Request<T>) -> Option<Peer> {
    request.extensions().get::<Peer>().cloned()
}

/// An established server-side TLS stream, with its peer as tonic's connect info.
pub(crate) struct TlsIo {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: Peer,
}

impl Connected for TlsIo {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts TCP connections on `listener` and completes each TLS handshake in a task of its own; established
/// streams go to the returned channel (what tonic's `serve_with_incoming` reads). `failed` runs once per
/// failed handshake. The loop ends when the receiver is dropped.
pub(crate) fn accept_loop(
    listener: tokio::net::TcpListener,
    certs: CertStore,
    failed: Arc<dyn Fn(String) + Send + Sync>,
) -> mpsc::Receiver<std::io::Result<TlsIo>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off a little instead of spinning.
                    tracing::warn!(error = %e, "push: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            // Per connection: a rotated certificate is used from the next handshake on.
            let acceptor = TlsAcceptor::from(certs.server_config());
            let (tx, failed) = (tx.clone(), failed.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let identity = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(mesh::identity::peer_identity);
                        let io = TlsIo {
                            stream,
                            peer: Peer {
                                identity,
                                addr: peer,
                            },
                        };
                        let _ = tx.send(Ok(io)).await;
                    }
                    Ok(Err(e)) => failed(format!("TLS handshake with {peer} failed: {e}")),
                    Err(_) => failed(format!("TLS handshake with {peer} timed out")),
                }
            });
        }
    });
    rx
}

/// Where a subscriber connects: the control plane's URL and, for `https://`, its own credentials.
#[derive(Clone, Debug)]
pub struct Dial {
    /// `http://host:port` (plaintext) or `https://host:port` (mutual TLS, needs [`Dial::tls`]).
    pub url: String,
    pub tls: Option<ClientTls>,
}

/// A subscriber's side of mutual TLS.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// The subscriber's own certificate (presented as the client certificate) and the trust bundle.
    pub certs: CertStore,
    /// The identity the control plane must present.
    pub control_plane: Identity,
}

impl Dial {
    /// `url` with `tls` (used only for `https://`).
    pub fn new(url: impl Into<String>, tls: Option<ClientTls>) -> Dial {
        Dial {
            url: url.into(),
            tls,
        }
    }
    /// Whether this dials with mutual TLS.
    pub fn is_tls(&self) -> bool {
        self.url.starts_with("https://")
    }
}

impl From<String> for Dial {
    fn from(url: String) -> Dial {
        Dial::new(url, None)
    }
}

impl From<&String> for Dial {
    fn from(url: &String) -> Dial {
        Dial::new(url.clone(), None)
    }
}

impl From<&str> for Dial {
    fn from(url: &str) -> Dial {
        Dial::new(url, None)
    }
}

/// Opens a channel to `dial`; errors are `Unavailable` (cannot connect or the handshake failed, e.g. the
/// server is not the expected identity) or `InvalidArgument` (a bad URL, `https://` without credentials).
pub(crate) async fn channel(dial: &Dial) -> Result<Channel, Status> {
    let url = &dial.url;
    // The handshake's own reason (e.g. the identity presented) sits at the bottom of the chain.
    let unavailable = |e: tonic::transport::Error| {
        Status::unavailable(format!("cannot connect to {url}: {}", ErrorChain(&e)))
    };
    if let Some(rest) = url.strip_prefix("https://") {
        let Some(tls) = dial.tls.clone() else {
            return Err(Status::invalid_argument(format!(
                "{url}: https:// needs the subscriber's certificate (--cert/--key/--ca)"
            )));
        };
        // The scheme tonic sees is http: TLS is ours, in the connector (tonic's own TLS is not built in).
        let endpoint = Endpoint::from_shared(format!("http://{rest}"))
            .map_err(|e| Status::invalid_argument(format!("{url}: {e}")))?
            .connect_timeout(Duration::from_secs(5));
        let connector = tower::service_fn(move |uri: http::Uri| connect_tls(uri, tls.clone()));
        return endpoint
            .connect_with_connector(connector)
            .await
            .map_err(unavailable);
    }
    if !url.starts_with("http://") {
        return Err(Status::invalid_argument(format!(
            "{url}: the control plane is http://host:port or https://host:port"
        )));
    }
    Endpoint::from_shared(url.clone())
        .map_err(|e| Status::invalid_argument(format!("{url}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(unavailable)
}

async fn connect_tls(
    uri: http::Uri,
    tls: ClientTls,
) -> std::io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>> {
    let host = uri
        .host()
        .ok_or_else(|| std::io::Error::other("no host in the control-plane URL"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    let config = tls
        .certs
        .client_config(std::slice::from_ref(&tls.control_plane));
    // SNI is off and the name is never checked: the server's SPIFFE identity is.
    let name = ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into());
    let stream = TlsConnector::from(config).connect(name, tcp).await?;
    Ok(hyper_util::rt::TokioIo::new(stream))
}

/// Displays an error with its sources, `a: b: c`.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_subscribe_only_for_what_they_are() {
        let td = "cluster.local";
        let access = Access {
            ztunnel: default_ztunnel_identity(td),
        };
        let wp = |ns: &str, name: &str| Target::Waypoint {
            namespace: ns.into(),
            name: name.into(),
        };
        let bookinfo = Identity::new(td, "bookinfo", "waypoint");
        let cases = [
            (&bookinfo, wp("bookinfo", "waypoint"), true),
            (&bookinfo, wp("bookinfo", "other-waypoint"), true),
            (&bookinfo, wp("default", "waypoint"), false),
            (&bookinfo, Target::Ztunnel, false),
            (&access.ztunnel, Target::Ztunnel, true),
            (&access.ztunnel, wp("default", "waypoint"), false),
        ];
        for (peer, target, ok) in cases {
            assert_eq!(
                authorize(&access, peer, &target).is_ok(),
                ok,
                "{peer} {target:?}"
            );
        }
        let e = authorize(&access, &bookinfo, &wp("default", "waypoint")).unwrap_err();
        assert!(
            e.contains("spiffe://cluster.local/ns/bookinfo/sa/waypoint")
                && e.contains("default/waypoint"),
            "{e}"
        );
        let other = Identity::new(td, "istio-system", "not-ztunnel");
        assert!(authorize(&access, &other, &Target::Ztunnel)
            .unwrap_err()
            .contains("ztunnel"));
    }
}
