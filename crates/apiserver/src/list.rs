//! Lists: selectors, paging with continue tokens, and the revision a list reads at.

use axum::response::Response;
use base64::Engine;
use serde_json::{Value, json};
use std::sync::Arc;

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

/// What a list's `resourceVersion` / `resourceVersionMatch` ask for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum ListRv {
    /// No resourceVersion: the newest state (a consistent read).
    Consistent,
    /// `0`: any state.
    Any,
    /// A state at least this new (`NotOlderThan`, or a revision without a match).
    NotOlderThan(i64),
    /// The state at exactly this revision.
    Exact(i64),
}

fn list_rv(ctx: &Ctx) -> ApiResult<ListRv> {
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
        ("", None) => Ok(ListRv::Consistent),
        ("" | "NotOlderThan", Some(0)) => Ok(ListRv::Any),
        ("" | "NotOlderThan", Some(n)) => Ok(ListRv::NotOlderThan(n)),
        ("Exact", Some(n)) if n > 0 => Ok(ListRv::Exact(n)),
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

pub(crate) fn too_large(n: i64, current: i64) -> ApiError {
    ApiError::timeout(format!(
        "Too large resource version: {n}, current: {current}"
    ))
}

/// The store's newest revision (a quorum read on etcd), for consistent reads from the cache.
pub(crate) async fn store_latest_rev(api: &Api) -> ApiResult<i64> {
    api.store
        .latest_rev()
        .await
        .map_err(|e| ApiError::from_store(e, "", "", ""))
}

/// The revision the cache must reach to serve a read at `rv`, or None when the store serves
/// it. As upstream's cacher: the state at any revision, or at least at a given one, comes
/// from the cache (after waiting for it to get there); a consistent read too, once the cache
/// has caught up with the store's newest revision (falling back to the store when it does
/// not within the wait). Any state (`0`) still waits for the revisions this server knows of,
/// which costs nothing here and keeps reads after a write on the same server seeing it.
/// Watches with initial state follow the same rule.
pub(crate) async fn cache_target(api: &Api, prefix: &str, rv: ListRv) -> ApiResult<Option<i64>> {
    if !api.watch_cache.serves(prefix) {
        return Ok(None);
    }
    let (want, strict) = match rv {
        ListRv::Exact(_) => return Ok(None),
        ListRv::Consistent => (store_latest_rev(api).await?, true),
        ListRv::Any => (api.store.current_rev(), false),
        ListRv::NotOlderThan(n) => {
            // A revision the store has not reached does not exist yet: no wait can serve it
            // (a client only learns revisions that were committed).
            if n > api.watch_cache.rev() {
                let latest = store_latest_rev(api).await?;
                if n > latest {
                    return Err(too_large(n, latest));
                }
            }
            (n, true)
        }
    };
    if api
        .watch_cache
        .wait_fresh(want, super::cache::FRESHNESS_TIMEOUT)
        .await
        || !strict
    {
        return Ok(Some(want));
    }
    match rv {
        ListRv::NotOlderThan(n) => Err(too_large(n, api.watch_cache.rev())),
        _ => Ok(None),
    }
}

/// A get with a resourceVersion (`0` or a revision it must be at least as new as): from the
/// cache, as upstream serves it. Gets without one read the store.
pub async fn get(api: &Api, res: &Resource, ctx: &Ctx, name: &str) -> ApiResult<Response> {
    let rv = ctx.query.get("resourceVersion").unwrap_or("");
    let target = if rv.is_empty() {
        None
    } else {
        let rv = match rv.parse::<i64>() {
            Ok(0) => ListRv::Any,
            Ok(n) => ListRv::NotOlderThan(n),
            Err(_) => {
                return Err(ApiError::bad_request(format!(
                    "invalid resource version: {rv}"
                )));
            }
        };
        cache_target(api, &res.key(ns_of(res, ctx), name), rv).await?
    };
    // Read from the cache unless the store must serve it (or the cache stopped serving the
    // key since `cache_target` looked).
    let cached = match target {
        Some(_) => api.watch_cache.get(&res.key(ns_of(res, ctx), name)).ok(),
        None => None,
    };
    let obj = match cached {
        Some(entry) => {
            let entry = entry.ok_or_else(|| ApiError::not_found(&res.group, &res.plural, name))?;
            super::cache::decorate(res, &entry.obj, entry.rev)
        }
        None => super::lifecycle::get_current(api, res, ctx, name).await?.1,
    };
    Ok(respond(api, ctx, res, 200, obj, true))
}

pub async fn list(api: &Api, res: &Arc<Resource>, ctx: &Ctx) -> ApiResult<Response> {
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
    let rv = list_rv(ctx)?;
    let token = ctx.query.get("continue").filter(|t| !t.is_empty());
    // Continuations, exact revisions and the legacy exact match (a limit with a revision and
    // no match) are the store's, as upstream delegates them.
    let legacy_exact = limit.is_some()
        && matches!(rv, ListRv::NotOlderThan(_))
        && ctx
            .query
            .get("resourceVersionMatch")
            .is_none_or(str::is_empty);
    if token.is_none()
        && !legacy_exact
        && let Some(_) = cache_target(api, &prefix, rv).await?
    {
        // Upstream ignores the limit of a list at any state (`0`).
        let limit = limit.filter(|_| rv != ListRv::Any);
        if let Some(resp) = list_from_cache(api, res, ctx, &filter, &prefix, limit) {
            return Ok(resp);
        }
    }
    let mut rev = match rv {
        ListRv::Exact(n) | ListRv::NotOlderThan(n) if n > api.store.current_rev() => {
            // Another server sharing the datastore may have written it: only the store's own
            // newest revision says it does not exist yet (upstream's "Too large resource
            // version", rather than etcd's "future revision" as a 500).
            let latest = store_latest_rev(api).await?;
            if n > latest {
                return Err(too_large(n, latest));
            }
            if let ListRv::Exact(n) = rv { n } else { 0 }
        }
        ListRv::Exact(n) => n,
        _ => 0,
    };
    let mut after = None;
    if let Some(token) = token {
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
    let meta = list_meta(list_rev, &prefix, next.as_deref(), remaining);
    let list = json!({"kind": res.list_kind(), "apiVersion": res.api_version(), "metadata": meta, "items": items});
    Ok(respond(api, ctx, res, 200, list, true))
}

/// A list's metadata: its revision and, when `next` (the page's last key) is followed by
/// more, the continue token and (when known) how many items remain.
fn list_meta(rev: i64, prefix: &str, next: Option<&str>, remaining: Option<i64>) -> Value {
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if let Some(key) = next {
        let start = key.strip_prefix(prefix).unwrap_or(key);
        meta["continue"] = json!(encode_continue(rev, start));
        if let Some(r) = remaining {
            meta["remainingItemCount"] = json!(r);
        }
    }
    meta
}

/// The list from the cache; None when it no longer serves `prefix` (the store's then).
fn list_from_cache(
    api: &Api,
    res: &Arc<Resource>,
    ctx: &Ctx,
    filter: &Filter,
    prefix: &str,
    limit: Option<usize>,
) -> Option<Response> {
    let page = api
        .watch_cache
        .list(prefix, |obj| filter.matches(res, obj), limit)
        .ok()?;
    let remaining = filter.is_empty().then_some(page.remaining);
    let meta = list_meta(page.rev, prefix, page.next.as_deref(), remaining);
    if ctx.wants_table() {
        let items: Vec<Value> = page
            .items
            .iter()
            .map(|e| super::cache::decorate(res, &e.obj, e.rev))
            .collect();
        let list = json!({"kind": res.list_kind(), "apiVersion": res.api_version(), "metadata": meta, "items": items});
        return Some(respond(api, ctx, res, 200, list, true));
    }
    // The items' encodings are kept in the cache: the list is spliced from them.
    let head = super::status::go_json(
        &json!({"kind": res.list_kind(), "apiVersion": res.api_version(), "metadata": meta, "items": []}),
    );
    let head = head.strip_suffix(b"]}\n").unwrap_or(&head);
    let items: Vec<bytes::Bytes> = page.items.iter().map(|e| e.json(res)).collect();
    let mut body =
        Vec::with_capacity(head.len() + items.iter().map(|i| i.len() + 1).sum::<usize>() + 3);
    body.extend_from_slice(head);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}\n");
    Some(super::handlers::json_bytes_response(ctx, 200, body))
}
