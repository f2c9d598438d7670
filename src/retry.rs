//! The route-level resilience decisions (HTTPRoute `retry`, GEP-1731, and `timeouts`, GEP-1742), as pure
//! functions over plain data: whether a failed try is retried, how long to back off, and how long the next try
//! may take. The proxy keeps one [`Attempts`] per request and asks these questions; it never decides inline.
//!
//! [`on`]: Istio's `retryOn` conditions (route annotation `retry.waypoint.dev/on`) that [`should_retry`] honours.

pub mod on;

pub use on::RetryOn;

use std::time::{Duration, Instant};

use crate::error::ProxyError;
use crate::routes::compile::{RetryPolicy, Timeouts};

/// Backoff never exceeds this multiple of the base (as Envoy caps it).
const MAX_BACKOFF_FACTOR: u32 = 10;
/// The base backoff when a policy gives none (Envoy's default, 25 ms).
const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);

/// How a try failed, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The connection (or HBONE stream) could not be opened: the request was never sent.
    Connect,
    /// The request provably never reached the application whole: the upstream had already closed the
    /// connection (the destination had ended the HBONE stream before our first byte, the relay or the peer
    /// reset it with our bytes unread, or the write failed). Safe to retry
    /// whatever the method.
    NotDelivered,
    /// The connection was closed before any byte of the response arrived, after the request was delivered.
    ResetBeforeResponse,
    /// A response arrived with this status.
    Status(u16),
    /// The try timed out.
    Timeout,
}

/// Per-request retry state.
#[derive(Clone, Debug)]
pub struct Attempts {
    /// Tries started so far (1 after the first `upstream_peer`).
    pub tries: u32,
    /// When the whole request must be done (`timeouts.request`).
    pub deadline: Option<Instant>,
}

impl Attempts {
    pub fn start(timeouts: &Timeouts, now: Instant) -> Attempts {
        Attempts {
            tries: 0,
            deadline: timeouts.request.map(|t| now + t),
        }
    }
}

/// Close detection without a route policy: as Istio's default, two retries of connect failures and resets;
/// never of a response status.
pub static CLOSE_DETECTION: RetryPolicy = RetryPolicy {
    attempts: 2,
    codes: Vec::new(),
    backoff: None,
    on: RetryOn::DEFAULT,
};

/// Whether a failed try is retried: the policy (or, without one, [`CLOSE_DETECTION`]) allows another attempt,
/// the failure is one of its retry-on conditions ([`retried_on`]), and the request can be replayed.
pub fn should_retry(
    policy: Option<&RetryPolicy>,
    a: &Attempts,
    failure: Failure,
    idempotent: bool,
    replayable: bool,
    now: Instant,
) -> bool {
    let p = policy.unwrap_or(&CLOSE_DETECTION);
    if a.tries > p.attempts || !replayable {
        return false;
    }
    if a.deadline.is_some_and(|d| now >= d) {
        return false;
    }
    retried_on(p.on, &p.codes, failure, idempotent)
}

/// Whether `failure` is one of the conditions `on` (Envoy's semantics): a connect failure under
/// `connect-failure`, `reset-before-request`, `reset`, `5xx` or `gateway-error`; a request provably not
/// delivered (any method) under `reset-before-request`, `refused-stream`, `reset`, `5xx` or `gateway-error`; a
/// reset after delivery or a per-try timeout only for idempotent requests (`idempotent`: the method is, or
/// the route opted in), under `reset` (resets only), `5xx` or `gateway-error`; a status under `5xx` (500–599),
/// `gateway-error` (502–504), `retriable-4xx` (409) or `retriable-status-codes` (`codes`).
pub fn retried_on(on: RetryOn, codes: &[u16], failure: Failure, idempotent: bool) -> bool {
    let any = |c: RetryOn| on.intersects(c);
    let gateway = RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR;
    match failure {
        Failure::Connect => {
            any(gateway | RetryOn::CONNECT_FAILURE | RetryOn::RESET | RetryOn::RESET_BEFORE_REQUEST)
        }
        Failure::NotDelivered => {
            any(gateway | RetryOn::RESET | RetryOn::RESET_BEFORE_REQUEST | RetryOn::REFUSED_STREAM)
        }
        Failure::ResetBeforeResponse => idempotent && any(gateway | RetryOn::RESET),
        Failure::Timeout => idempotent && any(gateway),
        Failure::Status(s) => {
            (any(RetryOn::FIVE_XX) && (500..=599).contains(&s))
                || (any(RetryOn::GATEWAY_ERROR) && (502..=504).contains(&s))
                || (any(RetryOn::RETRIABLE_4XX) && s == 409)
                || (any(RetryOn::RETRIABLE_STATUS_CODES) && codes.contains(&s))
        }
    }
}

/// The wait before try number `next_try` (2 for the first retry). GEP-1731 makes `backoff` a minimum: the wait
/// grows exponentially from it (×2 per retry, capped at `MAX_BACKOFF_FACTOR` × base) and jitter from `draw`
/// (uniform in `0..=u32::MAX`) only adds up to half again, never going below the base nor above the cap.
pub fn backoff(policy: &RetryPolicy, next_try: u32, draw: u32) -> Duration {
    let base = policy.backoff.unwrap_or(DEFAULT_BACKOFF);
    let cap = base.saturating_mul(MAX_BACKOFF_FACTOR);
    let exp = next_try.saturating_sub(2).min(16);
    let floor = base.saturating_mul(1u32 << exp).min(cap);
    let jitter = (floor / 2).mul_f64(f64::from(draw) / f64::from(u32::MAX));
    (floor + jitter).min(cap)
}

/// Concurrent retries always allowed to a service, whatever its load (Envoy's `min_retry_concurrency`).
pub const RETRY_BUDGET_MIN: u32 = 3;
/// Without `maxRetries`, concurrent retries to a service are capped at this share of its requests in flight
/// (Envoy's retry budget), so retries cannot multiply an outage.
pub const RETRY_BUDGET_PERCENT: u32 = 20;

/// The cap on concurrent retries to a service: `maxRetries` when configured, else the budget.
pub fn retry_budget(max_retries: Option<u32>, in_flight: u32) -> u32 {
    max_retries.unwrap_or_else(|| {
        (in_flight.saturating_mul(RETRY_BUDGET_PERCENT) / 100).max(RETRY_BUDGET_MIN)
    })
}

/// The cap on concurrent retries for a retry after `last`: an explicit `maxRetries` always applies; without
/// one, the budget applies to retries after connect failures, statuses and timeouts (what multiplies an
/// outage), while a retry after a stale keep-alive connection (closed or reset before the response) is not
/// charged: it replaces a request the destination never answered on a connection it was closing.
pub fn retry_cap(max_retries: Option<u32>, in_flight: u32, last: Option<Failure>) -> Option<u32> {
    match (max_retries, last) {
        (Some(m), _) => Some(m),
        (None, Some(Failure::NotDelivered | Failure::ResetBeforeResponse)) => None,
        (None, _) => Some(retry_budget(None, in_flight)),
    }
}

/// How long the next try may take: the per-try timeout, cut to what is left of the request deadline.
/// `Err(Timeout)` when the deadline has already passed.
pub fn try_timeout(
    timeouts: &Timeouts,
    a: &Attempts,
    now: Instant,
) -> Result<Option<Duration>, ProxyError> {
    let left = match a.deadline {
        Some(d) if now >= d => return Err(ProxyError::Timeout),
        Some(d) => Some(d - now),
        None => None,
    };
    Ok(match (timeouts.backend_request, left) {
        (Some(t), Some(l)) => Some(t.min(l)),
        (t, l) => t.or(l),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(attempts: u32, codes: &[u16]) -> RetryPolicy {
        RetryPolicy {
            attempts,
            codes: codes.to_vec(),
            backoff: Some(Duration::from_millis(100)),
            on: RetryOn::DEFAULT,
        }
    }

    #[test]
    fn retry_decisions() {
        let now = Instant::now();
        let p = policy(2, &[503]);
        let at = |tries| Attempts {
            tries,
            deadline: None,
        };
        let cases = [
            // (policy, tries so far, failure, idempotent, replayable, expected)
            (Some(&p), 1, Failure::Status(503), true, true, true),
            (Some(&p), 2, Failure::Status(503), true, true, true),
            (Some(&p), 3, Failure::Status(503), true, true, false), // 1 + 2 attempts used
            (Some(&p), 1, Failure::Status(500), true, true, false), // not a listed code
            (Some(&p), 1, Failure::Connect, false, true, true),     // nothing was sent
            (Some(&p), 1, Failure::ResetBeforeResponse, true, true, true),
            (
                Some(&p),
                1,
                Failure::ResetBeforeResponse,
                false,
                true,
                false,
            ),
            (Some(&p), 1, Failure::Status(503), true, false, false), // body too big to replay
            (Some(&p), 1, Failure::Timeout, true, true, false),
            (Some(&p), 1, Failure::NotDelivered, false, true, true), // a POST that never arrived
            // Without a route policy: close detection only.
            (None, 1, Failure::Connect, false, true, true),
            (None, 1, Failure::NotDelivered, false, true, true),
            (None, 1, Failure::ResetBeforeResponse, true, true, true),
            (None, 1, Failure::ResetBeforeResponse, false, true, false),
            (None, 3, Failure::Connect, true, true, false),
            (None, 1, Failure::Status(503), true, true, false),
        ];
        for (i, (pol, tries, f, idem, replay, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                should_retry(pol, &at(tries), f, idem, replay, now),
                want,
                "case {i}"
            );
        }
        let expired = Attempts {
            tries: 1,
            deadline: Some(now),
        };
        assert!(
            !should_retry(Some(&p), &expired, Failure::Connect, true, true, now),
            "past the deadline"
        );
    }

    #[test]
    fn retry_on_conditions() {
        use Failure::*;
        type On = RetryOn;
        let codes = [429];
        let cases = [
            // (conditions, failure, idempotent, expected)
            (On::DEFAULT, Connect, false, true),
            (On::DEFAULT, NotDelivered, false, true),
            (On::DEFAULT, ResetBeforeResponse, true, true),
            (On::DEFAULT, ResetBeforeResponse, false, false),
            (On::DEFAULT, Timeout, true, false),
            (On::DEFAULT, Status(429), true, true),
            (On::DEFAULT, Status(503), true, false),
            (On::FIVE_XX, Status(500), true, true),
            (On::FIVE_XX, Status(599), false, true),
            (On::FIVE_XX, Status(429), true, false),
            (On::FIVE_XX, Connect, false, true),
            (On::FIVE_XX, Timeout, true, true),
            (On::FIVE_XX, Timeout, false, false),
            (On::GATEWAY_ERROR, Status(502), true, true),
            (On::GATEWAY_ERROR, Status(504), true, true),
            (On::GATEWAY_ERROR, Status(500), true, false),
            (On::GATEWAY_ERROR, ResetBeforeResponse, true, true),
            (On::CONNECT_FAILURE, Connect, false, true),
            (On::CONNECT_FAILURE, NotDelivered, true, false),
            (On::CONNECT_FAILURE, ResetBeforeResponse, true, false),
            (On::CONNECT_FAILURE, Status(503), true, false),
            (On::REFUSED_STREAM, NotDelivered, false, true),
            (On::REFUSED_STREAM, Connect, true, false),
            (On::RESET, ResetBeforeResponse, true, true),
            (On::RESET, ResetBeforeResponse, false, false),
            (On::RESET, NotDelivered, false, true),
            (On::RESET, Timeout, true, false),
            (On::RESET_BEFORE_REQUEST, NotDelivered, false, true),
            (On::RESET_BEFORE_REQUEST, Connect, false, true),
            (On::RESET_BEFORE_REQUEST, ResetBeforeResponse, true, false),
            (On::RETRIABLE_4XX, Status(409), false, true),
            (On::RETRIABLE_4XX, Status(429), true, false),
            (On::RETRIABLE_STATUS_CODES, Status(429), true, true),
            (On::RETRIABLE_STATUS_CODES, Status(503), true, false),
            (On::RETRIABLE_STATUS_CODES, Connect, true, false),
        ];
        for (i, (on, f, idem, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                retried_on(on, &codes, f, idem),
                want,
                "case {i}: {on:?} {f:?} idempotent={idem}"
            );
        }
    }

    #[test]
    fn backoff_is_a_minimum_growing_exponentially_with_bounded_jitter() {
        let p = policy(5, &[]);
        let ms = Duration::from_millis;
        for (next_try, draw, want) in [
            (2, 0, ms(100)),        // first retry: exactly the minimum without jitter
            (2, u32::MAX, ms(150)), // jitter adds at most half
            (3, 0, ms(200)),
            (4, 0, ms(400)),
            (4, u32::MAX, ms(600)),
            (9, 0, ms(1000)), // capped at 10x
            (9, u32::MAX, ms(1000)),
        ] {
            assert_eq!(
                backoff(&p, next_try, draw),
                want,
                "try {next_try} draw {draw}"
            );
        }
        for draw in [0, 1, u32::MAX / 3, u32::MAX] {
            assert!(backoff(&p, 2, draw) >= ms(100), "never below the minimum");
        }
    }

    #[test]
    fn retry_budget_is_configured_or_a_share_of_load() {
        for (configured, in_flight, want) in [
            (Some(0), 100, 0),
            (Some(7), 1000, 7),
            (None, 0, 3),
            (None, 10, 3),
            (None, 100, 20),
            (None, 1000, 200),
        ] {
            assert_eq!(
                retry_budget(configured, in_flight),
                want,
                "{configured:?} {in_flight}"
            );
        }
    }

    #[test]
    fn stale_connection_retries_are_not_charged_to_the_budget() {
        use Failure::*;
        for (configured, last, want) in [
            (None, Some(NotDelivered), None),
            (None, Some(ResetBeforeResponse), None),
            (None, Some(Connect), Some(3)),
            (None, Some(Status(503)), Some(3)),
            (None, None, Some(3)),
            (Some(1), Some(NotDelivered), Some(1)), // an explicit maxRetries caps everything
        ] {
            assert_eq!(
                retry_cap(configured, 10, last),
                want,
                "{configured:?} {last:?}"
            );
        }
    }

    #[test]
    fn try_timeout_is_the_smaller_of_per_try_and_what_is_left() {
        let now = Instant::now();
        let t = |req: Option<u64>, be: Option<u64>| Timeouts {
            request: req.map(Duration::from_millis),
            backend_request: be.map(Duration::from_millis),
        };
        let a = |tm: &Timeouts| Attempts::start(tm, now);
        let both = t(Some(1000), Some(300));
        assert_eq!(
            try_timeout(&both, &a(&both), now),
            Ok(Some(Duration::from_millis(300)))
        );
        let later = now + Duration::from_millis(900);
        assert_eq!(
            try_timeout(&both, &a(&both), later),
            Ok(Some(Duration::from_millis(100)))
        );
        assert_eq!(
            try_timeout(&both, &a(&both), now + Duration::from_secs(2)),
            Err(ProxyError::Timeout)
        );
        let none = t(None, None);
        assert_eq!(try_timeout(&none, &a(&none), now), Ok(None));
        let be = t(None, Some(50));
        assert_eq!(
            try_timeout(&be, &a(&be), later),
            Ok(Some(Duration::from_millis(50)))
        );
    }
}
