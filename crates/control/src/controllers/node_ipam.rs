//! Node IPAM: every Node gets a block of the cluster CIDR as `spec.podCIDR` (and `podCIDRs`),
//! the range its pods take addresses from. Blocks are /24 (upstream's node-cidr-mask-size for
//! IPv4), or the whole cluster CIDR if that is smaller. A block is never given to two nodes, and
//! a node never gets a second one: the blocks in use are read from the Node objects at every
//! pass (so a restart loses nothing), plus the ones this controller set that the informer's
//! cache does not show yet; and a node is patched only after a fresh GET shows it without a
//! range, with that GET's resourceVersion as the patch's precondition.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};

use super::informers::Informers;

const NODE_MASK: u8 = 24;

fn pod_cidrs(n: &Node) -> Vec<Ipv4Net> {
    let spec = n.spec.as_ref();
    let mut cidrs: Vec<Ipv4Net> = (spec.and_then(|s| s.pod_cidrs.clone()))
        .unwrap_or_default()
        .into_iter()
        .chain(spec.and_then(|s| s.pod_cidr.clone()))
        .filter_map(|c| c.parse().ok())
        .collect();
    // podCIDR repeats podCIDRs[0].
    cidrs.sort_unstable();
    cidrs.dedup();
    cidrs
}

fn name_of(n: &Node) -> &str {
    n.metadata.name.as_deref().unwrap_or_default()
}

fn uid_of(n: &Node) -> &str {
    n.metadata.uid.as_deref().unwrap_or_default()
}

/// The first block of `cluster` that overlaps none of `used`.
fn next_free(cluster: Ipv4Net, used: &HashSet<Ipv4Net>) -> Option<Ipv4Net> {
    let mask = NODE_MASK.max(cluster.prefix_len());
    cluster
        .subnets(mask)
        .ok()?
        .find(|b| !used.iter().any(|u| u.contains(b) || b.contains(u)))
}

/// The two calls IPAM makes on the API server. A trait so the tests can play a lagging
/// informer cache against an API that checks what the real one checks.
trait NodeApi {
    /// The node as the API server has it now, not as the cache has it.
    async fn get(&self, name: &str) -> anyhow::Result<Option<Node>>;
    /// Sets the node's pod range if the node is still at `resource_version`; `Ok(false)` when
    /// it is not (it changed or is gone), so nothing was set.
    async fn set_pod_cidr(
        &self,
        name: &str,
        resource_version: &str,
        block: Ipv4Net,
    ) -> anyhow::Result<bool>;
}

struct KubeNodes(Api<Node>);

impl NodeApi for KubeNodes {
    async fn get(&self, name: &str) -> anyhow::Result<Option<Node>> {
        Ok(self.0.get_opt(name).await?)
    }

    async fn set_pod_cidr(
        &self,
        name: &str,
        resource_version: &str,
        block: Ipv4Net,
    ) -> anyhow::Result<bool> {
        // A resourceVersion in a merge patch is a precondition: 409 if the node moved on.
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": resource_version},
            "spec": {"podCIDR": block.to_string(), "podCIDRs": [block.to_string()]}
        });
        match self
            .0
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Blocks this controller knows a node has (it set them, or a fresh GET showed them) while
/// the informer's cache still shows the node without a range.
struct Known {
    uid: String,
    blocks: Vec<Ipv4Net>,
    /// False while the patch that set `blocks` has an unknown outcome (it failed on the way):
    /// the blocks stay reserved until a GET settles it.
    confirmed: bool,
}

struct Allocator {
    cluster: Ipv4Net,
    known: HashMap<String, Known>,
}

impl Allocator {
    fn new(cluster: Ipv4Net) -> Self {
        Self {
            cluster,
            known: HashMap::new(),
        }
    }

    /// One pass over the informer cache's `nodes`, which may lag behind the API server.
    async fn sync(&mut self, api: &impl NodeApi, nodes: &[Arc<Node>]) -> anyhow::Result<()> {
        // Forget what the cache has caught up with: the node shows a range there, or it is
        // gone (or was recreated), and its old blocks are free again.
        self.known.retain(|name, k| {
            nodes
                .iter()
                .any(|n| name_of(n) == name && uid_of(n) == k.uid && pod_cidrs(n).is_empty())
        });
        // Settle patches that failed on the way before counting their blocks free.
        let unsure: Vec<String> = (self.known.iter())
            .filter(|(_, k)| !k.confirmed)
            .map(|(name, _)| name.clone())
            .collect();
        for name in unsure {
            match api.get(&name).await? {
                Some(n) if !pod_cidrs(&n).is_empty() => self.remember(&n),
                _ => {
                    self.known.remove(&name);
                }
            }
        }

        let mut used: HashSet<Ipv4Net> = (nodes.iter().flat_map(|n| pod_cidrs(n)))
            .chain(self.known.values().flat_map(|k| k.blocks.iter().copied()))
            .collect();
        let mut waiting: Vec<&str> = (nodes.iter())
            .filter(|n| pod_cidrs(n).is_empty() && !self.known.contains_key(name_of(n)))
            .map(|n| name_of(n))
            .collect();
        waiting.sort_unstable();
        for name in waiting {
            let Some(node) = api.get(name).await? else {
                continue;
            };
            let have = pod_cidrs(&node);
            if !have.is_empty() {
                used.extend(have);
                self.remember(&node);
                continue;
            }
            let Some(rv) = node.metadata.resource_version.as_deref() else {
                anyhow::bail!("node {name} has no resourceVersion");
            };
            let Some(block) = next_free(self.cluster, &used) else {
                anyhow::bail!(
                    "cluster CIDR {} has no free block for node {name}",
                    self.cluster
                );
            };
            used.insert(block);
            self.known.insert(
                name.to_string(),
                Known {
                    uid: uid_of(&node).to_string(),
                    blocks: vec![block],
                    confirmed: false,
                },
            );
            let set = (api.set_pod_cidr(name, rv, block).await)
                .with_context(|| format!("setting node {name}'s pod range to {block}"))?;
            if set {
                if let Some(k) = self.known.get_mut(name) {
                    k.confirmed = true;
                }
                tracing::info!(node = %name, pod_cidr = %block, "assigned the node's pod range");
            } else {
                // The node changed since the GET; its update event brings the next pass.
                self.known.remove(name);
                used.remove(&block);
            }
        }
        Ok(())
    }

    fn remember(&mut self, node: &Node) {
        self.known.insert(
            name_of(node).to_string(),
            Known {
                uid: uid_of(node).to_string(),
                blocks: pod_cidrs(node),
                confirmed: true,
            },
        );
    }
}

pub async fn run(client: kube::Client, informers: Arc<Informers>, cluster: Ipv4Net) {
    informers.nodes.synced().await;
    let store = informers.nodes.store();
    let api = KubeNodes(Api::all(client));
    let mut allocator = Allocator::new(cluster);
    let mut changes = std::pin::pin!(informers.nodes.subscribe());
    loop {
        if let Err(e) = allocator.sync(&api, &store.state()).await {
            tracing::warn!("node IPAM: {e:#}");
        }
        // On every node change, and now and then in case a patch failed.
        let _ = tokio::time::timeout(Duration::from_secs(30), changes.next()).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn set(blocks: &[&str]) -> HashSet<Ipv4Net> {
        blocks.iter().map(|b| net(b)).collect()
    }

    fn cluster() -> Ipv4Net {
        net("10.42.0.0/16")
    }

    #[test]
    fn blocks_are_handed_out_in_order_without_overlap() {
        assert_eq!(next_free(cluster(), &set(&[])), Some(net("10.42.0.0/24")));
        assert_eq!(
            next_free(cluster(), &set(&["10.42.0.0/24", "10.42.2.0/24"])),
            Some(net("10.42.1.0/24"))
        );
        // A larger block set by hand covers the /24s inside it.
        assert_eq!(
            next_free(cluster(), &set(&["10.42.0.0/23"])),
            Some(net("10.42.2.0/24"))
        );
        let small = net("10.42.0.0/25");
        assert_eq!(next_free(small, &set(&[])), Some(small));
        assert_eq!(next_free(small, &set(&["10.42.0.0/25"])), None);
    }

    /// How a patch of the fake API server ends.
    #[derive(Clone, Copy, PartialEq)]
    enum Outcome {
        Normal,
        /// Applied, but the answer is lost (a timeout after the write).
        AppliedThenError,
        /// Not applied, and an error comes back.
        Error,
    }

    /// An API server holding nodes that checks what the real one checks on this patch: the
    /// resourceVersion precondition, and that a set podCIDR never changes.
    struct FakeApi {
        nodes: Mutex<HashMap<String, Node>>,
        rev: Mutex<u64>,
        patches: Mutex<Vec<(String, Ipv4Net)>>,
        next_patch: Mutex<Outcome>,
    }

    impl FakeApi {
        fn new() -> Self {
            Self {
                nodes: Mutex::default(),
                rev: Mutex::new(0),
                patches: Mutex::default(),
                next_patch: Mutex::new(Outcome::Normal),
            }
        }

        fn bump(&self) -> String {
            let mut rev = self.rev.lock().unwrap();
            *rev += 1;
            rev.to_string()
        }

        fn add(&self, name: &str) {
            let node: Node = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": self.bump()},
                "spec": {}
            }))
            .unwrap();
            self.nodes.lock().unwrap().insert(name.into(), node);
        }

        /// What an informer cache would hold now, in the given order.
        fn snapshot(&self, order: &[&str]) -> Vec<Arc<Node>> {
            let nodes = self.nodes.lock().unwrap();
            order.iter().map(|n| Arc::new(nodes[*n].clone())).collect()
        }

        fn range_of(&self, name: &str) -> Vec<Ipv4Net> {
            pod_cidrs(&self.nodes.lock().unwrap()[name])
        }

        fn patches(&self) -> Vec<(String, Ipv4Net)> {
            self.patches.lock().unwrap().clone()
        }
    }

    impl NodeApi for FakeApi {
        async fn get(&self, name: &str) -> anyhow::Result<Option<Node>> {
            Ok(self.nodes.lock().unwrap().get(name).cloned())
        }

        async fn set_pod_cidr(
            &self,
            name: &str,
            resource_version: &str,
            block: Ipv4Net,
        ) -> anyhow::Result<bool> {
            self.patches.lock().unwrap().push((name.into(), block));
            let outcome = std::mem::replace(&mut *self.next_patch.lock().unwrap(), Outcome::Normal);
            if outcome == Outcome::Error {
                anyhow::bail!("connection reset");
            }
            let rev = self.bump();
            let mut nodes = self.nodes.lock().unwrap();
            let Some(node) = nodes.get_mut(name) else {
                return Ok(false);
            };
            if node.metadata.resource_version.as_deref() != Some(resource_version) {
                return Ok(false);
            }
            let have = pod_cidrs(node);
            if !have.is_empty() && have != [block] {
                anyhow::bail!(
                    "Node {name:?} is invalid: spec.podCIDRs: Forbidden: node updates may not change podCIDR except from \"\" to valid"
                );
            }
            let spec = node.spec.get_or_insert_with(Default::default);
            spec.pod_cidr = Some(block.to_string());
            spec.pod_cidrs = Some(vec![block.to_string()]);
            node.metadata.resource_version = Some(rev);
            if outcome == Outcome::AppliedThenError {
                anyhow::bail!("timed out waiting for the answer");
            }
            Ok(true)
        }
    }

    #[tokio::test]
    async fn a_stale_cache_after_an_assignment_neither_moves_nor_repeats_a_block() {
        let api = FakeApi::new();
        api.add("n1");
        api.add("n2");
        let stale = api.snapshot(&["n2", "n1"]);
        let mut ipam = Allocator::new(cluster());
        ipam.sync(&api, &api.snapshot(&["n1", "n2"])).await.unwrap();
        assert_eq!(api.range_of("n1"), [net("10.42.0.0/24")]);
        assert_eq!(api.range_of("n2"), [net("10.42.1.0/24")]);
        assert_eq!(api.patches().len(), 2);

        // The informer has not seen the patches yet and lists the nodes in another order.
        ipam.sync(&api, &stale).await.unwrap();
        assert_eq!(api.range_of("n1"), [net("10.42.0.0/24")]);
        assert_eq!(api.range_of("n2"), [net("10.42.1.0/24")]);
        assert_eq!(api.patches().len(), 2, "no node is patched twice");

        // n1's update has arrived, n2's not yet, and n3 joined: n3 gets a block of its own.
        api.add("n3");
        let mut partial = api.snapshot(&["n1", "n3"]);
        partial.extend(stale.iter().filter(|n| name_of(n) == "n2").cloned());
        ipam.sync(&api, &partial).await.unwrap();
        assert_eq!(api.range_of("n3"), [net("10.42.2.0/24")]);
        assert_eq!(api.patches().len(), 3);

        // Once the cache has caught up, nothing is left to remember and nothing changes.
        ipam.sync(&api, &api.snapshot(&["n3", "n2", "n1"]))
            .await
            .unwrap();
        assert!(ipam.known.is_empty());
        assert_eq!(api.patches().len(), 3);
    }

    #[tokio::test]
    async fn a_range_the_cache_does_not_show_yet_is_neither_overwritten_nor_reused() {
        // Another writer (an earlier leader) set n1's range; the cache has the old n1.
        let api = FakeApi::new();
        api.add("n1");
        api.add("n2");
        let stale = api.snapshot(&["n1", "n2"]);
        let n1 = api.nodes.lock().unwrap()["n1"]
            .metadata
            .resource_version
            .clone();
        api.set_pod_cidr("n1", &n1.unwrap(), net("10.42.0.0/24"))
            .await
            .unwrap();
        let mut ipam = Allocator::new(cluster());
        ipam.sync(&api, &stale).await.unwrap();
        assert_eq!(api.range_of("n1"), [net("10.42.0.0/24")]);
        assert_eq!(api.range_of("n2"), [net("10.42.1.0/24")]);
    }

    #[tokio::test]
    async fn a_patch_with_an_unknown_outcome_keeps_its_block_until_settled() {
        let api = FakeApi::new();
        api.add("n1");
        let mut ipam = Allocator::new(cluster());
        *api.next_patch.lock().unwrap() = Outcome::AppliedThenError;
        assert!(ipam.sync(&api, &api.snapshot(&["n1"])).await.is_err());
        assert_eq!(api.range_of("n1"), [net("10.42.0.0/24")]);

        // The cache still shows n1 without a range; n2 must not get n1's block.
        let stale_n1 = api.snapshot(&["n1"]).pop().unwrap();
        let stale_n1 = Arc::new(Node {
            spec: Some(Default::default()),
            ..(*stale_n1).clone()
        });
        api.add("n2");
        let mut view = vec![stale_n1];
        view.extend(api.snapshot(&["n2"]));
        ipam.sync(&api, &view).await.unwrap();
        assert_eq!(api.range_of("n1"), [net("10.42.0.0/24")]);
        assert_eq!(api.range_of("n2"), [net("10.42.1.0/24")]);
        assert_eq!(api.patches().len(), 2);
    }

    #[tokio::test]
    async fn a_patch_that_failed_is_retried_with_the_same_block() {
        let api = FakeApi::new();
        api.add("n1");
        let mut ipam = Allocator::new(cluster());
        *api.next_patch.lock().unwrap() = Outcome::Error;
        assert!(ipam.sync(&api, &api.snapshot(&["n1"])).await.is_err());
        assert!(api.range_of("n1").is_empty());
        ipam.sync(&api, &api.snapshot(&["n1"])).await.unwrap();
        assert_eq!(api.range_of("n1"), [net("10.42.0.0/24")]);
    }

    #[tokio::test]
    async fn a_node_that_changed_after_the_get_is_left_for_the_next_pass() {
        let api = FakeApi::new();
        api.add("n1");
        let view = api.snapshot(&["n1"]);
        let mut ipam = Allocator::new(cluster());
        // A stale resourceVersion stands for a write between the GET and the patch.
        assert!(
            !api.set_pod_cidr("n1", "0", net("10.42.9.0/24"))
                .await
                .unwrap()
        );
        ipam.sync(&api, &view).await.unwrap();
        assert_eq!(api.range_of("n1"), [net("10.42.0.0/24")]);
    }
}
