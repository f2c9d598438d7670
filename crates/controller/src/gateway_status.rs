//! The status a waypoint Gateway should have, as Istio's waypoint controller reports it: `Accepted` (the
//! Gateway is valid) and `Programmed` (its objects exist and the Service has an address), with
//! `status.addresses` = the Service's clusterIP once it has one. Pure functions: [`gateway_status`] and
//! [`drifted`] (whether the server's status lost what we wrote — e.g. overwritten by the waypoint itself).

use serde_json::{json, Value};

use crate::desired::InvalidGateway;

/// What the reconcile of one waypoint Gateway came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Refused: no objects.
    Invalid(InvalidGateway),
    /// Objects of the waypoint's names exist that are not ours (`Kind ns/name` each): left alone.
    Conflict(Vec<String>),
    /// Applying failed (the API server's error); retried on the next pass.
    Failed(String),
    /// The objects are in place; the Service (`ns/name`) has no clusterIP yet.
    WaitingForAddress(String),
    /// The objects are in place and the Service has this clusterIP.
    Ready(String),
}

/// The `status` to write for `outcome`.
pub fn gateway_status(outcome: &Outcome) -> Value {
    let cond = |ty: &str, ok: bool, reason: &str, message: &str| {
        let status = if ok { "True" } else { "False" };
        json!({"type": ty, "status": status, "reason": reason, "message": message})
    };
    let accepted = cond("Accepted", true, "Accepted", "Resource accepted");
    match outcome {
        Outcome::Invalid(e) => {
            let msg = format!("{}: {}", e.field, e.message);
            json!({"conditions": [
                cond("Accepted", false, e.reason, &msg),
                cond("Programmed", false, "Invalid", &msg),
            ]})
        }
        Outcome::Conflict(objects) => {
            let msg = format!(
                "not owned by this Gateway, left alone: {}",
                objects.join(", ")
            );
            json!({"conditions": [accepted, cond("Programmed", false, "Invalid", &msg)]})
        }
        Outcome::Failed(error) => {
            let msg = format!("deploying the waypoint failed: {error}");
            json!({"conditions": [accepted, cond("Programmed", false, "Pending", &msg)]})
        }
        Outcome::WaitingForAddress(service) => {
            let msg = format!("waiting for Service {service} to get a clusterIP");
            json!({"conditions": [accepted, cond("Programmed", false, "AddressNotAssigned", &msg)]})
        }
        Outcome::Ready(ip) => {
            let msg = format!("Resource programmed, assigned to service(s) at {ip}");
            json!({
                "conditions": [accepted, cond("Programmed", true, "Programmed", &msg)],
                "addresses": [{"type": "IPAddress", "value": ip}],
            })
        }
    }
}

/// The Service's usable clusterIP (`None` before the allocator set one, and for a headless Service).
pub fn cluster_ip(service: &Value) -> Option<String> {
    let ip = service["spec"]["clusterIP"].as_str()?;
    (!ip.is_empty() && ip != "None").then(|| ip.to_string())
}

/// Whether `observed` (the Gateway's status as last seen) has lost what `want` says: other `addresses`, or
/// one of our condition types missing or with another `status`. A writer that remembers what it wrote must
/// forget it then, and write again.
pub fn drifted(observed: &Value, want: &Value) -> bool {
    if observed.get("addresses").filter(|a| !a.is_null()) != want.get("addresses") {
        return true;
    }
    let empty = Vec::new();
    let have = observed["conditions"].as_array().unwrap_or(&empty);
    want["conditions"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .any(|w| {
            !have
                .iter()
                .any(|h| h["type"] == w["type"] && h["status"] == w["status"])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conditions(status: &Value) -> Vec<(String, String, String)> {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap().to_string();
                (s("type"), s("status"), s("reason"))
            })
            .collect()
    }

    #[test]
    fn each_outcome_has_its_conditions_and_only_ready_has_an_address() {
        let invalid = InvalidGateway {
            gateway: "ns/wp".into(),
            field: "spec.listeners[0].protocol".into(),
            message: "\"HTTP\": a waypoint listens for HBONE only".into(),
            reason: "ListenersNotValid",
        };
        let t = |a: &str, p: &str, r: &str| {
            vec![
                (
                    "Accepted".to_string(),
                    a.to_string(),
                    if a == "True" {
                        "Accepted".into()
                    } else {
                        r.to_string()
                    },
                ),
                ("Programmed".to_string(), p.to_string(), r.to_string()),
            ]
        };
        let cases = [
            (
                Outcome::Invalid(invalid),
                vec![
                    (
                        "Accepted".into(),
                        "False".into(),
                        "ListenersNotValid".into(),
                    ),
                    ("Programmed".into(), "False".into(), "Invalid".into()),
                ],
                None,
            ),
            (
                Outcome::Conflict(vec!["Deployment ns/wp".into()]),
                t("True", "False", "Invalid"),
                None,
            ),
            (
                Outcome::Failed("boom".into()),
                t("True", "False", "Pending"),
                None,
            ),
            (
                Outcome::WaitingForAddress("ns/wp".into()),
                t("True", "False", "AddressNotAssigned"),
                None,
            ),
            (
                Outcome::Ready("10.0.0.7".into()),
                t("True", "True", "Programmed"),
                Some("10.0.0.7"),
            ),
        ];
        for (outcome, want, address) in cases {
            let s = gateway_status(&outcome);
            assert_eq!(conditions(&s), want, "{outcome:?}");
            assert_eq!(s["addresses"][0]["value"].as_str(), address, "{outcome:?}");
        }
        let s = gateway_status(&Outcome::Invalid(InvalidGateway {
            gateway: "ns/wp".into(),
            field: "metadata.labels[\"istio.io/waypoint-for\"]".into(),
            message: "bad".into(),
            reason: "InvalidParameters",
        }));
        assert!(s["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("istio.io/waypoint-for"));
    }

    #[test]
    fn drift_is_a_lost_address_or_condition_not_a_reworded_message() {
        let want = gateway_status(&Outcome::Ready("10.0.0.7".into()));
        let mut reworded = want.clone();
        reworded["conditions"][1]["message"] = json!("the waypoint serves this config");
        reworded["conditions"][1]["lastTransitionTime"] = json!("t");
        let mut no_address = want.clone();
        no_address.as_object_mut().unwrap().remove("addresses");
        let mut other_address = want.clone();
        other_address["addresses"][0]["value"] = json!("10.0.0.8");
        let mut not_programmed = want.clone();
        not_programmed["conditions"][1]["status"] = json!("False");
        let cases = [
            ("same", want.clone(), false),
            ("reworded", reworded, false),
            ("no address", no_address, true),
            ("other address", other_address, true),
            ("not programmed", not_programmed, true),
            ("no status", Value::Null, true),
        ];
        for (what, observed, want_drift) in cases {
            assert_eq!(drifted(&observed, &want), want_drift, "{what}");
        }
        let waiting = gateway_status(&Outcome::WaitingForAddress("ns/wp".into()));
        assert!(!drifted(
            &json!({"conditions": waiting["conditions"], "addresses": null}),
            &waiting
        ));
    }

    #[test]
    fn headless_and_unallocated_services_have_no_address() {
        let cases = [
            (json!({"spec": {"clusterIP": "10.0.0.7"}}), Some("10.0.0.7")),
            (json!({"spec": {"clusterIP": "None"}}), None),
            (json!({"spec": {"clusterIP": ""}}), None),
            (json!({"spec": {}}), None),
        ];
        for (svc, want) in cases {
            assert_eq!(cluster_ip(&svc).as_deref(), want, "{svc}");
        }
    }
}
