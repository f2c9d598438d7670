//! Telemetry as the proxy uses it: records in, Prometheus text and access log lines out.
//!
//! The exposition is checked two ways: `prometheus-parse` reads names, labels and values, and a strict
//! line grammar (written here from the text-format spec) checks every line and that each family's samples
//! follow its `# TYPE` line without interruption.

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_parse::{Scrape, Value};
use waypoint::telemetry::{
    AccessLog, LogFormat, PeerInfo, RequestProtocol, RequestRecord, ResponseFlags, SecurityPolicy,
    ServiceInfo, Telemetry, TelemetryConfig,
};

fn productpage() -> PeerInfo<'static> {
    PeerInfo {
        workload: "productpage-v1",
        namespace: "default",
        principal: "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        app: "productpage",
        version: "v1",
        canonical_service: "productpage",
        canonical_revision: "v1",
        cluster: "Kubernetes",
    }
}

fn reviews(version: &'static str) -> PeerInfo<'static> {
    PeerInfo {
        workload: if version == "v1" {
            "reviews-v1"
        } else {
            "reviews-v2"
        },
        namespace: "default",
        principal: "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
        app: "reviews",
        version,
        canonical_service: "reviews",
        canonical_revision: version,
        cluster: "Kubernetes",
    }
}

const REVIEWS: ServiceInfo<'static> = ServiceInfo {
    host: "reviews.default.svc.cluster.local",
    name: "reviews",
    namespace: "default",
};

fn no_log() -> TelemetryConfig {
    TelemetryConfig {
        access_log: None,
        ..TelemetryConfig::default()
    }
}

/// Checks every line against the text format and that families are contiguous; returns the sample count.
fn validate_exposition(text: &str) -> usize {
    let sample = regex::Regex::new(
        r#"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*")(,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*")*\})? (-?[0-9.e+]+|\+Inf|NaN)$"#,
    )
    .unwrap();
    let type_line =
        regex::Regex::new(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram)$")
            .unwrap();
    let (mut seen, mut current, mut samples) = (HashSet::new(), None::<(String, String)>, 0);
    for line in text.lines() {
        if line.starts_with("# HELP ") {
            continue;
        }
        if let Some(c) = type_line.captures(line) {
            let name = c[1].to_string();
            assert!(seen.insert(name.clone()), "family {name} declared twice");
            current = Some((name, c[2].to_string()));
            continue;
        }
        let c = sample
            .captures(line)
            .unwrap_or_else(|| panic!("not an exposition line: {line:?}"));
        let (family, kind) = current.as_ref().expect("sample before any # TYPE");
        let name = &c[1];
        let ok = match kind.as_str() {
            "histogram" => [("_bucket"), ("_sum"), ("_count")]
                .iter()
                .any(|s| name == format!("{family}{s}")),
            _ => name == family,
        };
        assert!(ok, "sample {name} under family {family}");
        samples += 1;
    }
    samples
}

fn scrape(t: &Telemetry) -> (String, Scrape) {
    let mut out = String::new();
    t.render(&mut out);
    validate_exposition(&out);
    let parsed = Scrape::parse(out.lines().map(|l| Ok(l.to_string()))).expect("prometheus-parse");
    (out, parsed)
}

fn counter(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => panic!("{name} is not a single value"),
        })
        .reduce(|a, b| a + b)
}

#[test]
fn requests_become_istio_metrics_with_istio_labels() {
    let t = Telemetry::with_access_log(&no_log(), None);
    let src = t.source(&productpage());
    let (v1, v2) = (
        t.destination(&reviews("v1"), &REVIEWS),
        t.destination(&reviews("v2"), &REVIEWS),
    );
    let start = SystemTime::now();
    // (destination, status, flags, duration ms, request bytes, response bytes, gRPC status)
    let requests = [
        (&v1, 200, "-", 3, 0, 295, None),
        (&v1, 200, "-", 7, 10, 295, None),
        (&v2, 200, "-", 30, 0, 512, Some(0)),
        (&v2, 503, "UF,URX", 1, 0, 91, None),
    ];
    for (dst, status, flags, ms, req, resp, grpc) in requests {
        let mut r = RequestRecord::new(&src, dst, start);
        r.status = status;
        r.flags = ResponseFlags::parse(flags).unwrap();
        r.duration = Duration::from_millis(ms);
        r.bytes_received = req;
        r.bytes_sent = resp;
        r.grpc_status = grpc;
        r.protocol = if grpc.is_some() {
            RequestProtocol::Grpc
        } else {
            RequestProtocol::Http
        };
        t.record(&r);
    }
    let (text, s) = scrape(&t);

    let ok_v1 = [
        ("destination_workload", "reviews-v1"),
        ("response_code", "200"),
    ];
    assert_eq!(
        counter(&s, "istio_requests_total", &ok_v1),
        Some(2.0),
        "{text}"
    );
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == "istio_requests_total")
        .unwrap();
    let want = [
        ("reporter", "waypoint"),
        ("source_workload", "productpage-v1"),
        ("source_workload_namespace", "default"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        ),
        ("source_app", "productpage"),
        ("source_version", "v1"),
        ("source_canonical_service", "productpage"),
        ("source_canonical_revision", "v1"),
        ("source_cluster", "Kubernetes"),
        ("destination_workload", "reviews-v1"),
        ("destination_workload_namespace", "default"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
        ),
        ("destination_app", "reviews"),
        ("destination_version", "v1"),
        ("destination_service", "reviews.default.svc.cluster.local"),
        ("destination_service_name", "reviews"),
        ("destination_service_namespace", "default"),
        ("destination_canonical_service", "reviews"),
        ("destination_canonical_revision", "v1"),
        ("destination_cluster", "Kubernetes"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("grpc_response_status", ""),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
    ];
    for (k, v) in want {
        assert_eq!(sample.labels.get(k), Some(v), "label {k}");
    }
    assert_eq!(
        sample.labels.len(),
        want.len(),
        "exactly Istio's labels: {:?}",
        sample.labels
    );

    let grpc = [
        ("destination_workload", "reviews-v2"),
        ("request_protocol", "grpc"),
        ("grpc_response_status", "0"),
    ];
    assert_eq!(counter(&s, "istio_requests_total", &grpc), Some(1.0));
    // prometheus-parse splits label values on ',': the flags series is checked on the raw text.
    assert!(text.contains(r#"response_code="503",grpc_response_status="",response_flags="UF,URX",connection_security_policy="mutual_tls"} 1"#), "{text}");

    // Histograms: v1's two requests, 3 ms and 7 ms, fall in le=5 and le=10.
    let dur = s
        .samples
        .iter()
        .find(|x| {
            x.metric == "istio_request_duration_milliseconds"
                && x.labels.get("destination_workload") == Some("reviews-v1")
        })
        .expect("duration histogram");
    let Value::Histogram(buckets) = &dur.value else {
        panic!("not a histogram")
    };
    let at = |le: f64| buckets.iter().find(|b| b.less_than == le).map(|b| b.count);
    assert_eq!(
        (at(1.0), at(5.0), at(10.0), at(3_600_000.0)),
        (Some(0.0), Some(1.0), Some(2.0), Some(2.0))
    );
    assert_eq!(buckets.len(), 20, "Envoy's 19 bounds and +Inf");
    assert!(text.contains("istio_request_duration_milliseconds_sum{reporter=\"waypoint\",source_workload=\"productpage-v1\""));
    for family in ["istio_request_bytes", "istio_response_bytes"] {
        assert!(
            s.samples
                .iter()
                .any(|x| x.metric == family && matches!(x.value, Value::Histogram(_))),
            "{family}"
        );
    }
}

#[test]
fn unknown_peers_and_tcp_and_series_metrics() {
    let t = Telemetry::with_access_log(&no_log(), None);
    let src = t.source(&PeerInfo::default());
    let dst = t.destination(&PeerInfo::default(), &ServiceInfo::default());
    t.tcp_opened(&src, &dst, SecurityPolicy::MutualTls);
    t.tcp_bytes(&src, &dst, SecurityPolicy::MutualTls, 100, 40);
    t.tcp_closed(
        &src,
        &dst,
        SecurityPolicy::MutualTls,
        ResponseFlags::NONE,
        5,
        2,
    );
    let (text, s) = scrape(&t);
    let unknown = [
        ("source_workload", "unknown"),
        ("destination_service", "unknown"),
        ("request_protocol", "tcp"),
    ];
    let cases = [
        ("istio_tcp_sent_bytes_total", 105.0),
        ("istio_tcp_received_bytes_total", 42.0),
        ("istio_tcp_connections_opened_total", 1.0),
        ("istio_tcp_connections_closed_total", 1.0),
    ];
    for (name, want) in cases {
        assert_eq!(counter(&s, name, &unknown), Some(want), "{name}\n{text}");
    }
    let series = [
        ("waypoint_telemetry_series", vec![("family", "tcp")], 1.0),
        (
            "waypoint_telemetry_series_limit",
            vec![("family", "requests")],
            10_000.0,
        ),
    ];
    for (name, labels, want) in series {
        assert_eq!(counter(&s, name, &labels), Some(want), "{name} {labels:?}");
    }
}

/// A sink tests can read, and can hold shut to make the writer fall behind.
#[derive(Clone, Default)]
struct Sink {
    bytes: Arc<Mutex<Vec<u8>>>,
    gate: Option<Arc<Mutex<mpsc::Receiver<()>>>>,
    /// Told when a write starts (before it waits at the gate).
    entered: Option<Arc<Mutex<mpsc::Sender<()>>>>,
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Some(entered) = &self.entered {
            let _ = entered.lock().unwrap().send(());
        }
        if let Some(gate) = &self.gate {
            // Blocks until the test opens the gate (or drops its end).
            let _ = gate.lock().unwrap().recv();
        }
        self.bytes.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn full_record<'a>(
    t: &'a (
        waypoint::telemetry::Source,
        waypoint::telemetry::Destination,
    ),
) -> RequestRecord<'a> {
    let addr = |s: &str| s.parse::<SocketAddr>().ok();
    let mut r = RequestRecord::new(
        &t.0,
        &t.1,
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
    );
    r.method = "GET";
    r.path = "/reviews/0";
    r.version = http::Version::HTTP_11;
    r.status = 200;
    r.response_code_details = "via_upstream";
    r.bytes_received = 0;
    r.bytes_sent = 295;
    r.duration = Duration::from_millis(12);
    r.upstream_service_time = Some(Duration::from_millis(9));
    r.user_agent = "curl/8.5.0";
    r.request_id = "7c3b0b3e-1f0a-4d1e-9b8a-2f1c3d4e5f60";
    r.authority = "reviews:9080";
    r.upstream_host = addr("10.0.0.11:9080");
    r.upstream_cluster = "outbound|9080|v1|reviews.default.svc.cluster.local";
    r.downstream_local_address = addr("10.0.0.20:15008");
    r.downstream_remote_address = addr("10.0.0.50:41234");
    r.route_name = "default/reviews-route";
    r.authz_policy = "default/allow-productpage";
    r.tries = 2;
    r
}

#[test]
fn access_log_text_and_json_lines_field_by_field() {
    let t = Telemetry::with_access_log(&no_log(), None);
    let peers = (
        t.source(&productpage()),
        t.destination(&reviews("v1"), &REVIEWS),
    );
    for format in [LogFormat::Text, LogFormat::Json] {
        let sink = Sink::default();
        let log = AccessLog::with_writer(format, 16, sink.clone()).unwrap();
        let mut r = full_record(&peers);
        log.log(&r);
        r.status = 503;
        r.flags = ResponseFlags::parse("UF").unwrap();
        r.upstream_service_time = None;
        r.user_agent = "";
        log.log(&r);
        log.flush();
        let out = String::from_utf8(sink.bytes.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        match format {
            LogFormat::Text => {
                let want = concat!(
                    r#"[2023-11-14T22:13:20.123Z] "GET /reviews/0 HTTP/1.1" 200 - via_upstream - "-" 0 295 12 9 "-" "curl/8.5.0" "#,
                    r#""7c3b0b3e-1f0a-4d1e-9b8a-2f1c3d4e5f60" "reviews:9080" "10.0.0.11:9080" "#,
                    "outbound|9080|v1|reviews.default.svc.cluster.local - 10.0.0.20:15008 10.0.0.50:41234 - default/reviews-route"
                );
                assert_eq!(lines[0], want);
                // Field by field on the failed request: status, flags, service time, user agent.
                let fields: Vec<&str> = lines[1].split(' ').collect();
                assert_eq!((fields[4], fields[5]), ("503", "UF"));
                assert_eq!(fields[12], "-", "no upstream service time");
                assert_eq!(fields[14], "\"-\"", "no user agent");
            }
            LogFormat::Json => {
                let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
                let cases = [
                    ("start_time", serde_json::json!("2023-11-14T22:13:20.123Z")),
                    ("method", "GET".into()),
                    ("path", "/reviews/0".into()),
                    ("protocol", "HTTP/1.1".into()),
                    ("response_code", 200.into()),
                    ("response_flags", "-".into()),
                    ("bytes_sent", 295.into()),
                    ("duration", 12.into()),
                    ("upstream_service_time", "9".into()),
                    ("x_forwarded_for", serde_json::Value::Null),
                    ("upstream_host", "10.0.0.11:9080".into()),
                    (
                        "upstream_cluster",
                        "outbound|9080|v1|reviews.default.svc.cluster.local".into(),
                    ),
                    ("route_name", "default/reviews-route".into()),
                    ("authorization_policy", "default/allow-productpage".into()),
                    ("retry_count", 1.into()),
                    ("upstream_request_attempt_count", 2.into()),
                ];
                for (k, want) in cases {
                    assert_eq!(v[k], want, "{k}");
                }
                let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
                assert_eq!(
                    (v["response_code"].clone(), v["response_flags"].clone()),
                    (503.into(), "UF".into())
                );
                assert_eq!(v["user_agent"], serde_json::Value::Null);
            }
        }
    }
}

#[test]
fn a_stuck_log_writer_drops_lines_instead_of_blocking() {
    let t = Telemetry::with_access_log(&no_log(), None);
    let peers = (
        t.source(&productpage()),
        t.destination(&reviews("v1"), &REVIEWS),
    );
    let (open, gate) = mpsc::channel();
    let (entered_tx, entered) = mpsc::channel();
    let sink = Sink {
        gate: Some(Arc::new(Mutex::new(gate))),
        entered: Some(Arc::new(Mutex::new(entered_tx))),
        ..Sink::default()
    };
    let log = AccessLog::with_writer(LogFormat::Text, 8, sink.clone()).unwrap();
    let r = full_record(&peers);
    log.log(&r);
    entered
        .recv_timeout(Duration::from_secs(10))
        .expect("the writer never wrote");
    // The writer is now stuck in a write: the queue takes 8 lines and the rest are dropped, at once.
    let started = std::time::Instant::now();
    for _ in 0..999 {
        log.log(&r);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "logging blocked"
    );
    assert_eq!(log.dropped(), 999 - 8);
    drop(open); // let the writer go: every write now returns at once
    log.flush();
    let written = String::from_utf8(sink.bytes.lock().unwrap().clone())
        .unwrap()
        .lines()
        .count() as u64;
    assert_eq!(written + log.dropped(), 1000);
}

#[test]
fn record_feeds_the_log_through_telemetry() {
    let sink = Sink::default();
    let log = AccessLog::with_writer(LogFormat::Json, 64, sink.clone()).unwrap();
    let t = Telemetry::with_access_log(&TelemetryConfig::default(), Some(log));
    let peers = (
        t.source(&productpage()),
        t.destination(&reviews("v1"), &REVIEWS),
    );
    for _ in 0..10 {
        t.record(&full_record(&peers));
    }
    t.access_log().unwrap().flush();
    assert_eq!(
        String::from_utf8(sink.bytes.lock().unwrap().clone())
            .unwrap()
            .lines()
            .count(),
        10
    );
    let (_, s) = scrape(&t);
    assert_eq!(
        counter(&s, "waypoint_access_log_lines_total", &[]),
        Some(10.0)
    );
    assert_eq!(counter(&s, "istio_requests_total", &[]), Some(10.0));
}
