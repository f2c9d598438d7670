//! The one record the proxy fills when a request ends, read by the metrics, the access log and the span.
//!
//! Fields are borrowed from the request context, so building a record allocates nothing. Empty strings and
//! `None` mean "not known" and print as Envoy does (`-` in the text log, `null` in JSON, `unknown` in labels).

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use super::labels::{Destination, Source};

/// What the proxy knows about one finished request.
#[derive(Clone, Debug)]
pub struct RequestRecord<'a> {
    /// Interned caller labels (one per downstream connection, see [`super::Telemetry::source`]).
    pub source: &'a Source,
    /// Interned destination labels (one per endpoint workload and service, see [`super::Telemetry::destination`]).
    pub destination: &'a Destination,
    /// When the first byte of the request arrived (`%START_TIME%`).
    pub start: SystemTime,
    /// From the first request byte to the last response byte (`%DURATION%`).
    pub duration: Duration,
    /// Time the upstream took to answer (`x-envoy-upstream-service-time`), when an upstream answered.
    pub upstream_service_time: Option<Duration>,
    pub method: &'a str,
    /// The path as the client sent it (`x-envoy-original-path` semantics: before any rewrite).
    pub path: &'a str,
    /// Downstream HTTP version (`%PROTOCOL%`).
    pub version: http::Version,
    /// `http` or `grpc` (the `request_protocol` label).
    pub protocol: RequestProtocol,
    /// Response status sent downstream; 0 when none was sent (downstream went away).
    pub status: u16,
    /// `grpc-status` of the response (trailer or header), when gRPC.
    pub grpc_status: Option<u8>,
    pub flags: ResponseFlags,
    /// `%RESPONSE_CODE_DETAILS%`, e.g. `via_upstream`, `route_not_found`.
    pub response_code_details: &'a str,
    pub connection_termination_details: &'a str,
    pub upstream_transport_failure_reason: &'a str,
    /// Request body bytes received from downstream.
    pub bytes_received: u64,
    /// Response body bytes sent downstream.
    pub bytes_sent: u64,
    pub x_forwarded_for: &'a str,
    pub user_agent: &'a str,
    pub request_id: &'a str,
    pub authority: &'a str,
    /// The endpoint the last try went to.
    pub upstream_host: Option<SocketAddr>,
    /// Envoy-style cluster name, e.g. `outbound|9080|v1|reviews.default.svc.cluster.local`.
    pub upstream_cluster: &'a str,
    pub upstream_local_address: Option<SocketAddr>,
    pub downstream_local_address: Option<SocketAddr>,
    pub downstream_remote_address: Option<SocketAddr>,
    /// SNI of the downstream TLS connection.
    pub requested_server_name: &'a str,
    pub route_name: &'a str,
    /// The authorization policy that decided (`ns/name`), when one did.
    pub authz_policy: &'a str,
    /// Upstream tries (1 = no retry; 0 = never sent upstream).
    pub tries: u32,
    pub security_policy: SecurityPolicy,
}

impl<'a> RequestRecord<'a> {
    /// A record with everything unknown but the peers and the start time; set the rest field by field.
    pub fn new(source: &'a Source, destination: &'a Destination, start: SystemTime) -> Self {
        RequestRecord {
            source,
            destination,
            start,
            duration: Duration::ZERO,
            upstream_service_time: None,
            method: "",
            path: "",
            version: http::Version::HTTP_11,
            protocol: RequestProtocol::Http,
            status: 0,
            grpc_status: None,
            flags: ResponseFlags::NONE,
            response_code_details: "",
            connection_termination_details: "",
            upstream_transport_failure_reason: "",
            bytes_received: 0,
            bytes_sent: 0,
            x_forwarded_for: "",
            user_agent: "",
            request_id: "",
            authority: "",
            upstream_host: None,
            upstream_cluster: "",
            upstream_local_address: None,
            downstream_local_address: None,
            downstream_remote_address: None,
            requested_server_name: "",
            route_name: "",
            authz_policy: "",
            tries: 0,
            security_policy: SecurityPolicy::MutualTls,
        }
    }

    /// Retries made (tries after the first).
    pub fn retries(&self) -> u32 {
        self.tries.saturating_sub(1)
    }
}

/// The `request_protocol` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestProtocol {
    Http,
    Grpc,
    Tcp,
}

impl RequestProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestProtocol::Http => "http",
            RequestProtocol::Grpc => "grpc",
            RequestProtocol::Tcp => "tcp",
        }
    }
}

/// The `connection_security_policy` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SecurityPolicy {
    MutualTls,
    None,
    Unknown,
}

impl SecurityPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::MutualTls => "mutual_tls",
            SecurityPolicy::None => "none",
            SecurityPolicy::Unknown => "unknown",
        }
    }
}

/// Envoy's response flags as a bit set: `Copy`, so it is part of a metric series key without allocating.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResponseFlags(u32);

/// Envoy's short names, in Envoy's order (which is also the order they print in).
const FLAG_NAMES: [&str; 24] = [
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "DT", "UPE", "NC", "OM",
];

impl ResponseFlags {
    pub const NONE: ResponseFlags = ResponseFlags(0);

    /// The flag with this short name (`"UF"`), if Envoy defines it.
    pub fn from_name(name: &str) -> Option<ResponseFlags> {
        FLAG_NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| ResponseFlags(1 << i))
    }

    /// Parses Envoy's rendering: `-`, `UF` or `UF,URX`. Unknown names are an error naming them.
    pub fn parse(s: &str) -> Result<ResponseFlags, UnknownFlag> {
        let s = s.trim();
        if s.is_empty() || s == "-" {
            return Ok(ResponseFlags::NONE);
        }
        s.split(',').try_fold(ResponseFlags::NONE, |acc, name| {
            let name = name.trim();
            ResponseFlags::from_name(name)
                .map(|f| acc | f)
                .ok_or_else(|| UnknownFlag(name.to_string()))
        })
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, other: ResponseFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn insert(&mut self, other: ResponseFlags) {
        self.0 |= other.0;
    }

    /// Adds the flag named `name`; a name Envoy does not define is ignored (the caller's flags are static).
    pub fn insert_name(&mut self, name: &str) {
        if let Ok(f) = ResponseFlags::parse(name) {
            self.insert(f);
        }
    }

    pub(crate) fn bits(self) -> u32 {
        self.0
    }
}

impl std::ops::BitOr for ResponseFlags {
    type Output = ResponseFlags;
    fn bitor(self, rhs: ResponseFlags) -> ResponseFlags {
        ResponseFlags(self.0 | rhs.0)
    }
}

impl fmt::Display for ResponseFlags {
    /// `-` when empty, else the names joined by `,` (Envoy's `%RESPONSE_FLAGS%`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (i, name) in FLAG_NAMES.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// A response flag name Envoy does not define.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown response flag {0:?}")]
pub struct UnknownFlag(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_print_as_envoy() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("-", Ok("-")),
            ("", Ok("-")),
            ("UF", Ok("UF")),
            ("URX,UF", Ok("UF,URX")),
            ("UO, NR", Ok("UO,NR")),
            ("DPE", Ok("DPE")),
            ("XX", Err("XX")),
            ("UF,", Err("")),
        ];
        for (input, want) in cases {
            let got = ResponseFlags::parse(input)
                .map(|f| f.to_string())
                .map_err(|e| e.0);
            assert_eq!(
                got.as_deref().map_err(|e| e.as_str()),
                *want,
                "input {input:?}"
            );
        }
    }
}
