//! Fixtures for the push-tier tests: a mesh generated in memory, a control plane on a real loopback socket
//! (optionally on a runtime of its own, so that stopping it closes every connection like a process exit), and
//! waiting helpers with a deadline.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use push::proto as pb;
use push::ControlPlane;

/// How long any wait in these tests may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A generated mesh: `namespaces` namespaces `ns-<i>`, each enrolled to its waypoint Gateway `ns-<i>/wp`, with
/// `services` Services `svc-<j>` (selector `app: svc-<j>`, an HTTPRoute on itself), `pods` Pods per Service on
/// node `node-<k % 10>`, and a mesh-wide AuthorizationPolicy in `istio-system` whose `tag` changes with `rev`.
#[derive(Clone, Debug)]
pub struct GenMesh {
    pub namespaces: usize,
    pub services: usize,
    pub pods: usize,
    pub rev: u32,
    /// Per namespace index: an extra label value on `svc-0` (to change one Service).
    pub touched: Vec<(usize, String)>,
}

impl GenMesh {
    pub fn new(namespaces: usize, services: usize, pods: usize) -> GenMesh {
        GenMesh {
            namespaces,
            services,
            pods,
            rev: 0,
            touched: Vec::new(),
        }
    }
    pub fn total_services(&self) -> usize {
        self.namespaces * self.services
    }
    pub fn documents(&self) -> Vec<(PathBuf, String)> {
        let mut docs = Vec::new();
        let mut root = String::new();
        let _ = write!(
            root,
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: istio-system}}\n---\n\
             apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: deny-evil, namespace: istio-system, labels: {{tag: r{}}}}}\n\
             spec: {{action: DENY, rules: [{{from: [{{source: {{namespaces: [evil]}}}}]}}]}}\n",
            self.rev
        );
        docs.push((PathBuf::from("root.yaml"), root));
        let mut ip: u32 = u32::from(std::net::Ipv4Addr::new(10, 0, 0, 1));
        let mut next_ip = || {
            ip += 1;
            std::net::Ipv4Addr::from(ip)
        };
        for n in 0..self.namespaces {
            let ns = format!("ns-{n}");
            let mut y = String::new();
            let _ = write!(
                y,
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}}}\n---\n\
                 apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: wp, namespace: {ns}}}\n\
                 spec: {{gatewayClassName: istio-waypoint, listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]}}\n\
                 status: {{addresses: [{{type: IPAddress, value: {}}}]}}\n",
                next_ip()
            );
            for s in 0..self.services {
                let extra = self
                    .touched
                    .iter()
                    .filter(|(i, _)| *i == n && s == 0)
                    .map(|(_, v)| format!(", touched: '{v}'"))
                    .collect::<String>();
                let _ = write!(
                    y,
                    "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: {ns}, labels: {{app: svc-{s}{extra}}}}}\n\
                     spec: {{clusterIP: {}, selector: {{app: svc-{s}}}, ports: [{{name: http, port: 80, targetPort: 8080, appProtocol: http}}]}}\n\
                     ---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: svc-{s}, namespace: {ns}}}\n\
                     spec: {{parentRefs: [{{group: '', kind: Service, name: svc-{s}, port: 80}}], rules: [{{backendRefs: [{{name: svc-{s}, port: 80}}]}}]}}\n",
                    next_ip()
                );
                for p in 0..self.pods {
                    let _ = write!(
                        y,
                        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: svc-{s}-{p}, namespace: {ns}, labels: {{app: svc-{s}}}}}\n\
                         spec: {{nodeName: node-{}, serviceAccountName: svc-{s}, containers: [{{name: app, image: app, ports: [{{containerPort: 8080}}]}}]}}\n\
                         status: {{podIP: {}}}\n",
                        p % 10,
                        next_ip()
                    );
                }
            }
            docs.push((PathBuf::from(format!("{ns}.yaml")), y));
        }
        docs
    }
}

pub fn waypoint_sub(node: &str, ns: &str) -> pb::Subscribe {
    pb::Subscribe {
        node_id: node.to_string(),
        kind: pb::SubscriberKind::Waypoint as i32,
        target: format!("{ns}/wp"),
        resource_versions: Default::default(),
    }
}

pub fn ztunnel_sub(node: &str) -> pb::Subscribe {
    pb::Subscribe {
        node_id: node.to_string(),
        kind: pb::SubscriberKind::Ztunnel as i32,
        target: node.to_string(),
        resource_versions: Default::default(),
    }
}

/// Serves `cp` on the test's runtime; returns the endpoint URL.
pub async fn serve(cp: &ControlPlane) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cp = cp.clone();
    tokio::spawn(async move { cp.serve(listener, std::future::pending()).await });
    format!("http://{addr}")
}

/// A control plane on a runtime (and thread) of its own: [`Isolated::stop`] drops the runtime, closing every
/// connection at once, as a process exit would.
pub struct Isolated {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Isolated {
    /// Starts serving on `addr` (port 0: any), with `SO_REUSEADDR` so that a restart may take the same port at
    /// once; returns the handle and the bound address.
    pub fn start(cp: ControlPlane, addr: SocketAddr) -> (Isolated, SocketAddr) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.set_reuseaddr(true).unwrap();
                socket.bind(addr).unwrap();
                let listener = socket.listen(1024).unwrap();
                bound_tx.send(listener.local_addr().unwrap()).unwrap();
                tokio::select! {
                    _ = cp.serve(listener, std::future::pending()) => {}
                    _ = stopped => {}
                }
            });
            rt.shutdown_background();
        });
        let bound = bound_rx
            .recv_timeout(PATIENCE)
            .expect("control plane bound");
        (
            Isolated {
                stop: Some(stop),
                thread: Some(thread),
            },
            bound,
        )
    }
    pub fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = self.thread.take().map(|t| t.join());
    }
}

/// Waits until `pred` holds on a `watch` value, failing the test after [`PATIENCE`].
pub async fn until<T>(
    rx: &mut tokio::sync::watch::Receiver<T>,
    what: &str,
    pred: impl FnMut(&T) -> bool,
) {
    match tokio::time::timeout(PATIENCE, rx.wait_for(pred)).await {
        Ok(Ok(_)) => {}
        _ => panic!("timed out waiting for {what}"),
    }
}
