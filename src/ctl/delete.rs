//! `waypoint delete`: deletes waypoint Gateways and never leaves labels dangling silently — every Namespace or
//! Service whose `istio.io/use-waypoint` still names a deleted waypoint is named in a warning, or with
//! `--unenroll` has the label removed (before the Gateway goes, so nothing points at a missing waypoint).
//! Only Gateways of class `istio-waypoint` are deleted.

use kube::api::{DeleteParams, ListParams};
use kube::Client;
use kube_source::Kind;

use super::enroll::{self, LabelPlan, WaypointRef, USE_WAYPOINT};
use super::gateway;
use super::{api, objects, CommonArgs, CtlError, Outcome};

/// The flags of `waypoint delete`.
#[derive(clap::Args, Clone, Debug)]
pub struct DeleteArgs {
    /// The waypoints' namespace (default: the kubeconfig's namespace).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The waypoints (Gateway names) to delete.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub names: Vec<String>,
    /// Delete every waypoint in the namespace.
    #[arg(long)]
    pub all: bool,
    /// Remove the `istio.io/use-waypoint` labels that name a deleted waypoint (else: warn about them).
    #[arg(long)]
    pub unenroll: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `waypoint delete`: exit 1 when a named waypoint does not exist (the others are still deleted).
pub async fn delete(client: &Client, args: &DeleteArgs) -> Result<Outcome, CtlError> {
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().into());
    let gateways = api(client, Kind::Gateway, Some(&ns));
    let mut out = Outcome::default();
    let names: Vec<String> = match args.all {
        true => {
            let listed = gateways.list(&ListParams::default()).await;
            objects(listed, &format!("listing Gateways in {ns}"))?
                .iter()
                .filter(|g| gateway::is_waypoint(g))
                .filter_map(|g| g["metadata"]["name"].as_str().map(String::from))
                .collect()
        }
        false => args.names.clone(),
    };
    if names.is_empty() {
        out.line(format!("no waypoints in namespace {ns}"));
        return Ok(out);
    }
    let mut found = Vec::new();
    for name in names {
        let id = WaypointRef {
            namespace: ns.clone(),
            name,
        };
        let read = gateways.get_opt(&id.name).await;
        match read
            .map_err(|e| CtlError::api(format!("reading Gateway {id}"), e))?
            .map(super::value)
        {
            None => {
                out.stderr
                    .push_str(&format!("error: waypoint {id} not found\n"));
                out.code = 1;
            }
            Some(gw) if !gateway::is_waypoint(&gw) => {
                out.stderr.push_str(&format!(
                    "error: Gateway {id} is not of class {}: not deleted\n",
                    gateway::CLASS
                ));
                out.code = 1;
            }
            Some(_) => found.push(id),
        }
    }
    let enrolled = enroll::enrolled_in(client, None).await?;
    for id in &found {
        for target in enrolled.get(id).into_iter().flatten() {
            match args.unenroll {
                true => {
                    out.line(enroll::write_label(client, target, id, &LabelPlan::Remove).await?)
                }
                false => out.warn(format!(
                    "{} still has {USE_WAYPOINT}={} naming the deleted waypoint {id} \
                     (`waypoint delete --unenroll` or `waypoint enroll --unenroll` removes it)",
                    target.long(),
                    id.name
                )),
            }
        }
        gateways
            .delete(&id.name, &DeleteParams::default())
            .await
            .map_err(|e| CtlError::api(format!("deleting Gateway {id}"), e))?;
        out.line(format!("waypoint {id} deleted"));
    }
    Ok(out)
}
