//! Node pressure and eviction, as the kubelet's eviction manager does it: hard thresholds on
//! `memory.available`, `nodefs.available`, `nodefs.inodesFree`, `imagefs.available` and
//! `pid.available` (upstream's defaults unless `eviction-hard` says otherwise). A crossed
//! threshold sets the node's MemoryPressure / DiskPressure / PIDPressure condition; disk
//! pressure first frees unused images, then, as for the others, one pod at a time is evicted
//! (phase Failed, reason Evicted) in upstream's order: pods using more memory than they
//! request first, then lower priority, then the furthest over their request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::{Kubelet, lock};

pub const CHECK_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    MemoryAvailable,
    NodefsAvailable,
    NodefsInodesFree,
    ImagefsAvailable,
    PidAvailable,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodefsAvailable => "nodefs.available",
            Signal::NodefsInodesFree => "nodefs.inodesFree",
            Signal::ImagefsAvailable => "imagefs.available",
            Signal::PidAvailable => "pid.available",
        }
    }
    /// The resource named in eviction messages.
    fn resource(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory",
            Signal::NodefsAvailable | Signal::ImagefsAvailable => "ephemeral-storage",
            Signal::NodefsInodesFree => "inodes",
            Signal::PidAvailable => "pids",
        }
    }
    /// The node condition the signal drives.
    pub fn condition(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "MemoryPressure",
            Signal::PidAvailable => "PIDPressure",
            _ => "DiskPressure",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    Absolute(f64),
    Percent(f64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    pub below: Amount,
}

/// Upstream's default `evictionHard`.
pub fn default_thresholds() -> Vec<Threshold> {
    parse_thresholds(
        "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%",
    )
    .unwrap_or_default()
}

/// Parses `memory.available<100Mi,nodefs.available<10%` (`eviction-hard`).
pub fn parse_thresholds(s: &str) -> anyhow::Result<Vec<Threshold>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('<').ok_or_else(|| {
            anyhow::anyhow!("eviction threshold {part:?}: expected signal<quantity")
        })?;
        let signal = [
            Signal::MemoryAvailable,
            Signal::NodefsAvailable,
            Signal::NodefsInodesFree,
            Signal::ImagefsAvailable,
            Signal::PidAvailable,
        ]
        .into_iter()
        .find(|s| s.name() == name.trim())
        .ok_or_else(|| anyhow::anyhow!("eviction threshold {part:?}: unknown signal {name:?}"))?;
        let value = value.trim();
        let below = match value.strip_suffix('%') {
            Some(p) => {
                let p: f64 = p
                    .parse()
                    .map_err(|_| anyhow::anyhow!("eviction threshold {part:?}: bad percentage"))?;
                anyhow::ensure!(
                    (0.0..=100.0).contains(&p),
                    "eviction threshold {part:?}: percentage must be within 0-100"
                );
                Amount::Percent(p)
            }
            None => Amount::Absolute(
                kinglet_core::resources::parse_milli(value)
                    .filter(|m| *m >= 0)
                    .ok_or_else(|| anyhow::anyhow!("eviction threshold {part:?}: bad quantity"))?
                    as f64
                    / 1000.0,
            ),
        };
        out.push(Threshold { signal, below });
    }
    Ok(out)
}

/// One reading of a signal: what is available out of what capacity.
#[derive(Clone, Copy, Debug)]
pub struct Observation {
    pub available: f64,
    pub capacity: f64,
}

fn statvfs(path: &std::path::Path) -> Option<nix::sys::statvfs::Statvfs> {
    nix::sys::statvfs::statvfs(path).ok()
}

/// Reads `signal`; the file system signals are of the one holding `data` (the data directory).
fn observe(signal: Signal, data: &std::path::Path) -> Option<Observation> {
    Some(match signal {
        Signal::MemoryAvailable => {
            let (capacity, available) = super::stats::memory_available();
            Observation {
                available: available as f64,
                capacity: capacity as f64,
            }
        }
        Signal::NodefsAvailable | Signal::ImagefsAvailable => {
            let path = if signal == Signal::ImagefsAvailable {
                data.join("agent")
            } else {
                data.to_path_buf()
            };
            let s = statvfs(&path).or_else(|| statvfs(data))?;
            Observation {
                // f64 first: the counts and block size are 32 bits each on 32-bit ARM.
                available: s.blocks_available() as f64 * s.fragment_size() as f64,
                capacity: s.blocks() as f64 * s.fragment_size() as f64,
            }
        }
        Signal::NodefsInodesFree => {
            let s = statvfs(data)?;
            Observation {
                available: s.files_free() as f64,
                capacity: s.files() as f64,
            }
        }
        Signal::PidAvailable => {
            let (max, current) = super::stats::pids();
            Observation {
                available: max.saturating_sub(current) as f64,
                capacity: max as f64,
            }
        }
    })
}

impl Threshold {
    fn crossed(&self, o: &Observation) -> bool {
        let limit = match self.below {
            Amount::Absolute(v) => v,
            Amount::Percent(p) => o.capacity * p / 100.0,
        };
        o.available < limit
    }
    fn quantity(&self) -> String {
        match self.below {
            Amount::Percent(p) => format!("{p}%"),
            Amount::Absolute(v) => format!("{}", v as u64),
        }
    }
}

/// The eviction manager: its thresholds, the node conditions under pressure, the pod evicted last.
pub struct EvictionManager {
    thresholds: Vec<Threshold>,
    /// Node conditions under pressure right now (the node status heartbeat reports them).
    pressure: Mutex<Vec<&'static str>>,
    /// The pod evicted last, by UID (eviction waits for its containers to stop).
    last_evicted: Mutex<Option<String>>,
}

impl EvictionManager {
    pub fn new(thresholds: Vec<Threshold>) -> EvictionManager {
        EvictionManager {
            thresholds,
            pressure: Mutex::default(),
            last_evicted: Mutex::default(),
        }
    }

    /// The node conditions under pressure.
    pub fn conditions(&self) -> Vec<&'static str> {
        lock(&self.pressure).clone()
    }

    /// Observes every signal that has a threshold and records the conditions under pressure;
    /// returns the first threshold crossed, with what was observed.
    pub fn update(
        &self,
        observe: impl Fn(Signal) -> Option<Observation>,
    ) -> Option<(Threshold, Observation)> {
        let mut crossed = Vec::new();
        for t in &self.thresholds {
            if let Some(o) = observe(t.signal)
                && t.crossed(&o)
            {
                crossed.push((t.clone(), o));
            }
        }
        let mut conditions: Vec<&'static str> =
            crossed.iter().map(|(t, _)| t.signal.condition()).collect();
        conditions.dedup();
        *lock(&self.pressure) = conditions;
        crossed.first().cloned()
    }

    /// The pod evicted last, by UID.
    pub fn last_evicted(&self) -> Option<String> {
        lock(&self.last_evicted).clone()
    }

    /// Notes that pod `uid` has been evicted.
    pub fn evicted(&self, uid: Option<String>) {
        *lock(&self.last_evicted) = uid;
    }
}

/// Memory a pod requests, in bytes.
fn memory_request(pod: &Pod) -> i128 {
    kinglet_core::resources::pod_requests(pod)
        .get("memory")
        .copied()
        .unwrap_or(0)
        / 1000
}

/// The pods that may be evicted, in upstream's order: pods using more memory than they request
/// first, then lower priority, then the furthest over their request. `usage` is the working set
/// of each pod, by UID.
fn eviction_order<'a>(pods: &'a [Arc<Pod>], usage: &HashMap<String, u64>) -> Vec<&'a Arc<Pod>> {
    let mut candidates: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
                // Critical pods (system-node-critical and the like) are never evicted.
                && p.spec
                    .as_ref()
                    .and_then(|s| s.priority)
                    .is_none_or(|prio| prio < 2_000_000_000)
        })
        .collect();
    candidates.sort_by_key(|p| {
        let prio = p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        let used = usage
            .get(&p.uid().unwrap_or_default())
            .copied()
            .unwrap_or(0) as i128;
        let over = used - memory_request(p);
        (over <= 0, prio, std::cmp::Reverse(over))
    });
    candidates
}

impl Kubelet {
    /// One pass of the eviction manager.
    pub async fn check_pressure(self: &Arc<Self>, pods: &[Arc<Pod>]) {
        let data = &self.cfg.data_dir;
        let Some((threshold, observed)) = self.eviction_manager.update(|s| observe(s, data)) else {
            return;
        };
        if threshold.signal.condition() == "DiskPressure" {
            let k = self.clone();
            let freed = tokio::task::spawn_blocking(move || k.collect_images(true))
                .await
                .unwrap_or(0);
            if freed > 0 {
                // Reclaimed space: look again next time before evicting anyone.
                return;
            }
        }
        // The last pod evicted must be gone before another one is chosen.
        if let Some(uid) = self.eviction_manager.last_evicted()
            && self
                .records_of(&uid)
                .values()
                .flatten()
                .any(|r| r.running())
        {
            return;
        }
        self.evict_one(pods, &threshold, &observed).await;
    }

    /// Evicts the pod upstream would rank first for `threshold`.
    async fn evict_one(&self, pods: &[Arc<Pod>], threshold: &Threshold, observed: &Observation) {
        let usage = self.memory_by_pod();
        let Some(victim) = eviction_order(pods, &usage).first().copied() else {
            return;
        };
        let resource = threshold.signal.resource();
        let message = format!(
            "The node was low on resource: {resource}. Threshold quantity: {}, available: {}. ",
            threshold.quantity(),
            observed.available as u64
        );
        tracing::warn!(pod = %victim.name_any(), "evicting: {message}");
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &victim.namespace().unwrap_or_default());
        let patch = json!({"status": {"phase": "Failed", "reason": "Evicted", "message": message}});
        match api
            .patch_status(
                &victim.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => {
                self.eviction_manager.evicted(victim.uid());
                self.events.event(victim, true, "Evicted", message).await;
                // The status in the API is no longer the one reported last.
                self.status_manager
                    .forget(&victim.uid().unwrap_or_default());
            }
            Err(e) => tracing::warn!(pod = %victim.name_any(), "evicting: {e}"),
        }
    }
}

/// Runs the eviction manager forever.
pub async fn run(k: Arc<Kubelet>, pods: kube::runtime::reflector::Store<Pod>) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        k.check_pressure(&pods.state()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_like_the_kubelets() {
        let t = parse_thresholds("memory.available<100Mi, nodefs.available<10%").unwrap();
        assert_eq!(t[0].signal, Signal::MemoryAvailable);
        assert_eq!(t[0].below, Amount::Absolute(104_857_600.0));
        assert_eq!(t[1].below, Amount::Percent(10.0));
        assert_eq!(default_thresholds().len(), 4);
        for bad in [
            "memory.available>1Gi",
            "cpu.available<1",
            "nodefs.available<101%",
            "memory.available<lots",
        ] {
            assert!(parse_thresholds(bad).is_err(), "{bad}");
        }
        let o = Observation {
            available: 50.0,
            capacity: 1000.0,
        };
        assert!(t[1].crossed(&o));
        assert!(!t[0].crossed(&Observation {
            available: 2e9,
            capacity: 4e9
        }));
    }

    #[test]
    fn crossed_thresholds_set_the_node_conditions() {
        let m = EvictionManager::new(default_thresholds());
        let free = |available| Observation {
            available,
            capacity: 1e12,
        };
        // Memory short, disk fine.
        let first = m.update(|s| match s {
            Signal::MemoryAvailable => Some(free(1e6)),
            _ => Some(free(9e11)),
        });
        let (t, o) = first.unwrap();
        assert_eq!((t.signal, o.available), (Signal::MemoryAvailable, 1e6));
        assert_eq!(m.conditions(), ["MemoryPressure"]);
        // Both disk signals short: one condition. An unreadable signal counts as fine.
        let first = m.update(|s| match s {
            Signal::MemoryAvailable => None,
            _ => Some(free(1.0)),
        });
        assert_eq!(first.unwrap().0.signal, Signal::NodefsAvailable);
        assert_eq!(m.conditions(), ["DiskPressure"]);
        assert!(m.update(|_| Some(free(9e11))).is_none());
        assert!(m.conditions().is_empty());
    }

    #[test]
    fn pods_over_their_request_go_first_then_by_priority_then_by_excess() {
        let pod = |name: &str, priority: i32, request: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name, "uid": name},
                "spec": {"priority": priority, "containers": [{
                    "name": "c",
                    "resources": {"requests": {"memory": request}},
                }]},
            }))
            .unwrap()
        };
        let mut done = pod("done", 0, "0");
        done.status = serde_json::from_value(json!({"phase": "Succeeded"})).unwrap();
        let mut deleted = pod("deleted", 0, "0");
        deleted.metadata.deletion_timestamp =
            serde_json::from_value(json!("2024-01-01T00:00:00Z")).unwrap();
        let pods = [
            pod("within", 0, "100"),
            pod("over-high", 10, "100"),
            pod("over-little", 0, "100"),
            pod("over-much", 0, "100"),
            pod("critical", 2_000_000_000, "0"),
            done,
            deleted,
        ]
        .map(Arc::new);
        let usage: HashMap<String, u64> = [
            ("within", 50),
            ("over-high", 1000),
            ("over-little", 150),
            ("over-much", 900),
            ("critical", 1 << 30),
            ("done", 1 << 30),
            ("deleted", 1 << 30),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let order: Vec<String> = eviction_order(&pods, &usage)
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert_eq!(order, ["over-much", "over-little", "over-high", "within"]);
    }
}
