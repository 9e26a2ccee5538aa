//! Conversion between served versions and the stored form. `events.k8s.io/v1` Events are stored
//! as core/v1 Events (one collection, as upstream), with field names mapped both ways.

use serde_json::{Map, Value};

use super::registry::Resource;

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

fn is_events_v1(res: &Resource) -> bool {
    res.group == "events.k8s.io"
}

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

/// The stored form of an object of `res`.
pub fn to_storage(res: &Resource, obj: Value) -> Value {
    if is_events_v1(res) {
        let mut v = rename(obj, true);
        v["apiVersion"] = Value::String("v1".into());
        return v;
    }
    obj
}

/// The served form of a stored object for `res`.
pub fn from_storage(res: &Resource, obj: Value) -> Value {
    if is_events_v1(res) {
        rename(obj, false)
    } else {
        obj
    }
}

/// A request body for `res` as written by the client; custom resources served in several
/// versions convert by changing `apiVersion` only (conversion strategy None).
pub fn accept_version(res: &Resource, mut obj: Value) -> Value {
    if res.is_custom()
        && let (Some(av), Some(m)) = (
            obj.get("apiVersion")
                .and_then(Value::as_str)
                .map(String::from),
            obj.as_object_mut(),
        )
        && av.split('/').next() == Some(res.group.as_str())
    {
        m.insert("apiVersion".into(), Value::String(res.api_version()));
    }
    obj
}
