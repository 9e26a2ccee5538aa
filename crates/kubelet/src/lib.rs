//! The node agent: registers the Node, keeps its Lease and status fresh, and runs the pods bound
//! to it through the in-process runtime (`kinglet_runtime`). The same code runs inside
//! `kinglet server` and `kinglet agent`. It runs on without the server from its local copy
//! (`offline`).

mod authz;
mod cgroups;
mod containers;
mod dns_config;
mod env;
mod events;
mod eviction;
mod grpc_probe;
mod image_gc;
mod logs;
mod node;
mod offline;
mod pod_workers;
mod pods;
mod probes;
mod pull_backoff;
mod secrets;
mod server;
mod stats;
mod status;
mod status_manager;
mod streaming;
mod volumes;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Taint};
use kube::ResourceExt;

use kinglet_core::informers::Shared;
use kinglet_image::ImageStore;
use kinglet_runtime::Runtime;

pub use eviction::{default_thresholds, parse_thresholds};
pub use image_gc::Policy as ImageGcPolicy;
pub use node::parse_taint;
pub use offline::cache_dir;
pub use server::SOCKET as API_SOCKET;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_name: String,
    pub node_ip: IpAddr,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub data_dir: PathBuf,
    pub pod_log_dir: PathBuf,
    pub run_dir: PathBuf,
    /// The pod network's range (nodes get a block of it) and the Service range.
    pub cluster_cidr: ipnet::Ipv4Net,
    pub service_cidr: ipnet::Ipv4Net,
    /// The cluster DNS address and domain, and the node's own resolver configuration.
    pub cluster_dns: std::net::Ipv4Addr,
    pub cluster_domain: String,
    pub resolv_conf: PathBuf,
    /// Parent of the `kubepods` cgroup tree.
    pub cgroup_root: String,
    pub max_pods: u32,
    pub kubelet_port: u16,
    pub container_log_max_size: u64,
    pub container_log_max_files: usize,
    /// Hard eviction thresholds (`eviction-hard`).
    pub eviction_hard: Vec<eviction::Threshold>,
    pub image_gc: image_gc::Policy,
    /// Certificate of the kubelet API; without one the API is not served.
    pub serving: Option<Serving>,
    /// Keep a copy on disk of what the node's pods need (`<data-dir>/agent/cache`: its pods,
    /// Services, EndpointSlices, the Secrets and ConfigMaps they read, its Node), to run from
    /// while the server is unreachable: an agent's. The server's own node keeps none.
    pub offline_copy: bool,
    /// Registry mirrors, credentials and CAs (`registries.yaml`).
    pub registries: kinglet_image::Registries,
}

/// The kubelet API's certificate and the CA its clients must come from.
#[derive(Clone)]
pub struct Serving {
    pub cert: kinglet_pki::CertKey,
    pub ca_pem: String,
}

impl std::fmt::Debug for Serving {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Serving { .. }")
    }
}

/// The node agent: the dependencies its parts share, and its managers, each with its own state
/// (as upstream's kubelet splits them). Methods that need several managers are on `Kubelet`.
pub struct Kubelet {
    client: kube::Client,
    cfg: NodeConfig,
    runtime: Runtime,
    images: ImageStore,
    /// Addresses of this node's pods, from its podCIDR.
    ipam: kinglet_network::ipam::Ipam,
    capacity_memory: u64,
    events: events::EventRecorder,
    pod_workers: pod_workers::PodWorkers,
    status_manager: status_manager::StatusManager,
    probe_manager: probes::ProbeManager,
    volume_manager: volumes::VolumeManager,
    eviction_manager: eviction::EvictionManager,
    image_gc_manager: image_gc::ImageGcManager,
    pull_backoff: pull_backoff::PullBackoff,
    /// CPU samples for resource metrics.
    stats: stats::Sampler,
    /// Whether the server is reachable, and the copy of what the node read from it.
    offline: Arc<offline::Offline>,
}

/// Locks `m`, also after a panic while it was held: every update made under these locks is one
/// step, so what they guard is never left half-changed.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The pod's hostname: `spec.hostname` or the pod name (at most 63 characters).
pub fn hostname(pod: &Pod) -> String {
    let h = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .unwrap_or_else(|| pod.name_any());
    h.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string()
}

/// Runs the node: `node_pods` is the cache of the pods bound to it
/// (`kinglet_core::informers::pods_on_node`, persisted in `cache_dir` for a start without the
/// server), which the service proxy shares.
pub async fn run(
    client: kube::Client,
    cfg: NodeConfig,
    node_pods: Arc<Shared<Pod>>,
) -> anyhow::Result<()> {
    let images = ImageStore::open(&cfg.data_dir)?;
    // Off the async workers: an air-gap directory can hold gigabytes of archives.
    let (store, dir) = (images.clone(), cfg.data_dir.join("agent/images"));
    tokio::task::spawn_blocking(move || import_airgap(&store, &dir)).await?;
    let offline = Arc::new(offline::Offline::new(&cfg.data_dir, cfg.offline_copy));
    // Registered now, or (server unreachable, the node's range known from before) in the
    // background while the pods run from the local copy.
    let registered = loop {
        match node::register(&client, &cfg).await {
            Ok(()) => {
                tracing::info!(node = %cfg.node_name, "node registered");
                break true;
            }
            Err(e) => {
                let name = &cfg.node_name;
                if offline.failed(&e) && node::cached_pod_cidr(&offline, name).is_some() {
                    tracing::info!(node = %name, "starting from the local copy; registering later");
                    break false;
                }
                tracing::warn!("registering node {name}: {e:#}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let pod_subnet = node::pod_cidr(&client, &offline, &cfg.node_name).await;
    kinglet_network::setup_node(pod_subnet, cfg.cluster_cidr, cfg.service_cidr, &cfg.run_dir)
        .await
        .map_err(|e| e.context("setting up the pod network"))?;
    let ipam = kinglet_network::ipam::Ipam::open(&cfg.data_dir.join("agent/ipam"), pod_subnet)?;
    tracing::info!(%pod_subnet, "pod network ready");
    let kubelet = Arc::new(Kubelet {
        runtime: Runtime::new(&cfg.data_dir, &cfg.run_dir)?,
        images,
        ipam,
        capacity_memory: std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .next()?
                    .split_whitespace()
                    .nth(1)?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(1 << 20)
            * 1024,
        client: client.clone(),
        cfg: cfg.clone(),
        events: events::EventRecorder::new(client.clone(), offline.clone()),
        pod_workers: pod_workers::PodWorkers::default(),
        status_manager: status_manager::StatusManager::default(),
        probe_manager: probes::ProbeManager::default(),
        volume_manager: volumes::VolumeManager::default(),
        eviction_manager: eviction::EvictionManager::new(cfg.eviction_hard.clone()),
        image_gc_manager: image_gc::ImageGcManager::new(cfg.image_gc.clone()),
        pull_backoff: pull_backoff::PullBackoff::default(),
        stats: stats::Sampler::default(),
        offline,
    });
    tokio::spawn(node::heartbeat(kubelet.clone(), registered));
    tokio::spawn(image_gc::run(kubelet.clone()));
    tokio::spawn(volumes::claims::collect_forever(kubelet.clone()));
    tokio::spawn(stats::sample_forever(kubelet.clone()));
    if let Some(serving) = cfg.serving.clone() {
        let k = kubelet.clone();
        tokio::spawn(async move {
            if let Err(e) = server::serve(k, serving).await {
                tracing::error!("{e:#}");
            }
        });
    }
    let wake = Arc::new(tokio::sync::Notify::new());
    node_pods.wake_on_change(wake.clone());
    node_pods.synced().await;
    let pods = node_pods.store();
    tokio::spawn(eviction::run(kubelet.clone(), pods.clone()));
    let mut pruned = tokio::time::Instant::now();
    loop {
        let current = pods.state();
        let known: HashSet<String> = current.iter().filter_map(|p| p.uid()).collect();
        for pod in current.iter().cloned() {
            kubelet.spawn_sync(pod);
        }
        // Only the server says a pod is gone: while the pods come from the local copy, which
        // may be a moment behind, containers of pods it lacks are left alone.
        if node_pods.live() {
            kubelet.collect_orphans(&known).await;
            if pruned.elapsed() >= PRUNE_EVERY && !kubelet.offline.is_down() {
                pruned = tokio::time::Instant::now();
                let k = kubelet.clone();
                tokio::task::spawn_blocking(move || k.offline.prune(&current));
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
    }
}

/// How often the local copies of Secrets and ConfigMaps no pod uses any more are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

impl Kubelet {
    /// Syncs `pod` in the background unless a sync of it is already running.
    fn spawn_sync(self: &Arc<Self>, pod: Arc<Pod>) {
        let uid = pod.uid().unwrap_or_default();
        let k = self.clone();
        self.pod_workers.spawn(uid, async move {
            if let Err(e) = k.sync_pod(&pod).await {
                // Without a server the sync did what it could locally; that is no news.
                if k.offline.failed(&e) {
                    tracing::debug!(pod = %pod.name_any(), "sync: {e:#}");
                } else {
                    tracing::warn!(pod = %pod.name_any(), "sync: {e:#}");
                }
            }
        });
    }

    /// Containers of pods this node no longer has are killed and removed.
    async fn collect_orphans(&self, known: &HashSet<String>) {
        let mut orphans = HashSet::new();
        for dir in self.runtime.list() {
            if let Ok(meta) = dir.meta()
                && !known.contains(&meta.pod_uid)
            {
                if containers::is_running(&dir) {
                    let _ = self
                        .runtime
                        .signal(&meta.id, nix::sys::signal::Signal::SIGKILL);
                } else {
                    orphans.insert(meta.pod_uid);
                }
            }
        }
        for uid in orphans {
            if !self.pod_workers.is_busy(&uid) {
                self.cleanup(&uid).await;
            }
        }
    }
}

/// Imports every archive in the air-gap directory (already present images are cheap).
fn import_airgap(images: &ImageStore, dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_file() {
            match images.import(&path) {
                Ok(imgs) => {
                    tracing::info!("imported {} image(s) from {}", imgs.len(), path.display())
                }
                Err(e) => tracing::warn!("importing {}: {e:#}", path.display()),
            }
        }
    }
}
