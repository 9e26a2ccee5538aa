//! The admission decisions of upstream's PodSecurity plugin for pods, workload templates and
//! namespaces, with its messages, warnings and audit annotations.
//!
//! Exemptions (usernames, runtime classes, namespaces of the admission configuration file)
//! are not supported: there is no configuration file yet, so the defaults are upstream's
//! (privileged:latest for enforce, audit and warn).

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::checks::{Violation, check_pod, forbidden_detail, forbidden_reasons};
use crate::policy::{
    LABEL_PREFIX, Level, LevelVersion, NamespacePolicy, aggregate_errors, policy_from_labels,
};
use crate::text::go_quote;

#[cfg(test)]
mod tests;

/// Upstream looks at no more existing pods than this when a namespace's enforce level rises.
const NAMESPACE_MAX_PODS_TO_CHECK: usize = 3000;

/// Pod subresources upstream lets through unchecked.
const IGNORED_POD_SUBRESOURCES: &[&str] = &[
    "exec",
    "attach",
    "binding",
    "eviction",
    "log",
    "portforward",
    "proxy",
    "status",
];

/// The outcome for a pod or a workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Refused: the message of the 403 `Forbidden` Status, e.g. `pods "x" is forbidden:
    /// violates PodSecurity "restricted:latest": ...` (details: the pod's name, kind `pods`).
    pub denied: Option<String>,
    /// For `Warning: 299 - "..."` response headers, in order.
    pub warnings: Vec<String>,
    /// Audit annotations with their full keys (`pod-security.kubernetes.io/enforce-policy`,
    /// `.../audit-violations`, `.../error`).
    pub audit_annotations: Vec<(String, String)>,
}

/// The outcome for a namespace create or update.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceDecision {
    /// Refused when not empty: a 422 `Invalid` Status for kind `Namespace`, one cause per error
    /// (reason `FieldValueInvalid`, field [`crate::LabelError::field`], message
    /// [`crate::LabelError::message`]).
    pub invalid: Vec<crate::LabelError>,
    /// For `Warning` response headers: existing pods that violate a raised enforce level.
    pub warnings: Vec<String>,
}

/// `pods "x" is forbidden: violates PodSecurity "restricted:latest": reason (detail), ...`
/// (`pods is forbidden: ...` without a name).
pub fn forbidden_message(
    resource: &str,
    name: &str,
    enforce: LevelVersion,
    violations: &[Violation],
) -> String {
    let err = format!(
        "violates PodSecurity {}: {}",
        go_quote(&enforce.to_string()),
        forbidden_detail(violations)
    );
    if name.is_empty() {
        format!("{resource} is forbidden: {err}")
    } else {
        format!("{resource} {} is forbidden: {err}", go_quote(name))
    }
}

/// `would violate PodSecurity "restricted:latest": reason (detail), ...`: the warning (and audit)
/// text.
pub fn warning_message(lv: LevelVersion, violations: &[Violation]) -> String {
    format!(
        "would violate PodSecurity {}: {}",
        go_quote(&lv.to_string()),
        forbidden_detail(violations)
    )
}

fn labels_of(namespace: &Value) -> &Value {
    namespace
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .unwrap_or(&Value::Null)
}

fn annotation(key: &str, value: String) -> (String, String) {
    (format!("{LABEL_PREFIX}{key}"), value)
}

/// Admission of a pod create or update (`old_pod` set) in `namespace` (the Namespace object).
/// `subresource` is empty for the pod itself. Call it after defaulting and name generation,
/// before the pod is stored.
pub fn admit_pod(
    namespace: &Value,
    subresource: &str,
    pod: &Value,
    old_pod: Option<&Value>,
) -> Decision {
    if IGNORED_POD_SUBRESOURCES.contains(&subresource) {
        return Decision::default();
    }
    let (policy, errors) = policy_from_labels(labels_of(namespace));
    if errors.is_empty() && policy.fully_privileged() {
        return Decision {
            audit_annotations: vec![annotation(
                "enforce-policy",
                LevelVersion::PRIVILEGED_LATEST.to_string(),
            )],
            ..Decision::default()
        };
    }
    if let Some(old) = old_pod
        && !is_significant_pod_update(pod, old)
    {
        return Decision::default();
    }
    let metadata = pod.get("metadata").unwrap_or(&Value::Null);
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let name = metadata
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    evaluate(&policy, &errors, metadata, spec, Some(name))
}

/// Admission of a create or update of a workload that carries a pod template: only warnings
/// and audit annotations, never a refusal (upstream enforces on pods only). Resources:
/// podtemplates, replicationcontrollers (core), deployments, replicasets, statefulsets,
/// daemonsets (apps), jobs, cronjobs (batch); anything else is allowed untouched.
pub fn admit_pod_controller(
    namespace: &Value,
    group: &str,
    resource: &str,
    subresource: &str,
    obj: &Value,
) -> Decision {
    if !subresource.is_empty() {
        return Decision::default();
    }
    let (policy, errors) = policy_from_labels(labels_of(namespace));
    if errors.is_empty()
        && policy.warn.level == Level::Privileged
        && policy.audit.level == Level::Privileged
    {
        return Decision::default();
    }
    let Some(template) = pod_template(group, resource, obj) else {
        return Decision::default();
    };
    let metadata = template.get("metadata").unwrap_or(&Value::Null);
    let spec = template.get("spec").unwrap_or(&Value::Null);
    evaluate(&policy, &errors, metadata, spec, None)
}

/// The pod template of a workload resource, when it is one and has one.
pub fn pod_template<'a>(group: &str, resource: &str, obj: &'a Value) -> Option<&'a Value> {
    let path: &[&str] = match (group, resource) {
        ("", "podtemplates") => &["template"],
        ("", "replicationcontrollers")
        | ("apps", "replicasets" | "deployments" | "statefulsets" | "daemonsets")
        | ("batch", "jobs") => &["spec", "template"],
        ("batch", "cronjobs") => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    };
    path.iter()
        .try_fold(obj, |v, key| v.get(key))
        .filter(|t| !t.is_null())
}

/// Upstream's evaluation: enforce (pods only), then audit, then warn when not refused; each
/// level:version evaluated once.
fn evaluate(
    policy: &NamespacePolicy,
    errors: &[crate::LabelError],
    metadata: &Value,
    spec: &Value,
    enforce_name: Option<&str>,
) -> Decision {
    let mut decision = Decision::default();
    if !errors.is_empty() {
        decision.audit_annotations.push(annotation(
            "error",
            format!("Failed to parse policy: {}", aggregate_errors(errors)),
        ));
    }
    let mut cache: HashMap<LevelVersion, Vec<Violation>> = HashMap::new();
    let mut results = |lv: LevelVersion| {
        cache
            .entry(lv)
            .or_insert_with(|| check_pod(lv, metadata, spec))
            .clone()
    };
    if let Some(name) = enforce_name {
        decision
            .audit_annotations
            .push(annotation("enforce-policy", policy.enforce.to_string()));
        let violations = results(policy.enforce);
        if !violations.is_empty() {
            decision.denied = Some(forbidden_message("pods", name, policy.enforce, &violations));
        }
    }
    let audit = results(policy.audit);
    if !audit.is_empty() {
        decision.audit_annotations.push(annotation(
            "audit-violations",
            warning_message(policy.audit, &audit),
        ));
    }
    if decision.denied.is_none() {
        let warn = results(policy.warn);
        if !warn.is_empty() {
            decision.warnings.push(warning_message(policy.warn, &warn));
        }
    }
    decision
}

/// Upstream re-checks a pod update only when it changes a container image or adds an
/// ephemeral container: the other fields the checks read cannot change on a pod.
pub fn is_significant_pod_update(pod: &Value, old_pod: &Value) -> bool {
    let list = |p: &'_ Value, key: &str| -> Vec<Value> {
        p.get("spec")
            .and_then(|s| s.get(key))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let image = |c: &Value| c.get("image").cloned().unwrap_or(Value::Null);
    for key in ["containers", "initContainers"] {
        let (new, old) = (list(pod, key), list(old_pod, key));
        if new.len() != old.len() || new.iter().zip(&old).any(|(n, o)| image(n) != image(o)) {
            return true;
        }
    }
    let old_ephemeral = list(old_pod, "ephemeralContainers");
    list(pod, "ephemeralContainers").iter().any(|c| {
        match old_ephemeral
            .iter()
            .find(|o| o.get("name") == c.get("name"))
        {
            None => true,
            Some(o) => image(c) != image(o),
        }
    })
}

/// Admission of a namespace create (`old` None) or update. Invalid pod-security labels are
/// refused (on update only when they are new errors). When an update raises the enforce level,
/// `list_pods` is called for the namespace's pods and the ones that would now be refused are
/// reported as warnings; a listing error becomes upstream's warning about it.
pub fn admit_namespace(
    subresource: &str,
    namespace: &Value,
    old: Option<&Value>,
    list_pods: impl FnOnce() -> Result<Vec<Value>, String>,
) -> NamespaceDecision {
    if !subresource.is_empty() {
        return NamespaceDecision::default();
    }
    let (new_policy, new_errors) = policy_from_labels(labels_of(namespace));
    let Some(old) = old else {
        return NamespaceDecision {
            invalid: new_errors,
            warnings: Vec::new(),
        };
    };
    let (old_policy, old_errors) = policy_from_labels(labels_of(old));
    if !new_errors.is_empty() && (old_errors.is_empty() || new_errors != old_errors) {
        return NamespaceDecision {
            invalid: new_errors,
            warnings: Vec::new(),
        };
    }
    let (new_enforce, old_enforce) = (new_policy.enforce, old_policy.enforce);
    if new_enforce == old_enforce
        || new_enforce.level == Level::Privileged
        || (new_enforce.version == old_enforce.version && new_enforce.level <= old_enforce.level)
    {
        return NamespaceDecision::default();
    }
    let name = namespace
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let warnings = match list_pods() {
        Ok(pods) => existing_pods_warnings(name, new_enforce, &pods),
        Err(_) => vec!["failed to list pods while checking new PodSecurity enforce level".into()],
    };
    NamespaceDecision {
        invalid: Vec::new(),
        warnings,
    }
}

/// Upstream's warnings about a namespace's existing pods under a new enforce level:
/// `existing pods in namespace "ns" violate the new PodSecurity enforce level
/// "restricted:latest"`, then one line per distinct set of reasons, sorted, such as
/// `web-1 (and 2 other pods): privileged, runAsNonRoot != true`. One pod per controller is
/// looked at first, and at most 3000 pods in all.
pub fn existing_pods_warnings(
    namespace: &str,
    enforce: LevelVersion,
    pods: &[Value],
) -> Vec<String> {
    let pods = prioritize_pods(pods);
    let total = pods.len();
    let checked = total.min(NAMESPACE_MAX_PODS_TO_CHECK);

    // Reasons in order of first appearance, with the alphabetically first pod and the count.
    let mut reasons: Vec<String> = Vec::new();
    let mut counts: HashMap<String, (String, usize)> = HashMap::new();
    for pod in &pods[..checked] {
        let metadata = pod.get("metadata").unwrap_or(&Value::Null);
        let spec = pod.get("spec").unwrap_or(&Value::Null);
        let violations = check_pod(enforce, metadata, spec);
        if violations.is_empty() {
            continue;
        }
        let reason = forbidden_reasons(&violations);
        let name = metadata
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match counts.get_mut(&reason) {
            Some((first, count)) => {
                if name < first.as_str() {
                    *first = name.to_string();
                }
                *count += 1;
            }
            None => {
                reasons.push(reason.clone());
                counts.insert(reason, (name.to_string(), 1));
            }
        }
    }

    let mut warnings = Vec::new();
    if checked < total {
        warnings.push(format!(
            "new PodSecurity enforce level only checked against the first {checked} of {total} existing pods"
        ));
    }
    if !reasons.is_empty() {
        warnings.push(format!(
            "existing pods in namespace {} violate the new PodSecurity enforce level {}",
            go_quote(namespace),
            go_quote(&enforce.to_string())
        ));
    }
    let mut lines: Vec<String> = reasons
        .iter()
        .map(|reason| {
            let (pod, count) = &counts[reason];
            match count {
                1 => format!("{pod}: {reason}"),
                2 => format!("{pod} (and 1 other pod): {reason}"),
                n => format!("{pod} (and {} other pods): {reason}", n - 1),
            }
        })
        .collect();
    lines.sort();
    warnings.extend(lines);
    warnings
}

/// Pods without a controller and the first pod of each controller, then the other replicas:
/// replicas share a template, so the cap on checked pods spends itself on distinct pods.
fn prioritize_pods(pods: &[Value]) -> Vec<&Value> {
    let mut first = Vec::new();
    let mut duplicates = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for pod in pods {
        let controller = pod
            .get("metadata")
            .and_then(|m| m.get("ownerReferences"))
            .and_then(Value::as_array)
            .and_then(|refs| {
                refs.iter()
                    .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
            })
            .map(|r| r.get("uid").and_then(Value::as_str).unwrap_or_default());
        match controller {
            None => first.push(pod),
            Some(uid) if seen.insert(uid) => first.push(pod),
            Some(_) => duplicates.push(pod),
        }
    }
    first.extend(duplicates);
    first
}
