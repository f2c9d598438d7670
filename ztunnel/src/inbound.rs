//! Inbound HBONE: one `mesh::hbone::serve` per local workload on `workload_ip:hbone_port`, presenting that
//! workload's certificate; each CONNECT goes through [`InboundHandler`].
//!
//! Stages per CONNECT: **observe** (count the caller's SPIFFE identity) → **check** ([`check_inbound`], pure:
//! the `:authority` must be a local workload, and its IP the address the connection arrived on unless the
//! caller is the waypoint of a service that workload backs; failure → `400`) → **authorize** (the destination
//! workload's L4 AuthorizationPolicies, [`crate::policy`]; denied → `401`, counted and logged with the deciding
//! policy) → **connect** to the application (`authority` over plain TCP; failure → `503`) → **accept** (`200`)
//! → **splice**. One config snapshot is loaded per CONNECT and serves every stage.

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use mesh::config::Live;
use mesh::hbone::{ConnectHandler, InboundConnect, Respond};

use crate::drain::Drain;
use crate::outbound::{splice, tcp_connect, OutboundError};
use crate::policy::Denial;
use crate::stats::Counters;
use crate::view::NodeView;

/// Why an inbound CONNECT is refused; [`InboundError::status`] is the one place it becomes an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("authority {0} is not a workload on this node")]
    NotLocal(SocketAddr),
    #[error(
        "authority {authority} does not match the address the connection arrived on ({arrived})"
    )]
    WrongDestination {
        authority: SocketAddr,
        arrived: SocketAddr,
    },
    #[error(transparent)]
    Denied(Denial),
    #[error("application unreachable: {0}")]
    AppUnreachable(#[source] OutboundError),
}

impl InboundError {
    pub fn status(&self) -> StatusCode {
        match self {
            InboundError::NotLocal(_) | InboundError::WrongDestination { .. } => {
                StatusCode::BAD_REQUEST
            }
            // What Istio's ztunnel answers a connection its AuthorizationPolicies deny.
            InboundError::Denied(_) => StatusCode::UNAUTHORIZED,
            InboundError::AppUnreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Decides whether `req` may proceed: [`check_inbound`], then the destination workload's policies (the
/// source is the verified peer identity and the outer connection's TCP peer). Returns the application address.
pub fn admit(view: &NodeView, req: &InboundConnect) -> Result<SocketAddr, InboundError> {
    let app = check_inbound(view, req)?;
    view.authz()
        .authorize(&req.peer_identity, req.peer_addr.ip(), app)
        .map_err(InboundError::Denied)?;
    Ok(app)
}

/// Checks the destination of `req`; returns the application address to connect to.
pub fn check_inbound(view: &NodeView, req: &InboundConnect) -> Result<SocketAddr, InboundError> {
    let authority = req.authority;
    if view.local_workload(authority.ip()).is_none() {
        return Err(InboundError::NotLocal(authority));
    }
    let arrived_here = authority.ip() == req.local_addr.ip();
    if !arrived_here && !view.is_waypoint_of(authority.ip(), &req.peer_identity) {
        return Err(InboundError::WrongDestination {
            authority,
            arrived: req.local_addr,
        });
    }
    Ok(authority)
}

/// The [`ConnectHandler`] shared by every inbound listener of the node.
pub struct InboundHandler {
    pub(crate) live: Arc<Live<NodeView>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) drain: Drain,
}

#[async_trait::async_trait]
impl ConnectHandler for InboundHandler {
    async fn handle(self: Arc<Self>, req: InboundConnect, respond: Respond) {
        self.counters.inbound_peer(req.peer_identity.to_string());
        let view = self.live.load();
        let app = match admit(&view, &req) {
            Ok(app) => app,
            Err(e) => return self.refuse(&req, respond, e),
        };
        let upstream = match tcp_connect(app).await {
            Ok(s) => s,
            Err(e) => return self.refuse(&req, respond, InboundError::AppUnreachable(e)),
        };
        let stream = match respond.accept() {
            Ok(s) => s,
            Err(e) => return tracing::debug!(peer = %req.peer_identity, "inbound accept: {e}"),
        };
        self.counters.inbound_accepted();
        tracing::debug!(peer = %req.peer_identity, %app, "inbound connected");
        self.drain.run(splice(stream, upstream)).await;
    }
}

impl InboundHandler {
    fn refuse(&self, req: &InboundConnect, respond: Respond, e: InboundError) {
        let status = e.status();
        tracing::info!(peer = %req.peer_identity, from = %req.peer_addr, to = %req.authority, %status, "inbound refused: {e}");
        self.counters.inbound_refused(status.as_u16());
        if let InboundError::Denied(d) = &e {
            self.counters.inbound_denied(d.label());
        }
        respond.refuse(status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;
    use http::HeaderMap;
    use mesh::identity::Identity;

    fn req(authority: &str, arrived: &str, peer: &str) -> InboundConnect {
        InboundConnect {
            authority: authority.parse().unwrap(),
            peer_identity: Identity::new("cluster.local", "demo", peer),
            peer_addr: "10.0.0.2:40000".parse().unwrap(),
            local_addr: arrived.parse().unwrap(),
            headers: HeaderMap::new(),
        }
    }

    #[test]
    fn checks_table() {
        // node-b holds demo/app-1 (10.0.1.3, behind waypoint demo/waypoint via Service echo) and legacy/db.
        let view = testdata::view("node-b");
        let cases = [
            (
                "to the pod it arrived on",
                req("10.0.1.3:8080", "10.0.1.3:15008", "client"),
                None,
            ),
            (
                "not a local workload",
                req("10.0.0.2:80", "10.0.1.3:15008", "client"),
                Some(400),
            ),
            (
                "unknown address",
                req("10.9.9.9:80", "10.0.1.3:15008", "client"),
                Some(400),
            ),
            (
                "other local pod, plain caller",
                req("10.0.1.3:8080", "10.0.2.4:15008", "client"),
                Some(400),
            ),
            (
                "other local pod, the pod's waypoint",
                req("10.0.1.3:8080", "10.0.2.4:15008", "waypoint"),
                None,
            ),
            (
                "waypoint of a service the pod does not back",
                req("10.0.2.4:5432", "10.0.1.3:15008", "waypoint"),
                Some(400),
            ),
        ];
        for (name, r, want) in cases {
            let got = check_inbound(&view, &r).map_err(|e| e.status().as_u16());
            match want {
                None => assert_eq!(got.ok(), Some(r.authority), "{name}"),
                Some(code) => assert_eq!(got.err(), Some(code), "{name}"),
            }
        }
    }
}
