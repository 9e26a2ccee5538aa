//! The shared informer (`kinglet_core::informers`) against a real API server.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kinglet_core::informers::Shared;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use std::time::Duration;

async fn next_named(s: &mut (impl Stream<Item = Arc<ConfigMap>> + Unpin), name: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(obj) = s.next().await {
            if obj.metadata.name.as_deref() == Some(name) {
                return;
            }
        }
        panic!("stream ended");
    })
    .await
    .unwrap_or_else(|_| panic!("no change for {name}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_waiters_sync_and_every_subscriber_sees_creates_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let client = kinglet_apiserver::test_api(dir.path()).await.local_client();
    let cms: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), "default");
    let mut before = ConfigMap::default();
    before.metadata.name = Some("before".into());
    cms.create(&PostParams::default(), &before).await.unwrap();

    let (shared, task) = Shared::<ConfigMap>::start(&client);
    let shared = Arc::new(shared);
    // Several tasks waiting at once must all be released.
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let s = shared.clone();
            tokio::spawn(async move { s.synced().await })
        })
        .collect();
    for w in waiters {
        tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("a waiter was never woken")
            .unwrap();
    }
    // A late subscriber starts from the cache; both hear of a create and a delete.
    let mut early = Box::pin(shared.subscribe());
    let mut late = Box::pin(shared.subscribe());
    next_named(&mut late, "before").await;
    let mut after = ConfigMap::default();
    after.metadata.name = Some("after".into());
    cms.create(&PostParams::default(), &after).await.unwrap();
    cms.delete("before", &DeleteParams::default())
        .await
        .unwrap();
    for s in [&mut early, &mut late] {
        next_named(s, "after").await;
        next_named(s, "before").await;
    }
    assert!(
        shared
            .store()
            .get(&ObjectRef::new("before").within("default"))
            .is_none()
    );
    task.abort();
}
