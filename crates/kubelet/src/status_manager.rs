//! The status manager, as upstream's `status/`: patches pod statuses to the API server,
//! remembering the last one reported per pod so that a sync that changed nothing (every pod
//! syncs each second) costs no request. It also reconciles, as upstream's `needsReconcile`:
//! when the API server's copy of a pod (the node's pod cache) has a status that differs from
//! the node's, because someone else wrote it (the node controller marks the pods of a node it
//! lost not Ready), the node's status is patched again.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Map, Value, json};

use super::lock;

/// The pod condition types the kubelet sets (upstream's `PodConditionsByKubelet`); the others
/// (DisruptionTarget, readiness gates) belong to whoever set them and are kept.
const KUBELET_CONDITIONS: [&str; 5] = [
    "PodScheduled",
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
];

/// What was last reported for a pod: the status, and the resourceVersion the patch made.
struct Reported {
    status: Value,
    version: Option<u64>,
}

#[derive(Default)]
pub struct StatusManager {
    /// Last status reported per pod UID.
    reported: Mutex<HashMap<String, Reported>>,
}

impl StatusManager {
    /// Patches the pod's status to `status` unless that is what was reported last and what
    /// the API server has (`pod` is its copy, from the node's pod cache).
    pub async fn set(&self, client: &kube::Client, pod: &Pod, status: Value) -> anyhow::Result<()> {
        let uid = pod.uid().unwrap_or_default();
        if !self.needs_update(&uid, pod, &status) {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        let body = patch_body(&uid, &status);
        let patched = api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(&body),
            )
            .await?;
        self.remember(uid, status, version(&patched));
        Ok(())
    }

    /// Forgets what was reported for pod `uid`, so that its next status is patched whatever it
    /// is: the pod is gone, or something else (eviction) wrote its status.
    pub fn forget(&self, uid: &str) {
        lock(&self.reported).remove(uid);
    }

    /// Whether `status` must be patched: it is not what was reported last, or the API server's
    /// copy of the pod differs from it (upstream's `needsReconcile`).
    fn needs_update(&self, uid: &str, pod: &Pod, status: &Value) -> bool {
        let reported = lock(&self.reported);
        let Some(last) = reported.get(uid).filter(|r| r.status == *status) else {
            return true;
        };
        let server = pod.status.as_ref().map(serde_json::to_value);
        let server = server.and_then(Result::ok).unwrap_or_default();
        if essentials(&server) == essentials(status) {
            return false;
        }
        // The pod cache lags behind the node's own patches: a copy older than the last patch
        // (kinglet's resourceVersions are the store's revisions, so they order), or the very
        // one it made, is no news. Only a later write by someone else is; not knowing, the
        // node does not write (a write loop is worse than a late status).
        let newer =
            matches!((last.version, version(pod)), (Some(ours), Some(theirs)) if theirs > ours);
        if newer {
            tracing::info!(pod = %pod.name_any(), "the API server's pod status differs from the node's; reporting it again");
        }
        newer
    }

    fn remember(&self, uid: String, status: Value, version: Option<u64>) {
        lock(&self.reported).insert(uid, Reported { status, version });
    }
}

fn version(pod: &Pod) -> Option<u64> {
    pod.resource_version()?.parse().ok()
}

/// The strategic merge patch that reports `status` for pod `uid`: the API server merges
/// `conditions` by `type` (as upstream, `patchMergeKey: type`), so only the kubelet's own
/// conditions are sent and the others (DisruptionTarget, readiness gates) stay as whoever set
/// them last wrote them, whatever the node's pod cache, which can lag, shows of them.
fn patch_body(uid: &str, status: &Value) -> Value {
    let mut status = status.clone();
    if let Some(conditions) = status["conditions"].as_array_mut() {
        conditions
            .retain(|c| (c["type"].as_str()).is_some_and(|t| KUBELET_CONDITIONS.contains(&t)));
    }
    json!({"metadata": {"uid": uid}, "status": status})
}

/// What of a pod status the kubelet answers for, to compare its view with the API server's:
/// phase, pod IP, its conditions' statuses, and its containers' readiness, restarts and
/// states, without timestamps, messages, order or fields left out as null.
fn essentials(status: &Value) -> Value {
    let conditions: Map<String, Value> = (status["conditions"].as_array().into_iter().flatten())
        .filter_map(|c| Some((c["type"].as_str()?, c)))
        .filter(|(t, _)| KUBELET_CONDITIONS.contains(t))
        .map(|(t, c)| (t.to_string(), c["status"].clone()))
        .collect();
    let containers = |key: &str| -> Map<String, Value> {
        (status[key].as_array().into_iter().flatten())
            .map(|c| {
                // The one state set: running, waiting or terminated, with its reason.
                let state = (c["state"].as_object().into_iter().flatten())
                    .find(|(_, s)| s.is_object())
                    .map(|(kind, s)| json!([kind, s["reason"].as_str()]));
                let name = c["name"].as_str().unwrap_or_default().to_string();
                let essentials = json!({
                    "ready": c["ready"].as_bool().unwrap_or(false),
                    "started": c["started"].as_bool().unwrap_or(false),
                    "restartCount": c["restartCount"].as_i64().unwrap_or(0),
                    "containerID": c["containerID"].as_str().unwrap_or_default(),
                    "state": state,
                });
                (name, essentials)
            })
            .collect()
    };
    json!({
        "phase": status["phase"].as_str().unwrap_or_default(),
        "podIP": status["podIP"].as_str().unwrap_or_default(),
        "conditions": conditions,
        "containerStatuses": containers("containerStatuses"),
        "initContainerStatuses": containers("initContainerStatuses"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A running pod's status as `status::compute` makes it, its containers `ready` or not.
    fn computed(ready: bool) -> Value {
        let cond = |t: &str, ok: bool| {
            json!({
                "type": t,
                "status": if ok { "True" } else { "False" },
                "reason": (!ok).then_some("ContainersNotReady"),
                "message": (!ok).then_some("containers with unready status: [c]"),
                "lastProbeTime": null,
            })
        };
        json!({
            "phase": "Running",
            "conditions": [
                cond("PodReadyToStartContainers", true),
                cond("Initialized", true),
                cond("Ready", ready),
                cond("ContainersReady", ready),
                cond("PodScheduled", true),
            ],
            "hostIP": "10.0.0.2",
            "containerStatuses": [{
                "name": "c", "image": "i", "imageID": "", "ready": ready, "restartCount": 0,
                "started": true, "containerID": "kinglet://x", "lastState": {},
                "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}},
            }],
            "podIP": "10.42.1.5",
            "startTime": "2025-01-01T00:00:00Z",
        })
    }

    /// The pod cache's copy: `status` as the API server keeps it, at resourceVersion `rv`.
    fn cached(status: Value, rv: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u", "resourceVersion": rv},
            "status": status,
        }))
        .unwrap()
    }

    /// `status` with its condition `type_` changed by `patch`.
    fn with_condition(mut status: Value, type_: &str, patch: Value) -> Value {
        let conds = status["conditions"].as_array_mut().unwrap();
        match conds.iter_mut().find(|c| c["type"] == type_) {
            Some(c) => c
                .as_object_mut()
                .unwrap()
                .extend(patch.as_object().unwrap().clone()),
            None => conds.push(patch),
        }
        status
    }

    #[test]
    fn statuses_are_patched_when_changed_or_when_the_servers_copy_differs() {
        let ready = computed(true);
        let marked = || {
            let patch = json!({"status": "False", "lastTransitionTime": "2025-01-01T00:01:00Z"});
            with_condition(computed(true), "Ready", patch)
        };
        // Order, timestamps, messages and nulls are not what the kubelet answers for.
        let noise = {
            let mut s = with_condition(
                ready.clone(),
                "Initialized",
                json!({"lastTransitionTime": "2025-01-01T00:00:00Z", "message": "m"}),
            );
            s["conditions"].as_array_mut().unwrap().reverse();
            s["containerStatuses"][0]["state"]["running"]["startedAt"] =
                json!("2025-02-02T00:00:00Z");
            s["startTime"] = json!("2025-02-02T00:00:00Z");
            s
        };
        let disruption = json!({"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"});
        let mut unready_container = ready.clone();
        unready_container["containerStatuses"][0]["ready"] = json!(false);
        let mut restarted = ready.clone();
        restarted["containerStatuses"][0]["restartCount"] = json!(1);
        // (case, the cache's copy (status, resourceVersion), patched) with `ready` reported last
        // at resourceVersion 10 and computed again.
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, Option<&str>, bool)> = vec![
            ("the server has what was reported", ready.clone(), Some("10"), false),
            ("later writes kept it", ready.clone(), Some("12"), false),
            ("Ready set False by the node controller since", marked(), Some("12"), true),
            ("the cache is older than the last patch", computed(false), Some("8"), false),
            // A difference the server made itself is no reason to write again and again.
            ("the cache holds the last patch", marked(), Some("10"), false),
            ("the cache's resourceVersion is unknown", marked(), None, false),
            ("order, timestamps and messages differ", noise, Some("12"), false),
            ("someone else's condition", with_condition(ready.clone(), "DisruptionTarget", disruption), Some("12"), false),
            ("a container's readiness differs", unready_container, Some("12"), true),
            ("a container's restarts differ", restarted, Some("12"), true),
            ("the phase differs", json!({"phase": "Pending"}), Some("12"), true),
            ("no status", Value::Null, Some("12"), true),
        ];
        let m = StatusManager::default();
        let mut failed = Vec::new();
        for (case, status, rv, want) in cases {
            m.remember("u".into(), ready.clone(), Some(10));
            let got = m.needs_update("u", &cached(status, rv), &ready);
            if got != want {
                failed.push(format!("{case}: got {got}, want {want}"));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));

        let copy = cached(ready.clone(), Some("10"));
        assert!(m.needs_update("other", &copy, &ready), "never reported");
        assert!(m.needs_update("u", &copy, &computed(false)), "changed");
        m.forget("u");
        assert!(m.needs_update("u", &copy, &ready), "forgotten");
    }

    /// Upstream's strategic merge of `conditions` (`patchMergeKey: type`), as kinglet's API
    /// server does it: a patched condition replaces the one of its type, the others stay.
    fn merge_conditions(server: &Value, patch: &Value) -> Value {
        let mut out = server["conditions"].as_array().cloned().unwrap_or_default();
        for p in patch["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
        {
            match out.iter_mut().find(|c| c["type"] == p["type"]) {
                Some(c) => c
                    .as_object_mut()
                    .unwrap()
                    .extend(p.as_object().unwrap().clone()),
                None => out.push(p.clone()),
            }
        }
        Value::Array(out)
    }

    #[test]
    fn conditions_of_others_are_kept() {
        // The server has a DisruptionTarget the node's cache does not show yet, and a
        // readiness gate the cache shows stale: neither is sent, so neither is changed.
        let disruption = json!({"type": "DisruptionTarget", "status": "True"});
        let gate = json!({"type": "example.com/gate", "status": "True"});
        let server = with_condition(computed(false), "DisruptionTarget", disruption.clone());
        let server = with_condition(server, "example.com/gate", gate.clone());
        let mut status = computed(true);
        let stale_gate = json!({"type": "example.com/gate", "status": "False"});
        status["conditions"]
            .as_array_mut()
            .unwrap()
            .push(stale_gate);
        let body = patch_body("u", &status);
        assert_eq!(body["metadata"]["uid"], "u");
        let sent: Vec<&str> = (body["status"]["conditions"].as_array().unwrap().iter())
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            sent,
            [
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled"
            ],
            "only the kubelet's own conditions"
        );
        let merged = merge_conditions(&server, &body);
        let get = |t: &str| {
            merged
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .cloned()
        };
        assert_eq!(get("Ready").unwrap()["status"], "True", "the kubelet's own");
        assert_eq!(get("DisruptionTarget"), Some(disruption));
        assert_eq!(get("example.com/gate"), Some(gate));
        assert_eq!(merged.as_array().unwrap().len(), 7);
    }

    /// An API server that counts the status patches of pod `default/p`, fails them while
    /// `failing` is set, and answers with resourceVersion 100 + the number of patches. It
    /// takes only strategic merge patches (others' conditions survive those).
    async fn api_server(patches: Arc<AtomicUsize>, failing: Arc<AtomicBool>) -> kube::Client {
        let router = axum::Router::new().route(
            "/api/v1/namespaces/default/pods/p/status",
            axum::routing::patch(move |headers: http::HeaderMap| async move {
                let n = patches.fetch_add(1, Ordering::SeqCst) + 1;
                let strategic = "application/strategic-merge-patch+json";
                if headers
                    .get(http::header::CONTENT_TYPE)
                    .is_none_or(|t| t != strategic)
                {
                    return Err(http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
                }
                if failing.load(Ordering::SeqCst) {
                    return Err(http::StatusCode::INTERNAL_SERVER_ERROR);
                }
                let pod = json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "p", "resourceVersion": (100 + n).to_string()}});
                Ok((
                    [(http::header::CONTENT_TYPE, "application/json")],
                    pod.to_string(),
                ))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
    }

    #[tokio::test]
    async fn a_status_is_patched_once_and_again_when_it_changes_or_failed() {
        let (patches, failing) = (Arc::default(), Arc::<AtomicBool>::default());
        let client = api_server(Arc::clone(&patches), Arc::clone(&failing)).await;
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
        }))
        .unwrap();
        let m = StatusManager::default();
        let count = || patches.load(Ordering::SeqCst);
        let running = json!({"phase": "Running"});
        m.set(&client, &pod, running.clone()).await.unwrap();
        m.set(&client, &pod, running.clone()).await.unwrap();
        assert_eq!(count(), 1, "unchanged: not patched again");
        failing.store(true, Ordering::SeqCst);
        let done = json!({"phase": "Succeeded"});
        assert!(m.set(&client, &pod, done.clone()).await.is_err());
        assert_eq!(count(), 2);
        failing.store(false, Ordering::SeqCst);
        m.set(&client, &pod, done.clone()).await.unwrap();
        assert_eq!(count(), 3, "a failed patch is tried again");
        m.set(&client, &pod, done.clone()).await.unwrap();
        assert_eq!(count(), 3);
        m.forget("u");
        m.set(&client, &pod, done).await.unwrap();
        assert_eq!(count(), 4, "forgotten: patched whatever it is");
    }

    #[tokio::test]
    async fn a_status_someone_else_changed_is_patched_back_once() {
        let patches = Arc::<AtomicUsize>::default();
        let client = api_server(Arc::clone(&patches), Arc::default()).await;
        let count = || patches.load(Ordering::SeqCst);
        let m = StatusManager::default();
        let ready = computed(true);
        m.set(&client, &cached(Value::Null, Some("100")), ready.clone())
            .await
            .unwrap();
        assert_eq!(count(), 1);
        // The pod cache still shows the copy from before the patch (101): no news.
        m.set(&client, &cached(Value::Null, Some("100")), ready.clone())
            .await
            .unwrap();
        assert_eq!(count(), 1, "a lagging cache is not a change");
        // The patch arrives, then the node controller marks the pod not Ready (102).
        m.set(&client, &cached(ready.clone(), Some("101")), ready.clone())
            .await
            .unwrap();
        assert_eq!(count(), 1);
        let marked = with_condition(ready.clone(), "Ready", json!({"status": "False"}));
        m.set(&client, &cached(marked.clone(), Some("102")), ready.clone())
            .await
            .unwrap();
        assert_eq!(count(), 2, "set back to Ready");
        // Until the cache shows that patch (103), its old copy is no reason to patch again.
        m.set(&client, &cached(marked, Some("102")), ready.clone())
            .await
            .unwrap();
        m.set(&client, &cached(ready.clone(), Some("103")), ready)
            .await
            .unwrap();
        assert_eq!(count(), 2, "patched back once");
    }
}
