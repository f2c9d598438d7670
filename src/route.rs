//! Routing decisions, as pure functions over the compiled [`ServiceRoutes`]: which rule a request matches and
//! which weighted backend it goes to. No I/O, no clock: the random draw is passed in, so tables test them.

use crate::error::ProxyError;
use crate::snapshot::{Backend, ServiceRoutes};

/// The rule index matching `path` (the request path without its query), first match in precedence order.
pub fn match_rule(svc: &ServiceRoutes, path: &str) -> Result<usize, ProxyError> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    svc.matches
        .iter()
        .find(|(m, _)| m.matches(path))
        .map(|(_, rule)| *rule)
        .ok_or(ProxyError::NoRoute)
}

/// The backend index for a draw `r` in `0..total_weight` (weights are cumulative ranges; weight 0 never wins).
/// A rule with no backends, or whose weights are all 0, has no backend: the request is answered 500.
pub fn pick_backend(backends: &[Backend], total_weight: u32, r: u32) -> Result<usize, ProxyError> {
    if total_weight == 0 {
        return Err(ProxyError::NoBackend);
    }
    let mut r = r % total_weight;
    for (i, b) in backends.iter().enumerate() {
        if r < b.weight {
            return Ok(i);
        }
        r -= b.weight;
    }
    Err(ProxyError::NoBackend)
}

/// Routes one request: rule, then backend (a weighted draw), checking that the backend can be used.
pub fn route(svc: &ServiceRoutes, path: &str, draw: u32) -> Result<(usize, usize), ProxyError> {
    let rule_idx = match_rule(svc, path)?;
    let rule = &svc.rules[rule_idx];
    let b = pick_backend(&rule.backends, rule.total_weight, draw)?;
    if let Some(why) = &rule.backends[b].invalid {
        return Err(ProxyError::InvalidBackend(why.clone()));
    }
    Ok((rule_idx, b))
}
