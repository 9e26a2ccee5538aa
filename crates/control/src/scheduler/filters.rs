//! Scheduling decisions: which nodes can take a pod (with upstream's reason strings), which is
//! best, and which lower-priority pods to preempt when none can.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodAffinityTerm, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;

use super::resources::{Resources, allocatable, pod_requests};
use super::volumes::PodVolumes;
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
    /// Host ports taken: (host IP, protocol, port).
    ports: HashSet<(String, String, i32)>,
}

/// The host ports a pod takes, as (host IP, protocol, port): those of its containers and of its
/// sidecars (init containers that keep running), as upstream's `GetHostPorts` counts them.
fn host_ports(p: &Pod) -> Vec<(String, String, i32)> {
    let or = |v: &Option<String>, default: &str| {
        v.clone()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.into())
    };
    p.spec
        .iter()
        .flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"))
                .chain(s.containers.iter())
        })
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|port| {
            let h = port.host_port.filter(|h| *h > 0)?;
            Some((or(&port.host_ip, "0.0.0.0"), or(&port.protocol, "TCP"), h))
        })
        .collect()
}

/// Whether a host port `pod` asks for is taken on `ni`: the same protocol and port on the same
/// host IP, 0.0.0.0 being every IP (upstream's NodePorts).
fn ports_conflict(pod: &Pod, ni: &NodeInfo) -> bool {
    host_ports(pod).iter().any(|(ip, protocol, port)| {
        ni.ports.iter().any(|(used_ip, used_protocol, used_port)| {
            used_port == port
                && used_protocol == protocol
                && (used_ip == ip || used_ip == "0.0.0.0" || ip == "0.0.0.0")
        })
    })
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
        .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(&ni.name)));
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

/// Upstream's `LabelSelectorAsSelector`: no selector selects nothing, an empty one everything.
fn selector_matches(sel: Option<&LabelSelector>, meta: &ObjectMeta) -> bool {
    sel.is_some_and(|s| selector_is_empty(s) || selects(s, meta))
}

fn selector_is_empty(s: &LabelSelector) -> bool {
    s.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
}

/// Whether the affinity term of a pod in `owner_ns` selects `pod` (upstream's
/// `AffinityTerm.Matches`): its namespace is listed (none listed: the owner's), or the namespace
/// selector is `{}` (every namespace), and its labels match. Other namespace selectors would
/// need the namespaces' labels; the listed namespaces (or the owner's) stand in for them.
fn term_selects(term: &PodAffinityTerm, owner_ns: &str, pod: &Pod) -> bool {
    let ns = pod.namespace().unwrap_or_default();
    let all_namespaces = term
        .namespace_selector
        .as_ref()
        .is_some_and(selector_is_empty);
    let listed = term.namespaces.as_ref().filter(|n| !n.is_empty());
    (all_namespaces || listed.map_or(ns == owner_ns, |l| l.contains(&ns)))
        && selector_matches(term.label_selector.as_ref(), &pod.metadata)
}

fn required_terms(terms: Option<&Vec<PodAffinityTerm>>) -> &[PodAffinityTerm] {
    terms.map(Vec::as_slice).unwrap_or_default()
}

fn affinity_reasons(pod: &Pod, ni: &NodeInfo, all: &[NodeInfo]) -> Option<String> {
    let ns = pod.namespace().unwrap_or_default();
    let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let terms = required_terms(
        affinity
            .and_then(|a| a.pod_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            }),
    );
    if !terms.is_empty() {
        // As upstream: a pod counts for the terms only if it matches all of them, and then in
        // each term's topology domain.
        let mut counts: HashSet<(&str, &str)> = HashSet::new();
        for n in all {
            if n.pods
                .iter()
                .any(|p| terms.iter().all(|t| term_selects(t, &ns, p)))
            {
                for t in terms {
                    if let Some(d) = n.labels.get(&t.topology_key) {
                        counts.insert((&t.topology_key, d));
                    }
                }
            }
        }
        let mut pods_exist = true;
        for t in terms {
            match ni.labels.get(&t.topology_key) {
                Some(d) => pods_exist &= counts.contains(&(t.topology_key.as_str(), d.as_str())),
                None => return Some("node(s) didn't match pod affinity rules".into()),
            }
        }
        // The first pod of a group that selects itself may go anywhere its domains exist.
        let first = counts.is_empty() && terms.iter().all(|t| term_selects(t, &ns, pod));
        if !pods_exist && !first {
            return Some("node(s) didn't match pod affinity rules".into());
        }
    }
    let anti = required_terms(
        affinity
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            }),
    );
    for t in anti {
        let Some(domain) = ni.labels.get(&t.topology_key) else {
            continue;
        };
        let hit = all
            .iter()
            .filter(|n| n.labels.get(&t.topology_key) == Some(domain))
            .flat_map(|n| n.pods.iter())
            .any(|p| term_selects(t, &ns, p));
        if hit {
            return Some("node(s) didn't match pod anti-affinity rules".into());
        }
    }
    // Existing pods' anti-affinity against the incoming pod.
    for (on, p) in all.iter().flat_map(|n| n.anti.iter().map(move |p| (n, p))) {
        let p_ns = p.namespace().unwrap_or_default();
        let terms = required_terms(
            p.spec
                .as_ref()
                .and_then(|s| s.affinity.as_ref())
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                }),
        );
        for t in terms {
            let same_domain = on
                .labels
                .get(&t.topology_key)
                .is_some_and(|d| ni.labels.get(&t.topology_key) == Some(d));
            if same_domain && term_selects(t, &p_ns, pod) {
                return Some("node(s) didn't satisfy existing pods anti-affinity rules".into());
            }
        }
    }
    None
}

fn spread_reason(pod: &Pod, ni: &NodeInfo, all: &[NodeInfo]) -> Option<String> {
    let ns = pod.namespace().unwrap_or_default();
    let hard: Vec<_> = pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.when_unsatisfiable == "DoNotSchedule")
        .collect();
    // The domains are those of the nodes the pod may go to by node affinity and selector that
    // carry every constraint's key.
    let counted: Vec<&NodeInfo> = all
        .iter()
        .filter(|n| {
            node_affinity_ok(pod, n) && hard.iter().all(|c| n.labels.contains_key(&c.topology_key))
        })
        .collect();
    for c in &hard {
        let Some(domain) = ni.labels.get(&c.topology_key) else {
            return Some(
                "node(s) didn't match pod topology spread constraints (missing required label)"
                    .into(),
            );
        };
        // Upstream counts no pod for an empty selector (`selects` matches none), and no
        // terminating pod.
        let selector = c.label_selector.clone().unwrap_or_default();
        let mut counts: BTreeMap<&String, i32> = BTreeMap::new();
        for n in &counted {
            let k = n
                .pods
                .iter()
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && p.namespace().as_deref() == Some(ns.as_str())
                        && selects(&selector, &p.metadata)
                })
                .count() as i32;
            *counts.entry(&n.labels[&c.topology_key]).or_insert(0) += k;
        }
        // Fewer domains than minDomains: the global minimum is 0.
        let min_domains = usize::try_from(c.min_domains.unwrap_or(1)).unwrap_or(1);
        let min = match counts.values().copied().min() {
            Some(m) if counts.len() >= min_domains => m,
            _ => 0,
        };
        let mine = counts.get(domain).copied().unwrap_or(0);
        // The pod itself counts only if it matches the selector.
        let itself = i32::from(selector_matches(c.label_selector.as_ref(), &pod.metadata));
        if mine + itself - min > c.max_skew {
            return Some("node(s) didn't match pod topology spread constraints".into());
        }
    }
    None
}

/// Why `ni` cannot take `pod` (empty: it can). `resources` false skips the resource check.
#[cfg(test)]
fn reasons(pod: &Pod, ni: &NodeInfo, all: &[NodeInfo], resources: bool) -> Vec<String> {
    reasons_with(pod, ni, all, resources, None)
}

/// The same, with the pod's claims' requirements (`volumes`).
fn reasons_with(
    pod: &Pod,
    ni: &NodeInfo,
    all: &[NodeInfo],
    resources: bool,
    volumes: Option<&PodVolumes>,
) -> Vec<String> {
    // The first failing filter in upstream's order gives the reasons: NodeUnschedulable,
    // TaintToleration, NodeAffinity, NodePorts, NodeResourcesFit, VolumeBinding,
    // PodTopologySpread, InterPodAffinity.
    if unschedulable(pod, ni) {
        return vec!["node(s) were unschedulable".into()];
    }
    if let Some(t) = untolerated_taint(pod, ni) {
        return vec![format!(
            "node(s) had untolerated taint {{{}: {}}}",
            t.key,
            t.value.clone().unwrap_or_default()
        )];
    }
    if !node_affinity_ok(pod, ni) {
        return vec!["node(s) didn't match Pod's node affinity/selector".into()];
    }
    if ports_conflict(pod, ni) {
        return vec!["node(s) didn't have free ports for the requested pod ports".into()];
    }
    if resources {
        let r = ni.insufficient(pod, &[]);
        if !r.is_empty() {
            return r;
        }
    }
    if let Some(r) = volumes.and_then(|v| v.reason(&ni.name, &ni.labels)) {
        return vec![r.into()];
    }
    if let Some(r) = spread_reason(pod, ni, all) {
        return vec![r];
    }
    affinity_reasons(pod, ni, all).into_iter().collect()
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
    schedule_with(pod, all, None)
}

/// The same, for a pod whose claims require `volumes` of its node.
pub fn schedule_with(
    pod: &Pod,
    all: &[NodeInfo],
    volumes: Option<&PodVolumes>,
) -> Result<usize, String> {
    if all.is_empty() {
        return Err("no nodes available to schedule pods".into());
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(i64, usize)> = None;
    // Rotate the starting node so equal scores spread pods instead of piling on the first node.
    let start = pod
        .name_any()
        .bytes()
        .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize));
    for k in 0..all.len() {
        let i = (start + k) % all.len();
        let r = reasons_with(pod, &all[i], all, true, volumes);
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
            // Sorted as text, count first, as upstream sorts them.
            let mut parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
            parts.sort();
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
    preemption_plan_with(pod, all, None)
}

/// The same, for a pod whose claims require `volumes` of its node.
pub fn preemption_plan_with(
    pod: &Pod,
    all: &[NodeInfo],
    volumes: Option<&PodVolumes>,
) -> Option<(String, Vec<Arc<Pod>>)> {
    let spec = pod.spec.as_ref()?;
    if spec.preemption_policy.as_deref() == Some("Never") {
        return None;
    }
    let prio = spec.priority.unwrap_or(0);
    let mut best: Option<(i32, usize, String, Vec<Arc<Pod>>)> = None;
    for ni in all {
        if !reasons_with(pod, ni, all, false, volumes).is_empty() {
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
        // Reprieve, the most important first, every victim the pod fits without (as upstream's
        // SelectVictimsOnNode): a low victim may have been needless once a bigger one went.
        for i in (0..victims.len()).rev() {
            let v = victims.remove(i);
            if !ni.insufficient(pod, &victims).is_empty() {
                victims.insert(i, v);
            }
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

#[cfg(test)]
// Case tables are tuples, one line per case: clearer than a struct per table.
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;
    use crate::controllers::util::testing::merged;
    use serde_json::{Value, json};

    // ---- builders -------------------------------------------------------------------------

    /// The failures of a table of cases, reported together.
    #[derive(Default)]
    struct Table(Vec<String>);

    impl Table {
        fn check<T: PartialEq + std::fmt::Debug>(&mut self, case: &str, got: T, want: T) {
            if got != want {
                self.0.push(format!("{case}: got {got:?}, want {want:?}"));
            }
        }

        fn done(self) {
            assert!(
                self.0.is_empty(),
                "{} case(s) failed:\n{}",
                self.0.len(),
                self.0.join("\n")
            );
        }
    }

    /// Pod `name` in namespace `default` with one container and no requests, plus `patch`.
    fn pod(name: &str, patch: Value) -> Pod {
        let base = json!({"metadata": {"name": name, "namespace": "default"},
                          "spec": {"containers": [{"name": "c", "image": "i"}]}});
        serde_json::from_value(merged(base, patch)).expect("pod")
    }

    /// `p` with `patch` laid over it.
    fn merged_pod(p: Pod, patch: Value) -> Pod {
        serde_json::from_value(merged(serde_json::to_value(p).expect("pod"), patch)).expect("pod")
    }

    /// A container requesting `requests`, e.g. `{"cpu": "1"}`.
    fn ctr(requests: Value) -> Value {
        json!({"name": "c", "image": "i", "resources": {"requests": requests}})
    }

    /// Pod `name` whose one container requests `requests`.
    fn asks(name: &str, requests: Value) -> Pod {
        pod(name, json!({"spec": {"containers": [ctr(requests)]}}))
    }

    /// Pod `name` labelled `app: <app>` in namespace `ns`, plus `patch`.
    fn app(name: &str, ns: &str, app: &str, patch: Value) -> Pod {
        let base = json!({"metadata": {"namespace": ns, "labels": {"app": app}}});
        pod(name, merged(base, patch))
    }

    /// Node `name` with 4 CPUs, 8Gi of memory and room for 110 pods, plus `patch`.
    fn node(name: &str, patch: Value) -> Arc<Node> {
        let base = json!({"metadata": {"name": name},
                          "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}});
        Arc::new(serde_json::from_value(merged(base, patch)).expect("node"))
    }

    /// The scheduler's view of node `name` (as `node` builds it) running `pods`.
    fn info(name: &str, patch: Value, pods: Vec<Pod>) -> NodeInfo {
        NodeInfo::new(node(name, patch), pods.into_iter().map(Arc::new).collect())
    }

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn labels(l: Value) -> Value {
        json!({"metadata": {"labels": l}})
    }

    fn taints(t: Value) -> Value {
        json!({"spec": {"taints": t}})
    }

    fn tolerations(t: Value) -> Value {
        json!({"spec": {"tolerations": t}})
    }

    const ZONE: &str = "topology.kubernetes.io/zone";
    const HOST: &str = "kubernetes.io/hostname";

    /// Four nodes: n1 and n2 in zone a (with disk=ssd), n3 in zone b, n4 without a zone; each
    /// runs the pods `placed` puts on its index.
    fn cluster(placed: Vec<(usize, Pod)>) -> Vec<NodeInfo> {
        let zones = [Some("a"), Some("a"), Some("b"), None];
        let mut pods: [Vec<Pod>; 4] = Default::default();
        for (i, p) in placed {
            pods[i].push(p);
        }
        pods.into_iter()
            .enumerate()
            .map(|(i, pods)| {
                let name = format!("n{}", i + 1);
                let mut l = json!({HOST: name});
                if let Some(z) = zones[i] {
                    l[ZONE] = json!(z);
                    if z == "a" {
                        l["disk"] = json!("ssd");
                    }
                }
                info(&name, labels(l), pods)
            })
            .collect()
    }

    // ---- NodePorts ------------------------------------------------------------------------

    #[test]
    fn node_ports() {
        // A container port 80 on host port `host`, with `extra` fields (protocol, hostIP).
        let port =
            |host: i32, extra: Value| merged(json!({"containerPort": 80, "hostPort": host}), extra);
        let containers =
            |p: Value| json!({"spec": {"containers": [{"name": "c", "image": "i", "ports": [p]}]}});
        let init = |p: Value, policy: &str| json!({"spec": {"initContainers": [{"name": "i", "image": "i", "ports": [p], "restartPolicy": policy}]}});
        let none = || json!({});
        let ip = |a: &str| json!({"hostIP": a});
        let proto = |p: &str| json!({"protocol": p});
        // (case, ports of the pod on the node, ports of the incoming pod, conflict)
        #[rustfmt::skip]
        let cases = [
            ("same port", containers(port(8080, none())), containers(port(8080, none())), true),
            ("other port", containers(port(8080, none())), containers(port(8081, none())), false),
            ("TCP by default", containers(port(8080, none())), containers(port(8080, proto("TCP"))), true),
            ("TCP and UDP", containers(port(8080, none())), containers(port(8080, proto("UDP"))), false),
            ("UDP and UDP", containers(port(53, proto("UDP"))), containers(port(53, proto("UDP"))), true),
            ("SCTP and TCP", containers(port(9, proto("SCTP"))), containers(port(9, none())), false),
            ("no host port", containers(json!({"containerPort": 80})), containers(json!({"containerPort": 80})), false),
            ("host port 0", containers(port(0, none())), containers(port(0, none())), false),
            ("different host IPs", containers(port(8080, ip("127.0.0.1"))), containers(port(8080, ip("127.0.0.2"))), false),
            ("same host IP", containers(port(8080, ip("127.0.0.1"))), containers(port(8080, ip("127.0.0.1"))), true),
            ("every IP, then one", containers(port(8080, none())), containers(port(8080, ip("10.0.0.1"))), true),
            ("one IP, then 0.0.0.0", containers(port(8080, ip("10.0.0.1"))), containers(port(8080, ip("0.0.0.0"))), true),
            ("sidecar port on the node", init(port(8080, none()), "Always"), containers(port(8080, none())), true),
            ("incoming sidecar port", containers(port(8080, none())), init(port(8080, none()), "Always"), true),
            ("init container port on the node", init(port(8080, none()), "Never"), containers(port(8080, none())), false),
            ("incoming init container port", containers(port(8080, none())), init(port(8080, none()), "OnFailure"), false),
        ];
        let mut table = Table::default();
        for (case, existing, incoming, want) in cases {
            let ni = info("n1", json!({}), vec![pod("old", existing)]);
            table.check(case, ports_conflict(&pod("new", incoming), &ni), want);
        }
        table.done();
    }

    // ---- NodeResourcesFit -----------------------------------------------------------------

    #[test]
    fn resource_fit() {
        let cpu = |q: &str| ctr(json!({"cpu": q}));
        // Only the allocatable resources in `a`.
        let alloc = |a: Value| json!({"status": {"allocatable": merged(json!({"cpu": null, "memory": null, "pods": null}), a)}});
        let gpu = "example.com/gpu";
        // (case, node patch, pods on the node, incoming pod, reasons)
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, Vec<Pod>, Pod, Vec<&str>)> = vec![
            ("fits an empty node", json!({}), vec![], asks("p", json!({"cpu": "1", "memory": "1Gi"})), vec![]),
            ("exactly full", json!({}), vec![asks("a", json!({"cpu": "3"}))], asks("p", json!({"cpu": "1"})), vec![]),
            ("cpu short", json!({}), vec![asks("a", json!({"cpu": "3500m"}))], asks("p", json!({"cpu": "1"})), vec!["Insufficient cpu"]),
            ("memory short", json!({}), vec![], asks("p", json!({"memory": "9Gi"})), vec!["Insufficient memory"]),
            ("both short", json!({}), vec![], asks("p", json!({"cpu": "5", "memory": "9Gi"})), vec!["Insufficient cpu", "Insufficient memory"]),
            ("no requests fit a full node", json!({}), vec![asks("a", json!({"cpu": "4", "memory": "8Gi"}))], pod("p", json!({})), vec![]),
            ("pod count", alloc(json!({"cpu": "4", "memory": "8Gi", "pods": "2"})), vec![pod("a", json!({})), pod("b", json!({}))], pod("p", json!({})), vec!["Too many pods"]),
            ("pod count and cpu", alloc(json!({"cpu": "1", "pods": "1"})), vec![pod("a", json!({}))], asks("p", json!({"cpu": "2"})), vec!["Too many pods", "Insufficient cpu"]),
            ("no pods allocatable: 110", alloc(json!({"cpu": "4"})), vec![], pod("p", json!({})), vec![]),
            ("resource the node lacks", alloc(json!({"cpu": "4"})), vec![], asks("p", json!({"memory": "1"})), vec!["Insufficient memory"]),
            ("extended resource missing", json!({}), vec![], asks("p", json!({gpu: "1"})), vec!["Insufficient example.com/gpu"]),
            ("extended resource present", alloc(json!({"cpu": "4", gpu: "2"})), vec![asks("a", json!({gpu: "1"}))], asks("p", json!({gpu: "1"})), vec![]),
            ("extended resource used up", alloc(json!({"cpu": "4", gpu: "2"})), vec![asks("a", json!({gpu: "2"}))], asks("p", json!({gpu: "1"})), vec!["Insufficient example.com/gpu"]),
            ("ephemeral storage", alloc(json!({"ephemeral-storage": "10Gi"})), vec![], asks("p", json!({"ephemeral-storage": "11Gi"})), vec!["Insufficient ephemeral-storage"]),
            ("init container above the containers", json!({}), vec![], pod("p", json!({"spec": {"initContainers": [cpu("5")], "containers": [cpu("1")]}})), vec!["Insufficient cpu"]),
            ("init container below the containers", json!({}), vec![asks("a", json!({"cpu": "1"}))], pod("p", json!({"spec": {"initContainers": [cpu("2")], "containers": [cpu("3")]}})), vec![]),
            ("containers add up", json!({}), vec![], pod("p", json!({"spec": {"containers": [cpu("2"), cpu("2500m")]}})), vec!["Insufficient cpu"]),
            ("sidecar adds to the containers", json!({}), vec![], pod("p", json!({"spec": {"initContainers": [merged(cpu("1"), json!({"restartPolicy": "Always"}))], "containers": [cpu("3500m")]}})), vec!["Insufficient cpu"]),
            ("overhead counts", json!({}), vec![], pod("p", json!({"spec": {"containers": [cpu("3500m")], "overhead": {"cpu": "1"}}})), vec!["Insufficient cpu"]),
            ("existing pods' init containers", json!({}), vec![pod("a", json!({"spec": {"initContainers": [cpu("3")], "containers": [cpu("1")]}}))], asks("p", json!({"cpu": "2"})), vec!["Insufficient cpu"]),
            // The init container runs beside the sidecar started before it: 1 + 3 CPUs, and
            // 500m are taken on a 4-CPU node.
            ("init container after a sidecar", json!({}), vec![asks("a", json!({"cpu": "500m"}))], pod("p", json!({"spec": {"initContainers": [merged(cpu("1"), json!({"restartPolicy": "Always"})), cpu("3")], "containers": [cpu("500m")]}})), vec!["Insufficient cpu"]),
        ];
        let mut table = Table::default();
        for (case, patch, existing, incoming, want) in cases {
            let ni = info("n1", patch, existing);
            table.check(case, ni.insufficient(&incoming, &[]), strings(&want));
        }
        table.done();
    }

    // ---- NodeAffinity ---------------------------------------------------------------------

    #[test]
    fn requirement_operators() {
        // (case, operator, values, the node's label value, matches)
        #[rustfmt::skip]
        let cases: [(&str, &str, &[&str], Option<&str>, bool); 20] = [
            ("In: listed", "In", &["a", "b"], Some("b"), true),
            ("In: not listed", "In", &["a"], Some("c"), false),
            ("In: no label", "In", &["a"], None, false),
            ("NotIn: not listed", "NotIn", &["a"], Some("c"), true),
            ("NotIn: listed", "NotIn", &["a", "b"], Some("b"), false),
            ("NotIn: no label", "NotIn", &["a"], None, true),
            ("Exists: empty value", "Exists", &[], Some(""), true),
            ("Exists: no label", "Exists", &[], None, false),
            ("DoesNotExist: no label", "DoesNotExist", &[], None, true),
            ("DoesNotExist: label", "DoesNotExist", &[], Some("x"), false),
            ("Gt: greater", "Gt", &["5"], Some("6"), true),
            ("Gt: equal", "Gt", &["5"], Some("5"), false),
            ("Gt: less", "Gt", &["5"], Some("-7"), false),
            ("Gt: label not an integer", "Gt", &["5"], Some("six"), false),
            ("Gt: no label", "Gt", &["5"], None, false),
            ("Lt: less", "Lt", &["5"], Some("-1"), true),
            ("Lt: equal", "Lt", &["5"], Some("5"), false),
            ("Lt: value not an integer", "Lt", &["x"], Some("1"), false),
            ("Lt: no value", "Lt", &[], Some("1"), false),
            ("unknown operator", "Like", &["a"], Some("a"), false),
        ];
        let mut table = Table::default();
        for (case, op, values, label, want) in cases {
            let r: NodeSelectorRequirement =
                serde_json::from_value(json!({"key": "k", "operator": op, "values": values}))
                    .expect("requirement");
            table.check(
                case,
                requirement_matches(&r, label.map(String::from).as_ref()),
                want,
            );
        }
        table.done();
    }

    #[test]
    fn node_selector_terms() {
        let ni = info("n1", labels(json!({"zone": "a", "disk": "ssd"})), vec![]);
        let expr = |k: &str, op: &str, v: Value| json!({"key": k, "operator": op, "values": v});
        // (case, term, matches)
        #[rustfmt::skip]
        let cases = [
            ("empty term matches nothing", json!({}), false),
            ("empty lists match nothing", json!({"matchExpressions": [], "matchFields": []}), false),
            ("one expression", json!({"matchExpressions": [expr("zone", "In", json!(["a"]))]}), true),
            ("expressions are ANDed", json!({"matchExpressions": [expr("zone", "In", json!(["a"])), expr("disk", "In", json!(["hdd"]))]}), false),
            ("both expressions hold", json!({"matchExpressions": [expr("zone", "In", json!(["a"])), expr("disk", "Exists", json!(null))]}), true),
            ("metadata.name In", json!({"matchFields": [expr("metadata.name", "In", json!(["n1"]))]}), true),
            ("metadata.name In other", json!({"matchFields": [expr("metadata.name", "In", json!(["n2"]))]}), false),
            ("metadata.name NotIn", json!({"matchFields": [expr("metadata.name", "NotIn", json!(["n1"]))]}), false),
            ("fields ANDed with expressions", json!({"matchExpressions": [expr("zone", "In", json!(["a"]))], "matchFields": [expr("metadata.name", "In", json!(["n2"]))]}), false),
            ("unsupported field", json!({"matchFields": [expr("metadata.uid", "In", json!(["n1"]))]}), false),
        ];
        let mut table = Table::default();
        for (case, term, want) in cases {
            let t: NodeSelectorTerm = serde_json::from_value(term).expect("term");
            table.check(case, term_matches(&t, &ni), want);
        }
        table.done();
    }

    #[test]
    fn node_affinity_and_selector() {
        let required = |terms: Value| json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}});
        let zone_in = |z: &str| json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": [z]}]});
        let selector = |s: Value| json!({"spec": {"nodeSelector": s}});
        // (case, pod patch, matches node n1 {zone: a, disk: ssd})
        #[rustfmt::skip]
        let cases = [
            ("no constraints", json!({}), true),
            ("nodeSelector matches", selector(json!({"zone": "a"})), true),
            ("nodeSelector other value", selector(json!({"zone": "b"})), false),
            ("nodeSelector missing label", selector(json!({"gpu": "yes"})), false),
            ("nodeSelector needs every label", selector(json!({"zone": "a", "gpu": "yes"})), false),
            ("required term matches", required(json!([zone_in("a")])), true),
            ("required term fails", required(json!([zone_in("b")])), false),
            ("terms are ORed", required(json!([zone_in("b"), zone_in("a")])), true),
            ("no term matches", required(json!([zone_in("b"), zone_in("c")])), false),
            ("empty term list", required(json!([])), false),
            ("empty term", required(json!([{}])), false),
            ("matchFields metadata.name", required(json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}])), true),
            ("selector and affinity both hold", merged(selector(json!({"disk": "ssd"})), required(json!([zone_in("a")]))), true),
            ("selector holds, affinity fails", merged(selector(json!({"disk": "ssd"})), required(json!([zone_in("b")]))), false),
            ("affinity holds, selector fails", merged(selector(json!({"disk": "hdd"})), required(json!([zone_in("a")]))), false),
            ("only preferred terms", json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": zone_in("b")}]}}}}), true),
        ];
        let ni = info("n1", labels(json!({"zone": "a", "disk": "ssd"})), vec![]);
        let mut table = Table::default();
        for (case, patch, want) in cases {
            table.check(case, node_affinity_ok(&pod("p", patch), &ni), want);
        }
        table.done();
    }

    // ---- TaintToleration and NodeUnschedulable --------------------------------------------

    #[test]
    fn toleration_matches_taint() {
        let taint = json!({"key": "k", "value": "v", "effect": "NoSchedule"});
        // (case, toleration, taint, tolerated)
        #[rustfmt::skip]
        let cases = [
            ("Equal: key, value, effect", json!({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}), taint.clone(), true),
            ("Equal by default", json!({"key": "k", "value": "v"}), taint.clone(), true),
            ("Equal: other value", json!({"key": "k", "value": "w"}), taint.clone(), false),
            ("Equal: no value vs a value", json!({"key": "k"}), taint.clone(), false),
            ("Equal: no value vs none", json!({"key": "k"}), json!({"key": "k", "effect": "NoSchedule"}), true),
            ("other key", json!({"key": "x", "operator": "Exists"}), taint.clone(), false),
            ("Exists: any value", json!({"key": "k", "operator": "Exists"}), taint.clone(), true),
            ("Exists, empty key: every taint", json!({"operator": "Exists"}), taint.clone(), true),
            ("Exists, empty key, other effect", json!({"operator": "Exists", "effect": "NoExecute"}), taint.clone(), false),
            ("empty key needs Exists", json!({"key": "", "value": "v"}), taint.clone(), false),
            ("no effect: every effect", json!({"key": "k", "operator": "Exists"}), json!({"key": "k", "effect": "NoExecute"}), true),
            ("same effect", json!({"key": "k", "operator": "Exists", "effect": "NoExecute"}), json!({"key": "k", "effect": "NoExecute"}), true),
            ("other effect", json!({"key": "k", "operator": "Exists", "effect": "NoSchedule"}), json!({"key": "k", "effect": "NoExecute"}), false),
            ("PreferNoSchedule effect", json!({"key": "k", "operator": "Exists", "effect": "PreferNoSchedule"}), json!({"key": "k", "effect": "PreferNoSchedule"}), true),
        ];
        let mut table = Table::default();
        for (case, tol, taint, want) in cases {
            let tol: Toleration = serde_json::from_value(tol).expect("toleration");
            let taint: Taint = serde_json::from_value(taint).expect("taint");
            table.check(case, tolerates(&[tol], &taint), want);
        }
        table.done();
        let t: Taint = serde_json::from_value(json!({"key": "k", "effect": "NoSchedule"})).unwrap();
        assert!(!tolerates(&[], &t), "no tolerations");
    }

    #[test]
    fn untolerated_taints() {
        let exists = |k: &str| json!({"key": k, "operator": "Exists"});
        // (case, tolerations, taints, the first untolerated taint's key)
        #[rustfmt::skip]
        let cases = [
            ("no taints", json!([]), json!([]), None),
            ("NoSchedule", json!([]), json!([{"key": "a", "effect": "NoSchedule"}]), Some("a")),
            ("NoExecute", json!([]), json!([{"key": "a", "effect": "NoExecute"}]), Some("a")),
            ("PreferNoSchedule does not filter", json!([]), json!([{"key": "a", "effect": "PreferNoSchedule"}]), None),
            ("tolerated", json!([exists("a")]), json!([{"key": "a", "effect": "NoSchedule"}]), None),
            ("first untolerated one", json!([exists("a")]), json!([{"key": "a", "effect": "NoSchedule"}, {"key": "b", "effect": "NoExecute"}, {"key": "c", "effect": "NoSchedule"}]), Some("b")),
            ("all tolerated", json!([exists("a"), exists("b")]), json!([{"key": "a", "effect": "NoSchedule"}, {"key": "b", "effect": "NoExecute"}]), None),
            ("toleration for another effect", json!([{"key": "a", "operator": "Exists", "effect": "NoExecute"}]), json!([{"key": "a", "effect": "NoSchedule"}]), Some("a")),
        ];
        let mut table = Table::default();
        for (case, tols, node_taints, want) in cases {
            let ni = info("n1", taints(node_taints), vec![]);
            let p = pod("p", tolerations(tols));
            table.check(
                case,
                untolerated_taint(&p, &ni).map(|t| t.key.as_str()),
                want,
            );
        }
        table.done();
    }

    #[test]
    fn unschedulable_nodes() {
        let cordoned = json!({"spec": {"unschedulable": true}});
        let key = "node.kubernetes.io/unschedulable";
        // (case, node patch, tolerations, unschedulable)
        #[rustfmt::skip]
        let cases = [
            ("schedulable", json!({}), json!([]), false),
            ("unschedulable: false", json!({"spec": {"unschedulable": false}}), json!([]), false),
            ("cordoned", cordoned.clone(), json!([]), true),
            ("cordoned, tolerated", cordoned.clone(), json!([{"key": key, "operator": "Exists", "effect": "NoSchedule"}]), false),
            ("cordoned, tolerated for any effect", cordoned.clone(), json!([{"key": key, "operator": "Exists"}]), false),
            ("cordoned, tolerate everything", cordoned.clone(), json!([{"operator": "Exists"}]), false),
            ("cordoned, NoExecute toleration only", cordoned.clone(), json!([{"key": key, "operator": "Exists", "effect": "NoExecute"}]), true),
            ("cordoned, other key", cordoned.clone(), json!([{"key": "x", "operator": "Exists"}]), true),
        ];
        let mut table = Table::default();
        for (case, patch, tols, want) in cases {
            let ni = info("n1", patch, vec![]);
            table.check(case, unschedulable(&pod("p", tolerations(tols)), &ni), want);
        }
        table.done();
    }

    // ---- InterPodAffinity -----------------------------------------------------------------

    const AFFINITY: &str = "node(s) didn't match pod affinity rules";
    const ANTI: &str = "node(s) didn't match pod anti-affinity rules";
    const EXISTING: &str = "node(s) didn't satisfy existing pods anti-affinity rules";

    #[test]
    fn pod_affinity() {
        let web = || json!({"matchLabels": {"app": "web"}});
        let term = |key: &str, sel: Value| json!({"topologyKey": key, "labelSelector": sel});
        let required = |kind: &str, terms: Value| json!({"spec": {"affinity": {kind: {"requiredDuringSchedulingIgnoredDuringExecution": terms}}}});
        let near = |key: &str| required("podAffinity", json!([term(key, web())]));
        let apart = |key: &str| required("podAntiAffinity", json!([term(key, web())]));
        let web_pod = |ns: &str| app("w", ns, "web", json!({}));
        let api = |patch: Value| app("new", "default", "api", patch);
        let webby = |patch: Value| app("new", "default", "web", patch);
        // (case, incoming pod, pods placed on the node indices, candidate index, reason)
        #[rustfmt::skip]
        let cases: Vec<(&str, Pod, Vec<(usize, Pod)>, usize, Option<&str>)> = vec![
            ("no affinity", api(json!({})), vec![(0, web_pod("default"))], 0, None),
            ("affinity: on the node", api(near(HOST)), vec![(0, web_pod("default"))], 0, None),
            ("affinity: in the zone", api(near(ZONE)), vec![(0, web_pod("default"))], 1, None),
            ("affinity: other node, hostname key", api(near(HOST)), vec![(0, web_pod("default"))], 1, Some(AFFINITY)),
            ("affinity: other zone", api(near(ZONE)), vec![(2, web_pod("default"))], 0, Some(AFFINITY)),
            ("affinity: node lacks the key", api(near(ZONE)), vec![(3, web_pod("default"))], 3, Some(AFFINITY)),
            ("affinity: first pod selecting itself", webby(near(ZONE)), vec![], 0, None),
            ("affinity: first pod, node lacks the key", webby(near(ZONE)), vec![], 3, Some(AFFINITY)),
            ("affinity: nothing matches, not itself", api(near(ZONE)), vec![], 0, Some(AFFINITY)),
            ("affinity: not first once one exists", webby(near(HOST)), vec![(2, web_pod("default"))], 0, Some(AFFINITY)),
            ("affinity: match in another namespace", api(near(HOST)), vec![(0, web_pod("other"))], 0, Some(AFFINITY)),
            ("affinity: term names the namespace", api(required("podAffinity", json!([merged(term(HOST, web()), json!({"namespaces": ["other"]}))]))), vec![(0, web_pod("other"))], 0, None),
            ("affinity: namespaceSelector {} is every namespace", api(required("podAffinity", json!([merged(term(HOST, web()), json!({"namespaceSelector": {}}))]))), vec![(0, web_pod("other"))], 0, None),
            ("affinity: labelSelector {} is every pod", api(required("podAffinity", json!([term(HOST, json!({}))]))), vec![(0, app("db", "default", "db", json!({})))], 0, None),
            ("affinity: no labelSelector is no pod", api(required("podAffinity", json!([{"topologyKey": HOST}]))), vec![(0, web_pod("default"))], 0, Some(AFFINITY)),
            ("affinity: matchExpressions", api(required("podAffinity", json!([term(HOST, json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "web"]}]}))]))), vec![(0, web_pod("default"))], 0, None),
            ("affinity: two terms, one pod each", api(required("podAffinity", json!([term(HOST, web()), term(HOST, json!({"matchLabels": {"tier": "db"}}))]))), vec![(0, web_pod("default")), (0, pod("db", labels(json!({"tier": "db"}))))], 0, Some(AFFINITY)),
            ("affinity: two terms, one pod for both", api(required("podAffinity", json!([term(HOST, web()), term(HOST, json!({"matchLabels": {"tier": "db"}}))]))), vec![(0, pod("wdb", labels(json!({"app": "web", "tier": "db"}))))], 0, None),
            ("anti: on the node", api(apart(HOST)), vec![(0, web_pod("default"))], 0, Some(ANTI)),
            ("anti: in the zone", api(apart(ZONE)), vec![(0, web_pod("default"))], 1, Some(ANTI)),
            ("anti: other node, hostname key", api(apart(HOST)), vec![(0, web_pod("default"))], 1, None),
            ("anti: other zone", api(apart(ZONE)), vec![(2, web_pod("default"))], 0, None),
            ("anti: node lacks the key", api(apart(ZONE)), vec![(3, web_pod("default"))], 3, None),
            ("anti: another namespace", api(apart(HOST)), vec![(0, web_pod("other"))], 0, None),
            ("anti: labelSelector {} is every pod", api(required("podAntiAffinity", json!([term(HOST, json!({}))]))), vec![(0, app("db", "default", "db", json!({})))], 0, Some(ANTI)),
            ("anti: does not count the pod itself", webby(apart(HOST)), vec![], 0, None),
            ("affinity holds, anti-affinity fails", api(merged(near(HOST), apart(HOST))), vec![(1, web_pod("default")), (0, web_pod("default"))], 0, Some(ANTI)),
            ("affinity fails before anti-affinity", api(merged(near(HOST), apart(ZONE))), vec![(1, web_pod("default"))], 0, Some(AFFINITY)),
            ("existing anti: on the node", webby(json!({})), vec![(0, api(apart(HOST)))], 0, Some(EXISTING)),
            ("existing anti: other node", webby(json!({})), vec![(0, api(apart(HOST)))], 1, None),
            ("existing anti: in the zone", webby(json!({})), vec![(0, api(apart(ZONE)))], 1, Some(EXISTING)),
            ("existing anti: node lacks the key", webby(json!({})), vec![(3, api(apart(ZONE)))], 3, None),
            ("existing anti: not selected", api(json!({})), vec![(0, api(apart(HOST)))], 0, None),
            ("existing anti: its own namespace only", webby(json!({})), vec![(0, app("old", "other", "api", apart(HOST)))], 0, None),
            ("existing anti: names our namespace", webby(json!({})), vec![(0, app("old", "other", "api", required("podAntiAffinity", json!([merged(term(HOST, web()), json!({"namespaces": ["default"]}))]))))], 0, Some(EXISTING)),
            ("existing anti: namespaceSelector {}", webby(json!({})), vec![(0, app("old", "other", "api", required("podAntiAffinity", json!([merged(term(HOST, web()), json!({"namespaceSelector": {}}))]))))], 0, Some(EXISTING)),
        ];
        let mut table = Table::default();
        for (case, incoming, placed, at, want) in cases {
            let all = cluster(placed);
            table.check(
                case,
                affinity_reasons(&incoming, &all[at], &all).as_deref(),
                want,
            );
        }
        table.done();
    }

    // ---- PodTopologySpread ----------------------------------------------------------------

    const SPREAD: &str = "node(s) didn't match pod topology spread constraints";
    const SPREAD_LABEL: &str =
        "node(s) didn't match pod topology spread constraints (missing required label)";

    #[test]
    fn topology_spread() {
        let constraint = |key: &str, skew: i32, when: &str, extra: Value| {
            merged(
                json!({"maxSkew": skew, "topologyKey": key, "whenUnsatisfiable": when,
                          "labelSelector": {"matchLabels": {"app": "web"}}}),
                extra,
            )
        };
        let spread = |cs: Vec<Value>| json!({"spec": {"topologySpreadConstraints": cs}});
        let zone1 = || spread(vec![constraint(ZONE, 1, "DoNotSchedule", json!({}))]);
        let web = |patch: Value| app("new", "default", "web", patch);
        let w = || app("w", "default", "web", json!({}));
        // (case, incoming pod, pods placed on the node indices, candidate index, reason)
        #[rustfmt::skip]
        let cases: Vec<(&str, Pod, Vec<(usize, Pod)>, usize, Option<&str>)> = vec![
            ("no constraints", web(json!({})), vec![(0, w()), (1, w())], 0, None),
            ("balanced", web(zone1()), vec![], 0, None),
            ("zone a ahead: a refused", web(zone1()), vec![(0, w())], 1, Some(SPREAD)),
            ("zone a ahead: b taken", web(zone1()), vec![(0, w())], 2, None),
            ("balanced again", web(zone1()), vec![(0, w()), (2, w())], 1, None),
            ("maxSkew 2", web(spread(vec![constraint(ZONE, 2, "DoNotSchedule", json!({}))])), vec![(0, w())], 1, None),
            ("ScheduleAnyway never filters", web(spread(vec![constraint(ZONE, 1, "ScheduleAnyway", json!({}))])), vec![(0, w()), (1, w())], 0, None),
            ("node without the key", web(zone1()), vec![], 3, Some(SPREAD_LABEL)),
            ("ScheduleAnyway, node without the key", web(spread(vec![constraint(ZONE, 1, "ScheduleAnyway", json!({}))])), vec![], 3, None),
            ("hostname key", web(spread(vec![constraint(HOST, 1, "DoNotSchedule", json!({}))])), vec![(0, w())], 0, Some(SPREAD)),
            ("pods the selector misses", web(zone1()), vec![(0, app("db", "default", "db", json!({})))], 0, None),
            ("pods in other namespaces", web(zone1()), vec![(0, app("w", "other", "web", json!({})))], 0, None),
            ("terminating pods", web(zone1()), vec![(0, app("w", "default", "web", json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}})))], 0, None),
            ("pod outside its own selector", app("new", "default", "api", zone1()), vec![(0, w())], 0, None),
            ("pod outside its own selector, skew 2", app("new", "default", "api", zone1()), vec![(0, w()), (1, w())], 0, Some(SPREAD)),
            ("domains the nodeSelector excludes", web(merged(zone1(), json!({"spec": {"nodeSelector": {"disk": "ssd"}}}))), vec![(0, w())], 0, None),
            ("minDomains above the domains: minimum 0", web(spread(vec![constraint(ZONE, 1, "DoNotSchedule", json!({"minDomains": 3}))])), vec![(0, w()), (2, w())], 0, Some(SPREAD)),
            ("minDomains met", web(spread(vec![constraint(ZONE, 1, "DoNotSchedule", json!({"minDomains": 2}))])), vec![(0, w()), (2, w())], 0, None),
            ("counted nodes carry every key", web(spread(vec![constraint(ZONE, 1, "DoNotSchedule", json!({})), constraint(HOST, 1, "DoNotSchedule", json!({}))])), vec![(0, w()), (1, w()), (2, w())], 2, None),
            ("second constraint refuses", web(spread(vec![constraint(ZONE, 3, "DoNotSchedule", json!({})), constraint(HOST, 1, "DoNotSchedule", json!({}))])), vec![(0, w())], 0, Some(SPREAD)),
        ];
        let mut table = Table::default();
        for (case, incoming, placed, at, want) in cases {
            let all = cluster(placed);
            table.check(
                case,
                spread_reason(&incoming, &all[at], &all).as_deref(),
                want,
            );
        }
        table.done();
    }

    // ---- the filters together -------------------------------------------------------------

    #[test]
    fn filter_order_and_messages() {
        let cordoned = json!({"spec": {"unschedulable": true}});
        let tainted = taints(json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]));
        let elsewhere = json!({"spec": {"nodeSelector": {"zone": "b"}}});
        let port = |name: &str| {
            let c = merged(
                ctr(json!({"cpu": "3"})),
                json!({"ports": [{"containerPort": 80, "hostPort": 80}]}),
            );
            pod(name, json!({"spec": {"containers": [c]}}))
        };
        let big = || asks("p", json!({"cpu": "5", "memory": "9Gi"}));
        let spread_and_affinity = json!({"metadata": {"labels": {"app": "web"}}, "spec": {
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": ZONE, "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}],
            "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": HOST, "labelSelector": {"matchLabels": {"app": "db"}}}]}}}});
        // (case, incoming pod, node patch, pods on the node, reasons)
        #[rustfmt::skip]
        let cases: Vec<(&str, Pod, Value, Vec<Pod>, Vec<&str>)> = vec![
            ("fits", asks("p", json!({"cpu": "1"})), json!({}), vec![], vec![]),
            ("unschedulable first", pod("p", elsewhere.clone()), merged(cordoned.clone(), tainted.clone()), vec![], vec!["node(s) were unschedulable"]),
            ("taints before node affinity", pod("p", elsewhere.clone()), tainted.clone(), vec![], vec!["node(s) had untolerated taint {dedicated: db}"]),
            ("taint without a value", pod("p", json!({})), taints(json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}])), vec![], vec!["node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }"]),
            ("node affinity before resources", merged_pod(big(), elsewhere.clone()), json!({}), vec![], vec!["node(s) didn't match Pod's node affinity/selector"]),
            ("ports before resources", port("p"), json!({}), vec![port("old")], vec!["node(s) didn't have free ports for the requested pod ports"]),
            ("every resource short", big(), json!({}), vec![], vec!["Insufficient cpu", "Insufficient memory"]),
            ("spread before pod affinity", pod("p", spread_and_affinity), labels(json!({HOST: "n1"})), vec![], vec![SPREAD_LABEL]),
            ("PreferNoSchedule passes", pod("p", json!({})), taints(json!([{"key": "k", "effect": "PreferNoSchedule"}])), vec![], vec![]),
        ];
        let mut table = Table::default();
        for (case, incoming, patch, existing, want) in cases {
            let all = vec![info("n1", patch, existing)];
            table.check(
                case,
                reasons(&incoming, &all[0], &all, true),
                strings(&want),
            );
        }
        table.done();
        // Without the resource check (preemption asks so) a full node has no reason.
        let all = vec![info("n1", json!({}), vec![])];
        assert_eq!(reasons(&big(), &all[0], &all, false), Vec::<String>::new());
    }

    // ---- scores and the choice of a node --------------------------------------------------

    #[test]
    fn scores() {
        let owned = |name: &str, uid: &str| {
            pod(
                name,
                json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": uid, "controller": true}]}}),
            )
        };
        let preferred = json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}},
            {"weight": 5, "preference": {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}},
            {"weight": 50, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}}]}}}});
        let zone_a = labels(json!({"zone": "a", "disk": "ssd"}));
        // score = (free cpu % + free memory %) / 2 + matching preferred weights
        //         + 100 / (1 + pods of the same controller on the node)
        // (case, node patch, pods on the node, incoming pod, score)
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, Vec<Pod>, Pod, i64)> = vec![
            ("empty node", json!({}), vec![], pod("p", json!({})), 100 + 100),
            ("the pod's requests", json!({}), vec![], asks("p", json!({"cpu": "1", "memory": "2Gi"})), 75 + 100),
            ("requests already there", json!({}), vec![asks("a", json!({"cpu": "2", "memory": "4Gi"}))], pod("p", json!({})), 50 + 100),
            ("cpu and memory apart", json!({}), vec![asks("a", json!({"cpu": "4"}))], pod("p", json!({})), 50 + 100),
            ("over-committed counts as full", json!({}), vec![asks("a", json!({"cpu": "8", "memory": "16Gi"}))], pod("p", json!({})), 100),
            ("no memory allocatable", json!({"status": {"allocatable": {"memory": null}}}), vec![], asks("p", json!({"cpu": "2"})), 25 + 100),
            ("preferred weights that match", zone_a.clone(), vec![], pod("p", preferred.clone()), 100 + 15 + 100),
            ("preferred weights, none match", json!({}), vec![], pod("p", preferred.clone()), 100 + 100),
            ("siblings on the node", json!({}), vec![owned("a", "u1"), owned("b", "u1")], owned("p", "u1"), 100 + 33),
            ("pods of another controller", json!({}), vec![owned("a", "u2")], owned("p", "u1"), 100 + 100),
            ("no controller", json!({}), vec![owned("a", "u1")], pod("p", json!({})), 100 + 100),
        ];
        let mut table = Table::default();
        for (case, patch, existing, incoming, want) in cases {
            table.check(case, score(&incoming, &info("n1", patch, existing)), want);
        }
        table.done();
    }

    #[test]
    fn schedule_picks_a_node() {
        let cpu = |n: &str| asks("a", json!({"cpu": n}));
        let cordoned = json!({"spec": {"unschedulable": true}});
        let prefer_b = json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}}]}}}});
        // (case, pod, nodes, the chosen node or the error)
        #[rustfmt::skip]
        let cases: Vec<(&str, Pod, Vec<NodeInfo>, Result<&str, &str>)> = vec![
            ("least allocated", pod("p", json!({})), vec![info("n1", json!({}), vec![cpu("3")]), info("n2", json!({}), vec![cpu("1")]), info("n3", json!({}), vec![cpu("2")])], Ok("n2")),
            ("the only feasible node", asks("p", json!({"cpu": "2"})), vec![info("n1", json!({}), vec![cpu("3")]), info("n2", json!({}), vec![cpu("2")]), info("n3", cordoned.clone(), vec![])], Ok("n2")),
            ("preferred affinity outweighs load", pod("p", prefer_b), vec![info("n1", json!({}), vec![]), info("n2", labels(json!({"zone": "b"})), vec![cpu("2")])], Ok("n2")),
            ("none fits", asks("p", json!({"cpu": "2"})), vec![info("n1", cordoned.clone(), vec![]), info("n2", json!({}), vec![cpu("3")]), info("n3", json!({}), vec![cpu("3")])],
                Err("0/3 nodes are available: 1 node(s) were unschedulable, 2 Insufficient cpu.")),
            ("several reasons on a node", asks("p", json!({"cpu": "5", "memory": "9Gi"})), vec![info("n1", json!({}), vec![])],
                Err("0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory.")),
            ("counts sort as text", pod("p", json!({"spec": {"nodeSelector": {"zone": "b"}}})), (1..=12).map(|i| info(&format!("n{i}"), if i <= 2 { cordoned.clone() } else { json!({}) }, vec![])).collect(),
                Err("0/12 nodes are available: 10 node(s) didn't match Pod's node affinity/selector, 2 node(s) were unschedulable.")),
            ("no nodes", pod("p", json!({})), vec![], Err("no nodes available to schedule pods")),
        ];
        let mut table = Table::default();
        for (case, incoming, all, want) in cases {
            let got = schedule(&incoming, &all);
            table.check(
                case,
                got.as_ref()
                    .map(|&i| all[i].name.as_str())
                    .map_err(String::as_str),
                want,
            );
        }
        table.done();
    }

    #[test]
    fn schedule_spreads_ties() {
        // Equal scores: the starting node depends on the pod's name, so replicas spread.
        let all = vec![info("n1", json!({}), vec![]), info("n2", json!({}), vec![])];
        let chosen: HashSet<usize> = (0..8)
            .map(|i| schedule(&pod(&format!("web-{i}"), json!({})), &all).expect("fits"))
            .collect();
        assert_eq!(chosen.len(), 2);
    }

    // ---- preemption -----------------------------------------------------------------------

    #[test]
    fn preemption() {
        let prio = |name: &str, p: i32, cpu: &str| {
            pod(
                name,
                json!({"spec": {"priority": p, "containers": [ctr(json!({"cpu": cpu}))]}}),
            )
        };
        let high = || prio("high", 100, "2");
        let never = merged_pod(high(), json!({"spec": {"preemptionPolicy": "Never"}}));
        let terminating = merged_pod(
            prio("low", 0, "4"),
            json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}}),
        );
        let n = |name: &str, pods: Vec<Pod>| info(name, json!({}), pods);
        // (case, pod, nodes, the node and victims chosen)
        #[rustfmt::skip]
        let cases: Vec<(&str, Pod, Vec<NodeInfo>, Option<(&str, Vec<&str>)>)> = vec![
            ("a lower-priority victim", high(), vec![n("n1", vec![prio("low", 0, "3")])], Some(("n1", vec!["low"]))),
            ("preemptionPolicy Never", never, vec![n("n1", vec![prio("low", 0, "3")])], None),
            ("equal priority is safe", high(), vec![n("n1", vec![prio("peer", 100, "3")])], None),
            ("higher priority is safe", high(), vec![n("n1", vec![prio("top", 1000, "3")])], None),
            ("no priority counts as 0", prio("p", 1, "2"), vec![n("n1", vec![pod("plain", json!({"spec": {"containers": [ctr(json!({"cpu": "3"}))]}}))])], Some(("n1", vec!["plain"]))),
            ("only as many as needed", high(), vec![n("n1", vec![prio("a", 1, "1"), prio("b", 1, "1"), prio("c", 1, "1"), prio("d", 1, "1")])], Some(("n1", vec!["a", "b"]))),
            ("lowest priorities first", high(), vec![n("n1", vec![prio("a", 5, "2"), prio("b", 1, "2")])], Some(("n1", vec!["b"]))),
            ("reprieve the more important", high(), vec![n("n1", vec![prio("a", 1, "1"), prio("b", 2, "3")])], Some(("n1", vec!["b"]))),
            ("not enough even with all lower gone", high(), vec![n("n1", vec![prio("a", 1, "1"), prio("b", 200, "3")])], None),
            ("node with the least important victims", high(), vec![n("n1", vec![prio("x", 5, "4")]), n("n2", vec![prio("y", 1, "4")])], Some(("n2", vec!["y"]))),
            ("then the fewest victims", high(), vec![n("n1", vec![prio("x", 1, "1"), prio("y", 1, "1"), prio("z", 1, "2")]), n("n2", vec![prio("v", 1, "2"), prio("w", 1, "2")])], Some(("n2", vec!["v"]))),
            ("nodes failing other filters", merged_pod(high(), json!({"spec": {"nodeSelector": {"zone": "b"}}})), vec![n("n1", vec![prio("low", 0, "4")])], None),
            ("terminating pods are no victims", high(), vec![n("n1", vec![terminating])], None),
        ];
        let mut table = Table::default();
        for (case, incoming, all, want) in cases {
            let got = preemption_plan(&incoming, &all).map(|(node, victims)| {
                let mut names: Vec<String> = victims.iter().map(|v| v.name_any()).collect();
                names.sort();
                (node, names)
            });
            let want =
                want.map(|(n, v)| (n.to_string(), v.into_iter().map(String::from).collect()));
            table.check(case, got, want);
        }
        table.done();
    }

    // ---- DaemonSets -----------------------------------------------------------------------

    #[test]
    fn daemonset_node_accepts() {
        let unsched_tol = json!([{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]);
        // (case, pod patch, node patch, accepted)
        #[rustfmt::skip]
        let cases = [
            ("plain node", json!({}), json!({}), true),
            ("cordoned", json!({}), json!({"spec": {"unschedulable": true}}), false),
            ("cordoned, tolerated", tolerations(unsched_tol), json!({"spec": {"unschedulable": true}}), true),
            ("NoSchedule taint", json!({}), taints(json!([{"key": "k", "effect": "NoSchedule"}])), false),
            ("NoExecute taint", json!({}), taints(json!([{"key": "k", "effect": "NoExecute"}])), false),
            ("PreferNoSchedule taint", json!({}), taints(json!([{"key": "k", "effect": "PreferNoSchedule"}])), true),
            ("tolerated taint", tolerations(json!([{"operator": "Exists"}])), taints(json!([{"key": "k", "effect": "NoExecute"}])), true),
            ("nodeSelector mismatch", json!({"spec": {"nodeSelector": {"zone": "b"}}}), labels(json!({"zone": "a"})), false),
            ("nodeSelector match", json!({"spec": {"nodeSelector": {"zone": "a"}}}), labels(json!({"zone": "a"})), true),
            ("matchFields names the node", json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}}}}), json!({}), true),
            ("matchFields names another node", json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]}}}}}), json!({}), false),
            ("resources are not checked", json!({"spec": {"containers": [ctr(json!({"cpu": "64"}))]}}), json!({}), true),
        ];
        let mut table = Table::default();
        for (case, patch, node_patch, want) in cases {
            table.check(
                case,
                node_accepts(&pod("ds", patch), node("n1", node_patch)),
                want,
            );
        }
        table.done();
    }
}
