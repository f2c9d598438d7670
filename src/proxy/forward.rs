//! The forwarding stages: the peer of each try ([`plan_try`]: retry admission and backoff, per-try timeout,
//! pending admission and connection slot, endpoint choice), the connection it got ([`on_connected`]:
//! `maxRequestsPerConnection`), the upstream request head ([`rewrite_request`]), and the retry decisions on
//! failure ([`on_status`], [`on_connect_failure`], [`on_proxy_error`]). Plain functions over the request
//! context; the hooks in [`super`] only call them.

use std::time::{Duration, Instant};

use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use super::headers::modify;
use super::respond::fail;
use super::stages::record_outcome;
use super::{RequestCtx, WaypointProxy};
use crate::error::{classify, ProxyError};
use crate::resilience::balance::PickKey;
use crate::resilience::outlier::Outcome;
use crate::resilience::policy::ConnectionPool;
use crate::resilience::reuse::{last_use, USES};
use crate::retry::{self, Failure};
use crate::routes::compile::AppProtocol;
use crate::upstream::{self, SlotTag};

/// How long a connection opened for a retry stays pooled (under its one-off key) after the try.
const RETRY_CONNECTION_IDLE: Duration = Duration::from_secs(1);

/// How a try failed, from Pingora's error: a reset or broken pipe on the upstream connection means the request
/// was not (entirely) delivered — the direct path reports a reset on the first write to a stream the endpoint had
/// already ended, the relay closes with our bytes unread only then, and a peer's TCP reset means it did not
/// read them.
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

/// Stages "retry" (admission, backoff), "admit" (pending, connection slot) and "balance" for one try: the peer
/// Pingora connects to.
pub(crate) async fn plan_try(
    proxy: &WaypointProxy,
    session: &Session,
    ctx: &mut RequestCtx,
) -> Result<Box<HttpPeer>> {
    let chosen = ctx
        .chosen
        .as_ref()
        .ok_or_else(|| ProxyError::Internal.into_pingora())?;
    // Own the table for this call, so the context can be updated while the backend is borrowed.
    let (table, rule_idx, backend_idx) = (chosen.table.clone(), chosen.rule, chosen.backend);
    let rule = &table.rules[rule_idx];
    let backend = &rule.backends[backend_idx];
    let pool = &backend.policy.connection_pool;
    ctx.attempts.tries += 1;
    // The previous try's slot is free again before this one waits for one.
    ctx.slot = None;
    if ctx.attempts.tries > 1 {
        proxy
            .stats
            .retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ctx.retry_permit = None;
        let limits = ConnectionPool {
            max_retries: retry::retry_cap(
                pool.max_retries,
                backend.breaker.in_flight(),
                ctx.last_failure,
            ),
            ..pool.clone()
        };
        match backend.breaker.try_retry(&limits) {
            Ok(permit) => ctx.retry_permit = Some(permit),
            Err(overflow) => return Err(fail(ctx, ProxyError::Overflow(overflow))),
        }
        if let Some(p) = &rule.retry {
            tokio::time::sleep(retry::backoff(p, ctx.attempts.tries, fastrand::u32(..))).await;
        }
    }
    let timeout = retry::try_timeout(&rule.timeouts, &ctx.attempts, Instant::now())
        .map_err(|e| fail(ctx, e))?;
    match backend.breaker.try_pending(pool) {
        Ok(permit) => ctx.pending_permit = Some(permit),
        Err(overflow) => return Err(fail(ctx, ProxyError::Overflow(overflow))),
    }
    // maxConnections (HTTP/1.1): wait, as a pending try, for one of the service's connection slots.
    let slots = pool
        .max_connections
        .filter(|_| backend.protocol != AppProtocol::H2c)
        .and_then(|max| backend.breaker.slots(max));
    if let Some(slots) = slots {
        let slot = match slots.try_take() {
            Some(s) => s,
            None => match timeout {
                None => slots.take().await,
                Some(t) => tokio::time::timeout(t, slots.take())
                    .await
                    .map_err(|_| fail(ctx, ProxyError::Timeout))?,
            },
        };
        ctx.slot = Some(slot);
    }
    let req = session.req_header();
    let key = PickKey {
        header_map: &req.headers,
        query: req.uri.query(),
        source_ip: ctx.conn.as_ref().map(|c| c.peer_addr.ip()),
        exclude: ctx.current.as_ref().map(|(addr, _)| *addr),
    };
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
    let tag = ctx.slot.as_ref().map(|s| SlotTag {
        service: backend.breaker.id(),
        index: s.index(),
    });
    let retry_connection = ctx.attempts.tries > 1;
    let connect_timeout = match (pool.connect_timeout, timeout) {
        (Some(c), Some(t)) => Some(c.min(t)),
        (c, t) => c.or(t),
    };
    let opts = upstream::TryOptions {
        slot: tag,
        fresh: retry_connection,
        h2c: backend.protocol == AppProtocol::H2c,
        idle_timeout: pool.idle_timeout,
        connect_timeout,
    };
    let (mut peer, link) = upstream::peer(up, &proxy.ways, opts);
    ctx.link = link;
    if opts.h2c {
        peer.options.set_http_version(2, 2);
        peer.options.max_h2_streams = 100;
    }
    // Pingora pools a retry's connection under a one-off key (nobody asks for it again): let it go soon.
    // The direct path pools it with the others (`opts.fresh` only keeps the retry off the pool).
    peer.options.idle_timeout = if retry_connection {
        Some(RETRY_CONNECTION_IDLE)
    } else {
        pool.idle_timeout
    };
    peer.options.connection_timeout = connect_timeout;
    if let Some(t) = timeout {
        peer.options.total_connection_timeout = Some(t);
        // An upgraded connection (websocket) is long-lived by design: the try's timeout bounds its
        // connection set-up only, never the silences of the stream that follows.
        if !session.is_upgrade_req() {
            peer.options.read_timeout = Some(t);
            peer.options.write_timeout = Some(t);
        }
    }
    Ok(peer)
}

/// The try has its connection: it is no longer pending; `maxRequestsPerConnection` decides whether this is
/// the connection's last request (HTTP/1.1: sent with `Connection: close`).
pub(crate) fn on_connected(ctx: &mut RequestCtx, reused: bool, fd: i32) {
    ctx.pending_permit = None;
    let Some(chosen) = &ctx.chosen else { return };
    let backend = chosen.backend();
    let max = backend.policy.connection_pool.max_requests_per_connection;
    if max.is_none() || backend.protocol == AppProtocol::H2c {
        ctx.last_use_of_connection = false;
        return;
    }
    // The direct path counts its connections' requests itself; Pingora's own connections by descriptor.
    let nth = match ctx.link.as_ref().and_then(|l| l.connection_use()) {
        Some((_, nth)) => Some(nth),
        None => USES.record(fd, reused),
    };
    ctx.last_use_of_connection = last_use(nth, max);
}

/// Stage "rewrite": the caller's identity in `x-forwarded-client-cert` (never the client's value), header
/// modifiers and URL rewrites (rule, then backend), and `Connection: close` on a connection's last request.
pub(crate) fn rewrite_request(
    proxy: &WaypointProxy,
    session: &Session,
    req: &mut RequestHeader,
    ctx: &RequestCtx,
) -> Result<()> {
    match &ctx.conn {
        Some(conn) => req.insert_header("x-forwarded-client-cert", conn.xfcc(&proxy.identity))?,
        None => {
            req.remove_header("x-forwarded-client-cert");
        }
    }
    if ctx.last_use_of_connection {
        req.insert_header(http::header::CONNECTION, "close")?;
    }
    if let Some(a) = &ctx.authorized {
        super::authorize::apply_edits(a, req)?;
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

/// The response head arrived: outlier detection sees its status, and a status the route retries becomes an
/// error Pingora retries (`Err`).
pub(crate) fn on_status(
    proxy: &WaypointProxy,
    session: &Session,
    status: u16,
    ctx: &mut RequestCtx,
) -> Result<()> {
    record_outcome(ctx, Outcome::from_status(status));
    let Some(chosen) = &ctx.chosen else {
        return Ok(());
    };
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
        proxy.stats.count_retry(failure);
        let mut e = Error::explain(
            ErrorType::HTTPStatus(status),
            "retrying on the response status",
        );
        e.set_retry(true);
        return Err(e);
    }
    Ok(())
}

/// The try could not connect: retried when the route's conditions allow (any method: nothing was sent).
pub(crate) fn on_connect_failure(
    session: &Session,
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

/// The try failed after connecting: retried when nothing of the response was sent on, the failure is one of
/// the route's conditions, and the request can be replayed whole. A client that went away (Pingora reports its
/// close as the try's error) ends the request: nobody waits for a retry, and the destination is not to blame
/// (no outlier outcome).
pub(crate) fn on_proxy_error(
    proxy: &WaypointProxy,
    session: &Session,
    mut e: Box<Error>,
    ctx: &mut RequestCtx,
    client_reused: bool,
) -> Box<Error> {
    if classify(&e) == ProxyError::DownstreamGone {
        e.set_retry(false);
        return e;
    }
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
        proxy.stats.count_retry(failure);
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
