//! Endpoint choice (see [`super`]).

/// In-flight requests per endpoint, for LEAST_REQUEST (kept across snapshots).
#[derive(Debug, Default)]
pub struct LoadCounters {}
