//! The per-request controls of the echo: request headers read into a [`Controls`] (the table is in the
//! [`super`] module doc), and whether a request asks to switch protocols ([`upgrade_token`]).

use std::time::Duration;

use http::{HeaderMap, StatusCode, Version};

/// The controls of one request (see the module doc of [`super`]).
#[derive(Default)]
pub(super) struct Controls {
    pub status: Option<StatusCode>,
    pub delay: Option<Duration>,
    pub set_headers: Vec<(String, String)>,
    pub fail_first: u64,
    pub fail_mode: FailMode,
    pub grpc_status: Option<String>,
    pub body_bytes: Option<u64>,
}

/// How a failing attempt fails (`x-echo-fail-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum FailMode {
    /// Answer 503.
    #[default]
    Status,
    Reset,
    Close,
    Hang,
}

impl Controls {
    /// The controls in `h`, or none when `x-echo-controls-for` names a pod other than `pod`.
    pub fn read(h: &HeaderMap, pod: &str) -> Controls {
        let text = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
        if text("x-echo-controls-for").is_some_and(|p| p != pod) {
            return Controls::default();
        }
        let number = |n: &str| text(n).and_then(|v| v.parse::<u64>().ok());
        Controls {
            status: number("x-echo-status")
                .and_then(|s| StatusCode::from_u16(u16::try_from(s).ok()?).ok()),
            delay: number("x-echo-delay-ms").map(Duration::from_millis),
            set_headers: h
                .get_all("x-echo-set-header")
                .iter()
                .filter_map(|v| v.to_str().ok()?.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect(),
            fail_first: number("x-echo-fail-first").unwrap_or(0),
            fail_mode: match text("x-echo-fail-mode") {
                Some("reset") => FailMode::Reset,
                Some("close") => FailMode::Close,
                Some("hang") => FailMode::Hang,
                _ => FailMode::Status,
            },
            grpc_status: text("x-echo-grpc-status").map(str::to_string),
            body_bytes: number("x-echo-body-bytes"),
        }
    }
}

/// The protocol an HTTP/1.1 request asks to switch to: its `Upgrade` value, when `Connection` lists the
/// `upgrade` token (case-insensitive, among others) and `Upgrade` is not empty.
pub(super) fn upgrade_token(version: Version, h: &HeaderMap) -> Option<&str> {
    if version != Version::HTTP_11 {
        return None;
    }
    let connection_upgrade = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let token = h.get(http::header::UPGRADE)?.to_str().ok()?.trim();
    (connection_upgrade && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            let name = http::HeaderName::from_bytes(k.as_bytes()).unwrap();
            h.append(name, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn an_upgrade_needs_the_connection_token_and_an_upgrade_value_over_http1() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ];
        type Case<'a> = (Version, &'a [(&'a str, &'a str)], Option<&'a str>);
        let cases: &[Case] = &[
            (Version::HTTP_11, &ws, Some("websocket")),
            (
                Version::HTTP_11,
                &[("connection", "upgrade"), ("upgrade", "echo/1")],
                Some("echo/1"),
            ),
            (Version::HTTP_11, &[("upgrade", "websocket")], None),
            (Version::HTTP_11, &[("connection", "upgrade")], None),
            (
                Version::HTTP_11,
                &[("connection", "upgraded"), ("upgrade", "websocket")],
                None,
            ),
            (
                Version::HTTP_11,
                &[("connection", "upgrade"), ("upgrade", " ")],
                None,
            ),
            (Version::HTTP_2, &ws, None),
        ];
        for (version, pairs, want) in cases {
            let h = headers(pairs);
            assert_eq!(upgrade_token(*version, &h), *want, "{version:?} {pairs:?}");
        }
    }
}
