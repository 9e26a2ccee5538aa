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
    Ok(conn.query_row("SELECT COALESCE(MAX(rev), 0) FROM log", [], |r| r.get(0))?)
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
