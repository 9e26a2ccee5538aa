//! The status manager, as upstream's `status/`: patches pod statuses to the API server,
//! remembering the last one reported per pod so that a sync that changed nothing (every pod
//! syncs each second) costs no request.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use super::lock;

#[derive(Default)]
pub struct StatusManager {
    /// Last status reported per pod UID.
    reported: Mutex<HashMap<String, Value>>,
}

impl StatusManager {
    /// Patches the pod's status to `status` unless that is what was reported last.
    pub async fn set(&self, client: &kube::Client, pod: &Pod, status: Value) -> anyhow::Result<()> {
        let uid = pod.uid().unwrap_or_default();
        if !self.changed(&uid, &status) {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        let mut body: Value = json!({"status": status});
        body["metadata"] = json!({"uid": uid});
        api.patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&body),
        )
        .await?;
        self.remember(uid, status);
        Ok(())
    }

    /// Forgets what was reported for pod `uid`, so that its next status is patched whatever it
    /// is: the pod is gone, or something else (eviction) wrote its status.
    pub fn forget(&self, uid: &str) {
        lock(&self.reported).remove(uid);
    }

    fn changed(&self, uid: &str, status: &Value) -> bool {
        lock(&self.reported).get(uid) != Some(status)
    }

    fn remember(&self, uid: String, status: Value) {
        lock(&self.reported).insert(uid, status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[test]
    fn only_changed_statuses_are_patched() {
        let m = StatusManager::default();
        let running = json!({"phase": "Running"});
        assert!(m.changed("a", &running), "never reported");
        m.remember("a".into(), running.clone());
        assert!(!m.changed("a", &running));
        assert!(m.changed("b", &running), "per pod");
        assert!(m.changed("a", &json!({"phase": "Succeeded"})));
        m.forget("a");
        assert!(m.changed("a", &running), "forgotten");
    }

    /// An API server that counts the status patches of pod `default/p` and fails them while
    /// `failing` is set.
    async fn api_server(patches: Arc<AtomicUsize>, failing: Arc<AtomicBool>) -> kube::Client {
        let router = axum::Router::new().route(
            "/api/v1/namespaces/default/pods/p/status",
            axum::routing::patch(move || async move {
                patches.fetch_add(1, Ordering::SeqCst);
                if failing.load(Ordering::SeqCst) {
                    return Err(http::StatusCode::INTERNAL_SERVER_ERROR);
                }
                let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
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
}
