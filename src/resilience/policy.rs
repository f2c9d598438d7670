//! A destination service's compiled `DestinationRule.trafficPolicy` (Istio `networking.istio.io/v1`).
//! Defaults are Istio's/Envoy's where a field is absent (noted per field).

use std::time::Duration;

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
    /// `httpHeaderName`.
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
