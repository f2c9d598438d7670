//! Tables for [`desired`]: which Gateways get objects, which are refused and at which field, and what the
//! objects say.

use super::*;

fn opts() -> Options {
    Options {
        image: "registry.example/waypoint:1.0".into(),
        trust_domain: "cluster.local".into(),
        control_plane: None,
        control_plane_identity: None,
    }
}

/// A valid waypoint Gateway `ns/wp`, changed by `edit`.
fn gateway(edit: impl FnOnce(&mut Value)) -> Value {
    let mut gw = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "wp", "namespace": "ns", "uid": "u-1"},
        "spec": {"gatewayClassName": "istio-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
    });
    edit(&mut gw);
    gw
}

#[test]
fn gateways_are_accepted_or_refused_at_the_field_at_fault() {
    type Edit = fn(&mut Value);
    type Want = Result<(WaypointFor, Scope), &'static str>;
    let cases: [(&str, Edit, Want); 12] = [
        (
            "plain",
            |_| {},
            Ok((WaypointFor::Service, Scope::Namespace)),
        ),
        (
            "workload",
            |g| g["metadata"]["labels"] = json!({"istio.io/waypoint-for": "workload"}),
            Ok((WaypointFor::Workload, Scope::Namespace)),
        ),
        (
            "all",
            |g| g["metadata"]["labels"] = json!({"istio.io/waypoint-for": "all"}),
            Ok((WaypointFor::All, Scope::Namespace)),
        ),
        (
            "none",
            |g| g["metadata"]["labels"] = json!({"istio.io/waypoint-for": "none"}),
            Ok((WaypointFor::None, Scope::Namespace)),
        ),
        (
            "per service account",
            |g| g["metadata"]["annotations"] = json!({"istio.io/for-service-account": "reviews"}),
            Ok((
                WaypointFor::Service,
                Scope::ServiceAccount("reviews".into()),
            )),
        ),
        (
            "unknown waypoint-for",
            |g| g["metadata"]["labels"] = json!({"istio.io/waypoint-for": "everything"}),
            Err("metadata.labels[\"istio.io/waypoint-for\"]"),
        ),
        (
            "bad service account",
            |g| {
                g["metadata"]["annotations"] = json!({"istio.io/for-service-account": "Not_A_Name"})
            },
            Err("metadata.annotations[\"istio.io/for-service-account\"]"),
        ),
        (
            "HTTP listener",
            |g| g["spec"]["listeners"][0]["protocol"] = json!("HTTP"),
            Err("spec.listeners[0].protocol"),
        ),
        (
            "HBONE on another port",
            |g| g["spec"]["listeners"][0]["port"] = json!(15009),
            Err("spec.listeners[0].port"),
        ),
        (
            "no listener",
            |g| g["spec"]["listeners"] = json!([]),
            Err("spec.listeners"),
        ),
        (
            "name too long for a Service",
            |g| g["metadata"]["name"] = json!("w".repeat(64)),
            Err("metadata.name"),
        ),
        (
            "no uid",
            |g| g["metadata"]["uid"] = Value::Null,
            Err("metadata.uid"),
        ),
    ];
    for (what, edit, want) in cases {
        let got = desired(&gateway(edit), &opts());
        match (got, want) {
            (Ok(d), Ok((wf, scope))) => {
                assert_eq!((d.waypoint_for, d.scope), (wf, scope), "{what}")
            }
            (Err(e), Err(field)) => {
                assert_eq!(e.field, field, "{what}");
                assert!(
                    e.to_string().contains(field),
                    "{what}: the message names the field: {e}"
                );
            }
            (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn only_the_waypoint_class_is_ours() {
    let cases = [("istio-waypoint", true), ("istio", false), ("", false)];
    for (class, ours) in cases {
        let gw = gateway(|g| g["spec"]["gatewayClassName"] = json!(class));
        assert_eq!(is_waypoint(&gw), ours, "{class}");
    }
}

#[test]
fn objects_are_named_labelled_and_owned_like_the_chart_renders_them() {
    let d = desired(&gateway(|_| {}), &opts()).unwrap();
    for (kind, o) in d.objects() {
        assert_eq!(o["kind"], kind);
        assert_eq!(o["metadata"]["name"], "wp", "{kind}");
        assert_eq!(o["metadata"]["namespace"], "ns", "{kind}");
        let labels = &o["metadata"]["labels"];
        assert_eq!(labels[MANAGED_LABEL], MANAGED_VALUE, "{kind}");
        assert_eq!(labels[GATEWAY_NAME_LABEL], "wp", "{kind}");
        assert_eq!(labels["istio.io/gateway-name"], "wp", "{kind}");
        assert_eq!(labels[WAYPOINT_FOR], "service", "{kind}");
        let owner = &o["metadata"]["ownerReferences"][0];
        assert_eq!(
            (&owner["kind"], &owner["name"], &owner["uid"]),
            (&json!("Gateway"), &json!("wp"), &json!("u-1"))
        );
        assert_eq!(
            (&owner["controller"], &owner["blockOwnerDeletion"]),
            (&json!(true), &json!(true))
        );
        assert!(
            o["metadata"].get("annotations").is_none(),
            "{kind}: namespace scope"
        );
    }
    let svc = &d.service["spec"];
    assert_eq!(svc["ports"][0]["port"], 15008);
    assert_eq!(svc["ports"][0]["targetPort"], "mesh");
    assert_eq!(svc["selector"], json!({GATEWAY_NAME_LABEL: "wp"}));
    let dep = &d.deployment["spec"];
    assert_eq!(dep["selector"]["matchLabels"], svc["selector"]);
    assert_eq!(
        dep["template"]["metadata"]["labels"]["istio.io/dataplane-mode"],
        "none"
    );
    let pod = &dep["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "wp");
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "wp-certs");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.example/waypoint:1.0");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "run",
        "--source=kube",
        "--gateway=ns/wp",
        "--cert=/var/run/secrets/waypoint/tls.crt",
        "--listen=0.0.0.0:15008",
        "--readiness=0.0.0.0:15021",
        "--stats=0.0.0.0:15020",
        "--trust-domain=cluster.local",
    ] {
        assert!(args.contains(&want), "{want} in {args:?}");
    }
    assert!(
        !args.iter().any(|a| a.starts_with("--manifests")),
        "{args:?}"
    );
    let ports: Vec<u64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["containerPort"].as_u64())
        .collect();
    assert_eq!(ports, [15008, 15021, 15020]);
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/healthz/ready", "port": 15021})
    );
}

#[test]
fn a_service_account_scope_is_carried_onto_every_object_and_the_pods() {
    let gw = gateway(|g| {
        g["metadata"]["name"] = json!("reviews-waypoint");
        g["metadata"]["annotations"] = json!({"istio.io/for-service-account": "reviews"});
    });
    let d = desired(&gw, &opts()).unwrap();
    for (kind, o) in d.objects() {
        assert_eq!(
            o["metadata"]["annotations"][FOR_SERVICE_ACCOUNT], "reviews",
            "{kind}"
        );
        assert_eq!(o["metadata"]["name"], "reviews-waypoint", "{kind}");
    }
    let pod = &d.deployment["spec"]["template"];
    assert_eq!(
        pod["metadata"]["annotations"][FOR_SERVICE_ACCOUNT],
        "reviews"
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "reviews-waypoint");
}

#[test]
fn the_config_source_follows_the_control_plane_option() {
    let url = "https://waypoint-control-plane.istio-system.svc:15010";
    let id = "spiffe://cluster.local/ns/istio-system/sa/waypoint-control-plane";
    type Want = (&'static str, Option<&'static str>, Option<&'static str>);
    let cases: [(&str, Option<&str>, Option<&str>, Want); 4] = [
        ("no control plane", None, None, ("kube", None, None)),
        ("https", Some(url), None, ("push", Some(url), None)),
        (
            "https with identity",
            Some(url),
            Some(id),
            ("push", Some(url), Some(id)),
        ),
        (
            "http",
            Some("http://cp.mesh:15010"),
            None,
            ("push", Some("http://cp.mesh:15010"), None),
        ),
    ];
    for (case, control_plane, identity, want) in cases {
        let o = Options {
            control_plane: control_plane.map(Into::into),
            control_plane_identity: identity.map(Into::into),
            ..opts()
        };
        let d = desired(&gateway(|_| {}), &o).unwrap();
        let args: Vec<String> = d.deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_eq!(args, run_args("ns", "wp", &o), "{case}");
        let flag = |name: &str| {
            let prefix = format!("--{name}=");
            let mut values = args.iter().filter_map(|a| a.strip_prefix(&prefix));
            let v = values.next().map(str::to_string);
            assert!(
                values.next().is_none(),
                "{case}: --{name} twice in {args:?}"
            );
            v
        };
        let got = (
            flag("source").unwrap(),
            flag("control-plane"),
            flag("control-plane-identity"),
        );
        let want = (
            want.0.to_string(),
            want.1.map(str::to_string),
            want.2.map(str::to_string),
        );
        assert_eq!(got, want, "{case}: {args:?}");
        // Either way the waypoint reads no manifests folder, and keeps its Gateway, certs and listener.
        assert_eq!(flag("manifests"), None, "{case}");
        assert_eq!(flag("gateway").as_deref(), Some("ns/wp"), "{case}");
        assert_eq!(
            flag("cert").as_deref(),
            Some("/var/run/secrets/waypoint/tls.crt"),
            "{case}"
        );
        assert_eq!(flag("listen").as_deref(), Some("0.0.0.0:15008"), "{case}");
    }
    // The flags stay in the chart's (alphabetical) order, so the Deployment is stable across resyncs.
    let o = Options {
        control_plane: Some(url.into()),
        control_plane_identity: Some(id.into()),
        ..opts()
    };
    let names: Vec<String> = run_args("ns", "wp", &o)[5..]
        .iter()
        .map(|a| a.split('=').next().unwrap().to_string())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
}
