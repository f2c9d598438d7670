//! Shared by the controller's tests: a fake API server, a controller on it, Gateway YAML, and the writes the
//! server answered.
#![allow(dead_code)]

use std::time::Duration;

use kube_source::testing::{FakeApiServer, Recorded};
use kube_source::Leadership;
use serde_json::Value;
use waypoint_controller::{Controller, ControllerConfig, Options};

/// How long any wait in these tests may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn options() -> Options {
    Options {
        image: "registry.example/waypoint:0.1.0".into(),
        trust_domain: "cluster.local".into(),
        control_plane: None,
        control_plane_identity: None,
    }
}

/// A controller on `server` with `leadership`, no periodic resync (tests call `resync`).
pub fn controller(server: &FakeApiServer, leadership: Leadership) -> Controller {
    let config = ControllerConfig {
        options: options(),
        namespace: None,
        resync: Duration::from_secs(3600),
        leadership,
    };
    Controller::start(server.client().expect("client"), config)
}

/// A Gateway `ns/name` of `class`, with `meta` (YAML flow mapping entries) added to its metadata.
pub fn gateway(ns: &str, name: &str, class: &str, meta: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: {name}, namespace: {ns}{sep}{meta}}}\n\
         spec:\n  gatewayClassName: {class}\n  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]\n",
        sep = if meta.is_empty() { "" } else { ", " }
    )
}

/// Successful and failed writes (create, replace, patch, delete), Leases aside.
pub fn writes(server: &FakeApiServer) -> Vec<Recorded> {
    server
        .requests()
        .into_iter()
        .filter(|r| matches!(r.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE"))
        .filter(|r| !r.path.contains("/leases"))
        .collect()
}

/// `METHOD path` of each write, for assertion messages.
pub fn describe(writes: &[Recorded]) -> Vec<String> {
    writes
        .iter()
        .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
        .collect()
}

/// The condition `ty` of the Gateway's status: `(status, reason, message)`.
pub fn condition(
    server: &FakeApiServer,
    ns: &str,
    name: &str,
    ty: &str,
) -> Option<(String, String, String)> {
    let gw = server.get("Gateway", ns, name)?;
    let c = gw["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)?
        .clone();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

/// Whether all three objects of `ns/name` exist.
pub fn deployed(server: &FakeApiServer, ns: &str, name: &str) -> bool {
    ["Deployment", "Service", "ServiceAccount"]
        .iter()
        .all(|k| server.get(k, ns, name).is_some())
}

/// Gives the Service `ns/name` a clusterIP, as the API server's allocator would.
pub fn allocate(server: &FakeApiServer, ns: &str, name: &str, ip: &str) {
    let mut svc: Value = server.get("Service", ns, name).expect("the Service exists");
    svc["spec"]["clusterIP"] = Value::String(ip.into());
    server
        .apply(&svc.to_string())
        .expect("allocate a clusterIP");
}

/// Waits until the whole of a waypoint is written: its objects and a `Programmed` condition.
pub async fn wait_deployed(server: &FakeApiServer, ns: &str, name: &str) {
    server
        .wait_until(&format!("the waypoint {ns}/{name}"), PATIENCE, |s| {
            deployed(s, ns, name) && condition(s, ns, name, "Programmed").is_some()
        })
        .await
        .unwrap();
}
