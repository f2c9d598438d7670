//! [`super::Explanation`] as human-readable text (what `waypoint explain` prints without `--json`, and the
//! admin endpoint's `/explain?format=text`).

use std::fmt::Write as _;
use std::time::Duration;

use super::{
    Authorization, BackendInfo, Explanation, Filters, HeaderEdits, PolicyInfo, RetryInfo,
    RouteInfo, TimeoutsInfo,
};

/// The whole explanation, one section per stage.
pub fn text(e: &Explanation) -> String {
    let mut out = String::new();
    let r = &e.request;
    let who = match (&r.principal, &r.source_namespace) {
        (Some(p), Some(ns)) => format!("{p} (namespace {ns}, {})", r.source_ip),
        _ => format!("an unauthenticated caller ({})", r.source_ip),
    };
    let _ = writeln!(out, "request        {} {} from {who}", r.method, r.path);
    let _ = writeln!(out, "               host {}", r.host);
    for (n, v) in &r.headers {
        let _ = writeln!(out, "               {n}: {v}");
    }
    let s = &e.service;
    let _ = writeln!(
        out,
        "service        {} ({}, {})",
        s.name, s.hostname, s.address
    );
    let _ = writeln!(out, "outcome        {}", e.outcome.summary);
    out.push('\n');
    match &e.route {
        Some(route) => route_text(&mut out, route),
        None => out.push_str("route          no rule matches: 404 (NR)\n"),
    }
    out.push('\n');
    authz_text(&mut out, &e.authorization);
    if e.authentication.is_empty() {
        out.push_str(
            "authentication no RequestAuthentication applies (a token is passed on unverified)\n",
        );
    } else {
        out.push_str(
            "authentication a token, when present, must verify against one rule (else 401):\n",
        );
        for j in &e.authentication {
            let aud = if j.audiences.is_empty() {
                "any audience".to_string()
            } else {
                format!("audiences {}", j.audiences.join(", "))
            };
            let keys = j.jwks_uri.as_deref().unwrap_or("inline jwks");
            let _ = writeln!(
                out,
                "  {}: issuer {} ({aud}; keys {keys}; token in {})",
                j.policy,
                j.issuer,
                j.locations.join(", ")
            );
        }
    }
    if !e.diagnostics.is_empty() {
        out.push_str(
            "diagnostics    (policies this waypoint does not enforce, or not as written)\n",
        );
        for d in &e.diagnostics {
            let rule = d.rule.map(|r| format!(" rules[{r}]")).unwrap_or_default();
            let _ = writeln!(out, "  {}{rule} [{}]: {}", d.policy, d.kind, d.message);
        }
    }
    out
}

fn route_text(out: &mut String, r: &RouteInfo) {
    match &r.route {
        Some(route) => {
            let _ = writeln!(
                out,
                "route          {} {route} rules[{}] matches[{}]: {}",
                r.kind, r.route_rule, r.match_index, r.matched
            );
        }
        None => {
            let _ = writeln!(
                out,
                "route          the default rule (no accepted route): {}",
                r.matched
            );
        }
    }
    if let Some(ns) = &r.consumer_namespace {
        let _ = writeln!(
            out,
            "               (consumer routes of namespace {ns} replace the producer's)"
        );
    }
    out.push_str("backends\n");
    if r.backends.is_empty() {
        out.push_str("  none (500)\n");
    }
    for b in &r.backends {
        backend_text(out, b);
    }
    filters_text(out, "filters", &r.filters);
    timeouts_text(out, &r.timeouts);
    retry_text(out, &r.retry);
}

fn backend_text(out: &mut String, b: &BackendInfo) {
    let _ = write!(
        out,
        "  {}  weight {} ({:.1}%)  {}",
        b.name, b.weight, b.share_percent, b.protocol
    );
    match &b.invalid {
        Some(why) => {
            let _ = writeln!(out, "  INVALID: {why} (its share is answered 500)");
            return;
        }
        None => {
            let _ = writeln!(out, "  {} endpoint(s)", b.endpoints.len());
        }
    }
    for ep in &b.endpoints {
        let how = ep
            .identity
            .as_deref()
            .map_or("plain TCP".to_string(), |id| format!("HBONE, expects {id}"));
        let _ = writeln!(out, "      {} ({how})", ep.address);
    }
    policy_text(out, &b.policy);
    filters_text(out, "    backend filters", &b.filters);
}

fn policy_text(out: &mut String, p: &PolicyInfo) {
    let c = &p.connection_pool;
    let limits: Vec<String> = [
        ("maxConnections", c.max_connections),
        ("http1MaxPendingRequests", c.max_pending_requests),
        ("http2MaxRequests", c.max_requests),
        ("maxRequestsPerConnection", c.max_requests_per_connection),
        ("maxRetries", c.max_retries),
    ]
    .iter()
    .filter_map(|(n, v)| v.map(|v| format!("{n} {v}")))
    .chain(c.idle_timeout_ms.map(|v| format!("idleTimeout {}", dur(v))))
    .chain(
        c.connect_timeout_ms
            .map(|v| format!("connectTimeout {}", dur(v))),
    )
    .collect();
    let limits = if limits.is_empty() {
        "unlimited".to_string()
    } else {
        limits.join(", ")
    };
    let _ = writeln!(
        out,
        "      load balancer {}; breaker: {limits}",
        p.load_balancer
    );
    match &p.outlier_detection {
        Some(o) => {
            let _ = writeln!(
                out,
                "      outlier detection: consecutive5xxErrors {}, consecutiveGatewayErrors {}, interval {}, \
                 baseEjectionTime {}, maxEjectionPercent {}",
                o.consecutive_5xx,
                o.consecutive_gateway,
                dur(o.interval_ms),
                dur(o.base_ejection_time_ms),
                o.max_ejection_percent
            );
        }
        None => out.push_str("      outlier detection: off\n"),
    }
}

fn filters_text(out: &mut String, label: &str, f: &Filters) {
    if f.is_empty() {
        return;
    }
    let _ = writeln!(out, "{label}");
    let edits = |out: &mut String, what: &str, h: &HeaderEdits| {
        let mut parts = Vec::new();
        parts.extend(h.set.iter().map(|(n, v)| format!("set {n}: {v}")));
        parts.extend(h.add.iter().map(|(n, v)| format!("add {n}: {v}")));
        parts.extend(h.remove.iter().map(|n| format!("remove {n}")));
        let _ = writeln!(out, "  {what}: {}", parts.join("; "));
    };
    if let Some(h) = &f.request_headers {
        edits(out, "request headers", h);
    }
    if let Some(h) = &f.response_headers {
        edits(out, "response headers", h);
    }
    if let Some(r) = &f.redirect {
        let _ = writeln!(out, "  redirect: {} Location {}", r.status, r.location);
    }
    if let Some(rw) = &f.rewrite {
        let mut parts = Vec::new();
        if let Some(h) = &rw.hostname {
            parts.push(format!("host {h}"));
        }
        if let Some(m) = &rw.path_modifier {
            let new = rw.new_path.as_deref().unwrap_or("(path unchanged)");
            parts.push(format!("{m} -> {new}"));
        }
        let _ = writeln!(out, "  URL rewrite: {}", parts.join("; "));
    }
    for m in &f.mirrors {
        let _ = writeln!(
            out,
            "  mirror to {} ({}% of requests)",
            m.backend, m.percent
        );
    }
}

fn timeouts_text(out: &mut String, t: &TimeoutsInfo) {
    let show = |v: Option<u64>| v.map_or("none".to_string(), dur);
    let _ = writeln!(
        out,
        "timeouts       request {}, backendRequest {}",
        show(t.request_ms),
        show(t.backend_request_ms)
    );
}

fn retry_text(out: &mut String, r: &RetryInfo) {
    let what = if r.configured {
        ""
    } else {
        "no retry policy, close detection: "
    };
    let codes = if r.codes.is_empty() {
        String::new()
    } else {
        let codes: Vec<String> = r.codes.iter().map(u16::to_string).collect();
        format!(", codes {}", codes.join(", "))
    };
    let resets = if r.reset_before_response {
        "; resets before the response retried for every method"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "retry          {what}{} retries on {}{codes}; backoff >= {}{resets}",
        r.attempts,
        r.retry_on.join(","),
        dur(r.backoff_ms)
    );
}

fn authz_text(out: &mut String, a: &Authorization) {
    let by = a
        .decided_by
        .as_ref()
        .map(|d| format!(", decided by {} {} rules[{}]", d.action, d.policy, d.rule))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "authorization  {} ({}){by}",
        a.verdict.to_uppercase(),
        a.reason
    );
    if !a.custom_providers.is_empty() {
        let _ = writeln!(
            out,
            "  CUSTOM providers asked first: {}",
            a.custom_providers.join(", ")
        );
    }
    if let Some(d) = &a.audit {
        let _ = writeln!(out, "  audited by {} rules[{}]", d.policy, d.rule);
    }
    if let Some(v) = &a.shadow_verdict {
        let by = a
            .shadow_decided_by
            .as_ref()
            .map(|d| format!(" by {}", d.policy))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  dry-run policies would make it {}{by}",
            v.to_uppercase()
        );
    }
    for p in &a.policies {
        let dry = if p.dry_run { " (dry-run)" } else { "" };
        let state = match p.matched_rule {
            Some(i) => format!("matched rules[{i}]"),
            None if p.rules.is_empty() => "no rules: matches nothing".into(),
            None => {
                let why: Vec<String> = p
                    .rules
                    .iter()
                    .map(|r| format!("rules[{}] {}", r.rule, r.failed.as_deref().unwrap_or("?")))
                    .collect();
                format!("no match: {}", why.join("; "))
            }
        };
        let _ = writeln!(out, "  {:<6} {}{dry}: {state}", p.action, p.policy);
    }
}

fn dur(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}
