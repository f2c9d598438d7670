//! Criterion benchmarks of recording one request: metrics, access-log formatting and hand-off.
//!
//! `cargo bench --bench telemetry` (`-- record/` for the end-to-end figures only). After criterion's groups
//! it prints `ns/record` for the whole `Telemetry::record` (metrics + a text line queued to a writer thread
//! writing to `io::sink`), on one thread and on two threads at once (contention on shards and the queue).
//!
//! - `record/metrics`: [`Telemetry::record_metrics`] on an existing series (read lock, hash, atomics).
//! - `record/metrics_and_text_log`, `record/metrics_and_json_log`: [`Telemetry::record`] with an access log.
//! - `access_log/format_{text,json}`: formatting one line into a reused buffer.
//! - `access_log/channel_handoff`: [`AccessLog::log`] (format + queue to the writer thread).
//! - `access_log/mutex_bufwriter`: the alternative, format + write under a mutex into a `BufWriter`.

use std::hint::black_box;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use waypoint::telemetry::access_log::{format_json, format_text};
use waypoint::telemetry::{
    AccessLog, Destination, LogFormat, PeerInfo, RequestRecord, ServiceInfo, Source, Telemetry,
    TelemetryConfig,
};

fn peers(t: &Telemetry) -> (Source, Destination) {
    let src = t.source(&PeerInfo {
        workload: "productpage-v1",
        namespace: "default",
        principal: "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        app: "productpage",
        version: "v1",
        ..Default::default()
    });
    let dst = t.destination(
        &PeerInfo {
            workload: "reviews-v2",
            namespace: "default",
            principal: "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
            app: "reviews",
            version: "v2",
            ..Default::default()
        },
        &ServiceInfo {
            host: "reviews.default.svc.cluster.local",
            name: "reviews",
            namespace: "default",
        },
    );
    (src, dst)
}

fn record<'a>(p: &'a (Source, Destination)) -> RequestRecord<'a> {
    let addr = |s: &str| s.parse::<SocketAddr>().ok();
    let mut r = RequestRecord::new(&p.0, &p.1, SystemTime::now());
    r.method = "GET";
    r.path = "/reviews/0";
    r.status = 200;
    r.response_code_details = "via_upstream";
    r.bytes_sent = 295;
    r.duration = Duration::from_micros(4_200);
    r.upstream_service_time = Some(Duration::from_millis(3));
    r.user_agent = "Mozilla/5.0 (X11; Linux x86_64)";
    r.request_id = "7c3b0b3e-1f0a-4d1e-9b8a-2f1c3d4e5f60";
    r.authority = "reviews:9080";
    r.upstream_host = addr("10.0.0.12:9080");
    r.upstream_cluster = "outbound|9080|v2|reviews.default.svc.cluster.local";
    r.downstream_local_address = addr("10.0.0.20:15008");
    r.downstream_remote_address = addr("10.0.0.50:41234");
    r.route_name = "default/reviews";
    r.tries = 1;
    r
}

fn telemetry(format: Option<LogFormat>) -> Telemetry {
    let cfg = TelemetryConfig {
        access_log: format,
        access_log_queue: 65_536,
        ..Default::default()
    };
    let log =
        format.map(|f| AccessLog::with_writer(f, cfg.access_log_queue, std::io::sink()).unwrap());
    Telemetry::with_access_log(&cfg, log)
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1));
    for (name, format) in [
        ("metrics", None),
        ("metrics_and_text_log", Some(LogFormat::Text)),
        ("metrics_and_json_log", Some(LogFormat::Json)),
    ] {
        let t = telemetry(format);
        let p = peers(&t);
        let r = record(&p);
        if format.is_none() {
            g.bench_function(name, |b| b.iter(|| t.record_metrics(black_box(&r))));
        } else {
            g.bench_function(name, |b| b.iter(|| t.record(black_box(&r))));
        }
    }
    g.finish();

    let mut g = c.benchmark_group("access_log");
    g.throughput(Throughput::Elements(1));
    let t = telemetry(None);
    let p = peers(&t);
    let r = record(&p);
    let mut buf = String::with_capacity(512);
    g.bench_function("format_text", |b| {
        b.iter(|| {
            buf.clear();
            format_text(black_box(&r), &mut buf);
        })
    });
    g.bench_function("format_json", |b| {
        b.iter(|| {
            buf.clear();
            format_json(black_box(&r), &mut buf);
        })
    });
    let log = AccessLog::with_writer(LogFormat::Text, 65_536, std::io::sink()).unwrap();
    g.bench_function("channel_handoff", |b| b.iter(|| log.log(black_box(&r))));
    let out = Mutex::new(std::io::BufWriter::new(std::io::sink()));
    g.bench_function("mutex_bufwriter", |b| {
        b.iter(|| {
            buf.clear();
            format_text(black_box(&r), &mut buf);
            let _ = out.lock().unwrap().write_all(buf.as_bytes());
        })
    });
    g.finish();
    log.flush();
    println!(
        "access_log/channel_handoff: {} lines dropped while benchmarking (queue full)",
        log.dropped()
    );

    ns_per_record();
}

/// `Telemetry::record` (metrics + text line) timed by hand on 1 and 2 threads; prints ns/record.
fn ns_per_record() {
    const N: u32 = 1_000_000;
    for threads in [1u32, 2] {
        let t = Arc::new(telemetry(Some(LogFormat::Text)));
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                let t = t.clone();
                s.spawn(move || {
                    let p = peers(&t);
                    let r = record(&p);
                    for _ in 0..N {
                        t.record(black_box(&r));
                    }
                });
            }
        });
        let elapsed = started.elapsed();
        let log = t.access_log().unwrap();
        log.flush();
        println!(
            "record (metrics + text log) on {threads} thread(s): {:.0} ns/record per thread, {:.0} ns/record overall; \
             {} lines written, {} dropped",
            elapsed.as_nanos() as f64 / f64::from(N),
            elapsed.as_nanos() as f64 / f64::from(N * threads),
            log.written(),
            log.dropped()
        );
    }
}

criterion_group! {
    name = telemetry_benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(telemetry_benches);
