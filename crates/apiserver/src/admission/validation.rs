//! Validation of built-in kinds with field-level causes, after upstream's `validation.go`.

use kinglet_core::cron::{Schedule, zone};
use std::collections::HashSet;

use serde_json::{Value, json};

use crate::object::{
    check_dns_label, check_dns_subdomain, check_dns1035_label, check_label_key, check_label_value,
};
use crate::registry::Resource;
use crate::selectors::LabelSelector;
use crate::status::Cause;

fn s<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Validates `metadata` of any object.
pub fn metadata(res: &Resource, obj: &Value, out: &mut Vec<Cause>) {
    let name = s(obj, "/metadata/name").unwrap_or("");
    if name.is_empty() {
        if s(obj, "/metadata/generateName").unwrap_or("").is_empty() {
            out.push(Cause::new(
                "FieldValueRequired",
                "metadata.name",
                "Required value: name or generateName is required",
            ));
        }
    } else {
        let check = match res.storage.1.as_str() {
            "namespaces" => check_dns_label(name),
            "services" => check_dns1035_label(name),
            "nodes" | "events" => None,
            _ if res.group == "rbac.authorization.k8s.io" => {
                (name.contains('/') || name.contains('%') || name == "." || name == "..")
                    .then(|| "may not contain '/' or '%'".into())
            }
            _ => check_dns_subdomain(name),
        };
        if let Some(e) = check {
            out.push(Cause::invalid("metadata.name", &json!(name), e));
        }
    }
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(e) = check_label_key(k) {
                out.push(Cause::invalid("metadata.labels", &json!(k), e));
            }
            match v.as_str() {
                Some(v) => {
                    if let Some(e) = check_label_value(v) {
                        out.push(Cause::invalid("metadata.labels", &json!(v), e));
                    }
                }
                None => out.push(Cause::invalid("metadata.labels", v, "must be a string")),
            }
        }
    }
    if let Some(ann) = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        let total: usize = ann
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if total > 256 * 1024 {
            out.push(Cause::new(
                "FieldValueTooLong",
                "metadata.annotations",
                "Too long: must have at most 262144 bytes",
            ));
        }
        for k in ann.keys() {
            if let Some(e) = check_label_key(&k.to_lowercase()) {
                out.push(Cause::invalid("metadata.annotations", &json!(k), e));
            }
        }
    }
    for (i, r) in arr(obj, "/metadata/ownerReferences").iter().enumerate() {
        for f in ["apiVersion", "kind", "name", "uid"] {
            if s(r, &format!("/{f}")).unwrap_or("").is_empty() {
                out.push(Cause::required(format!(
                    "metadata.ownerReferences[{i}].{f}"
                )));
            }
        }
    }
    for f in arr(obj, "/metadata/finalizers") {
        let name = f.as_str().unwrap_or("");
        if name.is_empty()
            || (!name.contains('/')
                && !["kubernetes", "orphan", "foregroundDeletion"].contains(&name)
                && check_dns_subdomain(name).is_some())
        {
            out.push(Cause::invalid(
                "metadata.finalizers",
                f,
                "name is neither a standard finalizer name nor is it fully qualified",
            ));
        }
    }
}

fn ports(c: &Value, path: &str, out: &mut Vec<Cause>) {
    for (i, p) in arr(c, "/ports").iter().enumerate() {
        let cp = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&cp) {
            let f = format!("{path}.ports[{i}].containerPort");
            if p.get("containerPort").is_none() {
                out.push(Cause::required(f));
            } else {
                out.push(Cause::invalid(
                    f,
                    &json!(cp),
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
        if let Some(proto) = s(p, "/protocol")
            && !["TCP", "UDP", "SCTP"].contains(&proto)
        {
            out.push(Cause::unsupported(
                format!("{path}.ports[{i}].protocol"),
                &json!(proto),
                &["SCTP", "TCP", "UDP"],
            ));
        }
    }
}

/// Validates a PodSpec at `path` (`spec`, `spec.template.spec`).
pub fn pod_spec(spec: &Value, path: &str, template_restart: Option<&[&str]>, out: &mut Vec<Cause>) {
    let volumes: HashSet<&str> = arr(spec, "/volumes")
        .iter()
        .filter_map(|v| s(v, "/name"))
        .collect();
    let mut vnames = HashSet::new();
    for (i, v) in arr(spec, "/volumes").iter().enumerate() {
        let n = s(v, "/name").unwrap_or("");
        if n.is_empty() {
            out.push(Cause::required(format!("{path}.volumes[{i}].name")));
        } else if let Some(e) = check_dns_label(n) {
            out.push(Cause::invalid(
                format!("{path}.volumes[{i}].name"),
                &json!(n),
                e,
            ));
        } else if !vnames.insert(n) {
            out.push(Cause::duplicate(
                format!("{path}.volumes[{i}].name"),
                &json!(n),
            ));
        }
    }
    if arr(spec, "/containers").is_empty() {
        out.push(Cause::required(format!("{path}.containers")));
    }
    let mut names = HashSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in arr(spec, &format!("/{list}")).iter().enumerate() {
            let cp = format!("{path}.{list}[{i}]");
            let n = s(c, "/name").unwrap_or("");
            if n.is_empty() {
                out.push(Cause::required(format!("{cp}.name")));
            } else if let Some(e) = check_dns_label(n) {
                out.push(Cause::invalid(format!("{cp}.name"), &json!(n), e));
            } else if !names.insert(n.to_string()) {
                out.push(Cause::duplicate(format!("{cp}.name"), &json!(n)));
            }
            if s(c, "/image").unwrap_or("").trim().is_empty() {
                out.push(Cause::required(format!("{cp}.image")));
            }
            if let Some(p) = s(c, "/imagePullPolicy")
                && !["Always", "IfNotPresent", "Never"].contains(&p)
            {
                out.push(Cause::unsupported(
                    format!("{cp}.imagePullPolicy"),
                    &json!(p),
                    &["Always", "IfNotPresent", "Never"],
                ));
            }
            ports(c, &cp, out);
            for (j, m) in arr(c, "/volumeMounts").iter().enumerate() {
                let vn = s(m, "/name").unwrap_or("");
                if !volumes.contains(vn) {
                    out.push(Cause::new(
                        "FieldValueNotFound",
                        format!("{cp}.volumeMounts[{j}].name"),
                        format!("Not found: {:?}", vn),
                    ));
                }
                if s(m, "/mountPath").unwrap_or("").is_empty() {
                    out.push(Cause::required(format!("{cp}.volumeMounts[{j}].mountPath")));
                }
                // The kubelet joins subPath to the volume's directory on the host.
                if let Some(sub) = s(m, "/subPath") {
                    let field = format!("{cp}.volumeMounts[{j}].subPath");
                    if sub.starts_with('/') {
                        out.push(Cause::invalid(
                            field,
                            &json!(sub),
                            "must be a relative path",
                        ));
                    } else if sub.split('/').any(|part| part == "..") {
                        out.push(Cause::invalid(field, &json!(sub), "must not contain '..'"));
                    }
                }
            }
            for (j, e) in arr(c, "/env").iter().enumerate() {
                if s(e, "/name").unwrap_or("").is_empty() {
                    out.push(Cause::required(format!("{cp}.env[{j}].name")));
                }
            }
        }
    }
    let restart = s(spec, "/restartPolicy").unwrap_or("Always");
    let allowed = template_restart.unwrap_or(&["Always", "OnFailure", "Never"]);
    if !allowed.contains(&restart) {
        out.push(Cause::unsupported(
            format!("{path}.restartPolicy"),
            &json!(restart),
            allowed,
        ));
    }
    if let Some(d) = s(spec, "/dnsPolicy") {
        let ok = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
        if !ok.contains(&d) {
            out.push(Cause::unsupported(
                format!("{path}.dnsPolicy"),
                &json!(d),
                &ok,
            ));
        }
        if d == "None"
            && spec
                .pointer("/dnsConfig/nameservers")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
        {
            out.push(Cause::required(format!("{path}.dnsConfig.nameservers")).with_message("Required value: must provide at least one DNS nameserver when DNSPolicy is None"));
        }
    }
    if let Some(g) = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        && g < 0
    {
        out.push(Cause::invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            &json!(g),
            "must be greater than or equal to 0",
        ));
    }
}

impl Cause {
    fn with_message(mut self, m: &str) -> Cause {
        self.message = m.into();
        self
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

fn non_negative(obj: &Value, ptr: &str, field: &str, out: &mut Vec<Cause>) {
    if let Some(n) = obj.pointer(ptr).and_then(Value::as_i64)
        && n < 0
    {
        out.push(Cause::invalid(
            field,
            &json!(n),
            "must be greater than or equal to 0",
        ));
    }
}

fn immutable(obj: &Value, old: &Value, ptr: &str, field: &str, out: &mut Vec<Cause>) {
    if obj.pointer(ptr) != old.pointer(ptr) {
        out.push(Cause::invalid(
            field,
            obj.pointer(ptr).unwrap_or(&Value::Null),
            "field is immutable",
        ));
    }
}

fn service(obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
    let typ = s(obj, "/spec/type").unwrap_or("ClusterIP");
    let types = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
    if !types.contains(&typ) {
        out.push(Cause::unsupported("spec.type", &json!(typ), &types));
    }
    let headless = s(obj, "/spec/clusterIP") == Some("None");
    let ports_list = arr(obj, "/spec/ports");
    if typ == "ExternalName" {
        if s(obj, "/spec/externalName").unwrap_or("").is_empty() {
            out.push(Cause::required("spec.externalName"));
        }
    } else if ports_list.is_empty() && !headless {
        out.push(Cause::required("spec.ports"));
    }
    let mut names = HashSet::new();
    for (i, p) in ports_list.iter().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            out.push(Cause::invalid(
                format!("spec.ports[{i}].port"),
                &json!(port),
                "must be between 1 and 65535, inclusive",
            ));
        }
        let name = s(p, "/name").unwrap_or("");
        if ports_list.len() > 1 && name.is_empty() {
            out.push(Cause::required(format!("spec.ports[{i}].name")));
        }
        if !name.is_empty() && !names.insert(name) {
            out.push(Cause::duplicate(
                format!("spec.ports[{i}].name"),
                &json!(name),
            ));
        }
        if let Some(proto) = s(p, "/protocol")
            && !["TCP", "UDP", "SCTP"].contains(&proto)
        {
            out.push(Cause::unsupported(
                format!("spec.ports[{i}].protocol"),
                &json!(proto),
                &["SCTP", "TCP", "UDP"],
            ));
        }
        if p.get("nodePort").is_some_and(|n| !n.is_null() && n != 0) && typ == "ClusterIP" {
            out.push(Cause::forbidden(
                format!("spec.ports[{i}].nodePort"),
                "may not be used when `type` is 'ClusterIP'",
            ));
        }
    }
    if let Some(a) = s(obj, "/spec/sessionAffinity")
        && !["None", "ClientIP"].contains(&a)
    {
        out.push(Cause::unsupported(
            "spec.sessionAffinity",
            &json!(a),
            &["ClientIP", "None"],
        ));
    }
    for (f, ok) in [
        ("externalTrafficPolicy", &["Cluster", "Local"]),
        ("internalTrafficPolicy", &["Cluster", "Local"]),
    ] {
        if let Some(v) = s(obj, &format!("/spec/{f}"))
            && !ok.contains(&v)
        {
            out.push(Cause::unsupported(format!("spec.{f}"), &json!(v), ok));
        }
    }
    if let Some(old) = old {
        let old_ip = s(old, "/spec/clusterIP").unwrap_or("");
        if !old_ip.is_empty()
            && s(old, "/spec/type") != Some("ExternalName")
            && typ != "ExternalName"
            && s(obj, "/spec/clusterIP").unwrap_or("") != old_ip
        {
            out.push(Cause::invalid(
                "spec.clusterIPs[0]",
                obj.pointer("/spec/clusterIP").unwrap_or(&Value::Null),
                "may not change once set",
            ));
        }
    }
}

fn keyed_data(obj: &Value, out: &mut Vec<Cause>) {
    for field in ["data", "binaryData", "stringData"] {
        if let Some(m) = obj.get(field).and_then(Value::as_object) {
            for k in m.keys() {
                let ok = !k.is_empty()
                    && k.len() <= 253
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
                    && k != "."
                    && k != "..";
                if !ok {
                    out.push(Cause::invalid(format!("{field}[{k}]"), &json!(k), "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
                }
            }
        }
    }
}

/// Kind-specific validation; `old` is set for updates.
pub fn validate(res: &Resource, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    metadata(res, obj, &mut out);
    if let Some(old) = old
        && s(obj, "/metadata/name") != s(old, "/metadata/name")
    {
        out.push(Cause::invalid(
            "metadata.name",
            obj.pointer("/metadata/name").unwrap_or(&Value::Null),
            "field is immutable",
        ));
    }
    match (res.storage.0.as_str(), res.storage.1.as_str()) {
        ("", "pods") => {
            pod_spec(
                obj.get("spec").unwrap_or(&Value::Null),
                "spec",
                None,
                &mut out,
            );
            if let Some(old) = old {
                pod_update(obj, old, &mut out);
            }
        }
        ("", "services") => service(obj, old, &mut out),
        ("", "configmaps") | ("", "secrets") => {
            keyed_data(obj, &mut out);
            if let Some(old) = old {
                if old.get("immutable").and_then(Value::as_bool) == Some(true) {
                    for f in ["data", "binaryData"] {
                        if obj.get(f) != old.get(f) {
                            out.push(Cause::forbidden(
                                f,
                                "field is immutable when `immutable` is set",
                            ));
                        }
                    }
                    if obj.get("immutable") != old.get("immutable") {
                        out.push(Cause::forbidden(
                            "immutable",
                            "field is immutable when `immutable` is set",
                        ));
                    }
                }
                if res.storage.1 == "secrets" && obj.get("type") != old.get("type") {
                    out.push(Cause::invalid(
                        "type",
                        obj.get("type").unwrap_or(&Value::Null),
                        "field is immutable",
                    ));
                }
            }
        }
        ("apps", "deployments" | "replicasets" | "statefulsets" | "daemonsets") => {
            selector_matches_template(obj, &mut out, true);
            non_negative(obj, "/spec/replicas", "spec.replicas", &mut out);
            let restart: &[&str] = &["Always"];
            // A StatefulSet's claim templates are volumes its containers may mount.
            let mut template = obj
                .pointer("/spec/template/spec")
                .cloned()
                .unwrap_or(Value::Null);
            for t in arr(obj, "/spec/volumeClaimTemplates") {
                if let (Some(name), Some(m)) = (s(t, "/metadata/name"), template.as_object_mut()) {
                    let vols = m.entry("volumes").or_insert_with(|| json!([]));
                    if let Some(v) = vols.as_array_mut() {
                        v.push(json!({"name": name, "persistentVolumeClaim": {"claimName": name}}));
                    }
                }
            }
            pod_spec(&template, "spec.template.spec", Some(restart), &mut out);
            if res.storage.1 == "deployments"
                && let Some(t) = s(obj, "/spec/strategy/type")
            {
                if !["Recreate", "RollingUpdate"].contains(&t) {
                    out.push(Cause::unsupported(
                        "spec.strategy.type",
                        &json!(t),
                        &["Recreate", "RollingUpdate"],
                    ));
                }
                if t == "Recreate" && obj.pointer("/spec/strategy/rollingUpdate").is_some() {
                    out.push(Cause::forbidden(
                        "spec.strategy.rollingUpdate",
                        "may not be specified when strategy `type` is 'Recreate'",
                    ));
                }
            }
            if let Some(old) = old {
                immutable(obj, old, "/spec/selector", "spec.selector", &mut out);
            }
        }
        ("batch", "jobs") => {
            let restart: &[&str] = &["OnFailure", "Never"];
            pod_spec(
                obj.pointer("/spec/template/spec").unwrap_or(&Value::Null),
                "spec.template.spec",
                Some(restart),
                &mut out,
            );
            for f in [
                "parallelism",
                "completions",
                "backoffLimit",
                "activeDeadlineSeconds",
                "ttlSecondsAfterFinished",
            ] {
                non_negative(obj, &format!("/spec/{f}"), &format!("spec.{f}"), &mut out);
            }
            if let Some(old) = old {
                immutable(obj, old, "/spec/selector", "spec.selector", &mut out);
                immutable(
                    obj,
                    old,
                    "/spec/completionMode",
                    "spec.completionMode",
                    &mut out,
                );
            }
        }
        ("batch", "cronjobs") => {
            let sched = s(obj, "/spec/schedule").unwrap_or("");
            if sched.is_empty() {
                out.push(Cause::required("spec.schedule"));
            } else if let Err(e) = Schedule::parse(sched, None) {
                out.push(Cause::invalid("spec.schedule", &json!(sched), e));
            }
            // As upstream: a `TZ=` prefix only survives on objects that already had one, and
            // never together with `timeZone`.
            let tz = obj.pointer("/spec/timeZone");
            let had_tz = old
                .and_then(|o| s(o, "/spec/schedule"))
                .is_some_and(|o| o.contains("TZ"));
            if sched.contains("TZ") {
                let msg = if !had_tz {
                    Some("cannot use TZ or CRON_TZ in schedule, use timeZone field instead")
                } else if tz.is_some_and(|t| !t.is_null()) {
                    Some("cannot use both timeZone field and TZ or CRON_TZ in schedule")
                } else {
                    None
                };
                if let Some(msg) = msg {
                    out.push(Cause::invalid("spec.schedule", &json!(sched), msg));
                }
            }
            match tz.and_then(Value::as_str) {
                Some("") => out.push(Cause::invalid(
                    "spec.timeZone",
                    &json!(""),
                    "timeZone must be nil or non-empty string",
                )),
                Some(t) if t.eq_ignore_ascii_case("Local") => out.push(Cause::invalid(
                    "spec.timeZone",
                    &json!(t),
                    "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
                )),
                Some(t) => {
                    if let Err(e) = zone(t) {
                        out.push(Cause::invalid("spec.timeZone", &json!(t), e));
                    }
                }
                None => {}
            }
            let restart: &[&str] = &["OnFailure", "Never"];
            pod_spec(
                obj.pointer("/spec/jobTemplate/spec/template/spec")
                    .unwrap_or(&Value::Null),
                "spec.jobTemplate.spec.template.spec",
                Some(restart),
                &mut out,
            );
            if let Some(p) = s(obj, "/spec/concurrencyPolicy")
                && !["Allow", "Forbid", "Replace"].contains(&p)
            {
                out.push(Cause::unsupported(
                    "spec.concurrencyPolicy",
                    &json!(p),
                    &["Allow", "Forbid", "Replace"],
                ));
            }
        }
        ("coordination.k8s.io", "leases") => non_negative(
            obj,
            "/spec/leaseDurationSeconds",
            "spec.leaseDurationSeconds",
            &mut out,
        ),
        ("scheduling.k8s.io", "priorityclasses") => {
            if obj.get("value").is_none() {
                out.push(Cause::required("value"));
            }
            if let Some(old) = old {
                immutable(obj, old, "/value", "value", &mut out);
            }
        }
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
            if s(obj, "/roleRef/name").unwrap_or("").is_empty() {
                out.push(Cause::required("roleRef.name"));
            }
            if let Some(old) = old {
                immutable(obj, old, "/roleRef", "roleRef", &mut out);
            }
        }
        _ => {}
    }
    out
}

/// Pod updates may change only a few fields of the spec.
fn pod_update(obj: &Value, old: &Value, out: &mut Vec<Cause>) {
    let scrub = |p: &Value| {
        let mut spec = p.get("spec").cloned().unwrap_or(json!({}));
        for list in ["containers", "initContainers"] {
            if let Some(a) = spec.get_mut(list).and_then(Value::as_array_mut) {
                for c in a {
                    if let Some(m) = c.as_object_mut() {
                        m.remove("image");
                    }
                }
            }
        }
        if let Some(m) = spec.as_object_mut() {
            for f in [
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
                "schedulingGates",
            ] {
                m.remove(f);
            }
            // nodeName may be set once (binding).
            if old
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            {
                m.remove("nodeName");
            }
        }
        spec
    };
    if scrub(obj) != scrub(old) {
        out.push(Cause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
}
