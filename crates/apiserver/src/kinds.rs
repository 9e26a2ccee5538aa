//! Per-kind storage strategy: selectable fields, what create and update may change, and
//! how deletion proceeds, following upstream's registry strategies.

use serde_json::{Value, json};

use super::object::field_string;
use super::registry::Resource;

/// Field-selector labels a kind supports beyond `metadata.name` / `metadata.namespace`.
fn selectable_fields(res: &Resource) -> &'static [&'static str] {
    match (res.storage.0.as_str(), res.storage.1.as_str()) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ],
        ("", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "secrets") => &["type"],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "namespaces") => &["status.phase"],
        ("", "replicationcontrollers") | ("apps", "replicasets") => &["status.replicas"],
        ("batch", "jobs") => &["status.successful"],
        ("certificates.k8s.io", "certificatesigningrequests") => &["spec.signerName"],
        _ => &[],
    }
}

/// Checks that every field of a selector is supported for this kind.
pub fn check_field_selector(
    res: &Resource,
    fields: &super::selectors::FieldSelector,
) -> Result<(), String> {
    for (f, _, _) in &fields.terms {
        if f != "metadata.name"
            && f != "metadata.namespace"
            && !selectable_fields(res).contains(&f.as_str())
        {
            return Err(format!("field label not supported: {f}"));
        }
    }
    Ok(())
}

/// The value a field selector compares for `field` of a stored object (core/v1 form for events).
pub fn field_value(res: &Resource, obj: &Value, field: &str) -> Option<String> {
    match (res.storage.1.as_str(), field) {
        ("pods", "spec.hostNetwork") => Some(
            obj.pointer("/spec/hostNetwork")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string(),
        ),
        ("pods", "status.podIPs") => obj
            .pointer("/status/podIPs/0/ip")
            .and_then(Value::as_str)
            .map(String::from),
        ("nodes", "spec.unschedulable") => Some(
            obj.pointer("/spec/unschedulable")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string(),
        ),
        ("events", "source") => obj
            .pointer("/source/component")
            .and_then(Value::as_str)
            .map(String::from),
        ("replicasets" | "replicationcontrollers", "status.replicas") => Some(
            obj.pointer("/status/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                .to_string(),
        ),
        ("jobs", "status.successful") => Some(
            obj.pointer("/status/succeeded")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                .to_string(),
        ),
        _ => field_string(obj, field),
    }
}

/// Whether `metadata.generation` is maintained for this kind.
pub fn tracks_generation(res: &Resource, obj: &Value) -> bool {
    res.is_custom() || res.has_status() || obj.get("spec").is_some()
}

/// The part of an object whose change bumps `metadata.generation`.
pub fn generation_relevant(res: &Resource, obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        if res.has_status() {
            m.remove("status");
        }
    }
    v
}

/// Prepares a new object for creation: status the client may not set is reset.
pub fn prepare_for_create(res: &Resource, obj: &mut Value) {
    let kind = (res.storage.0.as_str(), res.storage.1.as_str());
    if res.has_status()
        && !matches!(kind, ("", "nodes") | ("", "pods") | ("", "namespaces"))
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    match kind {
        ("", "pods") => {
            let qos = super::admission::qos_class(obj);
            obj["status"] = json!({"phase": "Pending", "qosClass": qos});
        }
        ("", "namespaces") => {
            obj["status"] = json!({"phase": "Active"});
            if obj.pointer("/spec/finalizers").is_none() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
        }
        ("", "persistentvolumeclaims") | ("", "persistentvolumes") => {
            obj["status"] = json!({"phase": "Pending"})
        }
        _ => {}
    }
}

/// Whether deleting an object waits for a graceful period (pods bound to a node).
pub fn graceful_period(res: &Resource, obj: &Value, requested: Option<i64>) -> Option<i64> {
    if (res.storage.0.as_str(), res.storage.1.as_str()) != ("", "pods") {
        return None;
    }
    let phase = obj
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    let bound = obj
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    if !bound || phase == "Succeeded" || phase == "Failed" {
        return None;
    }
    let default = obj
        .pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(30);
    let grace = requested.unwrap_or(default).max(0);
    (grace > 0).then_some(grace)
}
