//! Durability: every acknowledged write survives SIGKILL, and watches resume from their revision;
//! one server per data directory.

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

#[test]
fn a_second_server_on_a_data_dir_in_use_refuses_to_start() {
    let s = Server::start();
    s.ok(&["create", "configmap", "before", "--from-literal=k=v"]);
    let data_dir = s.data_dir();
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_kinglet"));
    second
        .args(["server", "--disable-agent", "--bind-address", "127.0.0.1"])
        .args(["--advertise-address", "127.0.0.1"])
        .args(["--https-listen-port", &common::free_port().to_string()])
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--write-kubeconfig")
        .arg(data_dir.join("second.yaml"))
        .env_remove("KINGLET_CONFIG");
    // It must exit by itself; one still running after 20 s is killed and fails the test.
    let stderr = common::must_refuse(&mut second, 20);
    let want = format!(
        "data directory {} is in use by another kinglet process (pid {})",
        data_dir.display(),
        s.pid()
    );
    assert!(stderr.contains(&want), "{stderr}");
    // The first one keeps serving writes.
    s.ok(&["create", "configmap", "after", "--from-literal=k=v"]);
    assert!(s.ok(&["get", "configmaps"]).contains("after"));
}
