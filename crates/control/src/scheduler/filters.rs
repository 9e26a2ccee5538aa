//! Scheduling decisions: which nodes can take a pod (with upstream's reason strings), which is
//! best, and which lower-priority pods to preempt when none can.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodAffinityTerm, Taint, Toleration,
};
use kube::ResourceExt;

use super::resources::{Resources, allocatable, pod_requests};
use kinglet_core::pods::{controller_uid, selects};

pub struct NodeInfo {
    pub name: String,
    node: Arc<Node>,
    labels: BTreeMap<String, String>,
    alloc: Resources,
    requested: Resources,
    pods: Vec<Arc<Pod>>,
    /// The pods here with required anti-affinity terms (checked against every incoming pod).
    anti: Vec<Arc<Pod>>,
    ports: HashSet<(String, i32)>,
}

fn host_ports(p: &Pod) -> Vec<(String, i32)> {
    p.spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|port| {
            port.host_port
                .filter(|h| *h > 0)
                .map(|h| (port.protocol.clone().unwrap_or_else(|| "TCP".into()), h))
        })
        .collect()
}

impl NodeInfo {
    pub fn new(node: Arc<Node>, pods: Vec<Arc<Pod>>) -> NodeInfo {
        let mut info = NodeInfo {
            name: node.name_any(),
            labels: node.labels().clone(),
            alloc: allocatable(node.status.as_ref().and_then(|s| s.allocatable.as_ref())),
            node,
            requested: Resources::new(),
            pods: Vec::new(),
            anti: Vec::new(),
            ports: HashSet::new(),
        };
        for p in pods {
            info.add(p);
        }
        info
    }

    pub fn add(&mut self, pod: Arc<Pod>) {
        for (k, v) in pod_requests(&pod) {
            *self.requested.entry(k).or_insert(0) += v;
        }
        self.ports.extend(host_ports(&pod));
        let has_anti = pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .is_some_and(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .is_some()
            });
        if has_anti {
            self.anti.push(pod.clone());
        }
        self.pods.push(pod);
    }

    /// Resource shortfalls if `pod` were added (optionally without `without`).
    fn insufficient(&self, pod: &Pod, without: &[Arc<Pod>]) -> Vec<String> {
        let mut reasons = Vec::new();
        let mut requested = self.requested.clone();
        for v in without {
            for (k, q) in pod_requests(v) {
                *requested.entry(k).or_insert(0) -= q;
            }
        }
        let pods_allowed = self.alloc.get("pods").copied().unwrap_or(110_000) / 1000;
        if (self.pods.len() - without.len()) as i128 + 1 > pods_allowed {
            reasons.push("Too many pods".to_string());
        }
        for (k, want) in pod_requests(pod) {
            if want <= 0 {
                continue;
            }
            let have = self.alloc.get(&k).copied().unwrap_or(0);
            if requested.get(&k).copied().unwrap_or(0) + want > have {
                reasons.push(format!("Insufficient {k}"));
            }
        }
        reasons
    }
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = r.values.clone().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => value
            .and_then(|v| v.parse::<i64>().ok())
            .zip(values.first().and_then(|x| x.parse::<i64>().ok()))
            .is_some_and(|(v, x)| v > x),
        "Lt" => value
            .and_then(|v| v.parse::<i64>().ok())
            .zip(values.first().and_then(|x| x.parse::<i64>().ok()))
            .is_some_and(|(v, x)| v < x),
        _ => false,
    }
}

fn term_matches(t: &NodeSelectorTerm, ni: &NodeInfo) -> bool {
    let exprs = t
        .match_expressions
        .iter()
        .flatten()
        .all(|r| requirement_matches(r, ni.labels.get(&r.key)));
    let fields = t
        .match_fields
        .iter()
        .flatten()
        .all(|r| r.key != "metadata.name" || requirement_matches(r, Some(&ni.name)));
    (t.match_expressions.as_ref().is_some_and(|e| !e.is_empty())
        || t.match_fields.as_ref().is_some_and(|f| !f.is_empty()))
        && exprs
        && fields
}

fn node_affinity_ok(pod: &Pod, ni: &NodeInfo) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| ni.labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    selector_ok
        && required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, ni)))
}

fn tolerates(tols: &[Toleration], taint: &Taint) -> bool {
    tols.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let op = t.operator.as_deref().unwrap_or("Equal");
        let key_ok = match t.key.as_deref() {
            None | Some("") => op == "Exists",
            Some(k) => k == taint.key,
        };
        let value_ok = op == "Exists"
            || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("");
        effect_ok && key_ok && value_ok
    })
}

fn untolerated_taint<'a>(pod: &Pod, ni: &'a NodeInfo) -> Option<&'a Taint> {
    let tols = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    ni.node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .find(|t| (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerates(&tols, t))
}

fn unschedulable(pod: &Pod, ni: &NodeInfo) -> bool {
    let tols = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let taint = Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        value: None,
        time_added: None,
    };
    ni.node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) && !tolerates(&tols, &taint)
}

/// Pods in the same topology domain as `ni` (by `key`) matching an affinity term of `owner`.
fn term_hits(
    term: &PodAffinityTerm,
    owner_ns: &str,
    ni: &NodeInfo,
    all: &[NodeInfo],
) -> Option<usize> {
    let domain = ni.labels.get(&term.topology_key)?;
    let namespaces: Vec<String> = term
        .namespaces
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| vec![owner_ns.to_string()]);
    let all_namespaces = term.namespace_selector.as_ref().is_some_and(|s| {
        s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|m| m.is_empty())
    });
    let selector = term.label_selector.clone().unwrap_or_default();
    Some(
        all.iter()
            .filter(|n| n.labels.get(&term.topology_key) == Some(domain))
            .flat_map(|n| n.pods.iter())
            .filter(|p| {
                all_namespaces
                    || namespaces
                        .iter()
                        .any(|ns| p.namespace().as_deref() == Some(ns))
            })
            .filter(|p| selects(&selector, &p.metadata))
            .count(),
    )
}

fn affinity_reasons(pod: &Pod, ni: &NodeInfo, all: &[NodeInfo]) -> Option<String> {
    let ns = pod.namespace().unwrap_or_default();
    let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    for term in affinity
        .and_then(|a| a.pod_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
    {
        let hits = term_hits(term, &ns, ni, all);
        // The first pod of a group that selects itself may go anywhere its domain exists.
        let anywhere: usize = all
            .iter()
            .filter_map(|n| term_hits(term, &ns, n, all))
            .sum();
        let self_match = selects(
            &term.label_selector.clone().unwrap_or_default(),
            &pod.metadata,
        );
        if !(hits.is_some_and(|h| h > 0) || (anywhere == 0 && self_match && hits.is_some())) {
            return Some("node(s) didn't match pod affinity rules".into());
        }
    }
    for term in affinity
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
    {
        if term_hits(term, &ns, ni, all).is_some_and(|h| h > 0) {
            return Some("node(s) didn't match pod anti-affinity rules".into());
        }
    }
    // Existing pods' anti-affinity against the incoming pod.
    for other in all.iter().flat_map(|n| n.anti.iter().map(move |p| (n, p))) {
        let (on, p) = other;
        let terms = p
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            });
        for term in terms.into_iter().flatten() {
            let same_domain = on
                .labels
                .get(&term.topology_key)
                .is_some_and(|d| ni.labels.get(&term.topology_key) == Some(d));
            let ns_ok = term
                .namespaces
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| vec![p.namespace().unwrap_or_default()])
                .contains(&ns);
            if same_domain
                && ns_ok
                && selects(
                    &term.label_selector.clone().unwrap_or_default(),
                    &pod.metadata,
                )
            {
                return Some("node(s) didn't satisfy existing pods anti-affinity rules".into());
            }
        }
    }
    None
}

fn spread_reason(pod: &Pod, ni: &NodeInfo, all: &[NodeInfo]) -> Option<String> {
    let ns = pod.namespace().unwrap_or_default();
    for c in pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_ref())
        .into_iter()
        .flatten()
    {
        if c.when_unsatisfiable != "DoNotSchedule" {
            continue;
        }
        let Some(domain) = ni.labels.get(&c.topology_key) else {
            return Some(
                "node(s) didn't match pod topology spread constraints (missing required label)"
                    .into(),
            );
        };
        let selector = c.label_selector.clone().unwrap_or_default();
        let mut counts: BTreeMap<&String, i32> = BTreeMap::new();
        for n in all.iter().filter(|n| node_affinity_ok(pod, n)) {
            if let Some(d) = n.labels.get(&c.topology_key) {
                let k = n
                    .pods
                    .iter()
                    .filter(|p| {
                        p.namespace().as_deref() == Some(ns.as_str())
                            && selects(&selector, &p.metadata)
                    })
                    .count() as i32;
                *counts.entry(d).or_insert(0) += k;
            }
        }
        let min = counts.values().copied().min().unwrap_or(0);
        let mine = counts.get(domain).copied().unwrap_or(0);
        if mine + 1 - min > c.max_skew {
            return Some("node(s) didn't match pod topology spread constraints".into());
        }
    }
    None
}

/// Why `ni` cannot take `pod` (empty: it can). `resources` false skips the resource check.
fn reasons(pod: &Pod, ni: &NodeInfo, all: &[NodeInfo], resources: bool) -> Vec<String> {
    if unschedulable(pod, ni) {
        return vec!["node(s) were unschedulable".into()];
    }
    if !node_affinity_ok(pod, ni) {
        return vec!["node(s) didn't match Pod's node affinity/selector".into()];
    }
    if let Some(t) = untolerated_taint(pod, ni) {
        return vec![format!(
            "node(s) had untolerated taint {{{}: {}}}",
            t.key,
            t.value.clone().unwrap_or_default()
        )];
    }
    if resources {
        let r = ni.insufficient(pod, &[]);
        if !r.is_empty() {
            return r;
        }
    }
    if host_ports(pod).iter().any(|p| ni.ports.contains(p)) {
        return vec!["node(s) didn't have free ports for the requested pod ports".into()];
    }
    if let Some(r) = affinity_reasons(pod, ni, all) {
        return vec![r];
    }
    spread_reason(pod, ni, all).into_iter().collect()
}

fn score(pod: &Pod, ni: &NodeInfo) -> i64 {
    let req = pod_requests(pod);
    let mut least = 0i64;
    for r in ["cpu", "memory"] {
        let alloc = ni.alloc.get(r).copied().unwrap_or(0);
        if alloc > 0 {
            let used = ni.requested.get(r).copied().unwrap_or(0) + req.get(r).copied().unwrap_or(0);
            least += ((alloc - used).max(0) * 100 / alloc) as i64;
        }
    }
    let preferred: i64 = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|p| term_matches(&p.preference, ni))
        .map(|p| i64::from(p.weight))
        .sum();
    let owner = controller_uid(&pod.metadata);
    let siblings = owner
        .map(|o| {
            ni.pods
                .iter()
                .filter(|p| controller_uid(&p.metadata) == Some(o))
                .count()
        })
        .unwrap_or(0) as i64;
    least / 2 + preferred + 100 / (1 + siblings)
}

/// The best node for `pod`, or the upstream-style summary of why none fits.
pub fn schedule(pod: &Pod, all: &[NodeInfo]) -> Result<usize, String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(i64, usize)> = None;
    // Rotate the starting node so equal scores spread pods instead of piling on the first node.
    let start = pod
        .name_any()
        .bytes()
        .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize));
    for k in 0..all.len() {
        let i = (start + k) % all.len();
        let r = reasons(pod, &all[i], all, true);
        if r.is_empty() {
            let s = score(pod, &all[i]);
            if best.is_none_or(|(bs, _)| s > bs) {
                best = Some((s, i));
            }
        } else {
            for reason in r {
                *counts.entry(reason).or_insert(0) += 1;
            }
        }
    }
    match best {
        Some((_, i)) => Ok(i),
        None => {
            let parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
            Err(format!(
                "0/{} nodes are available: {}.",
                all.len(),
                parts.join(", ")
            ))
        }
    }
}

/// A node and the lowest-priority pods to evict there so that `pod` fits, if any.
pub fn preemption_plan(pod: &Pod, all: &[NodeInfo]) -> Option<(String, Vec<Arc<Pod>>)> {
    let spec = pod.spec.as_ref()?;
    if spec.preemption_policy.as_deref() == Some("Never") {
        return None;
    }
    let prio = spec.priority.unwrap_or(0);
    let mut best: Option<(i32, usize, String, Vec<Arc<Pod>>)> = None;
    for ni in all {
        if !reasons(pod, ni, all, false).is_empty() {
            continue;
        }
        let mut lower: Vec<Arc<Pod>> = ni
            .pods
            .iter()
            .filter(|p| {
                p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0) < prio
                    && p.metadata.deletion_timestamp.is_none()
            })
            .cloned()
            .collect();
        lower.sort_by_key(|p| {
            (
                p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
                std::cmp::Reverse(
                    p.metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| t.0.as_second())
                        .unwrap_or(0),
                ),
            )
        });
        let mut victims = Vec::new();
        for v in lower {
            if ni.insufficient(pod, &victims).is_empty() {
                break;
            }
            victims.push(v);
        }
        if victims.is_empty() || !ni.insufficient(pod, &victims).is_empty() {
            continue;
        }
        let top = victims
            .iter()
            .map(|v| v.spec.as_ref().and_then(|s| s.priority).unwrap_or(0))
            .max()
            .unwrap_or(0);
        if best
            .as_ref()
            .is_none_or(|(bt, bn, _, _)| (top, victims.len()) < (*bt, *bn))
        {
            best = Some((top, victims.len(), ni.name.clone(), victims));
        }
    }
    best.map(|(_, _, n, v)| (n, v))
}

/// Whether `node` accepts `pod` by its scheduling rules alone (unschedulable, node affinity and
/// selector, taints), without resources: what DaemonSets use to pick their nodes.
pub fn node_accepts(pod: &Pod, node: Arc<Node>) -> bool {
    let ni = NodeInfo::new(node, Vec::new());
    !unschedulable(pod, &ni) && node_affinity_ok(pod, &ni) && untolerated_taint(pod, &ni).is_none()
}
