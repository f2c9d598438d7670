//! What the proxy changes in the forwarded request after a token verified, as a plain list of
//! [`HeaderEdit`]s: drop the token header (`forwardOriginalToken: false`, the default), put the payload in a
//! header (`outputPayloadToHeader`), copy claims into headers (`outputClaimToHeaders`).

use http::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::extract::Location;

/// One change to the request headers, applied in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Remove every value of the header.
    Remove(HeaderName),
    /// Replace the header's values with this one.
    Set(HeaderName, HeaderValue),
}

/// A rule's output settings, compiled.
#[derive(Clone, Debug, Default)]
pub(crate) struct Output {
    pub(crate) forward_original_token: bool,
    pub(crate) payload_header: Option<HeaderName>,
    /// `(header, claim)`; the claim is a top-level name, or a dotted path into nested objects.
    pub(crate) claims: Vec<(HeaderName, String)>,
}

impl Output {
    /// The edits for a token verified at `location` with this payload segment and claims.
    pub(crate) fn plan(
        &self,
        location: &Location,
        payload_b64: &str,
        claims: &Map<String, Value>,
    ) -> Vec<HeaderEdit> {
        let mut edits = Vec::new();
        if !self.forward_original_token {
            if let Some(name) = location.header() {
                edits.push(HeaderEdit::Remove(name.clone()));
            }
        }
        if let Some(name) = &self.payload_header {
            // base64url characters are always a valid header value.
            if let Ok(v) = HeaderValue::from_str(payload_b64) {
                edits.push(HeaderEdit::Set(name.clone(), v));
            }
        }
        for (name, claim) in &self.claims {
            match claim_value(claims, claim).and_then(|v| HeaderValue::try_from(v).ok()) {
                Some(v) => edits.push(HeaderEdit::Set(name.clone(), v)),
                // A client must not be able to supply the header for a claim the token does not carry.
                None => edits.push(HeaderEdit::Remove(name.clone())),
            }
        }
        edits
    }
}

/// A claim as header text: strings as they are, numbers and booleans printed; lists and objects (and
/// absent claims) give nothing, as in Istio. `a.b` looks into nested objects when no top-level `a.b` exists.
fn claim_value(claims: &Map<String, Value>, claim: &str) -> Option<String> {
    let value = claims.get(claim).or_else(|| {
        let mut parts = claim.split('.');
        let first = claims.get(parts.next()?)?;
        parts.try_fold(first, |v, p| v.get(p))
    })?;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn name(s: &'static str) -> HeaderName {
        HeaderName::from_static(s)
    }

    #[test]
    fn plan_table() {
        let [bearer, param] = Location::defaults();
        let claims = json!({"sub": "alice", "n": 7, "ok": true, "groups": ["a"], "org": {"team": "x"},
                            "a.b": "flat", "bad": "line\nbreak"});
        let claims = claims.as_object().unwrap();
        let out = |forward, payload: Option<&'static str>, cl: &[(&'static str, &str)]| Output {
            forward_original_token: forward,
            payload_header: payload.map(name),
            claims: cl.iter().map(|(h, c)| (name(h), c.to_string())).collect(),
        };
        let set = |h: &'static str, v: &'static str| {
            HeaderEdit::Set(name(h), HeaderValue::from_static(v))
        };
        let rm = |h: &'static str| HeaderEdit::Remove(name(h));
        let cases: Vec<(Output, &Location, Vec<HeaderEdit>)> = vec![
            (out(false, None, &[]), &bearer, vec![rm("authorization")]),
            (out(true, None, &[]), &bearer, vec![]),
            (out(false, None, &[]), &param, vec![]),
            (
                out(true, Some("x-payload"), &[]),
                &bearer,
                vec![set("x-payload", "eyJ9")],
            ),
            (
                out(
                    true,
                    None,
                    &[
                        ("x-sub", "sub"),
                        ("x-n", "n"),
                        ("x-ok", "ok"),
                        ("x-team", "org.team"),
                        ("x-ab", "a.b"),
                    ],
                ),
                &bearer,
                vec![
                    set("x-sub", "alice"),
                    set("x-n", "7"),
                    set("x-ok", "true"),
                    set("x-team", "x"),
                    set("x-ab", "flat"),
                ],
            ),
            (
                out(
                    true,
                    None,
                    &[
                        ("x-g", "groups"),
                        ("x-org", "org"),
                        ("x-none", "missing"),
                        ("x-bad", "bad"),
                    ],
                ),
                &param,
                vec![rm("x-g"), rm("x-org"), rm("x-none"), rm("x-bad")],
            ),
        ];
        for (output, loc, want) in cases {
            assert_eq!(output.plan(loc, "eyJ9", claims), want, "{output:?}");
        }
    }
}
