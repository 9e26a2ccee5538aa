//! CronJob controller: creates a Job for each due schedule time (standard 5-field cron, with
//! optional `timeZone`), honours `concurrencyPolicy`, `suspend` and
//! `startingDeadlineSeconds`, tracks active Jobs, and trims the history of finished ones.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use serde_json::Value;

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

/// One API action of a CronJob reconcile, in the order `apply` performs them.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// Delete a Job: still running at the next schedule under Replace, or finished beyond the
    /// history limits.
    Delete(String),
    /// Create the Job of a schedule time.
    Create(Box<Job>),
    Event {
        reason: String,
        message: String,
    },
    Status(Value),
}

#[derive(Debug)]
struct Plan {
    steps: Vec<Step>,
    requeue: Option<Duration>,
}

fn time(t: &Time) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.0.as_second(), 0).unwrap_or_default()
}

/// The schedule time to run now, if any: the latest one after the last run (or the
/// CronJob's creation) and, with startingDeadlineSeconds, not older than that (upstream's
/// `mostRecentScheduleTime`: older misses are skipped, not recorded).
fn due(cj: &CronJob, now: chrono::DateTime<chrono::Utc>) -> Option<chrono::DateTime<chrono::Utc>> {
    let spec = cj.spec.as_ref()?;
    if spec.suspend == Some(true) {
        return None;
    }
    let last = (cj.status.as_ref())
        .and_then(|s| s.last_schedule_time.as_ref())
        .or(cj.metadata.creation_timestamp.as_ref())
        .map(time)
        .unwrap_or(now);
    let earliest = match spec.starting_deadline_seconds {
        Some(d) => last.max(now - chrono::Duration::seconds(d)),
        None => last,
    };
    Schedule::parse(&spec.schedule, spec.time_zone.as_deref())
        .ok()?
        .latest_due(earliest, now)
}

/// The Job of schedule time `due`.
fn job_for(cj: &CronJob, due: chrono::DateTime<chrono::Utc>) -> Job {
    let tmpl = cj.spec.clone().unwrap_or_default().job_template;
    let mut meta = tmpl.metadata.clone().unwrap_or_default();
    meta.name = Some(format!("{}-{}", cj.name_any(), due.timestamp() / 60));
    meta.namespace = cj.namespace();
    meta.owner_references = Some(vec![controller_ref(cj)]);
    meta.annotations
        .get_or_insert_with(Default::default)
        .insert(
            "batch.kubernetes.io/cronjob-scheduled-timestamp".into(),
            due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
    Job {
        metadata: meta,
        spec: tmpl.spec.clone(),
        status: None,
    }
}

/// The oldest finished Jobs beyond `successfulJobsHistoryLimit` and `failedJobsHistoryLimit`.
fn history_steps(spec: &CronJobSpec, owned: &[&Job]) -> Vec<Step> {
    let mut steps = Vec::new();
    for (want_success, limit) in [
        (true, spec.successful_jobs_history_limit.unwrap_or(3)),
        (false, spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let done: Vec<&&Job> = owned
            .iter()
            .filter(|j| job_finished(j) == Some(want_success))
            .collect();
        let excess = done.len().saturating_sub(limit.max(0) as usize);
        steps.extend(done[..excess].iter().map(|j| Step::Delete(j.name_any())));
    }
    steps
}

/// Decides one reconcile of `cj` from its Jobs (`owned`) at `now`.
fn plan(cj: &CronJob, owned: &[&Job], now: Timestamp) -> Plan {
    if cj.metadata.deletion_timestamp.is_some() {
        return Plan {
            steps: Vec::new(),
            requeue: None,
        };
    }
    let now = chrono::DateTime::from_timestamp(now.as_second(), 0).unwrap_or_default();
    let spec = cj.spec.clone().unwrap_or_default();
    let mut owned = owned.to_vec();
    owned.sort_by_key(|j| {
        (j.metadata.creation_timestamp.as_ref())
            .map(|t| t.0.as_second())
            .unwrap_or(0)
    });
    let active: Vec<&Job> = owned
        .iter()
        .copied()
        .filter(|j| job_finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
        .collect();
    let prev = cj.status.clone().unwrap_or_default();
    let mut last_schedule = prev.last_schedule_time.clone();
    let mut steps = Vec::new();
    if let Some(due) = due(cj, now) {
        match spec.concurrency_policy.as_deref().unwrap_or("Allow") {
            // Upstream leaves lastScheduleTime alone, so the run starts once the active Job
            // finishes (within startingDeadlineSeconds).
            "Forbid" if !active.is_empty() => steps.push(Step::Event {
                reason: "JobAlreadyActive".into(),
                message: "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
            }),
            policy => {
                if policy == "Replace" {
                    steps.extend(active.iter().map(|j| Step::Delete(j.name_any())));
                }
                steps.push(Step::Create(Box::new(job_for(cj, due))));
                last_schedule = Timestamp::from_second(due.timestamp()).ok().map(Time);
            }
        }
    }
    steps.extend(history_steps(&spec, &owned));
    let status = status(cj, &owned, &active, last_schedule);
    let active_count = (cj.status.as_ref())
        .and_then(|s| s.active.as_ref())
        .map(Vec::len)
        .unwrap_or(0);
    let last_written = serde_json::to_value(&cj.status)
        .ok()
        .map(|v| v.get("lastScheduleTime").cloned());
    if last_written != Some(status.get("lastScheduleTime").cloned()) || active_count != active.len()
    {
        steps.push(Step::Status(status));
    }
    // Wake up at the next minute boundary.
    let secs = 60 - (now.timestamp() % 60) as u64;
    Plan {
        steps,
        requeue: Some(Duration::from_secs(secs.max(1))),
    }
}

/// The status: the active Jobs, the last schedule time run and the last success.
fn status(cj: &CronJob, owned: &[&Job], active: &[&Job], last_schedule: Option<Time>) -> Value {
    let prev = cj.status.clone().unwrap_or_default();
    let last_success = owned
        .iter()
        .filter(|j| job_finished(j) == Some(true))
        .filter_map(|j| j.status.as_ref().and_then(|s| s.completion_time.clone()))
        .max_by_key(|t| t.0.as_second())
        .or(prev.last_successful_time.clone());
    let active_refs: Vec<Value> = active
        .iter()
        .map(|j| serde_json::json!({"kind": "Job", "apiVersion": "batch/v1", "name": j.name_any(), "namespace": cj.namespace(), "uid": j.uid(), "resourceVersion": j.resource_version()}))
        .collect();
    let active = if active_refs.is_empty() {
        Value::Null
    } else {
        active_refs.into()
    };
    serde_json::json!({"active": active, "lastScheduleTime": last_schedule, "lastSuccessfulTime": last_success})
}

/// Performs `plan` for `cj`.
async fn apply(ctx: &Context, cj: &CronJob, plan: Plan) -> Result<Action, kube::Error> {
    let jobs_api: Api<Job> =
        Api::namespaced(ctx.client.clone(), &cj.namespace().unwrap_or_default());
    for step in plan.steps {
        match step {
            Step::Delete(name) => {
                if jobs_api
                    .delete(&name, &DeleteParams::background())
                    .await
                    .is_ok()
                {
                    ctx.event(cj, false, "SuccessfulDelete", format!("Deleted job {name}"))
                        .await;
                }
            }
            Step::Create(job) => match jobs_api.create(&PostParams::default(), &job).await {
                Ok(j) => {
                    let message = format!("Created job {}", j.name_any());
                    ctx.event(cj, false, "SuccessfulCreate", message).await
                }
                // The Job of this schedule time exists: it ran.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e),
            },
            Step::Event { reason, message } => ctx.event(cj, false, &reason, message).await,
            Step::Status(status) => merge_status(&ctx.client, cj, &status).await?,
        }
    }
    Ok(plan
        .requeue
        .map(Action::requeue)
        .unwrap_or_else(Action::await_change))
}

async fn reconcile(cj: Arc<CronJob>, cc: Arc<CronCtx>) -> Result<Action, kube::Error> {
    let (ns, uid) = (cj.namespace(), cj.uid());
    let jobs: Vec<Arc<Job>> = (cc.jobs.state().into_iter())
        .filter(|j| j.namespace() == ns && controller_uid(&j.metadata) == uid.as_deref())
        .collect();
    let owned: Vec<&Job> = jobs.iter().map(|j| j.as_ref()).collect();
    let plan = plan(&cj, &owned, Timestamp::now());
    apply(&cc.ctx, &cj, plan).await
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

#[cfg(test)]
#[allow(clippy::type_complexity)] // the tables' rows
mod tests {
    use super::*;
    use crate::controllers::util::testing::{Table, ago, merged, now, typed};
    use serde_json::json;

    /// The fixed now is 22:13:20 UTC, so "*/5" was due 200 s ago (22:10) and 500 s ago.
    const DUE: i64 = 200;

    /// The name of the Job for the schedule time `secs` seconds ago.
    fn job_name(secs: i64) -> String {
        format!("cron-{}", (now().as_second() - secs) / 60)
    }

    /// CronJob `cron` (uid c1) every 5 minutes in UTC, created an hour ago and last run at
    /// 22:05, plus `patch`.
    fn cronjob(patch: Value) -> CronJob {
        let base = json!({
            "metadata": {"name": "cron", "namespace": "default", "uid": "c1", "creationTimestamp": ago(3600)},
            "spec": {"schedule": "*/5 * * * *", "timeZone": "Etc/UTC",
                     "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}},
            "status": {"lastScheduleTime": ago(DUE + 300)},
        });
        typed(merged(base, patch))
    }

    /// Job `name` of the CronJob created `age` seconds ago; `finished` Complete or Failed.
    fn job(name: &str, age: i64, finished: Option<&str>) -> Job {
        let conditions = match finished {
            Some(t) => json!([{"type": t, "status": "True"}]),
            None => json!([]),
        };
        let completion = (finished == Some("Complete")).then(|| ago(age - 10));
        typed(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"), "creationTimestamp": ago(age)},
            "status": {"conditions": conditions, "completionTime": completion},
        }))
    }

    fn actions(plan: &Plan) -> Vec<String> {
        (plan.steps.iter())
            .filter_map(|s| match s {
                Step::Delete(j) => Some(format!("delete {j}")),
                Step::Create(j) => Some(format!("create {}", j.name_any())),
                Step::Event { reason, .. } => Some(format!("event {reason}")),
                Step::Status(_) => None,
            })
            .collect()
    }

    /// The lastScheduleTime `plan` writes, in seconds before now (None: not written).
    fn last_schedule(plan: &Plan) -> Option<i64> {
        plan.steps.iter().find_map(|s| match s {
            Step::Status(v) => v["lastScheduleTime"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok())
                .map(|t| now().as_second() - t.as_second()),
            _ => None,
        })
    }

    #[test]
    fn schedule_and_concurrency() {
        let policy = |p: &str| json!({"spec": {"concurrencyPolicy": p}});
        let deadline = |s: i64| json!({"spec": {"startingDeadlineSeconds": s}});
        let created = job_name(DUE);
        let create = format!("create {created}");
        // (case, CronJob patch, Jobs, actions, lastScheduleTime of the status written, if any)
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, Vec<Job>, Vec<String>, Option<i64>)> = vec![
            ("due: the Job of the schedule time", json!({}), vec![], vec![create.clone()], Some(DUE)),
            ("already run: nothing", json!({"status": {"lastScheduleTime": ago(DUE)}}), vec![], vec![], None),
            ("several missed: only the latest runs", json!({"status": {"lastScheduleTime": ago(3000)}}), vec![], vec![create.clone()], Some(DUE)),
            ("first run counts from creation", json!({"metadata": {"creationTimestamp": ago(400)}, "status": null}), vec![], vec![create.clone()], Some(DUE)),
            ("created after the last schedule time: wait", json!({"metadata": {"creationTimestamp": ago(100)}, "status": null}), vec![], vec![], None),
            ("suspended: nothing", json!({"spec": {"suspend": true}}), vec![], vec![], None),
            ("a bad schedule: nothing", json!({"spec": {"schedule": "not cron"}}), vec![], vec![], None),
            ("Allow: alongside an active Job", policy("Allow"), vec![job("a", 400, None)], vec![create.clone()], Some(DUE)),
            // Kinglet recorded the blocked time as run, so it never ran; upstream runs it late.
            ("Forbid: an active Job holds the run back", policy("Forbid"), vec![job("a", 400, None)], vec!["event JobAlreadyActive".into()], Some(DUE + 300)),
            ("Forbid: runs late once the active one finished", policy("Forbid"), vec![job("a", 400, Some("Complete"))], vec![create.clone()], Some(DUE)),
            ("Replace: the active Job goes, a new one comes", policy("Replace"), vec![job("a", 400, None), job("b", 300, Some("Failed"))], vec!["delete a".into(), create.clone()], Some(DUE)),
            ("startingDeadlineSeconds: within it, runs", deadline(300), vec![], vec![create.clone()], Some(DUE)),
            // Upstream skips a run missed by more than the deadline without recording it.
            ("startingDeadlineSeconds: missed by more, skipped", deadline(100), vec![], vec![], None),
            ("Forbid past the deadline: skipped", merged(policy("Forbid"), deadline(100)), vec![job("a", 400, Some("Complete"))], vec![], None),
            ("being deleted: nothing", json!({"metadata": {"deletionTimestamp": ago(1)}}), vec![], vec![], None),
        ];
        let mut table = Table::default();
        for (case, patch, jobs, want, written) in cases {
            let jobs: Vec<&Job> = jobs.iter().collect();
            let got = plan(&cronjob(patch), &jobs, now());
            table.check(case, (actions(&got), last_schedule(&got)), (want, written));
        }
        table.done();
    }

    #[test]
    fn history_limits() {
        let done = |n: usize, t: &str| -> Vec<Job> {
            (0..n)
                .map(|i| job(&format!("{t}{i}"), 10_000 - i as i64 * 100, Some(t)))
                .collect()
        };
        let limits = |ok: i32, failed: i32| json!({"spec": {"successfulJobsHistoryLimit": ok, "failedJobsHistoryLimit": failed}, "status": {"lastScheduleTime": ago(DUE)}});
        let already = json!({"status": {"lastScheduleTime": ago(DUE)}});
        // (case, CronJob patch, Jobs, deletions)
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, Vec<Job>, Vec<&str>)> = vec![
            ("3 successful kept by default, the oldest go", already.clone(), done(5, "Complete"), vec!["delete Complete0", "delete Complete1"]),
            ("1 failed kept by default", already.clone(), done(2, "Failed"), vec!["delete Failed0"]),
            ("limits 0 keep none", limits(0, 0), [done(1, "Complete"), done(1, "Failed")].concat(), vec!["delete Complete0", "delete Failed0"]),
            ("running Jobs do not count", limits(0, 0), vec![job("a", 100, None)], vec![]),
        ];
        let mut table = Table::default();
        for (case, patch, jobs, want) in cases {
            let jobs: Vec<&Job> = jobs.iter().collect();
            let got = plan(&cronjob(patch), &jobs, now());
            let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            table.check(case, actions(&got), want);
        }
        table.done();
    }

    #[test]
    fn status_and_requeue() {
        let jobs = [job("a", 400, None), job("b", 900, Some("Complete"))];
        let jobs: Vec<&Job> = jobs.iter().collect();
        let got = plan(
            &cronjob(json!({"status": {"lastScheduleTime": ago(DUE)}})),
            &jobs,
            now(),
        );
        let status = got
            .steps
            .iter()
            .find_map(|s| match s {
                Step::Status(v) => Some(v.clone()),
                _ => None,
            })
            .expect("the active list changed");
        assert_eq!(status["active"][0]["name"], json!("a"));
        assert_eq!(status["active"].as_array().map(Vec::len), Some(1));
        assert_eq!(status["lastSuccessfulTime"], json!(ago(890)));
        // 22:13:20: the next minute boundary is 40 s away.
        assert_eq!(got.requeue, Some(Duration::from_secs(40)));
        // Nothing changed since: nothing written.
        let cj = cronjob(json!({"status": merged(status, json!({"lastScheduleTime": ago(DUE)}))}));
        assert!(plan(&cj, &jobs, now()).steps.is_empty());
    }
}
