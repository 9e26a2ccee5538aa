//! StorageClasses: defaults and `kubectl get` columns.

use serde_json::{Value, json};

use super::KindBehaviour;
use crate::admission::defaults::default;
use crate::table::{AGE, Columns, N, age, name, s};

pub struct StorageClasses;

impl KindBehaviour for StorageClasses {
    fn defaults(&self, obj: &mut Value) {
        default(obj, "reclaimPolicy", json!("Delete"));
        default(obj, "volumeBindingMode", json!("Immediate"));
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
            vec![
                N,
                ("Provisioner", "string", 0),
                ("ReclaimPolicy", "string", 0),
                ("VolumeBindingMode", "string", 0),
                ("AllowVolumeExpansion", "string", 0),
                AGE,
            ],
            |v| {
                vec![
                    name(v),
                    json!(s(v, "/provisioner")),
                    json!(
                        v.get("reclaimPolicy")
                            .and_then(Value::as_str)
                            .unwrap_or("Delete")
                    ),
                    json!(
                        v.get("volumeBindingMode")
                            .and_then(Value::as_str)
                            .unwrap_or("Immediate")
                    ),
                    json!(
                        v.get("allowVolumeExpansion")
                            .and_then(Value::as_bool)
                            .unwrap_or(false)
                            .to_string()
                    ),
                    age(v),
                ]
            },
        );
        Some(columns)
    }
}
