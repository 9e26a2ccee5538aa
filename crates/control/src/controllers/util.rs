//! Helpers shared by the controllers: owner references, selectors, pod state, events.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Resource;

pub use kinglet_core::events::Context;
pub use kinglet_core::pods::{
    controller_ref, controller_uid, is_available, is_ready, is_terminal, selects,
};

/// Pods a controller created or deleted that its cache has not shown yet, per owner uid, so a
/// stale cache never makes it act twice (upstream's "expectations").
#[derive(Default)]
pub struct Expectations {
    pending: Mutex<HashMap<String, Pending>>,
}

/// (names to see created, names to see gone, since)
type Pending = (HashSet<String>, HashSet<String>, Instant);

/// Expectations not met within this time are dropped.
const EXPECTATION_TTL: Duration = Duration::from_secs(30);

impl Expectations {
    pub fn expect(&self, owner: &str, adds: HashSet<String>, dels: HashSet<String>) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(owner.to_string(), (adds, dels, Instant::now()));
    }

    /// Whether the cache (`pods`, namespace `ns`) has caught up with `owner`'s last actions.
    pub fn satisfied(
        &self,
        owner: &str,
        pods: &kube::runtime::reflector::Store<Pod>,
        ns: &str,
    ) -> bool {
        let mut all = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Some((adds, dels, since)) = all.get_mut(owner) else {
            return true;
        };
        let present = |name: &String| {
            pods.get(&kube::runtime::reflector::ObjectRef::new(name).within(ns))
                .is_some()
        };
        adds.retain(|n| !present(n));
        dels.retain(present);
        if (adds.is_empty() && dels.is_empty()) || since.elapsed() > EXPECTATION_TTL {
            all.remove(owner);
            return true;
        }
        false
    }
}

/// Records `template` as a ControllerRevision of `owner` (named `<owner>-<hash>`, labelled like the
/// pods so `kubectl rollout history/undo` find it), as DaemonSets and StatefulSets keep them.
pub async fn ensure_revision<K>(
    ctx: &Context,
    owner: &K,
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    hash: &str,
) -> kube::Result<()>
where
    K: Resource<DynamicType = ()>,
{
    use k8s_openapi::api::apps::v1::ControllerRevision;
    let ns = owner.meta().namespace.clone().unwrap_or_default();
    let api: kube::Api<ControllerRevision> = kube::Api::namespaced(ctx.client.clone(), &ns);
    let name = format!("{}-{hash}", owner.meta().name.clone().unwrap_or_default());
    if api.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    let uid = owner.meta().uid.clone();
    let existing = api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|r| controller_uid(&r.metadata) == uid.as_deref())
        .map(|r| r.revision)
        .max()
        .unwrap_or(0);
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert("controller-revision-hash".into(), hash.into());
    // Upstream's revision data: a strategic patch that replaces the whole template.
    let mut data_template = serde_json::to_value(template).map_err(kube::Error::SerdeError)?;
    data_template["$patch"] = serde_json::json!("replace");
    let cr: ControllerRevision = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": [controller_ref(owner)]},
        "data": {"spec": {"template": data_template}},
        "revision": existing + 1,
    }))
    .map_err(kube::Error::SerdeError)?;
    match api.create(&kube::api::PostParams::default(), &cr).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Merge-patches `status` into `obj`'s status subresource.
pub async fn merge_status<K>(
    client: &kube::Client,
    obj: &K,
    status: &impl serde::Serialize,
) -> kube::Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let meta = obj.meta();
    let api: kube::Api<K> = kube::Api::namespaced(
        client.clone(),
        meta.namespace.as_deref().unwrap_or_default(),
    );
    let patch = serde_json::json!({ "status": status });
    api.patch_status(
        meta.name.as_deref().unwrap_or_default(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}
