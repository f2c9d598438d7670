//! Path normalization table: what every bypass attempt normalizes to, and which are refused (400).

use authz::path::{normalize, normalize_with, EscapedSlashes, PathError, PathOptions};

#[test]
fn normalizes_like_istio() {
    let cases: &[(&str, &str)] = &[
        // nothing to do
        ("/", "/"),
        ("/admin", "/admin"),
        ("/admin/", "/admin/"),
        ("*", "*"),
        // query and fragment are not part of the path
        ("/admin?x=1", "/admin"),
        ("/admin?x=/../../y", "/admin"),
        ("/admin#frag", "/admin"),
        ("/a%3Fb?c", "/a%3Fb"),
        // dot segments (RFC 3986)
        ("/admin/../admin", "/admin"),
        ("/public/../admin", "/admin"),
        ("/admin/.", "/admin/"),
        ("/admin/./", "/admin/"),
        ("/./admin", "/admin"),
        ("/admin/x/..", "/admin/"),
        ("/..", "/"),
        ("/../../admin", "/admin"),
        ("/a/b/../../../admin", "/admin"),
        ("/admin/..x", "/admin/..x"),
        ("/admin/.x", "/admin/.x"),
        ("/admin...", "/admin..."),
        // encoded dots are dots
        ("/%2e%2e/admin", "/admin"),
        ("/public/%2e%2e/admin", "/admin"),
        ("/public/%2E%2E/admin", "/admin"),
        ("/public/.%2e/admin", "/admin"),
        ("/admin/%2e", "/admin/"),
        // merged slashes (after dots, as Envoy)
        ("//admin", "/admin"),
        ("///admin//x///", "/admin/x/"),
        ("/a//../admin", "/a/admin"),
        ("/public//../admin", "/public/admin"),
        // unreserved characters decoded, others kept with upper-case hex
        ("/%61dmin", "/admin"),
        ("/%41DMIN", "/ADMIN"),
        ("/adm%69n", "/admin"),
        ("/%7euser/%2d%5f", "/~user/-_"),
        ("/a%20b", "/a%20b"),
        ("/a%3bb", "/a%3Bb"),
        ("/a%25", "/a%25"),
        ("/a%252e%252e/admin", "/a%252e%252e/admin"),
        ("/%c3%a4", "/%C3%A4"),
        // escaped slashes kept (Istio default KEEP_UNCHANGED)
        ("/admin%2f", "/admin%2F"),
        ("/admin%2Fx", "/admin%2Fx"),
        ("/public%2f..%2fadmin", "/public%2F..%2Fadmin"),
        ("/admin%5c", "/admin%5C"),
        // backslash is a separator
        ("\\admin", "/admin"),
        ("/public\\..\\admin", "/admin"),
        ("/admin\\", "/admin/"),
        // not normalized: case and path parameters
        ("/ADMIN", "/ADMIN"),
        ("/admin;x", "/admin;x"),
        ("/admin;/../x", "/x"),
        // raw non-ASCII kept
        ("/ä/../b", "/b"),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize(raw).as_deref(), Ok(*want), "normalize({raw:?})");
        // idempotent: the forwarded path normalizes to itself
        assert_eq!(normalize(want).as_deref(), Ok(*want), "normalize({want:?})");
    }
}

#[test]
fn refuses_what_cannot_be_judged() {
    let cases: &[(&str, PathError)] = &[
        ("", PathError::Empty),
        ("?x", PathError::Empty),
        ("admin", PathError::NotAbsolute),
        ("http://h/admin", PathError::NotAbsolute),
        ("/admin%00", PathError::Nul { at: 6 }),
        ("/a%00/../admin", PathError::Nul { at: 2 }),
        ("/admin%", PathError::InvalidEscape { at: 6 }),
        ("/admin%2", PathError::InvalidEscape { at: 6 }),
        ("/admin%zz", PathError::InvalidEscape { at: 6 }),
        ("/%%32%65", PathError::InvalidEscape { at: 1 }),
        ("/ad\0min", PathError::ControlChar { at: 3 }),
        ("/ad min", PathError::ControlChar { at: 3 }),
        ("/ad\tmin", PathError::ControlChar { at: 3 }),
        ("/admin\x7f", PathError::ControlChar { at: 6 }),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize(raw), Err(*want), "normalize({raw:?})");
    }
    // an error names a byte offset the proxy can log
    assert!(PathError::Nul { at: 6 }.to_string().contains("%00"));
}

#[test]
fn escaped_slash_actions_are_explicit() {
    let reject = PathOptions {
        escaped_slashes: EscapedSlashes::Reject,
        ..PathOptions::default()
    };
    let unescape = PathOptions {
        escaped_slashes: EscapedSlashes::Unescape,
        ..PathOptions::default()
    };
    assert_eq!(
        normalize_with("/a%2Fb", reject),
        Err(PathError::EscapedSlash { at: 2 })
    );
    assert_eq!(
        normalize_with("/a%5cb", reject),
        Err(PathError::EscapedSlash { at: 2 })
    );
    assert_eq!(normalize_with("/a/b", reject).as_deref(), Ok("/a/b"));
    for (raw, want) in [
        ("/public%2f..%2fadmin", "/admin"),
        ("/admin%2F", "/admin/"),
        ("/a%2F%2Fb", "/a/b"),
        ("/a%5C..%5Cadmin", "/admin"),
    ] {
        assert_eq!(normalize_with(raw, unescape).as_deref(), Ok(want), "{raw}");
    }
    let keep_slashes = PathOptions {
        merge_slashes: false,
        ..PathOptions::default()
    };
    assert_eq!(
        normalize_with("//a//b", keep_slashes).as_deref(),
        Ok("//a//b")
    );
    assert_eq!(
        normalize_with("/a//../b", keep_slashes).as_deref(),
        Ok("/a/b")
    );
}
