//! The etcd v3 backend, which several servers may share.
//!
//! Keys are stored as the API server gives them (`/registry/...`), values as given; a key's
//! revision is etcd's `mod_revision`. Compare-and-swap writes are transactions on the key's
//! `mod_revision`. One etcd watch over the whole key space (with the previous values) feeds
//! the same ring and fan-out as the SQLite backend's commits, so every server sees every
//! server's writes; a watch from before the ring gets an etcd watch of its own. Compaction
//! follows upstream's apiserver: each interval a transaction on `compact_rev_key` picks the
//! one server that compacts, to the revision recorded the interval before.
//!
//! Requests and the shared watch go to one member at a time and move to the next when it
//! fails (`Members`): reads are tried again there, writes only when they certainly never
//! reached etcd; the watch resumes there from the revision after the last it delivered.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    KeyValue, KvClient, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchClient,
    WatchOptions, WatchResponse,
};
use tokio::sync::{Notify, mpsc, watch};

use crate::watch::Hub;
use crate::{Datastore, Event, EventType, ListPage, Record, Result, StoreError, WatchStream};

/// The key whose version elects the compacting server each interval, and whose value is the
/// revision it compacts to (upstream's name, so both kinds of server agree on one cluster).
const COMPACT_KEY: &str = "compact_rev_key";

/// How long one request may take before the store reports etcd as unavailable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How often the shared watch asks etcd how far it is (keeps `current_rev` moving when only
/// other servers write, and finds a dead stream).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The longest pause between attempts of the shared watch to resume (an election takes a
/// second or two; the watch should follow at once).
const FEED_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How often the reported database size is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(30);

/// Largest response accepted (a list of many objects); etcd's own limit is 2 GiB.
const MAX_MESSAGE: usize = i32::MAX as usize;

/// Events a watch of its own may queue ahead of its reader.
const FEED_BUFFER: usize = 1024;

#[derive(Clone)]
pub(crate) struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    members: Members,
    /// Highest revision seen in any response or event.
    current: AtomicI64,
    /// Newest compaction known (done here, seen on `COMPACT_KEY`, or reported by etcd).
    compacted: AtomicI64,
    db_size: AtomicU64,
    hub: Hub,
    /// Asks the shared watch for a progress report now.
    progress: Arc<Notify>,
    /// Holds the shared watch off etcd while true (tests: history lost while it was away).
    paused: watch::Sender<bool>,
    /// Whether the shared watch has a stream open.
    connected: AtomicBool,
}

fn unavailable(endpoints: &str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("etcd at {endpoints} is unavailable: {what}"))
}

/// Whether etcd refused a read because its revision was compacted.
fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("required revision has been compacted"))
}

/// The end of the key range holding every key that starts with `prefix` (etcd's rule: the
/// prefix with its last byte below 0xff incremented; `\0` for "to the end").
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The first key of a range starting at `key` (etcd refuses an empty key).
fn range_start(key: &[u8]) -> Vec<u8> {
    if key.is_empty() {
        vec![0]
    } else {
        key.to_vec()
    }
}

fn record(kv: &KeyValue) -> Record {
    Record {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        rev: kv.mod_revision(),
        create_rev: kv.create_revision(),
        value: Bytes::copy_from_slice(kv.value()),
    }
}

/// `record` taking the key and value over rather than copying them.
fn owned_record(kv: KeyValue) -> Record {
    let (rev, create_rev) = (kv.mod_revision(), kv.create_revision());
    let (key, value) = kv.into_key_value();
    Record {
        key: String::from_utf8(key)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        rev,
        create_rev,
        value: Bytes::from(value),
    }
}

/// One etcd watch event as the store's event. A put of version 1 starts a key's life; a
/// delete (etcd leaves only the key and the revision, version 0) carries the last state from
/// `prev_kv`.
fn event(ev: &etcd_client::Event) -> Option<Arc<Event>> {
    let kv = ev.kv()?;
    let prev = ev.prev_kv();
    let prev_value = prev.map(|p| Bytes::copy_from_slice(p.value()));
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    let out = if kv.version() == 0 {
        let Some(last) = prev else {
            // etcd had compacted the last state away before this watch read it.
            tracing::warn!("etcd: the DELETED event of {key} came without its last state");
            return Some(Arc::new(Event {
                typ: EventType::Deleted,
                record: Record {
                    key,
                    rev: kv.mod_revision(),
                    create_rev: 0,
                    value: Bytes::new(),
                },
                prev: None,
            }));
        };
        Event {
            typ: EventType::Deleted,
            record: Record {
                key,
                rev: kv.mod_revision(),
                create_rev: last.create_revision(),
                value: prev_value.clone().unwrap_or_default(),
            },
            prev: prev_value,
        }
    } else if kv.version() == 1 {
        Event {
            typ: EventType::Added,
            record: record(kv),
            prev: None,
        }
    } else {
        Event {
            typ: EventType::Modified,
            record: record(kv),
            prev: prev_value,
        }
    };
    Some(Arc::new(out))
}

/// Whether a request may be sent again after it failed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// A read (or a write whose repetition changes nothing): any transient failure is retried.
    Always,
    /// A write: retried only when it certainly never reached etcd, since a write that did
    /// (and committed) would come back from its second try as a false AlreadyExists or
    /// Conflict.
    IfNotSent,
}

/// How a request failed.
enum Failure {
    /// It never reached etcd: no connection to the member, or the member refused it before
    /// handling it (it has no leader). Any request may go again, to another member.
    NotSent,
    /// The connection or the cluster failed while the request was out: it may or may not
    /// have been applied.
    Unknown,
    /// etcd's answer (compacted, too large, ...): final.
    Answer,
}

fn classify(e: &etcd_client::Error) -> Failure {
    use tonic::Code;
    let status = match e {
        etcd_client::Error::GRpcStatus(s) => s,
        // A channel that could not be set up.
        etcd_client::Error::TransportError(_) => return Failure::NotSent,
        etcd_client::Error::IoError(_) => return Failure::Unknown,
        _ => return Failure::Answer,
    };
    // etcd's interceptor refuses these before the request is handled (`require_leader`, and
    // a member still negotiating the cluster version).
    if status.code() == Code::Unavailable
        && matches!(
            status.message(),
            "etcdserver: no leader" | "etcdserver: not capable"
        )
    {
        return Failure::NotSent;
    }
    // Under the status: a connection that could not be made (tonic's ConnectError), or one
    // that closed before hyper handed it the request (hyper's "canceled", the case its own
    // client retries): either way the request was never written.
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>()
            || err
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_canceled)
        {
            return Failure::NotSent;
        }
        source = err.source();
    }
    match status.code() {
        Code::Unavailable
        | Code::Unknown
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Internal => Failure::Unknown,
        _ => Failure::Answer,
    }
}

/// The cluster's members, one connection each, and the one requests go to. Like upstream's
/// clientv3, a request that fails on a member before reaching it goes to the next member,
/// and the store stays on a member that answers: tonic's balanced channel over all endpoints
/// would keep offering a dead member as ready and fail every request it gives it.
struct Members {
    members: Vec<Member>,
    /// All members' addresses, for errors.
    endpoints: String,
    /// Index of the member requests go to until it fails.
    pinned: AtomicUsize,
}

struct Member {
    url: String,
    client: Client,
    /// When a request on this member last failed (a member that failed lately is passed
    /// over when another can be chosen).
    failed_at: Mutex<Option<Instant>>,
}

/// How long a member that failed is passed over.
const PASS_OVER: Duration = Duration::from_secs(5);

impl Members {
    fn new(endpoints: String, members: Vec<(String, Client)>) -> Members {
        // Servers sharing the cluster spread over its members.
        let first = std::process::id() as usize % members.len().max(1);
        Members {
            members: members
                .into_iter()
                .map(|(url, client)| Member {
                    url,
                    client,
                    failed_at: Mutex::new(None),
                })
                .collect(),
            pinned: AtomicUsize::new(first),
            endpoints,
        }
    }

    fn pinned(&self) -> (usize, Client) {
        let i = self.pinned.load(Ordering::Acquire) % self.members.len();
        (i, self.members[i].client.clone())
    }

    /// Member `i` failed: requests move to the next member that has not failed lately (else
    /// simply the next), unless another caller moved them already.
    fn failed(&self, i: usize) {
        let n = self.members.len();
        let now = Instant::now();
        if let Ok(mut at) = self.members[i].failed_at.lock() {
            *at = Some(now);
        }
        let healthy = |j: usize| {
            self.members[j]
                .failed_at
                .lock()
                .map(|at| at.is_none_or(|t| now.duration_since(t) >= PASS_OVER))
                .unwrap_or(true)
        };
        let next = (1..n)
            .map(|k| (i + k) % n)
            .find(|&j| healthy(j))
            .unwrap_or((i + 1) % n);
        if self
            .pinned
            .compare_exchange(i, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && next != i
        {
            tracing::warn!(
                "etcd member {} failed; using {}",
                self.members[i].url,
                self.members[next].url
            );
        }
    }

    fn answered(&self, i: usize) {
        if let Ok(mut at) = self.members[i].failed_at.lock() {
            *at = None;
        }
    }

    /// Runs `op` on the pinned member, moving to the next member and trying again while the
    /// failure allows it (see `Retry`) and time is left. The outer error: no member could
    /// answer; the inner: etcd's answer.
    async fn request<T, F, Fut>(
        &self,
        retry: Retry,
        mut op: F,
    ) -> Result<std::result::Result<T, etcd_client::Error>>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        let n = self.members.len();
        // Requests that may have reached a member are tried once on each.
        let mut unknown_left = n;
        let mut backoff = Duration::from_millis(50);
        let mut tries = 0;
        loop {
            let (i, client) = self.pinned();
            // A read waits on one member at most its share of the time (a member that stops
            // answering without closing its connection); a write waits for its answer.
            let wait = match retry {
                Retry::Always => REQUEST_TIMEOUT / 3,
                Retry::IfNotSent => REQUEST_TIMEOUT,
            };
            let until = deadline.min(tokio::time::Instant::now() + wait);
            let failure = match tokio::time::timeout_at(until, op(client)).await {
                Ok(Ok(v)) => {
                    self.answered(i);
                    return Ok(Ok(v));
                }
                Ok(Err(e)) => match classify(&e) {
                    Failure::Answer => {
                        self.answered(i);
                        return Ok(Err(e));
                    }
                    Failure::NotSent => e.to_string(),
                    Failure::Unknown if retry == Retry::Always && unknown_left > 1 => {
                        unknown_left -= 1;
                        e.to_string()
                    }
                    Failure::Unknown => {
                        self.failed(i);
                        return Err(unavailable(
                            &self.endpoints,
                            format!(
                                "{} failed while the request was out, its outcome unknown: {e}",
                                self.members[i].url
                            ),
                        ));
                    }
                },
                Err(_) if retry == Retry::Always && tokio::time::Instant::now() < deadline => {
                    format!("{} did not answer", self.members[i].url)
                }
                Err(_) => {
                    self.failed(i);
                    return Err(unavailable(
                        &self.endpoints,
                        format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
                    ));
                }
            };
            self.failed(i);
            tries += 1;
            if tries % n == 0 {
                // Every member failed once (no leader during an election, say): wait a little.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(unavailable(&self.endpoints, failure));
            }
        }
    }

    /// `request` with etcd's answers as errors too.
    async fn call<T, F, Fut>(&self, retry: Retry, op: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.request(retry, op)
            .await?
            .map_err(|e| unavailable(&self.endpoints, e))
    }
}

fn kv_of(client: Client) -> KvClient {
    client.kv_client().max_decoding_message_size(MAX_MESSAGE)
}

fn watch_of(client: Client) -> WatchClient {
    client.watch_client().max_decoding_message_size(MAX_MESSAGE)
}

impl Inner {
    fn observe(&self, rev: i64) {
        self.current.fetch_max(rev, Ordering::AcqRel);
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let resp = self
            .members
            .call(Retry::IfNotSent, |c| {
                let txn = txn.clone();
                async move { kv_of(c).txn(txn).await }
            })
            .await?;
        if let Some(h) = resp.header() {
            self.observe(h.revision());
        }
        Ok(resp)
    }

    /// The revision of etcd right now (a linearizable read).
    async fn read_revision(&self) -> Result<i64> {
        let resp = self
            .members
            .call(Retry::Always, |c| async move {
                kv_of(c)
                    .get(COMPACT_KEY, Some(GetOptions::new().with_count_only()))
                    .await
            })
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        self.observe(rev);
        Ok(rev)
    }

    /// Compacts etcd to `rev`. Repeating it changes nothing (etcd says "compacted"), so it
    /// is retried as a read is.
    /// On success `compacted_rev` moves to `rev`.
    async fn compact(&self, rev: i64) -> Result<()> {
        match self
            .members
            .request(Retry::Always, |c| async move {
                kv_of(c).compact(rev, None).await
            })
            .await?
        {
            Ok(_) => {}
            // Someone compacted as far already.
            Err(e) if is_compacted(&e) => {}
            Err(e) => return Err(unavailable(&self.members.endpoints, e)),
        }
        self.compacted.fetch_max(rev, Ordering::AcqRel);
        Ok(())
    }

    async fn refresh_db_size(&self) {
        let (_, client) = self.members.pinned();
        let mut m = client.maintenance_client();
        if let Ok(Ok(s)) = tokio::time::timeout(REQUEST_TIMEOUT, m.status()).await {
            self.db_size
                .store(u64::try_from(s.db_size()).unwrap_or(0), Ordering::Release);
        }
    }
}

/// The first response of a watch, which says whether etcd started it.
async fn first_response(
    stream: &mut etcd_client::WatchStream,
    endpoints: &str,
) -> Result<WatchResponse> {
    match tokio::time::timeout(REQUEST_TIMEOUT, stream.message()).await {
        Ok(Ok(Some(resp))) => Ok(resp),
        Ok(Ok(None)) => Err(unavailable(endpoints, "the watch ended at once")),
        Ok(Err(e)) => Err(unavailable(endpoints, e)),
        Err(_) => Err(unavailable(endpoints, "no answer to a watch")),
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` and starts the shared watch.
    pub async fn connect(
        endpoints: &[String],
        ds: &Datastore,
        ring: usize,
    ) -> anyhow::Result<EtcdStore> {
        let joined = endpoints.join(",");
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(10))
            .with_keep_alive_while_idle(true)
            // A member cut off from its cluster refuses rather than serving stale data or a
            // watch that never delivers.
            .with_require_leader(true);
        if endpoints.iter().any(|e| e.starts_with("https://")) {
            options = options.with_tls(tls_options(ds)?);
        } else if ds.ca_file.is_some() || ds.cert_file.is_some() || ds.key_file.is_some() {
            anyhow::bail!(
                "--datastore-cafile/certfile/keyfile need https:// datastore endpoints (got {joined})"
            );
        }
        // One client per member (connections are made on first use, so a member that is down
        // now is no obstacle), so that the store chooses the member (see `Members`).
        let mut members = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let client = Client::connect([e], Some(options.clone()))
                .await
                .map_err(|err| anyhow::anyhow!("connecting to etcd at {e}: {err}"))?;
            members.push((e.clone(), client));
        }
        let members = Members::new(joined, members);
        let resp = members
            .call(Retry::Always, |c| async move {
                kv_of(c).get(COMPACT_KEY, None).await
            })
            .await
            .map_err(|e| anyhow::anyhow!("reading from etcd: {e}"))?;
        let start = resp.header().map(|h| h.revision()).unwrap_or(0);
        let compacted = resp
            .kvs()
            .first()
            .and_then(|kv| std::str::from_utf8(kv.value()).ok()?.parse::<i64>().ok())
            .unwrap_or(0);
        let inner = Arc::new(Inner {
            members,
            current: AtomicI64::new(start),
            compacted: AtomicI64::new(compacted),
            db_size: AtomicU64::new(0),
            hub: Hub::new(ring, start),
            progress: Arc::new(Notify::new()),
            paused: watch::Sender::new(false),
            connected: AtomicBool::new(false),
        });
        tokio::spawn(feed(
            Arc::downgrade(&inner),
            inner.progress.clone(),
            inner.paused.subscribe(),
            start + 1,
        ));
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                inner.refresh_db_size().await;
                drop(inner);
                tokio::time::sleep(STATUS_EVERY).await;
            }
        });
        Ok(EtcdStore { inner })
    }

    pub fn current_rev(&self) -> i64 {
        self.inner.current.load(Ordering::Acquire)
    }

    /// The highest revision whose events the shared watch has published (`current_rev` may
    /// run ahead of it: it moves with every response).
    pub fn published(&self) -> i64 {
        self.inner.hub.published()
    }

    /// Takes the shared watch off etcd (true) or lets it resume (false).
    #[cfg(test)]
    pub fn pause_feed(&self, paused: bool) {
        self.inner.paused.send_replace(paused);
    }

    /// The member requests go to now.
    #[cfg(test)]
    pub fn pinned_member(&self) -> String {
        let (i, _) = self.inner.members.pinned();
        self.inner.members.members[i].url.clone()
    }

    #[cfg(test)]
    pub fn feed_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    pub fn compacted_rev(&self) -> i64 {
        self.inner.compacted.load(Ordering::Acquire)
    }

    pub async fn latest_rev(&self) -> Result<i64> {
        let rev = self.inner.read_revision().await?;
        // A cache waiting for this revision should not wait for the next periodic report.
        self.inner.progress.notify_one();
        Ok(rev)
    }

    pub fn db_size(&self) -> u64 {
        self.inner.db_size.load(Ordering::Acquire)
    }

    pub async fn create(&self, key: &str, value: Bytes) -> Result<i64> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.to_vec(), None)]);
        let resp = self.inner.txn(txn).await?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists);
        }
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// The conditions of an update or delete: the key is live (and at `expected_rev`).
    fn live_at(key: &str, expected_rev: Option<i64>) -> Vec<Compare> {
        let mut when = vec![Compare::version(key, CompareOp::Greater, 0)];
        if let Some(rev) = expected_rev {
            when.push(Compare::mod_revision(key, CompareOp::Equal, rev));
        }
        when
    }

    /// Why a conditional write failed: the key is gone, or at another revision.
    fn refusal(resp: &TxnResponse) -> StoreError {
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| kv.mod_revision())),
            _ => None,
        });
        match current.flatten() {
            Some(rev) => StoreError::Conflict(rev),
            None => StoreError::NotFound,
        }
    }

    pub async fn update(&self, key: &str, expected_rev: Option<i64>, value: Bytes) -> Result<i64> {
        let txn = Txn::new()
            .when(Self::live_at(key, expected_rev))
            .and_then([TxnOp::put(key, value.to_vec(), None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.inner.txn(txn).await?;
        if !resp.succeeded() {
            return Err(Self::refusal(&resp));
        }
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    pub async fn delete(&self, key: &str, expected_rev: Option<i64>) -> Result<(i64, Record)> {
        let txn = Txn::new()
            .when(Self::live_at(key, expected_rev))
            .and_then([TxnOp::delete(
                key,
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.inner.txn(txn).await?;
        if !resp.succeeded() {
            return Err(Self::refusal(&resp));
        }
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let last = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Delete(d) => d.prev_kvs().first().map(record),
            _ => None,
        });
        let mut last = last.ok_or_else(|| {
            StoreError::Internal(format!(
                "etcd deleted {key} without returning its last state"
            ))
        })?;
        last.rev = rev;
        Ok((rev, last))
    }

    pub async fn compact(&self, rev: i64) -> Result<()> {
        self.inner.compact(rev).await
    }

    pub async fn get(&self, key: &str) -> Result<Option<Record>> {
        let resp = self
            .inner
            .members
            .call(
                Retry::Always,
                |c| async move { kv_of(c).get(key, None).await },
            )
            .await?;
        if let Some(h) = resp.header() {
            self.inner.observe(h.revision());
        }
        Ok(resp.kvs().first().map(record))
    }

    pub async fn list(
        &self,
        prefix: &str,
        rev: i64,
        after: Option<String>,
        limit: Option<usize>,
    ) -> Result<ListPage> {
        let start = match after {
            Some(a) if a.as_str() >= prefix => {
                let mut k = a.into_bytes();
                k.push(0);
                k
            }
            _ => range_start(prefix.as_bytes()),
        };
        let mut options = GetOptions::new().with_range(range_end(prefix.as_bytes()));
        if rev > 0 {
            options = options.with_revision(rev);
        }
        match limit {
            // etcd reads a limit of 0 as none: count only.
            Some(0) => options = options.with_count_only(),
            Some(l) => options = options.with_limit(i64::try_from(l).unwrap_or(i64::MAX)),
            None => {}
        }
        let got = self
            .inner
            .members
            .request(Retry::Always, |c| {
                let (start, options) = (start.clone(), options.clone());
                async move { kv_of(c).get(start, Some(options)).await }
            })
            .await?;
        let mut resp = match got {
            Ok(resp) => resp,
            Err(e) if is_compacted(&e) => {
                return Err(StoreError::Compacted {
                    requested: rev,
                    compacted: self.compacted_rev().max(rev),
                });
            }
            Err(e) => return Err(unavailable(&self.inner.members.endpoints, e)),
        };
        let read_at = resp.header().map(|h| h.revision()).unwrap_or(0);
        self.inner.observe(read_at);
        let total = resp.count();
        let more = if limit == Some(0) {
            total > 0
        } else {
            resp.more()
        };
        let items: Vec<Record> = resp.take_kvs().into_iter().map(owned_record).collect();
        let remaining = if more {
            total.saturating_sub(i64::try_from(items.len()).unwrap_or(i64::MAX))
        } else {
            0
        };
        Ok(ListPage {
            items,
            rev: if rev > 0 { rev } else { read_at },
            more,
            remaining,
        })
    }

    pub async fn count(&self, prefix: &str) -> Result<i64> {
        let options = GetOptions::new()
            .with_range(range_end(prefix.as_bytes()))
            .with_count_only();
        let start = range_start(prefix.as_bytes());
        let resp = self
            .inner
            .members
            .call(Retry::Always, |c| {
                let (start, options) = (start.clone(), options.clone());
                async move { kv_of(c).get(start, Some(options)).await }
            })
            .await?;
        Ok(resp.count())
    }

    pub async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream> {
        let (stream, gap) = self.inner.hub.subscribe(prefix, after);
        if gap.is_none() {
            return Ok(stream);
        }
        // Older than the ring: etcd still has that history (unless compacted); read it from
        // a watch of this prefix's own.
        drop(stream);
        self.watch_from_etcd(prefix, after).await
    }

    async fn watch_from_etcd(&self, prefix: &str, after: i64) -> Result<WatchStream> {
        let options = WatchOptions::new()
            .with_range(range_end(prefix.as_bytes()))
            .with_start_revision(after + 1)
            .with_prev_key();
        let endpoints = &self.inner.members.endpoints;
        // etcd acknowledges a watch from a compacted revision before it cancels it; a read at
        // that revision (refused on the same condition) says at once whether it will.
        let probe = GetOptions::new()
            .with_range(range_end(prefix.as_bytes()))
            .with_revision(after + 1)
            .with_count_only();
        let start = range_start(prefix.as_bytes());
        let probed = self
            .inner
            .members
            .request(Retry::Always, |c| {
                let (start, probe) = (start.clone(), probe.clone());
                async move { kv_of(c).get(start, Some(probe)).await }
            })
            .await?;
        let compacted = match probed {
            Ok(_) => false,
            Err(e) if is_compacted(&e) => true,
            Err(e) => return Err(unavailable(endpoints, e)),
        };
        // Started on a member that answers: the watch's first response (etcd's "created").
        let (mut etcd_stream, mut first) = self
            .inner
            .members
            .call(Retry::Always, |c| {
                let (start, options) = (start.clone(), options.clone());
                async move {
                    let mut stream = watch_of(c).watch(start, Some(options)).await?;
                    match stream.message().await? {
                        Some(first) => Ok((stream, first)),
                        None => Err(etcd_client::Error::WatchError(
                            "the watch ended at once".into(),
                        )),
                    }
                }
            })
            .await?;
        if compacted && !first.canceled() {
            // The cancellation that follows says how far etcd compacted.
            first = first_response(&mut etcd_stream, endpoints).await?;
            if !first.canceled() {
                return Err(StoreError::Compacted {
                    requested: after,
                    compacted: self.compacted_rev().max(after + 1),
                });
            }
        }
        if first.canceled() {
            if first.compact_revision() > 0 {
                self.inner
                    .compacted
                    .fetch_max(first.compact_revision(), Ordering::AcqRel);
                return Err(StoreError::Compacted {
                    requested: after,
                    compacted: first.compact_revision(),
                });
            }
            return Err(unavailable(
                endpoints,
                format!("etcd refused the watch: {}", first.cancel_reason()),
            ));
        }
        let (tx, rx) = mpsc::channel(FEED_BUFFER);
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut next = Some(first);
            loop {
                let resp = match next.take() {
                    Some(resp) => resp,
                    None => tokio::select! {
                        _ = tx.closed() => return,
                        msg = etcd_stream.message() => match msg {
                            Ok(Some(resp)) => resp,
                            // The stream ends; the reader re-watches from its last revision.
                            _ => return,
                        },
                    },
                };
                if resp.canceled() {
                    return;
                }
                if let (Some(h), Some(inner)) = (resp.header(), inner.upgrade()) {
                    inner.observe(h.revision());
                }
                for ev in resp.events().iter().filter_map(event) {
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(WatchStream::from_feed(prefix, after, rx))
    }

    pub fn spawn_compactor(&self, interval: Duration) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            // Upstream's loop: `version` is the election key's version this server last saw,
            // `rev` the revision it read then (compacted to one interval later).
            let (mut version, mut rev) = (0, 0);
            loop {
                tokio::time::sleep(interval).await;
                let Some(inner) = weak.upgrade() else { return };
                match compact_round(&inner, version, rev).await {
                    Ok(next) => (version, rev) = next,
                    Err(e) => tracing::warn!("etcd compaction failed: {e}"),
                }
            }
        });
    }
}

/// One compaction interval: whoever moves `COMPACT_KEY` from the version all servers last saw
/// compacts, to the revision read one interval before; the others learn the new version.
/// Returns the version and revision for the next round.
async fn compact_round(inner: &Inner, version: i64, rev: i64) -> Result<(i64, i64)> {
    let txn = Txn::new()
        .when([Compare::version(COMPACT_KEY, CompareOp::Equal, version)])
        .and_then([TxnOp::put(COMPACT_KEY, rev.to_string(), None)])
        .or_else([TxnOp::get(COMPACT_KEY, None)]);
    let resp = inner.txn(txn).await?;
    let current = resp.header().map(|h| h.revision()).unwrap_or(0);
    if !resp.succeeded() {
        let seen = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.version()),
                _ => None,
            })
            .unwrap_or(0);
        return Ok((seen, current));
    }
    if rev > 0 {
        inner.compact(rev).await?;
        tracing::debug!("etcd: compacted to revision {rev}");
    }
    Ok((version + 1, current))
}

/// The TLS settings for https endpoints: the CA (else the system's roots) and the client
/// certificate, from the `--datastore-*` files.
fn tls_options(ds: &Datastore) -> anyhow::Result<TlsOptions> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))
    };
    let mut tls = TlsOptions::new();
    tls = match &ds.ca_file {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => tls.with_native_roots(),
    };
    match (&ds.cert_file, &ds.key_file) {
        (Some(cert), Some(key)) => Ok(tls.identity(Identity::from_pem(read(cert)?, read(key)?))),
        (None, None) => Ok(tls),
        _ => anyhow::bail!("--datastore-certfile and --datastore-keyfile go together"),
    }
}

/// The shared watch: every change in etcd, from `next` on, into the hub. Reconnects from the
/// last revision it delivered when the stream breaks; if etcd compacted that history
/// meanwhile, the open streams are ended (their clients re-watch, get 410 and relist) rather
/// than skipping events.
async fn feed(
    weak: Weak<Inner>,
    progress: Arc<Notify>,
    mut paused: watch::Receiver<bool>,
    mut next: i64,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        while *paused.borrow_and_update() {
            if paused.changed().await.is_err() {
                return;
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        let options = WatchOptions::new()
            .with_all_keys()
            .with_start_revision(next)
            .with_prev_key()
            .with_progress_notify();
        // On the member requests use; when it fails, the watch resumes on the next one.
        let (member, client) = inner.members.pinned();
        let url = &inner.members.members[member].url;
        let started = tokio::time::timeout(
            REQUEST_TIMEOUT,
            watch_of(client).watch(Vec::<u8>::new(), Some(options)),
        )
        .await;
        let stream = match started {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!("etcd member {url}: watch failed: {e}");
                inner.members.failed(member);
                drop(inner);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(FEED_BACKOFF_MAX);
                continue;
            }
            Err(_) => {
                tracing::warn!("etcd member {url}: no answer to a watch");
                inner.members.failed(member);
                drop(inner);
                continue;
            }
        };
        inner.connected.store(true, Ordering::Release);
        drop(inner);
        let (mut requests, mut responses) = stream.split();
        let mut ticker = tokio::time::interval(PROGRESS_EVERY);
        // Whether the stream ended through the member's fault (then the next one is used).
        let mut member_failed = true;
        loop {
            let msg = tokio::select! {
                msg = responses.message() => msg,
                _ = ticker.tick() => {
                    if requests.request_progress().await.is_err() { break; }
                    continue;
                }
                _ = progress.notified() => {
                    if requests.request_progress().await.is_err() { break; }
                    continue;
                }
                changed = paused.changed() => {
                    if changed.is_err() { return; }
                    if *paused.borrow() {
                        member_failed = false;
                        break;
                    }
                    continue;
                }
            };
            let Some(inner) = weak.upgrade() else { return };
            let url = &inner.members.members[member].url;
            let resp = match msg {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    tracing::warn!("etcd member {url}: the watch ended; resuming");
                    break;
                }
                Err(e) => {
                    tracing::warn!("etcd member {url}: the watch broke ({e}); resuming");
                    break;
                }
            };
            backoff = Duration::from_millis(100);
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    member_failed = false;
                    lost_history(&inner, resp.compact_revision(), &mut next).await;
                } else {
                    // e.g. "no leader": the member is cut off from its cluster.
                    tracing::warn!(
                        "etcd member {url}: the watch was cancelled ({}); resuming",
                        resp.cancel_reason()
                    );
                }
                break;
            }
            // A progress report's revision may run ahead of events still in flight (etcd
            // before 3.4.24), so it moves `current_rev` only, never where to resume.
            if let Some(h) = resp.header() {
                inner.observe(h.revision());
            }
            let events: Vec<Arc<Event>> = resp.events().iter().filter_map(event).collect();
            let Some(last) = events.last().map(|e| e.record.rev) else {
                continue;
            };
            for ev in &events {
                if ev.record.key == COMPACT_KEY
                    && ev.typ != EventType::Deleted
                    && let Some(rev) = std::str::from_utf8(&ev.record.value)
                        .ok()
                        .and_then(|v| v.parse::<i64>().ok())
                {
                    // Another server compacts to this revision.
                    inner.compacted.fetch_max(rev, Ordering::AcqRel);
                }
            }
            inner.observe(last);
            next = last + 1;
            inner.hub.publish(events, last);
        }
        if let Some(inner) = weak.upgrade() {
            inner.connected.store(false, Ordering::Release);
            if member_failed {
                inner.members.failed(member);
            }
        }
        drop((requests, responses));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(FEED_BACKOFF_MAX);
    }
}

/// The shared watch cannot resume: etcd compacted past `next`. Ends the open streams and
/// starts again from now.
async fn lost_history(inner: &Inner, compact_revision: i64, next: &mut i64) {
    inner
        .compacted
        .fetch_max(compact_revision, Ordering::AcqRel);
    match inner.read_revision().await {
        Ok(now) => {
            tracing::warn!(
                "etcd at {}: history from revision {} was compacted while the watch was away; open watches end and their clients relist",
                inner.members.endpoints,
                *next
            );
            inner.hub.expire(now);
            *next = now + 1;
        }
        Err(e) => tracing::warn!("{e}"),
    }
}
