//! CronJob controller: creates a Job for each due schedule time (standard 5-field cron, with
//! optional `timeZone`), honours `concurrencyPolicy`, `suspend` and
//! `startingDeadlineSeconds`, tracks active Jobs, and trims the history of finished ones.

use std::str::FromStr;
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

use super::util::{Context, controller_ref, controller_uid, informer, merge_status};

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

/// A CronJob schedule: five cron fields (or a macro such as `@hourly`) read in a time zone: the
/// spec's `timeZone`, else a legacy `TZ=`/`CRON_TZ=` prefix, else the server's local zone (as
/// upstream's controller manager does).
pub struct Schedule {
    cron: croner::Cron,
    zone: Option<chrono_tz::Tz>,
}

impl Schedule {
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, String> {
        let trimmed = schedule.trim();
        let (prefix_zone, expr) = match trimmed
            .strip_prefix("TZ=")
            .or_else(|| trimmed.strip_prefix("CRON_TZ="))
        {
            Some(rest) => match rest.split_once(' ') {
                Some((zone, expr)) => (Some(zone), expr.trim()),
                None => return Err(format!("missing schedule after time zone: {schedule}")),
            },
            None => (None, trimmed),
        };
        let fields = expr.split_whitespace().count();
        if !expr.starts_with('@') && fields != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {fields}: {schedule}"
            ));
        }
        let cron = croner::Cron::from_str(expr).map_err(|e| e.to_string())?;
        let zone = time_zone.or(prefix_zone).map(zone).transpose()?;
        Ok(Schedule { cron, zone })
    }

    /// The latest schedule time in (after, now], if any.
    pub fn latest_due(
        &self,
        after: chrono::DateTime<chrono::Utc>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        fn latest<Z: chrono::TimeZone + Copy>(
            cron: &croner::Cron,
            now: chrono::DateTime<Z>,
        ) -> Option<i64> {
            cron.iter_from(now, croner::Direction::Backward)
                .next()
                .map(|t| t.timestamp())
        }
        let t = match &self.zone {
            Some(z) => latest(&self.cron, now.with_timezone(z)),
            None => latest(&self.cron, now.with_timezone(&chrono::Local)),
        }?;
        chrono::DateTime::from_timestamp(t, 0).filter(|t| *t > after && *t <= now)
    }
}

/// An IANA time zone by name, with upstream's error text for unknown ones.
pub fn zone(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse()
        .map_err(|_| format!("unknown time zone {name}"))
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

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let (reader, jobs) = informer::<Job>(&client);
    let cc = Arc::new(CronCtx { ctx, jobs: reader });
    Controller::new(Api::<CronJob>::all(client), watcher::Config::default())
        .owns_stream(jobs)
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
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn schedules_are_read_in_their_time_zone() {
        let now = Utc.with_ymd_and_hms(2026, 7, 1, 0, 30, 0).unwrap();
        let day_before = now - chrono::Duration::days(1);
        // 09:00 in Tokyo (UTC+9) is 00:00 UTC.
        let tokyo = Schedule::parse("0 9 * * *", Some("Asia/Tokyo")).unwrap();
        assert_eq!(
            tokyo.latest_due(day_before, now),
            Some(Utc.with_ymd_and_hms(2026, 7, 1, 0, 0, 0).unwrap())
        );
        // 09:00 in Berlin in summer (UTC+2) is 07:00 UTC, and in winter (UTC+1) 08:00 UTC.
        let berlin = Schedule::parse("0 9 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            berlin.latest_due(day_before, now),
            Some(Utc.with_ymd_and_hms(2026, 6, 30, 7, 0, 0).unwrap())
        );
        let winter = Utc.with_ymd_and_hms(2026, 1, 15, 12, 0, 0).unwrap();
        assert_eq!(
            berlin.latest_due(winter - chrono::Duration::days(1), winter),
            Some(Utc.with_ymd_and_hms(2026, 1, 15, 8, 0, 0).unwrap())
        );
        // The legacy prefix names a zone too; nothing due inside an empty window.
        let legacy = Schedule::parse("CRON_TZ=Asia/Tokyo 0 9 * * *", None).unwrap();
        assert_eq!(
            legacy.latest_due(day_before, now),
            tokyo.latest_due(day_before, now)
        );
        assert_eq!(
            tokyo.latest_due(now - chrono::Duration::minutes(5), now),
            None
        );
    }

    #[test]
    fn bad_schedules_and_zones_are_refused() {
        assert_eq!(
            Schedule::parse("0 9 * * *", Some("Mars/Olympus"))
                .err()
                .as_deref(),
            Some("unknown time zone Mars/Olympus")
        );
        assert!(Schedule::parse("0 9 * *", None).is_err());
        assert!(Schedule::parse("TZ=UTC", None).is_err());
        assert!(Schedule::parse("61 * * * *", None).is_err());
        assert!(Schedule::parse("@hourly", None).is_ok());
    }
}
