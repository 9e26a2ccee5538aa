use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Cache, decorate};
use crate::registry::{Registry, Resource};
use crate::selectors::LabelSelector;
use kinglet_store::{Event, EventType, Record};

fn configmaps() -> Arc<Resource> {
    Registry::new().find("", "v1", "configmaps").unwrap()
}

fn cm(name: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": app}}})
}

fn key(name: &str) -> String {
    format!("{}default/{name}", configmaps().prefix())
}

fn event(typ: EventType, name: &str, rev: i64, obj: &Value, prev: Option<&Value>) -> Event {
    Event {
        typ,
        record: Record {
            key: key(name),
            rev,
            create_rev: rev,
            value: Bytes::from(serde_json::to_vec(obj).unwrap()),
        },
        prev: prev.map(|p| Bytes::from(serde_json::to_vec(p).unwrap())),
    }
}

/// A cache loaded with `n` ConfigMaps (`c0`..), half labelled `app=a`, at revision `n`.
fn loaded(n: i64) -> Cache {
    let cache = Cache::empty();
    let items = (0..n)
        .map(|i| {
            let app = if i % 2 == 0 { "a" } else { "b" };
            (key(&format!("c{i}")), i + 1, cm(&format!("c{i}"), app))
        })
        .collect();
    cache.replace(items, n, Vec::new());
    cache
}

#[tokio::test]
async fn a_read_at_a_newer_revision_waits_until_the_cache_has_it() {
    let cache = Arc::new(loaded(4));
    assert!(cache.wait_fresh(4, Duration::ZERO).await);
    let waiter = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.wait_fresh(5, Duration::from_secs(60)).await })
    };
    // The waiter has not got the revision yet: it must still be waiting.
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    cache.apply(&event(EventType::Added, "new", 5, &cm("new", "a"), None));
    assert!(waiter.await.unwrap());
    // A revision the cache never reaches: the wait ends unfulfilled.
    assert!(!cache.wait_fresh(6, Duration::from_millis(1)).await);
    let (rev, got) = (cache.rev(), cache.get(&key("new")).unwrap());
    assert_eq!((rev, got.map(|e| e.rev)), (5, Some(5)));
}

#[tokio::test]
async fn kinglet_keys_move_the_revision_but_are_not_objects() {
    let cache = loaded(2);
    let mut ev = event(EventType::Added, "x", 3, &cm("x", "a"), None);
    ev.record.key = "/kinglet/allocations/serviceips/10.43.0.9".into();
    cache.apply(&ev);
    assert_eq!(cache.rev(), 3);
    assert!(cache.wait_fresh(3, Duration::ZERO).await);
    assert_eq!(cache.list("/", |_| true, None).unwrap().items.len(), 2);
}

#[tokio::test]
async fn lists_apply_selectors_limits_and_report_what_remains() {
    let cache = loaded(10);
    let prefix = format!("{}default/", configmaps().prefix());
    let sel = LabelSelector::parse("app=a").unwrap();
    let all = cache
        .list(&prefix, |o| sel.matches_object(o), None)
        .unwrap();
    assert_eq!(all.items.len(), 5);
    assert!(all.next.is_none());
    assert!(
        all.items
            .iter()
            .all(|e| e.obj["metadata"]["labels"]["app"] == "a")
    );

    // Keys sort as strings: c0, c1, c2, ...; the page ends at the third and 7 keys follow.
    let page = cache.list(&prefix, |_| true, Some(3)).unwrap();
    assert_eq!(page.items.len(), 3);
    assert_eq!(page.next.as_deref(), Some(key("c2").as_str()));
    assert_eq!(page.remaining, 7);
    assert_eq!(page.rev, 10);

    // A page that holds the last key has no continuation.
    let exact = cache.list(&prefix, |_| true, Some(10)).unwrap();
    assert!(exact.next.is_none());
    // Another namespace's prefix sees none of them.
    let other = format!("{}other/", configmaps().prefix());
    assert!(cache.list(&other, |_| true, None).unwrap().items.is_empty());
}

#[tokio::test]
async fn deletes_and_updates_change_what_is_listed() {
    let cache = loaded(3);
    let prefix = configmaps().prefix();
    cache.apply(&event(
        EventType::Modified,
        "c0",
        4,
        &cm("c0", "b"),
        Some(&cm("c0", "a")),
    ));
    cache.apply(&event(EventType::Deleted, "c1", 5, &cm("c1", "b"), None));
    let listed = cache.list(&prefix, |_| true, None).unwrap();
    let names: Vec<_> = listed
        .items
        .iter()
        .map(|e| (e.obj["metadata"]["name"].clone(), e.rev))
        .collect();
    assert_eq!(names, [(json!("c0"), 4), (json!("c2"), 3)]);
    assert_eq!(listed.rev, 5);
}

#[tokio::test]
async fn a_delete_without_its_last_state_is_still_told_to_watchers() {
    // etcd's DELETED event carries an empty value when the previous value was compacted
    // away: the entry the cache removes is the last state watchers get.
    let cache = loaded(2);
    let res = configmaps();
    let mut sub = cache.subscribe(&res.prefix(), 2, false).unwrap();
    let mut ev = event(EventType::Deleted, "c1", 3, &cm("c1", "b"), None);
    ev.record.value = Bytes::new();
    cache.apply(&ev);
    // Broadcast at once (not a wait that would hang on a cache that broadcast nothing).
    let got = sub.rx.try_recv().expect("the delete is broadcast");
    assert_eq!((got.typ, got.rev), (EventType::Deleted, 3));
    assert_eq!(*got.cur, cm("c1", "b"));
    let line: Value = serde_json::from_slice(&got.line(&cache, &res, "DELETED", false)).unwrap();
    assert_eq!(line["object"], decorate(&res, &cm("c1", "b"), 3));
    let names: Vec<_> = cache
        .list(&res.prefix(), |_| true, None)
        .unwrap()
        .items
        .iter()
        .map(|e| e.obj["metadata"]["name"].clone())
        .collect();
    assert_eq!(names, [json!("c0")]);
    assert_eq!(cache.rev(), 3);
}

#[tokio::test]
async fn one_encoding_per_event_and_version_is_shared_by_every_watcher() {
    let cache = loaded(1);
    let res = configmaps();
    let mut subs: Vec<_> = (0..50)
        .map(|_| cache.subscribe(&res.prefix(), 1, false).unwrap())
        .collect();
    cache.apply(&event(EventType::Added, "w", 2, &cm("w", "a"), None));
    let mut lines = Vec::new();
    for s in &mut subs {
        let ev = s.rx.recv().await.unwrap();
        lines.push(ev.line(&cache, &res, "ADDED", false));
    }
    assert_eq!(cache.encodings(), 1);
    assert!(lines.windows(2).all(|w| w[0] == w[1]));
    let line: Value = serde_json::from_slice(&lines[0]).unwrap();
    assert_eq!(line["type"], "ADDED");
    assert_eq!(line["object"], decorate(&res, &cm("w", "a"), 2));
    assert_eq!(line["object"]["metadata"]["resourceVersion"], "2");
    // Each line is one JSON document on one line, type first, as upstream writes it.
    assert!(lines[0].starts_with(b"{\"type\":\"ADDED\",\"object\":{"));
    assert!(lines[0].ends_with(b"}\n"));
}

#[tokio::test]
async fn watches_resume_from_the_ring_or_not_at_all() {
    let cache = loaded(2);
    let prefix = configmaps().prefix();
    for rev in 3..=5 {
        cache.apply(&event(
            EventType::Added,
            &format!("n{rev}"),
            rev,
            &cm("n", "a"),
            None,
        ));
    }
    let sub = cache.subscribe(&prefix, 3, false).unwrap();
    let revs: Vec<_> = sub.backlog.iter().map(|e| e.rev).collect();
    assert_eq!(revs, [4, 5]);
    // Revision 1 is before the list the cache was loaded from: the store must serve it.
    assert!(cache.subscribe(&prefix, 1, false).is_none());
    // With the initial state: every object, at the cache's revision.
    let sub = cache.subscribe(&prefix, 0, true).unwrap();
    assert_eq!((sub.initial.len(), sub.from), (5, 5));
}

#[tokio::test]
async fn withheld_secrets_are_left_to_the_store_and_nothing_else() {
    let cache = Cache::empty();
    let secrets = crate::encryption::SECRETS_PREFIX;
    cache.replace(Vec::new(), 1, vec![secrets.to_string()]);
    assert!(!cache.serves(secrets));
    assert!(!cache.serves(&format!("{secrets}default/")));
    assert!(!cache.serves(&format!("{secrets}default/token")));
    assert!(cache.serves(&configmaps().prefix()));
    assert!(cache.subscribe(secrets, 1, false).is_none());
    assert!(cache.subscribe(&configmaps().prefix(), 1, false).is_some());
}

#[tokio::test]
async fn an_unloaded_cache_serves_nothing() {
    let cache = Cache::empty();
    assert!(!cache.serves("/registry/"));
    assert!(cache.subscribe("/registry/", 0, true).is_none());
}

/// An API server over a fresh store in `dir`, once its watch cache is loaded.
async fn api_with_loaded_cache(dir: &std::path::Path) -> Arc<crate::Api> {
    let api = crate::test_api(dir).await;
    assert!(api.watch_cache.wait_fresh(1, Duration::from_secs(30)).await);
    api
}

/// A request through `api`'s router as the internal user: its status and JSON body.
fn call(
    api: &Arc<crate::Api>,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> impl std::future::Future<Output = (u16, Value)> + use<> {
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .extension(crate::PeerUser(Some(Arc::new(
            crate::auth::UserInfo::internal(),
        ))))
        .body(axum::body::Body::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        ))
        .unwrap();
    let router = api.router();
    async move {
        let resp = tower::ServiceExt::oneshot(router, req).await.unwrap();
        let code = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (code, serde_json::from_slice::<Value>(&bytes).unwrap())
    }
}

/// Through the API, reads that must see a write wait for a cache that is behind the store
/// (its feed held back): a consistent list (no resourceVersion) and a get at the write's
/// resourceVersion are answered once the cache has the write, and include it.
#[tokio::test]
async fn reads_through_the_api_wait_for_a_cache_behind_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let api = api_with_loaded_cache(dir.path()).await;
    let call = |method: &str, uri: &str, body: Option<Value>| call(&api, method, uri, body);
    api.watch_cache.hold(true);
    let (code, made) = call(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(cm("late", "a")),
    )
    .await;
    assert_eq!(code, 201);
    let rv = made["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(api.watch_cache.rev() < rv.parse::<i64>().unwrap());
    let waiting = api.watch_cache.rev.receiver_count();
    let list = tokio::spawn(call("GET", "/api/v1/namespaces/default/configmaps", None));
    let get = tokio::spawn(call(
        "GET",
        &format!("/api/v1/namespaces/default/configmaps/late?resourceVersion={rv}"),
        None,
    ));
    // Until both requests wait for the cache's revision (or have been answered: a handler
    // that does not wait), then a little longer.
    tokio::time::timeout(Duration::from_secs(30), async {
        while api.watch_cache.rev.receiver_count() < waiting + 2
            && !(list.is_finished() && get.is_finished())
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the requests neither wait nor answer");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !list.is_finished() && !get.is_finished(),
        "answered from a cache behind the store"
    );
    api.watch_cache.hold(false);
    let (code, list) = list.await.unwrap();
    assert_eq!(code, 200);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["late"]);
    let (code, got) = get.await.unwrap();
    assert_eq!(
        (code, got["metadata"]["resourceVersion"].as_str()),
        (200, Some(rv.as_str()))
    );
}

/// Through the API: a list right after a create (a consistent read) includes it, and one at
/// a revision not reached yet answers 504 as upstream's cache does.
#[tokio::test]
async fn lists_from_the_cache_read_their_writes() {
    let dir = tempfile::tempdir().unwrap();
    let api = api_with_loaded_cache(dir.path()).await;
    let call = |method: &str, uri: &str, body: Option<Value>| call(&api, method, uri, body);
    for i in 0..20 {
        let (code, _) = call(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(cm(&format!("r{i}"), "a")),
        )
        .await;
        assert_eq!(code, 201);
        let (code, list) = call("GET", "/api/v1/namespaces/default/configmaps", None).await;
        assert_eq!(code, 200);
        assert_eq!(list["items"].as_array().unwrap().len(), i + 1);
        // The spliced list is the list as encoded whole.
        assert_eq!(list["kind"], "ConfigMapList");
        let name = format!("r{i}");
        let item = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["metadata"]["name"] == name.as_str())
            .unwrap();
        assert_eq!(
            (item["kind"].as_str(), item["apiVersion"].as_str()),
            (Some("ConfigMap"), Some("v1"))
        );
        // The cache served it: the new object's encoding is kept on its entry (the store's
        // lists never touch the cache's entries).
        let entry = api.watch_cache.get(&key(&name)).unwrap().unwrap();
        assert_eq!(entry.encoded(), 1);
        let (_, one) = call(
            "GET",
            &format!("/api/v1/namespaces/default/configmaps/r{i}"),
            None,
        )
        .await;
        assert_eq!(item, &one);
    }
    let (_, list) = call(
        "GET",
        "/api/v1/namespaces/default/configmaps?labelSelector=app%3Da&limit=5",
        None,
    )
    .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 5);
    let token = list["metadata"]["continue"].as_str().unwrap().to_string();
    // The continuation is read from the store, at the first page's revision.
    let (_, rest) = call(
        "GET",
        &format!(
            "/api/v1/namespaces/default/configmaps?labelSelector=app%3Da&limit=100&continue={token}"
        ),
        None,
    )
    .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 15);
    assert_eq!(
        rest["metadata"]["resourceVersion"],
        list["metadata"]["resourceVersion"]
    );

    let rev = api.watch_cache.rev();
    let (code, status) = call(
        "GET",
        &format!(
            "/api/v1/namespaces/default/configmaps?resourceVersion={}&resourceVersionMatch=NotOlderThan",
            rev + 1000
        ),
        None,
    )
    .await;
    assert_eq!((code, status["reason"].as_str()), (504, Some("Timeout")));
    // An exact revision not written yet is the store's to refuse, as upstream does.
    let (code, status) = call(
        "GET",
        &format!(
            "/api/v1/namespaces/default/configmaps?resourceVersion={}&resourceVersionMatch=Exact",
            rev + 1000
        ),
        None,
    )
    .await;
    assert_eq!((code, status["reason"].as_str()), (504, Some("Timeout")));
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .starts_with("Too large resource version")
    );
    let (code, got) = call(
        "GET",
        &format!("/api/v1/namespaces/default/configmaps/r3?resourceVersion={rev}"),
        None,
    )
    .await;
    assert_eq!((code, got["metadata"]["name"].as_str()), (200, Some("r3")));
}

#[tokio::test]
async fn a_watcher_that_falls_behind_is_cut_off_without_holding_the_others() {
    let cache = loaded(0);
    let prefix = configmaps().prefix();
    let mut idle = cache.subscribe(&prefix, 0, false).unwrap();
    let mut reader = cache.subscribe(&prefix, 0, false).unwrap();
    let total = super::BROADCAST as i64 + 10;
    let mut seen = 0;
    for rev in 1..=total {
        // Applying never waits for a watcher: `idle` reads nothing at all.
        cache.apply(&event(EventType::Added, "n", rev, &cm("n", "a"), None));
        while let Ok(ev) = reader.rx.try_recv() {
            seen += 1;
            assert_eq!(ev.rev, seen);
        }
    }
    assert_eq!(seen, total);
    // The idle watcher lost events: it is told so (its watch ends; the client re-watches
    // from the last revision it saw).
    assert!(matches!(
        idle.rx.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_))
    ));
}

/// A Secret written with a key this server does not have: the cache must not keep serving
/// its previous plaintext; the store serves Secrets (with its error) from then on.
#[tokio::test]
async fn a_secret_this_server_cannot_decrypt_is_left_to_the_store() {
    use crate::encryption::{AesGcmKey, Config, Provider, SECRETS_PREFIX, Storage};
    let dir = tempfile::tempdir().unwrap();
    let store = kinglet_store::Store::open(&dir.path().join("state.db")).unwrap();
    let config = |name: &str| Config {
        providers: vec![Provider::AesGcm(vec![AesGcmKey::generate(name).unwrap()])],
    };
    let here = Storage::new(store.clone(), Some(config("here")));
    let elsewhere = Storage::new(store.clone(), Some(config("elsewhere")));
    let cache = Cache::start(here.clone());
    assert!(cache.wait_fresh(0, Duration::from_secs(30)).await);
    let key = format!("{SECRETS_PREFIX}default/s");
    let secret = |v: &str| {
        Bytes::from(
            serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "s", "namespace": "default"}, "data": {"v": v}}))
            .unwrap(),
        )
    };
    let r1 = here.create(&key, secret("b25l")).await.unwrap();
    assert!(cache.wait_fresh(r1, Duration::from_secs(30)).await);
    let held = cache.get(&key).unwrap();
    assert_eq!(held.unwrap().obj["data"]["v"], "b25l");
    assert!(cache.serves(SECRETS_PREFIX));
    let r2 = elsewhere.update(&key, None, secret("dHdv")).await.unwrap();
    assert!(cache.wait_fresh(r2, Duration::from_secs(30)).await);
    assert!(!cache.serves(SECRETS_PREFIX));
    assert!(!cache.serves(&key));
    assert!(cache.get(&key).ok().flatten().is_none());
    // Not an empty answer: the reader is sent to the store.
    assert!(cache.get(&key).is_err());
    assert!(cache.list(SECRETS_PREFIX, |_| true, None).is_err());
    // Everything else is still served.
    assert!(cache.serves(&configmaps().prefix()));
}

/// Without the identity provider the store refuses a Secret that is not encrypted (written
/// around the encryption): the cache must not serve it either, whether it finds it in its
/// initial list or in its watch.
#[tokio::test]
async fn a_plaintext_secret_is_not_served_without_the_identity_provider() {
    use crate::encryption::{AesGcmKey, Config, Provider, SECRETS_PREFIX, Storage};
    let secret = |name: &str| {
        Bytes::from(
            serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": "default"}, "data": {"v": "b25l"}}))
            .unwrap(),
        )
    };
    let aes_only = || Config {
        providers: vec![Provider::AesGcm(vec![AesGcmKey::generate("k").unwrap()])],
    };
    // In the initial list.
    let dir = tempfile::tempdir().unwrap();
    let store = kinglet_store::Store::open(&dir.path().join("state.db")).unwrap();
    let plain = format!("{SECRETS_PREFIX}default/plain");
    let rev = store.create(&plain, secret("plain")).await.unwrap();
    let storage = Storage::new(store.clone(), Some(aes_only()));
    assert!(storage.get(&plain).await.is_err());
    let cache = Cache::start(storage.clone());
    assert!(cache.wait_fresh(rev, Duration::from_secs(30)).await);
    assert!(!cache.serves(&plain));
    assert!(cache.get(&plain).ok().flatten().is_none());
    assert!(cache.serves(&configmaps().prefix()));

    // In the watch, after an encrypted Secret was served.
    let dir = tempfile::tempdir().unwrap();
    let store = kinglet_store::Store::open(&dir.path().join("state.db")).unwrap();
    let storage = Storage::new(store.clone(), Some(aes_only()));
    let cache = Cache::start(storage.clone());
    assert!(cache.wait_fresh(0, Duration::from_secs(30)).await);
    let sealed = format!("{SECRETS_PREFIX}default/sealed");
    let r1 = storage.create(&sealed, secret("sealed")).await.unwrap();
    assert!(cache.wait_fresh(r1, Duration::from_secs(30)).await);
    assert!(cache.get(&sealed).unwrap().is_some());
    let r2 = store.create(&plain, secret("plain")).await.unwrap();
    assert!(storage.get(&plain).await.is_err());
    assert!(cache.wait_fresh(r2, Duration::from_secs(30)).await);
    assert!(!cache.serves(&plain));
    assert!(cache.get(&plain).ok().flatten().is_none());
    assert!(cache.serves(&configmaps().prefix()));
}
