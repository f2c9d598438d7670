//! The ext_authz providers of a mesh config file, in Istio `MeshConfig` form:
//!
//! ```yaml
//! extensionProviders:
//! - name: opa
//!   envoyExtAuthzGrpc:
//!     service: opa.opa-system.svc.cluster.local   # or "opa-system/opa.opa-system.svc.cluster.local", or an IP
//!     port: 9191
//!     timeout: 0.5s        # default 200ms (Envoy's ext_authz default)
//!     failOpen: false      # default false: an unreachable authorizer denies
//!     statusOnError: "503" # default 403: the status of that denial
//! ```
//!
//! The file may also be the `istio` ConfigMap itself (the mesh config under `data.mesh`). Only
//! `extensionProviders` is read; the rest of a MeshConfig belongs to other parts. Inside an `envoyExtAuthzGrpc`
//! provider every field is checked: an unknown one, or one Istio knows that this waypoint does not implement
//! (`clearRouteCache`, `includeRequestBodyInCheck`), is refused with the provider and field named. Providers of
//! other kinds (tracing, access logs, `envoyExtAuthzHttp`) are listed in [`MeshConfig::other_providers`] so a
//! policy naming one can be reported as not enforced.

use serde_yaml::{Mapping, Value};
use std::net::IpAddr;
use std::time::Duration;

/// Envoy's ext_authz default per-check timeout, used when a provider sets no `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);
/// Envoy's default `status_on_error`: the status of a denial caused by an authorizer error.
pub const DEFAULT_STATUS_ON_ERROR: http::StatusCode = http::StatusCode::FORBIDDEN;

/// The ext_authz part of a mesh config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeshConfig {
    /// The `envoyExtAuthzGrpc` providers, in file order.
    pub providers: Vec<ProviderConfig>,
    /// Providers of other kinds, as `(name, kind)`: not ext_authz gRPC, so a CUSTOM policy cannot use them here.
    pub other_providers: Vec<(String, String)>,
}

/// One `envoyExtAuthzGrpc` provider.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderConfig {
    pub name: String,
    pub service: ServiceRef,
    pub port: u16,
    /// Per check, connection set-up included. [`DEFAULT_TIMEOUT`] when not set.
    pub timeout: Duration,
    /// On timeout or an unreachable authorizer: allow (`true`) or deny with `status_on_error` (`false`).
    pub fail_open: bool,
    pub status_on_error: http::StatusCode,
}

/// `service` as Istio writes it: `[<namespace>/]<hostname>`, where the host name may be an IP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceRef {
    pub namespace: Option<String>,
    pub host: String,
}

impl ServiceRef {
    /// The address when `host` is an IP literal (then no resolver is needed).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// Why a mesh config was refused; `at` names the provider and field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("mesh config is not valid YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("{at}: {reason}")]
    Invalid { at: String, reason: String },
}

fn invalid(at: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        at: at.into(),
        reason: reason.into(),
    }
}

/// Provider kinds Istio's MeshConfig defines besides `envoyExtAuthzGrpc`.
const OTHER_KINDS: &[&str] = &[
    "envoyExtAuthzHttp",
    "zipkin",
    "lightstep",
    "datadog",
    "stackdriver",
    "opencensus",
    "skywalking",
    "opentelemetry",
    "prometheus",
    "envoyFileAccessLog",
    "envoyHttpAls",
    "envoyTcpAls",
    "envoyOtelAls",
    "sds",
];

/// Parses a mesh config (or the `istio` ConfigMap holding one under `data.mesh`).
pub fn parse_mesh_config(yaml: &str) -> Result<MeshConfig, ConfigError> {
    let root: Value = serde_yaml::from_str(yaml)?;
    let root = match root {
        Value::Null => return Ok(MeshConfig::default()),
        Value::Mapping(m) => m,
        _ => return Err(invalid("mesh config", "expected a mapping")),
    };
    if root.get("kind").and_then(Value::as_str) == Some("ConfigMap") {
        let mesh = root
            .get("data")
            .and_then(|d| d.get("mesh"))
            .ok_or_else(|| invalid("ConfigMap", "no `data.mesh`"))?;
        let mesh = mesh
            .as_str()
            .ok_or_else(|| invalid("ConfigMap data.mesh", "expected a string"))?;
        return parse_mesh_config(mesh);
    }
    let mut out = MeshConfig::default();
    let Some(list) = root.get("extensionProviders") else {
        return Ok(out);
    };
    let list = match list {
        Value::Null => return Ok(out),
        Value::Sequence(s) => s,
        _ => return Err(invalid("extensionProviders", "expected a list")),
    };
    for (i, entry) in list.iter().enumerate() {
        let at = format!("extensionProviders[{i}]");
        let entry = entry
            .as_mapping()
            .ok_or_else(|| invalid(&at, "expected a mapping"))?;
        let name = match entry.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            _ => return Err(invalid(&at, "`name` is required (a non-empty string)")),
        };
        let at = format!("extensionProviders[{i}] `{name}`");
        let taken = out.providers.iter().any(|p| p.name == name)
            || out.other_providers.iter().any(|(n, _)| *n == name);
        if taken {
            return Err(invalid(at, "a provider of that name is already defined"));
        }
        let mut kinds = entry
            .iter()
            .filter_map(|(k, _)| k.as_str())
            .filter(|k| *k != "name");
        let kind = kinds
            .next()
            .ok_or_else(|| invalid(&at, "no provider kind (e.g. `envoyExtAuthzGrpc`)"))?;
        if let Some(second) = kinds.next() {
            return Err(invalid(
                at,
                format!("more than one provider kind: `{kind}` and `{second}`"),
            ));
        }
        if entry.keys().any(|k| k.as_str().is_none()) {
            return Err(invalid(at, "field names must be strings"));
        }
        if kind == "envoyExtAuthzGrpc" {
            let body = entry
                .get(kind)
                .and_then(Value::as_mapping)
                .ok_or_else(|| invalid(format!("{at}.{kind}"), "expected a mapping"))?;
            out.providers
                .push(parse_grpc(name, body, &format!("{at}.{kind}"))?);
        } else if OTHER_KINDS.contains(&kind) {
            out.other_providers.push((name, kind.to_owned()));
        } else {
            return Err(invalid(at, format!("unknown field `{kind}`")));
        }
    }
    Ok(out)
}

fn parse_grpc(name: String, body: &Mapping, at: &str) -> Result<ProviderConfig, ConfigError> {
    let mut service = None;
    let mut port = None;
    let mut timeout = DEFAULT_TIMEOUT;
    let mut fail_open = false;
    let mut status_on_error = DEFAULT_STATUS_ON_ERROR;
    for (key, value) in body {
        let key = key
            .as_str()
            .ok_or_else(|| invalid(at, "field names must be strings"))?;
        let field = format!("{at}.{key}");
        match key {
            "service" => service = Some(parse_service(value).map_err(|r| invalid(&field, r))?),
            "port" => port = Some(parse_port(value).map_err(|r| invalid(&field, r))?),
            "timeout" => {
                let s = value
                    .as_str()
                    .ok_or_else(|| invalid(&field, "expected a duration string like `0.5s`"))?;
                timeout = parse_duration(s).map_err(|r| invalid(&field, r))?;
            }
            "failOpen" => {
                fail_open = value
                    .as_bool()
                    .ok_or_else(|| invalid(&field, "expected true or false"))?
            }
            "statusOnError" => {
                status_on_error = parse_status(value).map_err(|r| invalid(&field, r))?
            }
            "clearRouteCache" | "includeRequestBodyInCheck" => {
                return Err(invalid(field, "not supported by this waypoint"));
            }
            other => return Err(invalid(at, format!("unknown field `{other}`"))),
        }
    }
    Ok(ProviderConfig {
        name,
        service: service.ok_or_else(|| invalid(at, "`service` is required"))?,
        port: port.ok_or_else(|| invalid(at, "`port` is required"))?,
        timeout,
        fail_open,
        status_on_error,
    })
}

fn parse_service(v: &Value) -> Result<ServiceRef, String> {
    let s = v
        .as_str()
        .ok_or("expected a string: `[<namespace>/]<hostname>`")?;
    let (namespace, host) = match s.split_once('/') {
        Some((ns, host)) => (Some(ns), host),
        None => (None, s),
    };
    if let Some(ns) = namespace {
        if ns.is_empty()
            || !ns
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!("`{ns}` is not a namespace name"));
        }
    }
    let host_ok = host.parse::<IpAddr>().is_ok()
        || (!host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }));
    if !host_ok {
        return Err(format!("`{host}` is neither a host name nor an IP address"));
    }
    Ok(ServiceRef {
        namespace: namespace.map(str::to_owned),
        host: host.to_ascii_lowercase(),
    })
}

/// A port as a number or a string of digits (proto3 JSON allows both), 1..=65535.
fn parse_port(v: &Value) -> Result<u16, String> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(n @ 1..=65535) => Ok(n as u16),
        _ => Err(format!("expected a port number 1-65535, got {}", show(v))),
    }
}

/// `statusOnError` is a string in Istio's API (`"503"`); a number is accepted too. 200..=599.
fn parse_status(v: &Value) -> Result<http::StatusCode, String> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(n @ 200..=599) => http::StatusCode::from_u16(n as u16).map_err(|e| e.to_string()),
        _ => Err(format!("expected an HTTP status 200-599, got {}", show(v))),
    }
}

fn show(v: &Value) -> String {
    serde_yaml::to_string(v).map_or_else(|_| "?".into(), |s| s.trim().to_owned())
}

/// A duration as Istio writes one (Go / protobuf JSON): a sequence of `<decimal><unit>` with units `h`, `m`, `s`,
/// `ms`, `us`/`µs`, `ns` — `0.5s`, `200ms`, `1m30s`. Must be positive and at most one hour.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration like `0.5s` or `200ms`");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let unit_len = rest[num_len..]
            .chars()
            .take_while(|c| c.is_alphabetic())
            .map(char::len_utf8)
            .sum::<usize>();
        if num_len == 0 || unit_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        let scale = match &rest[num_len..num_len + unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[num_len + unit_len..];
    }
    if total <= 0.0 || total > 3600.0 {
        return Err(format!("`{s}` must be more than 0 and at most 1h"));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(yaml: &str) -> Result<ProviderConfig, String> {
        let cfg = parse_mesh_config(yaml).map_err(|e| e.to_string())?;
        assert_eq!(cfg.providers.len(), 1, "{cfg:?}");
        Ok(cfg.providers.into_iter().next().unwrap())
    }

    fn grpc(fields: &str) -> Result<ProviderConfig, String> {
        one(&format!(
            "extensionProviders:\n- name: opa\n  envoyExtAuthzGrpc:\n{fields}"
        ))
    }

    #[test]
    fn defaults_and_full_form() {
        let p = grpc("    service: opa.opa-system.svc.cluster.local\n    port: 9191\n").unwrap();
        assert_eq!(
            p,
            ProviderConfig {
                name: "opa".into(),
                service: ServiceRef {
                    namespace: None,
                    host: "opa.opa-system.svc.cluster.local".into()
                },
                port: 9191,
                timeout: DEFAULT_TIMEOUT,
                fail_open: false,
                status_on_error: http::StatusCode::FORBIDDEN,
            }
        );
        let p = grpc(
            "    service: opa-system/OPA.opa-system.svc.cluster.local\n    port: \"9191\"\n    timeout: 1.5s\n    \
             failOpen: true\n    statusOnError: \"503\"\n",
        )
        .unwrap();
        assert_eq!(p.service.namespace.as_deref(), Some("opa-system"));
        assert_eq!(p.service.host, "opa.opa-system.svc.cluster.local");
        assert_eq!(
            p.service.to_string(),
            "opa-system/opa.opa-system.svc.cluster.local"
        );
        assert_eq!(p.port, 9191);
        assert_eq!(p.timeout, Duration::from_millis(1500));
        assert!(p.fail_open);
        assert_eq!(p.status_on_error, http::StatusCode::SERVICE_UNAVAILABLE);
        let p = grpc("    service: 10.0.0.7\n    port: 50051\n    statusOnError: 500\n").unwrap();
        assert_eq!(p.service.ip(), Some("10.0.0.7".parse().unwrap()));
        assert_eq!(p.status_on_error, http::StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn bad_fields_are_refused_by_name() {
        let cases: &[(&str, &str)] = &[
            (
                "    service: a\n    port: 1\n    tiemout: 1s\n",
                "`opa`.envoyExtAuthzGrpc: unknown field `tiemout`",
            ),
            (
                "    service: a\n    port: 0\n",
                "`opa`.envoyExtAuthzGrpc.port: expected a port number 1-65535, got 0",
            ),
            (
                "    service: a\n    port: 70000\n",
                "port: expected a port number",
            ),
            (
                "    service: a\n",
                "`opa`.envoyExtAuthzGrpc: `port` is required",
            ),
            ("    port: 1\n", "`service` is required"),
            (
                "    service: a b\n    port: 1\n",
                "`a b` is neither a host name nor an IP address",
            ),
            (
                "    service: /a\n    port: 1\n",
                "`` is not a namespace name",
            ),
            (
                "    service: a\n    port: 1\n    timeout: soon\n",
                "timeout: `soon` is not a duration",
            ),
            (
                "    service: a\n    port: 1\n    timeout: 0s\n",
                "must be more than 0",
            ),
            (
                "    service: a\n    port: 1\n    failOpen: maybe\n",
                "failOpen: expected true or false",
            ),
            (
                "    service: a\n    port: 1\n    statusOnError: \"99\"\n",
                "statusOnError: expected an HTTP status",
            ),
            (
                "    service: a\n    port: 1\n    statusOnError: 600\n",
                "statusOnError: expected an HTTP status",
            ),
            (
                "    service: a\n    port: 1\n    clearRouteCache: true\n",
                "clearRouteCache: not supported",
            ),
        ];
        for (fields, want) in cases {
            let err = grpc(fields).unwrap_err();
            assert!(err.contains(want), "{fields:?}: got {err:?}, want {want:?}");
        }
    }

    /// `Ok((ext_authz gRPC providers, other providers))` or a part of the error.
    type Shape = Result<(usize, usize), &'static str>;

    #[test]
    fn provider_list_shapes() {
        let cases: &[(&str, Shape)] = &[
            ("", Ok((0, 0))),
            ("meshMTLS: {minProtocolVersion: TLSV1_3}\n", Ok((0, 0))),
            ("extensionProviders:\n", Ok((0, 0))),
            (
                "extensionProviders:\n- name: z\n  zipkin: {service: z, port: 9411}\n- name: g\n  envoyExtAuthzGrpc: \
                 {service: g, port: 1}\n",
                Ok((1, 1)),
            ),
            ("extensionProviders: {}\n", Err("extensionProviders: expected a list")),
            ("extensionProviders:\n- envoyExtAuthzGrpc: {service: g, port: 1}\n", Err("`name` is required")),
            ("extensionProviders:\n- name: x\n", Err("`x`: no provider kind")),
            ("extensionProviders:\n- name: x\n  envoyExtAuthzGrpcc: {}\n", Err("`x`: unknown field `envoyExtAuthzGrpcc`")),
            (
                "extensionProviders:\n- name: x\n  zipkin: {}\n  envoyExtAuthzGrpc: {}\n",
                Err("more than one provider kind"),
            ),
            (
                "extensionProviders:\n- name: x\n  zipkin: {}\n- name: x\n  zipkin: {}\n",
                Err("extensionProviders[1] `x`: a provider of that name is already defined"),
            ),
            ("[1, 2]", Err("expected a mapping")),
            ("a: [", Err("not valid YAML")),
        ];
        for (yaml, want) in cases {
            let got = parse_mesh_config(yaml).map(|c| (c.providers.len(), c.other_providers.len()));
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{yaml:?}"),
                (Err(e), Err(want)) => assert!(
                    e.to_string().contains(want),
                    "{yaml:?}: got {e}, want {want:?}"
                ),
                (got, want) => panic!("{yaml:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn config_map_form() {
        let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  \
                    mesh: |-\n    extensionProviders:\n    - name: opa\n      envoyExtAuthzGrpc:\n        \
                    service: opa.opa-system.svc.cluster.local\n        port: \"9191\"\n";
        let cfg = parse_mesh_config(yaml).unwrap();
        assert_eq!(cfg.providers[0].name, "opa");
        assert_eq!(cfg.providers[0].port, 9191);
    }

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        let cases: &[(&str, Option<Duration>)] = &[
            ("0.2s", Some(ms(200))),
            ("200ms", Some(ms(200))),
            ("1s", Some(ms(1000))),
            ("1m30s", Some(ms(90_000))),
            ("1h", Some(ms(3_600_000))),
            ("250000us", Some(ms(250))),
            ("250000µs", Some(ms(250))),
            ("5000000ns", Some(ms(5))),
            ("", None),
            ("5", None),
            ("s", None),
            ("-1s", None),
            ("1.2.3s", None),
            ("1d", None),
            ("0ms", None),
            ("2h", None),
            ("1s ", Some(ms(1000))),
        ];
        for (s, want) in cases {
            let got = parse_duration(s).ok();
            let close = match (got, want) {
                (Some(g), Some(w)) => g.abs_diff(*w) < Duration::from_micros(1),
                (g, w) => g == *w,
            };
            assert!(close, "{s:?}: got {got:?}, want {want:?}");
        }
    }
}
