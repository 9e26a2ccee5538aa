//! Leases: a non-negative duration and `kubectl get` columns.

use serde_json::{Value, json};

use super::KindBehaviour;
use crate::admission::validation::non_negative;
use crate::registry::Resource;
use crate::status::Cause;
use crate::table::{AGE, Columns, N, age, name, s};

pub struct Leases;

impl KindBehaviour for Leases {
    fn validate(&self, _res: &Resource, obj: &Value, _old: Option<&Value>, out: &mut Vec<Cause>) {
        non_negative(
            obj,
            "/spec/leaseDurationSeconds",
            "spec.leaseDurationSeconds",
            out,
        );
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (vec![N, ("Holder", "string", 0), AGE], |v| {
            vec![name(v), json!(s(v, "/spec/holderIdentity")), age(v)]
        });
        Some(columns)
    }
}
