//! APIServices: the default service port, upstream's validation, and kube-aggregator's `kubectl
//! get` columns (SERVICE is `Local` or `<namespace>/<name>`, AVAILABLE the `Available`
//! condition, with its reason when not True).

use serde_json::{Value, json};

use super::{KindBehaviour, NameCheck};
use crate::registry::Resource;
use crate::status::Cause;
use crate::table::{AGE, Columns, N, age, name, s};

pub struct ApiServices;

impl KindBehaviour for ApiServices {
    /// Any path segment (the core group's is `v1.`); `validate` requires `<version>.<group>`.
    fn name_check(&self) -> Option<NameCheck> {
        Some(path_segment)
    }

    fn defaults(&self, obj: &mut Value) {
        if let Some(svc) = obj
            .pointer_mut("/spec/service")
            .and_then(Value::as_object_mut)
            && svc.get("port").is_none_or(Value::is_null)
        {
            svc.insert("port".into(), json!(443));
        }
    }

    fn validate(&self, _res: &Resource, obj: &Value, _old: Option<&Value>, out: &mut Vec<Cause>) {
        validate(obj, out);
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
            vec![N, ("Service", "string", 0), ("Available", "string", 0), AGE],
            |v| vec![name(v), json!(service(v)), json!(available(v)), age(v)],
        );
        Some(columns)
    }
}

/// Upstream's `IsValidPathSegmentName`.
fn path_segment(name: &str) -> Option<String> {
    if name == "." || name == ".." {
        return Some(format!("may not be '{name}'"));
    }
    ["/", "%"]
        .iter()
        .find(|c| name.contains(*c))
        .map(|c| format!("may not contain '{c}'"))
}

fn service(obj: &Value) -> String {
    match obj.pointer("/spec/service").filter(|s| s.is_object()) {
        Some(svc) => format!(
            "{}/{}",
            svc["namespace"].as_str().unwrap_or_default(),
            svc["name"].as_str().unwrap_or_default()
        ),
        None => "Local".into(),
    }
}

fn available(obj: &Value) -> String {
    let condition = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Available"));
    let Some(c) = condition else {
        return "Unknown".into();
    };
    let status = c["status"].as_str().unwrap_or("Unknown");
    match c["reason"].as_str() {
        Some(reason) if status != "True" && !reason.is_empty() => format!("{status} ({reason})"),
        _ => status.into(),
    }
}

/// Upstream's `ValidateAPIService`.
fn validate(obj: &Value, out: &mut Vec<Cause>) {
    let group = s(obj, "/spec/group");
    let version = s(obj, "/spec/version");
    let name = s(obj, "/metadata/name");
    if name != format!("{version}.{group}") {
        out.push(Cause::invalid(
            "metadata.name",
            &json!(name),
            "must be `spec.version+\".\"+spec.group`",
        ));
    }
    if group.is_empty() && version != "v1" {
        out.push(Cause::invalid(
            "spec.group",
            &json!(group),
            "only v1 may have an empty group and it better be legacy kube",
        ));
    } else if let Some(e) = crate::object::check_dns_subdomain(group).filter(|_| !group.is_empty())
    {
        out.push(Cause::invalid("spec.group", &json!(group), e));
    }
    if version.is_empty() {
        out.push(Cause::required("spec.version"));
    }
    let group_priority = obj
        .pointer("/spec/groupPriorityMinimum")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if !(1..=20000).contains(&group_priority) {
        out.push(Cause::invalid(
            "spec.groupPriorityMinimum",
            &json!(group_priority),
            "must be positive and less than 20000",
        ));
    }
    let version_priority = obj
        .pointer("/spec/versionPriority")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if !(1..=1000).contains(&version_priority) {
        out.push(Cause::invalid(
            "spec.versionPriority",
            &json!(version_priority),
            "must be positive and less than 1000",
        ));
    }
    let insecure = obj
        .pointer("/spec/insecureSkipTLSVerify")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let ca_bundle = !s(obj, "/spec/caBundle").is_empty();
    match obj.pointer("/spec/service").filter(|s| s.is_object()) {
        None => {
            if ca_bundle {
                out.push(Cause::invalid(
                    "spec.caBundle",
                    &json!(s(obj, "/spec/caBundle")),
                    "local APIServices may not have a caBundle",
                ));
            }
            if insecure {
                out.push(Cause::invalid(
                    "spec.insecureSkipTLSVerify",
                    &json!(true),
                    "local APIServices may not have insecureSkipTLSVerify",
                ));
            }
        }
        Some(svc) => {
            if svc["namespace"].as_str().unwrap_or_default().is_empty() {
                out.push(Cause::required("spec.service.namespace"));
            }
            if svc["name"].as_str().unwrap_or_default().is_empty() {
                out.push(Cause::required("spec.service.name"));
            }
            if let Some(port) = svc["port"].as_i64()
                && !(1..=65535).contains(&port)
            {
                out.push(Cause::invalid(
                    "spec.service.port",
                    &json!(port),
                    "port is not valid: must be between 1 and 65535, inclusive",
                ));
            }
            if insecure && ca_bundle {
                out.push(Cause::invalid(
                    "spec.insecureSkipTLSVerify",
                    &json!(true),
                    "may not be true if caBundle is present",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn causes(obj: &Value) -> Vec<String> {
        let mut out = Vec::new();
        validate(obj, &mut out);
        out.into_iter().map(|c| c.field).collect()
    }

    #[test]
    fn validation_follows_upstream() {
        let ok = json!({"metadata": {"name": "v1alpha1.example.com"}, "spec": {"group": "example.com", "version": "v1alpha1",
            "groupPriorityMinimum": 1000, "versionPriority": 15, "service": {"namespace": "ns", "name": "api", "port": 443}}});
        assert!(causes(&ok).is_empty());
        let mut bad = ok.clone();
        bad["metadata"]["name"] = json!("wrong");
        bad["spec"]["versionPriority"] = json!(0);
        bad["spec"]["insecureSkipTLSVerify"] = json!(true);
        bad["spec"]["caBundle"] = json!("Zm9v");
        assert_eq!(
            causes(&bad),
            [
                "metadata.name",
                "spec.versionPriority",
                "spec.insecureSkipTLSVerify"
            ]
        );
        let local = json!({"metadata": {"name": "v1."}, "spec": {"group": "", "version": "v1", "groupPriorityMinimum": 18000, "versionPriority": 1, "caBundle": "Zm9v"}});
        assert_eq!(causes(&local), ["spec.caBundle"]);
        assert_eq!(path_segment("v1."), None);
        assert!(path_segment("a/b").is_some() && path_segment("..").is_some());
    }

    #[test]
    fn columns_show_service_and_availability() {
        let local = json!({"spec": {}, "status": {"conditions": [{"type": "Available", "status": "True", "reason": "Local"}]}});
        assert_eq!(service(&local), "Local");
        assert_eq!(available(&local), "True");
        let remote = json!({"spec": {"service": {"namespace": "ns", "name": "api"}},
            "status": {"conditions": [{"type": "Available", "status": "False", "reason": "MissingEndpoints"}]}});
        assert_eq!(service(&remote), "ns/api");
        assert_eq!(available(&remote), "False (MissingEndpoints)");
        assert_eq!(available(&json!({})), "Unknown");
        let mut d = json!({"spec": {"service": {"namespace": "ns", "name": "api"}}});
        ApiServices.defaults(&mut d);
        assert_eq!(d["spec"]["service"]["port"], 443);
    }
}
