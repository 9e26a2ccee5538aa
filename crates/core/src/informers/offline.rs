//! The node's copy on disk of what it needs while the API server is out of reach (KubeEdge's
//! metamanager keeps one for edgecore): the watch caches it persists (`Persist`) and single
//! objects as last read (`Objects`: Secrets, ConfigMaps, its Node). Secrets are in it, so the
//! directory is 0700 and every file 0600. A file read back is hostile input like any other: it
//! is read only if it is a plain file of sane size, a corrupt one is ignored with a warning,
//! and no name read from it picks a path.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use kube::Resource;

use super::Kind;

/// Largest file read back (a node's pods, or every Service and EndpointSlice of a cluster).
const MAX_FILE: u64 = 64 << 20;

/// Whether `e` means the server could not be reached at all (refused, timed out, cut off):
/// the node then goes on from its copy. Any answer, a 401, 403 or 404 too, is the server's
/// word and is never replaced by the copy.
pub fn unreachable(e: &kube::Error) -> bool {
    matches!(e, kube::Error::HyperError(_) | kube::Error::Service(_))
}

/// The same for an error that may carry a client error in its chain.
pub fn unreachable_in(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<kube::Error>().is_some_and(unreachable))
}

/// Whether `s` may be a path component of the cache: a Kubernetes name (DNS subdomain or
/// label), so never empty, `.`, `..`, hidden, or holding a `/`.
pub fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Opens the directory `path` itself, never a link (nor through a link in its last
/// component).
fn open_dir(path: &Path) -> io::Result<fs::File> {
    use nix::fcntl::OFlag;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(path)
}

/// The components of `dir` below `root` (none if `dir` is `root`), or an error if `dir` is
/// not under `root` or names a parent (`..`).
fn below<'a>(root: &Path, dir: &'a Path) -> io::Result<Vec<&'a std::ffi::OsStr>> {
    use std::path::Component;
    let rest = dir.strip_prefix(root).map_err(|_| {
        io::Error::other(format!("{} is not under {}", dir.display(), root.display()))
    })?;
    rest.components()
        .map(|c| match c {
            Component::Normal(c) => Ok(c),
            _ => Err(io::Error::other(format!(
                "{}: not a plain path",
                dir.display()
            ))),
        })
        .collect()
}

/// Creates `dir` (0700) under the cache root `root`: `root` is created with its missing
/// parents if need be, then `root` and every directory below it down to `dir` must be a real
/// directory (a link is refused, never followed) and is made private to its owner. Returns
/// `dir`, open.
pub fn private_dir(root: &Path, dir: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::DirBuilderExt;
    let parts = below(root, dir)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)?;
    let mut path = root.to_path_buf();
    let mut open = open_dir(&path);
    for part in parts {
        // The directory above: a real one, private.
        open?.set_permissions(fs::Permissions::from_mode(0o700))?;
        path.push(part);
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        open = open_dir(&path);
    }
    let dir = open.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    // fchmod: the directory opened, never what a link points to.
    dir.set_permissions(fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// Whether every directory from `root` down to `dir` exists and is a real directory (no
/// link): only then may a file in `dir` be read or removed.
fn real_dirs(root: &Path, dir: &Path) -> bool {
    let Ok(parts) = below(root, dir) else {
        return false;
    };
    let mut path = root.to_path_buf();
    let real = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_dir());
    real(&path)
        && parts.into_iter().all(|part| {
            path.push(part);
            real(&path)
        })
}

/// Writes `path` (mode 0600) whole or not at all, in a private directory (its own parent is
/// the cache root).
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let Some(dir) = path.parent() else {
        return Err(io::Error::other("no directory"));
    };
    write_private_under(dir, path, data)
}

/// Writes `path` (mode 0600) whole or not at all, also across a power cut, in a private
/// directory under the cache root `root` (`private_dir`): a temporary file in the same
/// directory, synced, renamed over `path`, and the directory synced.
pub fn write_private_under(root: &Path, path: &Path, data: &[u8]) -> io::Result<()> {
    use nix::fcntl::OFlag;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::other("no directory or file name"));
    };
    let dir_file = private_dir(root, dir)?;
    // Hidden, and unique per write: no object's file is named so, and two writers of one
    // file never share a temporary.
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.{}.{n}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        // O_CREAT|O_EXCL|O_NOFOLLOW: a link or file planted at the temporary's name is
        // neither followed nor reused.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        dir_file.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// The contents of `path` if it is a plain file (not a link, a pipe or a device) of sane
/// size; `None` if it is missing, or (with a warning) unusable.
pub fn read_private(path: &Path) -> Option<Vec<u8>> {
    use nix::fcntl::OFlag;
    // O_NONBLOCK: opening a FIFO planted here must not wait for a writer.
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits())
        .open(path);
    let f = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("ignoring the cached {}: {e}", path.display());
            return None;
        }
    };
    let meta = match f.metadata() {
        Ok(meta) => meta,
        Err(e) => {
            tracing::warn!("ignoring the cached {}: {e}", path.display());
            return None;
        }
    };
    if !meta.file_type().is_file() || meta.len() > MAX_FILE {
        tracing::warn!(
            "ignoring the cached {}: not a plain file of at most {MAX_FILE} bytes",
            path.display()
        );
        return None;
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    if let Err(e) = f.take(MAX_FILE).read_to_end(&mut data) {
        tracing::warn!("ignoring the cached {}: {e}", path.display());
        return None;
    }
    Some(data)
}

/// Whether an object read back from the cache has the identity a real one would: a plain
/// name and namespace, and a UID the node may use in paths (pod directories are named by it).
pub fn sane<K: Resource>(obj: &K) -> bool {
    let m = obj.meta();
    m.name.as_deref().is_some_and(plain_name)
        && m.namespace.as_deref().is_none_or(plain_name)
        && m.uid
            .as_deref()
            .is_none_or(|u| plain_name(u) && !u.contains('.'))
}

/// Objects read back from a cache file (a JSON list): those that decode, are `sane` and that
/// `keep` accepts; the rest are dropped with a warning. `None` if there is no file or it is
/// not a list.
pub fn decode_list<K: Kind>(path: &Path, keep: &dyn Fn(&K) -> bool) -> Option<Vec<K>> {
    let data = read_private(path)?;
    let items: Vec<serde_json::Value> = match serde_json::from_slice(&data) {
        Ok(items) => items,
        Err(e) => {
            tracing::warn!("ignoring the cached {}: {e}", path.display());
            return None;
        }
    };
    let total = items.len();
    let kept: Vec<K> = items
        .into_iter()
        .filter_map(|v| serde_json::from_value::<K>(v).ok())
        .filter(|o| sane(o) && keep(o))
        .collect();
    if kept.len() < total {
        tracing::warn!(
            "ignoring {} unusable object(s) in the cached {}",
            total - kept.len(),
            path.display()
        );
    }
    Some(kept)
}

/// Single objects as last read from the server, one file each:
/// `<dir>/<plural>/<namespace>/<name>` (cluster-scoped: `<dir>/<plural>/<name>`).
#[derive(Clone, Debug)]
pub struct Objects {
    dir: PathBuf,
}

impl Objects {
    pub fn new(dir: PathBuf) -> Objects {
        Objects { dir }
    }

    fn path<K: Kind>(&self, ns: Option<&str>, name: &str) -> Option<PathBuf> {
        let kind = self.dir.join(K::plural(&()).as_ref());
        match ns {
            _ if !plain_name(name) => None,
            Some(ns) if plain_name(ns) => Some(kind.join(ns).join(name)),
            Some(_) => None,
            None => Some(kind.join(name)),
        }
    }

    /// Records what the server said of `ns/name`: `Some` the object, `None` that it does not
    /// exist. Unchanged files are not rewritten (volumes are read every few seconds).
    pub fn save<K: Kind + serde::Serialize>(&self, ns: Option<&str>, name: &str, obj: Option<&K>) {
        let Some(path) = self.path::<K>(ns, name) else {
            return;
        };
        let in_real_dirs = || path.parent().is_some_and(|d| real_dirs(&self.dir, d));
        let result = match obj.map(serde_json::to_vec) {
            // Only through real directories: never a file a link leads to.
            None if !in_real_dirs() => Ok(()),
            None => match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            Some(Ok(data)) if self.read(&path).as_ref() == Some(&data) => Ok(()),
            Some(Ok(data)) => write_private_under(&self.dir, &path, &data),
            Some(Err(e)) => Err(e.into()),
        };
        if let Err(e) = result {
            tracing::warn!("caching {}: {e}", path.display());
        }
    }

    /// The object as last read, if it was cached and is whole and named as asked.
    pub fn load<K: Kind>(&self, ns: Option<&str>, name: &str) -> Option<K> {
        let path = self.path::<K>(ns, name)?;
        let data = self.read(&path)?;
        match serde_json::from_slice::<K>(&data) {
            Ok(obj)
                if sane(&obj)
                    && obj.meta().name.as_deref() == Some(name)
                    && obj.meta().namespace.as_deref() == ns =>
            {
                Some(obj)
            }
            Ok(_) => {
                tracing::warn!("ignoring the cached {}: another object", path.display());
                None
            }
            Err(e) => {
                tracing::warn!("ignoring the cached {}: {e}", path.display());
                None
            }
        }
    }

    /// `read_private` of `path`, a file of the cache, if no directory on the way is a link.
    fn read(&self, path: &Path) -> Option<Vec<u8>> {
        if !path.parent().is_some_and(|d| real_dirs(&self.dir, d)) {
            if fs::symlink_metadata(path).is_ok() {
                tracing::warn!(
                    "ignoring the cached {}: reached through a link",
                    path.display()
                );
            }
            return None;
        }
        read_private(path)
    }

    /// Removes the cached namespaced `K`s that `keep(namespace, name)` refuses. Only real
    /// directories are descended into and only plain files removed: links are never followed.
    pub fn retain<K: Kind>(&self, keep: &dyn Fn(&str, &str) -> bool) {
        let kind = self.dir.join(K::plural(&()).as_ref());
        if !real_dirs(&self.dir, &kind) {
            return;
        }
        // `DirEntry::file_type` does not follow links.
        let is = |e: &fs::DirEntry, dir: bool| {
            e.file_type()
                .is_ok_and(|t| if dir { t.is_dir() } else { t.is_file() })
        };
        for ns in fs::read_dir(&kind).into_iter().flatten().flatten() {
            if !is(&ns, true) {
                continue;
            }
            let ns_name = ns.file_name().to_string_lossy().into_owned();
            for obj in fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                let name = obj.file_name().to_string_lossy().into_owned();
                if is(&obj, false) && !keep(&ns_name, &name) {
                    let _ = fs::remove_file(obj.path());
                }
            }
            // Gone once empty (fails while it is not).
            let _ = fs::remove_dir(ns.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
    use std::os::unix::fs::MetadataExt;

    fn secret(name: &str, value: &str) -> Secret {
        secret_in("default", name, value)
    }

    fn secret_in(ns: &str, name: &str, value: &str) -> Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "stringData": {"k": value},
        }))
        .unwrap()
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn objects_are_private_and_read_back_only_as_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let objects = Objects::new(tmp.path().join("cache/objects"));
        objects.save(Some("default"), "s", Some(&secret("s", "1")));
        let file = tmp.path().join("cache/objects/secrets/default/s");
        assert_eq!(mode(&file), 0o600);
        for dir in ["cache/objects", "cache/objects/secrets/default"] {
            assert_eq!(mode(&tmp.path().join(dir)), 0o700, "{dir}");
        }
        let back: Secret = objects.load(Some("default"), "s").unwrap();
        assert_eq!(back.string_data.unwrap()["k"], "1");
        // Unchanged: not rewritten.
        let inode = fs::metadata(&file).unwrap().ino();
        objects.save(Some("default"), "s", Some(&secret("s", "1")));
        assert_eq!(fs::metadata(&file).unwrap().ino(), inode);
        // Gone on the server: gone here.
        objects.save::<Secret>(Some("default"), "s", None);
        assert!(objects.load::<Secret>(Some("default"), "s").is_none());

        // Names never pick a path outside the cache.
        for bad in ["..", ".", "../x", "a/b", "", ".hidden"] {
            objects.save(Some("default"), bad, Some(&secret(bad, "x")));
            objects.save(Some(bad), "s", Some(&secret_in(bad, "s", "x")));
            assert!(objects.load::<Secret>(Some("default"), bad).is_none());
            assert!(objects.load::<Secret>(Some(bad), "s").is_none());
        }
        let mut left = Vec::new();
        for e in fs::read_dir(tmp.path().join("cache/objects/secrets/default")).unwrap() {
            left.push(e.unwrap().file_name());
        }
        assert!(left.is_empty(), "{left:?}");
        assert!(!tmp.path().join("x").exists());

        // Cluster-scoped.
        let node: Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "n1"}})).unwrap();
        objects.save(None, "n1", Some(&node));
        assert!(tmp.path().join("cache/objects/nodes/n1").is_file());
        assert!(objects.load::<Node>(None, "n1").is_some());
    }

    #[test]
    fn corrupt_foreign_or_linked_files_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let objects = Objects::new(tmp.path().to_path_buf());
        let dir = tmp.path().join("secrets/default");
        private_dir(tmp.path(), &dir).unwrap();
        fs::write(dir.join("torn"), b"{\"metadata\": {\"na").unwrap();
        assert!(objects.load::<Secret>(Some("default"), "torn").is_none());
        // Another object's contents under this name.
        fs::write(
            dir.join("a"),
            serde_json::to_vec(&secret("b", "1")).unwrap(),
        )
        .unwrap();
        assert!(objects.load::<Secret>(Some("default"), "a").is_none());
        // A link to a file elsewhere is not followed.
        let outside = tmp.path().join("outside");
        fs::write(&outside, serde_json::to_vec(&secret("l", "1")).unwrap()).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("l")).unwrap();
        assert!(objects.load::<Secret>(Some("default"), "l").is_none());
        // Writing through a planted link replaces the link, not its target.
        objects.save(Some("default"), "l", Some(&secret("l", "2")));
        assert!(!dir.join("l").is_symlink());
        let target: Secret = serde_json::from_slice(&fs::read(&outside).unwrap()).unwrap();
        assert_eq!(target.string_data.unwrap()["k"], "1");

        // A list with a torn file, and with objects whose identity could escape a directory.
        let list = tmp.path().join("pods.json");
        fs::write(&list, b"[{\"metadata\":").unwrap();
        let keep_all = |_: &Secret| true;
        assert!(decode_list::<Secret>(&list, &keep_all).is_none());
        fs::write(
            &list,
            serde_json::to_vec(&serde_json::json!([
                {"metadata": {"name": "ok", "namespace": "default", "uid": "0b1c-2d"}},
                {"metadata": {"name": "bad-uid", "namespace": "default", "uid": "../../etc"}},
                {"metadata": {"name": "../x", "namespace": "default"}},
                {"metadata": {"name": "not-a-secret", "namespace": "default"}, "data": 7},
                {"metadata": {"name": "refused", "namespace": "default"}},
            ]))
            .unwrap(),
        )
        .unwrap();
        let keep = |s: &Secret| s.metadata.name.as_deref() != Some("refused");
        let names: Vec<_> = decode_list::<Secret>(&list, &keep)
            .unwrap()
            .into_iter()
            .map(|s| s.metadata.name.unwrap())
            .collect();
        assert_eq!(names, ["ok"]);
        assert!(decode_list::<Secret>(&tmp.path().join("none.json"), &keep).is_none());
    }

    #[test]
    fn retain_removes_what_no_pod_uses() {
        let tmp = tempfile::tempdir().unwrap();
        let objects = Objects::new(tmp.path().to_path_buf());
        objects.save(Some("a"), "used", Some(&secret_in("a", "used", "1")));
        objects.save(Some("a"), "old", Some(&secret_in("a", "old", "1")));
        objects.save(Some("b"), "old", Some(&secret_in("b", "old", "1")));
        objects.retain::<Secret>(&|ns, name| (ns, name) == ("a", "used"));
        assert!(objects.load::<Secret>(Some("a"), "used").is_some());
        assert!(objects.load::<Secret>(Some("a"), "old").is_none());
        assert!(!tmp.path().join("secrets/b").exists());
    }

    #[test]
    fn a_fifo_at_a_cache_path_is_skipped_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let objects = Objects::new(tmp.path().to_path_buf());
        let dir = tmp.path().join("secrets/default");
        private_dir(tmp.path(), &dir).unwrap();
        let fifo = dir.join("pipe");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // On a thread, so that a blocking open fails the test rather than hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let read = read_private(&path);
            let loaded = objects.load::<Secret>(Some("default"), "pipe");
            let _ = tx.send((read, loaded.is_some()));
        });
        let (read, loaded) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a FIFO blocked");
        assert!(read.is_none());
        assert!(!loaded);
    }

    #[test]
    fn retain_does_not_descend_a_linked_namespace() {
        let tmp = tempfile::tempdir().unwrap();
        let objects = Objects::new(tmp.path().join("cache"));
        objects.save(Some("a"), "old", Some(&secret_in("a", "old", "1")));
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::write(elsewhere.join("precious"), b"x").unwrap();
        fs::write(tmp.path().join("outside"), b"x").unwrap();
        let secrets = tmp.path().join("cache/secrets");
        std::os::unix::fs::symlink(&elsewhere, secrets.join("linked")).unwrap();
        // A link to a file in a namespace directory is not removed through either.
        std::os::unix::fs::symlink(tmp.path().join("outside"), secrets.join("a/file-link"))
            .unwrap();
        objects.retain::<Secret>(&|_, _| false);
        assert!(
            elsewhere.join("precious").is_file(),
            "the link's target was emptied"
        );
        assert!(tmp.path().join("outside").is_file());
        assert!(
            objects.load::<Secret>(Some("a"), "old").is_none(),
            "a plain file is removed"
        );
        // Nor is a file removed or read through it by name.
        objects.save::<Secret>(Some("linked"), "precious", None);
        assert!(elsewhere.join("precious").is_file());
        fs::write(
            elsewhere.join("s"),
            serde_json::to_vec(&secret_in("linked", "s", "1")).unwrap(),
        )
        .unwrap();
        assert!(objects.load::<Secret>(Some("linked"), "s").is_none());
        // The whole kind's directory as a link: not descended either.
        let kind = tmp.path().join("cache/configmaps");
        std::os::unix::fs::symlink(tmp.path(), &kind).unwrap();
        fs::create_dir(elsewhere.join("ns")).unwrap();
        objects.retain::<ConfigMap>(&|_, _| false);
        assert!(elsewhere.join("precious").is_file());
    }

    #[test]
    fn writing_through_a_linked_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cache");
        let objects = Objects::new(root.clone());
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&root, &root.join("secrets")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("secrets/ns")).unwrap();
        objects.save(Some("ns"), "s", Some(&secret_in("ns", "s", "1")));
        assert!(!elsewhere.join("s").exists(), "written through a link");
        assert_eq!(mode(&elsewhere), 0o755, "a link's target was chmod-ed");
        let err = write_private_under(&root, &root.join("secrets/ns/t"), b"x").unwrap_err();
        assert!(!elsewhere.join("t").exists(), "{err}");
        // A linked kind directory, and a linked root, too.
        std::os::unix::fs::symlink(&elsewhere, root.join("configmaps")).unwrap();
        assert!(write_private_under(&root, &root.join("configmaps/ns/c"), b"x").is_err());
        let linked_root = tmp.path().join("linked-root");
        std::os::unix::fs::symlink(&elsewhere, &linked_root).unwrap();
        assert!(write_private(&linked_root.join("pods.json"), b"[]").is_err());
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
        assert_eq!(mode(&elsewhere), 0o755);
        // Paths outside the root or with `..` are refused.
        assert!(private_dir(&root, &tmp.path().join("x")).is_err());
        assert!(private_dir(&root, &root.join("../x")).is_err());
        // A real directory is fine, and left without a temporary.
        write_private_under(&root, &root.join("secrets/real/s"), b"x").unwrap();
        let names: Vec<_> = fs::read_dir(root.join("secrets/real"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["s"]);
        assert_eq!(mode(&root.join("secrets/real/s")), 0o600);
    }

    #[test]
    fn only_unanswered_requests_count_as_unreachable() {
        let api = kube::Error::Api(Box::new(kube::core::Status::failure(
            "forbidden",
            "Forbidden",
        )));
        assert!(!unreachable(&api));
        let svc = kube::Error::Service("connection refused".into());
        assert!(unreachable(&svc));
        let wrapped = anyhow::Error::from(svc).context("reading the node");
        assert!(unreachable_in(&wrapped));
        assert!(!unreachable_in(&anyhow::anyhow!("other")));
    }
}
