#!/usr/bin/env python3
"""Side-by-side report: ours / Envoy ratios from one run (stdlib only).

  report.py parse wrk|oha FILE
      One load generator result -> "rps p50_us p90_us p99_us p999_us requests non2xx sock_errors duration_s".
  report.py path envoy|ours
      Inside full-chain's namespace, after traffic: did it take the whole chain? (the client tunnel sent it to
      the waypoint, the destination tunnel accepted it), from the tunnels' own counters. Prints JSON with pass.
  report.py report --out FILE [--waypoint DIR] [--fullchain DIR] [--wp-cpus N --harness-cpus N] [--note TEXT]
      DIR holds results.csv, verify.jsonl, header.txt: `--waypoint` is a bench.sh scratch folder (scenarios
      hbone = Envoy, alt-hbone = ours), `--fullchain` a fullchain.sh one (chains envoy, ours). Prints the
      markdown and writes it to FILE.

Ratios are ours / Envoy of the medians over the rounds; with several rounds, [min-max] is the range of the
ratios taken round by round (each round measures both, back to back, so drift of the machine cancels out).
"""
import csv
import json
import os
import platform
import re
import statistics
import sys

# (label, column, scale, decimals); kB columns are shown in MiB, us latencies in ms.
WP_METRICS = [
    ("req/s", "rps", 1, 0),
    ("p50 ms", "p50_us", 1e-3, 2),
    ("p99 ms", "p99_us", 1e-3, 2),
    ("WP CPU us/req", "wp_us_per_req", 1, 1),
    ("WP RSS idle MiB", "wp_rss_idle_kb", 1 / 1024, 1),
    ("WP RSS load MiB", "wp_rss_load_max_kb", 1 / 1024, 1),
]
FC_METRICS = WP_METRICS[:4] + [
    ("chain CPU us/req", "chain_us_per_req", 1, 1),
] + WP_METRICS[4:] + [
    ("chain RSS idle MiB", "chain_rss_idle_kb", 1 / 1024, 1),
    ("chain RSS load MiB", "chain_rss_load_max_kb", 1 / 1024, 1),
]


def parse(kind, path):
    text = open(path).read()
    if kind == "wrk":
        line = [l for l in text.splitlines() if l.startswith("RESULT ")]
        if not line:
            sys.exit(f"no wrk RESULT line in {path}")
        kv = dict(x.split("=") for x in line[0].split()[1:])
        req, dur, rps = int(kv["requests"]), int(kv["duration_us"]) / 1e6, float(kv["rps"])
        pct = [int(kv[k + "_us"]) for k in ("p50", "p90", "p99", "p999")]
        non2xx = int(kv["err_status"])
        sockerr = sum(int(kv[k]) for k in ("err_connect", "err_read", "err_write", "err_timeout"))
    else:
        d = json.loads(text)
        codes = {k: int(v) for k, v in d["statusCodeDistribution"].items()}
        req, dur, rps = sum(codes.values()), d["summary"]["total"], d["summary"]["requestsPerSec"]
        lp = d["latencyPercentiles"]
        pct = [int(1e6 * (lp[k] or 0)) for k in ("p50", "p90", "p99", "p99.9")]
        non2xx = sum(v for k, v in codes.items() if not k.startswith("2"))
        sockerr = sum(int(v) for v in d["errorDistribution"].values())
    print(f"{rps:.1f} {' '.join(map(str, pct))} {req} {non2xx} {sockerr} {dur:.3f}")


def path(chain):
    import urllib.request

    def get(url):
        return urllib.request.urlopen(url, timeout=5).read().decode()

    def num(text, pattern):
        m = re.search(pattern, text, re.M)
        return int(m.group(1)) if m else None

    try:
        if chain == "ours":
            ct, dt = get("http://127.0.0.1:15100/stats"), get("http://127.0.0.1:15200/stats")
            got = {
                "client_to_waypoint": num(ct, r'^ztunnel_outbound_connections_total\{kind="waypoint"\} (\d+)'),
                "client_direct_hbone": num(ct, r'^ztunnel_outbound_connections_total\{kind="hbone"\} (\d+)'),
                "client_passthrough": num(ct, r'^ztunnel_outbound_connections_total\{kind="passthrough"\} (\d+)'),
                "dest_accepted": num(dt, r"^ztunnel_inbound_accepted_total (\d+)"),
            }
        else:
            ct = get("http://127.0.0.1:19001/stats?filter=downstream_cx_total")
            dt = get("http://127.0.0.1:19002/stats?filter=hbone_inbound.downstream_rq_total")
            got = {
                "client_to_waypoint": num(ct, r"^tcp\.outbound_via_waypoint\.downstream_cx_total: (\d+)"),
                "client_direct_hbone": num(ct, r"^tcp\.outbound_direct\.downstream_cx_total: (\d+)"),
                "client_passthrough": 0,
                "dest_accepted": num(dt, r"^http\.hbone_inbound\.downstream_rq_total: (\d+)"),
            }
    except OSError as e:
        got = {"error": f"{type(e).__name__}: {e}"[:160]}
    ok = (got.get("client_to_waypoint") or 0) > 0 and got.get("client_direct_hbone") == 0 \
        and got.get("client_passthrough") == 0 and (got.get("dest_accepted") or 0) > 0
    print(json.dumps({"path": chain, **got, "pass": ok}))
    return ok


def load_rows(folder, mode):
    """-> list of dicts with impl (ours|envoy), load, rep and the metric columns (floats or None)."""
    path = os.path.join(folder, "results.csv")
    if not os.path.exists(path):
        return []
    out = []
    for r in csv.DictReader(open(path)):
        if mode == "waypoint":
            impl = {"hbone": "envoy", "alt-hbone": "ours"}.get(r["scenario"])
        else:
            impl = r["chain"]
        if impl not in ("ours", "envoy"):
            continue
        row = {"impl": impl, "load": r["load"], "rep": r["rep"],
               "errors": int(r["non2xx"] or 0) + int(r["sock_errors"] or 0)}
        for _, col, _, _ in FC_METRICS:
            v = r.get(col)
            row[col] = float(v) if v not in (None, "") else None
        out.append(row)
    return out


def load_checks(folder, mode):
    path = os.path.join(folder, "verify.jsonl")
    checks = []
    if not os.path.exists(path):
        return checks
    for line in open(path):
        if not line.strip():
            continue
        ch = json.loads(line)
        sc = ch["scenario"]
        if mode == "waypoint":
            if sc not in ("hbone", "alt-hbone"):
                continue
            impl = "envoy" if sc == "hbone" else "ours"
        else:
            impl = sc
        d = ch["check"]
        if "hbone" in d:
            kind = ch.get("kind", "mtls")
            det = (f"{d['hbone']}: no client cert -> {'rejected' if not d['without_client_cert']['accepted'] else 'ACCEPTED'}; "
                   f"with cert -> {d['with_client_cert'].get('tls')} alpn={d['with_client_cert'].get('alpn')}")
        elif "backend_tries" in d:
            kind = "retry"
            det = f"n={d['n']} /status/503 -> {d['status']}, backend saw {d['backend_tries']} tries (want {d['expected_tries']})"
        elif "path" in d:
            kind = "path"
            det = ", ".join(f"{k}={v}" for k, v in d.items() if k not in ("path", "pass"))
        elif "v2_frac" in d:
            kind = "split"
            det = f"n={d['n']} status={d['status']} v2 share={d['v2_frac']:.3f}"
        else:
            kind, det = ch.get("kind", "?"), json.dumps(d)[:160]
        checks.append((impl, ch["rep"], kind, bool(d.get("pass")), det))
    return checks


def lkey(load):
    c, _, rate = load[1:].partition("@")
    return (1 if rate else 0, int(c), rate)


def fmt(x, nd):
    return "-" if x is None else f"{x:,.{nd}f}"


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def section(title, folder, mode, lines):
    rows = load_rows(folder, mode)
    checks = load_checks(folder, mode)
    metrics = WP_METRICS if mode == "waypoint" else FC_METRICS
    lines.append(f"## {title}\n")
    header = os.path.join(folder, "header.txt")
    if os.path.exists(header):
        lines.append("```\n" + open(header).read().strip() + "\n```\n")
    if not rows:
        lines.append("**No measurements** (see the checks below and the log in " + folder + ").\n")
    loads = sorted({r["load"] for r in rows}, key=lkey)
    # Ratio table.
    lines.append("Ratios ours / Envoy (median over rounds; [min-max] of the per-round ratios). "
                 "req/s: above 1 = ours faster; every other column: below 1 = ours better.\n")
    lines.append("| load | rounds | " + " | ".join(m[0] for m in metrics) + " | errors ours / Envoy |")
    lines.append("|---|---:|" + "---:|" * len(metrics) + "---:|")
    for load in loads:
        g = {impl: [r for r in rows if r["load"] == load and r["impl"] == impl] for impl in ("ours", "envoy")}
        reps = sorted({r["rep"] for r in g["ours"]} & {r["rep"] for r in g["envoy"]})
        cells = []
        for _, col, _, _ in metrics:
            a, b = med(r[col] for r in g["ours"]), med(r[col] for r in g["envoy"])
            if a is None or not b:
                cells.append("n/a")
                continue
            cell = f"{a / b:.2f}"
            per = []
            for rep in reps:
                x = [r[col] for r in g["ours"] if r["rep"] == rep and r[col] is not None]
                y = [r[col] for r in g["envoy"] if r["rep"] == rep and r[col]]
                if x and y:
                    per.append(x[0] / y[0])
            if len(per) > 1:
                cell += f" [{min(per):.2f}-{max(per):.2f}]"
            cells.append(cell)
        errs = f"{sum(r['errors'] for r in g['ours'])} / {sum(r['errors'] for r in g['envoy'])}"
        lines.append(f"| {load} | {len(reps)} | " + " | ".join(cells) + f" | {errs} |")
    lines.append("")
    # Raw figures.
    lines.append("Raw figures (median over rounds [min-max]):\n")
    lines.append("| load | impl | rounds | " + " | ".join(m[0] for m in metrics) + " | errors |")
    lines.append("|---|---|---:|" + "---:|" * len(metrics) + "---:|")
    for load in loads:
        for impl in ("envoy", "ours"):
            g = [r for r in rows if r["load"] == load and r["impl"] == impl]
            if not g:
                lines.append(f"| {load} | {impl} | 0 |" + " |" * len(metrics) + " |")
                continue
            cells = []
            for _, col, scale, nd in metrics:
                vals = [r[col] * scale for r in g if r[col] is not None]
                if not vals:
                    cells.append("-")
                elif len(vals) == 1:
                    cells.append(fmt(vals[0], nd))
                else:
                    cells.append(f"{fmt(statistics.median(vals), nd)} [{fmt(min(vals), nd)}-{fmt(max(vals), nd)}]")
            lines.append(f"| {load} | {impl} | {len(g)} | " + " | ".join(cells) + f" | {sum(r['errors'] for r in g)} |")
    lines.append("")
    # Checks.
    failed = [c for c in checks if not c[3]]
    verdict = "all passed" if checks and not failed else ("NONE RAN" if not checks else f"{len(failed)} FAILED")
    lines.append(f"Correctness checks ({len(checks)}, {verdict}):\n")
    lines.append("| impl | round | check | result | detail |")
    lines.append("|---|---:|---|---|---|")
    for impl, rep, kind, ok, det in checks:
        lines.append(f"| {impl} | {rep} | {kind} | {'PASS' if ok else 'FAIL'} | {det} |")
    lines.append("")
    return not failed and bool(checks)


def machine(wp_cpus, harness_cpus):
    model = "?"
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = "?"
    try:
        kb = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
        mem = f"{kb / 1048576:.0f} GiB"
    except (OSError, StopIteration):
        pass
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else ["?"]
    return [
        f"- machine: nproc={os.cpu_count()}, CPU {model}, {mem} RAM, kernel {platform.release()}, "
        f"load average now {' '.join(load)}",
        f"- pinning: the waypoint under test alone on CPU {wp_cpus}; the load generator (wrk/oha), the backend and "
        f"both tunnels on CPU {harness_cpus}; every Envoy runs with --concurrency 1; everything on loopback",
    ]


def report(args):
    opts = {"--out": None, "--waypoint": None, "--fullchain": None, "--wp-cpus": "1", "--harness-cpus": "0",
            "--note": ""}
    it = iter(args)
    for a in it:
        if a not in opts:
            sys.exit(f"unknown option {a}")
        opts[a] = next(it)
    lines = ["# Side-by-side: ours vs Envoy 1.40\n"]
    if opts["--note"]:
        lines.append(opts["--note"] + "\n")
    lines += machine(opts["--wp-cpus"], opts["--harness-cpus"]) + [""]
    lines.append("Compare only inside this run: the machine is noisy; the ratios are the result, the raw figures "
                 "are context. CPU us/req = CPU time (user+sys from /proc) of the process(es) over the measured "
                 "window / requests answered. RSS idle = after start, before any traffic; load = max sampled "
                 "every 0.5 s while loaded. cN = wrk closed loop with N keep-alive connections; cN@Rrps = oha "
                 "open loop at a fixed R req/s (latency-corrected).\n")
    ok = True
    if opts["--waypoint"]:
        ok &= section("Mode waypoint: our waypoint vs Envoy's, same Envoy tunnels (harness bench.sh, hbone vs alt-hbone)",
                      opts["--waypoint"], "waypoint", lines)
    if opts["--fullchain"]:
        ok &= section("Mode full-chain: our ztunnel -> our waypoint -> our ztunnel vs Envoy -> Envoy -> Envoy "
                      "(chain = the three processes together)", opts["--fullchain"], "full-chain", lines)
    text = "\n".join(lines) + "\n"
    if opts["--out"]:
        with open(opts["--out"], "w") as f:
            f.write(text)
    sys.stdout.write(text)
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "parse":
        parse(sys.argv[2], sys.argv[3])
        sys.exit(0)
    if len(sys.argv) == 3 and sys.argv[1] == "path":
        sys.exit(0 if path(sys.argv[2]) else 1)
    if len(sys.argv) >= 2 and sys.argv[1] == "report":
        sys.exit(report(sys.argv[2:]))
    print(__doc__)
    sys.exit(2)
