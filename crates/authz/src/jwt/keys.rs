//! A JSON Web Key Set (RFC 7517) turned into verification keys once, when it is loaded (inline at compile
//! time, remote after each fetch), so a request only looks keys up.
//!
//! Usable keys: RSA (RS256/384/512, PS256/384/512), EC P-256 (ES256) and P-384 (ES384), OKP Ed25519 (EdDSA).
//! Keys of another type (`oct`, P-521, X25519) or marked `"use": "enc"` are skipped; a set with no usable key,
//! more keys than the limit, or a usable-type key whose material does not decode is refused whole.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The key family an algorithm needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// The family a (supported) token algorithm verifies with; `None` for HMAC, which is never accepted.
    pub(crate) fn for_alg(alg: Algorithm) -> Option<KeyKind> {
        use Algorithm::*;
        match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Some(KeyKind::Rsa),
            ES256 => Some(KeyKind::P256),
            ES384 => Some(KeyKind::P384),
            EdDSA => Some(KeyKind::Ed25519),
            HS256 | HS384 | HS512 => None,
        }
    }
}

/// One verification key.
pub(crate) struct Key {
    pub(crate) kid: Option<String>,
    /// The JWK's `alg`, when it pins one.
    pub(crate) alg: Option<Algorithm>,
    pub(crate) kind: KeyKind,
    pub(crate) key: DecodingKey,
}

/// A parsed JWKS.
pub(crate) struct KeySet {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|k| (&k.kid, k.kind)).collect();
        f.debug_struct("KeySet").field("keys", &kids).finish()
    }
}

#[derive(serde::Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Parses a JWKS document. The error says what is wrong, for the compile error or the fetch log.
    pub(crate) fn parse(json: &[u8], max_keys: usize) -> Result<KeySet, String> {
        let doc: Document = serde_json::from_slice(json)
            .map_err(|e| format!("not a JWKS (a JSON object with a \"keys\" list): {e}"))?;
        if doc.keys.len() > max_keys {
            return Err(format!(
                "{} keys, more than the limit of {max_keys}",
                doc.keys.len()
            ));
        }
        let mut keys = Vec::with_capacity(doc.keys.len());
        for (i, value) in doc.keys.into_iter().enumerate() {
            if let Some(key) = parse_key(value).map_err(|e| format!("keys[{i}]: {e}"))? {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err("no usable key (RSA, EC P-256/P-384 or Ed25519, for signatures)".into());
        }
        Ok(KeySet { keys })
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The keys that may have signed a token with this `kid` and `alg`: same `kid` when the token names one
    /// (every key otherwise, as Envoy does), of the algorithm's family, and not pinned to another `alg`.
    pub(crate) fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        let kind = KeyKind::for_alg(alg);
        self.keys.iter().filter(move |k| {
            Some(k.kind) == kind
                && k.alg.is_none_or(|a| a == alg)
                && kid.is_none_or(|kid| k.kid.as_deref() == Some(kid))
        })
    }
}

/// `Ok(None)`: a key of a type this verifier does not use (skipped).
fn parse_key(value: serde_json::Value) -> Result<Option<Key>, String> {
    let kty = value
        .get("kty")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_owned();
    if !matches!(kty.as_str(), "RSA" | "EC" | "OKP") {
        return Ok(None);
    }
    if value.get("use").and_then(|v| v.as_str()) == Some("enc") {
        return Ok(None);
    }
    // A key pinned to an algorithm that is not an accepted signature (RSA-OAEP, ES512, HS256) is not for us.
    let pinned = match value.get("alg") {
        None => None,
        Some(alg) => match alg.as_str().map(signing_alg) {
            Some(Some(alg)) => Some(alg),
            Some(None) => return Ok(None),
            None => return Err("alg is not a string".into()),
        },
    };
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("invalid {kty} key: {e}"))?;
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Ok(None);
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::P256,
            EllipticCurve::P384 => KeyKind::P384,
            _ => return Ok(None),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => KeyKind::Ed25519,
            _ => return Ok(None),
        },
        AlgorithmParameters::OctetKey(_) => return Ok(None),
    };
    if let Some(alg) = pinned {
        if KeyKind::for_alg(alg) != Some(kind) {
            return Err(format!("alg {alg:?} does not fit a {kty} key"));
        }
    }
    let key =
        DecodingKey::from_jwk(&jwk).map_err(|e| format!("invalid {kty} key material: {e}"))?;
    if kind == KeyKind::Rsa {
        check_rsa_size(&jwk)?;
    }
    Ok(Some(Key {
        kid: jwk.common.key_id,
        alg: pinned,
        kind,
        key,
    }))
}

/// The asymmetric signing algorithms accepted, by their JOSE names.
pub(crate) fn signing_alg(name: &str) -> Option<Algorithm> {
    use Algorithm::*;
    Some(match name {
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        _ => return None,
    })
}

/// ring verifies RSA signatures from 2048-bit moduli only; say so when the set is loaded, not per request.
fn check_rsa_size(jwk: &Jwk) -> Result<(), String> {
    use base64::Engine;
    let AlgorithmParameters::RSA(p) = &jwk.algorithm else {
        return Ok(());
    };
    let n = super::token::B64
        .decode(p.n.as_bytes())
        .map_err(|e| format!("invalid RSA modulus: {e}"))?;
    let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
    if bits < 2048 {
        return Err(format!("RSA key of {bits} bits, fewer than 2048"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC_P256: &str = r#"{"kty":"EC","crv":"P-256","kid":"ec1",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
    const ED: &str = r#"{"kty":"OKP","crv":"Ed25519","kid":"ed1","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;

    fn set(keys: &[&str]) -> Result<KeySet, String> {
        KeySet::parse(format!("{{\"keys\":[{}]}}", keys.join(",")).as_bytes(), 8)
    }

    #[test]
    fn parses_and_filters_keys() {
        let cases: &[(&[&str], Result<usize, &str>)] = &[
            (&[EC_P256, ED], Ok(2)),
            (&[EC_P256, r#"{"kty":"oct","k":"c2VjcmV0"}"#], Ok(1)),
            (
                &[
                    EC_P256,
                    r#"{"kty":"RSA","alg":"RSA-OAEP","n":"AQAB","e":"AQAB"}"#,
                ],
                Ok(1),
            ),
            (
                &[
                    EC_P256,
                    r#"{"kty":"EC","use":"enc","crv":"P-256","x":"","y":""}"#,
                ],
                Ok(1),
            ),
            (&[r#"{"kty":"oct","k":"c2VjcmV0"}"#], Err("no usable key")),
            (&[], Err("no usable key")),
            (
                &[r#"{"kty":"EC","crv":"P-256"}"#],
                Err("keys[0]: invalid EC key"),
            ),
            (
                &[r#"{"kty":"RSA","n":"AQAB","e":"AQAB"}"#],
                Err("fewer than 2048"),
            ),
            (
                &[r#"{"kty":"EC","crv":"P-256","alg":"RS256","x":"AA","y":"AA"}"#],
                Err("does not fit"),
            ),
        ];
        for (keys, want) in cases {
            match (set(keys), want) {
                (Ok(s), Ok(n)) => assert_eq!(s.len(), *n, "{keys:?}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{keys:?}: {e}"),
                (got, want) => panic!("{keys:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn refuses_what_is_not_a_jwks_and_too_many_keys() {
        for doc in ["", "[]", "{}", "{\"keys\":{}}", "not json"] {
            let e = KeySet::parse(doc.as_bytes(), 8).unwrap_err();
            assert!(e.contains("not a JWKS"), "{doc}: {e}");
        }
        let many = format!("{{\"keys\":[{}]}}", [ED; 9].join(","));
        assert!(KeySet::parse(many.as_bytes(), 8)
            .unwrap_err()
            .contains("limit of 8"));
    }

    #[test]
    fn candidates_match_kid_family_and_pinned_alg() {
        let s = set(&[EC_P256, ED]).unwrap();
        let kids = |kid, alg| -> Vec<Option<String>> {
            s.candidates(kid, alg).map(|k| k.kid.clone()).collect()
        };
        assert_eq!(kids(Some("ec1"), Algorithm::ES256), [Some("ec1".into())]);
        assert_eq!(kids(None, Algorithm::ES256), [Some("ec1".into())]);
        assert_eq!(kids(None, Algorithm::EdDSA), [Some("ed1".into())]);
        assert!(kids(Some("ec1"), Algorithm::ES384).is_empty());
        assert!(kids(Some("nope"), Algorithm::ES256).is_empty());
        assert!(kids(None, Algorithm::HS256).is_empty());
        assert!(kids(None, Algorithm::RS256).is_empty());
    }
}
