//! Conversion between served versions and the stored form. `events.k8s.io/v1` Events are stored
//! as core/v1 Events (one collection, as upstream), with field names mapped both ways.

use serde_json::Value;

use super::kinds;
use super::registry::Resource;

fn is_events_v1(res: &Resource) -> bool {
    res.group == "events.k8s.io"
}

/// The stored form of an object of `res`.
pub fn to_storage(res: &Resource, obj: Value) -> Value {
    if is_events_v1(res) {
        return kinds::to_core_event(obj);
    }
    obj
}

/// The served form of a stored object for `res`.
pub fn from_storage(res: &Resource, obj: Value) -> Value {
    if is_events_v1(res) {
        kinds::from_core_event(obj)
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
