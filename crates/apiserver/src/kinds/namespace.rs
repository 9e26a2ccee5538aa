//! Namespaces: DNS-label names, the `kubernetes.io/metadata.name` label, the initial phase and
//! `kubernetes` finalizer, and deletion held back by `spec.finalizers` while the namespace
//! controller empties it.

use serde_json::{Value, json};

use super::{KindBehaviour, NameCheck};
use crate::object::check_dns_label;
use crate::registry::Resource;
use crate::table::{AGE, Columns, N, age, name, s};

pub struct Namespaces;

impl KindBehaviour for Namespaces {
    fn name_check(&self) -> Option<NameCheck> {
        Some(check_dns_label)
    }

    fn defaults(&self, obj: &mut Value) {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            let labels = m.entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
        }
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (vec![N, ("Status", "string", 0), AGE], |v| {
            vec![name(v), json!(s(v, "/status/phase")), age(v)]
        });
        Some(columns)
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["status.phase"]
    }

    /// A new namespace is Active and waits for the `kubernetes` finalizer when deleted.
    fn prepare_for_create(&self, _res: &Resource, obj: &mut Value) {
        obj["status"] = json!({"phase": "Active"});
        if obj.pointer("/spec/finalizers").is_none() {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
        }
    }

    fn spec_finalizers_pending(&self, obj: &Value) -> bool {
        obj.pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    }

    fn mark_deleting(&self, obj: &mut Value) {
        obj["status"]["phase"] = json!("Terminating");
    }
}
