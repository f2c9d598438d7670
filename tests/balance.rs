//! Endpoint choice (`resilience::balance`) and the `DestinationRule` policy a snapshot attaches: pure tables over
//! hand-built backends, and compiled snapshots sharing state across a config swap.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use mesh::config::{GatewayRef, Mesh};
use waypoint::resilience::balance::{stable_hash, PickKey, Ring};
use waypoint::resilience::outlier::Outcome;
use waypoint::resilience::policy::{
    ConnectionPool, HashOn, LoadBalancer, OutlierDetection, TrafficPolicy,
};
use waypoint::resilience::ResilienceState;
use waypoint::snapshot::{compile, compile_with_state, Backend, Snapshot, Upstream, WaypointSpec};

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8 + 1], 8080))
}

/// A backend of `n` endpoints under `lb`, their health registered with its Service's (as compile does).
fn backend(n: usize, lb: LoadBalancer) -> Backend {
    let mut b = Backend::new("default/svc:80".into(), 1, Vec::new(), None);
    b.endpoints = (0..n)
        .map(|i| Upstream {
            health: b.health.endpoint(addr(i)),
            ..Upstream::new(addr(i), None)
        })
        .collect();
    b.policy = Arc::new(TrafficPolicy {
        load_balancer: lb,
        ..TrafficPolicy::default()
    });
    b
}

/// Ejects endpoint `i` of `b` (one 5xx with a threshold of 1).
fn eject(b: &Backend, i: usize, now: Instant) {
    let policy = OutlierDetection {
        consecutive_5xx: 1,
        max_ejection_percent: 100,
        ..OutlierDetection::default()
    };
    // A large endpoint count lets the test eject them all (the detector itself never would).
    let ejected = b.health.record(
        &b.endpoints[i].health,
        Outcome::ServerError,
        &policy,
        1000,
        now,
    );
    assert!(
        ejected && b.endpoints[i].health.is_ejected(now),
        "eject {i}"
    );
}

/// Picks `count` times; how many times each endpoint index was chosen.
fn spread(b: &Backend, key: &PickKey<'_>, count: usize, now: Instant) -> Vec<usize> {
    let mut out = vec![0; b.endpoints.len()];
    for _ in 0..count {
        let p = b.pick(key, now).expect("an endpoint");
        out[b
            .endpoints
            .iter()
            .position(|u| u.addr == p.upstream.addr)
            .unwrap()] += 1;
    }
    out
}

fn header(name: &str, value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
        value.parse().unwrap(),
    );
    h
}

#[test]
fn round_robin_spreads_evenly() {
    let b = backend(4, LoadBalancer::RoundRobin);
    let h = HeaderMap::new();
    assert_eq!(spread(&b, &PickKey::new(&h), 400, Instant::now()), [100; 4]);
    // Random spreads too (loosely).
    let b = backend(4, LoadBalancer::Random);
    for n in spread(&b, &PickKey::new(&h), 4000, Instant::now()) {
        assert!((800..1200).contains(&n), "{n}");
    }
    assert!(backend(0, LoadBalancer::RoundRobin)
        .pick(&PickKey::new(&h), Instant::now())
        .is_none());
}

#[test]
fn least_request_prefers_the_less_loaded() {
    let h = HeaderMap::new();
    let now = Instant::now();
    let b = backend(3, LoadBalancer::LeastRequest);
    // Endpoint 0 is busy: two distinct endpoints are compared, so it never wins against an idle one.
    let busy: Vec<_> = (0..5).map(|_| b.endpoints[0].load.start()).collect();
    assert_eq!(b.endpoints[0].load.in_flight(), 5);
    let picks = spread(&b, &PickKey::new(&h), 3000, now);
    assert_eq!(picks[0], 0, "{picks:?}");
    assert!(picks[1] > 1200 && picks[2] > 1200, "{picks:?}");
    drop(busy);
    assert_eq!(b.endpoints[0].load.in_flight(), 0, "guards release");
    // Held picks balance the load themselves: 300 held tries end up 100 on each endpoint, give or take.
    let held: Vec<_> = (0..300)
        .map(|_| b.pick(&PickKey::new(&h), now).unwrap().in_flight)
        .collect();
    for u in &b.endpoints {
        assert!(
            (90..=110).contains(&u.load.in_flight()),
            "{}",
            u.load.in_flight()
        );
    }
    drop(held);
    // With one endpoint loaded and one idle, always the idle one.
    let b = backend(2, LoadBalancer::LeastRequest);
    let _busy = b.endpoints[1].load.start();
    assert_eq!(spread(&b, &PickKey::new(&h), 200, now), [200, 0]);
}

#[test]
fn ejected_endpoints_are_skipped_and_all_ejected_falls_back() {
    let h = HeaderMap::new();
    let now = Instant::now();
    let hash = LoadBalancer::ConsistentHash(HashOn::Header("x-user".into()));
    let user = header("x-user", "alice");
    for lb in [
        LoadBalancer::RoundRobin,
        LoadBalancer::LeastRequest,
        LoadBalancer::Random,
        hash,
    ] {
        let b = backend(4, lb.clone());
        let key = PickKey::new(if matches!(lb, LoadBalancer::ConsistentHash(_)) {
            &user
        } else {
            &h
        });
        eject(&b, 1, now);
        eject(&b, 2, now);
        let picks = spread(&b, &key, 400, now);
        assert_eq!((picks[1], picks[2]), (0, 0), "{lb:?}: {picks:?}");
        eject(&b, 0, now);
        eject(&b, 3, now);
        // All ejected: ejection is ignored rather than failing the request.
        assert_eq!(
            spread(&b, &key, 100, now).iter().sum::<usize>(),
            100,
            "{lb:?}"
        );
        // Ejections end on their own.
        let later = now + Duration::from_secs(31);
        assert!(!b.endpoints[0].health.is_ejected(later));
    }
    // Round robin over what is left stays even.
    let b = backend(3, LoadBalancer::RoundRobin);
    eject(&b, 1, now);
    assert_eq!(spread(&b, &PickKey::new(&h), 300, now), [150, 0, 150]);
}

/// (what, ejected endpoints, excluded endpoint, the only endpoints allowed).
type Case = (
    &'static str,
    &'static [usize],
    Option<usize>,
    &'static [usize],
);

#[test]
fn the_previous_try_endpoint_is_avoided_when_another_exists() {
    let now = Instant::now();
    let user = header("x-user", "alice");
    let policies = [
        LoadBalancer::RoundRobin,
        LoadBalancer::LeastRequest,
        LoadBalancer::Random,
        LoadBalancer::ConsistentHash(HashOn::Header("x-user".into())),
    ];
    for lb in policies {
        let b = backend(3, lb.clone());
        let first = b.pick(&PickKey::new(&user), now).unwrap().upstream.addr;
        let retry = PickKey {
            exclude: Some(first),
            ..PickKey::new(&user)
        };
        for _ in 0..50 {
            assert_ne!(b.pick(&retry, now).unwrap().upstream.addr, first, "{lb:?}");
        }
        let cases: [Case; 5] = [
            ("healthy other", &[], Some(0), &[1, 2]),
            ("the other is ejected", &[1], Some(0), &[2]),
            (
                "only the excluded is healthy: it beats an ejected one",
                &[1, 2],
                Some(0),
                &[0],
            ),
            (
                "all ejected: still not the excluded",
                &[0, 1, 2],
                Some(0),
                &[1, 2],
            ),
            ("exclude is not an endpoint", &[2], Some(9), &[0, 1]),
        ];
        for (what, ejected, exclude, allowed) in cases {
            let b = backend(3, lb.clone());
            for &i in ejected {
                eject(&b, i, now);
            }
            let key = PickKey {
                exclude: exclude.map(addr),
                ..PickKey::new(&user)
            };
            let picks = spread(&b, &key, 60, now);
            for (i, n) in picks.iter().enumerate() {
                assert!(*n == 0 || allowed.contains(&i), "{lb:?} {what}: {picks:?}");
            }
        }
    }
    // A single endpoint is used even when excluded.
    let b = backend(1, LoadBalancer::RoundRobin);
    let h = HeaderMap::new();
    let key = PickKey {
        exclude: Some(addr(0)),
        ..PickKey::new(&h)
    };
    assert_eq!(b.pick(&key, now).unwrap().upstream.addr, addr(0));
}

#[test]
fn ring_is_stable_across_rebuilds_and_moves_few_keys() {
    let n = 10;
    let ring = Ring::new((0..n).map(addr));
    assert_eq!(ring.len(), n * 100);
    let keys: Vec<u64> = (0..10_000)
        .map(|k| stable_hash(format!("user-{k}").as_bytes()))
        .collect();
    let placed: Vec<usize> = keys.iter().map(|&k| ring.get(k).unwrap()).collect();
    // Rebuilt (another snapshot, another process): the same placement.
    let again = Ring::new((0..n).map(addr));
    assert!(keys
        .iter()
        .zip(&placed)
        .all(|(&k, &e)| again.get(k) == Some(e)));
    // Balanced enough: each endpoint gets 1/N ± 50 %.
    let mut per = vec![0usize; n];
    placed.iter().for_each(|&e| per[e] += 1);
    assert!(per.iter().all(|&c| (500..1500).contains(&c)), "{per:?}");
    // One endpoint more (inserted in the middle of the sorted list, as the mesh sorts by address): only keys
    // that go to the new one move, fewer than 2/N of them.
    let mut grown: Vec<SocketAddr> = (0..n).map(addr).collect();
    grown.insert(5, SocketAddr::from(([10, 1, 0, 5], 9090)));
    let bigger = Ring::new(grown.iter().copied());
    let mut moved = 0;
    for (&k, &e) in keys.iter().zip(&placed) {
        let now_at = grown[bigger.get(k).unwrap()];
        if now_at != addr(e) {
            moved += 1;
            assert_eq!(now_at, grown[5], "a key moved between old endpoints");
        }
    }
    assert!(
        moved > 0 && moved < 2 * keys.len() / n,
        "{moved} of {} moved",
        keys.len()
    );
}

#[test]
fn hash_keys_header_cookie_query_source_ip() {
    let now = Instant::now();
    let cookie_policy = |ttl| HashOn::Cookie {
        name: "sticky".into(),
        path: Some("/".into()),
        ttl,
    };
    let b = backend(
        8,
        LoadBalancer::ConsistentHash(HashOn::Header("x-user".into())),
    );
    let at = |b: &Backend, key: &PickKey<'_>| b.pick(key, now).unwrap().upstream.addr;
    // The same key, the same endpoint; different keys spread.
    let mut seen = BTreeMap::new();
    for u in 0..200 {
        let h = header("x-user", &format!("user-{u}"));
        let first = at(&b, &PickKey::new(&h));
        assert!((0..5).all(|_| at(&b, &PickKey::new(&h)) == first));
        *seen.entry(first).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 8, "{seen:?}");
    // No key: round robin.
    let none = HeaderMap::new();
    assert_eq!(spread(&b, &PickKey::new(&none), 80, now), [10; 8]);

    let q = backend(
        8,
        LoadBalancer::ConsistentHash(HashOn::QueryParameter("id".into())),
    );
    let query = |s: &'static str| PickKey {
        query: Some(s),
        ..PickKey::new(&none)
    };
    assert_eq!(at(&q, &query("a=1&id=42")), at(&q, &query("id=42&b=2")));
    assert!(
        (0..40)
            .map(|i| at(&q, &query(["id=1", "id=2", "id=3", "id=4"][i % 4])))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1
    );
    assert_eq!(
        spread(&q, &query("other=1"), 16, now),
        [2; 8],
        "absent: round robin"
    );

    let s = backend(8, LoadBalancer::ConsistentHash(HashOn::SourceIp));
    let from = |ip: [u8; 4]| PickKey {
        source_ip: Some(IpAddr::from(ip)),
        ..PickKey::new(&none)
    };
    let a = at(&s, &from([10, 0, 0, 7]));
    assert!((0..10).all(|_| at(&s, &from([10, 0, 0, 7])) == a));

    // A cookie without ttl: hashed when present, round robin when absent, never set.
    let c = backend(8, LoadBalancer::ConsistentHash(cookie_policy(None)));
    let jar = header("cookie", "a=b; sticky=v1");
    let first = at(&c, &PickKey::new(&jar));
    assert!((0..5).all(|_| at(&c, &PickKey::new(&jar)) == first));
    assert!(c
        .pick(&PickKey::new(&none), now)
        .unwrap()
        .set_cookie
        .is_none());
    // With a ttl: a request without the cookie gets one to set, and sending it back sticks to the endpoint.
    let c = backend(
        8,
        LoadBalancer::ConsistentHash(cookie_policy(Some(Duration::from_secs(60)))),
    );
    for _ in 0..20 {
        let p = c.pick(&PickKey::new(&none), now).unwrap();
        let set = p.set_cookie.expect("a cookie to set");
        assert!(
            set.starts_with("sticky=") && set.ends_with("; Path=/; Max-Age=60; HttpOnly"),
            "{set}"
        );
        let value = set.split(';').next().unwrap();
        let back = header("cookie", value);
        let again = c.pick(&PickKey::new(&back), now).unwrap();
        assert_eq!(again.upstream.addr, p.upstream.addr, "{value}");
        assert!(again.set_cookie.is_none());
    }
}

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
status:
  addresses: [{type: IPAddress, value: 10.0.0.20}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.0.0.1
  ports: [{name: http, port: 9080, targetPort: 8080}, {name: admin, port: 9090, targetPort: 8090}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: default, labels: {istio.io/use-waypoint: none}}
spec:
  clusterIP: 10.0.0.2
  ports: [{name: http, port: 9080, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: reviews-1, namespace: default, labels: {kubernetes.io/service-name: reviews}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: admin, port: 8090}]
endpoints:
- addresses: [10.1.0.1]
- addresses: [10.1.0.2]
- addresses: [10.1.0.3]
- addresses: [10.1.0.4]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ratings-1, namespace: default, labels: {kubernetes.io/service-name: ratings}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.2.0.1, 10.2.0.2]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      http: {http2MaxRequests: 100, maxRetries: 3}
    outlierDetection: {consecutive5xxErrors: 2}
    loadBalancer:
      consistentHash: {httpHeaderName: X-User}
    portLevelSettings:
    - port: {number: 9090}
      loadBalancer: {simple: LEAST_CONN}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings.default.svc.cluster.local
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - backendRefs: [{name: reviews, port: 9080}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: ratings, port: 9080}}
"#;

fn spec() -> WaypointSpec {
    WaypointSpec {
        gateway: GatewayRef {
            namespace: "default".into(),
            name: "waypoint".into(),
        },
        hbone_port: 15008,
    }
}

fn mesh(text: &str) -> Mesh {
    Mesh::from_documents(&[("mesh.yaml".into(), text.to_string())], "cluster.local")
        .unwrap_or_else(|e| panic!("{e}"))
}

fn backend_of<'s>(snap: &'s Snapshot, vip: &str) -> &'s Backend {
    &snap.service(vip.parse().unwrap()).unwrap().rules[0].backends[0]
}

#[test]
fn snapshots_carry_the_destination_rule_policy() {
    let snap = compile(&mesh(MESH), &spec()).unwrap();
    let reviews = backend_of(&snap, "10.0.0.1:9080");
    assert_eq!(
        *reviews.policy,
        TrafficPolicy {
            connection_pool: ConnectionPool {
                max_requests: Some(100),
                max_retries: Some(3),
                ..ConnectionPool::default()
            },
            outlier: Some(OutlierDetection {
                consecutive_5xx: 2,
                ..OutlierDetection::default()
            }),
            load_balancer: LoadBalancer::ConsistentHash(HashOn::Header("x-user".into())),
        }
    );
    assert_eq!(reviews.endpoints.len(), 4);
    // The other port: the port-level load balancer, the rest from the top level.
    let admin = backend_of(&snap, "10.0.0.1:9090");
    assert_eq!(admin.policy.load_balancer, LoadBalancer::LeastRequest);
    assert_eq!(admin.policy.connection_pool.max_requests, Some(100));
    // The mirror backend has its Service's policy.
    let rule = &snap
        .service("10.0.0.1:9080".parse().unwrap())
        .unwrap()
        .rules[0];
    let mirror = &rule.filters.mirrors[0].backend;
    assert_eq!(mirror.policy.load_balancer, LoadBalancer::Random);
    assert_eq!(mirror.endpoints.len(), 2);
    // Without a DestinationRule: the defaults.
    let bare = MESH
        .split("---\napiVersion: networking.istio.io")
        .next()
        .unwrap();
    let snap = compile(&mesh(bare), &spec()).unwrap();
    assert_eq!(
        *backend_of(&snap, "10.0.0.1:9080").policy,
        TrafficPolicy::default()
    );
}

#[test]
fn a_config_swap_keeps_state_handles_and_hash_placement() {
    let state = ResilienceState::default();
    let m = mesh(MESH);
    let old = compile_with_state(&m, &spec(), &state).unwrap();
    let new = compile_with_state(&m, &spec(), &state).unwrap();
    let (a, b) = (
        backend_of(&old, "10.0.0.1:9080"),
        backend_of(&new, "10.0.0.1:9080"),
    );
    assert!(Arc::ptr_eq(&a.breaker, &b.breaker));
    assert!(Arc::ptr_eq(&a.health, &b.health));
    assert!(Arc::ptr_eq(
        &a.breaker,
        &state.breakers.for_service("default/reviews")
    ));
    assert!(Arc::ptr_eq(
        &a.health,
        &state.outliers.for_service("default/reviews")
    ));
    for (x, y) in a.endpoints.iter().zip(&b.endpoints) {
        assert!(Arc::ptr_eq(&x.health, &y.health) && Arc::ptr_eq(&x.load, &y.load));
        assert!(Arc::ptr_eq(&x.health, &a.health.endpoint(x.addr)));
        assert!(Arc::ptr_eq(&x.load, &state.load.endpoint(x.addr)));
    }
    // An ejection and an in-flight try made through the old snapshot show in the new one.
    let now = Instant::now();
    eject(a, 0, now);
    assert!(b.endpoints[0].health.is_ejected(now));
    let _try = a.endpoints[1].load.start();
    assert_eq!(b.endpoints[1].load.in_flight(), 1);
    // The same user reaches the same endpoint through either snapshot, and through a fresh process' state.
    let fresh = compile(&m, &spec()).unwrap();
    let c = backend_of(&fresh, "10.0.0.1:9080");
    let later = now + Duration::from_secs(3600);
    let mut placement = HashMap::new();
    for u in 0..100 {
        let h = header("x-user", &format!("user-{u}"));
        let key = PickKey::new(&h);
        let here = a.pick(&key, later).unwrap().upstream.addr;
        assert_eq!(b.pick(&key, later).unwrap().upstream.addr, here);
        assert_eq!(c.pick(&key, later).unwrap().upstream.addr, here);
        *placement.entry(here).or_insert(0) += 1;
    }
    assert_eq!(placement.len(), 4, "{placement:?}");
    // The ring was built at compile time from the four addresses.
    assert_eq!(b.ring().len(), 4 * waypoint::resilience::balance::VNODES);
}

#[test]
fn zero_connection_pool_limits_mean_unlimited_as_in_istio() {
    use mesh::config::Mesh;
    let text = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: zero, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 0}
      http: {http1MaxPendingRequests: 0, http2MaxRequests: 0, maxRequestsPerConnection: 0, maxRetries: 0}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}
";
    let mesh =
        Mesh::from_documents(&[("m.yaml".into(), text.to_string())], "cluster.local").unwrap();
    let svc = mesh.service("default", "reviews").unwrap();
    let p = waypoint::resilience::policy::TrafficPolicy::of_service(&mesh, svc, 80);
    let c = &p.connection_pool;
    assert_eq!(
        (
            c.max_connections,
            c.max_pending_requests,
            c.max_requests,
            c.max_requests_per_connection,
            c.max_retries
        ),
        (None, None, None, None, None)
    );
}
