//! Table tests of the CheckResponse → verdict mapping, the fail modes and the header edits.

use super::*;
use crate::ext::config::ServiceRef;
use std::time::Duration;
use waypoint_proto::envoy::config::core::v3::HeaderValue as PbHeader;
use waypoint_proto::envoy::r#type::v3::HttpStatus;
use waypoint_proto::envoy::service::auth::v3::{DeniedHttpResponse, OkHttpResponse};
use waypoint_proto::google::rpc::Status;

fn opt(k: &str, v: &str, append: Option<bool>, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(PbHeader {
            key: k.into(),
            value: v.into(),
            raw_value: vec![],
        }),
        append,
        append_action: action as i32,
        keep_empty_value: false,
    }
}

fn set(k: &str, v: &str) -> HeaderValueOption {
    opt(k, v, None, HeaderAppendAction::AppendIfExistsOrAdd)
}

fn action(k: &str, v: &str, action: AppendAction) -> HeaderAction {
    HeaderAction {
        name: k.parse().unwrap(),
        value: v.parse().unwrap(),
        action,
    }
}

fn status(code: i32) -> Option<Status> {
    Some(Status {
        code,
        ..Default::default()
    })
}

fn denied(http: i32, headers: Vec<HeaderValueOption>, body: &str) -> Option<HttpResponse> {
    Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
        status: Some(HttpStatus { code: http }),
        headers,
        body: body.into(),
    }))
}

fn ok(
    headers: Vec<HeaderValueOption>,
    remove: &[&str],
    response: Vec<HeaderValueOption>,
) -> Option<HttpResponse> {
    Some(HttpResponse::OkResponse(OkHttpResponse {
        headers,
        headers_to_remove: remove.iter().map(|s| s.to_string()).collect(),
        response_headers_to_add: response,
    }))
}

fn deny(code: u16, headers: &[(&str, &str)], body: &str) -> Result<Verdict, CheckError> {
    Ok(Verdict::Deny(Denied {
        status: StatusCode::from_u16(code).unwrap(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect(),
        body: body.into(),
    }))
}

#[test]
fn verdicts() {
    let bad = |s: &str| Err(CheckError::BadResponse(s.into()));
    let allow = |a: Allowed| Ok(Verdict::Allow(a));
    let cases: Vec<(&str, CheckResponse, Result<Verdict, CheckError>)> = vec![
        (
            "empty response is OK (as Envoy)",
            CheckResponse::default(),
            allow(Allowed::default()),
        ),
        (
            "OK, no http_response",
            CheckResponse {
                status: status(0),
                http_response: None,
            },
            allow(Allowed::default()),
        ),
        (
            "OK with edits",
            CheckResponse {
                status: status(0),
                http_response: ok(
                    vec![
                        set("x-user", "alice"),
                        opt(
                            "x-a",
                            "1",
                            Some(true),
                            HeaderAppendAction::AppendIfExistsOrAdd,
                        ),
                        opt("x-b", "2", None, HeaderAppendAction::AddIfAbsent),
                        opt("x-c", "3", None, HeaderAppendAction::OverwriteIfExists),
                        opt("x-d", "4", Some(false), HeaderAppendAction::AddIfAbsent),
                        set(":path", "/admin"),
                        set("x-empty", ""),
                    ],
                    &["authorization", "Host", ":authority"],
                    vec![set("x-seen", "yes")],
                ),
            },
            allow(Allowed {
                request_headers: vec![
                    action("x-user", "alice", AppendAction::Overwrite),
                    action("x-a", "1", AppendAction::Append),
                    action("x-b", "2", AppendAction::AddIfAbsent),
                    action("x-c", "3", AppendAction::OverwriteIfExists),
                    action("x-d", "4", AppendAction::Overwrite),
                ],
                remove_request_headers: vec!["authorization".parse().unwrap()],
                response_headers: vec![action("x-seen", "yes", AppendAction::Overwrite)],
            }),
        ),
        (
            "OK ignores a denied_response",
            CheckResponse {
                status: status(0),
                http_response: denied(401, vec![], "x"),
            },
            allow(Allowed::default()),
        ),
        (
            "PERMISSION_DENIED with custom response",
            CheckResponse {
                status: status(7),
                http_response: denied(401, vec![set("www-authenticate", "Bearer")], "who are you"),
            },
            deny(401, &[("www-authenticate", "Bearer")], "who are you"),
        ),
        (
            "denied without http_response",
            CheckResponse {
                status: status(16),
                http_response: None,
            },
            deny(403, &[], ""),
        ),
        (
            "unknown gRPC code denies",
            CheckResponse {
                status: status(99),
                http_response: None,
            },
            deny(403, &[], ""),
        ),
        (
            "negative gRPC code denies",
            CheckResponse {
                status: status(-1),
                http_response: None,
            },
            deny(403, &[], ""),
        ),
        (
            "denied with an OkResponse gets 403 and no edits",
            CheckResponse {
                status: status(7),
                http_response: ok(vec![set("x", "y")], &[], vec![]),
            },
            deny(403, &[], ""),
        ),
        (
            "redirect",
            CheckResponse {
                status: status(7),
                http_response: denied(302, vec![set("location", "/login")], ""),
            },
            deny(302, &[("location", "/login")], ""),
        ),
        (
            "unset HTTP status → 403",
            CheckResponse {
                status: status(7),
                http_response: denied(0, vec![], "b"),
            },
            deny(403, &[], "b"),
        ),
        (
            "1xx → 403",
            CheckResponse {
                status: status(7),
                http_response: denied(100, vec![], ""),
            },
            deny(403, &[], ""),
        ),
        (
            "unknown 799 → 403",
            CheckResponse {
                status: status(7),
                http_response: denied(799, vec![], ""),
            },
            deny(403, &[], ""),
        ),
        (
            "huge → 403",
            CheckResponse {
                status: status(7),
                http_response: denied(70_000, vec![], ""),
            },
            deny(403, &[], ""),
        ),
        (
            "418 kept",
            CheckResponse {
                status: status(7),
                http_response: denied(418, vec![], ""),
            },
            deny(418, &[], ""),
        ),
        (
            "invalid header name",
            CheckResponse {
                status: status(0),
                http_response: ok(vec![set("bad name", "v")], &[], vec![]),
            },
            bad("invalid header name `bad name`"),
        ),
        (
            "invalid header value",
            CheckResponse {
                status: status(7),
                http_response: denied(403, vec![set("x", "a\nb")], ""),
            },
            bad("invalid value for header `x`"),
        ),
        (
            "too many headers",
            CheckResponse {
                status: status(0),
                http_response: ok(
                    (0..=MAX_HEADERS)
                        .map(|i| set(&format!("x-{i}"), "v"))
                        .collect(),
                    &[],
                    vec![],
                ),
            },
            bad("101 headers (at most 100)"),
        ),
    ];
    for (name, resp, want) in cases {
        assert_eq!(verdict(resp), want, "{name}");
    }
}

#[test]
fn raw_and_empty_values() {
    let mut raw = opt("x-raw", "", None, HeaderAppendAction::AppendIfExistsOrAdd);
    raw.header.as_mut().unwrap().raw_value = b"bytes".to_vec();
    let mut kept = opt("x-kept", "", None, HeaderAppendAction::AppendIfExistsOrAdd);
    kept.keep_empty_value = true;
    let resp = CheckResponse {
        status: status(0),
        http_response: ok(vec![raw, kept, HeaderValueOption::default()], &[], vec![]),
    };
    let Ok(Verdict::Allow(a)) = verdict(resp) else {
        panic!()
    };
    assert_eq!(
        a.request_headers,
        [
            action("x-raw", "bytes", AppendAction::Overwrite),
            action("x-kept", "", AppendAction::Overwrite)
        ]
    );
}

fn provider(fail_open: bool) -> ProviderConfig {
    ProviderConfig {
        name: "p".into(),
        service: ServiceRef {
            namespace: None,
            host: "127.0.0.1".into(),
        },
        port: 1,
        timeout: Duration::from_millis(200),
        fail_open,
        status_on_error: StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[test]
fn fail_modes() {
    let errors = [
        CheckError::Timeout(Duration::from_millis(200)),
        CheckError::Unavailable("refused".into()),
        CheckError::Overloaded(4),
        CheckError::Rpc {
            code: 12,
            message: "unimplemented".into(),
        },
    ];
    for e in errors {
        let open = decide(&provider(true), Err(e.clone()));
        assert_eq!(
            open,
            Decision {
                verdict: Verdict::Allow(Allowed::default()),
                error: Some(e.clone())
            }
        );
        let closed = decide(&provider(false), Err(e.clone()));
        assert_eq!(closed.verdict, deny(503, &[], "").unwrap(), "{e}");
        assert_eq!(closed.error, Some(e));
    }
    // An unusable answer is an error too: fail mode, not the server's intent.
    let bad = CheckResponse {
        status: status(0),
        http_response: ok(vec![set("bad name", "v")], &[], vec![]),
    };
    let d = decide(&provider(false), Ok(bad));
    assert!(!d.is_allowed());
    assert_eq!(d.error.as_ref().map(CheckError::kind), Some("bad_response"));
    // A decision is not an error.
    let d = decide(
        &provider(false),
        Ok(CheckResponse {
            status: status(7),
            http_response: None,
        }),
    );
    assert_eq!(
        d,
        Decision {
            verdict: deny(403, &[], "").unwrap(),
            error: None
        }
    );
}

#[test]
fn header_edits() {
    let base = || {
        let mut h = HeaderMap::new();
        h.insert("x-a", "old".parse().unwrap());
        h.insert("authorization", "Bearer t".parse().unwrap());
        h
    };
    let get = |h: &HeaderMap, k: &str| {
        h.get_all(k)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let cases: &[(AppendAction, &str, &[&str])] = &[
        (AppendAction::Append, "x-a", &["old", "new"]),
        (AppendAction::Append, "x-z", &["new"]),
        (AppendAction::AddIfAbsent, "x-a", &["old"]),
        (AppendAction::AddIfAbsent, "x-z", &["new"]),
        (AppendAction::Overwrite, "x-a", &["new"]),
        (AppendAction::Overwrite, "x-z", &["new"]),
        (AppendAction::OverwriteIfExists, "x-a", &["new"]),
        (AppendAction::OverwriteIfExists, "x-z", &[]),
    ];
    for (act, name, want) in cases {
        let mut h = base();
        action(name, "new", *act).apply(&mut h);
        assert_eq!(get(&h, name), *want, "{act:?} {name}");
    }
    // Sets first, removals last: a header both set and removed is gone.
    let allowed = Allowed {
        request_headers: vec![
            action("authorization", "x", AppendAction::Overwrite),
            action("x-user", "alice", AppendAction::Overwrite),
        ],
        remove_request_headers: vec!["authorization".parse().unwrap()],
        response_headers: vec![action("x-seen", "1", AppendAction::Append)],
    };
    let mut h = base();
    allowed.apply_to_request(&mut h);
    assert!(h.get("authorization").is_none());
    assert_eq!(get(&h, "x-user"), ["alice"]);
    let mut resp = HeaderMap::new();
    allowed.apply_to_response(&mut resp);
    assert_eq!(get(&resp, "x-seen"), ["1"]);
    assert!(!allowed.is_empty() && Allowed::default().is_empty());
}
