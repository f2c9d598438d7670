//! Manifests shared by the unit tests of the planner and the inbound checks.

use std::path::PathBuf;
use std::sync::Arc;

use mesh::config::Mesh;

use crate::view::{NodeSpec, NodeView};

/// `demo` is ambient, `legacy` is not.
/// - demo/client 10.0.0.2 (node-a, sa client, app=client version=v1)
/// - demo/app-1 10.0.1.3 (node-b, sa app, app=echo, port `http` = 8080)
/// - demo/wp-pod 10.0.9.9 (sa waypoint: the waypoint's own pod)
/// - legacy/db 10.0.2.4 (node-b, not ambient, port 5432)
/// - Services: demo/echo 10.96.0.10:80 -> http, waypoint demo/waypoint (10.0.9.9:15008);
///   demo/plain 10.96.0.11:80 -> 8080 (no waypoint); legacy/db 10.96.0.12:5432; demo/lost 10.96.0.13:80
///   (waypoint demo/noaddr, which has no address); demo/empty 10.96.0.14:80 (no endpoints).
pub const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, labels: {app: client, version: v1}}
spec:
  nodeName: node-a
  serviceAccountName: client
  containers: [{name: c, image: client}]
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: app-1, namespace: demo, labels: {app: echo}}
spec:
  nodeName: node-b
  serviceAccountName: app
  containers: [{name: c, image: echo, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 10.0.1.3}
---
apiVersion: v1
kind: Pod
metadata: {name: wp-pod, namespace: demo, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec:
  nodeName: node-a
  serviceAccountName: waypoint
  containers: [{name: c, image: waypoint}]
status: {podIP: 10.0.9.9}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: legacy, labels: {app: db}}
spec:
  nodeName: node-b
  serviceAccountName: db
  containers: [{name: c, image: db, ports: [{containerPort: 5432}]}]
status: {podIP: 10.0.2.4}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo, labels: {istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: 10.96.0.10
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: demo}
spec:
  clusterIP: 10.96.0.11
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: legacy}
spec:
  clusterIP: 10.96.0.12
  selector: {app: db}
  ports: [{port: 5432, targetPort: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: lost, namespace: demo, labels: {istio.io/use-waypoint: noaddr}}
spec:
  clusterIP: 10.96.0.13
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: demo}
spec:
  clusterIP: 10.96.0.14
  selector: {app: nothing}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
status:
  addresses: [{type: IPAddress, value: 10.0.9.9}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: noaddr, namespace: demo}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"#;

pub fn mesh() -> Arc<Mesh> {
    let docs = [(PathBuf::from("test.yaml"), MANIFESTS.to_string())];
    Arc::new(Mesh::from_documents(&docs, "cluster.local").expect("test manifests parse"))
}

/// The view of `node`.
pub fn view(node: &str) -> NodeView {
    let spec = NodeSpec {
        trust_domain: "cluster.local".into(),
        node: Some(node.into()),
        workloads: vec![],
        default_workload: None,
        hbone_port: 15008,
    };
    NodeView::compile(mesh(), &spec)
}
