//! Offline autonomy, as KubeEdge's edgecore has it: the node keeps what it needs to run its
//! pods under `<data-dir>/agent/cache/` and goes on from that copy while the API server cannot
//! be reached. The node's pods, Services and EndpointSlices are watch caches persisted by
//! `kinglet_core::informers`; the Secrets and ConfigMaps its pods use and its Node are kept
//! here as last read. Service-account tokens stay in the pods' volumes as last issued.
//!
//! While the server is known to be down, reads come from the copy and writes that only report
//! (pod status, events) are skipped, so that a cut-off node does not wait on a connect timeout
//! at every step; the heartbeat keeps trying and notices when the server is back, and the
//! status manager then reports every pod again.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::ResourceExt;
use kube::api::Api;

use kinglet_core::informers::Kind;
use kinglet_core::informers::offline::{Objects, unreachable, unreachable_in};

/// Where a node keeps its copy: `<data-dir>/agent/cache` (0700: Secrets are in it).
pub fn cache_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("agent/cache")
}

/// The node's view of the API server (reachable or not) and its copy of single objects.
pub struct Offline {
    /// The copy; `None` on a node that keeps none (the server's own: its API server is
    /// in-process), where every copy operation does nothing.
    objects: Option<Objects>,
    down: AtomicBool,
    /// What was read from the server since the last prune (kind, namespace, name): a pod
    /// newer than the prune's list of pods may use it already.
    read: Mutex<HashSet<(String, String, String)>>,
}

fn key<K: Kind>(ns: Option<&str>, name: &str) -> (String, String, String) {
    let ns = ns.unwrap_or_default().to_string();
    (K::plural(&()).into_owned(), ns, name.to_string())
}

impl Offline {
    /// `copy`: whether the node keeps a copy on disk (`NodeConfig::offline_copy`).
    pub fn new(data_dir: &Path, copy: bool) -> Offline {
        Offline {
            objects: copy.then(|| Objects::new(cache_dir(data_dir).join("objects"))),
            down: AtomicBool::new(false),
            read: Mutex::default(),
        }
    }

    /// Whether the server could not be reached the last time the node tried.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// The server answered.
    pub fn reached(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("the API server is reachable again");
        }
    }

    /// Notes a failed request; true if it failed for want of a server (the node then runs from
    /// its copy until the server answers again).
    pub fn failed(&self, e: &anyhow::Error) -> bool {
        let down = unreachable_in(e);
        if down && !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!("the API server is unreachable ({e:#}); running from the local copy");
        }
        down
    }

    /// `name` (in `api`'s namespace) from the server, kept as the copy; the copy when the
    /// server cannot be reached. An answer from the server, "not found" or "forbidden" too,
    /// always stands.
    pub async fn get<K: Kind + serde::Serialize>(
        &self,
        api: &Api<K>,
        name: &str,
    ) -> anyhow::Result<Option<K>> {
        let ns = api.namespace();
        if self.is_down()
            && let Some(obj) = self.cached(ns, name)
        {
            return Ok(Some(obj));
        }
        match api.get_opt(name).await {
            Ok(obj) => {
                self.reached();
                if let Some(objects) = &self.objects {
                    // Noted before it is saved, so that a prune running now keeps it.
                    super::lock(&self.read).insert(key::<K>(ns, name));
                    objects.save(ns, name, obj.as_ref());
                }
                Ok(obj)
            }
            Err(e) if unreachable(&e) => {
                let e = anyhow::Error::from(e);
                self.failed(&e);
                match self.cached(ns, name) {
                    Some(obj) => Ok(Some(obj)),
                    None => Err(e),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The copy of `name`, without asking the server.
    pub fn cached<K: Kind>(&self, ns: Option<&str>, name: &str) -> Option<K> {
        self.objects.as_ref()?.load(ns, name)
    }

    /// Drops the copies of Secrets and ConfigMaps that none of `pods` uses any more and that
    /// were not read since the last prune.
    pub fn prune(&self, pods: &[std::sync::Arc<Pod>]) {
        let Some(objects) = &self.objects else {
            return;
        };
        let before = std::mem::take(&mut *super::lock(&self.read));
        let mut used = HashSet::new();
        for pod in pods {
            let ns = pod.namespace().unwrap_or_default();
            let (secrets, config_maps) = sources(pod);
            used.extend(secrets.iter().map(|n| key::<Secret>(Some(&ns), n)));
            used.extend(config_maps.iter().map(|n| key::<ConfigMap>(Some(&ns), n)));
        }
        let keep = |key: (String, String, String)| {
            used.contains(&key) || before.contains(&key) || super::lock(&self.read).contains(&key)
        };
        objects.retain::<Secret>(&|ns, name| keep(key::<Secret>(Some(ns), name)));
        objects.retain::<ConfigMap>(&|ns, name| keep(key::<ConfigMap>(Some(ns), name)));
    }
}

/// The Secrets and ConfigMaps a pod reads: volumes (projected ones too), environment, and
/// image pull secrets.
fn sources(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let (mut secrets, mut config_maps) = (Vec::new(), Vec::new());
    let Some(spec) = &pod.spec else {
        return (secrets, config_maps);
    };
    for r in spec.image_pull_secrets.iter().flatten() {
        secrets.push(r.name.clone());
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.push(s);
        }
        if let Some(c) = &v.config_map {
            config_maps.push(c.name.clone());
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(s) = &src.secret {
                secrets.push(s.name.clone());
            }
            if let Some(c) = &src.config_map {
                config_maps.push(c.name.clone());
            }
        }
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    for c in containers {
        for from in c.env_from.iter().flatten() {
            if let Some(r) = &from.secret_ref {
                secrets.push(r.name.clone());
            }
            if let Some(r) = &from.config_map_ref {
                config_maps.push(r.name.clone());
            }
        }
        for from in c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
            if let Some(r) = &from.secret_key_ref {
                secrets.push(r.name.clone());
            }
            if let Some(r) = &from.config_map_key_ref {
                config_maps.push(r.name.clone());
            }
        }
    }
    (secrets, config_maps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn copies_no_pod_uses_are_dropped() {
        let p = pod(serde_json::json!({
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [
                {"name": "a", "secret": {"secretName": "vol-s"}},
                {"name": "b", "configMap": {"name": "vol-c"}},
                {"name": "c", "projected": {"sources": [
                    {"secret": {"name": "proj-s"}}, {"configMap": {"name": "proj-c"}},
                    {"serviceAccountToken": {"path": "token"}},
                ]}},
            ],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "from-s"}}]}],
            "containers": [{"name": "c", "envFrom": [{"configMapRef": {"name": "from-c"}}],
                "env": [
                    {"name": "A", "valueFrom": {"secretKeyRef": {"name": "key-s", "key": "k"}}},
                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "key-c", "key": "k"}}},
                    {"name": "C", "value": "plain"},
                ]}],
        }));
        let (mut s, mut c) = sources(&p);
        s.sort();
        c.sort();
        assert_eq!(s, ["from-s", "key-s", "proj-s", "pull", "vol-s"]);
        assert_eq!(c, ["from-c", "key-c", "proj-c", "vol-c"]);

        let tmp = tempfile::tempdir().unwrap();
        let offline = Offline::new(tmp.path(), true);
        let secret = |ns: &str, name: &str| -> Secret {
            serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": ns}}))
                .unwrap()
        };
        let objects = offline.objects.as_ref().unwrap();
        for (ns, name) in [("ns", "vol-s"), ("ns", "gone"), ("other", "vol-s")] {
            objects.save(Some(ns), name, Some(&secret(ns, name)));
        }
        // Read from the server since the last prune: kept this once.
        super::super::lock(&offline.read).insert(key::<Secret>(Some("ns"), "gone"));
        offline.prune(&[Arc::new(p.clone())]);
        assert!(offline.cached::<Secret>(Some("ns"), "gone").is_some());
        offline.prune(&[Arc::new(p)]);
        assert!(offline.cached::<Secret>(Some("ns"), "vol-s").is_some());
        assert!(offline.cached::<Secret>(Some("ns"), "gone").is_none());
        assert!(offline.cached::<Secret>(Some("other"), "vol-s").is_none());
        let dir = tmp.path().join("agent/cache/objects/secrets/ns/vol-s");
        assert!(dir.is_file(), "under <data-dir>/agent/cache");
    }

    /// A client of a server that refuses connections (the port was just freed).
    async fn refused() -> kube::Client {
        let port = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}").parse().unwrap();
        kube::Client::try_from(kube::Config::new(url)).unwrap()
    }

    #[tokio::test]
    async fn an_unreachable_server_is_answered_from_the_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let offline = Offline::new(tmp.path(), true);
        let api: Api<ConfigMap> = Api::namespaced(refused().await, "ns");
        // Nothing cached: the failure stands, and the server is known to be down.
        let e = offline.get(&api, "cm").await.unwrap_err();
        assert!(unreachable_in(&e), "{e:#}");
        assert!(offline.is_down());
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cm", "namespace": "ns"}, "data": {"k": "v"},
        }))
        .unwrap();
        offline
            .objects
            .as_ref()
            .unwrap()
            .save(Some("ns"), "cm", Some(&cm));
        let got = offline.get(&api, "cm").await.unwrap().unwrap();
        assert_eq!(got.data.unwrap()["k"], "v");
        // Asked while the server was thought up: it is tried, then the copy answers.
        offline.reached();
        assert!(offline.get(&api, "cm").await.unwrap().is_some());
        assert!(offline.is_down());
    }

    /// An API server answering `GET` of ConfigMap `ns/cm`.
    async fn answering() -> kube::Client {
        let router = axum::Router::new().route(
            "/api/v1/namespaces/ns/configmaps/cm",
            axum::routing::get(|| async {
                let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "cm", "namespace": "ns"}, "data": {"k": "v"}});
                (
                    [(http::header::CONTENT_TYPE, "application/json")],
                    cm.to_string(),
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
    }

    #[tokio::test]
    async fn a_node_without_a_copy_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let client = answering().await;
        let api: Api<ConfigMap> = Api::namespaced(client, "ns");
        let with = Offline::new(tmp.path(), true);
        assert!(with.get(&api, "cm").await.unwrap().is_some());
        assert!(
            cache_dir(tmp.path())
                .join("objects/configmaps/ns/cm")
                .is_file(),
            "an agent keeps a copy"
        );
        let other = tempfile::tempdir().unwrap();
        let without = Offline::new(other.path(), false);
        assert!(without.get(&api, "cm").await.unwrap().is_some());
        assert!(without.cached::<ConfigMap>(Some("ns"), "cm").is_none());
        without.prune(&[]);
        assert!(
            !cache_dir(other.path()).exists(),
            "the server's node keeps none"
        );
    }
}
