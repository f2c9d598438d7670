//! Where a token is looked for (`fromHeaders`, `fromParams`, `fromCookies`; Istio's defaults are
//! `Authorization: Bearer <token>` and the `access_token` query parameter) and taking it out of a request.
//! Pure: a header map and a query string in, at most one token per location out.

use std::borrow::Cow;

use http::header::{HeaderName, AUTHORIZATION, COOKIE};
use http::HeaderMap;

/// One token location.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Location {
    /// A header whose value is `<prefix><token>`; the prefix is matched ignoring ASCII case
    /// (`Bearer ` and `bearer ` alike, as RFC 6750's scheme is case-insensitive).
    Header { name: HeaderName, prefix: String },
    /// A query parameter (its value percent-decoded).
    Param(String),
    /// A cookie.
    Cookie(String),
}

impl Location {
    /// Istio's defaults when a rule names no location.
    pub(crate) fn defaults() -> [Location; 2] {
        [
            Location::Header {
                name: AUTHORIZATION,
                prefix: "Bearer ".into(),
            },
            Location::Param("access_token".into()),
        ]
    }

    /// The token at this location, if the request carries one. A header present without the prefix holds no
    /// token (`Authorization: Basic ...` is not a JWT request).
    pub(crate) fn extract<'r>(
        &self,
        headers: &'r HeaderMap,
        query: Option<&'r str>,
    ) -> Option<Cow<'r, str>> {
        match self {
            Location::Header { name, prefix } => headers.get_all(name).iter().find_map(|v| {
                let v = v.to_str().ok()?;
                let head = v.get(..prefix.len())?;
                head.eq_ignore_ascii_case(prefix)
                    .then(|| Cow::Borrowed(v[prefix.len()..].trim()))
                    .filter(|t| !t.is_empty())
            }),
            Location::Param(name) => form_urlencoded::parse(query?.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v)
                .filter(|t| !t.is_empty()),
            Location::Cookie(name) => headers.get_all(COOKIE).iter().find_map(|v| {
                v.to_str().ok()?.split(';').find_map(|pair| {
                    let (k, t) = pair.trim().split_once('=')?;
                    (k == name && !t.is_empty()).then(|| Cow::Borrowed(t.trim_matches('"')))
                })
            }),
        }
    }

    /// The header to drop when the token is not forwarded (`forwardOriginalToken: false`). Like Envoy, a token
    /// in a query parameter or a cookie is left in place.
    pub(crate) fn header(&self) -> Option<&HeaderName> {
        match self {
            Location::Header { name, .. } => Some(name),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn extraction_table() {
        let [bearer, access_token] = Location::defaults();
        let custom = Location::Header {
            name: HeaderName::from_static("x-jwt"),
            prefix: "Token ".into(),
        };
        let bare = Location::Header {
            name: HeaderName::from_static("x-jwt"),
            prefix: String::new(),
        };
        let cookie = Location::Cookie("session".into());
        type Case<'a> = (
            &'a Location,
            &'a [(&'a str, &'a str)],
            Option<&'a str>,
            Option<&'a str>,
        );
        let cases: &[Case] = &[
            (
                &bearer,
                &[("authorization", "Bearer a.b.c")],
                None,
                Some("a.b.c"),
            ),
            (
                &bearer,
                &[("authorization", "bearer a.b.c ")],
                None,
                Some("a.b.c"),
            ),
            (&bearer, &[("authorization", "Basic dXNlcg==")], None, None),
            (&bearer, &[("authorization", "Bearer ")], None, None),
            (
                &bearer,
                &[("authorization", "Basic x"), ("authorization", "Bearer t")],
                None,
                Some("t"),
            ),
            (&bearer, &[], Some("access_token=t"), None),
            (
                &access_token,
                &[],
                Some("a=1&access_token=x.y.z"),
                Some("x.y.z"),
            ),
            (
                &access_token,
                &[],
                Some("access_token=x%2Ey.z"),
                Some("x.y.z"),
            ),
            (&access_token, &[], Some("access_token="), None),
            (&access_token, &[], Some("other=x"), None),
            (&access_token, &[], None, None),
            (&custom, &[("x-jwt", "Token t1")], None, Some("t1")),
            (&custom, &[("x-jwt", "t1")], None, None),
            (&bare, &[("x-jwt", "t1")], None, Some("t1")),
            (
                &cookie,
                &[("cookie", "a=1; session=t.o.k; b=2")],
                None,
                Some("t.o.k"),
            ),
            (
                &cookie,
                &[("cookie", "a=1"), ("cookie", "session=\"q\"")],
                None,
                Some("q"),
            ),
            (&cookie, &[("cookie", "xsession=t")], None, None),
        ];
        for (loc, h, q, want) in cases {
            let h2 = headers(h);
            let got = loc.extract(&h2, *q);
            assert_eq!(got.as_deref(), *want, "{loc:?} {h:?} {q:?}");
        }
    }
}
