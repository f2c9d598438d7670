//! Compiles `proto/**/*.proto` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["waypoint/config/v1/snapshot.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
