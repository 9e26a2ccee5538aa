//! Watch fan-out: committed events are pushed into a ring of recent events and broadcast to
//! every open watch. A watch that falls behind the broadcast buffer is cut off (its client
//! re-watches from the last revision it saw), so a slow reader never holds up writers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};

use super::Record;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One committed change. For `Deleted`, `record.value` is the last state.
#[derive(Debug)]
pub struct Event {
    pub typ: EventType,
    pub record: Record,
    /// The state before this change, if the key existed.
    pub prev: Option<Bytes>,
}

impl Event {
    /// For a delete, the object as it was when deleted.
    pub(super) fn prev_record(&self) -> Option<Record> {
        (self.typ == EventType::Deleted).then(|| self.record.clone())
    }
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    /// Highest revision published so far.
    published: i64,
    tx: broadcast::Sender<Arc<Event>>,
}

pub(super) struct Hub {
    ring: Mutex<Ring>,
    capacity: usize,
}

impl Hub {
    pub fn new(capacity: usize, current: i64) -> Hub {
        let capacity = capacity.max(1);
        let (tx, _) = broadcast::channel(capacity);
        Hub {
            ring: Mutex::new(Ring {
                events: VecDeque::with_capacity(capacity),
                published: current,
                tx,
            }),
            capacity,
        }
    }

    /// Ends every open stream and forgets the ring, for when the feed lost events it can no
    /// longer read (history compacted while it was away): watchers re-watch from their last
    /// revision, which is then expired, and relist. The feed starts again after `published`.
    pub fn expire(&self, published: i64) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.events.clear();
        ring.published = published;
        // Dropping the old sender closes every receiver.
        ring.tx = broadcast::channel(self.capacity).0;
    }

    /// Publishes a committed batch (in revision order).
    pub fn publish(&self, events: Vec<Arc<Event>>, published: i64) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        for ev in events {
            if ring.events.len() == self.capacity {
                ring.events.pop_front();
            }
            ring.events.push_back(ev.clone());
            let _ = ring.tx.send(ev);
        }
        ring.published = ring.published.max(published);
    }

    /// The highest revision published: every event up to it is in the ring and broadcast.
    pub fn published(&self) -> i64 {
        self.ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .published
    }

    /// Subscribes to events after `after`. Returns the stream and, if the ring no longer holds
    /// every event after `after`, the first revision it does hold (the caller fills the gap).
    pub fn subscribe(&self, prefix: &str, after: i64) -> (WatchStream, Option<i64>) {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let rx = ring.tx.subscribe();
        let first_held = ring
            .events
            .front()
            .map(|e| e.record.rev)
            .unwrap_or(ring.published + 1);
        let pending: VecDeque<_> = ring
            .events
            .iter()
            .filter(|e| e.record.rev > after && e.record.key.starts_with(prefix))
            .cloned()
            .collect();
        let gap = (after + 1 < first_held).then_some(first_held);
        let stream = WatchStream {
            prefix: prefix.to_string(),
            pending,
            source: Source::Hub(rx),
            last_rev: after,
        };
        (stream, gap)
    }
}

/// Why a watch stream ended.
#[derive(Debug, PartialEq)]
pub enum WatchEnd {
    /// The watcher fell too far behind and was cut off.
    Lagged,
    /// The store shut down, or its feed lost history it could not read again.
    Closed,
}

pub struct WatchStream {
    prefix: String,
    pending: VecDeque<Arc<Event>>,
    source: Source,
    last_rev: i64,
}

/// Where a stream's events come from.
enum Source {
    /// The store's fan-out of everything it commits or observes.
    Hub(broadcast::Receiver<Arc<Event>>),
    /// A feed of its own (etcd: a watch from a revision older than the ring), which ends
    /// the stream when it closes.
    Feed(mpsc::Receiver<Arc<Event>>),
}

impl WatchStream {
    /// A stream of the events `feed` sends, after revision `after`.
    pub(super) fn from_feed(
        prefix: &str,
        after: i64,
        feed: mpsc::Receiver<Arc<Event>>,
    ) -> WatchStream {
        WatchStream {
            prefix: prefix.to_string(),
            pending: VecDeque::new(),
            source: Source::Feed(feed),
            last_rev: after,
        }
    }

    pub(super) fn with_history(mut self, history: Vec<Arc<Event>>) -> WatchStream {
        for ev in history.into_iter().rev() {
            self.pending.push_front(ev);
        }
        self
    }

    /// The next event under the prefix, in revision order.
    pub async fn next(&mut self) -> Result<Arc<Event>, WatchEnd> {
        loop {
            let ev = match self.pending.pop_front() {
                Some(ev) => ev,
                None => match &mut self.source {
                    Source::Hub(rx) => match rx.recv().await {
                        Ok(ev) => ev,
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            return Err(WatchEnd::Lagged);
                        }
                        Err(broadcast::error::RecvError::Closed) => return Err(WatchEnd::Closed),
                    },
                    Source::Feed(rx) => rx.recv().await.ok_or(WatchEnd::Closed)?,
                },
            };
            if ev.record.rev <= self.last_rev || !ev.record.key.starts_with(&self.prefix) {
                continue;
            }
            self.last_rev = ev.record.rev;
            return Ok(ev);
        }
    }
}
