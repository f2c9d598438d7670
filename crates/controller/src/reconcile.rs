//! The writes of a reconcile, decided by [`crate::diff`]: each desired object is read from the API server
//! (not from a cache that may lag our own last write) and created when absent, merge-patched when it no
//! longer says what we want, left alone when it does, and never touched when it is not ours. Orphans are
//! deleted with a `uid` precondition, so a same-named object created meanwhile is safe.

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use crate::desired::Desired;
use crate::diff::{ownership, patch_for, Ownership};
use crate::gateway_status::{cluster_ip, Outcome};

/// The kinds this controller creates: `(kind, apiVersion group, version, plural)`.
pub const OWNED: [(&str, &str, &str, &str); 3] = [
    ("ServiceAccount", "", "v1", "serviceaccounts"),
    ("Service", "", "v1", "services"),
    ("Deployment", "apps", "v1", "deployments"),
];

/// The `ApiResource` of one of [`OWNED`]'s kinds.
pub fn owned_resource(kind: &str) -> ApiResource {
    let (kind, group, version, plural) =
        OWNED.into_iter().find(|o| o.0 == kind).unwrap_or(OWNED[0]);
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn api(client: &kube::Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &owned_resource(kind))
}

/// Brings one Gateway's objects in line with `desired`. Returns the outcome for its status and the number of
/// writes made.
pub async fn apply(client: &kube::Client, desired: &Desired) -> (Outcome, usize) {
    let mut writes = 0;
    let mut conflicts = Vec::new();
    let mut service = None;
    for (kind, want) in desired.objects() {
        let api = api(client, &desired.namespace, kind);
        let at = format!("{kind} {}/{}", desired.namespace, desired.name);
        match apply_one(&api, &desired.name, want, &mut writes).await {
            Ok(Some(current)) if kind == "Service" => service = Some(current),
            Ok(Some(_)) => {}
            Ok(None) => conflicts.push(at),
            Err(e) => {
                tracing::warn!(object = %at, error = %e, "apply failed");
                return (Outcome::Failed(format!("{at}: {e}")), writes);
            }
        }
    }
    let outcome = if !conflicts.is_empty() {
        Outcome::Conflict(conflicts)
    } else {
        match service.as_ref().and_then(cluster_ip) {
            Some(ip) => Outcome::Ready(ip),
            None => Outcome::WaitingForAddress(format!("{}/{}", desired.namespace, desired.name)),
        }
    };
    (outcome, writes)
}

/// Creates or patches one object; `Ok(None)` when a foreign object holds the name. Returns the object as the
/// server has it after.
async fn apply_one(
    api: &Api<DynamicObject>,
    name: &str,
    want: &Value,
    writes: &mut usize,
) -> Result<Option<Value>, kube::Error> {
    let current = match api.get_opt(name).await? {
        Some(o) => to_value(&o)?,
        None => {
            let object: DynamicObject =
                serde_json::from_value(want.clone()).map_err(kube::Error::SerdeError)?;
            let made = api.create(&PostParams::default(), &object).await?;
            *writes += 1;
            return Ok(Some(to_value(&made)?));
        }
    };
    if ownership(&current, name) == Ownership::Foreign {
        return Ok(None);
    }
    let Some(patch) = patch_for(&current, want) else {
        return Ok(Some(current));
    };
    let patched = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    *writes += 1;
    Ok(Some(to_value(&patched)?))
}

/// Deletes one orphan (`uid` precondition); gone already is fine. Returns whether a delete was sent.
pub async fn delete(
    client: &kube::Client,
    kind: &str,
    ns: &str,
    name: &str,
    uid: &str,
) -> Result<bool, kube::Error> {
    let mut dp = DeleteParams::background();
    if !uid.is_empty() {
        dp.preconditions = Some(Preconditions {
            uid: Some(uid.into()),
            resource_version: None,
        });
    }
    match api(client, ns, kind).delete(name, &dp).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

fn to_value(o: &DynamicObject) -> Result<Value, kube::Error> {
    serde_json::to_value(o).map_err(kube::Error::SerdeError)
}
