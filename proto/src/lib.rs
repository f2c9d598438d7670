//! Protobuf messages of the waypoint, generated at build time from `proto/` by protox + prost-build (no
//! system `protoc`).
//!
//! - [`config::v1`]: the compiled config snapshot, as the admin endpoint dumps it.
//! - [`push::v1`]: the push tier's `Push/Stream` service (Delta-xDS-like updates of Kubernetes documents, with
//!   ACK/NACK), with a tonic client ([`push::v1::push_client`]) and server ([`push::v1::push_server`]).
//! - [`envoy::service::auth::v3`]: Envoy's external authorization API (`Authorization/Check`), with a tonic
//!   client ([`envoy::service::auth::v3::authorization_client`]) and server
//!   ([`envoy::service::auth::v3::authorization_server`]), and the messages it needs from
//!   [`envoy::config::core::v3`], `envoy::r#type::v3` and [`google::rpc`]. Same packages, names and field
//!   numbers as Envoy's protos, so any ext_authz server speaks to it unchanged; fields the waypoint neither sends
//!   nor reads are left out (a decoder skips them).
//!
//! The gRPC code is generated without a transport: callers enable tonic's `channel` (client) or `server`
//! feature themselves.

pub use prost_types;

/// `waypoint.config.*`
pub mod config {
    /// `waypoint.config.v1`
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/waypoint.config.v1.rs"));
    }
}

/// `waypoint.push.*`
pub mod push {
    /// `waypoint.push.v1`: the control plane's push stream.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/waypoint.push.v1.rs"));
    }
}

/// `envoy.*`: the subset of Envoy's API the ext_authz client needs.
pub mod envoy {
    /// `envoy.config.*`
    pub mod config {
        /// `envoy.config.core.*`
        pub mod core {
            /// `envoy.config.core.v3`: addresses and header values.
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }
    /// `envoy.service.*`
    pub mod service {
        /// `envoy.service.auth.*`
        pub mod auth {
            /// `envoy.service.auth.v3`: `Authorization/Check`.
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.auth.v3.rs"));
            }
        }
    }
    /// `envoy.type.*`
    pub mod r#type {
        /// `envoy.type.v3`: HTTP status.
        pub mod v3 {
            include!(concat!(env!("OUT_DIR"), "/envoy.r#type.v3.rs"));
        }
    }
}

/// `google.*`
pub mod google {
    /// `google.rpc`: the gRPC status message.
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

#[cfg(test)]
mod tests;
