//! Objects every cluster has from its first start: the system namespaces, the built-in
//! priority classes, the `default/kubernetes` Service with endpoints at every live server, and API
//! Priority and Fairness' mandatory configuration (stored for the tools that read it; kinglet
//! does not enforce it).

use std::collections::BTreeMap;
use std::net::IpAddr;
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
            // A conflict is another server sharing the datastore writing it meanwhile.
            match commit_update(api, &res, &ctx, rec.rev, &old, new, None).await {
                Err(e) if e.code != 409 => anyhow::bail!("updating {resource}/{name}: {e}"),
                _ => {}
            }
        }
        Ok(_) => {}
        Err(e) if e.code == 404 => {
            if let Err(e) = create_object(api, &res, &ctx, obj).await {
                // Another server sharing the datastore may have made it meanwhile.
                if get_current(api, &res, &ctx, &name).await.is_err() {
                    anyhow::bail!("creating {resource}/{name}: {e}");
                }
            }
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
    // Servers sharing a datastore list each other (`reconcile_endpoints`, kept up by
    // `spawn_endpoint_reconciler`); a server alone lists itself.
    if api.store.is_shared() {
        // Another server's write may race this one; the reconciler comes back to it.
        if let Err(e) = reconcile_endpoints(api).await {
            tracing::warn!("the kubernetes Service's endpoints: {e:#}");
        }
    } else {
        write_endpoints(api, &[(api.config.advertise_address, port)]).await?;
    }
    flowcontrol(api).await
}

/// The `kubernetes` Endpoints and EndpointSlice naming `servers` (address, port), as
/// upstream's endpoint reconciler writes them: one subset per port; the slice holds the
/// servers of the lowest port and the first address family (servers of one cluster normally
/// all serve at one port).
async fn write_endpoints(api: &Api, servers: &[(IpAddr, u16)]) -> anyhow::Result<()> {
    let mut by_port: BTreeMap<u16, Vec<IpAddr>> = BTreeMap::new();
    for (ip, port) in servers {
        by_port.entry(*port).or_default().push(*ip);
    }
    let subsets: Vec<Value> = by_port
        .iter()
        .map(|(port, ips)| {
            json!({"addresses": ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>(),
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}]})
        })
        .collect();
    let eps = json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": subsets});
    ensure(api, "", "v1", "endpoints", Some("default"), eps, true).await?;
    let Some((port, ips)) = by_port.iter().next() else {
        return Ok(());
    };
    let v4 = ips[0].is_ipv4();
    let addresses: Vec<String> = ips
        .iter()
        .filter(|ip| ip.is_ipv4() == v4)
        .map(IpAddr::to_string)
        .collect();
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "kinglet"}},
        "addressType": if v4 { "IPv4" } else { "IPv6" },
        "endpoints": addresses.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect::<Vec<_>>(),
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
    .await
}

/// Servers' leases for the `kubernetes` endpoints, as upstream's `/masterleases/`: one key
/// per server (`<address>:<port>`), renewed every [`LEASE_RENEW`]; a lease not renewed for
/// [`LEASE_TTL`] seconds no longer counts (etcd's TTL upstream; here the readers' clocks
/// decide, so servers' clocks must agree within a few seconds).
pub const MASTER_LEASES_PREFIX: &str = "/kinglet/masterleases/";
const LEASE_TTL: i64 = 15;
const LEASE_RENEW: std::time::Duration = std::time::Duration::from_secs(5);
/// Expired leases are deleted after this long (by any server).
const LEASE_FORGET: i64 = 10 * LEASE_TTL;

fn own_lease_key(api: &Api) -> String {
    format!(
        "{MASTER_LEASES_PREFIX}{}",
        std::net::SocketAddr::new(api.config.advertise_address, api.config.port)
    )
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The servers whose leases are fresh at `now`, sorted; leases long expired are deleted.
async fn live_servers(
    store: &kinglet_store::Store,
    now: i64,
) -> anyhow::Result<Vec<(IpAddr, u16)>> {
    let mut servers = Vec::new();
    for rec in store.list(MASTER_LEASES_PREFIX, 0, None, None).await?.items {
        // Written by servers of this cluster, but read as untrusted data all the same.
        let lease: Value = serde_json::from_slice(&rec.value).unwrap_or_default();
        let ip = lease["ip"].as_str().and_then(|s| s.parse::<IpAddr>().ok());
        let port = lease["port"].as_u64().and_then(|p| u16::try_from(p).ok());
        let renewed = lease["renewTime"].as_i64().unwrap_or_default();
        match (ip, port) {
            (Some(ip), Some(port)) if renewed + LEASE_TTL >= now => servers.push((ip, port)),
            _ if renewed + LEASE_FORGET < now => {
                let _ = store.delete(&rec.key, Some(rec.rev)).await;
            }
            _ => {}
        }
    }
    servers.sort();
    servers.dedup();
    Ok(servers)
}

/// Renews this server's lease, then writes the endpoints of every server with a fresh one.
async fn reconcile_endpoints(api: &Api) -> anyhow::Result<()> {
    let store = api.store.raw();
    let key = own_lease_key(api);
    let now = unix_now();
    let value = bytes::Bytes::from(
        json!({"ip": api.config.advertise_address.to_string(), "port": api.config.port, "renewTime": now})
            .to_string(),
    );
    match store.update(&key, None, value.clone()).await {
        Err(kinglet_store::StoreError::NotFound) => match store.create(&key, value).await {
            Ok(_) | Err(kinglet_store::StoreError::AlreadyExists) => {}
            Err(e) => anyhow::bail!("creating the server's lease: {e}"),
        },
        Err(e) => anyhow::bail!("renewing the server's lease: {e}"),
        Ok(_) => {}
    }
    let servers = live_servers(store, now).await?;
    write_endpoints(api, &servers).await
}

/// Keeps this server's lease and the `kubernetes` endpoints up to date while the server
/// runs, when it shares its datastore with other servers.
pub fn spawn_endpoint_reconciler(api: std::sync::Arc<Api>) {
    if !api.store.is_shared() {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(LEASE_RENEW).await;
            if let Err(e) = reconcile_endpoints(&api).await {
                tracing::warn!("the kubernetes Service's endpoints: {e:#}");
            }
        }
    });
}

/// Takes this server out of the `kubernetes` endpoints at shutdown (its lease goes).
pub async fn withdraw_endpoints(api: &Api) {
    if !api.store.is_shared() {
        return;
    }
    let _ = api.store.raw().delete(&own_lease_key(api), None).await;
    let servers = match live_servers(api.store.raw(), unix_now()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("taking this server out of the kubernetes endpoints: {e:#}");
            return;
        }
    };
    if let Err(e) = write_endpoints(api, &servers).await {
        tracing::warn!("taking this server out of the kubernetes endpoints: {e:#}");
    }
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
