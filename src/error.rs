//! The one place where failures become responses.
//!
//! Every stage returns a [`ProxyError`]; [`ProxyError::status`] and [`ProxyError::flag`] say what the client
//! sees: an HTTP status and an Envoy-style response flag (NR, UH, UF, UC, ...) in `x-waypoint-error`, so
//! operators can grep for them. Pingora errors are classified once, in [`classify`].

use pingora::{Error, ErrorSource, ErrorType};

/// A failure of one request, by stage.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    /// The CONNECT destination is not a service of this waypoint (checked at CONNECT; kept for completeness).
    #[error("destination not served by this waypoint")]
    NotServed,
    /// No rule of the service matches the request.
    #[error("no route matched")]
    NoRoute,
    /// The rule has no usable backend (none, or all weights 0).
    #[error("route has no backend")]
    NoBackend,
    /// The picked backend reference is invalid (not found, not permitted, wrong kind).
    #[error("invalid backend: {0}")]
    InvalidBackend(String),
    /// The backend has no endpoints.
    #[error("no healthy upstream for {0}")]
    NoHealthyUpstream(String),
    /// Could not open a connection (or HBONE stream) to the endpoint.
    #[error("upstream connect failure")]
    ConnectFailure,
    /// The upstream connection broke (reset, closed) during the exchange.
    #[error("upstream connection termination")]
    ConnectionTermination,
    /// A circuit-breaker limit of the destination (`DestinationRule.trafficPolicy.connectionPool`) is full.
    #[error("upstream overflow: {} reached", .0.field())]
    Overflow(crate::resilience::breaker::Overflow),
    /// The upstream did not answer in time.
    #[error("upstream request timeout")]
    Timeout,
    /// The downstream request was malformed.
    #[error("bad request")]
    BadRequest,
    /// A JWT was present and did not verify (RequestAuthentication), as Envoy's `jwt_authn` words it.
    #[error("Jwt verification fails")]
    Unauthenticated,
    /// Authorization denied the request (DENY matched, or no ALLOW matched), as Envoy's RBAC words it.
    #[error("RBAC: access denied")]
    Forbidden,
    /// A CUSTOM external authorizer denied the request (its own response is written instead of this one).
    #[error("denied by the external authorizer")]
    ExtAuthzDenied,
    /// The downstream went away; nothing can be sent.
    #[error("downstream closed")]
    DownstreamGone,
    #[error("internal error")]
    Internal,
}

impl ProxyError {
    /// The status the client sees (0: none can be sent).
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::NotServed | ProxyError::BadRequest => 400,
            ProxyError::Unauthenticated => 401,
            ProxyError::Forbidden | ProxyError::ExtAuthzDenied => 403,
            ProxyError::NoRoute => 404,
            ProxyError::NoBackend | ProxyError::InvalidBackend(_) | ProxyError::Internal => 500,
            ProxyError::NoHealthyUpstream(_)
            | ProxyError::Overflow(_)
            | ProxyError::ConnectFailure
            | ProxyError::ConnectionTermination => 503,
            ProxyError::Timeout => 504,
            ProxyError::DownstreamGone => 0,
        }
    }

    /// The Envoy-style response flag.
    pub fn flag(&self) -> &'static str {
        match self {
            ProxyError::NotServed | ProxyError::NoRoute => "NR",
            ProxyError::NoBackend | ProxyError::InvalidBackend(_) => "NR",
            ProxyError::NoHealthyUpstream(_) => "UH",
            ProxyError::Overflow(_) => "UO",
            ProxyError::ConnectFailure => "UF",
            ProxyError::ConnectionTermination => "UC",
            ProxyError::Timeout => "UT",
            ProxyError::BadRequest => "DPE",
            ProxyError::Unauthenticated | ProxyError::Forbidden => "-",
            ProxyError::ExtAuthzDenied => "UAEX",
            ProxyError::DownstreamGone => "DC",
            ProxyError::Internal => "-",
        }
    }

    /// Wraps this error for Pingora, keeping the status.
    pub fn into_pingora(self) -> Box<Error> {
        let status = self.status();
        let mut e = Error::explain(ErrorType::HTTPStatus(status), self.to_string());
        e.etype = ErrorType::HTTPStatus(status);
        e
    }
}

/// Classifies an error Pingora reports.
pub fn classify(e: &Error) -> ProxyError {
    use ErrorType::*;
    match (e.esource(), e.etype()) {
        (_, HTTPStatus(s)) => match s {
            400 => ProxyError::BadRequest,
            404 => ProxyError::NoRoute,
            503 => ProxyError::NoHealthyUpstream(
                e.context
                    .as_ref()
                    .map(|c| c.as_str().to_string())
                    .unwrap_or_default(),
            ),
            504 => ProxyError::Timeout,
            _ => ProxyError::Internal,
        },
        (
            _,
            ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectProxyFailure | ConnectError
            | TLSHandshakeFailure | SocketError | BindError,
        ) => ProxyError::ConnectFailure,
        (ErrorSource::Upstream, ReadTimedout | WriteTimedout) => ProxyError::Timeout,
        (ErrorSource::Upstream, _) => ProxyError::ConnectionTermination,
        (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => {
            ProxyError::DownstreamGone
        }
        (ErrorSource::Downstream, _) => ProxyError::BadRequest,
        _ => ProxyError::Internal,
    }
}
