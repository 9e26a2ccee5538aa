//! Events: any name, the field selectors on the involved object, the `kubectl get events`
//! columns, and the field names of `events.k8s.io/v1`, which is stored as core/v1 (one
//! collection, as upstream).

use serde_json::{Map, Value, json};

use super::{KindBehaviour, NameCheck, any_name};
use crate::object::field_string;
use crate::table::{Columns, age_of, s};

pub struct Events;

impl KindBehaviour for Events {
    fn name_check(&self) -> Option<NameCheck> {
        Some(any_name)
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
            vec![
                ("Last Seen", "string", 0),
                ("Type", "string", 0),
                ("Reason", "string", 0),
                ("Object", "string", 0),
                ("Message", "string", 0),
            ],
            event_row,
        );
        Some(columns)
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ]
    }

    /// Compared on the core/v1 (stored) form.
    fn field_value(&self, obj: &Value, field: &str) -> Option<String> {
        match field {
            "source" => obj
                .pointer("/source/component")
                .and_then(Value::as_str)
                .map(String::from),
            _ => field_string(obj, field),
        }
    }
}

fn event_row(e: &Value) -> Vec<Value> {
    // The same columns for both versions, as upstream prints them from its one internal type.
    let core;
    let e = if e.get("apiVersion").and_then(Value::as_str) == Some("events.k8s.io/v1") {
        core = to_core_event(e.clone());
        &core
    } else {
        e
    };
    let last = [
        s(e, "/lastTimestamp"),
        s(e, "/eventTime"),
        s(e, "/metadata/creationTimestamp"),
    ]
    .into_iter()
    .find(|t| !t.is_empty());
    let obj = format!(
        "{}/{}",
        s(e, "/involvedObject/kind").to_lowercase(),
        s(e, "/involvedObject/name")
    );
    vec![
        json!(age_of(last)),
        json!(s(e, "/type")),
        json!(s(e, "/reason")),
        json!(obj),
        json!(s(e, "/message")),
    ]
}

/// (events.k8s.io/v1 name, core/v1 name)
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(obj: Value, from_new: bool) -> Value {
    let Value::Object(m) = obj else { return obj };
    let mut out = Map::new();
    for (k, v) in m {
        let mapped = EVENT_FIELDS
            .iter()
            .find(|(new, old)| if from_new { k == *new } else { k == *old });
        let key = match mapped {
            Some((new, old)) => if from_new { old } else { new }.to_string(),
            None => k,
        };
        out.insert(key, v);
    }
    Value::Object(out)
}

/// An `events.k8s.io/v1` Event in its stored core/v1 form.
pub(crate) fn to_core_event(obj: Value) -> Value {
    let mut v = rename(obj, true);
    v["apiVersion"] = Value::String("v1".into());
    v
}

/// A stored core/v1 Event in its `events.k8s.io/v1` form.
pub(crate) fn from_core_event(obj: Value) -> Value {
    rename(obj, false)
}
