//! Pod and ownership helpers shared by the control plane and the node.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::Resource;

use crate::selectors;

/// A controller owner reference to `owner`.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    let meta = owner.meta();
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The uid of the object's controller, if any.
pub fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// Whether a metav1 LabelSelector matches `meta`'s labels (an empty selector matches nothing,
/// as workload controllers treat it).
pub fn selects(sel: &LabelSelector, meta: &ObjectMeta) -> bool {
    let Ok(v) = serde_json::to_value(sel) else {
        return false;
    };
    match selectors::LabelSelector::from_object(&v) {
        Ok(s) if !s.is_empty() => s.matches(&meta.labels.clone().unwrap_or_default()),
        _ => false,
    }
}

pub fn is_terminal(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

pub fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Ready for at least `min_ready` seconds.
pub fn is_available(p: &Pod, min_ready: i32, now: k8s_openapi::jiff::Timestamp) -> bool {
    let Some(cond) = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
    else {
        return false;
    };
    if min_ready <= 0 {
        return true;
    }
    cond.last_transition_time
        .as_ref()
        .is_some_and(|t| t.0.as_second() + i64::from(min_ready) <= now.as_second())
}
