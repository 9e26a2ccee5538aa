//! The watch cache, as upstream's cacher: every object under `/registry/` held in memory, fed
//! by one store watch (after an initial list), so that lists and watches are served without
//! the store. One cache for the whole key space rather than one per resource: a single store
//! watch and a single revision to wait for, which is what consistent reads compare against;
//! serving a resource is a range over the sorted keys.
//!
//! Each store event is decoded once; watchers match their selectors against the decoded
//! object and share its encodings (one per type, object and API version), memoized on the
//! event as upstream's `cachingObject` does. A watcher that falls behind the broadcast is cut
//! off (its client re-watches from the last revision it saw), never holding up the others.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use super::encryption::{SECRETS_PREFIX, Storage};
use super::registry::Resource;
use kinglet_store::{Event, EventType};

/// The objects the cache holds; other keys (kinglet's own) only move its revision.
pub const PREFIX: &str = "/registry/";

/// How many recent events the cache keeps for watches that resume from a revision; older
/// revisions are resumed from the store's history.
const RING: usize = 2048;

/// How many events a watcher may fall behind the newest before it is cut off.
const BROADCAST: usize = 8192;

/// How often the cache catches up with revisions that brought it no event.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// How long a read waits for the cache to reach the revision it needs (upstream's
/// `blockTimeout` in `waitUntilFreshAndBlock`).
pub const FRESHNESS_TIMEOUT: Duration = Duration::from_secs(3);

/// One live object: its stored form, decoded, and its revision; its JSON encoding per API
/// version once a list has asked for it.
pub struct Entry {
    pub rev: i64,
    pub obj: Arc<Value>,
    json: Memo,
}

impl Entry {
    fn new(rev: i64, obj: Arc<Value>) -> Entry {
        Entry {
            rev,
            obj,
            json: Memo::default(),
        }
    }

    /// The object as served for `res`, encoded (without a trailing newline); encoded once
    /// and kept while the object is unchanged, so that repeated lists copy bytes.
    pub fn json(&self, res: &Arc<Resource>) -> Bytes {
        self.json.get_or(("", false, res), || {
            let mut bytes = super::status::go_json(&decorate(res, &self.obj, self.rev));
            bytes.pop();
            Bytes::from(bytes)
        })
    }

    /// How many encodings of the object are kept (one per API version listed).
    #[cfg(test)]
    pub fn encoded(&self) -> usize {
        self.json.len()
    }
}

/// One change, decoded once and encoded at most once per (type, object, API version).
pub struct CachedEvent {
    pub typ: EventType,
    pub key: String,
    pub rev: i64,
    /// The object after the change; for a delete, its last state.
    pub cur: Arc<Value>,
    /// The object before the change, if it existed.
    pub prev: Option<Arc<Value>>,
    lines: Memo,
}

/// Encodings made by the first reader that needs one and shared by the rest, one per
/// (line type, object before or after the change, resource version).
#[derive(Default)]
struct Memo(Mutex<Vec<(LineKey, Bytes)>>);

impl Memo {
    fn get_or(
        &self,
        (typ, from_prev, res): (&'static str, bool, &Arc<Resource>),
        encode: impl FnOnce() -> Bytes,
    ) -> Bytes {
        let mut memo = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, b)) = memo.iter().find(|(k, _)| k.is(typ, from_prev, res)) {
            return b.clone();
        }
        let bytes = encode();
        let key = LineKey {
            typ,
            from_prev,
            res: res.clone(),
        };
        memo.push((key, bytes.clone()));
        bytes
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

struct LineKey {
    typ: &'static str,
    from_prev: bool,
    res: Arc<Resource>,
}

impl LineKey {
    /// The same resource is nearly always the same `Arc` (the registry's), compared by
    /// address first: this runs for every watcher on every event.
    fn is(&self, typ: &str, from_prev: bool, res: &Arc<Resource>) -> bool {
        self.typ == typ
            && self.from_prev == from_prev
            && (Arc::ptr_eq(&self.res, res)
                || (self.res.group == res.group
                    && self.res.version == res.version
                    && self.res.plural == res.plural
                    && self.res.kind == res.kind))
    }
}

impl CachedEvent {
    /// A store event decoded; `held` is the key's state before it when known (it stands in
    /// for a previous value the store no longer has, as etcd's after compaction). Ok(None): a
    /// delete of which nothing is known, so nothing to tell watchers; Err: a value that is
    /// not JSON.
    pub fn decode(
        ev: &Event,
        held: Option<Arc<Value>>,
    ) -> Result<Option<CachedEvent>, serde_json::Error> {
        let parsed = serde_json::from_slice::<Value>(&ev.record.value).map(Arc::new);
        let stored_prev = || {
            ev.prev
                .as_ref()
                .and_then(|p| serde_json::from_slice(p).ok())
                .map(Arc::new)
        };
        let (cur, prev) = match ev.typ {
            // A delete's last state comes from the store, or from the state it removes.
            EventType::Deleted => match parsed.ok().or(held).or_else(stored_prev) {
                Some(last) => (last.clone(), Some(last)),
                None => return Ok(None),
            },
            _ => (parsed?, held.or_else(stored_prev)),
        };
        Ok(Some(CachedEvent {
            typ: ev.typ,
            key: ev.record.key.clone(),
            rev: ev.record.rev,
            cur,
            prev,
            lines: Memo::default(),
        }))
    }

    /// The watch line (`{"type":..,"object":..}` as upstream's encoder writes it) for `res`,
    /// with `typ` and the object before (`from_prev`) or after the change; encoded by the first
    /// watcher that needs it and shared by the rest.
    pub fn line(
        &self,
        cache: &Cache,
        res: &Arc<Resource>,
        typ: &'static str,
        from_prev: bool,
    ) -> Bytes {
        self.lines.get_or((typ, from_prev, res), || {
            let obj = match (&self.prev, from_prev) {
                (Some(p), true) => p,
                _ => &self.cur,
            };
            cache.encodings.fetch_add(1, Ordering::Relaxed);
            Bytes::from(event_line(typ, &decorate(res, obj, self.rev)))
        })
    }
}

/// One watch event, as upstream's encoder writes it (one JSON document per line).
pub fn event_line(typ: &str, object: &Value) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        #[serde(rename = "type")]
        typ: &'a str,
        object: &'a Value,
    }
    super::status::go_json(&Line { typ, object })
}

/// The object as served: the stored form converted to `res`'s version, with its type and
/// resourceVersion (`lifecycle::decorate`, from the decoded form).
pub fn decorate(res: &Resource, stored: &Value, rev: i64) -> Value {
    super::lifecycle::served_form(res, stored.clone(), rev)
}

/// A read the cache does not serve (not loaded, or the keys are withheld): the store's.
#[derive(Debug)]
pub struct NotServed;

struct State {
    objects: BTreeMap<String, Arc<Entry>>,
    /// The newest revision applied.
    rev: i64,
    /// Whether the initial list has been loaded.
    ready: bool,
    /// Key prefixes the cache does not hold (Secrets it could not decrypt): the store
    /// serves them, with its error.
    withheld: Vec<String>,
    ring: VecDeque<Arc<CachedEvent>>,
    /// The ring holds every event after this revision.
    oldest: i64,
    tx: broadcast::Sender<Arc<CachedEvent>>,
}

impl State {
    fn serves(&self, prefix: &str) -> bool {
        self.ready
            && !self
                .withheld
                .iter()
                .any(|w| prefix.starts_with(w.as_str()) || w.starts_with(prefix))
    }

    /// The objects whose keys start with `prefix`, in key order.
    fn under<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Arc<Entry>)> + 'a {
        self.objects
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(k, _)| k.starts_with(prefix))
    }
}

pub struct Cache {
    state: RwLock<State>,
    rev: watch::Sender<i64>,
    encodings: AtomicU64,
    /// Tests only: while true the feed applies no event, as if the cache were behind.
    #[cfg(test)]
    held: watch::Sender<bool>,
}

/// A page of a list served from the cache.
pub struct Listed {
    pub rev: i64,
    pub items: Vec<Arc<Entry>>,
    /// The last key of the page when more keys follow under the prefix.
    pub next: Option<String>,
    /// How many keys follow the page under the prefix.
    pub remaining: i64,
}

/// A watch's start: the initial state (if asked), the ring's events after its revision, and
/// the live events.
pub struct Subscription {
    /// The revision the initial state is at, or the revision the watch starts after.
    pub from: i64,
    pub initial: Vec<Arc<Entry>>,
    pub backlog: Vec<Arc<CachedEvent>>,
    pub rx: broadcast::Receiver<Arc<CachedEvent>>,
}

impl Cache {
    /// A cache not yet loaded; [`Cache::start`] loads and feeds it.
    fn empty() -> Cache {
        Cache {
            state: RwLock::new(State {
                objects: BTreeMap::new(),
                rev: 0,
                ready: false,
                withheld: Vec::new(),
                ring: VecDeque::new(),
                oldest: 0,
                tx: broadcast::channel(BROADCAST).0,
            }),
            rev: watch::channel(0).0,
            encodings: AtomicU64::new(0),
            #[cfg(test)]
            held: watch::channel(false).0,
        }
    }

    /// Starts the cache over `store`: it serves once the initial list is loaded.
    pub fn start(store: Storage) -> Arc<Cache> {
        let cache = Arc::new(Cache::empty());
        tokio::spawn(feed(Arc::downgrade(&cache), store));
        cache
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the cache serves the keys under `prefix` (or the key `prefix`).
    pub fn serves(&self, prefix: &str) -> bool {
        self.read().serves(prefix)
    }

    /// The newest revision the cache has applied.
    pub fn rev(&self) -> i64 {
        *self.rev.borrow()
    }

    /// How many watch lines have been encoded (each shared by every watcher that wants it).
    #[cfg(test)]
    pub fn encodings(&self) -> u64 {
        self.encodings.load(Ordering::Relaxed)
    }

    /// Tests only: holds the feed back (true: neither events nor a re-list are applied) or
    /// lets it go on.
    #[cfg(test)]
    pub fn hold(&self, held: bool) {
        self.held.send_replace(held);
    }

    #[cfg(test)]
    async fn while_held(&self) {
        let _ = self.held.subscribe().wait_for(|held| !held).await;
    }

    /// Waits until the cache has applied `rev`, at most `timeout`; whether it has.
    pub async fn wait_fresh(&self, rev: i64, timeout: Duration) -> bool {
        let mut rx = self.rev.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|r| *r >= rev)).await,
            Ok(Ok(_))
        )
    }

    /// The object at `key`.
    pub fn get(&self, key: &str) -> Result<Option<Arc<Entry>>, NotServed> {
        let st = self.read();
        match st.serves(key) {
            true => Ok(st.objects.get(key).cloned()),
            false => Err(NotServed),
        }
    }

    /// The objects under `prefix` that `keep` accepts, at most `limit` of them.
    pub fn list(
        &self,
        prefix: &str,
        keep: impl Fn(&Value) -> bool,
        limit: Option<usize>,
    ) -> Result<Listed, NotServed> {
        let st = self.read();
        if !st.serves(prefix) {
            return Err(NotServed);
        }
        let mut items = Vec::new();
        let mut range = st.under(prefix);
        let mut last = None;
        let mut next = None;
        let mut remaining = 0;
        for (key, entry) in range.by_ref() {
            if limit.is_some_and(|l| items.len() >= l) {
                // An item past a full page: there is more (upstream's `hasMoreListItems`).
                next = last.take();
                remaining = 1;
                break;
            }
            if keep(&entry.obj) {
                items.push(entry.clone());
                last = Some(key);
            }
        }
        if next.is_some() {
            remaining += range.count() as i64;
        }
        Ok(Listed {
            rev: st.rev,
            items,
            next: next.cloned(),
            remaining,
        })
    }

    /// Subscribes to changes under `prefix` after `after` (with the state under `prefix` first
    /// when `initial`), or None when the cache is not loaded or no longer holds every event
    /// after `after` (the caller resumes from the store's history).
    pub fn subscribe(&self, prefix: &str, after: i64, initial: bool) -> Option<Subscription> {
        let st = self.read();
        if !st.serves(prefix) {
            return None;
        }
        let rx = st.tx.subscribe();
        if initial {
            let initial = st.under(prefix).map(|(_, e)| e.clone()).collect();
            return Some(Subscription {
                from: after.max(st.rev),
                initial,
                backlog: Vec::new(),
                rx,
            });
        }
        if after < st.oldest {
            return None;
        }
        let backlog = st
            .ring
            .iter()
            .filter(|e| e.rev > after && e.key.starts_with(prefix))
            .cloned()
            .collect();
        Some(Subscription {
            from: after,
            initial: Vec::new(),
            backlog,
            rx,
        })
    }

    /// Loads a full list at `rev`; watchers of the previous state are cut off (their clients
    /// re-watch, from the store's history when the ring no longer reaches back far enough).
    fn replace(&self, items: Vec<(String, i64, Value)>, rev: i64, withheld: Vec<String>) {
        let objects = items
            .into_iter()
            .map(|(k, rev, obj)| (k, Arc::new(Entry::new(rev, Arc::new(obj)))))
            .collect();
        {
            let mut st = self.write();
            st.objects = objects;
            st.rev = rev;
            st.ready = true;
            st.withheld = withheld;
            st.ring.clear();
            st.oldest = rev;
            st.tx = broadcast::channel(BROADCAST).0;
        }
        self.rev.send_replace(rev);
    }

    /// Applies one store event.
    fn apply(&self, ev: &Event) {
        let rev = ev.record.rev;
        let key = &ev.record.key;
        if !key.starts_with(PREFIX) {
            self.advance(rev);
            return;
        }
        {
            let mut st = self.write();
            let held = match ev.typ {
                EventType::Deleted => st.objects.remove(key),
                _ => st.objects.get(key).cloned(),
            };
            let event = match CachedEvent::decode(ev, held.map(|e| e.obj.clone())) {
                Ok(Some(event)) => Arc::new(event),
                // Nothing held and nothing to tell watchers: only the revision moves.
                Ok(None) => {
                    drop(st);
                    self.advance(rev);
                    return;
                }
                Err(e) => {
                    tracing::error!("watch cache: {key} at {rev} is not JSON: {e}");
                    st.objects.remove(key);
                    drop(st);
                    self.advance(rev);
                    return;
                }
            };
            if ev.typ != EventType::Deleted {
                st.objects
                    .insert(key.clone(), Arc::new(Entry::new(rev, event.cur.clone())));
            }
            if st.ring.len() == RING
                && let Some(old) = st.ring.pop_front()
            {
                st.oldest = old.rev;
            }
            st.ring.push_back(event.clone());
            st.rev = st.rev.max(rev);
            let _ = st.tx.send(event);
        }
        self.rev.send_replace(rev);
    }

    /// Stops serving the keys under `prefix` (the store serves them, with its error) until
    /// the next full list; their watchers are cut off (all watchers, as they share one
    /// broadcast: they resume from the ring).
    fn withhold(&self, prefix: &str, rev: i64) {
        {
            let mut st = self.write();
            let gone: Vec<String> = st.under(prefix).map(|(k, _)| k.clone()).collect();
            for k in gone {
                st.objects.remove(&k);
            }
            st.ring.retain(|e| !e.key.starts_with(prefix));
            st.withheld.push(prefix.to_string());
            st.tx = broadcast::channel(BROADCAST).0;
        }
        self.advance(rev);
    }

    fn advance(&self, rev: i64) {
        {
            let mut st = self.write();
            st.rev = st.rev.max(rev);
        }
        self.rev.send_if_modified(|r| {
            let moved = rev > *r;
            *r = (*r).max(rev);
            moved
        });
    }
}

/// Everything under [`PREFIX`] at one revision; and the prefixes withheld: the Secrets, when
/// one of them cannot be decrypted (one such Secret must not keep every other object out).
type Listing = (Vec<(String, i64, Value)>, i64, Vec<String>);

async fn list_all(store: &Storage) -> kinglet_store::Result<Listing> {
    let (mut items, mut withheld) = (Vec::new(), Vec::new());
    let (mut rev, mut after) = (0, None);
    loop {
        // Raw, each Secret decrypted on its own: one that cannot be decrypted withholds the
        // Secrets, not the whole listing.
        let page = store
            .raw()
            .list(PREFIX, rev, after.take(), Some(1000))
            .await?;
        rev = page.rev;
        for rec in page.items {
            after = Some(rec.key.clone());
            let value = match rec.key.starts_with(SECRETS_PREFIX) {
                true if !withheld.is_empty() => continue,
                true => match store.plain_form(&rec.key, rec.value) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!("watch cache: Secrets are served from the store: {e}");
                        items.retain(|(k, _, _): &(String, i64, Value)| {
                            !k.starts_with(SECRETS_PREFIX)
                        });
                        withheld.push(SECRETS_PREFIX.to_string());
                        continue;
                    }
                },
                false => rec.value,
            };
            match serde_json::from_slice::<Value>(&value) {
                Ok(v) => items.push((rec.key, rec.rev, v)),
                Err(e) => tracing::error!("watch cache: {} is not JSON: {e}", rec.key),
            }
        }
        if !page.more {
            return Ok((items, rev, withheld));
        }
    }
}

/// Lists, then follows the store's watch from the list's revision; re-lists when the watch
/// ends (fallen behind, compacted). Stops when the cache is dropped.
async fn feed(cache: Weak<Cache>, store: Storage) {
    let mut pause = Duration::from_millis(50);
    loop {
        if cache.strong_count() == 0 {
            return;
        }
        let (items, rev, withheld) = match list_all(&store).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("watch cache: list: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        // Every key (etcd's `compact_rev_key` has no leading "/"; SQLite's keys all do):
        // kinglet's own keys move the revision that consistent reads wait for, though the
        // cache holds no object for them.
        let every_key = if store.raw().is_shared() { "" } else { "/" };
        // Raw: a Secret the decrypting watch would skip must not leave its old state here.
        let mut stream = match store.raw().watch(every_key, rev).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("watch cache: watch from {rev}: {e}");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        match cache.upgrade() {
            Some(c) => {
                #[cfg(test)]
                c.while_held().await;
                c.replace(items, rev, withheld)
            }
            None => return,
        }
        pause = Duration::from_millis(50);
        // On etcd every revision is a write to some key, so it reaches the cache as an event;
        // SQLite may commit revisions that bring no event, which the ticks catch up with.
        let catch_up = !store.raw().is_shared();
        let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = tick.tick(), if catch_up => {
                    // The revision whose events have all been sent to watches (never
                    // `current_rev`, which on etcd runs ahead of the events): read first, so
                    // that when nothing is waiting now every event up to it has been applied.
                    let published = store.raw().published_rev();
                    match stream.next().now_or_never() {
                        Some(ev) => ev,
                        None => match cache.upgrade() {
                            Some(c) => {
                                c.advance(published);
                                continue;
                            }
                            None => return,
                        },
                    }
                }
            };
            let ev = match ev {
                Ok(ev) => ev,
                Err(end) => {
                    tracing::info!("watch cache: store watch ended ({end:?}); re-listing");
                    break;
                }
            };
            let Some(c) = cache.upgrade() else { return };
            #[cfg(test)]
            c.while_held().await;
            if !ev.record.key.starts_with(SECRETS_PREFIX) {
                c.apply(&ev);
                continue;
            }
            if !c.serves(SECRETS_PREFIX) {
                c.advance(ev.record.rev);
                continue;
            }
            // A delete's last state is the one the cache holds.
            if ev.typ == EventType::Deleted {
                c.apply(&ev);
                continue;
            }
            // What the store's reads would give: a value this server cannot decrypt (or, with
            // no identity provider, one that is not encrypted) is an error there too.
            let key = &ev.record.key;
            match store.plain_form(key, ev.record.value.clone()) {
                Ok(value) => c.apply(&Event {
                    typ: ev.typ,
                    record: kinglet_store::Record {
                        value,
                        ..ev.record.clone()
                    },
                    prev: ev.prev.clone().and_then(|p| store.plain_form(key, p).ok()),
                }),
                Err(e) => {
                    tracing::error!("watch cache: Secrets are served from the store: {e}");
                    c.withhold(SECRETS_PREFIX, ev.record.rev);
                }
            }
        }
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests;
