//! Admission: decoding checks (types, unknown fields), defaulting, the mutating plugins that
//! matter for built-in kinds (ServiceAccount, DefaultTolerationSeconds, Priority, Service
//! allocation, Job selectors) and validation.

pub mod defaults;
pub mod schema;
pub mod validation;

use serde_json::{Value, json};

use super::Api;
use super::context::Ctx;
use super::object::{self, random_suffix};
use super::registry::Resource;
use super::status::{ApiError, ApiResult, Cause};

/// Runs admission on `obj` (a create when `old` is None).
pub async fn admit(
    api: &Api,
    res: &Resource,
    ctx: &Ctx,
    obj: &mut Value,
    old: Option<&Value>,
) -> ApiResult<()> {
    let name = object::name(obj).to_string();
    if let Some(custom) = &res.custom {
        super::crd::validate_custom(res, custom, ctx, obj)?;
    } else {
        schema::check_unknown_fields(res, ctx, obj)?;
        if let Some(check) = res.decode_check {
            check(obj).map_err(|e| {
                ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: {e}",
                    res.kind, res.version, res.kind
                ))
            })?;
        }
        defaults::apply(res, obj);
    }
    match (res.storage.0.as_str(), res.storage.1.as_str()) {
        ("", "pods") if old.is_none() => {
            service_account(obj);
            default_tolerations(obj);
            priority(api, obj).await?;
        }
        ("", "services") => allocate_service(api, res, obj, old)?,
        ("batch", "jobs") if old.is_none() => job_selector(obj),
        ("apiextensions.k8s.io", "customresourcedefinitions") => super::crd::admit_crd(obj, old)?,
        _ => {}
    }
    let causes = validation::validate(res, obj, old);
    if !causes.is_empty() {
        if old.is_none() {
            super::hooks::create_failed(api, res, obj);
        }
        return Err(ApiError::invalid(&res.group, &res.kind, &name, causes));
    }
    Ok(())
}

/// The pod's QoS class from its containers' requests and limits.
pub fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| {
            pod.pointer(&format!("/spec/{l}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        if req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = lim.and_then(|l| l.get(r));
            let q = req.and_then(|q| q.get(r)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed && !containers.is_empty() {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The ServiceAccount plugin: default account and the projected API-access volume.
fn service_account(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    let sa = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(String::from);
    let sa = sa
        .or_else(|| {
            spec.get("serviceAccount")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(String::from)
        })
        .unwrap_or_else(|| "default".into());
    spec["serviceAccountName"] = json!(sa);
    spec["serviceAccount"] = json!(sa);
    if spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        == Some(false)
    {
        return;
    }
    let mounted = |c: &Value| {
        c.get("volumeMounts")
            .and_then(Value::as_array)
            .is_some_and(|m| {
                m.iter()
                    .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(SA_MOUNT))
            })
    };
    let vol_name = format!("kube-api-access-{}", random_suffix(5));
    let volume = json!({"name": vol_name, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
    ]}});
    let mut added = false;
    for list in ["initContainers", "containers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs.iter_mut().filter(|c| !mounted(c)) {
                let mounts = c
                    .as_object_mut()
                    .map(|m| m.entry("volumeMounts").or_insert_with(|| json!([])));
                if let Some(Value::Array(m)) = mounts {
                    m.push(json!({"name": vol_name, "readOnly": true, "mountPath": SA_MOUNT}));
                    added = true;
                }
            }
        }
    }
    if added {
        let vols = spec
            .as_object_mut()
            .map(|m| m.entry("volumes").or_insert_with(|| json!([])));
        if let Some(Value::Array(v)) = vols {
            v.push(volume);
        }
    }
}

/// DefaultTolerationSeconds: tolerate not-ready/unreachable nodes for 300 s.
fn default_tolerations(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let tols = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = tols.as_array_mut() else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let has = list.iter().any(|t| {
            let k = t.get("key").and_then(Value::as_str);
            let e = t.get("effect").and_then(Value::as_str).unwrap_or("");
            (k == Some(key)
                || k.is_none() && t.get("operator").and_then(Value::as_str) == Some("Exists"))
                && (e.is_empty() || e == "NoExecute")
        });
        if !has {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
}

/// Priority admission: resolve `priorityClassName` into `priority`.
async fn priority(api: &Api, pod: &mut Value) -> ApiResult<()> {
    let class = pod
        .pointer("/spec/priorityClassName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(String::from);
    let Some(pc_res) = api
        .registry
        .find("scheduling.k8s.io", "v1", "priorityclasses")
    else {
        return Ok(());
    };
    let found = match &class {
        Some(name) => {
            let rec = api
                .store
                .get(&pc_res.key(None, name))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            match rec {
                Some(r) => Some(serde_json::from_slice::<Value>(&r.value).unwrap_or_default()),
                None => {
                    return Err(ApiError::forbidden(format!(
                        "pods \"{}\" is forbidden: no PriorityClass with name {name} was found",
                        object::name(pod)
                    )));
                }
            }
        }
        None => {
            let page = api
                .store
                .list(&pc_res.prefix(), 0, None, None)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            page.items
                .iter()
                .filter_map(|r| serde_json::from_slice::<Value>(&r.value).ok())
                .find(|pc| pc.get("globalDefault").and_then(Value::as_bool) == Some(true))
        }
    };
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        if let Some(pc) = found {
            spec.insert(
                "priority".into(),
                pc.get("value").cloned().unwrap_or(json!(0)),
            );
            spec.insert(
                "priorityClassName".into(),
                pc.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
            );
            if let Some(p) = pc.get("preemptionPolicy") {
                spec.insert("preemptionPolicy".into(), p.clone());
            }
        } else {
            spec.insert("priority".into(), json!(0));
        }
    }
    Ok(())
}

fn job_selector(job: &mut Value) {
    if job.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let uid = object::meta_str(job, "uid").unwrap_or_default().to_string();
    let name = object::name(job).to_string();
    let Some(spec) = job.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    let tmpl = spec
        .as_object_mut()
        .map(|m| m.entry("template").or_insert_with(|| json!({})));
    if let Some(t) = tmpl.filter(|t| t.is_object()) {
        let meta = t
            .as_object_mut()
            .map(|m| m.entry("metadata").or_insert_with(|| json!({})));
        if let Some(Value::Object(meta)) = meta {
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                for (k, v) in [
                    ("batch.kubernetes.io/controller-uid", &uid),
                    ("batch.kubernetes.io/job-name", &name),
                    ("controller-uid", &uid),
                    ("job-name", &name),
                ] {
                    l.insert(k.into(), json!(v));
                }
            }
        }
    }
}

/// ClusterIP and NodePort allocation (and release on type changes).
fn allocate_service(
    api: &Api,
    res: &Resource,
    svc: &mut Value,
    old: Option<&Value>,
) -> ApiResult<()> {
    let name = object::name(svc).to_string();
    let typ = svc
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    let Some(spec) = svc.get_mut("spec").filter(|s| s.is_object()) else {
        return Ok(());
    };
    let mut alloc = api.alloc();
    let invalid = |c: Cause| ApiError::invalid(&res.group, &res.kind, &name, vec![c]);
    if let Some(old) = old {
        // Keep what the old object holds unless the client changed it explicitly.
        for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if spec.get(f).is_none_or(|v| v.is_null() || v == "")
                && let Some(v) = old.pointer(&format!("/spec/{f}"))
            {
                spec[f] = v.clone();
            }
        }
        let old_ports = old
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if (typ == "NodePort" || typ == "LoadBalancer")
            && let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut)
        {
            for p in ports
                .iter_mut()
                .filter(|p| p.get("nodePort").is_none_or(|n| n.is_null() || n == 0))
            {
                if let Some(op) = old_ports.iter().find(|op| {
                    op.get("port") == p.get("port") && op.get("protocol") == p.get("protocol")
                }) && let Some(np) = op.get("nodePort")
                {
                    p["nodePort"] = np.clone();
                }
            }
        }
        let new_ports: Vec<u16> = super::alloc::node_ports(&json!({"spec": spec.clone()}));
        for p in super::alloc::node_ports(old) {
            if !new_ports.contains(&p) {
                alloc.release_port(p);
            }
        }
        if typ == "ExternalName" {
            for ip in super::alloc::service_ips(old) {
                alloc.release_ip(ip);
            }
        }
    }
    if typ == "ExternalName" {
        if let Some(m) = spec.as_object_mut() {
            for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                m.remove(f);
            }
        }
        return Ok(());
    }
    let old_ip = old
        .and_then(|o| o.pointer("/spec/clusterIP"))
        .and_then(Value::as_str)
        .map(String::from);
    let ip = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if ip == "None" {
        spec["clusterIPs"] = json!(["None"]);
    } else if ip.is_empty() {
        let got = alloc
            .allocate_ip()
            .ok_or_else(|| ApiError::internal("failed to allocate a serviceIP: range is full"))?;
        spec["clusterIP"] = json!(got.to_string());
        spec["clusterIPs"] = json!([got.to_string()]);
    } else if old_ip.as_deref() != Some(ip.as_str()) {
        let parsed: std::net::Ipv4Addr = ip.parse().map_err(|_| {
            invalid(Cause::invalid(
                "spec.clusterIPs[0]",
                &json!(ip),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ))
        })?;
        if !alloc.contains(parsed) {
            return Err(invalid(Cause::invalid(
                "spec.clusterIPs[0]",
                &json!(ip),
                "failed to allocate IP: the provided network does not match the current range",
            )));
        }
        if !alloc.reserve_ip(parsed) {
            return Err(invalid(Cause::invalid(
                "spec.clusterIPs[0]",
                &json!(ip),
                "failed to allocate IP: provided IP is already allocated",
            )));
        }
        spec["clusterIPs"] = json!([ip]);
    }
    if spec.get("ipFamilies").is_none_or(Value::is_null) {
        spec["ipFamilies"] = json!(["IPv4"]);
    }
    if spec.get("ipFamilyPolicy").is_none_or(Value::is_null) {
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
    if typ == "NodePort" || typ == "LoadBalancer" {
        let old_ports = old.map(super::alloc::node_ports).unwrap_or_default();
        let lb_ports = spec
            .get("allocateLoadBalancerNodePorts")
            .and_then(Value::as_bool)
            != Some(false);
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for (i, p) in ports.iter_mut().enumerate() {
                match p
                    .get("nodePort")
                    .and_then(Value::as_u64)
                    .filter(|n| *n != 0)
                {
                    Some(np) => {
                        let np16 = u16::try_from(np).unwrap_or(0);
                        if !old_ports.contains(&np16) && !alloc.reserve_port(np16) {
                            let (lo, hi) = alloc.port_range();
                            let msg = if alloc.port_in_range(np16) {
                                "provided port is already allocated".to_string()
                            } else {
                                format!(
                                    "provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                                )
                            };
                            return Err(invalid(Cause::invalid(
                                format!("spec.ports[{i}].nodePort"),
                                &json!(np),
                                msg,
                            )));
                        }
                    }
                    None if typ == "NodePort" || lb_ports => {
                        let np = alloc.allocate_port().ok_or_else(|| {
                            ApiError::internal("failed to allocate a nodePort: range is full")
                        })?;
                        p["nodePort"] = json!(np);
                    }
                    None => {}
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos() {
        assert_eq!(
            qos_class(&json!({"spec": {"containers": [{"name": "a"}]}})),
            "BestEffort"
        );
        let g = json!({"spec": {"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        assert_eq!(qos_class(&g), "Guaranteed");
        let b = json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "1"}}}]}});
        assert_eq!(qos_class(&b), "Burstable");
    }

    #[test]
    fn service_account_volume_added_once_per_container() {
        let mut pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        service_account(&mut pod);
        assert_eq!(pod["spec"]["serviceAccountName"], "default");
        assert_eq!(pod["spec"]["volumes"].as_array().unwrap().len(), 1);
        assert_eq!(
            pod["spec"]["containers"][1]["volumeMounts"][0]["mountPath"],
            SA_MOUNT
        );
        let mut opt_out =
            json!({"spec": {"automountServiceAccountToken": false, "containers": [{"name": "a"}]}});
        service_account(&mut opt_out);
        assert!(opt_out["spec"].get("volumes").is_none());
    }
}
