//! Node lifecycle and pod garbage collection.
//! - A node that has not renewed its Lease (or Ready heartbeat) for 40 s by this controller's
//!   clock (60 s from its creation for one that never reported) becomes Ready=Unknown and gets
//!   the `node.kubernetes.io/unreachable` taints; a NotReady node gets `not-ready` taints; the
//!   taints go when the node is Ready again. Pressure conditions, NetworkUnavailable and
//!   `unschedulable` bring their NoSchedule taints.
//! - Pods on a node that is not Ready are marked not Ready (their Ready condition False, as
//!   upstream's `MarkPodsNotReady`), so that Services stop sending them traffic; their kubelet
//!   sets it back when it is back.
//! - Pods on a node with a NoExecute taint are evicted at once unless they tolerate it, or after
//!   their `tolerationSeconds` (300 s by default admission).
//! - Pods bound to nodes that no longer exist are deleted, and terminated pods beyond 12,500.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

use kube::runtime::reflector::Store;
use serde_json::Value;

use super::informers::Informers;
use super::util::Context;

/// How long a node may stay silent before it is Unknown (upstream's node-monitor-grace-period:
/// 40 s in 1.28, the release kinglet follows; 1.32 raised it to 50 s), and how long a node that
/// never reported may take (node-startup-grace-period).
const GRACE_SECS: i64 = 40;
const STARTUP_GRACE_SECS: i64 = 60;
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";

fn ready_status(n: &Node) -> Option<String> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

/// The node's own marks of life: its Lease's renewTime and its Ready condition's heartbeat,
/// as the node's clock wrote them.
type Marks = (Option<i64>, Option<i64>);

fn marks(n: &Node, lease: Option<&Lease>) -> Marks {
    let lease_t = lease
        .and_then(|l| l.spec.as_ref()?.renew_time.as_ref())
        .map(|t| t.0.as_second());
    let cond_t = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0.as_second());
    (lease_t, cond_t)
}

/// When each node last showed life, by this controller's clock (upstream's
/// `probeTimestamp`). A node writes its marks with its own clock, which may be off on an edge
/// device, so only their changing counts, timed here. A node first seen (the controller just
/// started, perhaps after the server was down) gets a whole grace period from then; one that
/// never reported counts from its creation (a time the API server wrote).
#[derive(Default)]
struct Probes(HashMap<String, (Marks, i64)>);

impl Probes {
    /// Notes the nodes' marks at `now`; returns when each node last showed life.
    fn observe(
        &mut self,
        nodes: &[Node],
        leases: &HashMap<String, Lease>,
        now: i64,
    ) -> HashMap<String, i64> {
        let mut seen = HashMap::new();
        let mut next = HashMap::new();
        for n in nodes {
            let name = n.name_any();
            let m = marks(n, leases.get(&name));
            // A mark that is there and differs from the last one seen is a sign of life.
            let fresh = |before: Option<i64>, now: Option<i64>| now.is_some() && now != before;
            let at = match self.0.get(&name) {
                Some((before, at)) if !fresh(before.0, m.0) && !fresh(before.1, m.1) => *at,
                Some(_) => now,
                None if m == (None, None) => (n.metadata.creation_timestamp.as_ref())
                    .map(|t| t.0.as_second())
                    .unwrap_or(now),
                None => now,
            };
            seen.insert(name.clone(), at);
            next.insert(name, (m, at));
        }
        // Deleted nodes are forgotten.
        self.0 = next;
        seen
    }
}

/// Node conditions and the NoSchedule taints they bring when True (TaintNodesByCondition).
const CONDITION_TAINTS: [(&str, &str); 4] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "node.kubernetes.io/network-unavailable",
    ),
];
const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// Upstream's `Toleration.ToleratesTaint`: an empty effect or key matches any, the operator is
/// Equal (value must match) or Exists.
fn tolerates(tol: &Toleration, t: &Taint) -> bool {
    let effect_ok = tol
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == t.effect);
    let key_ok = tol
        .key
        .as_deref()
        .is_none_or(|k| k.is_empty() || k == t.key);
    let op_ok = match tol.operator.as_deref().unwrap_or("") {
        "" | "Equal" => tol.value.as_deref().unwrap_or("") == t.value.as_deref().unwrap_or(""),
        "Exists" => true,
        _ => false,
    };
    effect_ok && key_ok && op_ok
}

/// The first toleration of `t` in `tols`, if any: its tolerationSeconds (None: forever).
fn toleration_of(tols: &[Toleration], t: &Taint) -> Option<Option<i64>> {
    tols.iter()
        .find(|tol| tolerates(tol, t))
        .map(|tol| tol.toleration_seconds)
}

/// One API action of a node lifecycle pass, in the order `apply` performs them.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// Mark the node's conditions Unknown: it stopped posting status.
    MarkUnknown { node: String, conditions: Value },
    /// Replace the node's taints.
    Taint { node: String, taints: Vec<Taint> },
    /// Set a pod's Ready condition False (strategic merge `patch` of its status, conditional
    /// on the resourceVersion it was planned from): its node is not Ready.
    MarkPodNotReady {
        namespace: String,
        name: String,
        patch: Value,
    },
    /// Delete a pod at once (no grace): its node is gone, or it is a terminated pod beyond the
    /// garbage collection threshold.
    ForceDelete { namespace: String, name: String },
    /// Evict a pod from a node with a NoExecute taint it does not tolerate (any longer).
    Evict { namespace: String, name: String },
}

/// The conditions a silent node gets (upstream's `tryUpdateNodeHealth`).
fn unknown_conditions(now: Timestamp) -> Value {
    let msg = "Kubelet stopped posting node status.";
    let conds: Vec<Value> = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"]
        .iter()
        .map(|t| serde_json::json!({"type": t, "status": "Unknown", "reason": "NodeStatusUnknown", "message": msg, "lastTransitionTime": now.to_string()}))
        .collect();
    Value::from(conds)
}

fn condition_true(n: &Node, type_: &str) -> bool {
    (n.status.as_ref().and_then(|s| s.conditions.as_ref()))
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// `taints` with the NoSchedule taint `key` present or not.
fn set_no_schedule(taints: &mut Vec<Taint>, key: &str, present: bool) {
    let has = taints.iter().any(|t| t.key == key);
    if present && !has {
        taints.push(Taint {
            key: key.into(),
            effect: "NoSchedule".into(),
            value: None,
            time_added: None,
        });
    } else if !present && has {
        taints.retain(|t| t.key != key);
    }
}

/// What a node's health calls for, `seen` the time (by this controller's clock) it last showed
/// life: marking it Unknown, and its taints.
fn node_steps(n: &Node, seen: i64, now: Timestamp) -> Vec<Step> {
    let name = n.name_any();
    let ready = ready_status(n);
    let age = now.as_second() - seen;
    let grace = if ready.is_some() {
        GRACE_SECS
    } else {
        STARTUP_GRACE_SECS
    };
    let mut steps = Vec::new();
    let want_key = if age > grace {
        if ready.as_deref() != Some("Unknown") {
            steps.push(Step::MarkUnknown {
                node: name.clone(),
                conditions: unknown_conditions(now),
            });
        }
        Some(UNREACHABLE)
    } else {
        match ready.as_deref() {
            Some("False") => Some(NOT_READY),
            Some("True") => None,
            // Never reported yet and still within the grace period: leave it be.
            _ => return steps,
        }
    };
    let before: Vec<Taint> = (n.spec.as_ref())
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut taints = before.clone();
    taints.retain(|t| {
        !((t.key == UNREACHABLE || t.key == NOT_READY) && Some(t.key.as_str()) != want_key)
    });
    if let Some(key) = want_key {
        for effect in ["NoSchedule", "NoExecute"] {
            if !taints.iter().any(|t| t.key == key && t.effect == effect) {
                taints.push(Taint {
                    key: key.into(),
                    effect: effect.into(),
                    value: None,
                    time_added: (effect == "NoExecute").then_some(Time(now)),
                });
            }
        }
    }
    for (condition, key) in CONDITION_TAINTS {
        set_no_schedule(&mut taints, key, condition_true(n, condition));
    }
    let unschedulable = n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    set_no_schedule(&mut taints, UNSCHEDULABLE, unschedulable);
    if taints != before {
        steps.push(Step::Taint { node: name, taints });
    }
    steps
}

/// Whether a NoExecute taint of `node` evicts `p` now: one it does not tolerate, or one whose
/// tolerationSeconds have run out since the taint was added.
fn evicts(p: &Pod, node: &Node, now: Timestamp) -> bool {
    let tols = (p.spec.as_ref())
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let now = now.as_second();
    (node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten())
    .filter(|t| t.effect == "NoExecute")
    .any(|t| match toleration_of(&tols, t) {
        None => true,
        Some(None) => false,
        Some(Some(secs)) => {
            t.time_added
                .as_ref()
                .map(|a| a.0.as_second())
                .unwrap_or(now)
                + secs
                <= now
        }
    })
}

fn pod_key(p: &Pod) -> (String, String) {
    (p.namespace().unwrap_or_default(), p.name_any())
}

/// The step that marks `p` not Ready, if it is Ready (or Unknown): upstream's
/// `MarkPodsNotReady` sets only the Ready condition, keeping its reason and message, and
/// leaves pods without one alone.
fn mark_not_ready(p: &Pod, now: Timestamp) -> Option<Step> {
    let ready = (p.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))?;
    if ready.status == "False" {
        return None;
    }
    let (namespace, name) = pod_key(p);
    // Conditional: a status the kubelet wrote since this pod was read must not be overwritten
    // with what was true before; a conflict is tried again on the next pass.
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": p.resource_version()},
        "status": {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now.to_string()}]},
    });
    Some(Step::MarkPodNotReady {
        namespace,
        name,
        patch,
    })
}

/// Terminated pods beyond `threshold`, oldest first (upstream's pod GC).
fn terminated_gc(pods: &[&Pod], threshold: usize) -> Vec<Step> {
    let mut done: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| super::util::is_terminal(p) && p.metadata.deletion_timestamp.is_none())
        .collect();
    if done.len() <= threshold {
        return Vec::new();
    }
    done.sort_by_key(|p| {
        (p.metadata.creation_timestamp.as_ref())
            .map(|t| t.0.as_second())
            .unwrap_or(0)
    });
    done[..done.len() - threshold]
        .iter()
        .map(|p| {
            let (namespace, name) = pod_key(p);
            Step::ForceDelete { namespace, name }
        })
        .collect()
}

/// Decides one pass over the nodes (as listed, with when each last showed life, `Probes`) and
/// the pods (read before the nodes, so a pod bound to a node made since is not taken for an
/// orphan) at `now`.
fn plan(
    nodes: &[Node],
    seen: &HashMap<String, i64>,
    pods: &[&Pod],
    now: Timestamp,
    gc_threshold: usize,
) -> Vec<Step> {
    let mut steps: Vec<Step> = (nodes.iter())
        .flat_map(|n| {
            let at = seen.get(&n.name_any()).copied();
            node_steps(n, at.unwrap_or(now.as_second()), now)
        })
        .collect();
    // Nodes not Ready, those marked Unknown by this pass too: their pods are not Ready either.
    let marked_now = steps.iter().filter_map(|s| match s {
        Step::MarkUnknown { node, .. } => Some(node.clone()),
        _ => None,
    });
    let not_ready: HashSet<String> = (nodes.iter())
        .filter(|n| ready_status(n).is_some_and(|s| s != "True"))
        .map(|n| n.name_any())
        .chain(marked_now)
        .collect();
    steps.extend(terminated_gc(pods, gc_threshold));
    // Eviction follows the taints as listed; new ones count from the next pass.
    let by_name: HashMap<String, &Node> = nodes.iter().map(|n| (n.name_any(), n)).collect();
    for p in pods {
        let Some(node) = (p.spec.as_ref())
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        if not_ready.contains(&node) {
            steps.extend(mark_not_ready(p, now));
        }
        let (namespace, name) = pod_key(p);
        match by_name.get(&node) {
            None => steps.push(Step::ForceDelete { namespace, name }),
            Some(n) if p.metadata.deletion_timestamp.is_none() && evicts(p, n, now) => {
                steps.push(Step::Evict { namespace, name })
            }
            Some(_) => {}
        }
    }
    steps
}

/// Performs `steps`; `nodes` and `pods` are what they were planned from (for events).
async fn apply(ctx: &Context, steps: Vec<Step>, nodes: &[Node], pods: &[&Pod]) {
    let nodes_api: Api<Node> = Api::all(ctx.client.clone());
    let node = |name: &str| nodes.iter().find(|n| n.name_any() == name);
    let pod = |ns: &str, name: &str| {
        pods.iter()
            .find(|p| pod_key(p) == (ns.to_string(), name.to_string()))
    };
    for step in steps {
        match step {
            Step::MarkUnknown {
                node: name,
                conditions,
            } => {
                let patch = serde_json::json!({"status": {"conditions": conditions}});
                let _ = nodes_api
                    .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await;
                if let Some(n) = node(&name) {
                    let message = format!("Node {name} status is now: NodeNotReady");
                    ctx.event(n, false, "NodeNotReady", message).await;
                }
            }
            Step::Taint { node: name, taints } => {
                let patch = serde_json::json!({"spec": {"taints": taints}});
                let _ = nodes_api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
            }
            Step::MarkPodNotReady {
                namespace,
                name,
                patch,
            } => {
                let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
                let params = PatchParams::default();
                match api
                    .patch_status(&name, &params, &Patch::Strategic(&patch))
                    .await
                {
                    Ok(_) => {
                        if let Some(p) = pod(&namespace, &name) {
                            let message = "Node is not ready".to_string();
                            ctx.event(*p, true, "NodeNotReady", message).await;
                        }
                    }
                    Err(e) => tracing::debug!("marking pod {namespace}/{name} not Ready: {e}"),
                }
            }
            Step::ForceDelete { namespace, name } => {
                let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
                let _ = api
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
            }
            Step::Evict { namespace, name } => {
                if let Some(p) = pod(&namespace, &name) {
                    let message = format!("Marking for deletion Pod {namespace}/{name}");
                    ctx.event(*p, false, "TaintManagerEviction", message).await;
                }
                let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
                let _ = api.delete(&name, &DeleteParams::default()).await;
            }
        }
    }
}

/// `reader` lists the node leases: upstream reads them from the controller manager's shared
/// informer, and node-controller's own role has no rule for them.
async fn sync(
    ctx: &Context,
    reader: &kube::Client,
    pod_cache: &Store<Pod>,
    probes: &mut Probes,
) -> kube::Result<()> {
    // Pods are read before the nodes are listed, so a pod bound to a node made since is not
    // taken for an orphan.
    let pods = pod_cache.state();
    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let leases: HashMap<String, Lease> =
        Api::<Lease>::namespaced(reader.clone(), "kube-node-lease")
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|l| (l.name_any(), l))
            .collect();
    let pods: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    let now = Timestamp::now();
    let seen = probes.observe(&nodes, &leases, now.as_second());
    let steps = plan(&nodes, &seen, &pods, now, TERMINATED_POD_THRESHOLD);
    apply(ctx, steps, &nodes, &pods).await;
    Ok(())
}

/// Terminated pods beyond this many are deleted, oldest first (upstream's default).
const TERMINATED_POD_THRESHOLD: usize = 12_500;

pub async fn run(ctx: Arc<Context>, reader: kube::Client, informers: Arc<Informers>) {
    informers.pods.synced().await;
    let pods = informers.pods.store();
    let mut probes = Probes::default();
    loop {
        if let Err(e) = sync(&ctx, &reader, &pods, &mut probes).await {
            tracing::debug!("node lifecycle: {e}");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // the tables' rows
mod tests {
    use super::*;
    use crate::controllers::util::testing::{Table, ago, merged, now, typed};
    use serde_json::json;

    /// Node `name`, created a day ago, Ready with a heartbeat 10 s ago, plus `patch`.
    fn node(name: &str, patch: Value) -> Node {
        let base = json!({
            "metadata": {"name": name, "creationTimestamp": ago(86_400)},
            "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": ago(10)}]},
        });
        typed(merged(base, patch))
    }

    /// Conditions: Ready is `ready` with a heartbeat `age` seconds ago, plus `others`.
    fn conditions(ready: &str, age: i64, others: Value) -> Value {
        let mut all =
            vec![json!({"type": "Ready", "status": ready, "lastHeartbeatTime": ago(age)})];
        all.extend(others.as_array().cloned().unwrap_or_default());
        json!({"status": {"conditions": all}})
    }

    fn taints(t: Value) -> Value {
        json!({"spec": {"taints": t}})
    }

    fn lease(name: &str, renewed_ago: i64) -> Lease {
        typed(
            json!({"metadata": {"name": name, "namespace": "kube-node-lease"}, "spec": {"renewTime": ago(renewed_ago)}}),
        )
    }

    /// Whether the node is marked Unknown, and its new taints as "key:effect" (None: unchanged).
    fn node_changes(steps: &[Step]) -> (bool, Option<Vec<String>>) {
        let marked = steps.iter().any(|s| matches!(s, Step::MarkUnknown { .. }));
        let taints = steps.iter().find_map(|s| match s {
            Step::Taint { taints, .. } => Some(
                taints
                    .iter()
                    .map(|t| {
                        format!(
                            "{}:{}",
                            t.key.trim_start_matches("node.kubernetes.io/"),
                            t.effect
                        )
                    })
                    .collect(),
            ),
            _ => None,
        });
        (marked, taints)
    }

    #[test]
    fn node_health_and_taints() {
        let unreachable = || vec!["unreachable:NoSchedule", "unreachable:NoExecute"];
        let not_ready = || vec!["not-ready:NoSchedule", "not-ready:NoExecute"];
        let pressure = |t: &str, s: &str| json!([{"type": t, "status": s}]);
        let never_reported = |age: i64| json!({"metadata": {"creationTimestamp": ago(age)}, "status": {"conditions": null}});
        // (case, node patch, last showed life seconds ago (`Probes`), (marked Unknown, taints))
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, i64, (bool, Option<Vec<&str>>))> = vec![
            ("healthy", json!({}), 10, (false, None)),
            ("NotReady: not-ready taints", conditions("False", 5, json!([])), 5, (false, Some(not_ready()))),
            // The grace period is 40 s (1.28's node-monitor-grace-period).
            ("silent for 35 s: still within the grace period", json!({}), 35, (false, None)),
            ("silent for 45 s: Unknown and unreachable", json!({}), 45, (true, Some(unreachable()))),
            ("silent for 60 s: Unknown and unreachable", json!({}), 60, (true, Some(unreachable()))),
            ("already Unknown: not marked again", conditions("Unknown", 600, json!([])), 600, (false, Some(unreachable()))),
            ("already tainted: nothing to change", merged(conditions("Unknown", 600, json!([])), taints(json!([{"key": UNREACHABLE, "effect": "NoSchedule"}, {"key": UNREACHABLE, "effect": "NoExecute"}]))), 600, (false, None)),
            ("Ready again: the taints go", taints(json!([{"key": UNREACHABLE, "effect": "NoSchedule"}, {"key": UNREACHABLE, "effect": "NoExecute"}])), 5, (false, Some(vec![]))),
            ("NotReady, then silent: unreachable replaces not-ready",
                merged(conditions("False", 600, json!([])), taints(json!([{"key": NOT_READY, "effect": "NoSchedule"}, {"key": NOT_READY, "effect": "NoExecute"}]))), 600, (true, Some(unreachable()))),
            ("never reported, 30 s old: left alone", never_reported(30), 30, (false, None)),
            // Upstream gives a new node node-startup-grace-period (60 s); kinglet gave it 40 s.
            ("never reported, 55 s old: startup grace", never_reported(55), 55, (false, None)),
            ("never reported, 70 s old: Unknown", never_reported(70), 70, (true, Some(unreachable()))),
            ("memory pressure", conditions("True", 5, pressure("MemoryPressure", "True")), 5, (false, Some(vec!["memory-pressure:NoSchedule"]))),
            ("disk pressure", conditions("True", 5, pressure("DiskPressure", "True")), 5, (false, Some(vec!["disk-pressure:NoSchedule"]))),
            ("PID pressure", conditions("True", 5, pressure("PIDPressure", "True")), 5, (false, Some(vec!["pid-pressure:NoSchedule"]))),
            ("pressure gone: taint gone", merged(conditions("True", 5, pressure("MemoryPressure", "False")), taints(json!([{"key": "node.kubernetes.io/memory-pressure", "effect": "NoSchedule"}]))), 5, (false, Some(vec![]))),
            // Upstream's TaintNodesByCondition also covers these two; kinglet did not.
            ("network unavailable", conditions("True", 5, pressure("NetworkUnavailable", "True")), 5, (false, Some(vec!["network-unavailable:NoSchedule"]))),
            ("cordoned", json!({"spec": {"unschedulable": true}}), 5, (false, Some(vec!["unschedulable:NoSchedule"]))),
            ("uncordoned", taints(json!([{"key": UNSCHEDULABLE, "effect": "NoSchedule"}])), 5, (false, Some(vec![]))),
            ("other taints stay", merged(conditions("False", 5, json!([])), taints(json!([{"key": "dedicated", "effect": "NoSchedule"}]))), 5,
                (false, Some(vec!["dedicated:NoSchedule", "not-ready:NoSchedule", "not-ready:NoExecute"]))),
        ];
        let mut table = Table::default();
        for (case, patch, silent, (marked, want)) in cases {
            let n = node("n1", patch);
            let seen = now().as_second() - silent;
            let got = node_changes(&node_steps(&n, seen, now()));
            let want = want.map(|v| v.iter().map(|s| s.to_string()).collect());
            table.check(case, got, (marked, want));
        }
        table.done();
    }

    #[test]
    fn nodes_are_timed_by_the_controllers_clock_not_theirs() {
        let t0 = now().as_second();
        // n1's clock is 10 minutes behind: its lease and heartbeat look 600 s old when
        // written; `renewal`: seconds after the first renewal, by its clock.
        let slow = |renewal: i64| {
            let n = node("n1", conditions("True", 600 - renewal, json!([])));
            (
                n,
                HashMap::from([("n1".to_string(), lease("n1", 600 - renewal))]),
            )
        };
        let never_reported = node(
            "n2",
            json!({"metadata": {"creationTimestamp": ago(50)}, "status": {"conditions": null}}),
        );
        let mut probes = Probes::default();
        let steps = |n: &Node, seen: &HashMap<String, i64>, at: i64| {
            let now = Timestamp::from_second(at).unwrap();
            node_changes(&plan(std::slice::from_ref(n), seen, &[], now, 100))
        };
        // (case, n1's renewal, pass at, n1 seen at, marked Unknown)
        #[rustfmt::skip]
        let passes: Vec<(&str, i64, i64, i64, bool)> = vec![
            // A node first seen (the controller starts) gets a whole grace period.
            ("first seen: alive now, whatever its clock says", 0, t0, t0, false),
            ("nothing new for 30 s", 0, t0 + 30, t0, false),
            ("a new lease renewal, however old it looks, is life", 30, t0 + 35, t0 + 35, false),
            ("nothing new for 40 s: still within the grace period", 30, t0 + 75, t0 + 35, false),
            ("nothing new for 45 s: Unknown", 30, t0 + 80, t0 + 35, true),
        ];
        let mut table = Table::default();
        for (case, renewal, at, want_seen, want_unknown) in passes {
            let (n1, leases) = slow(renewal);
            let seen = probes.observe(&[n1.clone(), never_reported.clone()], &leases, at);
            table.check(case, seen["n1"], want_seen);
            table.check(case, steps(&n1, &seen, at).0, want_unknown);
            // A node that never reported counts from its creation, by the API server's clock.
            table.check(case, seen["n2"], t0 - 50);
        }
        table.done();
        // A deleted node is forgotten: seen again, it starts over.
        probes.observe(&[], &HashMap::new(), t0 + 100);
        let (n1, leases) = slow(30);
        assert_eq!(probes.observe(&[n1], &leases, t0 + 200)["n1"], t0 + 200);
    }

    /// Pod `name` on node n1 with `tolerations`, plus `patch`.
    fn pod(name: &str, tolerations: Value, patch: Value) -> Pod {
        let base = json!({
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": ago(3600)},
            "spec": {"nodeName": "n1", "tolerations": tolerations, "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running"},
        });
        typed(merged(base, patch))
    }

    fn describe(steps: &[Step]) -> Vec<String> {
        (steps.iter())
            .filter_map(|s| match s {
                Step::ForceDelete { name, .. } => Some(format!("force delete {name}")),
                Step::Evict { name, .. } => Some(format!("evict {name}")),
                Step::MarkPodNotReady { name, .. } => Some(format!("mark {name} not ready")),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn taint_eviction() {
        let no_execute = |key: &str, added: i64| json!([{"key": key, "value": "v", "effect": "NoExecute", "timeAdded": ago(added)}]);
        let tol = |t: Value| json!([t]);
        // (case, taints of n1, tolerations, pod patch, evicted)
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, Value, Value, bool)> = vec![
            ("no taints", json!([]), json!([]), json!({}), false),
            ("NoExecute not tolerated: at once", no_execute("k", 1), json!([]), json!({}), true),
            ("NoSchedule does not evict", json!([{"key": "k", "effect": "NoSchedule"}]), json!([]), json!({}), false),
            ("PreferNoSchedule does not evict", json!([{"key": "k", "effect": "PreferNoSchedule"}]), json!([]), json!({}), false),
            ("tolerated forever", no_execute("k", 9999), tol(json!({"key": "k", "operator": "Exists"})), json!({}), false),
            ("tolerated for 300 s, tainted 100 s ago", no_execute("k", 100), tol(json!({"key": "k", "operator": "Exists", "tolerationSeconds": 300})), json!({}), false),
            ("tolerated for 300 s, tainted 400 s ago", no_execute("k", 400), tol(json!({"key": "k", "operator": "Exists", "tolerationSeconds": 300})), json!({}), true),
            ("tolerationSeconds 0", no_execute("k", 1), tol(json!({"key": "k", "operator": "Exists", "tolerationSeconds": 0})), json!({}), true),
            ("Equal with the value", no_execute("k", 1), tol(json!({"key": "k", "operator": "Equal", "value": "v"})), json!({}), false),
            ("Equal by default", no_execute("k", 1), tol(json!({"key": "k", "value": "v"})), json!({}), false),
            ("Equal with another value", no_execute("k", 1), tol(json!({"key": "k", "value": "w"})), json!({}), true),
            // Upstream: an empty key with Exists tolerates every taint; kinglet matched none.
            ("Exists with an empty key tolerates all", no_execute("k", 1), tol(json!({"key": "", "operator": "Exists"})), json!({}), false),
            ("Exists without a key tolerates all", no_execute("k", 1), tol(json!({"operator": "Exists"})), json!({}), false),
            ("a toleration for NoSchedule only", no_execute("k", 1), tol(json!({"key": "k", "operator": "Exists", "effect": "NoSchedule"})), json!({}), true),
            ("an unknown operator tolerates nothing", no_execute("k", 1), tol(json!({"key": "k", "operator": "Gt", "value": "v"})), json!({}), true),
            ("one of two taints not tolerated", json!([{"key": "a", "effect": "NoExecute"}, {"key": "b", "effect": "NoExecute"}]), tol(json!({"key": "a", "operator": "Exists"})), json!({}), true),
            ("already terminating: left alone", no_execute("k", 1), json!([]), json!({"metadata": {"deletionTimestamp": ago(1)}}), false),
            ("not bound: left alone", no_execute("k", 1), json!([]), json!({"spec": {"nodeName": null}}), false),
        ];
        let mut table = Table::default();
        for (case, node_taints, tols, patch, want) in cases {
            let nodes = [node("n1", taints(node_taints))];
            let p = pod("p", tols, patch);
            let got = describe(&plan(&nodes, &HashMap::new(), &[&p], now(), 100));
            let want: Vec<String> = if want { vec!["evict p".into()] } else { vec![] };
            table.check(case, got, want);
        }
        table.done();
    }

    #[test]
    fn pods_on_a_node_that_is_not_ready_are_marked_not_ready() {
        let ready = |status: &str| {
            json!({"status": {"conditions": [
                {"type": "Ready", "status": status, "reason": "r", "message": "m"},
                {"type": "ContainersReady", "status": status},
            ]}})
        };
        let forever = json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}]);
        let unknown = || conditions("Unknown", 600, json!([]));
        // (case, n1 patch, n1 last showed life seconds ago, pod patch, steps for the pod)
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, i64, Value, Vec<&str>)> = vec![
            ("node Ready: left alone", json!({}), 10, ready("True"), vec![]),
            ("node Unknown: marked", unknown(), 600, ready("True"), vec!["mark p not ready"]),
            ("node NotReady: marked", conditions("False", 5, json!([])), 5, ready("True"), vec!["mark p not ready"]),
            // Upstream marks the pods in the pass that finds the node silent.
            ("node going Unknown in this pass: marked at once", json!({}), 45, ready("True"), vec!["mark p not ready"]),
            ("node silent within the grace period: left alone", json!({}), 35, ready("True"), vec![]),
            ("already not Ready: not marked again", unknown(), 600, ready("False"), vec![]),
            ("Ready Unknown: marked", unknown(), 600, ready("Unknown"), vec!["mark p not ready"]),
            ("no Ready condition (never started): left alone", unknown(), 600, json!({}), vec![]),
            ("never reported node: left alone", json!({"status": {"conditions": null}}), 30, ready("True"), vec![]),
            ("terminating: marked too", unknown(), 600, merged(ready("True"), json!({"metadata": {"deletionTimestamp": ago(1)}})), vec!["mark p not ready"]),
            ("on another node: left alone", unknown(), 600, merged(ready("True"), json!({"spec": {"nodeName": "n2"}})), vec![]),
        ];
        let mut table = Table::default();
        for (case, node_patch, silent, pod_patch, want) in cases {
            let nodes = [node("n1", node_patch), node("n2", json!({}))];
            let seen = HashMap::from([("n1".to_string(), now().as_second() - silent)]);
            let p = pod("p", forever.clone(), pod_patch);
            let got = describe(&plan(&nodes, &seen, &[&p], now(), 100));
            table.check(case, got, want.iter().map(|s| s.to_string()).collect());
        }
        table.done();
    }

    #[test]
    fn marking_a_pod_not_ready_patches_its_ready_condition_only_if_unchanged() {
        let p = pod(
            "p",
            json!([]),
            json!({"metadata": {"resourceVersion": "42"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        );
        let Some(Step::MarkPodNotReady { patch, .. }) = mark_not_ready(&p, now()) else {
            panic!("not marked");
        };
        let want = json!({
            "metadata": {"resourceVersion": "42"},
            "status": {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now().to_string()}]},
        });
        assert_eq!(patch, want);
    }

    #[test]
    fn pod_garbage_collection() {
        let nodes = [node("n1", json!({}))];
        let done = |name: &str, age: i64| {
            pod(
                name,
                json!([]),
                json!({"metadata": {"creationTimestamp": ago(age)}, "status": {"phase": "Succeeded"}}),
            )
        };
        let pods = [
            pod("orphan", json!([]), json!({"spec": {"nodeName": "gone"}})),
            pod(
                "terminating-orphan",
                json!([]),
                json!({"spec": {"nodeName": "gone"}, "metadata": {"deletionTimestamp": ago(1)}}),
            ),
            done("old", 300),
            done("older", 400),
            done("new", 100),
            pod("running", json!([]), json!({})),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        // Over a threshold of 1 terminated pod, the two oldest go; pods of vanished nodes go
        // (terminating ones too), all without grace.
        let got = describe(&plan(&nodes, &HashMap::new(), &refs, now(), 1));
        let want = [
            "force delete older",
            "force delete old",
            "force delete orphan",
            "force delete terminating-orphan",
        ];
        assert_eq!(got, want);
        assert!(
            describe(&plan(&nodes, &HashMap::new(), &refs, now(), 3))
                .iter()
                .all(|s| s.contains("orphan"))
        );
    }
}
