//! `metadata.managedFields`: which manager owns which fields, updated on every write, and
//! server-side apply with conflict detection on top of it.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::context::Ctx;
use super::merge::{self, Elem, Path, Shape};
use super::object::{meta_mut, now_time};
use super::registry::Resource;
use super::status::{ApiError, ApiResult};

/// The schema shape of a resource's objects.
pub fn shape_of(res: &Resource) -> Shape<'_> {
    match res.custom.as_ref().and_then(|c| c.schema.as_ref()) {
        Some(s) => Shape::of_schema(s),
        None if res.schema.is_some() => Shape::of_definition(&res.definition_name()),
        None => Shape::none(),
    }
}

const BOOKKEEPING: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Paths an object's writer can own (no type meta or server-set metadata).
fn owned_paths(res: &Resource, obj: &Value, sub: Option<&str>) -> Vec<Path> {
    let mut scoped = obj.clone();
    if let Some(m) = scoped.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        if let Some(md) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in BOOKKEEPING {
                md.remove(*k);
            }
            if md.is_empty() {
                m.remove("metadata");
            }
        }
        match sub {
            Some("status") => m.retain(|k, _| k == "status"),
            _ if res.has_status() => {
                m.remove("status");
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    let shape = shape_of(res);
    merge::leaf_paths(&scoped, shape, &mut Vec::new(), &mut out);
    out.retain(|p| !p.is_empty());
    out
}

struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    subresource: Option<String>,
    paths: Vec<Path>,
}

fn entries_of(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| Entry {
                    manager: e
                        .get("manager")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    operation: e
                        .get("operation")
                        .and_then(Value::as_str)
                        .unwrap_or("Update")
                        .into(),
                    api_version: e
                        .get("apiVersion")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    subresource: e
                        .get("subresource")
                        .and_then(Value::as_str)
                        .map(String::from),
                    paths: e
                        .get("fieldsV1")
                        .map(merge::from_fields_v1)
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn write_entries(obj: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.paths.is_empty())
        .map(|e| {
            let mut v = json!({"manager": e.manager, "operation": e.operation, "apiVersion": e.api_version, "time": now_time(),
                "fieldsType": "FieldsV1", "fieldsV1": merge::to_fields_v1(&e.paths)});
            if let Some(s) = e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    let m = meta_mut(obj);
    if list.is_empty() {
        m.remove("managedFields");
    } else {
        m.insert("managedFields".into(), Value::Array(list));
    }
}

fn is_apply(ctx: &Ctx) -> bool {
    ctx.content_type.starts_with("application/apply-patch")
}

/// Records an Update by this request's manager: it owns what it changed; others lose it.
pub fn record_update(
    ctx: &Ctx,
    res: &Resource,
    obj: &mut Value,
    old: Option<&Value>,
    sub: Option<&str>,
) -> ApiResult<()> {
    if is_apply(ctx) {
        return Ok(());
    }
    let manager = ctx.field_manager()?;
    let shape = shape_of(res);
    let new_paths = owned_paths(res, obj, sub);
    let changed: Vec<Path> = match old {
        None => new_paths.clone(),
        Some(old) => {
            let (now, before) = (
                merge::leaf_values(obj, shape),
                merge::leaf_values(old, shape),
            );
            new_paths
                .iter()
                .filter(|p| now.get(*p) != before.get(*p))
                .cloned()
                .collect()
        }
    };
    let mut entries = old.map(entries_of).unwrap_or_default();
    if changed.is_empty() && old.is_some() {
        write_entries(obj, entries);
        return Ok(());
    }
    // Sets, not scans: an object may have tens of thousands of paths.
    let all_now: HashSet<Path> = owned_paths(res, obj, None)
        .into_iter()
        .chain(owned_paths(res, obj, Some("status")))
        .collect();
    let changed_set: HashSet<&Path> = changed.iter().collect();
    for e in entries.iter_mut() {
        e.paths
            .retain(|p| all_now.contains(p) && !changed_set.contains(p));
    }
    let sub_s = sub.map(String::from);
    match entries
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Update" && e.subresource == sub_s)
    {
        Some(e) => {
            let mut have: HashSet<Path> = e.paths.iter().cloned().collect();
            for p in changed {
                if have.insert(p.clone()) {
                    e.paths.push(p);
                }
            }
            e.api_version = res.api_version();
        }
        None => entries.push(Entry {
            manager,
            operation: "Update".into(),
            api_version: res.api_version(),
            subresource: sub_s,
            paths: changed,
        }),
    }
    write_entries(obj, entries);
    Ok(())
}

fn show_path(p: &Path) -> String {
    let mut s = String::new();
    for e in p {
        match e {
            Elem::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Elem::Key(k) => {
                let inner: Vec<String> = serde_json::from_str::<Value>(k)
                    .ok()
                    .and_then(|v| v.as_object().cloned())
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                    .unwrap_or_default();
                s.push_str(&format!("[{}]", inner.join(",")));
            }
            Elem::Value(v) => s.push_str(&format!("[={v}]")),
        }
    }
    s
}

/// Server-side apply of `applied` onto `current` (None when creating). Returns the merged object
/// with managedFields updated, or a 409 listing the conflicts.
pub fn apply(
    ctx: &Ctx,
    res: &Resource,
    current: Option<&Value>,
    applied: &Value,
    force: bool,
) -> ApiResult<Value> {
    let manager = ctx.field_manager()?;
    let shape = shape_of(res);
    let applied_paths = owned_paths(res, applied, None);
    let empty = json!({});
    let cur = current.unwrap_or(&empty);
    let mut entries = entries_of(cur);
    let mut conflicts = Vec::new();
    // Sets, not scans: an object may have tens of thousands of paths.
    let applied_set: HashSet<&Path> = applied_paths.iter().collect();
    let (applied_values, cur_values) = (
        merge::leaf_values(applied, shape),
        merge::leaf_values(cur, shape),
    );
    for e in entries.iter_mut().filter(|e| e.manager != manager) {
        let mut lost = HashSet::new();
        for p in e.paths.iter().filter(|p| applied_set.contains(p)) {
            let applied_value = applied_values.get(p).copied();
            // Only leaf values conflict; "." nodes of maps and list items are containers.
            if applied_value.is_some_and(|v| v.is_object()) {
                continue;
            }
            if cur_values.get(p).copied() != applied_value {
                if force {
                    lost.insert(p.clone());
                } else {
                    conflicts.push((e.manager.clone(), e.api_version.clone(), p.clone()));
                }
            }
        }
        e.paths.retain(|p| !lost.contains(p));
    }
    if !conflicts.is_empty() {
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(m, av, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\" using {av}"), "field": show_path(p)}))
            .collect();
        let lines: Vec<String> = conflicts
            .iter()
            .map(|(m, av, p)| format!("- conflict with \"{m}\" using {av}: {}", show_path(p)))
            .collect();
        let n = conflicts.len();
        let mut err = ApiError::new(
            409,
            "Conflict",
            format!(
                "Apply failed with {n} conflict{}: {}",
                if n == 1 { "" } else { "s" },
                lines
                    .iter()
                    .map(|l| l.trim_start_matches("- "))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        );
        err.details = Some(
            json!({"name": applied.pointer("/metadata/name"), "group": res.group, "kind": res.plural, "causes": causes}),
        );
        return Err(err);
    }
    let mut applied_clean = applied.clone();
    if let Some(md) = applied_clean
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
    {
        md.remove("managedFields");
        md.remove("resourceVersion");
    }
    let mut merged =
        merge::strategic_merge(cur, &applied_clean, shape).map_err(ApiError::bad_request)?;
    // Fields this manager applied before but no longer applies are removed unless others own them.
    if let Some(prev) = entries
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply")
    {
        let others: HashSet<&Path> = entries
            .iter()
            .filter(|e| !(e.manager == manager && e.operation == "Apply"))
            .flat_map(|e| &e.paths)
            .collect();
        let gone: Vec<&Path> = prev
            .paths
            .iter()
            .filter(|p| !applied_set.contains(p) && !others.contains(p))
            .collect();
        merge::remove_paths(&mut merged, shape, &gone);
    }
    entries.retain(|e| !(e.manager == manager && e.operation == "Apply"));
    entries.push(Entry {
        manager,
        operation: "Apply".into(),
        api_version: res.api_version(),
        subresource: None,
        paths: applied_paths,
    });
    write_entries(&mut merged, entries);
    Ok(merged)
}
