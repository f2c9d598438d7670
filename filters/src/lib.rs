//! HTTPRoute filters the waypoint applies to requests and responses, compiled once per config snapshot.
//!
//! A filter is compiled from the strings of a Gateway API `HTTPRoute` (`RequestHeaderModifier`,
//! `ResponseHeaderModifier`) into `http` types, so an invalid header name or value is rejected when the config
//! loads, naming the header, and applying it on the request path neither parses nor fails.
//!
//! - [`HeaderModifier`]: `RequestHeaderModifier` / `ResponseHeaderModifier`.
//! - [`redirect`]: `RequestRedirect` ([`Redirect::location`]) and `URLRewrite` ([`UrlRewrite::apply_path`]),
//!   with the path modifiers they share ([`PathModifier`]).
//! - [`mirror`]: the share of requests a `RequestMirror` copies ([`MirrorFraction`]).
//!
//! Other filter fields are validated the same way; [`FilterError::Invalid`] names the field
//! (`requestRedirect.statusCode`, `requestMirror.fraction.denominator`, …).

pub mod mirror;
pub mod redirect;

pub use mirror::MirrorFraction;
pub use redirect::{PathModifier, Redirect, RequestParts, UrlRewrite};

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// A filter that cannot be compiled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("invalid header name {name:?}")]
    InvalidName { name: String },
    #[error("invalid value for header {name:?}: {value:?}")]
    InvalidValue { name: String, value: String },
    /// Any other invalid filter field: which field, and why.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

/// A compiled `RequestHeaderModifier` / `ResponseHeaderModifier` (Gateway API).
///
/// Applied as Gateway API and Envoy do: `remove` first, then `set` (replaces every value of the header, or adds
/// it), then `add` (appends a value, keeping the existing ones). Names are case-insensitive (stored lowercase).
/// When one list names a header more than once, only the first entry counts, as the Gateway API specifies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderModifier {
    /// Compiles the filter's `set`, `add` (name, value) and `remove` (name) lists.
    pub fn compile(
        set: &[(String, String)],
        add: &[(String, String)],
        remove: &[String],
    ) -> Result<HeaderModifier, FilterError> {
        let mut removed = Vec::with_capacity(remove.len());
        for name in remove {
            let name = header_name(name)?;
            if !removed.contains(&name) {
                removed.push(name);
            }
        }
        Ok(HeaderModifier {
            set: pairs(set)?,
            add: pairs(add)?,
            remove: removed,
        })
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Modifies `headers` in place.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

fn header_name(name: &str) -> Result<HeaderName, FilterError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| FilterError::InvalidName {
        name: name.to_string(),
    })
}

/// Compiles (name, value) pairs, keeping the first of equivalent names.
fn pairs(list: &[(String, String)]) -> Result<Vec<(HeaderName, HeaderValue)>, FilterError> {
    let mut out: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(list.len());
    for (name, value) in list {
        let header = header_name(name)?;
        let value = HeaderValue::from_str(value).map_err(|_| FilterError::InvalidValue {
            name: name.clone(),
            value: value.clone(),
        })?;
        if !out.iter().any(|(n, _)| *n == header) {
            out.push((header, value));
        }
    }
    Ok(out)
}
