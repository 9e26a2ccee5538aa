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

/// Creates `dir` and its missing parents private to their owner (an existing `dir` is made
/// so).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Writes `path` (mode 0600) whole or not at all, in a private directory.
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::other("no directory or file name"));
    };
    private_dir(dir)?;
    // Hidden, and unique per write: no object's file is named so, and two writers of one
    // file never share a temporary.
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.{}.{n}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        // create_new: a link planted at the temporary's name is not followed.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// The contents of `path` if it is a plain file (not a link) of sane size; `None` if it is
/// missing, or (with a warning) unusable.
pub fn read_private(path: &Path) -> Option<Vec<u8>> {
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path);
    let f = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("ignoring the cached {}: {e}", path.display());
            return None;
        }
    };
    let meta = f.metadata().ok()?;
    if !meta.is_file() || meta.len() > MAX_FILE {
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
        let result = match obj.map(serde_json::to_vec) {
            None => match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            Some(Ok(data)) if read_private(&path).as_ref() == Some(&data) => Ok(()),
            Some(Ok(data)) => write_private(&path, &data),
            Some(Err(e)) => Err(e.into()),
        };
        if let Err(e) = result {
            tracing::warn!("caching {}: {e}", path.display());
        }
    }

    /// The object as last read, if it was cached and is whole and named as asked.
    pub fn load<K: Kind>(&self, ns: Option<&str>, name: &str) -> Option<K> {
        let path = self.path::<K>(ns, name)?;
        let data = read_private(&path)?;
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

    /// Removes the cached namespaced `K`s that `keep(namespace, name)` refuses.
    pub fn retain<K: Kind>(&self, keep: &dyn Fn(&str, &str) -> bool) {
        let kind = self.dir.join(K::plural(&()).as_ref());
        for ns in fs::read_dir(&kind).into_iter().flatten().flatten() {
            let ns_name = ns.file_name().to_string_lossy().into_owned();
            for obj in fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                let name = obj.file_name().to_string_lossy().into_owned();
                if !keep(&ns_name, &name) {
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
    use k8s_openapi::api::core::v1::{Node, Secret};
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
        private_dir(&dir).unwrap();
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
