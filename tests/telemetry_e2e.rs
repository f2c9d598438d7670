//! Istio metrics through the real data path: requests from a client pod through its ztunnel, the waypoint and
//! the destination's ztunnel are counted in `istio_requests_total` with `reporter="waypoint"`, the caller's
//! certificate identity as `source_principal`, the destination workload and service, and the response code;
//! scraped from the waypoint's admin port and parsed as Prometheus text.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypoint::demo::client::Proto;

/// `GET /stats/prometheus` on the admin port, parsed.
async fn scrape(admin: SocketAddr) -> prometheus_parse::Scrape {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /stats/prometheus HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Chunked or not, the lines parse the same once chunk-size lines are dropped.
    let lines = body
        .lines()
        .filter(|l| !l.chars().all(|c| c.is_ascii_hexdigit()) || l.is_empty())
        .map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).unwrap()
}

fn requests(scrape: &prometheus_parse::Scrape, want: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == "istio_requests_total")
        .filter(|s| want.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_with_istio_labels() {
    let mesh = common::mesh(None).await;
    let admin = mesh
        .waypoint
        .admin_addr()
        .expect("the demo waypoint has an admin port");
    let t = mesh.target();
    let mut conn = waypoint::demo::client::Conn::open(&t, Proto::Http1)
        .await
        .unwrap();
    let mut by_status: BTreeMap<u16, u32> = BTreeMap::new();
    for _ in 0..20 {
        let r = conn.get(&t, "/reviews").await.unwrap();
        *by_status.entry(r.status).or_default() += 1;
    }
    assert_eq!(by_status.get(&200), Some(&20), "{by_status:?}");
    let scrape = scrape(admin).await;
    let ok = requests(
        &scrape,
        &[
            ("reporter", "waypoint"),
            ("response_code", "200"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
            ),
            ("source_workload_namespace", "default"),
            ("request_protocol", "http"),
            ("response_flags", "-"),
        ],
    );
    assert_eq!(ok, 20.0, "istio_requests_total for the caller");
    // Every counted request names a destination service and workload from the manifests.
    let services: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "istio_requests_total")
        .map(|s| {
            (
                s.labels
                    .get("destination_service")
                    .unwrap_or("")
                    .to_string(),
                s.labels
                    .get("destination_workload")
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    assert!(
        services.iter().all(|(svc, wl)| svc.starts_with("reviews")
            && svc.ends_with(".default.svc.cluster.local")
            && wl != "unknown"
            && !wl.is_empty()),
        "{services:?}"
    );
    // The duration histogram counted the same requests.
    let durations: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "istio_request_duration_milliseconds")
        .filter(|s| s.labels.get("response_code") == Some("200"))
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            _ => 0.0,
        })
        .sum();
    assert_eq!(durations, 20.0, "istio_request_duration_milliseconds count");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_are_counted_with_their_flag() {
    let mesh = common::mesh(None).await;
    let admin = mesh.waypoint.admin_addr().unwrap();
    let t = mesh.target();
    let mut conn = waypoint::demo::client::Conn::open(&t, Proto::Http1)
        .await
        .unwrap();
    let r = conn.get(&t, "/no-such-route-here").await.unwrap();
    let scrape = scrape(admin).await;
    let n = requests(
        &scrape,
        &[
            ("reporter", "waypoint"),
            ("response_code", &r.status.to_string()),
        ],
    );
    assert!(n >= 1.0, "the {} reply is counted", r.status);
    mesh.shutdown().await;
}
