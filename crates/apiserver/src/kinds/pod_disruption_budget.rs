//! PodDisruptionBudgets: `kubectl get` columns.

use serde_json::json;

use super::KindBehaviour;
use crate::table::{AGE, Columns, N, age, i, name};

pub struct PodDisruptionBudgets;

impl KindBehaviour for PodDisruptionBudgets {
    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
            vec![
                N,
                ("Min Available", "string", 0),
                ("Max Unavailable", "string", 0),
                ("Allowed Disruptions", "integer", 0),
                AGE,
            ],
            |v| {
                let show = |p: &str| {
                    v.pointer(p)
                        .map(|x| {
                            x.as_str()
                                .map(String::from)
                                .unwrap_or_else(|| x.to_string())
                        })
                        .unwrap_or_else(|| "N/A".into())
                };
                vec![
                    name(v),
                    json!(show("/spec/minAvailable")),
                    json!(show("/spec/maxUnavailable")),
                    json!(i(v, "/status/disruptionsAllowed")),
                    age(v),
                ]
            },
        );
        Some(columns)
    }
}
