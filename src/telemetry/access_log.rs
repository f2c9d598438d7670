//! Access log lines: Istio's default text format (Envoy's `%START_TIME%`… `%ROUTE_NAME%` line) or Istio's
//! JSON keys, written into a caller's buffer (pure functions, table-tested).
//!
//! Text: missing values print `-`; fields are never allowed to break the line (control characters print as
//! `\xNN`, and a `"` inside a quoted field as `\"`). JSON: Envoy's typed values (numbers for codes, bytes
//! and durations, `null` when missing), plus `authorization_policy`, `retry_count`,
//! `upstream_request_attempt_count` and `grpc_status`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::record::RequestRecord;

/// Access log encoding (Istio's `accessLogEncoding`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `%PROTOCOL%`.
fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "-",
    }
}

/// Writes `t` as Envoy's default `%START_TIME%`: `2024-05-01T12:00:00.123Z` (UTC, milliseconds).
pub fn write_start_time(out: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    );
}

/// A text field: `-` when empty, control characters as `\xNN`, and `"` escaped when `quoted`.
fn text(out: &mut String, v: &str, quoted: bool) {
    if v.is_empty() {
        out.push('-');
        return;
    }
    // Fast path: printable ASCII needs no escaping.
    if v.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && !(quoted && b == b'"'))
    {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '"' if quoted => out.push_str("\\\""),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

fn addr(out: &mut String, a: Option<SocketAddr>) {
    match a {
        Some(a) => {
            let _ = write!(out, "{a}");
        }
        None => out.push('-'),
    }
}

/// One line in Istio's default text format, newline included.
pub fn format_text(r: &RequestRecord<'_>, out: &mut String) {
    out.push('[');
    write_start_time(out, r.start);
    out.push_str("] \"");
    text(out, r.method, true);
    out.push(' ');
    text(out, r.path, true);
    let _ = write!(out, " {}\" ", protocol(r.version));
    let _ = write!(out, "{} {} ", r.status, r.flags);
    text(out, r.response_code_details, false);
    out.push(' ');
    text(out, r.connection_termination_details, false);
    out.push_str(" \"");
    text(out, r.upstream_transport_failure_reason, true);
    let _ = write!(
        out,
        "\" {} {} {} ",
        r.bytes_received,
        r.bytes_sent,
        r.duration.as_millis()
    );
    match r.upstream_service_time {
        Some(t) => {
            let _ = write!(out, "{}", t.as_millis());
        }
        None => out.push('-'),
    }
    for v in [r.x_forwarded_for, r.user_agent, r.request_id, r.authority] {
        out.push_str(" \"");
        text(out, v, true);
        out.push('"');
    }
    out.push_str(" \"");
    addr(out, r.upstream_host);
    out.push_str("\" ");
    text(out, r.upstream_cluster, false);
    out.push(' ');
    addr(out, r.upstream_local_address);
    out.push(' ');
    addr(out, r.downstream_local_address);
    out.push(' ');
    addr(out, r.downstream_remote_address);
    out.push(' ');
    text(out, r.requested_server_name, false);
    out.push(' ');
    text(out, r.route_name, false);
    out.push('\n');
}

/// A JSON string body (RFC 8259 escaping).
fn json_str(out: &mut String, v: &str) {
    out.push('"');
    if v.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push_str(v);
        out.push('"');
        return;
    }
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_key(out: &mut String, key: &str) {
    if !out.ends_with('{') {
        out.push(',');
    }
    out.push('"');
    out.push_str(key);
    out.push_str("\":");
}

fn json_opt_str(out: &mut String, key: &str, v: &str) {
    json_key(out, key);
    if v.is_empty() {
        out.push_str("null");
    } else {
        json_str(out, v);
    }
}

fn json_addr(out: &mut String, key: &str, a: Option<SocketAddr>) {
    json_key(out, key);
    match a {
        Some(a) => {
            let _ = write!(out, "\"{a}\"");
        }
        None => out.push_str("null"),
    }
}

/// One line of JSON with Istio's keys (plus the extra fields in the module doc), newline included.
pub fn format_json(r: &RequestRecord<'_>, out: &mut String) {
    out.push('{');
    json_key(out, "start_time");
    out.push('"');
    write_start_time(out, r.start);
    out.push('"');
    json_opt_str(out, "method", r.method);
    json_opt_str(out, "path", r.path);
    json_key(out, "protocol");
    json_str(out, protocol(r.version));
    json_key(out, "response_code");
    let _ = write!(out, "{}", r.status);
    json_key(out, "response_flags");
    let _ = write!(out, "\"{}\"", r.flags);
    json_opt_str(out, "response_code_details", r.response_code_details);
    json_opt_str(
        out,
        "connection_termination_details",
        r.connection_termination_details,
    );
    json_opt_str(
        out,
        "upstream_transport_failure_reason",
        r.upstream_transport_failure_reason,
    );
    json_key(out, "bytes_received");
    let _ = write!(out, "{}", r.bytes_received);
    json_key(out, "bytes_sent");
    let _ = write!(out, "{}", r.bytes_sent);
    json_key(out, "duration");
    let _ = write!(out, "{}", r.duration.as_millis());
    json_key(out, "upstream_service_time");
    match r.upstream_service_time {
        Some(t) => {
            let _ = write!(out, "\"{}\"", t.as_millis());
        }
        None => out.push_str("null"),
    }
    json_opt_str(out, "x_forwarded_for", r.x_forwarded_for);
    json_opt_str(out, "user_agent", r.user_agent);
    json_opt_str(out, "request_id", r.request_id);
    json_opt_str(out, "authority", r.authority);
    json_addr(out, "upstream_host", r.upstream_host);
    json_opt_str(out, "upstream_cluster", r.upstream_cluster);
    json_addr(out, "upstream_local_address", r.upstream_local_address);
    json_addr(out, "downstream_local_address", r.downstream_local_address);
    json_addr(
        out,
        "downstream_remote_address",
        r.downstream_remote_address,
    );
    json_opt_str(out, "requested_server_name", r.requested_server_name);
    json_opt_str(out, "route_name", r.route_name);
    json_key(out, "grpc_status");
    match r.grpc_status {
        Some(s) => {
            let _ = write!(out, "{s}");
        }
        None => out.push_str("null"),
    }
    json_opt_str(out, "authorization_policy", r.authz_policy);
    json_key(out, "upstream_request_attempt_count");
    let _ = write!(out, "{}", r.tries);
    json_key(out, "retry_count");
    let _ = write!(out, "{}", r.retries());
    out.push_str("}\n");
}

/// Formats `r` in `format` into `out`.
pub fn format(format: LogFormat, r: &RequestRecord<'_>, out: &mut String) {
    match format {
        LogFormat::Text => format_text(r, out),
        LogFormat::Json => format_json(r, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_envoy_utc_millis() {
        let cases = [
            (0u64, 0u32, "1970-01-01T00:00:00.000Z"),
            (951_782_400, 5_000_000, "2000-02-29T00:00:00.005Z"),
            (1_700_000_000, 123_456_789, "2023-11-14T22:13:20.123Z"),
            (4_102_444_799, 999_999_999, "2099-12-31T23:59:59.999Z"),
        ];
        for (secs, nanos, want) in cases {
            let mut out = String::new();
            write_start_time(&mut out, UNIX_EPOCH + Duration::new(secs, nanos));
            assert_eq!(out, want);
        }
    }

    #[test]
    fn text_fields_cannot_break_the_line() {
        let cases = [
            ("", true, "-"),
            ("a b", true, "a b"),
            ("a\"b", true, "a\\\"b"),
            ("a\"b", false, "a\"b"),
            ("a\nb\r", false, "a\\x0ab\\x0d"),
        ];
        for (v, quoted, want) in cases {
            let mut out = String::new();
            text(&mut out, v, quoted);
            assert_eq!(out, want, "{v:?}");
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        let cases = [
            ("a", "\"a\""),
            ("\"\\", "\"\\\"\\\\\""),
            ("\n\u{1}", "\"\\n\\u0001\""),
            ("é", "\"é\""),
        ];
        for (v, want) in cases {
            let mut out = String::new();
            json_str(&mut out, v);
            assert_eq!(out, want);
        }
    }
}
