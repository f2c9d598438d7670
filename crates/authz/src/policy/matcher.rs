//! Value matchers, parsed once at compile time: Istio's string forms (exact, `prefix*`, `*suffix`, `*` =
//! present), hosts (case-insensitive, with or without the port), paths (string forms plus `{*}` / `{**}`
//! templates), CIDRs and ports.

use std::net::IpAddr;

use ipnet::IpNet;

/// One of Istio's string forms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StrMatch {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    /// `*`: the attribute is present (a principal: any authenticated caller).
    Present,
}

impl StrMatch {
    /// `*` → present, `*x` → suffix, `x*` → prefix, else exact (a `*` elsewhere is literal, as in Istio).
    pub fn parse(v: &str) -> StrMatch {
        if v == "*" {
            StrMatch::Present
        } else if let Some(s) = v.strip_prefix('*') {
            StrMatch::Suffix(s.into())
        } else if let Some(p) = v.strip_suffix('*') {
            StrMatch::Prefix(p.into())
        } else {
            StrMatch::Exact(v.into())
        }
    }

    fn lowercase(self) -> StrMatch {
        match self {
            StrMatch::Exact(s) => StrMatch::Exact(s.to_ascii_lowercase().into()),
            StrMatch::Prefix(s) => StrMatch::Prefix(s.to_ascii_lowercase().into()),
            StrMatch::Suffix(s) => StrMatch::Suffix(s.to_ascii_lowercase().into()),
            StrMatch::Present => StrMatch::Present,
        }
    }

    /// `v` is the attribute's value (present). `fold`: compare ASCII case-insensitively (the pattern is
    /// already lower-case).
    pub fn matches(&self, v: &[u8], fold: bool) -> bool {
        let eq = |a: &[u8], b: &[u8]| {
            if fold {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match self {
            StrMatch::Present => true,
            StrMatch::Exact(s) => eq(v, s.as_bytes()),
            StrMatch::Prefix(p) => v.len() >= p.len() && eq(&v[..p.len()], p.as_bytes()),
            StrMatch::Suffix(s) => v.len() >= s.len() && eq(&v[v.len() - s.len()..], s.as_bytes()),
        }
    }
}

/// A list of string forms, OR-ed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Strs(pub Vec<StrMatch>);

impl Strs {
    pub fn parse(values: &[String]) -> Strs {
        Strs(values.iter().map(|v| StrMatch::parse(v)).collect())
    }
    pub fn any(&self, v: &[u8]) -> bool {
        self.0.iter().any(|m| m.matches(v, false))
    }
}

/// `hosts`: case-insensitive; a value matches the `Host` as sent or without its port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Hosts(Vec<StrMatch>);

impl Hosts {
    pub fn parse(values: &[String]) -> Hosts {
        Hosts(
            values
                .iter()
                .map(|v| StrMatch::parse(v).lowercase())
                .collect(),
        )
    }
    /// `full` is the authority as sent, `bare` the same without its port.
    pub fn any(&self, full: &str, bare: &str) -> bool {
        self.0.iter().any(|m| {
            m.matches(full.as_bytes(), true)
                || (bare.len() != full.len() && m.matches(bare.as_bytes(), true))
        })
    }
}

/// The host of an authority without its port (`[::1]:80` → `[::1]`, `a:80` → `a`).
pub(crate) fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(i) => &authority[..=i],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => authority,
    }
}

/// A `paths` value: a string form, or an Envoy URI template with `{*}` (one segment) / `{**}` (the rest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PathMatch {
    Str(StrMatch),
    Template(Template),
}

/// A URI template split at its single `{**}` (if any): `head` parts, then `{**}` and the `tail` literal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Template {
    head: Vec<Part>,
    /// `Some(tail)` when the template has `{**}`: one or more characters (slashes included), then `tail`.
    rest: Option<Box<str>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Lit(Box<str>),
    /// `{*}`: one non-empty segment.
    Seg,
}

impl PathMatch {
    /// Errors name what is wrong with a template (the caller adds which field).
    pub fn parse(v: &str) -> Result<PathMatch, String> {
        if !v.contains("{*") {
            return Ok(PathMatch::Str(StrMatch::parse(v)));
        }
        if !v.starts_with('/') {
            return Err(format!("path template {v:?} must start with '/'"));
        }
        let (head_text, rest) = match v.split_once("{**}") {
            Some((h, t)) => {
                if t.contains("{*") {
                    return Err(format!(
                        "path template {v:?}: {{**}} must be the last operator"
                    ));
                }
                (h, Some(t.into()))
            }
            None => (v, None),
        };
        let mut head = Vec::new();
        for (i, lit) in head_text.split("{*}").enumerate() {
            if i > 0 {
                head.push(Part::Seg);
            }
            if lit.contains(['{', '}']) {
                return Err(format!(
                    "path template {v:?}: only {{*}} and {{**}} are supported"
                ));
            }
            if !lit.is_empty() {
                head.push(Part::Lit(lit.into()));
            }
        }
        Ok(PathMatch::Template(Template { head, rest }))
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Str(m) => m.matches(path.as_bytes(), false),
            PathMatch::Template(t) => t.matches(path),
        }
    }
}

impl Template {
    fn matches(&self, path: &str) -> bool {
        let mut p = path;
        for part in &self.head {
            match part {
                Part::Lit(l) => match p.strip_prefix(&**l) {
                    Some(r) => p = r,
                    None => return false,
                },
                Part::Seg => {
                    let end = p.find('/').unwrap_or(p.len());
                    if end == 0 {
                        return false;
                    }
                    p = &p[end..];
                }
            }
        }
        match &self.rest {
            None => p.is_empty(),
            Some(tail) => p.len() > tail.len() && p.ends_with(&**tail),
        }
    }
}

/// CIDRs (`10.0.0.0/8`) and single addresses; IPv4-mapped IPv6 addresses match as IPv4.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ips(Vec<IpNet>);

impl Ips {
    pub fn parse_one(v: &str) -> Result<IpNet, String> {
        let v = v.trim();
        if v.contains('/') {
            v.parse::<IpNet>()
                .map_err(|_| format!("{v:?} is not an IP address or CIDR block"))
        } else {
            v.parse::<IpAddr>()
                .map(IpNet::from)
                .map_err(|_| format!("{v:?} is not an IP address or CIDR block"))
        }
    }
    pub fn new(nets: Vec<IpNet>) -> Ips {
        Ips(nets)
    }
    pub fn any(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// A port value: `1`–`65535`.
pub(crate) fn parse_port(v: &str) -> Result<u16, String> {
    match v.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("{v:?} is not a port (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_forms() {
        let cases = [
            ("*", "", true),
            ("*", "x", true),
            ("a*", "abc", true),
            ("a*", "ba", false),
            ("*c", "abc", true),
            ("*c", "cb", false),
            ("abc", "abc", true),
            ("abc", "ABC", false),
            ("a*c", "abc", false),
            ("a*c", "a*c", true),
        ];
        for (pat, v, want) in cases {
            assert_eq!(
                StrMatch::parse(pat).matches(v.as_bytes(), false),
                want,
                "{pat} ~ {v}"
            );
        }
    }

    #[test]
    fn hosts_ignore_case_and_port() {
        let h = Hosts::parse(&["Example.COM".into(), "*.svc".into(), "api:8080".into()]);
        for (full, want) in [
            ("example.com", true),
            ("EXAMPLE.com:80", true),
            ("a.svc:9", true),
            ("api:8080", true),
            ("api:9090", false),
            ("example.org", false),
        ] {
            assert_eq!(h.any(full, strip_port(full)), want, "{full}");
        }
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
    }

    #[test]
    fn templates() {
        let cases = [
            ("/a/{*}/c", "/a/b/c", true),
            ("/a/{*}/c", "/a//c", false),
            ("/a/{*}/c", "/a/b/x/c", false),
            ("/a/{**}", "/a/b/x/c", true),
            ("/a/{**}", "/a/", false),
            ("/{*}/{**}.mpd", "/v/x/y.mpd", true),
            ("/{*}/{**}.mpd", "/v/.mpd", false),
        ];
        for (pat, p, want) in cases {
            assert_eq!(
                PathMatch::parse(pat).unwrap().matches(p),
                want,
                "{pat} ~ {p}"
            );
        }
        assert!(PathMatch::parse("/{**}/{*}").is_err());
        assert!(PathMatch::parse("/{x}/{*}").is_err());
    }

    #[test]
    fn cidrs() {
        let ips = Ips::new(vec![
            Ips::parse_one("10.0.0.0/8").unwrap(),
            Ips::parse_one("fd00::1").unwrap(),
        ]);
        assert!(ips.any("10.1.2.3".parse().unwrap()));
        assert!(ips.any("::ffff:10.1.2.3".parse().unwrap()));
        assert!(ips.any("fd00::1".parse().unwrap()));
        assert!(!ips.any("11.0.0.1".parse().unwrap()));
        assert!(Ips::parse_one("10.0.0.0/33").is_err());
        assert!(Ips::parse_one("nope").is_err());
    }
}
