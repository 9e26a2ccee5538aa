//! Jobs: defaults (shared with a CronJob's job template), the generated selector and labels,
//! validation, the `status.successful` field selector and `kubectl get` columns.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::containers_images;
use crate::Api;
use crate::admission::defaults::{default, obj_at, template};
use crate::admission::validation::{self, immutable, non_negative};
use crate::kinds::KindBehaviour;
use crate::object::{self, field_string};
use crate::registry::Resource;
use crate::status::{ApiResult, Cause};
use crate::table::{AGE, Columns, N, age, arr, human_duration, i, name, s};

pub struct Jobs;

impl KindBehaviour for Jobs {
    fn defaults(&self, obj: &mut Value) {
        if let Some(spec) = obj_at(obj, "spec") {
            job_spec(spec);
        }
        template(obj, &["spec", "template"]);
    }

    fn admit<'a>(
        &'a self,
        _api: &'a Api,
        _res: &'a Resource,
        obj: &'a mut Value,
        old: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        if old.is_none() {
            job_selector(obj);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn validate(&self, _res: &Resource, obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
        let restart: &[&str] = &["OnFailure", "Never"];
        validation::pod_spec(
            obj.pointer("/spec/template/spec").unwrap_or(&Value::Null),
            "spec.template.spec",
            Some(restart),
            out,
        );
        for f in [
            "parallelism",
            "completions",
            "backoffLimit",
            "activeDeadlineSeconds",
            "ttlSecondsAfterFinished",
        ] {
            non_negative(obj, &format!("/spec/{f}"), &format!("spec.{f}"), out);
        }
        if let Some(old) = old {
            immutable(obj, old, "/spec/selector", "spec.selector", out);
            immutable(obj, old, "/spec/completionMode", "spec.completionMode", out);
        }
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
            vec![
                N,
                ("Status", "string", 0),
                ("Completions", "string", 0),
                ("Duration", "string", 0),
                AGE,
                ("Containers", "string", 1),
                ("Images", "string", 1),
            ],
            |v| {
                let (c, im) = containers_images(v, "/spec/template/spec/containers");
                let completions = v.pointer("/spec/completions").and_then(Value::as_i64);
                let done = i(v, "/status/succeeded");
                let comp = match completions {
                    Some(n) => format!("{done}/{n}"),
                    None => format!(
                        "{done}/1 of {}",
                        v.pointer("/spec/parallelism")
                            .and_then(Value::as_i64)
                            .unwrap_or(1)
                    ),
                };
                let conds = arr(v, "/status/conditions");
                let has = |t: &str| {
                    conds
                        .iter()
                        .any(|c| s(c, "/type") == t && s(c, "/status") == "True")
                };
                let status = if has("Complete") {
                    "Complete"
                } else if has("Failed") {
                    "Failed"
                } else if v.pointer("/metadata/deletionTimestamp").is_some() {
                    "Terminating"
                } else if has("Suspended") {
                    "Suspended"
                } else {
                    "Running"
                };
                let start = chrono::DateTime::parse_from_rfc3339(s(v, "/status/startTime")).ok();
                let end = chrono::DateTime::parse_from_rfc3339(s(v, "/status/completionTime")).ok();
                let duration = match (start, end) {
                    (Some(a), Some(b)) => human_duration((b - a).num_seconds()),
                    (Some(a), None) => human_duration(
                        (chrono::Utc::now() - a.with_timezone(&chrono::Utc)).num_seconds(),
                    ),
                    _ => String::new(),
                };
                vec![
                    name(v),
                    json!(status),
                    json!(comp),
                    json!(duration),
                    age(v),
                    c,
                    im,
                ]
            },
        );
        Some(columns)
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["status.successful"]
    }

    fn field_value(&self, obj: &Value, field: &str) -> Option<String> {
        match field {
            "status.successful" => Some(
                obj.pointer("/status/succeeded")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
                    .to_string(),
            ),
            _ => field_string(obj, field),
        }
    }
}

/// `SetDefaults_JobSpec`.
pub(super) fn job_spec(spec: &mut Value) {
    let completions = spec.get("completions").filter(|v| !v.is_null()).cloned();
    let parallelism = spec.get("parallelism").filter(|v| !v.is_null()).cloned();
    if completions.is_none() && parallelism.is_none() {
        spec["completions"] = json!(1);
    }
    default(spec, "parallelism", json!(1));
    default(spec, "backoffLimit", json!(6));
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    let failed_only = spec.pointer("/podFailurePolicy").is_some();
    default(
        spec,
        "podReplacementPolicy",
        json!(if failed_only {
            "Failed"
        } else {
            "TerminatingOrFailed"
        }),
    );
}

/// Unless `manualSelector`, the selector and template labels come from the Job's uid.
fn job_selector(job: &mut Value) {
    if job.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let uid = object::meta_str(job, "uid").unwrap_or_default().to_string();
    let name = object::name(job).to_string();
    let Some(spec) = job.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    let tmpl = spec
        .as_object_mut()
        .map(|m| m.entry("template").or_insert_with(|| json!({})));
    if let Some(t) = tmpl.filter(|t| t.is_object()) {
        let meta = t
            .as_object_mut()
            .map(|m| m.entry("metadata").or_insert_with(|| json!({})));
        if let Some(Value::Object(meta)) = meta {
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                for (k, v) in [
                    ("batch.kubernetes.io/controller-uid", &uid),
                    ("batch.kubernetes.io/job-name", &name),
                    ("controller-uid", &uid),
                    ("job-name", &name),
                ] {
                    l.insert(k.into(), json!(v));
                }
            }
        }
    }
}
