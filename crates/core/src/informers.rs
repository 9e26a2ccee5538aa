//! The one watch cache every component uses (upstream's shared informer): kube-runtime's
//! watcher feeding its reflector store, plus a fan-out of every change, deletions included.
//! Each object is decoded and cached once however many loops look at it. The control plane
//! shares one per kind (`Informers`); node-side components watch what their node needs (its
//! pods, Services, policies), each through a `Shared` too.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// Changes a subscriber of the control plane's pod and node caches may fall behind by before it
/// is resynced from the cache (the scheduler and workload controllers take bursts of
/// thousands). The ring is allocated whole, ~40 bytes a slot, so other caches take less.
const BUFFER: usize = 16 * 1024;
/// The ring of the control plane's other caches.
pub const MEDIUM_BUFFER: usize = 1024;
/// The ring of a node-side cache: a subscriber that lags more is resynced, cheap on a node.
pub const SMALL_BUFFER: usize = 256;

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
    /// Starts the watch of every `K`; the task ends when the handle is aborted (leadership lost).
    pub fn start(client: &kube::Client) -> (Self, JoinHandle<()>) {
        Self::start_with(client, BUFFER)
    }

    /// The same with a ring of `buffer` changes.
    pub fn start_with(client: &kube::Client, buffer: usize) -> (Self, JoinHandle<()>) {
        Self::watch(
            kube::Api::all(client.clone()),
            watcher::Config::default(),
            buffer,
        )
    }

    /// Starts a watch of `api` narrowed by `config` (a node's pods: `spec.nodeName=<node>`),
    /// whose subscribers may lag `buffer` changes before they are resynced.
    pub fn watch(
        api: kube::Api<K>,
        config: watcher::Config,
        buffer: usize,
    ) -> (Self, JoinHandle<()>) {
        let (reader, writer) = reflector::store::<K>();
        let (changes, _) = broadcast::channel(buffer);
        let (synced_tx, synced) = watch::channel(false);
        let shared = Shared {
            reader: reader.clone(),
            changes: changes.clone(),
            synced,
        };
        let events = watcher(api, config).default_backoff();
        let mut feed = Feed {
            writer,
            reader,
            changes,
            synced: synced_tx,
        };
        let task = tokio::spawn(async move {
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                if let Ok(event) = event {
                    feed.apply(event);
                }
            }
        });
        (shared, task)
    }

    pub fn store(&self) -> Store<K> {
        self.reader.clone()
    }

    /// Every cached object.
    pub fn state(&self) -> Vec<Arc<K>> {
        self.reader.state()
    }

    /// Rings `wake` on every change, for loops that rebuild from the store when woken.
    pub fn wake_on_change(&self, wake: Arc<tokio::sync::Notify>) -> JoinHandle<()> {
        tokio::spawn(self.subscribe().for_each(move |_| {
            wake.notify_one();
            async {}
        }))
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

/// What a watch's events do to a cache: the store is updated and every change fanned out.
struct Feed<K: Kind> {
    writer: reflector::store::Writer<K>,
    reader: Store<K>,
    changes: broadcast::Sender<Arc<K>>,
    synced: watch::Sender<bool>,
}

impl<K: Kind> Feed<K> {
    fn apply(&mut self, event: watcher::Event<K>) {
        match &event {
            watcher::Event::Apply(obj) => {
                self.writer.apply_watcher_event(&event);
                if let Some(cached) = self.reader.get(&ObjectRef::from_obj(obj)) {
                    let _ = self.changes.send(cached);
                }
            }
            watcher::Event::Delete(obj) => {
                self.writer.apply_watcher_event(&event);
                let _ = self.changes.send(Arc::new(obj.clone()));
            }
            watcher::Event::InitDone => {
                // A (re)list: everything present is news, and whatever vanished while the
                // watch was down is reported in its last known state.
                let before = self.reader.state();
                self.writer.apply_watcher_event(&event);
                self.synced.send_replace(true);
                for gone in before
                    .into_iter()
                    .filter(|o| self.reader.get(&ObjectRef::from_obj(o.as_ref())).is_none())
                {
                    let _ = self.changes.send(gone);
                }
                for obj in self.reader.state() {
                    let _ = self.changes.send(obj);
                }
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {
                self.writer.apply_watcher_event(&event)
            }
        }
    }
}

/// The pods bound to `node`: what its kubelet runs and its service proxy opens host ports for.
pub fn pods_on_node(
    client: &kube::Client,
    node: &str,
) -> Arc<Shared<k8s_openapi::api::core::v1::Pod>> {
    let on_node = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    Arc::new(Shared::watch(kube::Api::all(client.clone()), on_node, SMALL_BUFFER).0)
}

/// The shared caches the control loops use: one watch per kind, however many loops read it.
pub struct Informers {
    pub pods: Shared<k8s_openapi::api::core::v1::Pod>,
    pub nodes: Shared<k8s_openapi::api::core::v1::Node>,
    pub replicasets: Shared<k8s_openapi::api::apps::v1::ReplicaSet>,
    pub jobs: Shared<k8s_openapi::api::batch::v1::Job>,
    pub services: Shared<k8s_openapi::api::core::v1::Service>,
}

impl Informers {
    pub fn start(client: &kube::Client) -> (Arc<Self>, Vec<JoinHandle<()>>) {
        let (pods, p) = Shared::start(client);
        let (nodes, n) = Shared::start(client);
        let (replicasets, r) = Shared::start_with(client, MEDIUM_BUFFER);
        let (jobs, j) = Shared::start_with(client, MEDIUM_BUFFER);
        let (services, s) = Shared::start_with(client, MEDIUM_BUFFER);
        let informers = Informers {
            pods,
            nodes,
            replicasets,
            jobs,
            services,
        };
        (Arc::new(informers), vec![p, n, r, j, s])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use watcher::Event;

    fn cm(name: &str, rv: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": rv}
        }))
        .unwrap()
    }

    /// A cache fed by hand, and what one subscriber has been told so far (name@version).
    fn fed() -> (Feed<ConfigMap>, Shared<ConfigMap>) {
        let (reader, writer) = reflector::store::<ConfigMap>();
        let (changes, _) = broadcast::channel(SMALL_BUFFER);
        let (synced_tx, synced) = watch::channel(false);
        let shared = Shared {
            reader: reader.clone(),
            changes: changes.clone(),
            synced,
        };
        let feed = Feed {
            writer,
            reader,
            changes,
            synced: synced_tx,
        };
        (feed, shared)
    }

    async fn told(s: &mut (impl Stream<Item = Arc<ConfigMap>> + Unpin), n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let cm = tokio::time::timeout(std::time::Duration::from_secs(1), s.next())
                .await
                .expect("a change")
                .expect("open");
            let m = &cm.metadata;
            out.push(format!(
                "{}@{}",
                m.name.as_deref().unwrap_or_default(),
                m.resource_version.as_deref().unwrap_or_default()
            ));
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_relist_reports_what_vanished_and_everything_present() {
        let (mut feed, shared) = fed();
        let mut changes = Box::pin(shared.subscribe());
        for e in [
            Event::Init,
            Event::InitApply(cm("a", "1")),
            Event::InitApply(cm("b", "2")),
            Event::InitDone,
        ] {
            feed.apply(e);
        }
        shared.synced().await;
        assert_eq!(told(&mut changes, 2).await, ["a@1", "b@2"]);
        feed.apply(Event::Apply(cm("a", "3")));
        feed.apply(Event::Delete(cm("b", "2")));
        assert_eq!(told(&mut changes, 2).await, ["a@3", "b@2"]);
        assert!(
            shared
                .store()
                .get(&ObjectRef::new("b").within("default"))
                .is_none()
        );

        // The watch breaks; the relist finds c new and a gone (deleted while nobody watched).
        feed.apply(Event::Apply(cm("d", "4")));
        assert_eq!(told(&mut changes, 1).await, ["d@4"]);
        for e in [
            Event::Init,
            Event::InitApply(cm("c", "5")),
            Event::InitApply(cm("d", "4")),
            Event::InitDone,
        ] {
            feed.apply(e);
        }
        // a in its last known state (gone from the store), then everything present.
        assert_eq!(told(&mut changes, 3).await, ["a@3", "c@5", "d@4"]);
        let mut names: Vec<_> = shared
            .state()
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["c", "d"]);

        // A subscriber that joins now starts from the whole cache.
        let mut late = Box::pin(shared.subscribe());
        assert_eq!(told(&mut late, 2).await, ["c@5", "d@4"]);
    }
}
