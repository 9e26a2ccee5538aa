//! The workload kinds, whose pod templates get the pod-spec defaults and validation: apps/v1
//! (Deployment, ReplicaSet, StatefulSet, DaemonSet), ReplicationController, Job and CronJob.
//! What they share lives here.

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod job;
pub mod replicaset;
pub mod statefulset;

use serde_json::{Value, json};

use crate::admission::validation::{self, arr, immutable, non_negative, str_at};
use crate::selectors::LabelSelector;
use crate::status::Cause;
use crate::table::s;

/// What every apps/v1 workload checks: its selector against its template's labels, replicas,
/// its pod template (claim templates count as volumes, as a StatefulSet's do), then
/// `kind_checks` (a Deployment's strategy), and on update that the selector did not change.
fn validate_apps(
    obj: &Value,
    old: Option<&Value>,
    out: &mut Vec<Cause>,
    kind_checks: impl FnOnce(&Value, &mut Vec<Cause>),
) {
    selector_matches_template(obj, out, true);
    non_negative(obj, "/spec/replicas", "spec.replicas", out);
    let restart: &[&str] = &["Always"];
    // A StatefulSet's claim templates are volumes its containers may mount.
    let mut template = obj
        .pointer("/spec/template/spec")
        .cloned()
        .unwrap_or(Value::Null);
    for t in arr(obj, "/spec/volumeClaimTemplates") {
        if let (Some(name), Some(m)) = (str_at(t, "/metadata/name"), template.as_object_mut()) {
            let vols = m.entry("volumes").or_insert_with(|| json!([]));
            if let Some(v) = vols.as_array_mut() {
                v.push(json!({"name": name, "persistentVolumeClaim": {"claimName": name}}));
            }
        }
    }
    validation::pod_spec(&template, "spec.template.spec", Some(restart), out);
    kind_checks(obj, out);
    if let Some(old) = old {
        immutable(obj, old, "/spec/selector", "spec.selector", out);
    }
}

/// Checks a workload's selector against its template labels.
fn selector_matches_template(obj: &Value, out: &mut Vec<Cause>, required: bool) {
    let Some(sel) = obj.pointer("/spec/selector") else {
        if required {
            out.push(Cause::required("spec.selector"));
        }
        return;
    };
    match LabelSelector::from_object(sel) {
        Err(e) => out.push(Cause::invalid("spec.selector", sel, e)),
        Ok(ls) => {
            if ls.is_empty() {
                out.push(Cause::invalid(
                    "spec.selector",
                    sel,
                    "empty selector is invalid for deployment",
                ));
            }
            let labels = obj
                .pointer("/spec/template/metadata/labels")
                .cloned()
                .unwrap_or(json!({}));
            let map = labels
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default();
            if !ls.is_empty() && !ls.matches(&map) {
                out.push(Cause::invalid(
                    "spec.template.metadata.labels",
                    &labels,
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
}

/// The Containers and Images columns of a pod template.
fn containers_images(obj: &Value, ptr: &str) -> (Value, Value) {
    let cs = arr(obj, ptr);
    let names: Vec<&str> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, "/image")).collect();
    (json!(names.join(",")), json!(images.join(",")))
}
