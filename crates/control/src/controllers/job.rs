//! Job controller: runs pods until `completions` succeed (or, without completions, until one
//! succeeds and none is active), at most `parallelism` at a time; fails the Job past
//! `backoffLimit` or `activeDeadlineSeconds`; honours `suspend`; deletes finished Jobs after
//! `ttlSecondsAfterFinished`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;

use super::informers::Informers;
use super::util::{
    Context, Expectations, controller_ref, controller_uid, is_ready, job_deletion_order,
    merge_status,
};

struct JobCtx {
    ctx: Arc<Context>,
    /// Deletes finished Jobs past `ttlSecondsAfterFinished`, as upstream's
    /// ttl-after-finished-controller (its own identity: the job controller may not delete Jobs).
    ttl: kube::Client,
    pods: Store<Pod>,
    expectations: Expectations,
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn finished(job: &Job) -> Option<&JobCondition> {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter()
                .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

fn cond(type_: &str, status: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// One API action of a Job reconcile, in the order `apply` performs them.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// Delete the Job itself: it finished more than `ttlSecondsAfterFinished` ago.
    DeleteJob,
    /// Delete an active pod because the Job finished or is suspended.
    Stop(String),
    /// Delete surplus active pods (parallelism went down), expecting them gone.
    Trim(Vec<String>),
    /// Create this many pods from the template, one after the other.
    Create(i32),
    Event {
        warning: bool,
        reason: String,
        message: String,
    },
    Status(Box<JobStatus>),
}

#[derive(Debug)]
struct Plan {
    steps: Vec<Step>,
    requeue: Option<Duration>,
}

fn event(warning: bool, reason: &str, message: &str) -> Step {
    Step::Event {
        warning,
        reason: reason.into(),
        message: message.into(),
    }
}

/// A finished Job waits for its TTL, then goes.
fn plan_finished(job: &Job, now: Timestamp) -> Plan {
    let idle = Plan {
        steps: Vec::new(),
        requeue: None,
    };
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return idle;
    };
    let done = job
        .status
        .as_ref()
        .and_then(|s| {
            s.completion_time
                .as_ref()
                .or_else(|| finished(job).and_then(|c| c.last_transition_time.as_ref()))
        })
        .map(|t| t.0.as_second())
        .unwrap_or(now.as_second());
    let due = done + i64::from(ttl);
    if due <= now.as_second() {
        return Plan {
            steps: vec![Step::DeleteJob],
            requeue: None,
        };
    }
    Plan {
        steps: Vec::new(),
        requeue: Some(Duration::from_secs((due - now.as_second()) as u64)),
    }
}

/// How many pods should be running (upstream's `wantActive` in `manageJob`): without
/// completions, parallelism until one succeeds and then whatever still runs; with them, the
/// completions left, at most parallelism.
fn want_active(spec: &JobSpec, succeeded: i32, active: i32) -> i32 {
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    match spec.completions {
        None if succeeded > 0 => active,
        None => parallelism,
        Some(c) => (c - succeeded).clamp(0, parallelism),
    }
}

/// The finishing condition, if the Job is done: backoff limit, deadline, or completions.
fn outcome(
    spec: &JobSpec,
    counts: (i32, i32, usize),
    start: &Time,
    now: Timestamp,
) -> Option<JobCondition> {
    let (succeeded, failed, active) = counts;
    let suspended = spec.suspend == Some(true);
    if failed > spec.backoff_limit.unwrap_or(6) {
        let message = "Job has reached the specified backoff limit";
        return Some(cond("Failed", "True", "BackoffLimitExceeded", message, now));
    }
    if !suspended
        && spec
            .active_deadline_seconds
            .is_some_and(|d| start.0.as_second() + d <= now.as_second())
    {
        let message = "Job was active longer than specified deadline";
        return Some(cond("Failed", "True", "DeadlineExceeded", message, now));
    }
    let complete = match spec.completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active == 0,
    };
    complete.then(|| JobCondition {
        reason: None,
        message: None,
        ..cond("Complete", "True", "", "", now)
    })
}

/// Upstream's `ensureJobConditionStatus` for Suspended: True while suspended, False (not
/// removed) once resumed; a Job never suspended gets none. Returns whether it changed.
fn set_suspended(conditions: &mut Vec<JobCondition>, suspended: bool, now: Timestamp) -> bool {
    let is_true = conditions
        .iter()
        .any(|c| c.type_ == "Suspended" && c.status == "True");
    if is_true == suspended {
        return false;
    }
    let new = if suspended {
        cond("Suspended", "True", "JobSuspended", "Job suspended", now)
    } else {
        cond("Suspended", "False", "JobResumed", "Job resumed", now)
    };
    match conditions.iter_mut().find(|c| c.type_ == "Suspended") {
        Some(c) => *c = new,
        None if suspended => conditions.push(new),
        None => return false,
    }
    true
}

/// Finishing with `outcome`: what still runs is stopped, the conditions that lead to it are
/// added (FailureTarget or SuccessCriteriaMet, then the outcome) and an event says why.
fn finish(
    outcome: &JobCondition,
    active: &[&Pod],
    conditions: &mut Vec<JobCondition>,
    now: Timestamp,
) -> Vec<Step> {
    let mut steps: Vec<Step> = active.iter().map(|p| Step::Stop(p.name_any())).collect();
    if outcome.type_ == "Failed" {
        let reason = outcome.reason.as_deref().unwrap_or("");
        let message = outcome.message.as_deref().unwrap_or("");
        conditions.push(cond("FailureTarget", "True", reason, message, now));
        let reason = if reason.is_empty() { "Failed" } else { reason };
        steps.push(event(true, reason, message));
    } else {
        let message = "Reached expected number of succeeded pods";
        conditions.push(cond(
            "SuccessCriteriaMet",
            "True",
            "CompletionsReached",
            message,
            now,
        ));
        steps.push(event(false, "Completed", "Job completed"));
    }
    conditions.push(outcome.clone());
    steps
}

/// Pods to create, or surplus ones to delete (upstream's `manageJob`), for a running Job.
fn pods_step(spec: &JobSpec, active: &[&Pod], succeeded: i32) -> Option<Step> {
    let running = active.len() as i32;
    let want = want_active(spec, succeeded, running);
    if running > want {
        let order = job_deletion_order(active);
        let surplus = order[..(running - want) as usize]
            .iter()
            .map(|p| p.name_any());
        Some(Step::Trim(surplus.collect()))
    } else {
        (want > running).then(|| Step::Create(want - running))
    }
}

/// Decides one reconcile of `job` from its pods (`owned`) at `now`; `settled` is whether the
/// cache has caught up with its last creates and deletes.
fn plan(job: &Job, owned: &[&Pod], settled: bool, now: Timestamp) -> Plan {
    if job.metadata.deletion_timestamp.is_some() {
        return Plan {
            steps: Vec::new(),
            requeue: None,
        };
    }
    if finished(job).is_some() {
        return plan_finished(job, now);
    }
    let spec = job.spec.clone().unwrap_or_default();
    let mut steps = Vec::new();
    let active: Vec<&Pod> = owned
        .iter()
        .copied()
        .filter(|p| {
            !matches!(phase(p), "Succeeded" | "Failed") && p.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let succeeded = owned.iter().filter(|p| phase(p) == "Succeeded").count() as i32;
    let failed = owned.iter().filter(|p| phase(p) == "Failed").count() as i32;
    let prev = job.status.clone().unwrap_or_default();
    let suspended = spec.suspend == Some(true);
    let mut conditions = prev.conditions.clone().unwrap_or_default();
    // Upstream restarts the clock of activeDeadlineSeconds when a Job resumes.
    let resumed = !suspended
        && conditions
            .iter()
            .any(|c| c.type_ == "Suspended" && c.status == "True");
    let start = match &prev.start_time {
        Some(t) if !resumed => t.clone(),
        _ => Time(now),
    };
    let mut completion_time = prev.completion_time.clone();
    let outcome = outcome(&spec, (succeeded, failed, active.len()), &start, now);
    // A suspended Job's deadline does not run (upstream's `pastActiveDeadline`).
    let mut requeue = (spec.active_deadline_seconds.filter(|_| !suspended))
        .map(|d| Duration::from_secs((start.0.as_second() + d - now.as_second()).max(1) as u64));
    if let Some(o) = &outcome {
        steps.extend(finish(o, &active, &mut conditions, now));
        if o.type_ == "Complete" {
            completion_time = Some(Time(now));
        }
        requeue = None;
    } else {
        if suspended {
            steps.extend(active.iter().map(|p| Step::Stop(p.name_any())));
        } else if settled {
            steps.extend(pods_step(&spec, &active, succeeded));
        } else {
            requeue = Some(Duration::from_millis(500));
        }
        if set_suspended(&mut conditions, suspended, now) {
            steps.push(if suspended {
                event(false, "Suspended", "Job suspended")
            } else {
                event(false, "Resumed", "Job resumed")
            });
        }
    }
    conditions.dedup_by(|a, b| a.type_ == b.type_);
    let status = JobStatus {
        active: Some(active.len() as i32).filter(|n| *n > 0),
        succeeded: Some(succeeded).filter(|n| *n > 0),
        failed: Some(failed).filter(|n| *n > 0),
        ready: Some(active.iter().filter(|p| is_ready(p)).count() as i32),
        start_time: if suspended && prev.start_time.is_none() {
            None
        } else {
            Some(start)
        },
        completion_time,
        conditions: Some(conditions).filter(|c| !c.is_empty()),
        ..prev.clone()
    };
    if Some(&status) != job.status.as_ref() {
        steps.push(Step::Status(Box::new(status)));
    }
    Plan { steps, requeue }
}

/// Creates `want` pods one by one, with an event each, and records them as expected.
async fn create_pods(jc: &JobCtx, job: &Job, want: i32) {
    let ns = job.namespace().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(jc.ctx.client.clone(), &ns);
    let tmpl = job.spec.clone().unwrap_or_default().template;
    let mut meta = tmpl.metadata.clone().unwrap_or_default();
    meta.generate_name = Some(format!("{}-", job.name_any()));
    meta.namespace = Some(ns);
    meta.owner_references = Some(vec![controller_ref(job)]);
    let pod = Pod {
        metadata: meta,
        spec: tmpl.spec.clone(),
        status: None,
    };
    let mut created = HashSet::new();
    // Decided here, not in the plan: the first failed create stops the rest.
    for _ in 0..want {
        match pods_api.create(&PostParams::default(), &pod).await {
            Ok(p) => {
                let message = format!("Created pod: {}", p.name_any());
                jc.ctx.event(job, false, "SuccessfulCreate", message).await;
                created.insert(p.name_any());
            }
            Err(e) => {
                let message = format!("Error creating: {e}");
                jc.ctx.event(job, true, "FailedCreate", message).await;
                break;
            }
        }
    }
    jc.expectations
        .expect(&job.uid().unwrap_or_default(), created, HashSet::new());
}

/// Performs `plan` for `job`.
async fn apply(jc: &JobCtx, job: &Job, plan: Plan) -> Result<Action, kube::Error> {
    let ns = job.namespace().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(jc.ctx.client.clone(), &ns);
    for step in plan.steps {
        match step {
            Step::DeleteJob => {
                let api: Api<Job> = Api::namespaced(jc.ttl.clone(), &ns);
                api.delete(&job.name_any(), &DeleteParams::background())
                    .await?;
            }
            Step::Stop(name) => {
                let _ = pods_api.delete(&name, &DeleteParams::default()).await;
            }
            Step::Trim(names) => {
                for name in &names {
                    let _ = pods_api.delete(name, &DeleteParams::default()).await;
                }
                let uid = job.uid().unwrap_or_default();
                jc.expectations
                    .expect(&uid, HashSet::new(), names.into_iter().collect());
            }
            Step::Create(n) => create_pods(jc, job, n).await,
            Step::Event {
                warning,
                reason,
                message,
            } => jc.ctx.event(job, warning, &reason, message).await,
            Step::Status(status) => merge_status(&jc.ctx.client, job, &status).await?,
        }
    }
    Ok(plan
        .requeue
        .map(Action::requeue)
        .unwrap_or_else(Action::await_change))
}

async fn reconcile(job: Arc<Job>, jc: Arc<JobCtx>) -> Result<Action, kube::Error> {
    let ns = job.namespace();
    let uid = job.uid();
    let pods: Vec<Arc<Pod>> = (jc.pods.state().into_iter())
        .filter(|p| p.namespace() == ns && controller_uid(&p.metadata) == uid.as_deref())
        .collect();
    let owned: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    // Only a Job that may create pods consults (and so updates) its expectations.
    let may_create = job.metadata.deletion_timestamp.is_none()
        && finished(&job).is_none()
        && job.spec.as_ref().and_then(|s| s.suspend) != Some(true);
    let settled = !may_create
        || jc.expectations.satisfied(
            uid.as_deref().unwrap_or_default(),
            &jc.pods,
            ns.as_deref().unwrap_or_default(),
        );
    let plan = plan(&job, &owned, settled, Timestamp::now());
    apply(&jc, &job, plan).await
}

pub async fn run(ctx: Arc<Context>, ttl: kube::Client, informers: Arc<Informers>) {
    informers.pods.synced().await;
    let jc = Arc::new(JobCtx {
        ctx,
        ttl,
        pods: informers.pods.store(),
        expectations: Expectations::default(),
    });
    let jobs = &informers.jobs;
    Controller::for_shared_stream(jobs.subscribe(), jobs.store())
        .owns_shared_stream(informers.pods.subscribe())
        .run(
            reconcile,
            |_, e, _| {
                tracing::debug!("job: {e}");
                Action::requeue(Duration::from_secs(1))
            },
            jc,
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

    /// Job `batch` (uid j1), started a minute ago, plus `patch`.
    fn job(patch: Value) -> Job {
        let base = json!({
            "metadata": {"name": "batch", "namespace": "default", "uid": "j1"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}},
            "status": {"startTime": ago(60)},
        });
        typed(merged(base, patch))
    }

    fn spec(fields: Value) -> Value {
        json!({"spec": fields})
    }

    /// Pod `name` of the Job in `phase`, ready when Running; created `age` seconds ago.
    fn pod(name: &str, phase: &str, age: i64) -> Pod {
        let ready = if phase == "Running" { "True" } else { "False" };
        typed(json!({
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": ago(age),
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "batch", "uid": "j1", "controller": true}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": ago(age)}]},
        }))
    }

    fn running(name: &str) -> Pod {
        pod(name, "Running", 30)
    }
    fn succeeded(name: &str) -> Pod {
        pod(name, "Succeeded", 30)
    }
    fn failed(name: &str) -> Pod {
        pod(name, "Failed", 30)
    }

    /// A finished Job: `type_` True since `age` seconds ago.
    fn finished_ago(type_: &str, age: i64) -> Value {
        json!({"status": {"conditions": [{"type": type_, "status": "True", "lastTransitionTime": ago(age)}]}})
    }

    fn suspended_since(age: i64) -> Value {
        json!({"status": {"conditions": [{"type": "Suspended", "status": "True", "reason": "JobSuspended", "lastTransitionTime": ago(age)}]}})
    }

    fn actions(plan: &Plan) -> Vec<String> {
        (plan.steps.iter())
            .filter_map(|s| match s {
                Step::DeleteJob => Some("delete job".to_string()),
                Step::Stop(p) => Some(format!("stop {p}")),
                Step::Trim(ps) => Some(format!("trim {}", ps.join(","))),
                Step::Create(n) => Some(format!("create {n}")),
                Step::Event { reason, .. } => Some(format!("event {reason}")),
                Step::Status(_) => None,
            })
            .collect()
    }

    #[test]
    fn job_actions() {
        let secs = |s: u64| Some(Duration::from_secs(s));
        // (case, Job patch, pods, cache settled, actions, requeue)
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, Vec<Pod>, bool, Vec<&str>, Option<Duration>)> = vec![
            ("one pod by default", json!({}), vec![], true, vec!["create 1"], None),
            ("parallelism 3 of 5 completions, 1 done and 1 running",
                spec(json!({"parallelism": 3, "completions": 5})), vec![succeeded("a"), running("b")], true, vec!["create 2"], None),
            ("never more than the completions left",
                spec(json!({"parallelism": 3, "completions": 5})), vec![succeeded("a"), succeeded("b"), succeeded("c"), succeeded("d")], true, vec!["create 1"], None),
            ("last completion running: nothing more",
                spec(json!({"parallelism": 3, "completions": 5})), vec![succeeded("a"), succeeded("b"), succeeded("c"), succeeded("d"), running("e")], true, vec![], None),
            ("no completions: parallelism pods",
                spec(json!({"parallelism": 2})), vec![], true, vec!["create 2"], None),
            ("no completions: after a success, the rest run out, none new",
                spec(json!({"parallelism": 2})), vec![succeeded("a"), running("b")], true, vec![], None),
            ("no completions: a success and nothing running completes",
                spec(json!({"parallelism": 2})), vec![succeeded("a")], true, vec!["event Completed"], None),
            ("completions reached: the rest are stopped",
                spec(json!({"parallelism": 3, "completions": 2})), vec![succeeded("a"), succeeded("b"), running("c")], true, vec!["stop c", "event Completed"], None),
            ("failures up to backoffLimit: retry",
                spec(json!({"backoffLimit": 2})), vec![failed("a"), failed("b")], true, vec!["create 1"], None),
            ("failures past backoffLimit: failed, running pods stopped",
                spec(json!({"backoffLimit": 2, "parallelism": 2})), vec![failed("a"), failed("b"), failed("c"), running("d")], true, vec!["stop d", "event BackoffLimitExceeded"], None),
            ("backoffLimit 0: the first failure fails the Job",
                spec(json!({"backoffLimit": 0})), vec![failed("a")], true, vec!["event BackoffLimitExceeded"], None),
            ("activeDeadlineSeconds passed: failed",
                spec(json!({"activeDeadlineSeconds": 30})), vec![running("a")], true, vec!["stop a", "event DeadlineExceeded"], None),
            ("activeDeadlineSeconds ahead: requeue for it",
                spec(json!({"activeDeadlineSeconds": 100})), vec![running("a")], true, vec![], secs(40)),
            ("suspend: running pods stopped, none created",
                spec(json!({"suspend": true, "parallelism": 2})), vec![running("a"), running("b")], true, vec!["stop a", "stop b", "event Suspended"], None),
            ("already suspended: no second event",
                merged(spec(json!({"suspend": true})), suspended_since(100)), vec![], true, vec![], None),
            // Kinglet requeued a suspended Job every second once its deadline had passed.
            ("suspended: the deadline does not run",
                merged(spec(json!({"suspend": true, "activeDeadlineSeconds": 30})), suspended_since(100)), vec![], true, vec![], None),
            ("resumed: pods again, and the deadline counts from now",
                merged(spec(json!({"activeDeadlineSeconds": 30})), suspended_since(100)), vec![], true, vec!["create 1", "event Resumed"], secs(30)),
            // Upstream's manageJob deletes active pods beyond parallelism; kinglet left them.
            ("parallelism lowered: surplus deleted, pending before running",
                spec(json!({"parallelism": 1})), vec![running("a"), pod("b", "Pending", 5)], true, vec!["trim b"], None),
            ("parallelism lowered: the newest goes first",
                spec(json!({"parallelism": 1})), vec![pod("a", "Running", 10), pod("b", "Running", 500)], true, vec!["trim a"], None),
            ("cache behind: wait",
                json!({}), vec![], false, vec![], Some(Duration::from_millis(500))),
            ("finished past its TTL: deleted",
                merged(spec(json!({"ttlSecondsAfterFinished": 100})), finished_ago("Complete", 200)), vec![], true, vec!["delete job"], None),
            ("finished within its TTL: requeue for it",
                merged(spec(json!({"ttlSecondsAfterFinished": 100})), finished_ago("Failed", 40)), vec![], true, vec![], secs(60)),
            ("completionTime counts before the condition",
                merged(spec(json!({"ttlSecondsAfterFinished": 100})), merged(finished_ago("Complete", 200), json!({"status": {"completionTime": ago(10)}}))), vec![], true, vec![], secs(90)),
            ("finished without a TTL: nothing",
                finished_ago("Complete", 200), vec![running("a")], true, vec![], None),
            ("being deleted: nothing",
                json!({"metadata": {"deletionTimestamp": ago(1)}}), vec![], true, vec![], None),
        ];
        let mut table = Table::default();
        for (case, patch, pods, settled, want, requeue) in cases {
            let refs: Vec<&Pod> = pods.iter().collect();
            let got = plan(&job(patch), &refs, settled, now());
            let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            table.check(case, (actions(&got), got.requeue), (want, requeue));
        }
        table.done();
    }

    /// The status `plan` writes: its conditions as "Type=Status/Reason", how long ago it
    /// started, and whether it has a completion time.
    fn summary(plan: &Plan) -> (Vec<String>, Option<i64>, bool) {
        let Some(st) = plan.steps.iter().find_map(|s| match s {
            Step::Status(st) => Some(st.clone()),
            _ => None,
        }) else {
            return (vec!["(no write)".into()], None, false);
        };
        let conds = (st.conditions.iter().flatten())
            .map(|c| {
                format!(
                    "{}={}/{}",
                    c.type_,
                    c.status,
                    c.reason.clone().unwrap_or_default()
                )
            })
            .collect();
        let started = st.start_time.map(|t| now().as_second() - t.0.as_second());
        (conds, started, st.completion_time.is_some())
    }

    #[test]
    fn job_status() {
        // (case, Job patch, pods, (conditions, started seconds ago, completed))
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, Vec<Pod>, (Vec<&str>, Option<i64>, bool))> = vec![
            ("running", json!({}), vec![running("a")], (vec![], Some(60), false)),
            ("first sync starts the clock", json!({"status": null}), vec![], (vec![], Some(0), false)),
            ("complete", json!({}), vec![succeeded("a")], (vec!["SuccessCriteriaMet=True/CompletionsReached", "Complete=True/"], Some(60), true)),
            ("failed", spec(json!({"backoffLimit": 0})), vec![failed("a")], (vec!["FailureTarget=True/BackoffLimitExceeded", "Failed=True/BackoffLimitExceeded"], Some(60), false)),
            ("created suspended: no start time", json!({"spec": {"suspend": true}, "status": null}), vec![], (vec!["Suspended=True/JobSuspended"], None, false)),
            ("suspended after starting keeps it", spec(json!({"suspend": true})), vec![], (vec!["Suspended=True/JobSuspended"], Some(60), false)),
            // Upstream keeps Suspended=False (JobResumed) and restarts startTime; kinglet
            // dropped the condition and kept the old start.
            ("resumed", suspended_since(100), vec![], (vec!["Suspended=False/JobResumed"], Some(0), false)),
        ];
        let mut table = Table::default();
        for (case, patch, pods, (conds, started, completed)) in cases {
            let refs: Vec<&Pod> = pods.iter().collect();
            let got = summary(&plan(&job(patch), &refs, true, now()));
            let conds: Vec<String> = conds.iter().map(|s| s.to_string()).collect();
            table.check(case, got, (conds, started, completed));
        }
        table.done();
        // Nothing changed: nothing written.
        let pods = [running("a")];
        let refs: Vec<&Pod> = pods.iter().collect();
        let st = plan(&job(json!({})), &refs, true, now())
            .steps
            .into_iter()
            .find_map(|s| match s {
                Step::Status(st) => Some(st),
                _ => None,
            })
            .expect("status");
        let again = job(json!({"status": serde_json::to_value(&st).unwrap()}));
        assert!(plan(&again, &refs, true, now()).steps.is_empty());
    }
}
