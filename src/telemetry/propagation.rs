//! Trace context in headers: W3C `traceparent`/`tracestate` first, else B3 (single `b3` header, else the
//! `x-b3-*` headers). Pure functions over a header map, table-tested; the SDK is not involved.

use http::HeaderMap;
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// Which header style the parent came in (the child is injected in W3C, and in that style too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    W3c,
    B3Single,
    B3Multi,
}

/// Something a header can be set on (Pingora's `RequestHeader`, `http::HeaderMap`).
pub trait HeaderSink {
    fn set_header(&mut self, name: &'static str, value: &str);
}

impl HeaderSink for HeaderMap {
    fn set_header(&mut self, name: &'static str, value: &str) {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            self.insert(name, v);
        }
    }
}

impl HeaderSink for pingora::http::RequestHeader {
    fn set_header(&mut self, name: &'static str, value: &str) {
        let _ = self.insert_header(name, value);
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn hex_id<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A B3 trace id: 32 hex digits, or 16 (padded on the left with zeros to 128 bits).
fn b3_trace_id(s: &str) -> Option<TraceId> {
    let id = match s.len() {
        32 => TraceId::from_bytes(hex_id::<16>(s)?),
        16 => {
            let mut b = [0u8; 16];
            b[8..].copy_from_slice(&hex_id::<8>(s)?);
            TraceId::from_bytes(b)
        }
        _ => return None,
    };
    (id != TraceId::INVALID).then_some(id)
}

fn span_id(s: &str) -> Option<SpanId> {
    let id = SpanId::from_bytes(hex_id::<8>(s)?);
    (id != SpanId::INVALID).then_some(id)
}

fn remote(trace: TraceId, span: SpanId, sampled: bool, state: TraceState) -> SpanContext {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(trace, span, flags, true, state)
}

/// `traceparent: 00-<32 hex>-<16 hex>-<2 hex>` (any version but `ff`, per W3C forward compatibility).
fn w3c(h: &HeaderMap) -> Option<SpanContext> {
    let tp = header(h, "traceparent")?;
    let mut parts = tp.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let version = hex_id::<1>(version)?[0];
    if version == 0xff || (version == 0 && parts.next().is_some()) {
        return None;
    }
    let trace = TraceId::from_bytes(hex_id::<16>(trace)?);
    let span = span_id(span)?;
    let flags = hex_id::<1>(flags)?[0];
    if trace == TraceId::INVALID {
        return None;
    }
    let state = header(h, "tracestate")
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(remote(trace, span, flags & 1 == 1, state))
}

/// `b3: <trace>-<span>[-<sampled>[-<parent>]]`; a lone `0`/`1`/`d` (sampling only) carries no parent.
fn b3_single(h: &HeaderMap) -> Option<SpanContext> {
    let v = header(h, "b3")?;
    let mut parts = v.split('-');
    let trace = b3_trace_id(parts.next()?)?;
    let span = span_id(parts.next()?)?;
    let sampled = matches!(parts.next(), None | Some("1") | Some("d"));
    Some(remote(trace, span, sampled, TraceState::default()))
}

/// `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled` (`1`/`true`), `x-b3-flags: 1` (debug: sampled).
fn b3_multi(h: &HeaderMap) -> Option<SpanContext> {
    let trace = b3_trace_id(header(h, "x-b3-traceid")?)?;
    let span = span_id(header(h, "x-b3-spanid")?)?;
    let sampled = matches!(header(h, "x-b3-sampled"), Some("1") | Some("true") | None)
        || header(h, "x-b3-flags") == Some("1");
    Some(remote(trace, span, sampled, TraceState::default()))
}

/// The parent span context in `h`, and the style it came in.
pub fn extract(h: &HeaderMap) -> Option<(SpanContext, Style)> {
    w3c(h)
        .map(|c| (c, Style::W3c))
        .or_else(|| b3_single(h).map(|c| (c, Style::B3Single)))
        .or_else(|| b3_multi(h).map(|c| (c, Style::B3Multi)))
}

/// Writes `ctx` as `traceparent`/`tracestate`, and in B3 too when the parent came in B3.
pub fn inject(
    ctx: &SpanContext,
    parent: Option<&SpanContext>,
    style: Option<Style>,
    sink: &mut impl HeaderSink,
) {
    let sampled = ctx.trace_flags().is_sampled();
    let tp = format!(
        "00-{}-{}-{:02x}",
        ctx.trace_id(),
        ctx.span_id(),
        ctx.trace_flags().to_u8()
    );
    sink.set_header("traceparent", &tp);
    let state = ctx.trace_state().header();
    if !state.is_empty() {
        sink.set_header("tracestate", &state);
    }
    let flag = if sampled { "1" } else { "0" };
    match style {
        Some(Style::B3Single) => {
            let mut v = format!("{}-{}-{flag}", ctx.trace_id(), ctx.span_id());
            if let Some(p) = parent {
                v.push('-');
                v.push_str(&p.span_id().to_string());
            }
            sink.set_header("b3", &v);
        }
        Some(Style::B3Multi) => {
            sink.set_header("x-b3-traceid", &ctx.trace_id().to_string());
            sink.set_header("x-b3-spanid", &ctx.span_id().to_string());
            if let Some(p) = parent {
                sink.set_header("x-b3-parentspanid", &p.span_id().to_string());
            }
            sink.set_header("x-b3-sampled", flag);
        }
        Some(Style::W3c) | None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const S: &str = "00f067aa0ba902b7";

    fn headers(kv: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in kv {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn extracts_the_parent_in_priority_order() {
        let tp = format!("00-{T}-{S}-01");
        let tp_unsampled = format!("00-{T}-{S}-00");
        let b3 = format!("{T}-{S}-1");
        let b3_64 = format!("a3ce929d0e0e4736-{S}-0");
        let zero_trace = format!("00-{}-{S}-01", "0".repeat(32));
        let version_ff = format!("ff-{T}-{S}-01");
        let extra = format!("00-{T}-{S}-01-extra");
        // (headers, Some((trace, span, sampled, style)) or None)
        type Want<'a> = Option<(&'a str, &'a str, bool, Style)>;
        let cases: Vec<(Vec<(&'static str, &str)>, Want)> = vec![
            (vec![("traceparent", &tp)], Some((T, S, true, Style::W3c))),
            (
                vec![("traceparent", &tp_unsampled)],
                Some((T, S, false, Style::W3c)),
            ),
            (
                vec![("traceparent", &tp), ("b3", &b3)],
                Some((T, S, true, Style::W3c)),
            ),
            (
                vec![("traceparent", "00-zz-00-01"), ("b3", &b3)],
                Some((T, S, true, Style::B3Single)),
            ),
            (
                vec![("b3", &b3_64)],
                Some((
                    "0000000000000000a3ce929d0e0e4736",
                    S,
                    false,
                    Style::B3Single,
                )),
            ),
            (vec![("b3", "1")], None),
            (
                vec![
                    ("x-b3-traceid", T),
                    ("x-b3-spanid", S),
                    ("x-b3-sampled", "1"),
                ],
                Some((T, S, true, Style::B3Multi)),
            ),
            (
                vec![
                    ("x-b3-traceid", T),
                    ("x-b3-spanid", S),
                    ("x-b3-sampled", "0"),
                ],
                Some((T, S, false, Style::B3Multi)),
            ),
            (
                vec![
                    ("x-b3-traceid", T),
                    ("x-b3-spanid", S),
                    ("x-b3-sampled", "0"),
                    ("x-b3-flags", "1"),
                ],
                Some((T, S, true, Style::B3Multi)),
            ),
            (vec![("traceparent", &zero_trace)], None),
            (vec![("traceparent", &version_ff)], None),
            (vec![("traceparent", &extra)], None),
            (vec![("x-b3-traceid", T)], None),
            (vec![], None),
        ];
        for (kv, want) in cases {
            let got = extract(&headers(&kv)).map(|(c, style)| {
                (
                    c.trace_id().to_string(),
                    c.span_id().to_string(),
                    c.is_sampled(),
                    style,
                )
            });
            let want =
                want.map(|(t, s, sampled, style)| (t.to_string(), s.to_string(), sampled, style));
            assert_eq!(got, want, "{kv:?}");
            if let Some((c, _)) = extract(&headers(&kv)) {
                assert!(c.is_remote());
            }
        }
    }

    #[test]
    fn tracestate_is_carried() {
        let h = headers(&[
            ("traceparent", &format!("00-{T}-{S}-01")),
            ("tracestate", "congo=t61rcWkgMzE,rojo=00f0"),
        ]);
        let (c, _) = extract(&h).unwrap();
        assert_eq!(c.trace_state().get("congo"), Some("t61rcWkgMzE"));
    }

    #[test]
    fn injects_w3c_and_the_incoming_b3_style() {
        let parent = remote(
            TraceId::from_hex(T).unwrap(),
            SpanId::from_hex(S).unwrap(),
            true,
            TraceState::default(),
        );
        let child = SpanContext::new(
            parent.trace_id(),
            SpanId::from_bytes(0xabc_u64.to_be_bytes()),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let child_hex = "0000000000000abc";
        type Headers<'a> = Vec<(&'a str, String)>;
        let cases: Vec<(Option<Style>, Headers)> = vec![
            (
                None,
                vec![("traceparent", format!("00-{T}-{child_hex}-01"))],
            ),
            (
                Some(Style::B3Single),
                vec![("b3", format!("{T}-{child_hex}-1-{S}"))],
            ),
            (
                Some(Style::B3Multi),
                vec![
                    ("x-b3-traceid", T.into()),
                    ("x-b3-spanid", child_hex.into()),
                    ("x-b3-parentspanid", S.into()),
                    ("x-b3-sampled", "1".into()),
                ],
            ),
        ];
        for (style, want) in cases {
            let mut h = HeaderMap::new();
            inject(&child, Some(&parent), style, &mut h);
            for (k, v) in want {
                assert_eq!(
                    h.get(k).and_then(|v| v.to_str().ok()),
                    Some(v.as_str()),
                    "{style:?} {k}"
                );
            }
            assert!(h.contains_key("traceparent"));
        }
    }
}
