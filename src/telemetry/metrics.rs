//! Istio's standard metrics, `reporter="waypoint"`, as lock-free series in bounded maps.
//!
//! One request series (key: source id, destination id, protocol, code, gRPC status, flags, security policy)
//! carries all four HTTP metrics — `istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes` — so the cap on series is a cap per metric. TCP series
//! (`istio_tcp_*`) are keyed without the HTTP labels. The histograms use Envoy's default buckets, which is
//! what Istio's proxies export for all three (0.5 ms … 3600000).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::labels::{Destination, Source};
use super::record::{RequestProtocol, RequestRecord, ResponseFlags, SecurityPolicy};
use super::series::SeriesMap;

/// Envoy's default histogram bounds (Istio exports its histograms with these).
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The same bounds in thousandths (durations are recorded in microseconds, sizes in bytes × 1000), so a
/// bucket is found with integer compares.
const BOUNDS_MILLI: [u64; 19] = {
    let mut out = [0u64; 19];
    let mut i = 0;
    while i < 19 {
        out[i] = (BUCKETS[i] * 1000.0) as u64;
        i += 1;
    }
    out
};

/// A histogram of atomics; values in thousandths of the exposed unit.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; 19],
    count: AtomicU64,
    sum_milli: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe_milli(&self, v: u64) {
        let i = BOUNDS_MILLI.partition_point(|b| *b < v);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_milli.fetch_add(v, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &dyn Fn(&mut String)) {
        let mut cumulative = 0u64;
        for (bound, b) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += b.load(Ordering::Relaxed);
            let _ = write!(out, "{name}_bucket{{");
            labels(out);
            let _ = writeln!(out, ",le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed).max(cumulative);
        let _ = write!(out, "{name}_bucket{{");
        labels(out);
        let _ = writeln!(out, ",le=\"+Inf\"}} {count}");
        let _ = write!(out, "{name}_sum{{");
        labels(out);
        let sum = self.sum_milli.load(Ordering::Relaxed);
        let _ = writeln!(out, "}} {}", sum as f64 / 1000.0);
        let _ = write!(out, "{name}_count{{");
        labels(out);
        let _ = writeln!(out, "}} {count}");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RequestKey {
    src: u64,
    dst: u64,
    protocol: RequestProtocol,
    code: u16,
    /// 0..=16, or `u8::MAX` for none.
    grpc: u8,
    flags: u32,
    policy: SecurityPolicy,
}

#[derive(Debug)]
pub(crate) struct RequestSeries {
    source: Source,
    destination: Destination,
    flags: ResponseFlags,
    requests: AtomicU64,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TcpKey {
    src: u64,
    dst: u64,
    flags: u32,
    policy: SecurityPolicy,
}

#[derive(Debug)]
pub(crate) struct TcpSeries {
    source: Source,
    destination: Destination,
    flags: ResponseFlags,
    sent: AtomicU64,
    received: AtomicU64,
    opened: AtomicU64,
    closed: AtomicU64,
}

/// The Istio metric families.
pub(crate) struct IstioMetrics {
    pub(crate) requests: SeriesMap<RequestKey, RequestSeries>,
    pub(crate) tcp: SeriesMap<TcpKey, TcpSeries>,
}

/// What changes on a TCP series.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TcpEvent {
    Opened,
    Bytes { sent: u64, received: u64 },
    Closed { sent: u64, received: u64 },
}

impl IstioMetrics {
    pub(crate) fn new(max_series: usize) -> Self {
        IstioMetrics {
            requests: SeriesMap::new(max_series),
            tcp: SeriesMap::new(max_series),
        }
    }

    pub(crate) fn record(&self, r: &RequestRecord<'_>) {
        let key = RequestKey {
            src: r.source.id(),
            dst: r.destination.id(),
            protocol: r.protocol,
            code: r.status,
            grpc: r.grpc_status.unwrap_or(u8::MAX),
            flags: r.flags.bits(),
            policy: r.security_policy,
        };
        let make = || RequestSeries {
            source: r.source.clone(),
            destination: r.destination.clone(),
            flags: r.flags,
            requests: AtomicU64::new(0),
            duration: Histogram::default(),
            request_bytes: Histogram::default(),
            response_bytes: Histogram::default(),
        };
        let micros = u64::try_from(r.duration.as_micros()).unwrap_or(u64::MAX);
        self.requests.with(key, make, |s| {
            s.requests.fetch_add(1, Ordering::Relaxed);
            s.duration.observe_milli(micros);
            s.request_bytes
                .observe_milli(r.bytes_received.saturating_mul(1000));
            s.response_bytes
                .observe_milli(r.bytes_sent.saturating_mul(1000));
        });
    }

    pub(crate) fn tcp(
        &self,
        source: &Source,
        destination: &Destination,
        policy: SecurityPolicy,
        flags: ResponseFlags,
        event: TcpEvent,
    ) {
        let key = TcpKey {
            src: source.id(),
            dst: destination.id(),
            flags: flags.bits(),
            policy,
        };
        let make = || TcpSeries {
            source: source.clone(),
            destination: destination.clone(),
            flags,
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
        };
        self.tcp.with(key, make, |s| match event {
            TcpEvent::Opened => {
                s.opened.fetch_add(1, Ordering::Relaxed);
            }
            TcpEvent::Bytes { sent, received } | TcpEvent::Closed { sent, received } => {
                s.sent.fetch_add(sent, Ordering::Relaxed);
                s.received.fetch_add(received, Ordering::Relaxed);
                if matches!(event, TcpEvent::Closed { .. }) {
                    s.closed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    pub(crate) fn render(&self, out: &mut String) {
        let requests = self.requests.snapshot();
        if !requests.is_empty() {
            let labels = |s: &RequestSeries, k: &RequestKey, out: &mut String| {
                request_labels(out, s, k);
            };
            family(
                out,
                "istio_requests_total",
                "counter",
                "Requests handled by the waypoint.",
            );
            for (k, e) in &requests {
                out.push_str("istio_requests_total{");
                labels(&e.value, k, out);
                let _ = writeln!(out, "}} {}", e.value.requests.load(Ordering::Relaxed));
            }
            type Pick = fn(&RequestSeries) -> &Histogram;
            let hists: [(&str, &str, Pick); 3] = [
                (
                    "istio_request_duration_milliseconds",
                    "Request duration in milliseconds.",
                    |s| &s.duration,
                ),
                ("istio_request_bytes", "Request body sizes in bytes.", |s| {
                    &s.request_bytes
                }),
                (
                    "istio_response_bytes",
                    "Response body sizes in bytes.",
                    |s| &s.response_bytes,
                ),
            ];
            for (name, help, pick) in hists {
                family(out, name, "histogram", help);
                for (k, e) in &requests {
                    pick(&e.value).render(out, name, &|out: &mut String| labels(&e.value, k, out));
                }
            }
        }
        let tcp = self.tcp.snapshot();
        if !tcp.is_empty() {
            type Pick = fn(&TcpSeries) -> &AtomicU64;
            let counters: [(&str, &str, Pick); 4] = [
                (
                    "istio_tcp_sent_bytes_total",
                    "Bytes sent to the client on TCP connections.",
                    |s| &s.sent,
                ),
                (
                    "istio_tcp_received_bytes_total",
                    "Bytes received from the client on TCP connections.",
                    |s| &s.received,
                ),
                (
                    "istio_tcp_connections_opened_total",
                    "TCP connections opened.",
                    |s| &s.opened,
                ),
                (
                    "istio_tcp_connections_closed_total",
                    "TCP connections closed.",
                    |s| &s.closed,
                ),
            ];
            for (name, help, pick) in counters {
                family(out, name, "counter", help);
                for (k, e) in &tcp {
                    let s = &e.value;
                    let _ = write!(out, "{name}{{reporter=\"waypoint\",");
                    out.push_str(s.source.labels().rendered());
                    out.push(',');
                    out.push_str(s.destination.labels().rendered());
                    let _ = writeln!(
                        out,
                        ",request_protocol=\"tcp\",response_flags=\"{}\",connection_security_policy=\"{}\"}} {}",
                        s.flags,
                        k.policy.as_str(),
                        pick(s).load(Ordering::Relaxed)
                    );
                }
            }
        }
    }
}

fn request_labels(out: &mut String, s: &RequestSeries, k: &RequestKey) {
    out.push_str("reporter=\"waypoint\",");
    out.push_str(s.source.labels().rendered());
    out.push(',');
    out.push_str(s.destination.labels().rendered());
    let _ = write!(
        out,
        ",request_protocol=\"{}\",response_code=\"{}\",grpc_response_status=\"",
        k.protocol.as_str(),
        k.code
    );
    if k.grpc != u8::MAX {
        let _ = write!(out, "{}", k.grpc);
    }
    let _ = write!(
        out,
        "\",response_flags=\"{}\",connection_security_policy=\"{}\"",
        s.flags,
        k.policy.as_str()
    );
}

/// The `# HELP` and `# TYPE` lines of a metric family.
pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_envoy_buckets() {
        // (value in thousandths, index of the first bucket that counts it; 19 = only +Inf)
        let cases = [
            (0u64, 0usize),
            (500, 0),
            (501, 1),
            (1000, 1),
            (1001, 2),
            (250_000, 7),
            (3_600_000_000, 18),
            (3_600_000_001, 19),
        ];
        for (v, want) in cases {
            let h = Histogram::default();
            h.observe_milli(v);
            let got = h
                .buckets
                .iter()
                .position(|b| b.load(Ordering::Relaxed) == 1)
                .unwrap_or(19);
            assert_eq!(got, want, "value {v}");
            assert_eq!(h.count.load(Ordering::Relaxed), 1);
        }
    }

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::default();
        for v in [400, 2_000, 2_000, 9_000_000_000] {
            h.observe_milli(v);
        }
        let mut out = String::new();
        h.render(&mut out, "m", &|o: &mut String| o.push_str("a=\"b\""));
        assert!(out.contains("m_bucket{a=\"b\",le=\"0.5\"} 1\n"), "{out}");
        assert!(out.contains("m_bucket{a=\"b\",le=\"5\"} 3\n"), "{out}");
        assert!(
            out.contains("m_bucket{a=\"b\",le=\"3600000\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("m_bucket{a=\"b\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("m_count{a=\"b\"} 4\n"), "{out}");
        assert!(out.contains("m_sum{a=\"b\"} 9000004.4\n"), "{out}");
    }
}
