//! Destination Services → what their backends carry besides routing: the `DestinationRule` policy of the Service
//! port ([`TrafficPolicy::of_service`]) and the handles into the long-lived [`ResilienceState`] (the Service's
//! breaker and health, each endpoint's health and load counter), plus the consistent-hash ring.
//!
//! Resolved once per Service port and compile (a cache in [`Cx`](super::Cx)): every backend and mirror of that
//! port shares the endpoints' handles and one ring. Only backends of routes attached to this waypoint are
//! resolved, so the state holds only this waypoint's destinations.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use mesh::config::{Mesh, Service};

use crate::resilience::balance::Ring;
use crate::resilience::breaker::ServiceBreaker;
use crate::resilience::outlier::ServiceHealth;
use crate::resilience::policy::{LoadBalancer, TrafficPolicy};
use crate::resilience::ResilienceState;
use crate::snapshot::{upstreams, Backend, Upstream, WaypointSpec};

/// One destination Service port, resolved.
#[derive(Debug)]
pub(crate) struct Destination {
    pub policy: Arc<TrafficPolicy>,
    pub breaker: Arc<ServiceBreaker>,
    pub health: Arc<ServiceHealth>,
    pub endpoints: Vec<Upstream>,
    /// Built when the policy hashes.
    pub ring: Option<Arc<Ring>>,
}

impl Destination {
    /// Gives `b` this destination's endpoints, policy and handles.
    pub fn apply(&self, b: &mut Backend) {
        b.endpoints = self.endpoints.clone();
        b.policy = self.policy.clone();
        b.breaker = self.breaker.clone();
        b.health = self.health.clone();
        if let Some(ring) = &self.ring {
            b.set_ring(ring.clone());
        }
    }
}

/// The destinations resolved so far in one compile.
pub(crate) struct Destinations<'a> {
    state: &'a ResilienceState,
    cache: RefCell<HashMap<(String, String, u16), Rc<Destination>>>,
}

impl<'a> Destinations<'a> {
    pub fn new(state: &'a ResilienceState) -> Destinations<'a> {
        Destinations {
            state,
            cache: RefCell::default(),
        }
    }

    /// Service `svc`'s port `port` (a Service port, which it has).
    pub fn get(
        &self,
        mesh: &Mesh,
        spec: &WaypointSpec,
        svc: &Service,
        port: u16,
    ) -> Rc<Destination> {
        let key = (svc.namespace.clone(), svc.name.clone(), port);
        if let Some(d) = self.cache.borrow().get(&key) {
            return d.clone();
        }
        let d = Rc::new(self.resolve(mesh, spec, svc, port));
        self.cache.borrow_mut().insert(key, d.clone());
        d
    }

    fn resolve(&self, mesh: &Mesh, spec: &WaypointSpec, svc: &Service, port: u16) -> Destination {
        let name = format!("{}/{}", svc.namespace, svc.name);
        let policy = TrafficPolicy::of_service(mesh, svc, port);
        let health = self.state.outliers.for_service(&name);
        let endpoints: Vec<Upstream> = upstreams(mesh, spec, svc, port)
            .into_iter()
            .map(|u| Upstream {
                health: health.endpoint(u.addr),
                load: self.state.load.endpoint(u.addr),
                ..u
            })
            .collect();
        let ring = matches!(policy.load_balancer, LoadBalancer::ConsistentHash(_))
            .then(|| Arc::new(Ring::new(endpoints.iter().map(|u| u.addr))));
        Destination {
            policy: Arc::new(policy),
            breaker: self.state.breakers.for_service(&name),
            health,
            endpoints,
            ring,
        }
    }
}
