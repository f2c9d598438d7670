//! Where an explanation comes from: a manifests directory compiled in-process (as `waypoint check` does), or a
//! running waypoint's admin endpoint (`GET /explain?...`, evaluated against its live snapshot), plus the query
//! string both ends of the admin endpoint share.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use mesh::config::{GatewayRef, Mesh};

use super::{explain, Explanation, Query};
use crate::snapshot::{compile, WaypointSpec};

/// The HBONE port assumed for endpoints when compiling in-process (not shown: endpoints are shown by address
/// and expected identity).
const HBONE_PORT: u16 = 15008;
/// How long the admin endpoint may take to connect and to answer.
const ADMIN_PATIENCE: Duration = Duration::from_secs(10);

/// Loads `dir`, compiles what waypoint `gateway` serves and explains `q` against it.
pub fn from_manifests(
    dir: &Path,
    gateway: &GatewayRef,
    trust_domain: &str,
    q: &Query,
) -> anyhow::Result<Explanation> {
    let mesh = Mesh::load_dir(dir, trust_domain)?;
    let spec = WaypointSpec {
        gateway: gateway.clone(),
        hbone_port: HBONE_PORT,
    };
    let snapshot = compile(&mesh, &spec)?;
    Ok(explain(&snapshot, q, trust_domain)?)
}

/// Asks the admin endpoint at `admin` (`http://127.0.0.1:15000` or `127.0.0.1:15000`) to explain `q`
/// (an `ns/sa` caller is completed with `trust_domain` here, so the waypoint's default does not matter).
pub fn from_admin(admin: &str, trust_domain: &str, q: &Query) -> anyhow::Result<Explanation> {
    let mut q = q.clone();
    if let Some(from) = q.from.as_deref().filter(|f| !f.is_empty()) {
        let (principal, _) = super::caller(from, trust_domain).map_err(anyhow::Error::msg)?;
        q.from = Some(format!("spiffe://{principal}"));
    }
    let authority = admin
        .strip_prefix("http://")
        .unwrap_or(admin)
        .trim_end_matches('/');
    if authority.contains('/') || admin.starts_with("https://") {
        bail!(
            "--admin must be http://host:port (the admin endpoint speaks plain HTTP on loopback)"
        );
    }
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("--admin {admin}"))?
        .next()
        .with_context(|| format!("--admin {admin}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, ADMIN_PATIENCE)
        .with_context(|| format!("connecting to the admin endpoint {addr}"))?;
    s.set_read_timeout(Some(ADMIN_PATIENCE))?;
    s.set_write_timeout(Some(ADMIN_PATIENCE))?;
    let head = format!(
        "GET /explain?{} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n",
        query_string(&q)
    );
    s.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading the answer of {addr}"))?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr} sent no HTTP response"))?;
    let status = head.split(' ').nth(1).unwrap_or("?");
    if status != "200" {
        bail!("the admin endpoint answered {status}: {}", body.trim());
    }
    serde_json::from_str(body).with_context(|| format!("{addr}/explain answered no explanation"))
}

/// `name:value` (the value trimmed) from `-H` or the `h` parameter.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((n, v)) if !n.trim().is_empty() => Ok((n.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("bad header {s:?}: expected name:value")),
    }
}

/// The admin endpoint's query string for `q`: `from`, `to`, `method`, `path`, `h` (repeated, `name:value`),
/// `source_ip`.
pub fn query_string(q: &Query) -> String {
    let mut pairs: Vec<(&str, String)> = vec![("to", q.to.clone())];
    let optional = [
        ("from", q.from.clone()),
        ("method", q.method.clone()),
        ("path", q.path.clone()),
        ("source_ip", q.source_ip.map(|ip| ip.to_string())),
    ];
    pairs.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
    pairs.extend(q.headers.iter().map(|(n, v)| ("h", format!("{n}:{v}"))));
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The [`Query`] in decoded query pairs (the inverse of [`query_string`]); other keys are left to the caller.
pub fn parse_query(pairs: &[(String, String)]) -> Result<Query, String> {
    let mut q = Query::default();
    let mut to = None;
    for (k, v) in pairs {
        match k.as_str() {
            "to" => to = Some(v.clone()),
            "from" => q.from = Some(v.clone()),
            "method" => q.method = Some(v.clone()),
            "path" => q.path = Some(v.clone()),
            "h" => q.headers.push(parse_header(v)?),
            "source_ip" => {
                q.source_ip = Some(v.parse().map_err(|_| format!("bad source_ip {v:?}"))?);
            }
            _ => {}
        }
    }
    q.to = to.ok_or("missing to=host:port")?;
    Ok(q)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
