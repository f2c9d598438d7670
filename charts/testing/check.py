#!/usr/bin/env python3
"""Checks what a rendered chart feeds the binaries (charts/test.sh runs it once per rendered scenario).

  check.py waypoint|ztunnel|waypoint-controller RENDERED.yaml --values CHART/values.yaml --waypoint BIN
           --ztunnel BIN --work DIR [--expect "key=value ..."]
  check.py live BIN READY_PORT STATS_PORT GRACE_S -- ARGS...     (inside `unshare -n`: run, probe, SIGTERM)
  check.py iptables SCRIPT                                        (inside `unshare -n`: run twice, one rule)

Every assertion names the scenario and the object; the first failure exits 1 with the reason.

RBAC: the grants bound to each pod's ServiceAccount (bindings followed to the rendered Roles/ClusterRoles) must
equal exactly what the code needs — the watched kinds are read from crates/kube-source/src/kinds.rs, so a new
kind there fails here until the charts grant it; a missing or an extra verb is reported by name.
`--expect` (waypoint-controller): `image=REF`, `control-plane=on|off`, `mtls=on|off`.
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

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RBAC_KINDS = ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
# The status subresources `waypoint run --source kube` writes (get + merge patch), crates/kube-source/src/status.rs.
WAYPOINT_STATUS = {"Gateway", "HTTPRoute", "GRPCRoute", "AuthorizationPolicy", "RequestAuthentication"}
# Kinds a ztunnel does not watch (ztunnel/src/source.rs, node_watch_options).
ZTUNNEL_UNWATCHED = {"HTTPRoute", "GRPCRoute"}
# What the controller does to the objects it generates (crates/controller/src/reconcile.rs: get, create, merge
# patch, delete; reflectors list/watch; never a replace, so no `update`).
GENERATED_VERBS = ["get", "list", "watch", "create", "patch", "delete"]
# The flags of subcommands a build may not have yet (then the chart is checked against this list only, and the
# run says so): `waypoint controller`.
SPEC_FLAGS = {
    "controller": {"kubeconfig", "api-server", "image", "namespace", "leader-elect", "lease-namespace",
                   "trust-domain", "log-level", "control-plane", "control-plane-identity"},
}


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


def subcommand_flags(wp, sub, scenario):
    """`waypoint SUB`'s flags from the binary; SPEC_FLAGS[SUB] (said out loud) when this build lacks SUB."""
    r = subprocess.run([wp, sub, "--help"], capture_output=True, text=True)
    if r.returncode == 0:
        return help_flags([wp, sub]), True
    check(sub in SPEC_FLAGS, f"{scenario}: `waypoint {sub} --help` failed:\n{r.stderr}")
    print(f"  {scenario}: this waypoint build has no `{sub}` subcommand: its args are checked against the "
          f"specified flags only, not against the binary")
    return SPEC_FLAGS[sub], False


def watched_kinds():
    """kind → (API group, plural), from crates/kube-source/src/kinds.rs (`Kind::X => (group, ver, Kind, plural)`)."""
    text = open(os.path.join(REPO, "crates/kube-source/src/kinds.rs")).read()
    consts = dict(re.findall(r'const (\w+): &str = "([^"]*)";', text))
    out = {}
    for group, kind, plural in re.findall(
            r'Kind::\w+\s*=>\s*\(\s*("[^"]*"|\w+),\s*"[^"]*",\s*"([^"]+)",\s*"([^"]+)",?\s*\)', text):
        out[kind] = (group.strip('"') if group.startswith('"') else consts[group], plural)
    check(len(out) >= 11 and "Pod" in out, f"kinds.rs: could not read the watched kinds ({sorted(out)})")
    return out


def watch_grants(scope, kinds):
    return {(scope, g, plural, "*", v) for g, plural in kinds for v in ("list", "watch")}


def lease_grants(ns, name):
    """An election: create any Lease in `ns` (a name cannot narrow create), get/update the one named."""
    return {(ns, "coordination.k8s.io", "leases", "*", "create")} | \
        {(ns, "coordination.k8s.io", "leases", name, v) for v in ("get", "update")}


def grants(scenario, by, sa_ns, sa_name):
    """What the rendered RBAC grants ServiceAccount sa_ns/sa_name: {(scope, group, resource, name, verb)}, scope
    `*` through a ClusterRoleBinding, else the RoleBinding's namespace; name `*` without resourceNames."""
    roles = {(r["kind"], r["metadata"].get("namespace") if r["kind"] == "Role" else None, r["metadata"]["name"]): r
             for k in ("Role", "ClusterRole") for r in by.get(k, [])}
    out = set()
    for b in by.get("ClusterRoleBinding", []) + by.get("RoleBinding", []):
        bname = f"{b['kind']} {b['metadata']['name']}"
        subjects = b.get("subjects") or []
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa_name and s.get("namespace") == sa_ns
                   for s in subjects):
            continue
        ref = b["roleRef"]
        check(ref.get("apiGroup") == "rbac.authorization.k8s.io", f"{scenario}: {bname}: roleRef apiGroup")
        scope = "*" if b["kind"] == "ClusterRoleBinding" else b["metadata"]["namespace"]
        check(b["kind"] == "RoleBinding" or ref["kind"] == "ClusterRole", f"{scenario}: {bname} refers to a Role")
        key = (ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"])
        role = roles.get(key)
        check(role is not None, f"{scenario}: {bname} refers to {key[0]} {key[1] or ''}/{key[2]}, not rendered")
        for rule in role.get("rules") or []:
            for g in rule.get("apiGroups") or []:
                for res in rule.get("resources") or []:
                    for name in rule.get("resourceNames") or ["*"]:
                        out |= {(scope, g, res, name, v) for v in rule.get("verbs") or []}
    return out


def rbac_exact(scenario, by, sa_ns, sa_name, want):
    """The ServiceAccount is rendered, and what is bound to it is exactly `want`: every missing and every extra
    grant is named."""
    check(any(s["metadata"]["name"] == sa_name and s["metadata"].get("namespace") == sa_ns
              for s in by.get("ServiceAccount", [])), f"{scenario}: ServiceAccount {sa_ns}/{sa_name} not rendered")
    got = grants(scenario, by, sa_ns, sa_name)
    fmt = lambda gs: ", ".join(f"{v} {g or 'core'}/{r}{'' if n == '*' else ' ' + n} in {s}"
                               for s, g, r, n, v in sorted(gs))
    check(not want - got, f"{scenario}: RBAC of {sa_ns}/{sa_name} is missing: {fmt(want - got)}")
    check(not got - want, f"{scenario}: RBAC of {sa_ns}/{sa_name} grants more than the code needs: "
          f"{fmt(got - want)}")
    print(f"  {scenario}: RBAC of {sa_ns}/{sa_name}: exactly the {len(want)} grants needed")


def only_subjects(scenario, by, allowed):
    """Every rendered binding binds only these ServiceAccounts (ns, name): a binding's subject is the chart's SA."""
    for b in by.get("ClusterRoleBinding", []) + by.get("RoleBinding", []):
        for sub in b.get("subjects") or []:
            who = (sub.get("namespace"), sub.get("name"))
            check(sub.get("kind") == "ServiceAccount" and who in allowed,
                  f"{scenario}: {b['kind']} {b['metadata']['name']} binds {sub.get('kind')} {who[0]}/{who[1]}, "
                  f"not the chart's ServiceAccount ({sorted(allowed)})")


def no_rbac(scenario, by, why):
    found = [f"{k} {o['metadata']['name']}" for k in RBAC_KINDS for o in by.get(k, [])]
    check(not found, f"{scenario}: RBAC rendered {why}: {found}")


def hardened(scenario, pod, c):
    """Non-root, read-only root filesystem, no privilege escalation, every capability dropped."""
    sc = {**pod["spec"].get("securityContext", {}), **c.get("securityContext", {})}
    check(sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, f"{scenario}: {c['name']} may run as root")
    check(sc.get("readOnlyRootFilesystem") is True, f"{scenario}: {c['name']}: root filesystem writable")
    check(sc.get("allowPrivilegeEscalation") is False, f"{scenario}: {c['name']}: privilege escalation allowed")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc["capabilities"].get("add"),
          f"{scenario}: {c['name']}: capabilities not all dropped")


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
    hardened(scenario, pod, c)
    source = flags.get("source", "dir")
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
    # RBAC: exactly what `--source kube` needs, bound to the pod's ServiceAccount; none in dir and push modes.
    if source == "kube":
        kinds = watched_kinds()
        check(WAYPOINT_STATUS <= kinds.keys(), f"{scenario}: status kinds {WAYPOINT_STATUS - kinds.keys()} unknown")
        want = watch_grants("*", kinds.values())
        want |= {("*", g, f"{plural}/status", "*", v) for k, (g, plural) in kinds.items() if k in WAYPOINT_STATUS
                 for v in ("get", "patch")}
        if flags.get("leader-elect", "true") == "true":
            want |= lease_grants(ns, f"{name}-waypoint-status")
            pod_name = {e["name"]: e for e in c.get("env", [])}.get("POD_NAME", {})
            check(pod_name.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
                  f"{scenario}: --leader-elect without POD_NAME from metadata.name (the Lease holder)")
        rbac_exact(scenario, by, ns, pod["spec"]["serviceAccountName"], want)
        only_subjects(scenario, by, {(ns, pod["spec"]["serviceAccountName"])})
    else:
        no_rbac(scenario, by, f"with --source {source}")
    if source != "dir":
        check("manifests" not in flags, f"{scenario}: --manifests passed with --source {source}")
        check(not any("configMap" in v for v in pod["spec"]["volumes"]), f"{scenario}: a ConfigMap mounted with "
              f"--source {source}")
        check(source != "push" or flags.get("control-plane"), f"{scenario}: --source push without --control-plane")
        print(f"  {scenario}: {len(pairs)} args accepted; --source {source}: not loaded nor run here (needs "
              f"{'an API server' if source == 'kube' else 'a control plane'})")
        return
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
    hardened(scenario, pod, c)
    source = flags.get("source", "dir")
    sa = pod["spec"].get("serviceAccountName")
    check(sa, f"{scenario}: the DaemonSet names no serviceAccountName")
    ns = ds["metadata"]["namespace"]
    if source == "kube":
        kinds = watched_kinds()
        check(ZTUNNEL_UNWATCHED <= kinds.keys(), f"{scenario}: unwatched kinds {ZTUNNEL_UNWATCHED} unknown")
        rbac_exact(scenario, by, ns, sa, watch_grants("*", [v for k, v in kinds.items()
                                                             if k not in ZTUNNEL_UNWATCHED]))
        only_subjects(scenario, by, {(ns, sa)})
    else:
        check(any(s["metadata"]["name"] == sa for s in by.get("ServiceAccount", [])),
              f"{scenario}: ServiceAccount {sa} not rendered")
        no_rbac(scenario, by, f"with --source {source}")
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
    if source != "dir":
        check("manifests" not in flags, f"{scenario}: --manifests passed with --source {source}")
        check(not any("configMap" in v for v in pod["spec"]["volumes"]), f"{scenario}: a ConfigMap mounted with "
              f"--source {source}")
        check(source != "push" or flags.get("control-plane"), f"{scenario}: --source push without --control-plane")
        if source == "push" and flags["control-plane"].startswith("https://"):
            me = flags.get("identity", "istio-system/ztunnel")
            check(me in ids, f"{scenario}: --identity {me} (presented to the control plane) has no certificate in "
                  f"certs.identities {ids}")
        print(f"  {scenario}: {len(pairs)} args accepted; --source {source}: not loaded nor run here (needs "
              f"{'an API server' if source == 'kube' else 'a control plane'})")
        return
    out = run_ok([wp, "check", "--manifests", dict(parse_args(args))["manifests"], "--json"],
                 f"{scenario}: the mounted manifests load", {**os.environ, "RUST_LOG": "error"})
    print(f"  {scenario}: {len(pairs)} args accepted; {len(json.loads(out))} route status(es) in the mounted config")
    live(scenario, zt, args, ready, stats, grace)


def container_of(by, sub):
    """The Deployments whose single container runs `waypoint SUB`."""
    out = []
    for d in by.get("Deployment", []):
        (c,) = d["spec"]["template"]["spec"]["containers"]
        if c.get("args", [None])[0] == sub:
            out.append((d, d["spec"]["template"], c))
    return out


def flags_checked(scenario, wp, sub, c, values_flags, chart_set):
    """The container runs `waypoint SUB --flag=value…`: every flag accepted, values ↔ flags one to one, and
    (when the build has SUB) clap parses every value."""
    check(c["command"] == ["/usr/local/bin/waypoint"], f"{scenario}: {sub}: command {c['command']}")
    pairs = parse_args(c["args"][1:])
    accepted, real = subcommand_flags(wp, sub, scenario)
    unknown = {k for k, _ in pairs} - accepted
    check(not unknown, f"{scenario}: flags `waypoint {sub}` does not accept: {sorted(unknown)}")
    mapped = {kebab(k) for k in values_flags} | chart_set
    check(mapped == accepted, f"{scenario}: {sub}: values ↔ flags differ: only in values {sorted(mapped - accepted)}, "
          f"only in the binary {sorted(accepted - mapped)}")
    if real:
        run_ok([wp, sub] + c["args"][1:] + ["--help"], f"{scenario}: rendered `{sub}` args")
    return dict(pairs), pairs


def secret_mounted(scenario, pod, c, path):
    """`path` is an item of a Secret volume mounted in `c`."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    for m in c.get("volumeMounts") or []:
        v = volumes.get(m["name"], {})
        if "secret" in v and path.startswith(m["mountPath"] + "/"):
            items = {i["path"] for i in v["secret"].get("items", [])}
            check(path[len(m["mountPath"]) + 1:] in items, f"{scenario}: {path} is not an item of secret "
                  f"{v['secret']['secretName']}")
            return v["secret"]["secretName"]
    fail(f"{scenario}: {path} is on no mounted Secret")


def check_controller(scenario, path, values_path, wp, work, expect):
    by = objects(path)
    values = yaml.safe_load(open(values_path))
    ctl = container_of(by, "controller")
    check(len(ctl) == 1, f"{scenario}: expected one Deployment running `waypoint controller`, found {len(ctl)}")
    ((dep, pod, c),) = ctl
    ns = dep["metadata"]["namespace"]
    flags, pairs = flags_checked(scenario, wp, "controller", c, values["flags"], {"image", "lease-namespace"})
    hardened(scenario, pod, c)
    check(flags.get("image") == expect["image"], f"{scenario}: --image {flags.get('image')} != {expect['image']}")
    sa = pod["spec"]["serviceAccountName"]
    scope = flags.get("namespace") or "*"
    want = {(scope, "gateway.networking.k8s.io", "gateways", "*", v) for v in ("get", "list", "watch")}
    want |= {(scope, "gateway.networking.k8s.io", "gateways/status", "*", v) for v in ("get", "patch")}
    want |= {(scope, g, r, "*", v) for g, r in (("apps", "deployments"), ("", "services"), ("", "serviceaccounts"))
             for v in GENERATED_VERBS}
    if flags.get("leader-elect", "true") == "true":
        want |= lease_grants(flags["lease-namespace"], "waypoint-controller")
        pod_name = {e["name"]: e for e in c.get("env", [])}.get("POD_NAME", {})
        check(pod_name.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
              f"{scenario}: --leader-elect without POD_NAME from metadata.name (the Lease holder)")
    rbac_exact(scenario, by, ns, sa, want)
    allowed = {(ns, sa)}
    print(f"  {scenario}: controller: {len(pairs)} args accepted, --image={flags['image']}")

    cps = container_of(by, "control-plane")
    services = by.get("Service", [])
    if expect["control-plane"] == "off":
        check(not cps and not services, f"{scenario}: a control plane rendered while controlPlane.enabled is off")
        check(expect["mtls"] == "off", f"{scenario}: --expect mtls=on without a control plane")
        # No control plane (and none named in values): the generated waypoints run --source kube.
        for f in ("control-plane", "control-plane-identity"):
            check(f not in flags, f"{scenario}: --{f}={flags.get(f)} without a control plane")
        print(f"  {scenario}: generated waypoints: --source kube (no --control-plane)")
        only_subjects(scenario, by, allowed)
        return
    check(len(cps) == 1, f"{scenario}: expected one control-plane Deployment, found {len(cps)}")
    ((cdep, cpod, cc),) = cps
    cflags, cpairs = flags_checked(scenario, wp, "control-plane", cc, values["controlPlane"]["flags"],
                                   {"manifests", "cert", "key", "ca"})
    hardened(scenario, cpod, cc)
    grpc = port_of(cflags.get("listen"), 15010)
    port_names = {p["name"]: p["containerPort"] for p in cc["ports"]}
    check(grpc in port_names.values(), f"{scenario}: no containerPort {grpc} (--listen)")
    for probe in ("readinessProbe", "startupProbe"):
        target = cc.get(probe, {}).get("tcpSocket", {}).get("port")
        check(port_names.get(target, target) == grpc, f"{scenario}: control plane {probe} not on --listen {grpc}")
    (svc,) = [s for s in services if s["metadata"]["name"] == cdep["metadata"]["name"]] or [None]
    check(svc is not None, f"{scenario}: no Service for the control plane")
    labels = cpod["metadata"]["labels"]
    check(all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), f"{scenario}: Service selects "
          f"no control-plane pod")
    for p in svc["spec"]["ports"]:
        check(port_names.get(p["targetPort"], p["targetPort"]) == grpc, f"{scenario}: Service targets "
              f"{p['targetPort']}, not --listen {grpc}")
    certs = [f for f in ("cert", "key", "ca") if f in cflags]
    if expect["mtls"] == "on":
        check(len(certs) == 3, f"{scenario}: mTLS expected but only {certs} passed")
        secrets = {secret_mounted(scenario, cpod, cc, cflags[f]) for f in certs}
        print(f"  {scenario}: control plane: mTLS from secret {', '.join(secrets)}")
    else:
        check(not certs, f"{scenario}: {certs} passed without a certs Secret")
        check(not any("secret" in v for v in cpod["spec"].get("volumes", [])), f"{scenario}: a Secret mounted "
              f"without certs set")
    csa = cpod["spec"]["serviceAccountName"]
    # The generated waypoints are fed by this control plane: --control-plane is its Service (https iff mTLS),
    # and over https --control-plane-identity is its ServiceAccount's SPIFFE id in its trust domain.
    scheme = "https" if expect["mtls"] == "on" else "http"
    want_url = f"{scheme}://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:{svc['spec']['ports'][0]['port']}"
    check(flags.get("control-plane") == want_url, f"{scenario}: controller --control-plane={flags.get('control-plane')} "
          f"is not the chart's control plane Service {want_url}")
    want_id = (f"spiffe://{cflags.get('trust-domain', 'cluster.local')}/ns/{cdep['metadata']['namespace']}/sa/{csa}"
               if scheme == "https" else None)
    check(flags.get("control-plane-identity") == want_id, f"{scenario}: controller --control-plane-identity="
          f"{flags.get('control-plane-identity')} is not the control plane's identity {want_id}")
    print(f"  {scenario}: generated waypoints: --source push from {want_url}"
          + (f" ({want_id})" if want_id else ""))
    allowed.add((ns, csa))
    source = cflags.get("source", "kube")
    if source == "kube":
        rbac_exact(scenario, by, ns, csa, watch_grants("*", watched_kinds().values()))
        check("manifests" not in cflags, f"{scenario}: --manifests passed with --source kube")
    else:
        rbac_exact(scenario, by, ns, csa, set())
        root = os.path.join(work, "root")
        placeholder = os.path.join(work, "placeholder.pem")  # the Secret's content is not read by `check`
        open(placeholder, "w").close()
        keys = {i["key"] for v in cpod["spec"]["volumes"] if "secret" in v for i in v["secret"]["items"]}
        mounts = mount_tree(scenario, cpod, cc, by, root, {k: placeholder for k in keys})
        manifests = dict(parse_args(rebase(cc["args"][1:], mounts, root)))["manifests"]
        # `check` exits 1 when a route is not Accepted (no Gateway here binds it), 2 when the folder does not load.
        r = subprocess.run([wp, "check", "--manifests", manifests, "--json"], capture_output=True, text=True,
                           env={**os.environ, "RUST_LOG": "error"})
        check(r.returncode in (0, 1), f"{scenario}: the control plane's mounted manifests do not load "
              f"(`waypoint check` exited {r.returncode}):\n{r.stdout}{r.stderr}")
        print(f"  {scenario}: control plane: the mounted config loads ({len(json.loads(r.stdout))} route status(es))")
    only_subjects(scenario, by, allowed)
    print(f"  {scenario}: control plane: {len(cpairs)} args accepted, Service :{svc['spec']['ports'][0]['port']} "
          f"→ --listen {grpc}; not run here")


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
    if kind == "waypoint-controller":
        expect = {"image": None, "control-plane": "off", "mtls": "off"}
        expect.update(w.split("=", 1) for w in opts.get("--expect", "").split())
        check_controller(scenario, rendered, opts["--values"], opts["--waypoint"], work, expect)
    elif kind == "waypoint":
        check_waypoint(scenario, rendered, opts["--values"], opts["--waypoint"], work)
    else:
        check_ztunnel(scenario, rendered, opts["--values"], opts["--waypoint"], opts["--ztunnel"], work)


if __name__ == "__main__":
    main(sys.argv[1:])
