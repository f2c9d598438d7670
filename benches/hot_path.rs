//! Criterion benchmarks of the request path's pure functions: route match, weighted pick and endpoint balancing,
//! the HTTPRoute filters, and snapshot parse and compile as the mesh grows.
//!
//! `cargo bench --bench hot_path` (save a baseline with `-- --save-baseline before`, compare with
//! `-- --baseline before`; `-- route/` runs only the routing ones, `-- filters/` the filters, and so on).
//! Before the benches it prints `allocations per call: <function> <n>` for each hot function (a counting global
//! allocator, `hot_path/alloc.rs`), and the `snapshot/*` benches print each mesh's and snapshot's heap bytes.
//!
//! - `route/match_and_pick`: [`route::route`] on the demo mesh's `reviews` (90/10 split).
//! - `route/match_{10,1000,10000}/{hit,miss}`: [`MatchTable::find`] over that many rules (a third exact paths,
//!   a third prefixes, a third prefixes with a header match); `hit` is a request for one of the last rules
//!   built (a header-matched prefix), `miss` a request no rule takes.
//! - `forward/{peer_hbone,xfcc,xfcc_per_request}`: what the proxy builds per try (`upstream::peer`, the Pingora
//!   peer of an HBONE endpoint, a copy of the endpoint's template), per connection (`proxy::xfcc`) and per
//!   request (`ConnInfo::xfcc`, the connection's value shared).
//! - `balance/*`: the route's weighted backend pick and each endpoint load balancer (`hot_path/balance.rs`).
//! - `filters/header_modifier_apply`: a `RequestHeaderModifier` (2 set, 2 add, 1 remove) on a request's
//!   headers (the per-iteration copy of the headers is made outside the measurement).
//! - `filters/redirect_location`: a `RequestRedirect` `Location` (scheme, prefix path, query kept).
//! - `filters/rewrite_apply_path`: a `URLRewrite` `ReplacePrefixMatch` with a query.
//! - `snapshot/{parse,compile}_{100,1000,10000}_services`: `Mesh::from_documents` and `snapshot::compile` of a
//!   mesh of that many services, 100 of them bound to the waypoint (`hot_path/scale.rs`).

#[path = "hot_path/alloc.rs"]
mod alloc;
#[path = "hot_path/balance.rs"]
mod balance;
#[path = "hot_path/scale.rs"]
mod scale;

use std::cell::OnceCell;
use std::hint::black_box;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use mesh::config::{GatewayRef, Mesh};
use mesh::identity::Identity;
use waypoint::route;
use waypoint::routes::matching::{
    HeaderMatch, MatchTable, Origin, PathMatch, RequestView, RouteMatch, StringMatch,
};
use waypoint::snapshot::{compile, WaypointSpec};
use waypoint_filters::{HeaderModifier, PathModifier, Redirect, RequestParts, UrlRewrite};

fn demo_mesh() -> Mesh {
    let text = waypoint::demo::DEMO_MANIFESTS.to_string();
    Mesh::from_documents(&[("mesh.yaml".into(), text)], "cluster.local").expect("valid manifests")
}

fn demo_spec() -> WaypointSpec {
    WaypointSpec {
        gateway: GatewayRef {
            namespace: "default".into(),
            name: "waypoint".into(),
        },
        hbone_port: 15008,
    }
}

fn bench(c: &mut Criterion) {
    let snap = compile(&demo_mesh(), &demo_spec()).unwrap();
    let svc = snap.services.values().next().unwrap().clone();
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    let (get, headers) = (Method::GET, request_headers("tenant-1"));
    g.bench_function("match_and_pick", |b| {
        let mut draw = 0u32;
        b.iter(|| {
            draw = draw.wrapping_add(7);
            let view = RequestView::new(&get, black_box("/reviews/1?x=y"), &headers);
            black_box(route::route(&svc, "default", &view, draw).unwrap().rule)
        })
    });
    route_match(&mut g);
    g.finish();

    // What the proxy builds per try and per request besides the pure decisions.
    let mut g = c.benchmark_group("forward");
    g.throughput(Throughput::Elements(1));
    let up = balance::backend(1, Default::default()).endpoints[0].clone();
    let ways = ways();
    let opts = waypoint::upstream::TryOptions::default();
    g.bench_function("peer_hbone", |b| {
        b.iter(|| black_box(waypoint::upstream::peer(black_box(&up), &ways, opts)))
    });
    let (by, caller) = (
        Identity::new("cluster.local", "default", "waypoint"),
        Identity::new("cluster.local", "default", "productpage"),
    );
    g.bench_function("xfcc", |b| {
        b.iter(|| black_box(waypoint::proxy::xfcc(black_box(&by), &caller)))
    });
    let conn = conn_info(&caller);
    g.bench_function("xfcc_per_request", |b| {
        b.iter(|| black_box(black_box(&conn).xfcc(&by)))
    });
    g.finish();
}

/// The ways out of a waypoint (nothing is dialled: the benches only build peers).
fn ways() -> waypoint::upstream::Ways {
    waypoint::testbed::dev_ways()
}

/// The connection info of a stream from `caller` (what `downstream::Inbound` builds per HBONE stream).
fn conn_info(caller: &Identity) -> waypoint::downstream::ConnInfo {
    waypoint::downstream::ConnInfo {
        peer_identity: caller.clone(),
        destination: ([10, 0, 0, 1], 9080).into(),
        peer_addr: ([10, 1, 0, 1], 15008).into(),
        principal: String::new(),
        telemetry_source: Default::default(),
        xfcc: Default::default(),
    }
}

/// Prints the allocations per call of each hot function (before any bench runs).
fn allocations(_: &mut Criterion) {
    let snap = compile(&demo_mesh(), &demo_spec()).unwrap();
    let svc = snap.services.values().next().unwrap().clone();
    let (get, headers) = (Method::GET, request_headers("tenant-1"));
    let mut draw = 0u32;
    let t = Table::new(1_000);
    let f = Filters::new();
    alloc::report("route/match_and_pick", || {
        draw = draw.wrapping_add(7);
        let view = RequestView::new(&get, "/reviews/1?x=y", &headers);
        black_box(route::route(&svc, "default", &view, draw).unwrap().rule);
    });
    alloc::report("route/match_1000/hit", || {
        black_box(t.find(&t.hit));
    });
    alloc::report("route/match_1000/miss", || {
        black_box(t.find(&t.miss));
    });
    balance::allocations();
    // The header modifier is measured on a copy of the headers; the copy's own allocations are subtracted.
    let copy = alloc::per_call(1000, || drop(black_box(f.headers.clone())));
    let apply = alloc::per_call(1000, || {
        let mut h = f.headers.clone();
        f.modifier.apply(&mut h);
        black_box(h);
    });
    println!(
        "allocations per call: filters/header_modifier_apply {:.2}",
        apply - copy
    );
    // Per try and per request in the proxy: the Pingora peer of an HBONE endpoint, the XFCC value.
    let up = balance::backend(1, Default::default()).endpoints[0].clone();
    let ways = ways();
    let opts = waypoint::upstream::TryOptions::default();
    let (by, caller) = (
        Identity::new("cluster.local", "default", "waypoint"),
        Identity::new("cluster.local", "default", "productpage"),
    );
    alloc::report("forward/peer_hbone", || {
        black_box(waypoint::upstream::peer(&up, &ways, opts));
    });
    alloc::report("forward/xfcc", || {
        black_box(waypoint::proxy::xfcc(&by, &caller));
    });
    let conn = conn_info(&caller);
    alloc::report("forward/xfcc_per_request", || {
        black_box(conn.xfcc(&by));
    });
    alloc::report("filters/redirect_location", || {
        black_box(f.redirect.location(&f.parts, Some("/v1")));
    });
    alloc::report("filters/rewrite_apply_path", || {
        black_box(f.rewrite.apply_path("/api/reviews/1?lang=en", Some("/api")));
    });
}

/// Rule `i` of a table of many: an exact path, a prefix, or a prefix with a header match, in turn; each from
/// its own route (oldest first), so precedence has every tie-breaker to apply.
fn rule(i: usize) -> (RouteMatch, Origin, usize) {
    let (path, headers) = match i % 3 {
        0 => (PathMatch::Exact(format!("/svc{i}/exact")), vec![]),
        1 => (PathMatch::Prefix(format!("/svc{i}/api")), vec![]),
        _ => (
            PathMatch::Prefix(format!("/svc{i}")),
            vec![HeaderMatch {
                name: HeaderName::from_static("x-tenant"),
                value: StringMatch::Exact(format!("tenant-{i}")),
            }],
        ),
    };
    let m = RouteMatch {
        path,
        method: (i % 4 < 2).then_some(Method::GET),
        headers,
        query: vec![],
    };
    let origin = Origin {
        created: Some(format!("2025-01-01T00:00:{:02}Z", i % 60)),
        route: format!("default/route-{i:05}"),
        rule: 0,
        match_index: 0,
    };
    (m, origin, i)
}

/// The last header-matched rule of a table of `n` (the request that selects it sends its tenant header).
fn last_header_rule(n: usize) -> usize {
    (0..n).rev().find(|i| i % 3 == 2).expect("n >= 3")
}

fn request_headers(tenant: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("user-agent", HeaderValue::from_static("curl/8.5.0"));
    h.insert("accept", HeaderValue::from_static("*/*"));
    h.insert(
        "x-request-id",
        HeaderValue::from_static("4bf92f3577b34da6a3ce929d0e0e4736"),
    );
    h.insert("x-tenant", HeaderValue::from_str(tenant).unwrap());
    h
}

/// A table of `n` rules with its hit and miss requests, checked once.
struct Table {
    table: MatchTable,
    hit: (String, HeaderMap),
    miss: (String, HeaderMap),
}

impl Table {
    fn new(n: usize) -> Table {
        let table = MatchTable::new((0..n).map(rule).collect());
        let hit_rule = last_header_rule(n);
        let hit = (
            format!("/svc{hit_rule}/items/42?page=2"),
            request_headers(&format!("tenant-{hit_rule}")),
        );
        let miss = (
            format!("/svc{}/api/items?page=2", n + 7),
            request_headers("tenant-none"),
        );
        let t = Table { table, hit, miss };
        assert_eq!(
            t.find(&t.hit),
            Some(hit_rule),
            "the hit request selects rule {hit_rule}"
        );
        assert_eq!(t.find(&t.miss), None, "the miss request matches nothing");
        t
    }

    fn find(&self, (path, headers): &(String, HeaderMap)) -> Option<usize> {
        let req = RequestView::new(&Method::GET, black_box(path), headers);
        self.table.find(&req).map(|(rule, _)| rule)
    }
}

fn route_match(g: &mut BenchmarkGroup<'_, WallTime>) {
    for n in [10usize, 1_000, 10_000] {
        // Built on first use, so filtering on other benches does not build (or need) the tables.
        let table = OnceCell::new();
        g.bench_function(format!("match_{n}/hit"), |b| {
            let t = table.get_or_init(|| Table::new(n));
            b.iter(|| black_box(t.find(&t.hit)))
        });
        g.bench_function(format!("match_{n}/miss"), |b| {
            let t = table.get_or_init(|| Table::new(n));
            b.iter(|| black_box(t.find(&t.miss)))
        });
    }
}

/// The filters benched, compiled once, and the request they apply to.
struct Filters {
    modifier: HeaderModifier,
    headers: HeaderMap,
    redirect: Redirect,
    parts: RequestParts<'static>,
    rewrite: UrlRewrite,
}

impl Filters {
    fn new() -> Filters {
        let strings = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let modifier = HeaderModifier::compile(
            &strings(&[("x-env", "canary"), ("x-tenant", "rewritten")]),
            &strings(&[("x-trace", "1"), ("accept", "application/json")]),
            &["x-debug".to_string()],
        )
        .unwrap();
        let mut headers = request_headers("tenant-1");
        headers.insert("x-debug", HeaderValue::from_static("true"));
        let redirect = Redirect::new(
            Some("https".into()),
            None,
            None,
            Some(PathModifier::Prefix("/v2".into())),
            Some(301),
        )
        .unwrap();
        let parts = RequestParts {
            scheme: "http",
            host: "reviews.default.svc.cluster.local",
            port: Some(9080),
            path: "/v1/reviews/1",
            query: Some("lang=en"),
        };
        let rewrite = UrlRewrite::new(None, Some(PathModifier::Prefix("/".into()))).unwrap();
        Filters {
            modifier,
            headers,
            redirect,
            parts,
            rewrite,
        }
    }
}

fn filters(c: &mut Criterion) {
    let mut g = c.benchmark_group("filters");
    g.throughput(Throughput::Elements(1));
    let f = Filters::new();
    g.bench_function("header_modifier_apply", |b| {
        b.iter_batched_ref(
            || f.headers.clone(),
            |h| f.modifier.apply(black_box(h)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("redirect_location", |b| {
        b.iter(|| black_box(f.redirect.location(black_box(&f.parts), Some("/v1"))))
    });
    g.bench_function("rewrite_apply_path", |b| {
        b.iter(|| {
            black_box(
                f.rewrite
                    .apply_path(black_box("/api/reviews/1?lang=en"), Some("/api")),
            )
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    allocations,
    bench,
    balance::bench,
    filters,
    scale::bench
);
criterion_main!(benches);
