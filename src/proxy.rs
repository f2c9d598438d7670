//! The L7 stages on Pingora's `ProxyHttp` hooks. Each hook is a few lines calling a plain function:
//!
//! identify ([`conn_info`]: caller identity and destination from HBONE) → validate ([`validate`]) → route
//! ([`route::route`]: rule by match precedence, weighted backend; consumer routes by the caller's namespace) →
//! redirect (answered here) or mirror ([`crate::mirror`]) → balance ([`Backend::next_endpoint`], a different
//! endpoint on each try) → rewrite (URL rewrite, header modifiers, caller identity in
//! `x-forwarded-client-cert`, never trusted from the client) → forward ([`upstream::peer`]: HBONE or TCP,
//! h1 or h2c, per-try timeout) → retry ([`crate::retry`]) → observe. Failures meet at one boundary,
//! [`respond_error`].
//!
//! The config snapshot is loaded once per request into the context, so a request never mixes two generations.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use mesh::config::Live;
use mesh::identity::Identity;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use waypoint_filters::{HeaderModifier, RequestParts};

use crate::downstream::{conn_info, ConnInfo};
use crate::error::{classify, ProxyError};
use crate::mirror::{self, Mirrors};
use crate::resilience::balance::{InFlight, PickKey};
use crate::resilience::breaker::Permit;
use crate::resilience::outlier::{EndpointHealth, Outcome};
use crate::resilience::policy::ConnectionPool;
use crate::retry::{self, Attempts, Failure};
use crate::route;
use crate::routes::compile::{AppProtocol, RouteTable, Rule};
use crate::routes::matching::RequestView;
use crate::snapshot::{Backend, Snapshot};
use crate::upstream;

/// Counters of the proxy (a first slice of the telemetry).
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub local_replies: AtomicU64,
    /// Tries after the first (counted when the try starts).
    pub retries: AtomicU64,
    /// Retry decisions by cause: connect failure, not delivered, reset before response, status.
    pub retry_causes: [AtomicU64; 4],
    /// Requests answered with each response flag ([`FLAGS`] order).
    pub flags: [AtomicU64; FLAGS.len()],
}

/// The response flags counted in [`Stats::flags`].
pub const FLAGS: [&str; 9] = ["NR", "UH", "UO", "UF", "UC", "UT", "URX", "DPE", "DC"];
/// The retry causes of [`Stats::retry_causes`].
pub const RETRY_CAUSES: [&str; 4] = [
    "connect_failure",
    "not_delivered",
    "reset_before_response",
    "status",
];

impl Stats {
    /// Counts each flag of a `UF,URX`-style list.
    fn count_flags(&self, flags: &str) {
        for f in flags.split(',') {
            if let Some(i) = FLAGS.iter().position(|k| *k == f) {
                self.flags[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn count_retry(&self, f: Failure) {
        let i = match f {
            Failure::Connect => 0,
            Failure::NotDelivered => 1,
            Failure::ResetBeforeResponse | Failure::Timeout => 2,
            Failure::Status(_) => 3,
        };
        self.retry_causes[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// How a try failed, from Pingora's error: a reset or broken pipe on the upstream connection means the request
/// was not (entirely) delivered — the relay closes with our bytes unread only when the endpoint had already
/// ended the stream, and a peer's TCP reset means it did not read them.
pub fn failure_of(e: &Error) -> Failure {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
    match classify(e) {
        ProxyError::ConnectFailure => Failure::Connect,
        ProxyError::Timeout => Failure::Timeout,
        _ => {
            let root = e.root_cause();
            let io = root.downcast_ref::<std::io::Error>();
            match io.map(|io| io.kind()) {
                Some(ConnectionReset | BrokenPipe) => Failure::NotDelivered,
                _ => Failure::ResetBeforeResponse,
            }
        }
    }
}

/// The waypoint's `ProxyHttp`.
pub struct WaypointProxy {
    pub live: Arc<Live<Snapshot>>,
    /// The HBONE relay socket (see [`upstream`]).
    pub relay: PathBuf,
    /// This waypoint's own identity (the `By=` of `x-forwarded-client-cert`).
    pub identity: Identity,
    pub stats: Arc<Stats>,
    pub mirrors: Arc<Mirrors>,
}

/// The rule and backend chosen for a request.
struct Chosen {
    table: Arc<RouteTable>,
    rule: usize,
    backend: usize,
    /// The `PathPrefix` that matched, for `ReplacePrefixMatch` rewrites.
    matched_prefix: Option<String>,
}

impl Chosen {
    fn rule(&self) -> &Rule {
        &self.table.rules[self.rule]
    }
    fn backend(&self) -> &Backend {
        &self.rule().backends[self.backend]
    }
}

/// Mirror copies waiting for the request body.
struct PendingMirrors {
    copy: mirror::Copy,
    targets: Vec<(crate::snapshot::Upstream, AppProtocol)>,
    body: BytesMut,
    too_big: bool,
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
    /// The first error of this request, with its precise cause (preferred over Pingora's classification).
    error: Option<ProxyError>,
    /// The response flags of a locally answered failure (`NR`, `UF,URX`, ...), for the log line.
    flags: Option<String>,
    /// Circuit-breaker permits: the request's (all tries), the current retry's, and the current try's while it
    /// waits for an upstream connection (`http1MaxPendingRequests`).
    request_permit: Option<Permit>,
    retry_permit: Option<Permit>,
    pending_permit: Option<Permit>,
    /// The current try's endpoint and its health (for outlier detection and to avoid it on a retry).
    current: Option<(std::net::SocketAddr, Arc<EndpointHealth>)>,
    /// Counts the current try for LEAST_REQUEST.
    in_flight: Option<InFlight>,
    /// A consistent-hash cookie to set on the response.
    set_cookie: Option<String>,
    /// How the previous try failed (decides whether the retry is charged to the budget).
    last_failure: Option<Failure>,
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

/// Stage "route": the service, rule and backend for this request.
fn decide(snapshot: &Snapshot, conn: &ConnInfo, req: &RequestHeader) -> Result<Chosen, ProxyError> {
    let table = snapshot
        .service(conn.destination)
        .ok_or(ProxyError::NotServed)?;
    let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let view = RequestView::new(&req.method, pq, &req.headers);
    let routed = route::route(
        table,
        &conn.peer_identity.namespace,
        &view,
        fastrand::u32(..),
    )?;
    // The matched prefix is kept only when a redirect or rewrite will read it (no copy per request otherwise).
    let rule = &table.rules[routed.rule];
    let backend_filters = routed.backend.map(|b| &rule.backends[b].filters);
    let uses_prefix = rule.filters.redirect.is_some()
        || rule.filters.rewrite.is_some()
        || backend_filters.is_some_and(|f| f.rewrite.is_some());
    Ok(Chosen {
        table: table.clone(),
        rule: routed.rule,
        backend: routed.backend.unwrap_or(usize::MAX),
        matched_prefix: routed
            .matched_prefix
            .filter(|_| uses_prefix)
            .map(str::to_string),
    })
}

/// The request's host and explicit port (from `Host`, else the URI authority).
fn host_and_port(req: &RequestHeader) -> (&str, Option<u16>) {
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    match host.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (host, None),
        },
        _ => (host, None),
    }
}

/// How long a connection opened for a retry stays pooled (under its one-off key) after the try.
const RETRY_CONNECTION_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Records `e` as the request's error and hands Pingora its form.
fn fail(ctx: &mut RequestCtx, e: ProxyError) -> Box<Error> {
    ctx.error = Some(e.clone());
    e.into_pingora()
}

/// Stage "observe" for outlier detection: the current try's outcome, on its endpoint.
fn record_outcome(ctx: &RequestCtx, outcome: Outcome) {
    let (Some(chosen), Some((_, health))) = (&ctx.chosen, &ctx.current) else {
        return;
    };
    let backend = chosen.backend();
    if let Some(policy) = &backend.policy.outlier {
        backend.health.record(
            health,
            outcome,
            policy,
            backend.endpoints.len(),
            Instant::now(),
        );
    }
}

/// The `x-forwarded-client-cert` value naming the verified caller.
pub fn xfcc(by: &Identity, caller: &Identity) -> String {
    format!("By={by};URI={caller}")
}

/// Pingora's request and response headers, modified through their own methods (which keep the HTTP/1
/// header-case map in step).
trait Headers {
    fn remove(&mut self, name: &http::HeaderName);
    fn set(&mut self, name: http::HeaderName, value: http::HeaderValue);
    fn add(&mut self, name: http::HeaderName, value: http::HeaderValue);
}

macro_rules! headers_impl {
    ($t:ty) => {
        impl Headers for $t {
            fn remove(&mut self, name: &http::HeaderName) {
                self.remove_header(name);
            }
            fn set(&mut self, name: http::HeaderName, value: http::HeaderValue) {
                let _ = self.insert_header(name, value);
            }
            fn add(&mut self, name: http::HeaderName, value: http::HeaderValue) {
                let _ = self.append_header(name, value);
            }
        }
    };
}
headers_impl!(RequestHeader);
headers_impl!(ResponseHeader);

/// Applies a header modifier (remove, then set, then add, as [`HeaderModifier::apply`] does).
fn modify(m: &HeaderModifier, h: &mut impl Headers) {
    for name in &m.remove {
        h.remove(name);
    }
    for (name, value) in &m.set {
        h.set(name.clone(), value.clone());
    }
    for (name, value) in &m.add {
        h.add(name.clone(), value.clone());
    }
}

/// The response flags of a failed request: the error's own, plus `URX` when retries were spent on it.
pub fn flags_of(err: &ProxyError, tries: u32) -> String {
    if tries > 1 && err.status() >= 500 {
        format!("{},URX", err.flag())
    } else {
        err.flag().to_string()
    }
}

/// The error boundary: writes `err` as the response (status + `x-waypoint-error` flags). Returns the status.
pub async fn respond_error(session: &mut Session, err: &ProxyError) -> u16 {
    respond_error_flagged(session, err, err.flag()).await
}

/// [`respond_error`] with explicit flags.
pub async fn respond_error_flagged(session: &mut Session, err: &ProxyError, flags: &str) -> u16 {
    let status = err.status();
    if status == 0 {
        return 0;
    }
    let body = Bytes::from(format!("{err}\n"));
    let Ok(mut resp) = ResponseHeader::build(status, Some(3)) else {
        return status;
    };
    let _ = resp.insert_header("x-waypoint-error", flags);
    let _ = resp.insert_header("content-type", "text/plain");
    let _ = resp.insert_header("content-length", body.len().to_string());
    if let Err(e) = session.write_error_response(resp, body).await {
        tracing::debug!("writing error response: {e}");
    }
    status
}

/// Answers a `RequestRedirect`.
async fn respond_redirect(session: &mut Session, chosen: &Chosen) -> Result<bool> {
    let Some(redirect) = &chosen.rule().filters.redirect else {
        return Ok(false);
    };
    let req = session.req_header();
    let (host, port) = host_and_port(req);
    let parts = RequestParts {
        scheme: "http",
        host,
        port,
        path: req.uri.path(),
        query: req.uri.query(),
    };
    let location = redirect.location(&parts, chosen.matched_prefix.as_deref());
    let mut resp = ResponseHeader::build(redirect.status, Some(2))?;
    resp.insert_header(http::header::LOCATION, location)?;
    resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
    if let Some(m) = &chosen.rule().filters.response_headers {
        modify(m, &mut resp);
    }
    session.write_response_header(Box::new(resp), true).await?;
    Ok(true)
}

impl WaypointProxy {
    /// Picks the rule's mirrors for this request; sends them now when the request has no body.
    fn start_mirrors(&self, session: &mut Session, chosen: &Chosen) -> Option<PendingMirrors> {
        let mirrors = &chosen.rule().filters.mirrors;
        if mirrors.is_empty() {
            return None;
        }
        let targets: Vec<_> = mirrors
            .iter()
            .filter(|m| m.fraction.selected(fastrand::u32(..1_000_000)))
            .filter_map(|m| {
                m.backend
                    .next_endpoint()
                    .map(|up| (up.clone(), m.backend.protocol))
            })
            .collect();
        if targets.is_empty() {
            return None;
        }
        let req = session.req_header();
        let copy = mirror::Copy {
            method: req.method.clone(),
            path_and_query: req
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            headers: req.headers.clone(),
            body: Bytes::new(),
        };
        let pending = PendingMirrors {
            copy,
            targets,
            body: BytesMut::new(),
            too_big: false,
        };
        if session.is_body_empty() {
            self.flush_mirrors(pending);
            return None;
        }
        Some(pending)
    }

    fn flush_mirrors(&self, p: PendingMirrors) {
        if p.too_big {
            self.mirrors
                .stats
                .dropped
                .fetch_add(p.targets.len() as u64, Ordering::Relaxed);
            return;
        }
        let copy = mirror::Copy {
            body: p.body.freeze(),
            ..p.copy
        };
        for (up, protocol) in p.targets {
            self.mirrors.send(up, protocol, copy.clone());
        }
    }
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
            current: None,
            in_flight: None,
            set_cookie: None,
            last_failure: None,
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
        let decided = validate(session.req_header(), raw.as_deref()).and_then(|()| {
            let conn = ctx.conn.as_deref().ok_or(ProxyError::Internal)?;
            decide(&ctx.snapshot, conn, session.req_header())
        });
        let chosen = match decided {
            Ok(c) => c,
            Err(e) => {
                self.stats.local_replies.fetch_add(1, Ordering::Relaxed);
                ctx.flags = Some(e.flag().to_string());
                respond_error(session, &e).await;
                return Ok(true);
            }
        };
        if respond_redirect(session, &chosen).await? {
            self.stats.local_replies.fetch_add(1, Ordering::Relaxed);
            return Ok(true);
        }
        let backend = chosen.backend();
        match backend.breaker.try_request(&backend.policy.connection_pool) {
            Ok(permit) => ctx.request_permit = Some(permit),
            Err(overflow) => {
                let e = ProxyError::Overflow(overflow.field());
                self.stats.local_replies.fetch_add(1, Ordering::Relaxed);
                ctx.flags = Some(e.flag().to_string());
                respond_error(session, &e).await;
                return Ok(true);
            }
        }
        ctx.attempts = Attempts::start(&chosen.rule().timeouts, Instant::now());
        ctx.mirrors = self.start_mirrors(session, &chosen);
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
        if let Some(p) = ctx.mirrors.as_mut() {
            if let Some(b) = body {
                if p.body.len() + b.len() > mirror::MAX_BODY {
                    p.too_big = true;
                } else if !p.too_big {
                    p.body.extend_from_slice(b);
                }
            }
            if end_of_stream {
                let p = ctx.mirrors.take().expect("checked");
                self.flush_mirrors(p);
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let chosen = ctx
            .chosen
            .as_ref()
            .ok_or_else(|| ProxyError::Internal.into_pingora())?;
        // Own the table for this hook, so the context can be updated while the backend is borrowed.
        let (table, rule_idx, backend_idx) = (chosen.table.clone(), chosen.rule, chosen.backend);
        let rule = &table.rules[rule_idx];
        let backend = &rule.backends[backend_idx];
        ctx.attempts.tries += 1;
        if ctx.attempts.tries > 1 {
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            ctx.retry_permit = None;
            let pool = &backend.policy.connection_pool;
            let in_flight = backend.breaker.in_flight();
            let limits = ConnectionPool {
                max_retries: retry::retry_cap(pool.max_retries, in_flight, ctx.last_failure),
                ..pool.clone()
            };
            match backend.breaker.try_retry(&limits) {
                Ok(permit) => ctx.retry_permit = Some(permit),
                Err(overflow) => return Err(fail(ctx, ProxyError::Overflow(overflow.field()))),
            }
            if let Some(p) = &rule.retry {
                tokio::time::sleep(retry::backoff(p, ctx.attempts.tries, fastrand::u32(..))).await;
            }
        }
        let timeout = retry::try_timeout(&rule.timeouts, &ctx.attempts, Instant::now())
            .map_err(|e| fail(ctx, e))?;
        let req = session.req_header();
        let key = PickKey {
            header_map: &req.headers,
            query: req.uri.query(),
            source_ip: ctx.conn.as_ref().map(|c| c.peer_addr.ip()),
            exclude: ctx.current.as_ref().map(|(addr, _)| *addr),
        };
        match backend.breaker.try_pending(&backend.policy.connection_pool) {
            Ok(permit) => ctx.pending_permit = Some(permit),
            Err(overflow) => return Err(fail(ctx, ProxyError::Overflow(overflow.field()))),
        }
        let Some(picked) = backend.pick(&key, Instant::now()) else {
            return Err(fail(
                ctx,
                ProxyError::NoHealthyUpstream(backend.name.clone()),
            ));
        };
        let up = picked.upstream;
        ctx.current = Some((up.addr, up.health.clone()));
        ctx.in_flight = Some(picked.in_flight);
        if ctx.set_cookie.is_none() {
            ctx.set_cookie = picked.set_cookie;
        }
        let mut peer = upstream::peer(up, &self.relay);
        if ctx.attempts.tries > 1 {
            // A retry never takes another pooled connection (it may be stale the same way): a one-off pool
            // key makes Pingora open a fresh one.
            peer.group_key = fastrand::u64(..);
        }
        let retry_connection = ctx.attempts.tries > 1;
        if backend.protocol == AppProtocol::H2c {
            peer.options.set_http_version(2, 2);
            peer.options.max_h2_streams = 100;
        }
        let pool = &backend.policy.connection_pool;
        peer.options.idle_timeout = pool.idle_timeout;
        if retry_connection {
            // Nobody will ask for it by that key again: let it go soon after the try.
            peer.options.idle_timeout = Some(RETRY_CONNECTION_IDLE);
        }
        if let Some(t) = pool.connect_timeout {
            peer.options.connection_timeout = Some(t);
        }
        if let Some(t) = timeout {
            peer.options.connection_timeout =
                Some(peer.options.connection_timeout.map_or(t, |c| c.min(t)));
            peer.options.total_connection_timeout = Some(t);
            peer.options.read_timeout = Some(t);
            peer.options.write_timeout = Some(t);
        }
        Ok(peer)
    }

    /// The try has its connection: it no longer counts as pending.
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.pending_permit = None;
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        match &ctx.conn {
            Some(conn) => req.insert_header(
                "x-forwarded-client-cert",
                xfcc(&self.identity, &conn.peer_identity),
            )?,
            None => {
                req.remove_header("x-forwarded-client-cert");
            }
        }
        let Some(chosen) = &ctx.chosen else {
            return Ok(());
        };
        let (rule, backend) = (chosen.rule(), chosen.backend());
        for f in [&rule.filters, &backend.filters] {
            if let Some(m) = &f.request_headers {
                modify(m, req);
            }
            if let Some(rw) = &f.rewrite {
                if let Some(host) = &rw.hostname {
                    req.insert_header(http::header::HOST, host.as_str())?;
                }
                let pq = session
                    .req_header()
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str());
                if let Some(new) = rw.apply_path(pq, chosen.matched_prefix.as_deref()) {
                    req.set_uri(
                        new.parse()
                            .map_err(|_| ProxyError::Internal.into_pingora())?,
                    );
                }
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(chosen) = &ctx.chosen else {
            return Ok(());
        };
        let status = resp.status.as_u16();
        record_outcome(ctx, Outcome::from_status(status));
        let replayable = !session.as_ref().retry_buffer_truncated();
        let idempotent = session.req_header().method.is_idempotent();
        let failure = Failure::Status(status);
        if retry::should_retry(
            chosen.rule().retry.as_ref(),
            &ctx.attempts,
            failure,
            idempotent,
            replayable,
            Instant::now(),
        ) {
            ctx.retry_status = Some(status);
            ctx.last_failure = Some(failure);
            self.stats.count_retry(failure);
            let mut e = Error::explain(
                ErrorType::HTTPStatus(status),
                "retrying on the response status",
            );
            e.set_retry(true);
            return Err(e);
        }
        Ok(())
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
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.pending_permit = None;
        record_outcome(ctx, Outcome::GatewayError);
        ctx.last_failure = Some(Failure::Connect);
        let policy = ctx.chosen.as_ref().and_then(|c| c.rule().retry.as_ref());
        let replayable = !session.as_ref().retry_buffer_truncated();
        let retry = retry::should_retry(
            policy,
            &ctx.attempts,
            Failure::Connect,
            true,
            replayable,
            Instant::now(),
        );
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if ctx.retry_status.take().is_some() {
            e.set_retry(true);
            return e;
        }
        let failure = failure_of(&e);
        ctx.last_failure = Some(failure);
        record_outcome(ctx, Outcome::GatewayError);
        let policy = ctx.chosen.as_ref().and_then(|c| c.rule().retry.as_ref());
        let response_started = session.response_written().is_some();
        let buffered = !session.as_ref().retry_buffer_truncated();
        // A reset after delivery is replayed for idempotent requests, or any when the route opted in.
        let idempotent = session.req_header().method.is_idempotent()
            || ctx.chosen.as_ref().is_some_and(|c| c.rule().retry_resets);
        let now = Instant::now();
        let retry = !response_started
            && retry::should_retry(policy, &ctx.attempts, failure, idempotent, buffered, now);
        if retry {
            self.stats.count_retry(failure);
            tracing::debug!(
                ?failure,
                client_reused,
                tries = ctx.attempts.tries,
                "retrying on another connection"
            );
        } else if !buffered
            && retry::should_retry(policy, &ctx.attempts, failure, idempotent, true, now)
        {
            tracing::warn!(
                ?failure,
                "not retried: the request body was larger than the replay buffer"
            );
        }
        e.set_retry(retry);
        e
    }

    /// Observe: one line per request (target `waypoint::access`, level info) with the response flags.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(flags) = &ctx.flags {
            self.stats.count_flags(flags);
        }
        if !tracing::enabled!(target: "waypoint::access", tracing::Level::INFO) {
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
        tracing::info!(
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
        self.stats.local_replies.fetch_add(1, Ordering::Relaxed);
        let code = respond_error_flagged(session, &err, &flags).await;
        ctx.flags = Some(flags);
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

    #[test]
    fn response_flags() {
        for (err, tries, want) in [
            (ProxyError::ConnectFailure, 1, "UF"),
            (ProxyError::ConnectFailure, 3, "UF,URX"),
            (ProxyError::ConnectionTermination, 2, "UC,URX"),
            (ProxyError::Timeout, 2, "UT,URX"),
            (ProxyError::NoRoute, 2, "NR"),
            (ProxyError::BadRequest, 1, "DPE"),
        ] {
            assert_eq!(flags_of(&err, tries), want, "{err:?} after {tries} tries");
        }
    }

    #[test]
    fn host_and_port_from_host_header() {
        for (host, want) in [
            ("reviews", ("reviews", None)),
            ("reviews:9080", ("reviews", Some(9080))),
            ("[::1]:80", ("[::1]", Some(80))),
            ("", ("", None)),
        ] {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            req.insert_header("host", host).unwrap();
            assert_eq!(host_and_port(&req), want, "{host}");
        }
    }
}
