//! Upstream defaulting (`SetDefaults_*` of the v1 API groups) for the built-in kinds.

use serde_json::{Value, json};

use crate::registry::Resource;

/// Sets `obj[key] = value` if absent or null.
fn default(obj: &mut Value, key: &str, value: Value) {
    if let Some(m) = obj.as_object_mut() {
        match m.get(key) {
            Some(v) if !v.is_null() => {}
            _ => {
                m.insert(key.to_string(), value);
            }
        }
    }
}

fn each(obj: &mut Value, key: &str, mut f: impl FnMut(&mut Value)) {
    if let Some(a) = obj.get_mut(key).and_then(Value::as_array_mut) {
        a.iter_mut().for_each(&mut f);
    }
}

fn obj_at<'a>(obj: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    obj.get_mut(key).filter(|v| v.is_object())
}

/// `:latest` or untagged images default to `Always`, others to `IfNotPresent`.
pub fn default_pull_policy(image: &str) -> &'static str {
    let without_digest = image.split('@').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn probe(p: &mut Value) {
    default(p, "timeoutSeconds", json!(1));
    default(p, "periodSeconds", json!(10));
    default(p, "successThreshold", json!(1));
    default(p, "failureThreshold", json!(3));
    if let Some(h) = obj_at(p, "httpGet") {
        default(h, "scheme", json!("HTTP"));
        default(h, "path", json!("/"));
    }
    if let Some(g) = obj_at(p, "grpc") {
        default(g, "service", json!(""));
    }
}

fn container(c: &mut Value, host_network: bool) {
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !image.is_empty() {
        default(c, "imagePullPolicy", json!(default_pull_policy(&image)));
    }
    default(c, "resources", json!({}));
    each(c, "ports", |p| {
        default(p, "protocol", json!("TCP"));
        if host_network {
            let cp = p.get("containerPort").cloned().unwrap_or(Value::Null);
            default(p, "hostPort", cp);
        }
    });
    each(c, "env", |e| {
        if let Some(fr) = e.get_mut("valueFrom").and_then(|v| obj_at(v, "fieldRef")) {
            default(fr, "apiVersion", json!("v1"));
        }
    });
    for p in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(pr) = obj_at(c, p) {
            probe(pr);
        }
    }
}

fn volume(v: &mut Value) {
    for (src, mode_key) in [
        ("secret", "defaultMode"),
        ("configMap", "defaultMode"),
        ("downwardAPI", "defaultMode"),
        ("projected", "defaultMode"),
    ] {
        if let Some(s) = obj_at(v, src) {
            default(s, mode_key, json!(420));
            if src == "projected" {
                each(s, "sources", |ps| {
                    if let Some(t) = obj_at(ps, "serviceAccountToken") {
                        default(t, "expirationSeconds", json!(3600));
                    }
                    if let Some(d) = obj_at(ps, "downwardAPI") {
                        each(d, "items", |i| {
                            if let Some(fr) = obj_at(i, "fieldRef") {
                                default(fr, "apiVersion", json!("v1"));
                            }
                        });
                    }
                });
            }
            if src == "downwardAPI" {
                each(s, "items", |i| {
                    if let Some(fr) = obj_at(i, "fieldRef") {
                        default(fr, "apiVersion", json!("v1"));
                    }
                });
            }
        }
    }
    if let Some(h) = obj_at(v, "hostPath") {
        default(h, "type", json!(""));
    }
    if let Some(e) = v.get_mut("emptyDir")
        && e.is_null()
    {
        *e = json!({});
    }
}

/// `SetDefaults_PodSpec` and its containers and volumes.
pub fn pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    let host_network = spec
        .get("hostNetwork")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        each(spec, list, |c| container(c, host_network));
    }
    each(spec, "volumes", volume);
}

fn template(obj: &mut Value, path: &[&str]) {
    let mut cur = obj;
    for p in path {
        match cur.get_mut(*p) {
            Some(v) => cur = v,
            None => return,
        }
    }
    if let Some(spec) = cur.get_mut("spec") {
        pod_spec(spec);
    }
}

fn selector_protocols(obj: &mut Value, list: &str) {
    each(obj, list, |p| default(p, "protocol", json!("TCP")));
}

/// Applies the kind's defaults to `obj` (the request body after type checks).
pub fn apply(res: &Resource, obj: &mut Value) {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match (res.storage.0.as_str(), res.storage.1.as_str()) {
        ("", "pods") => {
            if let Some(spec) = obj.get_mut("spec") {
                pod_spec(spec);
                // Requests default to limits (SetDefaults_Pod).
                for list in ["initContainers", "containers"] {
                    each(spec, list, |c| {
                        let limits = c
                            .pointer("/resources/limits")
                            .and_then(Value::as_object)
                            .cloned();
                        if let Some(limits) = limits {
                            let res = c.get_mut("resources").expect("defaulted");
                            let req = res
                                .as_object_mut()
                                .expect("object")
                                .entry("requests")
                                .or_insert_with(|| json!({}));
                            if let Some(r) = req.as_object_mut() {
                                for (k, v) in limits {
                                    r.entry(k).or_insert(v);
                                }
                            }
                        }
                    });
                }
                default(spec, "enableServiceLinks", json!(true));
                default(spec, "priority", json!(0));
                default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
            }
        }
        ("", "podtemplates") => template(obj, &["template"]),
        ("", "replicationcontrollers") => {
            if let Some(spec) = obj_at(obj, "spec") {
                default(spec, "replicas", json!(1));
                let labels = spec.pointer("/template/metadata/labels").cloned();
                if let Some(l) = labels {
                    default(spec, "selector", l);
                }
            }
            template(obj, &["spec", "template"]);
        }
        ("", "services") => {
            if let Some(spec) = obj_at(obj, "spec") {
                default(spec, "type", json!("ClusterIP"));
                let typ = spec
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if typ != "ExternalName" {
                    default(spec, "sessionAffinity", json!("None"));
                    default(spec, "internalTrafficPolicy", json!("Cluster"));
                }
                if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
                    default(
                        spec,
                        "sessionAffinityConfig",
                        json!({"clientIP": {"timeoutSeconds": 10800}}),
                    );
                }
                if typ == "NodePort" || typ == "LoadBalancer" {
                    default(spec, "externalTrafficPolicy", json!("Cluster"));
                }
                if typ == "LoadBalancer" {
                    default(spec, "allocateLoadBalancerNodePorts", json!(true));
                }
                each(spec, "ports", |p| {
                    default(p, "protocol", json!("TCP"));
                    let port = p.get("port").cloned().unwrap_or(Value::Null);
                    default(p, "targetPort", port);
                });
            }
        }
        ("", "endpoints") => each(obj, "subsets", |s| selector_protocols(s, "ports")),
        ("", "namespaces") => {
            if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                let labels = m.entry("labels").or_insert_with(|| json!({}));
                if let Some(l) = labels.as_object_mut() {
                    l.insert("kubernetes.io/metadata.name".into(), json!(name));
                }
            }
        }
        ("", "secrets") => default(obj, "type", json!("Opaque")),
        ("", "persistentvolumeclaims") => {
            if let Some(spec) = obj_at(obj, "spec") {
                default(spec, "volumeMode", json!("Filesystem"));
            }
        }
        ("", "persistentvolumes") => {
            if let Some(spec) = obj_at(obj, "spec") {
                default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
                default(spec, "volumeMode", json!("Filesystem"));
            }
        }
        ("apps", "deployments") => {
            if let Some(spec) = obj_at(obj, "spec") {
                default(spec, "replicas", json!(1));
                default(spec, "strategy", json!({}));
                if let Some(st) = obj_at(spec, "strategy") {
                    default(st, "type", json!("RollingUpdate"));
                    if st.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                        default(st, "rollingUpdate", json!({}));
                        if let Some(ru) = obj_at(st, "rollingUpdate") {
                            default(ru, "maxUnavailable", json!("25%"));
                            default(ru, "maxSurge", json!("25%"));
                        }
                    }
                }
                default(spec, "revisionHistoryLimit", json!(10));
                default(spec, "progressDeadlineSeconds", json!(600));
            }
            template(obj, &["spec", "template"]);
        }
        ("apps", "replicasets") => {
            if let Some(spec) = obj_at(obj, "spec") {
                default(spec, "replicas", json!(1));
            }
            template(obj, &["spec", "template"]);
        }
        ("apps", "statefulsets") => {
            if let Some(spec) = obj_at(obj, "spec") {
                default(spec, "replicas", json!(1));
                default(spec, "podManagementPolicy", json!("OrderedReady"));
                default(spec, "updateStrategy", json!({}));
                if let Some(st) = obj_at(spec, "updateStrategy") {
                    default(st, "type", json!("RollingUpdate"));
                    if st.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                        default(st, "rollingUpdate", json!({"partition": 0}));
                    }
                }
                default(spec, "revisionHistoryLimit", json!(10));
                default(
                    spec,
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
                each(spec, "volumeClaimTemplates", |t| {
                    if let Some(s) = obj_at(t, "spec") {
                        default(s, "volumeMode", json!("Filesystem"));
                    }
                    default(t, "status", json!({"phase": "Pending"}));
                    default(t, "apiVersion", json!("v1"));
                    default(t, "kind", json!("PersistentVolumeClaim"));
                });
            }
            template(obj, &["spec", "template"]);
        }
        ("apps", "daemonsets") => {
            if let Some(spec) = obj_at(obj, "spec") {
                default(spec, "updateStrategy", json!({}));
                if let Some(st) = obj_at(spec, "updateStrategy") {
                    default(st, "type", json!("RollingUpdate"));
                    if st.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                        default(st, "rollingUpdate", json!({}));
                        if let Some(ru) = obj_at(st, "rollingUpdate") {
                            default(ru, "maxUnavailable", json!(1));
                            default(ru, "maxSurge", json!(0));
                        }
                    }
                }
                default(spec, "revisionHistoryLimit", json!(10));
            }
            template(obj, &["spec", "template"]);
        }
        ("batch", "jobs") => {
            if let Some(spec) = obj_at(obj, "spec") {
                job_spec(spec);
            }
            template(obj, &["spec", "template"]);
        }
        ("batch", "cronjobs") => {
            if let Some(spec) = obj_at(obj, "spec") {
                default(spec, "concurrencyPolicy", json!("Allow"));
                default(spec, "suspend", json!(false));
                default(spec, "successfulJobsHistoryLimit", json!(3));
                default(spec, "failedJobsHistoryLimit", json!(1));
                if let Some(js) = spec.get_mut("jobTemplate").and_then(|t| obj_at(t, "spec")) {
                    job_spec(js);
                }
            }
            template(obj, &["spec", "jobTemplate", "spec", "template"]);
        }
        ("autoscaling", "horizontalpodautoscalers") => {
            if let Some(spec) = obj_at(obj, "spec") {
                default(spec, "minReplicas", json!(1));
                let empty = spec
                    .get("metrics")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty);
                if empty {
                    spec["metrics"] = json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]);
                }
            }
        }
        ("scheduling.k8s.io", "priorityclasses") => {
            default(obj, "preemptionPolicy", json!("PreemptLowerPriority"))
        }
        ("storage.k8s.io", "storageclasses") => {
            default(obj, "reclaimPolicy", json!("Delete"));
            default(obj, "volumeBindingMode", json!("Immediate"));
        }
        ("networking.k8s.io", "networkpolicies") => {
            if let Some(spec) = obj_at(obj, "spec") {
                if spec.get("policyTypes").is_none() {
                    let mut types = vec![json!("Ingress")];
                    if spec
                        .get("egress")
                        .and_then(Value::as_array)
                        .is_some_and(|a| !a.is_empty())
                    {
                        types.push(json!("Egress"));
                    }
                    spec["policyTypes"] = Value::Array(types);
                }
                for dir in ["ingress", "egress"] {
                    each(spec, dir, |rule| selector_protocols(rule, "ports"));
                }
            }
        }
        ("discovery.k8s.io", "endpointslices") => {
            each(obj, "ports", |p| default(p, "protocol", json!("TCP")))
        }
        _ => {}
    }
}

fn job_spec(spec: &mut Value) {
    let completions = spec.get("completions").filter(|v| !v.is_null()).cloned();
    let parallelism = spec.get("parallelism").filter(|v| !v.is_null()).cloned();
    if completions.is_none() && parallelism.is_none() {
        spec["completions"] = json!(1);
    }
    default(spec, "parallelism", json!(1));
    default(spec, "backoffLimit", json!(6));
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    let failed_only = spec.pointer("/podFailurePolicy").is_some();
    default(
        spec,
        "podReplacementPolicy",
        json!(if failed_only {
            "Failed"
        } else {
            "TerminatingOrFailed"
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy() {
        assert_eq!(default_pull_policy("busybox"), "Always");
        assert_eq!(default_pull_policy("busybox:latest"), "Always");
        assert_eq!(default_pull_policy("localhost:5000/busybox"), "Always");
        assert_eq!(
            default_pull_policy("localhost:5000/busybox:1.36"),
            "IfNotPresent"
        );
        assert_eq!(default_pull_policy("busybox@sha256:abc"), "IfNotPresent");
    }
}
