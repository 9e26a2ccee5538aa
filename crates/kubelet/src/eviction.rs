//! Node pressure and eviction, as the kubelet's eviction manager does it: hard thresholds on
//! `memory.available`, `nodefs.available`, `nodefs.inodesFree`, `imagefs.available` and
//! `pid.available` (upstream's defaults unless `eviction-hard` says otherwise). A crossed
//! threshold sets the node's MemoryPressure / DiskPressure / PIDPressure condition; disk
//! pressure first frees unused images, then, as for the others, one pod at a time is evicted
//! (phase Failed, reason Evicted) in upstream's order: pods using more memory than they
//! request first, then lower priority, then the furthest over their request.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::Kubelet;

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

fn observe(signal: Signal, k: &Kubelet) -> Option<Observation> {
    let data = &k.cfg.data_dir;
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
                data.clone()
            };
            let s = statvfs(&path).or_else(|| statvfs(data))?;
            Observation {
                available: (s.blocks_available() * s.fragment_size()) as f64,
                capacity: (s.blocks() * s.fragment_size()) as f64,
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

/// The node conditions under pressure right now (shared with the status heartbeat).
#[derive(Default)]
pub struct Pressure(Mutex<Vec<&'static str>>);

impl Pressure {
    pub fn conditions(&self) -> Vec<&'static str> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, v: Vec<&'static str>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = v;
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

impl Kubelet {
    /// One pass of the eviction manager.
    pub async fn check_pressure(self: &Arc<Self>, pods: &[Arc<Pod>]) {
        let mut crossed = Vec::new();
        for t in &self.cfg.eviction_hard {
            if let Some(o) = observe(t.signal, self)
                && t.crossed(&o)
            {
                crossed.push((t.clone(), o));
            }
        }
        let mut conditions: Vec<&'static str> =
            crossed.iter().map(|(t, _)| t.signal.condition()).collect();
        conditions.dedup();
        self.pressure.set(conditions);
        let Some((threshold, observed)) = crossed.first().cloned() else {
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
        let last = self
            .last_evicted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(uid) = last
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
        let Some(victim) = candidates.first() else {
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
                *self.last_evicted.lock().unwrap_or_else(|e| e.into_inner()) = victim.uid();
                self.event(victim, true, "Evicted", message).await;
                self.reported
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&victim.uid().unwrap_or_default());
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
}
