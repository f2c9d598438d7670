//! Moving a manifests text onto a test's own addresses and ports, and reading what the testbed must start.
//!
//! [`Rewrite`] maps every `127.0.0.x` string to `127.a.b.x` (the testbed's random subnet), every container port
//! to a port the kernel chose free, and the waypoints' HBONE listener port (and so every node's) to another
//! free one. Container ports are rewritten consistently wherever they are named: `containerPort` of Pods,
//! numeric `targetPort` of Services (a Service port without `targetPort` whose number is a container port gets
//! an explicit, rewritten, one), and `ports[].port` of EndpointSlices. Service ports (dialled on VIPs, which
//! nothing binds) keep their numbers, so tests and `Location` headers read as the manifests do.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};

use anyhow::Context as _;
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

/// The prefix every manifests address is written with.
pub const WRITTEN_NET: &str = "127.0.0.";

/// The label that marks a Gateway's own pods (waypoint pods): no ztunnel speaks for them, no echo runs there.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// The Pod annotation that makes a pod's echo close idle keep-alive connections: `"5-30"` (a random idle time
/// between 5 and 30 ms, drawn per idle period) or `"20"`. See [`super::echo::IdleClose`].
pub const IDLE_CLOSE_ANNOTATION: &str = "echo.waypoint.dev/idle-close-ms";

/// How one testbed rewrites manifests (and hosts dialled by its clients).
#[derive(Clone, Debug)]
pub struct Rewrite {
    pub net: [u8; 3],
    /// The HBONE port of every node and waypoint.
    pub hbone_port: u16,
    /// Container port as written → port bound.
    pub ports: BTreeMap<u16, u16>,
}

/// A Pod as the testbed needs it (from the rewritten manifests).
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    /// Container ports as written.
    pub ports: Vec<u16>,
    pub app: Option<String>,
    /// A waypoint's own pod.
    pub gateway_pod: bool,
    /// [`IDLE_CLOSE_ANNOTATION`], as written (checked when the testbed starts).
    pub idle_close: Option<String>,
}

impl Rewrite {
    /// A rewrite onto `net` with free ports for the HBONE listener and each container port found in `text`.
    pub fn choose(net: [u8; 3], text: &str) -> anyhow::Result<Rewrite> {
        let docs = documents(text)?;
        let mut written = BTreeSet::new();
        for d in &docs {
            for p in pods(d) {
                written.extend(p.ports);
            }
        }
        // Hold every probe listener until all are chosen, so the ports are distinct.
        let probe = SocketAddr::new(ip(net, 1), 0);
        let mut held = vec![];
        let mut bind = || -> anyhow::Result<u16> {
            let l = TcpListener::bind(probe).with_context(|| format!("probing {probe}"))?;
            let port = l.local_addr()?.port();
            held.push(l);
            Ok(port)
        };
        let hbone_port = bind()?;
        let mut ports = BTreeMap::new();
        for p in written {
            ports.insert(p, bind()?);
        }
        Ok(Rewrite {
            net,
            hbone_port,
            ports,
        })
    }

    /// `text` on this testbed's addresses and ports (comments are not kept).
    pub fn manifests(&self, text: &str) -> anyhow::Result<String> {
        let mut out = String::new();
        for mut doc in documents(text)? {
            self.value(&mut doc);
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(&doc)?);
        }
        Ok(out)
    }

    /// A host as written (`127.0.0.x` or a name) → as dialled in this testbed.
    pub fn host(&self, host: &str) -> String {
        match host.strip_prefix(WRITTEN_NET) {
            Some(last) => {
                let [a, b, c] = self.net;
                format!("{a}.{b}.{c}.{last}")
            }
            None => host.to_string(),
        }
    }

    fn port(&self, p: u16) -> u16 {
        self.ports.get(&p).copied().unwrap_or(p)
    }

    fn value(&self, v: &mut Value) {
        self.addresses(v);
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "List" => {
                if let Some(Value::Sequence(items)) = v.get_mut("items") {
                    items.iter_mut().for_each(|i| self.value(i));
                }
            }
            "Pod" => {
                for c in seq_mut(v, &["spec", "containers"]) {
                    for p in seq_mut(c, &["ports"]) {
                        self.number(p, "containerPort");
                    }
                }
            }
            "Service" => {
                for p in seq_mut(v, &["spec", "ports"]) {
                    self.service_port(p);
                }
            }
            "EndpointSlice" => {
                for p in seq_mut(v, &["ports"]) {
                    self.number(p, "port");
                }
            }
            "Gateway" => {
                for l in seq_mut(v, &["spec", "listeners"]) {
                    let hbone = l.get("protocol").and_then(Value::as_str) == Some("HBONE");
                    if hbone || l.get("port").and_then(Value::as_u64) == Some(15008) {
                        if let Value::Mapping(m) = l {
                            m.insert("port".into(), self.hbone_port.into());
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// `127.0.0.x` → `127.a.b.x` in every string of the object.
    fn addresses(&self, v: &mut Value) {
        match v {
            Value::String(s) if s.starts_with(WRITTEN_NET) => *s = self.host(s),
            Value::Sequence(items) => items.iter_mut().for_each(|i| self.addresses(i)),
            Value::Mapping(m) => m.values_mut().for_each(|i| self.addresses(i)),
            _ => {}
        }
    }

    fn number(&self, v: &mut Value, key: &str) {
        let Value::Mapping(m) = v else { return };
        if let Some(p) = m.get(key).and_then(as_port) {
            m.insert(key.into(), self.port(p).into());
        }
    }

    fn service_port(&self, v: &mut Value) {
        let Value::Mapping(m) = v else { return };
        match m.get("targetPort") {
            Some(t) => {
                if let Some(p) = as_port(t) {
                    m.insert("targetPort".into(), self.port(p).into());
                }
            }
            None => {
                if let Some(p) = m.get("port").and_then(as_port) {
                    if self.ports.contains_key(&p) {
                        m.insert("targetPort".into(), self.port(p).into());
                    }
                }
            }
        }
    }
}

/// `net.last`.
pub fn ip(net: [u8; 3], last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(net[0], net[1], net[2], last))
}

/// A port number, or a numeric string (`targetPort: "8080"`).
fn as_port(v: &Value) -> Option<u16> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The non-empty YAML documents of `text`.
pub fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = vec![];
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).with_context(|| format!("manifests document {}", i + 1))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// The sequence at `path` in `v` (empty when absent).
fn seq_mut<'v>(v: &'v mut Value, path: &[&str]) -> std::slice::IterMut<'v, Value> {
    let mut cur = Some(v);
    for key in path {
        cur = cur.and_then(|c| c.get_mut(*key));
    }
    match cur {
        Some(Value::Sequence(s)) => s.iter_mut(),
        _ => [].iter_mut(),
    }
}

/// The Pods of one document (a `List` included).
pub fn pods(doc: &Value) -> Vec<PodSpec> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    match kind {
        "List" => doc
            .get("items")
            .and_then(Value::as_sequence)
            .map(|items| items.iter().flat_map(pods).collect())
            .unwrap_or_default(),
        "Pod" => pod(doc).into_iter().collect(),
        _ => vec![],
    }
}

fn pod(doc: &Value) -> Option<PodSpec> {
    let meta = doc.get("metadata")?;
    let text = |m: &Value, k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
    let labels = meta.get("labels").and_then(Value::as_mapping);
    let label = |k: &str| {
        labels
            .and_then(|l: &Mapping| l.get(k))
            .and_then(Value::as_str)
    };
    let mut ports = vec![];
    let containers = doc
        .get("spec")
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_sequence);
    for c in containers.into_iter().flatten() {
        let list = c.get("ports").and_then(Value::as_sequence);
        for p in list.into_iter().flatten() {
            if let Some(port) = p.get("containerPort").and_then(as_port) {
                ports.push(port);
            }
        }
    }
    Some(PodSpec {
        namespace: text(meta, "namespace").unwrap_or_else(|| "default".into()),
        name: text(meta, "name")?,
        ports,
        app: label("app").map(str::to_string),
        gateway_pod: label(GATEWAY_NAME_LABEL).is_some(),
        idle_close: meta
            .get("annotations")
            .and_then(|a| a.get(IDLE_CLOSE_ANNOTATION))
            .and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "
apiVersion: v1
kind: Service
metadata: {name: a, namespace: ns}
spec:
  clusterIP: 127.0.0.100
  ports:
  - {port: 80, targetPort: 8080}
  - {port: 8080}
  - {port: 81, targetPort: http}
---
apiVersion: v1
kind: Pod
metadata: {name: a-0, namespace: ns, labels: {app: a}}
spec:
  containers: [{name: c, ports: [{containerPort: 8080, name: http}]}]
status: {podIP: 127.0.0.11}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
status:
  addresses: [{type: IPAddress, value: 127.0.0.20}]
";

    #[test]
    fn addresses_container_ports_and_hbone_are_rewritten_consistently() {
        let r = Rewrite {
            net: [127, 9, 8],
            hbone_port: 40001,
            ports: [(8080, 40002)].into(),
        };
        let out = r.manifests(TEXT).unwrap();
        let docs = documents(&out).unwrap();
        let svc_ports = docs[0]["spec"]["ports"].as_sequence().unwrap();
        assert_eq!(docs[0]["spec"]["clusterIP"].as_str(), Some("127.9.8.100"));
        assert_eq!(svc_ports[0]["targetPort"].as_u64(), Some(40002));
        assert_eq!(
            svc_ports[0]["port"].as_u64(),
            Some(80),
            "service ports stay"
        );
        assert_eq!(svc_ports[1]["targetPort"].as_u64(), Some(40002));
        assert_eq!(svc_ports[2]["targetPort"].as_str(), Some("http"));
        let c = &docs[1]["spec"]["containers"][0]["ports"][0];
        assert_eq!(c["containerPort"].as_u64(), Some(40002));
        assert_eq!(docs[1]["status"]["podIP"].as_str(), Some("127.9.8.11"));
        assert_eq!(
            docs[2]["spec"]["listeners"][0]["port"].as_u64(),
            Some(40001)
        );
        assert_eq!(r.host("127.0.0.100"), "127.9.8.100");
        assert_eq!(r.host("a.ns.svc.cluster.local"), "a.ns.svc.cluster.local");
        let p = pods(&documents(TEXT).unwrap()[1]);
        assert_eq!(p[0].ports, [8080]);
        assert_eq!(p[0].app.as_deref(), Some("a"));
        assert_eq!(p[0].idle_close, None);
        let annotated = "kind: Pod
metadata: {name: b, annotations: {echo.waypoint.dev/idle-close-ms: \"5-30\"}}
spec: {containers: [{name: c}]}
";
        let p = pods(&documents(annotated).unwrap()[0]);
        assert_eq!(p[0].idle_close.as_deref(), Some("5-30"));
    }
}
