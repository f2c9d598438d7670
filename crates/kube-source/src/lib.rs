//! `kube-source`: the mesh's config from the Kubernetes API server, and status written back to it.
//!
//! - [`watch`]: [`watch_api`] watches the kinds of [`kinds::Kind`] (kube-rs watchers: resume from the last
//!   `resourceVersion`, bookmarks, relist on `410 Gone`), renders them into the documents
//!   [`mesh::config::Mesh::from_documents`] reads and compiles them into a [`mesh::config::Live`] — the same
//!   contract as the folder source, [`mesh::config::watch_dir`]: one snapshot type, two sources.
//! - [`status`]: [`StatusWriter`] writes desired statuses (`/status` merge patches, only when changed).
//! - [`lease`]: [`elect`] runs a `coordination.k8s.io/v1` Lease election so one replica writes status.
//! - `testing` (feature `testing`): a fake API server over real HTTP for tests, this crate's and its users'.
//!
//! RBAC the service account needs: `list`, `watch` on the watched kinds (`namespaces`, `services`, `pods`,
//! `endpointslices.discovery.k8s.io`, `gateways`/`httproutes`/`grpcroutes`/`referencegrants` of
//! `gateway.networking.k8s.io`, `destinationrules.networking.istio.io`, `authorizationpolicies` and
//! `requestauthentications` of `security.istio.io`); for status write-back `get`, `patch` on the `…/status`
//! subresources written; for the election `get`, `create`, `update` on `leases.coordination.k8s.io`.
//! Everything here is tested against the fake server only: no API server or cluster runs on the build machines.

pub mod client;
pub mod kinds;
pub mod lease;
pub mod status;
mod store;
pub mod watch;

#[cfg(feature = "testing")]
pub mod testing;

pub use client::{kube_client, pod_identity, ClientError};
pub use kinds::Kind;
pub use lease::{elect, LeaderGuard, Leadership, LeaseConfig};
pub use status::{DesiredStatus, ObjectRef, StatusWriter, SyncReport};
pub use store::document_path;
pub use watch::{cached_parse, watch_api, watch_api_documents, ApiWatchGuard, WatchOptions};
