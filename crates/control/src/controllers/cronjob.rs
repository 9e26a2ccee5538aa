//! CronJob controller: creates a Job for each due schedule time (standard 5-field cron, with
//! optional `timeZone`), honours `concurrencyPolicy`, `suspend` and
//! `startingDeadlineSeconds`, tracks active Jobs, and trims the history of finished ones.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;

use kinglet_core::cron::Schedule;

use super::informers::Informers;
use super::util::{Context, controller_ref, controller_uid, merge_status};

struct CronCtx {
    ctx: Arc<Context>,
    jobs: Store<Job>,
}

fn job_finished(j: &Job) -> Option<bool> {
    j.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_ == "Complete")
}

async fn reconcile(cj: Arc<CronJob>, cc: Arc<CronCtx>) -> Result<Action, kube::Error> {
    let ctx = &cc.ctx;
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = cj.namespace().unwrap_or_default();
    let uid = cj.uid().unwrap_or_default();
    let spec = cj.spec.clone().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let mut owned: Vec<Arc<Job>> = cc
        .jobs
        .state()
        .into_iter()
        .filter(|j| {
            j.namespace().as_deref() == Some(ns.as_str())
                && controller_uid(&j.metadata) == Some(uid.as_str())
        })
        .collect();
    owned.sort_by_key(|j| {
        j.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(0)
    });
    let active: Vec<&Arc<Job>> = owned
        .iter()
        .filter(|j| job_finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
        .collect();
    let now = chrono::Utc::now();
    let prev = cj.status.clone().unwrap_or_default();
    let since = prev
        .last_schedule_time
        .as_ref()
        .or(cj.metadata.creation_timestamp.as_ref())
        .and_then(|t| chrono::DateTime::from_timestamp(t.0.as_second(), 0))
        .unwrap_or(now);
    let mut last_schedule = prev.last_schedule_time.clone();
    if spec.suspend != Some(true)
        && let Some(due) = Schedule::parse(&spec.schedule, spec.time_zone.as_deref())
            .ok()
            .and_then(|s| s.latest_due(since, now))
    {
        let too_late = spec
            .starting_deadline_seconds
            .is_some_and(|d| due.timestamp() + d < now.timestamp());
        let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
        let blocked = policy == "Forbid" && !active.is_empty();
        if !too_late && !blocked {
            if policy == "Replace" {
                for j in &active {
                    let _ = jobs_api
                        .delete(&j.name_any(), &DeleteParams::background())
                        .await;
                }
            }
            let tmpl = spec.job_template.clone();
            let mut meta = tmpl.metadata.clone().unwrap_or_default();
            meta.name = Some(format!("{}-{}", cj.name_any(), due.timestamp() / 60));
            meta.namespace = Some(ns.clone());
            meta.owner_references = Some(vec![controller_ref(cj.as_ref())]);
            meta.annotations
                .get_or_insert_with(Default::default)
                .insert(
                    "batch.kubernetes.io/cronjob-scheduled-timestamp".into(),
                    due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                );
            let job = Job {
                metadata: meta,
                spec: tmpl.spec.clone(),
                status: None,
            };
            match jobs_api.create(&PostParams::default(), &job).await {
                Ok(j) => {
                    ctx.event(
                        cj.as_ref(),
                        false,
                        "SuccessfulCreate",
                        format!("Created job {}", j.name_any()),
                    )
                    .await
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        last_schedule = Timestamp::from_second(due.timestamp())
            .ok()
            .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time);
    }
    // History limits.
    for (want_success, limit) in [
        (true, spec.successful_jobs_history_limit.unwrap_or(3)),
        (false, spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let done: Vec<&Arc<Job>> = owned
            .iter()
            .filter(|j| job_finished(j) == Some(want_success))
            .collect();
        let excess = done.len().saturating_sub(limit.max(0) as usize);
        for j in &done[..excess] {
            let _ = jobs_api
                .delete(&j.name_any(), &DeleteParams::background())
                .await;
        }
    }
    let last_success = owned
        .iter()
        .filter(|j| job_finished(j) == Some(true))
        .filter_map(|j| j.status.as_ref().and_then(|s| s.completion_time.clone()))
        .max_by_key(|t| t.0.as_second())
        .or(prev.last_successful_time.clone());
    let active_refs: Vec<serde_json::Value> = active
        .iter()
        .map(|j| serde_json::json!({"kind": "Job", "apiVersion": "batch/v1", "name": j.name_any(), "namespace": ns, "uid": j.uid(), "resourceVersion": j.resource_version()}))
        .collect();
    let status = serde_json::json!({"active": if active_refs.is_empty() { serde_json::Value::Null } else { active_refs.into() }, "lastScheduleTime": last_schedule, "lastSuccessfulTime": last_success});
    if serde_json::to_value(&cj.status)
        .ok()
        .map(|v| v.get("lastScheduleTime").cloned())
        != Some(status.get("lastScheduleTime").cloned())
        || cj
            .status
            .as_ref()
            .and_then(|s| s.active.as_ref())
            .map(Vec::len)
            .unwrap_or(0)
            != active.len()
    {
        merge_status(&ctx.client, cj.as_ref(), &status).await?;
    }
    // Wake up at the next minute boundary.
    let secs = 60 - (now.timestamp() % 60) as u64;
    Ok(Action::requeue(Duration::from_secs(secs.max(1))))
}

pub async fn run(ctx: Arc<Context>, informers: Arc<Informers>) {
    let client = ctx.client.clone();
    let jobs = informers.jobs.store();
    let cc = Arc::new(CronCtx { ctx, jobs });
    Controller::new(Api::<CronJob>::all(client), watcher::Config::default())
        .owns_shared_stream(informers.jobs.subscribe())
        .run(
            reconcile,
            |_, e, _| {
                tracing::debug!("cronjob: {e}");
                Action::requeue(Duration::from_secs(5))
            },
            cc,
        )
        .for_each(|_| async {})
        .await;
}
