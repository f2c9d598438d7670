//! Tracing end to end: a real OTLP/gRPC collector (tonic, `TraceService`) on 127.0.0.1:0 in this process,
//! the waypoint's [`Tracer`] exporting to it through the SDK's batch processor.
//!
//! Asserts the span continues the caller's trace (trace id and parent span id from `traceparent` or B3),
//! is a SERVER span named for the destination service, carries the peers' identities and the request's
//! attributes, and that the child context injected upstream names this span; an unsampled parent is not
//! exported.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::mpsc;
use waypoint::telemetry::{
    PeerInfo, RequestRecord, ResponseFlags, ServiceInfo, Telemetry, TelemetryConfig, Tracer,
    TracingConfig,
};

struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Starts the collector; returns its address and what it receives.
async fn collector() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (addr, rx)
}

fn attr(span: &Span, key: &str) -> Option<String> {
    let v = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match v {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector_with_parent_and_attributes() {
    let (addr, mut received) = collector().await;
    let tracer = Tracer::new(&TracingConfig {
        endpoint: format!("http://{addr}"),
        sampling_percent: 0.0, // only a sampled parent makes a span exported
        export_interval: Duration::from_millis(100),
        ..TracingConfig::default()
    })
    .unwrap();
    let t = Telemetry::with_access_log(
        &TelemetryConfig {
            access_log: None,
            ..Default::default()
        },
        None,
    );
    let src = t.source(&PeerInfo {
        workload: "productpage-v1",
        namespace: "default",
        principal: "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        ..Default::default()
    });
    let dst = t.destination(
        &PeerInfo {
            workload: "reviews-v2",
            namespace: "default",
            principal: "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
            ..Default::default()
        },
        &ServiceInfo {
            host: "reviews.default.svc.cluster.local",
            name: "reviews",
            namespace: "default",
        },
    );

    // (incoming headers, sampled?) — W3C sampled, B3 multi sampled, W3C unsampled, no parent (0 %).
    let cases: Vec<(Vec<(&str, String)>, bool)> = vec![
        (
            vec![("traceparent", format!("00-{TRACE}-{PARENT}-01"))],
            true,
        ),
        (
            vec![
                ("x-b3-traceid", TRACE.into()),
                ("x-b3-spanid", PARENT.into()),
                ("x-b3-sampled", "1".into()),
            ],
            true,
        ),
        (
            vec![("traceparent", format!("00-{TRACE}-{PARENT}-00"))],
            false,
        ),
        (vec![], false),
    ];
    let mut expected = Vec::new();
    for (i, (kv, sampled)) in cases.iter().enumerate() {
        let mut headers = HeaderMap::new();
        for (k, v) in kv {
            headers.insert(*k, v.parse().unwrap());
        }
        let start = SystemTime::now();
        let span = tracer.start(&headers, "reviews.default.svc.cluster.local", 9080, start);
        assert_eq!(span.span_context().is_sampled(), *sampled, "case {i}");
        let mut upstream = HeaderMap::new();
        span.inject(&mut upstream);
        let tp = upstream["traceparent"].to_str().unwrap().to_string();
        let child = span.span_context().span_id().to_string();
        if !kv.is_empty() {
            assert!(
                tp.starts_with(&format!("00-{TRACE}-{child}-")),
                "case {i}: {tp}"
            );
        }
        if kv.iter().any(|(k, _)| k.starts_with("x-b3")) {
            assert_eq!(upstream["x-b3-spanid"].to_str().unwrap(), child);
            assert_eq!(upstream["x-b3-parentspanid"].to_str().unwrap(), PARENT);
        }
        let mut r = RequestRecord::new(&src, &dst, start);
        r.method = "GET";
        r.path = "/reviews/0";
        r.authority = "reviews:9080";
        r.status = if i == 1 { 503 } else { 200 };
        r.flags = if i == 1 {
            ResponseFlags::parse("UF").unwrap()
        } else {
            ResponseFlags::NONE
        };
        r.upstream_host = "10.0.0.12:9080".parse().ok();
        r.duration = Duration::from_millis(7);
        span.end(&r);
        if *sampled {
            expected.push((child, r.status));
        }
    }

    // force_flush blocks until the export is answered: off the runtime's threads.
    let flushed = tokio::task::spawn_blocking(move || {
        tracer.force_flush().unwrap();
        tracer
    })
    .await
    .unwrap();

    let mut spans: Vec<Span> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while spans.len() < expected.len() {
        let req = tokio::time::timeout_at(deadline, received.recv())
            .await
            .expect("spans did not reach the collector in 10 s")
            .expect("collector closed");
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"));
            assert!(format!("{service:?}").contains("waypoint"), "{service:?}");
            spans.extend(rs.scope_spans.into_iter().flat_map(|s| s.spans));
        }
    }
    assert_eq!(
        spans.len(),
        expected.len(),
        "only sampled spans are exported: {spans:#?}"
    );
    for (child, status) in expected {
        let span = spans
            .iter()
            .find(|s| hex(&s.span_id) == child)
            .expect("span exported");
        assert_eq!(hex(&span.trace_id), TRACE);
        assert_eq!(hex(&span.parent_span_id), PARENT);
        assert_eq!(span.name, "reviews.default.svc.cluster.local:9080/*");
        assert_eq!(span.kind, SpanKind::Server as i32);
        assert_eq!(
            span.end_time_unix_nano - span.start_time_unix_nano,
            7_000_000
        );
        let want = [
            ("source_workload", "productpage-v1"),
            ("source_workload_namespace", "default"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
            ),
            ("destination_workload", "reviews-v2"),
            ("destination_workload_namespace", "default"),
            (
                "destination_principal",
                "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
            ),
            ("destination_service", "reviews.default.svc.cluster.local"),
            ("http.method", "GET"),
            ("http.url", "http://reviews:9080/reviews/0"),
            ("upstream_host", "10.0.0.12:9080"),
        ];
        for (k, v) in want {
            assert_eq!(attr(span, k).as_deref(), Some(v), "{k}");
        }
        assert_eq!(attr(span, "http.status_code"), Some(status.to_string()));
        let flags = if status == 503 { "UF" } else { "-" };
        assert_eq!(attr(span, "response_flags").as_deref(), Some(flags));
        assert_eq!(attr(span, "error").is_some(), status >= 500);
    }
    tokio::task::spawn_blocking(move || flushed.shutdown().unwrap())
        .await
        .unwrap();
}

#[test]
fn sampling_outside_0_to_100_is_refused() {
    for bad in [-1.0, 100.5, f64::NAN] {
        let cfg = TracingConfig {
            sampling_percent: bad,
            ..TracingConfig::default()
        };
        let err = Tracer::new(&cfg).expect_err("accepted a bad percentage");
        assert!(err.to_string().contains("sampling"), "{err}");
    }
}
