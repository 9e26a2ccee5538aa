//! Behaviour tests run against both backends (SQLite, and a real etcd the test starts), then
//! the SQLite backend's own (disk space, file format).

use std::sync::Arc;

use rusqlite::Connection;

use super::*;
use crate::Backend as Backend_;

mod etcd_server;
use etcd_server::EtcdServer;

/// A store under test, with what keeps it alive.
struct Backend {
    store: Store,
    dir: tempfile::TempDir,
    etcd: Option<Arc<EtcdServer>>,
    ring: usize,
}

impl Backend {
    fn sqlite(ring: usize) -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_ring(&dir.path().join("state.db"), ring).unwrap();
        Backend {
            store,
            dir,
            etcd: None,
            ring,
        }
    }

    async fn etcd(ring: usize) -> Backend {
        let etcd = Arc::new(EtcdServer::start().await);
        let store = connect_etcd(&etcd, ring).await;
        Backend {
            store,
            dir: tempfile::tempdir().unwrap(),
            etcd: Some(etcd),
            ring,
        }
    }

    /// Another handle on the same data: SQLite reopened after this one is dropped, or a second
    /// server's connection to the same etcd.
    async fn reopen(self) -> Backend {
        let Backend {
            store,
            dir,
            etcd,
            ring,
        } = self;
        drop(store);
        let store = match &etcd {
            None => Store::open_with_ring(&dir.path().join("state.db"), ring).unwrap(),
            Some(etcd) => connect_etcd(etcd, ring).await,
        };
        Backend {
            store,
            dir,
            etcd,
            ring,
        }
    }
}

impl Backend {
    /// The etcd member, for a test that restarts it (no other handle may hold it then).
    fn etcd_mut(&mut self) -> &mut EtcdServer {
        Arc::get_mut(self.etcd.as_mut().expect("an etcd backend"))
            .expect("the only holder of the etcd member")
    }
}

async fn connect_etcd(etcd: &EtcdServer, ring: usize) -> Store {
    let ds = Datastore {
        endpoint: Some(etcd.url.clone()),
        ..Default::default()
    };
    Store::connect_with_ring(&ds, Path::new("unused.db"), ring)
        .await
        .unwrap()
}

/// Waits until the watch fan-out has published every write this handle made (on etcd it is
/// fed by etcd's watch, a moment behind the writes).
async fn settle(s: &Store) {
    for _ in 0..3000 {
        if s.fan_out_caught_up() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the watch fan-out never caught up with the writes");
}

/// Takes the shared watch off etcd and waits until its stream is closed.
async fn pause_feed_and_wait(s: &Store) {
    s.etcd().pause_feed(true);
    for _ in 0..3000 {
        if !s.etcd().feed_connected() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!s.etcd().feed_connected());
}

/// Runs a behaviour test against SQLite and against etcd, with a watch ring of `$ring`.
macro_rules! both {
    ($name:ident, $ring:expr) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Backend::sqlite($ring)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                super::$name(super::Backend::etcd($ring).await).await;
            }
        }
    };
}

fn b(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

both!(create_update_delete_with_revisions, 100);
async fn create_update_delete_with_revisions(t: Backend) {
    let s = &t.store;
    let r1 = s.create("/a/x", b("1")).await.unwrap();
    assert_eq!(
        s.create("/a/x", b("2")).await,
        Err(StoreError::AlreadyExists)
    );
    let r2 = s.update("/a/x", Some(r1), b("2")).await.unwrap();
    assert!(r2 > r1);
    assert_eq!(
        s.update("/a/x", Some(r1), b("3")).await,
        Err(StoreError::Conflict(r2))
    );
    assert_eq!(
        s.delete("/a/x", Some(r1)).await.unwrap_err(),
        StoreError::Conflict(r2)
    );
    let got = s.get("/a/x").await.unwrap().unwrap();
    assert_eq!(
        (got.key.as_str(), got.rev, got.create_rev, &got.value[..]),
        ("/a/x", r2, r1, &b"2"[..])
    );
    let (r3, last) = s.delete("/a/x", Some(r2)).await.unwrap();
    assert!(r3 > r2);
    assert_eq!(
        (
            last.key.as_str(),
            last.rev,
            last.create_rev,
            &last.value[..]
        ),
        ("/a/x", r3, r1, &b"2"[..])
    );
    assert!(s.get("/a/x").await.unwrap().is_none());
    assert_eq!(
        s.delete("/a/x", None).await.unwrap_err(),
        StoreError::NotFound
    );
    // A missing key is NotFound for any update, conditional or not.
    assert_eq!(
        s.update("/a/x", None, b("4")).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        s.update("/a/x", Some(r2), b("4")).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        s.update("/a/x", Some(0), b("4")).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        s.update_towards_deletion("/a/x", None, b("4")).await,
        Err(StoreError::NotFound)
    );
    // Re-create after delete starts a new lifetime.
    let r4 = s.create("/a/x", b("5")).await.unwrap();
    assert_eq!(s.get("/a/x").await.unwrap().unwrap().create_rev, r4);
    let r5 = s
        .update_towards_deletion("/a/x", Some(r4), b("6"))
        .await
        .unwrap();
    assert!(r5 > r4);
    assert_eq!(s.current_rev(), r5);
    assert_eq!(s.latest_rev().await.unwrap(), r5);
}

both!(list_pages_and_history, 100);
async fn list_pages_and_history(t: Backend) {
    let s = &t.store;
    for i in 0..10 {
        s.create(&format!("/p/ns/{i:02}"), b("v")).await.unwrap();
    }
    s.create("/p/nsx/00", b("other prefix")).await.unwrap();
    let at = s.current_rev();
    s.delete("/p/ns/03", None).await.unwrap();
    let page = s.list("/p/ns/", 0, None, Some(4)).await.unwrap();
    assert_eq!(
        page.items
            .iter()
            .map(|r| r.key.as_str())
            .collect::<Vec<_>>(),
        ["/p/ns/00", "/p/ns/01", "/p/ns/02", "/p/ns/04"]
    );
    assert_eq!(page.rev, s.current_rev());
    assert!(page.more);
    assert_eq!(page.remaining, 5);
    // The next page, read at the first page's revision even after more writes.
    s.create("/p/ns/99", b("later")).await.unwrap();
    let next = s
        .list("/p/ns/", page.rev, Some(page.items[3].key.clone()), Some(3))
        .await
        .unwrap();
    assert_eq!(next.items.len(), 3);
    assert_eq!(next.items[0].key, "/p/ns/05");
    assert!(next.more);
    assert_eq!(next.remaining, 2);
    let last = s
        .list(
            "/p/ns/",
            page.rev,
            Some(next.items[2].key.clone()),
            Some(100),
        )
        .await
        .unwrap();
    assert_eq!(last.items.len(), 2);
    assert!(!last.more);
    assert_eq!(last.remaining, 0);
    // A list at an older revision still sees the deleted key.
    let old = s.list("/p/ns/", at, None, None).await.unwrap();
    assert_eq!(old.items.len(), 10);
    assert_eq!(s.count("/p/ns/").await.unwrap(), 10);
    assert_eq!(s.count("/p/").await.unwrap(), 11);
}

both!(watch_from_ring_and_from_history_then_live, 2);
async fn watch_from_ring_and_from_history_then_live(t: Backend) {
    // A ring of 2 forces catch-up reads from the log (SQLite) or etcd's history.
    let s = &t.store;
    let start = s.current_rev();
    let r1 = s.create("/w/a", b("1")).await.unwrap();
    s.update("/w/a", None, b("2")).await.unwrap();
    s.create("/other/b", b("x")).await.unwrap();
    s.delete("/w/a", None).await.unwrap();
    settle(s).await;
    let mut w = s.watch("/w/", start).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = w.next().await.unwrap();
        seen.push((e.typ, e.record.value.clone(), e.prev.clone()));
    }
    assert_eq!(
        seen,
        vec![
            (EventType::Added, b("1"), None),
            (EventType::Modified, b("2"), Some(b("1"))),
            (EventType::Deleted, b("2"), Some(b("2")))
        ]
    );
    let live = s.create("/w/c", b("3")).await.unwrap();
    let ev = w.next().await.unwrap();
    assert_eq!((ev.typ, ev.record.rev), (EventType::Added, live));
    // Watching from r1 yields only later events.
    let mut w2 = s.watch("/w/", r1).await.unwrap();
    assert_eq!(w2.next().await.unwrap().typ, EventType::Modified);
}

both!(a_watch_resumes_from_the_ring, 100);
async fn a_watch_resumes_from_the_ring(t: Backend) {
    let s = &t.store;
    let r1 = s.create("/r/a", b("1")).await.unwrap();
    let r2 = s.update("/r/a", Some(r1), b("2")).await.unwrap();
    settle(s).await;
    // A client that saw r1 resumes there: it gets r2 and what follows, once each.
    let mut w = s.watch("/r/", r1).await.unwrap();
    let ev = w.next().await.unwrap();
    assert_eq!(
        (ev.typ, ev.record.rev, ev.prev.clone()),
        (EventType::Modified, r2, Some(b("1")))
    );
    let (r3, _) = s.delete("/r/a", Some(r2)).await.unwrap();
    let ev = w.next().await.unwrap();
    assert_eq!(
        (
            ev.typ,
            ev.record.rev,
            ev.record.create_rev,
            &ev.record.value[..]
        ),
        (EventType::Deleted, r3, r1, &b"2"[..])
    );
}

both!(compaction_expires_old_revisions_but_keeps_latest_state, 1);
async fn compaction_expires_old_revisions_but_keeps_latest_state(t: Backend) {
    let s = &t.store;
    let r1 = s.create("/c/a", b("1")).await.unwrap();
    s.update("/c/a", None, b("2")).await.unwrap();
    s.create("/c/b", b("1")).await.unwrap();
    s.delete("/c/b", None).await.unwrap();
    let top = s.current_rev();
    // etcd cancels a watch still catching up on history it compacts (its watchers catch up
    // in a loop every 100 ms), and the store then ends every open watch, as it should: the
    // shared watch must have passed `top` first for the watch from `top` below to go on.
    settle(s).await;
    s.compact(top).await.unwrap();
    assert_eq!(s.compacted_rev(), top);
    assert!(matches!(
        s.watch("/c/", r1).await,
        Err(StoreError::Compacted { .. })
    ));
    assert!(matches!(
        s.list("/c/", r1, None, None).await,
        Err(StoreError::Compacted { .. })
    ));
    let page = s.list("/c/", 0, None, None).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(&page.items[0].value[..], b"2");
    let mut w = s.watch("/c/", top).await.unwrap();
    let next = s.create("/c/d", b("3")).await.unwrap();
    assert_eq!(w.next().await.unwrap().record.rev, next);
}

both!(
    concurrent_writers_get_unique_increasing_revisions_and_survive_reopen,
    100
);
async fn concurrent_writers_get_unique_increasing_revisions_and_survive_reopen(t: Backend) {
    let s = t.store.clone();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..50 {
                let key = format!("/k/{t}/{i}");
                revs.push(s.create(&key, b("v")).await.unwrap());
                // Conflicting updates on one shared key: exactly one of each racing pair wins or retries.
                loop {
                    let cur = s.get("/k/shared").await.unwrap();
                    let res = match cur {
                        None => s.create("/k/shared", b("0")).await.map(|_| ()),
                        Some(r) => s.update("/k/shared", Some(r.rev), b("n")).await.map(|_| ()),
                    };
                    match res {
                        Ok(()) => break,
                        Err(StoreError::Conflict(_) | StoreError::AlreadyExists) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            revs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let revs = t.await.unwrap();
        assert!(revs.windows(2).all(|w| w[0] < w[1]));
        all.extend(revs);
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 800);
    let top = s.current_rev();
    drop(s);
    let t = t.reopen().await;
    assert_eq!(t.store.current_rev(), top);
    assert_eq!(t.store.count("/k/").await.unwrap(), 801);
}

both!(deleted_events_carry_the_last_state_until_compacted, 1);
async fn deleted_events_carry_the_last_state_until_compacted(t: Backend) {
    // A ring of 1: watches from the past read the log (or etcd's history).
    let s = &t.store;
    let big = Bytes::from(vec![b'x'; 100_000]);
    let start = s.current_rev();
    s.create("/t/a", b("1")).await.unwrap();
    s.update("/t/a", None, big.clone()).await.unwrap();
    s.create("/t/b", b("filler")).await.unwrap();
    let (del, last) = s.delete("/t/a", None).await.unwrap();
    assert_eq!(last.value, big);
    settle(s).await;
    if t.etcd.is_none() {
        assert_eq!(
            raw_value_len(&t.dir, del),
            0,
            "the tombstone stores no value"
        );
    }
    let deleted_event = |start| {
        let s = s.clone();
        async move {
            let mut w = s.watch("/t/a", start).await?;
            loop {
                let ev = w.next().await.unwrap();
                if ev.typ == EventType::Deleted {
                    return Ok::<_, StoreError>(ev);
                }
            }
        }
    };
    let ev = deleted_event(start).await.unwrap();
    assert_eq!((ev.record.rev, &ev.record.value), (del, &big));
    assert_eq!(ev.prev.as_ref(), Some(&big));
    // Compaction below the delete keeps the state it ended.
    s.compact(del - 1).await.unwrap();
    let ev = deleted_event(del - 1).await.unwrap();
    assert_eq!(ev.record.value, big);
    // Past it, a watch from before is expired, and the key is gone.
    s.compact(del).await.unwrap();
    assert!(matches!(
        deleted_event(del - 1).await,
        Err(StoreError::Compacted { .. })
    ));
    assert!(s.get("/t/a").await.unwrap().is_none());
    if t.etcd.is_none() {
        let c = Connection::open(t.dir.path().join("state.db")).unwrap();
        let rows: i64 = c
            .query_row("SELECT COUNT(*) FROM log WHERE key = '/t/a'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(rows, 0);
    }
}

/// The stored value of the row at `rev`, read straight from the database file.
fn raw_value_len(dir: &tempfile::TempDir, rev: i64) -> usize {
    let c = Connection::open(dir.path().join("state.db")).unwrap();
    c.query_row("SELECT length(value) FROM log WHERE rev = ?1", [rev], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap() as usize
}

// etcd only: several servers on one etcd, history etcd compacted behind a server's back, and
// the layout etcdctl sees.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_server_reaches_the_watches_of_another() {
    let a = Backend::etcd(100).await;
    let other = connect_etcd(a.etcd.as_ref().unwrap(), 100).await;
    assert!(a.store.is_shared() && other.is_shared());
    let from = a.store.current_rev();
    let mut w = a.store.watch("/registry/pods/", from).await.unwrap();
    let created = other
        .create("/registry/pods/default/p", b("p1"))
        .await
        .unwrap();
    let ev = w.next().await.unwrap();
    assert_eq!(
        (ev.typ, ev.record.key.as_str(), ev.record.rev),
        (EventType::Added, "/registry/pods/default/p", created)
    );
    // The first server's view moved on with it: a client may use that revision there.
    assert!(a.store.current_rev() >= created);
    let page = a
        .store
        .list("/registry/pods/", created, None, None)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    // Conflicts hold across servers.
    let updated = a
        .store
        .update("/registry/pods/default/p", Some(created), b("p2"))
        .await
        .unwrap();
    assert_eq!(
        other
            .update("/registry/pods/default/p", Some(created), b("p3"))
            .await,
        Err(StoreError::Conflict(updated))
    );
    let ev = w.next().await.unwrap();
    assert_eq!((ev.typ, ev.record.rev), (EventType::Modified, updated));
    assert_eq!(other.latest_rev().await.unwrap(), updated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_compacted_by_another_server_expires_watches_and_lists() {
    let a = Backend::etcd(1).await;
    let other = connect_etcd(a.etcd.as_ref().unwrap(), 1).await;
    let r1 = a.store.create("/x/a", b("1")).await.unwrap();
    a.store.create("/x/b", b("2")).await.unwrap();
    let top = a.store.update("/x/a", None, b("3")).await.unwrap();
    // Server B compacts; A learns it from etcd itself.
    other.compact(top).await.unwrap();
    settle(&a.store).await;
    match a.store.watch("/x/", r1).await {
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => {
            assert_eq!((requested, compacted), (r1, top));
        }
        other => panic!("expected Compacted, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(
        a.store.list("/x/", r1, None, None).await,
        Err(StoreError::Compacted { .. })
    ));
    assert_eq!(a.store.compacted_rev(), top);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_rev_stays_behind_events_not_yet_delivered() {
    let a = Backend::etcd(100).await;
    let start = a.store.current_rev();
    settle(&a.store).await;
    let mut all = a.store.watch("", a.store.published_rev()).await.unwrap();
    pause_feed_and_wait(&a.store).await;
    // The write's response moves `current_rev`; its event has not been delivered, so the
    // published revision (what a cache may claim to hold) must not move.
    let written = a.store.create("/p/a", b("1")).await.unwrap();
    assert!(written > start);
    assert_eq!(a.store.current_rev(), written);
    assert!(a.store.published_rev() < written);
    // Keys outside "/" (as etcd's compaction key) move revisions too: a watch of every key
    // sees them.
    let outside = a.store.create("p-outside", b("2")).await.unwrap();
    assert!(a.store.published_rev() < written);
    a.store.etcd().pause_feed(false);
    let ev = all.next().await.unwrap();
    assert_eq!((ev.record.key.as_str(), ev.record.rev), ("/p/a", written));
    let ev = all.next().await.unwrap();
    assert_eq!(
        (ev.record.key.as_str(), ev.record.rev),
        ("p-outside", outside)
    );
    assert!(a.store.published_rev() >= outside);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_compacted_while_the_shared_watch_was_away_ends_open_watches() {
    let a = Backend::etcd(100).await;
    let other = connect_etcd(a.etcd.as_ref().unwrap(), 100).await;
    let r1 = a.store.create("/e/a", b("1")).await.unwrap();
    settle(&a.store).await;
    let mut open = a.store.watch("/e/", r1).await.unwrap();
    // The first server's watch of etcd breaks; meanwhile another server writes and compacts.
    pause_feed_and_wait(&a.store).await;
    let missed = other.update("/e/a", None, b("2")).await.unwrap();
    let top = other.create("/e/b", b("3")).await.unwrap();
    other.compact(top).await.unwrap();
    a.store.etcd().pause_feed(false);
    // The events in between are gone: the open watch ends rather than skip them, and a
    // re-watch from where it stood is expired (410: the client relists).
    assert!(open.next().await.is_err());
    assert!(matches!(
        a.store.watch("/e/", r1).await,
        Err(StoreError::Compacted { .. })
    ));
    assert!(a.store.compacted_rev() >= top && missed < top);
    // After the relist, watching from now works again.
    let page = a.store.list("/e/", 0, None, None).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let mut w = a.store.watch("/e/", page.rev).await.unwrap();
    let later = other.create("/e/c", b("4")).await.unwrap();
    assert_eq!(w.next().await.unwrap().record.rev, later);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_watch_resumes_where_it_broke_off() {
    let mut a = Backend::etcd(100).await;
    let other = connect_etcd(a.etcd.as_ref().unwrap(), 100).await;
    let from = a.store.current_rev();
    let mut w = a.store.watch("/s/", from).await.unwrap();
    let r1 = other.create("/s/a", b("1")).await.unwrap();
    assert_eq!(w.next().await.unwrap().record.rev, r1);
    // Writes while this server's watch of etcd is away arrive once it is back, in order.
    pause_feed_and_wait(&a.store).await;
    let r2 = other.update("/s/a", Some(r1), b("2")).await.unwrap();
    let (r3, _) = other.delete("/s/a", Some(r2)).await.unwrap();
    a.store.etcd().pause_feed(false);
    let ev = w.next().await.unwrap();
    assert_eq!(
        (ev.typ, ev.record.rev, ev.prev.clone()),
        (EventType::Modified, r2, Some(b("1")))
    );
    let ev = w.next().await.unwrap();
    assert_eq!(
        (ev.typ, ev.record.rev, &ev.record.value[..]),
        (EventType::Deleted, r3, &b"2"[..])
    );
    // etcd itself goes down and comes back (SIGKILL): the stream breaks and resumes.
    a.etcd_mut().restart().await;
    let r4 = other.create("/s/b", b("3")).await.unwrap();
    let ev = w.next().await.unwrap();
    assert_eq!((ev.typ, ev.record.rev), (EventType::Added, r4));
    // Acknowledged writes survived the kill.
    assert_eq!(a.store.get("/s/b").await.unwrap().unwrap().rev, r4);
}

/// Waits until `more` writes beyond those acknowledged now are acknowledged.
async fn writes_go_on(acked: &std::sync::Mutex<Vec<(String, i64)>>, more: usize) {
    let start = acked.lock().unwrap().len();
    for _ in 0..6000 {
        if acked.lock().unwrap().len() >= start + more {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("writes stopped");
}

/// Members of a three-member cluster are killed one at a time (the one this server uses,
/// three times over, then the leader) while writers run and a watch is open: writes go on
/// on the other members, the watch resumes there without losing an event, every
/// acknowledged write is there at the end, and members that come back are used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_etcd_member_is_failed_over() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    const WRITERS: usize = 3;
    let mut cluster = etcd_server::EtcdCluster::start(3).await;
    let ds = Datastore {
        endpoint: Some(cluster.urls().join(",")),
        ..Default::default()
    };
    let s = Store::connect(&ds, Path::new("unused.db")).await.unwrap();
    let mut w = s.watch("/ha/", s.current_rev()).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::<(String, i64)>::new()));
    let watcher = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                let ev = w
                    .next()
                    .await
                    .map_err(|e| format!("the watch ended: {e:?}"))?;
                assert_eq!(ev.typ, EventType::Added);
                seen.lock()
                    .unwrap()
                    .push((ev.record.key.clone(), ev.record.rev));
            }
            #[allow(unreachable_code)]
            Ok::<(), String>(())
        })
    };
    let acked = Arc::new(Mutex::new(Vec::<(String, i64)>::new()));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let (s, acked, failed, stop) = (s.clone(), acked.clone(), failed.clone(), stop.clone());
        writers.spawn(async move {
            for n in 0.. {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let key = format!("/ha/{writer}-{n}");
                match s.create(&key, b(&key)).await {
                    Ok(rev) => acked.lock().unwrap().push((key, rev)),
                    Err(e) => failed.lock().unwrap().push(e.to_string()),
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
    }
    writes_go_on(&acked, 20).await;
    let (mut victims, mut used_after) = (Vec::new(), Vec::new());
    for round in 0..4 {
        let victim = if round < 3 {
            s.etcd().pinned_member()
        } else {
            cluster.leader().await
        };
        cluster.kill(&victim);
        writes_go_on(&acked, 50).await;
        // Reads go on too.
        let key = acked.lock().unwrap().last().unwrap().0.clone();
        assert!(s.get(&key).await.unwrap().is_some());
        victims.push(victim.clone());
        used_after.push(s.etcd().pinned_member());
        cluster.revive(&victim).await;
        writes_go_on(&acked, 20).await;
    }
    // A member killed in one round served in a later one.
    assert!(
        (1..3).any(|n| victims[..n].contains(&used_after[n])),
        "killed {victims:?}, then used {used_after:?}"
    );
    stop.store(true, Ordering::Release);
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    // A write fails only when its outcome is unknown: its member died with it in flight, or
    // (the leader killed) a member still following the dead leader timed it out. That is at
    // most two per writer per kill; a write that never reached etcd went to another member.
    let failed = failed.lock().unwrap().clone();
    assert!(failed.len() <= 2 * WRITERS * victims.len(), "{failed:?}");
    for e in &failed {
        assert!(e.contains("outcome unknown"), "{e}");
    }
    let acked = acked.lock().unwrap().clone();
    for (key, rev) in &acked {
        assert_eq!(
            s.get(key).await.unwrap().map(|r| r.rev),
            Some(*rev),
            "{key}"
        );
    }
    // The watch delivered every write etcd holds (acknowledged or not), once each, in order.
    let page = s.list("/ha/", 0, None, None).await.unwrap();
    assert!(page.items.len() >= acked.len());
    let newest = page.items.iter().map(|r| r.rev).max().unwrap();
    for _ in 0..3000 {
        if seen.lock().unwrap().last().is_some_and(|l| l.1 >= newest) || watcher.is_finished() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!watcher.is_finished(), "{:?}", watcher.await);
    let seen = seen.lock().unwrap().clone();
    assert!(seen.windows(2).all(|p| p[0].1 < p[1].1));
    let mut stored: Vec<(String, i64)> =
        page.items.iter().map(|r| (r.key.clone(), r.rev)).collect();
    stored.sort_by_key(|r| r.1);
    assert_eq!(seen, stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_the_servers_compacts_each_interval() {
    let a = Backend::etcd(100).await;
    let other = connect_etcd(a.etcd.as_ref().unwrap(), 100).await;
    let first = a.store.create("/y/a", b("1")).await.unwrap();
    a.store.update("/y/a", None, b("2")).await.unwrap();
    let mut kv = etcd_client::Client::connect([a.etcd.as_ref().unwrap().url.as_str()], None)
        .await
        .unwrap();
    let interval = std::time::Duration::from_millis(200);
    a.store.spawn_compactor(interval);
    other.spawn_compactor(interval);
    // Each interval compacts to the revision read the interval before, so history written
    // before the compactors started goes within a few intervals, on both servers' view.
    for _ in 0..600 {
        if a.store.compacted_rev() > first && other.compacted_rev() > first {
            break;
        }
        a.store.update("/y/a", None, b("n")).await.unwrap();
        tokio::time::sleep(interval / 4).await;
    }
    assert!(a.store.compacted_rev() > first && other.compacted_rev() > first);
    assert!(matches!(
        other.watch("/y/", first).await,
        Err(StoreError::Compacted { .. })
    ));
    // etcd itself compacted (the servers learn of a compaction from the election key, before
    // the compaction is done).
    let mut refused = String::new();
    for _ in 0..50 {
        match kv
            .get(
                "/y/a",
                Some(etcd_client::GetOptions::new().with_revision(first)),
            )
            .await
        {
            Err(e) => {
                refused = e.to_string();
                if refused.contains("compacted") {
                    break;
                }
            }
            Ok(_) => refused.clear(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(refused.contains("compacted"), "{refused:?}");
    // The election is upstream's key, so kinglet and upstream apiservers on one etcd agree.
    let got = kv.get("compact_rev_key", None).await.unwrap();
    let key = got.kvs().first().expect("the compaction key");
    assert!(key.version() >= 1);
    assert_eq!(&a.store.get("/y/a").await.unwrap().unwrap().value[..], b"n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_sees_the_keys_as_stored() {
    let t = Backend::etcd(100).await;
    let etcd = t.etcd.as_ref().unwrap();
    let rev = t
        .store
        .create(
            "/registry/configmaps/default/cm",
            b("{\"kind\":\"ConfigMap\"}"),
        )
        .await
        .unwrap();
    let etcdctl = if Path::new("/usr/bin/etcdctl").is_file() {
        "/usr/bin/etcdctl"
    } else {
        "etcdctl"
    };
    let out = std::process::Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.url,
            "get",
            "--prefix",
            "/registry",
            "-w",
            "json",
        ])
        .output()
        .expect("etcdctl (Debian's etcd-client package) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8_lossy(&out.stdout);
    // etcdctl's JSON carries keys and values in base64 and the revisions as numbers.
    let key = data_encoding::BASE64.encode(b"/registry/configmaps/default/cm");
    assert!(json.contains(&key), "{json}");
    assert!(json.contains(&format!("\"mod_revision\":{rev}")), "{json}");
    let plain = std::process::Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.url,
            "get",
            "--prefix",
            "/registry",
            "--print-value-only",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout).trim(),
        "{\"kind\":\"ConfigMap\"}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_over_tls_takes_the_datastore_files() {
    let files = tempfile::tempdir().unwrap();
    let tls = etcd_server::Tls::generate(files.path());
    let etcd = EtcdServer::start_with(Some(&tls)).await;
    let mut ds = Datastore {
        endpoint: Some(etcd.url.clone()),
        ca_file: Some(tls.ca.clone()),
        cert_file: Some(tls.client_cert.clone()),
        key_file: Some(tls.client_key.clone()),
    };
    let s = Store::connect(&ds, Path::new("unused.db")).await.unwrap();
    let from = s.current_rev();
    let mut w = s.watch("/registry/", from).await.unwrap();
    let rev = s.create("/registry/secrets/ns/s", b("x")).await.unwrap();
    assert_eq!(w.next().await.unwrap().record.rev, rev);
    // The size comes from the member's status, read in the background.
    for _ in 0..3000 {
        if s.db_size() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(s.db_size() > 0);
    // Without a client certificate etcd refuses: a clear error, not a hang or a panic.
    ds.cert_file = None;
    ds.key_file = None;
    let refused = match Store::connect(&ds, Path::new("unused.db")).await {
        Ok(_) => panic!("etcd took a client without a certificate"),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains(&etcd.url), "{refused}");
    // Half a client identity is a usage error.
    ds.cert_file = Some(tls.client_cert.clone());
    let half = Store::connect(&ds, Path::new("unused.db"))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(half.contains("go together"), "{half}");
}

#[test]
fn datastore_endpoints_name_their_backend() {
    let ds = |e: &str| Datastore {
        endpoint: Some(e.into()),
        ..Default::default()
    };
    let default = Path::new("/d/state.db");
    assert_eq!(
        Datastore::default().backend(default).unwrap(),
        Backend_::Sqlite(default.into())
    );
    assert_eq!(
        ds("sqlite://").backend(default).unwrap(),
        Backend_::Sqlite(default.into())
    );
    assert_eq!(
        ds("sqlite:///var/x.db?_journal=WAL")
            .backend(default)
            .unwrap(),
        Backend_::Sqlite("/var/x.db".into())
    );
    assert_eq!(
        ds("https://a:2379, https://b:2379")
            .backend(default)
            .unwrap(),
        Backend_::Etcd(vec!["https://a:2379".into(), "https://b:2379".into()])
    );
    assert_eq!(
        ds("http://a:2379").backend(default).unwrap(),
        Backend_::Etcd(vec!["http://a:2379".into()])
    );
    for bad in ["mysql://u@tcp(h)/db", "a:2379", "https://", ","] {
        assert!(ds(bad).backend(default).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn an_unreachable_etcd_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ds = Datastore {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..Default::default()
    };
    let e = match Store::connect(&ds, Path::new("unused.db")).await {
        Ok(_) => panic!("connected to nothing"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
}

// SQLite only: disk space and the file format.

fn open(dir: &tempfile::TempDir, ring: usize) -> Store {
    Store::open_with_ring(&dir.path().join("state.db"), ring).unwrap()
}

/// Fills the database with a burst of creates and deletes beside `live_count` objects that
/// stay, compacts, and waits until the file is back within twice its live data, with
/// `readers` tasks reading all the while (as a serving API server does).
async fn a_burst_is_given_back_after_compaction(readers: usize) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 100);
    let db = dir.path().join("state.db");
    // Many writers at once, so the writer commits them in batches.
    let write_all = |keys: Vec<String>, value: Option<Bytes>| {
        let s = s.clone();
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for chunk in keys.chunks(keys.len().div_ceil(32)) {
                let (s, chunk, value) = (s.clone(), chunk.to_vec(), value.clone());
                tasks.spawn(async move {
                    for key in chunk {
                        match &value {
                            Some(v) => s.create(&key, v.clone()).await.map(|_| ()),
                            None => s.delete(&key, None).await.map(|_| ()),
                        }
                        .unwrap();
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.unwrap();
            }
        }
    };
    let live_count = 500;
    let live = Bytes::from(vec![b'l'; 2_000]);
    write_all(
        (0..live_count).map(|i| format!("/v/live/{i:03}")).collect(),
        Some(live.clone()),
    )
    .await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut reading = tokio::task::JoinSet::new();
    for _ in 0..readers {
        let (s, stop) = (s.clone(), stop.clone());
        reading.spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert!(s.get("/v/live/001").await.unwrap().is_some());
                let page = s.list("/v/live/", 0, None, Some(10)).await.unwrap();
                assert_eq!(page.items.len(), 10);
            }
        });
    }
    let burst: Vec<String> = (0..5_000).map(|i| format!("/v/burst/{i}")).collect();
    write_all(burst.clone(), Some(Bytes::from(vec![b'v'; 4_000]))).await;
    write_all(burst, None).await;
    let file_len = || std::fs::metadata(&db).unwrap().len();
    let peak = file_len();
    assert!(peak > 20_000_000, "the burst filled the file: {peak}");
    s.compact(s.current_rev()).await.unwrap();
    let live_bytes = (live_count + 1) * live.len() as u64;
    s.create("/v/after", live.clone()).await.unwrap();
    // The writer gives the pages back a step at a time between writes.
    for _ in 0..3000 {
        if file_len() <= 2 * live_bytes {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let size = file_len();
    assert!(
        size <= 2 * live_bytes,
        "after compaction the file is {size} bytes for {live_bytes} bytes of live data (peak {peak})"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while let Some(done) = reading.join_next().await {
        done.unwrap();
    }
    assert_eq!(s.count("/v/").await.unwrap(), live_count as i64 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_gives_the_space_of_deleted_objects_back_to_the_file_system() {
    a_burst_is_given_back_after_compaction(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_gives_the_space_back_while_readers_keep_reading() {
    a_burst_is_given_back_after_compaction(4).await;
}

#[tokio::test]
async fn a_full_database_refuses_creates_but_deletes_free_space_without_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 1000);
    assert_eq!(
        std::fs::metadata(dir.path().join("state.db-reserve"))
            .unwrap()
            .len(),
        writer::RESERVE_BYTES
    );
    // SQLITE_FULL without filling the machine's disk: cap the database's size in pages.
    let page_count: i64 = Connection::open(dir.path().join("state.db"))
        .unwrap()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    s.exec_on_writer(&format!("PRAGMA max_page_count = {}", page_count + 100))
        .await
        .unwrap();
    let value = Bytes::from(vec![b'v'; 20_000]);
    let mut created = Vec::new();
    let err = loop {
        match s
            .create(&format!("/f/{}", created.len()), value.clone())
            .await
        {
            Ok(_) => created.push(format!("/f/{}", created.len())),
            Err(e) => break e,
        }
        assert!(created.len() < 1000, "the page cap never hit");
    };
    assert!(matches!(err, StoreError::NoSpace(_)), "{err}");
    assert!(created.len() > 3);
    // Full: reads work, updates that need room fail too, nothing half-written.
    let top = s.current_rev();
    assert_eq!(s.count("/f/").await.unwrap(), created.len() as i64);
    assert!(matches!(
        s.update(&created[0], None, value.clone()).await,
        Err(StoreError::NoSpace(_))
    ));
    assert_eq!(s.current_rev(), top);
    let mut w = s.watch("/f/", top).await.unwrap();
    // Deletes succeed on the full database, and their events carry the objects.
    for key in &created[..created.len() / 2] {
        s.delete(key, None).await.unwrap();
        let ev = w.next().await.unwrap();
        assert_eq!((ev.typ, &ev.record.value), (EventType::Deleted, &value));
    }
    // The space they held is reused, on the same connection: creates work again.
    s.create("/f/after", value.clone()).await.unwrap();
    assert_eq!(w.next().await.unwrap().typ, EventType::Added);
    assert!(s.get("/f/after").await.unwrap().is_some());
}

#[tokio::test]
async fn a_database_made_before_incremental_vacuum_is_converted_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE log (rev INTEGER PRIMARY KEY, key TEXT NOT NULL, create_rev INTEGER NOT NULL, prev_rev INTEGER NOT NULL, deleted INTEGER NOT NULL, value BLOB NOT NULL); INSERT INTO log VALUES (1, '/o/a', 1, 0, 0, x'31'), (2, '/o/a', 1, 1, 1, x'31');").unwrap();
    }
    let s = open(&dir, 10);
    let mode: i64 = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, 2);
    // An old tombstone (value inside) still yields its DELETED event.
    let mut w = s.watch("/o/", 0).await.unwrap();
    assert_eq!(w.next().await.unwrap().typ, EventType::Added);
    let ev = w.next().await.unwrap();
    assert_eq!(
        (ev.typ, &ev.record.value[..]),
        (EventType::Deleted, &b"1"[..])
    );
}

#[tokio::test]
async fn on_a_full_disk_updates_towards_deletion_run_but_other_updates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 1000);
    let held = s.create("/f/held", b("finalizers: a, b")).await.unwrap();
    let page_count: i64 = Connection::open(dir.path().join("state.db"))
        .unwrap()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    s.exec_on_writer(&format!("PRAGMA max_page_count = {}", page_count + 50))
        .await
        .unwrap();
    let value = Bytes::from(vec![b'v'; 20_000]);
    let mut n = 0;
    let err = loop {
        match s.create(&format!("/f/{n}"), value.clone()).await {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 1000, "the page cap never hit");
    };
    assert!(matches!(err, StoreError::NoSpace(_)), "{err}");
    // The reserve was released; no room to make it again (as on a really full disk), and
    // the room it gave (here: pages allowed again).
    let reserve = dir.path().join("state.db-reserve");
    assert!(!reserve.exists());
    std::fs::create_dir(&reserve).unwrap();
    s.exec_on_writer(&format!("PRAGMA max_page_count = {}", page_count + 100))
        .await
        .unwrap();
    assert!(matches!(
        s.update("/f/held", None, b("finalizers: a, b; more")).await,
        Err(StoreError::NoSpace(_))
    ));
    let mut w = s.watch("/f/", s.current_rev()).await.unwrap();
    let rev = s
        .update_towards_deletion("/f/held", Some(held), b("deleting; finalizers: b"))
        .await
        .unwrap();
    let ev = w.next().await.unwrap();
    assert_eq!((ev.typ, ev.record.rev), (EventType::Modified, rev));
    assert_eq!(
        &s.get("/f/held").await.unwrap().unwrap().value[..],
        b"deleting; finalizers: b"
    );
    // Still full for everything else; the conflict check still holds.
    assert!(matches!(
        s.create("/f/more", b("x")).await,
        Err(StoreError::NoSpace(_))
    ));
    assert!(matches!(
        s.update_towards_deletion("/f/held", Some(held), b("stale")).await,
        Err(StoreError::Conflict(r)) if r == rev
    ));
    s.delete("/f/held", Some(rev)).await.unwrap();
    assert_eq!(w.next().await.unwrap().typ, EventType::Deleted);
}
