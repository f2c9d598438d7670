//! Shared by the waypoint and the ztunnel: everything both tiers of the ambient data path need to agree on.
//!
//! - [`identity`]: SPIFFE identities, workload certificates read from PEM files and re-read on change,
//!   and the rustls configurations HBONE uses (TLS 1.3, ALPN `h2`, mutual authentication by SPIFFE URI SAN).
//! - [`devca`]: a development CA that issues workload certificates, so a newcomer needs nothing else.
//! - [`hbone`]: HTTP/2 CONNECT over mutual TLS, the wire of the mesh: an inbound server, an outbound pool of
//!   multiplexed outer connections, and the byte-stream adapter over one CONNECT stream.
//! - [`config`]: the Kubernetes manifests directory both tiers read, resolved into one [`config::Mesh`] model,
//!   watched and hot-swapped.
//! - [`alloc`]: the proxies' global allocator (mimalloc), installed with [`global_allocator!`].
//! - [`ops`]: readiness, metrics and admin endpoints, `SO_REUSEPORT` listeners, the runtime log filter.

pub mod alloc;
pub mod config;
pub mod devca;
pub mod hbone;
pub mod identity;
pub mod ops;
