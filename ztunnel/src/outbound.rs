//! Outbound: from a captured client connection (SOCKS5 or iptables redirect) to the upstream.
//!
//! Stages of [`Outbound::connect`]: **identify** the source workload (the local workload with the client's IP,
//! else the configured default, else refuse) → **plan** ([`plan::plan_outbound`], pure) → **connect** (HBONE
//! CONNECT through the shared [`Pool`] presenting the source workload's own certificate, or plain TCP).
//! The entry points ([`crate::socks5`], [`crate::redirect`]) answer their client and then [`splice`] bytes.

pub mod plan;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mesh::config::Live;
use mesh::hbone::{Dial, H2Stream, HboneError, Pool};
use mesh::identity::{CertStore, Identity};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::stats::Counters;
use crate::view::NodeView;
use plan::{Destination, OutboundPlan, PlanError, Upstream};

/// How long a plain TCP connect may take.
pub const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The live certificates of the workloads this node speaks for, by identity.
pub type CertSet = HashMap<Identity, CertStore>;

/// Why an outbound connection could not be established.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("client {0} is not a local workload and no default workload is configured")]
    NoSource(IpAddr),
    #[error("no certificate loaded for {0} (a workload added after start needs a restart)")]
    NoCerts(Identity),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Hbone(#[from] HboneError),
    #[error("connect to {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {0}: timed out")]
    TcpTimeout(SocketAddr),
}

/// An established upstream.
#[derive(Debug)]
pub enum UpstreamConn {
    Hbone(H2Stream),
    Tcp(TcpStream),
}

/// The outbound executor: shared by every outbound listener.
pub struct Outbound {
    pub(crate) live: Arc<Live<NodeView>>,
    pub(crate) certs: Arc<CertSet>,
    pub(crate) pool: Pool,
    pub(crate) counters: Arc<Counters>,
    /// This ztunnel's listener addresses (self-call guard).
    pub(crate) own: Vec<SocketAddr>,
}

impl Outbound {
    /// Identifies, plans and connects one outbound connection from `client` to `dest`; counts the result.
    pub async fn connect(
        &self,
        client: SocketAddr,
        dest: &Destination,
    ) -> Result<(OutboundPlan, UpstreamConn), OutboundError> {
        let result = self.try_connect(client, dest).await;
        match &result {
            Ok((plan, _)) => self.counters.outbound(plan.kind),
            Err(_) => self.counters.outbound_failed(),
        }
        result
    }

    async fn try_connect(
        &self,
        client: SocketAddr,
        dest: &Destination,
    ) -> Result<(OutboundPlan, UpstreamConn), OutboundError> {
        let view = self.live.load();
        let source = view
            .source_for(client.ip())
            .ok_or(OutboundError::NoSource(client.ip()))?;
        let req = plan::OutboundRequest {
            source,
            client,
            dest,
            pick: fastrand::usize(..),
        };
        let plan = plan::plan_outbound(&view, &self.own, &req)?;
        tracing::debug!(%client, %dest, source = %source.name, ?plan, "outbound plan");
        let conn = match &plan.upstream {
            Upstream::Hbone {
                hbone_addr,
                authority,
                expected,
                headers,
            } => {
                let identity = source.identity(view.trust_domain());
                let certs = self
                    .certs
                    .get(&identity)
                    .ok_or(OutboundError::NoCerts(identity))?;
                let dial = Dial {
                    hbone_addr: *hbone_addr,
                    authority: *authority,
                    source: certs,
                    expected: std::slice::from_ref(expected),
                    headers: with_traceparent(headers.clone()),
                };
                UpstreamConn::Hbone(self.pool.connect(dial).await?)
            }
            Upstream::Tcp(addr) => UpstreamConn::Tcp(tcp_connect(*addr).await?),
        };
        Ok((plan, conn))
    }
}

/// Adds a fresh random W3C `traceparent` (not sampled) to a planned header set.
fn with_traceparent(mut headers: http::HeaderMap) -> http::HeaderMap {
    let value = plan::traceparent(fastrand::u128(1..), fastrand::u64(1..));
    headers.insert(
        "traceparent",
        http::HeaderValue::try_from(value).expect("hex is a valid header value"),
    );
    headers
}

/// Plain TCP connect, bounded by [`TCP_CONNECT_TIMEOUT`].
pub async fn tcp_connect(addr: SocketAddr) -> Result<TcpStream, OutboundError> {
    match tokio::time::timeout(TCP_CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(source)) => Err(OutboundError::Tcp { addr, source }),
        Err(_) => Err(OutboundError::TcpTimeout(addr)),
    }
}

/// Each direction's copy buffer in [`splice`]: 16 KiB (tokio's default is 8 KiB; one TLS record or default h2
/// frame, so a copy never splits one), 32 KiB per spliced connection, allocated when it starts and freed when it
/// ends. 64 KiB buffers moved a bulk stream faster (`cargo bench -p mesh --bench hbone`) but cost 128 KiB per
/// open connection: 32 MiB of a node proxy's RSS at 256 keep-alive connections (issue 7 full-chain run).
pub const SPLICE_BUFFER: usize = 16 << 10;

/// Copies bytes both ways until both directions ended, forwarding each half-close (EOF → shutdown of the other
/// side's write half). Errors (a reset) end both directions; they are logged, not returned.
pub async fn splice<A, B>(mut a: A, mut b: B)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let copied =
        tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, SPLICE_BUFFER, SPLICE_BUFFER);
    match copied.await {
        Ok((ab, ba)) => tracing::debug!(sent = ab, received = ba, "connection closed"),
        Err(e) => tracing::debug!("connection ended: {e}"),
    }
}

/// [`splice`] with either kind of upstream.
pub async fn splice_upstream<A>(client: A, upstream: UpstreamConn)
where
    A: AsyncRead + AsyncWrite + Unpin,
{
    match upstream {
        UpstreamConn::Hbone(s) => splice(client, s).await,
        UpstreamConn::Tcp(s) => splice(client, s).await,
    }
}

/// Accepts outbound captures (SOCKS5 or redirect) on `listener` until `drain` stops, serving each connection
/// with `serve` on its own task under the drain. `what` names the entry in logs.
pub async fn accept_loop<F, Fut>(
    listener: tokio::net::TcpListener,
    what: &'static str,
    outbound: std::sync::Arc<Outbound>,
    drain: crate::drain::Drain,
    serve: F,
) where
    F: Fn(tokio::net::TcpStream, std::net::SocketAddr, std::sync::Arc<Outbound>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("{what} accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = drain.stopped() => return,
        };
        let work = serve(stream, client, outbound.clone());
        let d = drain.clone();
        tokio::spawn(async move {
            d.run(work).await;
        });
    }
}
