//! PATCH: JSON patch, merge patch, strategic merge patch and server-side apply, retried on
//! write conflicts as upstream does when the patch carries no resourceVersion.

use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;

use super::Api;
use super::context::{Ctx, MAX_BODY, decode_json, decode_yaml};
use super::handlers::{json_response, respond};
use super::lifecycle::{commit_update, create_object, get_current, prepare_update};
use super::managed::{self, shape_of};
use super::merge::strategic_merge;
use super::object::meta_str;
use super::registry::Resource;
use super::scale;
use super::status::{ApiError, ApiResult, Cause};

#[derive(Clone, Copy, PartialEq)]
enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

fn invalid_patch(msg: impl Into<String>) -> ApiError {
    ApiError::new(422, "Invalid", msg)
}

fn apply_patch(res: &Resource, typ: PatchType, target: &Value, patch: &Value) -> ApiResult<Value> {
    match typ {
        PatchType::Json => apply_json_patch(target, patch),
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding patch: merge patch must be a JSON object",
                ));
            }
            let mut doc = target.clone();
            json_patch::merge(&mut doc, patch);
            Ok(doc)
        }
        PatchType::Strategic => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding patch: strategic merge patch must be a JSON object",
                ));
            }
            strategic_merge(target, patch, shape_of(res)).map_err(|e| {
                ApiError::bad_request(format!("error applying strategic merge patch: {e}"))
            })
        }
        PatchType::Apply => unreachable!("apply is handled by managed::apply"),
    }
}

/// Upstream's limits on a JSON patch: its operations, and what its copies may add to the
/// object (each `copy` of the root into itself doubles it: 30 would make gigabytes).
const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;
const MAX_JSON_PATCH_COPY_BYTES: usize = MAX_BODY;

/// Applies a JSON patch (RFC 6902) to a copy of `target`.
pub(crate) fn apply_json_patch(target: &Value, patch: &Value) -> ApiResult<Value> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    if ops.len() > MAX_JSON_PATCH_OPERATIONS {
        let mut e = ApiError::too_large();
        e.message = format!(
            "Request entity too large: The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            ops.len()
        );
        return Err(e);
    }
    let rejected = |e: String| {
        invalid_patch(format!(
            "the server rejected our request due to an error in our request: {e}"
        ))
    };
    let mut doc = target.clone();
    let mut copied = 0;
    // One operation at a time, to count copies as they happen; `doc` is a copy, so a failure
    // part-way leaves the object as it was.
    for (i, op) in ops.iter().enumerate() {
        if let json_patch::PatchOperation::Copy(c) = op {
            copied += doc
                .pointer(c.from.as_str())
                .and_then(|v| serde_json::to_vec(v).ok())
                .map_or(0, |b| b.len());
            if copied > MAX_JSON_PATCH_COPY_BYTES {
                return Err(rejected(format!(
                    "Unable to copy, the accumulated size increase of copy is {copied}, exceeding the limit {MAX_JSON_PATCH_COPY_BYTES}"
                )));
            }
        }
        json_patch::patch(&mut doc, std::slice::from_ref(op)).map_err(|mut e| {
            e.operation = i;
            rejected(e.to_string())
        })?;
    }
    Ok(doc)
}

pub async fn patch(
    api: &Api,
    res: &Resource,
    ctx: &Ctx,
    name: &str,
    body: &Bytes,
    sub: Option<&str>,
) -> ApiResult<Response> {
    let ct = ctx.content_type.split(';').next().unwrap_or("").trim();
    let typ = match ct {
        "application/json-patch+json" => PatchType::Json,
        "application/merge-patch+json" => PatchType::Merge,
        "application/strategic-merge-patch+json" if !res.is_custom() => PatchType::Strategic,
        "application/apply-patch+yaml" | "application/apply-patch+json" => PatchType::Apply,
        other => {
            let mut e = ApiError::unsupported_media_type(other);
            e.message = format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml{}",
                if res.is_custom() {
                    ""
                } else {
                    ", application/strategic-merge-patch+json"
                }
            );
            return Err(e);
        }
    };
    if body.len() > MAX_BODY {
        return Err(ApiError::too_large());
    }
    let force = ctx.query.flag("force") && ctx.query.get("force") != Some("false");
    if typ != PatchType::Apply && ctx.query.get("force").is_some() {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "PatchOptions",
            "",
            vec![Cause::forbidden(
                "force",
                "may not be specified for non-apply patch",
            )],
        ));
    }
    if typ == PatchType::Apply && ctx.query.get("fieldManager").is_none_or(str::is_empty) {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "PatchOptions",
            "",
            vec![Cause::new(
                "FieldValueRequired",
                "fieldManager",
                "Required value: is required for apply patch",
            )],
        ));
    }
    let doc = if typ == PatchType::Apply {
        decode_yaml(body)?
    } else {
        decode_json(body)?
    };
    let explicit_rv = match typ {
        PatchType::Json => None,
        _ => meta_str(&doc, "resourceVersion").map(String::from),
    };
    for _ in 0..5 {
        let current = match get_current(api, res, ctx, name).await {
            Ok(c) => c,
            Err(e) if e.code == 404 && typ == PatchType::Apply && sub.is_none() => {
                // Apply that creates needs `create` too, as upstream authorizes it.
                let attrs = super::authz::Attributes {
                    user: ctx.user.clone(),
                    verb: "create".into(),
                    resource_request: true,
                    namespace: ctx.path.namespace.clone().unwrap_or_default(),
                    group: res.group.clone(),
                    resource: res.plural.clone(),
                    name: name.to_string(),
                    ..Default::default()
                };
                if let super::authz::Decision::Deny(reason) = api.authz.authorize(api, &attrs).await
                {
                    return Err(super::authz::forbidden(&attrs, &reason));
                }
                let mut applied = doc.clone();
                super::lifecycle::check_type_meta(res, &mut applied)?;
                super::lifecycle::name_matches_url(&applied, name)?;
                let merged = managed::apply(ctx, res, None, &applied, force)?;
                let created = create_object(api, res, ctx, merged).await?;
                return Ok(respond(api, ctx, res, 201, created, true));
            }
            Err(e) => return Err(e),
        };
        let (rec, old) = current;
        if let Some(rv) = &explicit_rv
            && *rv != rec.rev.to_string()
        {
            return Err(ApiError::conflict(&res.group, &res.plural, name));
        }
        let new = if sub == Some("scale") {
            let scale_obj = scale::to_scale(res, &old);
            let patched = apply_patch(
                res,
                if typ == PatchType::Strategic {
                    PatchType::Merge
                } else {
                    typ
                },
                &scale_obj,
                &doc,
            )?;
            scale::set_replicas(res, &old, &patched)?
        } else if typ == PatchType::Apply {
            let mut applied = doc.clone();
            super::lifecycle::check_type_meta(res, &mut applied)?;
            managed::apply(ctx, res, Some(&old), &applied, force)?
        } else {
            apply_patch(res, typ, &old, &doc)?
        };
        super::lifecycle::name_matches_url(&new, name)?;
        if meta_str(&new, "uid").is_some_and(|u| Some(u) != meta_str(&old, "uid")) {
            return Err(ApiError::conflict_msg(
                &res.group,
                &res.plural,
                name,
                "Precondition failed: UID in object meta does not match",
            ));
        }
        let update_sub = if sub == Some("scale") { None } else { sub };
        let prepared = prepare_update(api, res, ctx, &old, new, update_sub).await?;
        match commit_update(api, res, ctx, rec.rev, &old, prepared, update_sub).await {
            Ok(out) if sub == Some("scale") => {
                return Ok(json_response(ctx, 200, &scale::to_scale(res, &out)));
            }
            Ok(out) => return Ok(respond(api, ctx, res, 200, out, sub.is_none())),
            Err(e)
                if e.reason == "Conflict"
                    && explicit_rv.is_none()
                    && e.details
                        .as_ref()
                        .is_some_and(|d| d.get("causes").is_none()) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(&res.group, &res.plural, name))
}
