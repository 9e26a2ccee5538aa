//! Job controller: runs pods until `completions` succeed (or, without completions, until one
//! succeeds and none is active), at most `parallelism` at a time; fails the Job past
//! `backoffLimit` or `activeDeadlineSeconds`; honours `suspend`; deletes finished Jobs after
//! `ttlSecondsAfterFinished`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;

use super::informers::Informers;
use super::util::{Context, Expectations, controller_ref, controller_uid, is_ready, merge_status};

struct JobCtx {
    ctx: Arc<Context>,
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

fn cond(type_: &str, reason: &str, message: &str) -> JobCondition {
    let now = Time(Timestamp::now());
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

async fn reconcile(job: Arc<Job>, jc: Arc<JobCtx>) -> Result<Action, kube::Error> {
    let ctx = &jc.ctx;
    let ns = job.namespace().unwrap_or_default();
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = job.spec.clone().unwrap_or_default();
    let now = Timestamp::now();
    if finished(&job).is_some() {
        let Some(ttl) = spec.ttl_seconds_after_finished else {
            return Ok(Action::await_change());
        };
        let done = job
            .status
            .as_ref()
            .and_then(|s| {
                s.completion_time
                    .as_ref()
                    .or_else(|| finished(&job).and_then(|c| c.last_transition_time.as_ref()))
            })
            .map(|t| t.0.as_second())
            .unwrap_or(now.as_second());
        let due = done + i64::from(ttl);
        if due <= now.as_second() {
            api.delete(&job.name_any(), &DeleteParams::background())
                .await?;
            return Ok(Action::await_change());
        }
        return Ok(Action::requeue(Duration::from_secs(
            (due - now.as_second()) as u64,
        )));
    }
    let uid = job.uid().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let owned: Vec<Arc<Pod>> = jc
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(ns.as_str())
                && controller_uid(&p.metadata) == Some(uid.as_str())
        })
        .collect();
    let active: Vec<&Arc<Pod>> = owned
        .iter()
        .filter(|p| {
            !matches!(phase(p), "Succeeded" | "Failed") && p.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let succeeded = owned.iter().filter(|p| phase(p) == "Succeeded").count() as i32;
    let failed = owned.iter().filter(|p| phase(p) == "Failed").count() as i32;
    let prev = job.status.clone().unwrap_or_default();
    let start = prev.start_time.clone().unwrap_or(Time(now));
    let mut conditions = prev.conditions.clone().unwrap_or_default();
    let mut completion_time = prev.completion_time.clone();
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let suspended = spec.suspend == Some(true);
    let mut outcome: Option<JobCondition> = None;
    if failed > spec.backoff_limit.unwrap_or(6) {
        outcome = Some(cond(
            "Failed",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ));
    } else if spec
        .active_deadline_seconds
        .is_some_and(|d| start.0.as_second() + d <= now.as_second())
        && !suspended
    {
        outcome = Some(cond(
            "Failed",
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        ));
    } else {
        let complete = match spec.completions {
            Some(c) => succeeded >= c,
            None => succeeded > 0 && active.is_empty(),
        };
        if complete {
            outcome = Some(cond("Complete", "", ""));
            completion_time = Some(Time(now));
        }
    }
    let mut requeue = spec
        .active_deadline_seconds
        .map(|d| Duration::from_secs((start.0.as_second() + d - now.as_second()).max(1) as u64));
    if let Some(o) = &outcome {
        // Finishing: stop what still runs.
        for p in &active {
            let _ = pods_api
                .delete(&p.name_any(), &DeleteParams::default())
                .await;
        }
        if o.type_ == "Failed" {
            conditions.push(cond(
                "FailureTarget",
                o.reason.as_deref().unwrap_or(""),
                o.message.as_deref().unwrap_or(""),
            ));
            ctx.event(
                job.as_ref(),
                true,
                o.reason.as_deref().unwrap_or("Failed"),
                o.message.clone().unwrap_or_default(),
            )
            .await;
        } else {
            let mut done = o.clone();
            done.reason = None;
            done.message = None;
            conditions.push(cond(
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            ));
            outcome = Some(done);
            ctx.event(job.as_ref(), false, "Completed", "Job completed".into())
                .await;
        }
        requeue = None;
    } else if suspended {
        for p in &active {
            let _ = pods_api
                .delete(&p.name_any(), &DeleteParams::default())
                .await;
        }
    } else if jc.expectations.satisfied(&uid, &jc.pods, &ns) {
        let remaining = spec
            .completions
            .map(|c| (c - succeeded).max(0))
            .unwrap_or(if succeeded > 0 { 0 } else { parallelism });
        let want = parallelism.min(remaining) - active.len() as i32;
        if want > 0 {
            let tmpl = spec.template.clone();
            let mut meta = tmpl.metadata.clone().unwrap_or_default();
            meta.generate_name = Some(format!("{}-", job.name_any()));
            meta.namespace = Some(ns.clone());
            meta.owner_references = Some(vec![controller_ref(job.as_ref())]);
            let pod = Pod {
                metadata: meta,
                spec: tmpl.spec.clone(),
                status: None,
            };
            let mut created = HashSet::new();
            for _ in 0..want {
                match pods_api.create(&PostParams::default(), &pod).await {
                    Ok(p) => {
                        ctx.event(
                            job.as_ref(),
                            false,
                            "SuccessfulCreate",
                            format!("Created pod: {}", p.name_any()),
                        )
                        .await;
                        created.insert(p.name_any());
                    }
                    Err(e) => {
                        ctx.event(
                            job.as_ref(),
                            true,
                            "FailedCreate",
                            format!("Error creating: {e}"),
                        )
                        .await;
                        break;
                    }
                }
            }
            jc.expectations.expect(&uid, created, HashSet::new());
        }
    } else {
        requeue = Some(Duration::from_millis(500));
    }
    if let Some(o) = outcome {
        conditions.push(o);
    }
    conditions.dedup_by(|a, b| a.type_ == b.type_);
    if suspended && !conditions.iter().any(|c| c.type_ == "Suspended") {
        conditions.push(cond("Suspended", "JobSuspended", "Job suspended"));
    } else if !suspended {
        conditions.retain(|c| c.type_ != "Suspended");
    }
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
        merge_status(&ctx.client, job.as_ref(), &status).await?;
    }
    Ok(requeue
        .map(Action::requeue)
        .unwrap_or_else(Action::await_change))
}

pub async fn run(ctx: Arc<Context>, informers: Arc<Informers>) {
    informers.pods.synced().await;
    let jc = Arc::new(JobCtx {
        ctx,
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
