//! Header helpers of the proxy stages: request validation (framing a proxy must not pass on), the request's
//! host and port, the `x-forwarded-client-cert` value, and header modifiers applied to Pingora's headers.

use mesh::identity::Identity;
use pingora::http::{RequestHeader, ResponseHeader};
use waypoint_filters::HeaderModifier;

use crate::error::ProxyError;

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

/// The request's host and explicit port (from `Host`, else the URI authority).
pub(crate) fn host_and_port(req: &RequestHeader) -> (&str, Option<u16>) {
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

/// The `x-forwarded-client-cert` value naming the verified caller (formatted once per connection:
/// [`crate::downstream::ConnInfo::xfcc`]).
pub fn xfcc(by: &Identity, caller: &Identity) -> String {
    format!("By={by};URI={caller}")
}

/// Pingora's request and response headers, modified through their own methods (which keep the HTTP/1
/// header-case map in step).
pub(crate) trait Headers {
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
pub(crate) fn modify(m: &HeaderModifier, h: &mut impl Headers) {
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

/// Stage "normalize": the path authorization, routing and the application all see, normalized as Istio has
/// Envoy do it (`normalize_path`, `merge_slashes`): dot segments resolved, slashes merged, percent-encoded
/// unreserved characters decoded, `%2F`/`%5C` kept escaped ([`authz::path`]). A path that cannot be normalized
/// (`%00`, a bad escape) is refused with 400. Paths not starting with `/` (`*`) are left alone.
pub(crate) fn normalize_path(req: &mut RequestHeader) -> Result<(), ProxyError> {
    let Some(pq) = req.uri.path_and_query() else {
        return Ok(());
    };
    if !pq.path().starts_with('/') {
        return Ok(());
    }
    let normalized = match authz::path::normalize(pq.path()) {
        Ok(std::borrow::Cow::Borrowed(_)) => return Ok(()),
        Ok(std::borrow::Cow::Owned(p)) => p,
        Err(_) => return Err(ProxyError::BadRequest),
    };
    let new = match pq.query() {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized,
    };
    let mut parts = req.uri.clone().into_parts();
    parts.path_and_query = Some(new.parse().map_err(|_| ProxyError::BadRequest)?);
    let uri = http::Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest)?;
    req.set_uri(uri);
    Ok(())
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
