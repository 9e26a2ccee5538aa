//! Pod startup latency with the image present: from the create call to the pod's Ready
//! condition seen through a watch, for one pod at a time and for a batch of 30; plus the idle
//! RSS of `kinglet server` with its node. The server runs in a test host (own network and
//! mount namespaces, own cgroup parent); this process joins its network namespace to talk to it.
//!
//! Run: `cargo bench --bench pod_startup` (env BENCH_SINGLE, BENCH_BATCH).

mod common;
use common::{env_or, rss, server_command, spread, wait_for_client};

#[path = "../tests/common/host.rs"]
mod host;
#[path = "../tests/common/images.rs"]
mod images;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"bench": "startup"}},
        "spec": {"terminationGracePeriodSeconds": 0, "containers": [{
            "name": "c", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent",
            "command": ["sleep", "100000"]}]}
    }))
    .unwrap()
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Creates `names` at once and returns each one's create-to-Ready latency in ms.
async fn start_pods(api: &Api<Pod>, names: &[String]) -> Vec<f64> {
    let stream = watcher(
        api.clone(),
        watcher::Config::default().labels("bench=startup"),
    );
    futures::pin_mut!(stream);
    let mut started: HashMap<String, Instant> = HashMap::new();
    for n in names {
        started.insert(n.clone(), Instant::now());
        api.create(&PostParams::default(), &pod(n))
            .await
            .expect("create pod");
    }
    let mut latencies = HashMap::new();
    while latencies.len() < names.len() {
        let ev = tokio::time::timeout(Duration::from_secs(120), stream.next())
            .await
            .expect("pods not ready within 120 s")
            .expect("watch ended")
            .expect("watch error");
        if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev {
            let name = p.metadata.name.clone().unwrap_or_default();
            if ready(&p)
                && !latencies.contains_key(&name)
                && let Some(t) = started.get(&name)
            {
                latencies.insert(name, t.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    for n in names {
        let _ = api
            .delete(n, &DeleteParams::default().grace_period(0))
            .await;
    }
    latencies.into_values().collect()
}

fn main() {
    let single = env_or("BENCH_SINGLE", 10);
    let batch = env_or("BENCH_BATCH", 30);
    let dir = tempfile::tempdir().expect("tempdir");
    let images_dir = dir.path().join("data/agent/images");
    std::fs::create_dir_all(&images_dir).unwrap();
    images::write_busybox_image(
        &images_dir.join("busybox.tar"),
        "docker.io/library/busybox:1.36",
    );
    let host = host::TestHost::new();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut server = server_command(host.command(env!("CARGO_BIN_EXE_kinglet")), dir.path())
        .args(["--node-name", "bench", "--cgroup-root", &host.cgroup_root])
        .arg("--pod-log-dir")
        .arg(dir.path().join("logs"))
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .spawn()
        .expect("start kinglet");
    // Join the test host's network namespace before any thread exists.
    let netns = std::fs::File::open(format!("/proc/{}/ns/net", host.pid())).unwrap();
    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    let rt = common::runtime();
    rt.block_on(async {
        let client = wait_for_client(&kubeconfig, 30).await;
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
        let t0 = Instant::now();
        while nodes.get_opt("bench").await.ok().flatten().is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "node did not register"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Let the server settle (leader election, default ServiceAccount) before measuring.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let idle = rss(server.id());
        let api: Api<Pod> = Api::namespaced(client.clone(), "default");
        let mut ones = Vec::new();
        for i in 0..single {
            ones.extend(start_pods(&api, &[format!("one-{i}")]).await);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        ones.sort_by(f64::total_cmp);
        let names: Vec<String> = (0..batch).map(|i| format!("batch-{i}")).collect();
        let mut many = start_pods(&api, &names).await;
        many.sort_by(f64::total_cmp);
        common::print_machine();
        println!("idle RSS of kinglet server with its node: {idle}");
        println!("one pod at a time ({single} runs): {}", spread(&ones));
        println!("batch of {batch}: {}", spread(&many));
    });
    let _ = server.kill();
    let _ = server.wait();
}
