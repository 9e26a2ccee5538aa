//! CronJobs: defaults, the schedule and time-zone rules and `kubectl get` columns.

use kinglet_core::cron::{Schedule, zone};
use serde_json::{Value, json};

use super::job::job_spec;
use crate::admission::defaults::{default, obj_at, template};
use crate::admission::validation::{self, str_at};
use crate::kinds::KindBehaviour;
use crate::registry::Resource;
use crate::status::Cause;
use crate::table::{AGE, Columns, N, age, age_of, arr, name, none_if_empty, s};

pub struct CronJobs;

impl KindBehaviour for CronJobs {
    fn defaults(&self, obj: &mut Value) {
        if let Some(spec) = obj_at(obj, "spec") {
            default(spec, "concurrencyPolicy", json!("Allow"));
            default(spec, "suspend", json!(false));
            default(spec, "successfulJobsHistoryLimit", json!(3));
            default(spec, "failedJobsHistoryLimit", json!(1));
            if let Some(js) = spec.get_mut("jobTemplate").and_then(|t| obj_at(t, "spec")) {
                job_spec(js);
            }
        }
        template(obj, &["spec", "jobTemplate", "spec", "template"]);
    }

    fn validate(&self, _res: &Resource, obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
        let sched = str_at(obj, "/spec/schedule").unwrap_or("");
        if sched.is_empty() {
            out.push(Cause::required("spec.schedule"));
        } else if let Err(e) = Schedule::parse(sched, None) {
            out.push(Cause::invalid("spec.schedule", &json!(sched), e));
        }
        // As upstream: a `TZ=` prefix only survives on objects that already had one, and
        // never together with `timeZone`.
        let tz = obj.pointer("/spec/timeZone");
        let had_tz = old
            .and_then(|o| str_at(o, "/spec/schedule"))
            .is_some_and(|o| o.contains("TZ"));
        if sched.contains("TZ") {
            let msg = if !had_tz {
                Some("cannot use TZ or CRON_TZ in schedule, use timeZone field instead")
            } else if tz.is_some_and(|t| !t.is_null()) {
                Some("cannot use both timeZone field and TZ or CRON_TZ in schedule")
            } else {
                None
            };
            if let Some(msg) = msg {
                out.push(Cause::invalid("spec.schedule", &json!(sched), msg));
            }
        }
        match tz.and_then(Value::as_str) {
                Some("") => out.push(Cause::invalid(
                    "spec.timeZone",
                    &json!(""),
                    "timeZone must be nil or non-empty string",
                )),
                Some(t) if t.eq_ignore_ascii_case("Local") => out.push(Cause::invalid(
                    "spec.timeZone",
                    &json!(t),
                    "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
                )),
                Some(t) => {
                    if let Err(e) = zone(t) {
                        out.push(Cause::invalid("spec.timeZone", &json!(t), e));
                    }
                }
                None => {}
            }
        let restart: &[&str] = &["OnFailure", "Never"];
        validation::pod_spec(
            obj.pointer("/spec/jobTemplate/spec/template/spec")
                .unwrap_or(&Value::Null),
            "spec.jobTemplate.spec.template.spec",
            Some(restart),
            out,
        );
        if let Some(p) = str_at(obj, "/spec/concurrencyPolicy")
            && !["Allow", "Forbid", "Replace"].contains(&p)
        {
            out.push(Cause::unsupported(
                "spec.concurrencyPolicy",
                &json!(p),
                &["Allow", "Forbid", "Replace"],
            ));
        }
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
            vec![
                N,
                ("Schedule", "string", 0),
                ("Timezone", "string", 0),
                ("Suspend", "boolean", 0),
                ("Active", "integer", 0),
                ("Last Schedule", "string", 0),
                AGE,
            ],
            |v| {
                let last = s(v, "/status/lastScheduleTime");
                vec![
                    name(v),
                    json!(s(v, "/spec/schedule")),
                    none_if_empty(s(v, "/spec/timeZone").into()),
                    json!(
                        v.pointer("/spec/suspend")
                            .and_then(Value::as_bool)
                            .unwrap_or(false)
                    ),
                    json!(arr(v, "/status/active").len()),
                    json!(if last.is_empty() {
                        "<none>".into()
                    } else {
                        age_of(Some(last))
                    }),
                    age(v),
                ]
            },
        );
        Some(columns)
    }
}
