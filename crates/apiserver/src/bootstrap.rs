//! Objects every cluster has from its first start: the system namespaces, the built-in
//! priority classes, the `default/kubernetes` Service with endpoints at this server, and API
//! Priority and Fairness' mandatory configuration (stored for the tools that read it; kinglet
//! does not enforce it).

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::Api;
use super::auth::UserInfo;
use super::context::Ctx;
use super::lifecycle::{commit_update, create_object, get_current};
use super::request::{Query, ResourcePath};

impl Ctx {
    /// A context for the server's own writes.
    pub fn internal(group: &str, version: &str, resource: &str, namespace: Option<&str>) -> Ctx {
        Ctx {
            user: Arc::new(UserInfo::internal()),
            query: Query::default(),
            accept: "application/json".into(),
            content_type: "application/json".into(),
            // The field manager of the server's own writes, as upstream's.
            user_agent: "kube-apiserver".into(),
            path: ResourcePath {
                group: group.into(),
                version: version.into(),
                resource: resource.into(),
                namespace: namespace.map(String::from),
                ..Default::default()
            },
            warnings: Mutex::new(Vec::new()),
        }
    }
}

/// Creates the object unless it exists; with `replace`, brings an existing one to `obj`'s content.
pub(crate) async fn ensure(
    api: &Api,
    group: &str,
    version: &str,
    resource: &str,
    ns: Option<&str>,
    obj: Value,
    replace: bool,
) -> anyhow::Result<()> {
    let res = api
        .registry
        .find(group, version, resource)
        .ok_or_else(|| anyhow::anyhow!("{resource} not registered"))?;
    let ctx = Ctx::internal(group, version, resource, ns);
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    match get_current(api, &res, &ctx, &name).await {
        Ok((rec, old)) if replace => {
            let mut new = old.clone();
            for (k, v) in obj
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.as_str() != "metadata")
            {
                new[k] = v.clone();
            }
            commit_update(api, &res, &ctx, rec.rev, &old, new, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(_) => {}
        Err(e) if e.code == 404 => {
            create_object(api, &res, &ctx, obj)
                .await
                .map_err(|e| anyhow::anyhow!("creating {resource}/{name}: {e}"))?;
        }
        Err(e) => anyhow::bail!("{e}"),
    }
    Ok(())
}

// The provisioner of the default class (`kinglet_control::controllers::persistentvolume`).
use kinglet_core::storage::LOCAL_PATH_PROVISIONER;

pub async fn run(api: &Api) -> anyhow::Result<()> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ensure(
            api,
            "",
            "v1",
            "namespaces",
            None,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            false,
        )
        .await?;
    }
    for (name, value) in [
        ("system-node-critical", 2000001000),
        ("system-cluster-critical", 2000000000),
    ] {
        let pc = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}, "value": value,
            "description": "Used for system critical pods that must not be moved from their current node."});
        ensure(
            api,
            "scheduling.k8s.io",
            "v1",
            "priorityclasses",
            None,
            pc,
            false,
        )
        .await?;
    }
    let ip = api.kubernetes_service_ip().to_string();
    let port = api.config.port;
    let svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}], "sessionAffinity": "None"}});
    ensure(api, "", "v1", "services", Some("default"), svc, false).await?;
    // Every node answers DNS at this address itself (`kinglet_network::dns`); the Service reserves it and
    // shows clients where cluster DNS is, as kube-dns does upstream.
    let dns = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "kinglet-dns"}},
        "spec": {"type": "ClusterIP", "clusterIP": api.config.cluster_dns.to_string(), "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}});
    ensure(api, "", "v1", "services", Some("kube-system"), dns, false).await?;
    // kinglet's local-path provisioner's class, the default one, as k3s's `local-path`. Made
    // again at the next start if deleted, as k3s re-applies its packaged manifests; edits to
    // it are kept.
    let class = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "local-path", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": LOCAL_PATH_PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer"});
    ensure(
        api,
        "storage.k8s.io",
        "v1",
        "storageclasses",
        None,
        class,
        false,
    )
    .await?;
    let addr = api.config.advertise_address.to_string();
    let eps = json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": addr}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]});
    ensure(api, "", "v1", "endpoints", Some("default"), eps, true).await?;
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "kinglet"}},
        "addressType": if api.config.advertise_address.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{"addresses": [addr], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]});
    ensure(
        api,
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        Some("default"),
        slice,
        true,
    )
    .await?;
    flowcontrol(api).await
}

/// Upstream's mandatory flowcontrol objects (`exempt` and `catch-all`), kept at upstream's
/// content as its configuration controller does for objects marked `autoupdate-spec`.
async fn flowcontrol(api: &Api) -> anyhow::Result<()> {
    const GROUP: &str = "flowcontrol.apiserver.k8s.io";
    let meta = |name: &str| json!({"name": name, "annotations": {"apf.kubernetes.io/autoupdate-spec": "true"}});
    let levels = [
        json!({"metadata": meta("exempt"), "spec": {"type": "Exempt",
            "exempt": {"nominalConcurrencyShares": 0, "lendablePercent": 0}}}),
        json!({"metadata": meta("catch-all"), "spec": {"type": "Limited",
            "limited": {"nominalConcurrencyShares": 5, "lendablePercent": 0, "limitResponse": {"type": "Reject"}}}}),
    ];
    for mut level in levels {
        level["apiVersion"] = json!(format!("{GROUP}/v1"));
        level["kind"] = json!("PriorityLevelConfiguration");
        ensure(
            api,
            GROUP,
            "v1",
            "prioritylevelconfigurations",
            None,
            level,
            true,
        )
        .await?;
    }
    let everything = json!({
        "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": true, "namespaces": ["*"]}],
        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]});
    let group = |name: &str| json!({"kind": "Group", "group": {"name": name}});
    let mut exempt_rule = everything.clone();
    exempt_rule["subjects"] = json!([group("system:masters")]);
    let mut catch_all_rule = everything;
    catch_all_rule["subjects"] = json!([
        group("system:unauthenticated"),
        group("system:authenticated")
    ]);
    let schemas = [
        json!({"metadata": meta("exempt"), "spec": {"priorityLevelConfiguration": {"name": "exempt"},
            "matchingPrecedence": 1, "rules": [exempt_rule]}}),
        json!({"metadata": meta("catch-all"), "spec": {"priorityLevelConfiguration": {"name": "catch-all"},
            "matchingPrecedence": 10000, "distinguisherMethod": {"type": "ByUser"}, "rules": [catch_all_rule]}}),
    ];
    for mut schema in schemas {
        schema["apiVersion"] = json!(format!("{GROUP}/v1"));
        schema["kind"] = json!("FlowSchema");
        ensure(api, GROUP, "v1", "flowschemas", None, schema, true).await?;
    }
    Ok(())
}
