//! Admission decisions and messages for pods, workloads and namespaces.

use std::cell::Cell;

use serde_json::{Value, json};

use super::*;
use crate::policy::Version;

const PRIVILEGED_X_RESTRICTED: &str = "pods \"x\" is forbidden: violates PodSecurity \"restricted:latest\": privileged (container \"x\" must not set securityContext.privileged=true), allowPrivilegeEscalation != false (container \"x\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"x\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"x\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"x\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")";

const PLAIN_WEB_RESTRICTED: &str = "would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"web\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"web\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"web\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"web\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")";

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn privileged_pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"containers": [{"name": name, "image": "busybox", "securityContext": {"privileged": true}}]},
    })
}

fn plain_pod(name: &str, image: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "web", "image": image}]},
    })
}

fn annotations(d: &Decision) -> Vec<(&str, &str)> {
    d.audit_annotations
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[test]
fn restricted_namespace_refuses_a_privileged_pod() {
    let ns = namespace(
        "ns",
        json!({"pod-security.kubernetes.io/enforce": "restricted"}),
    );
    let d = admit_pod(&ns, "", &privileged_pod("x"), None);
    assert_eq!(d.denied.as_deref(), Some(PRIVILEGED_X_RESTRICTED));
    assert!(d.warnings.is_empty(), "no warnings when refused");
    assert_eq!(
        annotations(&d),
        [(
            "pod-security.kubernetes.io/enforce-policy",
            "restricted:latest"
        )]
    );
}

#[test]
fn baseline_namespace_refuses_a_privileged_pod_and_warns_per_label() {
    let ns = namespace(
        "ns",
        json!({"pod-security.kubernetes.io/enforce": "baseline"}),
    );
    let d = admit_pod(&ns, "", &privileged_pod("x"), None);
    assert_eq!(
        d.denied.as_deref(),
        Some(
            "pods \"x\" is forbidden: violates PodSecurity \"baseline:latest\": privileged (container \"x\" must not set securityContext.privileged=true)"
        )
    );
    // A plain pod is fine for baseline, and warned about under a restricted warn label.
    assert_eq!(
        admit_pod(&ns, "", &plain_pod("p", "nginx"), None),
        Decision {
            audit_annotations: vec![(
                "pod-security.kubernetes.io/enforce-policy".into(),
                "baseline:latest".into()
            )],
            ..Decision::default()
        }
    );
    let ns = namespace(
        "ns",
        json!({
            "pod-security.kubernetes.io/enforce": "baseline",
            "pod-security.kubernetes.io/enforce-version": "v1.30",
            "pod-security.kubernetes.io/warn": "restricted",
        }),
    );
    let d = admit_pod(&ns, "", &plain_pod("p", "nginx"), None);
    assert_eq!(d.denied, None);
    assert_eq!(d.warnings, [PLAIN_WEB_RESTRICTED]);
    assert_eq!(
        annotations(&d),
        [(
            "pod-security.kubernetes.io/enforce-policy",
            "baseline:v1.30"
        )]
    );
}

#[test]
fn unlabelled_namespace_allows_everything() {
    let d = admit_pod(
        &namespace("ns", Value::Null),
        "",
        &privileged_pod("x"),
        None,
    );
    assert_eq!(d.denied, None);
    assert!(d.warnings.is_empty());
    assert_eq!(
        annotations(&d),
        [(
            "pod-security.kubernetes.io/enforce-policy",
            "privileged:latest"
        )]
    );
}

#[test]
fn audit_and_warn_labels_do_not_refuse() {
    let ns = namespace(
        "ns",
        json!({
            "pod-security.kubernetes.io/audit": "restricted",
            "pod-security.kubernetes.io/warn": "baseline",
            "pod-security.kubernetes.io/warn-version": "v1.28",
        }),
    );
    let d = admit_pod(&ns, "", &privileged_pod("x"), None);
    assert_eq!(d.denied, None);
    assert_eq!(
        d.warnings,
        [
            "would violate PodSecurity \"baseline:v1.28\": privileged (container \"x\" must not set securityContext.privileged=true)"
        ]
    );
    let audit =
        PRIVILEGED_X_RESTRICTED.replace("pods \"x\" is forbidden: violates", "would violate");
    assert_eq!(
        annotations(&d),
        [
            (
                "pod-security.kubernetes.io/enforce-policy",
                "privileged:latest"
            ),
            (
                "pod-security.kubernetes.io/audit-violations",
                audit.as_str()
            ),
        ]
    );
}

#[test]
fn invalid_enforce_label_fails_closed_and_is_audited() {
    let ns = namespace(
        "ns",
        json!({"pod-security.kubernetes.io/enforce": "strict"}),
    );
    let d = admit_pod(&ns, "", &privileged_pod("x"), None);
    assert_eq!(d.denied.as_deref(), Some(PRIVILEGED_X_RESTRICTED));
    assert_eq!(
        annotations(&d)[0],
        (
            "pod-security.kubernetes.io/error",
            "Failed to parse policy: metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: \"strict\": must be one of privileged, baseline, restricted"
        )
    );
    // Even a bad audit label alone makes the pod evaluated (and allowed).
    let ns = namespace("ns", json!({"pod-security.kubernetes.io/audit": "x"}));
    let d = admit_pod(&ns, "", &privileged_pod("x"), None);
    assert_eq!(d.denied, None);
    assert_eq!(annotations(&d).len(), 2);
}

#[test]
fn subresources_and_insignificant_updates_are_not_checked() {
    let ns = namespace(
        "ns",
        json!({"pod-security.kubernetes.io/enforce": "restricted"}),
    );
    let pod = privileged_pod("x");
    for sub in ["status", "binding", "eviction", "exec", "log"] {
        assert_eq!(
            admit_pod(&ns, sub, &pod, None),
            Decision::default(),
            "{sub}"
        );
    }
    assert!(
        admit_pod(&ns, "ephemeralcontainers", &pod, None)
            .denied
            .is_some()
    );

    // A label change on an existing pod is not re-checked; an image change is.
    let mut relabelled = pod.clone();
    relabelled["metadata"]["labels"] = json!({"a": "b"});
    assert_eq!(
        admit_pod(&ns, "", &relabelled, Some(&pod)),
        Decision::default()
    );
    let mut new_image = pod.clone();
    new_image["spec"]["containers"][0]["image"] = json!("busybox:2");
    assert_eq!(
        admit_pod(&ns, "", &new_image, Some(&pod)).denied.as_deref(),
        Some(PRIVILEGED_X_RESTRICTED)
    );
}

#[test]
fn significant_pod_updates() {
    let old = json!({"spec": {
        "initContainers": [{"name": "i", "image": "a"}],
        "containers": [{"name": "c", "image": "b"}],
        "ephemeralContainers": [{"name": "e", "image": "c"}],
    }});
    assert!(!is_significant_pod_update(&old, &old));
    let changed = |path: &str, v: Value| {
        let mut new = old.clone();
        *new.pointer_mut(path).unwrap() = v;
        is_significant_pod_update(&new, &old)
    };
    assert!(changed("/spec/initContainers/0/image", json!("x")));
    assert!(changed("/spec/containers/0/image", json!("x")));
    assert!(changed("/spec/ephemeralContainers/0/image", json!("x")));
    assert!(changed(
        "/spec/ephemeralContainers",
        json!([{"name": "e", "image": "c"}, {"name": "f", "image": "c"}])
    ));
    assert!(changed("/spec/containers", json!([])));
    assert!(!changed("/spec/containers/0/name", json!("renamed")));
}

#[test]
fn workloads_get_warnings_never_refusals() {
    let ns = namespace(
        "ns",
        json!({"pod-security.kubernetes.io/enforce": "restricted"}),
    );
    let template = json!({"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}});
    let deployment =
        json!({"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": template}});
    let d = admit_pod_controller(&ns, "apps", "deployments", "", &deployment);
    assert_eq!(
        d,
        Decision {
            warnings: vec![PLAIN_WEB_RESTRICTED.to_string()],
            ..Decision::default()
        }
    );
    let cronjob = json!({"spec": {"jobTemplate": {"spec": {"template": template}}}});
    assert_eq!(
        admit_pod_controller(&ns, "batch", "cronjobs", "", &cronjob).warnings,
        [PLAIN_WEB_RESTRICTED]
    );
    let pod_template = json!({"template": template});
    assert_eq!(
        admit_pod_controller(&ns, "", "podtemplates", "", &pod_template).warnings,
        [PLAIN_WEB_RESTRICTED]
    );
    for (group, resource) in [
        ("apps", "replicasets"),
        ("apps", "statefulsets"),
        ("apps", "daemonsets"),
        ("batch", "jobs"),
        ("", "replicationcontrollers"),
    ] {
        let d = admit_pod_controller(&ns, group, resource, "", &deployment);
        assert_eq!(d.warnings.len(), 1, "{group}/{resource}");
    }
    // Not workloads, subresources, a missing template, enforce only: nothing.
    assert_eq!(
        admit_pod_controller(&ns, "", "services", "", &deployment),
        Decision::default()
    );
    assert_eq!(
        admit_pod_controller(&ns, "apps", "deployments", "scale", &deployment),
        Decision::default()
    );
    assert_eq!(
        admit_pod_controller(&ns, "", "replicationcontrollers", "", &json!({"spec": {}})),
        Decision::default()
    );
    let enforce_only = namespace(
        "ns",
        json!({"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "privileged"}),
    );
    assert_eq!(
        admit_pod_controller(&enforce_only, "apps", "deployments", "", &deployment),
        Decision::default()
    );
    // A compliant template gets nothing.
    let mut good = deployment.clone();
    good["spec"]["template"]["spec"] = json!({
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "web", "image": "nginx", "securityContext": {
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
    });
    assert_eq!(
        admit_pod_controller(&ns, "apps", "deployments", "", &good),
        Decision::default()
    );
}

#[test]
fn namespace_labels_are_validated() {
    let no_pods = || -> Result<Vec<Value>, String> { panic!("pods listed on create") };
    let ns = namespace(
        "ns",
        json!({"pod-security.kubernetes.io/enforce": "restrictd", "pod-security.kubernetes.io/warn-version": "1.30"}),
    );
    let d = admit_namespace("", &ns, None, no_pods);
    let texts: Vec<String> = d.invalid.iter().map(ToString::to_string).collect();
    assert_eq!(
        texts,
        [
            "metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: \"restrictd\": must be one of privileged, baseline, restricted",
            "metadata.labels[pod-security.kubernetes.io/warn-version]: Invalid value: \"1.30\": must be \"latest\" or \"v1.x\"",
        ]
    );
    let good = namespace(
        "ns",
        json!({"pod-security.kubernetes.io/enforce": "baseline"}),
    );
    assert_eq!(
        admit_namespace("", &good, None, no_pods),
        NamespaceDecision::default()
    );
    // Updates keep old errors but refuse new ones.
    let unrelated = || -> Result<Vec<Value>, String> { Ok(Vec::new()) };
    let mut relabelled = ns.clone();
    relabelled["metadata"]["labels"]["team"] = json!("a");
    assert!(
        admit_namespace("", &relabelled, Some(&ns), unrelated)
            .invalid
            .is_empty()
    );
    assert_eq!(
        admit_namespace("", &ns, Some(&good), unrelated)
            .invalid
            .len(),
        2
    );
    let mut other_error = ns.clone();
    other_error["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] = json!("x");
    assert_eq!(
        admit_namespace("", &other_error, Some(&ns), unrelated)
            .invalid
            .len(),
        2
    );
    // Subresources (finalize, status) are not checked.
    assert_eq!(
        admit_namespace("finalize", &ns, Some(&good), no_pods),
        NamespaceDecision::default()
    );
}

#[test]
fn raising_enforce_warns_about_existing_pods() {
    let old = namespace(
        "demo",
        json!({"pod-security.kubernetes.io/enforce": "baseline"}),
    );
    let new = namespace(
        "demo",
        json!({"pod-security.kubernetes.io/enforce": "restricted"}),
    );
    let pods = vec![
        privileged_pod("x"),
        plain_pod("web-b", "nginx"),
        plain_pod("web-a", "nginx"),
        plain_pod("web-c", "nginx"),
    ];
    let listed = Cell::new(0);
    let list = || {
        listed.set(listed.get() + 1);
        Ok(pods.clone())
    };
    let d = admit_namespace("", &new, Some(&old), list);
    assert_eq!(listed.get(), 1);
    assert!(d.invalid.is_empty());
    assert_eq!(
        d.warnings,
        [
            "existing pods in namespace \"demo\" violate the new PodSecurity enforce level \"restricted:latest\"",
            "web-a (and 2 other pods): allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile",
            "x: privileged, allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile",
        ]
    );

    // Lowering, keeping, or going privileged lists nothing.
    let never = || -> Result<Vec<Value>, String> { panic!("pods listed") };
    assert_eq!(
        admit_namespace("", &old, Some(&new), never),
        NamespaceDecision::default()
    );
    assert_eq!(
        admit_namespace("", &new, Some(&new), never),
        NamespaceDecision::default()
    );
    let privileged = namespace(
        "demo",
        json!({"pod-security.kubernetes.io/enforce": "privileged"}),
    );
    assert_eq!(
        admit_namespace("", &privileged, Some(&new), never),
        NamespaceDecision::default()
    );
    // A new version at a lower level is still checked.
    let older = namespace(
        "demo",
        json!({"pod-security.kubernetes.io/enforce": "baseline", "pod-security.kubernetes.io/enforce-version": "v1.20"}),
    );
    let d = admit_namespace("", &older, Some(&new), || Ok(vec![privileged_pod("x")]));
    assert_eq!(
        d.warnings,
        [
            "existing pods in namespace \"demo\" violate the new PodSecurity enforce level \"baseline:v1.20\"",
            "x: privileged",
        ]
    );
    // Compliant pods: no warnings; a listing error: upstream's warning.
    let d = admit_namespace("", &new, Some(&old), || Ok(Vec::new()));
    assert!(d.warnings.is_empty());
    let d = admit_namespace("", &new, Some(&old), || Err("boom".into()));
    assert_eq!(
        d.warnings,
        ["failed to list pods while checking new PodSecurity enforce level"]
    );
}

#[test]
fn existing_pods_are_counted_per_reason_and_capped() {
    let lv = LevelVersion::new(Level::Baseline, Version::Latest);
    let owned = |name: &str, uid: &str| {
        let mut p = privileged_pod(name);
        p["metadata"]["ownerReferences"] =
            json!([{"uid": uid, "controller": true, "kind": "ReplicaSet", "name": "rs"}]);
        p
    };
    let pods = vec![
        owned("rs-2", "u1"),
        owned("rs-1", "u1"),
        privileged_pod("solo"),
    ];
    assert_eq!(
        existing_pods_warnings("ns", lv, &pods),
        [
            "existing pods in namespace \"ns\" violate the new PodSecurity enforce level \"baseline:latest\"",
            "rs-1 (and 2 other pods): privileged",
        ]
    );
    // Past 3000 pods, one pod per controller is checked before the other replicas.
    let mut many: Vec<Value> = (0..3000)
        .map(|i| owned(&format!("r-{i}"), "same"))
        .collect();
    many.push(owned("other", "different"));
    let warnings = existing_pods_warnings("ns", lv, &many);
    assert_eq!(
        warnings[0],
        "new PodSecurity enforce level only checked against the first 3000 of 3001 existing pods"
    );
    assert_eq!(warnings[2], "other (and 2999 other pods): privileged");
}

#[test]
fn forbidden_message_without_a_name() {
    let lv = LevelVersion::new(Level::Baseline, Version::V1(33));
    let v = vec![crate::Violation {
        reason: "privileged".into(),
        detail: "container \"a\" must not set securityContext.privileged=true".into(),
    }];
    assert_eq!(
        forbidden_message("pods", "", lv, &v),
        "pods is forbidden: violates PodSecurity \"baseline:v1.33\": privileged (container \"a\" must not set securityContext.privileged=true)"
    );
    assert_eq!(
        warning_message(lv, &v),
        "would violate PodSecurity \"baseline:v1.33\": privileged (container \"a\" must not set securityContext.privileged=true)"
    );
}
