//! Pods (and PodTemplates): `SetDefaults_Pod`, the ServiceAccount, DefaultTolerationSeconds
//! and Priority admission plugins, the rules for what a pod update may change, the `kubectl get
//! pods` columns, field selectors, the initial status and graceful deletion of bound pods. The
//! pod-spec defaults and validation shared with every workload template live in `admission`.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::KindBehaviour;
use crate::Api;
use crate::admission::defaults::{self, default, each, template};
use crate::admission::validation;
use crate::object::{self, field_string, random_suffix};
use crate::registry::Resource;
use crate::status::{ApiError, ApiResult, Cause};
use crate::table::{AGE, Columns, N, age, arr, i, name, none_if_empty, s};

pub struct Pods;

impl KindBehaviour for Pods {
    fn defaults(&self, obj: &mut Value) {
        if let Some(spec) = obj.get_mut("spec") {
            defaults::pod_spec(spec);
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

    fn admit<'a>(
        &'a self,
        api: &'a Api,
        _res: &'a Resource,
        obj: &'a mut Value,
        old: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            // A mirror pod (a node's static pod) gets no ServiceAccount, as upstream.
            if old.is_none() && !crate::authz::node::is_mirror_pod(obj) {
                service_account(obj);
            }
            if old.is_none() {
                default_tolerations(obj);
                priority(api, obj).await?;
            }
            Ok(())
        })
    }

    fn validate(&self, _res: &Resource, obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
        validation::pod_spec(obj.get("spec").unwrap_or(&Value::Null), "spec", None, out);
        if let Some(old) = old {
            pod_update(obj, old, out);
        }
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
            vec![
                N,
                ("Ready", "string", 0),
                ("Status", "string", 0),
                ("Restarts", "string", 0),
                AGE,
                ("IP", "string", 1),
                ("Node", "string", 1),
                ("Nominated Node", "string", 1),
                ("Readiness Gates", "string", 1),
            ],
            pod_row,
        );
        Some(columns)
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ]
    }

    fn field_value(&self, obj: &Value, field: &str) -> Option<String> {
        match field {
            "spec.hostNetwork" => Some(
                obj.pointer("/spec/hostNetwork")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string(),
            ),
            "status.podIPs" => obj
                .pointer("/status/podIPs/0/ip")
                .and_then(Value::as_str)
                .map(String::from),
            _ => field_string(obj, field),
        }
    }

    /// Status starts as Pending with the pod's QoS class, whatever the client sent.
    fn prepare_for_create(&self, _res: &Resource, obj: &mut Value) {
        let qos = qos_class(obj);
        obj["status"] = json!({"phase": "Pending", "qosClass": qos});
    }

    /// Pods bound to a node wait for the kubelet to stop them, unless already finished.
    fn graceful_period(&self, obj: &Value, requested: Option<i64>) -> Option<i64> {
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
}

pub struct PodTemplates;

impl KindBehaviour for PodTemplates {
    fn defaults(&self, obj: &mut Value) {
        template(obj, &["template"])
    }
}

/// The pod's QoS class from its containers' requests and limits.
fn qos_class(pod: &Value) -> &'static str {
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

fn pod_row(p: &Value) -> Vec<Value> {
    let statuses = arr(p, "/status/containerStatuses");
    let total = arr(p, "/spec/containers").len();
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    let restarts: i64 = statuses.iter().map(|c| i(c, "/restartCount")).sum();
    let mut reason = s(p, "/status/reason").to_string();
    if reason.is_empty() {
        reason = s(p, "/status/phase").to_string();
    }
    let inits = arr(p, "/status/initContainerStatuses");
    let mut initializing = false;
    for (n, c) in inits.iter().enumerate() {
        if c.pointer("/state/terminated/exitCode")
            .and_then(Value::as_i64)
            == Some(0)
        {
            continue;
        }
        initializing = true;
        let waiting = s(c, "/state/waiting/reason");
        reason = if !s(c, "/state/terminated/reason").is_empty() {
            format!("Init:{}", s(c, "/state/terminated/reason"))
        } else if !waiting.is_empty() && waiting != "PodInitializing" {
            format!("Init:{waiting}")
        } else {
            format!("Init:{n}/{}", arr(p, "/spec/initContainers").len())
        };
        break;
    }
    if !initializing {
        let mut has_running = false;
        for c in statuses.iter().rev() {
            let waiting = s(c, "/state/waiting/reason");
            let term = s(c, "/state/terminated/reason");
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if !term.is_empty() {
                reason = term.to_string();
            } else if c.pointer("/state/terminated").is_some() {
                let code = i(c, "/state/terminated/exitCode");
                reason = format!("ExitCode:{code}");
            } else if c.get("ready").and_then(Value::as_bool) == Some(true)
                && c.pointer("/state/running").is_some()
            {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if p.pointer("/metadata/deletionTimestamp").is_some() {
        reason = if s(p, "/status/reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    let gates = arr(p, "/spec/readinessGates");
    let gates_text = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conds = arr(p, "/status/conditions");
        let ok = gates
            .iter()
            .filter(|g| {
                conds
                    .iter()
                    .any(|c| s(c, "/type") == s(g, "/conditionType") && s(c, "/status") == "True")
            })
            .count();
        format!("{ok}/{}", gates.len())
    };
    vec![
        name(p),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts),
        age(p),
        none_if_empty(s(p, "/status/podIP").into()),
        none_if_empty(s(p, "/spec/nodeName").into()),
        none_if_empty(s(p, "/status/nominatedNodeName").into()),
        json!(gates_text),
    ]
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
