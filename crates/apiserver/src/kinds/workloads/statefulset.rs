//! StatefulSets: defaults (claim templates included) and `kubectl get` columns.

use serde_json::{Value, json};

use super::{containers_images, validate_apps};
use crate::admission::defaults::{default, each, obj_at, template};
use crate::kinds::KindBehaviour;
use crate::registry::Resource;
use crate::status::Cause;
use crate::table::{AGE, Columns, N, age, i, name};

pub struct StatefulSets;

impl KindBehaviour for StatefulSets {
    fn defaults(&self, obj: &mut Value) {
        if let Some(spec) = obj_at(obj, "spec") {
            default(spec, "replicas", json!(1));
            default(spec, "podManagementPolicy", json!("OrderedReady"));
            default(spec, "updateStrategy", json!({}));
            if let Some(st) = obj_at(spec, "updateStrategy") {
                default(st, "type", json!("RollingUpdate"));
                if st.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                    default(st, "rollingUpdate", json!({"partition": 0}));
                }
            }
            default(spec, "revisionHistoryLimit", json!(10));
            default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            each(spec, "volumeClaimTemplates", |t| {
                if let Some(s) = obj_at(t, "spec") {
                    default(s, "volumeMode", json!("Filesystem"));
                }
                default(t, "status", json!({"phase": "Pending"}));
                default(t, "apiVersion", json!("v1"));
                default(t, "kind", json!("PersistentVolumeClaim"));
            });
        }
        template(obj, &["spec", "template"]);
    }

    fn validate(&self, _res: &Resource, obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
        validate_apps(obj, old, out, |_, _| {});
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
            vec![
                N,
                ("Ready", "string", 0),
                AGE,
                ("Containers", "string", 1),
                ("Images", "string", 1),
            ],
            |v| {
                let (c, im) = containers_images(v, "/spec/template/spec/containers");
                let desired = v
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                vec![
                    name(v),
                    json!(format!("{}/{desired}", i(v, "/status/readyReplicas"))),
                    age(v),
                    c,
                    im,
                ]
            },
        );
        Some(columns)
    }
}
