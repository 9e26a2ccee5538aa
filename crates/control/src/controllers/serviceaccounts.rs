//! Every active namespace has a `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap
//! holding the cluster CA (upstream's serviceaccount and root-ca-cert-publisher controllers).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

const ROOT_CA: &str = "kube-root-ca.crt";

/// The clients of the two controllers this loop is: reads go through the controller manager
/// (upstream's shared informers), writes through each controller's own identity.
pub struct Clients {
    pub reader: kube::Client,
    /// `service-account-controller`: creates the `default` ServiceAccounts.
    pub accounts: kube::Client,
    /// `root-ca-cert-publisher`: creates and updates the CA ConfigMaps.
    pub root_ca: kube::Client,
}

struct Ctx {
    clients: Clients,
    ca_pem: String,
}

async fn create_ignoring_exists<K>(api: &Api<K>, obj: &K) -> kube::Result<()>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> kube::Result<Action> {
    let name = ns.metadata.name.clone().unwrap_or_default();
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let c = &ctx.clients;
    let sas: Api<ServiceAccount> = Api::namespaced(c.reader.clone(), &name);
    if sas.get_opt("default").await?.is_none() {
        let sa: ServiceAccount =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}}))
                .expect("sa");
        create_ignoring_exists(&Api::namespaced(c.accounts.clone(), &name), &sa).await?;
    }
    let cms: Api<ConfigMap> = Api::namespaced(c.root_ca.clone(), &name);
    let want = serde_json::json!({"ca.crt": ctx.ca_pem});
    let current = Api::<ConfigMap>::namespaced(c.reader.clone(), &name)
        .get_opt(ROOT_CA)
        .await?;
    match current {
        Some(cm) if serde_json::to_value(&cm.data).ok().as_ref() == Some(&want) => {}
        Some(mut cm) => {
            cm.data = serde_json::from_value(want).ok();
            cms.replace(ROOT_CA, &PostParams::default(), &cm).await?;
        }
        None => {
            let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                "metadata": {"name": ROOT_CA, "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                "data": want,
            }))
            .expect("configmap");
            create_ignoring_exists(&cms, &cm).await?;
        }
    }
    Ok(Action::await_change())
}

fn ns_of<K: kube::Resource>(obj: K) -> Option<ObjectRef<Namespace>> {
    obj.meta().namespace.clone().map(|ns| ObjectRef::new(&ns))
}

pub async fn run(clients: Clients, ca_pem: String) {
    let client = clients.reader.clone();
    let ctx = Arc::new(Ctx { clients, ca_pem });
    let sa_cfg = watcher::Config::default().fields("metadata.name=default");
    let cm_cfg = watcher::Config::default().fields(&format!("metadata.name={ROOT_CA}"));
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(Api::<ServiceAccount>::all(client.clone()), sa_cfg, ns_of)
    .watches(Api::<ConfigMap>::all(client), cm_cfg, ns_of)
    .run(
        reconcile,
        |_, e, _| {
            tracing::debug!("serviceaccounts: {e}");
            Action::requeue(Duration::from_secs(2))
        },
        ctx,
    )
    .for_each(|_| async {})
    .await;
}
