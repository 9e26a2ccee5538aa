//! The scheduler: assigns unscheduled pods (schedulerName `default-scheduler`) to nodes.
//! Filters: resources (incl. extended resources), nodeSelector and node affinity, taints,
//! unschedulable nodes, host ports, volumes (`volumes`), pod (anti-)affinity, topology
//! spread. Scores: least allocated, preferred node affinity, spreading. Binds through
//! `pods/binding`, records `FailedScheduling` events with upstream's reason summary, and
//! preempts lower-priority pods.
//!
//! Decisions are made one pod at a time against an in-memory view of the nodes that includes
//! pods this scheduler has bound but the watch has not shown yet ("assumed" pods); the binding
//! calls for a batch of decisions run concurrently.

pub mod filters;
pub mod volumes;
pub use kinglet_core::resources;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use tokio::sync::Notify;

use crate::controllers::informers::Informers;
use filters::NodeInfo;
use kinglet_core::events::Context;
use volumes::Claims;

pub const SCHEDULER_NAME: &str = "default-scheduler";
/// Binding calls in flight at once.
const BIND_CONCURRENCY: usize = 64;
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often a pod whose claims are being bound looks at them again.
const CLAIM_POLL: Duration = Duration::from_millis(500);

struct Scheduler {
    ctx: Arc<Context>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    /// Pods bound by this scheduler that the cache may not show yet: uid -> (node, pod).
    assumed: HashMap<String, (String, Arc<Pod>)>,
    /// Unschedulable pods wait before the next attempt: uid -> (next attempt, attempts).
    backoff: HashMap<String, (Instant, u32)>,
    /// Set on every node event: a node that joins or changes may fit waiting pods, so they
    /// are retried at once (upstream moves them back to its active queue likewise).
    nodes_changed: Arc<std::sync::atomic::AtomicBool>,
}

fn is_pending(p: &Pod) -> bool {
    let spec = p.spec.as_ref();
    spec.and_then(|s| s.node_name.as_ref())
        .is_none_or(|n| n.is_empty())
        && spec
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or(SCHEDULER_NAME)
            == SCHEDULER_NAME
        && p.metadata.deletion_timestamp.is_none()
        && !kinglet_core::pods::is_terminal(p)
}

fn priority(p: &Pod) -> i32 {
    p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

impl Scheduler {
    /// The nodes with every pod the cache and this scheduler know to be on them.
    fn node_infos(&mut self) -> Vec<NodeInfo> {
        let pods = self.pods.state();
        // An assumed pod is settled once the cache shows it bound (or gone).
        let still_pending: std::collections::HashSet<String> = pods
            .iter()
            .filter(|p| is_pending(p))
            .filter_map(|p| p.uid())
            .collect();
        self.assumed.retain(|uid, _| still_pending.contains(uid));
        let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        for p in pods.iter().filter(|p| !kinglet_core::pods::is_terminal(p)) {
            if let Some(n) = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty())
            {
                by_node.entry(n).or_default().push(p.clone());
            }
        }
        for (node, pod) in self.assumed.values() {
            by_node.entry(node.clone()).or_default().push(pod.clone());
        }
        let mut infos: Vec<NodeInfo> = self
            .nodes
            .state()
            .iter()
            .map(|n| NodeInfo::new(n.clone(), by_node.remove(&n.name_any()).unwrap_or_default()))
            .collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos
    }

    async fn cycle(&mut self) {
        if self
            .nodes_changed
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            for (next, _) in self.backoff.values_mut() {
                *next = Instant::now();
            }
        }
        let now = Instant::now();
        let mut pending: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| is_pending(p) && !self.assumed.contains_key(&p.uid().unwrap_or_default()))
            .filter(|p| {
                self.backoff
                    .get(&p.uid().unwrap_or_default())
                    .is_none_or(|(t, _)| *t <= now)
            })
            .collect();
        if pending.is_empty() {
            return;
        }
        pending.sort_by_key(|p| {
            (
                std::cmp::Reverse(priority(p)),
                p.metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_second())
                    .unwrap_or(0),
            )
        });
        let mut infos = self.node_infos();
        let mut binds = Vec::new();
        for pod in pending {
            let volumes = if volumes::uses_claims(&pod) {
                match volumes::gather(&self.ctx.client, &pod).await {
                    Ok(Claims::Ready(v)) => Some(v),
                    Ok(Claims::Binding) => {
                        self.wait_for_claims(&pod);
                        continue;
                    }
                    Ok(Claims::Unschedulable(why)) => {
                        // Upstream's PreFilter rejection: no node is tried, none preempted.
                        let summary = format!("0/{} nodes are available: {why}.", infos.len());
                        self.unschedulable(&pod, &infos, summary, None, false).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(pod = %pod.name_any(), "reading its claims: {e}");
                        self.wait_for_claims(&pod);
                        continue;
                    }
                }
            } else {
                None
            };
            match filters::schedule_with(&pod, &infos, volumes.as_ref()) {
                Ok(idx) if volumes.as_ref().is_some_and(|v| v.has_delayed()) => {
                    // PreBind: the claims get the node, and the pod binds once they are bound.
                    let node = &infos[idx].name;
                    if let Some(v) = &volumes
                        && let Err(e) = v.select_node(&self.ctx.client, node).await
                    {
                        tracing::debug!(pod = %pod.name_any(), "selecting node {node} for its claims: {e}");
                    }
                    self.wait_for_claims(&pod);
                }
                Ok(idx) => {
                    let node = infos[idx].name.clone();
                    infos[idx].add(pod.clone());
                    self.assumed
                        .insert(pod.uid().unwrap_or_default(), (node.clone(), pod.clone()));
                    binds.push((pod, node));
                }
                Err(summary) => {
                    self.unschedulable(&pod, &infos, summary, volumes.as_ref(), true)
                        .await
                }
            }
        }
        let ctx = self.ctx.clone();
        let results: Vec<(Arc<Pod>, kube::Result<()>)> = futures::stream::iter(binds)
            .map(|(pod, node)| {
                let ctx = ctx.clone();
                async move {
                    let r = bind(&ctx.client, &pod, &node).await;
                    if r.is_ok() {
                        let note = format!(
                            "Successfully assigned {}/{} to {node}",
                            pod.namespace().unwrap_or_default(),
                            pod.name_any()
                        );
                        // Off the binding path: events must not slow scheduling down.
                        let (ctx, pod) = (ctx.clone(), pod.clone());
                        tokio::spawn(async move {
                            ctx.event(pod.as_ref(), false, "Scheduled", note).await;
                        });
                    }
                    (pod, r)
                }
            })
            .buffer_unordered(BIND_CONCURRENCY)
            .collect()
            .await;
        for (pod, r) in results {
            let uid = pod.uid().unwrap_or_default();
            match r {
                Ok(()) => {
                    self.backoff.remove(&uid);
                }
                Err(e) => {
                    tracing::debug!(pod = %pod.name_any(), "binding failed: {e}");
                    self.assumed.remove(&uid);
                }
            }
        }
    }

    /// A pod whose claims are being bound is looked at again shortly, without an event.
    fn wait_for_claims(&mut self, pod: &Pod) {
        let uid = pod.uid().unwrap_or_default();
        let attempts = self.backoff.get(&uid).map(|(_, a)| *a).unwrap_or(0);
        self.backoff
            .insert(uid, (Instant::now() + CLAIM_POLL, attempts));
    }

    /// Tries preemption (where `may_preempt`: a filter, not a PreFilter, refused the pod),
    /// else records why the pod does not fit and backs off.
    async fn unschedulable(
        &mut self,
        pod: &Arc<Pod>,
        infos: &[NodeInfo],
        summary: String,
        volumes: Option<&volumes::PodVolumes>,
        may_preempt: bool,
    ) {
        let uid = pod.uid().unwrap_or_default();
        let attempts = self.backoff.get(&uid).map(|(_, a)| a + 1).unwrap_or(1);
        // Upstream's pod backoff: 1 s doubling to 10 s.
        let wait = Duration::from_secs(1u64 << attempts.saturating_sub(1).min(4)).min(MAX_BACKOFF);
        self.backoff.insert(uid, (Instant::now() + wait, attempts));
        let plan = may_preempt
            .then(|| filters::preemption_plan_with(pod, infos, volumes))
            .flatten();
        let preemption = match plan {
            Some((node, victims)) => {
                self.preempt(pod, &node, &victims).await;
                return;
            }
            // Without nodes upstream does not try preemption, and says only that.
            None if infos.is_empty() => String::new(),
            None if priority(pod) > 0 && may_preempt => format!(
                " preemption: 0/{} nodes are available: {} No preemption victims found for incoming pod.",
                infos.len(),
                infos.len()
            ),
            None => format!(
                " preemption: 0/{} nodes are available: {} Preemption is not helpful for scheduling.",
                infos.len(),
                infos.len()
            ),
        };
        let message = format!("{summary}{preemption}");
        let already = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c.type_ == "PodScheduled" && c.message.as_deref() == Some(message.as_str())
                })
            });
        if !already {
            self.ctx
                .event(pod.as_ref(), true, "FailedScheduling", message.clone())
                .await;
            let api: Api<Pod> = Api::namespaced(
                self.ctx.client.clone(),
                &pod.namespace().unwrap_or_default(),
            );
            let patch = serde_json::json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message, "lastProbeTime": null, "lastTransitionTime": kinglet_core::object::now_time()}]}});
            let _ = api
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Strategic(&patch),
                )
                .await;
        }
    }

    async fn preempt(&mut self, pod: &Arc<Pod>, node: &str, victims: &[Arc<Pod>]) {
        for v in victims {
            let api: Api<Pod> =
                Api::namespaced(self.ctx.client.clone(), &v.namespace().unwrap_or_default());
            self.ctx
                .event(
                    v.as_ref(),
                    false,
                    "Preempted",
                    format!(
                        "Preempted by pod {} on node {node}",
                        pod.uid().unwrap_or_default()
                    ),
                )
                .await;
            let _ = api.delete(&v.name_any(), &DeleteParams::default()).await;
        }
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            &pod.namespace().unwrap_or_default(),
        );
        let patch = serde_json::json!({"status": {"nominatedNodeName": node}});
        let _ = api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await;
        // Try again soon: the victims are on their way out.
        self.backoff.insert(
            pod.uid().unwrap_or_default(),
            (Instant::now() + Duration::from_millis(500), 0),
        );
    }
}

async fn bind(client: &kube::Client, pod: &Pod, node: &str) -> kube::Result<()> {
    let ns = pod.namespace().unwrap_or_default();
    let binding: Binding = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": pod.name_any(), "namespace": ns, "uid": pod.uid()},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }))
    .expect("binding");
    let body = serde_json::to_vec(&binding).map_err(kube::Error::SerdeError)?;
    let req = http::Request::post(format!(
        "/api/v1/namespaces/{ns}/pods/{}/binding",
        pod.name_any()
    ))
    .header("Content-Type", "application/json")
    .body(body)
    .map_err(kube::Error::HttpError)?;
    client.request_text(req).await.map(|_| ())
}

pub async fn run(ctx: Arc<Context>, informers: Arc<Informers>) {
    let wake = Arc::new(Notify::new());
    let nodes_changed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = nodes_changed.clone();
    for stream in [
        informers.pods.subscribe().map(|_| ()).boxed(),
        informers
            .nodes
            .subscribe()
            .map(move |_| flag.store(true, std::sync::atomic::Ordering::Relaxed))
            .boxed(),
    ] {
        let wake = wake.clone();
        tokio::spawn(stream.for_each(move |_| {
            wake.notify_one();
            async {}
        }));
    }
    informers.pods.synced().await;
    informers.nodes.synced().await;
    let mut s = Scheduler {
        ctx,
        pods: informers.pods.store(),
        nodes: informers.nodes.store(),
        assumed: HashMap::new(),
        backoff: HashMap::new(),
        nodes_changed,
    };
    loop {
        let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
        s.cycle().await;
    }
}
