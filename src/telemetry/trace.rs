//! Tracing: one SERVER span per request, continuing the caller's trace, exported over OTLP/gRPC.
//!
//! [`Tracer::start`] reads the parent from the request headers (W3C, else B3; see [`super::propagation`]),
//! names the span as Istio does (`<service host>:<port>/*`) and starts it; [`RequestSpan::inject`] writes
//! the child's context into the upstream request; [`RequestSpan::end`] sets the attributes from the
//! [`RequestRecord`] and ends it at `start + duration`.
//!
//! Sampling: a parent's decision is kept (a sampled `traceparent` is always sampled, an unsampled one
//! never); a request without a parent is sampled at [`TracingConfig::sampling_percent`], default 1 %
//! (Istio's default). Export: the SDK's batch processor on its own thread, a bounded queue
//! ([`TracingConfig::max_queue_size`]) that drops spans when full rather than block a request.
//!
//! Attributes: the Istio metric label names for the peers (`source_workload`, `source_workload_namespace`,
//! `source_principal`, `destination_workload`, `destination_workload_namespace`, `destination_principal`,
//! `destination_service`), plus Istio's span tags (`http.method`, `http.url`, `http.status_code`,
//! `http.protocol`, `response_flags`, `upstream_cluster`, `upstream_host`, `user_agent`, `guid:x-request-id`,
//! `request_size`, `response_size`, `component`, and `error` on 5xx).

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;

use super::propagation::{self, HeaderSink, Style};
use super::record::RequestRecord;

/// Where and how to export spans.
#[derive(Clone, Debug)]
pub struct TracingConfig {
    /// OTLP/gRPC collector, e.g. `http://otel-collector.istio-system:4317`.
    pub endpoint: String,
    /// Percentage of requests without a parent that start a sampled trace (0–100). Default 1.0.
    pub sampling_percent: f64,
    /// `service.name` of the exported resource. Default `waypoint`.
    pub service_name: String,
    /// Spans waiting for export; more are dropped. Default 2048.
    pub max_queue_size: usize,
    /// Spans per export. Default 512.
    pub max_export_batch_size: usize,
    /// Export at least this often. Default 5 s.
    pub export_interval: Duration,
    /// Give up one export after this long. Default 10 s.
    pub export_timeout: Duration,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            endpoint: "http://localhost:4317".into(),
            sampling_percent: 1.0,
            service_name: "waypoint".into(),
            max_queue_size: 2048,
            max_export_batch_size: 512,
            export_interval: Duration::from_secs(5),
            export_timeout: Duration::from_secs(10),
        }
    }
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("tracing sampling percentage must be within 0..=100, got {0}")]
    Sampling(f64),
    #[error("OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("tracer shutdown: {0}")]
    Shutdown(String),
}

/// Starts request spans and exports them.
#[derive(Debug)]
pub struct Tracer {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// The sampler: keep the parent's decision, else sample `percent` of new traces.
pub fn sampler(percent: f64) -> Sampler {
    Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(percent / 100.0)))
}

impl Tracer {
    /// Builds the OTLP/gRPC exporter and the batch processor. Call inside a Tokio runtime (tonic's channel
    /// lives on it); connecting is lazy, so a collector that is down now only loses spans.
    pub fn new(cfg: &TracingConfig) -> Result<Tracer, TracingError> {
        if !(0.0..=100.0).contains(&cfg.sampling_percent) {
            return Err(TracingError::Sampling(cfg.sampling_percent));
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(cfg.endpoint.clone())
            .with_timeout(cfg.export_timeout)
            .build()
            .map_err(|source| TracingError::Exporter {
                endpoint: cfg.endpoint.clone(),
                source,
            })?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(cfg.max_queue_size.max(1))
            .with_max_export_batch_size(
                cfg.max_export_batch_size
                    .clamp(1, cfg.max_queue_size.max(1)),
            )
            .with_scheduled_delay(cfg.export_interval)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::new(exporter, batch))
            .with_sampler(sampler(cfg.sampling_percent))
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(cfg.service_name.clone())
                    .build(),
            )
            .build();
        Ok(Tracer::from_provider(provider))
    }

    /// A tracer over a provider built elsewhere (tests with an in-memory exporter, other exporters).
    pub fn from_provider(provider: SdkTracerProvider) -> Tracer {
        let tracer = provider.tracer("waypoint");
        Tracer { provider, tracer }
    }

    /// Starts the SERVER span of a request to `service_host:port`, continuing the trace in `headers`.
    pub fn start(
        &self,
        headers: &HeaderMap,
        service_host: &str,
        port: u16,
        start: SystemTime,
    ) -> RequestSpan {
        let parent = propagation::extract(headers);
        let cx = match &parent {
            Some((sc, _)) => Context::new().with_remote_span_context(sc.clone()),
            None => Context::new(),
        };
        let name = format!("{service_host}:{port}/*");
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .start_with_context(&self.tracer, &cx);
        let sc = span.span_context().clone();
        let cx = cx.with_span(span);
        let (parent, style) = match parent {
            Some((sc, style)) => (Some(sc), Some(style)),
            None => (None, None),
        };
        RequestSpan {
            cx,
            sc,
            parent,
            style,
            start,
        }
    }

    /// Exports what is queued now (blocking; call off the runtime threads, e.g. in `spawn_blocking`).
    pub fn force_flush(&self) -> Result<(), TracingError> {
        self.provider
            .force_flush()
            .map_err(|e| TracingError::Shutdown(e.to_string()))
    }

    /// Exports what is queued and stops (blocking, as [`Tracer::force_flush`]).
    pub fn shutdown(&self) -> Result<(), TracingError> {
        self.provider
            .shutdown()
            .map_err(|e| TracingError::Shutdown(e.to_string()))
    }
}

/// One request's span.
#[derive(Debug)]
pub struct RequestSpan {
    cx: Context,
    /// This span's context (copied out of `cx` at start).
    sc: SpanContext,
    parent: Option<SpanContext>,
    style: Option<Style>,
    start: SystemTime,
}

impl RequestSpan {
    /// This span's context (its trace id is the parent's when there was one).
    pub fn span_context(&self) -> &SpanContext {
        &self.sc
    }

    /// Writes this span as the parent of the upstream request (`traceparent`, and B3 if the caller used it).
    pub fn inject(&self, sink: &mut impl HeaderSink) {
        propagation::inject(&self.sc, self.parent.as_ref(), self.style, sink);
    }

    /// Sets the attributes from `r` and ends the span at `start + r.duration`.
    pub fn end(self, r: &RequestRecord<'_>) {
        let span = self.cx.span();
        if !span.is_recording() {
            return;
        }
        let (s, d) = (r.source, r.destination);
        let mut attrs = vec![
            KeyValue::new("component", "proxy"),
            KeyValue::new("source_workload", s.workload().to_owned()),
            KeyValue::new("source_workload_namespace", s.namespace().to_owned()),
            KeyValue::new("source_principal", s.principal().to_owned()),
            KeyValue::new("destination_workload", d.workload().to_owned()),
            KeyValue::new("destination_workload_namespace", d.namespace().to_owned()),
            KeyValue::new("destination_principal", d.principal().to_owned()),
            KeyValue::new("destination_service", d.service().to_owned()),
            KeyValue::new("http.method", r.method.to_owned()),
            KeyValue::new("http.url", format!("http://{}{}", r.authority, r.path)),
            KeyValue::new("http.status_code", i64::from(r.status)),
            KeyValue::new("http.protocol", format!("{:?}", r.version)),
            KeyValue::new("response_flags", r.flags.to_string()),
            KeyValue::new("request_size", r.bytes_received as i64),
            KeyValue::new("response_size", r.bytes_sent as i64),
        ];
        let optional = [
            ("upstream_cluster", r.upstream_cluster),
            ("user_agent", r.user_agent),
            ("guid:x-request-id", r.request_id),
            ("authorization_policy", r.authz_policy),
        ];
        attrs.extend(
            optional
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| KeyValue::new(*k, v.to_string())),
        );
        if let Some(h) = r.upstream_host {
            attrs.push(KeyValue::new("upstream_host", h.to_string()));
        }
        if let Some(g) = r.grpc_status {
            attrs.push(KeyValue::new("grpc.status_code", i64::from(g)));
        }
        span.set_attributes(attrs);
        if r.status >= 500 || r.status == 0 {
            span.set_attribute(KeyValue::new("error", true));
            span.set_status(Status::error(format!("{} {}", r.status, r.flags)));
        }
        span.end_with_timestamp(self.start + r.duration);
    }
}
