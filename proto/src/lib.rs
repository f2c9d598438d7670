//! Protobuf messages of the waypoint, generated at build time from `proto/` by protox + prost-build (no
//! system `protoc`).
//!
//! - [`config::v1`]: the compiled config snapshot, as the admin endpoint dumps it.

/// `waypoint.config.*`
pub mod config {
    /// `waypoint.config.v1`
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/waypoint.config.v1.rs"));
    }
}

#[cfg(test)]
mod tests {
    use super::config::v1::*;
    use prost::Message;

    #[test]
    fn snapshot_round_trips() {
        let snap = Snapshot {
            generation: 7,
            gateway: "default/waypoint".into(),
            services: vec![ServiceRoutes {
                name: "default/reviews".into(),
                address: "127.0.0.100:9080".into(),
                matches: vec![RouteMatch {
                    path: Some(route_match::Path::Prefix("/".into())),
                    rule: 0,
                }],
                ..Default::default()
            }],
        };
        let bytes = snap.encode_to_vec();
        assert_eq!(Snapshot::decode(bytes.as_slice()).unwrap(), snap);
    }
}
