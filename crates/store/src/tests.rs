use super::*;

fn open(dir: &tempfile::TempDir, ring: usize) -> Store {
    Store::open_with_ring(&dir.path().join("state.db"), ring).unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

#[tokio::test]
async fn create_update_delete_with_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 100);
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
    let got = s.get("/a/x").await.unwrap().unwrap();
    assert_eq!(
        (got.rev, got.create_rev, &got.value[..]),
        (r2, r1, &b"2"[..])
    );
    let (r3, last) = s.delete("/a/x", None).await.unwrap();
    assert!(r3 > r2);
    assert_eq!(&last.value[..], b"2");
    assert!(s.get("/a/x").await.unwrap().is_none());
    assert_eq!(
        s.delete("/a/x", None).await.unwrap_err(),
        StoreError::NotFound
    );
    assert_eq!(
        s.update("/a/x", None, b("4")).await,
        Err(StoreError::NotFound)
    );
    // Re-create after delete starts a new lifetime.
    let r4 = s.create("/a/x", b("5")).await.unwrap();
    assert_eq!(s.get("/a/x").await.unwrap().unwrap().create_rev, r4);
    assert_eq!(s.current_rev(), r4);
}

#[tokio::test]
async fn list_pages_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 100);
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
    assert!(page.more);
    assert_eq!(page.remaining, 5);
    let next = s
        .list(
            "/p/ns/",
            page.rev,
            Some(page.items[3].key.clone()),
            Some(100),
        )
        .await
        .unwrap();
    assert_eq!(next.items.len(), 5);
    assert!(!next.more);
    // A list at an older revision still sees the deleted key.
    let old = s.list("/p/ns/", at, None, None).await.unwrap();
    assert_eq!(old.items.len(), 10);
}

#[tokio::test]
async fn watch_from_ring_and_from_log_then_live() {
    let dir = tempfile::tempdir().unwrap();
    // A ring of 2 forces catch-up reads from the log.
    let s = open(&dir, 2);
    let start = s.current_rev();
    let r1 = s.create("/w/a", b("1")).await.unwrap();
    s.update("/w/a", None, b("2")).await.unwrap();
    s.create("/other/b", b("x")).await.unwrap();
    s.delete("/w/a", None).await.unwrap();
    let mut w = s.watch("/w/", start).await.unwrap();
    let types: Vec<_> = [
        w.next().await.unwrap(),
        w.next().await.unwrap(),
        w.next().await.unwrap(),
    ]
    .iter()
    .map(|e| (e.typ, e.record.value.clone()))
    .collect();
    assert_eq!(
        types,
        vec![
            (EventType::Added, b("1")),
            (EventType::Modified, b("2")),
            (EventType::Deleted, b("2"))
        ]
    );
    let live = s.create("/w/c", b("3")).await.unwrap();
    let ev = w.next().await.unwrap();
    assert_eq!((ev.typ, ev.record.rev), (EventType::Added, live));
    // Watching from r1 yields only later events.
    let mut w2 = s.watch("/w/", r1).await.unwrap();
    assert_eq!(w2.next().await.unwrap().typ, EventType::Modified);
}

#[tokio::test]
async fn compaction_expires_old_revisions_but_keeps_latest_state() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 1);
    let r1 = s.create("/c/a", b("1")).await.unwrap();
    s.update("/c/a", None, b("2")).await.unwrap();
    s.create("/c/b", b("1")).await.unwrap();
    s.delete("/c/b", None).await.unwrap();
    let top = s.current_rev();
    s.compact(top).await.unwrap();
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
    assert!(s.watch("/c/", top).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_get_unique_increasing_revisions_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 100);
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
    let s = open(&dir, 100);
    assert_eq!(s.current_rev(), top);
    assert_eq!(s.count("/k/").await.unwrap(), 801);
}

/// The stored value of the row at `rev`, read straight from the database file.
fn raw_value_len(dir: &tempfile::TempDir, rev: i64) -> usize {
    let c = Connection::open(dir.path().join("state.db")).unwrap();
    c.query_row("SELECT length(value) FROM log WHERE rev = ?1", [rev], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap() as usize
}

#[tokio::test]
async fn tombstones_hold_no_value_yet_deleted_events_carry_the_last_state() {
    let dir = tempfile::tempdir().unwrap();
    // A ring of 1: watches from the past read the log.
    let s = open(&dir, 1);
    let big = Bytes::from(vec![b'x'; 100_000]);
    let start = s.current_rev();
    s.create("/t/a", b("1")).await.unwrap();
    s.update("/t/a", None, big.clone()).await.unwrap();
    s.create("/t/b", b("filler")).await.unwrap();
    let (del, last) = s.delete("/t/a", None).await.unwrap();
    assert_eq!(last.value, big);
    assert_eq!(raw_value_len(&dir, del), 0, "the tombstone stores no value");
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
    // Compaction below the tombstone keeps the row it points at.
    s.compact(del - 1).await.unwrap();
    let ev = deleted_event(del - 1).await.unwrap();
    assert_eq!(ev.record.value, big);
    // Past it, both go: a watch from before is expired, the key is gone.
    s.compact(del).await.unwrap();
    assert!(matches!(
        deleted_event(del - 1).await,
        Err(StoreError::Compacted { .. })
    ));
    let c = Connection::open(dir.path().join("state.db")).unwrap();
    let rows: i64 = c
        .query_row("SELECT COUNT(*) FROM log WHERE key = '/t/a'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(rows, 0);
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
