//! One token, taken apart and judged: [`Token::parse`] splits and decodes it (no trust yet),
//! [`Token::verify_signature`] checks it against a key set, [`check_claims`] applies a rule's audiences and
//! the `exp` / `nbf` window with clock skew. All pure, so they are tested with tables.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::error::JwtError;
use super::keys::{signing_alg, KeySet};
use crate::attrs::RequestAuth;

/// base64url, padding tolerated (some issuers pad), as Envoy accepts.
pub(crate) const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Tokens longer than this are refused before any decoding (a header already bounds them; this bounds work).
pub(crate) const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A token split and decoded, not yet verified.
#[derive(Debug)]
pub(crate) struct Token<'t> {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
    /// `header.payload`, what the signature covers.
    signed: &'t str,
    signature: &'t str,
    /// The payload segment as sent (base64url), for `outputPayloadToHeader`.
    pub(crate) payload_b64: &'t str,
    pub(crate) claims: Map<String, Value>,
}

#[derive(serde::Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

impl<'t> Token<'t> {
    pub(crate) fn parse(token: &'t str) -> Result<Token<'t>, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed("token too long"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("not three dot-separated parts"));
        };
        if header.is_empty() || payload.is_empty() || signature.is_empty() {
            return Err(JwtError::Malformed("an empty part"));
        }
        let header_json = B64
            .decode(header)
            .map_err(|_| JwtError::Malformed("header is not base64url"))?;
        let h: Header = serde_json::from_slice(&header_json)
            .map_err(|_| JwtError::Malformed("header is not a JSON object with alg"))?;
        let alg = signing_alg(&h.alg).ok_or(JwtError::UnsupportedAlgorithm)?;
        let payload_json = B64
            .decode(payload)
            .map_err(|_| JwtError::Malformed("payload is not base64url"))?;
        let claims: Map<String, Value> = serde_json::from_slice(&payload_json)
            .map_err(|_| JwtError::Malformed("payload is not a JSON object"))?;
        Ok(Token {
            alg,
            kid: h.kid,
            signed: &token[..header.len() + 1 + payload.len()],
            signature,
            payload_b64: payload,
            claims,
        })
    }

    /// The `iss` claim, when it is a string.
    pub(crate) fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    /// Checks the signature with the keys that fit the token's `kid` and `alg`.
    /// [`JwtError::UnknownKey`] when none fits (the caller may refetch the set and try again).
    pub(crate) fn verify_signature(&self, keys: &KeySet) -> Result<(), JwtError> {
        let mut tried = false;
        for key in keys.candidates(self.kid.as_deref(), self.alg) {
            tried = true;
            // `Err` is a signature that is not even well-formed base64/DER: a bad signature all the same.
            if jsonwebtoken::crypto::verify(
                self.signature,
                self.signed.as_bytes(),
                &key.key,
                self.alg,
            )
            .unwrap_or(false)
            {
                return Ok(());
            }
        }
        Err(if tried {
            JwtError::BadSignature
        } else {
            JwtError::UnknownKey
        })
    }

    /// The facts authorization reads (`request.auth.*`), consuming the claims.
    pub(crate) fn into_auth(self) -> RequestAuth {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_owned();
        let principal = format!(
            "{}/{}",
            text(self.claims.get("iss")),
            text(self.claims.get("sub"))
        );
        let audiences = audiences(self.claims.get("aud"))
            .map(str::to_owned)
            .collect();
        let presenter = self
            .claims
            .get("azp")
            .and_then(Value::as_str)
            .map(str::to_owned);
        RequestAuth {
            principal,
            audiences,
            presenter,
            claims: Value::Object(self.claims),
        }
    }
}

/// The `aud` claim as a list (a string is a list of one; other types hold none).
fn audiences(aud: Option<&Value>) -> impl Iterator<Item = &str> {
    let (one, many) = match aud {
        Some(Value::String(s)) => (Some(s.as_str()), None),
        Some(Value::Array(list)) => (None, Some(list.iter().filter_map(Value::as_str))),
        _ => (None, None),
    };
    one.into_iter().chain(many.into_iter().flatten())
}

/// A NumericDate claim (seconds since the epoch; fractions allowed). `Ok(None)` when absent.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or(JwtError::Malformed("exp, nbf must be numbers")),
    }
}

/// `exp` / `nbf` against `now` (seconds since the epoch) with `skew` seconds of tolerance either way, and the
/// rule's audiences (empty: any). A token without `exp` does not expire (as in Envoy).
pub(crate) fn check_claims(
    claims: &Map<String, Value>,
    allowed_audiences: &[String],
    now: u64,
    skew: u64,
) -> Result<(), JwtError> {
    let (now, skew) = (now as f64, skew as f64);
    if let Some(exp) = numeric_date(claims, "exp")? {
        if now > exp + skew {
            return Err(JwtError::Expired);
        }
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if nbf > now + skew {
            return Err(JwtError::NotYetValid);
        }
    }
    if !allowed_audiences.is_empty()
        && !audiences(claims.get("aud")).any(|a| allowed_audiences.iter().any(|w| w == a))
    {
        return Err(JwtError::AudienceMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn parse_table() {
        let h = b64(&json!({"alg": "ES256", "kid": "k"}));
        let p = b64(&json!({"iss": "i", "sub": "s"}));
        let cases: Vec<(String, Result<(), JwtError>)> = vec![
            (format!("{h}.{p}.c2ln"), Ok(())),
            (
                format!("{h}.{p}"),
                Err(JwtError::Malformed("not three dot-separated parts")),
            ),
            (
                format!("{h}.{p}.c2ln.x"),
                Err(JwtError::Malformed("not three dot-separated parts")),
            ),
            (
                format!("{h}..c2ln"),
                Err(JwtError::Malformed("an empty part")),
            ),
            (
                format!("{h}.{p}."),
                Err(JwtError::Malformed("an empty part")),
            ),
            (
                format!("%%%.{p}.c2ln"),
                Err(JwtError::Malformed("header is not base64url")),
            ),
            (
                format!("{}.{p}.c2ln", b64(&json!("x"))),
                Err(JwtError::Malformed("header is not a JSON object with alg")),
            ),
            (
                format!("{}.{p}.c2ln", b64(&json!({"alg": "none"}))),
                Err(JwtError::UnsupportedAlgorithm),
            ),
            (
                format!("{}.{p}.c2ln", b64(&json!({"alg": "HS256"}))),
                Err(JwtError::UnsupportedAlgorithm),
            ),
            (
                format!("{h}.{}.c2ln", b64(&json!([1]))),
                Err(JwtError::Malformed("payload is not a JSON object")),
            ),
            (format!("{h}.e30=.c2ln"), Ok(())),
            (
                "x".repeat(MAX_TOKEN_BYTES + 1),
                Err(JwtError::Malformed("token too long")),
            ),
        ];
        for (token, want) in cases {
            let got = Token::parse(&token).map(|_| ());
            assert_eq!(got, want, "{token}");
        }
        let text = format!("{h}.{p}.c2ln");
        let t = Token::parse(&text).unwrap();
        assert_eq!(
            (t.alg, t.kid.as_deref(), t.issuer()),
            (Algorithm::ES256, Some("k"), Some("i"))
        );
        assert_eq!(t.payload_b64, p);
    }

    #[test]
    fn claims_table() {
        let now = 1_000_000;
        let aud = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases: &[(Value, &[&str], Result<(), JwtError>)] = &[
            (json!({}), &[], Ok(())),
            (json!({"exp": now + 10}), &[], Ok(())),
            (json!({"exp": now - 60}), &[], Ok(())),
            (json!({"exp": now - 61}), &[], Err(JwtError::Expired)),
            (
                json!({"exp": (now - 61) as f64 + 0.5}),
                &[],
                Err(JwtError::Expired),
            ),
            (json!({"nbf": now + 60}), &[], Ok(())),
            (json!({"nbf": now + 61}), &[], Err(JwtError::NotYetValid)),
            (
                json!({"exp": "soon"}),
                &[],
                Err(JwtError::Malformed("exp, nbf must be numbers")),
            ),
            (
                json!({"nbf": null}),
                &[],
                Err(JwtError::Malformed("exp, nbf must be numbers")),
            ),
            (json!({"aud": "api"}), &["api"], Ok(())),
            (json!({"aud": ["x", "api"]}), &["web", "api"], Ok(())),
            (
                json!({"aud": "web"}),
                &["api"],
                Err(JwtError::AudienceMismatch),
            ),
            (
                json!({"aud": ["web"]}),
                &["api"],
                Err(JwtError::AudienceMismatch),
            ),
            (json!({}), &["api"], Err(JwtError::AudienceMismatch)),
            (json!({"aud": 7}), &["api"], Err(JwtError::AudienceMismatch)),
            (json!({"aud": "anything"}), &[], Ok(())),
        ];
        for (claims, allowed, want) in cases {
            let got = check_claims(claims.as_object().unwrap(), &aud(allowed), now, 60);
            assert_eq!(&got, want, "{claims} {allowed:?}");
        }
    }

    #[test]
    fn request_auth_facts() {
        let h = b64(&json!({"alg": "EdDSA"}));
        let p = b64(
            &json!({"iss": "https://i", "sub": "alice", "aud": ["a", "b", 3], "azp": "web", "groups": ["g"]}),
        );
        let auth = Token::parse(&format!("{h}.{p}.c2ln")).unwrap().into_auth();
        assert_eq!(auth.principal, "https://i/alice");
        assert_eq!(auth.audiences, ["a", "b"]);
        assert_eq!(auth.presenter.as_deref(), Some("web"));
        assert_eq!(auth.claims["groups"][0], "g");
        let p = b64(&json!({"iss": "https://i", "aud": "one"}));
        let auth = Token::parse(&format!("{h}.{p}.c2ln")).unwrap().into_auth();
        assert_eq!(
            (auth.principal.as_str(), auth.audiences),
            ("https://i/", vec!["one".to_string()])
        );
    }
}
