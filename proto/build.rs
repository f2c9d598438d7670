//! Compiles `proto/**/*.proto` with protox (pure Rust), so no system `protoc` is needed. Messages come from
//! prost-build; gRPC services (the ext_authz `Authorization` service) also get a tonic client and server, without
//! a transport (`build_transport(false)`): the crate that calls or serves picks tonic's transport features.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "waypoint/config/v1/snapshot.proto",
        "envoy/service/auth/v3/external_auth.proto",
        "waypoint/push/v1/push.proto",
    ];
    let inputs = [
        "waypoint/config/v1/snapshot.proto",
        "envoy/service/auth/v3/external_auth.proto",
        "envoy/service/auth/v3/attribute_context.proto",
        "envoy/config/core/v3/address.proto",
        "envoy/config/core/v3/base.proto",
        "envoy/type/v3/http_status.proto",
        "google/rpc/status.proto",
        "waypoint/push/v1/push.proto",
    ];
    for p in inputs {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        // push tier: payloads shared across subscribers without copying
        .bytes(".waypoint.push.v1.Resource.payload")
        .compile_fds(fds)?;
    Ok(())
}
