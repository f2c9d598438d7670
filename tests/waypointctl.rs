//! `waypoint generate|apply|enroll|list|status|delete` against `kube_source::testing::FakeApiServer` (a real
//! HTTP server on 127.0.0.1:0 speaking the Kubernetes API; no cluster runs on the build machines): through
//! `waypoint::ctl` with flags parsed as the binary parses them, and through the built binary with
//! `--api-server <fake>`. Every wait is bounded by [`PATIENCE`].

use std::process::Output;
use std::time::Duration;

use clap::Parser;
use kube_source::testing::FakeApiServer;
use serde_json::{json, Value};
use waypoint::ctl::{self, Command, CtlError, Outcome};

const PATIENCE: Duration = Duration::from_secs(10);

/// Two namespaces and their services: `shop` (unlabelled) and `other` (already using its own waypoint).
const CLUSTER: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {istio.io/use-waypoint: other-waypoint}}
---
apiVersion: v1
kind: Namespace
metadata: {name: payments}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {ports: [{port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ledger, namespace: payments}
spec: {ports: [{port: 8080}]}
";

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

/// Runs a subcommand through the module, its flags parsed as the binary would.
async fn ctl(api: &FakeApiServer, args: &[&str]) -> Result<Outcome, CtlError> {
    let cli = Cli::try_parse_from(std::iter::once("waypoint").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let client = api.client().expect("client");
    tokio::time::timeout(PATIENCE, ctl::run_with(&client, &cli.cmd))
        .await
        .unwrap_or_else(|_| panic!("{args:?} took longer than {PATIENCE:?}"))
}

async fn ok(api: &FakeApiServer, args: &[&str]) -> Outcome {
    ctl(api, args)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Runs the built binary against the fake server.
async fn bin(api: &FakeApiServer, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_waypoint"));
    cmd.args(args)
        .env_remove("WP_KUBECONFIG")
        .env_remove("WP_API_SERVER")
        .kill_on_drop(true);
    if args.first() != Some(&"generate") {
        cmd.args(["--api-server", &api.url()]);
    }
    tokio::time::timeout(PATIENCE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("waypoint {args:?} took longer than {PATIENCE:?}"))
        .expect("run the waypoint binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The writes (anything but GET) the server answered since request `from`.
fn writes_since(api: &FakeApiServer, from: usize) -> Vec<String> {
    api.requests()[from..]
        .iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {} {}", r.method, r.path, r.status))
        .collect()
}

fn label(api: &FakeApiServer, kind: &str, ns: &str, name: &str) -> Option<String> {
    let object = api.get(kind, ns, name).expect("object exists");
    object["metadata"]["labels"]["istio.io/use-waypoint"]
        .as_str()
        .map(String::from)
}

fn programmed(address: &str) -> Value {
    json!({
        "addresses": [{"type": "IPAddress", "value": address}],
        "conditions": [
            {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "class istio-waypoint"},
            {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "serving"},
        ],
    })
}

#[tokio::test]
async fn generate_prints_the_waypoint_gateway() {
    let api = FakeApiServer::start().await.unwrap();
    let out = bin(&api, &["generate", "-n", "shop"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let gw: Value = serde_yaml::from_str(&text(&out.stdout)).expect("YAML");
    assert_eq!(gw["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(gw["kind"], "Gateway");
    assert_eq!(gw["metadata"]["name"], "waypoint");
    assert_eq!(gw["metadata"]["namespace"], "shop");
    assert_eq!(gw["metadata"]["labels"]["istio.io/waypoint-for"], "service");
    assert_eq!(gw["spec"]["gatewayClassName"], "istio-waypoint");
    assert_eq!(
        gw["spec"]["listeners"],
        json!([{"name": "mesh", "port": 15008, "protocol": "HBONE"}])
    );
    assert!(api.requests().is_empty(), "generate talks to nobody");

    let sa = ok(
        &api,
        &[
            "generate",
            "-n",
            "payments",
            "--for",
            "workload",
            "--service-account",
            "ledger",
        ],
    )
    .await;
    let gw: Value = serde_yaml::from_str(&sa.stdout).unwrap();
    assert_eq!(gw["metadata"]["name"], "ledger-waypoint");
    assert_eq!(
        gw["metadata"]["labels"]["istio.io/waypoint-for"],
        "workload"
    );
    assert_eq!(
        gw["metadata"]["annotations"]["istio.io/for-service-account"],
        "ledger"
    );
}

#[tokio::test]
async fn apply_creates_once_then_writes_nothing_and_repairs_drift() {
    let api = FakeApiServer::start_with(CLUSTER).await.unwrap();
    let first = ok(&api, &["apply", "-n", "shop"]).await;
    assert_eq!(first.stdout, "waypoint shop/waypoint created\n");
    let gw = api.get("Gateway", "shop", "waypoint").expect("created");
    assert_eq!(gw["spec"]["gatewayClassName"], "istio-waypoint");
    assert_eq!(gw["spec"]["listeners"][0]["port"], 15008);

    let before = api.requests().len();
    let again = ok(&api, &["apply", "-n", "shop"]).await;
    assert_eq!(again.stdout, "waypoint shop/waypoint unchanged\n");
    assert_eq!(writes_since(&api, before), Vec::<String>::new());

    // Someone changed what it handles: apply puts it back with one merge patch, keeping their other label.
    let mut drifted = gw.clone();
    drifted["metadata"]["labels"]["istio.io/waypoint-for"] = json!("none");
    drifted["metadata"]["labels"]["team"] = json!("shop");
    api.apply(&serde_json::to_string(&drifted).unwrap())
        .unwrap();
    let before = api.requests().len();
    let fixed = ok(&api, &["apply", "-n", "shop"]).await;
    assert_eq!(fixed.stdout, "waypoint shop/waypoint updated\n");
    assert_eq!(
        writes_since(&api, before),
        ["PATCH /apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/waypoint 200"]
    );
    let labels = &api.get("Gateway", "shop", "waypoint").unwrap()["metadata"]["labels"];
    assert_eq!(labels["istio.io/waypoint-for"], "service");
    assert_eq!(labels["team"], "shop");
}

#[tokio::test]
async fn enroll_namespace_labels_it_and_never_steals_a_label() {
    let api = FakeApiServer::start_with(CLUSTER).await.unwrap();
    let out = ok(&api, &["apply", "-n", "shop", "--enroll-namespace"]).await;
    assert!(
        out.stdout.contains("namespace shop enrolled"),
        "{}",
        out.stdout
    );
    assert_eq!(
        label(&api, "Namespace", "", "shop").as_deref(),
        Some("waypoint")
    );
    let before = api.requests().len();
    let again = ok(&api, &["apply", "-n", "shop", "--enroll-namespace"]).await;
    assert!(
        again.stdout.contains("already uses waypoint shop/waypoint"),
        "{}",
        again.stdout
    );
    assert_eq!(writes_since(&api, before), Vec::<String>::new());

    // `other` names another waypoint: refused before anything is written.
    let before = api.requests().len();
    let err = ctl(&api, &["apply", "-n", "other", "--enroll-namespace"])
        .await
        .unwrap_err();
    assert!(matches!(err, CtlError::LabelConflict { .. }), "{err}");
    assert!(err.to_string().contains("--overwrite"), "{err}");
    assert_eq!(writes_since(&api, before), Vec::<String>::new());
    assert!(api.get("Gateway", "other", "waypoint").is_none());
    // The same refusal through the binary: exit 1, the reason on stderr.
    let out = bin(&api, &["apply", "-n", "other", "--enroll-namespace"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("namespace other already uses waypoint other/other-waypoint")
    );

    ok(
        &api,
        &["apply", "-n", "other", "--enroll-namespace", "--overwrite"],
    )
    .await;
    assert_eq!(
        label(&api, "Namespace", "", "other").as_deref(),
        Some("waypoint")
    );

    // `enroll --unenroll` removes only a label naming this waypoint.
    let out = ok(
        &api,
        &["enroll", "-n", "shop", "--name", "elsewhere", "--unenroll"],
    )
    .await;
    assert!(out.stdout.contains("left alone"), "{}", out.stdout);
    assert_eq!(
        label(&api, "Namespace", "", "shop").as_deref(),
        Some("waypoint")
    );
    ok(&api, &["enroll", "-n", "shop", "--unenroll"]).await;
    assert_eq!(label(&api, "Namespace", "", "shop"), None);
    // A missing service is an error, and nothing is written.
    let err = ctl(
        &api,
        &[
            "enroll",
            "-n",
            "shop",
            "--service",
            "reviews",
            "--service",
            "nope",
        ],
    )
    .await;
    assert!(
        matches!(err, Err(CtlError::NotFound(ref w)) if w == "service shop/nope"),
        "{err:?}"
    );
    assert_eq!(label(&api, "Service", "shop", "reviews"), None);
}

#[tokio::test]
async fn wait_returns_once_programmed_and_times_out_clearly_otherwise() {
    let api = FakeApiServer::start_with(CLUSTER).await.unwrap();
    // Nobody writes a status: a short wait fails and says why.
    let err = ctl(&api, &["apply", "-n", "payments", "--wait=400ms"])
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CtlError::WaitTimeout { .. }), "{msg}");
    assert!(
        msg.contains("payments/waypoint not Programmed after 400ms"),
        "{msg}"
    );
    assert!(msg.contains("no Programmed condition yet"), "{msg}");

    // The binary waits; the test plays the controller once the Gateway exists.
    let waiting = {
        let url = api.url();
        tokio::spawn(async move {
            let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_waypoint"));
            cmd.args(["apply", "-n", "shop", "--wait=20s", "--api-server", &url])
                .env_remove("WP_KUBECONFIG")
                .kill_on_drop(true);
            tokio::time::timeout(PATIENCE, cmd.output()).await
        })
    };
    api.wait_until("the Gateway is created", PATIENCE, |a| {
        a.get("Gateway", "shop", "waypoint").is_some()
    })
    .await
    .unwrap();
    assert!(
        !waiting.is_finished(),
        "apply --wait must not return before Programmed"
    );
    let mut pending = programmed("10.96.0.20");
    pending["conditions"][1]["status"] = json!("False");
    api.set_status("Gateway", "shop", "waypoint", pending)
        .unwrap();
    api.set_status("Gateway", "shop", "waypoint", programmed("10.96.0.20"))
        .unwrap();
    let out = waiting
        .await
        .unwrap()
        .expect("apply --wait returns within the patience")
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("waypoint shop/waypoint created"),
        "{stdout}"
    );
    assert!(
        stdout.contains("waypoint shop/waypoint programmed: 10.96.0.20"),
        "{stdout}"
    );
}

#[tokio::test]
async fn status_exits_1_until_programmed() {
    let api = FakeApiServer::start_with(CLUSTER).await.unwrap();
    let out = bin(&api, &["status", "-n", "shop"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("waypoint shop/waypoint not found"),
        "{}",
        text(&out.stderr)
    );

    ok(&api, &["apply", "-n", "shop", "--enroll-namespace"]).await;
    let status = json!({"conditions": [
        {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "ok"},
        {"type": "Programmed", "status": "False", "reason": "AddressNotAssigned", "message": "no address yet"}]});
    api.set_status("Gateway", "shop", "waypoint", status)
        .unwrap();
    let out = bin(&api, &["status", "-n", "shop"]).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("Programmed  False   AddressNotAssigned: no address yet"),
        "{stdout}"
    );
    assert!(stdout.contains("enrolled: namespace shop"), "{stdout}");

    api.set_status("Gateway", "shop", "waypoint", programmed("10.96.0.20"))
        .unwrap();
    let out = bin(&api, &["status", "-n", "shop"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("addresses: 10.96.0.20"));
}

#[tokio::test]
async fn list_shows_waypoints_and_who_uses_them() {
    let api = FakeApiServer::start_with(CLUSTER).await.unwrap();
    let out = ok(&api, &["list", "-n", "shop"]).await;
    assert_eq!(out.stdout, "no waypoints in namespace shop\n");
    ok(&api, &["apply", "-n", "shop", "--enroll-namespace"]).await;
    ok(
        &api,
        &[
            "apply",
            "-n",
            "other",
            "--name",
            "other-waypoint",
            "--for",
            "all",
        ],
    )
    .await;
    ok(&api, &["enroll", "-n", "shop", "--service", "reviews"]).await;
    api.set_status("Gateway", "shop", "waypoint", programmed("10.96.0.20"))
        .unwrap();
    // A Gateway of another class is no waypoint.
    api.apply("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: ingress, namespace: shop}\nspec: {gatewayClassName: istio, listeners: []}\n")
        .unwrap();

    let out = bin(&api, &["list", "-A"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        [
            vec![
                "NAMESPACE",
                "NAME",
                "REVISION",
                "PROGRAMMED",
                "TRAFFIC-TYPE",
                "ENROLLED"
            ],
            vec![
                "other",
                "other-waypoint",
                "default",
                "Unknown",
                "all",
                "ns:other"
            ],
            vec![
                "shop",
                "waypoint",
                "default",
                "True",
                "service",
                "ns:shop,svc:reviews"
            ],
        ],
        "{table}"
    );

    let out = ok(&api, &["list", "-n", "shop", "-o", "json"]).await;
    let rows: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["name"], "waypoint");
    assert_eq!(rows[0]["addresses"], json!(["10.96.0.20"]));
    assert_eq!(
        rows[0]["enrolled"][1],
        json!({"kind": "service", "namespace": "shop", "name": "reviews"})
    );
    let out = ok(&api, &["list", "-A", "-o", "yaml"]).await;
    let rows: Value = serde_yaml::from_str(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn delete_warns_about_dangling_labels_or_removes_them() {
    let api = FakeApiServer::start_with(CLUSTER).await.unwrap();
    ok(&api, &["apply", "-n", "shop", "--enroll-namespace"]).await;
    ok(&api, &["enroll", "-n", "shop", "--service", "reviews"]).await;
    let out = bin(&api, &["delete", "-n", "shop", "waypoint", "ghost"]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "ghost does not exist: {stderr}");
    assert!(
        stderr.contains("error: waypoint shop/ghost not found"),
        "{stderr}"
    );
    assert!(
        stdout.contains("waypoint shop/waypoint deleted"),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: namespace shop still has istio.io/use-waypoint=waypoint"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: service shop/reviews still has"),
        "{stderr}"
    );
    assert!(api.get("Gateway", "shop", "waypoint").is_none());
    assert_eq!(
        label(&api, "Namespace", "", "shop").as_deref(),
        Some("waypoint"),
        "only warned"
    );

    // Again with --unenroll: the labels naming it go; `other`'s label (another waypoint) stays.
    ok(&api, &["apply", "-n", "shop"]).await;
    let out = ok(&api, &["delete", "-n", "shop", "--all", "--unenroll"]).await;
    assert_eq!(out.stderr, "", "nothing left dangling");
    assert!(
        out.stdout.contains("namespace shop unenrolled"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("service shop/reviews unenrolled"),
        "{}",
        out.stdout
    );
    assert_eq!(label(&api, "Namespace", "", "shop"), None);
    assert_eq!(label(&api, "Service", "shop", "reviews"), None);
    assert_eq!(
        label(&api, "Namespace", "", "other").as_deref(),
        Some("other-waypoint")
    );
    assert!(api.get("Gateway", "shop", "waypoint").is_none());
    let out = ok(&api, &["delete", "-n", "shop", "--all"]).await;
    assert_eq!(out.stdout, "no waypoints in namespace shop\n");
}

#[tokio::test]
async fn a_per_service_account_waypoint() {
    let api = FakeApiServer::start_with(CLUSTER).await.unwrap();
    let args = [
        "apply",
        "-n",
        "payments",
        "--for",
        "workload",
        "--service-account",
        "ledger",
    ];
    let out = ok(&api, &args).await;
    assert_eq!(out.stdout, "waypoint payments/ledger-waypoint created\n");
    let gw = api
        .get("Gateway", "payments", "ledger-waypoint")
        .expect("created");
    assert_eq!(
        gw["metadata"]["labels"]["istio.io/waypoint-for"],
        "workload"
    );
    assert_eq!(
        gw["metadata"]["annotations"]["istio.io/for-service-account"],
        "ledger"
    );
    assert_eq!(
        ok(&api, &args).await.stdout,
        "waypoint payments/ledger-waypoint unchanged\n"
    );

    let out = ok(
        &api,
        &[
            "enroll",
            "-n",
            "payments",
            "--name",
            "ledger-waypoint",
            "--service",
            "ledger",
        ],
    )
    .await;
    assert_eq!(
        out.stdout,
        "service payments/ledger enrolled: istio.io/use-waypoint=ledger-waypoint\n"
    );
    assert_eq!(
        label(&api, "Service", "payments", "ledger").as_deref(),
        Some("ledger-waypoint")
    );
    assert_eq!(
        label(&api, "Namespace", "", "payments"),
        None,
        "only the service is enrolled"
    );

    let out = ok(&api, &["list", "-n", "payments", "-o", "json"]).await;
    let rows: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rows[0]["traffic_type"], "workload");
    assert_eq!(rows[0]["service_account"], "ledger");
    assert_eq!(
        rows[0]["enrolled"],
        json!([{"kind": "service", "namespace": "payments", "name": "ledger"}])
    );
}
