//! `waypoint generate` (print the Gateway) and `waypoint apply` (create or update it, idempotently; enroll its
//! namespace; wait, bounded, until it is Programmed).
//!
//! `apply` reads the Gateway and writes only when [`gateway::plan_apply`] finds a difference: a POST when it is
//! absent, a JSON merge patch of labels, annotations and spec when it differs, nothing when it already says
//! it all. With `--enroll-namespace` the namespace's label is planned before anything is written, so a label
//! naming another waypoint stops the command before the Gateway is touched.

use std::time::Duration;

use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::Client;
use kube_source::Kind;
use tokio::time::Instant;

use super::enroll::{self, Enrolled, LabelPlan, WaypointRef};
use super::gateway::{self, ApplyPlan, GatewayState, TrafficType, Waypoint};
use super::{api, CommonArgs, CtlError, Outcome};

/// How often `--wait` reads the Gateway back (as `istioctl waypoint apply --wait` polls).
const WAIT_POLL: Duration = Duration::from_millis(200);

/// The waypoint's identity and shape (shared by `generate` and `apply`).
#[derive(clap::Args, Clone, Debug)]
pub struct WaypointArgs {
    /// The waypoint's namespace (default: the kubeconfig's namespace; `default` for `generate`).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The Gateway's name (default: `waypoint`, or `<service-account>-waypoint` with `--service-account`).
    #[arg(long)]
    pub name: Option<String>,
    /// The traffic it handles: its `istio.io/waypoint-for` label.
    #[arg(long = "for", value_enum, default_value_t = TrafficType::Service)]
    pub traffic: TrafficType,
    /// A waypoint for one service account's workloads (the `istio.io/for-service-account` annotation).
    #[arg(long)]
    pub service_account: Option<String>,
    /// The control-plane revision (`istio.io/rev` label).
    #[arg(long)]
    pub revision: Option<String>,
}

impl WaypointArgs {
    pub fn waypoint(&self, default_ns: &str) -> Waypoint {
        Waypoint {
            namespace: self.namespace.clone().unwrap_or_else(|| default_ns.into()),
            name: self
                .name
                .clone()
                .unwrap_or_else(|| gateway::default_name(self.service_account.as_deref())),
            traffic: self.traffic,
            service_account: self.service_account.clone(),
            revision: self.revision.clone(),
        }
    }
}

/// The flags of `waypoint generate`.
#[derive(clap::Args, Clone, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub waypoint: WaypointArgs,
}

/// The flags of `waypoint apply`.
#[derive(clap::Args, Clone, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub waypoint: WaypointArgs,
    /// Also label the namespace `istio.io/use-waypoint=<name>`.
    #[arg(long)]
    pub enroll_namespace: bool,
    /// With `--enroll-namespace`: replace a label naming another waypoint.
    #[arg(long)]
    pub overwrite: bool,
    /// Wait until the Gateway is Programmed, at most this long (`--wait` alone: 60s; `--wait=2m`).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "60s",
          value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `waypoint generate`: the Gateway as YAML.
pub fn generate(args: &GenerateArgs) -> Outcome {
    let gw = args.waypoint.waypoint("default").gateway();
    Outcome {
        stdout: gateway::to_yaml(&gw),
        ..Default::default()
    }
}

/// `waypoint apply`.
pub async fn apply(client: &Client, args: &ApplyArgs) -> Result<Outcome, CtlError> {
    let wp = args.waypoint.waypoint(client.default_namespace());
    let id = WaypointRef {
        namespace: wp.namespace.clone(),
        name: wp.name.clone(),
    };
    let ns_target = Enrolled {
        kind: "namespace",
        namespace: wp.namespace.clone(),
        name: String::new(),
    };
    // Plan the namespace label first: a conflict must stop us before anything is written.
    let ns_plan = match args.enroll_namespace {
        true => {
            let plan = enroll::plan_for(client, &ns_target, &id, false, args.overwrite).await?;
            if let LabelPlan::Conflict(current) = plan {
                return Err(CtlError::LabelConflict {
                    what: ns_target.long(),
                    current,
                    wanted: id.to_string(),
                });
            }
            Some(plan)
        }
        false => None,
    };
    let gateways = api(client, Kind::Gateway, Some(&wp.namespace));
    let desired = wp.gateway();
    let existing = gateways
        .get_opt(&wp.name)
        .await
        .map_err(|e| CtlError::api(format!("reading Gateway {id}"), e))?
        .map(super::value);
    let mut out = Outcome::default();
    match gateway::plan_apply(existing.as_ref(), &desired) {
        ApplyPlan::Create => {
            let object: DynamicObject =
                serde_json::from_value(desired).expect("a generated Gateway is an object");
            gateways
                .create(&PostParams::default(), &object)
                .await
                .map_err(|e| CtlError::api(format!("creating Gateway {id}"), e))?;
            out.line(format!("waypoint {id} created"));
        }
        ApplyPlan::Patch(patch) => {
            gateways
                .patch(&wp.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| CtlError::api(format!("updating Gateway {id}"), e))?;
            out.line(format!("waypoint {id} updated"));
        }
        ApplyPlan::Unchanged => out.line(format!("waypoint {id} unchanged")),
    }
    if let Some(plan) = ns_plan {
        out.line(enroll::write_label(client, &ns_target, &id, &plan).await?);
    }
    if let Some(timeout) = args.wait {
        let state = wait_programmed(client, &id, timeout).await?;
        let addresses = match state.addresses.is_empty() {
            true => "no address yet".to_string(),
            false => state.addresses.join(", "),
        };
        out.line(format!("waypoint {id} programmed: {addresses}"));
    }
    Ok(out)
}

/// Reads the Gateway back every [`WAIT_POLL`] until its status says `Programmed=True`, for at most `timeout`.
pub async fn wait_programmed(
    client: &Client,
    id: &WaypointRef,
    timeout: Duration,
) -> Result<GatewayState, CtlError> {
    let gateways = api(client, Kind::Gateway, Some(&id.namespace));
    let deadline = Instant::now() + timeout;
    let mut tick = tokio::time::interval(WAIT_POLL);
    let mut why = "the Gateway was not read yet".to_string();
    loop {
        if tokio::time::timeout_at(deadline, tick.tick())
            .await
            .is_err()
        {
            break;
        }
        let read = tokio::time::timeout_at(deadline, gateways.get_opt(&id.name)).await;
        let Ok(read) = read else { break };
        match read.map_err(|e| CtlError::api(format!("reading Gateway {id}"), e))? {
            None => why = "the Gateway does not exist".into(),
            Some(gw) => {
                let state = GatewayState::of(&super::value(gw));
                if state.programmed() {
                    return Ok(state);
                }
                why = state.why_not_programmed();
            }
        }
    }
    Err(CtlError::WaitTimeout {
        gateway: id.to_string(),
        timeout,
        why,
    })
}
