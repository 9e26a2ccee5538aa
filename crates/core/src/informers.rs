//! One watch per kind, shared by every control loop that needs it (upstream's shared informer
//! factory): each object is decoded and cached once however many controllers look at it, and
//! every subscriber hears of every change, deletions included.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// Changes a subscriber may fall behind by before it is resynced from the cache.
const BUFFER: usize = 16 * 1024;

/// What a cached kind must be: a typed, cluster-listable API object.
pub trait Kind:
    Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}
impl<K> Kind for K where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// A cache of every `K` in the cluster plus a fan-out of its changes.
pub struct Shared<K: Kind> {
    reader: Store<K>,
    changes: broadcast::Sender<Arc<K>>,
    // Not `Store::wait_until_ready`: its one-shot channel wakes only the last of several
    // waiters, and every controller waits here.
    synced: watch::Receiver<bool>,
}

impl<K: Kind> Shared<K> {
    /// Starts the watch; the task ends when the handle is aborted (leadership lost).
    pub fn start(client: &kube::Client) -> (Self, JoinHandle<()>) {
        let (reader, mut writer) = reflector::store::<K>();
        let (changes, _) = broadcast::channel(BUFFER);
        let (synced_tx, synced) = watch::channel(false);
        let shared = Shared {
            reader: reader.clone(),
            changes: changes.clone(),
            synced,
        };
        let events = watcher(
            kube::Api::<K>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff();
        let task = tokio::spawn(async move {
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                let Ok(event) = event else { continue };
                match &event {
                    watcher::Event::Apply(obj) => {
                        writer.apply_watcher_event(&event);
                        if let Some(cached) = reader.get(&ObjectRef::from_obj(obj)) {
                            let _ = changes.send(cached);
                        }
                    }
                    watcher::Event::Delete(obj) => {
                        writer.apply_watcher_event(&event);
                        let _ = changes.send(Arc::new(obj.clone()));
                    }
                    watcher::Event::InitDone => {
                        // A (re)list: everything present is news, and whatever vanished while
                        // the watch was down is reported in its last known state.
                        let before = reader.state();
                        writer.apply_watcher_event(&event);
                        synced_tx.send_replace(true);
                        for gone in before
                            .into_iter()
                            .filter(|o| reader.get(&ObjectRef::from_obj(o.as_ref())).is_none())
                        {
                            let _ = changes.send(gone);
                        }
                        for obj in reader.state() {
                            let _ = changes.send(obj);
                        }
                    }
                    watcher::Event::Init | watcher::Event::InitApply(_) => {
                        writer.apply_watcher_event(&event)
                    }
                }
            }
        });
        (shared, task)
    }

    pub fn store(&self) -> Store<K> {
        self.reader.clone()
    }

    /// Waits for the first full list (upstream's WaitForCacheSync).
    pub async fn synced(&self) {
        let _ = self.synced.clone().wait_for(|s| *s).await;
    }

    /// Every change from now on, starting with everything already cached. A subscriber that
    /// falls more than `BUFFER` changes behind is handed the whole cache again.
    pub fn subscribe(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        // Subscribe before looking at the cache so nothing falls between the two.
        let rx = self.changes.subscribe();
        let snapshot = if *self.synced.borrow() {
            self.reader.state()
        } else {
            Vec::new()
        };
        let reader = self.reader.clone();
        let live = futures::stream::unfold((rx, reader), |(mut rx, reader)| async move {
            let batch = match rx.recv().await {
                Ok(obj) => vec![obj],
                Err(broadcast::error::RecvError::Lagged(_)) => reader.state(),
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((futures::stream::iter(batch), (rx, reader)))
        })
        .flatten();
        futures::stream::iter(snapshot).chain(live)
    }
}

/// The shared caches the control loops use.
pub struct Informers {
    pub pods: Shared<k8s_openapi::api::core::v1::Pod>,
    pub nodes: Shared<k8s_openapi::api::core::v1::Node>,
}

impl Informers {
    pub fn start(client: &kube::Client) -> (Arc<Self>, Vec<JoinHandle<()>>) {
        let (pods, p) = Shared::start(client);
        let (nodes, n) = Shared::start(client);
        (Arc::new(Informers { pods, nodes }), vec![p, n])
    }
}
