//! `GET /explain?to=host:port&from=ns/sa&method=GET&path=/x&h=name:value&source_ip=..`: what the waypoint
//! would do with that request, judged against its live snapshot ([`crate::explain::explain`]). JSON by
//! default, `format=text` for the text `waypoint explain` prints. An `ns/sa` caller is in the trust domain
//! `td` (default `cluster.local`). Bad input answers 400, an unknown service 404, each with the reason.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use mesh::config::{Live, DEFAULT_TRUST_DOMAIN};
use mesh::ops::{self, OpsRequest};

use crate::explain::{self, source, ExplainError};
use crate::snapshot::Snapshot;

/// Answers one `/explain` request.
pub fn answer(live: &Live<Snapshot>, req: &OpsRequest) -> Response<Full<Bytes>> {
    if req.method != http::Method::GET {
        return ops::text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    let pairs = req.query_pairs();
    let param = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let td = param("td").unwrap_or(DEFAULT_TRUST_DOMAIN);
    let text = match param("format") {
        None | Some("json") => false,
        Some("text") => true,
        Some(other) => {
            return ops::text(
                StatusCode::BAD_REQUEST,
                format!("format={other:?}: json or text\n"),
            )
        }
    };
    let q = match source::parse_query(&pairs) {
        Ok(q) => q,
        Err(e) => return ops::text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    match explain::explain(&live.load(), &q, td) {
        Ok(e) if text => ops::text(StatusCode::OK, explain::render::text(&e)),
        Ok(e) => ops::respond(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&e).unwrap_or_default(),
        ),
        Err(e @ ExplainError::UnknownService { .. }) => {
            ops::text(StatusCode::NOT_FOUND, format!("{e}\n"))
        }
        Err(e) => ops::text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}
