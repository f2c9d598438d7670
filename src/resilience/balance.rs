//! Endpoint choice within one backend (see [`super`]): after the route's weighted pick of a backend, which of its
//! endpoints gets the try, by the `DestinationRule`'s `loadBalancer`.
//!
//! - `ROUND_ROBIN`: an atomic counter per backend.
//! - `LEAST_REQUEST`: power of two choices: two distinct endpoints at random, the one with fewer requests in
//!   flight (counted by the [`InFlight`] guard a [`PickOutcome`] carries, kept per endpoint address across
//!   snapshots in [`LoadCounters`]).
//! - `RANDOM`: uniform.
//! - `consistentHash`: a [`Ring`] of [`VNODES`] points per endpoint, placed by a stable hash of the endpoint's
//!   address (FNV-1a with a 64-bit finalizer, the same in every process and run), so the same key reaches the same
//!   endpoint across a config swap when the endpoints are unchanged, and adding one of N endpoints moves about 1/N
//!   of the keys. The key is the header's values, the cookie, the query parameter or the source IP; without one
//!   the pick is round robin. A cookie policy with a `ttl` makes up a cookie when the request has none and says
//!   what to `Set-Cookie` ([`PickOutcome::set_cookie`]).
//!
//! Every policy skips ejected endpoints ([`EndpointHealth::is_ejected`](super::outlier::EndpointHealth)) unless
//! all are ejected (then ejection is ignored: it never fails a request), and avoids [`PickKey::exclude`] (the
//! endpoint of the previous try) when another candidate exists. In order, the first tier with an endpoint wins:
//! healthy and not excluded; healthy (only the excluded one is); not excluded (all ejected); any.
//!
//! The request path takes no lock and, but for a made-up cookie, allocates nothing.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::COOKIE;
use http::HeaderMap;

use super::breaker::registry::Registry;
use super::policy::{HashOn, LoadBalancer};
use crate::snapshot::{Backend, Upstream};

/// Points per endpoint on a consistent-hash ring.
pub const VNODES: usize = 100;

/// In-flight requests per endpoint address, for `LEAST_REQUEST`, kept across snapshots (bounded: an address no
/// snapshot or guard holds any more is pruned as the registry grows).
#[derive(Debug, Default)]
pub struct LoadCounters {
    endpoints: Registry<SocketAddr, EndpointLoad>,
}

impl LoadCounters {
    /// The counter of endpoint `addr`, created on first use (compile time).
    pub fn endpoint(&self, addr: SocketAddr) -> Arc<EndpointLoad> {
        self.endpoints
            .get_or_create(&addr, EndpointLoad::default, |_| {})
    }

    /// Drops the counters nothing holds any more; returns how many remain.
    pub fn retain_live(&self) -> usize {
        self.endpoints.retain_live(|_| {})
    }

    /// Counters held now (live or not yet pruned).
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One endpoint's requests in flight.
#[derive(Debug, Default)]
pub struct EndpointLoad {
    in_flight: AtomicU32,
}

impl EndpointLoad {
    /// Requests (tries) in flight to this endpoint now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one try until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// One try in flight to an endpoint: hold it for the try (until the response is done or the try failed).
#[derive(Debug)]
#[must_use = "the try counts as in flight only while the guard is held"]
pub struct InFlight(Arc<EndpointLoad>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the choice may read from the request.
#[derive(Clone, Copy, Debug)]
pub struct PickKey<'a> {
    /// The request's headers (the hash header, `cookie`).
    pub header_map: &'a HeaderMap,
    /// The request's query string, without `?`.
    pub query: Option<&'a str>,
    /// The caller's address (for `useSourceIp`).
    pub source_ip: Option<IpAddr>,
    /// The endpoint of the previous try, avoided when another exists.
    pub exclude: Option<SocketAddr>,
}

impl<'a> PickKey<'a> {
    /// A key with only headers.
    pub fn new(header_map: &'a HeaderMap) -> PickKey<'a> {
        PickKey {
            header_map,
            query: None,
            source_ip: None,
            exclude: None,
        }
    }
}

/// The chosen endpoint.
#[derive(Debug)]
pub struct PickOutcome<'a> {
    pub upstream: &'a Upstream,
    /// A `Set-Cookie` value for the response, when the policy hashes on a cookie with a `ttl` and the request had
    /// none: the next request carrying it reaches the same endpoint.
    pub set_cookie: Option<String>,
    /// Counts this try for `LEAST_REQUEST`; hold it until the try is over.
    pub in_flight: InFlight,
}

/// Chooses `b`'s endpoint for one try (see the module doc). `None` only when it has no endpoints.
pub fn pick<'a>(b: &'a Backend, key: &PickKey<'_>, now: Instant) -> Option<PickOutcome<'a>> {
    let n = b.endpoints.len();
    if n == 0 {
        return None;
    }
    let (hash, set_cookie) = match &b.policy.load_balancer {
        LoadBalancer::ConsistentHash(on) => hash_of(on, key),
        _ => (None, None),
    };
    let seed = match (&b.policy.load_balancer, hash) {
        (LoadBalancer::Random | LoadBalancer::LeastRequest, _) => fastrand::usize(..),
        (LoadBalancer::ConsistentHash(_), Some(_)) => 0,
        _ => b.next.fetch_add(1, Ordering::Relaxed),
    };
    let i = Tier::ALL.into_iter().find_map(|tier| {
        let ok = |i: usize| tier.admits(&b.endpoints[i], key.exclude, now);
        match (&b.policy.load_balancer, hash) {
            (LoadBalancer::ConsistentHash(_), Some(h)) => b.ring().walk(h).find(|&i| ok(i)),
            (LoadBalancer::LeastRequest, _) => least_of_two(&b.endpoints, seed, &ok),
            _ => nth_admitted(n, seed, &ok),
        }
    })?;
    let upstream = &b.endpoints[i];
    Some(PickOutcome {
        upstream,
        set_cookie,
        in_flight: upstream.load.start(),
    })
}

/// The tiers of candidates, tried in order.
#[derive(Clone, Copy, Debug)]
enum Tier {
    HealthyOther,
    Healthy,
    Other,
    Any,
}

impl Tier {
    const ALL: [Tier; 4] = [Tier::HealthyOther, Tier::Healthy, Tier::Other, Tier::Any];

    fn admits(self, up: &Upstream, exclude: Option<SocketAddr>, now: Instant) -> bool {
        let other = exclude != Some(up.addr);
        match self {
            Tier::HealthyOther => other && !up.health.is_ejected(now),
            Tier::Healthy => !up.health.is_ejected(now),
            Tier::Other => other,
            Tier::Any => true,
        }
    }
}

/// The endpoint `seed` designates among the admitted ones: `seed % n` when admitted (no scan), else the
/// `seed % k`th of the `k` admitted.
fn nth_admitted(n: usize, seed: usize, ok: &impl Fn(usize) -> bool) -> Option<usize> {
    let first = seed % n;
    if ok(first) {
        return Some(first);
    }
    let k = (0..n).filter(|&i| ok(i)).count();
    if k == 0 {
        return None;
    }
    (0..n).filter(|&i| ok(i)).nth(seed % k)
}

/// Power of two choices: two distinct admitted endpoints at random (when two exist), the less loaded one.
fn least_of_two(endpoints: &[Upstream], seed: usize, ok: &impl Fn(usize) -> bool) -> Option<usize> {
    let n = endpoints.len();
    let a = nth_admitted(n, seed, ok)?;
    let b = nth_admitted(n, fastrand::usize(..), &|i| i != a && ok(i)).unwrap_or(a);
    let load = |i: usize| endpoints[i].load.in_flight();
    Some(if load(b) < load(a) { b } else { a })
}

/// The hash of the request's key under `on`, and the cookie to set when one was made up.
fn hash_of(on: &HashOn, key: &PickKey<'_>) -> (Option<u64>, Option<String>) {
    match on {
        HashOn::Header(name) => {
            let mut values = key.header_map.get_all(name.as_str()).iter().peekable();
            if values.peek().is_none() {
                return (None, None);
            }
            let mut h = Fnv::new();
            for (i, v) in values.enumerate() {
                if i > 0 {
                    h.write(b",");
                }
                h.write(v.as_bytes());
            }
            (Some(h.finish()), None)
        }
        HashOn::Cookie { name, path, ttl } => {
            if let Some(v) = cookie(key.header_map, name) {
                return (Some(stable_hash(v.as_bytes())), None);
            }
            let Some(ttl) = ttl else { return (None, None) };
            let value = format!("{:016x}", fastrand::u64(..));
            let hash = stable_hash(value.as_bytes());
            (
                Some(hash),
                Some(set_cookie(name, &value, path.as_deref(), *ttl)),
            )
        }
        HashOn::QueryParameter(name) => {
            let value = key.query.and_then(|q| {
                q.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == name).then_some(v)
                })
            });
            (value.map(|v| stable_hash(v.as_bytes())), None)
        }
        HashOn::SourceIp => {
            let hash = key.source_ip.map(|ip| match ip {
                IpAddr::V4(v4) => stable_hash(&v4.octets()),
                IpAddr::V6(v6) => stable_hash(&v6.octets()),
            });
            (hash, None)
        }
    }
}

/// The value of cookie `name` in the request's `cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// A `Set-Cookie` value: `name=value; Path=path; Max-Age=ttl; HttpOnly` (a zero `ttl`: a session cookie).
fn set_cookie(name: &str, value: &str, path: Option<&str>, ttl: Duration) -> String {
    let mut out = format!("{name}={value}");
    if let Some(p) = path {
        out.push_str("; Path=");
        out.push_str(p);
    }
    if !ttl.is_zero() {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        out.push_str(&format!("; Max-Age={secs}"));
    }
    out.push_str("; HttpOnly");
    out
}

/// A consistent-hash ring over a backend's endpoints: [`VNODES`] points per endpoint, placed by the stable hash
/// of `"<address>#<i>"`. Depends only on the endpoint addresses.
#[derive(Clone, Default)]
pub struct Ring {
    /// (point, endpoint index), sorted.
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// The ring of `addrs` (endpoint `i` is the `i`th address).
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Ring {
        let mut points = Vec::new();
        for (i, addr) in addrs.into_iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let addr = addr.to_string();
            for v in 0..VNODES {
                let mut h = Fnv::new();
                h.write(addr.as_bytes());
                h.write(b"#");
                h.write(v.to_string().as_bytes());
                points.push((h.finish(), i));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The endpoint (index) that `hash` maps to.
    pub fn get(&self, hash: u64) -> Option<usize> {
        self.walk(hash).next()
    }

    /// Endpoints clockwise from `hash`, once around the ring (an endpoint comes up once per point it has).
    pub fn walk(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|&(p, _)| p < hash);
        let (after, before) = self.points.split_at(start);
        before.iter().chain(after).map(|&(_, i)| i as usize)
    }

    /// Points on the ring.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether the ring has no endpoint.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("points", &self.points.len())
            .finish()
    }
}

/// The stable 64-bit hash of `bytes` (FNV-1a, then a 64-bit finalizer for spread): the same in every process.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = Fnv::new();
    h.write(bytes);
    h.finish()
}

/// FNV-1a 64, finished with MurmurHash3's `fmix64` (FNV alone spreads short, similar keys poorly).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        let mut k = self.0;
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_pinned() {
        // A change here moves every consistent-hash key on upgrade: keep these values.
        for (bytes, want) in [
            (&b""[..], 0xefd0_1f60_ba99_2926),
            (b"user-1", 0x41a2_fca5_c684_01c5),
            (b"10.1.0.1:8080#0", 0x9b0b_0522_7340_8d81),
        ] {
            assert_eq!(stable_hash(bytes), want, "{bytes:?}");
        }
    }

    #[test]
    fn cookies_and_set_cookie() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, "a=1; session=\"abc\"".parse().unwrap());
        h.append(COOKIE, "b=2".parse().unwrap());
        assert_eq!(cookie(&h, "session"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
        assert_eq!(
            set_cookie("s", "v", Some("/"), Duration::from_millis(1500)),
            "s=v; Path=/; Max-Age=2; HttpOnly"
        );
        assert_eq!(set_cookie("s", "v", None, Duration::ZERO), "s=v; HttpOnly");
    }
}
