//! Image garbage collection, upstream's policy: when the image file system is more than
//! `image-gc-high-threshold` percent full, images no container uses (and unused for at least
//! `image-minimum-gc-age`) are removed, longest unused first, until usage is below
//! `image-gc-low-threshold`. Disk pressure forces a pass.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::Kubelet;

pub const CHECK_EVERY: Duration = Duration::from_secs(30);

/// Thresholds of the image GC (kubelet flags of the same names).
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub high_percent: u8,
    pub low_percent: u8,
    pub min_age: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            high_percent: 85,
            low_percent: 80,
            min_age: Duration::from_secs(120),
        }
    }
}

/// Percent of the file system holding `path` that is used.
fn used_percent(path: &std::path::Path) -> Option<f64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let total = s.blocks() as f64;
    (total > 0.0).then(|| 100.0 * (total - s.blocks_available() as f64) / total)
}

impl Kubelet {
    /// One pass; `forced` (disk pressure) ignores the high threshold. Returns images removed.
    pub fn collect_images(&self, forced: bool) -> usize {
        let policy = &self.cfg.image_gc;
        let fs = self.cfg.data_dir.join("agent");
        let Some(mut used) = used_percent(&fs) else {
            return 0;
        };
        let Ok(images) = self.images.list() else {
            return 0;
        };
        // Containers record their image as `name@<manifest digest>`.
        let in_use: HashSet<String> = self
            .runtime
            .list()
            .into_iter()
            .filter_map(|d| {
                let id = d.meta().ok()?.image_id;
                Some(id.rsplit_once('@')?.1.to_string())
            })
            .collect();
        let now = Instant::now();
        let mut unused_since = self.unused_since.lock().unwrap_or_else(|e| e.into_inner());
        let unused: HashMap<String, Instant> = images
            .iter()
            .filter(|i| !in_use.contains(&i.manifest))
            .map(|i| (i.id.clone(), *unused_since.get(&i.id).unwrap_or(&now)))
            .collect();
        *unused_since = unused.clone();
        if !forced && used < policy.high_percent as f64 {
            return 0;
        }
        let mut candidates: Vec<(&String, &Instant)> = unused
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= policy.min_age)
            .collect();
        candidates.sort_by_key(|(_, since)| **since);
        let mut removed = 0;
        for (id, _) in candidates {
            if used < policy.low_percent as f64 {
                break;
            }
            match self.images.remove(id) {
                Ok(_) => {
                    tracing::info!(image = %id, "image garbage-collected");
                    removed += 1;
                    unused_since.remove(id);
                }
                Err(e) => tracing::warn!(image = %id, "image GC: {e:#}"),
            }
            used = used_percent(&fs).unwrap_or(0.0);
        }
        removed
    }
}

/// Runs the image GC forever, first after one period (so that pods can start after a restart).
pub async fn run(k: std::sync::Arc<Kubelet>) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let kubelet = k.clone();
        let _ = tokio::task::spawn_blocking(move || kubelet.collect_images(false)).await;
    }
}
