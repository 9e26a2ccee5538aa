//! ReplicaSets and ReplicationControllers: defaults, the `status.replicas` field selector and
//! their shared `kubectl get` columns.

use serde_json::{Value, json};

use super::{containers_images, validate_apps};
use crate::admission::defaults::{default, obj_at, template};
use crate::kinds::KindBehaviour;
use crate::object::field_string;
use crate::registry::Resource;
use crate::status::Cause;
use crate::table::{AGE, Columns, N, age, i, map_string, name, selector_string};

pub struct ReplicaSets;

impl KindBehaviour for ReplicaSets {
    fn defaults(&self, obj: &mut Value) {
        if let Some(spec) = obj_at(obj, "spec") {
            default(spec, "replicas", json!(1));
        }
        template(obj, &["spec", "template"]);
    }

    fn validate(&self, _res: &Resource, obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
        validate_apps(obj, old, out, |_, _| {});
    }

    fn columns(&self) -> Option<Columns> {
        Some(columns())
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        SELECTABLE
    }

    fn field_value(&self, obj: &Value, field: &str) -> Option<String> {
        field_value(obj, field)
    }
}

pub struct ReplicationControllers;

impl KindBehaviour for ReplicationControllers {
    fn defaults(&self, obj: &mut Value) {
        if let Some(spec) = obj_at(obj, "spec") {
            default(spec, "replicas", json!(1));
            let labels = spec.pointer("/template/metadata/labels").cloned();
            if let Some(l) = labels {
                default(spec, "selector", l);
            }
        }
        template(obj, &["spec", "template"]);
    }

    fn columns(&self) -> Option<Columns> {
        Some(columns())
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        SELECTABLE
    }

    fn field_value(&self, obj: &Value, field: &str) -> Option<String> {
        field_value(obj, field)
    }
}

const SELECTABLE: &[&str] = &["status.replicas"];

fn field_value(obj: &Value, field: &str) -> Option<String> {
    match field {
        "status.replicas" => Some(
            obj.pointer("/status/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                .to_string(),
        ),
        _ => field_string(obj, field),
    }
}

/// The columns both kinds share (an RC's selector is a plain map).
fn columns() -> Columns {
    (
        vec![
            N,
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        |v| {
            let (c, im) = containers_images(v, "/spec/template/spec/containers");
            let sel = v.pointer("/spec/selector").cloned().unwrap_or(Value::Null);
            let sel = if sel.get("matchLabels").is_some() || sel.get("matchExpressions").is_some() {
                selector_string(&sel)
            } else {
                map_string(v, "/spec/selector")
            };
            vec![
                name(v),
                json!(
                    v.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                ),
                json!(i(v, "/status/replicas")),
                json!(i(v, "/status/readyReplicas")),
                age(v),
                c,
                im,
                json!(sel),
            ]
        },
    )
}
