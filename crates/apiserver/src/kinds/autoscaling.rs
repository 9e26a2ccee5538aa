//! HorizontalPodAutoscalers: defaults (80% CPU) and `kubectl get` columns.

use serde_json::{Value, json};

use super::KindBehaviour;
use crate::admission::defaults::{default, obj_at};
use crate::table::{AGE, Columns, N, age, i, name, s};

pub struct HorizontalPodAutoscalers;

impl KindBehaviour for HorizontalPodAutoscalers {
    fn defaults(&self, obj: &mut Value) {
        if let Some(spec) = obj_at(obj, "spec") {
            default(spec, "minReplicas", json!(1));
            let empty = spec
                .get("metrics")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty);
            if empty {
                spec["metrics"] = json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]);
            }
        }
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
            vec![
                N,
                ("Reference", "string", 0),
                ("Targets", "string", 0),
                ("MinPods", "string", 0),
                ("MaxPods", "string", 0),
                ("Replicas", "string", 0),
                AGE,
            ],
            |v| {
                vec![
                    name(v),
                    json!(format!(
                        "{}/{}",
                        s(v, "/spec/scaleTargetRef/kind"),
                        s(v, "/spec/scaleTargetRef/name")
                    )),
                    json!("<unknown>"),
                    json!(
                        v.pointer("/spec/minReplicas")
                            .and_then(Value::as_i64)
                            .unwrap_or(1)
                    ),
                    json!(i(v, "/spec/maxReplicas")),
                    json!(i(v, "/status/currentReplicas")),
                    age(v),
                ]
            },
        );
        Some(columns)
    }
}
