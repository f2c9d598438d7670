//! The error boundary: where a [`ProxyError`] becomes the client's response (status, `x-waypoint-error` with
//! Envoy-style response flags, a one-line body), and the other answers the waypoint writes itself (redirects).

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, Result};
use waypoint_filters::RequestParts;

use super::headers::{host_and_port, modify};
use super::stages::Chosen;
use super::RequestCtx;
use crate::error::ProxyError;

/// Records `e` as the request's error and hands Pingora its form.
pub(crate) fn fail(ctx: &mut RequestCtx, e: ProxyError) -> Box<Error> {
    ctx.error = Some(e.clone());
    e.into_pingora()
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
    // Envoy's RBAC denial body has no trailing newline; clients compare it verbatim.
    let body = if *err == ProxyError::Forbidden {
        Bytes::from_static(b"RBAC: access denied")
    } else {
        Bytes::from(format!("{err}\n"))
    };
    let Ok(mut resp) = ResponseHeader::build(status, Some(3)) else {
        return status;
    };
    if flags != "-" {
        let _ = resp.insert_header("x-waypoint-error", flags);
    }
    if *err == ProxyError::Unauthenticated {
        let _ = resp.insert_header("www-authenticate", authz::jwt::JwtError::WWW_AUTHENTICATE);
    }
    let _ = resp.insert_header("content-type", "text/plain");
    let _ = resp.insert_header("content-length", body.len().to_string());
    if let Err(e) = session.write_error_response(resp, body).await {
        tracing::debug!("writing error response: {e}");
    }
    status
}

/// Answers an external authorizer's denial as it asked (status, headers, body), flagged `UAEX`.
pub(crate) async fn respond_custom(
    session: &mut Session,
    ctx: &mut RequestCtx,
    d: &authz::ext::Denied,
) {
    ctx.flags = Some("UAEX".to_string());
    let Ok(mut resp) = ResponseHeader::build(d.status.as_u16(), Some(d.headers.len() + 2)) else {
        return;
    };
    for (name, value) in &d.headers {
        let _ = resp.append_header(name.clone(), value.clone());
    }
    let _ = resp.insert_header("content-length", d.body.len().to_string());
    let body = Bytes::from(d.body.clone());
    if let Err(e) = session.write_error_response(resp, body).await {
        tracing::debug!("writing the authorizer's denial: {e}");
    }
}

/// Answers `err` before any upstream was tried (route, admission): records its flag for the log line.
pub(crate) async fn reject(session: &mut Session, ctx: &mut RequestCtx, err: &ProxyError) {
    ctx.flags = Some(err.flag().to_string());
    ctx.error = Some(err.clone());
    respond_error(session, err).await;
}

/// Answers a `RequestRedirect`; `Ok(false)` when the rule has none.
pub(crate) async fn respond_redirect(session: &mut Session, chosen: &Chosen) -> Result<bool> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::breaker::Overflow;

    #[test]
    fn response_flags() {
        for (err, tries, want) in [
            (ProxyError::ConnectFailure, 1, "UF"),
            (ProxyError::ConnectFailure, 3, "UF,URX"),
            (ProxyError::ConnectionTermination, 2, "UC,URX"),
            (ProxyError::Timeout, 2, "UT,URX"),
            (ProxyError::NoRoute, 2, "NR"),
            (ProxyError::BadRequest, 1, "DPE"),
            (ProxyError::Overflow(Overflow::Connections), 1, "UO"),
        ] {
            assert_eq!(flags_of(&err, tries), want, "{err:?} after {tries} tries");
        }
    }
}
