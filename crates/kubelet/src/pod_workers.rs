//! Pod workers, as upstream's `pod_workers.go`: at most one sync of a pod runs at a time. The
//! main loop asks for a sync of every pod each pass; a pod whose last sync is still running is
//! skipped rather than queued, since the next pass asks again anyway.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use super::lock;

#[derive(Default)]
pub struct PodWorkers {
    /// Pods with a sync in flight, by UID (shared with the tasks running them).
    busy: Arc<Mutex<HashSet<String>>>,
}

impl PodWorkers {
    /// Runs `sync` in the background unless a sync of pod `uid` is already running; returns
    /// whether it was started.
    pub fn spawn(&self, uid: String, sync: impl Future<Output = ()> + Send + 'static) -> bool {
        if !lock(&self.busy).insert(uid.clone()) {
            return false;
        }
        let busy = self.busy.clone();
        tokio::spawn(async move {
            sync.await;
            lock(&busy).remove(&uid);
        });
        true
    }

    /// Whether a sync of pod `uid` is running (its containers are not orphans to clean up then).
    pub fn is_busy(&self, uid: &str) -> bool {
        lock(&self.busy).contains(uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_sync_per_pod_at_a_time() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let workers = PodWorkers::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let sync = |release: Option<tokio::sync::oneshot::Receiver<()>>| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                if let Some(r) = release {
                    let _ = r.await;
                }
            }
        };
        let (release, released) = tokio::sync::oneshot::channel();
        assert!(workers.spawn("a".into(), sync(Some(released))));
        assert!(workers.is_busy("a"));
        // While it runs, another sync of the same pod is dropped; another pod's starts.
        assert!(!workers.spawn("a".into(), sync(None)));
        assert!(workers.spawn("b".into(), sync(None)));
        release.send(()).unwrap();
        // The pod is free again once its sync has returned.
        let freed = async {
            while workers.is_busy("a") || workers.is_busy("b") {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), freed)
            .await
            .expect("the pods stay busy");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(workers.spawn("a".into(), sync(None)));
    }
}
