//! The node's one view of Services and EndpointSlices, shared by the service proxy and the
//! cluster DNS: per Service its object and its slices, and for each reader the Services that
//! changed since it last looked. A change costs a reader one Service's work, however many
//! Services the cluster has (kube-proxy's change trackers do the same). The objects come from
//! two watch caches (`kinglet_core::informers::Shared`) and are shared with them, not copied.
//! With a cache directory, both keep a copy on disk, so that a node restarted while the API
//! server is unreachable still programs its Services and answers DNS from what it last knew.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kinglet_core::informers::{Kind, Persist, SMALL_BUFFER, Shared as Cache};
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;

/// The label tying an EndpointSlice to its Service.
const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// A Service as it is now, with its slices in name order.
#[derive(Clone, Debug)]
pub struct ServiceState {
    pub service: Arc<Service>,
    pub slices: Vec<Arc<EndpointSlice>>,
}

impl ServiceState {
    pub fn slices(&self) -> Vec<&EndpointSlice> {
        self.slices.iter().map(AsRef::as_ref).collect()
    }
}

/// A Service (`ns/name`) that changed, and what it is now (`None`: gone).
#[derive(Clone, Debug)]
pub struct Change {
    pub key: String,
    pub now: Option<ServiceState>,
}

/// A handle on the shared watch; clones share it.
#[derive(Clone)]
pub struct ServiceWatch {
    shared: Arc<Shared>,
}

/// One reader's view: `changes()` hands out what changed since its last call.
pub struct Subscription {
    shared: Arc<Shared>,
    id: usize,
}

struct Shared {
    state: Mutex<State>,
    synced: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct Entry {
    service: Option<Arc<Service>>,
    slices: BTreeMap<String, Arc<EndpointSlice>>,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Each slice (`ns/name`) and the Service it is filed under.
    slice_owner: HashMap<String, String>,
    /// Whether each watch (Services, slices) has listed once.
    listed: [bool; 2],
    /// Per reader: the Services changed since it last looked, and whom to wake.
    readers: Vec<(HashSet<String>, Arc<tokio::sync::Notify>)>,
}

fn key_of(meta: &kube::api::ObjectMeta) -> String {
    let ns = meta.namespace.as_deref().unwrap_or_default();
    format!("{ns}/{}", meta.name.as_deref().unwrap_or_default())
}

/// The Service a slice belongs to, if it is labelled with one.
fn owner_of(slice: &EndpointSlice) -> Option<String> {
    let labels = slice.metadata.labels.as_ref()?;
    let svc = labels.get(SERVICE_NAME)?;
    let ns = slice.metadata.namespace.as_deref().unwrap_or_default();
    Some(format!("{ns}/{svc}"))
}

/// A copy on disk of every `K` as `<cache>/<file>`, when there is a cache.
fn persist<K: Kind + serde::Serialize>(cache: Option<&Path>, file: &str) -> Option<Persist<K>> {
    cache.map(|dir| Persist::new(dir.join(file), |_: &K| true))
}

fn same_version(a: &kube::api::ObjectMeta, b: &kube::api::ObjectMeta) -> bool {
    a.resource_version.is_some() && a.resource_version == b.resource_version
}

impl State {
    fn touch(&mut self, key: &str) {
        for (dirty, _) in &mut self.readers {
            if !dirty.contains(key) {
                dirty.insert(key.to_string());
            }
        }
    }

    /// Drops an entry with nothing left in it.
    fn tidy(&mut self, key: &str) {
        if let Some(e) = self.entries.get(key)
            && e.service.is_none()
            && e.slices.is_empty()
        {
            self.entries.remove(key);
        }
    }

    fn set_service(&mut self, key: String, svc: Option<Arc<Service>>) {
        let entry = self.entries.entry(key.clone()).or_default();
        let unchanged = match (&entry.service, &svc) {
            (Some(a), Some(b)) => same_version(&a.metadata, &b.metadata),
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            return;
        }
        entry.service = svc;
        self.tidy(&key);
        self.touch(&key);
    }

    fn remove_slice(&mut self, id: &str) {
        let Some(owner) = self.slice_owner.remove(id) else {
            return;
        };
        if let Some(e) = self.entries.get_mut(&owner) {
            e.slices.remove(id);
        }
        self.tidy(&owner);
        self.touch(&owner);
    }

    fn set_slice(&mut self, slice: Arc<EndpointSlice>) {
        let id = key_of(&slice.metadata);
        let Some(owner) = owner_of(&slice) else {
            return self.remove_slice(&id);
        };
        if self.slice_owner.get(&id) != Some(&owner) {
            self.remove_slice(&id); // relabelled to another Service
        }
        let entry = self.entries.entry(owner.clone()).or_default();
        if let Some(old) = entry.slices.get(&id)
            && same_version(&old.metadata, &slice.metadata)
        {
            return;
        }
        entry.slices.insert(id.clone(), slice);
        self.slice_owner.insert(id, owner.clone());
        self.touch(&owner);
    }

    /// A Service is now `svc` (`None`: gone).
    fn on_service(&mut self, key: String, svc: Option<Arc<Service>>) {
        self.set_service(key, svc)
    }

    /// A slice is now `slice` (`None`: gone).
    fn on_slice(&mut self, key: String, slice: Option<Arc<EndpointSlice>>) {
        match slice {
            Some(slice) => self.set_slice(slice),
            None => self.remove_slice(&key),
        }
    }

    fn wake_readers(&self) {
        for (dirty, wake) in &self.readers {
            if !dirty.is_empty() {
                wake.notify_one();
            }
        }
    }

    fn now(&self, key: &str) -> Option<ServiceState> {
        let e = self.entries.get(key)?;
        Some(ServiceState {
            service: e.service.clone()?,
            slices: e.slices.values().cloned().collect(),
        })
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn after(&self, state: &State) {
        state.wake_readers();
        if state.listed == [true, true] {
            self.synced
                .send_if_modified(|s| !std::mem::replace(s, true));
        }
    }
}

impl ServiceWatch {
    /// Starts watching all Services and EndpointSlices, with a copy of each kept in `cache`
    /// (`services.json`, `endpointslices.json`) if given.
    pub fn start(client: kube::Client, cache: Option<&Path>) -> ServiceWatch {
        let watch = ServiceWatch::detached();
        let services = persist(cache, "services.json");
        watch.follow(
            Api::<Service>::all(client.clone()),
            services,
            0,
            State::on_service,
        );
        let slices = persist(cache, "endpointslices.json");
        watch.follow(
            Api::<EndpointSlice>::all(client),
            slices,
            1,
            State::on_slice,
        );
        watch
    }

    /// Keeps kind `index` of the state level with a watch cache of `api`: once it has listed,
    /// everything in it; then each object it reports changed, as the cache holds it now
    /// (absent: gone). Reading the cache rather than the event makes a relist's repeats and
    /// a delete followed by a re-create come out right.
    fn follow<K: Kind>(
        &self,
        api: Api<K>,
        persist: Option<Persist<K>>,
        index: usize,
        apply: fn(&mut State, String, Option<Arc<K>>),
    ) {
        let shared = self.shared.clone();
        let (cache, _) = Cache::watch_persisted(api, Default::default(), SMALL_BUFFER, persist);
        tokio::spawn(async move {
            // Subscribe before the list completes, so no change falls between the two.
            let mut changes = std::pin::pin!(cache.subscribe());
            cache.synced().await;
            {
                let mut state = shared.lock();
                for obj in cache.state() {
                    apply(&mut state, key_of(obj.meta()), Some(obj));
                }
                state.listed[index] = true;
                shared.after(&state);
            }
            let store = cache.store();
            while let Some(obj) = changes.next().await {
                let now = store.get(&ObjectRef::from_obj(obj.as_ref()));
                let mut state = shared.lock();
                apply(&mut state, key_of(obj.meta()), now);
                shared.after(&state);
            }
        });
    }

    /// A watch fed by nobody (tests feed it by hand).
    fn detached() -> ServiceWatch {
        ServiceWatch {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                synced: tokio::sync::watch::channel(false).0,
            }),
        }
    }

    /// Waits until both kinds have been listed once.
    pub async fn synced(&self) {
        let mut rx = self.shared.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// A new reader, woken through `wake` on changes; its first `changes()` has every Service.
    pub fn subscribe(&self, wake: Arc<tokio::sync::Notify>) -> Subscription {
        let mut state = self.shared.lock();
        let all = state.entries.keys().cloned().collect();
        state.readers.push((all, wake));
        Subscription {
            shared: self.shared.clone(),
            id: state.readers.len() - 1,
        }
    }
}

impl Subscription {
    /// The Services that changed since the last call (or `all`).
    pub fn changes(&self) -> Vec<Change> {
        let mut state = self.shared.lock();
        let keys = std::mem::take(&mut state.readers[self.id].0);
        keys.into_iter()
            .map(|key| Change {
                now: state.now(&key),
                key,
            })
            .collect()
    }

    /// Every Service as it is now, for a reader starting over.
    pub fn all(&self) -> Vec<Change> {
        let mut state = self.shared.lock();
        state.readers[self.id].0.clear();
        let keys: Vec<String> = state.entries.keys().cloned().collect();
        keys.into_iter()
            .filter_map(|key| {
                let now = state.now(&key)?;
                Some(Change {
                    key,
                    now: Some(now),
                })
            })
            .collect()
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn service(name: &str, ip: &str, rv: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": rv},
            "spec": {"clusterIP": ip, "ports": [{"port": 80}]},
        }))
        .unwrap()
    }

    pub fn slice(service: &str, endpoints: &[&str], rv: &str) -> EndpointSlice {
        let endpoints: Vec<_> = endpoints
            .iter()
            .map(|ip| serde_json::json!({"addresses": [ip]}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": format!("{service}-x"), "namespace": "default", "resourceVersion": rv,
                "labels": {"kubernetes.io/service-name": service},
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"port": 8080}],
        }))
        .unwrap()
    }

    /// A watch with a reader, fed by hand.
    pub fn fed() -> (ServiceWatch, Subscription) {
        let watch = ServiceWatch::detached();
        let sub = watch.subscribe(Default::default());
        (watch, sub)
    }

    /// What a watch cache reports of an object: it is there now, or gone.
    pub enum Event<K> {
        Apply(K),
        Delete(K),
    }

    impl<K: kube::Resource> Event<K> {
        fn split(self) -> (String, Option<Arc<K>>) {
            match self {
                Event::Apply(obj) => (key_of(obj.meta()), Some(Arc::new(obj))),
                Event::Delete(obj) => (key_of(obj.meta()), None),
            }
        }
    }

    impl ServiceWatch {
        pub fn service(&self, e: Event<Service>) {
            let (key, now) = e.split();
            self.shared.lock().on_service(key, now);
        }
        pub fn slice(&self, e: Event<EndpointSlice>) {
            let (key, now) = e.split();
            self.shared.lock().on_slice(key, now);
        }
    }

    fn keys(changes: &[Change]) -> Vec<(String, usize)> {
        let mut out: Vec<_> = changes
            .iter()
            .map(|c| {
                (
                    c.key.clone(),
                    c.now.as_ref().map_or(0, |n| n.slices.len() + 1),
                )
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn readers_get_only_what_changed_since_they_last_looked() {
        let (watch, sub) = fed();
        watch.service(Event::Apply(service("a", "10.43.0.10", "1")));
        watch.slice(Event::Apply(slice("a", &["10.42.0.5"], "2")));
        watch.service(Event::Apply(service("b", "10.43.0.11", "3")));
        // A slice whose Service is not there yet is kept, but the Service is not "there".
        watch.slice(Event::Apply(slice("c", &["10.42.0.9"], "4")));
        assert_eq!(
            keys(&sub.changes()),
            [
                ("default/a".into(), 2),
                ("default/b".into(), 1),
                ("default/c".into(), 0)
            ]
        );
        assert!(sub.changes().is_empty());

        let late = watch.subscribe(Default::default());
        assert_eq!(late.changes().len(), 3, "a new reader sees everything once");

        // The same version again is no change; a new one is.
        watch.service(Event::Apply(service("a", "10.43.0.10", "1")));
        assert!(sub.changes().is_empty());
        watch.slice(Event::Apply(slice("a", &["10.42.0.5", "10.42.0.6"], "5")));
        let changes = sub.changes();
        assert_eq!(keys(&changes), [("default/a".into(), 2)]);
        let now = changes[0].now.as_ref().unwrap();
        assert_eq!(now.slices[0].endpoints.len(), 2);

        watch.service(Event::Delete(service("b", "10.43.0.11", "3")));
        assert_eq!(keys(&sub.changes()), [("default/b".into(), 0)]);
        assert_eq!(late.changes().len(), 2, "each reader keeps its own changes");
        assert_eq!(keys(&sub.all()), [("default/a".into(), 2)]);
    }

    #[test]
    fn a_relist_reports_only_differences() {
        let (watch, sub) = fed();
        watch.service(Event::Apply(service("a", "10.43.0.10", "1")));
        watch.service(Event::Apply(service("b", "10.43.0.11", "2")));
        watch.slice(Event::Apply(slice("a", &["10.42.0.5"], "3")));
        watch.slice(Event::Apply(slice("b", &["10.42.0.6"], "4")));
        sub.changes();
        // The watch restarts and its cache reports everything again: a is unchanged, b and
        // its slice are gone, d is new.
        watch.service(Event::Apply(service("a", "10.43.0.10", "1")));
        watch.service(Event::Delete(service("b", "10.43.0.11", "2")));
        watch.service(Event::Apply(service("d", "10.43.0.12", "7")));
        watch.slice(Event::Apply(slice("a", &["10.42.0.5"], "3")));
        watch.slice(Event::Delete(slice("b", &["10.42.0.6"], "4")));
        assert_eq!(
            keys(&sub.changes()),
            [("default/b".into(), 0), ("default/d".into(), 1)]
        );
        assert!(!watch.shared.lock().entries.contains_key("default/b"));
    }

    #[test]
    fn a_relabelled_slice_moves_to_its_new_service() {
        let (watch, sub) = fed();
        watch.service(Event::Apply(service("a", "10.43.0.10", "1")));
        watch.service(Event::Apply(service("b", "10.43.0.11", "2")));
        watch.slice(Event::Apply(slice("a", &["10.42.0.5"], "3")));
        sub.changes();
        let mut moved = slice("a", &["10.42.0.5"], "4");
        moved.metadata.labels = Some([(SERVICE_NAME.to_string(), "b".to_string())].into());
        watch.slice(Event::Apply(moved));
        assert_eq!(
            keys(&sub.changes()),
            [("default/a".into(), 1), ("default/b".into(), 2)]
        );
    }
}
