//! `persistentVolumeClaim` volumes: claim -> bound PersistentVolume -> a directory on this
//! node (hostPath or local volumes), bind-mounted into containers as a hostPath volume is.
//!
//! Volumes of kinglet's local-path provisioner (`pv.kubernetes.io/provisioned-by:
//! kinglet.io/local-path`) are created here on first use, mode 0777 as local-path-provisioner
//! makes them (containers run as any user; the storage directory above them is the node
//! administrator's), and recorded under `<data-dir>/agent/local-path/<volume>`. The directory
//! is removed only on the explicit signal of the PersistentVolume controller: the volume
//! deleted (reclaim policy `Delete`) while it carries the `kinglet.io/local-path-cleanup`
//! finalizer; then the finalizer is removed (`collect_forever`). A volume merely missing from
//! the API server (a restored snapshot, an administrator's delete of a Retain volume) keeps
//! its directory. Only directories this kubelet made, named after their volume, are removed,
//! never through a symlink.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kinglet_core::storage::{
    LOCAL_PATH_CLEANUP_FINALIZER, LOCAL_PATH_PROVISIONER as PROVISIONER, PROVISIONED_BY,
};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

use crate::Kubelet;

/// How often recorded volumes are checked for their PersistentVolume.
const COLLECT_EVERY: Duration = Duration::from_secs(10);

/// The file in a pod's directory naming the host directory of its claim volume `name`, read
/// when containers are created (`container_mounts`).
pub fn path_file(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir.join("claim-volumes").join(name)
}

fn records(data_dir: &Path) -> PathBuf {
    data_dir.join("agent").join("local-path")
}

/// Whether `name` could be a provisioned volume's name (`pvc-<uid>`): no path separators or
/// dots, so it is safe as a file name.
fn volume_name_ok(name: &str) -> bool {
    name.strip_prefix("pvc-").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

/// Whether `path` is where volume `name` may live: absolute, normal components only, and its
/// last component `<name>_...` (local-path-provisioner's `pvc-<uid>_<ns>_<claim>`).
fn provisioned_path_ok(name: &str, path: &Path) -> bool {
    path.is_absolute()
        && path.components().all(|c| {
            matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        })
        && path
            .file_name()
            .and_then(|f| f.to_str())
            .is_some_and(|f| f.starts_with(&format!("{name}_")))
}

/// Makes sure a hostPath of `type_` is ready at `path` (the checks of a hostPath volume).
pub fn host_path_ready(path: &Path, type_: &str) -> anyhow::Result<()> {
    let shown = path.display();
    match type_ {
        "DirectoryOrCreate" if !path.exists() => fs::create_dir_all(path)?,
        "FileOrCreate" if !path.exists() => fs::write(path, "")?,
        "Directory" if !path.is_dir() => bail!("hostPath {shown} is not a directory"),
        "File" if !path.is_file() => bail!("hostPath {shown} is not a file"),
        _ => {}
    }
    Ok(())
}

impl Kubelet {
    /// The host directory of claim `claim` of a pod in `ns`, ready for use.
    pub(super) async fn claim_volume(&self, ns: &str, claim: &str) -> anyhow::Result<PathBuf> {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let c = claims
            .get_opt(claim)
            .await?
            .with_context(|| format!("persistentvolumeclaim {claim:?} not found"))?;
        let volume = c.spec.as_ref().and_then(|s| s.volume_name.clone());
        let bound = c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let Some(volume) = volume.filter(|v| bound && !v.is_empty()) else {
            bail!("PersistentVolumeClaim {ns}/{claim} is not bound");
        };
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        let v = volumes
            .get_opt(&volume)
            .await?
            .with_context(|| format!("persistentvolume {volume:?} not found"))?;
        let claimed = v
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_some_and(|r| r.uid.is_some() && r.uid == c.uid());
        ensure!(
            claimed,
            "PersistentVolume {volume} is not bound to claim {ns}/{claim}"
        );
        let spec = v.spec.clone().unwrap_or_default();
        if let Some(h) = &spec.host_path {
            let path = PathBuf::from(&h.path);
            let ours = v.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER);
            if ours {
                self.make_provisioned(&volume, &path)?;
            } else {
                host_path_ready(&path, h.type_.as_deref().unwrap_or(""))?;
            }
            return Ok(path);
        }
        if let Some(l) = &spec.local {
            let path = PathBuf::from(&l.path);
            ensure!(
                path.is_dir(),
                "local volume {volume}: {} is not a directory",
                l.path
            );
            return Ok(path);
        }
        bail!("PersistentVolume {volume}: only hostPath and local volumes are supported")
    }

    /// Creates a provisioned volume's directory (0777), recorded first so that it is removed
    /// with its volume even if the kubelet stops in between.
    fn make_provisioned(&self, volume: &str, path: &Path) -> anyhow::Result<()> {
        ensure!(
            volume_name_ok(volume) && provisioned_path_ok(volume, path),
            "PersistentVolume {volume}: {} is not a local-path volume's directory",
            path.display()
        );
        let dir = records(&self.cfg.data_dir);
        fs::create_dir_all(&dir)?;
        let record = dir.join(volume);
        let content = path.as_os_str().as_encoded_bytes();
        if fs::read(&record).ok().as_deref() != Some(content) {
            fs::write(&record, content)?;
        }
        if path.is_dir() {
            return Ok(());
        }
        if let Some(parent) = path.parent()
            && !parent.exists()
        {
            fs::create_dir_all(parent)?;
            // Only root reaches the volumes from the host (k3s's storage dir is 0700 too).
            fs::set_permissions(parent, fs::Permissions::from_mode(0o700))?;
        }
        fs::create_dir_all(path)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o777))?;
        Ok(())
    }
}

/// What the API server says of a recorded volume, for its directory.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// The volume exists and nobody asked for its data to go.
    Keep,
    /// No such volume: not a reason to delete anything (a restored snapshot, a deleted Retain
    /// volume); the record stays, unless the directory is gone already.
    Missing,
    /// Deleted with the cleanup finalizer and reclaim policy `Delete`: the directory goes,
    /// then the finalizer. (With another policy the controller removes the finalizer and the
    /// directory stays.)
    Remove,
}

fn verdict(pv: Option<&PersistentVolume>) -> Verdict {
    let Some(pv) = pv else {
        return Verdict::Missing;
    };
    let deleted = pv.metadata.deletion_timestamp.is_some();
    let signalled = pv
        .finalizers()
        .iter()
        .any(|f| f == LOCAL_PATH_CLEANUP_FINALIZER);
    let policy = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref());
    if deleted && signalled && policy == Some("Delete") {
        Verdict::Remove
    } else {
        Verdict::Keep
    }
}

/// Acts on the disk for one record at `record` naming `path`. Returns whether the cleanup
/// finalizer may go (the directory is gone).
fn settle(record: &Path, path: &Path, verdict: &Verdict) -> std::io::Result<bool> {
    match verdict {
        Verdict::Keep => Ok(false),
        Verdict::Missing => {
            // Nothing to lose: forget a record whose directory is gone (removed earlier, with
            // the record's removal interrupted).
            if fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
                fs::remove_file(record)?;
            }
            Ok(false)
        }
        Verdict::Remove => {
            remove_volume_dir(path)?;
            Ok(true)
        }
    }
}

/// One record: the volume's directory stays, or goes on the controller's signal.
async fn collect_one(
    client: &kube::Client,
    data_dir: &Path,
    name: &str,
    missing_told: &mut std::collections::HashSet<String>,
) -> anyhow::Result<()> {
    let record = records(data_dir).join(name);
    ensure!(
        volume_name_ok(name),
        "unexpected record {}",
        record.display()
    );
    let path = PathBuf::from(std::ffi::OsString::from(
        String::from_utf8(fs::read(&record)?).context("record is not UTF-8")?,
    ));
    ensure!(
        provisioned_path_ok(name, &path),
        "record {} names {}, not a directory of volume {name}",
        record.display(),
        path.display()
    );
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let pv = volumes.get_opt(name).await?;
    let verdict = verdict(pv.as_ref());
    if verdict == Verdict::Missing {
        if missing_told.insert(name.to_string()) {
            tracing::info!(volume = name, path = %path.display(), "local-path volume has no PersistentVolume; its directory is kept");
        }
    } else {
        missing_told.remove(name);
    }
    if !settle(&record, &path, &verdict)? {
        return Ok(());
    }
    tracing::info!(volume = name, path = %path.display(), "removed the directory of a deleted local-path volume");
    // Only our finalizer goes; the resourceVersion makes the patch fail (and the next round
    // retry) if the volume changed meanwhile.
    let Some(pv) = pv else { return Ok(()) };
    let rest: Vec<&String> = pv
        .finalizers()
        .iter()
        .filter(|f| *f != LOCAL_PATH_CLEANUP_FINALIZER)
        .collect();
    let patch = serde_json::json!({"metadata": {
        "finalizers": rest, "resourceVersion": pv.resource_version()}});
    match volumes
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    fs::remove_file(&record)?;
    Ok(())
}

/// Removes a volume's directory; a symlink put in its place is removed, not followed.
fn remove_volume_dir(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    }
}

/// Removes, every few seconds, the directories of provisioned volumes the PersistentVolume
/// controller deleted, then their cleanup finalizer.
pub async fn collect_forever(kubelet: Arc<Kubelet>) {
    let mut missing_told = std::collections::HashSet::new();
    loop {
        tokio::time::sleep(COLLECT_EVERY).await;
        let dir = records(&kubelet.cfg.data_dir);
        let names: Vec<String> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        for name in names {
            let data_dir = &kubelet.cfg.data_dir;
            if let Err(e) = collect_one(&kubelet.client, data_dir, &name, &mut missing_told).await {
                tracing::debug!(volume = %name, "local-path volume: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directories_named_after_their_volume_are_accepted() {
        let cases = [
            (
                "pvc-1a2b",
                "/var/lib/kinglet/storage/pvc-1a2b_ns_data",
                true,
            ),
            ("pvc-1a2b", "/var/lib/kinglet/storage/pvc-1a2b", false),
            ("pvc-1a2b", "/var/lib/kinglet/storage/pvc-9_ns_data", false),
            ("pvc-1a2b", "relative/pvc-1a2b_ns_data", false),
            ("pvc-1a2b", "/var/lib/../../etc/pvc-1a2b_ns_data", false),
            ("pvc-1a2b", "/", false),
            ("../etc", "/x/../etc_a", false),
            ("pvc-", "/x/pvc-_a_b", false),
            ("pvc-A", "/x/pvc-A_a_b", false),
        ];
        let bad: Vec<_> = cases
            .iter()
            .filter(|(n, p, want)| {
                (volume_name_ok(n) && provisioned_path_ok(n, Path::new(p))) != *want
            })
            .collect();
        assert!(bad.is_empty(), "{bad:?}");
    }

    fn volume(deleted: bool, finalizers: &[&str], policy: &str) -> PersistentVolume {
        let mut meta = serde_json::json!({"name": "pvc-1", "finalizers": finalizers});
        if deleted {
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        }
        serde_json::from_value(serde_json::json!({"metadata": meta,
            "spec": {"persistentVolumeReclaimPolicy": policy}}))
        .unwrap()
    }

    #[test]
    fn only_a_deleted_volume_with_the_cleanup_finalizer_loses_its_directory() {
        let cleanup = LOCAL_PATH_CLEANUP_FINALIZER;
        let cases = [
            (None, Verdict::Missing),
            (Some(volume(false, &[cleanup], "Delete")), Verdict::Keep),
            (
                Some(volume(true, &["kubernetes.io/pv-protection"], "Delete")),
                Verdict::Keep,
            ),
            (Some(volume(true, &[], "Delete")), Verdict::Keep),
            // Retain: the data stays whoever deletes the volume.
            (Some(volume(true, &[cleanup], "Retain")), Verdict::Keep),
            (
                Some(volume(true, &["other", cleanup], "Delete")),
                Verdict::Remove,
            ),
        ];
        for (pv, want) in cases {
            assert_eq!(verdict(pv.as_ref()), want, "{pv:?}");
        }
    }

    #[test]
    fn a_missing_volume_keeps_its_directory_and_record() {
        let tmp = tempfile::tempdir().unwrap();
        let (record, dir) = (tmp.path().join("pvc-1"), tmp.path().join("pvc-1_ns_c"));
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("data"), "keep").unwrap();
        fs::write(&record, dir.as_os_str().as_encoded_bytes()).unwrap();
        assert!(!settle(&record, &dir, &Verdict::Missing).unwrap());
        assert!(!settle(&record, &dir, &Verdict::Keep).unwrap());
        assert!(dir.join("data").exists() && record.exists());
        // Once removed on the controller's signal, the finalizer may go.
        assert!(settle(&record, &dir, &Verdict::Remove).unwrap());
        assert!(!dir.exists() && record.exists());
        // A record whose directory is gone is forgotten even without its volume.
        assert!(!settle(&record, &dir, &Verdict::Missing).unwrap());
        assert!(!record.exists());
    }

    #[test]
    fn a_symlink_in_place_of_a_volume_is_removed_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("precious");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("f"), "keep").unwrap();
        let link = tmp.path().join("pvc-1_ns_c");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        remove_volume_dir(&link).unwrap();
        assert!(!link.exists() && target.join("f").exists());
        let real = tmp.path().join("pvc-2_ns_c");
        fs::create_dir_all(real.join("sub")).unwrap();
        remove_volume_dir(&real).unwrap();
        assert!(!real.exists());
        remove_volume_dir(&real).unwrap();
    }
}
