//! Deployment controller: one ReplicaSet per pod template (named by `pod-template-hash`),
//! RollingUpdate within maxSurge/maxUnavailable or Recreate, revision history, pause, progress
//! deadline, and the status and conditions `kubectl rollout status` waits for. Rollback
//! (`kubectl rollout undo`) copies an old ReplicaSet's template back, which this turns into a
//! new revision of the existing ReplicaSet.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus, ReplicaSet,
};
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

/// Upstream's `ResolveFenceposts` for a RollingUpdate: maxSurge rounds up, maxUnavailable
/// down (both default 25%), and both 0 means one unavailable. Recreate surges by nothing.
fn fenceposts(spec: &DeploymentSpec, replicas: i32) -> (i32, i32) {
    let strategy = spec.strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref() == Some("Recreate") {
        return (0, 0);
    }
    let ru = strategy.rolling_update.unwrap_or_default();
    let surge = scaled(ru.max_surge.as_ref(), replicas, true, 25).max(0);
    let unavailable = scaled(ru.max_unavailable.as_ref(), replicas, false, 25);
    if surge == 0 && unavailable == 0 {
        return (0, 1);
    }
    (surge, unavailable)
}

/// Upstream's `MaxUnavailable`: what the Available condition and the scale-down allow to be
/// missing; nothing for Recreate or no replicas, never more than `replicas`.
fn max_unavailable(spec: &DeploymentSpec, replicas: i32) -> i32 {
    if replicas == 0 {
        return 0;
    }
    fenceposts(spec, replicas).1.min(replicas)
}

fn is_recreate(spec: &DeploymentSpec) -> bool {
    spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate")
}

fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map(|s| s.replicas).unwrap_or(0)
}

fn ready(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    prev: Option<&DeploymentCondition>,
    now: &Time,
) -> DeploymentCondition {
    let same = prev.is_some_and(|p| p.status == status);
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
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
            Some(now.clone())
        },
    }
}

/// One API action of a Deployment reconcile, in the order `apply` performs them.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// Create the ReplicaSet of the current template (at 0 replicas; a Scale follows).
    Create(Box<ReplicaSet>),
    /// Make the ReplicaSet of the current template the newest revision again (a rollback).
    Revise { rs: String, revision: i64 },
    /// Set a ReplicaSet's replicas.
    Scale { rs: String, from: i32, to: i32 },
    /// Delete an old ReplicaSet beyond the revision history limit.
    Delete(String),
    /// Record the current revision on the Deployment.
    Annotate(String),
    /// Write the Deployment's status.
    Status(Box<DeploymentStatus>),
}

/// What a reconcile does, decided from the Deployment, its ReplicaSets and the time.
#[derive(Debug)]
struct Plan {
    steps: Vec<Step>,
    /// `spec.replicas`, which every scaled ReplicaSet is annotated with, and the most pods the
    /// rollout may run (replicas + maxSurge).
    desired: i32,
    max_replicas: i32,
    /// The Deployment's collisionCount, which a Create that finds its name taken bumps.
    collision_count: i32,
    requeue: Option<Duration>,
}

/// The ReplicaSet for `d`'s current template, as revision `revision`, at 0 replicas.
fn new_replicaset(d: &Deployment, revision: i64, max_replicas: i32) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let collision = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(&spec.template, collision);
    let mut tmpl = spec.template.clone();
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
    let replicas = spec.replicas.unwrap_or(1);
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": format!("{}-{hash}", d.name_any()),
            "namespace": d.namespace(),
            "labels": tmpl.metadata.as_ref().and_then(|m| m.labels.clone()),
            "annotations": {REVISION: revision.to_string(),
                "deployment.kubernetes.io/desired-replicas": replicas.to_string(),
                "deployment.kubernetes.io/max-replicas": max_replicas.to_string()},
            "ownerReferences": [controller_ref(d)],
        },
        "spec": {"replicas": 0, "minReadySeconds": spec.min_ready_seconds.unwrap_or(0), "selector": selector, "template": tmpl},
    }))
    .expect("replicaset")
}

fn scale_to(rs: &ReplicaSet, to: i32) -> Option<Step> {
    let from = spec_replicas(rs);
    (from != to).then(|| Step::Scale {
        rs: rs.name_any(),
        from,
        to,
    })
}

/// Recreate (upstream's `rolloutRecreate`): old ReplicaSets go to 0, and the new one comes up
/// only once none of their pods is left.
fn recreate_steps(new: Option<&ReplicaSet>, olds: &[&ReplicaSet], replicas: i32) -> Vec<Step> {
    let mut steps: Vec<Step> = olds.iter().filter_map(|o| scale_to(o, 0)).collect();
    let old_pods: i32 = olds.iter().map(|o| status_replicas(o)).sum();
    if old_pods == 0
        && let Some(n) = new
    {
        steps.extend(scale_to(n, replicas));
    }
    steps
}

/// RollingUpdate: the new ReplicaSet up within maxSurge (upstream's `reconcileNewReplicaSet`),
/// then the old ones down within maxUnavailable (`reconcileOldReplicaSets`), which upstream
/// does on the next sync with the same numbers.
fn rolling_steps(
    new: &ReplicaSet,
    olds: &[&ReplicaSet],
    replicas: i32,
    surge: i32,
    max_unavailable: i32,
) -> Vec<Step> {
    let total: i32 = olds.iter().map(|o| spec_replicas(o)).sum::<i32>() + spec_replicas(new);
    let new_spec = spec_replicas(new);
    let target = if new_spec > replicas {
        replicas
    } else {
        let room = (replicas + surge - total).max(0);
        (new_spec + room).min(replicas)
    };
    let mut steps: Vec<Step> = scale_to(new, target).into_iter().collect();
    let old_spec: i32 = olds.iter().map(|o| spec_replicas(o)).sum();
    if old_spec == 0 {
        return steps;
    }
    let min_available = replicas - max_unavailable;
    let new_unavailable = target - available(new);
    let max_scaled_down = old_spec + target - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return steps;
    }
    let mut now: Vec<i32> = olds.iter().map(|o| spec_replicas(o)).collect();
    // 1. Unhealthy old replicas go first: removing them costs no availability.
    let mut cleanup = max_scaled_down;
    for (i, o) in olds.iter().enumerate() {
        let cut = (now[i] - available(o)).max(0).min(cleanup);
        now[i] -= cut;
        cleanup -= cut;
    }
    // 2. Then any old replicas, while the available pods of all ReplicaSets stay above the
    // minimum (upstream's `scaleDownOldReplicaSetsForRollingUpdate`).
    let all_available: i32 = olds.iter().map(|o| available(o)).sum::<i32>() + available(new);
    let mut budget = (all_available - min_available).max(0);
    for n in now.iter_mut() {
        let cut = (*n).min(budget);
        *n -= cut;
        budget -= cut;
    }
    steps.extend(olds.iter().zip(now).filter_map(|(o, n)| scale_to(o, n)));
    steps
}

/// Paused, or only scaling (upstream's `scale`): the one active ReplicaSet, or without one the
/// newest, follows `replicas`; with several active, nothing moves (upstream would scale them
/// proportionally).
fn paused_steps(new: Option<&ReplicaSet>, olds: &[&ReplicaSet], replicas: i32) -> Vec<Step> {
    let active: Vec<&ReplicaSet> = new
        .into_iter()
        .chain(olds.iter().copied())
        .filter(|r| spec_replicas(r) > 0)
        .collect();
    let target = match active.as_slice() {
        [] => new.or(olds.last().copied()),
        [one] => Some(*one),
        _ => None,
    };
    target
        .and_then(|t| scale_to(t, replicas))
        .into_iter()
        .collect()
}

/// Upstream's `cleanupDeployment`: of the old ReplicaSets beyond `revisionHistoryLimit`, the
/// oldest ones are deleted if they are empty and their status is current.
fn history_steps(olds: &[&ReplicaSet], limit: i32) -> Vec<Step> {
    let alive: Vec<&&ReplicaSet> = olds
        .iter()
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .collect();
    let excess = alive.len().saturating_sub(limit.max(0) as usize);
    alive[..excess]
        .iter()
        .filter(|o| {
            let observed = o.status.as_ref().and_then(|s| s.observed_generation);
            spec_replicas(o) == 0
                && status_replicas(o) == 0
                && o.metadata.generation.unwrap_or(0) <= observed.unwrap_or(0)
        })
        .map(|o| Step::Delete(o.name_any()))
        .collect()
}

/// The ReplicaSets of one reconcile: all owned ones (with a planned new one) and which of them
/// carries the current template.
struct Sets {
    all: Vec<ReplicaSet>,
    new: Option<usize>,
}

impl Sets {
    fn new_rs(&self) -> Option<&ReplicaSet> {
        self.new.map(|i| &self.all[i])
    }

    fn olds(&self) -> Vec<&ReplicaSet> {
        (self.all.iter().enumerate())
            .filter(|(i, _)| Some(*i) != self.new)
            .map(|(_, r)| r)
            .collect()
    }

    fn sum(&self, f: impl Fn(&ReplicaSet) -> i32) -> i32 {
        self.all.iter().map(f).sum()
    }
}

/// The ReplicaSets by revision, with the one of the current template: found, or planned
/// (Recreate only once the old pods are gone, as upstream) and made the newest revision if a
/// rollback brought its template back. Pushes the steps for that; returns whether it is new.
fn sets_with_current(
    d: &Deployment,
    owned: Vec<ReplicaSet>,
    max_replicas: i32,
    steps: &mut Vec<Step>,
) -> (Sets, bool) {
    let spec = d.spec.clone().unwrap_or_default();
    let mut all = owned;
    all.sort_by_key(revision);
    let max_rev = all.iter().map(revision).max().unwrap_or(0);
    let current = |r: &ReplicaSet| {
        (r.spec.as_ref().and_then(|s| s.template.as_ref())).map(without_hash)
            == Some(spec.template.clone())
    };
    let mut sets = Sets {
        new: all.iter().position(current),
        all,
    };
    let paused = spec.paused == Some(true);
    let old_pods = sets.sum(status_replicas);
    let create = sets.new.is_none() && !paused && (!is_recreate(&spec) || old_pods == 0);
    if create {
        let rs = new_replicaset(d, max_rev + 1, max_replicas);
        steps.push(Step::Create(Box::new(rs.clone())));
        sets.all.push(rs);
        sets.new = Some(sets.all.len() - 1);
    }
    if let Some(i) = sets.new
        && revision(&sets.all[i]) < max_rev
        && !paused
    {
        let n = &mut sets.all[i];
        n.annotations_mut()
            .insert(REVISION.into(), (max_rev + 1).to_string());
        steps.push(Step::Revise {
            rs: n.name_any(),
            revision: max_rev + 1,
        });
    }
    (sets, create)
}

/// Decides one reconcile of `d` from its ReplicaSets (`owned`, any order) at `now`.
fn plan(d: &Deployment, owned: Vec<ReplicaSet>, now: Timestamp) -> Plan {
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let (surge, _) = fenceposts(&spec, replicas);
    let mut plan = Plan {
        steps: Vec::new(),
        desired: replicas,
        max_replicas: replicas + surge,
        collision_count: d
            .status
            .as_ref()
            .and_then(|s| s.collision_count)
            .unwrap_or(0),
        requeue: None,
    };
    if d.metadata.deletion_timestamp.is_some() {
        return plan;
    }
    let paused = spec.paused == Some(true);
    let recreate = is_recreate(&spec);
    let (sets, created_new) = sets_with_current(d, owned, plan.max_replicas, &mut plan.steps);
    let (new, olds) = (sets.new_rs(), sets.olds());
    let unavailable = max_unavailable(&spec, replicas);
    plan.steps.extend(if paused {
        paused_steps(new, &olds, replicas)
    } else if recreate {
        recreate_steps(new, &olds, replicas)
    } else if let Some(n) = new {
        rolling_steps(n, &olds, replicas, surge, unavailable)
    } else {
        Vec::new()
    });
    let limit = spec.revision_history_limit.unwrap_or(10);
    plan.steps.extend(history_steps(&olds, limit));
    let (status, complete) = status(d, &sets, created_new, Time(now));
    if let Some(rev) = new.map(|n| revision(n).to_string())
        && d.annotations().get(REVISION) != Some(&rev)
    {
        plan.steps.push(Step::Annotate(rev));
    }
    let prev = d.status.clone().unwrap_or_default();
    if strip_times(&prev) != strip_times(&status) || d.status.is_none() {
        plan.steps.push(Step::Status(Box::new(status)));
    }
    if !(complete || paused) {
        plan.requeue = Some(Duration::from_secs(5));
    }
    plan
}

fn strip_times(s: &DeploymentStatus) -> DeploymentStatus {
    let mut s = s.clone();
    for c in s.conditions.iter_mut().flatten() {
        c.last_update_time = None;
    }
    s
}

/// The status from the ReplicaSets as observed (upstream's `calculateStatus` and
/// `syncRolloutStatus`), and whether the rollout is complete.
fn status(d: &Deployment, sets: &Sets, created_new: bool, now: Time) -> (DeploymentStatus, bool) {
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let total = sets.sum(status_replicas);
    let ready = sets.sum(ready);
    let avail = sets.sum(available);
    let new = sets.new_rs();
    let updated = new.map(status_replicas).unwrap_or(0);
    let prev = d.status.clone().unwrap_or_default();
    let prev_cond = |t: &str| {
        prev.conditions
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.type_ == t))
            .cloned()
    };
    let available_cond = if avail >= replicas - max_unavailable(&spec, replicas) {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            prev_cond("Available").as_ref(),
            &now,
        )
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            prev_cond("Available").as_ref(),
            &now,
        )
    };
    let rollout = Rollout {
        complete: updated == replicas
            && total == replicas
            && avail == replicas
            && sets.olds().iter().all(|o| spec_replicas(o) == 0),
        // Upstream's `DeploymentProgressing`, and a new ReplicaSet is progress too.
        progressed: updated > prev.updated_replicas.unwrap_or(0)
            || total - updated < prev.replicas.unwrap_or(0) - prev.updated_replicas.unwrap_or(0)
            || avail > prev.available_replicas.unwrap_or(0)
            || ready > prev.ready_replicas.unwrap_or(0)
            || created_new,
        created_new,
        settled: total == updated,
        paused: spec.paused == Some(true),
        deadline: spec.progress_deadline_seconds.unwrap_or(600),
        new_name: new.map(|n| n.name_any()),
        deployment: d.name_any(),
    };
    let progressing_cond = rollout.condition(prev_cond("Progressing"), &now);
    let status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(avail),
        // Upstream counts against the ReplicaSets' spec, not their pods.
        unavailable_replicas: Some((sets.sum(spec_replicas) - avail).max(0)),
        conditions: Some(vec![available_cond, progressing_cond]),
        collision_count: prev.collision_count,
        terminating_replicas: None,
    };
    (status, rollout.complete)
}

/// What the Progressing condition is decided from.
struct Rollout {
    complete: bool,
    progressed: bool,
    created_new: bool,
    /// Every pod is of the new ReplicaSet.
    settled: bool,
    paused: bool,
    deadline: i32,
    new_name: Option<String>,
    deployment: String,
}

impl Rollout {
    /// What upstream's messages speak of: the new ReplicaSet, or the Deployment before it has one.
    fn subject(&self) -> String {
        match &self.new_name {
            Some(n) => format!("ReplicaSet \"{n}\""),
            None => format!("Deployment \"{}\"", self.deployment),
        }
    }

    fn condition(&self, prev: Option<DeploymentCondition>, now: &Time) -> DeploymentCondition {
        let reason_was = |r: &str| {
            prev.as_ref()
                .is_some_and(|c| c.reason.as_deref() == Some(r))
        };
        let cond = |status: &str, reason: &str, message: String| {
            condition("Progressing", status, reason, message, prev.as_ref(), now)
        };
        let subject = self.subject();
        let timed_out = !reason_was("NewReplicaSetAvailable")
            && (reason_was("ProgressDeadlineExceeded")
                || prev
                    .as_ref()
                    .and_then(|c| c.last_update_time.as_ref())
                    .is_some_and(|t| {
                        t.0.as_second() + i64::from(self.deadline) < now.0.as_second()
                    }));
        if self.paused {
            // Upstream's `checkPausedConditions`: Unknown, unless it already timed out.
            match prev {
                Some(p) if reason_was("ProgressDeadlineExceeded") => p,
                _ => cond("Unknown", "DeploymentPaused", "Deployment is paused".into()),
            }
        } else if let Some(p) = prev
            .clone()
            .filter(|_| reason_was("NewReplicaSetAvailable") && self.settled)
        {
            // A finished rollout has nothing to estimate (upstream's `isCompleteDeployment`).
            p
        } else if self.complete {
            cond(
                "True",
                "NewReplicaSetAvailable",
                format!("{subject} has successfully progressed."),
            )
        } else if self.created_new {
            let name = self.new_name.clone().unwrap_or_default();
            let message = format!("Created new replica set \"{name}\"");
            condition(
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                message,
                None,
                now,
            )
        } else if !self.progressed && timed_out {
            cond(
                "False",
                "ProgressDeadlineExceeded",
                format!("{subject} has timed out progressing."),
            )
        } else {
            let mut c = cond(
                "True",
                "ReplicaSetUpdated",
                format!("{subject} is progressing."),
            );
            if self.progressed {
                c.last_update_time = Some(now.clone());
            }
            c
        }
    }
}

/// Performs `plan` for `d`.
async fn apply(ctx: &Context, d: &Deployment, plan: Plan) -> Result<Action, kube::Error> {
    let ns = d.namespace().unwrap_or_default();
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    for step in plan.steps {
        match step {
            Step::Create(rs) => match rs_api.create(&PostParams::default(), &rs).await {
                Ok(_) => {}
                // Decided here, not in the plan: the steps after a Create assume it worked. A
                // name taken by a ReplicaSet with another template is a hash collision: bump
                // the count (a new hash next time) and start over.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    let bump = serde_json::json!({"collisionCount": plan.collision_count + 1});
                    merge_status(&ctx.client, d, &bump).await?;
                    return Ok(Action::requeue(Duration::from_millis(200)));
                }
                Err(e) => return Err(e),
            },
            Step::Revise { rs, revision } => {
                let patch = serde_json::json!({"metadata": {"annotations": {REVISION: revision.to_string()}}});
                rs_api
                    .patch(&rs, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                let message = format!(
                    "Rolled back deployment {} to revision {revision}",
                    d.name_any()
                );
                ctx.event(d, false, "DeploymentRollback", message).await;
            }
            Step::Scale { rs, from, to } => {
                let patch = serde_json::json!({
                    "metadata": {"annotations": {
                        "deployment.kubernetes.io/desired-replicas": plan.desired.to_string(),
                        "deployment.kubernetes.io/max-replicas": plan.max_replicas.to_string(),
                    }},
                    "spec": {"replicas": to},
                });
                rs_api
                    .patch(&rs, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                let verb = if to > from { "up" } else { "down" };
                let message = format!("Scaled {verb} replica set {rs} from {from} to {to}");
                ctx.event(d, false, "ScalingReplicaSet", message).await;
            }
            Step::Delete(name) => {
                let _ = rs_api.delete(&name, &DeleteParams::background()).await;
            }
            Step::Annotate(rev) => {
                let d_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
                let patch = serde_json::json!({"metadata": {"annotations": {REVISION: rev}}});
                d_api
                    .patch(
                        &d.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
            }
            Step::Status(status) => merge_status(&ctx.client, d, &status).await?,
        }
    }
    Ok(plan
        .requeue
        .map(Action::requeue)
        .unwrap_or_else(Action::await_change))
}

async fn reconcile(d: Arc<Deployment>, dc: Arc<DCtx>) -> Result<Action, kube::Error> {
    let ns = d.namespace();
    let uid = d.uid();
    let owned: Vec<ReplicaSet> = (dc.replicasets.state().iter())
        .filter(|r| r.namespace() == ns && controller_uid(&r.metadata) == uid.as_deref())
        .map(|r| (**r).clone())
        .collect();
    let plan = plan(&d, owned, Timestamp::now());
    apply(&dc.ctx, &d, plan).await
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
#[allow(clippy::type_complexity)] // the tables' rows
mod tests {
    use super::*;
    use crate::controllers::util::testing::{Table, ago, merged, now, typed};
    use serde_json::{Value, json};

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

    fn template(image: &str) -> Value {
        json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}})
    }

    /// Deployment `web` (3 replicas of image v2, default strategy), plus `patch`.
    fn deployment(patch: Value) -> Deployment {
        let base = json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "d1", "generation": 1},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template("v2")},
        });
        typed(merged(base, patch))
    }

    /// RollingUpdate with these maxSurge and maxUnavailable.
    fn rolling(surge: Value, unavailable: Value) -> Value {
        json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}}})
    }

    fn recreate() -> Value {
        json!({"spec": {"strategy": {"type": "Recreate"}}})
    }

    /// ReplicaSet `name` at revision `rev` running `image`: `spec` replicas wanted, `pods`
    /// existing of which `avail` available (and ready).
    fn rs(name: &str, rev: i64, image: &str, spec: i32, pods: i32, avail: i32) -> ReplicaSet {
        let mut t = template(image);
        t["metadata"]["labels"][HASH_LABEL] = json!(name);
        typed(json!({
            "metadata": {"name": name, "namespace": "default", "annotations": {REVISION: rev.to_string()},
                         "generation": 1},
            "spec": {"replicas": spec, "selector": {"matchLabels": {"app": "web"}}, "template": t},
            "status": {"replicas": pods, "readyReplicas": avail, "availableReplicas": avail, "observedGeneration": 1},
        }))
    }

    /// The plan's ReplicaSet actions, with the name of a created ReplicaSet written `new`.
    fn actions(plan: &Plan) -> Vec<String> {
        let created = plan.steps.iter().find_map(|s| match s {
            Step::Create(rs) => Some(rs.name_any()),
            _ => None,
        });
        let name = |n: &str| {
            if Some(n) == created.as_deref() {
                "new".to_string()
            } else {
                n.to_string()
            }
        };
        (plan.steps.iter())
            .filter_map(|s| match s {
                Step::Create(rs) => Some(format!("create rev {}", revision(rs))),
                Step::Revise { rs, revision } => Some(format!("revise {rs} to {revision}")),
                Step::Scale { rs, from, to } => Some(format!("scale {} {from}->{to}", name(rs))),
                Step::Delete(rs) => Some(format!("delete {rs}")),
                Step::Annotate(_) | Step::Status(_) => None,
            })
            .collect()
    }

    #[test]
    fn replicaset_actions() {
        let int = |n: i32| json!(n);
        let pct = |p: &str| json!(p);
        let history = |n: i32| json!({"spec": {"revisionHistoryLimit": n}});
        let replicas = |n: i32| json!({"spec": {"replicas": n}});
        let paused = json!({"spec": {"paused": true}});
        let both = |a: Value, b: Value| merged(a, b);
        // (case, deployment patch, ReplicaSets, actions)
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, Vec<ReplicaSet>, Vec<&str>)> = vec![
            ("first rollout: create, then up to replicas (surge 25% of 3 rounds up to 1)",
                json!({}), vec![], vec!["create rev 1", "scale new 0->3"]),
            ("template change: new up by maxSurge (25% of 10 = 3), old down by maxUnavailable (25% of 10 = 2)",
                replicas(10), vec![rs("web-a", 1, "v1", 10, 10, 10)],
                vec!["create rev 2", "scale new 0->3", "scale web-a 10->8"]),
            ("surge 25% of 3 rounds up to 1, unavailable 25% of 3 down to 0: wait for the new pod",
                json!({}), vec![rs("web-a", 1, "v1", 3, 3, 3), rs("web-b", 2, "v2", 0, 0, 0)],
                vec!["scale web-b 0->1"]),
            ("maxSurge 0, maxUnavailable 25% of 10 = 2: old down first",
                both(replicas(10), rolling(int(0), pct("25%"))), vec![rs("web-a", 1, "v1", 10, 10, 10), rs("web-b", 2, "v2", 0, 0, 0)],
                vec!["scale web-a 10->8"]),
            ("maxSurge 0 and maxUnavailable 0 mean one unavailable",
                rolling(int(0), int(0)), vec![rs("web-a", 1, "v1", 3, 3, 3), rs("web-b", 2, "v2", 0, 0, 0)],
                vec!["scale web-a 3->2"]),
            ("unavailable new pods hold the old ones",
                rolling(int(1), int(0)), vec![rs("web-a", 1, "v1", 3, 3, 3), rs("web-b", 2, "v2", 1, 1, 0)],
                vec![]),
            ("an available new pod lets one old one go",
                rolling(int(1), int(0)), vec![rs("web-a", 1, "v1", 3, 3, 3), rs("web-b", 2, "v2", 1, 1, 1)],
                vec!["scale web-a 3->2"]),
            ("unavailable old replicas go first, and availability stops the rest",
                both(replicas(4), rolling(int(0), int(1))),
                vec![rs("web-a", 1, "v0", 2, 2, 0), rs("web-b", 2, "v1", 2, 2, 2), rs("web-c", 3, "v2", 0, 0, 0)],
                vec!["scale web-a 2->1"]),
            // Kinglet used to take the new ReplicaSet's unavailable pods off the budget a second
            // time and held the old ones at 10 (upstream scaleDownOldReplicaSetsForRollingUpdate).
            ("old scale-down budget is available pods over the minimum",
                both(replicas(10), rolling(int(3), int(3))), vec![rs("web-a", 1, "v1", 10, 10, 10), rs("web-b", 2, "v2", 3, 3, 0)],
                vec!["scale web-a 10->7"]),
            ("several old ReplicaSets scale down oldest first",
                both(replicas(4), rolling(int(0), int(2))),
                vec![rs("web-b", 2, "v1", 2, 2, 2), rs("web-a", 1, "v0", 2, 2, 2), rs("web-c", 3, "v2", 0, 0, 0)],
                vec!["scale web-a 2->0"]),
            ("new ReplicaSet above replicas scales down",
                replicas(2), vec![rs("web-a", 1, "v2", 4, 4, 4)], vec!["scale web-a 4->2"]),
            ("complete rollout: nothing to do",
                json!({}), vec![rs("web-a", 1, "v1", 0, 0, 0), rs("web-b", 2, "v2", 3, 3, 3)], vec![]),
            ("Recreate: old scaled to 0, new not made while old pods run",
                recreate(), vec![rs("web-a", 1, "v1", 3, 3, 3)], vec!["scale web-a 3->0"]),
            ("Recreate: old pods still terminating, wait",
                recreate(), vec![rs("web-a", 1, "v1", 0, 2, 0)], vec![]),
            ("Recreate: old pods gone, create the new one at full size",
                recreate(), vec![rs("web-a", 1, "v1", 0, 0, 0)], vec!["create rev 2", "scale new 0->3"]),
            ("Recreate: existing new one waits for the old pods",
                recreate(), vec![rs("web-a", 1, "v1", 0, 1, 0), rs("web-b", 2, "v2", 0, 0, 0)], vec![]),
            ("Recreate: existing new one scales up once they are gone",
                recreate(), vec![rs("web-a", 1, "v1", 0, 0, 0), rs("web-b", 2, "v2", 0, 0, 0)], vec!["scale web-b 0->3"]),
            ("paused: a new template makes no ReplicaSet",
                paused.clone(), vec![rs("web-a", 1, "v1", 3, 3, 3)], vec![]),
            ("paused: replicas follow on the one active ReplicaSet",
                both(paused.clone(), replicas(5)), vec![rs("web-a", 1, "v2", 3, 3, 3)], vec!["scale web-a 3->5"]),
            ("paused with a new template: the active old ReplicaSet is scaled",
                both(paused.clone(), replicas(5)), vec![rs("web-a", 1, "v1", 3, 3, 3)], vec!["scale web-a 3->5"]),
            ("paused mid-rollout: two active, nothing moves",
                both(paused.clone(), replicas(5)), vec![rs("web-a", 1, "v1", 2, 2, 2), rs("web-b", 2, "v2", 2, 2, 2)], vec![]),
            ("rollback: the old template's ReplicaSet becomes the newest revision",
                json!({"spec": {"template": template("v1")}}), vec![rs("web-a", 1, "v1", 0, 0, 0), rs("web-b", 2, "v2", 3, 3, 3)],
                vec!["revise web-a to 3", "scale web-a 0->1"]),
            ("history: empty old ReplicaSets beyond the limit go, oldest first",
                history(1), vec![rs("web-a", 1, "v0", 0, 0, 0), rs("web-b", 2, "v1", 0, 0, 0), rs("web-c", 3, "v9", 0, 0, 0), rs("web-d", 4, "v2", 3, 3, 3)],
                vec!["delete web-a", "delete web-b"]),
            // Upstream counts every old ReplicaSet against the limit and deletes only the empty
            // ones among the oldest; kinglet counted only the empty ones.
            ("history: old ReplicaSets with pods count but stay",
                history(1), vec![rs("web-a", 1, "v0", 0, 0, 0), rs("web-b", 2, "v1", 0, 1, 0), rs("web-c", 3, "v2", 3, 3, 3)],
                vec!["delete web-a"]),
            ("history: the oldest has pods, so nothing goes",
                history(1), vec![rs("web-a", 1, "v0", 0, 1, 0), rs("web-b", 2, "v1", 0, 0, 0), rs("web-c", 3, "v2", 3, 3, 3)],
                vec![]),
            ("history: limit 0 deletes every empty old one",
                history(0), vec![rs("web-a", 1, "v0", 0, 0, 0), rs("web-b", 2, "v2", 3, 3, 3)], vec!["delete web-a"]),
            ("history: default limit 10 keeps a few",
                json!({}), vec![rs("web-a", 1, "v0", 0, 0, 0), rs("web-b", 2, "v2", 3, 3, 3)], vec![]),
            ("history: while paused too",
                both(paused, history(0)), vec![rs("web-a", 1, "v0", 0, 0, 0), rs("web-b", 2, "v2", 3, 3, 3)], vec!["delete web-a"]),
            ("being deleted: nothing",
                json!({"metadata": {"deletionTimestamp": ago(1)}}), vec![rs("web-a", 1, "v1", 3, 3, 3)], vec![]),
        ];
        let mut table = Table::default();
        for (case, patch, sets, want) in cases {
            let d = deployment(patch);
            table.check(case, actions(&plan(&d, sets, now())), strings(&want));
        }
        table.done();
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Status conditions of `plan` as "Type=Status/Reason", and its requeue.
    fn conditions(plan: &Plan) -> (Vec<String>, Option<Duration>) {
        let status = plan.steps.iter().find_map(|s| match s {
            Step::Status(st) => Some(st.clone()),
            _ => None,
        });
        let conds = status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .map(|c| {
                format!(
                    "{}={}/{}",
                    c.type_,
                    c.status,
                    c.reason.clone().unwrap_or_default()
                )
            })
            .collect();
        (conds, plan.requeue)
    }

    /// A previous status with a Progressing condition of `reason`, last updated `age` seconds ago.
    fn progressing(status: &str, reason: &str, age: i64, counts: Value) -> Value {
        merged(
            json!({"status": {"conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability."},
                {"type": "Progressing", "status": status, "reason": reason, "message": "m",
                 "lastUpdateTime": ago(age), "lastTransitionTime": ago(age)}]}}),
            json!({"status": counts}),
        )
    }

    #[test]
    fn status_conditions() {
        let counts = |r: i32, u: i32, a: i32| json!({"replicas": r, "updatedReplicas": u, "readyReplicas": a, "availableReplicas": a});
        let deadline = |s: i32| json!({"spec": {"progressDeadlineSeconds": s}});
        let five = Some(Duration::from_secs(5));
        // (case, deployment patch, ReplicaSets, conditions, requeue)
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, Vec<ReplicaSet>, Vec<&str>, Option<Duration>)> = vec![
            ("new Deployment: ReplicaSet created",
                json!({}), vec![], vec!["Available=False/MinimumReplicasUnavailable", "Progressing=True/NewReplicaSetCreated"], five),
            ("complete: settles until the next change",
                json!({}), vec![rs("web-a", 1, "v2", 3, 3, 3)], vec!["Available=True/MinimumReplicasAvailable", "Progressing=True/NewReplicaSetAvailable"], None),
            ("25% of 3 may be unavailable: 0, so 2 of 3 is not enough",
                json!({}), vec![rs("web-a", 1, "v2", 3, 3, 2)], vec!["Available=False/MinimumReplicasUnavailable", "Progressing=True/ReplicaSetUpdated"], five),
            ("maxUnavailable 1: 2 of 3 is available",
                rolling_patch(1), vec![rs("web-a", 1, "v2", 3, 3, 2)], vec!["Available=True/MinimumReplicasAvailable", "Progressing=True/ReplicaSetUpdated"], five),
            // Upstream's MaxUnavailable is 0 for Recreate; kinglet allowed all replicas.
            ("Recreate: every replica must be available",
                recreate(), vec![rs("web-a", 1, "v2", 3, 3, 2)], vec!["Available=False/MinimumReplicasUnavailable", "Progressing=True/ReplicaSetUpdated"], five),
            ("no progress past the deadline",
                merged(deadline(600), progressing("True", "ReplicaSetUpdated", 700, counts(4, 1, 3))),
                vec![rs("web-a", 1, "v1", 3, 3, 3), rs("web-b", 2, "v2", 1, 1, 0)],
                vec!["Available=True/MinimumReplicasAvailable", "Progressing=False/ProgressDeadlineExceeded"], five),
            ("no progress within the deadline",
                merged(deadline(600), progressing("True", "ReplicaSetUpdated", 300, counts(4, 1, 3))),
                vec![rs("web-a", 1, "v1", 3, 3, 3), rs("web-b", 2, "v2", 1, 1, 0)],
                vec!["Available=True/MinimumReplicasAvailable", "Progressing=True/ReplicaSetUpdated"], five),
            ("timed out stays timed out without progress",
                progressing("False", "ProgressDeadlineExceeded", 5, counts(4, 1, 3)),
                vec![rs("web-a", 1, "v1", 3, 3, 3), rs("web-b", 2, "v2", 1, 1, 0)],
                vec!["Available=True/MinimumReplicasAvailable", "Progressing=False/ProgressDeadlineExceeded"], five),
            ("progress after the deadline: progressing again",
                progressing("False", "ProgressDeadlineExceeded", 900, counts(4, 1, 3)),
                vec![rs("web-a", 1, "v1", 3, 3, 3), rs("web-b", 2, "v2", 1, 1, 1)],
                vec!["Available=True/MinimumReplicasAvailable", "Progressing=True/ReplicaSetUpdated"], five),
            ("old replicas going is progress (upstream)",
                progressing("True", "ReplicaSetUpdated", 700, counts(4, 1, 3)),
                vec![rs("web-a", 1, "v1", 2, 2, 2), rs("web-b", 2, "v2", 1, 1, 0)],
                vec!["Available=False/MinimumReplicasUnavailable", "Progressing=True/ReplicaSetUpdated"], five),
            // Kinglet timed out a finished rollout as soon as a pod went unavailable; upstream
            // estimates no progress for a complete Deployment.
            ("a finished rollout losing a pod does not time out",
                progressing("True", "NewReplicaSetAvailable", 7200, counts(3, 3, 3)),
                vec![rs("web-a", 1, "v2", 3, 3, 2)],
                vec!["Available=False/MinimumReplicasUnavailable", "Progressing=True/NewReplicaSetAvailable"], five),
            // Upstream's checkPausedConditions writes Unknown; kinglet kept True.
            ("paused: Unknown, and no requeue",
                merged(json!({"spec": {"paused": true}}), progressing("True", "ReplicaSetUpdated", 5, counts(3, 3, 3))),
                vec![rs("web-a", 1, "v2", 3, 3, 3)],
                vec!["Available=True/MinimumReplicasAvailable", "Progressing=Unknown/DeploymentPaused"], None),
            ("paused keeps a timeout",
                merged(json!({"spec": {"paused": true}}), progressing("False", "ProgressDeadlineExceeded", 5, counts(3, 3, 3))),
                vec![rs("web-a", 1, "v2", 3, 3, 3)],
                vec!["Available=True/MinimumReplicasAvailable", "Progressing=False/ProgressDeadlineExceeded"], None),
        ];
        let mut table = Table::default();
        for (case, patch, sets, want, requeue) in cases {
            let d = deployment(patch);
            table.check(
                case,
                conditions(&plan(&d, sets, now())),
                (strings(&want), requeue),
            );
        }
        table.done();
    }

    fn rolling_patch(unavailable: i32) -> Value {
        rolling(json!(1), json!(unavailable))
    }

    #[test]
    fn status_counts_and_revision() {
        let d = deployment(json!({"metadata": {"annotations": {REVISION: "1"}}}));
        let sets = vec![rs("web-a", 1, "v1", 2, 3, 2), rs("web-b", 2, "v2", 2, 1, 1)];
        let planned = plan(&d, sets, now());
        let status = planned.steps.iter().find_map(|s| match s {
            Step::Status(st) => Some(st.clone()),
            _ => None,
        });
        let counts = status.map(|s| {
            (
                s.replicas,
                s.updated_replicas,
                s.ready_replicas,
                s.available_replicas,
                s.unavailable_replicas,
            )
        });
        // Pods: 4 (3 + 1), 1 updated, 3 ready and available; unavailable against the
        // ReplicaSets' spec (2 + 2 - 3), as upstream counts.
        assert_eq!(counts, Some((Some(4), Some(1), Some(3), Some(3), Some(1))));
        assert!(planned.steps.contains(&Step::Annotate("2".into())));
        // Nothing changed since the last write: no status write, no annotation.
        let d = deployment(json!({"metadata": {"annotations": {REVISION: "2"}}}));
        let sets = vec![rs("web-a", 1, "v2", 3, 3, 3)];
        let first = plan_status(&d, sets.clone());
        let d = deployment(
            json!({"metadata": {"annotations": {REVISION: "1"}}, "status": serde_json::to_value(&first).unwrap()}),
        );
        assert!(plan(&d, sets, now()).steps.is_empty());
    }

    fn plan_status(d: &Deployment, sets: Vec<ReplicaSet>) -> DeploymentStatus {
        plan(d, sets, now())
            .steps
            .into_iter()
            .find_map(|s| match s {
                Step::Status(st) => Some(*st),
                _ => None,
            })
            .expect("status")
    }
}
