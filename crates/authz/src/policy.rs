//! Compiled AuthorizationPolicies and their evaluation (CUSTOM → DENY → ALLOW, AUDIT, dry-run) for the
//! waypoint (L7) and the node tier (L4).
