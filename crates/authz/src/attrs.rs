//! The attributes a request is judged on. Built by the data path from verified facts only: the source
//! principal and namespace from the HBONE peer certificate, the request principal from a verified JWT.

use std::net::IpAddr;

/// One request (L7) or connection (L4), as authorization sees it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The caller's SPIFFE identity without the scheme, as Istio writes principals:
    /// `cluster.local/ns/<ns>/sa/<sa>`. `None` for a plaintext (unauthenticated) caller.
    pub source_principal: Option<&'a str>,
    /// The caller's namespace, from the same certificate.
    pub source_namespace: Option<&'a str>,
    /// The address of the peer that connected (`source.ip`, `ipBlocks`).
    pub source_ip: IpAddr,
    /// The original client address (`remote.ip`, `remoteIpBlocks`); the waypoint trusts no
    /// `X-Forwarded-For`, so it equals `source_ip` there.
    pub remote_ip: IpAddr,
    /// The destination the caller asked for: the service VIP (waypoint) or pod IP (node tier), and its port.
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    /// The HTTP request; `None` at the node tier (L4 only).
    pub http: Option<Http<'a>>,
}

/// The L7 part of a [`Request`].
#[derive(Clone, Copy, Debug)]
pub struct Http<'a> {
    /// `:authority` / `Host` as sent (matching is case-insensitive, with and without the port).
    pub host: &'a str,
    pub method: &'a str,
    /// The path as received (query included); evaluation normalizes it and ignores the query.
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
    /// The verified JWT, when the request carried one that a RequestAuthentication accepted.
    pub auth: Option<&'a RequestAuth>,
}

/// A verified JWT's facts (`request.auth.*`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestAuth {
    /// `<iss>/<sub>`, Istio's request principal.
    pub principal: String,
    /// The `aud` claim (a string or a list), as a list.
    pub audiences: Vec<String>,
    /// The `azp` claim.
    pub presenter: Option<String>,
    /// All claims, for `request.auth.claims[a][b]` (nested objects; string or list-of-string values).
    pub claims: serde_json::Value,
}
