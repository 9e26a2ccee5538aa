//! The single writer thread: batches queued writes into one transaction (group commit).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::{Event, EventType, Record, Result, Shared, StoreError};

pub(super) enum Op {
    Create {
        key: String,
        value: Bytes,
    },
    Update {
        key: String,
        expected_rev: Option<i64>,
        value: Bytes,
    },
    Delete {
        key: String,
        expected_rev: Option<i64>,
    },
    Compact {
        rev: i64,
    },
}

pub(super) struct WriteRequest {
    pub op: Op,
    pub reply: oneshot::Sender<Result<(i64, Option<Record>)>>,
}

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;

pub(super) fn spawn(
    conn: Connection,
    shared: Arc<Shared>,
) -> anyhow::Result<SyncSender<WriteRequest>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(4096);
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(conn, shared, rx))?;
    Ok(tx)
}

fn run(mut conn: Connection, shared: Arc<Shared>, rx: Receiver<WriteRequest>) {
    let mut next_rev = shared.current.load(Ordering::Acquire) + 1;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(req) => batch.push(req),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let start_rev = next_rev;
        let mut results = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        let committed = (|| -> rusqlite::Result<()> {
            let txn = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for req in &batch {
                let out = apply(&txn, &req.op, &mut next_rev, &shared);
                if let Ok((_, Some(ev))) = &out {
                    events.push(ev.clone());
                }
                results
                    .push(out.map(|(rev, ev)| (rev, ev.and_then(|e: Arc<Event>| e.prev_record()))));
            }
            txn.commit()
        })();
        match committed {
            Ok(()) => {
                if next_rev > start_rev {
                    shared.current.store(next_rev - 1, Ordering::Release);
                }
                shared.hub.publish(events, next_rev - 1);
                for (req, out) in batch.into_iter().zip(results) {
                    let _ = req.reply.send(out);
                }
            }
            Err(e) => {
                next_rev = start_rev;
                tracing::error!("store commit failed: {e}");
                for req in batch {
                    let _ = req.reply.send(Err(StoreError::Internal(e.to_string())));
                }
            }
        }
    }
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

/// Applies one write inside the batch transaction, returning the event it produced.
fn apply(
    c: &Connection,
    op: &Op,
    next_rev: &mut i64,
    shared: &Shared,
) -> Result<(i64, Option<Arc<Event>>)> {
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
            insert(c, rev, key, create_rev, cur_rev, true, &prev)?;
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
            // Keep each key's newest row at or below the target unless it is a tombstone.
            c.execute(
                "DELETE FROM log WHERE rev <= ?1 AND (deleted = 1 OR rev < (SELECT MAX(l2.rev) FROM log l2 WHERE l2.key = log.key AND l2.rev <= ?1))",
                params![target],
            )?;
            c.execute("INSERT INTO meta (name, value) VALUES ('compacted', ?1) ON CONFLICT(name) DO UPDATE SET value = excluded.value", params![target])?;
            shared.compacted.store(*target, Ordering::Release);
            return Ok((*target, None));
        }
    };
    *next_rev += 1;
    Ok((rev, Some(Arc::new(event))))
}
