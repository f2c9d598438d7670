//! The request stages before forwarding, as plain functions the hooks call: route ([`decide`]), admit
//! ([`admit`]: the destination's `http2MaxRequests`), mirror ([`start_mirrors`], [`flush_mirrors`]), and the
//! outlier-detection observation of a try ([`record_outcome`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::proxy::Session;

use super::RequestCtx;
use crate::downstream::ConnInfo;
use crate::error::ProxyError;
use crate::mirror::{self, Mirrors};
use crate::resilience::breaker::Permit;
use crate::resilience::outlier::Outcome;
use crate::route;
use crate::routes::compile::{AppProtocol, RouteTable, Rule};
use crate::routes::matching::RequestView;
use crate::snapshot::{Backend, Snapshot, Upstream};

/// The rule and backend chosen for a request.
pub(crate) struct Chosen {
    pub table: Arc<RouteTable>,
    pub rule: usize,
    pub backend: usize,
    /// The `PathPrefix` that matched, for `ReplacePrefixMatch` rewrites.
    pub matched_prefix: Option<String>,
}

impl Chosen {
    pub fn rule(&self) -> &Rule {
        &self.table.rules[self.rule]
    }
    pub fn backend(&self) -> &Backend {
        &self.rule().backends[self.backend]
    }
}

/// Stage "route": the service, rule and backend for this request.
pub(crate) fn decide(
    snapshot: &Snapshot,
    conn: &ConnInfo,
    req: &RequestHeader,
) -> Result<Chosen, ProxyError> {
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

/// Stage "admit": one unit of the destination's `http2MaxRequests`, held for the whole request.
pub(crate) fn admit(chosen: &Chosen) -> Result<Permit, ProxyError> {
    let backend = chosen.backend();
    backend
        .breaker
        .try_request(&backend.policy.connection_pool)
        .map_err(ProxyError::Overflow)
}

/// Stage "observe" for outlier detection: the current try's outcome, on its endpoint.
/// An ejection it causes is counted on the request (and in the proxy's stats when the request ends).
pub(crate) fn record_outcome(ctx: &mut RequestCtx, outcome: Outcome) {
    let (Some(chosen), Some((_, health))) = (&ctx.chosen, &ctx.current) else {
        return;
    };
    let backend = chosen.backend();
    let Some(policy) = &backend.policy.outlier else {
        return;
    };
    let ejected = backend.health.record(
        health,
        outcome,
        policy,
        backend.endpoints.len(),
        Instant::now(),
    );
    ctx.ejections += u32::from(ejected);
}

/// Mirror copies waiting for the request body.
pub(crate) struct PendingMirrors {
    copy: mirror::Copy,
    targets: Vec<(Upstream, AppProtocol)>,
    body: BytesMut,
    too_big: bool,
}

/// Picks the rule's mirrors for this request; sends them now when the request has no body.
pub(crate) fn start_mirrors(
    mirrors: &Mirrors,
    session: &mut Session,
    chosen: &Chosen,
) -> Option<PendingMirrors> {
    let rule_mirrors = &chosen.rule().filters.mirrors;
    if rule_mirrors.is_empty() {
        return None;
    }
    let targets: Vec<_> = rule_mirrors
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
        flush_mirrors(mirrors, pending);
        return None;
    }
    Some(pending)
}

/// Adds a chunk of the request body to the pending copies; sends them at the end of the body.
pub(crate) fn mirror_body(
    mirrors: &Mirrors,
    pending: &mut Option<PendingMirrors>,
    body: Option<&Bytes>,
    end_of_stream: bool,
) {
    let Some(p) = pending.as_mut() else { return };
    if let Some(b) = body {
        if p.body.len() + b.len() > mirror::MAX_BODY {
            p.too_big = true;
        } else if !p.too_big {
            p.body.extend_from_slice(b);
        }
    }
    if end_of_stream {
        if let Some(p) = pending.take() {
            flush_mirrors(mirrors, p);
        }
    }
}

/// Sends the copies (or counts them dropped when the body outgrew [`mirror::MAX_BODY`]).
fn flush_mirrors(mirrors: &Mirrors, p: PendingMirrors) {
    if p.too_big {
        mirrors
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
        mirrors.send(up, protocol, copy.clone());
    }
}

/// The destination's answer has been read to its end: the request no longer counts against the circuit breaker
/// or LEAST_REQUEST, before its last bytes are written to the caller (else a caller sending its next request on
/// the answer would find the slot still held). The connection slot stays until Pingora lets go of the connection.
/// A direct-path connection may go back to its pool ([`crate::upstream::direct`]).
pub(crate) fn response_complete(ctx: &mut RequestCtx) {
    if let Some(link) = &ctx.link {
        link.complete();
    }
    ctx.request_permit = None;
    ctx.retry_permit = None;
    ctx.pending_permit = None;
    ctx.in_flight = None;
}
