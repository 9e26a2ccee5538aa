//! HTTP for every resource: the route from method and path to the verb, request bodies and
//! options decoded, responses encoded (JSON or Table, with warnings). What the verbs do to
//! objects is the lifecycle module's; lists, patch and watch have their own files.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::Api;
use super::context::Ctx;
use super::lifecycle::{
    DeleteOptions, create_object, delete_object, get_current, ns_of, update_object,
};
use super::list::{Filter, list};
use super::object;
use super::registry::Resource;
use super::status::{ApiError, ApiResult};

/// Answers `value` as JSON (or as a Table when asked and `table_ok`), with any warnings.
pub fn respond(
    api: &Api,
    ctx: &Ctx,
    res: &Resource,
    code: u16,
    value: Value,
    table_ok: bool,
) -> Response {
    let body = if table_ok && ctx.wants_table() {
        super::table::to_table(api, res, ctx, &value)
    } else {
        value
    };
    json_response(ctx, code, &body)
}

/// Answers `body` as JSON, encoded as upstream's encoder writes it (see `status::go_json`).
pub fn json_response(ctx: &Ctx, code: u16, body: &Value) -> Response {
    json_bytes_response(ctx, code, super::status::go_json(body))
}

/// Answers `body`, already encoded as JSON, with any warnings.
pub fn json_bytes_response(ctx: &Ctx, code: u16, body: Vec<u8>) -> Response {
    let mut resp = (
        StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
        [(http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    for w in ctx
        .warnings
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let text = format!("299 - {}", serde_json::Value::String(w.clone()));
        if let Ok(h) = http::HeaderValue::from_str(&text) {
            resp.headers_mut().append(http::header::WARNING, h);
        }
    }
    resp
}

/// Entry point for `/api(s)/.../<resource>[/<name>[/<subresource>]]`.
pub async fn serve(
    api: Arc<Api>,
    res: Arc<Resource>,
    ctx: Ctx,
    method: Method,
    body: Bytes,
) -> ApiResult<Response> {
    let name = ctx.path.name.clone();
    let sub = ctx.path.subresource.clone();
    if res.namespaced && ctx.path.namespace.is_none() && (name.is_some() || method != Method::GET) {
        return Err(ApiError::path_not_found());
    }
    if !res.namespaced && ctx.path.namespace.is_some() && res.plural != "namespaces" {
        return Err(ApiError::path_not_found());
    }
    if res.create_only {
        return match (method, name) {
            (Method::POST, None) => super::special::create_review(&api, &res, &ctx, &body).await,
            _ => Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource".to_string(),
            )),
        };
    }
    let watching =
        ctx.path.legacy_watch || ctx.query.flag("watch") && ctx.query.get("watch") != Some("false");
    match (name, sub.as_deref()) {
        (None, _) => match method {
            Method::GET if watching => super::watch::watch(api, res, ctx).await,
            Method::GET => list(&api, &res, &ctx).await,
            Method::POST => create(&api, &res, &ctx, &body).await,
            Method::DELETE => delete_collection(&api, &res, &ctx, &body).await,
            _ => Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            )),
        },
        (Some(name), None) => match method {
            Method::GET if watching => super::watch::watch(api, res, ctx).await,
            Method::GET => super::list::get(&api, &res, &ctx, &name).await,
            Method::PUT => update(&api, &res, &ctx, &name, &body, None).await,
            Method::PATCH => super::patch::patch(&api, &res, &ctx, &name, &body, None).await,
            Method::DELETE => delete(&api, &res, &ctx, &name, &body).await,
            _ => Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            )),
        },
        (Some(name), Some(sub)) => {
            if !res.has_subresource(sub) {
                return Err(ApiError::path_not_found());
            }
            match (sub, method) {
                ("status", Method::GET)
                | ("ephemeralcontainers", Method::GET)
                | ("resize", Method::GET) => {
                    let (_, obj) = get_current(&api, &res, &ctx, &name).await?;
                    Ok(respond(&api, &ctx, &res, 200, obj, false))
                }
                (
                    "status" | "finalize" | "approval" | "ephemeralcontainers" | "resize",
                    Method::PUT,
                ) => update(&api, &res, &ctx, &name, &body, Some(sub)).await,
                ("status" | "approval" | "ephemeralcontainers" | "resize", Method::PATCH) => {
                    super::patch::patch(&api, &res, &ctx, &name, &body, Some(sub)).await
                }
                ("scale", Method::GET) => {
                    let (_, obj) = get_current(&api, &res, &ctx, &name).await?;
                    Ok(json_response(
                        &ctx,
                        200,
                        &super::scale::to_scale(&res, &obj),
                    ))
                }
                ("scale", Method::PUT) => {
                    super::scale::update_scale(&api, &res, &ctx, &name, &body).await
                }
                ("scale", Method::PATCH) => {
                    super::patch::patch(&api, &res, &ctx, &name, &body, Some("scale")).await
                }
                ("binding", Method::POST) => {
                    super::special::bind(&api, &res, &ctx, &name, &body).await
                }
                ("token", Method::POST) => {
                    super::special::token_request(&api, &ctx, &name, &body).await
                }
                ("eviction", Method::POST) => {
                    super::special::evict(&api, &res, &ctx, &name, &body).await
                }
                ("log", Method::GET) => super::node_proxy::pod_log(&api, &res, &ctx, &name).await,
                _ => Err(ApiError::method_not_allowed(format!(
                    "the server does not allow this method on the requested resource ({sub})"
                ))),
            }
        }
    }
}

async fn update(
    api: &Api,
    res: &Resource,
    ctx: &Ctx,
    name: &str,
    body: &Bytes,
    sub: Option<&str>,
) -> ApiResult<Response> {
    let new = ctx.decode_body(body)?;
    let new = super::convert::accept_version(res, new);
    let out = update_object(api, res, ctx, name, new, sub).await?;
    Ok(respond(api, ctx, res, 200, out, sub.is_none()))
}

async fn create(api: &Api, res: &Resource, ctx: &Ctx, body: &Bytes) -> ApiResult<Response> {
    let obj = ctx.decode_body(body)?;
    let obj = super::convert::accept_version(res, obj);
    let obj = create_object(api, res, ctx, obj).await?;
    Ok(respond(api, ctx, res, 201, obj, true))
}

/// DeleteOptions from the body and query, and whether they ask `orphanDependents: false`.
fn delete_options(ctx: &Ctx, body: &Bytes) -> ApiResult<(DeleteOptions, bool)> {
    let mut o = DeleteOptions::default();
    let mut no_orphans = ctx.query.get("orphanDependents") == Some("false");
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v = ctx.decode_body(body)?;
        no_orphans |= v.get("orphanDependents").and_then(Value::as_bool) == Some(false);
        o.grace = v.get("gracePeriodSeconds").and_then(Value::as_i64);
        o.propagation = v
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(String::from);
        if v.get("orphanDependents").and_then(Value::as_bool) == Some(true)
            && o.propagation.is_none()
        {
            o.propagation = Some("Orphan".into());
        }
        o.uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from);
        o.rv = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from);
    }
    if let Some(g) = ctx.query.get("gracePeriodSeconds") {
        o.grace = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds: {g}")))?,
        );
    }
    if let Some(p) = ctx.query.get("propagationPolicy") {
        o.propagation = Some(p.to_string());
    }
    match o.propagation.as_deref() {
        None | Some("Orphan" | "Background" | "Foreground") => Ok((o, no_orphans)),
        Some(p) => Err(ApiError::invalid(
            "meta.k8s.io",
            "DeleteOptions",
            "",
            vec![super::status::Cause::unsupported(
                "propagationPolicy",
                &json!(p),
                &["Foreground", "Background", "Orphan"],
            )],
        )),
    }
}

async fn delete(
    api: &Api,
    res: &Resource,
    ctx: &Ctx,
    name: &str,
    body: &Bytes,
) -> ApiResult<Response> {
    let (opts, no_orphans) = delete_options(ctx, body)?;
    let (gone, out) = delete_object(api, res, ctx, name, &opts).await?;
    // Upstream answers 202 only for an object that stays while `orphanDependents: false` was
    // asked; 200 otherwise, even while finalizers or a grace period hold it (old clients).
    let code = if !gone && no_orphans { 202 } else { 200 };
    Ok(respond(api, ctx, res, code, out, false))
}

/// How many deletes of a collection run at once: enough for the store to commit them in
/// batches (one commit for many), as creates from many clients are.
const DELETE_COLLECTION_WORKERS: usize = 64;

async fn delete_collection(
    api: &Api,
    res: &Resource,
    ctx: &Ctx,
    body: &Bytes,
) -> ApiResult<Response> {
    use futures::StreamExt;
    let (opts, _) = delete_options(ctx, body)?;
    let filter = Filter::from_ctx(res, ctx)?;
    let page = api
        .store
        .list(&res.ns_prefix(ns_of(res, ctx)), 0, None, None)
        .await
        .map_err(|e| ApiError::from_store(e, &res.group, &res.plural, ""))?;
    // Each item decoded once; the deletes run concurrently (one at a time, each waited for a
    // commit of its own: 20,000 objects took 40 s).
    let mut chosen = Vec::new();
    for rec in &page.items {
        let stored: Value = serde_json::from_slice(&rec.value).unwrap_or_default();
        if filter.matches(res, &stored) {
            chosen.push((
                object::name(&stored).to_string(),
                object::namespace(&stored).map(String::from),
                super::cache::decorate(res, &stored, rec.rev),
            ));
        }
    }
    let opts = &opts;
    let results: Vec<ApiResult<Value>> = futures::stream::iter(chosen)
        .map(|(name, ns, listed)| async move {
            let sub_ctx = Ctx {
                path: super::request::ResourcePath {
                    namespace: ns,
                    ..ctx.path.clone()
                },
                ..ctx.clone_shallow()
            };
            match delete_object(api, res, &sub_ctx, &name, opts).await {
                Ok(_) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
            // Upstream answers with the list it deleted from: the items as listed.
            Ok(listed)
        })
        .buffered(DELETE_COLLECTION_WORKERS)
        .collect()
        .await;
    let deleted = results.into_iter().collect::<ApiResult<Vec<Value>>>()?;
    let list = json!({"kind": res.list_kind(), "apiVersion": res.api_version(), "metadata": {"resourceVersion": page.rev.to_string()}, "items": deleted});
    Ok(json_response(ctx, 200, &list))
}
