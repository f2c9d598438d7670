//! The L7 stages on Pingora's `ProxyHttp` hooks. Each hook is a few lines calling a plain function:
//!
//! identify ([`conn_info`]: caller identity and destination from HBONE) → validate ([`validate`]) → route
//! ([`stages::decide`]: rule by match precedence, weighted backend; consumer routes by the caller's namespace)
//! → redirect (answered here) or mirror ([`crate::mirror`]) → admit ([`stages::admit`]: `http2MaxRequests`) →
//! per try ([`forward::plan_try`]): retry admission and backoff, pending admission and connection slot
//! (`maxConnections`), balance (a different endpoint on each try), HBONE or TCP peer with the per-try timeout
//! → rewrite ([`forward::rewrite_request`]: URL rewrite, header modifiers, caller identity in
//! `x-forwarded-client-cert`, never trusted from the client; `Connection: close` on a connection's last
//! request) → retry on failure ([`crate::retry`] decisions) → observe ([`WaypointProxy::logging`]). Failures
//! meet at one boundary, [`respond_error`].
//!
//! Submodules: [`stats`] (counters), [`headers`] (validation and header helpers), [`respond`] (the error
//! boundary), [`stages`] (route, admit, mirror, outlier observation), [`forward`] (tries and retries).
//!
//! The config snapshot is loaded once per request into the context, so a request never mixes two generations.

pub mod authorize;
pub mod forward;
pub mod headers;
pub mod observe;
pub mod respond;
pub(crate) mod stages;
pub mod stats;

use std::sync::Arc;
use std::time::Duration;

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
use crate::mirror::Mirrors;
use crate::resilience::balance::InFlight;
use crate::resilience::breaker::slots::Slot;
use crate::resilience::breaker::Permit;
use crate::resilience::outlier::EndpointHealth;
use crate::retry::{Attempts, Failure};
use crate::snapshot::Snapshot;
use headers::modify;
use stages::{Chosen, PendingMirrors};

pub use forward::failure_of;
pub use headers::{validate, xfcc};
pub use respond::{flags_of, respond_error, respond_error_flagged};
pub use stats::{Stats, FLAGS, RETRY_CAUSES};

/// How long an idle downstream HTTP/1.1 keep-alive connection (the L7 connection inside an HBONE stream) is
/// kept between requests: Envoy's HTTP connection manager default (`idle_timeout`, 1 h), which Istio keeps.
/// A Service overrides it with the label `networking.waypoint.dev/idle-timeout` (see [`crate::routes`]).
pub const DOWNSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long an upgraded stream (websocket) may stay silent on the client side: Envoy's `stream_idle_timeout`
/// default (5 min).
pub const UPGRADED_STREAM_IDLE: Duration = Duration::from_secs(300);

/// The waypoint's `ProxyHttp`.
pub struct WaypointProxy {
    pub live: Arc<Live<Snapshot>>,
    /// The ways to destinations: the direct path and the h2c relay (see [`crate::upstream`]).
    pub ways: crate::upstream::Ways,
    /// This waypoint's own identity (the `By=` of `x-forwarded-client-cert`).
    pub identity: Identity,
    pub stats: Arc<Stats>,
    pub mirrors: Arc<Mirrors>,
    /// The CUSTOM authorization providers of the mesh config (`None`: none configured).
    pub ext_authz: Option<Arc<authz::ext::Providers>>,
    pub authz_stats: Arc<authorize::AuthzStats>,
    /// Istio metrics, access log and tracing (`None`: off).
    pub observer: Option<Arc<observe::Observer>>,
}

/// Per-request state.
pub struct RequestCtx {
    snapshot: Arc<Snapshot>,
    conn: Option<Arc<ConnInfo>>,
    chosen: Option<Chosen>,
    attempts: Attempts,
    /// Set when a response status asked for a retry (read by `error_while_proxy`).
    retry_status: Option<u16>,
    mirrors: Option<PendingMirrors>,
    /// The error of this request, with its precise cause (preferred over Pingora's classification); once
    /// answered, the error the client got (counted when the request ends).
    error: Option<ProxyError>,
    /// The response flags of a locally answered failure (`NR`, `UF,URX`, ...), for the log line.
    flags: Option<String>,
    /// Circuit-breaker permits: the request's (all tries), the current retry's, and the current try's while it
    /// waits for an upstream connection (`http1MaxPendingRequests`).
    request_permit: Option<Permit>,
    retry_permit: Option<Permit>,
    pending_permit: Option<Permit>,
    /// The current try's connection slot (`maxConnections`).
    slot: Option<Slot>,
    /// The current try's direct-path connector (see [`crate::upstream::direct`]).
    link: Option<Arc<crate::upstream::direct::Link>>,
    /// The current try's request is its connection's last (`maxRequestsPerConnection`).
    last_use_of_connection: bool,
    /// The current try's endpoint and its health (for outlier detection and to avoid it on a retry).
    current: Option<(std::net::SocketAddr, Arc<EndpointHealth>)>,
    /// Endpoints this request's tries ejected (outlier detection), counted when the request ends.
    ejections: u32,
    /// Counts the current try for LEAST_REQUEST.
    in_flight: Option<InFlight>,
    /// A consistent-hash cookie to set on the response.
    set_cookie: Option<String>,
    /// How the previous try failed (decides whether the retry is charged to the budget).
    last_failure: Option<Failure>,
    /// What authorization let through (header edits for the upstream request, the deciding policy).
    authorized: Option<authorize::Authorized>,
    /// When the request arrived (wall clock for the log, monotonic for the duration).
    started: Option<(std::time::SystemTime, std::time::Instant)>,
    /// The request's trace span, when tracing is on.
    span: Option<crate::telemetry::RequestSpan>,
}

impl WaypointProxy {
    /// Stages identify and validate; `Err` is answered by the caller.
    fn identify(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), ProxyError> {
        ctx.conn = conn_info(session);
        let req = session.req_header();
        let raw = req
            .headers
            .contains_key(http::header::TRANSFER_ENCODING)
            .then(|| {
                session
                    .as_downstream()
                    .as_http1()
                    .map(|h1| h1.get_headers_raw_bytes())
            })
            .flatten();
        validate(req, raw.as_deref())?;
        headers::normalize_path(session.req_header_mut())
    }

    /// Stage "route", after authorization.
    fn route(&self, session: &Session, ctx: &RequestCtx) -> Result<Chosen, ProxyError> {
        let conn = ctx.conn.as_deref().ok_or(ProxyError::Internal)?;
        stages::decide(&ctx.snapshot, conn, session.req_header())
    }

    /// Stage "authorize" ([`authorize::authorize`]); `Ok(false)` when the request was refused and answered.
    async fn authorize(&self, session: &mut Session, ctx: &mut RequestCtx) -> bool {
        let Some(conn) = ctx.conn.clone() else {
            return true;
        };
        let Some(sec) = ctx.snapshot.security(conn.destination).cloned() else {
            return true; // not served: routing answers it
        };
        if sec.is_open() {
            return true;
        }
        let providers = self.ext_authz.as_deref();
        let verdict = authorize::authorize(
            &sec,
            &conn,
            session.req_header(),
            providers,
            &self.authz_stats,
        )
        .await;
        match verdict {
            Ok(a) => {
                ctx.authorized = Some(a);
                true
            }
            Err(authorize::Refusal::Custom { provider, denied }) => {
                tracing::debug!(target: "waypoint::authz", provider, status = denied.status.as_u16(),
                    "denied by the external authorizer");
                self.stats.local_reply();
                respond::respond_custom(session, ctx, &denied).await;
                false
            }
            Err(r) => {
                if let authorize::Refusal::Denied { policy } = &r {
                    ctx.authorized = Some(authorize::Authorized {
                        policy: policy.clone(),
                        ..Default::default()
                    });
                }
                self.stats.local_reply();
                respond::reject(session, ctx, &r.error()).await;
                false
            }
        }
    }
}

/// The downstream keep-alive idle timeout of a request's connection (whole seconds, as Pingora keeps it).
fn downstream_idle_secs(chosen: Option<&Chosen>) -> u64 {
    let idle = chosen
        .and_then(|c| c.table.downstream_idle)
        .unwrap_or(DOWNSTREAM_IDLE_TIMEOUT);
    idle.as_secs().max(1)
}

#[async_trait]
impl ProxyHttp for WaypointProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            snapshot: self.live.load(),
            conn: None,
            chosen: None,
            attempts: Attempts {
                tries: 0,
                deadline: None,
            },
            retry_status: None,
            mirrors: None,
            error: None,
            flags: None,
            request_permit: None,
            retry_permit: None,
            pending_permit: None,
            slot: None,
            link: None,
            last_use_of_connection: false,
            current: None,
            ejections: 0,
            in_flight: None,
            set_cookie: None,
            last_failure: None,
            authorized: None,
            started: None,
            span: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.stats
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ctx.started = Some((std::time::SystemTime::now(), std::time::Instant::now()));
        if let Some(tracer) = self.observer.as_ref().and_then(|o| o.tracer.as_ref()) {
            let (host, port) = headers::host_and_port(session.req_header());
            ctx.span = Some(tracer.start(
                &session.req_header().headers,
                host,
                port.unwrap_or(80),
                std::time::SystemTime::now(),
            ));
        }
        let routed = match self.identify(session, ctx) {
            Ok(()) => {
                if !self.authorize(session, ctx).await {
                    if session.get_keepalive().is_some() {
                        session.set_keepalive(Some(downstream_idle_secs(None)));
                    }
                    return Ok(true);
                }
                self.route(session, ctx)
            }
            Err(e) => Err(e),
        };
        // Read before the next request of this connection (Pingora carries it over): its idle timeout. Not when
        // the connection ends after this request (the client asked, or a drain began: `Connection: close`).
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(downstream_idle_secs(routed.as_ref().ok())));
        }
        if session.is_upgrade_req() {
            // An upgraded stream (websocket) may stay silent far longer than Pingora's 60 s downstream read
            // timeout: allow Envoy's stream idle timeout instead.
            session.set_read_timeout(Some(UPGRADED_STREAM_IDLE));
        }
        let chosen = match routed {
            Ok(c) => c,
            Err(e) => {
                self.stats.local_reply();
                respond::reject(session, ctx, &e).await;
                return Ok(true);
            }
        };
        if respond::respond_redirect(session, &chosen).await? {
            self.stats.local_reply();
            return Ok(true);
        }
        match stages::admit(&chosen) {
            Ok(permit) => ctx.request_permit = Some(permit),
            Err(e) => {
                self.stats.local_reply();
                respond::reject(session, ctx, &e).await;
                return Ok(true);
            }
        }
        ctx.attempts = Attempts::start(&chosen.rule().timeouts, std::time::Instant::now());
        ctx.mirrors = stages::start_mirrors(&self.mirrors, session, &chosen);
        ctx.chosen = Some(chosen);
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        stages::mirror_body(
            &self.mirrors,
            &mut ctx.mirrors,
            body.as_ref(),
            end_of_stream,
        );
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        forward::plan_try(self, session, ctx).await
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        forward::on_connected(ctx, reused, fd);
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        forward::rewrite_request(self, session, req, ctx)?;
        if let Some(span) = &ctx.span {
            span.inject(req);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        forward::on_status(self, session, resp.status.as_u16(), ctx)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(chosen) = &ctx.chosen else {
            return Ok(());
        };
        for f in [&chosen.rule().filters, &chosen.backend().filters] {
            if let Some(m) = &f.response_headers {
                modify(m, resp);
            }
        }
        if let Some(cookie) = ctx.set_cookie.take() {
            resp.append_header(http::header::SET_COOKIE, cookie)?;
        }
        if let Some(ext) = ctx.authorized.as_ref().and_then(|a| a.ext.as_ref()) {
            for h in &ext.response_headers {
                resp.append_header(h.name.clone(), h.value.clone())?;
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if end_of_stream {
            stages::response_complete(ctx);
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        forward::on_connect_failure(session, ctx, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let e = e.more_context(format!("Peer: {peer}"));
        forward::on_proxy_error(self, session, e, ctx, client_reused)
    }

    /// Observe: the Istio metrics, access log and span ([`observe::record`]); plus, at debug level on target
    /// `waypoint::access`, a diagnostic line per request with the tries and flags (off by default: it would
    /// format and write a second line per request).
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        self.stats
            .count_end(ctx.flags.as_deref(), ctx.error.as_ref(), ctx.ejections);
        if let Some(o) = &self.observer {
            observe::record(&o.telemetry, &o.unknown, session, ctx);
        }
        if !tracing::enabled!(target: "waypoint::access", tracing::Level::DEBUG) {
            return;
        }
        let req = session.req_header();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let upstream = ctx
            .chosen
            .as_ref()
            .map(|c| c.backend().name.as_str())
            .unwrap_or("-");
        let caller = ctx
            .conn
            .as_ref()
            .map(|c| c.peer_identity.to_string())
            .unwrap_or_default();
        tracing::debug!(
            target: "waypoint::access",
            method = %req.method,
            uri = %req.uri,
            status,
            flags = ctx.flags.as_deref().unwrap_or("-"),
            tries = ctx.attempts.tries,
            upstream,
            caller,
            "request"
        );
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
        let flags = flags_of(&err, ctx.attempts.tries);
        tracing::debug!(error = %e, %flags, "request failed");
        self.stats.local_reply();
        let code = respond_error_flagged(session, &err, &flags).await;
        ctx.flags = Some(flags);
        ctx.error = Some(err);
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}
