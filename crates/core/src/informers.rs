//! The one watch cache every component uses (upstream's shared informer): kube-runtime's
//! watcher feeding its reflector store, plus a fan-out of every change, deletions included.
//! Each object is decoded and cached once however many loops look at it. The control plane
//! shares one per kind (`Informers`); node-side components watch what their node needs (its
//! pods, Services, policies), each through a `Shared` too. A node-side cache may keep a copy
//! on disk (`Persist`) that it starts from when the server cannot be reached (`offline`).

pub mod offline;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
/// How long changes gather before a persisted cache is written again: a node killed within
/// this window of a change comes back one change behind, which its watch then corrects.
const SAVE_AFTER: Duration = Duration::from_secs(2);

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
    /// Whether the server has listed at least once (else the cache may hold only its copy).
    live: Arc<AtomicBool>,
}

/// A cache's copy on disk, for a node: written (debounced) after changes once the server has
/// listed, and read back when the first list finds the server unreachable (`offline`).
pub struct Persist<K> {
    file: PathBuf,
    /// Which objects read back may be used, beyond `offline::sane`.
    keep: Box<dyn Fn(&K) -> bool + Send + Sync>,
    encode: fn(&[Arc<K>]) -> serde_json::Result<Vec<u8>>,
}

impl<K: Kind + serde::Serialize> Persist<K> {
    pub fn new(file: PathBuf, keep: impl Fn(&K) -> bool + Send + Sync + 'static) -> Persist<K> {
        Persist {
            file,
            keep: Box::new(keep),
            encode: encode::<K>,
        }
    }
}

/// Objects as a JSON list in name order, so that an unchanged cache encodes the same.
fn encode<K: Kind + serde::Serialize>(objs: &[Arc<K>]) -> serde_json::Result<Vec<u8>> {
    let key = |o: &K| {
        let m = o.meta();
        (m.namespace.clone(), m.name.clone())
    };
    let mut objs: Vec<&K> = objs.iter().map(AsRef::as_ref).collect();
    objs.sort_by_cached_key(|o| key(o));
    serde_json::to_vec(&objs)
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
        Self::watch_persisted(api, config, buffer, None)
    }

    /// The same, keeping a copy on disk when `persist` says where.
    pub fn watch_persisted(
        api: kube::Api<K>,
        config: watcher::Config,
        buffer: usize,
        persist: Option<Persist<K>>,
    ) -> (Self, JoinHandle<()>) {
        let (shared, mut feed) = Self::fed(buffer);
        let events = watcher(api, config).default_backoff();
        let mut saver = persist.map(|persist| Saver {
            persist,
            due: None,
            written: None,
            seeded: false,
        });
        let task = tokio::spawn(async move {
            futures::pin_mut!(events);
            loop {
                let due = saver.as_ref().and_then(|s| s.due);
                let save_due = async {
                    match due {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    event = events.next() => match event {
                        None => break,
                        Some(Ok(event)) => {
                            let listed = matches!(event, watcher::Event::InitDone);
                            feed.apply(event);
                            if listed {
                                feed.live.store(true, Ordering::Relaxed);
                            }
                            if let Some(s) = &mut saver {
                                s.changed();
                            }
                        }
                        Some(Err(e)) => {
                            if let Some(s) = &mut saver {
                                s.failed(&e, &mut feed);
                            }
                        }
                    },
                    _ = save_due => {
                        if let Some(s) = &mut saver {
                            s.save(&feed).await;
                        }
                    }
                }
            }
        });
        (shared, task)
    }

    /// A cache and the feed that fills it.
    fn fed(buffer: usize) -> (Self, Feed<K>) {
        let (reader, writer) = reflector::store::<K>();
        let (changes, _) = broadcast::channel(buffer);
        let (synced_tx, synced) = watch::channel(false);
        let live = Arc::new(AtomicBool::new(false));
        let shared = Shared {
            reader: reader.clone(),
            changes: changes.clone(),
            synced,
            live: live.clone(),
        };
        let feed = Feed {
            writer,
            reader,
            changes,
            synced: synced_tx,
            live,
        };
        (shared, feed)
    }

    /// Whether the server has listed this cache at least once since it started; until then
    /// a persisted cache may hold only what it read back from disk.
    pub fn live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
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
    live: Arc<AtomicBool>,
}

impl<K: Kind> Feed<K> {
    /// Fills the cache from its copy on disk, as a list would.
    fn seed(&mut self, objs: Vec<K>) {
        self.apply(watcher::Event::Init);
        for obj in objs {
            self.apply(watcher::Event::InitApply(obj));
        }
        self.apply(watcher::Event::InitDone);
    }

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

/// A persisted cache's copy on disk: when it is written and whether it was read back.
struct Saver<K> {
    persist: Persist<K>,
    /// When the next write is due (changes gather until then).
    due: Option<tokio::time::Instant>,
    /// A hash of what was written last, so that an unchanged cache is not written again.
    written: Option<u64>,
    /// Whether the copy has been read back already (once at most).
    seeded: bool,
}

impl<K: Kind> Saver<K> {
    fn changed(&mut self) {
        self.due
            .get_or_insert_with(|| tokio::time::Instant::now() + SAVE_AFTER);
    }

    /// The watch failed: if it has never listed and the server could not be reached (no
    /// answer at all), the cache starts from its copy on disk. The watch keeps retrying; its
    /// first list replaces the copy (the server wins).
    fn failed(&mut self, e: &watcher::Error, feed: &mut Feed<K>) {
        let watcher::Error::InitialListFailed(e) = e else {
            return;
        };
        if self.seeded || *feed.synced.borrow() || !offline::unreachable(e) {
            return;
        }
        self.seeded = true;
        let file = &self.persist.file;
        if let Some(objs) = offline::decode_list(file, &*self.persist.keep) {
            tracing::info!(
                "the API server is unreachable ({e}); starting from the {} object(s) in {}",
                objs.len(),
                file.display()
            );
            feed.seed(objs);
        }
    }

    /// Writes the cache if the server has listed it and it changed since the last write.
    async fn save(&mut self, feed: &Feed<K>) {
        self.due = None;
        if !feed.live.load(Ordering::Relaxed) {
            return;
        }
        let (objs, encode) = (feed.reader.state(), self.persist.encode);
        let (file, last) = (self.persist.file.clone(), self.written);
        // Off the async workers: a cluster's Services and slices may take a while to encode.
        let written = tokio::task::spawn_blocking(move || {
            use std::hash::{Hash, Hasher};
            let data = encode(&objs).map_err(|e| format!("{}: {e}", file.display()))?;
            let mut h = std::collections::hash_map::DefaultHasher::new();
            data.hash(&mut h);
            let hash = h.finish();
            if last != Some(hash) {
                offline::write_private(&file, &data)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
            }
            Ok::<_, String>(hash)
        })
        .await;
        match written {
            Ok(Ok(hash)) => self.written = Some(hash),
            Ok(Err(e)) => tracing::warn!("caching {e}"),
            Err(e) => tracing::warn!("caching: {e}"),
        }
    }
}

/// The pods bound to `node`: what its kubelet runs and its service proxy opens host ports for.
/// With `cache`, a copy is kept in `<cache>/pods.json` for a start without the server.
pub fn pods_on_node(
    client: &kube::Client,
    node: &str,
    cache: Option<&Path>,
) -> Arc<Shared<k8s_openapi::api::core::v1::Pod>> {
    use k8s_openapi::api::core::v1::Pod;
    let on_node = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let persist = cache.map(|dir| {
        let node = node.to_string();
        // Only this node's pods are run from the copy.
        Persist::new(dir.join("pods.json"), move |p: &Pod| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
        })
    });
    let api = kube::Api::all(client.clone());
    Arc::new(Shared::watch_persisted(api, on_node, SMALL_BUFFER, persist).0)
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
        let (shared, feed) = Shared::fed(SMALL_BUFFER);
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

    /// A client of a server that refuses connections (the port was just freed).
    async fn refused() -> kube::Client {
        let port = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}").parse().unwrap();
        kube::Client::try_from(kube::Config::new(url)).unwrap()
    }

    /// A client of a server that answers every request 403.
    async fn forbidding() -> kube::Client {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap())
            .parse()
            .unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = l.accept().await {
                let mut buf = vec![0; 4096];
                let _ = conn.read(&mut buf).await;
                let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403}"#;
                let reply = format!(
                    "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            }
        });
        kube::Client::try_from(kube::Config::new(url)).unwrap()
    }

    fn persist(file: &Path) -> Persist<ConfigMap> {
        Persist::new(file.to_path_buf(), |c: &ConfigMap| {
            c.metadata.name.as_deref() != Some("refused")
        })
    }

    fn names(shared: &Shared<ConfigMap>) -> Vec<String> {
        let mut names: Vec<_> = shared
            .state()
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_persisted_cache_is_written_once_listed_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("cache/cms.json");
        let (shared, mut feed) = Shared::<ConfigMap>::fed(SMALL_BUFFER);
        let mut saver = Saver {
            persist: persist(&file),
            due: None,
            written: None,
            seeded: false,
        };
        feed.seed(vec![cm("a", "1")]);
        saver.save(&feed).await;
        assert!(
            !file.exists(),
            "nothing is written before the server has listed"
        );

        for e in [Event::Init, Event::InitApply(cm("b", "2")), Event::InitDone] {
            feed.apply(e);
        }
        feed.live.store(true, Ordering::Relaxed);
        assert!(shared.live());
        saver.changed();
        assert!(saver.due.is_some());
        saver.save(&feed).await;
        assert!(saver.due.is_none());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(file.parent().unwrap()), 0o700);
        let back = offline::decode_list::<ConfigMap>(&file, &|_| true).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].metadata.name.as_deref(), Some("b"));

        // Unchanged: not written again.
        std::fs::remove_file(&file).unwrap();
        saver.save(&feed).await;
        assert!(!file.exists());
        feed.apply(Event::Apply(cm("c", "3")));
        saver.save(&feed).await;
        assert_eq!(
            offline::decode_list::<ConfigMap>(&file, &|_| true)
                .unwrap()
                .len(),
            2
        );
    }

    #[tokio::test]
    async fn an_unreachable_server_starts_the_cache_from_its_copy_but_an_answer_does_not() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("cms.json");
        let items = serde_json::json!([
            {"metadata": {"name": "a", "namespace": "default", "uid": "u-1"}},
            {"metadata": {"name": "refused", "namespace": "default"}},
            {"metadata": {"name": "x", "namespace": "default", "uid": "../../x"}},
        ]);
        offline::write_private(&file, &serde_json::to_vec(&items).unwrap()).unwrap();
        let start = |client: kube::Client, file: &Path| {
            let api = kube::Api::<ConfigMap>::all(client);
            Shared::watch_persisted(api, Default::default(), SMALL_BUFFER, Some(persist(file)))
        };
        let wait = |s: &Shared<ConfigMap>| {
            let s = s.synced.clone();
            async move {
                let mut s = s;
                tokio::time::timeout(Duration::from_secs(3), s.wait_for(|v| *v))
                    .await
                    .is_ok()
            }
        };

        let (shared, task) = start(refused().await, &file);
        assert!(wait(&shared).await, "seeded from the copy");
        assert_eq!(
            names(&shared),
            ["a"],
            "only what the copy may be trusted with"
        );
        assert!(!shared.live());
        task.abort();

        // The server answered (403): its word stands, the copy is not used.
        let (shared, task) = start(forbidding().await, &file);
        assert!(!wait(&shared).await);
        assert!(shared.state().is_empty());
        task.abort();

        // A corrupt copy is ignored: the cache waits for the server.
        std::fs::write(&file, b"[{\"metadata\"").unwrap();
        let (shared, task) = start(refused().await, &file);
        assert!(!wait(&shared).await);
        task.abort();
    }
}
