//! Bounded cardinality: 100,000 short-lived callers (one series each) through a waypoint whose metrics keep
//! at most 10,000 series. Series stay at the cap, evictions are counted, a steady caller's series survives
//! with exact counts, and the process's memory stops growing once the cap is reached.
//! (Its own test binary, so no other test allocates in the process while memory is measured.)

use std::time::{Duration, SystemTime};

use waypoint::telemetry::{PeerInfo, RequestRecord, ServiceInfo, Telemetry, TelemetryConfig};

/// Resident set size in bytes (Linux), if readable.
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0)
}

#[test]
fn churning_sources_keep_series_and_memory_bounded() {
    const CAP: usize = 10_000;
    const JOBS: usize = 100_000;
    let t = Telemetry::with_access_log(
        &TelemetryConfig {
            max_series: CAP,
            access_log: None,
            ..Default::default()
        },
        None,
    );
    let svc = ServiceInfo {
        host: "reviews.default.svc.cluster.local",
        name: "reviews",
        namespace: "default",
    };
    let dst = t.destination(
        &PeerInfo {
            workload: "reviews-v1",
            namespace: "default",
            ..Default::default()
        },
        &svc,
    );
    let steady = t.source(&PeerInfo {
        workload: "productpage-v1",
        namespace: "default",
        ..Default::default()
    });
    let now = SystemTime::now();
    let mut rss_at_cap = None;
    let mut steady_count = 0u64;
    for job in 0..JOBS {
        // A short-lived job: its own pod name and identity, one request, gone.
        let name = format!("batch-{job}-x7k2p");
        let principal = format!("spiffe://cluster.local/ns/jobs/sa/{name}");
        let src = t.source(&PeerInfo {
            workload: &name,
            namespace: "jobs",
            principal: &principal,
            ..Default::default()
        });
        let mut r = RequestRecord::new(&src, &dst, now);
        r.status = 200;
        r.duration = Duration::from_millis(3);
        r.bytes_sent = 1000;
        t.record(&r);
        if job % 10 == 0 {
            let mut r = RequestRecord::new(&steady, &dst, now);
            r.status = 200;
            t.record(&r);
            steady_count += 1;
        }
        assert!(
            t.request_series() <= CAP,
            "{} series after {job} jobs",
            t.request_series()
        );
        if job == 3 * CAP {
            rss_at_cap = rss();
        }
    }
    let rss_end = rss();

    let mut text = String::new();
    t.render(&mut text);
    let held = value(&text, "waypoint_telemetry_series{family=\"requests\"} ");
    let evicted = value(
        &text,
        "waypoint_telemetry_series_evicted_total{family=\"requests\"} ",
    );
    assert!(held > 0.0 && held <= CAP as f64, "held {held}");
    assert_eq!(
        held + evicted,
        (JOBS + 1) as f64,
        "every series is held or counted as evicted"
    );
    let steady_line = text
        .lines()
        .find(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("source_workload=\"productpage-v1\"")
        })
        .expect("the steady caller's series was evicted");
    assert!(
        steady_line.ends_with(&format!(" {steady_count}")),
        "{steady_line}"
    );
    let exposed = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .count();
    assert_eq!(exposed as f64, held);

    if let (Some(a), Some(b)) = (rss_at_cap, rss_end) {
        let growth = b.saturating_sub(a);
        println!(
            "series held {held}, evicted {evicted}; RSS after {} jobs {:.1} MiB, after {JOBS} {:.1} MiB (+{:.1} MiB)",
            3 * CAP,
            a as f64 / 1048576.0,
            b as f64 / 1048576.0,
            growth as f64 / 1048576.0
        );
        // Unbounded, the 70,000 further series would need ~100 MiB (≈1.5 KiB each with their labels).
        assert!(
            growth < 24 << 20,
            "RSS grew {growth} bytes after the cap was reached"
        );
    }
}
