//! `balance/*`: the route's weighted choice of a backend ([`route::pick_backend`]) and the endpoint choice
//! within it ([`Backend::pick`], [`Backend::next_endpoint`]) by each load-balancer policy, over 10 and 100
//! HBONE endpoints. Each pick's in-flight guard is dropped inside the measurement (as a try ends).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use http::{HeaderMap, HeaderValue};
use mesh::identity::Identity;
use waypoint::resilience::balance::PickKey;
use waypoint::resilience::policy::{HashOn, LoadBalancer, TrafficPolicy};
use waypoint::route;
use waypoint::snapshot::{Backend, HboneUpstream, Upstream};

use super::alloc;

/// A backend of `n` HBONE endpoints `10.1.x.y:8080` balanced by `lb`.
pub fn backend(n: usize, lb: LoadBalancer) -> Backend {
    let identity = Identity::new("cluster.local", "default", "reviews");
    let endpoints = (0..n)
        .map(|i| {
            let ip = IpAddr::V4(Ipv4Addr::new(10, 1, (i / 256) as u8, (i % 256) as u8));
            let hbone = HboneUpstream {
                hbone_addr: SocketAddr::new(ip, 15008),
                identity: identity.clone(),
            };
            Upstream::new(SocketAddr::new(ip, 8080), Some(hbone))
        })
        .collect();
    let mut b = Backend::new("default/reviews:9080".into(), 1, endpoints, None);
    b.policy = Arc::new(TrafficPolicy {
        load_balancer: lb,
        ..TrafficPolicy::default()
    });
    b
}

/// The policies benched, by name.
fn policies() -> Vec<(&'static str, LoadBalancer)> {
    vec![
        ("round_robin", LoadBalancer::RoundRobin),
        ("least_request", LoadBalancer::LeastRequest),
        ("random", LoadBalancer::Random),
        (
            "ring_hash_header",
            LoadBalancer::ConsistentHash(HashOn::Header("x-user".into())),
        ),
        (
            "ring_hash_cookie",
            LoadBalancer::ConsistentHash(HashOn::Cookie {
                name: "session".into(),
                path: Some("/".into()),
                ttl: Some(Duration::from_secs(3600)),
            }),
        ),
    ]
}

/// A request's headers with a user header and a session cookie (what the hashing policies read).
fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("user-agent", HeaderValue::from_static("curl/8.5.0"));
    h.insert("accept", HeaderValue::from_static("*/*"));
    h.insert("x-user", HeaderValue::from_static("user-4711"));
    h.insert(
        "cookie",
        HeaderValue::from_static("theme=dark; session=4bf92f3577b34da6; lang=en"),
    );
    h
}

pub fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("balance");
    g.throughput(Throughput::Elements(1));

    // The route's weighted pick: a 90/10 canary and an 8-way split (the draw walks every range in turn).
    for weights in [&[90u32, 10][..], &[5, 10, 15, 20, 20, 15, 10, 5]] {
        let bs: Vec<Backend> = weights
            .iter()
            .map(|&w| Backend::new("default/b:80".into(), w, vec![], None))
            .collect();
        let total = weights.iter().sum();
        g.bench_function(format!("weighted_pick_{}", weights.len()), |b| {
            let mut draw = 0u32;
            b.iter(|| {
                draw = draw.wrapping_add(7);
                black_box(route::pick_backend(&bs, total, black_box(draw)).unwrap())
            })
        });
    }

    let h = headers();
    let now = Instant::now();
    for n in [10usize, 100] {
        for (name, lb) in policies() {
            let be = backend(n, lb);
            g.bench_function(format!("{name}_{n}"), |b| {
                let key = PickKey::new(&h);
                b.iter(|| black_box(be.pick(black_box(&key), now).unwrap().upstream.addr))
            });
        }
        // A retry: the previous try's endpoint is excluded (round robin lands on it every `n`th pick).
        let be = backend(n, LoadBalancer::RoundRobin);
        let excluded = be.endpoints[0].addr;
        g.bench_function(format!("round_robin_{n}_retry"), |b| {
            let key = PickKey {
                exclude: Some(excluded),
                ..PickKey::new(&h)
            };
            b.iter(|| black_box(be.pick(black_box(&key), now).unwrap().upstream.addr))
        });
        g.bench_function(format!("next_endpoint_{n}"), |b| {
            b.iter(|| black_box(be.next_endpoint().unwrap().addr))
        });
    }
    g.finish();
}

/// Allocations per pick, for the report.
pub fn allocations() {
    let h = headers();
    let no_cookie = HeaderMap::new();
    let now = Instant::now();
    for (name, lb) in policies() {
        let be = backend(10, lb);
        let key = PickKey::new(&h);
        alloc::report(&format!("balance/{name}_10"), || {
            black_box(be.pick(&key, now));
        });
    }
    let be = backend(
        10,
        LoadBalancer::ConsistentHash(HashOn::Cookie {
            name: "session".into(),
            path: Some("/".into()),
            ttl: Some(Duration::from_secs(3600)),
        }),
    );
    let key = PickKey::new(&no_cookie);
    alloc::report(
        "balance/ring_hash_cookie_10 (no cookie: one made up)",
        || {
            black_box(be.pick(&key, now));
        },
    );
}
