//! Watch and list semantics through raw requests: bookmarks, initial events, selector
//! transitions, resourceVersion matching, and expiry after compaction.

mod common;

use std::time::Duration;

use common::Server;
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use serde_json::Value;

async fn get_json(client: &kube::Client, path: &str) -> Result<Value, kube::Error> {
    client
        .request::<Value>(http::Request::get(path).body(Vec::new()).unwrap())
        .await
}

/// Opens a watch and returns a stream of decoded event lines.
async fn watch_lines(
    client: &kube::Client,
    path: &str,
) -> impl futures::Stream<Item = Value> + Unpin + use<> {
    let resp = client
        .request_stream(http::Request::get(path).body(Vec::new()).unwrap())
        .await
        .expect("watch");
    Box::pin(
        resp.lines()
            .map_ok(|l| serde_json::from_str::<Value>(&l).expect("event JSON"))
            .filter_map(|r| async move { r.ok() }),
    )
}

async fn next(stream: &mut (impl futures::Stream<Item = Value> + Unpin)) -> Value {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("event in time")
        .expect("stream open")
}

fn create_cm(s: &Server, name: &str, labels: &str) {
    let mut args = vec!["create", "cm", name];
    args.push("--from-literal=k=v");
    s.ok(&args);
    if !labels.is_empty() {
        s.ok(&["label", "cm", name, labels]);
    }
}

#[test]
fn watch_semantics() {
    let s = Server::start_with(&["--compaction-interval", "1"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = s.client().await;
        create_cm(&s, "a", "app=web");
        let list = get_json(&c, "/api/v1/namespaces/default/configmaps").await.unwrap();
        let rv = list["metadata"]["resourceVersion"].as_str().unwrap().to_string();
        assert!(!rv.is_empty());

        // sendInitialEvents: ADDED for current state, then a bookmark marking the end.
        let mut w = watch_lines(&c, "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&labelSelector=app%3Dweb").await;
        let e = next(&mut w).await;
        assert_eq!((e["type"].as_str(), e["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("a")));
        let e = next(&mut w).await;
        assert_eq!(e["type"], "BOOKMARK");
        assert_eq!(e["object"]["kind"], "ConfigMap");
        assert_eq!(e["object"]["apiVersion"], "v1");
        assert_eq!(e["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");

        // A label-selected watch sees objects enter (ADDED) and leave (DELETED) the selection.
        let mut sel = watch_lines(&c, &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&labelSelector=app%3Dweb")).await;
        create_cm(&s, "b", "");
        s.ok(&["label", "cm", "b", "app=web"]);
        let e = next(&mut sel).await;
        assert_eq!((e["type"].as_str(), e["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("b")));
        s.ok(&["label", "cm", "b", "app=db", "--overwrite"]);
        let e = next(&mut sel).await;
        assert_eq!((e["type"].as_str(), e["object"]["metadata"]["name"].as_str()), (Some("DELETED"), Some("b")));

        // List at an exact older revision still shows the old state.
        let old = get_json(&c, &format!("/api/v1/namespaces/default/configmaps?resourceVersion={rv}&resourceVersionMatch=Exact&labelSelector=app%3Dweb")).await.unwrap();
        assert_eq!(old["items"].as_array().unwrap().len(), 1);
        // Pagination with limit + continue (the root CA ConfigMap is in every namespace too).
        let all = get_json(&c, "/api/v1/namespaces/default/configmaps").await.unwrap();
        let names: Vec<String> = all["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_string()).collect();
        let p1 = get_json(&c, "/api/v1/namespaces/default/configmaps?limit=1").await.unwrap();
        let token = p1["metadata"]["continue"].as_str().expect("continue token").to_string();
        assert_eq!(p1["items"][0]["metadata"]["name"], names[0].as_str());
        assert_eq!(p1["metadata"]["remainingItemCount"], names.len() as i64 - 1);
        let p2 = get_json(&c, &format!("/api/v1/namespaces/default/configmaps?limit=1&continue={token}")).await.unwrap();
        assert_eq!(p2["items"][0]["metadata"]["name"], names[1].as_str());
        // A bad continue token is a 400.
        let err = get_json(&c, "/api/v1/namespaces/default/configmaps?limit=1&continue=garbage").await.unwrap_err();
        assert!(matches!(err, kube::Error::Api(ref st) if st.code == 400), "{err:?}");

        // After compaction, a watch from the old revision gets a 410 Expired ERROR event and an
        // old continue token a 410.
        for i in 0..3 {
            create_cm(&s, &format!("later{i}"), "");
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        let mut expired = watch_lines(&c, &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}")).await;
        let e = next(&mut expired).await;
        assert_eq!(e["type"], "ERROR");
        assert_eq!(e["object"]["code"], 410);
        assert_eq!(e["object"]["reason"], "Expired");
        let err = get_json(&c, &format!("/api/v1/namespaces/default/configmaps?limit=1&continue={token}")).await.unwrap_err();
        assert!(matches!(err, kube::Error::Api(ref st) if st.code == 410), "{err:?}");
    });
}

#[test]
fn kube_rs_watcher_and_reflector_work() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let s = Server::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = s.client().await;
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(c, "default");
        let (reader, writer) = reflector::store();
        let stream = reflector(writer, watcher(api, watcher::Config::default())).applied_objects();
        let task = tokio::spawn(stream.for_each(|_| async {}));
        tokio::task::spawn_blocking({
            let kubeconfig = s.kubeconfig.clone();
            move || {
                for i in 0..5 {
                    let out = std::process::Command::new(common::kubectl_default())
                        .args(["create", "cm", &format!("r{i}")])
                        .env("KUBECONFIG", &kubeconfig)
                        .output()
                        .unwrap();
                    assert!(out.status.success());
                }
            }
        })
        .await
        .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let names: Vec<String> = reader
                .state()
                .iter()
                .filter_map(|c| c.metadata.name.clone())
                .filter(|n| n.starts_with('r'))
                .collect();
            if names.len() == 5 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "reflector saw {names:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        task.abort();
    });
}
