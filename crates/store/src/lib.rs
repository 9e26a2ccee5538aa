//! The datastore: a revision log with watch fan-out, on one of two backends.
//!
//! - SQLite (`sqlite.rs`, the default): an etcd-like revision log in one file, for one server.
//! - etcd v3 (`etcd.rs`): an etcd cluster, which several servers may share.
//!
//! Both give the same semantics, since the API server above does not know which it has: a
//! global revision per write (the `resourceVersion`), compare-and-swap on it, lists at a
//! revision, and watches from a revision, fed from one in-memory ring of recent events
//! (`watch.rs`) and ending in `Compacted` once history is gone.

pub mod backup;
mod etcd;
mod sqlite;
mod watch;
mod writer;

use std::path::{Path, PathBuf};

use bytes::Bytes;

pub use watch::{Event, EventType, WatchStream};

/// One stored object version.
#[derive(Clone, Debug)]
pub struct Record {
    pub key: String,
    pub rev: i64,
    /// Revision at which the key was created (etcd semantics).
    #[allow(dead_code)]
    pub create_rev: i64,
    pub value: Bytes,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum StoreError {
    #[error("key already exists")]
    AlreadyExists,
    #[error("key not found")]
    NotFound,
    #[error("revision mismatch: current revision is {0}")]
    Conflict(i64),
    #[error("required revision {requested} has been compacted (oldest available {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    /// The disk holding the database is full (`SQLITE_FULL`): writes that add data are
    /// refused until space is freed; deletes still work.
    #[error("insufficient storage: {0}")]
    NoSpace(String),
    #[error("store failure: {0}")]
    Internal(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::NoSpace(
                "the datastore's disk is full; delete objects or free space on the disk".into(),
            ),
            _ => StoreError::Internal(e.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A page of a list at one revision.
#[derive(Debug)]
pub struct ListPage {
    pub items: Vec<Record>,
    /// The revision the list was read at.
    pub rev: i64,
    /// Whether more items follow the last one (for `limit`).
    pub more: bool,
    /// How many items follow after this page, if known.
    pub remaining: i64,
}

/// Where the datastore is: `--datastore-endpoint` and its TLS files.
#[derive(Clone, Debug, Default)]
pub struct Datastore {
    /// None or `sqlite://<path>` (empty path = the default path): SQLite.
    /// `http(s)://host:port[,http(s)://host:port...]`: an etcd v3 cluster.
    pub endpoint: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Which backend a [`Datastore`] names.
#[derive(Debug, PartialEq)]
enum Backend {
    Sqlite(PathBuf),
    Etcd(Vec<String>),
}

impl Datastore {
    fn backend(&self, default_sqlite: &Path) -> anyhow::Result<Backend> {
        let endpoint = self.endpoint.as_deref().map(str::trim).unwrap_or("");
        if endpoint.is_empty() {
            return Ok(Backend::Sqlite(default_sqlite.to_path_buf()));
        }
        if let Some(rest) = endpoint.strip_prefix("sqlite://") {
            // k3s's form may carry driver options after `?`; kinglet sets its own.
            let path = rest.split('?').next().unwrap_or("");
            return Ok(Backend::Sqlite(if path.is_empty() {
                default_sqlite.to_path_buf()
            } else {
                PathBuf::from(path)
            }));
        }
        let endpoints: Vec<String> = endpoint
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect();
        for e in &endpoints {
            let hostport = e
                .strip_prefix("https://")
                .or_else(|| e.strip_prefix("http://"))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "unsupported datastore endpoint {e:?}: use sqlite://<path> or etcd's http(s)://host:port[,...]"
                    )
                })?;
            anyhow::ensure!(
                !hostport.trim_end_matches('/').is_empty(),
                "datastore endpoint {e:?} has no host"
            );
        }
        anyhow::ensure!(!endpoints.is_empty(), "the datastore endpoint is empty");
        Ok(Backend::Etcd(endpoints))
    }
}

/// How many recent events the in-memory watch ring keeps.
const RING_CAPACITY: usize = 16 * 1024;

/// Handle to the datastore; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Sqlite(sqlite::SqliteStore),
    Etcd(etcd::EtcdStore),
}

/// Runs `$body` on whichever backend `$store` has, bound as `$b`.
macro_rules! each {
    ($store:expr, $b:ident => $body:expr) => {
        match &$store.inner {
            Inner::Sqlite($b) => $body,
            Inner::Etcd($b) => $body,
        }
    };
}

impl Store {
    /// Opens (or creates) the SQLite database at `path` and starts its writer thread.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        Store::open_with_ring(path, RING_CAPACITY)
    }

    /// Like `open`, with a watch ring of `ring` events.
    pub fn open_with_ring(path: &Path, ring: usize) -> anyhow::Result<Store> {
        Ok(Store {
            inner: Inner::Sqlite(sqlite::SqliteStore::open_with_ring(path, ring)?),
        })
    }

    /// Opens the datastore `ds` names: SQLite at its path (or at `default_sqlite`), or a
    /// connection to an etcd cluster.
    pub async fn connect(ds: &Datastore, default_sqlite: &Path) -> anyhow::Result<Store> {
        Store::connect_with_ring(ds, default_sqlite, RING_CAPACITY).await
    }

    /// Like `connect`, with a watch ring of `ring` events.
    pub(crate) async fn connect_with_ring(
        ds: &Datastore,
        default_sqlite: &Path,
        ring: usize,
    ) -> anyhow::Result<Store> {
        match ds.backend(default_sqlite)? {
            Backend::Sqlite(path) => Store::open_with_ring(&path, ring),
            Backend::Etcd(endpoints) => Ok(Store {
                inner: Inner::Etcd(etcd::EtcdStore::connect(&endpoints, ds, ring).await?),
            }),
        }
    }

    /// Whether other servers may share this datastore (etcd): then one data-dir lock is not
    /// enough and leader-only work must stay leader-only.
    pub fn is_shared(&self) -> bool {
        matches!(self.inner, Inner::Etcd(_))
    }

    /// The newest revision this process has seen (committed here, or observed on the watch).
    pub fn current_rev(&self) -> i64 {
        each!(self, b => b.current_rev())
    }

    /// The highest revision whose events this handle's watches have been sent: unlike
    /// `current_rev` (which moves with every response on etcd), a watcher that has read
    /// everything sent to it holds every event up to this revision.
    pub fn published_rev(&self) -> i64 {
        each!(self, b => b.published())
    }

    /// The store's newest revision read from the store itself (a quorum read on etcd); for
    /// consistent reads from a cache.
    pub async fn latest_rev(&self) -> Result<i64> {
        match &self.inner {
            Inner::Sqlite(b) => Ok(b.current_rev()),
            Inner::Etcd(b) => b.latest_rev().await,
        }
    }

    /// The newest compacted revision: history at or below it is gone.
    pub fn compacted_rev(&self) -> i64 {
        each!(self, b => b.compacted_rev())
    }

    /// Creates `key`; fails with `AlreadyExists` if it is live. Returns the new revision.
    pub async fn create(&self, key: &str, value: Bytes) -> Result<i64> {
        each!(self, b => b.create(key, value).await)
    }

    /// Replaces `key` if its current revision is `expected_rev` (or unconditionally with
    /// `None`); a missing key is `NotFound` either way.
    pub async fn update(&self, key: &str, expected_rev: Option<i64>, value: Bytes) -> Result<i64> {
        each!(self, b => b.update(key, expected_rev, value).await)
    }

    /// Like `update`, for a write that only moves the object towards its deletion (marking
    /// it deleted, dropping finalizers): on a full disk it runs on the reserve, as deletes do.
    pub async fn update_towards_deletion(
        &self,
        key: &str,
        expected_rev: Option<i64>,
        value: Bytes,
    ) -> Result<i64> {
        match &self.inner {
            Inner::Sqlite(b) => b.update_towards_deletion(key, expected_rev, value).await,
            // etcd has no disk reserve: its NOSPACE alarm is the operator's to clear.
            Inner::Etcd(b) => b.update(key, expected_rev, value).await,
        }
    }

    /// Deletes `key` (if at `expected_rev`). Returns the delete revision and the last state.
    pub async fn delete(&self, key: &str, expected_rev: Option<i64>) -> Result<(i64, Record)> {
        each!(self, b => b.delete(key, expected_rev).await)
    }

    /// Compacts history at or below `rev` (keeping each key's latest state).
    pub async fn compact(&self, rev: i64) -> Result<()> {
        each!(self, b => b.compact(rev).await)
    }

    /// The current state of `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Record>> {
        each!(self, b => b.get(key).await)
    }

    /// Lists live keys under `prefix` at revision `rev` (0 = current), starting after `after`.
    pub async fn list(
        &self,
        prefix: &str,
        rev: i64,
        after: Option<String>,
        limit: Option<usize>,
    ) -> Result<ListPage> {
        // History at or below the compaction point is gone (0, the current state, never is).
        let compacted = self.compacted_rev();
        if rev > 0 && rev < compacted {
            return Err(StoreError::Compacted {
                requested: rev,
                compacted,
            });
        }
        each!(self, b => b.list(prefix, rev, after, limit).await)
    }

    /// Counts live keys under `prefix` (for metrics).
    pub async fn count(&self, prefix: &str) -> Result<i64> {
        each!(self, b => b.count(prefix).await)
    }

    /// Size in bytes of the database (files, or etcd's backend as its member last reported).
    pub fn db_size(&self) -> u64 {
        each!(self, b => b.db_size())
    }

    /// Watches keys under `prefix` for changes after revision `after`.
    pub async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream> {
        // History at or below the compaction point is gone, even if the ring still holds it.
        let compacted = self.compacted_rev();
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        each!(self, b => b.watch(prefix, after).await)
    }

    /// Starts the periodic compactor: every `interval`, history older than the previous tick
    /// goes. On etcd, one of the servers sharing it compacts each interval.
    pub fn spawn_compactor(&self, interval: std::time::Duration) {
        each!(self, b => b.spawn_compactor(interval))
    }

    /// The SQLite database file, when the store is SQLite (for backups).
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &self.inner {
            Inner::Sqlite(b) => Some(b.path()),
            Inner::Etcd(_) => None,
        }
    }

    /// Whether the watch fan-out has published everything this handle has seen.
    #[cfg(test)]
    fn fan_out_caught_up(&self) -> bool {
        // SQLite's writer publishes each commit as it records its revision.
        self.published_rev() >= self.current_rev()
    }

    #[cfg(test)]
    fn etcd(&self) -> &etcd::EtcdStore {
        match &self.inner {
            Inner::Etcd(b) => b,
            Inner::Sqlite(_) => panic!("not etcd"),
        }
    }

    /// Runs `sql` on the SQLite write connection.
    #[cfg(test)]
    async fn exec_on_writer(&self, sql: &str) -> Result<()> {
        match &self.inner {
            Inner::Sqlite(b) => b.exec_on_writer(sql).await,
            Inner::Etcd(_) => Err(StoreError::Internal("not SQLite".into())),
        }
    }
}

#[cfg(test)]
mod tests;
