//! Validation of built-in kinds with field-level causes, after upstream's `validation.go`: the
//! metadata checks every object gets, the pod-spec checks every pod template shares and small
//! helpers; what each kind checks is in its module under `kinds`.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::kinds;
use crate::object::{check_dns_label, check_dns_subdomain, check_label_key, check_label_value};
use crate::registry::Resource;
use crate::status::Cause;

pub(crate) fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

pub(crate) fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Validates `metadata` of any object.
pub fn metadata(res: &Resource, obj: &Value, out: &mut Vec<Cause>) {
    let name = str_at(obj, "/metadata/name").unwrap_or("");
    if name.is_empty() {
        if str_at(obj, "/metadata/generateName")
            .unwrap_or("")
            .is_empty()
        {
            out.push(Cause::new(
                "FieldValueRequired",
                "metadata.name",
                "Required value: name or generateName is required",
            ));
        }
    } else {
        let check = kinds::name_check(res)(name);
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
            if str_at(r, &format!("/{f}")).unwrap_or("").is_empty() {
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
        if let Some(proto) = str_at(p, "/protocol")
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
        .filter_map(|v| str_at(v, "/name"))
        .collect();
    let mut vnames = HashSet::new();
    for (i, v) in arr(spec, "/volumes").iter().enumerate() {
        let n = str_at(v, "/name").unwrap_or("");
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
            let n = str_at(c, "/name").unwrap_or("");
            if n.is_empty() {
                out.push(Cause::required(format!("{cp}.name")));
            } else if let Some(e) = check_dns_label(n) {
                out.push(Cause::invalid(format!("{cp}.name"), &json!(n), e));
            } else if !names.insert(n.to_string()) {
                out.push(Cause::duplicate(format!("{cp}.name"), &json!(n)));
            }
            if str_at(c, "/image").unwrap_or("").trim().is_empty() {
                out.push(Cause::required(format!("{cp}.image")));
            }
            if let Some(p) = str_at(c, "/imagePullPolicy")
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
                let vn = str_at(m, "/name").unwrap_or("");
                if !volumes.contains(vn) {
                    out.push(Cause::new(
                        "FieldValueNotFound",
                        format!("{cp}.volumeMounts[{j}].name"),
                        format!("Not found: {:?}", vn),
                    ));
                }
                if str_at(m, "/mountPath").unwrap_or("").is_empty() {
                    out.push(Cause::required(format!("{cp}.volumeMounts[{j}].mountPath")));
                }
                // The kubelet joins subPath to the volume's directory on the host.
                if let Some(sub) = str_at(m, "/subPath") {
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
                if str_at(e, "/name").unwrap_or("").is_empty() {
                    out.push(Cause::required(format!("{cp}.env[{j}].name")));
                }
            }
        }
    }
    let restart = str_at(spec, "/restartPolicy").unwrap_or("Always");
    let allowed = template_restart.unwrap_or(&["Always", "OnFailure", "Never"]);
    if !allowed.contains(&restart) {
        out.push(Cause::unsupported(
            format!("{path}.restartPolicy"),
            &json!(restart),
            allowed,
        ));
    }
    if let Some(d) = str_at(spec, "/dnsPolicy") {
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

pub(crate) fn non_negative(obj: &Value, ptr: &str, field: &str, out: &mut Vec<Cause>) {
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

pub(crate) fn immutable(obj: &Value, old: &Value, ptr: &str, field: &str, out: &mut Vec<Cause>) {
    if obj.pointer(ptr) != old.pointer(ptr) {
        out.push(Cause::invalid(
            field,
            obj.pointer(ptr).unwrap_or(&Value::Null),
            "field is immutable",
        ));
    }
}

/// Validates `obj`: its metadata, then what its kind checks; `old` is set for updates.
pub fn validate(res: &Resource, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    metadata(res, obj, &mut out);
    if let Some(old) = old
        && str_at(obj, "/metadata/name") != str_at(old, "/metadata/name")
    {
        out.push(Cause::invalid(
            "metadata.name",
            obj.pointer("/metadata/name").unwrap_or(&Value::Null),
            "field is immutable",
        ));
    }
    kinds::of(res).validate(res, obj, old, &mut out);
    out
}
