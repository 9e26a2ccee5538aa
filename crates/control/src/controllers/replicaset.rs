//! ReplicaSet controller: keeps `spec.replicas` pods from the template, adopts matching
//! orphans, and reports status. "Expectations" (pods created or deleted but not yet seen in the
//! cache) stop it from acting twice on a stale view, as upstream's controller does.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;

use super::informers::Informers;
use super::util::{
    Context, Expectations, controller_ref, controller_uid, is_available, is_ready, is_terminal,
    merge_status, selects,
};

/// Most pods created in one reconcile (upstream's burst).
const MAX_BATCH: usize = 500;

struct RsCtx {
    ctx: Arc<Context>,
    pods: Store<Pod>,
    expectations: Expectations,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let tmpl = rs
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default()
        .unwrap_or_default();
    let mut meta = tmpl.metadata.unwrap_or_default();
    meta.generate_name = Some(format!("{}-", rs.name_any()));
    meta.name = None;
    meta.namespace = rs.namespace();
    meta.owner_references = Some(vec![controller_ref(rs)]);
    Pod {
        metadata: meta,
        spec: tmpl.spec,
        status: None,
    }
}

/// Deletion preference: unscheduled, then pending, then not ready, then newest first.
fn deletion_rank(p: &Pod) -> (u8, u8, u8, std::cmp::Reverse<i64>) {
    let unscheduled = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_none_or(|n| n.is_empty());
    let pending = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
    let created = p
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0);
    (
        u8::from(!unscheduled),
        u8::from(!pending),
        u8::from(is_ready(p)),
        std::cmp::Reverse(created),
    )
}

async fn reconcile(rs: Arc<ReplicaSet>, rc: Arc<RsCtx>) -> Result<Action, Error> {
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = rs.namespace().unwrap_or_default();
    let uid = rs.uid().unwrap_or_default();
    let spec = rs.spec.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(rc.ctx.client.clone(), &ns);
    let all: Vec<Arc<Pod>> = rc
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(&ns))
        .collect();
    // Adopt matching orphans.
    for p in all.iter().filter(|p| {
        controller_uid(&p.metadata).is_none()
            && p.metadata.deletion_timestamp.is_none()
            && selects(&spec.selector, &p.metadata)
    }) {
        let patch = serde_json::json!({"metadata": {"ownerReferences": [controller_ref(rs.as_ref())], "uid": p.uid()}});
        let _ = pods_api
            .patch(
                &p.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await;
    }
    let owned: Vec<&Arc<Pod>> = all
        .iter()
        .filter(|p| controller_uid(&p.metadata) == Some(uid.as_str()))
        .collect();
    let mut active: Vec<&Arc<Pod>> = owned
        .iter()
        .copied()
        .filter(|p| !is_terminal(p) && p.metadata.deletion_timestamp.is_none())
        .collect();
    let desired = spec.replicas.unwrap_or(1).max(0) as usize;
    let mut requeue = None;
    if rc.expectations.satisfied(&uid, &rc.pods, &ns) {
        if active.len() < desired {
            let want = (desired - active.len()).min(MAX_BATCH);
            let mut created = HashSet::new();
            let mut batch = 1;
            let mut failure = None;
            while created.len() < want && failure.is_none() {
                let n = batch.min(want - created.len());
                let template = pod_from_template(&rs);
                let pp = PostParams::default();
                let results =
                    futures::future::join_all((0..n).map(|_| pods_api.create(&pp, &template)))
                        .await;
                for r in results {
                    match r {
                        Ok(p) => {
                            created.insert(p.name_any());
                        }
                        Err(e) => failure = Some(e),
                    }
                }
                batch *= 2;
            }
            if !created.is_empty() {
                rc.ctx
                    .event(
                        rs.as_ref(),
                        false,
                        "SuccessfulCreate",
                        format!("Created {} pod(s)", created.len()),
                    )
                    .await;
            }
            rc.expectations.expect(&uid, created, HashSet::new());
            if let Some(e) = failure {
                rc.ctx
                    .event(
                        rs.as_ref(),
                        true,
                        "FailedCreate",
                        format!("Error creating: {e}"),
                    )
                    .await;
                return Err(e.into());
            }
        } else if active.len() > desired {
            active.sort_by_key(|p| deletion_rank(p));
            let victims: Vec<String> = active[..active.len() - desired]
                .iter()
                .map(|p| p.name_any())
                .collect();
            for name in &victims {
                match pods_api.delete(name, &DeleteParams::default()).await {
                    Ok(_) | Err(kube::Error::Api(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            rc.ctx
                .event(
                    rs.as_ref(),
                    false,
                    "SuccessfulDelete",
                    format!("Deleted pod(s): {}", victims.join(", ")),
                )
                .await;
            rc.expectations
                .expect(&uid, HashSet::new(), victims.into_iter().collect());
        }
    } else {
        requeue = Some(Duration::from_millis(500));
    }
    // Status from what the cache shows.
    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let live: Vec<&Arc<Pod>> = owned
        .iter()
        .copied()
        .filter(|p| !is_terminal(p) && p.metadata.deletion_timestamp.is_none())
        .collect();
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let status = ReplicaSetStatus {
        replicas: live.len() as i32,
        fully_labeled_replicas: Some(
            live.iter()
                .filter(|p| {
                    template_labels
                        .iter()
                        .all(|(k, v)| p.labels().get(k) == Some(v))
                })
                .count() as i32,
        ),
        ready_replicas: Some(live.iter().filter(|p| is_ready(p)).count() as i32),
        available_replicas: Some(
            live.iter()
                .filter(|p| is_available(p, min_ready, now))
                .count() as i32,
        ),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    };
    if live
        .iter()
        .any(|p| is_ready(p) && !is_available(p, min_ready, now))
    {
        requeue = Some(Duration::from_secs(min_ready.max(1) as u64));
    }
    if rs.status.as_ref() != Some(&status) {
        merge_status(&rc.ctx.client, rs.as_ref(), &status).await?;
    }
    Ok(requeue
        .map(Action::requeue)
        .unwrap_or_else(Action::await_change))
}

pub async fn run(ctx: Arc<Context>, informers: Arc<Informers>) {
    informers.pods.synced().await;
    let rc = Arc::new(RsCtx {
        ctx,
        pods: informers.pods.store(),
        expectations: Expectations::default(),
    });
    let replicasets = &informers.replicasets;
    Controller::for_shared_stream(replicasets.subscribe(), replicasets.store())
        .owns_shared_stream(informers.pods.subscribe())
        .run(
            reconcile,
            |_, e, _| {
                tracing::debug!("replicaset: {e}");
                Action::requeue(Duration::from_secs(1))
            },
            rc,
        )
        .for_each(|_| async {})
        .await;
}
