//! NetworkPolicy (networking.k8s.io/v1) for this node's pods, with iptables (k3s ships
//! kube-router for this). Every packet forwarded to or from a local pod passes `KINGLET-NP-FWD`:
//! replies pass, a pod isolated for ingress (egress) has a chain listing the sources
//! (destinations) and ports its policies allow, and anything else is rejected. Allowed traffic
//! RETURNs, so the host's own rules still apply after ours.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::Api;

use kinglet_core::informers::{Kind, SMALL_BUFFER, Shared};

use crate::iptables::{self, Chains, Jump};

const FWD: &str = "KINGLET-NP-FWD";
const JUMPS: &[Jump] = &[
    Jump {
        table: "filter",
        from: "FORWARD",
        rule: &[
            "-m",
            "comment",
            "--comment",
            "kinglet network policies",
            "-j",
            FWD,
        ],
        first: true,
    },
    Jump {
        table: "filter",
        from: "OUTPUT",
        rule: &[
            "-m",
            "comment",
            "--comment",
            "kinglet network policies",
            "-j",
            FWD,
        ],
        first: true,
    },
];
/// How often the chains are checked against the kernel (someone may have flushed them).
const RESYNC: Duration = Duration::from_secs(60);

fn owned(chain: &str) -> bool {
    chain.starts_with("KINGLET-NP")
}

/// Removes our chains and jumps (uninstall).
pub fn cleanup() -> anyhow::Result<()> {
    iptables::remove(JUMPS, "filter", owned)
}

/// A cache of every `K` that rings `wake` on each change.
fn watch<K: Kind>(client: &kube::Client, wake: &Arc<tokio::sync::Notify>) -> Shared<K> {
    let (cache, _) = Shared::watch(Api::all(client.clone()), Default::default(), SMALL_BUFFER);
    cache.wake_on_change(wake.clone());
    cache
}

pub async fn run(client: kube::Client, node_name: String) -> anyhow::Result<()> {
    let wake = Arc::new(tokio::sync::Notify::new());
    // Policies select pods anywhere in the cluster, by their namespaces' labels too.
    let policies = watch::<NetworkPolicy>(&client, &wake);
    let namespaces = watch::<Namespace>(&client, &wake);
    let pods = watch::<Pod>(&client, &wake);
    policies.synced().await;
    namespaces.synced().await;
    pods.synced().await;
    let mut applied: Option<Chains> = None;
    loop {
        let want = compute(
            &node_name,
            &policies.state(),
            &namespaces.state(),
            &pods.state(),
        );
        if applied.as_ref() != Some(&want) {
            match tokio::task::block_in_place(|| apply(applied.as_ref(), &want)) {
                Ok(()) => applied = Some(want),
                Err(e) => {
                    tracing::warn!("network policies: {e:#}");
                    applied = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        tokio::select! {
            _ = wake.notified() => tokio::time::sleep(Duration::from_millis(10)).await,
            _ = tokio::time::sleep(RESYNC) => applied = None,
        }
    }
}

/// Brings our chains from `before` (what the last apply wrote; `None`: unknown, at start and
/// on the periodic resync) to `want`. Only an unknown state lists the tables, for chains of
/// ours to delete and missing jumps: `iptables-save` fetches every table (~0.7 s next to
/// 10,000 Services' rules) and holds the iptables lock the service proxy needs.
fn apply(before: Option<&Chains>, want: &Chains) -> anyhow::Result<()> {
    let stale = match before {
        Some(_) => Vec::new(),
        None => {
            let saved = iptables::Saved::read()?;
            saved.add_missing_jumps(JUMPS)?;
            saved.chains("filter", owned)
        }
    };
    iptables::restore(&iptables::restore_input("filter", before, want, &stale))
}

fn chain(prefix: &str, pod: &Pod) -> String {
    iptables::chain_name(prefix, &pod.uid().unwrap_or_default())
}

/// NetworkPolicy selectors: empty matches everything.
fn selects(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let Ok(v) = serde_json::to_value(sel) else {
        return false;
    };
    match kinglet_core::selectors::LabelSelector::from_object(&v) {
        Ok(s) => s.is_empty() || s.matches(labels),
        Err(_) => false,
    }
}

fn pod_ip(p: &Pod) -> Option<Ipv4Addr> {
    if p.spec.as_ref()?.host_network == Some(true) {
        return None;
    }
    p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// `cidr` without the `except` ranges, as disjoint blocks.
fn subtract(cidr: Ipv4Net, except: &[Ipv4Net]) -> Vec<Ipv4Net> {
    if except.iter().any(|e| e.contains(&cidr)) {
        return vec![];
    }
    if !except.iter().any(|e| cidr.contains(e)) {
        return vec![cidr];
    }
    match cidr.subnets(cidr.prefix_len() + 1) {
        Ok(halves) => halves.flat_map(|h| subtract(h, except)).collect(),
        Err(_) => vec![],
    }
}

struct World<'a> {
    namespaces: HashMap<String, BTreeMap<String, String>>,
    /// In a stable order (namespace, name), so the same state always gives the same rules.
    pods: Vec<&'a Arc<Pod>>,
}

impl World<'_> {
    /// Source (or destination) matches of one peer: `-s`/`-d` arguments, and the pods matched
    /// (for named ports on egress).
    fn peer(&self, policy_ns: &str, peer: &NetworkPolicyPeer) -> Vec<(String, Option<&Pod>)> {
        if let Some(block) = &peer.ip_block {
            let Ok(cidr) = block.cidr.parse::<Ipv4Net>() else {
                return vec![];
            };
            let except: Vec<Ipv4Net> = block
                .except
                .iter()
                .flatten()
                .filter_map(|e| e.parse().ok())
                .collect();
            return subtract(cidr, &except)
                .into_iter()
                .map(|n| (n.to_string(), None))
                .collect();
        }
        let ns_ok = |ns: &str| match &peer.namespace_selector {
            Some(sel) => self.namespaces.get(ns).is_some_and(|l| selects(sel, l)),
            None => ns == policy_ns,
        };
        self.pods
            .iter()
            .filter(|p| ns_ok(&p.namespace().unwrap_or_default()))
            .filter(|p| {
                peer.pod_selector
                    .as_ref()
                    .is_none_or(|sel| selects(sel, p.labels()))
            })
            .filter_map(|p| Some((format!("{}/32", pod_ip(p)?), Some(p.as_ref()))))
            .collect()
    }
}

/// `-p tcp -m tcp --dport 80[:90]` for a policy port, with named ports looked up in `pod`.
fn port_match(port: &NetworkPolicyPort, pod: Option<&Pod>) -> Option<String> {
    let proto = port
        .protocol
        .as_deref()
        .unwrap_or("TCP")
        .to_ascii_lowercase();
    let number = match &port.port {
        None => return Some(format!("-p {proto}")),
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(name)) => {
            pod?.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name)
                        && p.protocol
                            .as_deref()
                            .unwrap_or("TCP")
                            .eq_ignore_ascii_case(&proto)
                })?
                .container_port
        }
    };
    Some(match port.end_port {
        Some(end) if end > number => format!("-p {proto} -m {proto} --dport {number}:{end}"),
        _ => format!("-p {proto} -m {proto} --dport {number}"),
    })
}

/// The peers and ports of one ingress or egress rule.
type RuleParts<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

/// The wanted chains for the policies selecting this node's pods.
fn compute(
    node: &str,
    policies: &[Arc<NetworkPolicy>],
    namespaces: &[Arc<Namespace>],
    pods: &[Arc<Pod>],
) -> Chains {
    let mut sorted: Vec<&Arc<Pod>> = pods.iter().collect();
    sorted.sort_by_key(|p| (p.namespace(), p.name_any()));
    let world = World {
        namespaces: namespaces
            .iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect(),
        pods: sorted,
    };
    let mut chains = Chains::new();
    let mut fwd = vec!["-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN".to_string()];
    let mut local: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
                && pod_ip(p).is_some()
        })
        .collect();
    local.sort_by_key(|p| (p.namespace(), p.name_any()));
    for pod in local {
        let Some(ip) = pod_ip(pod) else { continue };
        let ns = pod.namespace().unwrap_or_default();
        let selecting: Vec<&Arc<NetworkPolicy>> = policies
            .iter()
            .filter(|np| np.namespace().as_deref() == Some(ns.as_str()))
            .filter(|np| {
                np.spec.as_ref().is_some_and(|s| {
                    selects(&s.pod_selector.clone().unwrap_or_default(), pod.labels())
                })
            })
            .collect();
        for ingress in [true, false] {
            let mut isolated = false;
            let mut rules = Vec::new();
            if ingress {
                // The node itself (kubelet, host-network pods) always reaches its pods.
                rules.push("-m addrtype --src-type LOCAL -j RETURN".to_string());
            }
            for np in &selecting {
                let Some(spec) = &np.spec else { continue };
                let types = spec.policy_types.clone().unwrap_or_else(|| {
                    let mut t = vec!["Ingress".to_string()];
                    if spec.egress.is_some() {
                        t.push("Egress".into());
                    }
                    t
                });
                if !types
                    .iter()
                    .any(|t| t == if ingress { "Ingress" } else { "Egress" })
                {
                    continue;
                }
                isolated = true;
                // (peers, ports) of each rule; None peers = everyone.
                let policy_rules: Vec<RuleParts> = if ingress {
                    spec.ingress
                        .iter()
                        .flatten()
                        .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                        .collect()
                } else {
                    spec.egress
                        .iter()
                        .flatten()
                        .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                        .collect()
                };
                for (peers, ports) in policy_rules {
                    let targets: Vec<(Option<String>, Option<&Pod>)> =
                        match peers.filter(|p| !p.is_empty()) {
                            None => vec![(None, None)],
                            Some(peers) => peers
                                .iter()
                                .flat_map(|p| world.peer(&ns, p))
                                .map(|(m, p)| (Some(m), p))
                                .collect(),
                        };
                    for (addr, peer_pod) in targets {
                        let flag = if ingress { "-s" } else { "-d" };
                        let addr = addr.map(|a| format!("{flag} {a} ")).unwrap_or_default();
                        // Named ports: on ingress, the selected pod's; on egress, the peer's.
                        let port_pod = if ingress {
                            Some(pod.as_ref())
                        } else {
                            peer_pod
                        };
                        match ports.filter(|p| !p.is_empty()) {
                            None => rules.push(format!("{addr}-j RETURN")),
                            Some(ports) => {
                                for m in ports.iter().filter_map(|p| port_match(p, port_pod)) {
                                    rules.push(format!("{addr}{m} -j RETURN"));
                                }
                            }
                        }
                    }
                }
            }
            if !isolated {
                continue;
            }
            let what = if ingress { "ingress to" } else { "egress from" };
            rules.push(format!(
                "-m comment --comment \"{what} {ns}/{} not allowed by network policy\" -j REJECT --reject-with icmp-port-unreachable",
                pod.name_any()
            ));
            rules.dedup();
            let name = chain(
                if ingress {
                    "KINGLET-NPI-"
                } else {
                    "KINGLET-NPE-"
                },
                pod,
            );
            fwd.push(format!(
                "{} {ip}/32 -j {name}",
                if ingress { "-d" } else { "-s" }
            ));
            chains.insert(name, rules);
        }
    }
    chains.insert(FWD.into(), fwd);
    chains
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ns: &str, ip: &str, labels: serde_json::Value) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": labels},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"podIP": ip}
            }))
            .unwrap(),
        )
    }

    fn ns(name: &str, labels: serde_json::Value) -> Arc<Namespace> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap(),
        )
    }

    fn policy(v: serde_json::Value) -> Arc<NetworkPolicy> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn ingress_allows_selected_peers_and_rejects_the_rest() {
        let web = pod("web", "default", "10.42.0.5", json!({"app": "web"}));
        let friend = pod("friend", "default", "10.42.0.6", json!({"role": "friend"}));
        let other = pod("other", "default", "10.42.0.7", json!({}));
        let mon = pod("mon", "monitoring", "10.42.0.8", json!({}));
        let np = policy(
            json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"role": "friend"}}}], "ports": [{"port": "http"}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}, {"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}}]}
            ]}}),
        );
        let chains = compute(
            "n1",
            &[np],
            &[
                ns("default", json!({})),
                ns("monitoring", json!({"team": "ops"})),
            ],
            &[web.clone(), friend, other, mon],
        );
        let name = chain("KINGLET-NPI-", &web);
        assert_eq!(chains[FWD][1], format!("-d 10.42.0.5/32 -j {name}"));
        assert_eq!(chains.len(), 2, "only web is isolated: {chains:?}");
        let rules = &chains[&name];
        assert_eq!(rules[0], "-m addrtype --src-type LOCAL -j RETURN");
        assert!(
            rules.contains(&"-s 10.42.0.6/32 -p tcp -m tcp --dport 8080 -j RETURN".to_string()),
            "{rules:?}"
        );
        assert!(
            rules.contains(&"-s 10.42.0.8/32 -j RETURN".to_string()),
            "{rules:?}"
        );
        assert!(
            rules.contains(&"-s 192.0.2.0/25 -j RETURN".to_string()),
            "{rules:?}"
        );
        assert!(!rules.iter().any(|r| r.contains("10.42.0.7")), "{rules:?}");
        assert!(
            rules
                .last()
                .unwrap()
                .ends_with("-j REJECT --reject-with icmp-port-unreachable")
        );
    }

    #[test]
    fn deny_all_egress_and_policy_types() {
        let a = pod("a", "default", "10.42.0.5", json!({}));
        let np = policy(
            json!({"metadata": {"name": "deny", "namespace": "default"}, "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}),
        );
        let chains = compute(
            "n1",
            &[np],
            &[ns("default", json!({}))],
            std::slice::from_ref(&a),
        );
        let e = chain("KINGLET-NPE-", &a);
        assert_eq!(chains[&e].len(), 1, "only the reject: {:?}", chains[&e]);
        assert!(!chains.contains_key(&chain("KINGLET-NPI-", &a)));
        // A pod on another node is not ours to police.
        let chains = compute("n2", &[], &[], &[a]);
        assert_eq!(chains.len(), 1);
    }

    #[test]
    fn ip_blocks_lose_their_exceptions() {
        let n = |s: &str| s.parse::<Ipv4Net>().unwrap();
        assert_eq!(
            subtract(n("10.0.0.0/24"), &[n("10.0.0.0/25")]),
            vec![n("10.0.0.128/25")]
        );
        assert_eq!(
            subtract(n("10.0.0.0/24"), &[n("10.0.0.64/26")]),
            vec![n("10.0.0.0/26"), n("10.0.0.128/25")]
        );
        assert!(subtract(n("10.0.0.0/24"), &[n("10.0.0.0/16")]).is_empty());
    }
}
