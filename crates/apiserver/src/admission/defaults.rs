//! Upstream defaulting (`SetDefaults_*` of the v1 API groups) for the built-in kinds: the
//! helpers and the pod-spec defaults every pod template shares; what each kind sets is in its
//! module under `kinds`.

use serde_json::{Value, json};

use crate::kinds;
use crate::registry::Resource;

/// Sets `obj[key] = value` if absent or null.
pub(crate) fn default(obj: &mut Value, key: &str, value: Value) {
    if let Some(m) = obj.as_object_mut() {
        match m.get(key) {
            Some(v) if !v.is_null() => {}
            _ => {
                m.insert(key.to_string(), value);
            }
        }
    }
}

pub(crate) fn each(obj: &mut Value, key: &str, mut f: impl FnMut(&mut Value)) {
    if let Some(a) = obj.get_mut(key).and_then(Value::as_array_mut) {
        a.iter_mut().for_each(&mut f);
    }
}

pub(crate) fn obj_at<'a>(obj: &'a mut Value, key: &str) -> Option<&'a mut Value> {
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

pub(crate) fn template(obj: &mut Value, path: &[&str]) {
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

pub(crate) fn selector_protocols(obj: &mut Value, list: &str) {
    each(obj, list, |p| default(p, "protocol", json!("TCP")));
}

/// Applies the kind's defaults to `obj` (the request body after type checks).
pub fn apply(res: &Resource, obj: &mut Value) {
    kinds::of(res).defaults(obj);
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
