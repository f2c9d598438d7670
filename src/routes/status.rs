//! Route status as a Gateway API controller would write it: per route and parent, `Accepted` and
//! `ResolvedRefs` with their reasons (`Accepted`, `NoMatchingParent`, `NotAllowedByListeners`, `ResolvedRefs`,
//! `BackendNotFound`, `RefNotPermitted`, `InvalidKind`, `UnsupportedValue`).

/// One condition.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Condition {
    /// `Accepted` or `ResolvedRefs`.
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
