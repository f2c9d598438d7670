//! The L7 stages on Pingora's `ProxyHttp` hooks. Each hook is a few lines calling a plain function:
//!
//! identify ([`conn_info`]: caller identity and destination from HBONE) → route ([`route::route`]: rule and
//! weighted backend) → balance ([`Backend::next_endpoint`]) → rewrite (caller identity in
//! `x-forwarded-client-cert`, never trusted from the client) → forward ([`upstream::peer`]: HBONE or TCP) →
//! observe (counters). Failures from any stage meet at one boundary, [`respond_error`].
//!
//! The config snapshot is loaded once per request into the context, so a request never mixes two generations.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use mesh::config::Live;
use mesh::identity::Identity;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, Result};

use crate::downstream::{conn_info, ConnInfo};
use crate::error::{classify, ProxyError};
use crate::route;
use crate::snapshot::{Backend, ServiceRoutes, Snapshot};
use crate::upstream;

/// Counters of the proxy (a first slice of the telemetry).
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub local_replies: AtomicU64,
}

/// The waypoint's `ProxyHttp`.
pub struct WaypointProxy {
    pub live: Arc<Live<Snapshot>>,
    /// The HBONE relay socket (see [`upstream`]).
    pub relay: PathBuf,
    /// This waypoint's own identity (the `By=` of `x-forwarded-client-cert`).
    pub identity: Identity,
    pub stats: Arc<Stats>,
}

/// Per-request state.
pub struct RequestCtx {
    snapshot: Arc<Snapshot>,
    conn: Option<Arc<ConnInfo>>,
    /// The service, and the (rule, backend) chosen for this request.
    route: Option<(Arc<ServiceRoutes>, usize, usize)>,
    /// The first error of this request, with its precise cause (preferred over Pingora's classification).
    error: Option<ProxyError>,
}

impl RequestCtx {
    fn backend(&self) -> Option<&Backend> {
        let (svc, rule, b) = self.route.as_ref()?;
        Some(&svc.rules[*rule].backends[*b])
    }
}

/// Stage "validate": framing a proxy must not pass on. A request with both `Content-Length` and
/// `Transfer-Encoding` is a smuggling vector (RFC 9112 §6.1). Pingora drops the `Content-Length` and serves it;
/// the waypoint refuses it, so `raw_h1` (the request head as received, for HTTP/1.x) is checked whenever a
/// `Transfer-Encoding` is present.
pub fn validate(req: &RequestHeader, raw_h1: Option<&[u8]>) -> Result<(), ProxyError> {
    let h = &req.headers;
    if h.contains_key(http::header::TRANSFER_ENCODING)
        && (h.contains_key(http::header::CONTENT_LENGTH) || raw_h1.is_some_and(has_content_length))
    {
        return Err(ProxyError::BadRequest);
    }
    Ok(())
}

/// Whether a raw HTTP/1 head carries a `Content-Length` field (any case).
fn has_content_length(head: &[u8]) -> bool {
    head.split(|b| *b == b'\n')
        .skip(1)
        .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

/// Stage "identify + route": everything decided before the upstream is known.
fn decide(
    snapshot: &Snapshot,
    conn: Option<&ConnInfo>,
    req: &RequestHeader,
) -> Result<(Arc<ServiceRoutes>, usize, usize), ProxyError> {
    let conn = conn.ok_or(ProxyError::Internal)?;
    let svc = snapshot
        .service(conn.destination)
        .ok_or(ProxyError::NotServed)?;
    let (rule, backend) = route::route(svc, req.uri.path(), fastrand::u32(..))?;
    Ok((svc.clone(), rule, backend))
}

/// The `x-forwarded-client-cert` value naming the verified caller.
pub fn xfcc(by: &Identity, caller: &Identity) -> String {
    format!("By={by};URI={caller}")
}

/// The error boundary: writes `err` as the response (status + `x-waypoint-error` flag). Returns the status.
pub async fn respond_error(session: &mut Session, err: &ProxyError) -> u16 {
    let status = err.status();
    if status == 0 {
        return 0;
    }
    let body = Bytes::from(format!("{err}\n"));
    let Ok(mut resp) = ResponseHeader::build(status, Some(3)) else {
        return status;
    };
    let _ = resp.insert_header("x-waypoint-error", err.flag());
    let _ = resp.insert_header("content-type", "text/plain");
    let _ = resp.insert_header("content-length", body.len().to_string());
    if let Err(e) = session.write_error_response(resp, body).await {
        tracing::debug!("writing error response: {e}");
    }
    status
}

#[async_trait]
impl ProxyHttp for WaypointProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            snapshot: self.live.load(),
            conn: None,
            route: None,
            error: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        ctx.conn = conn_info(session);
        let raw = session
            .req_header()
            .headers
            .contains_key(http::header::TRANSFER_ENCODING)
            .then(|| {
                session
                    .as_downstream()
                    .as_http1()
                    .map(|h1| h1.get_headers_raw_bytes())
            })
            .flatten();
        if let Err(e) = validate(session.req_header(), raw.as_deref()) {
            self.stats.local_replies.fetch_add(1, Ordering::Relaxed);
            respond_error(session, &e).await;
            return Ok(true);
        }
        match decide(&ctx.snapshot, ctx.conn.as_deref(), session.req_header()) {
            Ok(r) => {
                ctx.route = Some(r);
                Ok(false)
            }
            Err(e) => {
                self.stats.local_replies.fetch_add(1, Ordering::Relaxed);
                respond_error(session, &e).await;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let backend = ctx
            .backend()
            .ok_or_else(|| ProxyError::Internal.into_pingora())?;
        match backend.next_endpoint() {
            Some(up) => Ok(upstream::peer(up, &self.relay)),
            None => {
                let e = ProxyError::NoHealthyUpstream(backend.name.clone());
                ctx.error = Some(e.clone());
                Err(e.into_pingora())
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(conn) = &ctx.conn {
            req.insert_header(
                "x-forwarded-client-cert",
                xfcc(&self.identity, &conn.peer_identity),
            )?;
        } else {
            req.remove_header("x-forwarded-client-cert");
        }
        Ok(())
    }

    /// A client closing its keep-alive connection between requests is routine, not an error worth logging.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        classify(e) == ProxyError::DownstreamGone
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let err = ctx.error.take().unwrap_or_else(|| classify(e));
        tracing::debug!(error = %e, flag = err.flag(), "request failed");
        self.stats.local_replies.fetch_add(1, Ordering::Relaxed);
        let code = respond_error(session, &err).await;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smuggling_framing_is_refused() {
        let mut te = RequestHeader::build("POST", b"/", None).unwrap();
        te.insert_header("transfer-encoding", "chunked").unwrap();
        let cl_raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-LENGTH: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        let te_raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(validate(&te, Some(cl_raw)), Err(ProxyError::BadRequest));
        assert_eq!(validate(&te, Some(te_raw)), Ok(()));
        assert_eq!(validate(&te, None), Ok(()));
        let mut both = te.clone();
        both.insert_header("content-length", "4").unwrap();
        assert_eq!(validate(&both, None), Err(ProxyError::BadRequest));
        let mut cl = RequestHeader::build("POST", b"/", None).unwrap();
        cl.insert_header("content-length", "4").unwrap();
        assert_eq!(
            validate(&cl, Some(cl_raw)),
            Ok(()),
            "no Transfer-Encoding: nothing to check"
        );
    }
}
