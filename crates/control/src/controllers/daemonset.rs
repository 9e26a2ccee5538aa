//! DaemonSet controller: one pod per eligible node (pinned by node affinity, bound by the
//! scheduler), none elsewhere, with the upstream default tolerations, a rolling update within
//! `maxUnavailable`, ControllerRevisions for `kubectl rollout history`, and status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use super::deployment::template_hash;
use super::informers::Informers;
use super::util::{
    Context, controller_ref, controller_uid, ensure_revision, is_available, is_ready, merge_status,
};
use crate::scheduler::filters::node_accepts;

pub const REVISION_HASH: &str = "controller-revision-hash";

struct DsCtx {
    ctx: Arc<Context>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    /// Pods created but not yet seen in the cache, by (DaemonSet uid, node): upstream's
    /// expectations. A reconcile in between (a node's heartbeat) must not create a second one.
    expected: std::sync::Mutex<std::collections::HashMap<(String, String), std::time::Instant>>,
}

/// How long a created pod is waited for in the cache before the node counts as empty again
/// (upstream's expectations expire after 5 minutes; a watch event takes milliseconds).
const EXPECTATION_TTL: Duration = Duration::from_secs(30);

/// Drops the `Create` steps for nodes whose pod was just created and not yet seen, and
/// forgets expectations that the cache (`owned`) now meets or that expired.
fn hold_expected_creates(
    expected: &mut std::collections::HashMap<(String, String), std::time::Instant>,
    uid: &str,
    owned: &[&Pod],
    plan: &mut Plan,
) {
    expected.retain(|(ds, node), at| {
        ds != uid
            || (at.elapsed() < EXPECTATION_TTL
                && !owned
                    .iter()
                    .any(|p| target_node(p).as_deref() == Some(node)))
    });
    let before = plan.steps.len();
    plan.steps.retain(|s| match s {
        Step::Create(node) => !expected.contains_key(&(uid.to_string(), node.clone())),
        _ => true,
    });
    if plan.steps.len() != before {
        // Looked at again once the cache has caught up (or the expectation expired).
        plan.requeue = Some(
            plan.requeue
                .map_or(Duration::from_secs(1), |r| r.min(Duration::from_secs(1))),
        );
    }
}

fn tol(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        value: None,
        toleration_seconds: None,
    }
}

/// The pod a DaemonSet runs on `node` (before the scheduler binds it).
fn pod_for(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let tmpl = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut meta = tmpl.metadata.unwrap_or_default();
    meta.generate_name = Some(format!("{}-", ds.name_any()));
    meta.namespace = ds.namespace();
    meta.owner_references = Some(vec![controller_ref(ds)]);
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(REVISION_HASH.into(), hash.into());
    let mut spec = tmpl.spec.unwrap_or_default();
    let affinity = serde_json::json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}});
    spec.affinity = serde_json::from_value(affinity).ok();
    let tols = spec.tolerations.get_or_insert_with(Vec::new);
    let mut defaults = vec![
        tol("node.kubernetes.io/not-ready", "NoExecute"),
        tol("node.kubernetes.io/unreachable", "NoExecute"),
        tol("node.kubernetes.io/disk-pressure", "NoSchedule"),
        tol("node.kubernetes.io/memory-pressure", "NoSchedule"),
        tol("node.kubernetes.io/pid-pressure", "NoSchedule"),
        tol("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        defaults.push(tol("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    for d in defaults {
        if !tols.iter().any(|t| t.key == d.key && t.effect == d.effect) {
            tols.push(d);
        }
    }
    Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    }
}

/// The node a DaemonSet pod belongs to: where it is bound, else its affinity target.
fn target_node(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    spec.node_name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            spec.affinity
                .as_ref()?
                .node_affinity
                .as_ref()?
                .required_during_scheduling_ignored_during_execution
                .as_ref()?
                .node_selector_terms
                .first()?
                .match_fields
                .as_ref()?
                .first()?
                .values
                .as_ref()?
                .first()
                .cloned()
        })
}

/// One API action of a DaemonSet reconcile, in the order `apply` performs them.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// Create the DaemonSet's pod for this node.
    Create(String),
    /// Delete this pod.
    Delete(String),
    Status(Box<DaemonSetStatus>),
}

#[derive(Debug)]
struct Plan {
    /// The template hash to record as a ControllerRevision first; none for a DaemonSet being
    /// deleted.
    revision: Option<String>,
    steps: Vec<Step>,
    requeue: Option<Duration>,
}

/// `node` as it is for pods already there: NoSchedule taints and unschedulable keep new pods
/// away but do not evict.
fn for_running_pods(node: &Node) -> Node {
    let mut node = node.clone();
    if let Some(spec) = node.spec.as_mut() {
        spec.unschedulable = None;
        if let Some(taints) = spec.taints.as_mut() {
            taints.retain(|t| t.effect != "NoSchedule");
        }
    }
    node
}

/// Upstream's `NodeShouldRunDaemonPod`: whether a new pod belongs on `node`, and whether an
/// existing one may stay.
fn should_run(ds: &DaemonSet, node: &Node, hash: &str) -> (bool, bool) {
    let pod = pod_for(ds, &node.name_any(), hash);
    let run = node_accepts(&pod, Arc::new(node.clone()));
    let stay = run || node_accepts(&pod, Arc::new(for_running_pods(node)));
    (run, stay)
}

fn is_terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

/// Upstream's `podByCreationTimestampAndPhase`: bound pods first, then the oldest (by name
/// when equal).
fn oldest_first(pods: &mut [&Pod]) {
    pods.sort_by(|a, b| {
        let unbound = |p: &Pod| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_none_or(str::is_empty)
        };
        let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (unbound(a), created(a), a.name_any()).cmp(&(unbound(b), created(b), b.name_any()))
    });
}

fn is_updated(p: &Pod, hash: &str) -> bool {
    p.labels().get(REVISION_HASH).map(String::as_str) == Some(hash)
}

/// A node and what the DaemonSet has and wants there.
struct Placement<'a> {
    node: &'a Node,
    run: bool,
    stay: bool,
    /// Its pods of this DaemonSet, the oldest first (terminating ones too).
    pods: Vec<&'a Pod>,
}

/// Upstream's `podsShouldBeOnNode`: a pod where one should run and none is (a terminating one
/// counts); only the oldest where one may stay; none where none may.
fn manage(p: &Placement, steps: &mut Vec<Step>) {
    let live = || p.pods.iter().filter(|pod| !is_terminating(pod));
    if p.run && p.pods.is_empty() {
        steps.push(Step::Create(p.node.name_any()));
    } else if p.stay {
        steps.extend(live().skip(1).map(|pod| Step::Delete(pod.name_any())));
    } else {
        steps.extend(live().map(|pod| Step::Delete(pod.name_any())));
    }
}

/// Upstream's `rollingUpdate` without surge: old pods that are not available are replaced at
/// once; available ones while fewer than maxUnavailable nodes are unavailable.
fn rolling_update(
    placements: &[Placement],
    max_unavailable: i32,
    available: impl Fn(&Pod) -> bool,
    hash: &str,
) -> Vec<Step> {
    let mut unavailable = 0;
    let (mut replace, mut candidates) = (Vec::new(), Vec::new());
    for p in placements.iter().filter(|p| !p.pods.is_empty()) {
        let live: Vec<&&Pod> = p.pods.iter().filter(|pod| !is_terminating(pod)).collect();
        let new: Vec<&&&Pod> = live.iter().filter(|pod| is_updated(pod, hash)).collect();
        let old: Vec<&&&Pod> = live.iter().filter(|pod| !is_updated(pod, hash)).collect();
        match (new.as_slice(), old.as_slice()) {
            ([new], []) if available(new) => {}
            ([], [old]) if !available(old) => replace.push(old.name_any()),
            ([], [old]) => candidates.push(old.name_any()),
            // Missing, doubled or mid-replacement: the manage step handles it; unavailable.
            _ => unavailable += 1,
        }
    }
    let room = (max_unavailable - unavailable).clamp(0, candidates.len() as i32) as usize;
    replace
        .into_iter()
        .chain(candidates.into_iter().take(room))
        .map(Step::Delete)
        .collect()
}

/// maxUnavailable of a RollingUpdate, rounded up against the nodes that should run a pod;
/// at least 1 (upstream, without surge).
fn max_unavailable(ds: &DaemonSet, desired: usize) -> i32 {
    let value = (ds.spec.as_ref())
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.as_ref());
    match value {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(p)) => {
            let pct = p.trim_end_matches('%').parse::<f64>().unwrap_or(0.0);
            (desired as f64 * pct / 100.0).ceil() as i32
        }
        None => 1,
    }
    .max(1)
}

/// Decides one reconcile of `ds` from its pods (`owned`) and the nodes, at `now`.
fn plan(ds: &DaemonSet, owned: &[&Pod], nodes: &[&Node], now: Timestamp) -> Plan {
    if ds.metadata.deletion_timestamp.is_some() {
        return Plan {
            revision: None,
            steps: Vec::new(),
            requeue: None,
        };
    }
    let spec = ds.spec.clone().unwrap_or_default();
    let hash = template_hash(
        &spec.template,
        ds.status.as_ref().and_then(|s| s.collision_count),
    );
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in owned {
        if let Some(n) = target_node(p) {
            by_node.entry(n).or_default().push(p);
        }
    }
    let mut placements: Vec<Placement> = nodes
        .iter()
        .map(|node| {
            let (run, stay) = should_run(ds, node, &hash);
            let mut pods = by_node.remove(&node.name_any()).unwrap_or_default();
            oldest_first(&mut pods);
            Placement {
                node,
                run,
                stay,
                pods,
            }
        })
        .collect();
    placements.sort_by_key(|p| p.node.name_any());
    let mut steps = Vec::new();
    for p in &placements {
        manage(p, &mut steps);
    }
    // Pods of nodes that no longer exist.
    for pods in by_node.values() {
        steps.extend(
            (pods.iter().filter(|p| !is_terminating(p))).map(|p| Step::Delete(p.name_any())),
        );
    }
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let available = |p: &Pod| is_available(p, min_ready, now);
    let rolling =
        (spec.update_strategy.as_ref()).is_none_or(|u| u.type_.as_deref() != Some("OnDelete"));
    // Upstream updates only once the creates and deletes above have been seen (expectations).
    if rolling && steps.is_empty() {
        let desired = placements.iter().filter(|p| p.run).count();
        steps = rolling_update(&placements, max_unavailable(ds, desired), available, &hash);
    }
    let status = status(ds, &placements, available, &hash);
    let requeue = (status.number_unavailable.unwrap_or(0) > 0).then(|| Duration::from_secs(2));
    if ds.status.as_ref() != Some(&status) {
        steps.push(Step::Status(Box::new(status)));
    }
    Plan {
        revision: Some(hash),
        steps,
        requeue,
    }
}

/// Upstream's `updateDaemonSetStatus`: nodes that should run a pod, and of those the ones with
/// a pod, judged by their oldest pod; nodes that should not but have one are misscheduled.
fn status(
    ds: &DaemonSet,
    placements: &[Placement],
    available: impl Fn(&Pod) -> bool,
    hash: &str,
) -> DaemonSetStatus {
    let wanted: Vec<&Placement> = placements.iter().filter(|p| p.run).collect();
    let current: Vec<&Pod> = wanted
        .iter()
        .filter_map(|p| p.pods.first().copied())
        .collect();
    let count = |f: &dyn Fn(&Pod) -> bool| current.iter().filter(|p| f(p)).count() as i32;
    let number_available = count(&|p| is_ready(p) && available(p));
    DaemonSetStatus {
        desired_number_scheduled: wanted.len() as i32,
        current_number_scheduled: current.len() as i32,
        number_misscheduled: placements
            .iter()
            .filter(|p| !p.run && !p.pods.is_empty())
            .count() as i32,
        number_ready: count(&is_ready),
        number_available: Some(number_available),
        number_unavailable: Some(wanted.len() as i32 - number_available).filter(|n| *n > 0),
        updated_number_scheduled: Some(count(&|p| is_updated(p, hash))),
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: None,
    }
}

/// Performs `plan` for `ds`.
async fn apply(ctx: &Context, ds: &DaemonSet, plan: Plan) -> Result<Action, kube::Error> {
    let Some(hash) = plan.revision else {
        return Ok(Action::await_change());
    };
    let template = ds.spec.clone().unwrap_or_default().template;
    ensure_revision(ctx, ds, &template, &hash).await?;
    let pods_api: Api<Pod> =
        Api::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default());
    for step in plan.steps {
        match step {
            Step::Create(node) => match pods_api
                .create(&PostParams::default(), &pod_for(ds, &node, &hash))
                .await
            {
                Ok(p) => {
                    let message = format!("Created pod: {}", p.name_any());
                    ctx.event(ds, false, "SuccessfulCreate", message).await
                }
                Err(e) => {
                    let message = format!("Error creating: {e}");
                    ctx.event(ds, true, "FailedCreate", message).await
                }
            },
            Step::Delete(name) => {
                let _ = pods_api.delete(&name, &DeleteParams::default()).await;
            }
            Step::Status(status) => merge_status(&ctx.client, ds, &status).await?,
        }
    }
    Ok(plan
        .requeue
        .map(Action::requeue)
        .unwrap_or_else(Action::await_change))
}

async fn reconcile(ds: Arc<DaemonSet>, dc: Arc<DsCtx>) -> Result<Action, kube::Error> {
    let (ns, uid) = (ds.namespace(), ds.uid());
    let pods: Vec<Arc<Pod>> = (dc.pods.state().into_iter())
        .filter(|p| p.namespace() == ns && controller_uid(&p.metadata) == uid.as_deref())
        .collect();
    let owned: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    let nodes = dc.nodes.state();
    let nodes: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
    let mut plan = plan(&ds, &owned, &nodes, Timestamp::now());
    let uid = uid.unwrap_or_default();
    {
        let mut expected = dc.expected.lock().unwrap_or_else(|e| e.into_inner());
        hold_expected_creates(&mut expected, &uid, &owned, &mut plan);
        for step in &plan.steps {
            if let Step::Create(node) = step {
                expected.insert((uid.clone(), node.clone()), std::time::Instant::now());
            }
        }
    }
    apply(&dc.ctx, &ds, plan).await
}

pub async fn run(ctx: Arc<Context>, informers: Arc<Informers>) {
    let client = ctx.client.clone();
    informers.pods.synced().await;
    informers.nodes.synced().await;
    let dc = Arc::new(DsCtx {
        ctx,
        pods: informers.pods.store(),
        nodes: informers.nodes.store(),
        expected: Default::default(),
    });
    let controller = Controller::new(Api::<DaemonSet>::all(client), watcher::Config::default());
    let daemonsets = controller.store();
    controller
        .owns_shared_stream(informers.pods.subscribe())
        .watches_shared_stream(informers.nodes.subscribe(), move |_node| {
            daemonsets
                .state()
                .iter()
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(
            reconcile,
            |_, e, _| {
                tracing::debug!("daemonset: {e}");
                Action::requeue(Duration::from_secs(1))
            },
            dc,
        )
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // the tables' rows
mod tests {
    use super::*;
    use crate::controllers::util::testing::{Table, ago, merged, now, typed};
    use serde_json::{Value, json};

    fn template() -> Value {
        json!({"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "c", "image": "v2"}]}})
    }

    /// DaemonSet `agent` (uid ds1), plus `patch`.
    fn daemonset(patch: Value) -> DaemonSet {
        let base = json!({
            "metadata": {"name": "agent", "namespace": "default", "uid": "ds1"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": template()},
        });
        typed(merged(base, patch))
    }

    fn hash() -> String {
        template_hash(&typed(template()), None)
    }

    /// Node `name`, Ready, plus `patch`.
    fn node(name: &str, patch: Value) -> Node {
        let base = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                          "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        typed(merged(base, patch))
    }

    fn taint(key: &str, effect: &str) -> Value {
        json!({"spec": {"taints": [{"key": key, "effect": effect}]}})
    }

    /// Pod `name` of the current template on `node`, Running and Ready, created an hour ago,
    /// plus `patch`.
    fn pod(name: &str, node: &str, patch: Value) -> Pod {
        let base = json!({
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": ago(3600), "labels": {REVISION_HASH: hash()}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "v2"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": ago(3600)}]},
        });
        typed(merged(base, patch))
    }

    fn on(node: &str) -> Pod {
        pod(&format!("p-{node}"), node, json!({}))
    }
    fn old_on(node: &str) -> Pod {
        pod(
            &format!("p-{node}"),
            node,
            json!({"metadata": {"labels": {REVISION_HASH: "old"}}}),
        )
    }
    fn not_ready() -> Value {
        json!({"status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]}})
    }

    /// A pod the scheduler has not bound yet, pinned to `node` by affinity as `pod_for` does.
    fn unbound_on(node: &str) -> Pod {
        let affinity = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}});
        pod(
            "p",
            node,
            json!({"spec": {"nodeName": null, "affinity": affinity}}),
        )
    }

    fn three_nodes() -> Vec<Node> {
        vec![
            node("n1", json!({})),
            node("n2", json!({})),
            node("n3", json!({})),
        ]
    }

    fn actions(plan: &Plan) -> Vec<String> {
        (plan.steps.iter())
            .filter_map(|s| match s {
                Step::Create(n) => Some(format!("create {n}")),
                Step::Delete(p) => Some(format!("delete {p}")),
                Step::Status(_) => None,
            })
            .collect()
    }

    #[test]
    fn placement() {
        let selector = json!({"spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd"}}}}});
        let ssd = json!({"metadata": {"labels": {"disk": "ssd"}}});
        let tolerate = |key: &str| json!({"spec": {"template": {"spec": {"tolerations": [{"key": key, "operator": "Exists"}]}}}});
        // (case, DaemonSet patch, nodes, pods, actions)
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, Vec<Node>, Vec<Pod>, Vec<&str>)> = vec![
            ("a pod for every node", json!({}), three_nodes(), vec![], vec!["create n1", "create n2", "create n3"]),
            ("every node has its pod", json!({}), three_nodes(), vec![on("n1"), on("n2"), on("n3")], vec![]),
            ("nodeSelector picks the nodes", selector.clone(), vec![node("n1", ssd.clone()), node("n2", json!({}))], vec![], vec!["create n1"]),
            ("a node no longer selected loses its pod", selector, vec![node("n1", ssd), node("n2", json!({}))], vec![on("n1"), on("n2")], vec!["delete p-n2"]),
            ("NoSchedule taint: no new pod", json!({}), vec![node("n1", taint("dedicated", "NoSchedule"))], vec![], vec![]),
            // Upstream's shouldContinueRunning: a NoSchedule taint does not evict; kinglet deleted it.
            ("NoSchedule taint: the pod there stays", json!({}), vec![node("n1", taint("dedicated", "NoSchedule"))], vec![on("n1")], vec![]),
            ("NoExecute taint: the pod goes", json!({}), vec![node("n1", taint("dedicated", "NoExecute"))], vec![on("n1")], vec!["delete p-n1"]),
            ("tolerated taint", tolerate("dedicated"), vec![node("n1", taint("dedicated", "NoExecute"))], vec![], vec!["create n1"]),
            ("unreachable nodes are tolerated by default", json!({}), vec![node("n1", taint("node.kubernetes.io/unreachable", "NoExecute"))], vec![], vec!["create n1"]),
            ("unschedulable nodes are tolerated by default", json!({}), vec![node("n1", json!({"spec": {"unschedulable": true}}))], vec![], vec!["create n1"]),
            ("PreferNoSchedule does not matter", json!({}), vec![node("n1", taint("x", "PreferNoSchedule"))], vec![], vec!["create n1"]),
            // Upstream keeps the oldest; kinglet kept whichever the cache listed first.
            ("two pods on a node: the newer goes", json!({}), vec![node("n1", json!({}))],
                vec![pod("b", "n1", json!({"metadata": {"creationTimestamp": ago(10)}})), pod("a", "n1", json!({}))], vec!["delete b"]),
            // Upstream counts a terminating pod as there; kinglet made a second pod at once.
            ("a terminating pod is not replaced until gone", json!({}), vec![node("n1", json!({}))],
                vec![pod("a", "n1", json!({"metadata": {"deletionTimestamp": ago(1)}}))], vec![]),
            ("pods of a vanished node go", json!({}), vec![node("n1", json!({}))], vec![on("n1"), on("gone")], vec!["delete p-gone"]),
            ("a pod not yet bound belongs to its affinity's node", json!({}), vec![node("n1", json!({}))],
                vec![unbound_on("n1")], vec![]),
        ];
        let mut table = Table::default();
        for (case, patch, nodes, pods, want) in cases {
            let (pods, nodes): (Vec<&Pod>, Vec<&Node>) =
                (pods.iter().collect(), nodes.iter().collect());
            let got = plan(&daemonset(patch), &pods, &nodes, now());
            let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            table.check(case, actions(&got), want);
        }
        table.done();
    }

    #[test]
    fn a_created_pod_not_yet_in_the_cache_is_not_created_again() {
        let nodes = three_nodes();
        let nodes: Vec<&Node> = nodes.iter().collect();
        let ds = daemonset(json!({}));
        let mut expected = std::collections::HashMap::new();
        // First reconcile: three creates, recorded as expected.
        let mut first = plan(&ds, &[], &nodes, now());
        hold_expected_creates(&mut expected, "ds1", &[], &mut first);
        assert_eq!(actions(&first).len(), 3);
        for n in ["n1", "n2", "n3"] {
            expected.insert(
                ("ds1".to_string(), n.to_string()),
                std::time::Instant::now(),
            );
        }
        // A heartbeat before the cache has the pods: nothing created twice.
        let mut again = plan(&ds, &[], &nodes, now());
        hold_expected_creates(&mut expected, "ds1", &[], &mut again);
        assert_eq!(actions(&again), Vec::<String>::new());
        assert!(again.requeue.is_some());
        // The cache has n1's pod: its expectation is met; n2 and n3 still wait.
        let seen = on("n1");
        let mut later = plan(&ds, &[&seen], &nodes, now());
        hold_expected_creates(&mut expected, "ds1", &[&seen], &mut later);
        assert_eq!(actions(&later), Vec::<String>::new());
        assert_eq!(expected.len(), 2);
        // Expired expectations no longer hold creates back.
        for at in expected.values_mut() {
            *at -= EXPECTATION_TTL;
        }
        let mut expired = plan(&ds, &[&seen], &nodes, now());
        hold_expected_creates(&mut expected, "ds1", &[&seen], &mut expired);
        assert_eq!(actions(&expired), vec!["create n2", "create n3"]);
    }

    #[test]
    fn rolling_update() {
        let max_unavailable = |v: Value| json!({"spec": {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": v}}}});
        // (case, DaemonSet patch, pods on n1..n3, actions)
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, Vec<Pod>, Vec<&str>)> = vec![
            ("one at a time by default", json!({}), vec![old_on("n1"), old_on("n2"), old_on("n3")], vec!["delete p-n1"]),
            ("a new pod not yet available holds the rest", json!({}),
                vec![pod("p-n1", "n1", not_ready()), old_on("n2"), old_on("n3")], vec![]),
            ("next once it is available", json!({}), vec![on("n1"), old_on("n2"), old_on("n3")], vec!["delete p-n2"]),
            ("maxUnavailable 2", max_unavailable(json!(2)), vec![old_on("n1"), old_on("n2"), old_on("n3")], vec!["delete p-n1", "delete p-n2"]),
            ("maxUnavailable 50% of 3 rounds up to 2", max_unavailable(json!("50%")), vec![old_on("n1"), old_on("n2"), old_on("n3")], vec!["delete p-n1", "delete p-n2"]),
            ("maxUnavailable 0 means 1", max_unavailable(json!(0)), vec![old_on("n1"), old_on("n2"), old_on("n3")], vec!["delete p-n1"]),
            // Upstream replaces unavailable old pods without counting them; kinglet counted them
            // and replaced nothing else.
            ("an unavailable old pod is replaced on top", json!({}),
                vec![old_on("n1"), pod("p-n2", "n2", merged(not_ready(), json!({"metadata": {"labels": {REVISION_HASH: "old"}}}))), old_on("n3")],
                vec!["delete p-n2", "delete p-n1"]),
            ("creates first, updates after", json!({}), vec![old_on("n2"), old_on("n3")], vec!["create n1"]),
            ("OnDelete: no update", json!({"spec": {"updateStrategy": {"type": "OnDelete"}}}), vec![old_on("n1"), old_on("n2"), old_on("n3")], vec![]),
        ];
        let mut table = Table::default();
        let nodes = three_nodes();
        let nodes: Vec<&Node> = nodes.iter().collect();
        for (case, patch, pods, want) in cases {
            let pods: Vec<&Pod> = pods.iter().collect();
            let got = plan(&daemonset(patch), &pods, &nodes, now());
            let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            table.check(case, actions(&got), want);
        }
        table.done();
    }

    #[test]
    fn status() {
        let nodes = [
            node("n1", json!({})),
            node("n2", json!({})),
            node("n3", taint("x", "NoSchedule")),
            node("n4", taint("x", "NoExecute")),
        ];
        let nodes: Vec<&Node> = nodes.iter().collect();
        // n1: current and ready; n2: old and not ready; n3: may keep its pod but should not run
        // one; n4: two pods that must go.
        let pods = [
            on("n1"),
            pod(
                "p-n2",
                "n2",
                merged(
                    not_ready(),
                    json!({"metadata": {"labels": {REVISION_HASH: "old"}}}),
                ),
            ),
            on("n3"),
            pod("a-n4", "n4", json!({})),
            pod("b-n4", "n4", json!({})),
        ];
        let pods: Vec<&Pod> = pods.iter().collect();
        let got = plan(&daemonset(json!({})), &pods, &nodes, now());
        let st = got
            .steps
            .iter()
            .find_map(|s| match s {
                Step::Status(st) => Some(st.clone()),
                _ => None,
            })
            .expect("status");
        // Misscheduled counts nodes (n3, n4), not pods, as upstream does; kinglet counted pods.
        let counts = (
            st.desired_number_scheduled,
            st.current_number_scheduled,
            st.number_ready,
            st.number_available,
            st.number_unavailable,
            st.updated_number_scheduled,
            st.number_misscheduled,
        );
        assert_eq!(counts, (2, 2, 1, Some(1), Some(1), Some(1), 2));
        assert_eq!(got.requeue, Some(Duration::from_secs(2)));
    }
}
