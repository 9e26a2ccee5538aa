//! Node IPAM: every Node gets a block of the cluster CIDR as `spec.podCIDR` (and `podCIDRs`),
//! the range its pods take addresses from. Blocks are /24 (upstream's node-cidr-mask-size for
//! IPv4), or the whole cluster CIDR if that is smaller. A block is never given to two nodes:
//! the ones in use are read from the Node objects at every pass, so a restart loses nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;

use super::informers::Informers;

const NODE_MASK: u8 = 24;

fn pod_cidrs(n: &Node) -> Vec<Ipv4Net> {
    let spec = n.spec.as_ref();
    spec.and_then(|s| s.pod_cidrs.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(spec.and_then(|s| s.pod_cidr.clone()))
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// The first block of `cluster` that overlaps none of `used`.
fn next_free(cluster: Ipv4Net, used: &HashSet<Ipv4Net>) -> Option<Ipv4Net> {
    let mask = NODE_MASK.max(cluster.prefix_len());
    cluster
        .subnets(mask)
        .ok()?
        .find(|b| !used.iter().any(|u| u.contains(b) || b.contains(u)))
}

pub async fn run(client: kube::Client, informers: Arc<Informers>, cluster: Ipv4Net) {
    informers.nodes.synced().await;
    let store = informers.nodes.store();
    let mut changes = std::pin::pin!(informers.nodes.subscribe());
    loop {
        if let Err(e) = sync(&client, &store, cluster).await {
            tracing::warn!("node IPAM: {e:#}");
        }
        // On every node change, and now and then in case a patch failed.
        let _ = tokio::time::timeout(Duration::from_secs(30), changes.next()).await;
    }
}

async fn sync(client: &kube::Client, store: &Store<Node>, cluster: Ipv4Net) -> anyhow::Result<()> {
    let nodes = store.state();
    let mut used: HashSet<Ipv4Net> = nodes.iter().flat_map(|n| pod_cidrs(n)).collect();
    let api: Api<Node> = Api::all(client.clone());
    for node in nodes.iter().filter(|n| pod_cidrs(n).is_empty()) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let Some(block) = next_free(cluster, &used) else {
            anyhow::bail!("cluster CIDR {cluster} has no free block for node {name}");
        };
        let patch = serde_json::json!({
            "spec": {"podCIDR": block.to_string(), "podCIDRs": [block.to_string()]}
        });
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tracing::info!(node = %name, pod_cidr = %block, "assigned the node's pod range");
        used.insert(block);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(blocks: &[&str]) -> HashSet<Ipv4Net> {
        blocks.iter().map(|b| b.parse().unwrap()).collect()
    }

    #[test]
    fn blocks_are_handed_out_in_order_without_overlap() {
        let cluster: Ipv4Net = "10.42.0.0/16".parse().unwrap();
        assert_eq!(
            next_free(cluster, &set(&[])),
            Some("10.42.0.0/24".parse().unwrap())
        );
        assert_eq!(
            next_free(cluster, &set(&["10.42.0.0/24", "10.42.2.0/24"])),
            Some("10.42.1.0/24".parse().unwrap())
        );
        // A larger block set by hand covers the /24s inside it.
        assert_eq!(
            next_free(cluster, &set(&["10.42.0.0/23"])),
            Some("10.42.2.0/24".parse().unwrap())
        );
        let small: Ipv4Net = "10.42.0.0/25".parse().unwrap();
        assert_eq!(next_free(small, &set(&[])), Some(small));
        assert_eq!(next_free(small, &set(&["10.42.0.0/25"])), None);
    }
}
