//! The `scale` subresource: an `autoscaling/v1` Scale view of a workload's replicas.

use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use super::Api;
use super::context::Ctx;
use super::handlers::json_response;
use super::lifecycle::{commit_update, get_current, prepare_update};
use super::object::{self, meta_str};
use super::registry::Resource;
use super::status::{ApiError, ApiResult};

/// JSON pointers of (spec replicas, status replicas, label selector) for a resource.
fn paths(res: &Resource) -> (String, String, Option<String>) {
    let ptr = |p: &str| {
        p.trim_start_matches('.')
            .split('.')
            .fold(String::new(), |acc, s| format!("{acc}/{s}"))
    };
    match res.custom.as_ref().and_then(|c| c.scale.as_ref()) {
        Some(s) => (
            ptr(&s.spec_replicas),
            ptr(&s.status_replicas),
            s.label_selector.as_deref().map(ptr),
        ),
        None => ("/spec/replicas".into(), "/status/replicas".into(), None),
    }
}

fn selector_of(res: &Resource, obj: &Value) -> String {
    let (_, _, sel_path) = paths(res);
    if let Some(p) = sel_path {
        return obj
            .pointer(&p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
    }
    match obj.pointer("/spec/selector") {
        Some(sel) if sel.get("matchLabels").is_some() || sel.get("matchExpressions").is_some() => {
            super::table::selector_string(sel)
        }
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(","),
        _ => String::new(),
    }
}

pub fn to_scale(res: &Resource, obj: &Value) -> Value {
    let (spec_p, status_p, _) = paths(res);
    let mut meta = json!({});
    for k in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = obj.pointer(&format!("/metadata/{k}")) {
            meta[k] = v.clone();
        }
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": meta,
        "spec": {"replicas": obj.pointer(&spec_p).and_then(Value::as_i64).unwrap_or(0)},
        "status": {"replicas": obj.pointer(&status_p).and_then(Value::as_i64).unwrap_or(0), "selector": selector_of(res, obj)},
    })
}

/// The object with its replicas set from a Scale.
pub fn set_replicas(res: &Resource, obj: &Value, scale: &Value) -> ApiResult<Value> {
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if replicas < 0 {
        return Err(ApiError::invalid(
            "autoscaling",
            "Scale",
            object::name(obj),
            vec![super::status::Cause::invalid(
                "spec.replicas",
                &json!(replicas),
                "must be greater than or equal to 0",
            )],
        ));
    }
    let (spec_p, _, _) = paths(res);
    let mut out = obj.clone();
    let mut cur = &mut out;
    let parts: Vec<&str> = spec_p.trim_start_matches('/').split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            cur[*p] = json!(replicas);
        } else {
            if !cur.get(*p).is_some_and(Value::is_object) {
                cur[*p] = json!({});
            }
            cur = &mut cur[*p];
        }
    }
    Ok(out)
}

pub async fn update_scale(
    api: &Api,
    res: &Resource,
    ctx: &Ctx,
    name: &str,
    body: &Bytes,
) -> ApiResult<Response> {
    let scale = ctx.decode_body(body)?;
    let (rec, old) = get_current(api, res, ctx, name).await?;
    if let Some(rv) = meta_str(&scale, "resourceVersion").filter(|s| !s.is_empty())
        && rv != rec.rev.to_string()
    {
        return Err(ApiError::conflict(&res.group, &res.plural, name));
    }
    let new = set_replicas(res, &old, &scale)?;
    let prepared = prepare_update(api, res, ctx, &old, new, None).await?;
    let out = commit_update(api, res, ctx, rec.rev, &old, prepared, None).await?;
    Ok(json_response(ctx, 200, &to_scale(res, &out)))
}
