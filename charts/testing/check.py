#!/usr/bin/env python3
"""Checks what a rendered chart feeds the binaries (charts/test.sh runs it once per rendered scenario).

  check.py waypoint|ztunnel RENDERED.yaml --values CHART/values.yaml --waypoint BIN --ztunnel BIN --work DIR
  check.py live BIN READY_PORT STATS_PORT GRACE_S -- ARGS...     (inside `unshare -n`: run, probe, SIGTERM)
  check.py iptables SCRIPT                                        (inside `unshare -n`: run twice, one rule)

Every assertion names the scenario and the object; the first failure exits 1 with the reason.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import yaml


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def kebab(key):
    return re.sub(r"([a-z0-9])([A-Z])", r"\1-\2", key).lower()


def help_flags(cmd):
    """The long flags a binary accepts, from its --help (clap's `Options:` section)."""
    out = subprocess.run(cmd + ["--help"], capture_output=True, text=True, check=True).stdout
    return {m.group(1) for m in re.finditer(r"^\s+(?:-\w, )?--([a-z0-9-]+)", out, re.M)} - {"help", "version"}


def parse_args(args):
    """`--flag=value` list → [(flag, value)]; a positional (the subcommand) stays as (None, word)."""
    out = []
    for a in args:
        check(a.startswith("--") and "=" in a or not a.startswith("-"), f"arg {a!r} is not --flag=value")
        if a.startswith("--"):
            k, v = a[2:].split("=", 1)
            out.append((k, v))
        else:
            out.append((None, a))
    return out


def port_of(addr, default):
    return default if addr in (None, "off") else int(str(addr).rsplit(":", 1)[1])


def seconds(duration):
    """humantime subset the chart documents: `5s`, `500ms`, `1m 30s`, `2h`."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)\s*(ms|s|m|h)", duration)
    check(parts, f"duration {duration!r} not understood")
    return sum(int(n) * units[u] for n, u in parts)


def objects(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    by = {}
    for d in docs:
        by.setdefault(d["kind"], []).append(d)
    return by


def one(by, kind, scenario):
    items = by.get(kind, [])
    check(len(items) == 1, f"{scenario}: expected one {kind}, found {len(items)}")
    return items[0]


def run_ok(cmd, what, env=None):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    check(r.returncode == 0, f"{what}: `{' '.join(cmd)}` exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r.stdout


def pod_checks(scenario, pod, container, flags, drain_default):
    """Probes, metrics annotations, grace period, non-root: the same contract for both charts."""
    ready = port_of(flags.get("readiness"), 15021)
    stats = port_of(flags.get("stats"), 15020)
    probe = container.get("readinessProbe", {}).get("httpGet", {})
    check(probe.get("path") == "/healthz/ready", f"{scenario}: readinessProbe path {probe.get('path')}")
    check(probe.get("port") == ready, f"{scenario}: readinessProbe port {probe.get('port')} != --readiness {ready}")
    ports = {p["containerPort"] for p in container.get("ports", [])}
    check(ready in ports and stats in ports, f"{scenario}: container ports {ports} lack {ready}/{stats}")
    ann = pod["metadata"].get("annotations", {})
    check(ann.get("prometheus.io/scrape") == "true", f"{scenario}: prometheus.io/scrape missing")
    check(ann.get("prometheus.io/port") == str(stats), f"{scenario}: prometheus.io/port != --stats port {stats}")
    check(ann.get("prometheus.io/path") == "/stats/prometheus", f"{scenario}: prometheus.io/path")
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    drain = seconds(flags.get("drain-timeout", drain_default))
    check(grace >= drain, f"{scenario}: terminationGracePeriodSeconds {grace} < drain timeout {drain}s")
    sc = {**pod["spec"].get("securityContext", {}), **container.get("securityContext", {})}
    check(sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, f"{scenario}: container may run as root")
    return ready, stats, grace


def one_to_one(scenario, values_path, chart_set, accepted):
    """The chart's `flags` keys plus the flags the chart sets itself are exactly the binary's flags."""
    keys = yaml.safe_load(open(values_path))["flags"].keys()
    mapped = {kebab(k) for k in keys} | chart_set
    check(mapped == accepted, f"{scenario}: values ↔ flags differ: only in values {sorted(mapped - accepted)}, "
          f"only in the binary {sorted(accepted - mapped)}")


def mount_tree(scenario, pod, container, by, root, secret_files):
    """Lay out the container's mounted volumes under `root` as the kubelet would: ConfigMap keys as files,
    Secret items at their paths (contents from `secret_files`: key → local file)."""
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    cms = {c["metadata"]["name"]: c for c in by.get("ConfigMap", [])}
    for m in container["volumeMounts"]:
        v = volumes[m["name"]]
        dest = root + m["mountPath"]
        os.makedirs(dest, exist_ok=True)
        if "configMap" in v:
            cm = cms.get(v["configMap"]["name"])
            check(cm is not None, f"{scenario}: mounted ConfigMap {v['configMap']['name']} is not rendered")
            for k, text in cm.get("data", {}).items():
                open(os.path.join(dest, k), "w").write(text)
        elif "secret" in v:
            for item in v["secret"]["items"]:
                src = secret_files.get(item["key"])
                check(src is not None, f"{scenario}: secret key {item['key']} has no test content")
                os.makedirs(os.path.dirname(os.path.join(dest, item["path"])), exist_ok=True)
                shutil.copy(src, os.path.join(dest, item["path"]))
    return [m["mountPath"] for m in container["volumeMounts"]]


def rebase(args, mounts, root):
    """Container paths in args → the same paths under `root`."""
    out = []
    for a in args:
        for mp in mounts:
            a = re.sub(rf"^(--[a-z0-9-]+=){re.escape(mp)}(/|$)", rf"\g<1>{root}{mp}\2", a)
        out.append(a)
    return out


def dev_certs(waypoint, out, identities):
    run_ok([waypoint, "certs", "--out", out] + identities, "waypoint certs")


def live(scenario, binary, args, ready, stats, grace):
    """Run the binary with the rendered args in a private network namespace (fixed ports are the pod's own)."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        print(f"  {scenario}: live run skipped (needs root, unshare and ip)")
        return
    cmd = ["unshare", "-n", "--", sys.executable, __file__, "live", binary, str(ready), str(stats), str(grace),
           "--"] + args
    print(run_ok(cmd, f"{scenario}: live run").rstrip())


def live_inside(binary, ready, stats, grace, args):
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    log = open(os.environ.get("LIVE_LOG", "/dev/null"), "w")
    p = subprocess.Popen([binary] + args, stdout=log, stderr=subprocess.STDOUT)
    deadline, status = time.monotonic() + 30, None
    while time.monotonic() < deadline and p.poll() is None:
        try:
            status = urllib.request.urlopen(f"http://127.0.0.1:{ready}/healthz/ready", timeout=1).status
            if status == 200:
                break
        except Exception as e:  # not listening yet, or 503 while loading
            status = getattr(e, "code", None)
        time.sleep(0.05)
    if status != 200:
        p.kill()
        fail(f"live: {os.path.basename(binary)} never became ready on :{ready} (last {status}, exit {p.poll()})")
    body = urllib.request.urlopen(f"http://127.0.0.1:{stats}/stats/prometheus", timeout=2).read().decode()
    check(re.search(r"^[a-z_]+[{ ]", body, re.M), f"live: no Prometheus sample on :{stats}/stats/prometheus")
    start = time.monotonic()
    p.send_signal(signal.SIGTERM)
    try:
        code = p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        p.kill()
        fail(f"live: still running {grace}s (the pod's terminationGracePeriodSeconds) after SIGTERM")
    check(code == 0, f"live: exited {code} after SIGTERM")
    print(f"  live: ready on :{ready}, metrics on :{stats}, exited 0 {time.monotonic() - start:.1f}s after SIGTERM")


def iptables_inside(script):
    for _ in range(2):  # the init container runs again on every pod restart: the rule must not pile up
        subprocess.run(["/bin/sh", "-ec", script], check=True)
    rules = subprocess.run(["iptables", "-t", "nat", "-S", "PREROUTING"], capture_output=True, text=True,
                           check=True).stdout
    redirects = [r for r in rules.splitlines() if "REDIRECT" in r]
    check(len(redirects) == 1, f"iptables: expected one REDIRECT rule after two runs, got {redirects}")
    print(f"  iptables: {redirects[0]}")


def check_waypoint(scenario, path, values, wp, work):
    by = objects(path)
    dep, gw = one(by, "Deployment", scenario), one(by, "Gateway", scenario)
    pod = dep["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    check(c["command"] == ["/usr/local/bin/waypoint"], f"{scenario}: command {c['command']}")
    check(c["args"][0] == "run", f"{scenario}: first arg {c['args'][0]} is not `run`")
    pairs = parse_args(c["args"][1:])
    flags = dict(pairs)
    accepted = help_flags([wp, "run"])
    unknown = {k for k, _ in pairs} - accepted
    check(not unknown, f"{scenario}: flags `waypoint run` does not accept: {sorted(unknown)}")
    one_to_one(scenario, values, {"manifests", "gateway", "cert", "key", "ca"}, accepted)
    # clap parses every value (addresses, ports, durations, booleans) before --help returns.
    run_ok([wp, "run"] + c["args"][1:] + ["--help"], f"{scenario}: rendered args")
    ready, stats, grace = pod_checks(scenario, pod, c, flags, "5s")
    hbone = port_of(flags.get("listen"), 15008)
    check(hbone in {p["containerPort"] for p in c["ports"]}, f"{scenario}: no containerPort {hbone} (--listen)")
    # The Gateway: our loader's class, HBONE listener on --listen's port, and it is the one --gateway names.
    ns, name = flags["gateway"].split("/")
    check((gw["metadata"]["namespace"], gw["metadata"]["name"]) == (ns, name), f"{scenario}: --gateway != Gateway")
    check(gw["spec"]["gatewayClassName"] == "istio-waypoint", f"{scenario}: gatewayClassName")
    check(any(lst["protocol"] == "HBONE" and lst["port"] == hbone for lst in gw["spec"]["listeners"]),
          f"{scenario}: no HBONE listener on {hbone}")
    check("istio.io/waypoint-for" in gw["metadata"]["labels"], f"{scenario}: no istio.io/waypoint-for label")
    check(pod["spec"]["serviceAccountName"] == name, f"{scenario}: pod SA != waypoint name (its identity)")
    svc = one(by, "Service", scenario)
    check({p["targetPort"] for p in svc["spec"]["ports"]} <= {p["name"] for p in c["ports"]},
          f"{scenario}: Service targetPorts not all container port names")
    hpa, pdb = by.get("HorizontalPodAutoscaler", []), by.get("PodDisruptionBudget", [])
    if hpa:
        check(hpa[0]["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"], f"{scenario}: HPA target")
        check("replicas" not in dep["spec"], f"{scenario}: replicas set beside an HPA")
    labels = pod["metadata"]["labels"]
    for p in pdb:
        sel = p["spec"]["selector"]["matchLabels"]
        check(all(labels.get(k) == v for k, v in sel.items()), f"{scenario}: PDB selects no waypoint pod")
    # The pod's filesystem as mounted, with a development CA's certificate for the waypoint's identity.
    root = os.path.join(work, "root")
    dev_certs(wp, os.path.join(work, "ca"), [f"{ns}/{name}"])
    secret_src = {os.path.basename(flags[f]): os.path.join(work, "ca", ns, name, "cert.pem" if f == "cert" else
                                                           "key.pem") for f in ("cert", "key")}
    secret_src[os.path.basename(flags["ca"])] = os.path.join(work, "ca", "ca.pem")
    mounts = mount_tree(scenario, pod, c, by, root, secret_src)
    args = rebase(c["args"][1:], mounts, root)
    manifests = dict(parse_args(args))["manifests"]
    # The mounted manifests load, and the rendered Gateway binds services: at least one route Accepted by it.
    env = {**os.environ, "RUST_LOG": "error"}
    out = run_ok([wp, "check", "--manifests", manifests, "--gateway", flags["gateway"], "--json"],
                 f"{scenario}: waypoint check of the mounted ConfigMap", env)
    routes = json.loads(out)
    check(routes and all(cond["status"] == "True" for r in routes for cond in r["conditions"]),
          f"{scenario}: no route accepted by {flags['gateway']} in the mounted config:\n{out}")
    print(f"  {scenario}: {len(pairs)} args accepted; {len(routes)} route(s) accepted by {flags['gateway']}")
    live(scenario, wp, ["run"] + args, ready, stats, grace)


def check_ztunnel(scenario, path, values, wp, zt, work):
    by = objects(path)
    ds = one(by, "DaemonSet", scenario)
    pod = ds["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    check(c["command"] == ["/usr/local/bin/ztunnel"], f"{scenario}: command {c['command']}")
    env = {e["name"]: e for e in c.get("env", [])}
    node_ref = env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    check(node_ref == "spec.nodeName", f"{scenario}: NODE_NAME is not the downward API's spec.nodeName")
    args = [a.replace("$(NODE_NAME)", "node-under-test") for a in c["args"]]
    pairs = parse_args(args)
    flags = dict(pairs)
    accepted = help_flags([zt])
    unknown = {k for k, _ in pairs} - accepted
    check(not unknown, f"{scenario}: flags `ztunnel` does not accept: {sorted(unknown)}")
    one_to_one(scenario, values, {"manifests", "certs", "node"}, accepted)
    run_ok([zt] + args + ["--help"], f"{scenario}: rendered args")
    ready, stats, grace = pod_checks(scenario, pod, c, flags, "5s")
    init = pod["spec"].get("initContainers", [])
    if "redirect" in flags:
        (ipt,) = init
        script = ipt["args"][0]
        port = port_of(flags["redirect"], None)
        check(f"--to-ports {port}" in script, f"{scenario}: iptables rule does not target --redirect port {port}")
        caps = ipt["securityContext"]["capabilities"]["add"]
        check("NET_ADMIN" in caps, f"{scenario}: the iptables init container lacks NET_ADMIN")
        check(pod["spec"].get("hostNetwork") is True, f"{scenario}: redirect needs the node's network namespace")
        if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("iptables"):
            print(run_ok(["unshare", "-n", "--", sys.executable, __file__, "iptables", script],
                         f"{scenario}: iptables init script").rstrip())
    else:
        check(not init, f"{scenario}: an iptables init container without --redirect")
    # Certificates in the binary's layout (<mount>/ca.pem, <mount>/<ns>/<sa>/{cert,key}.pem) from secret keys.
    vol = next(v for v in pod["spec"]["volumes"] if "secret" in v)
    ids = [i["path"][: -len("/cert.pem")] for i in vol["secret"]["items"] if i["path"].endswith("/cert.pem")]
    dev_certs(wp, os.path.join(work, "ca"), ids)
    src = {"ca.pem": os.path.join(work, "ca", "ca.pem")}
    for i in ids:
        ns, sa = i.split("/")
        for f in ("cert", "key"):
            src[f"{ns}_{sa}_{f}.pem"] = os.path.join(work, "ca", ns, sa, f"{f}.pem")
    root = os.path.join(work, "root")
    mounts = mount_tree(scenario, pod, c, by, root, src)
    args = rebase(args, mounts, root)
    certs = dict(parse_args(args))["certs"]
    for i in ids:
        for f in ("cert.pem", "key.pem"):
            check(os.path.isfile(os.path.join(certs, i, f)), f"{scenario}: {i}/{f} not where ztunnel reads it")
    out = run_ok([wp, "check", "--manifests", dict(parse_args(args))["manifests"], "--json"],
                 f"{scenario}: the mounted manifests load", {**os.environ, "RUST_LOG": "error"})
    print(f"  {scenario}: {len(pairs)} args accepted; {len(json.loads(out))} route status(es) in the mounted config")
    live(scenario, zt, args, ready, stats, grace)


def main(argv):
    if argv[0] == "live":
        i = argv.index("--")
        binary, ready, stats, grace = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
        return live_inside(binary, ready, stats, grace, argv[i + 1:])
    if argv[0] == "iptables":
        return iptables_inside(argv[1])
    kind, rendered = argv[0], argv[1]
    opts = dict(zip(argv[2::2], argv[3::2]))
    scenario = os.path.basename(rendered).rsplit(".", 1)[0]
    work = opts["--work"]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    if kind == "waypoint":
        check_waypoint(scenario, rendered, opts["--values"], opts["--waypoint"], work)
    else:
        check_ztunnel(scenario, rendered, opts["--values"], opts["--waypoint"], opts["--ztunnel"], work)


if __name__ == "__main__":
    main(sys.argv[1:])
