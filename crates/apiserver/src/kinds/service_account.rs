//! ServiceAccounts: the `kubectl get` columns.

use serde_json::json;

use super::KindBehaviour;
use crate::table::{AGE, Columns, N, age, arr, name};

pub struct ServiceAccounts;

impl KindBehaviour for ServiceAccounts {
    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (vec![N, ("Secrets", "integer", 0), AGE], |v| {
            vec![name(v), json!(arr(v, "/secrets").len()), age(v)]
        });
        Some(columns)
    }
}
