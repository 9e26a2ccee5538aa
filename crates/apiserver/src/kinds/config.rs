//! ConfigMaps and Secrets: valid data keys, no data changes once `immutable`, a Secret's type
//! (defaulted, immutable, selectable) and their `kubectl get` columns.

use serde_json::{Value, json};

use super::KindBehaviour;
use crate::admission::defaults::default;
use crate::registry::Resource;
use crate::status::Cause;
use crate::table::{AGE, Columns, N, age, name, s};

pub struct ConfigMaps;

impl KindBehaviour for ConfigMaps {
    fn validate(&self, _res: &Resource, obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
        validate_data(obj, old, out);
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (vec![N, ("Data", "integer", 0), AGE], |v| {
            let n = v
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + v.get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            vec![name(v), json!(n), age(v)]
        });
        Some(columns)
    }
}

pub struct Secrets;

impl KindBehaviour for Secrets {
    fn defaults(&self, obj: &mut Value) {
        default(obj, "type", json!("Opaque"));
        merge_string_data(obj);
    }

    fn validate(&self, _res: &Resource, obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
        validate_data(obj, old, out);
        if let Some(old) = old
            && obj.get("type") != old.get("type")
        {
            out.push(Cause::invalid(
                "type",
                obj.get("type").unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = (
            vec![N, ("Type", "string", 0), ("Data", "integer", 0), AGE],
            |v| {
                let n = v
                    .get("data")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
                vec![name(v), json!(s(v, "/type")), json!(n), age(v)]
            },
        );
        Some(columns)
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["type"]
    }
}

/// What both kinds check: valid keys, and no data changes once `immutable` is set.
fn validate_data(obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
    keyed_data(obj, out);
    if let Some(old) = old
        && old.get("immutable").and_then(Value::as_bool) == Some(true)
    {
        for f in ["data", "binaryData"] {
            if obj.get(f) != old.get(f) {
                out.push(Cause::forbidden(
                    f,
                    "field is immutable when `immutable` is set",
                ));
            }
        }
        if obj.get("immutable") != old.get("immutable") {
            out.push(Cause::forbidden(
                "immutable",
                "field is immutable when `immutable` is set",
            ));
        }
    }
}

fn keyed_data(obj: &Value, out: &mut Vec<Cause>) {
    for field in ["data", "binaryData", "stringData"] {
        if let Some(m) = obj.get(field).and_then(Value::as_object) {
            for k in m.keys() {
                let ok = !k.is_empty()
                    && k.len() <= 253
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
                    && k != "."
                    && k != "..";
                if !ok {
                    out.push(Cause::invalid(format!("{field}[{k}]"), &json!(k), "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
                }
            }
        }
    }
}

/// `stringData` is write-only: its entries go into `data` (base64), over any of the same key,
/// and it is never stored or answered, as upstream's conversion of a Secret does.
fn merge_string_data(obj: &mut Value) {
    use base64::Engine;
    let Some(m) = obj.as_object_mut() else {
        return;
    };
    let Some(Value::Object(string_data)) = m.remove("stringData") else {
        return;
    };
    if string_data.is_empty() {
        return;
    }
    if !m.get("data").is_some_and(Value::is_object) {
        m.insert("data".into(), json!({}));
    }
    if let Some(Value::Object(data)) = m.get_mut("data") {
        for (k, v) in string_data {
            let text = v.as_str().unwrap_or_default();
            data.insert(
                k,
                json!(base64::engine::general_purpose::STANDARD.encode(text)),
            );
        }
    }
}
