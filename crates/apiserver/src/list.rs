//! Lists: selectors, paging with continue tokens, and the revision a list reads at.

use axum::response::Response;
use base64::Engine;
use serde_json::{Value, json};

use super::Api;
use super::context::Ctx;
use super::handlers::respond;
use super::kinds;
use super::lifecycle::{decorate, ns_of};
use super::registry::Resource;
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{ApiError, ApiResult};
use kinglet_store::StoreError;

/// A `continue` token: where the next page starts, and the list revision.
fn encode_continue(rev: i64, start: &str) -> String {
    let raw = json!({"v": "meta.k8s.io/v1", "rv": rev, "start": start}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(token: &str) -> ApiResult<(i64, String)> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(token))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rev = v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = v
        .get("start")
        .and_then(Value::as_str)
        .ok_or_else(bad)?
        .to_string();
    if start.contains("..") || start.starts_with('/') {
        return Err(bad());
    }
    Ok((rev, start))
}

/// Parsed list/watch selectors.
pub struct Filter {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn from_ctx(res: &Resource, ctx: &Ctx) -> ApiResult<Filter> {
        let labels = LabelSelector::parse(ctx.query.get("labelSelector").unwrap_or(""))
            .map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(ctx.query.get("fieldSelector").unwrap_or(""))
            .map_err(ApiError::bad_request)?;
        kinds::check_field_selector(res, &fields).map_err(ApiError::bad_request)?;
        let mut f = Filter { labels, fields };
        // A named watch (`/pods/<name>?watch=true`) is a watch with a name selector.
        if let Some(name) = &ctx.path.name {
            f.fields
                .terms
                .push(("metadata.name".into(), true, name.clone()));
        }
        Ok(f)
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
    /// Matches a stored-form object.
    pub fn matches(&self, res: &Resource, stored: &Value) -> bool {
        self.labels.matches_object(stored)
            && self
                .fields
                .matches(|f| kinds::of(res).field_value(stored, f))
    }
}

/// The revision a list reads at, from `resourceVersion` / `resourceVersionMatch`.
fn list_revision(api: &Api, ctx: &Ctx) -> ApiResult<i64> {
    let rv = ctx.query.get("resourceVersion").unwrap_or("");
    let rvm = ctx.query.get("resourceVersionMatch").unwrap_or("");
    let parsed = if rv.is_empty() {
        None
    } else {
        Some(
            rv.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?,
        )
    };
    match (rvm, parsed) {
        ("", _) | ("NotOlderThan", Some(_)) => {
            if let Some(n) = parsed.filter(|n| *n > api.store.current_rev()) {
                return Err(ApiError::timeout(format!(
                    "Too large resource version: {n}, current: {}",
                    api.store.current_rev()
                )));
            }
            Ok(0)
        }
        ("Exact", Some(n)) if n > 0 => Ok(n),
        ("Exact" | "NotOlderThan", _) => Err(ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            vec![super::status::Cause::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            )],
        )),
        (other, _) => Err(ApiError::bad_request(format!(
            "invalid resourceVersionMatch: {other}"
        ))),
    }
}

pub async fn list(api: &Api, res: &Resource, ctx: &Ctx) -> ApiResult<Response> {
    let filter = Filter::from_ctx(res, ctx)?;
    let limit = match ctx.query.get("limit") {
        None | Some("") | Some("0") => None,
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit: {l}")))?
                // The store asks SQLite for one more than this, as an i64: 2^63-1 overflowed
                // (a panic in debug builds, an empty list in release). No list is this long.
                .min(i64::MAX as usize - 1),
        ),
    };
    let prefix = res.ns_prefix(ns_of(res, ctx));
    let (mut rev, mut after) = (list_revision(api, ctx)?, None);
    if let Some(token) = ctx.query.get("continue").filter(|t| !t.is_empty()) {
        if ctx
            .query
            .get("resourceVersionMatch")
            .is_some_and(|m| !m.is_empty())
        {
            return Err(ApiError::bad_request(
                "specifying resource version match is not allowed when using continue",
            ));
        }
        let (r, start) = decode_continue(token)?;
        rev = r;
        after = Some(format!("{prefix}{start}"));
    }
    let mut items = Vec::new();
    let (list_rev, next, remaining) = loop {
        let want = limit.map(|l| {
            if filter.is_empty() {
                l - items.len()
            } else {
                (l - items.len()).max(256)
            }
        });
        let page = api.store.list(&prefix, rev, after.clone(), want).await.map_err(|e| match e {
            StoreError::Compacted { .. } if ctx.query.get("continue").is_some() => ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
            ),
            other => ApiError::from_store(other, &res.group, &res.plural, ""),
        })?;
        rev = page.rev;
        let mut last_key = None;
        let mut cut_short = false;
        let n = page.items.len();
        for (i, rec) in page.items.into_iter().enumerate() {
            last_key = Some(rec.key.clone());
            let stored: Value = serde_json::from_slice(&rec.value)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            if filter.matches(res, &stored) {
                items.push(decorate(res, &rec)?);
                if limit.is_some_and(|l| items.len() >= l) {
                    cut_short = i + 1 < n || page.more;
                    break;
                }
            }
        }
        if cut_short {
            let key = last_key.unwrap_or_default();
            break (
                rev,
                Some(key),
                if filter.is_empty() {
                    Some(page.remaining)
                } else {
                    None
                },
            );
        }
        if !page.more {
            break (rev, None, None);
        }
        after = last_key;
    };
    let mut meta = json!({"resourceVersion": list_rev.to_string()});
    if let Some(key) = next {
        let start = key.strip_prefix(&prefix).unwrap_or(&key);
        meta["continue"] = json!(encode_continue(list_rev, start));
        if let Some(r) = remaining {
            meta["remainingItemCount"] = json!(r);
        }
    }
    let list = json!({"kind": res.list_kind(), "apiVersion": res.api_version(), "metadata": meta, "items": items});
    Ok(respond(api, ctx, res, 200, list, true))
}
