//! Watch: a chunked stream of newline-terminated JSON events, fed from the watch cache (or,
//! for a revision older than the cache's ring or before it is loaded, from the store's history).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::Api;
use super::cache::{CachedEvent, Entry, Subscription};
use super::context::Ctx;
use super::lifecycle::decorate;
use super::list::{Filter, ListRv};
use super::registry::Resource;
use super::status::{ApiError, ApiResult};
use kinglet_store::{EventType, StoreError};

/// The most a chunk of a watch's response carries when events are waiting.
const MAX_CHUNK: usize = 96 * 1024;

/// How often a bookmark is sent to watchers that asked for them.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);

/// Under a fast flow of events a watch that has sent everything ready writes its next chunk
/// no sooner than a pause after the last (tokio's timers round it up to the next
/// millisecond): each chunk costs a wakeup and a write on the server and a wakeup and reads
/// on the watcher's side, and a watch sent a chunk per event falls behind its writers. The
/// pause grows with the events the last chunk carried (`PAUSE_PER_EVENT` each, from
/// `MIN_PAUSE` up to `MAX_PAUSE`), so a flow below about 700 events a second keeps the
/// shortest (each chunk carries fewer events than its pause lasts milliseconds), and a flood
/// waits up to `MAX_PAUSE`, the most an event is held back, and no longer than it takes to
/// fill a chunk (`CHUNK_FILL`). A chunk that was not part of a flow (the first, or one after
/// a quiet spell) leaves the shortest pause; an event after a quiet spell goes out at once,
/// and a watch with lines still waiting (a full chunk) does not pause.
const MIN_PAUSE: Duration = Duration::from_millis(2);
const MAX_PAUSE: Duration = Duration::from_millis(24);
const PAUSE_PER_EVENT: Duration = Duration::from_millis(1);
/// About four HTTP/2 frames (16 KiB by default) in one write; `MAX_CHUNK` leaves room above it
/// for a timer that fires late, so that such a chunk is still followed by a pause.
const CHUNK_FILL: usize = 60 * 1024;

/// The pause after a chunk of `events` lines and `bytes` that took `took` to come (since the
/// chunk before it; None for the first).
fn pause_after(events: u32, bytes: usize, took: Option<Duration>) -> Duration {
    let Some(took) = took.filter(|t| *t <= 2 * MAX_PAUSE) else {
        return MIN_PAUSE;
    };
    let per_event = PAUSE_PER_EVENT.saturating_mul(events);
    // The timer's rounding (up to a millisecond) lengthens every pause: taken off here, so
    // that a chunk stays within `CHUNK_FILL`.
    let to_fill_a_chunk = took
        .mul_f64(CHUNK_FILL as f64 / bytes.max(1) as f64)
        .saturating_sub(Duration::from_millis(1));
    per_event.min(to_fill_a_chunk).clamp(MIN_PAUSE, MAX_PAUSE)
}

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
}

impl Watcher {
    fn render(&self, obj: Value) -> Value {
        if self.table {
            super::table::to_table(&self.api, &self.res, &self.ctx, &obj)
        } else {
            obj
        }
    }

    fn line(&self, typ: &str, obj: Value) -> Bytes {
        event_line(typ, self.render(obj))
    }

    fn bookmark(&self, rev: i64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.res.kind, "apiVersion": self.res.api_version(), "metadata": meta});
        event_line("BOOKMARK", obj)
    }

    /// Maps an event through the selectors, as upstream's watch cache does: an object that
    /// starts matching is ADDED, one that stops matching is DELETED. The selectors match the
    /// decoded objects, and the line is the event's shared encoding (a Table is rendered per
    /// watcher).
    fn convert(&self, ev: &CachedEvent) -> Option<Bytes> {
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

/// Counts the watch as closed when its response body is dropped: finished, timed out, or
/// its client gone.
struct OpenWatch(Arc<Api>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.metrics.watch_closed();
    }
}

type Chunks = futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>;

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
        // Another server sharing the datastore may have written it: only the store's own
        // newest revision says how far it is.
        let latest = super::list::store_latest_rev(&api).await?;
        if n > latest + 1000 {
            return Err(super::list::too_large(n, latest));
        }
    }
    // Initial state is sent when no revision is given, or when asked for explicitly.
    let initial = send_initial.unwrap_or(start.is_none());
    let initial_bookmark = send_initial == Some(true);
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
    api.metrics.watch_opened();
    let open = OpenWatch(api.clone());
    let w = Watcher {
        api,
        res,
        ctx,
        filter,
        table,
    };
    let consistent = rv.is_empty();
    // The response body itself follows the cache's broadcast (no task or channel of its own
    // between them: one wakeup per batch of events); a watch the cache cannot serve is fed by
    // a task following the store.
    let body = futures::stream::once(async move {
        let chunks: Chunks = match subscribe(&w.api, &prefix, start, initial, consistent).await {
            Some(sub) => {
                let Subscription {
                    from,
                    initial: state,
                    backlog,
                    rx,
                } = sub;
                let cached = CachedWatch {
                    w,
                    prefix,
                    initial: state.into_iter(),
                    initial_end: (initial && initial_bookmark).then_some(from),
                    backlog: backlog.into_iter(),
                    rx,
                    last: from,
                    bookmark_at: Box::pin(tokio::time::sleep(BOOKMARK_INTERVAL)),
                    bookmarks,
                    sent_at: None,
                    next_at: None,
                    ended: false,
                };
                Box::pin(futures::stream::unfold(cached, |mut c| async move {
                    let chunk = c.next_chunk().await?;
                    Some((Ok(chunk), c))
                }))
            }
            None => {
                let (tx, rx) = mpsc::channel::<Bytes>(64);
                // Ends when the body is dropped (the watch timed out, or its client is gone):
                // `run` stops once `rx` is.
                tokio::spawn(async move {
                    run(
                        &w,
                        &tx,
                        &prefix,
                        start,
                        initial,
                        initial_bookmark,
                        bookmarks,
                    )
                    .await;
                });
                Box::pin(futures::stream::unfold(rx, |mut rx| async move {
                    let mut lines = Lines::default();
                    lines.push(rx.recv().await?);
                    lines.fill(|| rx.try_recv().ok());
                    Some((Ok(lines.join()), rx))
                }))
            }
        };
        chunks
    })
    .flatten()
    .take_until(tokio::time::sleep(timeout))
    .map(move |chunk| {
        let _open = &open;
        chunk
    });
    Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(body))
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// A watch served from the cache: its initial state, the bookmark ending it, the ring's
/// events after its revision, then the live events, as chunks of every line ready.
struct CachedWatch {
    w: Watcher,
    prefix: String,
    initial: std::vec::IntoIter<Arc<Entry>>,
    initial_end: Option<i64>,
    backlog: std::vec::IntoIter<Arc<CachedEvent>>,
    rx: broadcast::Receiver<Arc<CachedEvent>>,
    last: i64,
    /// When the next bookmark is due (if the client asked for them).
    bookmark_at: std::pin::Pin<Box<tokio::time::Sleep>>,
    bookmarks: bool,
    /// When the last chunk went out, and when the next may, after one that emptied
    /// everything ready (see `MIN_PAUSE`).
    sent_at: Option<tokio::time::Instant>,
    next_at: Option<tokio::time::Instant>,
    ended: bool,
}

impl CachedWatch {
    /// A bookmark at the last revision seen; the next one is due an interval later.
    fn bookmark(&mut self) -> Bytes {
        let next = tokio::time::Instant::now() + BOOKMARK_INTERVAL;
        self.bookmark_at.as_mut().reset(next);
        self.w.bookmark(self.last, false)
    }

    /// The line of a live or backlog event for this watcher, if it gets one.
    fn event(&mut self, ev: &CachedEvent) -> Option<Bytes> {
        if ev.rev <= self.last {
            return None;
        }
        self.last = ev.rev;
        if !ev.key.starts_with(&self.prefix) {
            return None;
        }
        self.w.convert(ev)
    }

    /// The next line ready without waiting; Err when the watch is over (fallen behind the
    /// broadcast, or the cache re-listed: the client re-watches from the last revision it saw).
    fn ready(&mut self) -> Result<Option<Bytes>, ()> {
        for e in self.initial.by_ref() {
            if !self.w.filter.matches(&self.w.res, &e.obj) {
                continue;
            }
            if self.w.table {
                let obj = super::cache::decorate(&self.w.res, &e.obj, e.rev);
                return Ok(Some(self.w.line("ADDED", obj)));
            }
            // The object's encoding kept in the cache, in an event's envelope.
            let obj = e.json(&self.w.res);
            let mut line = Vec::with_capacity(obj.len() + 32);
            line.extend_from_slice(b"{\"type\":\"ADDED\",\"object\":");
            line.extend_from_slice(&obj);
            line.extend_from_slice(b"}\n");
            return Ok(Some(Bytes::from(line)));
        }
        if let Some(rev) = self.initial_end.take() {
            return Ok(Some(self.w.bookmark(rev, true)));
        }
        while let Some(ev) = self.backlog.next() {
            if let Some(line) = self.event(&ev) {
                return Ok(Some(line));
            }
        }
        loop {
            match self.rx.try_recv() {
                Ok(ev) => {
                    if let Some(line) = self.event(&ev) {
                        return Ok(Some(line));
                    }
                }
                Err(broadcast::error::TryRecvError::Empty) => return Ok(None),
                Err(_) => return Err(()),
            }
        }
    }

    /// Every line ready (up to `MAX_CHUNK`) as one chunk: one write (a few TLS records) for
    /// all the events waiting; waits for an event (or a bookmark) when none is.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        if let Some(due) = self.next_at
            && due > tokio::time::Instant::now()
        {
            tokio::time::sleep_until(due).await;
        }
        let (chunk, events) = self.gather().await?;
        // A full chunk left lines waiting (initial state, backlog, a burst): no pause then.
        let now = tokio::time::Instant::now();
        let took = self.sent_at.map(|at| now - at);
        self.sent_at = Some(now);
        self.next_at =
            (chunk.len() < MAX_CHUNK).then(|| now + pause_after(events, chunk.len(), took));
        Some(chunk)
    }

    /// The lines ready now, or the next one (or a bookmark) when none is, and how many
    /// events they carry.
    async fn gather(&mut self) -> Option<(Bytes, u32)> {
        let mut lines = Lines::default();
        loop {
            lines.fill(|| {
                self.ready().unwrap_or_else(|()| {
                    self.ended = true;
                    None
                })
            });
            if !lines.is_empty() {
                let events = lines.count();
                // Under a steady flow of events a bookmark that is due rides along.
                if self.bookmarks && self.bookmark_at.deadline() <= tokio::time::Instant::now() {
                    lines.push(self.bookmark());
                }
                return Some((lines.join(), events));
            }
            if self.ended {
                return None;
            }
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Ok(ev) => {
                        if let Some(line) = self.event(&ev) {
                            lines.push(line);
                        }
                    }
                    Err(_) => {
                        self.ended = true;
                        return None;
                    }
                },
                _ = &mut self.bookmark_at, if self.bookmarks => {
                    return Some((self.bookmark(), 0));
                }
            }
        }
    }
}

/// The lines of one chunk, kept as they come (each shared by every watcher that gets it) and
/// joined once into a buffer of their exact size: a chunk grown line by line was reallocated
/// and copied over and over. One write carries them all.
#[derive(Default)]
struct Lines {
    lines: Vec<Bytes>,
    len: usize,
}

impl Lines {
    fn push(&mut self, line: Bytes) {
        self.len += line.len();
        self.lines.push(line);
    }

    fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn count(&self) -> u32 {
        self.lines.len() as u32
    }

    /// Adds the lines already waiting, up to `MAX_CHUNK`.
    fn fill(&mut self, mut next: impl FnMut() -> Option<Bytes>) {
        while self.len < MAX_CHUNK {
            match next() {
                Some(line) => self.push(line),
                None => break,
            }
        }
    }

    fn join(mut self) -> Bytes {
        if self.lines.len() == 1 {
            return self.lines.pop().unwrap_or_default();
        }
        let mut chunk = bytes::BytesMut::with_capacity(self.len);
        for line in &self.lines {
            chunk.extend_from_slice(line);
        }
        chunk.freeze()
    }
}

/// A watch the cache cannot serve: the store's list and history, through `tx`.
async fn run(
    w: &Watcher,
    tx: &mpsc::Sender<Bytes>,
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
                    && tx.send(w.line("ADDED", obj)).await.is_err()
                {
                    return;
                }
            }
            if !page.more {
                break;
            }
        }
        from = from.max(rev);
        if initial_bookmark && tx.send(w.bookmark(from, true)).await.is_err() {
            return;
        }
    }
    let mut stream = match w.api.store.watch(prefix, from).await {
        Ok(s) => s,
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => {
            let _ = tx.send(expired_event(requested, compacted)).await;
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
                // Decoded as the cache decodes its events (with no state of its own to fall
                // back on), and converted as the cache's events are.
                if let Ok(Some(ev)) = CachedEvent::decode(&ev, None)
                    && let Some(line) = w.convert(&ev)
                    && tx.send(line).await.is_err()
                {
                    return;
                }
            }
            _ = ticker.tick() => {
                if bookmarks && tx.send(w.bookmark(last, false)).await.is_err() {
                    return;
                }
            }
            _ = tx.closed() => return,
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
        // The initial state is what a list would show: at least as new as the revision asked
        // for, and (without one) as new as the store's. A watch without initial state and
        // without a revision starts from that newest state.
        let rv = match start {
            Some(n) => ListRv::NotOlderThan(n),
            None if consistent => ListRv::Consistent,
            None => ListRv::Any,
        };
        let want = super::list::cache_target(api, prefix, rv).await.ok()??;
        // Unlike a list at any state, a watch does not start from a cache still behind the
        // revisions this server knows of.
        if cache.rev() < want {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_flow_keeps_the_shortest_pause_and_a_flood_fills_a_chunk() {
        let ms = Duration::from_millis;
        // A slow flow: events one by one.
        assert_eq!(pause_after(0, 0, Some(ms(2))), MIN_PAUSE);
        assert_eq!(pause_after(1, 650, Some(ms(10))), MIN_PAUSE);
        // A few events: a millisecond each.
        assert_eq!(pause_after(5, 5 * 650, Some(ms(2))), ms(5));
        // A flood: the longest pause, or less where a chunk fills sooner.
        assert_eq!(pause_after(30, 30 * 300, Some(ms(8))), MAX_PAUSE);
        assert_eq!(pause_after(u32::MAX, 1, Some(ms(16))), MAX_PAUSE);
        assert_eq!(pause_after(30, 30 * 1024, Some(ms(8))), ms(15));
        assert_eq!(pause_after(30, 2 * CHUNK_FILL, Some(ms(8))), ms(3));
        assert_eq!(pause_after(300, 64 * 1024, Some(ms(2))), MIN_PAUSE);
        // Still a flow after a pause of up to twice the longest.
        assert_eq!(pause_after(10, 8000, Some(ms(30))), ms(10));
        // Not a flow: the first chunk (initial state), or a burst after a quiet spell.
        assert_eq!(pause_after(500, 64 * 1024, None), MIN_PAUSE);
        assert_eq!(pause_after(30, 30 * 650, Some(ms(500))), MIN_PAUSE);
    }
}
