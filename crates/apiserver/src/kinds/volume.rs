//! PersistentVolumes and PersistentVolumeClaims: defaults, the initial Pending phase and their
//! `kubectl get` columns.

use serde_json::{Value, json};

use super::{KindBehaviour, strip_status};
use crate::admission::defaults::{default, obj_at};
use crate::registry::Resource;
use crate::table::{AGE, Columns, N, age, arr, name, s};

pub struct PersistentVolumeClaims;

impl KindBehaviour for PersistentVolumeClaims {
    fn defaults(&self, obj: &mut Value) {
        if let Some(spec) = obj_at(obj, "spec") {
            default(spec, "volumeMode", json!("Filesystem"));
        }
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
            vec![
                N,
                ("Status", "string", 0),
                ("Volume", "string", 0),
                ("Capacity", "string", 0),
                ("Access Modes", "string", 0),
                ("StorageClass", "string", 0),
                AGE,
            ],
            |v| {
                let modes: Vec<&str> = arr(v, "/status/accessModes")
                    .iter()
                    .filter_map(Value::as_str)
                    .map(access_mode)
                    .collect();
                vec![
                    name(v),
                    json!(s(v, "/status/phase")),
                    json!(s(v, "/spec/volumeName")),
                    json!(s(v, "/status/capacity/storage")),
                    json!(modes.join(",")),
                    json!(s(v, "/spec/storageClassName")),
                    age(v),
                ]
            },
        );
        Some(columns)
    }

    fn prepare_for_create(&self, res: &Resource, obj: &mut Value) {
        pending(res, obj);
    }
}

pub struct PersistentVolumes;

impl KindBehaviour for PersistentVolumes {
    fn defaults(&self, obj: &mut Value) {
        if let Some(spec) = obj_at(obj, "spec") {
            default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            default(spec, "volumeMode", json!("Filesystem"));
        }
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
            vec![
                N,
                ("Capacity", "string", 0),
                ("Access Modes", "string", 0),
                ("Reclaim Policy", "string", 0),
                ("Status", "string", 0),
                ("Claim", "string", 0),
                ("StorageClass", "string", 0),
                ("Reason", "string", 0),
                AGE,
            ],
            |v| {
                let modes: Vec<&str> = arr(v, "/spec/accessModes")
                    .iter()
                    .filter_map(Value::as_str)
                    .map(access_mode)
                    .collect();
                let claim = if s(v, "/spec/claimRef/name").is_empty() {
                    String::new()
                } else {
                    format!(
                        "{}/{}",
                        s(v, "/spec/claimRef/namespace"),
                        s(v, "/spec/claimRef/name")
                    )
                };
                vec![
                    name(v),
                    json!(s(v, "/spec/capacity/storage")),
                    json!(modes.join(",")),
                    json!(s(v, "/spec/persistentVolumeReclaimPolicy")),
                    json!(s(v, "/status/phase")),
                    json!(claim),
                    json!(s(v, "/spec/storageClassName")),
                    json!(s(v, "/status/reason")),
                    age(v),
                ]
            },
        );
        Some(columns)
    }

    fn prepare_for_create(&self, res: &Resource, obj: &mut Value) {
        pending(res, obj);
    }
}

/// A new volume or claim starts Pending, whatever status the client sent.
fn pending(res: &Resource, obj: &mut Value) {
    strip_status(res, obj);
    obj["status"] = json!({"phase": "Pending"});
}

fn access_mode(m: &str) -> &str {
    match m {
        "ReadWriteOnce" => "RWO",
        "ReadOnlyMany" => "ROX",
        "ReadWriteMany" => "RWX",
        "ReadWriteOncePod" => "RWOP",
        other => other,
    }
}
