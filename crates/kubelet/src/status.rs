//! A pod's status from its container records: phase, conditions, container statuses (state,
//! last state, restart count, image ID), as upstream's kubelet reports them.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};

use super::Kubelet;
use super::containers::Record;
use super::pods::Waiting;

fn state_of(r: &Record) -> Value {
    match (&r.status.exit, r.running()) {
        (Some(e), _) => json!({"terminated": {
            "exitCode": e.code,
            "reason": e.reason,
            "message": (!e.message.is_empty()).then(|| e.message.clone()),
            "startedAt": r.status.started_at,
            "finishedAt": e.finished_at,
            "containerID": format!("kinglet://{}", r.meta.id),
        }}),
        (None, true) => json!({"running": {"startedAt": r.status.started_at}}),
        // The supervisor vanished without recording an exit (e.g. the node rebooted).
        (None, false) => json!({"terminated": {
            "exitCode": 137,
            "reason": "ContainerStatusUnknown",
            "message": "The container could not be located when the pod was terminated",
            "finishedAt": r.status.started_at,
            "containerID": format!("kinglet://{}", r.meta.id),
        }}),
    }
}

fn container_status(
    k: &Kubelet,
    c: &Container,
    history: Option<&Vec<Record>>,
    waiting: Option<&Waiting>,
    init: bool,
    default_reason: &str,
) -> Value {
    let latest = history.and_then(|h| h.last());
    let restarts = latest.map(|r| r.meta.attempt).unwrap_or(0);
    let state = match (waiting, latest) {
        (Some(w), _) => json!({"waiting": {"reason": w.reason, "message": w.message}}),
        (None, Some(r)) => state_of(r),
        (None, None) => json!({"waiting": {"reason": default_reason}}),
    };
    let last_state = match (waiting, latest, history) {
        // Waiting to restart: the last run is the last state.
        (Some(_), Some(r), _) => state_of(r),
        (None, Some(_), Some(h)) if h.len() >= 2 => state_of(&h[h.len() - 2]),
        _ => json!({}),
    };
    let running = state.get("running").is_some();
    let ready = running && !init && latest.is_some_and(|r| k.probe_manager.ready(c, &r.meta.id));
    let mut s = json!({
        "name": c.name,
        "image": c.image,
        "imageID": latest.map(|r| r.meta.image_id.clone()).unwrap_or_default(),
        "state": state,
        "lastState": last_state,
        "ready": ready,
        "restartCount": restarts,
        "started": running,
    });
    if let Some(r) = latest {
        s["containerID"] = json!(format!("kinglet://{}", r.meta.id));
    }
    s
}

fn condition(type_: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> Value {
    json!({
        "type": type_,
        "status": if ok { "True" } else { "False" },
        "reason": if ok { None } else { reason },
        "message": if ok { None } else { message },
        "lastProbeTime": null,
    })
}

pub fn compute(
    k: &Kubelet,
    pod: &Pod,
    records: &HashMap<String, Vec<Record>>,
    waiting: &HashMap<String, Waiting>,
) -> Value {
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let inits: Vec<Value> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| {
            container_status(
                k,
                c,
                records.get(&c.name),
                waiting.get(&c.name),
                true,
                "PodInitializing",
            )
        })
        .collect();
    let init_done = spec.init_containers.iter().flatten().all(|c| {
        records
            .get(&c.name)
            .and_then(|h| h.last())
            .and_then(|r| r.status.exit.as_ref())
            .is_some_and(|e| e.code == 0)
    });
    let default_reason = if init_done {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let mains: Vec<Value> = spec
        .containers
        .iter()
        .map(|c| {
            container_status(
                k,
                c,
                records.get(&c.name),
                waiting.get(&c.name),
                false,
                default_reason,
            )
        })
        .collect();
    let exited = |s: &Value| {
        s["state"]
            .get("terminated")
            .map(|t| t["exitCode"].as_i64().unwrap_or(1))
    };
    let init_failed = policy == "Never" && inits.iter().any(|s| exited(s).is_some_and(|c| c != 0));
    let phase = if init_failed {
        "Failed"
    } else if !init_done {
        "Pending"
    } else if mains.iter().any(|s| s["state"].get("running").is_some()) {
        "Running"
    } else if mains.iter().all(|s| exited(s).is_some()) && !mains.is_empty() {
        let all_ok = mains.iter().all(|s| exited(s) == Some(0));
        match (policy, all_ok) {
            ("Always", _) => "Running",
            (_, true) => "Succeeded",
            ("Never", false) => "Failed",
            _ => "Running",
        }
    } else if mains.iter().any(|s| {
        s["restartCount"].as_u64().unwrap_or(0) > 0 || s["lastState"].get("terminated").is_some()
    }) {
        "Running"
    } else {
        "Pending"
    };
    let unready: Vec<String> = mains
        .iter()
        .filter(|s| s["ready"] != true)
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect();
    let completed = phase == "Succeeded" || phase == "Failed";
    let unready_msg = format!("containers with unready status: [{}]", unready.join(" "));
    let ready = unready.is_empty();
    let sandbox_ready = kinglet_runtime::sandbox::exists(
        &k.pod_dir(&pod.metadata.uid.clone().unwrap_or_default())
            .join("sandbox"),
    );
    let conditions = vec![
        condition("PodReadyToStartContainers", sandbox_ready, None, None),
        condition(
            "Initialized",
            init_done,
            Some("ContainersNotInitialized"),
            Some("containers with incomplete status: [init]".into()),
        ),
        condition(
            "Ready",
            ready,
            Some(if completed {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
            Some(unready_msg.clone()),
        ),
        condition(
            "ContainersReady",
            ready,
            Some(if completed {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
            Some(unready_msg),
        ),
        condition("PodScheduled", true, None, None),
    ];
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": k.cfg.node_ip.to_string(),
        "hostIPs": [{"ip": k.cfg.node_ip.to_string()}],
        "containerStatuses": mains,
        "qosClass": super::cgroups::qos_class(pod),
        "startTime": pod.status.as_ref().and_then(|s| s.start_time.clone()).map(|t| json!(t)).unwrap_or_else(|| json!(kinglet_runtime::now_rfc3339())),
    });
    if !inits.is_empty() {
        status["initContainerStatuses"] = json!(inits);
    }
    let own_ip = k.pod_ip(&kube::ResourceExt::uid(pod).unwrap_or_default());
    let pod_ip = if spec.host_network == Some(true) {
        Some(k.cfg.node_ip.to_string())
    } else {
        own_ip.map(|ip| ip.to_string())
    };
    if let Some(ip) = pod_ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{ "ip": ip }]);
    }
    status
}
