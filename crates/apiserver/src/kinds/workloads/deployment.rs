//! Deployments: defaults (a 25% rolling update), the strategy rules and `kubectl get` columns.

use serde_json::{Value, json};

use super::{containers_images, validate_apps};
use crate::admission::defaults::{default, obj_at, template};
use crate::admission::validation::str_at;
use crate::kinds::KindBehaviour;
use crate::registry::Resource;
use crate::status::Cause;
use crate::table::{AGE, Columns, N, age, i, name, selector_string};

pub struct Deployments;

impl KindBehaviour for Deployments {
    fn defaults(&self, obj: &mut Value) {
        if let Some(spec) = obj_at(obj, "spec") {
            default(spec, "replicas", json!(1));
            default(spec, "strategy", json!({}));
            if let Some(st) = obj_at(spec, "strategy") {
                default(st, "type", json!("RollingUpdate"));
                if st.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                    default(st, "rollingUpdate", json!({}));
                    if let Some(ru) = obj_at(st, "rollingUpdate") {
                        default(ru, "maxUnavailable", json!("25%"));
                        default(ru, "maxSurge", json!("25%"));
                    }
                }
            }
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
        }
        template(obj, &["spec", "template"]);
    }

    fn validate(&self, _res: &Resource, obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
        validate_apps(obj, old, out, strategy);
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
            vec![
                N,
                ("Ready", "string", 0),
                ("Up-to-date", "integer", 0),
                ("Available", "integer", 0),
                AGE,
                ("Containers", "string", 1),
                ("Images", "string", 1),
                ("Selector", "string", 1),
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
                    json!(i(v, "/status/updatedReplicas")),
                    json!(i(v, "/status/availableReplicas")),
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

fn strategy(obj: &Value, out: &mut Vec<Cause>) {
    if let Some(t) = str_at(obj, "/spec/strategy/type") {
        if !["Recreate", "RollingUpdate"].contains(&t) {
            out.push(Cause::unsupported(
                "spec.strategy.type",
                &json!(t),
                &["Recreate", "RollingUpdate"],
            ));
        }
        if t == "Recreate" && obj.pointer("/spec/strategy/rollingUpdate").is_some() {
            out.push(Cause::forbidden(
                "spec.strategy.rollingUpdate",
                "may not be specified when strategy `type` is 'Recreate'",
            ));
        }
    }
}
