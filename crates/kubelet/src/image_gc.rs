//! Image garbage collection, upstream's policy: when the image file system is more than
//! `image-gc-high-threshold` percent full, images no container uses (and unused for at least
//! `image-minimum-gc-age`) are removed, longest unused first, until usage is below
//! `image-gc-low-threshold`. Disk pressure forces a pass.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kinglet_image::ImageStore;
use kinglet_runtime::Runtime;

use super::{Kubelet, lock};

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
fn used_percent(path: &Path) -> Option<f64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let total = s.blocks() as f64;
    (total > 0.0).then(|| 100.0 * (total - s.blocks_available() as f64) / total)
}

/// The image garbage collector: its policy, and since when each image has been unused.
pub struct ImageGcManager {
    policy: Policy,
    /// Since when each unused image (by ID) has been unused.
    unused_since: Mutex<HashMap<String, Instant>>,
}

impl ImageGcManager {
    pub fn new(policy: Policy) -> ImageGcManager {
        ImageGcManager {
            policy,
            unused_since: Mutex::default(),
        }
    }

    /// One pass: when the file system holding `fs` is fuller than the policy allows, removes
    /// unused images from `images` (those no container of `runtime` uses); `forced` (disk
    /// pressure) ignores the high threshold. Returns how many were removed.
    pub fn collect(
        &self,
        images: &ImageStore,
        runtime: &Runtime,
        fs: &Path,
        forced: bool,
    ) -> usize {
        let Some(mut used) = used_percent(fs) else {
            return 0;
        };
        let Ok(list) = images.list() else {
            return 0;
        };
        // Containers record their image as `name@<manifest digest>`.
        let in_use: HashSet<String> = runtime
            .list()
            .into_iter()
            .filter_map(|d| {
                let id = d.meta().ok()?.image_id;
                Some(id.rsplit_once('@')?.1.to_string())
            })
            .collect();
        let now = Instant::now();
        // Held for the whole pass: a forced pass and the periodic one must not both remove.
        let mut unused_since = lock(&self.unused_since);
        let unused = track_unused(
            &unused_since,
            list.iter()
                .filter(|i| !in_use.contains(&i.manifest))
                .map(|i| &i.id),
            now,
        );
        *unused_since = unused.clone();
        if !forced && used < self.policy.high_percent as f64 {
            return 0;
        }
        let mut removed = 0;
        for id in removable(&unused, now, self.policy.min_age) {
            if used < self.policy.low_percent as f64 {
                break;
            }
            match images.remove(&id) {
                Ok(_) => {
                    tracing::info!(image = %id, "image garbage-collected");
                    removed += 1;
                    unused_since.remove(&id);
                }
                Err(e) => tracing::warn!(image = %id, "image GC: {e:#}"),
            }
            used = used_percent(fs).unwrap_or(0.0);
        }
        removed
    }
}

/// Since when each of the `unused` images has been unused: since the earlier time if it already
/// was, since `now` if it just became so. Images in use drop out, so a later spell unused counts
/// from its own start.
fn track_unused<'a>(
    since: &HashMap<String, Instant>,
    unused: impl Iterator<Item = &'a String>,
    now: Instant,
) -> HashMap<String, Instant> {
    unused
        .map(|id| (id.clone(), *since.get(id).unwrap_or(&now)))
        .collect()
}

/// The unused images that have been unused for `min_age`, longest unused first.
fn removable(unused: &HashMap<String, Instant>, now: Instant, min_age: Duration) -> Vec<String> {
    let mut candidates: Vec<(&String, &Instant)> = unused
        .iter()
        .filter(|(_, since)| now.duration_since(**since) >= min_age)
        .collect();
    candidates.sort_by_key(|(_, since)| **since);
    candidates.into_iter().map(|(id, _)| id.clone()).collect()
}

impl Kubelet {
    /// One image GC pass; `forced` (disk pressure) ignores the high threshold. Returns images
    /// removed.
    pub fn collect_images(&self, forced: bool) -> usize {
        // Where the layers are (`ImageStore::open`): the file system that images fill, even
        // when it is mounted apart from the rest of the data directory.
        let fs = self.cfg.data_dir.join("agent/store");
        self.image_gc_manager
            .collect(&self.images, &self.runtime, &fs, forced)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_go_once_unused_long_enough_longest_unused_first() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let min_age = Duration::from_secs(120);
        // a and b become unused at t0, c at 100 s; b is used again at 200 s and not at 300 s.
        let pass = |since: &HashMap<String, Instant>, unused: &[&str], now| {
            let unused = ids(unused);
            track_unused(since, unused.iter(), now)
        };
        let since = pass(&HashMap::new(), &["a", "b"], at(0));
        let since = pass(&since, &["a", "b", "c"], at(100));
        assert_eq!(
            since["a"],
            at(0),
            "unused from the first pass that saw it unused"
        );
        assert_eq!(since["c"], at(100));
        assert_eq!(
            removable(&since, at(100), min_age),
            ids(&[]),
            "none old enough"
        );
        let since = pass(&since, &["a", "c"], at(200));
        assert!(!since.contains_key("b"), "in use");
        assert_eq!(removable(&since, at(200), min_age), ids(&["a"]));
        let since = pass(&since, &["a", "b", "c"], at(300));
        assert_eq!(since["b"], at(300), "unused again: the clock starts over");
        assert_eq!(removable(&since, at(300), min_age), ids(&["a", "c"]));
    }
}
