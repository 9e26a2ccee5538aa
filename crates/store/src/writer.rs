//! The single writer thread: batches queued writes into one transaction (group commit), and
//! keeps the store usable when its disk fills up (see [`Space`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::sqlite::Shared;
use crate::{Event, EventType, Record, Result, StoreError};

pub(super) enum Op {
    Create {
        key: String,
        value: Bytes,
    },
    Update {
        key: String,
        expected_rev: Option<i64>,
        value: Bytes,
        /// Moves the object towards deletion: let through on a full disk, like deletes.
        towards_deletion: bool,
    },
    Delete {
        key: String,
        expected_rev: Option<i64>,
    },
    Compact {
        rev: i64,
    },
    /// Runs SQL on the write connection (tests: `PRAGMA max_page_count` simulates a full disk).
    #[cfg(test)]
    Exec(String),
}

impl Op {
    /// Whether the write adds data (refused while the disk is full, as etcd refuses puts
    /// under its NOSPACE alarm); deletes and compaction are what frees space, and updates on
    /// the way to a delete (marking the object deleted, dropping finalizers) run on the
    /// reserve too, or nothing with finalizers could be deleted.
    fn grows(&self) -> bool {
        match self {
            Op::Create { .. } => true,
            Op::Update {
                towards_deletion, ..
            } => !towards_deletion,
            _ => false,
        }
    }
}

pub(super) struct WriteRequest {
    pub op: Op,
    pub reply: oneshot::Sender<Result<(i64, Option<Record>)>>,
}

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;

/// Size of the reserve file kept beside the database. Released when a write fails for lack of
/// space, it is what deletes, compaction and the return of free pages to the file system (all
/// of which write to the WAL first) and a restart (the `-shm` and `-wal` files) run on.
pub(super) const RESERVE_BYTES: u64 = 2 << 20;

/// Pages returned to the file system per step when reclaiming space: the WAL holds the moved
/// pages until the checkpoint after each step, so a step must fit in the reserve.
const VACUUM_STEP_PAGES: i64 = 128;

/// The disk-space state of the store. Normally a reserve file of [`RESERVE_BYTES`] sits beside
/// the database. When a write fails with `SQLITE_FULL` the reserve is deleted and the store
/// turns `low`: creates and updates are refused with [`StoreError::NoSpace`] without touching
/// the disk, deletes and compaction run on the released space, and after each batch of deletes
/// history is compacted and the freed pages returned to the file system. As soon as the file
/// system has room for the reserve again (objects deleted, or space freed by anything else),
/// it is recreated and writes are accepted: no restart needed.
pub(super) struct Space {
    reserve: PathBuf,
    dir: PathBuf,
    low: bool,
}

impl Space {
    /// Prepares the reserve for the database at `db`, before the database is opened: on a full
    /// disk the reserve is released first, so SQLite can create its `-shm` and `-wal` files.
    pub fn prepare(db: &Path) -> Space {
        let dir = db
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let mut name = db.file_name().unwrap_or_default().to_os_string();
        name.push("-reserve");
        let mut space = Space {
            reserve: dir.join(name),
            dir,
            low: false,
        };
        // Without its reserve (none yet, or released and no room to make it again), or nearly
        // full despite it: start low, with the reserve's space for SQLite's files.
        let held = std::fs::metadata(&space.reserve).is_ok_and(|m| m.len() >= RESERVE_BYTES);
        let nearly_full = free_bytes(&space.dir).is_some_and(|f| f < RESERVE_BYTES / 4);
        if (!held && !space.recreate()) || (held && nearly_full) {
            space.release();
        }
        space
    }

    pub fn low(&self) -> bool {
        self.low
    }

    /// Frees the reserve for the writes that free space.
    fn release(&mut self) {
        if !self.low {
            tracing::warn!(
                "the datastore's disk is full: creates and updates are refused until space is freed (delete objects, or free space on the disk)"
            );
        }
        self.low = true;
        let _ = std::fs::remove_file(&self.reserve);
    }

    /// Leaves the low state if the file system has room for the reserve (and a margin).
    fn recover(&mut self) -> bool {
        if self.low && self.recreate() {
            self.low = false;
            tracing::info!("the datastore's disk has space again: writes are accepted");
        }
        !self.low
    }

    /// Allocates the reserve if there is room for twice its size, so that it is not what
    /// fills the disk again at once.
    fn recreate(&self) -> bool {
        if free_bytes(&self.dir).is_none_or(|f| f < 2 * RESERVE_BYTES) {
            return false;
        }
        let ok = allocate(&self.reserve, RESERVE_BYTES).is_ok();
        if !ok {
            let _ = std::fs::remove_file(&self.reserve);
        }
        ok
    }
}

/// Free bytes for unprivileged users on the file system holding `dir`.
// The casts are needed on 32-bit targets, where both counts are 32 bits.
#[allow(clippy::unnecessary_cast)]
pub(super) fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// Writes a file of `len` bytes whose blocks are really allocated (not sparse).
fn allocate(path: &Path, len: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)?;
    let n = nix::libc::off_t::try_from(len).unwrap_or(nix::libc::off_t::MAX);
    match nix::fcntl::posix_fallocate(&f, 0, n) {
        Ok(()) => {}
        // File systems without fallocate: bytes written, and not zeros, which compressing
        // file systems (ZFS, btrfs) would store as next to nothing.
        Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EINVAL) => {
            let mut chunk = vec![0u8; 64 << 10];
            let mut state = 0x9E37_79B9_7F4A_7C15;
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                fill_incompressible(&mut state, &mut chunk[..n]);
                f.write_all(&chunk[..n])?;
                left -= n as u64;
            }
        }
        Err(e) => return Err(e.into()),
    }
    f.sync_all()
}

/// Fills `buf` with pseudo-random bytes (xorshift64, state in `x`), which no compressor can
/// shrink; the state carries on, so no stretch of the file repeats another.
fn fill_incompressible(x: &mut u64, buf: &mut [u8]) {
    for word in buf.chunks_mut(8) {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
    }
}

pub(super) fn spawn(
    conn: Connection,
    shared: Arc<Shared>,
    space: Space,
) -> anyhow::Result<SyncSender<WriteRequest>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(4096);
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(conn, shared, space, rx))?;
    Ok(tx)
}

fn no_space() -> StoreError {
    StoreError::NoSpace(
        "the datastore's disk is full; delete objects or free space on the disk".into(),
    )
}

/// Splits off (and answers) the writes that add data, when the disk is full.
fn refuse_growing(batch: Vec<WriteRequest>) -> Vec<WriteRequest> {
    let (refused, kept): (Vec<_>, Vec<_>) = batch.into_iter().partition(|r| r.op.grows());
    for req in refused {
        let _ = req.reply.send(Err(no_space()));
    }
    kept
}

fn run(mut conn: Connection, shared: Arc<Shared>, mut space: Space, rx: Receiver<WriteRequest>) {
    let mut next_rev = shared.current.load(Ordering::Acquire) + 1;
    let mut shrink = Shrink::default();
    loop {
        let first = if shrink.pending {
            // Between steps, serve whatever writes came in.
            match rx.recv_timeout(SHRINK_PAUSE) {
                Ok(req) => req,
                Err(RecvTimeoutError::Timeout) => {
                    shrink.step(&conn);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(req) => req,
                Err(_) => break,
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(req) => batch.push(req),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if space.low() && batch.iter().any(|r| r.op.grows()) && !space.recover() {
            batch = refuse_growing(batch);
        }
        let compacts = batch.iter().any(|r| matches!(r.op, Op::Compact { .. }));
        let mut outcome = commit(&mut conn, &shared, &batch, &mut next_rev);
        if matches!(outcome, Err(StoreError::NoSpace(_))) && !space.low() {
            // The disk just filled up: release the reserve and retry what frees space.
            space.release();
            batch = refuse_growing(batch);
            outcome = commit(&mut conn, &shared, &batch, &mut next_rev);
        }
        let mut deleted = false;
        match outcome {
            Ok(Committed { results, events }) => {
                deleted = events.iter().any(|e| e.typ == EventType::Deleted);
                shared.current.store(next_rev - 1, Ordering::Release);
                shared.hub.publish(events, next_rev - 1);
                for (req, out) in batch.into_iter().zip(results) {
                    let _ = req.reply.send(out);
                }
            }
            Err(e) => {
                if !matches!(e, StoreError::NoSpace(_)) {
                    tracing::error!("store commit failed: {e}");
                }
                for req in batch {
                    let _ = req.reply.send(Err(e.clone()));
                }
            }
        }
        if space.low() && deleted {
            reclaim(&mut conn, &shared, &mut space, next_rev - 1);
            shrink.pending = false;
        } else if compacts && mostly_free(&conn) {
            shrink.start();
        }
        // One step per batch too, so a steady stream of writes does not hold the space.
        if shrink.pending {
            shrink.step(&conn);
        }
    }
}

struct Committed {
    results: Vec<Result<(i64, Option<Record>)>>,
    events: Vec<Arc<Event>>,
}

/// Applies `batch` in one transaction. Logical failures (conflicts, missing keys) fail only
/// their own write; a database failure fails the whole batch, which is then rolled back
/// entirely (SQLite may already have rolled it back, e.g. on `SQLITE_FULL`, so nothing after
/// such an error may run in the same transaction).
fn commit(
    conn: &mut Connection,
    shared: &Shared,
    batch: &[WriteRequest],
    next_rev: &mut i64,
) -> Result<Committed> {
    let start_rev = *next_rev;
    let mut results = Vec::with_capacity(batch.len());
    let mut events = Vec::new();
    let mut compacted = None;
    let out = (|| -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let txn = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for req in batch {
            match apply(&txn, &req.op, next_rev) {
                Ok(Applied::Event(rev, ev)) => {
                    results.push(Ok((rev, ev.prev_record())));
                    events.push(ev);
                }
                Ok(Applied::Compacted(rev)) => {
                    compacted = Some(rev);
                    results.push(Ok((rev, None)));
                }
                Err(e @ (StoreError::Internal(_) | StoreError::NoSpace(_))) => return Err(e),
                Err(e) => results.push(Err(e)),
            }
        }
        txn.commit()?;
        Ok(())
    })();
    match out {
        Ok(()) => {
            if let Some(rev) = compacted {
                shared.compacted.fetch_max(rev, Ordering::AcqRel);
            }
            Ok(Committed { results, events })
        }
        Err(e) => {
            *next_rev = start_rev;
            Err(e)
        }
    }
}

/// After deletes on a full disk: compacts all history (the deleted objects' rows are what
/// holds the space; watchers already streaming keep their events, a re-watch from before
/// this point gets `410 Expired` and relists), returns the freed pages to the file system and
/// recreates the reserve if that made room.
fn reclaim(conn: &mut Connection, shared: &Shared, space: &mut Space, rev: i64) {
    let compacted = (|| -> Result<()> {
        let txn = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        compact(&txn, rev)?;
        txn.commit()?;
        Ok(())
    })();
    match compacted {
        Ok(()) => {
            shared.compacted.fetch_max(rev, Ordering::AcqRel);
        }
        Err(e) => tracing::warn!("compaction on a full disk failed: {e}"),
    }
    return_free_pages(conn);
    space.recover();
}

/// Whether a quarter or more of the database file is free pages.
fn mostly_free(conn: &Connection) -> bool {
    let count = |pragma: &str| -> i64 {
        conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
            .unwrap_or(0)
    };
    let free = count("freelist_count");
    free > 0 && free * 4 >= count("page_count")
}

/// Pages returned to the file system per step after a compaction, when the disk has room:
/// the step's moved pages pass through the WAL (reused once checkpointed), and writes wait
/// for no more than one step.
const SHRINK_STEP_PAGES: i64 = 2048;

/// How long the writer, idle while shrinking, waits for writes before its next step.
const SHRINK_PAUSE: Duration = Duration::from_millis(2);

/// Returns up to `pages` free pages to the file system. The pragma frees one page per step
/// of its statement (each yields a row), so it is stepped to the end: run once, as
/// `execute_batch` does, it frees a single page.
fn incremental_vacuum(conn: &Connection, pages: i64) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(&format!("PRAGMA incremental_vacuum({pages})"))?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    Ok(())
}

/// Gives the pages a compaction freed back to the file system, a step at a time between
/// write batches, so writes never wait for more than one step.
#[derive(Default)]
struct Shrink {
    pending: bool,
    /// Steps in a row that could not finish (readers on older snapshots hold the WAL).
    stalls: u32,
}

/// Steps that may wait on readers before the shrink is left to the next compaction.
const SHRINK_MAX_STALLS: u32 = 400;

impl Shrink {
    fn start(&mut self) {
        self.pending = true;
        self.stalls = 0;
    }

    /// Returns up to [`SHRINK_STEP_PAGES`] free pages to the file system. The checkpoint is
    /// passive: it never waits for readers, and once it has copied the whole WAL back SQLite
    /// truncates the database file to its new size.
    fn step(&mut self, conn: &Connection) {
        let Some(step) = free_pages_step(conn, SHRINK_STEP_PAGES, Checkpoint::Passive) else {
            self.pending = false;
            return;
        };
        if step.after < step.before {
            self.stalls = 0;
        } else {
            self.stalls += 1;
        }
        self.pending = (step.after > 0 || !step.copied_back) && self.stalls < SHRINK_MAX_STALLS;
    }
}

/// How the WAL is copied back after a step of returning free pages.
#[derive(Clone, Copy)]
enum Checkpoint {
    /// Never waits for readers.
    Passive,
    /// Waits for readers (up to the busy timeout) and empties the WAL file.
    Truncate,
}

/// What one step of returning free pages did.
struct FreePagesStep {
    /// Free pages before and after the step.
    before: i64,
    after: i64,
    /// The checkpoint failed or readers kept it from finishing.
    busy: bool,
    /// The checkpoint copied the whole WAL back.
    copied_back: bool,
}

/// Returns up to `pages` free pages to the file system, then checkpoints the WAL the moved
/// pages went through. None if the database could not be read or the pages not returned.
fn free_pages_step(conn: &Connection, pages: i64, checkpoint: Checkpoint) -> Option<FreePagesStep> {
    let free = |conn: &Connection| -> Option<i64> {
        conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .ok()
    };
    let before = free(conn)?;
    if before > 0
        && let Err(e) = incremental_vacuum(conn, pages)
    {
        tracing::debug!("returning free pages failed: {e}");
        return None;
    }
    let pragma = match checkpoint {
        Checkpoint::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
        Checkpoint::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
    };
    // (busy, frames in the WAL, frames copied back)
    let result = conn.query_row(pragma, [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    Some(FreePagesStep {
        before,
        after: free(conn).unwrap_or(0),
        busy: !matches!(result, Ok((0, _, _))),
        copied_back: matches!(result, Ok((0, log, done)) if done >= log),
    })
}

/// Shrinks the database file by its free pages, a step at a time (each step's moved pages go
/// through the WAL, which the checkpoint after it empties). Needs `auto_vacuum=INCREMENTAL`.
fn return_free_pages(conn: &Connection) {
    let nothing_free = conn
        .query_row("PRAGMA freelist_count", [], |r| r.get::<_, i64>(0))
        .is_ok_and(|n| n == 0);
    if nothing_free {
        return;
    }
    // Readers may hold the WAL briefly; do not stall the writer long for them.
    let _ = conn.busy_timeout(Duration::from_secs(1));
    while let Some(step) = free_pages_step(conn, VACUUM_STEP_PAGES, Checkpoint::Truncate) {
        if step.busy || step.after == 0 || step.after >= step.before {
            break;
        }
    }
    let _ = conn.busy_timeout(crate::sqlite::BUSY_TIMEOUT);
}

/// The live state of `key`: (rev, create_rev, value), or None if absent or deleted.
fn current(c: &Connection, key: &str) -> rusqlite::Result<Option<(i64, i64, Vec<u8>)>> {
    let row: Option<(i64, i64, i64, Vec<u8>)> = c
        .prepare_cached("SELECT rev, create_rev, deleted, value FROM log WHERE key = ?1 ORDER BY rev DESC LIMIT 1")?
        .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    Ok(row.and_then(|(rev, create_rev, deleted, value)| {
        (deleted == 0).then_some((rev, create_rev, value))
    }))
}

fn insert(
    c: &Connection,
    rev: i64,
    key: &str,
    create_rev: i64,
    prev_rev: i64,
    deleted: bool,
    value: &[u8],
) -> rusqlite::Result<()> {
    c.prepare_cached("INSERT INTO log (rev, key, create_rev, prev_rev, deleted, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
        .execute(params![rev, key, create_rev, prev_rev, deleted as i64, value])?;
    Ok(())
}

/// Removes history at or below `target`, keeping each key's newest row there unless it is a
/// tombstone: so the previous row of every retained tombstone (its DELETED event's object)
/// survives.
fn compact(c: &Connection, target: i64) -> rusqlite::Result<()> {
    c.execute(
        "DELETE FROM log WHERE rev <= ?1 AND (deleted = 1 OR rev < (SELECT MAX(l2.rev) FROM log l2 WHERE l2.key = log.key AND l2.rev <= ?1))",
        params![target],
    )?;
    c.execute("INSERT INTO meta (name, value) VALUES ('compacted', ?1) ON CONFLICT(name) DO UPDATE SET value = excluded.value", params![target])?;
    Ok(())
}

enum Applied {
    Event(i64, Arc<Event>),
    Compacted(i64),
}

/// Applies one write inside the batch transaction.
fn apply(c: &Connection, op: &Op, next_rev: &mut i64) -> Result<Applied> {
    let rev = *next_rev;
    let event = match op {
        Op::Create { key, value } => {
            if current(c, key)?.is_some() {
                return Err(StoreError::AlreadyExists);
            }
            insert(c, rev, key, rev, 0, false, value)?;
            Event {
                typ: EventType::Added,
                record: Record {
                    key: key.clone(),
                    rev,
                    create_rev: rev,
                    value: value.clone(),
                },
                prev: None,
            }
        }
        Op::Update {
            key,
            expected_rev,
            value,
            ..
        } => {
            let (cur_rev, create_rev, prev) = current(c, key)?.ok_or(StoreError::NotFound)?;
            if expected_rev.is_some_and(|e| e != cur_rev) {
                return Err(StoreError::Conflict(cur_rev));
            }
            insert(c, rev, key, create_rev, cur_rev, false, value)?;
            Event {
                typ: EventType::Modified,
                record: Record {
                    key: key.clone(),
                    rev,
                    create_rev,
                    value: value.clone(),
                },
                prev: Some(Bytes::from(prev)),
            }
        }
        Op::Delete { key, expected_rev } => {
            let (cur_rev, create_rev, prev) = current(c, key)?.ok_or(StoreError::NotFound)?;
            if expected_rev.is_some_and(|e| e != cur_rev) {
                return Err(StoreError::Conflict(cur_rev));
            }
            // The tombstone stores no value: the last state is its `prev_rev` row, which
            // compaction keeps as long as the tombstone (so a delete needs almost no space).
            insert(c, rev, key, create_rev, cur_rev, true, &[])?;
            let prev = Bytes::from(prev);
            Event {
                typ: EventType::Deleted,
                record: Record {
                    key: key.clone(),
                    rev,
                    create_rev,
                    value: prev.clone(),
                },
                prev: Some(prev),
            }
        }
        Op::Compact { rev: target } => {
            compact(c, *target)?;
            return Ok(Applied::Compacted(*target));
        }
        #[cfg(test)]
        Op::Exec(sql) => {
            c.execute_batch(sql)?;
            return Ok(Applied::Compacted(0));
        }
    };
    *next_rev += 1;
    Ok(Applied::Event(rev, Arc::new(event)))
}
