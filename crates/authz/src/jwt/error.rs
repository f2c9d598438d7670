//! The two ways RequestAuthentication fails: a policy that does not compile ([`CompileError`], naming the
//! policy and the field) and a request whose token is rejected ([`JwtError`], always answered 401).

/// A RequestAuthentication the waypoint cannot enforce as written. The whole set is refused, so a typo never
/// leaves a destination without the token checks its owner asked for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("RequestAuthentication {policy}: {field}: {reason}")]
pub struct CompileError {
    /// `namespace/name`.
    pub policy: String,
    /// The field, as written in the manifest: `spec.jwtRules[0].jwks`.
    pub field: String,
    pub reason: String,
}

impl CompileError {
    pub(crate) fn new(policy: &str, field: String, reason: impl Into<String>) -> Self {
        Self {
            policy: policy.to_owned(),
            field,
            reason: reason.into(),
        }
    }
}

/// Why a request's token was rejected. Every variant is answered 401 (with [`JwtError::WWW_AUTHENTICATE`]);
/// the message follows Envoy's `jwt_authn` wording so operators recognise it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not `header.payload.signature` of base64url JSON, or a claim of the wrong type.
    #[error("Jwt is not in the form of Header.Payload.Signature with valid JSON: {0}")]
    Malformed(&'static str),
    /// The `iss` claim names no issuer configured for the location the token came from.
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    /// `alg` is not one of RS256/384/512, PS256/384/512, ES256/384, EdDSA (`none` and HMAC are refused).
    #[error("Jwt algorithm is not supported")]
    UnsupportedAlgorithm,
    /// No key of the issuer's JWKS has the token's `kid` (or fits its `alg`), even after a refetch.
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    UnknownKey,
    #[error("Jwt verification fails")]
    BadSignature,
    /// `exp` (plus the clock skew) is in the past.
    #[error("Jwt is expired")]
    Expired,
    /// `nbf` (minus the clock skew) is in the future.
    #[error("Jwt not yet valid")]
    NotYetValid,
    /// The rule lists audiences and the token's `aud` holds none of them.
    #[error("Audiences in Jwt are not allowed")]
    AudienceMismatch,
    /// The issuer's `jwksUri` has not been fetched successfully yet (the request fails closed).
    #[error("Jwks remote fetch is failed")]
    JwksUnavailable,
}

impl JwtError {
    /// The `WWW-Authenticate` value a 401 carries (RFC 6750).
    pub const WWW_AUTHENTICATE: &'static str = "Bearer error=\"invalid_token\"";

    /// The HTTP status: always 401.
    pub fn status(&self) -> u16 {
        401
    }

    /// A short stable code for access logs and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "jwt_malformed",
            JwtError::UnknownIssuer => "jwt_unknown_issuer",
            JwtError::UnsupportedAlgorithm => "jwt_unsupported_alg",
            JwtError::UnknownKey => "jwt_unknown_key",
            JwtError::BadSignature => "jwt_bad_signature",
            JwtError::Expired => "jwt_expired",
            JwtError::NotYetValid => "jwt_not_yet_valid",
            JwtError::AudienceMismatch => "jwt_audience_mismatch",
            JwtError::JwksUnavailable => "jwks_unavailable",
        }
    }
}
