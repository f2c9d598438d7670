//! Circuit breaking and outlier detection state machines: limits, release, ejection and return, the ejection cap
//! under concurrency, and bounded registries. Time is passed in (`now`), so every case is deterministic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use waypoint::resilience::breaker::{Breakers, Overflow, ServiceBreaker};
use waypoint::resilience::outlier::{
    ejection_time, max_ejected, EndpointHealth, Outcome, Outliers, ServiceHealth,
};
use waypoint::resilience::policy::{ConnectionPool, OutlierDetection};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080))
}

// ---------------------------------------------------------------------------------------------------------------
// Circuit breaking

fn pool(max_requests: Option<u32>, max_retries: Option<u32>) -> ConnectionPool {
    ConnectionPool {
        max_requests,
        max_retries,
        ..ConnectionPool::default()
    }
}

#[test]
fn request_limit_admits_up_to_the_limit_and_counts_overflows() {
    // (limit, attempts held at once, admitted, refused)
    let cases = [
        (None, 1000, 1000, 0),
        (Some(0), 5, 0, 5),
        (Some(1), 3, 1, 2),
        (Some(3), 3, 3, 0),
        (Some(3), 10, 3, 7),
    ];
    for (limit, attempts, admitted, refused) in cases {
        let breaker = Breakers::default().for_service("default/reviews");
        let limits = pool(limit, None);
        let results: Vec<_> = (0..attempts)
            .map(|_| breaker.try_request(&limits))
            .collect();
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, admitted, "limit {limit:?}");
        assert_eq!(breaker.in_flight() as usize, admitted, "limit {limit:?}");
        assert_eq!(breaker.overflows(), refused, "limit {limit:?}");
        assert_eq!(breaker.overflows_of(Overflow::Requests), refused);
        assert!(results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|&e| e == Overflow::Requests));
        drop(results);
        assert_eq!(
            breaker.in_flight(),
            0,
            "every permit released, limit {limit:?}"
        );
        if let Some(limit) = limit {
            let again: Vec<_> = (0..limit)
                .map(|_| breaker.try_request(&limits).unwrap())
                .collect();
            assert_eq!(
                again.len() as u32,
                breaker.in_flight(),
                "released units are reusable"
            );
        }
    }
}

#[test]
fn each_limit_has_its_own_counter() {
    let breaker = Breakers::default().for_service("default/reviews");
    let limits = ConnectionPool {
        max_requests: Some(2),
        max_retries: Some(1),
        max_pending_requests: Some(1),
        max_connections: Some(3),
        ..ConnectionPool::default()
    };
    let _r = [
        breaker.try_request(&limits).unwrap(),
        breaker.try_request(&limits).unwrap(),
    ];
    let retry = breaker.try_retry(&limits).unwrap();
    assert_eq!(retry.kind(), Overflow::Retries);
    let _p = breaker.try_pending(&limits).unwrap();
    let _c: Vec<_> = (0..3)
        .map(|_| breaker.try_connection(&limits).unwrap())
        .collect();

    assert_eq!(
        breaker.try_request(&limits).unwrap_err(),
        Overflow::Requests
    );
    assert_eq!(breaker.try_retry(&limits).unwrap_err(), Overflow::Retries);
    assert_eq!(breaker.try_pending(&limits).unwrap_err(), Overflow::Pending);
    assert_eq!(
        breaker.try_connection(&limits).unwrap_err(),
        Overflow::Connections
    );
    for kind in Overflow::ALL {
        assert_eq!(breaker.overflows_of(kind), 1, "{kind:?}");
    }
    assert_eq!(breaker.overflows(), 4);
    assert_eq!(
        (
            breaker.in_flight(),
            breaker.held_now(Overflow::Retries),
            breaker.held_now(Overflow::Pending)
        ),
        (2, 1, 1)
    );
    assert_eq!(breaker.held_now(Overflow::Connections), 3);

    drop(retry);
    assert_eq!(breaker.held_now(Overflow::Retries), 0);
    assert!(
        breaker.try_retry(&limits).is_ok(),
        "a finished retry frees its unit"
    );
    assert_eq!(
        breaker.in_flight(),
        2,
        "retries do not touch the request count"
    );
}

#[test]
fn unlimited_retries_when_unset() {
    let breaker = Breakers::default().for_service("default/reviews");
    let limits = pool(Some(1), None);
    let retries: Vec<_> = (0..10_000)
        .map(|_| breaker.try_retry(&limits).unwrap())
        .collect();
    assert_eq!(breaker.held_now(Overflow::Retries), 10_000);
    drop(retries);
    assert_eq!(breaker.held_now(Overflow::Retries), 0);
    assert_eq!(breaker.overflows(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limit_holds_and_every_permit_is_released_under_many_tasks() {
    const LIMIT: u32 = 8;
    const TASKS: usize = 64;
    const ROUNDS: usize = 200;
    let breaker = Breakers::default().for_service("default/reviews");
    let peak = Arc::new(AtomicU32::new(0));
    let admitted = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (breaker, peak, admitted) = (breaker.clone(), peak.clone(), admitted.clone());
            tokio::spawn(async move {
                let limits = pool(Some(LIMIT), None);
                for _ in 0..ROUNDS {
                    if let Ok(_permit) = breaker.try_request(&limits) {
                        admitted.fetch_add(1, Ordering::Relaxed);
                        peak.fetch_max(breaker.in_flight(), Ordering::Relaxed);
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak <= LIMIT,
        "in flight reached {peak} over a limit of {LIMIT}"
    );
    assert!(
        breaker.overflows() > 0,
        "64 tasks on a limit of 8 must overflow"
    );
    assert_eq!(
        u64::from(admitted.load(Ordering::Relaxed)) + breaker.overflows(),
        (TASKS * ROUNDS) as u64,
        "every attempt is admitted or counted as an overflow"
    );
    assert_eq!(breaker.in_flight(), 0);
}

#[tokio::test]
async fn a_cancelled_request_releases_its_permit() {
    let breaker = Breakers::default().for_service("default/reviews");
    let limits = pool(Some(1), None);
    let held = breaker.try_request(&limits).unwrap();
    let task = tokio::spawn(async move {
        let _held = held;
        std::future::pending::<()>().await;
    });
    tokio::task::yield_now().await;
    assert_eq!(breaker.in_flight(), 1);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(breaker.in_flight(), 0);
    assert!(breaker.try_request(&limits).is_ok());
}

#[test]
fn a_panicking_request_releases_its_permit() {
    let breaker = Breakers::default().for_service("default/reviews");
    let inside = breaker.clone();
    let joined = std::thread::spawn(move || {
        let _permit = inside.try_request(&pool(Some(1), None)).unwrap();
        panic!("handler failed");
    })
    .join();
    assert!(joined.is_err());
    assert_eq!(breaker.in_flight(), 0);
}

#[test]
fn breakers_are_shared_while_held_and_pruned_when_not() {
    let breakers = Breakers::default();
    let old = breakers.for_service("default/reviews");
    let permit = old.try_request(&pool(Some(5), None)).unwrap();
    let new = breakers.for_service("default/reviews");
    assert!(
        Arc::ptr_eq(&old, &new),
        "a hot swap keeps the same counters"
    );
    assert_eq!(new.in_flight(), 1);

    drop((old, new));
    assert_eq!(
        breakers.retain_live(),
        1,
        "a permit in flight keeps its breaker"
    );
    drop(permit);
    assert_eq!(breakers.retain_live(), 0);
    assert!(breakers.is_empty());

    // Churn: services come and go across many swaps; the registry stays bounded without retain_live.
    let live: Vec<Arc<ServiceBreaker>> = (0..5)
        .map(|i| breakers.for_service(&format!("live/s{i}")))
        .collect();
    for i in 0..10_000 {
        drop(breakers.for_service(&format!("gone/s{i}")));
    }
    assert!(breakers.len() <= 32, "registry grew to {}", breakers.len());
    for (i, b) in live.iter().enumerate() {
        assert!(
            Arc::ptr_eq(b, &breakers.for_service(&format!("live/s{i}"))),
            "live entries survive pruning"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Outlier detection

fn policy(consecutive_5xx: u32, consecutive_gateway: u32) -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx,
        consecutive_gateway,
        interval: secs(10),
        base_ejection_time: secs(30),
        max_ejection_percent: 100,
    }
}

/// A service of `n` endpoints, with their handles.
fn service(n: usize) -> (Arc<ServiceHealth>, Vec<Arc<EndpointHealth>>) {
    let health = Outliers::default().for_service("default/reviews");
    let eps = (0..n).map(|i| health.endpoint(addr(i))).collect();
    (health, eps)
}

#[test]
fn consecutive_errors_eject_at_the_threshold() {
    use Outcome::{GatewayError as G, ServerError as E, Success as S};
    // (consecutive5xxErrors, consecutiveGatewayErrors, outcomes, the index of the outcome that ejects)
    let cases: &[(u32, u32, &[Outcome], Option<usize>)] = &[
        (3, 0, &[E, E, E], Some(2)),
        (3, 0, &[E, E, S, E, E], None),
        (3, 0, &[E, E, S, E, E, E], Some(5)),
        (3, 0, &[G, E, G], Some(2)),
        (1, 0, &[S, S, E], Some(2)),
        (0, 0, &[E, G, E, G, G, G, G], None),
        (0, 2, &[E, E, E, E], None),
        (0, 2, &[G, E, G], None),
        (0, 2, &[G, S, G], None),
        (0, 2, &[E, G, G], Some(2)),
        (5, 2, &[G, G], Some(1)),
        (2, 5, &[G, E], Some(1)),
        (5, 3, &[E, E, G, G, G], Some(4)),
    ];
    for (i, &(c5xx, cgw, outcomes, ejects_at)) in cases.iter().enumerate() {
        let (health, eps) = service(10);
        let now = Instant::now();
        let got = outcomes
            .iter()
            .position(|&o| health.record(&eps[0], o, &policy(c5xx, cgw), 10, now));
        assert_eq!(
            got, ejects_at,
            "case {i}: {c5xx} 5xx / {cgw} gateway on {outcomes:?}"
        );
        assert_eq!(eps[0].is_ejected(now), ejects_at.is_some(), "case {i}");
        assert_eq!(
            health.ejected(now),
            u32::from(ejects_at.is_some()),
            "case {i}"
        );
    }
}

#[test]
fn an_ejection_ends_at_its_time_and_the_endpoint_starts_clean() {
    let (health, eps) = service(4);
    let p = policy(3, 0);
    let t0 = Instant::now();
    for _ in 0..3 {
        health.record(&eps[0], Outcome::ServerError, &p, 4, t0);
    }
    assert!(eps[0].is_ejected(t0));
    assert!(eps[0].is_ejected(t0 + secs(30) - Duration::from_nanos(1)));
    assert!(!eps[0].is_ejected(t0 + secs(30)), "base ejection time × 1");
    assert_eq!(health.ejected(t0 + secs(29)), 1);
    assert_eq!(health.ejected(t0 + secs(30)), 0);

    // Tries in flight during the ejection do not count; after it the endpoint needs a full threshold again.
    let during = t0 + secs(10);
    for _ in 0..10 {
        assert!(!health.record(&eps[0], Outcome::ServerError, &p, 4, during));
    }
    let after = t0 + secs(31);
    assert!(!health.record(&eps[0], Outcome::ServerError, &p, 4, after));
    assert!(!health.record(&eps[0], Outcome::ServerError, &p, 4, after));
    assert!(health.record(&eps[0], Outcome::ServerError, &p, 4, after));
    assert_eq!(health.ejections_total(), 2);
}

#[test]
fn repeated_ejections_last_longer_up_to_the_cap() {
    // (baseEjectionTime, expected durations of consecutive ejections with no healthy interval between)
    let cases: &[(u64, &[u64])] = &[
        (30, &[30, 60, 90, 120]),
        (100, &[100, 200, 300, 300, 300]),
        (400, &[400, 400]),
    ];
    for &(base, expected) in cases {
        let (health, eps) = service(4);
        let p = OutlierDetection {
            base_ejection_time: secs(base),
            ..policy(1, 0)
        };
        let mut now = Instant::now();
        for (n, &want) in expected.iter().enumerate() {
            assert!(
                health.record(&eps[0], Outcome::GatewayError, &p, 4, now),
                "base {base}, ejection {n}"
            );
            assert!(
                eps[0].is_ejected(now + secs(want) - Duration::from_millis(1)),
                "base {base}, ejection {n}"
            );
            assert!(
                !eps[0].is_ejected(now + secs(want)),
                "base {base}, ejection {n} lasts {want} s"
            );
            now += secs(want); // fails again the moment it returns
        }
    }
    assert_eq!(ejection_time(secs(30), 11), secs(300));
    assert_eq!(ejection_time(secs(30), 0), Duration::ZERO);
}

#[test]
fn healthy_intervals_decay_the_multiplier() {
    let (health, eps) = service(4);
    let p = OutlierDetection {
        base_ejection_time: secs(10),
        interval: secs(10),
        ..policy(1, 0)
    };
    let t0 = Instant::now();
    assert!(health.record(&eps[0], Outcome::ServerError, &p, 4, t0)); // 10 s
    assert!(health.record(&eps[0], Outcome::ServerError, &p, 4, t0 + secs(10))); // 20 s, ends at 30 s
    assert!(health.record(&eps[0], Outcome::ServerError, &p, 4, t0 + secs(30))); // 30 s, ends at 60 s
    assert_eq!(eps[0].multiplier(&p, t0 + secs(60)), 3);
    assert_eq!(
        eps[0].multiplier(&p, t0 + secs(69)),
        3,
        "not a whole interval yet"
    );
    assert_eq!(eps[0].multiplier(&p, t0 + secs(70)), 2);
    assert_eq!(eps[0].multiplier(&p, t0 + secs(80)), 1);
    // Ejected again after 1 healthy interval: multiplier 3 − 1 = 2, so this one lasts 3 × 10 s.
    let t1 = t0 + secs(75);
    assert!(health.record(&eps[0], Outcome::ServerError, &p, 4, t1));
    assert!(eps[0].is_ejected(t1 + secs(29)));
    assert!(!eps[0].is_ejected(t1 + secs(30)));
    // Long healthy: back to the base ejection time.
    let t2 = t1 + secs(30) + secs(1000);
    assert_eq!(eps[0].multiplier(&p, t2), 0);
    assert!(health.record(&eps[0], Outcome::ServerError, &p, 4, t2));
    assert!(!eps[0].is_ejected(t2 + secs(10)));
}

#[test]
fn ejection_cap_rounds_like_envoy_and_never_takes_all() {
    // (endpoints, maxEjectionPercent, at most ejected at once)
    let cases = [
        (0, 10, 0),
        (1, 100, 0),
        (2, 50, 1),
        (2, 100, 1),
        (2, 10, 1),
        (3, 50, 2),
        (4, 0, 0),
        (5, 10, 1),
        (10, 10, 1),
        (10, 11, 2),
        (10, 100, 9),
        (20, 10, 2),
        (100, 10, 10),
        (10, 250, 9),
    ];
    for (endpoints, percent, cap) in cases {
        assert_eq!(
            max_ejected(endpoints, percent),
            cap,
            "{endpoints} endpoints at {percent} %"
        );
    }
}

#[test]
fn max_ejection_percent_is_respected() {
    // (endpoints, maxEjectionPercent, ejected after every endpoint fails)
    let cases = [
        (10, 10, 1),
        (2, 50, 1),
        (1, 100, 0),
        (10, 100, 9),
        (20, 25, 5),
        (6, 0, 0),
    ];
    for (n, percent, want) in cases {
        let (health, eps) = service(n);
        let p = OutlierDetection {
            max_ejection_percent: percent,
            ..policy(1, 0)
        };
        let now = Instant::now();
        let ejected = eps
            .iter()
            .filter(|ep| health.record(ep, Outcome::GatewayError, &p, n, now))
            .count();
        assert_eq!(ejected, want, "{n} endpoints at {percent} %");
        assert_eq!(health.ejected(now), want as u32);
        assert_eq!(eps.iter().filter(|ep| ep.is_ejected(now)).count(), want);
        assert_eq!(health.ejections_refused() as usize, n - want);

        // When the ejections end, the next failing endpoints may take their place.
        let later = now + secs(30);
        let next = eps
            .iter()
            .rev()
            .filter(|ep| health.record(ep, Outcome::GatewayError, &p, n, later))
            .count();
        assert_eq!(
            next, want,
            "{n} endpoints at {percent} %, after the first ejections ended"
        );
    }
}

#[test]
fn fewer_endpoints_means_a_smaller_cap_for_new_ejections() {
    let (health, eps) = service(10);
    let now = Instant::now();
    let p = OutlierDetection {
        max_ejection_percent: 30,
        ..policy(1, 0)
    };
    let ejected = (0..3)
        .filter(|&i| health.record(&eps[i], Outcome::GatewayError, &p, 10, now))
        .count();
    assert_eq!(ejected, 3);
    // The service shrank to 4 endpoints (cap 2): the 3 ejections stand until they end, no new one is made.
    assert!(!health.record(&eps[5], Outcome::GatewayError, &p, 4, now));
    assert_eq!(health.ejected(now), 3);
}

#[test]
fn concurrent_failures_never_exceed_the_cap() {
    const THREADS: usize = 8;
    // (endpoints, maxEjectionPercent)
    for (n, percent) in [(10, 10), (10, 30), (2, 50), (50, 100), (1, 100)] {
        let (health, eps) = service(n);
        let p = OutlierDetection {
            max_ejection_percent: percent,
            ..policy(2, 1)
        };
        let cap = max_ejected(n, percent);
        for phase in 0..3u64 {
            // Each phase starts after the previous phase's ejections (≤ 300 s) have ended.
            let now = Instant::now() + secs(1000 * phase);
            let barrier = Barrier::new(THREADS);
            let ejections: u32 = std::thread::scope(|s| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|t| {
                        let (health, eps, p, barrier) = (&health, &eps, &p, &barrier);
                        s.spawn(move || {
                            barrier.wait();
                            let mut mine = 0;
                            for round in 0..200 {
                                let ep = &eps[(t + round) % n];
                                let outcome = if round % 7 == 0 {
                                    Outcome::ServerError
                                } else {
                                    Outcome::GatewayError
                                };
                                mine += u32::from(health.record(ep, outcome, p, n, now));
                                assert!(health.ejected(now) <= cap, "over the cap of {cap}");
                            }
                            mine
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).sum()
            });
            assert_eq!(
                ejections, cap,
                "{n} endpoints at {percent} %, phase {phase}"
            );
            assert_eq!(health.ejected(now), cap);
            assert_eq!(
                eps.iter().filter(|ep| ep.is_ejected(now)).count() as u32,
                cap
            );
        }
    }
}

#[test]
fn health_is_shared_while_held_and_pruned_when_not() {
    let outliers = Outliers::default();
    let health = outliers.for_service("default/reviews");
    assert!(Arc::ptr_eq(
        &health,
        &outliers.for_service("default/reviews")
    ));
    let a = health.endpoint(addr(0));
    assert!(
        Arc::ptr_eq(&a, &health.endpoint(addr(0))),
        "a hot swap keeps the endpoint's state"
    );

    // An ejected endpoint that leaves the service gives its place back.
    let b = health.endpoint(addr(1));
    let now = Instant::now();
    let p = OutlierDetection {
        max_ejection_percent: 50,
        ..policy(1, 0)
    };
    assert!(health.record(&a, Outcome::GatewayError, &p, 2, now));
    assert!(
        !health.record(&b, Outcome::GatewayError, &p, 2, now),
        "cap of 1 reached"
    );
    drop(a);
    assert_eq!(health.retain_live(), 1);
    assert_eq!(health.ejected(now), 0);
    let c = health.endpoint(addr(2));
    assert!(health.record(&c, Outcome::GatewayError, &p, 2, now));

    // Endpoint churn stays bounded without retain_live.
    for i in 0..10_000 {
        drop(health.endpoint(addr(100 + i % 5000)));
    }
    assert!(
        health.endpoints_held() <= 32,
        "endpoints grew to {}",
        health.endpoints_held()
    );
    assert!(
        c.is_ejected(now),
        "live endpoints keep their state through pruning"
    );
    assert_eq!(health.ejected(now), 1);

    // Services.
    drop((b, c, health));
    assert_eq!(outliers.retain_live(), 0);
    for i in 0..10_000 {
        drop(outliers.for_service(&format!("gone/s{i}")));
    }
    assert!(outliers.len() <= 32, "services grew to {}", outliers.len());
}

#[test]
fn outcome_from_status() {
    let cases = [
        (200, Outcome::Success),
        (404, Outcome::Success),
        (500, Outcome::ServerError),
        (501, Outcome::ServerError),
        (502, Outcome::GatewayError),
        (503, Outcome::GatewayError),
        (504, Outcome::GatewayError),
        (599, Outcome::ServerError),
    ];
    for (status, outcome) in cases {
        assert_eq!(Outcome::from_status(status), outcome, "{status}");
    }
}
