//! StatefulSet controller: pods `<name>-0..N-1` with stable hostnames, PVCs from
//! `volumeClaimTemplates` created before their pod, OrderedReady (one at a time, in order) or
//! Parallel management, scale-down from the highest ordinal, and rolling updates from the
//! highest ordinal down to `partition`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;

use super::daemonset::REVISION_HASH;
use super::deployment::template_hash;
use super::informers::Informers;
use super::util::{
    Context, controller_ref, controller_uid, ensure_revision, is_available, is_ready, is_terminal,
    merge_status,
};

struct StsCtx {
    ctx: Arc<Context>,
    pods: Store<Pod>,
}

fn ordinal(sts: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(sts)?.strip_prefix('-')?.parse().ok()
}

fn claim_name(template: &str, sts: &str, i: i32) -> String {
    format!("{template}-{sts}-{i}")
}

fn pod_for(sts: &StatefulSet, i: i32, hash: &str) -> Pod {
    let name = sts.name_any();
    let spec = sts.spec.clone().unwrap_or_default();
    let mut meta = spec.template.metadata.clone().unwrap_or_default();
    let pod_name = format!("{name}-{i}");
    meta.name = Some(pod_name.clone());
    meta.namespace = sts.namespace();
    meta.owner_references = Some(vec![controller_ref(sts)]);
    let labels = meta.labels.get_or_insert_with(Default::default);
    labels.insert(REVISION_HASH.into(), hash.into());
    labels.insert(
        "statefulset.kubernetes.io/pod-name".into(),
        pod_name.clone(),
    );
    labels.insert("apps.kubernetes.io/pod-index".into(), i.to_string());
    let mut pspec = spec.template.spec.clone().unwrap_or_default();
    pspec.hostname = Some(pod_name);
    pspec.subdomain = spec.service_name.clone().filter(|s| !s.is_empty());
    for t in spec.volume_claim_templates.iter().flatten() {
        let tname = t.metadata.name.clone().unwrap_or_default();
        let volumes = pspec.volumes.get_or_insert_with(Vec::new);
        volumes.retain(|v| v.name != tname);
        if let Ok(v) = serde_json::from_value(
            serde_json::json!({"name": tname, "persistentVolumeClaim": {"claimName": claim_name(&tname, &name, i)}}),
        ) {
            volumes.push(v);
        }
    }
    Pod {
        metadata: meta,
        spec: Some(pspec),
        status: None,
    }
}

async fn ensure_claims(ctx: &Context, sts: &StatefulSet, i: i32) -> kube::Result<()> {
    let ns = sts.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let retention_delete = sts
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref())
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete");
    for t in sts
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.clone())
        .unwrap_or_default()
    {
        let name = claim_name(
            &t.metadata.name.clone().unwrap_or_default(),
            &sts.name_any(),
            i,
        );
        if api.get_opt(&name).await?.is_some() {
            continue;
        }
        let mut pvc = t.clone();
        pvc.metadata.name = Some(name);
        pvc.metadata.namespace = Some(ns.clone());
        pvc.status = None;
        let mut labels = sts
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.clone())
            .unwrap_or_default();
        labels.extend(pvc.metadata.labels.take().unwrap_or_default());
        pvc.metadata.labels = Some(labels);
        if retention_delete {
            pvc.metadata.owner_references = Some(vec![controller_ref(sts)]);
        }
        match api.create(&PostParams::default(), &pvc).await {
            Ok(_) => {
                ctx.event(
                    sts,
                    false,
                    "SuccessfulCreate",
                    format!(
                        "create Claim {} for StatefulSet {} success",
                        pvc.metadata.name.clone().unwrap_or_default(),
                        sts.name_any()
                    ),
                )
                .await
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn reconcile(sts: Arc<StatefulSet>, sc: Arc<StsCtx>) -> Result<Action, kube::Error> {
    let ctx = &sc.ctx;
    if sts.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = sts.namespace().unwrap_or_default();
    let name = sts.name_any();
    let uid = sts.uid().unwrap_or_default();
    let spec = sts.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let hash = template_hash(
        &spec.template,
        sts.status.as_ref().and_then(|s| s.collision_count),
    );
    ensure_revision(ctx, sts.as_ref(), &spec.template, &hash).await?;
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: HashMap<i32, Arc<Pod>> = sc
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(ns.as_str())
                && controller_uid(&p.metadata) == Some(uid.as_str())
        })
        .filter_map(|p| ordinal(&name, &p.name_any()).map(|i| (i, p)))
        .collect();
    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let healthy = |p: &Pod| is_ready(p) && p.metadata.deletion_timestamp.is_none();
    // Create missing pods (and their claims) in order.
    for i in 0..replicas {
        match pods.get(&i) {
            Some(p) if is_terminal(p) && p.metadata.deletion_timestamp.is_none() => {
                // Failed or succeeded pods are replaced.
                let _ = pods_api
                    .delete(&p.name_any(), &DeleteParams::default())
                    .await;
                if !parallel {
                    break;
                }
            }
            Some(p) => {
                if !parallel && !healthy(p) {
                    break;
                }
            }
            None => {
                ensure_claims(ctx, &sts, i).await?;
                match pods_api
                    .create(&PostParams::default(), &pod_for(&sts, i, &hash))
                    .await
                {
                    Ok(_) => {
                        ctx.event(
                            sts.as_ref(),
                            false,
                            "SuccessfulCreate",
                            format!("create Pod {name}-{i} in StatefulSet {name} successful"),
                        )
                        .await
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e),
                }
                if !parallel {
                    break;
                }
            }
        }
    }
    // Scale down from the highest ordinal (one at a time unless Parallel).
    let mut extra: Vec<i32> = pods.keys().copied().filter(|i| *i >= replicas).collect();
    extra.sort_unstable_by(|a, b| b.cmp(a));
    for i in extra {
        let p = &pods[&i];
        if p.metadata.deletion_timestamp.is_none() {
            let _ = pods_api
                .delete(&p.name_any(), &DeleteParams::default())
                .await;
            ctx.event(
                sts.as_ref(),
                false,
                "SuccessfulDelete",
                format!("delete Pod {name}-{i} in StatefulSet {name} successful"),
            )
            .await;
        }
        if !parallel {
            break;
        }
    }
    // Rolling update from the highest ordinal down to the partition, once all are healthy.
    let rolling = spec
        .update_strategy
        .as_ref()
        .is_none_or(|u| u.type_.as_deref() != Some("OnDelete"));
    let partition = spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let all_healthy = (0..replicas).all(|i| pods.get(&i).is_some_and(|p| healthy(p)));
    if rolling
        && all_healthy
        && let Some(i) = (partition..replicas).rev().find(|i| {
            pods.get(i)
                .is_some_and(|p| p.labels().get(REVISION_HASH) != Some(&hash))
        })
    {
        let _ = pods_api
            .delete(&format!("{name}-{i}"), &DeleteParams::default())
            .await;
    }
    let live: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|(i, p)| **i < replicas && p.metadata.deletion_timestamp.is_none())
        .map(|(_, p)| p)
        .collect();
    let updated = live
        .iter()
        .filter(|p| p.labels().get(REVISION_HASH) == Some(&hash))
        .count() as i32;
    let current_revision = if updated == replicas {
        hash.clone()
    } else {
        sts.status
            .as_ref()
            .and_then(|s| s.current_revision.clone())
            .unwrap_or_else(|| hash.clone())
    };
    let status = StatefulSetStatus {
        replicas: live.len() as i32,
        ready_replicas: Some(live.iter().filter(|p| is_ready(p)).count() as i32),
        available_replicas: Some(
            live.iter()
                .filter(|p| is_available(p, min_ready, now))
                .count() as i32,
        ),
        current_replicas: Some(
            live.iter()
                .filter(|p| p.labels().get(REVISION_HASH) == Some(&current_revision))
                .count() as i32,
        ),
        updated_replicas: Some(updated),
        current_revision: Some(format!("{name}-{current_revision}")),
        update_revision: Some(format!("{name}-{hash}")),
        observed_generation: sts.metadata.generation,
        collision_count: sts.status.as_ref().and_then(|s| s.collision_count),
        conditions: None,
    };
    if sts.status.as_ref() != Some(&status) {
        merge_status(&ctx.client, sts.as_ref(), &status).await?;
    }
    Ok(Action::requeue(Duration::from_secs(
        if all_healthy && live.len() as i32 == replicas {
            30
        } else {
            2
        },
    )))
}

pub async fn run(ctx: Arc<Context>, informers: Arc<Informers>) {
    let client = ctx.client.clone();
    informers.pods.synced().await;
    let sc = Arc::new(StsCtx {
        ctx,
        pods: informers.pods.store(),
    });
    Controller::new(Api::<StatefulSet>::all(client), watcher::Config::default())
        .owns_shared_stream(informers.pods.subscribe())
        .run(
            reconcile,
            |_, e, _| {
                tracing::debug!("statefulset: {e}");
                Action::requeue(Duration::from_secs(1))
            },
            sc,
        )
        .for_each(|_| async {})
        .await;
}
