//! The `CheckRequest` an ext_authz server receives, built from a request's verified attributes
//! ([`crate::attrs::Request`]) the way Envoy fills it, so policies written for Envoy read the same fields:
//!
//! | field | from |
//! |---|---|
//! | `source.principal` | the HBONE peer identity, as a SPIFFE URI (`spiffe://cluster.local/ns/x/sa/y`) |
//! | `source.address` | `source_ip` and [`CheckExtra::source_port`] |
//! | `destination.address`, `.principal` | `destination_ip:destination_port`, [`CheckExtra::destination_principal`] |
//! | `request.time` | [`CheckExtra::time`] |
//! | `request.http.method`, `.host`, `.path` | as received (`path` with its query, not normalized) |
//! | `request.http.headers` | every header, lower-case, repeats joined with `,`, plus `:authority`, `:method`, `:path`, `:scheme` |
//! | `request.http.id` | [`CheckExtra::request_id`], else the `x-request-id` header |
//! | `request.http.scheme`, `.protocol`, `.size` | [`CheckExtra`]; `size` from `content-length`, else -1 |
//!
//! The body is not sent (`includeRequestBodyInCheck` is refused by [`super::config`]).

use crate::attrs;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};
use waypoint_proto::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use waypoint_proto::envoy::service::auth::v3::{attribute_context, AttributeContext, CheckRequest};
use waypoint_proto::prost_types::Timestamp;

/// What the data path knows beyond [`attrs::Request`].
#[derive(Clone, Copy, Debug)]
pub struct CheckExtra<'a> {
    /// The caller's port (0 when unknown).
    pub source_port: u16,
    /// The destination's identity without the scheme (`cluster.local/ns/x/sa/y`): the waypoint's own.
    pub destination_principal: Option<&'a str>,
    /// The request id; when `None`, the `x-request-id` header is used.
    pub request_id: Option<&'a str>,
    /// `http` or `https` (as the client spoke to the service).
    pub scheme: &'a str,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'a str,
    /// When the request arrived; `None` leaves `request.time` unset.
    pub time: Option<SystemTime>,
}

impl Default for CheckExtra<'_> {
    fn default() -> Self {
        CheckExtra {
            source_port: 0,
            destination_principal: None,
            request_id: None,
            scheme: "http",
            protocol: "HTTP/1.1",
            time: None,
        }
    }
}

/// Builds the `CheckRequest` for one request. A connection without HTTP (`req.http == None`) gets peers only.
pub fn build_check_request(req: &attrs::Request<'_>, extra: &CheckExtra<'_>) -> CheckRequest {
    let source = attribute_context::Peer {
        address: Some(socket(req.source_ip, extra.source_port)),
        principal: req.source_principal.map(spiffe).unwrap_or_default(),
        ..Default::default()
    };
    let destination = attribute_context::Peer {
        address: Some(socket(req.destination_ip, req.destination_port)),
        principal: extra.destination_principal.map(spiffe).unwrap_or_default(),
        ..Default::default()
    };
    let http = req.http.map(|h| http_request(&h, extra));
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(source),
            destination: Some(destination),
            request: Some(attribute_context::Request {
                time: extra.time.map(timestamp),
                http,
            }),
            context_extensions: HashMap::new(),
        }),
    }
}

fn http_request(h: &attrs::Http<'_>, extra: &CheckExtra<'_>) -> attribute_context::HttpRequest {
    let mut headers: HashMap<String, String> = HashMap::with_capacity(h.headers.keys_len() + 4);
    for (name, value) in h.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        match headers.get_mut(name.as_str()) {
            Some(joined) => {
                joined.push(',');
                joined.push_str(&value);
            }
            None => {
                headers.insert(name.as_str().to_owned(), value.into_owned());
            }
        }
    }
    for (pseudo, value) in [
        (":authority", h.host),
        (":method", h.method),
        (":path", h.path),
        (":scheme", extra.scheme),
    ] {
        headers.insert(pseudo.to_owned(), value.to_owned());
    }
    let id = extra
        .request_id
        .or_else(|| h.headers.get("x-request-id").and_then(|v| v.to_str().ok()))
        .unwrap_or_default();
    let size = h
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
        .unwrap_or(-1);
    attribute_context::HttpRequest {
        id: id.to_owned(),
        method: h.method.to_owned(),
        headers,
        path: h.path.to_owned(),
        host: h.host.to_owned(),
        scheme: extra.scheme.to_owned(),
        size,
        protocol: extra.protocol.to_owned(),
        ..Default::default()
    }
}

fn spiffe(principal: &str) -> String {
    format!("spiffe://{principal}")
}

fn socket(ip: IpAddr, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port.into())),
            ..Default::default()
        })),
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr_of(p: &attribute_context::Peer) -> (String, u32) {
        match p.address.as_ref().and_then(|a| a.address.as_ref()) {
            Some(address::Address::SocketAddress(s)) => match s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(port)) => (s.address.clone(), port),
                _ => panic!("no port"),
            },
            None => panic!("no address"),
        }
    }

    #[test]
    fn carries_the_verified_attributes() {
        let mut headers = http::HeaderMap::new();
        headers.append("x-user", "alice".parse().unwrap());
        headers.append("accept", "text/html".parse().unwrap());
        headers.append("accept", "application/json".parse().unwrap());
        headers.append("x-request-id", "rid-1".parse().unwrap());
        headers.append("content-length", "12".parse().unwrap());
        headers.append("x-bin", http::HeaderValue::from_bytes(b"a\xffb").unwrap());
        let req = attrs::Request {
            source_principal: Some("cluster.local/ns/default/sa/productpage"),
            source_namespace: Some("default"),
            source_ip: "10.0.0.1".parse().unwrap(),
            remote_ip: "10.0.0.1".parse().unwrap(),
            destination_ip: "10.96.0.10".parse().unwrap(),
            destination_port: 9080,
            http: Some(attrs::Http {
                host: "reviews:9080",
                method: "POST",
                path: "/reviews/1?x=%2F",
                headers: &headers,
                auth: None,
            }),
        };
        let extra = CheckExtra {
            source_port: 40000,
            destination_principal: Some("cluster.local/ns/default/sa/waypoint"),
            protocol: "HTTP/2",
            time: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 7)),
            ..Default::default()
        };
        let attrs = build_check_request(&req, &extra).attributes.unwrap();
        let source = attrs.source.unwrap();
        assert_eq!(
            source.principal,
            "spiffe://cluster.local/ns/default/sa/productpage"
        );
        assert_eq!(addr_of(&source), ("10.0.0.1".into(), 40000));
        let dest = attrs.destination.unwrap();
        assert_eq!(
            dest.principal,
            "spiffe://cluster.local/ns/default/sa/waypoint"
        );
        assert_eq!(addr_of(&dest), ("10.96.0.10".into(), 9080));
        let r = attrs.request.unwrap();
        assert_eq!(
            r.time,
            Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 7
            })
        );
        let h = r.http.unwrap();
        assert_eq!(
            (h.method.as_str(), h.host.as_str(), h.path.as_str()),
            ("POST", "reviews:9080", "/reviews/1?x=%2F")
        );
        assert_eq!(
            (
                h.id.as_str(),
                h.scheme.as_str(),
                h.protocol.as_str(),
                h.size
            ),
            ("rid-1", "http", "HTTP/2", 12)
        );
        let header = |k: &str| h.headers.get(k).map(String::as_str);
        assert_eq!(header("x-user"), Some("alice"));
        assert_eq!(header("accept"), Some("text/html,application/json"));
        assert_eq!(header("x-bin"), Some("a\u{fffd}b"));
        assert_eq!(header(":authority"), Some("reviews:9080"));
        assert_eq!(header(":method"), Some("POST"));
        assert_eq!(header(":path"), Some("/reviews/1?x=%2F"));
        assert_eq!(header(":scheme"), Some("http"));
        assert_eq!(h.headers.len(), 9);
    }

    #[test]
    fn plaintext_caller_and_no_http() {
        let req = attrs::Request {
            source_principal: None,
            source_namespace: None,
            source_ip: "::1".parse().unwrap(),
            remote_ip: "::1".parse().unwrap(),
            destination_ip: "::2".parse().unwrap(),
            destination_port: 80,
            http: None,
        };
        let extra = CheckExtra {
            request_id: Some("given"),
            ..Default::default()
        };
        let attrs = build_check_request(&req, &extra).attributes.unwrap();
        assert_eq!(attrs.source.as_ref().unwrap().principal, "");
        assert_eq!(addr_of(attrs.source.as_ref().unwrap()), ("::1".into(), 0));
        assert_eq!(attrs.destination.as_ref().unwrap().principal, "");
        let r = attrs.request.unwrap();
        assert!(r.http.is_none() && r.time.is_none());
    }

    #[test]
    fn request_id_prefers_the_given_one() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-request-id", "from-header".parse().unwrap());
        let req = attrs::Request {
            source_principal: None,
            source_namespace: None,
            source_ip: "127.0.0.1".parse().unwrap(),
            remote_ip: "127.0.0.1".parse().unwrap(),
            destination_ip: "127.0.0.2".parse().unwrap(),
            destination_port: 80,
            http: Some(attrs::Http {
                host: "h",
                method: "GET",
                path: "/",
                headers: &headers,
                auth: None,
            }),
        };
        let id = |extra: CheckExtra<'_>| {
            build_check_request(&req, &extra)
                .attributes
                .unwrap()
                .request
                .unwrap()
                .http
                .unwrap()
                .id
        };
        assert_eq!(
            id(CheckExtra {
                request_id: Some("given"),
                ..Default::default()
            }),
            "given"
        );
        assert_eq!(id(CheckExtra::default()), "from-header");
        let size = build_check_request(&req, &CheckExtra::default())
            .attributes
            .unwrap()
            .request
            .unwrap()
            .http
            .unwrap()
            .size;
        assert_eq!(size, -1);
    }
}
