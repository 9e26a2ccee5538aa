//! The SQLite backend: an etcd-like revision log.
//!
//! Every write appends one row to `log`; its `rev` is the new global revision, which the API
//! server exposes as `resourceVersion`. The latest row of a key is its current state (a row with
//! `deleted = 1` is a tombstone). One writer thread owns the write connection and commits requests
//! in batches (group commit), so concurrent clients never see "database is locked", and each
//! acknowledged write has been fsynced (WAL, `synchronous=FULL`). Committed events are pushed to
//! the watch hub; see `watch.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::watch::Hub;
use crate::writer::{self, Op, WriteRequest};
use crate::{Event, EventType, ListPage, Record, Result, StoreError, WatchStream};

pub(crate) struct Shared {
    pub(crate) path: PathBuf,
    /// Highest committed (and published) revision.
    pub(crate) current: AtomicI64,
    /// Everything at or below this revision may have been compacted away.
    pub(crate) compacted: AtomicI64,
    pub(crate) readers: Mutex<Vec<Connection>>,
    pub(crate) hub: Hub,
}

/// The SQLite backend; cheap to clone.
#[derive(Clone)]
pub(crate) struct SqliteStore {
    shared: Arc<Shared>,
    writer: std::sync::mpsc::SyncSender<WriteRequest>,
}

/// How long a connection waits for a lock held by another.
pub(crate) const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The WAL is cut back to this size when it restarts, so one large batch does not keep its
/// space for good (the default autocheckpoint runs at about this size anyway).
const WAL_SIZE_LIMIT: i64 = 4 << 20;

impl SqliteStore {
    /// Opens (or creates) the database at `path`, with a watch ring of `ring` events, and
    /// starts the writer thread.
    pub fn open_with_ring(path: &Path, ring: usize) -> anyhow::Result<SqliteStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Before SQLite opens the files: on a full disk this releases the reserve, so the
        // `-shm` and `-wal` files can be made and reads served.
        let space = writer::Space::prepare(path);
        let conn = open_connection(path)?;
        // Freed pages go back to the file system on demand (only settable before the first
        // table exists; an older database is converted below when there is room).
        conn.execute_batch("PRAGMA auto_vacuum=INCREMENTAL;")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS log (
                 rev INTEGER PRIMARY KEY,
                 key TEXT NOT NULL,
                 create_rev INTEGER NOT NULL,
                 prev_rev INTEGER NOT NULL,
                 deleted INTEGER NOT NULL,
                 value BLOB NOT NULL
             );
             CREATE INDEX IF NOT EXISTS log_key_rev ON log(key, rev);
             CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        )?;
        if !space.low() {
            convert_to_incremental_vacuum(&conn, path);
        }
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        let current = newest_rev(&conn)?;
        let compacted = meta_value(&conn, "compacted")?;
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            current: AtomicI64::new(current),
            compacted: AtomicI64::new(compacted),
            readers: Mutex::new(Vec::new()),
            hub: Hub::new(ring, current),
        });
        let writer = writer::spawn(conn, shared.clone(), space)?;
        Ok(SqliteStore { shared, writer })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The highest revision whose events have been published to watches.
    pub fn published(&self) -> i64 {
        self.shared.hub.published()
    }

    /// The newest committed revision.
    pub fn current_rev(&self) -> i64 {
        self.shared.current.load(Ordering::Acquire)
    }

    /// The newest compacted revision: history at or below it is gone.
    pub fn compacted_rev(&self) -> i64 {
        self.shared.compacted.load(Ordering::Acquire)
    }

    async fn write(&self, op: Op) -> Result<(i64, Option<Record>)> {
        let (tx, rx) = oneshot::channel();
        let stopped = || StoreError::Internal("store writer stopped".into());
        match self.writer.try_send(WriteRequest { op, reply: tx }) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(stopped()),
            Err(std::sync::mpsc::TrySendError::Full(req)) => {
                // Back-pressure: wait for room on a blocking thread.
                let writer = self.writer.clone();
                tokio::task::spawn_blocking(move || writer.send(req))
                    .await
                    .map_err(|e| StoreError::Internal(e.to_string()))?
                    .map_err(|_| stopped())?;
            }
        }
        rx.await
            .map_err(|_| StoreError::Internal("store writer stopped".into()))?
    }

    /// Creates `key`; fails with `AlreadyExists` if it is live. Returns the new revision.
    pub async fn create(&self, key: &str, value: Bytes) -> Result<i64> {
        self.write(Op::Create {
            key: key.to_string(),
            value,
        })
        .await
        .map(|(rev, _)| rev)
    }

    /// Replaces `key` if its current revision is `expected_rev` (or unconditionally with `None`).
    pub async fn update(&self, key: &str, expected_rev: Option<i64>, value: Bytes) -> Result<i64> {
        self.write(Op::Update {
            key: key.to_string(),
            expected_rev,
            value,
            towards_deletion: false,
        })
        .await
        .map(|(rev, _)| rev)
    }

    /// Like `update`, for a write that only moves the object towards its deletion (marking
    /// it deleted, dropping finalizers): on a full disk it runs on the reserve, as deletes do.
    pub async fn update_towards_deletion(
        &self,
        key: &str,
        expected_rev: Option<i64>,
        value: Bytes,
    ) -> Result<i64> {
        self.write(Op::Update {
            key: key.to_string(),
            expected_rev,
            value,
            towards_deletion: true,
        })
        .await
        .map(|(rev, _)| rev)
    }

    /// Deletes `key` (if at `expected_rev`). Returns the delete revision and the last state.
    pub async fn delete(&self, key: &str, expected_rev: Option<i64>) -> Result<(i64, Record)> {
        let (rev, prev) = self
            .write(Op::Delete {
                key: key.to_string(),
                expected_rev,
            })
            .await?;
        Ok((rev, prev.ok_or(StoreError::NotFound)?))
    }

    /// Compacts history at or below `rev` (keeping each key's latest state).
    pub async fn compact(&self, rev: i64) -> Result<()> {
        self.write(Op::Compact { rev }).await.map(|_| ())
    }

    /// Runs `sql` on the write connection.
    #[cfg(test)]
    pub async fn exec_on_writer(&self, sql: &str) -> Result<()> {
        self.write(Op::Exec(sql.to_string())).await.map(|_| ())
    }

    fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> impl Future<Output = Result<T>> {
        let shared = self.shared.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let conn = shared
                    .readers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pop();
                let conn = match conn {
                    Some(c) => c,
                    None => open_connection(&shared.path)
                        .map_err(|e| StoreError::Internal(e.to_string()))?,
                };
                let out = f(&conn);
                shared
                    .readers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(conn);
                out
            })
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
        }
    }

    /// The current state of `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Record>> {
        let key = key.to_string();
        self.with_reader(move |c| Ok(latest(c, &key, i64::MAX)?))
            .await
    }

    /// Lists live keys under `prefix` at revision `rev` (0 = current), starting after `after`.
    pub async fn list(
        &self,
        prefix: &str,
        rev: i64,
        after: Option<String>,
        limit: Option<usize>,
    ) -> Result<ListPage> {
        let rev = if rev <= 0 { self.current_rev() } else { rev };
        let prefix = prefix.to_string();
        self.with_reader(move |c| list_at(c, &prefix, rev, after.as_deref(), limit))
            .await
    }

    /// Counts live keys under `prefix` (for metrics).
    pub async fn count(&self, prefix: &str) -> Result<i64> {
        let (lo, hi) = prefix_range(prefix);
        self.with_reader(move |c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM log l JOIN (SELECT MAX(rev) AS rev FROM log WHERE key >= ?1 AND key < ?2 GROUP BY key) m
                 ON l.rev = m.rev WHERE l.deleted = 0",
                params![lo, hi],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Size in bytes of the database files.
    pub fn db_size(&self) -> u64 {
        let base = self.shared.path.to_string_lossy().to_string();
        [base.clone(), format!("{base}-wal")]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Watches keys under `prefix` for changes after revision `after`.
    pub async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream> {
        let (stream, gap_end) = self.shared.hub.subscribe(prefix, after);
        if let Some(gap_end) = gap_end {
            // The ring no longer holds (after, gap_end): read that stretch from the log.
            let prefix = prefix.to_string();
            let history = self
                .with_reader(move |c| history(c, &prefix, after, gap_end))
                .await?;
            return Ok(stream.with_history(history));
        }
        Ok(stream)
    }

    /// Starts the periodic compactor: every `interval`, history older than the previous tick goes.
    pub fn spawn_compactor(&self, interval: std::time::Duration) {
        let store = self.clone();
        tokio::spawn(async move {
            let mut mark = store.current_rev();
            loop {
                tokio::time::sleep(interval).await;
                if mark > store.compacted_rev()
                    && let Err(e) = store.compact(mark).await
                {
                    tracing::warn!("compaction failed: {e}");
                }
                mark = store.current_rev();
            }
        });
    }
}

/// A database made before `auto_vacuum` was set keeps its free pages forever; rebuild it
/// once (VACUUM needs room for a copy, so only when the disk has plenty).
fn convert_to_incremental_vacuum(conn: &Connection, path: &Path) {
    let mode: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap_or(2);
    if mode == 2 {
        return;
    }
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(u64::MAX);
    let room = path.parent().and_then(writer::free_bytes).unwrap_or(0);
    if room
        < size
            .saturating_mul(3)
            .saturating_add(4 * writer::RESERVE_BYTES)
    {
        tracing::info!(
            "datastore kept without incremental vacuum: not enough free disk to convert it"
        );
        return;
    }
    if let Err(e) = conn.execute_batch("PRAGMA auto_vacuum=INCREMENTAL; VACUUM;") {
        tracing::warn!("converting the datastore to incremental vacuum failed: {e}");
    }
}

/// The newest revision: the log's, or the floor a restore moved it to (see
/// [`backup::move_revision_on`]) while nothing has been written since.
pub(crate) fn newest_rev(conn: &Connection) -> rusqlite::Result<i64> {
    let logged: i64 = conn.query_row("SELECT COALESCE(MAX(rev), 0) FROM log", [], |r| r.get(0))?;
    Ok(logged.max(meta_value(conn, REVISION_FLOOR)?))
}

/// The `meta` row where a restore records the revision it moved the store on to.
pub(crate) const REVISION_FLOOR: &str = "revision_floor";

fn meta_value(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0))
}

fn open_connection(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF;",
    )?;
    Ok(conn)
}

/// The smallest string greater than every string starting with `prefix`.
pub(crate) fn prefix_range(prefix: &str) -> (String, String) {
    let mut hi = prefix.as_bytes().to_vec();
    while let Some(last) = hi.pop() {
        if last < 0xff {
            hi.push(last + 1);
            break;
        }
    }
    (
        prefix.to_string(),
        String::from_utf8_lossy(&hi).into_owned(),
    )
}

fn latest(c: &Connection, key: &str, rev: i64) -> rusqlite::Result<Option<Record>> {
    c.prepare_cached("SELECT rev, create_rev, deleted, value FROM log WHERE key = ?1 AND rev <= ?2 ORDER BY rev DESC LIMIT 1")?
        .query_row(params![key, rev], |r| {
            let deleted: i64 = r.get(2)?;
            Ok((deleted, Record { key: key.to_string(), rev: r.get(0)?, create_rev: r.get(1)?, value: Bytes::from(r.get::<_, Vec<u8>>(3)?) }))
        })
        .optional()
        .map(|o| o.and_then(|(deleted, rec)| (deleted == 0).then_some(rec)))
}

fn list_at(
    c: &Connection,
    prefix: &str,
    rev: i64,
    after: Option<&str>,
    limit: Option<usize>,
) -> Result<ListPage> {
    let (lo, hi) = prefix_range(prefix);
    let lo = match after {
        Some(a) if a >= lo.as_str() => format!("{a}\u{0}"),
        _ => lo,
    };
    // One more than asked, to know whether there is more; SQLite counts in i64.
    let fetch = limit
        .map(|l| i64::try_from(l).unwrap_or(i64::MAX).saturating_add(1))
        .unwrap_or(-1);
    let mut stmt = c.prepare_cached(
        "SELECT l.key, l.rev, l.create_rev, l.value FROM log l
         JOIN (SELECT MAX(rev) AS rev FROM log WHERE key >= ?1 AND key < ?2 AND rev <= ?3 GROUP BY key) m ON l.rev = m.rev
         WHERE l.deleted = 0 ORDER BY l.key LIMIT ?4",
    )?;
    let mut items = stmt
        .query_map(params![lo, hi, rev, fetch], |r| {
            Ok(Record {
                key: r.get(0)?,
                rev: r.get(1)?,
                create_rev: r.get(2)?,
                value: Bytes::from(r.get::<_, Vec<u8>>(3)?),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let more = limit.is_some_and(|l| items.len() > l);
    let mut remaining = 0;
    if more {
        items.truncate(limit.unwrap_or(0));
        let last = items
            .last()
            .map(|r| format!("{}\u{0}", r.key))
            .unwrap_or_default();
        remaining = c.query_row(
            "SELECT COUNT(*) FROM log l JOIN (SELECT MAX(rev) AS rev FROM log WHERE key >= ?1 AND key < ?2 AND rev <= ?3 GROUP BY key) m
             ON l.rev = m.rev WHERE l.deleted = 0",
            params![last, hi, rev],
            |r| r.get(0),
        )?;
    }
    Ok(ListPage {
        items,
        rev,
        more,
        remaining,
    })
}

/// Events under `prefix` with revision in (after, before), oldest first.
fn history(c: &Connection, prefix: &str, after: i64, before: i64) -> Result<Vec<Arc<Event>>> {
    let (lo, hi) = prefix_range(prefix);
    let mut stmt = c.prepare_cached(
        "SELECT l.key, l.rev, l.create_rev, l.deleted, l.value, p.value, p.deleted FROM log l LEFT JOIN log p ON p.rev = l.prev_rev AND p.key = l.key
         WHERE l.rev > ?1 AND l.rev < ?2 AND l.key >= ?3 AND l.key < ?4 ORDER BY l.rev",
    )?;
    let rows = stmt.query_map(params![after, before, lo, hi], |r| {
        let deleted: i64 = r.get(3)?;
        let prev: Option<Vec<u8>> = r.get(5)?;
        let prev_deleted: Option<i64> = r.get(6)?;
        let prev = prev.filter(|_| prev_deleted == Some(0)).map(Bytes::from);
        let value = Bytes::from(r.get::<_, Vec<u8>>(4)?);
        let (typ, value) = if deleted == 1 {
            // A DELETED event carries the last state: the tombstone's previous row (older
            // tombstones stored it themselves).
            (EventType::Deleted, prev.clone().unwrap_or(value))
        } else if prev.is_some() {
            (EventType::Modified, value)
        } else {
            (EventType::Added, value)
        };
        Ok(Arc::new(Event {
            typ,
            record: Record {
                key: r.get(0)?,
                rev: r.get(1)?,
                create_rev: r.get(2)?,
                value,
            },
            prev,
        }))
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}
