//! Pod volumes and the files the kubelet gives every container (`/etc/hosts`, `/etc/hostname`,
//! `/etc/resolv.conf`, the termination log). Volumes live in `<pod dir>/volumes/<name>`:
//! emptyDir (tmpfs for `medium: Memory`), hostPath, persistentVolumeClaim (`claims`: the
//! bound volume's directory on this node), and configMap/secret/downwardAPI/projected contents
//! written as files (refreshed on every sync).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod, Volume};
use kube::ResourceExt;
use kube::api::Api;
use nix::mount::{MntFlags, MsFlags};

use super::env::Source;
use super::{Kubelet, lock};
use kinglet_runtime::spec::Mount;

/// How often ConfigMap, Secret, downward API and projected volumes are brought up to date
/// (upstream: the pod resync, about a minute).
const VOLUME_REFRESH: Duration = Duration::from_secs(10);

/// A file of a volume: path inside it, content, and its own mode if the item set one.
type VolumeFile = (String, Vec<u8>, Option<i32>);

fn volume_dir(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir.join("volumes").join(name)
}

use super::dns_config;

pub(crate) mod claims;
mod subpath;

/// A volume that could not be set up. Upstream reports it as a `FailedMount` event while the
/// pod waits in ContainerCreating; the kubelet retries on the next sync.
#[derive(Debug, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume {volume:?} : {cause:#}")]
pub struct MountFailed {
    volume: String,
    cause: anyhow::Error,
}

/// The volume manager's state: when each pod's volumes were last set up in full.
#[derive(Default)]
pub struct VolumeManager {
    /// By pod UID.
    refreshed: Mutex<HashMap<String, Instant>>,
}

impl VolumeManager {
    /// Whether pod `uid`'s volumes are due to be set up again from their sources.
    pub fn refresh_due(&self, uid: &str) -> bool {
        self.refresh_due_at(uid, Instant::now())
    }

    /// Notes that pod `uid`'s volumes have just been set up in full.
    pub fn refreshed(&self, uid: String) {
        lock(&self.refreshed).insert(uid, Instant::now());
    }

    /// Forgets pod `uid`, which is gone.
    pub fn forget(&self, uid: &str) {
        lock(&self.refreshed).remove(uid);
    }

    fn refresh_due_at(&self, uid: &str, now: Instant) -> bool {
        lock(&self.refreshed)
            .get(uid)
            .is_none_or(|t| now.saturating_duration_since(*t) >= VOLUME_REFRESH)
    }
}

impl Kubelet {
    /// Sandbox, volumes and per-pod files, before any container starts (idempotent).
    pub async fn prepare(self: &Arc<Self>, pod: &Pod) -> anyhow::Result<()> {
        let uid = pod.uid().unwrap_or_default();
        let dir = self.pod_dir(&uid);
        fs::create_dir_all(dir.join("volumes"))?;
        let exe = self.runtime.exe().to_path_buf();
        let sandbox = dir.join("sandbox");
        let host = super::hostname(pod);
        let iface = self.pod_interface(pod)?;
        let pod_ip = iface
            .as_ref()
            .map_or(self.cfg.node_ip.to_string(), |i| i.ip.to_string());
        tokio::task::spawn_blocking(move || {
            kinglet_runtime::sandbox::create(&exe, &sandbox, &host, iface.as_ref())
        })
        .await??;
        write_if_changed(
            &dir.join("hostname"),
            &format!("{}\n", super::hostname(pod)),
        )?;
        let domain = &self.cfg.cluster_domain;
        let node_hosts = fs::read_to_string("/etc/hosts").unwrap_or_default();
        let hosts = dns_config::hosts(pod, &pod_ip, &super::hostname(pod), domain, &node_hosts);
        write_if_changed(&dir.join("hosts"), &hosts)?;
        let node_resolv = fs::read_to_string(&self.cfg.resolv_conf).unwrap_or_default();
        let dns = self.cfg.cluster_dns.to_string();
        let resolv = dns_config::resolv_conf(pod, &dns, domain, &node_resolv);
        write_if_changed(&dir.join("resolv.conf"), &resolv)?;
        let spec = pod.spec.clone().unwrap_or_default();
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
        {
            let log = dir.join(format!("termination-log-{}", c.name));
            if !log.exists() {
                fs::write(&log, "")?;
                fs::set_permissions(&log, fs::Permissions::from_mode(0o666))?;
            }
        }
        // Every pod syncs each second; its volumes' sources (a GET each) are read less often.
        if !self.volume_manager.refresh_due(&uid) {
            return Ok(());
        }
        for v in spec.volumes.iter().flatten() {
            self.prepare_volume(pod, &dir, v)
                .await
                .map_err(|cause| MountFailed {
                    volume: v.name.clone(),
                    cause,
                })?;
        }
        self.volume_manager.refreshed(uid);
        Ok(())
    }

    async fn prepare_volume(&self, pod: &Pod, pod_dir: &Path, v: &Volume) -> anyhow::Result<()> {
        let dir = volume_dir(pod_dir, &v.name);
        let ns = pod.namespace().unwrap_or_default();
        if let Some(e) = &v.empty_dir {
            if !dir.exists() {
                fs::create_dir_all(&dir)?;
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))?;
                if e.medium.as_deref() == Some("Memory") {
                    let size = e
                        .size_limit
                        .as_ref()
                        .and_then(|q| kinglet_core::resources::parse_milli(&q.0))
                        .map(|m| format!(",size={}", m / 1000))
                        .unwrap_or_default();
                    nix::mount::mount(
                        Some("tmpfs"),
                        &dir,
                        Some("tmpfs"),
                        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                        Some(format!("mode=1777{size}").as_str()),
                    )?;
                }
            }
        } else if let Some(h) = &v.host_path {
            claims::host_path_ready(Path::new(&h.path), h.type_.as_deref().unwrap_or(""))?;
        } else if let Some(c) = &v.persistent_volume_claim {
            let file = claims::path_file(pod_dir, &v.name);
            // Resolved once per pod: a bound claim keeps its volume, and the pod's containers
            // restart from this even while the server is unreachable.
            if !file.exists() {
                let path = self.claim_volume(&ns, &c.claim_name).await?;
                if let Some(parent) = file.parent() {
                    fs::create_dir_all(parent)?;
                }
                write_if_changed(&file, &path.to_string_lossy())?;
            }
        } else if let Some(cm) = &v.config_map {
            let data = self
                .source_files(&ns, Source::ConfigMap, &cm.name, cm.optional)
                .await?;
            write_files(
                &dir,
                &select(data, cm.items.as_deref())?,
                cm.default_mode.unwrap_or(0o644),
            )?;
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let data = self
                .source_files(&ns, Source::Secret, &name, s.optional)
                .await?;
            write_files(
                &dir,
                &select(data, s.items.as_deref())?,
                s.default_mode.unwrap_or(0o644),
            )?;
        } else if let Some(d) = &v.downward_api {
            let mut files = Vec::new();
            for item in d.items.iter().flatten() {
                if let Some(f) = &item.field_ref {
                    let value = super::env::field(pod, &f.field_path, &self.cfg.node_name)?;
                    files.push((item.path.clone(), value.into_bytes(), item.mode));
                }
            }
            write_files(&dir, &files, d.default_mode.unwrap_or(0o644))?;
        } else if let Some(p) = &v.projected {
            self.prepare_projected(pod, &dir, p).await?;
        } else {
            anyhow::bail!("unsupported volume type");
        }
        Ok(())
    }

    /// A projected volume: service-account token (renewed at 80% of its life), ConfigMap and
    /// Secret keys, downward API fields.
    async fn prepare_projected(
        &self,
        pod: &Pod,
        dir: &Path,
        p: &k8s_openapi::api::core::v1::ProjectedVolumeSource,
    ) -> anyhow::Result<()> {
        let ns = pod.namespace().unwrap_or_default();
        let mut files: Vec<VolumeFile> = Vec::new();
        for src in p.sources.iter().flatten() {
            if let Some(t) = &src.service_account_token {
                let old = dir.join(&t.path);
                let ttl = t.expiration_seconds.unwrap_or(3607).max(600) as u64;
                let fresh = fs::metadata(&old)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|age| age.as_secs() < ttl * 8 / 10);
                let token = if fresh {
                    fs::read(&old)?
                } else {
                    self.token(pod, t.audience.as_deref(), ttl, &old).await?
                };
                files.push((t.path.clone(), token, None));
            }
            if let Some(cm) = &src.config_map {
                let data = self
                    .source_files(&ns, Source::ConfigMap, &cm.name, cm.optional)
                    .await?;
                files.extend(select(data, cm.items.as_deref())?);
            }
            if let Some(s) = &src.secret {
                let data = self
                    .source_files(&ns, Source::Secret, &s.name, s.optional)
                    .await?;
                files.extend(select(data, s.items.as_deref())?);
            }
            if let Some(d) = &src.downward_api {
                for item in d.items.iter().flatten() {
                    if let Some(f) = &item.field_ref {
                        let value = super::env::field(pod, &f.field_path, &self.cfg.node_name)?;
                        files.push((item.path.clone(), value.into_bytes(), item.mode));
                    }
                }
            }
        }
        write_files(dir, &files, p.default_mode.unwrap_or(0o644))
    }

    /// A ConfigMap's or Secret's keys for a volume; nothing if it is missing and optional.
    async fn source_files(
        &self,
        ns: &str,
        kind: Source,
        name: &str,
        optional: Option<bool>,
    ) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
        match super::env::source_data(self, ns, kind, name).await? {
            Some(data) => Ok(data),
            None if optional == Some(true) => Ok(BTreeMap::new()),
            None => {
                let what = match kind {
                    Source::ConfigMap => "configmap",
                    Source::Secret => "secret",
                };
                anyhow::bail!("{what} \"{name}\" not found")
            }
        }
    }

    /// A new token for the pod's service account; without a server, the one last issued
    /// (at `old`), if any.
    async fn token(
        &self,
        pod: &Pod,
        audience: Option<&str>,
        ttl: u64,
        old: &Path,
    ) -> anyhow::Result<Vec<u8>> {
        let last = || fs::read(old).ok().filter(|t| !t.is_empty());
        if self.offline.is_down()
            && let Some(token) = last()
        {
            return Ok(token);
        }
        match self.request_token(pod, audience, ttl).await {
            Ok(token) => Ok(token.into_bytes()),
            Err(e) if self.offline.failed(&e) => last().ok_or(e),
            Err(e) => Err(e),
        }
    }

    /// A token for the pod's service account, bound to the pod (TokenRequest).
    async fn request_token(
        &self,
        pod: &Pod,
        audience: Option<&str>,
        ttl: u64,
    ) -> anyhow::Result<String> {
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": audience.map(|a| vec![a]).unwrap_or_default(),
                "expirationSeconds": ttl,
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod.name_any(), "uid": pod.uid()},
            },
        });
        let tr: k8s_openapi::api::authentication::v1::TokenRequest = api
            .create_subresource("token", &sa, &Default::default(), &body)
            .await
            .context("requesting the service account token")?;
        Ok(tr.status.map(|s| s.token).unwrap_or_default())
    }
}

/// `items` picks and renames keys; without it every key is a file.
fn select(
    all: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
) -> anyhow::Result<Vec<VolumeFile>> {
    match items {
        None => Ok(all.into_iter().map(|(k, v)| (k, v, None)).collect()),
        Some(items) => items
            .iter()
            .map(|i| match all.get(&i.key) {
                Some(v) => Ok((i.path.clone(), v.clone(), i.mode)),
                None => anyhow::bail!("key {:?} not found", i.key),
            })
            .collect(),
    }
}

/// Writes a file that containers have bind-mounted (so it is rewritten in place), only when its
/// contents change: a process reading it mid-write would see it empty or cut short.
fn write_if_changed(path: &Path, contents: &str) -> std::io::Result<()> {
    if fs::read(path).is_ok_and(|old| old == contents.as_bytes()) {
        return Ok(());
    }
    fs::write(path, contents)
}

/// Writes the files of a configMap, secret, downwardAPI or projected volume the way upstream's
/// atomic writer does, so that running containers, which bind-mount `dir` itself, see each
/// update whole: the files go to a fresh hidden directory, the `..data` link switches to it in
/// one rename, and every top-level name is a link through `..data`. Unchanged contents are
/// left alone.
fn write_files(dir: &Path, files: &[VolumeFile], mode: i32) -> anyhow::Result<()> {
    let mut wanted = BTreeMap::new();
    for (path, data, item_mode) in files {
        let parts: Vec<_> = Path::new(path).components().collect();
        let plain = |c: &Component| match c {
            Component::Normal(n) => !n.to_string_lossy().starts_with(".."),
            _ => false,
        };
        if parts.is_empty() || !parts.iter().all(plain) {
            anyhow::bail!("invalid file path {path:?}");
        }
        let mode = item_mode.unwrap_or(mode) as u32 & 0o777;
        wanted.insert(path.as_str(), (data.as_slice(), mode));
    }
    fs::create_dir_all(dir)?;
    let data_link = dir.join("..data");
    if holds_exactly(&data_link, &wanted) {
        return Ok(());
    }
    let stamp = chrono::Utc::now()
        .format("..%Y_%m_%d_%H_%M_%S.%f")
        .to_string();
    let new = dir.join(&stamp);
    fs::create_dir(&new)?;
    for (path, (data, mode)) in &wanted {
        let p = new.join(path);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&p, data)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode))?;
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&stamp, &tmp_link)?;
    fs::rename(&tmp_link, &data_link)?;
    let tops: std::collections::BTreeSet<&str> = wanted
        .keys()
        .map(|p| p.split('/').find(|c| !c.is_empty()).unwrap_or(p))
        .collect();
    // Old data directories, and names that are not (or no longer) links through `..data`
    // (also the plain files of the layout before this one).
    for entry in fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let through_data = Path::new("..data").join(&name);
        let keep = name == "..data"
            || name == stamp
            || (tops.contains(name.as_str())
                && fs::read_link(entry.path()).is_ok_and(|t| t == through_data));
        if !keep {
            match entry.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir_all(entry.path())?,
                _ => fs::remove_file(entry.path())?,
            }
        }
    }
    for top in tops {
        let link = dir.join(top);
        if !link.is_symlink() {
            std::os::unix::fs::symlink(Path::new("..data").join(top), link)?;
        }
    }
    Ok(())
}

/// Whether the directory behind `data` holds exactly `wanted` (path -> contents and mode).
fn holds_exactly(data: &Path, wanted: &BTreeMap<&str, (&[u8], u32)>) -> bool {
    fn count_files(dir: &Path) -> std::io::Result<usize> {
        let mut n = 0;
        for e in fs::read_dir(dir)? {
            let e = e?;
            n += if e.file_type()?.is_dir() {
                count_files(&e.path())?
            } else {
                1
            };
        }
        Ok(n)
    }
    count_files(data).is_ok_and(|n| n == wanted.len())
        && wanted.iter().all(|(path, (contents, mode))| {
            let p = data.join(path);
            fs::read(&p).is_ok_and(|c| c == *contents)
                && fs::metadata(&p).is_ok_and(|m| m.permissions().mode() & 0o777 == *mode)
        })
}

/// The bind mounts of one container: its volumeMounts and the kubelet's files.
pub fn container_mounts(k: &Kubelet, pod: &Pod, c: &Container) -> anyhow::Result<Vec<Mount>> {
    let dir = k.pod_dir(&pod.uid().unwrap_or_default());
    let spec = pod.spec.clone().unwrap_or_default();
    let mut mounts = Vec::new();
    for (index, m) in c.volume_mounts.iter().flatten().enumerate() {
        let v = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .with_context(|| format!("volumeMount {:?} names no volume", m.name))?;
        let base = match (&v.host_path, &v.persistent_volume_claim) {
            (Some(h), _) => PathBuf::from(&h.path),
            (None, Some(_)) => {
                let file = claims::path_file(&dir, &v.name);
                PathBuf::from(
                    fs::read_to_string(&file)
                        .with_context(|| format!("volume {:?} is not set up yet", v.name))?,
                )
            }
            (None, None) => volume_dir(&dir, &v.name),
        };
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let target = dir
                    .join("volume-subpaths")
                    .join(&v.name)
                    .join(&c.name)
                    .join(index.to_string());
                // As upstream, the cause stays in the node's log: it may describe the node's
                // file system to whoever wrote the pod.
                sub_path_mount(&base, sub, &target).map_err(|e| {
                    let (pod, volume) = (pod.name_any(), &v.name);
                    tracing::warn!(%pod, container = %c.name, "subPath {sub:?} of {volume:?}: {e:#}");
                    anyhow::anyhow!(
                        "failed to prepare subPath for volumeMount {:?} of container {:?}",
                        m.name,
                        c.name
                    )
                })?;
                target
            }
            None => base,
        };
        let readonly = m.read_only == Some(true)
            || v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.read_only == Some(true))
            || v.config_map.is_some()
            || v.secret.is_some()
            || v.projected.is_some()
            || v.downward_api.is_some();
        mounts.push(Mount {
            source,
            destination: m.mount_path.clone(),
            readonly,
        });
    }
    let has = |p: &str| mounts.iter().any(|m| m.destination == p);
    let mut extra = Vec::new();
    if !has("/etc/hosts") {
        extra.push(("hosts", "/etc/hosts".to_string()));
    }
    if !has("/etc/hostname") {
        extra.push(("hostname", "/etc/hostname".to_string()));
    }
    if !has("/etc/resolv.conf") {
        extra.push(("resolv.conf", "/etc/resolv.conf".to_string()));
    }
    for (file, dest) in extra {
        mounts.push(Mount {
            source: dir.join(file),
            destination: dest,
            readonly: false,
        });
    }
    let term = c
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".into());
    mounts.push(Mount {
        source: dir.join(format!("termination-log-{}", c.name)),
        destination: term,
        readonly: false,
    });
    Ok(mounts)
}

/// Mounts `sub` of the volume at `base` on `target`, in the kubelet's own directory, where the
/// container runtime bind-mounts it from: the container can change what is in its volume, not
/// what is mounted there.
fn sub_path_mount(base: &Path, sub: &str, target: &Path) -> anyhow::Result<()> {
    // The API refuses these too; a pod stored before that check must not escape.
    anyhow::ensure!(
        subpath::is_relative_without_dotdot(sub),
        "subPath {sub:?} must be a relative path without '..'"
    );
    let fd = subpath::open_beneath(base, sub, true)?;
    subpath::bind(&fd, target)?;
    Ok(())
}

/// Unmounts a pod's subPath mounts and memory-backed emptyDirs (idempotent). It must run
/// before the pod's directory is removed: a subPath of a hostPath volume is mounted in it.
pub fn unmount_all(pod_dir: &Path) {
    subpath::unmount_all(&pod_dir.join("volume-subpaths"));
    for e in fs::read_dir(pod_dir.join("volumes"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = nix::mount::umount2(&e.path(), MntFlags::MNT_DETACH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn file(path: &str, data: &str) -> VolumeFile {
        (path.into(), data.as_bytes().to_vec(), None)
    }

    fn data_dirs(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != "..data")
            .collect()
    }

    #[test]
    fn volumes_are_set_up_again_once_their_refresh_is_due() {
        let m = VolumeManager::default();
        let now = Instant::now();
        assert!(m.refresh_due_at("a", now), "never set up");
        m.refreshed("a".into());
        assert!(!m.refresh_due_at("a", now + VOLUME_REFRESH / 2));
        assert!(m.refresh_due_at("a", now + VOLUME_REFRESH + Duration::from_millis(100)));
        assert!(m.refresh_due_at("b", now), "per pod");
        m.forget("a");
        assert!(m.refresh_due_at("a", Instant::now()), "forgotten");
    }

    #[test]
    fn bind_mounted_files_are_rewritten_only_when_they_change() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("resolv.conf");
        write_if_changed(&path, "nameserver 10.43.0.10\n").unwrap();
        let written = fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_if_changed(&path, "nameserver 10.43.0.10\n").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), written);
        write_if_changed(&path, "nameserver 10.43.0.11\n").unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "nameserver 10.43.0.11\n"
        );
    }

    #[test]
    fn volume_files_update_in_place_for_containers_that_mounted_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("v");
        // The layout before: plain files, which become links.
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("a"), "old").unwrap();
        write_files(&dir, &[file("a", "1"), file("d/b", "2")], 0o644).unwrap();
        let inode = fs::metadata(&dir).unwrap().ino();
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(fs::read_to_string(dir.join("d/b")).unwrap(), "2");
        assert!(dir.join("a").is_symlink() && dir.join("d").is_symlink());
        assert_eq!(
            fs::metadata(dir.join("a")).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let first = fs::read_link(dir.join("..data")).unwrap();

        // Same contents: nothing is rewritten.
        write_files(&dir, &[file("a", "1"), file("d/b", "2")], 0o644).unwrap();
        assert_eq!(fs::read_link(dir.join("..data")).unwrap(), first);

        // New contents, a key gone, another mode: the same directory shows them.
        write_files(
            &dir,
            &[file("a", "3"), ("c".into(), b"4".to_vec(), Some(0o600))],
            0o644,
        )
        .unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().ino(), inode);
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "3");
        assert!(!dir.join("d").exists() && !dir.join("d").is_symlink());
        assert_eq!(
            fs::metadata(dir.join("c")).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(data_dirs(&dir).len(), 1, "old data directories are removed");

        for bad in ["../x", "/x", "..x", "a/../../x", ""] {
            assert!(write_files(&dir, &[file(bad, "")], 0o644).is_err(), "{bad}");
        }
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "3");
    }
}
