//! `push`: the push tier. A control plane watches the config once (a folder, the API server through
//! `kube-source`, or anything that hands it Kubernetes documents) and streams each proxy only what it needs over
//! gRPC (`waypoint.push.v1.Push/Stream`, in `proto/waypoint/push/v1/push.proto`), as versioned incremental
//! updates acknowledged one at a time — the manner of Delta xDS, with Kubernetes objects as the resources.
//!
//! - [`resources`]: documents split into objects named `Kind/namespace/name`, versioned by a hash of their JSON.
//! - [`select`]: which objects a waypoint (its Gateway's services and what concerns them) and a ztunnel
//!   (addressing: all namespaces, services and pods; node-tier policies) need.
//! - [`server`]: [`ControlPlane`]: publish a document set, serve the stream, ACK/NACK bookkeeping and counters.
//! - [`client`]: [`client::subscribe`] (the raw stream) and [`client::watch_push`], a config source with the
//!   same contract as `mesh::config::watch_dir`: compile-and-swap into a `Live`, NACK (keeping the last good
//!   config) when the compile fails, reconnect with backoff and resume from the versions held.
//! - [`tls`]: mutual TLS on the tier ([`ControlPlane::serve_tls`], [`client::Dial`]) and the identity rules
//!   ([`tls::authorize`]): who may subscribe for what, decided by the verified peer certificate only.
//!
//! A NACK is remembered per node id in the control plane's memory: after a control-plane restart a subscriber
//! that rejected a set may receive it once more (and reject it again).

pub mod client;
pub mod resources;
pub mod select;
pub mod server;
pub mod tls;

pub use client::{watch_push, ClientTls, Dial, DocumentSet, PushGuard, PushStatus, Subscription};
pub use select::Target;
pub use server::{ControlPlane, NodeStats, Stats};
pub use tls::Access;
pub use waypoint_proto::push::v1 as proto;
