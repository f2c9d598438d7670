//! Encoded-path bypass attempts against a DENY on `/admin*`, answered per Istio's normalization (Envoy's
//! `normalize_path`, `merge_slashes`, escaped slashes kept): every spelling of `/admin` is denied, `/ADMIN` is
//! another path (matching is case-sensitive), `%00` and bad escapes are refused with 400.

use super::*;

/// DENY every path starting with `/admin`, for every caller; everything else is open.
fn deny_admin() -> String {
    policy(
        "deny-admin",
        &service("api"),
        "  action: DENY\n  rules:\n  - to: [{operation: {paths: [\"/admin*\"]}}]",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_spellings_of_a_denied_path_are_denied() {
    let tb = mesh(&deny_admin()).await;
    let cases = [
        // (path as sent, verdict)
        ("/admin", "403 RBAC"),
        ("/admin/users", "403 RBAC"),
        ("/%61dmin", "403 RBAC"), // escaped unreserved characters are decoded
        ("/%61%64%6D%69%6E", "403 RBAC"), // every one of them, any hex case
        ("//admin", "403 RBAC"),  // slashes merged
        ("///admin//users", "403 RBAC"),
        ("/x/../admin", "403 RBAC"),     // dot segments resolved
        ("/x/%2e%2e/admin", "403 RBAC"), // escaped dots too
        ("/../../admin", "403 RBAC"),    // never above the root
        ("/admin/./", "403 RBAC"),       // `/admin/`
        ("/./admin/.", "403 RBAC"),      // `/admin/`
        ("/admin?x=1", "403 RBAC"),      // the query is not the path
        ("/admin%2Fusers", "403 RBAC"), // `%2F` kept escaped: `/admin%2Fusers` starts with `/admin`
        ("/administrator", "403 RBAC"), // a prefix is a string prefix, as in Istio
        ("/ADMIN", "200 api-0"),        // case-sensitive, as Istio: another path
        ("/Admin/users", "200 api-0"),
        ("/api/admin", "200 api-0"),
        ("/public?next=/admin", "200 api-0"),
        ("/admin%00", "400 bad request"), // NUL: refused
        ("/%00/admin", "400 bad request"),
        ("/admin%zz", "400 bad request"), // not an escape
    ];
    let mut wrong = vec![];
    for (path, want) in cases {
        let got = verdict(&get(&tb, "frontend", API, path).await);
        if got != want {
            wrong.push(format!("{path}: got {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_spellings_pass_when_no_policy_denies_them() {
    // Control: without the DENY (an ALLOW for everyone instead, so authorization still runs), the very same
    // requests reach the application — the 403s above are the policy's doing, not the client's or the router's.
    let allow_all = policy(
        "allow-all",
        &service("api"),
        "  action: ALLOW\n  rules: [{}]",
    );
    let tb = mesh(&allow_all).await;
    for path in ["/%61dmin", "//admin", "/x/../admin", "/admin/./", "/ADMIN"] {
        let r = get(&tb, "frontend", API, path).await;
        assert_eq!(verdict(&r), "200 api-0", "{path}");
    }
    // `%00` is refused by normalization itself, whatever the policy says.
    assert_eq!(
        verdict(&get(&tb, "frontend", API, "/a%00").await),
        "400 bad request"
    );
    tb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_sees_the_path_that_was_judged() {
    // Envoy normalizes `:path` in the connection manager, before routing and authorization, and forwards the
    // normalized path (query kept), so the application sees exactly what the policy judged.
    let allow_all = policy(
        "allow-all",
        &service("api"),
        "  action: ALLOW\n  rules: [{}]",
    );
    let tb = mesh(&allow_all).await;
    for (sent, seen) in [
        ("/%61dmin", "/admin"),
        ("//admin//x", "/admin/x"),
        ("/x/../admin?q=1", "/admin?q=1"),
        ("/admin/./", "/admin/"),
        ("/a%2Fb", "/a%2Fb"),
    ] {
        let r = get(&tb, "frontend", API, sent).await;
        assert_eq!(r.echo().path, seen, "{sent}");
    }
    tb.shutdown().await;
}
