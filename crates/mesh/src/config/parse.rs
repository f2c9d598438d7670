//! Reading manifests: files → YAML documents → a generic look at `apiVersion`/`kind`/`metadata` → the typed
//! object (`k8s-openapi`, `gateway-api`, the hand-written `DestinationRule` types), validated, and reduced to the plain records that `resolve` links up.
//!
//! Every failure is a [`ConfigError`] naming the file, the object (`Kind namespace/name`, or `document N` before
//! the object has a name) and the field path (from `serde_path_to_error` for type errors).
//!
//! Two steps, so that [`super::ParseCache`] can keep the first per document: [`read_chunk`] reads some YAML
//! documents on their own (YAML → typed → reduced [`Record`]s, with every per-object error), and
//! [`Parser::chunk`] merges them in input order, doing what needs every object: duplicate names, duplicate
//! Service VIPs and pod IPs, and the count (and once-per-kind warning) of kinds skipped.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

use super::destination::{self, DestinationRule};
use super::gateway::{GrpcRoute, HttpRoute, ReferenceGrant};
use super::objects::{gateway, namespace_record, pod, service, slice};
use super::security;
use super::{routes, ConfigError, Namespace, Service, Slice, Sourced, Waypoint, Workload};

/// What the manifests say, object by object, before cross-object resolution.
#[derive(Default)]
pub(super) struct Parsed {
    pub namespaces: Vec<Namespace>,
    /// `waypoint` not yet resolved.
    pub services: Vec<Service>,
    /// `ambient` not yet resolved.
    pub workloads: Vec<Workload>,
    pub slices: Vec<Slice>,
    /// Gateways of class `istio-waypoint`.
    pub waypoints: Vec<Waypoint>,
    pub http_routes: Vec<Sourced<HttpRoute>>,
    pub grpc_routes: Vec<Sourced<GrpcRoute>>,
    pub reference_grants: Vec<Sourced<ReferenceGrant>>,
    pub destination_rules: Vec<Sourced<DestinationRule>>,
    pub authorization_policies: Vec<authz::model::Named<authz::model::AuthorizationPolicySpec>>,
    pub request_authentications: Vec<authz::model::Named<authz::model::RequestAuthenticationSpec>>,
    pub skipped: BTreeMap<String, usize>,
}

/// Reads the YAML files of `dir` (see [`super::Mesh::load_dir`]), sorted by file name.
pub(super) fn read_dir(dir: &Path) -> Result<Vec<(PathBuf, String)>, ConfigError> {
    let io_err = |file: &Path, e: std::io::Error| ConfigError {
        file: file.to_path_buf(),
        object: String::new(),
        field: String::new(),
        message: e.to_string(),
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let path = entry.path();
        // `metadata` follows symlinks: a ConfigMap volume's `x.yaml -> ..data/x.yaml` is a file.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => files.push(path),
            Ok(_) => {}
            // A dangling symlink, e.g. mid-swap: the next event reloads.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, e)),
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
            Ok((path, text))
        })
        .collect()
}

/// Parses and validates every document of every file.
pub(super) fn parse(docs: &[(PathBuf, String)]) -> Result<Parsed, ConfigError> {
    let mut p = Parser::default();
    for (file, text) in docs {
        p.chunk(file, 0, &read_chunk(file, text))?;
    }
    Ok(p.out)
}

/// What some consecutive YAML documents of one file say, read without looking at any other document.
#[derive(Debug, Default)]
pub(super) struct Chunk {
    /// Documents read (null ones included): the next chunk of the file numbers its documents after these.
    pub docs: usize,
    /// Per object, in order, with its document's number within the chunk (from 1). Ends at the first error.
    outcomes: Vec<(usize, Outcome)>,
    /// Reading stopped at an error (the last outcome).
    pub failed: bool,
    /// That error is YAML's own (syntax, anchors, merge keys): it may give line numbers, which are the chunk's.
    pub yaml_error: bool,
}

/// One object, read on its own.
#[derive(Debug)]
enum Outcome {
    /// A kind not read, counted in `skipped` under `key`.
    Skipped {
        key: String,
        kind: String,
        api_version: String,
    },
    /// An error before the object has a name: its `object` is `document N`, N within the chunk.
    Document(ConfigError),
    Object(Box<Object>),
}

/// A named object: what the checks across objects need, and what it says (or what is wrong with it).
#[derive(Debug)]
struct Object {
    key: (Kind, String, String),
    /// `kind` as written, for the duplicate error.
    kind: String,
    /// `Kind namespace/name`.
    object: String,
    /// `items[i].` inside a `List`.
    prefix: String,
    /// The Service's `spec.clusterIP`, when it was read before any error.
    vip: Option<IpAddr>,
    /// `None` when the object adds nothing (e.g. a Gateway of another class).
    result: Result<Option<Record>, ConfigError>,
}

/// The reduced record of one object, as [`Parsed`] keeps it.
#[derive(Clone, Debug)]
enum Record {
    Namespace(Namespace),
    Service(Service),
    Workload(Workload),
    Slice(Slice),
    Waypoint(Waypoint),
    HttpRoute(Sourced<HttpRoute>),
    GrpcRoute(Sourced<GrpcRoute>),
    ReferenceGrant(Sourced<ReferenceGrant>),
    DestinationRule(Sourced<DestinationRule>),
    AuthorizationPolicy(authz::model::Named<authz::model::AuthorizationPolicySpec>),
    RequestAuthentication(authz::model::Named<authz::model::RequestAuthenticationSpec>),
}

/// Reads every document of `text` (a whole file, or the part of one that [`super::parse_cache`] split off).
pub(super) fn read_chunk(file: &Path, text: &str) -> Chunk {
    let mut r = Reader {
        file,
        n: 0,
        out: Chunk::default(),
    };
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        super::background::checkpoint();
        let n = i + 1;
        r.n = n;
        r.out.docs = n;
        let ctx = Ctx {
            file,
            object: format!("document {n}"),
            prefix: "",
        };
        let value = Value::deserialize(doc).and_then(|mut value| {
            if !value.is_null() {
                value.apply_merge()?;
            }
            Ok(value)
        });
        let ok = match value {
            Ok(value) if value.is_null() => true,
            Ok(value) => r.object("", value),
            Err(e) => {
                r.out.yaml_error = true;
                r.fail(ctx.err("", e.to_string()))
            }
        };
        if !ok {
            r.out.failed = true;
            break;
        }
    }
    r.out
}

/// The kinds read, by API group and kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Namespace,
    Service,
    Pod,
    EndpointSlice,
    Gateway,
    HttpRoute,
    GrpcRoute,
    ReferenceGrant,
    DestinationRule,
    AuthorizationPolicy,
    RequestAuthentication,
}

impl Kind {
    /// `None` for a kind not read, or a known kind in an API version not read.
    fn of(api_version: &str, kind: &str) -> Option<Kind> {
        const GATEWAY_V1: &str = "gateway.networking.k8s.io/v1";
        const GATEWAY_V1BETA1: &str = "gateway.networking.k8s.io/v1beta1";
        const SECURITY_V1: &str = "security.istio.io/v1";
        const SECURITY_V1BETA1: &str = "security.istio.io/v1beta1";
        const ISTIO: [&str; 3] = [
            "networking.istio.io/v1",
            "networking.istio.io/v1beta1",
            "networking.istio.io/v1alpha3",
        ];
        Some(match (api_version, kind) {
            ("v1", "Namespace") => Kind::Namespace,
            ("v1", "Service") => Kind::Service,
            ("v1", "Pod") => Kind::Pod,
            ("discovery.k8s.io/v1", "EndpointSlice") => Kind::EndpointSlice,
            (GATEWAY_V1 | GATEWAY_V1BETA1, "Gateway") => Kind::Gateway,
            (GATEWAY_V1 | GATEWAY_V1BETA1, "HTTPRoute") => Kind::HttpRoute,
            (GATEWAY_V1, "GRPCRoute") => Kind::GrpcRoute,
            (GATEWAY_V1 | GATEWAY_V1BETA1, "ReferenceGrant") => Kind::ReferenceGrant,
            (v, "DestinationRule") if ISTIO.contains(&v) => Kind::DestinationRule,
            (SECURITY_V1 | SECURITY_V1BETA1, "AuthorizationPolicy") => Kind::AuthorizationPolicy,
            (SECURITY_V1 | SECURITY_V1BETA1, "RequestAuthentication") => {
                Kind::RequestAuthentication
            }
            _ => return None,
        })
    }
    fn is_known_name(kind: &str) -> bool {
        matches!(
            kind,
            "Namespace"
                | "Service"
                | "Pod"
                | "EndpointSlice"
                | "Gateway"
                | "HTTPRoute"
                | "GRPCRoute"
                | "ReferenceGrant"
                | "DestinationRule"
                | "AuthorizationPolicy"
                | "RequestAuthentication"
        )
    }
    fn namespaced(self) -> bool {
        self != Kind::Namespace
    }
}

/// Merges [`Chunk`]s in input order, with the checks across objects.
#[derive(Default)]
pub(super) struct Parser {
    pub out: Parsed,
    /// (kind, namespace, name) → the file that defined it first.
    seen: HashMap<(Kind, String, String), PathBuf>,
    /// Service VIP → the Service that has it.
    vips: HashMap<IpAddr, String>,
    /// Pod IP → the Pod that has it.
    pod_ips: HashMap<IpAddr, String>,
}

/// Where an object is, for error messages.
pub(super) struct Ctx<'a> {
    pub file: &'a Path,
    pub object: String,
    /// Prepended to field paths (`items[3].` inside a `List`).
    pub prefix: &'a str,
}

impl Ctx<'_> {
    pub fn err(&self, field: &str, message: impl Into<String>) -> ConfigError {
        let field = match (self.prefix.is_empty(), field.is_empty()) {
            (true, _) => field.to_string(),
            (false, true) => self.prefix.trim_end_matches('.').to_string(),
            (false, false) => format!("{}{field}", self.prefix),
        };
        ConfigError {
            file: self.file.to_path_buf(),
            object: self.object.clone(),
            field,
            message: message.into(),
        }
    }
    /// Deserializes the whole object into its type, naming the field that does not fit.
    fn typed<T: DeserializeOwned>(&self, value: Value) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            self.err(&field, e.into_inner().to_string())
        })
    }
    pub fn port(&self, field: impl FnOnce() -> String, value: i32) -> Result<u16, ConfigError> {
        match u16::try_from(value) {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(self.err(&field(), format!("port {value} is out of range 1-65535"))),
        }
    }
    pub fn ip(&self, field: impl FnOnce() -> String, value: &str) -> Result<IpAddr, ConfigError> {
        value
            .parse()
            .map_err(|_| self.err(&field(), format!("{value:?} is not an IP address")))
    }
}

impl Parser {
    /// Adds what `chunk` (of `file`, after its first `base` documents) says, in order; the first error is
    /// the parse's, as if every document had been read here.
    pub(super) fn chunk(
        &mut self,
        file: &Path,
        base: usize,
        chunk: &Chunk,
    ) -> Result<(), ConfigError> {
        for (n, outcome) in &chunk.outcomes {
            let n = base + n;
            match outcome {
                Outcome::Skipped {
                    key,
                    kind,
                    api_version,
                } => {
                    let count = self.out.skipped.entry(key.clone()).or_default();
                    *count += 1;
                    // Once per kind and load: a directory of many such objects should not flood the log.
                    if *count == 1 {
                        tracing::warn!(file = %file.display(), document = n, kind, api_version,
                            "skipping a kind not read (further ones counted in Mesh::skipped)");
                    }
                }
                Outcome::Document(e) => {
                    return Err(ConfigError {
                        object: format!("document {n}"),
                        ..e.clone()
                    });
                }
                Outcome::Object(o) => self.object(file, o)?,
            }
        }
        Ok(())
    }

    fn object(&mut self, file: &Path, o: &Object) -> Result<(), ConfigError> {
        let ctx = || Ctx {
            file,
            object: o.object.clone(),
            prefix: &o.prefix,
        };
        if let Some(first) = self.seen.get(&o.key) {
            let kind = &o.kind;
            return Err(ctx().err(
                "metadata.name",
                format!("duplicate {kind}: already defined in {}", first.display()),
            ));
        }
        self.seen.insert(o.key.clone(), file.to_path_buf());
        let (_, namespace, name) = &o.key;
        if let Some(vip) = o.vip {
            if let Some(other) = self.vips.insert(vip, format!("{namespace}/{name}")) {
                return Err(ctx().err(
                    "spec.clusterIP",
                    format!("{vip} is already the clusterIP of Service {other}"),
                ));
            }
        }
        let record = match &o.result {
            Err(e) => return Err(e.clone()),
            Ok(None) => return Ok(()),
            Ok(Some(record)) => record.clone(),
        };
        let out = &mut self.out;
        match record {
            Record::Namespace(r) => out.namespaces.push(r),
            Record::Service(r) => out.services.push(r),
            Record::Workload(w) => {
                if let Some(other) = self.pod_ips.insert(w.ip, format!("{namespace}/{name}")) {
                    tracing::warn!(file = %file.display(), object = %o.object, ip = %w.ip, other,
                        "pod IP shared with another pod: lookups by IP find the first");
                }
                out.workloads.push(w);
            }
            Record::Slice(r) => out.slices.push(r),
            Record::Waypoint(r) => out.waypoints.push(r),
            Record::HttpRoute(r) => out.http_routes.push(r),
            Record::GrpcRoute(r) => out.grpc_routes.push(r),
            Record::ReferenceGrant(r) => out.reference_grants.push(r),
            Record::DestinationRule(r) => out.destination_rules.push(r),
            Record::AuthorizationPolicy(r) => out.authorization_policies.push(r),
            Record::RequestAuthentication(r) => out.request_authentications.push(r),
        }
        Ok(())
    }
}

/// Reads the objects of one chunk into its [`Chunk`].
struct Reader<'a> {
    file: &'a Path,
    /// The document being read (from 1).
    n: usize,
    out: Chunk,
}

impl Reader<'_> {
    /// Records an error of the document (no object name yet); false: stop reading.
    fn fail(&mut self, e: ConfigError) -> bool {
        self.out.outcomes.push((self.n, Outcome::Document(e)));
        false
    }

    /// Reads one object (or the items of a `List`); false when it recorded an error, which ends the chunk.
    fn object(&mut self, prefix: &str, value: Value) -> bool {
        let (file, n) = (self.file, self.n);
        let doc = Ctx {
            file,
            object: format!("document {n}"),
            prefix,
        };
        let Value::Mapping(map) = &value else {
            return self.fail(doc.err(
                "",
                "expected a Kubernetes object (a mapping with apiVersion, kind, metadata)",
            ));
        };
        let text = |key: &str| -> Result<&str, ConfigError> {
            match map.get(key) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s),
                Some(Value::String(_)) | None => Err(doc.err(key, format!("missing {key}"))),
                Some(_) => Err(doc.err(key, format!("{key} must be a string"))),
            }
        };
        let (kind, api_version) = match (text("kind"), text("apiVersion")) {
            (Ok(kind), Ok(api_version)) => (kind, api_version),
            (Err(e), _) | (_, Err(e)) => return self.fail(e),
        };
        if kind == "List" && api_version == "v1" {
            let Some(Value::Sequence(items)) = map.get("items") else {
                return self.fail(doc.err("items", "a List needs a sequence of items"));
            };
            for (i, item) in items.iter().enumerate() {
                if !self.object(&format!("{prefix}items[{i}]."), item.clone()) {
                    return false;
                }
            }
            return true;
        }
        let Some(k) = Kind::of(api_version, kind) else {
            let key = if Kind::is_known_name(kind) {
                format!("{kind} {api_version}")
            } else {
                kind.to_string()
            };
            let skipped = Outcome::Skipped {
                key,
                kind: kind.to_string(),
                api_version: api_version.to_string(),
            };
            self.out.outcomes.push((n, skipped));
            return true;
        };
        let meta = map.get("metadata");
        let meta_str = |key: &str| {
            meta.and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let Some(name) = meta_str("name") else {
            return self.fail(doc.err("metadata.name", format!("{kind} has no metadata.name")));
        };
        let namespace = if k.namespaced() {
            meta_str("namespace").unwrap_or("default")
        } else {
            ""
        };
        let object = if k.namespaced() {
            format!("{kind} {namespace}/{name}")
        } else {
            format!("{kind} {name}")
        };
        let ctx = Ctx {
            file,
            object,
            prefix,
        };
        let (namespace, name) = (namespace.to_string(), name.to_string());
        let key = (k, namespace.clone(), name.clone());
        let kind = kind.to_string();
        let mut vip = None;
        let result = typed(&ctx, k, namespace, name, value, &mut vip);
        let ok = result.is_ok();
        let object = Object {
            key,
            kind,
            object: ctx.object,
            prefix: prefix.to_string(),
            vip,
            result,
        };
        self.out
            .outcomes
            .push((n, Outcome::Object(Box::new(object))));
        ok
    }
}

/// Deserializes a named object of kind `k` and reduces it to its record; `vip`: a Service's VIP, once read.
fn typed(
    ctx: &Ctx<'_>,
    k: Kind,
    namespace: String,
    name: String,
    value: Value,
    vip: &mut Option<IpAddr>,
) -> Result<Option<Record>, ConfigError> {
    Ok(Some(match k {
        Kind::Namespace => Record::Namespace(namespace_record(ctx.typed(value)?)),
        Kind::Service => Record::Service(service(ctx, namespace, name, ctx.typed(value)?, vip)?),
        Kind::Pod => return Ok(pod(ctx, namespace, name, ctx.typed(value)?)?.map(Record::Workload)),
        Kind::EndpointSlice => {
            return Ok(slice(ctx, namespace, ctx.typed(value)?)?.map(Record::Slice))
        }
        Kind::Gateway => {
            return Ok(gateway(ctx, namespace, name, ctx.typed(value)?)?.map(Record::Waypoint))
        }
        Kind::HttpRoute => {
            Record::HttpRoute(routes::http_route(ctx, namespace, ctx.typed(value)?)?)
        }
        Kind::GrpcRoute => {
            Record::GrpcRoute(routes::grpc_route(ctx, namespace, ctx.typed(value)?)?)
        }
        Kind::ReferenceGrant => {
            Record::ReferenceGrant(routes::reference_grant(ctx, namespace, ctx.typed(value)?)?)
        }
        Kind::DestinationRule => Record::DestinationRule(destination::destination_rule(
            ctx,
            namespace,
            name,
            ctx.typed(value)?,
        )?),
        Kind::AuthorizationPolicy => Record::AuthorizationPolicy(security::authorization_policy(
            ctx,
            namespace,
            name,
            ctx.typed(value)?,
        )?),
        Kind::RequestAuthentication => Record::RequestAuthentication(
            security::request_authentication(ctx, namespace, name, ctx.typed(value)?)?,
        ),
    }))
}
