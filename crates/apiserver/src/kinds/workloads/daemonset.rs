//! DaemonSets: defaults and `kubectl get` columns.

use serde_json::{Value, json};

use super::{containers_images, validate_apps};
use crate::admission::defaults::{default, obj_at, template};
use crate::kinds::KindBehaviour;
use crate::registry::Resource;
use crate::status::Cause;
use crate::table::{AGE, Columns, N, age, i, map_string, name, none_if_empty, selector_string};

pub struct DaemonSets;

impl KindBehaviour for DaemonSets {
    fn defaults(&self, obj: &mut Value) {
        if let Some(spec) = obj_at(obj, "spec") {
            default(spec, "updateStrategy", json!({}));
            if let Some(st) = obj_at(spec, "updateStrategy") {
                default(st, "type", json!("RollingUpdate"));
                if st.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                    default(st, "rollingUpdate", json!({}));
                    if let Some(ru) = obj_at(st, "rollingUpdate") {
                        default(ru, "maxUnavailable", json!(1));
                        default(ru, "maxSurge", json!(0));
                    }
                }
            }
            default(spec, "revisionHistoryLimit", json!(10));
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
                ("Desired", "integer", 0),
                ("Current", "integer", 0),
                ("Ready", "integer", 0),
                ("Up-to-date", "integer", 0),
                ("Available", "integer", 0),
                ("Node Selector", "string", 0),
                AGE,
                ("Containers", "string", 1),
                ("Images", "string", 1),
                ("Selector", "string", 1),
            ],
            |v| {
                let (c, im) = containers_images(v, "/spec/template/spec/containers");
                vec![
                    name(v),
                    json!(i(v, "/status/desiredNumberScheduled")),
                    json!(i(v, "/status/currentNumberScheduled")),
                    json!(i(v, "/status/numberReady")),
                    json!(i(v, "/status/updatedNumberScheduled")),
                    json!(i(v, "/status/numberAvailable")),
                    none_if_empty(map_string(v, "/spec/template/spec/nodeSelector")),
                    age(v),
                    c,
                    im,
                    json!(selector_string(
                        v.pointer("/spec/selector").unwrap_or(&Value::Null)
                    )),
                ]
            },
        );
        Some(columns)
    }
}
