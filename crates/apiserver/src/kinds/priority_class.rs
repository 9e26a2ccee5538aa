//! PriorityClasses: the default preemption policy, a required and immutable value, and `kubectl
//! get` columns.

use serde_json::{Value, json};

use super::KindBehaviour;
use crate::admission::defaults::default;
use crate::admission::validation::immutable;
use crate::registry::Resource;
use crate::status::Cause;
use crate::table::{AGE, Columns, N, age, i, name};

pub struct PriorityClasses;

impl KindBehaviour for PriorityClasses {
    fn defaults(&self, obj: &mut Value) {
        default(obj, "preemptionPolicy", json!("PreemptLowerPriority"));
    }

    fn validate(&self, _res: &Resource, obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
        if obj.get("value").is_none() {
            out.push(Cause::required("value"));
        }
        if let Some(old) = old {
            immutable(obj, old, "/value", "value", out);
        }
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
            vec![
                N,
                ("Value", "integer", 0),
                ("Global-Default", "boolean", 0),
                AGE,
            ],
            |v| {
                vec![
                    name(v),
                    json!(i(v, "/value")),
                    json!(
                        v.get("globalDefault")
                            .and_then(Value::as_bool)
                            .unwrap_or(false)
                    ),
                    age(v),
                ]
            },
        );
        Some(columns)
    }
}
