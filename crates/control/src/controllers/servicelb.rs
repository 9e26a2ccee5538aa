//! ServiceLB (k3s's klipper-lb, without its pods): a LoadBalancer Service is served on every
//! node's address by the nodes' service proxies, so its `status.loadBalancer.ingress` lists the
//! addresses of the Ready nodes. Services with a `loadBalancerClass` belong to another
//! controller and are left alone.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use serde_json::json;

use super::informers::Informers;

/// Addresses of Ready nodes (InternalIP, or ExternalIP where set), sorted.
fn ingress_ips(nodes: &[Arc<Node>]) -> Vec<String> {
    let mut ips: Vec<String> = nodes
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|n| {
            let addrs = n.status.as_ref()?.addresses.as_ref()?;
            let pick = |t: &str| {
                addrs
                    .iter()
                    .find(|a| a.type_ == t)
                    .map(|a| a.address.clone())
            };
            pick("ExternalIP").or_else(|| pick("InternalIP"))
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

fn wanted(svc: &Service, ips: &[String]) -> Option<serde_json::Value> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() != Some("LoadBalancer") || spec.load_balancer_class.is_some() {
        return None;
    }
    let ingress: Vec<serde_json::Value> = ips
        .iter()
        .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
        .collect();
    Some(json!({"loadBalancer": {"ingress": ingress}}))
}

pub async fn run(client: kube::Client, informers: Arc<Informers>) {
    let mut changes = std::pin::pin!(informers.services.subscribe());
    informers.services.synced().await;
    informers.nodes.synced().await;
    let (services, nodes) = (informers.services.store(), informers.nodes.store());
    let mut node_changes = std::pin::pin!(informers.nodes.subscribe());
    loop {
        sync(&client, &services, &nodes).await;
        tokio::select! {
            _ = changes.next() => {}
            _ = node_changes.next() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

async fn sync(client: &kube::Client, services: &Store<Service>, nodes: &Store<Node>) {
    let ips = ingress_ips(&nodes.state());
    for svc in services.state() {
        let Some(want) = wanted(&svc, &ips) else {
            continue;
        };
        let have = serde_json::to_value(svc.status.clone().unwrap_or_default()).unwrap_or_default();
        if have.get("loadBalancer") == want.get("loadBalancer")
            || (ips.is_empty() && have.pointer("/loadBalancer/ingress").is_none())
        {
            continue;
        }
        let api: Api<Service> =
            Api::namespaced(client.clone(), &svc.namespace().unwrap_or_default());
        let patch = json!({"status": want});
        if let Err(e) = api
            .patch_status(
                &svc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            tracing::debug!("servicelb {}: {e}", svc.name_any());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_nodes_addresses_become_ingress() {
        let node = |name: &str, ip: &str, ready: &str| -> Arc<Node> {
            Arc::new(
                serde_json::from_value(json!({"metadata": {"name": name}, "status": {
                    "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                    "conditions": [{"type": "Ready", "status": ready}]}}))
                .unwrap(),
            )
        };
        let ips = ingress_ips(&[
            node("b", "192.0.2.2", "True"),
            node("a", "192.0.2.1", "True"),
            node("c", "192.0.2.3", "Unknown"),
        ]);
        assert_eq!(ips, ["192.0.2.1", "192.0.2.2"]);
        let lb: Service = serde_json::from_value(
            json!({"metadata": {"name": "s"}, "spec": {"type": "LoadBalancer"}}),
        )
        .unwrap();
        assert_eq!(
            wanted(&lb, &ips).unwrap(),
            json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP"}, {"ip": "192.0.2.2", "ipMode": "VIP"}]}})
        );
        let classed: Service = serde_json::from_value(json!({"metadata": {"name": "s"}, "spec": {"type": "LoadBalancer", "loadBalancerClass": "other"}})).unwrap();
        assert!(wanted(&classed, &ips).is_none());
    }
}
