//! The overlay wired to the Nodes, as flanneld's kube subnet manager does it: once this node
//! has its podCIDR, the device is made on the underlay and the node publishes its VTEP MAC and
//! public address as annotations of its own Node; every other Node with a podCIDR and both
//! annotations is a peer, programmed on every change of the Nodes (added, changed, deleted).
//! Errors are retried with a backoff; the task never ends but when there is nothing to do (the
//! node's address is on loopback or not IPv4). An agent keeps its watch of the Nodes on disk
//! (`Config::cache`), so that restarted while the server is unreachable it makes its device
//! and its peers from the copy, then follows the watch once the server answers.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use kinglet_core::informers::{Persist, SMALL_BUFFER, Shared};

use super::{PUBLIC_IP_ANNOTATION, Peer, VTEP_MAC_ANNOTATION};

/// What the overlay needs to know of its node.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    pub node_ip: IpAddr,
    /// Nodes' pod ranges outside it are not routed (a route could take over other traffic).
    pub cluster_cidr: Ipv4Net,
    /// `--vxlan-iface`: the underlay by name; else the link holding `node_ip`.
    pub iface: Option<String>,
    /// Where a copy of the Nodes is kept (`nodes.json`), to start from when the server cannot
    /// be reached (an agent's offline cache); `None`: no copy.
    pub cache: Option<PathBuf>,
}

/// The file of the Nodes' copy in `Config::cache`.
pub const CACHE_FILE: &str = "nodes.json";

/// How often the device and the peers' entries are made again even without a change (someone
/// may have removed them).
const RESYNC: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs the overlay of this node until the process ends.
pub async fn run(client: kube::Client, cfg: Config) {
    let IpAddr::V4(node_ip) = cfg.node_ip else {
        tracing::warn!(
            "no VXLAN overlay: the node address {} is not IPv4",
            cfg.node_ip
        );
        return;
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    let (nodes, watch) = watch_nodes(&client, cfg.cache.as_deref());
    nodes.wake_on_change(wake.clone());
    nodes.synced().await;
    let api: Api<Node> = Api::all(client);
    let mut state = State::default();
    let mut warned = HashSet::new();
    let mut backoff = Duration::from_secs(1);
    loop {
        match state
            .pass(
                &api,
                &cfg,
                node_ip,
                &nodes.state(),
                nodes.live(),
                &mut warned,
            )
            .await
        {
            Ok(true) => backoff = Duration::from_secs(1),
            Ok(false) => {
                watch.abort();
                return;
            }
            Err(e) => {
                tracing::warn!("VXLAN overlay: {e:#}; retrying in {backoff:?}");
                state.forget();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        }
        tokio::select! {
            // A burst of changes (a node registering) is taken in one pass.
            _ = wake.notified() => tokio::time::sleep(Duration::from_millis(10)).await,
            _ = tokio::time::sleep(RESYNC) => state.forget(),
        }
    }
}

/// The watch of every Node, kept in `<cache>/nodes.json` when `cache` is set: the copy is read
/// back only when the first list gets no answer at all (the node restarted while the server
/// is away), and the server's first list replaces it.
fn watch_nodes(
    client: &kube::Client,
    cache: Option<&Path>,
) -> (Shared<Node>, tokio::task::JoinHandle<()>) {
    let persist = cache.map(|dir| Persist::new(dir.join(CACHE_FILE), |_: &Node| true));
    Shared::watch_persisted(
        Api::all(client.clone()),
        Default::default(),
        SMALL_BUFFER,
        persist,
    )
}

/// What was last programmed; `None`: to be done again.
#[derive(Default)]
struct State {
    device: Option<Device>,
    peers: Option<Vec<Peer>>,
    /// The last device logged, so a resync that changes nothing says nothing.
    logged: Option<Device>,
}

#[derive(Clone, Debug, PartialEq)]
struct Device {
    pod_cidr: Ipv4Net,
    mac: [u8; 6],
    public_ip: Ipv4Addr,
}

impl State {
    fn forget(&mut self) {
        self.device = None;
        self.peers = None;
    }

    /// Brings the device, the peers and this node's annotations up to date with `nodes`;
    /// false when this node has no overlay to run. `live`: the Nodes come from the server, not
    /// only from the copy on disk (then nothing is published: the server is away).
    async fn pass(
        &mut self,
        api: &Api<Node>,
        cfg: &Config,
        node_ip: Ipv4Addr,
        nodes: &[Arc<Node>],
        live: bool,
        warned: &mut HashSet<String>,
    ) -> anyhow::Result<bool> {
        // Not registered yet, or waiting for its range from the node IPAM controller: the
        // next change of the Nodes brings them.
        let Some(me) = nodes.iter().find(|n| n.name_any() == cfg.node_name) else {
            return Ok(true);
        };
        let Ok(Some(pod_cidr)) = pod_cidr(me) else {
            return Ok(true);
        };
        if self.device.as_ref().map(|d| d.pod_cidr) != Some(pod_cidr) {
            let chosen = super::choose_underlay(cfg.iface.as_deref(), node_ip).await?;
            let Some((underlay, public_ip)) = chosen else {
                tracing::info!(
                    "no VXLAN overlay: the node address {node_ip} is on a loopback interface \
                     (no other machine is reached through it)"
                );
                return Ok(false);
            };
            let mac = super::ensure_device(public_ip, &underlay, pod_cidr).await?;
            let device = Device {
                pod_cidr,
                mac,
                public_ip,
            };
            if self.logged.as_ref() != Some(&device) {
                tracing::info!(
                    device = super::DEVICE,
                    %public_ip,
                    vtep_mac = super::format_mac(mac),
                    %pod_cidr,
                    "VXLAN overlay device ready"
                );
                self.logged = Some(device.clone());
            }
            self.device = Some(device);
        }
        let Some(device) = self.device.clone() else {
            return Ok(true);
        };
        // Peers first: a node that cannot publish (the server away) still reaches the others.
        let (peers, problems) = peers(nodes, &cfg.node_name, pod_cidr, cfg.cluster_cidr);
        for p in problems {
            if warned.insert(p.clone()) {
                tracing::warn!("VXLAN overlay: {p}; that node is left out");
            }
        }
        if self.peers.as_ref() != Some(&peers) {
            super::sync_peers(&peers).await?;
            tracing::debug!(peers = peers.len(), "VXLAN overlay peers programmed");
            self.peers = Some(peers);
        }
        let wanted = [
            (VTEP_MAC_ANNOTATION, super::format_mac(device.mac)),
            (PUBLIC_IP_ANNOTATION, device.public_ip.to_string()),
        ];
        let published = wanted
            .iter()
            .all(|(k, v)| me.annotations().get(*k) == Some(v));
        if live && !published {
            let annotations: serde_json::Map<String, serde_json::Value> = (wanted.iter())
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            let patch = json!({"metadata": {"annotations": annotations}});
            api.patch(
                &cfg.node_name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|e| anyhow::anyhow!("publishing the node's VTEP annotations: {e}"))?;
        }
        Ok(true)
    }
}

/// A node's IPv4 pod range (`spec.podCIDRs`, else `spec.podCIDR`); an error when it names
/// something that is no IP network.
fn pod_cidr(node: &Node) -> Result<Option<Ipv4Net>, String> {
    let spec = node.spec.as_ref();
    let all: Vec<&String> = (spec.and_then(|s| s.pod_cidrs.as_ref()))
        .into_iter()
        .flatten()
        .chain(spec.and_then(|s| s.pod_cidr.as_ref()))
        .collect();
    if let Some(v4) = all.iter().find_map(|c| c.parse::<Ipv4Net>().ok()) {
        return Ok(Some(v4.trunc()));
    }
    match all.iter().find(|c| c.parse::<ipnet::IpNet>().is_err()) {
        Some(bad) => Err(format!("podCIDR {bad:?} is not an IP network")),
        None => Ok(None),
    }
}

/// The overlay's peers among `nodes`, in the order of their ranges: every node but `me` with
/// an IPv4 podCIDR in `cluster` and both annotations. Nodes without them are not ready for
/// the overlay (yet) and left out silently; those with malformed ones, a public address that
/// is no other machine's (inside `cluster`, loopback, ...), or a range that overlaps this
/// node's (`mine`) or another candidate's, are left out with a problem described. Overlapping
/// nodes are all left out: which of them holds the range is not for the overlay to guess (a
/// node claiming another's would otherwise take its traffic).
pub fn peers(
    nodes: &[Arc<Node>],
    me: &str,
    mine: Ipv4Net,
    cluster: Ipv4Net,
) -> (Vec<Peer>, Vec<String>) {
    let mut candidates: Vec<(String, Peer)> = Vec::new();
    let mut problems = Vec::new();
    let mut sorted: Vec<&Arc<Node>> = nodes.iter().filter(|n| n.name_any() != me).collect();
    sorted.sort_by_key(|n| n.name_any());
    for n in sorted {
        let name = n.name_any();
        let peer = (|| {
            let Some(pod_cidr) = pod_cidr(n)? else {
                return Ok(None);
            };
            let a = n.annotations();
            let (Some(mac), Some(ip)) = (a.get(VTEP_MAC_ANNOTATION), a.get(PUBLIC_IP_ANNOTATION))
            else {
                return Ok(None);
            };
            let vtep_mac = super::parse_mac(mac)
                .filter(|m| *m != [0; 6] && m[0] & 1 == 0)
                .ok_or_else(|| format!("{VTEP_MAC_ANNOTATION} {mac:?} is not a unicast MAC"))?;
            let public_ip = ip
                .parse::<Ipv4Addr>()
                .ok()
                .filter(|ip| {
                    !(ip.is_unspecified()
                        || ip.is_loopback()
                        || ip.is_multicast()
                        || ip.is_broadcast())
                })
                .ok_or_else(|| {
                    format!("{PUBLIC_IP_ANNOTATION} {ip:?} is not a unicast IPv4 address")
                })?;
            if cluster.contains(&public_ip) {
                return Err(format!(
                    "{PUBLIC_IP_ANNOTATION} {public_ip} is inside the cluster CIDR {cluster}"
                ));
            }
            if !cluster.contains(&pod_cidr) {
                return Err(format!("its podCIDR {pod_cidr} is outside {cluster}"));
            }
            Ok(Some(Peer {
                pod_cidr,
                vtep_mac,
                public_ip,
            }))
        })();
        match peer {
            Ok(Some(p)) => candidates.push((name, p)),
            Ok(None) => {}
            Err(why) => problems.push(format!("node {name}: {why}")),
        }
    }
    let overlap = |a: &Ipv4Net, b: &Ipv4Net| a.contains(b) || b.contains(a);
    let mut out = Vec::new();
    for (i, (name, p)) in candidates.iter().enumerate() {
        let others = (candidates.iter().enumerate())
            .filter(|(j, (_, o))| *j != i && overlap(&o.pod_cidr, &p.pod_cidr))
            .map(|(_, (n, _))| n.as_str())
            .collect::<Vec<_>>();
        if overlap(&mine, &p.pod_cidr) {
            problems.push(format!(
                "node {name}: its podCIDR {} overlaps this node's {mine}",
                p.pod_cidr
            ));
        } else if !others.is_empty() {
            problems.push(format!(
                "node {name}: its podCIDR {} overlaps node(s) {}'s",
                p.pod_cidr,
                others.join(", ")
            ));
        } else {
            out.push(p.clone());
        }
    }
    out.sort_by_key(|p| p.pod_cidr);
    (out, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: Option<&str>, mac: Option<&str>, ip: Option<&str>) -> Arc<Node> {
        let mut annotations = serde_json::Map::new();
        if let Some(m) = mac {
            annotations.insert(VTEP_MAC_ANNOTATION.into(), json!(m));
        }
        if let Some(i) = ip {
            annotations.insert(PUBLIC_IP_ANNOTATION.into(), json!(i));
        }
        let spec = match cidr {
            Some(c) => json!({"podCIDR": c, "podCIDRs": [c]}),
            None => json!({}),
        };
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "annotations": annotations},
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    const MAC: &str = "0a:58:00:00:00:01";

    #[test]
    fn peers_are_the_other_nodes_with_a_range_and_both_annotations() {
        let nodes = vec![
            node("me", Some("10.42.0.0/24"), Some(MAC), Some("192.0.2.10")),
            node(
                "b",
                Some("10.42.2.0/24"),
                Some("0a:58:00:00:00:02"),
                Some("192.0.2.12"),
            ),
            node(
                "a",
                Some("10.42.1.0/24"),
                Some("0A:58:00:00:00:03"),
                Some("192.0.2.11"),
            ),
            // Not ready for the overlay yet: left out without a word.
            node("no-range", None, Some(MAC), Some("192.0.2.13")),
            node("no-mac", Some("10.42.4.0/24"), None, Some("192.0.2.14")),
            node("no-ip", Some("10.42.5.0/24"), Some(MAC), None),
        ];
        let (peers, problems) = peers(&nodes, "me", net("10.42.0.0/24"), net("10.42.0.0/16"));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            peers,
            vec![
                Peer {
                    pod_cidr: net("10.42.1.0/24"),
                    vtep_mac: [0x0a, 0x58, 0, 0, 0, 3],
                    public_ip: "192.0.2.11".parse().unwrap(),
                },
                Peer {
                    pod_cidr: net("10.42.2.0/24"),
                    vtep_mac: [0x0a, 0x58, 0, 0, 0, 2],
                    public_ip: "192.0.2.12".parse().unwrap(),
                },
            ]
        );
    }

    #[test]
    fn malformed_nodes_are_left_out_and_named() {
        let ok = || (Some("0a:58:00:00:00:09"), Some("192.0.2.19"));
        let nodes = vec![
            node("bad-mac", Some("10.42.1.0/24"), Some("0a:58:zz"), ok().1),
            node(
                "zero-mac",
                Some("10.42.2.0/24"),
                Some("00:00:00:00:00:00"),
                ok().1,
            ),
            node(
                "multicast-mac",
                Some("10.42.3.0/24"),
                Some("01:00:5e:00:00:01"),
                ok().1,
            ),
            node(
                "bad-ip",
                Some("10.42.4.0/24"),
                ok().0,
                Some("node-b.example"),
            ),
            node("v6-ip", Some("10.42.5.0/24"), ok().0, Some("2001:db8::1")),
            node(
                "loopback-ip",
                Some("10.42.6.0/24"),
                ok().0,
                Some("127.0.0.1"),
            ),
            node("bad-range", Some("10.42.7.0/33"), ok().0, ok().1),
            node("outside", Some("10.99.0.0/24"), ok().0, ok().1),
            node("overlaps-me", Some("10.42.0.0/23"), ok().0, ok().1),
            node(
                "unspecified-ip",
                Some("10.42.10.0/24"),
                ok().0,
                Some("0.0.0.0"),
            ),
            node(
                "multicast-ip",
                Some("10.42.11.0/24"),
                ok().0,
                Some("224.0.0.1"),
            ),
            // A pod address as the VTEP: the other nodes' traffic would loop into the overlay.
            node(
                "ip-in-cluster",
                Some("10.42.12.0/24"),
                ok().0,
                Some("10.42.200.1"),
            ),
            // Two nodes claiming one range (or one inside the other): neither is trusted with
            // it, whichever name sorts first.
            node("first", Some("10.42.8.0/24"), ok().0, ok().1),
            node("second", Some("10.42.8.0/24"), ok().0, ok().1),
            node("a-thief", Some("10.42.16.0/20"), ok().0, ok().1),
            node("victim", Some("10.42.17.0/24"), ok().0, ok().1),
            node("good", Some("10.42.9.0/24"), ok().0, ok().1),
        ];
        let (peers, problems) = peers(&nodes, "me", net("10.42.0.0/24"), net("10.42.0.0/16"));
        assert_eq!(peers.len(), 1, "{peers:?}");
        assert_eq!(peers[0].pod_cidr, net("10.42.9.0/24"));
        for n in [
            "unspecified-ip",
            "multicast-ip",
            "ip-in-cluster",
            "first",
            "a-thief",
            "victim",
            "bad-mac",
            "zero-mac",
            "multicast-mac",
            "bad-ip",
            "v6-ip",
            "loopback-ip",
            "bad-range",
            "outside",
            "overlaps-me",
            "second",
        ] {
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(&format!("node {n}: "))),
                "{n} not in {problems:?}"
            );
        }
        assert_eq!(problems.len(), 16, "one problem per node: {problems:?}");
        assert!(
            problems.contains(
                &"node victim: its podCIDR 10.42.17.0/24 overlaps node(s) a-thief's".into()
            ),
            "{problems:?}"
        );
    }

    #[tokio::test]
    async fn restarted_without_the_server_the_overlay_starts_from_its_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("agent/cache");
        let copy = [
            node("me", Some("10.42.0.0/24"), Some(MAC), Some("192.0.2.10")),
            node(
                "b",
                Some("10.42.1.0/24"),
                Some("0a:58:00:00:00:02"),
                Some("192.0.2.11"),
            ),
        ];
        let data = serde_json::to_vec(&copy).unwrap();
        kinglet_core::informers::offline::write_private(&cache.join(CACHE_FILE), &data).unwrap();
        // A server that refuses connections (its port just freed).
        let port = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}").parse().unwrap();
        let client = kube::Client::try_from(kube::Config::new(url)).unwrap();

        // Without a copy there is nothing to start from: the watch waits for the server.
        let (bare, task) = watch_nodes(&client, None);
        let waited = tokio::time::timeout(Duration::from_secs(2), bare.synced()).await;
        assert!(waited.is_err(), "synced without a server nor a copy");
        task.abort();

        let (nodes, task) = watch_nodes(&client, Some(&cache));
        tokio::time::timeout(Duration::from_secs(20), nodes.synced())
            .await
            .expect("the copy read back");
        assert!(!nodes.live());
        let state = nodes.state();
        let me = state
            .iter()
            .find(|n| n.name_any() == "me")
            .expect("own node");
        assert_eq!(pod_cidr(me), Ok(Some(net("10.42.0.0/24"))));
        let (peers, problems) = peers(&state, "me", net("10.42.0.0/24"), net("10.42.0.0/16"));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            peers,
            vec![Peer {
                pod_cidr: net("10.42.1.0/24"),
                vtep_mac: [0x0a, 0x58, 0, 0, 0, 2],
                public_ip: "192.0.2.11".parse().unwrap(),
            }]
        );
        task.abort();
    }

    #[test]
    fn pod_cidr_prefers_ipv4_and_names_garbage() {
        let dual: Node = serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "spec": {"podCIDRs": ["fd00::/64", "10.42.3.7/24"]},
        }))
        .unwrap();
        assert_eq!(pod_cidr(&dual), Ok(Some(net("10.42.3.0/24"))));
        let v6: Node = serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "spec": {"podCIDR": "fd00::/64"},
        }))
        .unwrap();
        assert_eq!(pod_cidr(&v6), Ok(None));
        assert!(pod_cidr(&node("n", Some("nope"), None, None)).is_err());
        assert_eq!(pod_cidr(&node("n", None, None, None)), Ok(None));
    }
}
