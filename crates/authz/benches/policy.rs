//! Policy evaluation with 1, 100 and 1,000 rules: a realistic mix (principals, namespaces, paths, methods,
//! headers), ten rules per ALLOW policy, plus a DENY policy on encoded-path bypasses.
//!
//! `cargo bench -p authz --bench policy` — cases `evaluate/<rules>/<case>`:
//! - `last`: the request matches only the last rule (every rule is tried: the worst case);
//! - `none`: no rule matches (denied after trying them all);
//! - `first`: the first ALLOW rule matches.
//!
//! Save and compare baselines with `-- --save-baseline before` / `-- --baseline before`.

use std::sync::Arc;

use authz::attrs::{Http, Request};
use authz::model::{AuthorizationPolicySpec, Named};
use authz::policy::{CompiledPolicy, PolicySet, Tier};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderValue};

fn rule(i: usize) -> String {
    match i % 4 {
        0 => format!(
            "{{from: [{{source: {{principals: [cluster.local/ns/ns{i}/sa/client{i}]}}}}], to: [{{operation: {{methods: [GET, HEAD], paths: ['/api/v{i}/*']}}}}]}}"
        ),
        1 => format!(
            "{{from: [{{source: {{namespaces: [team{i}], notPrincipals: ['*/sa/blocked']}}}}], to: [{{operation: {{methods: [POST], paths: [/orders/{i}]}}}}]}}"
        ),
        2 => format!(
            "{{to: [{{operation: {{paths: ['*.v{i}.json'], notMethods: [DELETE]}}}}], when: [{{key: 'request.headers[x-tenant]', values: [tenant-{i}]}}]}}"
        ),
        _ => format!(
            "{{from: [{{source: {{principals: ['cluster.local/ns/svc{i}/*'], ipBlocks: [10.{}.0.0/16]}}}}], when: [{{key: 'request.headers[x-api-key]', values: ['key-{i}-*']}}]}}",
            i % 250
        ),
    }
}

fn policies(rules: usize) -> PolicySet {
    let mut out = Vec::new();
    let allow_rules: Vec<String> = (0..rules).map(rule).collect();
    for (p, chunk) in allow_rules.chunks(10).enumerate() {
        let yaml = format!("rules: [{}]", chunk.join(", "));
        out.push(named(&format!("allow-{p:04}"), &yaml));
    }
    out.push(named(
        "deny-admin",
        "{action: DENY, rules: [{to: [{operation: {paths: ['/admin*', '*/.env']}}]}, {from: [{source: {notPrincipals: ['*']}}]}]}",
    ));
    let compiled = out
        .iter()
        .map(|p| Arc::new(CompiledPolicy::compile(p, Tier::Waypoint).unwrap().0));
    PolicySet::new(Tier::Waypoint, compiled).unwrap()
}

fn named(name: &str, yaml: &str) -> Named<AuthorizationPolicySpec> {
    Named {
        namespace: "bench".into(),
        name: name.into(),
        dry_run: false,
        spec: serde_yaml::from_str(yaml).unwrap(),
    }
}

struct Req {
    ip: std::net::IpAddr,
    principal: String,
    namespace: String,
    method: &'static str,
    path: String,
    headers: HeaderMap,
}

impl Req {
    fn request(&self) -> Request<'_> {
        Request {
            source_principal: Some(&self.principal),
            source_namespace: Some(&self.namespace),
            source_ip: self.ip,
            remote_ip: self.ip,
            destination_ip: "10.96.0.10".parse().unwrap(),
            destination_port: 8080,
            http: Some(Http {
                host: "api.bench.svc.cluster.local:8080",
                method: self.method,
                path: &self.path,
                headers: &self.headers,
                auth: None,
            }),
        }
    }
}

/// A request that matches rule `i` only (rule kinds as in [`rule`]); `None`: matches no rule.
fn request_for(i: Option<usize>) -> Req {
    let mut headers = HeaderMap::new();
    headers.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    headers.insert("accept", HeaderValue::from_static("application/json"));
    let Some(i) = i else {
        return Req {
            ip: [10, 3, 1, 2].into(),
            principal: "cluster.local/ns/nobody/sa/nobody".into(),
            namespace: "nobody".into(),
            method: "GET",
            path: "/nothing/here?x=1".into(),
            headers,
        };
    };
    match i % 4 {
        0 => Req {
            ip: [10, 3, 1, 2].into(),
            principal: format!("cluster.local/ns/ns{i}/sa/client{i}"),
            namespace: format!("ns{i}"),
            method: "GET",
            path: format!("/api/v{i}/items/42?page=2"),
            headers,
        },
        1 => Req {
            ip: [10, 3, 1, 2].into(),
            principal: format!("cluster.local/ns/team{i}/sa/app"),
            namespace: format!("team{i}"),
            method: "POST",
            path: format!("/orders/{i}"),
            headers,
        },
        2 => {
            headers.insert(
                "x-tenant",
                HeaderValue::from_str(&format!("tenant-{i}")).unwrap(),
            );
            Req {
                ip: [10, 3, 1, 2].into(),
                principal: "cluster.local/ns/x/sa/y".into(),
                namespace: "x".into(),
                method: "GET",
                path: format!("/data/file.v{i}.json"),
                headers,
            }
        }
        _ => {
            headers.insert(
                "x-api-key",
                HeaderValue::from_str(&format!("key-{i}-abc")).unwrap(),
            );
            Req {
                ip: [10, (i % 250) as u8, 1, 2].into(),
                principal: format!("cluster.local/ns/svc{i}/sa/app"),
                namespace: format!("svc{i}"),
                method: "PUT",
                path: "/v1/things".into(),
                headers,
            }
        }
    }
}

fn evaluate(c: &mut Criterion) {
    let mut g = c.benchmark_group("evaluate");
    g.throughput(Throughput::Elements(1));
    for rules in [1usize, 100, 1000] {
        let set = policies(rules);
        let cases = [
            ("first", request_for(Some(0)), true),
            ("last", request_for(Some(rules - 1)), true),
            ("none", request_for(None), false),
        ];
        for (name, req, allowed) in &cases {
            let r = req.request();
            assert_eq!(
                set.evaluate(&r).unwrap().allowed(),
                *allowed,
                "{rules} rules, {name}"
            );
            g.bench_with_input(BenchmarkId::new(rules.to_string(), name), &r, |b, r| {
                b.iter(|| black_box(set.evaluate(black_box(r)).unwrap().verdict))
            });
        }
    }
    g.finish();
}

fn normalize(c: &mut Criterion) {
    let mut g = c.benchmark_group("normalize");
    g.throughput(Throughput::Elements(1));
    for (name, path) in [
        ("clean", "/api/v1/items/42?page=2"),
        ("encoded", "/api/%761/./items//../items/%34%32?page=2"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(authz::path::normalize(black_box(path)).unwrap().len()))
        });
    }
    g.finish();
}

criterion_group!(benches, evaluate, normalize);
criterion_main!(benches);
