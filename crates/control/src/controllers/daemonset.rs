//! DaemonSet controller: one pod per eligible node (pinned by node affinity, bound by the
//! scheduler), none elsewhere, with the upstream default tolerations, a rolling update within
//! `maxUnavailable`, ControllerRevisions for `kubectl rollout history`, and status.

use std::collections::HashMap;
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

async fn reconcile(ds: Arc<DaemonSet>, dc: Arc<DsCtx>) -> Result<Action, kube::Error> {
    let ctx = &dc.ctx;
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ds.namespace().unwrap_or_default();
    let uid = ds.uid().unwrap_or_default();
    let spec = ds.spec.clone().unwrap_or_default();
    let hash = template_hash(
        &spec.template,
        ds.status.as_ref().and_then(|s| s.collision_count),
    );
    ensure_revision(ctx, ds.as_ref(), &spec.template, &hash).await?;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
    for p in dc.pods.state().into_iter().filter(|p| {
        p.namespace().as_deref() == Some(ns.as_str())
            && controller_uid(&p.metadata) == Some(uid.as_str())
            && p.metadata.deletion_timestamp.is_none()
    }) {
        if let Some(n) = target_node(&p) {
            by_node.entry(n).or_default().push(p);
        }
    }
    let nodes = dc.nodes.state();
    let eligible: Vec<String> = nodes
        .iter()
        .filter(|n| node_accepts(&pod_for(&ds, &n.name_any(), &hash), (*n).clone()))
        .map(|n| n.name_any())
        .collect();
    let mut misscheduled = 0;
    for (node, pods) in &by_node {
        if !eligible.contains(node) {
            misscheduled += pods.len() as i32;
            for p in pods {
                let _ = pods_api
                    .delete(&p.name_any(), &DeleteParams::default())
                    .await;
            }
        } else {
            for p in pods.iter().skip(1) {
                let _ = pods_api
                    .delete(&p.name_any(), &DeleteParams::default())
                    .await;
            }
        }
    }
    for node in eligible.iter().filter(|n| !by_node.contains_key(*n)) {
        match pods_api
            .create(&PostParams::default(), &pod_for(&ds, node, &hash))
            .await
        {
            Ok(p) => {
                ctx.event(
                    ds.as_ref(),
                    false,
                    "SuccessfulCreate",
                    format!("Created pod: {}", p.name_any()),
                )
                .await
            }
            Err(e) => {
                ctx.event(
                    ds.as_ref(),
                    true,
                    "FailedCreate",
                    format!("Error creating: {e}"),
                )
                .await
            }
        }
    }
    // Rolling update: replace old pods while at most maxUnavailable are unavailable.
    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let current: Vec<&Arc<Pod>> = eligible
        .iter()
        .filter_map(|n| by_node.get(n).and_then(|v| v.first()))
        .collect();
    let unavailable = (eligible.len()
        - current
            .iter()
            .filter(|p| is_available(p, min_ready, now))
            .count()) as i32;
    let rolling = spec
        .update_strategy
        .as_ref()
        .is_none_or(|u| u.type_.as_deref() != Some("OnDelete"));
    if rolling {
        let max_unavailable = match spec
            .update_strategy
            .as_ref()
            .and_then(|u| u.rolling_update.as_ref())
            .and_then(|r| r.max_unavailable.as_ref())
        {
            Some(IntOrString::Int(n)) => *n,
            Some(IntOrString::String(p)) => (eligible.len() as f64
                * p.trim_end_matches('%').parse::<f64>().unwrap_or(0.0)
                / 100.0)
                .ceil() as i32,
            None => 1,
        }
        .max(1);
        let mut budget = max_unavailable - unavailable;
        let mut old: Vec<&&Arc<Pod>> = current
            .iter()
            .filter(|p| p.labels().get(REVISION_HASH) != Some(&hash))
            .collect();
        old.sort_by_key(|p| is_ready(p));
        for p in old {
            if !is_available(p, min_ready, now) || budget > 0 {
                if is_available(p, min_ready, now) {
                    budget -= 1;
                }
                let _ = pods_api
                    .delete(&p.name_any(), &DeleteParams::default())
                    .await;
            }
        }
    }
    let status = DaemonSetStatus {
        desired_number_scheduled: eligible.len() as i32,
        current_number_scheduled: current.len() as i32,
        number_misscheduled: misscheduled,
        number_ready: current.iter().filter(|p| is_ready(p)).count() as i32,
        number_available: Some(
            current
                .iter()
                .filter(|p| is_available(p, min_ready, now))
                .count() as i32,
        ),
        number_unavailable: Some(unavailable).filter(|n| *n > 0),
        updated_number_scheduled: Some(
            current
                .iter()
                .filter(|p| p.labels().get(REVISION_HASH) == Some(&hash))
                .count() as i32,
        ),
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: None,
    };
    if ds.status.as_ref() != Some(&status) {
        merge_status(&ctx.client, ds.as_ref(), &status).await?;
    }
    Ok(if unavailable > 0 {
        Action::requeue(Duration::from_secs(2))
    } else {
        Action::await_change()
    })
}

pub async fn run(ctx: Arc<Context>, informers: Arc<Informers>) {
    let client = ctx.client.clone();
    informers.pods.synced().await;
    informers.nodes.synced().await;
    let dc = Arc::new(DsCtx {
        ctx,
        pods: informers.pods.store(),
        nodes: informers.nodes.store(),
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
