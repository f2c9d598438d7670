//! `RequestMirror`: a copy of the request to a shadow backend, fire-and-forget.
//!
//! The copy is sent on its own task over its own connection ([`upstream::open`]); its answer is read and
//! dropped. It never slows or fails the main request: at most [`MAX_IN_FLIGHT`] copies are in flight (more are
//! dropped and counted), a body larger than [`MAX_BODY`] is not mirrored, and each copy has a deadline. As
//! Envoy does, the copy's `Host` gets a `-shadow` suffix so the shadow can tell copies apart.

use crate::upstream::direct::Upstreams;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Semaphore;

use crate::routes::compile::AppProtocol;
use crate::snapshot::Upstream;
use crate::upstream;

/// Copies in flight at once, waypoint-wide.
pub const MAX_IN_FLIGHT: usize = 256;
/// The largest request body that is mirrored.
pub const MAX_BODY: usize = 64 * 1024;
/// A copy that takes longer is abandoned.
const DEADLINE: Duration = Duration::from_secs(10);

/// Mirror counters.
#[derive(Debug, Default)]
pub struct MirrorStats {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
}

/// The request to copy.
#[derive(Clone, Debug)]
pub struct Copy {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Sends mirror copies.
#[derive(Debug)]
pub struct Mirrors {
    direct: Upstreams,
    permits: Arc<Semaphore>,
    pub stats: Arc<MirrorStats>,
}

impl Mirrors {
    pub fn new(direct: Upstreams) -> Mirrors {
        Mirrors {
            direct,
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            stats: Arc::default(),
        }
    }

    /// Sends `copy` to `up` in the background, or drops it (counted) when too many are in flight.
    pub fn send(&self, up: Upstream, protocol: AppProtocol, copy: Copy) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let (direct, stats) = (self.direct.clone(), self.stats.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let sent = tokio::time::timeout(DEADLINE, send_one(&direct, &up, protocol, copy)).await;
            let counter = match sent {
                Ok(Ok(())) => &stats.sent,
                _ => &stats.failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        });
    }
}

/// `host` → `host-shadow` (before any port).
pub fn shadow_host(host: &str) -> String {
    let (name, port) = match host.rfind(':') {
        Some(i)
            if host[i + 1..].bytes().all(|b| b.is_ascii_digit())
                && (!host.starts_with('[') || host[..i].ends_with(']')) =>
        {
            host.split_at(i)
        }
        _ => (host, ""),
    };
    format!("{name}-shadow{port}")
}

async fn send_one(
    direct: &Upstreams,
    up: &Upstream,
    protocol: AppProtocol,
    copy: Copy,
) -> anyhow::Result<()> {
    let io = TokioIo::new(upstream::open(up, direct).await?);
    let mut req = Request::builder().method(copy.method);
    let host = copy
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(shadow_host);
    req = match protocol {
        AppProtocol::Http1 => req.uri(copy.path_and_query.as_str()),
        AppProtocol::H2c => {
            let authority = host.clone().unwrap_or_else(|| up.addr.to_string());
            req.uri(format!("http://{authority}{}", copy.path_and_query))
        }
    };
    let mut req = req.body(Full::new(copy.body))?;
    *req.headers_mut() = copy.headers;
    if let Some(h) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
        req.headers_mut().insert(http::header::HOST, h);
    }
    if protocol == AppProtocol::H2c {
        req.headers_mut().remove(http::header::HOST);
    }
    let resp = match protocol {
        AppProtocol::Http1 => {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            send.send_request(req).await?
        }
        AppProtocol::H2c => {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            send.send_request(req).await?
        }
    };
    resp.into_body().collect().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::shadow_host;

    #[test]
    fn shadow_hosts() {
        for (host, want) in [
            ("reviews", "reviews-shadow"),
            ("reviews:9080", "reviews-shadow:9080"),
            (
                "reviews.default.svc.cluster.local:80",
                "reviews.default.svc.cluster.local-shadow:80",
            ),
            ("[::1]:8080", "[::1]-shadow:8080"),
            ("10.0.0.1", "10.0.0.1-shadow"),
        ] {
            assert_eq!(shadow_host(host), want, "{host}");
        }
    }
}
