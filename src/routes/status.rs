//! Route status as a Gateway API controller would write it: per route and parent, `Accepted` and
//! `ResolvedRefs` with their reasons (`Accepted`, `NoMatchingParent`, `NotAllowedByListeners`, `ResolvedRefs`,
//! `BackendNotFound`, `RefNotPermitted`, `InvalidKind`, `UnsupportedValue`).
//!
//! [`statuses`] computes them for one waypoint (the admin endpoint), [`statuses_all`] for every waypoint of a
//! manifests directory, and [`check`] is `waypoint check`: a `kubectl`-style table (or JSON) and whether
//! everything is `True`.

use std::collections::HashMap;
use std::path::Path;

use mesh::config::{ConfigError, GatewayRef, Mesh};

use super::compile::compile_tables;
use crate::snapshot::WaypointSpec;

/// One condition.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Condition {
    /// `Accepted` or `ResolvedRefs` on a route; `Accepted` or `Programmed` on a Gateway.
    #[serde(rename = "type")]
    pub kind: String,
    /// `True` or `False`.
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// The status of one route for one parent.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RouteStatus {
    /// `HTTPRoute namespace/name` or `GRPCRoute namespace/name`.
    pub route: String,
    /// `Service namespace/name[:port]` or `Gateway namespace/name`.
    pub parent: String,
    pub conditions: Vec<Condition>,
}

impl RouteStatus {
    /// Whether any condition is `False` (`waypoint check` exits non-zero then).
    pub fn has_errors(&self) -> bool {
        self.conditions.iter().any(|c| c.status == "False")
    }
}

impl Condition {
    /// A condition of `kind` (`Accepted`, `ResolvedRefs`) with status `True`/`False`.
    pub fn new(kind: &str, status: bool, reason: &str, message: &str) -> Condition {
        Condition {
            kind: kind.to_string(),
            status: if status { "True" } else { "False" }.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
        }
    }
}

impl RouteStatus {
    /// The condition of `kind`, if present.
    pub fn condition(&self, kind: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }
}

/// Every route of the mesh, for each of its parents, as waypoint `spec` sees them (what the admin endpoint
/// shows; the same as the statuses [`crate::snapshot::compile_with_status`] returns).
pub fn statuses(mesh: &Mesh, spec: &WaypointSpec) -> Result<Vec<RouteStatus>, ConfigError> {
    compile_tables(mesh, spec).map(|(_, statuses)| statuses)
}

/// Statuses across every waypoint of the mesh: a route's parent is judged by the waypoint that serves it (a
/// `NoMatchingParent` from one waypoint gives way to another waypoint's verdict).
pub fn statuses_all(mesh: &Mesh, hbone_port: u16) -> Result<Vec<RouteStatus>, ConfigError> {
    let mut gateways: Vec<GatewayRef> = mesh
        .waypoints
        .iter()
        .map(|w| GatewayRef {
            namespace: w.namespace.clone(),
            name: w.name.clone(),
        })
        .collect();
    if gateways.is_empty() {
        gateways.push(GatewayRef {
            namespace: String::new(),
            name: "(none)".into(),
        });
    }
    let mut out: Vec<RouteStatus> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    for gateway in gateways {
        let spec = WaypointSpec {
            gateway,
            hbone_port,
        };
        for s in statuses(mesh, &spec)? {
            let key = (s.route.clone(), s.parent.clone());
            match index.get(&key) {
                None => {
                    index.insert(key, out.len());
                    out.push(s);
                }
                Some(&i) if no_parent(&out[i]) && !no_parent(&s) => out[i] = s,
                Some(_) => {}
            }
        }
    }
    Ok(out)
}

fn no_parent(s: &RouteStatus) -> bool {
    s.condition("Accepted")
        .is_some_and(|c| c.reason == "NoMatchingParent")
}

/// A table as `kubectl get` prints one, each `False` condition's message on the lines below its row.
pub fn render_table(statuses: &[RouteStatus]) -> String {
    if statuses.is_empty() {
        return "No routes found.\n".into();
    }
    let cell = |s: &RouteStatus, kind: &str| {
        s.condition(kind)
            .map_or("-".into(), |c| format!("{} ({})", c.status, c.reason))
    };
    let rows: Vec<[String; 4]> = statuses
        .iter()
        .map(|s| {
            [
                s.route.clone(),
                s.parent.clone(),
                cell(s, "Accepted"),
                cell(s, "ResolvedRefs"),
            ]
        })
        .collect();
    let header = ["ROUTE", "PARENT", "ACCEPTED", "RESOLVEDREFS"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |r: &[String; 4]| {
        let mut l = String::new();
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            if i == 3 {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}   "));
            }
        }
        l.push('\n');
        l
    };
    let mut out = line(&header);
    for (s, r) in statuses.iter().zip(&rows) {
        out.push_str(&line(r));
        for c in s.conditions.iter().filter(|c| c.status == "False") {
            out.push_str(&format!("    {}: {}\n", c.kind, c.message));
        }
    }
    out
}

/// `waypoint check`: loads `dir`, computes the statuses (for `gateway`, or every waypoint), renders them.
/// Returns the text to print and whether every condition is `True`; a manifests error is the `Err`.
pub fn check(
    dir: &Path,
    gateway: Option<GatewayRef>,
    trust_domain: &str,
    json: bool,
) -> Result<(String, bool), ConfigError> {
    const HBONE_PORT: u16 = 15008;
    let mesh = Mesh::load_dir(dir, trust_domain)?;
    let statuses = match gateway {
        Some(gateway) => statuses(
            &mesh,
            &WaypointSpec {
                gateway,
                hbone_port: HBONE_PORT,
            },
        )?,
        None => statuses_all(&mesh, HBONE_PORT)?,
    };
    let ok = !statuses.iter().any(RouteStatus::has_errors);
    let text = if json {
        serde_json::to_string_pretty(&statuses).expect("statuses serialize") + "\n"
    } else {
        render_table(&statuses)
    };
    Ok((text, ok))
}
