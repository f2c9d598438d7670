//! Path normalization before matching, as Istio configures Envoy for authorization (`normalize_path: true`,
//! `merge_slashes: true`, `path_with_escaped_slashes_action: KEEP_UNCHANGED`): so no encoding trick bypasses a
//! DENY. The proxy should forward the normalized path too (as Envoy does), so the application sees the path
//! that was judged; [`query`] gives the query back.
//!
//! Steps, in Envoy's order:
//! 1. The query (`?…`) and a fragment (`#…`) are cut off; they are never part of the path matched.
//! 2. Percent-escapes are checked: `%` must be followed by two hex digits, else [`PathError::InvalidEscape`];
//!    `%00` is [`PathError::Nul`]. Escaped *unreserved* characters (`A-Z a-z 0-9 - . _ ~`) are decoded
//!    (`/%61dmin` → `/admin`, `%2e%2e` → `..`); other escapes are kept, with upper-case hex (`%3b` → `%3B`).
//! 3. Escaped slashes `%2F` and backslashes `%5C` follow [`EscapedSlashes`]: by default (Istio's) they are kept
//!    escaped, so `/admin%2Fx` is one segment `admin%2Fx` — it does not match `/admin/x`, and a prefix
//!    `/admin*` still matches it. [`EscapedSlashes::Reject`] answers 400 instead; [`EscapedSlashes::Unescape`]
//!    turns them into `/` before the next steps (Istio's `DECODE_AND_MERGE_SLASHES`).
//! 4. A raw backslash `\` is a path separator (`/`), as URL canonicalization treats it for `http` and as many
//!    servers do; a raw control character or space is [`PathError::ControlChar`].
//! 5. Dot segments are resolved (RFC 3986 §5.2.4, an empty segment counting as a segment, as in Envoy):
//!    `/a/./b` → `/a/b`, `/a/b/..` → `/a/`, `/..` → `/` (never above the root).
//! 6. Runs of slashes are merged (`//admin` → `/admin`), after step 5 like Envoy's `merge_slashes`.
//!
//! Not changed, deliberately: case (`/ADMIN` is not `/admin`: matching is case-sensitive in Istio) and path
//! parameters (`/admin;x` stays — a policy on `/admin` exactly does not match it; use a prefix `/admin*`).
//! The common case (a path with nothing to normalize) allocates nothing: the result borrows the input.

use std::borrow::Cow;

/// What to do with `%2F` / `%5C` (Envoy's `path_with_escaped_slashes_action`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// Keep them escaped (Istio's default): they are not separators for matching or forwarding.
    #[default]
    KeepUnchanged,
    /// Refuse the request ([`PathError::EscapedSlash`]).
    Reject,
    /// Decode them to `/` before dot resolution and slash merging.
    Unescape,
}

/// Normalization settings; [`PathOptions::default`] is Istio's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathOptions {
    pub escaped_slashes: EscapedSlashes,
    /// Merge runs of `/` (Istio: on).
    pub merge_slashes: bool,
}

impl Default for PathOptions {
    fn default() -> Self {
        PathOptions {
            escaped_slashes: EscapedSlashes::KeepUnchanged,
            merge_slashes: true,
        }
    }
}

/// A path the proxy must refuse (400 Bad Request). `at` is a byte offset into the path as received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("path does not start with '/'")]
    NotAbsolute,
    #[error("path contains an encoded NUL (%00) at byte {at}")]
    Nul { at: usize },
    #[error("invalid percent-encoding at byte {at}")]
    InvalidEscape { at: usize },
    #[error("path contains a control character or space at byte {at}")]
    ControlChar { at: usize },
    #[error("path contains an escaped slash or backslash at byte {at}")]
    EscapedSlash { at: usize },
}

/// Normalizes `raw` (a request target's path, query allowed) with Istio's settings ([`PathOptions::default`]).
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    normalize_with(raw, PathOptions::default())
}

/// The query of a request target (after `?`, before any `#`), for forwarding after [`normalize`].
pub fn query(raw: &str) -> Option<&str> {
    let before_fragment = raw.split('#').next().unwrap_or("");
    before_fragment.split_once('?').map(|(_, q)| q)
}

/// The path part of a request target: up to the first `?` or `#`.
pub fn strip_query(raw: &str) -> &str {
    match raw.find(['?', '#']) {
        Some(i) => &raw[..i],
        None => raw,
    }
}

/// Normalizes `raw` with `opts`; see the module doc for the steps. Borrows when nothing changes.
pub fn normalize_with(raw: &str, opts: PathOptions) -> Result<Cow<'_, str>, PathError> {
    let path = strip_query(raw);
    if path == "*" {
        // `OPTIONS *`: no path to normalize.
        return Ok(Cow::Borrowed(path));
    }
    match path.as_bytes().first() {
        None => return Err(PathError::Empty),
        Some(b'/' | b'\\') => {}
        Some(_) => return Err(PathError::NotAbsolute),
    }
    if is_normal(path.as_bytes(), opts.merge_slashes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path.as_bytes(), opts.escaped_slashes)?;
    let mut out = remove_dot_segments(&decoded);
    if opts.merge_slashes {
        out.dedup_by(|a, b| *a == b'/' && *b == b'/');
    }
    // Only ASCII was decoded or inserted and splits happen at ASCII '/', so the bytes stay UTF-8.
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| PathError::InvalidEscape { at: 0 })
}

/// Nothing to do: no escape, backslash, control character, dot segment or (when merging) double slash.
fn is_normal(p: &[u8], merge_slashes: bool) -> bool {
    let mut seg_start = 0;
    for (i, &b) in p.iter().enumerate() {
        match b {
            b'%' | b'\\' => return false,
            0..=0x20 | 0x7f => return false,
            b'/' => {
                if merge_slashes && i > 0 && p[i - 1] == b'/' {
                    return false;
                }
                if is_dot_segment(&p[seg_start..i]) {
                    return false;
                }
                seg_start = i + 1;
            }
            _ => {}
        }
    }
    !is_dot_segment(&p[seg_start..])
}

fn is_dot_segment(seg: &[u8]) -> bool {
    seg == b"." || seg == b".."
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Steps 2–4: escapes checked and decoded where unreserved, slashes per `slashes`, `\` → `/`.
fn decode(p: &[u8], slashes: EscapedSlashes) -> Result<Vec<u8>, PathError> {
    const UPPER: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        let b = p[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    p.get(i + 1).copied().and_then(hex),
                    p.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::InvalidEscape { at: i });
                };
                let v = hi << 4 | lo;
                match v {
                    0 => return Err(PathError::Nul { at: i }),
                    b'/' | b'\\' => match slashes {
                        EscapedSlashes::KeepUnchanged => {
                            out.extend_from_slice(&[b'%', UPPER[hi as usize], UPPER[lo as usize]])
                        }
                        EscapedSlashes::Reject => return Err(PathError::EscapedSlash { at: i }),
                        EscapedSlashes::Unescape => out.push(b'/'),
                    },
                    v if is_unreserved(v) => out.push(v),
                    _ => out.extend_from_slice(&[b'%', UPPER[hi as usize], UPPER[lo as usize]]),
                }
                i += 3;
                continue;
            }
            b'\\' => out.push(b'/'),
            0..=0x20 | 0x7f => return Err(PathError::ControlChar { at: i }),
            _ => out.push(b),
        }
        i += 1;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on an absolute path, empty segments counting as segments (as Envoy's canonicalizer).
fn remove_dot_segments(p: &[u8]) -> Vec<u8> {
    let rest = &p[1..];
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut segments = rest.split(|&b| b == b'/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            b"." => {}
            b".." => {
                kept.pop();
            }
            _ => {
                kept.push(seg);
                continue;
            }
        }
        if last {
            // `/a/.` and `/a/b/..` end in a directory: `/a/`.
            kept.push(b"");
        }
    }
    let mut out = Vec::with_capacity(p.len());
    for seg in kept {
        out.push(b'/');
        out.extend_from_slice(seg);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_paths_borrow() {
        for p in ["/", "/a", "/a/b/", "/a.b/c..d/.e", "/api/v1?x=/../y"] {
            assert!(matches!(normalize(p).unwrap(), Cow::Borrowed(_)), "{p}");
        }
    }

    #[test]
    fn normalization_is_idempotent() {
        for p in ["/a/../b//c/./%61%2f%5c", "\\x\\..\\y", "/%2e%2e/%7euser/"] {
            let once = normalize(p).unwrap().into_owned();
            assert_eq!(normalize(&once).unwrap(), once, "{p}");
        }
    }

    #[test]
    fn query_is_split_off() {
        assert_eq!(query("/a?b=1#f"), Some("b=1"));
        assert_eq!(query("/a#f?x"), None);
        assert_eq!(strip_query("/a#f?x"), "/a");
    }
}
