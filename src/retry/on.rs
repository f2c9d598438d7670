//! Istio's `retryOn` conditions (Envoy's `x-envoy-retry-on` / `retry_on` vocabulary), carried by the route
//! annotation `retry.waypoint.dev/on`, as a set ([`RetryOn`]) plus the retriable status codes.
//!
//! Without the annotation a route retries [`RetryOn::DEFAULT`]: what the waypoint always did (connect
//! failures, requests provably not delivered, resets before the response of idempotent requests, and the
//! HTTPRoute `retry.codes`). With it, exactly the listed conditions.

use bitflags::bitflags;

bitflags! {
    /// The conditions a failed try is retried on.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct RetryOn: u16 {
        /// `5xx`: any 5xx response, a reset or a per-try timeout (includes connect failures).
        const FIVE_XX = 1 << 0;
        /// `gateway-error`: 502, 503, 504, a reset or a per-try timeout.
        const GATEWAY_ERROR = 1 << 1;
        /// `connect-failure`: the connection (or HBONE stream) could not be opened.
        const CONNECT_FAILURE = 1 << 2;
        /// `refused-stream`: the upstream refused the stream (HTTP/2 `REFUSED_STREAM`) — here, any proof that
        /// the request was not delivered.
        const REFUSED_STREAM = 1 << 3;
        /// `reset`: a disconnect or reset before any response byte (idempotent requests, unless the route opts
        /// in with `retry.waypoint.dev/reset-before-response`).
        const RESET = 1 << 4;
        /// `reset-before-request`: a reset before the request was (entirely) delivered: any method.
        const RESET_BEFORE_REQUEST = 1 << 5;
        /// `retriable-4xx`: 409 Conflict.
        const RETRIABLE_4XX = 1 << 6;
        /// `retriable-status-codes`: the route's codes (HTTPRoute `retry.codes` and bare codes in the list).
        const RETRIABLE_STATUS_CODES = 1 << 7;
    }
}

impl RetryOn {
    /// Without the annotation: close detection and the HTTPRoute's codes.
    pub const DEFAULT: RetryOn = RetryOn::CONNECT_FAILURE
        .union(RetryOn::REFUSED_STREAM)
        .union(RetryOn::RESET_BEFORE_REQUEST)
        .union(RetryOn::RESET)
        .union(RetryOn::RETRIABLE_STATUS_CODES);

    /// The condition named `name` in Istio's vocabulary.
    pub fn condition(name: &str) -> Option<RetryOn> {
        Some(match name {
            "5xx" => RetryOn::FIVE_XX,
            "gateway-error" => RetryOn::GATEWAY_ERROR,
            "connect-failure" => RetryOn::CONNECT_FAILURE,
            "refused-stream" => RetryOn::REFUSED_STREAM,
            "reset" => RetryOn::RESET,
            "reset-before-request" => RetryOn::RESET_BEFORE_REQUEST,
            "retriable-4xx" => RetryOn::RETRIABLE_4XX,
            "retriable-status-codes" => RetryOn::RETRIABLE_STATUS_CODES,
            _ => return None,
        })
    }

    /// Parses a `retryOn` list (`"5xx,connect-failure,429"`): conditions and bare status codes (which add
    /// themselves to the codes and imply `retriable-status-codes`). Whitespace around items is ignored; an
    /// empty list, an unknown condition or a code outside 400–599 is an error naming the item.
    pub fn parse(list: &str) -> Result<(RetryOn, Vec<u16>), String> {
        let (mut on, mut codes) = (RetryOn::empty(), Vec::new());
        for item in list.split(',').map(str::trim) {
            if item.is_empty() {
                continue;
            }
            if let Some(c) = RetryOn::condition(item) {
                on |= c;
                continue;
            }
            match item.parse::<u16>() {
                Ok(code) if (400..=599).contains(&code) => {
                    on |= RetryOn::RETRIABLE_STATUS_CODES;
                    if !codes.contains(&code) {
                        codes.push(code);
                    }
                }
                Ok(code) => return Err(format!("status code {code} is out of range 400-599")),
                Err(_) => return Err(format!("unknown retry condition {item:?}")),
            }
        }
        if on.is_empty() {
            return Err("no retry condition".into());
        }
        Ok((on, codes))
    }
}

impl Default for RetryOn {
    fn default() -> Self {
        RetryOn::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_retry_on_lists() {
        type On = RetryOn;
        type Parsed = Result<(On, Vec<u16>), &'static str>;
        let cases: [(&str, Parsed); 9] = [
            ("5xx", Ok((On::FIVE_XX, vec![]))),
            (
                "gateway-error, connect-failure,refused-stream",
                Ok((
                    On::GATEWAY_ERROR | On::CONNECT_FAILURE | On::REFUSED_STREAM,
                    vec![],
                )),
            ),
            (
                "reset,reset-before-request,retriable-4xx",
                Ok((
                    On::RESET | On::RESET_BEFORE_REQUEST | On::RETRIABLE_4XX,
                    vec![],
                )),
            ),
            (
                "retriable-status-codes,429,503,429",
                Ok((On::RETRIABLE_STATUS_CODES, vec![429, 503])),
            ),
            ("503", Ok((On::RETRIABLE_STATUS_CODES, vec![503]))),
            ("5xx,teapot", Err("unknown retry condition \"teapot\"")),
            ("200", Err("status code 200 is out of range 400-599")),
            ("", Err("no retry condition")),
            (" , ", Err("no retry condition")),
        ];
        for (text, want) in cases {
            let want = want.map_err(str::to_string);
            assert_eq!(RetryOn::parse(text), want, "{text:?}");
        }
    }
}
