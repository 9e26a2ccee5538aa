//! NetworkPolicies: `policyTypes` and port protocols defaulted; `kubectl get` columns.

use serde_json::{Value, json};

use super::KindBehaviour;
use crate::admission::defaults::{each, obj_at, selector_protocols};
use crate::table::{AGE, Columns, N, age, name, none_if_empty, selector_string};

pub struct NetworkPolicies;

impl KindBehaviour for NetworkPolicies {
    fn defaults(&self, obj: &mut Value) {
        if let Some(spec) = obj_at(obj, "spec") {
            if spec.get("policyTypes").is_none() {
                let mut types = vec![json!("Ingress")];
                if spec
                    .get("egress")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
                {
                    types.push(json!("Egress"));
                }
                spec["policyTypes"] = Value::Array(types);
            }
            for dir in ["ingress", "egress"] {
                each(spec, dir, |rule| selector_protocols(rule, "ports"));
            }
        }
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = {
            (vec![N, ("Pod-Selector", "string", 0), AGE], |v| {
                vec![
                    name(v),
                    none_if_empty(selector_string(
                        v.pointer("/spec/podSelector").unwrap_or(&Value::Null),
                    )),
                    age(v),
                ]
            })
        };
        Some(columns)
    }
}
