//! `/config_dump`: the active snapshot with its generation, and the last rejected change (its text, file,
//! object and field, when it happened, and the generation that kept serving).

use std::time::SystemTime;

use mesh::config::Live;
use serde::Serialize;

use crate::snapshot::Snapshot;

#[derive(Serialize)]
struct Dump {
    /// The active snapshot's generation (1 at start, +1 per accepted change).
    generation: u64,
    /// The last rejected change, until a good one replaces it.
    last_error: Option<ErrorDump>,
    services: Vec<ServiceDump>,
}

/// A rejected change.
#[derive(Serialize)]
pub struct ErrorDump {
    /// The whole error as logged.
    pub text: String,
    pub file: String,
    /// `Kind namespace/name`.
    pub object: String,
    /// Dotted path into the object (empty: the whole document).
    pub field: String,
    pub message: String,
    /// When it was rejected, RFC 3339 UTC.
    pub at: Option<String>,
    /// The generation that kept serving.
    pub kept_generation: u64,
}

/// The last rejected change of `live`, if any.
pub fn last_error<T>(live: &Live<T>) -> Option<ErrorDump> {
    let kept_generation = live.generation();
    let e = live.last_error()?;
    let at = live.last_error_at().map(rfc3339);
    Some(ErrorDump {
        text: e.to_string(),
        file: e.file.display().to_string(),
        object: e.object,
        field: e.field,
        message: e.message,
        at,
        kept_generation,
    })
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[derive(Serialize)]
struct ServiceDump {
    address: String,
    name: String,
    rules: Vec<RuleDump>,
}

#[derive(Serialize)]
struct RuleDump {
    name: String,
    backends: Vec<BackendDump>,
}

#[derive(Serialize)]
struct BackendDump {
    name: String,
    weight: u32,
    invalid: Option<String>,
    endpoints: Vec<String>,
}

/// The config dump of `live`.
pub fn config_dump(live: &Live<Snapshot>) -> String {
    let snap = live.load();
    let mut services: Vec<ServiceDump> = snap
        .services
        .iter()
        .map(|(addr, t)| ServiceDump {
            address: addr.to_string(),
            name: t.name.clone(),
            rules: t
                .rules
                .iter()
                .map(|r| RuleDump {
                    name: r.name.clone(),
                    backends: r
                        .backends
                        .iter()
                        .map(|b| BackendDump {
                            name: b.name.clone(),
                            weight: b.weight,
                            invalid: b.invalid.clone(),
                            endpoints: b.endpoints.iter().map(|e| e.addr.to_string()).collect(),
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect();
    services.sort_by(|a, b| a.address.cmp(&b.address));
    let dump = Dump {
        generation: live.generation(),
        last_error: last_error(live),
        services,
    };
    serde_json::to_string_pretty(&dump).unwrap_or_default()
}
