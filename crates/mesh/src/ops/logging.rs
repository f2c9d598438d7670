//! The log filter, changeable at runtime: a `tracing_subscriber` `EnvFilter` behind a reload layer, and the
//! admin port's `/logging` endpoint over it.
//!
//! - `GET /logging`: the filter in force.
//! - `POST /logging?level=DIRECTIVES`: merges directives into it — a bare level (`debug`) replaces the default
//!   level, `target=level` (`waypoint::access=info`) replaces that target's level; the rest stay.
//! - `POST /logging?filter=DIRECTIVES`: replaces the whole filter.
//!
//! An invalid directive is refused with `400` and the filter stays as it was.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use super::{text, OpsRequest};

type Apply = dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync;

/// A handle on the process's log filter. Cheap to clone.
#[derive(Clone)]
pub struct LogControl {
    /// The directives in force. Only the admin port touches it.
    current: Arc<Mutex<String>>,
    apply: Arc<Apply>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("current", &self.current())
            .finish()
    }
}

impl LogControl {
    /// Installs the global subscriber (text lines on stdout) filtered by `directives`, and returns its handle.
    pub fn init(directives: &str) -> Result<LogControl, String> {
        let (control, filter) = Self::layer(directives)?;
        tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer())
            .try_init()
            .map_err(|e| e.to_string())?;
        Ok(control)
    }

    /// A reloadable filter layer and its handle, for a subscriber built elsewhere (tests).
    pub fn layer(
        directives: &str,
    ) -> Result<(LogControl, impl Layer<Registry> + Send + Sync), String> {
        let filter = parse(directives)?;
        let (layer, handle) = reload::Layer::new(filter);
        let apply = move |f: EnvFilter| handle.reload(f).map_err(|e| e.to_string());
        let control = LogControl {
            current: Arc::new(Mutex::new(directives.to_string())),
            apply: Arc::new(apply),
        };
        Ok((control, layer))
    }

    /// The directives in force.
    pub fn current(&self) -> String {
        self.lock().clone()
    }

    /// Merges `update` into the filter (see the module doc); returns the new directives.
    pub fn merge(&self, update: &str) -> Result<String, String> {
        let mut current = self.lock();
        let next = merge_directives(&current, update);
        (self.apply)(parse(&next)?)?;
        *current = next.clone();
        Ok(next)
    }

    /// Replaces the filter with `directives`.
    pub fn replace(&self, directives: &str) -> Result<String, String> {
        let mut current = self.lock();
        (self.apply)(parse(directives)?)?;
        *current = directives.to_string();
        Ok(directives.to_string())
    }

    /// The `/logging` endpoint (see the module doc).
    pub fn answer(&self, req: &OpsRequest) -> Response<Full<Bytes>> {
        if req.method == Method::GET && req.query.is_empty() {
            return text(StatusCode::OK, format!("{}\n", self.current()));
        }
        if req.method != Method::POST {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST /logging?level=DIRECTIVES or ?filter=DIRECTIVES\n".into(),
            );
        }
        let pairs = req.query_pairs();
        let result = match pairs.as_slice() {
            [(k, v)] if k == "level" => self.merge(v),
            [(k, v)] if k == "filter" => self.replace(v),
            _ => Err("expected exactly one of ?level=DIRECTIVES or ?filter=DIRECTIVES".into()),
        };
        match result {
            Ok(now) => {
                tracing::info!(filter = %now, "log filter changed");
                text(StatusCode::OK, format!("{now}\n"))
            }
            Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, String> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn parse(directives: &str) -> Result<EnvFilter, String> {
    if directives.trim().is_empty() {
        return Err("empty log filter".into());
    }
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| format!("invalid log directives {directives:?}: {e}"))
}

/// The target a directive sets (`""` for a bare level): what precedes its last `=`, when what follows is a level.
fn directive_target(d: &str) -> &str {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    match d.rsplit_once('=') {
        Some((target, level)) if LEVELS.contains(&level.trim().to_ascii_lowercase().as_str()) => {
            target.trim()
        }
        _ if LEVELS.contains(&d.trim().to_ascii_lowercase().as_str()) => "",
        _ => d.trim(),
    }
}

/// `current` with each directive of `update` replacing the one for the same target (see the module doc).
pub fn merge_directives(current: &str, update: &str) -> String {
    let mut out: Vec<&str> = current
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    for d in update.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let target = directive_target(d);
        out.retain(|old| directive_target(old) != target);
        // The default level first, as people write it.
        if target.is_empty() {
            out.insert(0, d);
        } else {
            out.push(d);
        }
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_replaces_by_target() {
        for (current, update, want) in [
            ("info", "debug", "debug"),
            (
                "info",
                "waypoint::access=info",
                "info,waypoint::access=info",
            ),
            (
                "warn,waypoint::access=info",
                "debug",
                "debug,waypoint::access=info",
            ),
            (
                "warn,waypoint::access=info",
                "waypoint::access=off,mesh=debug",
                "warn,waypoint::access=off,mesh=debug",
            ),
            ("warn", " error , h2=warn ", "error,h2=warn"),
        ] {
            assert_eq!(
                merge_directives(current, update),
                want,
                "{current} + {update}"
            );
        }
    }

    #[test]
    fn bad_directives_are_refused_and_change_nothing() {
        let (control, _layer) = LogControl::layer("info").unwrap();
        assert!(control.merge("waypoint=loud").is_err());
        assert!(control.replace("").is_err());
        assert_eq!(control.current(), "info");
        assert_eq!(control.merge("mesh=debug").unwrap(), "info,mesh=debug");
        assert_eq!(control.current(), "info,mesh=debug");
    }

    #[test]
    fn reload_changes_what_is_enabled() {
        let (control, layer) = LogControl::layer("warn").unwrap();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            assert!(!tracing::enabled!(target: "ops_test", tracing::Level::DEBUG));
            control.merge("ops_test=debug").unwrap();
            assert!(tracing::enabled!(target: "ops_test", tracing::Level::DEBUG));
            assert!(!tracing::enabled!(target: "other", tracing::Level::INFO));
        });
    }
}
