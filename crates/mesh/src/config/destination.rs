//! Istio `DestinationRule` (`networking.istio.io` `v1`, `v1beta1`, `v1alpha3`): the `trafficPolicy` of a
//! destination service, read with hand-written serde types (no crate carries them) and validated as Istio's
//! webhook would.
//!
//! Read: `spec.host` (`reviews`, `reviews.ns`, `reviews.ns.svc[.cluster.local]`, resolved relative to the rule's
//! namespace), `spec.trafficPolicy.connectionPool` (`tcp.maxConnections`, `tcp.connectTimeout`,
//! `http.http1MaxPendingRequests`, `http.http2MaxRequests`, `http.maxRequestsPerConnection`, `http.maxRetries`,
//! `http.idleTimeout`), `outlierDetection` (`consecutive5xxErrors`, `consecutiveGatewayErrors`, `interval`,
//! `baseEjectionTime`, `maxEjectionPercent`), `loadBalancer` (`simple`: `ROUND_ROBIN`, `LEAST_REQUEST`,
//! `LEAST_CONN` (an alias of `LEAST_REQUEST`), `RANDOM`, `PASSTHROUGH`, `UNSPECIFIED`; or `consistentHash` on
//! one of `httpHeaderName`, `httpCookie {name, path, ttl}`, `httpQueryParameterName`, `useSourceIp`), and
//! `portLevelSettings` (per Service port: each of `connectionPool`, `outlierDetection`, `loadBalancer` given
//! there replaces the top-level one whole, as Istio merges them).
//!
//! Ignored: `exportTo` (a rule applies to every caller of its host), `subsets` (no route here selects a
//! subset), `workloadSelector`, `tls`, `tunnel`, `proxyProtocol`, the load balancer's `localityLbSetting`,
//! `warmup*`, the ring/maglev sizes, and the other Istio fields not listed above. A wildcard or non-Service
//! host is kept but applies to no Service.
//!
//! Durations are Istio (Go) duration strings: `1h`, `1m`, `1s`, `500ms`, `1.5s`, `1h30m`.
//! Several rules for one Service: the one in the Service's namespace wins, then the oldest
//! (`metadata.creationTimestamp`), then the first read; the others are ignored with a warning.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};

use super::parse::Ctx;
use super::{split_hostname, ConfigError, Sourced};

/// A `DestinationRule`, validated, with the Service its host names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationRule {
    pub name: String,
    pub namespace: String,
    /// `metadata.creationTimestamp` as written (RFC 3339), for precedence between rules of one host.
    pub created: Option<String>,
    /// The Service `spec.host` names, as `(namespace, name)`; `None` for a wildcard or non-Service host.
    pub service: Option<(String, String)>,
    pub spec: DestinationRuleSpec,
}

impl DestinationRule {
    /// The traffic policy for Service port `port`: the top-level one with the fields a matching
    /// `portLevelSettings` entry gives replaced whole. `None` when the rule has no `trafficPolicy`.
    pub fn policy_for_port(&self, port: u16) -> Option<PortPolicy> {
        let top = self.spec.traffic_policy.as_ref()?;
        let mut out = PortPolicy {
            connection_pool: top.connection_pool.clone(),
            outlier_detection: top.outlier_detection.clone(),
            load_balancer: top.load_balancer.clone(),
        };
        let over = top
            .port_level_settings
            .iter()
            .find(|p| p.port.as_ref().is_some_and(|s| s.number == u32::from(port)));
        if let Some(p) = over {
            if p.connection_pool.is_some() {
                out.connection_pool = p.connection_pool.clone();
            }
            if p.outlier_detection.is_some() {
                out.outlier_detection = p.outlier_detection.clone();
            }
            if p.load_balancer.is_some() {
                out.load_balancer = p.load_balancer.clone();
            }
        }
        Some(out)
    }
}

/// The effective settings for one port (see [`DestinationRule::policy_for_port`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortPolicy {
    pub connection_pool: Option<ConnectionPoolSpec>,
    pub outlier_detection: Option<OutlierDetectionSpec>,
    pub load_balancer: Option<LoadBalancerSpec>,
}

/// `spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    #[serde(default)]
    pub host: String,
    pub traffic_policy: Option<TrafficPolicySpec>,
}

/// `spec.trafficPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    pub connection_pool: Option<ConnectionPoolSpec>,
    pub outlier_detection: Option<OutlierDetectionSpec>,
    pub load_balancer: Option<LoadBalancerSpec>,
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicySpec>,
}

/// `portLevelSettings[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicySpec {
    pub port: Option<PortSelector>,
    pub connection_pool: Option<ConnectionPoolSpec>,
    pub outlier_detection: Option<OutlierDetectionSpec>,
    pub load_balancer: Option<LoadBalancerSpec>,
}

/// `port: {number}`: a Service port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct PortSelector {
    pub number: u32,
}

/// `connectionPool`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ConnectionPoolSpec {
    pub tcp: Option<TcpSettings>,
    pub http: Option<HttpSettings>,
}

/// `connectionPool.tcp`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettings {
    pub max_connections: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    pub connect_timeout: Option<Duration>,
}

/// `connectionPool.http`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct HttpSettings {
    #[serde(rename = "http1MaxPendingRequests")]
    pub http1_max_pending_requests: Option<u32>,
    #[serde(rename = "http2MaxRequests")]
    pub http2_max_requests: Option<u32>,
    #[serde(rename = "maxRequestsPerConnection")]
    pub max_requests_per_connection: Option<u32>,
    #[serde(rename = "maxRetries")]
    pub max_retries: Option<u32>,
    #[serde(rename = "idleTimeout", default, deserialize_with = "duration")]
    pub idle_timeout: Option<Duration>,
}

/// `outlierDetection`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct OutlierDetectionSpec {
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(rename = "consecutiveGatewayErrors")]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    pub interval: Option<Duration>,
    #[serde(rename = "baseEjectionTime", default, deserialize_with = "duration")]
    pub base_ejection_time: Option<Duration>,
    #[serde(rename = "maxEjectionPercent")]
    pub max_ejection_percent: Option<u32>,
}

/// `loadBalancer`: `simple` or `consistentHash` (not both).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSpec {
    pub simple: Option<SimpleLb>,
    pub consistent_hash: Option<ConsistentHashSpec>,
}

/// `loadBalancer.simple`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum SimpleLb {
    #[serde(rename = "UNSPECIFIED")]
    Unspecified,
    #[serde(rename = "ROUND_ROBIN")]
    RoundRobin,
    /// `LEAST_REQUEST`, and the deprecated `LEAST_CONN`.
    #[serde(rename = "LEAST_REQUEST", alias = "LEAST_CONN")]
    LeastRequest,
    #[serde(rename = "RANDOM")]
    Random,
    #[serde(rename = "PASSTHROUGH")]
    Passthrough,
}

/// `loadBalancer.consistentHash`: exactly one key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHashSpec {
    pub http_header_name: Option<String>,
    pub http_cookie: Option<HttpCookieSpec>,
    #[serde(default)]
    pub use_source_ip: bool,
    pub http_query_parameter_name: Option<String>,
}

/// `consistentHash.httpCookie`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct HttpCookieSpec {
    #[serde(default)]
    pub name: String,
    pub path: Option<String>,
    /// When set, the proxy sets the cookie on a request without one (`0s`: a session cookie).
    #[serde(default, deserialize_with = "duration")]
    pub ttl: Option<Duration>,
}

/// The object as read: metadata and spec.
#[derive(Deserialize)]
pub(super) struct Raw {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: DestinationRuleSpec,
}

/// Validates a parsed `DestinationRule` in `namespace` and resolves its host.
pub(super) fn destination_rule(
    ctx: &Ctx<'_>,
    namespace: String,
    name: String,
    raw: Raw,
) -> Result<Sourced<DestinationRule>, ConfigError> {
    let spec = raw.spec;
    let host = spec.host.trim();
    if host.is_empty() {
        return Err(ctx.err("spec.host", "spec.host is required"));
    }
    let service = resolve_host(host, &namespace);
    if service.is_none() {
        tracing::warn!(file = %ctx.file.display(), object = %ctx.object, host,
            "DestinationRule host is not a Service hostname (wildcards and external hosts are not supported): it applies to nothing");
    }
    if let Some(tp) = &spec.traffic_policy {
        let at = "spec.trafficPolicy";
        check_settings(
            ctx,
            at,
            tp.connection_pool.as_ref(),
            tp.outlier_detection.as_ref(),
            tp.load_balancer.as_ref(),
        )?;
        let mut seen = Vec::new();
        for (i, p) in tp.port_level_settings.iter().enumerate() {
            let at = format!("{at}.portLevelSettings[{i}]");
            let Some(number) = p.port.as_ref().map(|p| p.number) else {
                return Err(ctx.err(&format!("{at}.port.number"), "port.number is required"));
            };
            if !(1..=65535).contains(&number) {
                return Err(ctx.err(
                    &format!("{at}.port.number"),
                    format!("port {number} is out of range 1-65535"),
                ));
            }
            if seen.contains(&number) {
                return Err(ctx.err(
                    &format!("{at}.port.number"),
                    format!("port {number} already has portLevelSettings"),
                ));
            }
            seen.push(number);
            check_settings(
                ctx,
                &at,
                p.connection_pool.as_ref(),
                p.outlier_detection.as_ref(),
                p.load_balancer.as_ref(),
            )?;
        }
    }
    Ok(Sourced {
        file: ctx.file.to_path_buf(),
        object: DestinationRule {
            name,
            namespace,
            created: raw.metadata.creation_timestamp.map(|t| t.0.to_string()),
            service,
            spec,
        },
    })
}

/// `reviews` → `(ns, reviews)` in the rule's namespace `ns`; `reviews.other[.svc[.cluster.local]]` →
/// `(other, reviews)`; wildcards and other hosts → `None`.
fn resolve_host(host: &str, namespace: &str) -> Option<(String, String)> {
    if host.contains('*') {
        return None;
    }
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    if !host.contains('.') {
        return Some((namespace.to_string(), host.to_string()));
    }
    let (name, ns) = split_hostname(host)?;
    Some((ns.to_string(), name.to_string()))
}

fn check_settings(
    ctx: &Ctx<'_>,
    at: &str,
    pool: Option<&ConnectionPoolSpec>,
    outlier: Option<&OutlierDetectionSpec>,
    lb: Option<&LoadBalancerSpec>,
) -> Result<(), ConfigError> {
    let at_least_1ms = |field: String, d: Option<Duration>| match d {
        Some(d) if d < Duration::from_millis(1) => {
            Err(ctx.err(&field, format!("duration {d:?} must be at least 1ms")))
        }
        _ => Ok(()),
    };
    if let Some(tcp) = pool.and_then(|p| p.tcp.as_ref()) {
        at_least_1ms(
            format!("{at}.connectionPool.tcp.connectTimeout"),
            tcp.connect_timeout,
        )?;
    }
    if let Some(o) = outlier {
        let at = format!("{at}.outlierDetection");
        at_least_1ms(format!("{at}.interval"), o.interval)?;
        at_least_1ms(format!("{at}.baseEjectionTime"), o.base_ejection_time)?;
        if let Some(p) = o.max_ejection_percent.filter(|p| *p > 100) {
            return Err(ctx.err(
                &format!("{at}.maxEjectionPercent"),
                format!("{p} is out of range 0-100"),
            ));
        }
    }
    let Some(lb) = lb else { return Ok(()) };
    let at = format!("{at}.loadBalancer");
    let Some(ch) = &lb.consistent_hash else {
        return Ok(());
    };
    if lb.simple.is_some() {
        return Err(ctx.err(&at, "only one of simple and consistentHash may be set"));
    }
    let at = format!("{at}.consistentHash");
    let keys = [
        ch.http_header_name.is_some(),
        ch.http_cookie.is_some(),
        ch.use_source_ip,
        ch.http_query_parameter_name.is_some(),
    ];
    if keys.iter().filter(|k| **k).count() != 1 {
        return Err(ctx.err(
            &at,
            "exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName must be set",
        ));
    }
    if let Some(h) = &ch.http_header_name {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            return Err(ctx.err(
                &format!("{at}.httpHeaderName"),
                format!("{h:?} is not a valid header name"),
            ));
        }
    }
    if let Some(q) = ch
        .http_query_parameter_name
        .as_ref()
        .filter(|q| q.is_empty())
    {
        return Err(ctx.err(
            &format!("{at}.httpQueryParameterName"),
            format!("{q:?}: a query parameter name is required"),
        ));
    }
    if let Some(c) = &ch.http_cookie {
        let valid = !c.name.is_empty()
            && c.name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
        if !valid {
            return Err(ctx.err(
                &format!("{at}.httpCookie.name"),
                format!("{:?} is not a valid cookie name", c.name),
            ));
        }
    }
    Ok(())
}

/// An optional Istio duration (see [`parse_duration`]).
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    parse_duration(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("duration {text:?}: {e}")))
}

/// An Istio (Go `time.ParseDuration`) duration: one or more `<number><unit>` with units `h`, `m`, `s`, `ms`,
/// `us`/`µs`, `ns`, decimal fractions allowed (`1.5s`, `1h30m`); `0` alone is zero. Not negative.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty".into());
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or("a unit (h, m, s, ms, us, ns) is missing")?;
        let (number, tail) = rest.split_at(digits);
        let value: f64 = number.parse().map_err(|_| {
            format!("{rest:?} is not <number><unit> (such as 1s, 500ms, 1m, 1h30m)")
        })?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(format!("unknown unit {unit:?} (h, m, s, ms, us, ns)")),
        };
        total += value * scale;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|e| e.to_string())
}

/// Which of several rules for one Service applies (see the module doc): `true` when `a` beats `b`.
pub(super) fn precedes(
    a: &Sourced<DestinationRule>,
    b: &Sourced<DestinationRule>,
    service_namespace: &str,
) -> bool {
    let rank = |r: &Sourced<DestinationRule>| {
        (
            r.object.namespace != service_namespace,
            r.object.created.is_none(),
            r.object.created.clone(),
        )
    };
    rank(a) < rank(b)
}

/// For messages: `DestinationRule ns/name (file)`.
pub(super) fn describe(r: &Sourced<DestinationRule>) -> String {
    format!(
        "DestinationRule {}/{} ({})",
        r.object.namespace,
        r.object.name,
        Path::new(&r.file).display()
    )
}
