//! Online copies of the database (for `kinglet backup` and scheduled snapshots) and the check
//! a restored copy passes before a server starts on it.

use std::path::Path;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};

/// Writes a consistent copy of the database at `db` to `out` (which must not exist), from a
/// connection of its own: a running server's writer is never blocked (WAL readers do not
/// block writers) and the copy holds exactly the commits before its read transaction began.
/// Returns the copy's newest revision.
pub fn copy_database(db: &Path, out: &Path) -> anyhow::Result<i64> {
    // Never create a database where there was none.
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening the datastore {}", db.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    let out_str = out
        .to_str()
        .with_context(|| format!("{} is not UTF-8", out.display()))?;
    // VACUUM INTO reads in one transaction, so the copy is one revision of the log, and
    // leaves out free pages; SQLite does not fsync its output (the archive is synced).
    conn.execute("VACUUM INTO ?1", [out_str])
        .with_context(|| format!("copying the datastore to {}", out.display()))?;
    newest_revision(out)
}

/// Checks that `db` is an intact kinglet datastore (for a restore, whose archive may be
/// damaged or hostile) and returns its newest revision.
pub fn check_database(db: &Path) -> anyhow::Result<i64> {
    newest_revision(db)
}

/// How far a restore moves the revision on: further than the old cluster can have gone past
/// its snapshot, so no revision a client saw is reused for another write.
pub const RESTORE_REVISION_STEP: i64 = 1_000_000;

/// Moves a restored database's revision [`RESTORE_REVISION_STEP`] past its newest, and marks
/// everything before as compacted, as etcd's restore does (`--bump-revision`,
/// `--mark-compacted`): informers and agents that saw revisions newer than the snapshot get
/// `410 Gone` on their next watch and relist, rather than missing the writes that reuse
/// those numbers. Objects keep their own revisions. Returns the new revision.
pub fn move_revision_on(db: &Path) -> anyhow::Result<i64> {
    let newest = check_database(db)?;
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", db.display()))?;
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    let floor = newest
        .checked_add(RESTORE_REVISION_STEP)
        .context("the datastore's revision is out of range")?;
    conn.execute(
        "INSERT INTO meta (name, value) VALUES (?1, ?2), ('compacted', ?2)
         ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        rusqlite::params![crate::sqlite::REVISION_FLOOR, floor],
    )
    .with_context(|| format!("moving the revision of {} on", db.display()))?;
    Ok(floor)
}

fn newest_revision(db: &Path) -> anyhow::Result<i64> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", db.display()))?;
    // A crafted file must not reach the schema through triggers, views or the like.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .with_context(|| format!("{} is not an SQLite database", db.display()))?;
    anyhow::ensure!(check == "ok", "{} is damaged: {check}", db.display());
    let tables: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('log', 'meta')",
        [],
        |r| r.get(0),
    )?;
    anyhow::ensure!(
        tables == 2,
        "{} is not a kinglet datastore (no log and meta tables)",
        db.display()
    );
    // Kinglet makes none; a crafted file's would run on the server's writes.
    let triggers: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger'",
        [],
        |r| r.get(0),
    )?;
    anyhow::ensure!(triggers == 0, "{} holds triggers", db.display());
    Ok(crate::sqlite::newest_rev(&conn)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn a_copy_holds_every_commit_and_keeps_the_revision() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let store = crate::Store::open(&db).unwrap();
        store.create("/a", Bytes::from_static(b"1")).await.unwrap();
        let rev = store
            .update("/a", None, Bytes::from_static(b"2"))
            .await
            .unwrap();
        // The server still runs: the copy comes from a connection of its own.
        let out = dir.path().join("copy.db");
        assert_eq!(copy_database(&db, &out).unwrap(), rev);
        assert_eq!(check_database(&out).unwrap(), rev);
        let copy = crate::Store::open(&out).unwrap();
        assert_eq!(copy.current_rev(), rev);
        let got = copy.get("/a").await.unwrap().unwrap();
        assert_eq!((got.rev, &got.value[..]), (rev, &b"2"[..]));
        // The next write carries the revision on.
        assert_eq!(
            copy.create("/b", Bytes::from_static(b"3")).await.unwrap(),
            rev + 1
        );
    }

    #[tokio::test]
    async fn a_restored_copy_moves_its_revision_on_and_expires_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let store = crate::Store::open(&db).unwrap();
        let rev = store.create("/a", Bytes::from_static(b"1")).await.unwrap();
        let out = dir.path().join("copy.db");
        copy_database(&db, &out).unwrap();
        let floor = move_revision_on(&out).unwrap();
        assert_eq!(floor, rev + RESTORE_REVISION_STEP);
        // A backup of the restored copy before any write still says where it stands.
        assert_eq!(check_database(&out).unwrap(), floor);
        let copy = crate::Store::open(&out).unwrap();
        assert_eq!((copy.current_rev(), copy.compacted_rev()), (floor, floor));
        assert_eq!(copy.get("/a").await.unwrap().unwrap().rev, rev);
        assert!(matches!(
            copy.watch("/", rev).await,
            Err(crate::StoreError::Compacted { .. })
        ));
        let mut w = copy.watch("/", floor).await.unwrap();
        assert_eq!(
            copy.create("/b", Bytes::from_static(b"2")).await.unwrap(),
            floor + 1
        );
        assert_eq!(w.next().await.unwrap().record.rev, floor + 1);
        assert_eq!(copy.list("/", 0, None, None).await.unwrap().items.len(), 2);
    }

    #[test]
    fn a_missing_database_is_not_created_and_junk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.db");
        assert!(copy_database(&missing, &dir.path().join("out.db")).is_err());
        assert!(!missing.exists());
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, b"not a database at all, just some bytes").unwrap();
        assert!(check_database(&junk).is_err());
        let other = dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let e = check_database(&other).unwrap_err().to_string();
        assert!(e.contains("not a kinglet datastore"), "{e}");
    }
}
