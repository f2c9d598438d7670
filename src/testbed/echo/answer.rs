//! Answering one request: record what was received ([`describe`]), apply the instance's [`Fault`] and the
//! request's [`Controls`], then answer the JSON, a byte pattern, a gRPC message, a failure, or — for an upgrade
//! request — `101 Switching Protocols` ([`super::upgrade`]).

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::body::{grpc_frame, pattern_body, Body};
use super::connection::Activity;
use super::controls::{upgrade_token, Controls, FailMode};
use super::{upgrade, Echo, EchoIdentity, EchoStats, Fault, Shared, HANG_LIMIT, SEEN_CAP};

/// Counts a request in flight (instance and connection) until dropped.
struct InFlight {
    stats: Arc<EchoStats>,
    activity: Arc<Activity>,
}

impl InFlight {
    fn new(stats: Arc<EchoStats>, activity: Arc<Activity>) -> InFlight {
        let now = stats.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::AcqRel);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight { stats, activity }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::AcqRel);
        // The answer is about to be written: a new idle period starts no earlier than now.
        self.activity.epoch.fetch_add(1, Ordering::AcqRel);
        self.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The service of every connection. `Err` makes hyper drop the connection (a RST when `reset` is set).
pub(super) async fn answer(
    mut req: Request<Incoming>,
    shared: Arc<Shared>,
    reset: Arc<AtomicBool>,
    activity: Arc<Activity>,
) -> io::Result<Response<Body>> {
    let _in_flight = InFlight::new(shared.stats.clone(), activity);
    let upgrade = upgrade_token(req.version(), req.headers())
        .map(str::to_string)
        .map(|token| (token, hyper::upgrade::on(&mut req)));
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let id = &shared.identity;
    let controls = Controls::read(&parts.headers, &id.pod);
    let request_id = parts
        .headers
        .get("x-echo-request-id")
        .and_then(|v| v.to_str().ok());
    let attempt = request_id.map_or(0, |r| {
        shared.stats.attempts.next(r);
        shared.attempts.next(r)
    });
    let echo = describe(&parts, &body, id, attempt);
    shared.stats.requests.fetch_add(1, Ordering::Relaxed);
    {
        let mut seen = shared.stats.seen.lock().expect("seen lock");
        if seen.len() < SEEN_CAP {
            seen.push(echo.clone());
        }
    }
    let fault = *shared.fault.borrow();
    let failing = request_id.is_some() && attempt <= controls.fail_first;
    let mode = match fault {
        Fault::Reset => Some(FailMode::Reset),
        Fault::Close | Fault::Refuse => Some(FailMode::Close),
        Fault::Hang => Some(FailMode::Hang),
        _ if failing => Some(controls.fail_mode),
        _ => None,
    };
    let delay = match fault {
        Fault::Delay(d) => Some(d + controls.delay.unwrap_or_default()),
        _ => controls.delay,
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let json = Bytes::from(serde_json::to_vec(&echo).expect("an Echo serializes"));
    match mode {
        Some(FailMode::Reset) => {
            reset.store(true, Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "x-echo-fail-mode: reset",
            ));
        }
        Some(FailMode::Close) => {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "x-echo-fail-mode: close",
            ));
        }
        Some(FailMode::Hang) => {
            tokio::time::sleep(HANG_LIMIT).await;
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "x-echo-fail-mode: hang",
            ));
        }
        Some(FailMode::Status) | None => {}
    }
    let status = match fault {
        Fault::Status(s) => StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        _ if failing => StatusCode::SERVICE_UNAVAILABLE,
        _ => controls.status.unwrap_or(StatusCode::OK),
    };
    // An upgrade is accepted when nothing asked for another answer (a status refuses it).
    if let Some((token, on_upgrade)) = upgrade.filter(|_| status == StatusCode::OK) {
        return Ok(upgrade::switch(
            on_upgrade, &token, &controls, &shared, &reset,
        ));
    }
    let grpc = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"));
    let mut resp = Response::builder()
        .status(status)
        .header("x-echo-pod", id.pod.as_str());
    for (k, v) in &controls.set_headers {
        resp = resp.header(k.as_str(), v.as_str());
    }
    let resp = if let Some(n) = controls.body_bytes {
        resp.header("content-type", "application/octet-stream")
            .body(pattern_body(n))
    } else if grpc {
        let mut trailers = HeaderMap::new();
        let code = controls.grpc_status.as_deref().unwrap_or("0");
        let code = HeaderValue::from_str(code).unwrap_or(HeaderValue::from_static("2"));
        trailers.insert("grpc-status", code);
        let body = Full::new(grpc_frame(&json))
            .with_trailers(async move { Some(Ok(trailers)) })
            .boxed();
        resp.header("content-type", "application/grpc").body(body)
    } else {
        resp.header("content-type", "application/json")
            .body(Full::new(json).boxed())
    };
    Ok(resp.unwrap_or_else(|e| internal_error(&e)))
}

/// A 500 naming why the answer could not be built (e.g. an invalid `x-echo-set-header`).
pub(super) fn internal_error(e: &http::Error) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(e.to_string())).boxed());
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

/// What the echo saw of a request, and who it is.
fn describe(parts: &http::request::Parts, body: &Bytes, id: &EchoIdentity, attempt: u64) -> Echo {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let host = match parts.version {
        Version::HTTP_2 => parts.uri.authority().map(|a| a.to_string()),
        _ => None,
    }
    .or_else(|| headers.get("host").and_then(|v| v.first().cloned()))
    .unwrap_or_default();
    let protocol = match parts.version {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    };
    Echo {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_string(), |p| p.to_string()),
        host,
        headers,
        protocol: protocol.to_string(),
        body: String::from_utf8_lossy(body).into_owned(),
        service: id.service.clone(),
        namespace: id.namespace.clone(),
        pod: id.pod.clone(),
        port: id.port,
        attempt,
        received_at: Some(Instant::now()),
    }
}
