//! Deployment controller: one ReplicaSet per pod template (named by `pod-template-hash`),
//! RollingUpdate within maxSurge/maxUnavailable or Recreate, revision history, pause, progress
//! deadline, and the status and conditions `kubectl rollout status` waits for. Rollback
//! (`kubectl rollout undo`) copies an old ReplicaSet's template back, which this turns into a
//! new revision of the existing ReplicaSet.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;

use super::informers::Informers;
use super::util::{Context, controller_ref, controller_uid, merge_status};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH_LABEL: &str = "pod-template-hash";

struct DCtx {
    ctx: Arc<Context>,
    replicasets: Store<ReplicaSet>,
}

/// Upstream's `rand.SafeEncodeString` alphabet (no vowels, no confusable characters).
const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `pod-template-hash`: FNV-1a of the template (and collision count), safe-encoded.
pub fn template_hash(template: &PodTemplateSpec, collision: Option<i32>) -> String {
    let mut h: u32 = 0x811c9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x01000193);
        }
    };
    feed(&serde_json::to_vec(template).unwrap_or_default());
    if let Some(c) = collision {
        feed(c.to_string().as_bytes());
    }
    h.to_string()
        .bytes()
        .map(|d| SAFE[(d as usize) % SAFE.len()] as char)
        .collect()
}

/// A template without the hash label, for comparing ReplicaSets with their Deployment.
fn without_hash(t: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = t.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(HASH_LABEL);
    }
    t
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// Resolves an int-or-percent against `total`, rounding up or down.
fn scaled(v: Option<&IntOrString>, total: i32, round_up: bool, default_pct: i32) -> i32 {
    match v {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let pct: i32 = s.trim_end_matches('%').parse().unwrap_or(default_pct);
            let exact = total as f64 * pct as f64 / 100.0;
            if round_up {
                exact.ceil() as i32
            } else {
                exact.floor() as i32
            }
        }
        None => {
            let exact = total as f64 * default_pct as f64 / 100.0;
            if round_up {
                exact.ceil() as i32
            } else {
                exact.floor() as i32
            }
        }
    }
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    prev: Option<&DeploymentCondition>,
) -> DeploymentCondition {
    let now = Time(Timestamp::now());
    let st = if status { "True" } else { "False" };
    let same = prev.is_some_and(|p| p.status == st);
    DeploymentCondition {
        type_: type_.into(),
        status: st.into(),
        reason: Some(reason.into()),
        message: Some(message.clone()),
        last_update_time: if same
            && prev.is_some_and(|p| {
                p.reason.as_deref() == Some(reason)
                    && p.message.as_deref() == Some(message.as_str())
            }) {
            prev.and_then(|p| p.last_update_time.clone())
        } else {
            Some(now.clone())
        },
        last_transition_time: if same {
            prev.and_then(|p| p.last_transition_time.clone())
        } else {
            Some(now)
        },
    }
}

async fn scale(
    ctx: &Context,
    d: &Deployment,
    rs: &ReplicaSet,
    to: i32,
    max_surge: i32,
) -> kube::Result<()> {
    let from = spec_replicas(rs);
    if from == to {
        return Ok(());
    }
    let api: Api<ReplicaSet> =
        Api::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default());
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let patch = serde_json::json!({
        "metadata": {"annotations": {
            "deployment.kubernetes.io/desired-replicas": desired.to_string(),
            "deployment.kubernetes.io/max-replicas": (desired + max_surge).to_string(),
        }},
        "spec": {"replicas": to},
    });
    api.patch(
        &rs.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    let verb = if to > from { "up" } else { "down" };
    ctx.event(
        d,
        false,
        "ScalingReplicaSet",
        format!(
            "Scaled {verb} replica set {} from {from} to {to}",
            rs.name_any()
        ),
    )
    .await;
    Ok(())
}

async fn reconcile(d: Arc<Deployment>, dc: Arc<DCtx>) -> Result<Action, kube::Error> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ctx = &dc.ctx;
    let ns = d.namespace().unwrap_or_default();
    let uid = d.uid().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let mut owned: Vec<ReplicaSet> = dc
        .replicasets
        .state()
        .iter()
        .filter(|r| {
            r.namespace().as_deref() == Some(ns.as_str())
                && controller_uid(&r.metadata) == Some(uid.as_str())
        })
        .map(|r| (**r).clone())
        .collect();
    owned.sort_by_key(revision);
    let max_rev = owned.iter().map(revision).max().unwrap_or(0);
    let template = spec.template.clone();
    let mut new_rs = owned
        .iter()
        .find(|r| {
            r.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .map(without_hash)
                == Some(template.clone())
        })
        .cloned();
    let strategy = spec.strategy.clone().unwrap_or_default();
    let recreate = strategy.type_.as_deref() == Some("Recreate");
    let ru = strategy.rolling_update.clone().unwrap_or_default();
    let (mut surge, mut unavailable) = if recreate {
        (0, replicas)
    } else {
        (
            scaled(ru.max_surge.as_ref(), replicas, true, 25),
            scaled(ru.max_unavailable.as_ref(), replicas, false, 25),
        )
    };
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    surge = surge.max(0);
    let paused = spec.paused == Some(true);
    let mut created_new = false;
    if new_rs.is_none() && !paused {
        let collision = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&template, collision);
        let mut tmpl = template.clone();
        tmpl.metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let initial = 0;
        let rs: ReplicaSet = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": format!("{}-{hash}", d.name_any()),
                "namespace": ns,
                "labels": tmpl.metadata.as_ref().and_then(|m| m.labels.clone()),
                "annotations": {REVISION: (max_rev + 1).to_string(),
                    "deployment.kubernetes.io/desired-replicas": replicas.to_string(),
                    "deployment.kubernetes.io/max-replicas": (replicas + surge).to_string()},
                "ownerReferences": [controller_ref(d.as_ref())],
            },
            "spec": {"replicas": initial, "minReadySeconds": spec.min_ready_seconds.unwrap_or(0), "selector": selector, "template": tmpl},
        }))
        .expect("replicaset");
        match rs_api.create(&PostParams::default(), &rs).await {
            Ok(created) => {
                new_rs = Some(created.clone());
                owned.push(created);
                created_new = true;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // Hash collision with a ReplicaSet we do not own or with another template.
                let bump = serde_json::json!({"collisionCount": collision.unwrap_or(0) + 1});
                merge_status(&ctx.client, d.as_ref(), &bump).await?;
                return Ok(Action::requeue(Duration::from_millis(200)));
            }
            Err(e) => return Err(e),
        }
    }
    // A rollback to an old template makes that ReplicaSet the newest revision again.
    if let Some(n) = new_rs.as_mut()
        && revision(n) < max_rev
        && !paused
    {
        let patch =
            serde_json::json!({"metadata": {"annotations": {REVISION: (max_rev + 1).to_string()}}});
        *n = rs_api
            .patch(
                &n.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        ctx.event(
            d.as_ref(),
            false,
            "DeploymentRollback",
            format!(
                "Rolled back deployment {} to revision {}",
                d.name_any(),
                max_rev + 1
            ),
        )
        .await;
    }
    let new_name = new_rs.as_ref().map(|r| r.name_any());
    let olds: Vec<&ReplicaSet> = owned
        .iter()
        .filter(|r| Some(r.name_any()) != new_name)
        .collect();
    if !paused {
        if let Some(n) = new_rs.as_ref() {
            if recreate {
                for o in olds.iter().filter(|o| spec_replicas(o) > 0) {
                    scale(ctx, &d, o, 0, surge).await?;
                }
                let old_running: i32 = olds
                    .iter()
                    .map(|o| o.status.as_ref().map(|s| s.replicas).unwrap_or(0))
                    .sum();
                if old_running == 0 {
                    scale(ctx, &d, n, replicas, surge).await?;
                }
            } else {
                // Scale the new ReplicaSet up within maxSurge.
                let total: i32 = owned.iter().map(spec_replicas).sum();
                let new_spec = spec_replicas(n);
                let target = if new_spec > replicas {
                    replicas
                } else {
                    let room = (replicas + surge - total).max(0);
                    (new_spec + room).min(replicas)
                };
                scale(ctx, &d, n, target, surge).await?;
                // Scale old ReplicaSets down within maxUnavailable (upstream's two steps).
                let min_available = replicas - unavailable;
                let new_unavailable = (target - available(n)).max(0);
                let all_spec: i32 = olds.iter().map(|o| spec_replicas(o)).sum::<i32>() + target;
                let mut now: Vec<i32> = olds.iter().map(|o| spec_replicas(o)).collect();
                // 1. Unhealthy old replicas go first: removing them costs no availability.
                let mut cleanup = (all_spec - min_available - new_unavailable).max(0);
                for (i, o) in olds.iter().enumerate() {
                    let cut = (now[i] - available(o)).max(0).min(cleanup);
                    now[i] -= cut;
                    cleanup -= cut;
                }
                // 2. Then available old replicas, as far as availability allows.
                let all_available: i32 = owned.iter().map(available).sum();
                let mut budget = (all_available - min_available - new_unavailable).max(0);
                for (i, o) in olds.iter().enumerate() {
                    let cut = now[i].min(available(o)).min(budget);
                    now[i] -= cut;
                    budget -= cut;
                    scale(ctx, &d, o, now[i], surge).await?;
                }
            }
        }
        // History: keep revisionHistoryLimit old, empty ReplicaSets.
        let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        let empty: Vec<&&ReplicaSet> = olds
            .iter()
            .filter(|o| {
                spec_replicas(o) == 0 && o.status.as_ref().map(|s| s.replicas).unwrap_or(0) == 0
            })
            .collect();
        if empty.len() > limit {
            for o in &empty[..empty.len() - limit] {
                let _ = rs_api
                    .delete(&o.name_any(), &DeleteParams::background())
                    .await;
            }
        }
    } else if let Some(n) = new_rs.as_ref() {
        // Paused: only follow replica count changes on the current ReplicaSet.
        if olds.iter().all(|o| spec_replicas(o) == 0) {
            scale(ctx, &d, n, replicas, surge).await?;
        }
    }
    // Status.
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| owned.iter().map(f).sum::<i32>();
    let total = sum(&|r| r.status.as_ref().map(|s| s.replicas).unwrap_or(0));
    let ready = sum(&|r| {
        r.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    });
    let avail = sum(&available);
    let updated = new_rs
        .as_ref()
        .and_then(|n| n.status.as_ref())
        .map(|s| s.replicas)
        .unwrap_or(0);
    let prev = d.status.clone().unwrap_or_default();
    let prev_cond = |t: &str| {
        prev.conditions
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.type_ == t))
            .cloned()
    };
    let complete = updated == replicas
        && total == replicas
        && avail == replicas
        && olds.iter().all(|o| spec_replicas(o) == 0);
    let new_label = new_name.clone().unwrap_or_default();
    let available_cond = if avail >= replicas - unavailable {
        condition(
            "Available",
            true,
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            prev_cond("Available").as_ref(),
        )
    } else {
        condition(
            "Available",
            false,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            prev_cond("Available").as_ref(),
        )
    };
    let progressed = updated > prev.updated_replicas.unwrap_or(0)
        || avail > prev.available_replicas.unwrap_or(0)
        || ready > prev.ready_replicas.unwrap_or(0)
        || created_new;
    let prev_prog = prev_cond("Progressing");
    let deadline = spec.progress_deadline_seconds.unwrap_or(600);
    let stalled = !complete
        && !progressed
        && prev_prog
            .as_ref()
            .and_then(|c| c.last_update_time.as_ref())
            .is_some_and(|t| t.0.as_second() + i64::from(deadline) < Timestamp::now().as_second());
    let progressing_cond = if paused {
        condition(
            "Progressing",
            prev_prog.as_ref().is_none_or(|c| c.status == "True"),
            "DeploymentPaused",
            "Deployment is paused".into(),
            prev_prog.as_ref(),
        )
    } else if complete {
        condition(
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_label}\" has successfully progressed."),
            prev_prog.as_ref(),
        )
    } else if stalled
        || prev_prog
            .as_ref()
            .is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded") && !progressed)
    {
        condition(
            "Progressing",
            false,
            "ProgressDeadlineExceeded",
            format!("ReplicaSet \"{new_label}\" has timed out progressing."),
            prev_prog.as_ref(),
        )
    } else if created_new {
        condition(
            "Progressing",
            true,
            "NewReplicaSetCreated",
            format!("Created new replica set \"{new_label}\""),
            None,
        )
    } else {
        let mut c = condition(
            "Progressing",
            true,
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_label}\" is progressing."),
            prev_prog.as_ref(),
        );
        if progressed {
            c.last_update_time = Some(Time(Timestamp::now()));
        }
        c
    };
    let status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(avail),
        unavailable_replicas: Some((total.max(replicas) - avail).max(0)),
        conditions: Some(vec![available_cond, progressing_cond]),
        collision_count: prev.collision_count,
        terminating_replicas: None,
    };
    let d_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let rev = new_rs.as_ref().map(revision).unwrap_or(max_rev).to_string();
    if d.annotations().get(REVISION) != Some(&rev) && new_rs.is_some() {
        let patch = serde_json::json!({"metadata": {"annotations": {REVISION: rev}}});
        d_api
            .patch(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
    }
    let strip_times = |s: &DeploymentStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_update_time = None;
        }
        s
    };
    if strip_times(&prev) != strip_times(&status) || d.status.is_none() {
        merge_status(&ctx.client, d.as_ref(), &status).await?;
    }
    Ok(if complete || paused {
        Action::await_change()
    } else {
        Action::requeue(Duration::from_secs(5))
    })
}

pub async fn run(ctx: Arc<Context>, informers: Arc<Informers>) {
    let client = ctx.client.clone();
    let dc = Arc::new(DCtx {
        ctx,
        replicasets: informers.replicasets.store(),
    });
    Controller::new(Api::<Deployment>::all(client), watcher::Config::default())
        .owns_shared_stream(informers.replicasets.subscribe())
        .run(
            reconcile,
            |_, e, _| {
                tracing::debug!("deployment: {e}");
                Action::requeue(Duration::from_secs(1))
            },
            dc,
        )
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_safe_and_collision_sensitive() {
        let t: PodTemplateSpec = serde_json::from_value(serde_json::json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}})).unwrap();
        let a = template_hash(&t, None);
        assert_eq!(a, template_hash(&t, None));
        assert!(a.bytes().all(|b| SAFE.contains(&b)));
        assert_ne!(a, template_hash(&t, Some(1)));
        assert_eq!(
            scaled(Some(&IntOrString::String("25%".into())), 10, true, 25),
            3
        );
        assert_eq!(
            scaled(Some(&IntOrString::String("25%".into())), 10, false, 25),
            2
        );
        assert_eq!(scaled(Some(&IntOrString::Int(4)), 10, false, 25), 4);
    }
}
