//! `waypoint generate|apply|enroll|list|status|delete`: manage waypoints against the Kubernetes API server, as
//! `istioctl waypoint` does — a waypoint is a Gateway API `Gateway` of class `istio-waypoint` with one HBONE
//! listener on 15008 ([`gateway`]), and namespaces or services use it through the `istio.io/use-waypoint`
//! label ([`enroll`]). `docs/cli.md` has an example session per subcommand.
//!
//! Each subcommand is a function from a [`kube::Client`] and its flags to an [`Outcome`] (what to print, the
//! exit code) or a [`CtlError`]; the decisions inside (apply plan, label plan, who is enrolled, the table) are
//! pure functions tested with tables. [`main`] builds the client as `waypoint run --source kube` does
//! ([`ztunnel::source::kube_client`]) and prints. Tested against the fake API server only.

pub mod apply;
pub mod delete;
pub mod enroll;
pub mod gateway;
pub mod list;

use std::io::Write;
use std::path::PathBuf;

use kube::api::{Api, DynamicObject, ObjectList};
use kube::Client;
use kube_source::Kind;
use serde_json::Value;

pub use apply::{ApplyArgs, GenerateArgs};
pub use delete::DeleteArgs;
pub use enroll::EnrollArgs;
pub use list::{ListArgs, StatusArgs};

/// The subcommands (flattened into the `waypoint` binary's).
#[derive(clap::Subcommand, Clone, Debug)]
pub enum Command {
    /// Print a waypoint's Gateway as YAML (nothing is sent to the API server).
    Generate(GenerateArgs),
    /// Create or update a waypoint's Gateway; optionally enroll its namespace and wait until it is Programmed.
    Apply(ApplyArgs),
    /// Label a namespace (or `--service`s) `istio.io/use-waypoint=<name>`; `--unenroll` removes the label.
    Enroll(EnrollArgs),
    /// List waypoints: programmed or not, their traffic type, who is enrolled.
    List(ListArgs),
    /// Show a waypoint's conditions and addresses; exit 1 when it is not Programmed.
    Status(StatusArgs),
    /// Delete waypoints; warn about (or with `--unenroll` remove) labels still naming them.
    Delete(DeleteArgs),
}

/// How to reach the API server (the flags of `waypoint run --source kube`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct CommonArgs {
    /// A kubeconfig file (default: the in-cluster service account, else `$KUBECONFIG` / `~/.kube/config`).
    #[arg(long, env = "WP_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The API server's URL (overrides the kubeconfig's).
    #[arg(long, env = "WP_API_SERVER")]
    pub api_server: Option<String>,
}

/// Why a subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("{0} not found")]
    NotFound(String),
    #[error(
        "{what} already uses waypoint {current}, not {wanted}: give --overwrite to replace it"
    )]
    LabelConflict {
        what: String,
        current: String,
        wanted: String,
    },
    #[error("waypoint {gateway} not Programmed after {timeout:?}: {why}")]
    WaitTimeout {
        gateway: String,
        timeout: std::time::Duration,
        why: String,
    },
    #[error("{0}")]
    Usage(String),
}

impl CtlError {
    pub(crate) fn api(action: impl Into<String>, source: kube::Error) -> Self {
        CtlError::Api {
            action: action.into(),
            source: Box::new(source),
        }
    }
}

/// What a subcommand has to say: stdout, warnings for stderr, the exit code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl Outcome {
    pub fn line(&mut self, line: impl AsRef<str>) {
        self.stdout.push_str(line.as_ref());
        self.stdout.push('\n');
    }
    pub fn warn(&mut self, line: impl AsRef<str>) {
        self.stderr.push_str("warning: ");
        self.stderr.push_str(line.as_ref());
        self.stderr.push('\n');
    }
}

/// Runs one subcommand with a client from its `--kubeconfig` / `--api-server` (none for `generate`).
pub async fn run(cmd: &Command) -> anyhow::Result<Outcome> {
    let common = match cmd {
        Command::Generate(args) => return Ok(apply::generate(args)),
        Command::Apply(a) => &a.common,
        Command::Enroll(a) => &a.common,
        Command::List(a) => &a.common,
        Command::Status(a) => &a.common,
        Command::Delete(a) => &a.common,
    };
    let client =
        ztunnel::source::kube_client(common.kubeconfig.as_deref(), common.api_server.as_deref())
            .await?;
    Ok(run_with(&client, cmd).await?)
}

/// Runs one subcommand against `client`.
pub async fn run_with(client: &Client, cmd: &Command) -> Result<Outcome, CtlError> {
    match cmd {
        Command::Generate(args) => Ok(apply::generate(args)),
        Command::Apply(args) => apply::apply(client, args).await,
        Command::Enroll(args) => enroll::enroll(client, args).await,
        Command::List(args) => list::list(client, args).await,
        Command::Status(args) => list::status(client, args).await,
        Command::Delete(args) => delete::delete(client, args).await,
    }
}

/// The binary's entry: prints the outcome and exits with its code (1 on an error, after `error: …`).
pub async fn main(cmd: Command) -> anyhow::Result<()> {
    let outcome = match run(&cmd).await {
        Ok(o) => o,
        Err(e) => Outcome {
            stderr: format!("error: {e:#}\n"),
            code: 1,
            ..Default::default()
        },
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(outcome.stdout.as_bytes())?;
    stdout.flush()?;
    let mut stderr = std::io::stderr().lock();
    stderr.write_all(outcome.stderr.as_bytes())?;
    stderr.flush()?;
    if outcome.code != 0 {
        std::process::exit(outcome.code);
    }
    Ok(())
}

/// A dynamic API for one kind: in `ns`, or cluster-wide (all namespaces, or a cluster-scoped kind).
pub(crate) fn api(client: &Client, kind: Kind, ns: Option<&str>) -> Api<DynamicObject> {
    let ar = kind.api_resource();
    match ns {
        Some(ns) if kind.namespaced() => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    }
}

/// An object as JSON (`metadata`, `spec`, `status`, …).
pub(crate) fn value(object: DynamicObject) -> Value {
    serde_json::to_value(object).expect("a DynamicObject serializes")
}

/// A list's items as JSON, or the error with what was being listed.
pub(crate) fn objects(
    list: Result<ObjectList<DynamicObject>, kube::Error>,
    action: &str,
) -> Result<Vec<Value>, CtlError> {
    let list = list.map_err(|e| CtlError::api(action, e))?;
    Ok(list.items.into_iter().map(value).collect())
}
