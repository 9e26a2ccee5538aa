//! Scheduler and controller throughput: a Deployment of 1,000 replicas against 100 Node
//! objects; reports the time until every pod is bound (pods bound per second) and the server's
//! RSS while holding them.
//!
//! Run: `cargo bench --bench scheduler` (env BENCH_REPLICAS, BENCH_NODES).

mod common;
use common::{env_or, rss, server_command, wait_for_client};

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;

fn main() {
    let replicas = env_or("BENCH_REPLICAS", 1000);
    let nodes = env_or("BENCH_NODES", 100);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut server = server_command(Command::new(env!("CARGO_BIN_EXE_kinglet")), dir.path())
        .args(["--disable-agent", "--https-listen-port", &port.to_string()])
        .spawn()
        .expect("start kinglet");
    let pid = server.id();
    let rt = common::runtime();
    rt.block_on(async {
        let client = wait_for_client(&kubeconfig, 30).await;
        let node_api: Api<Node> = Api::all(client.clone());
        for i in 0..nodes {
            let n: Node = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("node-{i:03}"), "labels": {"kubernetes.io/hostname": format!("node-{i:03}")}},
                "status": {"allocatable": {"cpu": "32", "memory": "64Gi", "pods": "110"}, "capacity": {"cpu": "32", "memory": "64Gi", "pods": "110"}}
            }))
            .unwrap();
            node_api.create(&PostParams::default(), &n).await.expect("node");
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss_before = rss(pid);
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "load"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "load"}},
                "template": {"metadata": {"labels": {"app": "load"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}
        }))
        .unwrap();
        let t0 = Instant::now();
        Api::<Deployment>::namespaced(client.clone(), "default").create(&PostParams::default(), &d).await.expect("deployment");
        // Count through a watch, as upstream's scheduler_perf does with informers: polling with
        // full lists would load the server being measured.
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let stream = watcher(pods, watcher::Config::default().labels("app=load"));
        futures::pin_mut!(stream);
        let (mut seen, mut bound) = (HashSet::new(), HashSet::new());
        let mut created_at = None;
        let bound_at = loop {
            let ev = tokio::time::timeout(Duration::from_secs(120), stream.next())
                .await
                .expect("no pod events for 120 s")
                .expect("watch ended")
                .expect("watch error");
            let pods = match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => vec![p],
                _ => vec![],
            };
            for p in pods {
                let name = p.metadata.name.clone().unwrap_or_default();
                if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                    bound.insert(name.clone());
                }
                seen.insert(name);
            }
            if seen.len() >= replicas && created_at.is_none() {
                created_at = Some(t0.elapsed());
            }
            if bound.len() >= replicas {
                break t0.elapsed();
            }
        };
        common::print_machine();
        println!("deployment of {replicas} replicas over {nodes} nodes");
        println!("all pods created after {:.2} s", created_at.unwrap_or(bound_at).as_secs_f64());
        println!("all pods bound after   {:.2} s  ({:.0} pods bound/s)", bound_at.as_secs_f64(), replicas as f64 / bound_at.as_secs_f64());
        println!("RSS with {nodes} nodes: {rss_before}; holding {replicas} pods: {}", rss(pid));
    });
    let _ = server.kill();
    let _ = server.wait();
}
