//! `waypoint list` (a table, JSON or YAML of every waypoint: programmed, traffic type, who is enrolled) and
//! `waypoint status` (one waypoint's conditions and addresses; exit 1 when it is not Programmed).
//!
//! [`rows`] joins Gateways with the enrollment map and [`table`] renders them: pure, tested with tables.

use std::collections::BTreeMap;

use kube::api::ListParams;
use kube::Client;
use kube_source::Kind;
use serde_json::Value;

use super::enroll::{self, Enrolled, WaypointRef};
use super::gateway::{self, GatewayState, REVISION, WAYPOINT_FOR};
use super::{api, objects, CommonArgs, CtlError, Outcome};

/// `-o`: how `list` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// The flags of `waypoint list`.
#[derive(clap::Args, Clone, Debug)]
pub struct ListArgs {
    /// List this namespace's waypoints (default: the kubeconfig's namespace).
    #[arg(long, short = 'n', conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// List every namespace's waypoints.
    #[arg(long, short = 'A')]
    pub all_namespaces: bool,
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The flags of `waypoint status`.
#[derive(clap::Args, Clone, Debug)]
pub struct StatusArgs {
    /// The waypoint's namespace (default: the kubeconfig's namespace).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    #[arg(long, default_value = "waypoint")]
    pub name: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// One waypoint as listed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Row {
    pub namespace: String,
    pub name: String,
    /// `istio.io/rev`, else `default`.
    pub revision: String,
    /// `True`, `False` or `Unknown`.
    pub programmed: String,
    /// `istio.io/waypoint-for`, else `service` (Istio's default).
    pub traffic_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    pub addresses: Vec<String>,
    pub enrolled: Vec<Enrolled>,
}

/// The rows for these Gateways (waypoints only: other classes are skipped), sorted by namespace and name.
pub fn rows(gateways: &[Value], enrolled: &BTreeMap<WaypointRef, Vec<Enrolled>>) -> Vec<Row> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut rows: Vec<Row> = gateways
        .iter()
        .filter(|g| gateway::is_waypoint(g))
        .map(|g| {
            let id = WaypointRef {
                namespace: text(&g["metadata"]["namespace"]),
                name: text(&g["metadata"]["name"]),
            };
            let state = GatewayState::of(g);
            Row {
                revision: gateway::label(g, REVISION).unwrap_or("default").into(),
                programmed: state.condition("Programmed").into(),
                traffic_type: gateway::label(g, WAYPOINT_FOR).unwrap_or("service").into(),
                service_account: g["metadata"]["annotations"][gateway::FOR_SERVICE_ACCOUNT]
                    .as_str()
                    .map(Into::into),
                addresses: state.addresses,
                enrolled: enrolled.get(&id).cloned().unwrap_or_default(),
                namespace: id.namespace,
                name: id.name,
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    rows
}

/// The table `list` prints: aligned columns, `-` for nobody enrolled.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "NAMESPACE",
        "NAME",
        "REVISION",
        "PROGRAMMED",
        "TRAFFIC-TYPE",
        "ENROLLED",
    ];
    let mut cells: Vec<[String; 6]> = vec![header.map(String::from)];
    for r in rows {
        let enrolled: Vec<String> = r.enrolled.iter().map(|e| e.short(&r.namespace)).collect();
        let enrolled = match enrolled.is_empty() {
            true => "-".to_string(),
            false => enrolled.join(","),
        };
        cells.push([
            r.namespace.clone(),
            r.name.clone(),
            r.revision.clone(),
            r.programmed.clone(),
            r.traffic_type.clone(),
            enrolled,
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// `waypoint list`.
pub async fn list(client: &Client, args: &ListArgs) -> Result<Outcome, CtlError> {
    let scope = match args.all_namespaces {
        true => None,
        false => Some(
            args.namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().into()),
        ),
    };
    let listed = api(client, Kind::Gateway, scope.as_deref())
        .list(&ListParams::default())
        .await;
    let gateways = objects(listed, "listing Gateways")?;
    let enrolled = enroll::enrolled_in(client, scope.as_deref()).await?;
    let rows = rows(&gateways, &enrolled);
    let mut out = Outcome::default();
    match args.output {
        Format::Table if rows.is_empty() => match &scope {
            Some(ns) => out.line(format!("no waypoints in namespace {ns}")),
            None => out.line("no waypoints"),
        },
        Format::Table => out.stdout = table(&rows),
        Format::Json => {
            out.stdout = serde_json::to_string_pretty(&rows).expect("rows serialize");
            out.stdout.push('\n');
        }
        Format::Yaml => out.stdout = serde_yaml::to_string(&rows).expect("rows serialize"),
    }
    Ok(out)
}

/// The text `status` prints for one waypoint.
pub fn status_text(row: &Row, state: &GatewayState) -> String {
    let mut s = format!(
        "waypoint {}/{} (traffic type {}, revision {})\n",
        row.namespace, row.name, row.traffic_type, row.revision
    );
    if let Some(sa) = &row.service_account {
        s.push_str(&format!("  for service account {sa}\n"));
    }
    match state.conditions.is_empty() {
        true => s.push_str("  conditions: none yet (no controller has written a status)\n"),
        false => {
            for c in &state.conditions {
                s.push_str(&format!(
                    "  {:<11} {:<7} {}: {}\n",
                    c.kind, c.status, c.reason, c.message
                ));
            }
        }
    }
    let addresses = match state.addresses.is_empty() {
        true => "none".to_string(),
        false => state.addresses.join(", "),
    };
    s.push_str(&format!("  addresses: {addresses}\n"));
    let enrolled: Vec<String> = row.enrolled.iter().map(Enrolled::long).collect();
    match enrolled.is_empty() {
        true => s.push_str("  enrolled: nobody (see `waypoint enroll`)\n"),
        false => s.push_str(&format!("  enrolled: {}\n", enrolled.join(", "))),
    }
    s
}

/// `waypoint status`: exit 0 when Programmed=True, 1 otherwise (a missing waypoint is an error).
pub async fn status(client: &Client, args: &StatusArgs) -> Result<Outcome, CtlError> {
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().into());
    let id = WaypointRef {
        namespace: ns.clone(),
        name: args.name.clone(),
    };
    let gw = api(client, Kind::Gateway, Some(&ns))
        .get_opt(&args.name)
        .await
        .map_err(|e| CtlError::api(format!("reading Gateway {id}"), e))?
        .map(super::value)
        .ok_or_else(|| CtlError::NotFound(format!("waypoint {id}")))?;
    if !gateway::is_waypoint(&gw) {
        let class = gw["spec"]["gatewayClassName"].clone();
        return Err(CtlError::Usage(format!(
            "Gateway {id} is of class {class}, not a waypoint"
        )));
    }
    let enrolled = enroll::enrolled_in(client, Some(&ns)).await?;
    let row = rows(std::slice::from_ref(&gw), &enrolled).remove(0);
    let state = GatewayState::of(&gw);
    let mut out = Outcome {
        stdout: status_text(&row, &state),
        ..Default::default()
    };
    if !state.programmed() {
        out.code = 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gw(ns: &str, name: &str, class: &str, labels: Value, programmed: Option<&str>) -> Value {
        let mut g = json!({"metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {"gatewayClassName": class}});
        if let Some(p) = programmed {
            g["status"] = json!({"conditions": [{"type": "Programmed", "status": p}],
                "addresses": [{"value": "10.0.0.1"}]});
        }
        g
    }

    #[test]
    fn rows_keep_waypoints_only_with_defaults_and_enrollment() {
        let gateways = [
            gw(
                "shop",
                "waypoint",
                "istio-waypoint",
                json!({}),
                Some("True"),
            ),
            gw("shop", "ingress", "istio", json!({}), None),
            gw(
                "pay",
                "ledger-waypoint",
                "istio-waypoint",
                json!({WAYPOINT_FOR: "workload", REVISION: "canary"}),
                None,
            ),
        ];
        let ns =
            [json!({"metadata": {"name": "shop", "labels": {enroll::USE_WAYPOINT: "waypoint"}}})];
        let enrolled = enroll::enrolled(&ns, &[]);
        let got = rows(&gateways, &enrolled);
        let summary: Vec<_> = got
            .iter()
            .map(|r| {
                (
                    r.namespace.as_str(),
                    r.name.as_str(),
                    r.revision.as_str(),
                    r.programmed.as_str(),
                    r.traffic_type.as_str(),
                    r.enrolled.len(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("pay", "ledger-waypoint", "canary", "Unknown", "workload", 0),
                ("shop", "waypoint", "default", "True", "service", 1),
            ]
        );
        let t = table(&got);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "NAMESPACE   NAME              REVISION   PROGRAMMED   TRAFFIC-TYPE   ENROLLED"
        );
        assert_eq!(
            lines[1],
            "pay         ledger-waypoint   canary     Unknown      workload       -"
        );
        assert_eq!(
            lines[2],
            "shop        waypoint          default    True         service        ns:shop"
        );
    }

    #[test]
    fn status_text_names_conditions_addresses_and_enrollment() {
        let mut g = gw(
            "shop",
            "waypoint",
            "istio-waypoint",
            json!({}),
            Some("False"),
        );
        g["status"]["conditions"][0]["reason"] = json!("Pending");
        g["status"]["conditions"][0]["message"] = json!("waiting for an address");
        let row = rows(std::slice::from_ref(&g), &BTreeMap::new()).remove(0);
        let text = status_text(&row, &GatewayState::of(&g));
        assert!(
            text.contains("Programmed  False   Pending: waiting for an address"),
            "{text}"
        );
        assert!(text.contains("addresses: 10.0.0.1"), "{text}");
        assert!(text.contains("enrolled: nobody"), "{text}");
        let bare = gw("shop", "waypoint", "istio-waypoint", json!({}), None);
        let text = status_text(&row, &GatewayState::of(&bare));
        assert!(
            text.contains("conditions: none yet") && text.contains("addresses: none"),
            "{text}"
        );
    }
}
