//! From a `CheckResponse` (or the lack of one) to a [`Decision`], as Envoy's ext_authz filter decides; pure.
//!
//! - `status.code == 0` (OK; a response without `status` counts as OK, as in Envoy) → allow, with the
//!   `ok_response` header edits.
//! - any other code, known to gRPC or not → deny with the `denied_response` status (403 when it is unset or not
//!   a final status 200..=599), headers and body.
//! - no answer ([`CheckError`]) → the provider's fail mode: allow when `failOpen`, else deny with
//!   `statusOnError` and an empty body.
//!
//! Header values: `value`, or `raw_value` when `value` is empty; an empty result is skipped unless
//! `keep_empty_value`. Pseudo-headers (`:path`…) are never edited and `host` never removed. The deprecated
//! `append` flag wins over `append_action` when set; with neither, a header is overwritten (Envoy's documented
//! default for ext_authz responses). An invalid header name or value, or more than [`MAX_HEADERS`] edits, makes
//! the whole answer a [`CheckError::BadResponse`]. [`Allowed::apply_to_request`] sets/adds first and removes last.

use super::{
    Allowed, AppendAction, CheckError, Decision, Denied, HeaderAction, ProviderConfig, Verdict,
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use waypoint_proto::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValueOption,
};
use waypoint_proto::envoy::service::auth::v3::{check_response::HttpResponse, CheckResponse};

/// The most header edits one answer may carry (per list).
pub const MAX_HEADERS: usize = 100;

/// The decision for an authorizer's answer; an unusable answer goes to the provider's fail mode.
pub fn decide(provider: &ProviderConfig, answer: Result<CheckResponse, CheckError>) -> Decision {
    match answer.and_then(verdict) {
        Ok(verdict) => Decision {
            verdict,
            error: None,
        },
        Err(e) => on_error(provider, e),
    }
}

/// The provider's fail mode for an authorizer that gave no decision.
pub fn on_error(provider: &ProviderConfig, error: CheckError) -> Decision {
    let verdict = if provider.fail_open {
        Verdict::Allow(Allowed::default())
    } else {
        Verdict::Deny(Denied {
            status: provider.status_on_error,
            headers: Vec::new(),
            body: String::new(),
        })
    };
    Decision {
        verdict,
        error: Some(error),
    }
}

/// The verdict a `CheckResponse` carries.
pub fn verdict(resp: CheckResponse) -> Result<Verdict, CheckError> {
    let code = resp.status.as_ref().map_or(0, |s| s.code);
    if code == 0 {
        let Some(HttpResponse::OkResponse(ok)) = resp.http_response else {
            return Ok(Verdict::Allow(Allowed::default()));
        };
        let too_many = |what: &str, n: usize| {
            CheckError::BadResponse(format!("{n} {what} (at most {MAX_HEADERS})"))
        };
        if ok.headers.len() > MAX_HEADERS {
            return Err(too_many("headers", ok.headers.len()));
        }
        if ok.headers_to_remove.len() > MAX_HEADERS {
            return Err(too_many("headers_to_remove", ok.headers_to_remove.len()));
        }
        if ok.response_headers_to_add.len() > MAX_HEADERS {
            return Err(too_many(
                "response_headers_to_add",
                ok.response_headers_to_add.len(),
            ));
        }
        let mut remove = Vec::with_capacity(ok.headers_to_remove.len());
        for name in &ok.headers_to_remove {
            if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
                continue;
            }
            remove.push(header_name(name)?);
        }
        return Ok(Verdict::Allow(Allowed {
            request_headers: actions(&ok.headers)?,
            remove_request_headers: remove,
            response_headers: actions(&ok.response_headers_to_add)?,
        }));
    }
    let Some(HttpResponse::DeniedResponse(denied)) = resp.http_response else {
        return Ok(Verdict::Deny(Denied {
            status: StatusCode::FORBIDDEN,
            headers: Vec::new(),
            body: String::new(),
        }));
    };
    if denied.headers.len() > MAX_HEADERS {
        return Err(CheckError::BadResponse(format!(
            "{} denied headers",
            denied.headers.len()
        )));
    }
    let status = denied
        .status
        .and_then(|s| u16::try_from(s.code).ok())
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::FORBIDDEN);
    let headers = actions(&denied.headers)?
        .into_iter()
        .map(|a| (a.name, a.value))
        .collect();
    Ok(Verdict::Deny(Denied {
        status,
        headers,
        body: denied.body,
    }))
}

fn actions(options: &[HeaderValueOption]) -> Result<Vec<HeaderAction>, CheckError> {
    let mut out = Vec::with_capacity(options.len());
    for o in options {
        let Some(h) = &o.header else { continue };
        if h.key.starts_with(':') {
            continue;
        }
        let raw: &[u8] = if h.value.is_empty() {
            &h.raw_value
        } else {
            h.value.as_bytes()
        };
        if raw.is_empty() && !o.keep_empty_value {
            continue;
        }
        let value = HeaderValue::from_bytes(raw).map_err(|_| {
            CheckError::BadResponse(format!("invalid value for header `{}`", h.key))
        })?;
        let action = match o.append {
            Some(true) => AppendAction::Append,
            Some(false) => AppendAction::Overwrite,
            None => match HeaderAppendAction::try_from(o.append_action) {
                Ok(HeaderAppendAction::AddIfAbsent) => AppendAction::AddIfAbsent,
                Ok(HeaderAppendAction::OverwriteIfExists) => AppendAction::OverwriteIfExists,
                _ => AppendAction::Overwrite,
            },
        };
        out.push(HeaderAction {
            name: header_name(&h.key)?,
            value,
            action,
        });
    }
    Ok(out)
}

fn header_name(name: &str) -> Result<HeaderName, CheckError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| CheckError::BadResponse(format!("invalid header name `{name}`")))
}

impl HeaderAction {
    /// Applies this edit to a header map.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let present = headers.contains_key(&self.name);
        match self.action {
            AppendAction::Append => {
                headers.append(self.name.clone(), self.value.clone());
            }
            AppendAction::AddIfAbsent if !present => {
                headers.insert(self.name.clone(), self.value.clone());
            }
            AppendAction::Overwrite => {
                headers.insert(self.name.clone(), self.value.clone());
            }
            AppendAction::OverwriteIfExists if present => {
                headers.insert(self.name.clone(), self.value.clone());
            }
            AppendAction::AddIfAbsent | AppendAction::OverwriteIfExists => {}
        }
    }
}

impl Allowed {
    /// Edits the request sent upstream: the authorizer's headers first, then its removals (as Envoy does).
    pub fn apply_to_request(&self, headers: &mut HeaderMap) {
        for a in &self.request_headers {
            a.apply(headers);
        }
        for name in &self.remove_request_headers {
            headers.remove(name);
        }
    }

    /// Edits the response sent back to the client.
    pub fn apply_to_response(&self, headers: &mut HeaderMap) {
        for a in &self.response_headers {
            a.apply(headers);
        }
    }

    /// Whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.request_headers.is_empty()
            && self.remove_request_headers.is_empty()
            && self.response_headers.is_empty()
    }
}

#[cfg(test)]
mod tests;
