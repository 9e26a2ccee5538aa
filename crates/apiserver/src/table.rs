//! `meta.k8s.io/v1` Table responses with upstream's columns, so `kubectl get` prints what
//! users know. Each kind's columns are in its module under `kinds`; here are the Table itself,
//! the generic columns (Name and Age, CRD printer columns) and the helpers rows are built from.

use serde_json::{Value, json};

use super::Api;
use super::context::Ctx;
use super::kinds;
use super::registry::Resource;

/// Upstream's `HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let d = (hours / 24) % 365;
        return if d == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{d}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

pub(crate) fn age_of(ts: Option<&str>) -> String {
    match ts.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) {
        Some(t) => {
            human_duration((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
        }
        None => "<unknown>".into(),
    }
}

pub(crate) fn age(obj: &Value) -> Value {
    json!(age_of(
        obj.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
    ))
}

pub(crate) fn s<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

pub(crate) fn i(obj: &Value, ptr: &str) -> i64 {
    obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

pub(crate) fn arr<'a>(obj: &'a Value, ptr: &str) -> &'a [Value] {
    obj.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

pub(crate) fn none_if_empty(v: String) -> Value {
    json!(if v.is_empty() {
        "<none>".to_string()
    } else {
        v
    })
}

/// Column definitions and a row function.
pub(crate) type Columns = (Vec<Column>, fn(&Value) -> Vec<Value>);

/// (name, type, priority)
pub(crate) type Column = (&'static str, &'static str, u8);

pub(crate) const N: Column = ("Name", "string", 0);
pub(crate) const AGE: Column = ("Age", "string", 0);

/// Name and Age, for kinds with nothing else to show.
fn plain_columns() -> Columns {
    (vec![N, AGE], |v| vec![name(v), age(v)])
}

/// Name and creation time, as upstream prints RBAC objects and CRDs.
pub(crate) fn created_at_columns() -> Columns {
    (vec![N, ("Created At", "date", 0)], |v| {
        vec![name(v), json!(s(v, "/metadata/creationTimestamp"))]
    })
}

pub(crate) fn name(obj: &Value) -> Value {
    json!(s(obj, "/metadata/name"))
}

/// A label selector object in `kubectl`'s string form.
pub fn selector_string(sel: &Value) -> String {
    let mut parts: Vec<String> = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let vals: Vec<&str> = arr(e, "/values").iter().filter_map(Value::as_str).collect();
        let key = s(e, "/key");
        parts.push(match s(e, "/operator") {
            "In" => format!("{key} in ({})", vals.join(",")),
            "NotIn" => format!("{key} notin ({})", vals.join(",")),
            "Exists" => key.to_string(),
            _ => format!("!{key}"),
        });
    }
    parts.join(",")
}

pub(crate) fn map_string(obj: &Value, ptr: &str) -> String {
    obj.pointer(ptr)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Evaluates a CRD printer column's JSONPath (`.spec.replicas`,
/// `.status.conditions[?(@.type=="Ready")].status`): Null when nothing matches, the value when
/// one does, and the values joined by spaces when several do, as upstream prints them.
fn eval_json_path(obj: &Value, path: &str) -> Value {
    use jsonpath_rust::JsonPath;
    let path = path.trim();
    let path = path
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(path);
    let path = path.strip_prefix('$').unwrap_or(path);
    let Ok(found) = obj.query(&format!("${path}")) else {
        return Value::Null;
    };
    match found.as_slice() {
        [] => Value::Null,
        [one] => (*one).clone(),
        many => Value::String(
            many.iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" "),
        ),
    }
}

/// (name, type, priority, jsonPath, description)
type CustomColumn = (String, String, u8, String, String);

fn custom_columns(res: &Resource) -> Option<Vec<CustomColumn>> {
    let info = res.custom.as_ref()?;
    if info.printer_columns.is_empty() {
        return None;
    }
    Some(
        info.printer_columns
            .iter()
            .map(|c| {
                (
                    s(c, "/name").to_string(),
                    c.get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("string")
                        .to_string(),
                    c.get("priority").and_then(Value::as_i64).unwrap_or(0) as u8,
                    s(c, "/jsonPath").to_string(),
                    s(c, "/description").to_string(),
                )
            })
            .collect(),
    )
}

/// Converts an object or a list into a Table.
pub fn to_table(_api: &Api, res: &Resource, ctx: &Ctx, value: &Value) -> Value {
    let is_list = value.get("items").is_some_and(Value::is_array)
        && value
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k.ends_with("List"));
    let objects: Vec<&Value> = if is_list {
        value["items"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    } else {
        vec![value]
    };
    let include = ctx.query.get("includeObject").unwrap_or("Metadata");
    let row_object = |o: &Value| match include {
        "None" => Value::Null,
        "Object" => o.clone(),
        _ => {
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))})
        }
    };
    let (defs, rows): (Vec<Value>, Vec<Value>) = if let Some(cols) = custom_columns(res) {
        let mut defs = vec![
            json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
        ];
        defs.extend(cols.iter().map(|(n, t, p, _, d)| {
            let (typ, format) = if t == "date" {
                ("string", "date")
            } else {
                (t.as_str(), "")
            };
            json!({"name": n, "type": typ, "format": format, "description": d, "priority": p})
        }));
        let rows = objects
            .iter()
            .map(|o| {
                let mut cells = vec![name(o)];
                for (_, t, _, path, _) in &cols {
                    let v = eval_json_path(o, path);
                    cells.push(if t == "date" {
                        json!(age_of(v.as_str()))
                    } else {
                        v
                    });
                }
                json!({"cells": cells, "object": row_object(o)})
            })
            .collect();
        (defs, rows)
    } else {
        let (cols, row) = kinds::of(res).columns().unwrap_or_else(plain_columns);
        let defs = cols
            .iter()
            .map(|(n, t, p)| {
                let format = if *n == "Name" { "name" } else { "" };
                json!({"name": n, "type": t, "format": format, "description": "", "priority": p})
            })
            .collect();
        let rows = objects
            .iter()
            .map(|o| json!({"cells": row(o), "object": row_object(o)}))
            .collect();
        (defs, rows)
    };
    let mut meta = json!({});
    if let Some(m) = value.get("metadata") {
        for k in ["resourceVersion", "continue", "remainingItemCount"] {
            if let Some(v) = m.get(k) {
                meta[k] = v.clone();
            }
        }
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_match_upstream() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 3600, "3d1h"),
            (400 * 86400, "400d"),
        ] {
            assert_eq!(human_duration(secs), want);
        }
    }

    #[test]
    fn json_path() {
        let o = json!({"spec": {"replicas": 3, "list": [{"a": "x"}]}});
        assert_eq!(eval_json_path(&o, ".spec.replicas"), json!(3));
        assert_eq!(eval_json_path(&o, ".spec.list[0].a"), json!("x"));
        assert_eq!(eval_json_path(&o, ".spec.missing"), Value::Null);
        let o = json!({"status": {"conditions": [
            {"type": "Synced", "status": "False"},
            {"type": "Ready", "status": "True"}
        ]}});
        let ready = r#".status.conditions[?(@.type=="Ready")].status"#;
        assert_eq!(eval_json_path(&o, ready), json!("True"));
        assert_eq!(
            eval_json_path(&o, "{.status.conditions[*].type}"),
            json!("Synced Ready")
        );
    }
}
