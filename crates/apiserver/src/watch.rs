//! Watch: a chunked stream of newline-terminated JSON events, fed from the watch cache (or,
//! for a revision older than the cache's ring or before it is loaded, from the store's history).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::Api;
use super::cache::{CachedEvent, Subscription};
use super::context::Ctx;
use super::lifecycle::decorate;
use super::list::Filter;
use super::registry::Resource;
use super::status::{ApiError, ApiResult};
use kinglet_store::{Event, EventType, Record, StoreError};

/// The most a chunk of a watch's response carries when events are waiting.
const MAX_CHUNK: usize = 64 * 1024;

/// How often a bookmark is sent to watchers that asked for them.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);

/// One watch event, as upstream's encoder writes it (one JSON document per line).
/// The watch line a change makes for a watcher whose selectors match the object after it
/// (`now`) and before it (`before`): an object moving out of the selection is DELETED for
/// it, one moving in is ADDED, as upstream's cacher sends them.
fn line_type(typ: EventType, now: bool, before: bool) -> Option<&'static str> {
    match typ {
        EventType::Deleted if now => Some("DELETED"),
        EventType::Added if now => Some("ADDED"),
        EventType::Modified if now && before => Some("MODIFIED"),
        EventType::Modified if now => Some("ADDED"),
        EventType::Modified if before => Some("DELETED"),
        _ => None,
    }
}

fn event_line(typ: &str, object: Value) -> Bytes {
    Bytes::from(super::cache::event_line(typ, &object))
}

fn expired_event(requested: i64, compacted: i64) -> Bytes {
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
    tx: mpsc::Sender<Bytes>,
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
        let typ = line_type(ev.typ, now, before)?;
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

    /// As `convert`, for a cached event: the selectors match the decoded objects, and the
    /// line is the event's shared encoding (a Table is rendered per watcher).
    fn convert_cached(&self, ev: &CachedEvent) -> Option<Bytes> {
        let now = self.filter.matches(&self.res, &ev.cur);
        let before = ev
            .prev
            .as_ref()
            .is_some_and(|p| self.filter.matches(&self.res, p));
        let typ = line_type(ev.typ, now, before)?;
        let from_prev = typ == "DELETED" && ev.typ == EventType::Modified;
        if self.table {
            let obj = match (&ev.prev, from_prev) {
                (Some(p), true) => p,
                _ => &ev.cur,
            };
            let obj = super::cache::decorate(&self.res, obj, ev.rev);
            return Some(event_line(typ, self.render(obj)));
        }
        Some(ev.line(&self.api.watch_cache, &self.res, typ, from_prev))
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
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    api.metrics.watch_opened();
    let watcher = Watcher {
        api: api.clone(),
        res,
        ctx,
        filter,
        table,
        tx,
    };
    let consistent = rv.is_empty();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(timeout, async {
            match subscribe(&watcher.api, &prefix, start, initial, consistent).await {
                Some(sub) => {
                    run_cached(
                        &watcher,
                        &prefix,
                        sub,
                        initial,
                        send_initial == Some(true),
                        bookmarks,
                    )
                    .await
                }
                None => {
                    run(
                        &watcher,
                        &prefix,
                        start,
                        initial,
                        send_initial == Some(true),
                        bookmarks,
                    )
                    .await
                }
            }
        })
        .await;
        watcher.api.metrics.watch_closed();
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let first = rx.recv().await?;
        // Lines already waiting go out in the same chunk: one write (and one TLS record)
        // for several events when the connection is behind.
        let mut more = match rx.try_recv() {
            Ok(next) => bytes::BytesMut::from(&[first, next].concat()[..]),
            Err(_) => return Some((Ok::<_, std::io::Error>(first), rx)),
        };
        while more.len() < MAX_CHUNK {
            match rx.try_recv() {
                Ok(next) => more.extend_from_slice(&next),
                Err(_) => break,
            }
        }
        Some((Ok(more.freeze()), rx))
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

/// A watch's start from the cache, or None when the store must serve it: the cache is not
/// loaded, its ring no longer reaches back to the revision asked for, or (for a watch with
/// initial state) it does not catch up with the revision that state must include in time.
async fn subscribe(
    api: &Api,
    prefix: &str,
    start: Option<i64>,
    initial: bool,
    consistent: bool,
) -> Option<Subscription> {
    let cache = &api.watch_cache;
    // History at or below the store's compaction point is gone: such a watch gets its 410
    // from the store, as before, even while the cache's ring still holds the events.
    if !cache.serves(prefix) || start.is_some_and(|n| n < api.store.compacted_rev()) {
        return None;
    }
    if initial || start.is_none() {
        // The initial state is at least as new as the revision asked for, and (without one)
        // as new as the store's: what a list would show. A watch without initial state and
        // without a revision starts from that newest state.
        let want = match start {
            Some(n) => n,
            None if consistent => super::list::store_latest_rev(api).await.ok()?,
            None => api.store.current_rev(),
        };
        if !cache
            .wait_fresh(want, super::cache::FRESHNESS_TIMEOUT)
            .await
        {
            return None;
        }
    }
    let after = match start {
        Some(n) => n,
        None if initial => 0,
        None => cache.rev(),
    };
    cache.subscribe(prefix, after, initial)
}

async fn run_cached(
    w: &Watcher,
    prefix: &str,
    sub: Subscription,
    initial: bool,
    initial_bookmark: bool,
    bookmarks: bool,
) {
    let Subscription {
        from,
        initial: state,
        backlog,
        mut rx,
    } = sub;
    for e in &state {
        if !w.filter.matches(&w.res, &e.obj) {
            continue;
        }
        let sent = if w.table {
            w.send("ADDED", super::cache::decorate(&w.res, &e.obj, e.rev))
                .await
        } else {
            // The object's encoding kept in the cache, in an event's envelope.
            let obj = e.json(&w.res);
            let mut line = Vec::with_capacity(obj.len() + 32);
            line.extend_from_slice(b"{\"type\":\"ADDED\",\"object\":");
            line.extend_from_slice(&obj);
            line.extend_from_slice(b"}\n");
            w.tx.send(Bytes::from(line)).await.is_ok()
        };
        if !sent {
            return;
        }
    }
    if initial && initial_bookmark && !w.bookmark(from, true).await {
        return;
    }
    let mut last = from;
    for ev in backlog {
        if ev.rev <= last {
            continue;
        }
        last = ev.rev;
        if let Some(line) = w.convert_cached(&ev)
            && w.tx.send(line).await.is_err()
        {
            return;
        }
    }
    let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
    ticker.tick().await;
    loop {
        tokio::select! {
            ev = rx.recv() => {
                // Fallen behind (or the cache re-listed): the stream ends and the client
                // re-watches from the last revision it saw.
                let Ok(ev) = ev else { return };
                // The events already waiting are taken together and sent as one chunk.
                let mut batch = bytes::BytesMut::new();
                let mut next = Some(ev);
                let mut ended = false;
                while let Some(ev) = next.take() {
                    if ev.rev > last {
                        last = ev.rev;
                        if ev.key.starts_with(prefix)
                            && let Some(line) = w.convert_cached(&ev)
                        {
                            batch.extend_from_slice(&line);
                        }
                    }
                    if batch.len() < MAX_CHUNK {
                        match rx.try_recv() {
                            Ok(ev) => next = Some(ev),
                            Err(broadcast::error::TryRecvError::Empty) => {}
                            Err(_) => ended = true,
                        }
                    }
                }
                if !batch.is_empty() && w.tx.send(batch.freeze()).await.is_err() || ended {
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
