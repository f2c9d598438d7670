//! Telemetry: Istio-standard metrics with bounded cardinality, the access log (Istio text or JSON), and
//! OpenTelemetry tracing. The proxy hands each finished request to this module as one record.
//!
//! ```text
//!  downstream conn ──▶ Telemetry::source(peer)            (once per connection: an interned Arc)
//!  snapshot/backend ─▶ Telemetry::destination(peer, svc)  (once per endpoint workload: an interned Arc)
//!  request start ────▶ Tracer::start(headers, host, port) → RequestSpan; span.inject(upstream headers)
//!  request end ──────▶ RequestRecord { &source, &destination, status, flags, bytes, timings, … }
//!                        ├─ Telemetry::record(&rec)   metrics (atomics) + access log (queued line)
//!                        └─ span.end(&rec)            attributes, end time, batch export over OTLP/gRPC
//!  15020 / admin ────▶ Telemetry::render(&mut String) Prometheus text
//! ```
//!
//! - [`metrics`]: `istio_requests_total`, `istio_request_duration_milliseconds`, `istio_request_bytes`,
//!   `istio_response_bytes`, `istio_tcp_*`, `reporter="waypoint"`, Istio's label set, Envoy's buckets. At most
//!   [`TelemetryConfig::max_series`] series per metric, least recently used evicted
//!   (`waypoint_telemetry_series_evicted_total`).
//! - The proxy's own health (`waypoint_*`: retries, breakers, ejections, pools, config) is not here but in
//!   `crate::admin::health_stats`, read from the proxy's counters when scraped.
//! - [`access_log`] / [`log_writer`]: one line per request, formatted on the request thread, written by a
//!   writer thread behind a bounded channel (`waypoint_access_log_dropped_total` when it falls behind).
//! - [`trace`] / [`propagation`]: W3C and B3 in, W3C (and B3 when used) out, SERVER span per request.
//!
//! Recording a request allocates nothing for metrics once its series exists (a read lock on one of 16
//! shards, then atomics); the access log reuses pooled line buffers.

pub mod access_log;
pub mod labels;
pub mod log_writer;
pub mod metrics;
pub mod propagation;
pub mod record;
mod series;
pub mod trace;

use std::fmt::Write as _;

pub use access_log::LogFormat;
pub use labels::{Destination, PeerInfo, ServiceInfo, Source};
pub use log_writer::AccessLog;
pub use propagation::HeaderSink;
pub use record::{RequestProtocol, RequestRecord, ResponseFlags, SecurityPolicy, UnknownFlag};
pub use trace::{RequestSpan, Tracer, TracingConfig, TracingError};

use metrics::{IstioMetrics, TcpEvent};

/// Metric and access-log settings (tracing is configured apart, [`TracingConfig`]).
#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    /// Most series kept per metric family. Default 10,000.
    pub max_series: usize,
    /// Access log format, or `None` for no access log. Default text.
    pub access_log: Option<LogFormat>,
    /// Lines queued for the writer before new ones are dropped. Default 4096.
    pub access_log_queue: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            max_series: 10_000,
            access_log: Some(LogFormat::Text),
            access_log_queue: 4096,
        }
    }
}

/// Metrics and the access log of one waypoint.
pub struct Telemetry {
    interner: labels::Interner,
    metrics: IstioMetrics,
    access_log: Option<AccessLog>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("request_series", &self.metrics.requests.len())
            .field("tcp_series", &self.metrics.tcp.len())
            .field("access_log", &self.access_log)
            .finish()
    }
}

impl Telemetry {
    /// Metrics and, per `cfg`, an access log to stdout.
    pub fn new(cfg: &TelemetryConfig) -> std::io::Result<Telemetry> {
        let log = match cfg.access_log {
            Some(format) => Some(AccessLog::stdout(format, cfg.access_log_queue)?),
            None => None,
        };
        Ok(Telemetry::with_access_log(cfg, log))
    }

    /// Metrics with the given access log (tests and other sinks: [`AccessLog::with_writer`]).
    pub fn with_access_log(cfg: &TelemetryConfig, access_log: Option<AccessLog>) -> Telemetry {
        Telemetry {
            interner: labels::Interner::default(),
            metrics: IstioMetrics::new(cfg.max_series),
            access_log,
        }
    }

    /// The caller's labels, interned. Allocates: call once per downstream connection and keep it.
    pub fn source(&self, peer: &PeerInfo<'_>) -> Source {
        self.interner.source(peer)
    }

    /// The destination's labels, interned. Allocates: call once per endpoint (or per backend when the
    /// workload is not known) and keep it, e.g. in the compiled snapshot or a per-connection cache.
    pub fn destination(&self, peer: &PeerInfo<'_>, service: &ServiceInfo<'_>) -> Destination {
        self.interner.destination(peer, service)
    }

    /// Records a finished request: the four HTTP metrics and one access log line.
    pub fn record(&self, r: &RequestRecord<'_>) {
        self.metrics.record(r);
        if let Some(log) = &self.access_log {
            log.log(r);
        }
    }

    /// Records only the metrics of `r` (no access log line).
    pub fn record_metrics(&self, r: &RequestRecord<'_>) {
        self.metrics.record(r);
    }

    /// A TCP connection (e.g. an HBONE tunnel carrying TCP) opened.
    pub fn tcp_opened(&self, source: &Source, destination: &Destination, policy: SecurityPolicy) {
        self.metrics.tcp(
            source,
            destination,
            policy,
            ResponseFlags::NONE,
            TcpEvent::Opened,
        );
    }

    /// Bytes moved on an open TCP connection since the last report (for long-lived connections).
    pub fn tcp_bytes(
        &self,
        source: &Source,
        destination: &Destination,
        policy: SecurityPolicy,
        sent: u64,
        received: u64,
    ) {
        self.metrics.tcp(
            source,
            destination,
            policy,
            ResponseFlags::NONE,
            TcpEvent::Bytes { sent, received },
        );
    }

    /// A TCP connection closed, with the bytes not yet reported and its flags (e.g. `UF`, `DC`).
    pub fn tcp_closed(
        &self,
        source: &Source,
        destination: &Destination,
        policy: SecurityPolicy,
        flags: ResponseFlags,
        sent: u64,
        received: u64,
    ) {
        self.metrics.tcp(
            source,
            destination,
            policy,
            flags,
            TcpEvent::Closed { sent, received },
        );
    }

    /// The access log, when configured.
    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.as_ref()
    }

    /// Request series held now (for tests and the admin port).
    pub fn request_series(&self) -> usize {
        self.metrics.requests.len()
    }

    /// Appends the Prometheus text exposition (format 0.0.4) of every metric to `out`.
    pub fn render(&self, out: &mut String) {
        self.metrics.render(out);
        let families = [
            ("requests", &self.metrics.requests.stats()),
            ("tcp", &self.metrics.tcp.stats()),
        ];
        type Pick = fn(&series::Stats) -> u64;
        let rows: [(&str, &str, &str, Pick); 3] = [
            (
                "waypoint_telemetry_series",
                "gauge",
                "Metric series held, by family.",
                |s| s.len,
            ),
            (
                "waypoint_telemetry_series_limit",
                "gauge",
                "Most metric series held per family (least recently used evicted beyond).",
                |s| s.capacity,
            ),
            (
                "waypoint_telemetry_series_evicted_total",
                "counter",
                "Metric series evicted, by family.",
                |s| s.evicted,
            ),
        ];
        for (name, kind, help, pick) in rows {
            metrics::family(out, name, kind, help);
            for (family, stats) in &families {
                let _ = writeln!(out, "{name}{{family=\"{family}\"}} {}", pick(stats));
            }
        }
        if let Some(log) = &self.access_log {
            metrics::family(
                out,
                "waypoint_access_log_lines_total",
                "counter",
                "Access log lines written.",
            );
            let _ = writeln!(out, "waypoint_access_log_lines_total {}", log.written());
            metrics::family(
                out,
                "waypoint_access_log_dropped_total",
                "counter",
                "Access log lines dropped because the writer was behind.",
            );
            let _ = writeln!(out, "waypoint_access_log_dropped_total {}", log.dropped());
        }
    }
}
