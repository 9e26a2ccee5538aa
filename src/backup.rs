//! `kinglet backup`, scheduled snapshots (`kinglet server --snapshot-schedule`) and
//! `kinglet server --restore`.
//!
//! A snapshot is one gzip'd tar of everything a new machine needs to come back as the same
//! cluster: a consistent copy of the datastore (every object, its uid and resourceVersion,
//! bootstrap tokens and node passwords), the server token, and the PKI (CAs, their keys, the
//! service-account signing key), so that kubeconfigs, join tokens and ServiceAccount tokens
//! issued before keep working. It holds keys: written with mode 0600, atomically (a temporary
//! file renamed into place), and removed if anything fails part-way.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use sha2::Digest;

use crate::cli::BackupArgs;

/// What the archive calls its parts; restore accepts nothing else.
const MANIFEST: &str = "kinglet-snapshot.json";
const DB_ENTRY: &str = "server/db/state.db";
const TOKEN_ENTRY: &str = "server/token";
/// Directories whose plain files are copied whole: the PKI, and the secrets-encryption
/// configuration (`server/cred`, k3s's place for it) where there is one.
const FILE_DIRS: [&str; 2] = ["server/tls", "server/cred"];
const FORMAT: u64 = 1;

/// Bounds for an archive read back: it may come from anywhere.
const MAX_DB_BYTES: u64 = 8 << 30;
const MAX_FILE_BYTES: u64 = 1 << 20;
const MAX_ENTRIES: usize = 256;

/// Scheduled snapshots are named `kinglet-snapshot-<node>-<unix seconds>.tar.gz` and
/// `kinglet backup`'s `on-demand-<node>-<unix seconds>.tar.gz` (k3s's `etcd-snapshot-` and
/// `on-demand-`); retention only ever deletes the former, of its own node.
const SCHEDULED_PREFIX: &str = "kinglet-snapshot";
const ON_DEMAND_PREFIX: &str = "on-demand";
const SUFFIX: &str = ".tar.gz";

/// Free space a snapshot leaves on its file system at least, so that snapshots never take the
/// last of the disk from the datastore.
const SPARE_BYTES: u64 = 64 << 20;

/// `kinglet backup`.
pub fn run(args: &BackupArgs) -> anyhow::Result<()> {
    let dest = match &args.to {
        Some(p) => p.clone(),
        None => default_dir(&args.data_dir).join(snapshot_name(
            ON_DEMAND_PREFIX,
            &node_name(None),
            now_unix(),
        )),
    };
    let summary = write_snapshot(&args.data_dir, &dest)?;
    eprintln!(
        "kinglet: snapshot at revision {} written, {} bytes",
        summary.revision, summary.bytes
    );
    println!("{}", dest.display());
    Ok(())
}

/// Where snapshots go unless told otherwise.
pub fn default_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("server").join("db").join("snapshots")
}

pub struct Summary {
    pub revision: i64,
    pub bytes: u64,
}

/// Writes a snapshot of the server state under `data_dir` to `dest`, while the server runs
/// or not.
pub fn write_snapshot(data_dir: &Path, dest: &Path) -> anyhow::Result<Summary> {
    let server = data_dir.join("server");
    let db = server.join("db").join("state.db");
    anyhow::ensure!(
        db.is_file(),
        "no datastore at {} (has `kinglet server` run with --data-dir {}? a server on an etcd \
         datastore is backed up with `etcdctl snapshot save`)",
        db.display(),
        data_dir.display()
    );
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    create_private_dir(&dir)?;
    check_space(&dir, &db)?;
    // Both the database copy and the archive are written next to the destination, and are
    // removed (on drop) if anything below fails.
    let scratch = tempfile::Builder::new()
        .prefix(".kinglet-backup-")
        .tempdir_in(&dir)
        .with_context(|| format!("creating a scratch directory in {}", dir.display()))?;
    let copy = scratch.path().join("state.db");
    let revision = kinglet_store::backup::copy_database(&db, &copy)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".kinglet-backup-")
        .suffix(".partial")
        .tempfile_in(&dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    let manifest = serde_json::json!({
        "format": FORMAT,
        "revision": revision,
        "created": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "kinglet": crate::VERSION_LINE,
    });
    {
        let gz = flate2::write::GzEncoder::new(tmp.as_file_mut(), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        append(&mut tar, MANIFEST, manifest.to_string().as_bytes())?;
        append_file(&mut tar, DB_ENTRY, &copy, MAX_DB_BYTES)?;
        let token = server.join("token");
        anyhow::ensure!(token.is_file(), "no server token at {}", token.display());
        append_file(&mut tar, TOKEN_ENTRY, &token, MAX_FILE_BYTES)?;
        for sub in FILE_DIRS {
            append_dir(&mut tar, sub, &data_dir.join(sub))?;
        }
        tar.into_inner()
            .and_then(|gz| gz.finish())
            .and_then(|f| f.flush())
            .with_context(|| format!("writing {}", tmp.path().display()))?;
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    let bytes = tmp.as_file().metadata()?.len();
    tmp.persist(dest)
        .with_context(|| format!("renaming the snapshot to {}", dest.display()))?;
    sync_dir(&dir);
    Ok(Summary { revision, bytes })
}

/// Refuses a snapshot that would leave less than `SPARE_BYTES` free.
fn check_space(dir: &Path, db: &Path) -> anyhow::Result<()> {
    let mut wal = db.as_os_str().to_os_string();
    wal.push("-wal");
    let db_bytes: u64 = [db.as_os_str(), wal.as_os_str()]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    // A copy of the database and the archive, each at most the database's size.
    ensure_room(dir, db_bytes.saturating_mul(2)).context("no room for a snapshot of the datastore")
}

/// Refuses to write `bytes` into `dir` if that would leave less than `SPARE_BYTES` free.
fn ensure_room(dir: &Path, bytes: u64) -> anyhow::Result<()> {
    let stat = nix::sys::statvfs::statvfs(dir)
        .with_context(|| format!("reading the free space of {}", dir.display()))?;
    let free = (stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64);
    let needed = bytes.saturating_add(SPARE_BYTES);
    anyhow::ensure!(
        free >= needed,
        "not enough free space in {}: {} MiB needed, {} MiB free",
        dir.display(),
        needed >> 20,
        free >> 20
    );
    Ok(())
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o600);
    h.set_mtime(now_unix());
    h
}

fn append<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> anyhow::Result<()> {
    tar.append_data(&mut header(data.len() as u64), name, data)
        .with_context(|| format!("archiving {name}"))
}

fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    path: &Path,
    limit: u64,
) -> anyhow::Result<()> {
    let file = open_regular(path)?;
    let size = file.metadata()?.len();
    anyhow::ensure!(
        size <= limit,
        "{} is larger than {limit} bytes",
        path.display()
    );
    tar.append_data(&mut header(size), name, file.take(size))
        .with_context(|| format!("archiving {}", path.display()))
}

/// Opens a regular file without following a symbolic link.
fn open_regular(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    anyhow::ensure!(
        file.metadata()?.is_file(),
        "{} is not a regular file",
        path.display()
    );
    Ok(file)
}

/// Archives the plain files of `dir` (if it exists) as `name/<file>`.
fn append_dir<W: Write>(tar: &mut tar::Builder<W>, name: &str, dir: &Path) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let file_name = entry.file_name();
        let Some(file) = file_name.to_str().filter(|f| plain_name(f)) else {
            continue;
        };
        // Only what the server wrote: plain files, not temporaries of an unfinished write.
        if entry.file_type()?.is_file() && !file.ends_with(".tmp") {
            files.push(file.to_string());
        }
    }
    files.sort();
    for file in files {
        append_file(
            tar,
            &format!("{name}/{file}"),
            &dir.join(&file),
            MAX_FILE_BYTES,
        )?;
    }
    Ok(())
}

/// A file name restore accepts inside the archive's directories.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The node name for snapshot file names: `--node-name`, else the host name (as the node's
/// default), reduced to characters safe in a file name.
pub fn node_name(configured: Option<&str>) -> String {
    let raw = match configured {
        Some(n) => n.to_string(),
        None => hostname::get()
            .map(|h| h.to_string_lossy().to_lowercase())
            .unwrap_or_default(),
    };
    let safe: String = raw
        .chars()
        .take(63)
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '.' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    if safe.is_empty() {
        "localhost".into()
    } else {
        safe
    }
}

fn snapshot_name(prefix: &str, node: &str, unix: u64) -> String {
    format!("{prefix}-{node}-{unix}{SUFFIX}")
}

/// The time in a scheduled snapshot's name, if `file` is one of `node`'s.
fn scheduled_time(file: &str, node: &str) -> Option<u64> {
    let digits = file
        .strip_prefix(SCHEDULED_PREFIX)?
        .strip_prefix('-')?
        .strip_prefix(node)?
        .strip_prefix('-')?
        .strip_suffix(SUFFIX)?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Deletes all but the newest `keep` scheduled snapshots of `node` in `dir` (none with
/// `keep == 0`); other files are left alone. Returns the deleted files.
pub fn prune(dir: &Path, node: &str, keep: usize) -> anyhow::Result<Vec<PathBuf>> {
    if keep == 0 {
        return Ok(Vec::new());
    }
    let mut ours = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if let Some(t) = entry
            .file_name()
            .to_str()
            .and_then(|f| scheduled_time(f, node))
            && entry.file_type()?.is_file()
        {
            ours.push((t, entry.path()));
        }
    }
    ours.sort();
    let excess = ours.len().saturating_sub(keep);
    let mut deleted = Vec::new();
    for (_, path) in ours.into_iter().take(excess) {
        std::fs::remove_file(&path).with_context(|| format!("deleting {}", path.display()))?;
        deleted.push(path);
    }
    Ok(deleted)
}

/// Scheduled snapshots, as `kinglet server` takes them.
pub struct Schedule {
    schedule: kinglet_core::cron::Schedule,
    data_dir: PathBuf,
    dir: PathBuf,
    node: String,
    retention: usize,
}

impl Schedule {
    /// Reads `--snapshot-schedule` (a five-field cron schedule in the host's time zone, or a
    /// macro such as `@daily`); `None` when it is empty (snapshots off).
    pub fn new(
        expr: &str,
        retention: usize,
        dir: Option<&Path>,
        data_dir: &Path,
        node: Option<&str>,
    ) -> anyhow::Result<Option<Schedule>> {
        if expr.trim().is_empty() {
            return Ok(None);
        }
        let schedule = kinglet_core::cron::Schedule::parse(expr, None)
            .map_err(|e| anyhow::anyhow!("--snapshot-schedule {expr:?}: {e}"))?;
        Ok(Some(Schedule {
            schedule,
            data_dir: data_dir.to_path_buf(),
            dir: dir.map_or_else(|| default_dir(data_dir), Path::to_path_buf),
            node: node_name(node),
            retention,
        }))
    }

    /// Takes snapshots when due, for as long as the server runs.
    pub fn spawn(self) {
        tracing::info!(
            dir = %self.dir.display(),
            retention = self.retention,
            "scheduled snapshots on"
        );
        tokio::spawn(async move {
            let mut checked = chrono::Utc::now();
            loop {
                // Cron times are whole minutes: look just after each minute starts.
                let now = chrono::Utc::now();
                let into_minute = Duration::from_millis(
                    u64::from(chrono::Timelike::second(&now)) * 1000
                        + u64::from(chrono::Timelike::nanosecond(&now) / 1_000_000).min(999),
                );
                tokio::time::sleep(Duration::from_secs(61).saturating_sub(into_minute)).await;
                let now = chrono::Utc::now();
                let due = self.schedule.latest_due(checked, now).is_some();
                checked = now;
                if !due {
                    continue;
                }
                let (data_dir, dir, node, keep) = (
                    self.data_dir.clone(),
                    self.dir.clone(),
                    self.node.clone(),
                    self.retention,
                );
                let taken = tokio::task::spawn_blocking(move || {
                    take_scheduled(&data_dir, &dir, &node, keep)
                })
                .await;
                match taken {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!("scheduled snapshot failed: {e:#}"),
                    Err(e) => tracing::error!("scheduled snapshot failed: {e}"),
                }
            }
        });
    }
}

fn take_scheduled(data_dir: &Path, dir: &Path, node: &str, keep: usize) -> anyhow::Result<()> {
    let dest = dir.join(snapshot_name(SCHEDULED_PREFIX, node, now_unix()));
    let summary = write_snapshot(data_dir, &dest)?;
    tracing::info!(
        file = %dest.display(),
        revision = summary.revision,
        bytes = summary.bytes,
        "snapshot taken"
    );
    for old in prune(dir, node, keep)? {
        tracing::info!(file = %old.display(), "old snapshot deleted (retention)");
    }
    Ok(())
}

/// `kinglet server --restore FILE`: puts the archive's datastore, token and PKI into
/// `data_dir` before the server starts on it. Only where there is no datastore yet, unless it
/// is the one this very archive restored before (so a unit file keeping the flag still
/// restarts); anything else is refused rather than overwritten.
pub fn restore(archive: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let server = data_dir.join("server");
    let db_dir = server.join("db");
    let db = db_dir.join("state.db");
    let marker = db_dir.join("restored-from");
    let digest = file_digest(archive)?;
    if std::fs::symlink_metadata(&db).is_ok() || wal_of(&db).exists() {
        if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == digest) {
            tracing::info!(
                archive = %archive.display(),
                "--restore: this archive was restored before; starting on its datastore"
            );
            return Ok(());
        }
        bail!(
            "--restore {}: {} already holds a datastore; restore only goes into a data \
             directory without one (move {} aside first)",
            archive.display(),
            db.display(),
            server.display()
        );
    }
    create_private_dir(&server)?;
    // Unpacked and checked beside its final place (same file system), then moved in.
    let staging = tempfile::Builder::new()
        .prefix(".restore-")
        .tempdir_in(&server)
        .with_context(|| format!("creating a directory in {}", server.display()))?;
    let manifest = unpack(archive, staging.path())
        .with_context(|| format!("--restore {}", archive.display()))?;
    let staged_db = staging.path().join(DB_ENTRY);
    let revision = kinglet_store::backup::check_database(&staged_db)
        .with_context(|| format!("--restore {}: the datastore", archive.display()))?;
    anyhow::ensure!(
        revision == manifest.revision,
        "--restore {}: the datastore ends at revision {revision}, the archive says {}",
        archive.display(),
        manifest.revision
    );
    // Past every revision the old cluster's clients may have seen after the snapshot, and
    // marked compacted: their watches get 410 Gone and relist instead of missing writes.
    let moved_to = kinglet_store::backup::move_revision_on(&staged_db)
        .with_context(|| format!("--restore {}: the datastore", archive.display()))?;
    for sub in ["server/tls", "server/cred", "server/token"] {
        let from = staging.path().join(sub);
        let to = data_dir.join(sub);
        if !from.exists() {
            continue;
        }
        // No datastore: what is here belongs to no cluster yet; the archive's wins.
        match std::fs::symlink_metadata(&to) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&to),
            Ok(_) => std::fs::remove_file(&to),
            Err(_) => Ok(()),
        }
        .with_context(|| format!("replacing {}", to.display()))?;
        std::fs::rename(&from, &to).with_context(|| format!("moving in {}", to.display()))?;
    }
    create_private_dir(&db_dir)?;
    let _ = std::fs::remove_file(shm_of(&db));
    std::fs::write(&marker, format!("{digest}\n"))
        .with_context(|| format!("writing {}", marker.display()))?;
    // Last: a datastore in place means the restore is complete.
    std::fs::rename(&staged_db, &db).with_context(|| format!("moving in {}", db.display()))?;
    sync_dir(&db_dir);
    sync_dir(&server);
    tracing::info!(
        archive = %archive.display(),
        revision,
        created = %manifest.created,
        resumes_at = moved_to,
        "restored the cluster"
    );
    Ok(())
}

fn wal_of(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_os_string();
    p.push("-wal");
    PathBuf::from(p)
}

fn shm_of(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_os_string();
    p.push("-shm");
    PathBuf::from(p)
}

fn file_digest(path: &Path) -> anyhow::Result<String> {
    let mut file = open_regular(path)?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

struct Manifest {
    revision: i64,
    created: String,
}

/// Where an archive entry may go, and how large it may be.
fn entry_limit(path: &str) -> Option<u64> {
    match path {
        MANIFEST => Some(64 << 10),
        DB_ENTRY => Some(MAX_DB_BYTES),
        TOKEN_ENTRY => Some(MAX_FILE_BYTES),
        _ => FILE_DIRS
            .iter()
            .any(|d| {
                path.strip_prefix(d)
                    .and_then(|f| f.strip_prefix('/'))
                    .is_some_and(plain_name)
            })
            .then_some(MAX_FILE_BYTES),
    }
}

/// An entry's path as plain `/`-separated names, refusing absolute paths and `..`.
fn clean_path(path: &Path) -> anyhow::Result<String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => parts.push(
                n.to_str()
                    .with_context(|| format!("entry {path:?}: not UTF-8"))?,
            ),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                bail!("entry {path:?} points outside the archive")
            }
        }
    }
    Ok(parts.join("/"))
}

/// Unpacks a snapshot into `dest` (an empty directory of ours), accepting only its known
/// entries as plain files within their size bounds.
fn unpack(archive: &Path, dest: &Path) -> anyhow::Result<Manifest> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = open_regular(archive)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let mut seen = std::collections::BTreeSet::new();
    let mut manifest = None;
    for (n, entry) in tar
        .entries()
        .context("not a gzip'd tar archive")?
        .enumerate()
    {
        anyhow::ensure!(n < MAX_ENTRIES, "more than {MAX_ENTRIES} entries");
        let mut entry = entry.context("reading the archive")?;
        let raw = entry
            .path()
            .context("an entry with a bad name")?
            .into_owned();
        let path = clean_path(&raw)?;
        match entry.header().entry_type() {
            tar::EntryType::Regular => {}
            // Directories are made as needed; their entries carry nothing else.
            tar::EntryType::Directory => continue,
            other => bail!("entry {path:?}: a {other:?}, not a plain file"),
        }
        let limit = entry_limit(&path)
            .with_context(|| format!("entry {path:?}: not part of a kinglet snapshot"))?;
        anyhow::ensure!(seen.insert(path.clone()), "entry {path:?} appears twice");
        let size = entry.size();
        anyhow::ensure!(
            size <= limit,
            "entry {path:?}: {size} bytes, more than {limit}"
        );
        if path == MANIFEST {
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .context("reading the manifest")?;
            manifest = Some(read_manifest(&text)?);
            continue;
        }
        ensure_room(dest, size)?;
        let target = dest.join(&path);
        if let Some(parent) = target.parent() {
            create_private_dir(parent)?;
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        let copied = std::io::copy(&mut (&mut entry).take(limit), &mut out)
            .with_context(|| format!("unpacking {path}"))?;
        anyhow::ensure!(copied == size, "entry {path:?} is cut short");
        out.sync_all()?;
    }
    let manifest = manifest
        .with_context(|| format!("no {MANIFEST}: not a snapshot `kinglet backup` wrote"))?;
    for needed in [
        DB_ENTRY,
        TOKEN_ENTRY,
        "server/tls/ca.crt",
        "server/tls/ca.key",
    ] {
        anyhow::ensure!(seen.contains(needed), "the archive has no {needed}");
    }
    Ok(manifest)
}

fn read_manifest(text: &str) -> anyhow::Result<Manifest> {
    let v: serde_json::Value = serde_json::from_str(text).context("the manifest is not JSON")?;
    let format = v.get("format").and_then(|f| f.as_u64());
    anyhow::ensure!(
        format == Some(FORMAT),
        "snapshot format {format:?}: this kinglet reads format {FORMAT} only"
    );
    Ok(Manifest {
        revision: v
            .get("revision")
            .and_then(|r| r.as_i64())
            .context("the manifest has no revision")?,
        created: v
            .get("created")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str) {
        std::fs::write(dir.join(name), b"x").unwrap();
    }

    #[test]
    fn retention_deletes_only_the_oldest_scheduled_snapshots_of_this_node() {
        let dir = tempfile::tempdir().unwrap();
        for t in [100, 300, 200, 1000, 50] {
            touch(dir.path(), &snapshot_name(SCHEDULED_PREFIX, "edge-1", t));
        }
        // Not ours to delete: on-demand ones, other nodes', look-alikes, other files.
        let others = [
            snapshot_name(ON_DEMAND_PREFIX, "edge-1", 1),
            snapshot_name(SCHEDULED_PREFIX, "edge-2", 2),
            snapshot_name(SCHEDULED_PREFIX, "edge", 3),
            "kinglet-snapshot-edge-1-12x.tar.gz".to_string(),
            "kinglet-snapshot-edge-1-5.tar.gz.partial".to_string(),
            "notes.txt".to_string(),
        ];
        for o in &others {
            touch(dir.path(), o);
        }
        let mut deleted: Vec<String> = prune(dir.path(), "edge-1", 2)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        deleted.sort();
        assert_eq!(
            deleted,
            [
                "kinglet-snapshot-edge-1-100.tar.gz",
                "kinglet-snapshot-edge-1-200.tar.gz",
                "kinglet-snapshot-edge-1-50.tar.gz"
            ]
        );
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want: Vec<String> = others.to_vec();
        want.push(snapshot_name(SCHEDULED_PREFIX, "edge-1", 300));
        want.push(snapshot_name(SCHEDULED_PREFIX, "edge-1", 1000));
        want.sort();
        assert_eq!(left, want);
        // 0 keeps everything.
        assert!(prune(dir.path(), "edge-1", 0).unwrap().is_empty());
        assert!(prune(dir.path(), "edge-1", 1).unwrap().len() == 1);
    }

    #[test]
    fn schedules_are_checked_and_empty_turns_snapshots_off() {
        let data = Path::new("/var/lib/kinglet");
        assert!(Schedule::new("", 5, None, data, None).unwrap().is_none());
        let s = Schedule::new("0 */12 * * *", 5, None, data, Some("Edge_1"))
            .unwrap()
            .unwrap();
        assert_eq!(s.dir, data.join("server/db/snapshots"));
        assert_eq!(s.node, "edge-1");
        let e = Schedule::new("0 */12 * *", 5, None, data, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("--snapshot-schedule"), "{e}");
        assert!(
            Schedule::new("@daily", 5, None, data, None)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_failed_snapshot_leaves_nothing_and_a_restore_brings_the_files_back() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        drop(kinglet_store::Store::open(&data.join("server/db/state.db")).unwrap());
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        // No token: the archive and the database copy made so far go again.
        let e = write_snapshot(&data, &out.join("s.tar.gz"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("no server token"), "{e}");
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);

        std::fs::write(data.join("server/token"), "secret\n").unwrap();
        let tls = data.join("server/tls");
        std::fs::create_dir_all(&tls).unwrap();
        for (f, body) in [
            ("ca.crt", "CERT"),
            ("ca.key", "KEY"),
            ("serving.key.tmp", "half"),
        ] {
            std::fs::write(tls.join(f), body).unwrap();
        }
        std::os::unix::fs::symlink("/etc/passwd", tls.join("link.crt")).unwrap();
        let archive = out.join("s.tar.gz");
        write_snapshot(&data, &archive).unwrap();
        let restored = tmp.path().join("restored");
        restore(&archive, &restored).unwrap();
        let read = |p: &str| std::fs::read_to_string(restored.join(p)).unwrap();
        assert_eq!(read("server/token"), "secret\n");
        assert_eq!(read("server/tls/ca.key"), "KEY");
        let mut names: Vec<String> = std::fs::read_dir(restored.join("server/tls"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        // Neither an unfinished write nor a link is part of the PKI.
        assert_eq!(names, ["ca.crt", "ca.key"]);
        let mode = std::fs::metadata(restored.join("server/tls/ca.key"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        kinglet_store::backup::check_database(&restored.join("server/db/state.db")).unwrap();
        // Again with the same archive: nothing to do; with another: refused.
        restore(&archive, &restored).unwrap();
        std::fs::write(data.join("server/token"), "rotated\n").unwrap();
        let other = out.join("other.tar.gz");
        write_snapshot(&data, &other).unwrap();
        let e = restore(&other, &restored).err().unwrap().to_string();
        assert!(e.contains("already holds a datastore"), "{e}");
    }

    #[test]
    fn entry_paths_outside_the_snapshot_are_refused() {
        assert_eq!(
            clean_path(Path::new("./server/tls/ca.crt")).unwrap(),
            "server/tls/ca.crt"
        );
        assert!(clean_path(Path::new("../server/token")).is_err());
        assert!(clean_path(Path::new("server/../../etc/passwd")).is_err());
        assert!(clean_path(Path::new("/etc/passwd")).is_err());
        assert_eq!(entry_limit("server/tls/ca.key"), Some(MAX_FILE_BYTES));
        assert_eq!(entry_limit("server/tls/.hidden"), None);
        assert_eq!(entry_limit("server/tls/sub/ca.key"), None);
        assert_eq!(entry_limit("server/db/state.db-wal"), None);
        assert_eq!(entry_limit("server/manifests/x.yaml"), None);
    }
}
