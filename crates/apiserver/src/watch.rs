//! Watch: a chunked stream of newline-terminated JSON events, fed from the store's fan-out.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Api;
use super::context::Ctx;
use super::lifecycle::decorate;
use super::list::Filter;
use super::registry::Resource;
use super::status::{ApiError, ApiResult};
use kinglet_store::{Event, EventType, Record, StoreError};

/// How often a bookmark is sent to watchers that asked for them.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);

/// One watch event, as upstream's encoder writes it (one JSON document per line).
fn event_line(typ: &str, object: Value) -> Vec<u8> {
    super::status::go_json(&json!({"type": typ, "object": object}))
}

fn expired_event(requested: i64, compacted: i64) -> Vec<u8> {
    let status = ApiError::expired(format!(
        "too old resource version: {requested} ({compacted})"
    ));
    event_line("ERROR", status.to_status())
}

struct Watcher {
    api: Arc<Api>,
    res: Arc<Resource>,
    ctx: Ctx,
    filter: Filter,
    table: bool,
    tx: mpsc::Sender<Vec<u8>>,
}

impl Watcher {
    fn render(&self, obj: Value) -> Value {
        if self.table {
            super::table::to_table(&self.api, &self.res, &self.ctx, &obj)
        } else {
            obj
        }
    }

    async fn send(&self, typ: &str, obj: Value) -> bool {
        let obj = self.render(obj);
        self.tx.send(event_line(typ, obj)).await.is_ok()
    }

    async fn bookmark(&self, rev: i64, initial_end: bool) -> bool {
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.res.kind, "apiVersion": self.res.api_version(), "metadata": meta});
        self.tx.send(event_line("BOOKMARK", obj)).await.is_ok()
    }

    /// Maps a store event through the selectors, as upstream's watch cache does: an object that
    /// starts matching is ADDED, one that stops matching is DELETED.
    fn convert(&self, ev: &Event) -> Option<(&'static str, Value)> {
        let stored: Value = serde_json::from_slice(&ev.record.value).ok()?;
        let now = self.filter.matches(&self.res, &stored);
        let before = ev
            .prev
            .as_ref()
            .and_then(|p| serde_json::from_slice::<Value>(p).ok())
            .is_some_and(|p| self.filter.matches(&self.res, &p));
        let typ = match ev.typ {
            EventType::Deleted if now => "DELETED",
            EventType::Deleted => return None,
            EventType::Added if now => "ADDED",
            EventType::Modified if now && before => "MODIFIED",
            EventType::Modified if now => "ADDED",
            EventType::Modified if before => "DELETED",
            _ => return None,
        };
        let rec = Record {
            value: if typ == "DELETED" && ev.typ == EventType::Modified {
                ev.prev.clone()?
            } else {
                ev.record.value.clone()
            },
            ..ev.record.clone()
        };
        decorate(&self.res, &rec).ok().map(|o| (typ, o))
    }
}

pub async fn watch(api: Arc<Api>, res: Arc<Resource>, ctx: Ctx) -> ApiResult<Response> {
    let filter = Filter::from_ctx(&res, &ctx)?;
    let rv = ctx.query.get("resourceVersion").unwrap_or("").to_string();
    let send_initial = ctx.query.get("sendInitialEvents").map(|v| v == "true");
    if send_initial.is_some() && ctx.query.get("resourceVersionMatch") != Some("NotOlderThan") {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            vec![super::status::Cause::forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            )],
        ));
    }
    let start: Option<i64> = if rv.is_empty() || rv == "0" {
        None
    } else {
        Some(
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?,
        )
    };
    if let Some(n) = start
        && n > api.store.current_rev() + 1000
    {
        return Err(ApiError::timeout(format!(
            "Too large resource version: {n}, current: {}",
            api.store.current_rev()
        )));
    }
    // Initial state is sent when no revision is given, or when asked for explicitly.
    let initial = send_initial.unwrap_or(start.is_none());
    let bookmarks = ctx.query.flag("allowWatchBookmarks");
    let timeout = ctx
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800 + rand::random::<u64>() % 1800));
    let prefix = res.ns_prefix(if res.namespaced {
        ctx.path.namespace.as_deref()
    } else {
        None
    });
    let table = ctx.wants_table();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(64);
    api.metrics.watch_opened();
    let watcher = Watcher {
        api: api.clone(),
        res,
        ctx,
        filter,
        table,
        tx,
    };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(
            timeout,
            run(
                &watcher,
                &prefix,
                start,
                initial,
                send_initial == Some(true),
                bookmarks,
            ),
        )
        .await;
        watcher.api.metrics.watch_closed();
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::internal(e.to_string()))
}

async fn run(
    w: &Watcher,
    prefix: &str,
    start: Option<i64>,
    initial: bool,
    initial_bookmark: bool,
    bookmarks: bool,
) {
    let mut from = start.unwrap_or(0);
    if initial {
        // List the current state page by page, then watch from the list revision.
        let mut after = None;
        let mut rev = 0;
        loop {
            let page = match w
                .api
                .store
                .list(prefix, rev, after.clone(), Some(500))
                .await
            {
                Ok(p) => p,
                Err(_) => return,
            };
            rev = page.rev;
            for rec in &page.items {
                after = Some(rec.key.clone());
                let stored: Value = serde_json::from_slice(&rec.value).unwrap_or_default();
                if w.filter.matches(&w.res, &stored)
                    && let Ok(obj) = decorate(&w.res, rec)
                    && !w.send("ADDED", obj).await
                {
                    return;
                }
            }
            if !page.more {
                break;
            }
        }
        from = from.max(rev);
        if initial_bookmark && !w.bookmark(from, true).await {
            return;
        }
    }
    let mut stream = match w.api.store.watch(prefix, from).await {
        Ok(s) => s,
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => {
            let _ = w.tx.send(expired_event(requested, compacted)).await;
            return;
        }
        Err(_) => return,
    };
    let mut last = from;
    let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
    ticker.tick().await;
    loop {
        tokio::select! {
            ev = stream.next() => {
                let Ok(ev) = ev else { return };
                last = ev.record.rev;
                if let Some((typ, obj)) = w.convert(&ev)
                    && !w.send(typ, obj).await {
                        return;
                    }
            }
            _ = ticker.tick() => {
                if bookmarks && !w.bookmark(last, false).await {
                    return;
                }
            }
            _ = w.tx.closed() => return,
        }
    }
}
