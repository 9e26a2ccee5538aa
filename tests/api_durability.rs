//! Durability: every acknowledged write survives SIGKILL, and watches resume from their revision.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use common::Server;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"k": name}}))
        .unwrap()
}

#[test]
fn acknowledged_writes_survive_sigkill_and_watches_resume() {
    let mut s = Server::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let before_rv = rt.block_on(async {
        let client = s.client().await;
        let api: Api<ConfigMap> = Api::namespaced(client, "default");
        api.create(&PostParams::default(), &cm("before"))
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap()
    });
    // Eight concurrent writers; the server is killed while they run.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let acked = acked.clone();
            let kubeconfig = s.kubeconfig.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Runtime::new().unwrap();
                rt.block_on(async move {
                    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
                    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                        .await
                        .unwrap();
                    let api: Api<ConfigMap> =
                        Api::namespaced(kube::Client::try_from(cfg).unwrap(), "default");
                    for i in 0..10_000 {
                        let name = format!("w{w}-{i}");
                        match api.create(&PostParams::default(), &cm(&name)).await {
                            Ok(_) => {
                                acked.lock().unwrap().insert(name);
                            }
                            Err(_) => break,
                        }
                    }
                })
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    s.stop(true);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "too few writes before the kill: {}",
        acked.len()
    );
    s.restart(false);
    rt.block_on(async {
        let client = s.client().await;
        let api: Api<ConfigMap> = Api::namespaced(client, "default");
        let names: BTreeSet<String> = api
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect();
        let missing: Vec<_> = acked.iter().filter(|n| !names.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged writes lost, e.g. {:?}",
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
        // A watch from the revision before the writes replays them after the restart.
        let mut stream = api
            .watch(&WatchParams::default().timeout(10), &before_rv)
            .await
            .unwrap()
            .boxed();
        let mut seen = 0usize;
        while seen < acked.len() {
            match tokio::time::timeout(std::time::Duration::from_secs(10), stream.next()).await {
                Ok(Some(Ok(WatchEvent::Added(_)))) => seen += 1,
                Ok(Some(Ok(WatchEvent::Bookmark(_)))) => {}
                other => panic!("after {seen} events: {other:?}"),
            }
        }
    });
}
