//! A destination service's compiled `DestinationRule.trafficPolicy` (Istio `networking.istio.io/v1`).
//! Defaults are Istio's/Envoy's where a field is absent (noted per field), except the load balancer: round robin
//! (Istio's own default is `LEAST_REQUEST`). Built per destination Service port by [`TrafficPolicy::of_service`].

use std::time::Duration;

use mesh::config::destination::{
    ConnectionPoolSpec, LoadBalancerSpec, OutlierDetectionSpec, PortPolicy, SimpleLb,
};
use mesh::config::{Mesh, Service};

/// The whole policy of one destination service (host `name.namespace.svc.cluster.local`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrafficPolicy {
    pub connection_pool: ConnectionPool,
    /// `None`: no outlier detection.
    pub outlier: Option<OutlierDetection>,
    pub load_balancer: LoadBalancer,
}

/// `connectionPool` (tcp + http). `None` = unlimited (Istio's default is 2^32-1 for each).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionPool {
    /// `tcp.maxConnections`: upstream connections to the service (all endpoints).
    pub max_connections: Option<u32>,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection.
    pub max_pending_requests: Option<u32>,
    /// `http.http2MaxRequests`: concurrent requests to the service.
    pub max_requests: Option<u32>,
    /// `http.maxRequestsPerConnection`: after this many, an upstream connection is not reused.
    pub max_requests_per_connection: Option<u32>,
    /// `http.maxRetries`: concurrent retries to the service.
    pub max_retries: Option<u32>,
    /// `http.idleTimeout`: idle upstream connections are closed after this.
    pub idle_timeout: Option<Duration>,
    /// `tcp.connectTimeout`.
    pub connect_timeout: Option<Duration>,
}

/// `outlierDetection`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierDetection {
    /// `consecutive5xxErrors` (default 5; 0 disables).
    pub consecutive_5xx: u32,
    /// `consecutiveGatewayErrors` (502, 503, 504 and connect failures; default 0 = disabled).
    pub consecutive_gateway: u32,
    /// `interval`: how often ejections are re-evaluated (default 10 s).
    pub interval: Duration,
    /// `baseEjectionTime` (default 30 s), multiplied by the number of times the endpoint was ejected.
    pub base_ejection_time: Duration,
    /// `maxEjectionPercent` (default 10): at most this share of endpoints ejected at once (at least one may be,
    /// never all).
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: 5,
            consecutive_gateway: 0,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
        }
    }
}

/// `loadBalancer`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LoadBalancer {
    #[default]
    RoundRobin,
    /// Power of two choices by in-flight requests.
    LeastRequest,
    Random,
    /// `PASSTHROUGH` is not meaningful in a waypoint; treated as round robin with a warning.
    ConsistentHash(HashOn),
}

/// What a consistent hash is computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    /// `httpHeaderName` (lower-cased).
    Header(String),
    /// `httpCookie` (name; a `ttl` makes the waypoint set the cookie when the request lacks it; `path`).
    Cookie {
        name: String,
        path: Option<String>,
        ttl: Option<Duration>,
    },
    /// `httpQueryParameterName`.
    QueryParameter(String),
    /// `useSourceIp`: the caller's address (from HBONE `forwarded`, else the outer peer).
    SourceIp,
}

impl TrafficPolicy {
    /// The policy of Service `svc`'s port `port`: its `DestinationRule`'s settings for that port (top level, with
    /// `portLevelSettings` replacing whole fields), defaults where the rule or a field is absent.
    pub fn of_service(mesh: &Mesh, svc: &Service, port: u16) -> TrafficPolicy {
        let Some(rule) = mesh.destination_rule_of(svc) else {
            return TrafficPolicy::default();
        };
        rule.policy_for_port(port)
            .map_or_else(TrafficPolicy::default, |p| {
                TrafficPolicy::from_port_policy(&p, &rule.name)
            })
    }

    /// From a rule's settings for one port (`rule`: the rule's name, for warnings).
    pub fn from_port_policy(p: &PortPolicy, rule: &str) -> TrafficPolicy {
        TrafficPolicy {
            connection_pool: p
                .connection_pool
                .as_ref()
                .map(ConnectionPool::from_spec)
                .unwrap_or_default(),
            outlier: p
                .outlier_detection
                .as_ref()
                .map(OutlierDetection::from_spec),
            load_balancer: p
                .load_balancer
                .as_ref()
                .map_or_else(LoadBalancer::default, |lb| {
                    LoadBalancer::from_spec(lb, rule)
                }),
        }
    }
}

/// Istio's connection-pool integers are proto3 fields: 0 is "not set", which Istio turns into its (effectively
/// unlimited) default — never "admit nothing".
fn unset_if_zero(v: Option<u32>) -> Option<u32> {
    v.filter(|n| *n > 0)
}

impl ConnectionPool {
    /// From `connectionPool`; 0 in a limit means unlimited, as in Istio; an `idleTimeout` of 0 is no idle timeout.
    pub fn from_spec(spec: &ConnectionPoolSpec) -> ConnectionPool {
        let (tcp, http) = (
            spec.tcp.clone().unwrap_or_default(),
            spec.http.clone().unwrap_or_default(),
        );
        ConnectionPool {
            max_connections: unset_if_zero(tcp.max_connections),
            max_pending_requests: unset_if_zero(http.http1_max_pending_requests),
            max_requests: unset_if_zero(http.http2_max_requests),
            max_requests_per_connection: unset_if_zero(http.max_requests_per_connection),
            max_retries: unset_if_zero(http.max_retries),
            idle_timeout: http.idle_timeout.filter(|d| !d.is_zero()),
            connect_timeout: tcp.connect_timeout,
        }
    }
}

impl OutlierDetection {
    /// From `outlierDetection`, defaults for the fields not given.
    pub fn from_spec(spec: &OutlierDetectionSpec) -> OutlierDetection {
        let d = OutlierDetection::default();
        OutlierDetection {
            consecutive_5xx: spec.consecutive_5xx_errors.unwrap_or(d.consecutive_5xx),
            consecutive_gateway: spec
                .consecutive_gateway_errors
                .unwrap_or(d.consecutive_gateway),
            interval: spec.interval.unwrap_or(d.interval),
            base_ejection_time: spec.base_ejection_time.unwrap_or(d.base_ejection_time),
            max_ejection_percent: spec.max_ejection_percent.unwrap_or(d.max_ejection_percent),
        }
    }
}

impl LoadBalancer {
    /// From `loadBalancer` (validated at parse: `simple` or one `consistentHash` key). `UNSPECIFIED` is the
    /// default; `PASSTHROUGH` is round robin, with a warning.
    pub fn from_spec(spec: &LoadBalancerSpec, rule: &str) -> LoadBalancer {
        if let Some(ch) = &spec.consistent_hash {
            let on = if let Some(h) = &ch.http_header_name {
                HashOn::Header(h.to_ascii_lowercase())
            } else if let Some(c) = &ch.http_cookie {
                HashOn::Cookie {
                    name: c.name.clone(),
                    path: c.path.clone().filter(|p| !p.is_empty()),
                    ttl: c.ttl,
                }
            } else if let Some(q) = &ch.http_query_parameter_name {
                HashOn::QueryParameter(q.clone())
            } else {
                HashOn::SourceIp
            };
            return LoadBalancer::ConsistentHash(on);
        }
        match spec.simple {
            None | Some(SimpleLb::Unspecified) => LoadBalancer::default(),
            Some(SimpleLb::RoundRobin) => LoadBalancer::RoundRobin,
            Some(SimpleLb::LeastRequest) => LoadBalancer::LeastRequest,
            Some(SimpleLb::Random) => LoadBalancer::Random,
            Some(SimpleLb::Passthrough) => {
                tracing::warn!(
                    rule,
                    "loadBalancer PASSTHROUGH means nothing in a waypoint: round robin"
                );
                LoadBalancer::RoundRobin
            }
        }
    }
}
