//! Simulated agents benchmark: many API-level agents against one `kinglet server
//! --disable-agent`, each doing what a kubelet and its service proxy do to the API server.
//! Each agent joins through the join endpoints with the server token (its own node name and
//! password, client and serving certificates), registers its Node as itself, then every period
//! renews its Lease in kube-node-lease (a get and a merge patch, as kinglet's kubelet does) and
//! patches its Node status (every period, as kinglet's kubelet does: fresh heartbeat times make
//! each one a change; upstream's kubelet skips unchanged statuses between its 5-minute reports),
//! and keeps watches of its pods (fieldSelector spec.nodeName=<node>), of Services and of
//! EndpointSlices. While they run, the admin creates pods bound to the agents' nodes (each
//! agent patches its pod's status Running when its watch sees it, as a kubelet reports one)
//! and Services (whose EndpointSlices the endpoint controller makes); the bench times how long
//! until the watches see them.
//!
//! Run: `cargo bench --bench agents` (env BENCH_AGENTS agents, default 50; BENCH_PERIOD_MS
//! between renewals, default 10000 as upstream's kubelet; BENCH_SECONDS measured after all
//! joined, default 60; BENCH_PODS, default 100; BENCH_SERVICES, default 10; BENCH_KINGLET=<path>
//! drives that kinglet binary).

mod common;
use common::join::{NodeIdentity, join, node_client};
use common::{cpu_seconds, env_or, rss, server_command, spread, wait_for_client};

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

/// Any single API call slower than this counts as an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What the agents measured, shared by all of them.
#[derive(Default)]
struct Stats {
    /// Set while the measured window runs: only calls in it are counted.
    measuring: AtomicBool,
    /// Successful calls' latencies in ms, by call.
    calls: Mutex<HashMap<&'static str, Vec<f64>>>,
    errors: AtomicUsize,
    first_errors: Mutex<Vec<String>>,
    /// When the admin sent each pod, Service (by name).
    pods_sent: Mutex<HashMap<String, Instant>>,
    services_sent: Mutex<HashMap<String, Instant>>,
    /// ms from the create call to an agent's watch seeing the object.
    pod_seen: Mutex<Vec<f64>>,
    service_seen: Mutex<Vec<f64>>,
    slice_seen: Mutex<Vec<f64>>,
    /// Watch events received, all kinds.
    events: AtomicUsize,
}

impl Stats {
    fn error(&self, what: &str, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_errors.lock().unwrap();
        if first.len() < 5 {
            first.push(format!("{what}: {e}"));
        }
    }

    /// Runs one API call: its latency counted if it succeeds in the window, an error if not.
    async fn call<T>(
        &self,
        what: &'static str,
        f: impl Future<Output = Result<T, kube::Error>>,
    ) -> Option<T> {
        let t = Instant::now();
        match tokio::time::timeout(CALL_TIMEOUT, f).await {
            Ok(Ok(v)) => {
                if self.measuring.load(Ordering::Relaxed) {
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    self.calls.lock().unwrap().entry(what).or_default().push(ms);
                }
                Some(v)
            }
            Ok(Err(e)) => {
                self.error(what, e);
                None
            }
            Err(_) => {
                self.error(what, "timeout");
                None
            }
        }
    }

    fn seen(&self, sent: &Mutex<HashMap<String, Instant>>, name: &str, into: &Mutex<Vec<f64>>) {
        let at = sent.lock().unwrap().get(name).copied();
        if let Some(at) = at {
            into.lock()
                .unwrap()
                .push(at.elapsed().as_secs_f64() * 1000.0);
        }
    }
}

/// The binary under test: this build's, or BENCH_KINGLET's.
fn kinglet_binary() -> String {
    std::env::var("BENCH_KINGLET").unwrap_or_else(|_| env!("CARGO_BIN_EXE_kinglet").to_string())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            Some(
                l.strip_prefix("model name")?
                    .split_once(':')?
                    .1
                    .trim()
                    .to_string(),
            )
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn node_name(i: usize) -> String {
    format!("agent-{i:03}")
}

/// The Node status a kubelet reports, with heartbeat times of now.
fn node_status(node: &str) -> serde_json::Value {
    let now = Timestamp::now().to_string();
    let cond = |t: &str, status: &str, reason: &str| {
        json!({"type": t, "status": status, "reason": reason, "message": reason,
            "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let cap = json!({"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "50Gi"});
    json!({"status": {
        "capacity": cap, "allocatable": cap,
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID"),
            cond("Ready", "True", "KubeletReady"),
        ],
        "addresses": [{"type": "InternalIP", "address": "192.0.2.1"},
            {"type": "Hostname", "address": node}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {"machineID": node, "systemUUID": node, "bootID": node,
            "kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 12 (bookworm)",
            "containerRuntimeVersion": "kinglet://0.1.0", "kubeletVersion": "v1.33.0",
            "kubeProxyVersion": "v1.33.0", "operatingSystem": "linux", "architecture": "amd64"},
    }})
}

/// Renews the node's Lease as kinglet's kubelet does: a get, then a merge patch of the spec.
async fn renew_lease(stats: &Stats, leases: &Api<Lease>, node: &str) -> bool {
    if stats.call("lease get", leases.get(node)).await.is_none() {
        return false;
    }
    let spec = json!({"spec": {"holderIdentity": node, "leaseDurationSeconds": 40,
        "renewTime": MicroTime(Timestamp::now())}});
    let (pp, merge) = (PatchParams::default(), Patch::Merge(spec));
    stats
        .call("lease patch", leases.patch(node, &pp, &merge))
        .await
        .is_some()
}

/// Joins and registers agent `i` (Node, status, Lease) and opens its watches; returns its
/// client and the watch tasks once every watch has listed.
async fn start_agent(
    i: usize,
    port: u16,
    token: &str,
    stats: &Arc<Stats>,
) -> anyhow::Result<(kube::Client, Vec<tokio::task::JoinHandle<()>>, Duration)> {
    let node = node_name(i);
    let t = Instant::now();
    let id: NodeIdentity = join(port, token, &node, &format!("password-of-{node}"), true).await?;
    let joined = t.elapsed();
    let c = node_client(port, &id)?;
    let nodes: Api<Node> = Api::all(c.clone());
    let obj: Node = serde_json::from_value(json!({"metadata": {"name": node, "labels": {
        "kubernetes.io/hostname": node, "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64"}}}))?;
    nodes.create(&PostParams::default(), &obj).await?;
    let status = Patch::Strategic(node_status(&node));
    nodes
        .patch_status(&node, &PatchParams::default(), &status)
        .await?;
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40,
            "renewTime": MicroTime(Timestamp::now())}}))?;
    Api::<Lease>::namespaced(c.clone(), "kube-node-lease")
        .create(&PostParams::default(), &lease)
        .await?;

    // The kubelet's watch of its pods and the proxy's of Services and EndpointSlices.
    let (listed_tx, mut listed_rx) = tokio::sync::mpsc::channel(3);
    let mut tasks = Vec::new();
    {
        let (stats, listed, pods) = (stats.clone(), listed_tx.clone(), c.clone());
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let mut w = watcher(Api::<Pod>::all(c.clone()), cfg)
            .default_backoff()
            .boxed();
        tasks.push(tokio::spawn(async move {
            let mut seen = HashSet::new();
            while let Some(ev) = w.next().await {
                let pod = match ev {
                    Ok(watcher::Event::InitDone) => {
                        let _ = listed.try_send(());
                        continue;
                    }
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
                    Ok(_) => continue,
                    Err(e) => {
                        stats.error("pod watch", e);
                        continue;
                    }
                };
                stats.events.fetch_add(1, Ordering::Relaxed);
                let (Some(name), Some(ns)) = (pod.metadata.name, pod.metadata.namespace) else {
                    continue;
                };
                if !seen.insert(name.clone()) {
                    continue;
                }
                stats.seen(&stats.pods_sent, &name, &stats.pod_seen);
                // Reported Running, as a kubelet's status manager would.
                let api: Api<Pod> = Api::namespaced(pods.clone(), &ns);
                let running = Patch::Merge(json!({"status": {"phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True"}]}}));
                let pp = PatchParams::default();
                let patch = api.patch_status(&name, &pp, &running);
                stats.call("pod status patch", patch).await;
            }
        }));
    }
    {
        let (stats, listed) = (stats.clone(), listed_tx.clone());
        let mut w = watcher(Api::<Service>::all(c.clone()), Default::default())
            .default_backoff()
            .boxed();
        tasks.push(tokio::spawn(async move {
            let mut seen = HashSet::new();
            while let Some(ev) = w.next().await {
                match ev {
                    Ok(watcher::Event::InitDone) => {
                        let _ = listed.try_send(());
                    }
                    Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                        stats.events.fetch_add(1, Ordering::Relaxed);
                        if let Some(name) = s.metadata.name
                            && seen.insert(name.clone())
                        {
                            stats.seen(&stats.services_sent, &name, &stats.service_seen);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => stats.error("service watch", e),
                }
            }
        }));
    }
    {
        let (stats, listed) = (stats.clone(), listed_tx);
        let mut w = watcher(Api::<EndpointSlice>::all(c.clone()), Default::default())
            .default_backoff()
            .boxed();
        tasks.push(tokio::spawn(async move {
            let mut seen = HashSet::new();
            while let Some(ev) = w.next().await {
                match ev {
                    Ok(watcher::Event::InitDone) => {
                        let _ = listed.try_send(());
                    }
                    Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                        stats.events.fetch_add(1, Ordering::Relaxed);
                        let service = s
                            .metadata
                            .labels
                            .and_then(|l| l.get("kubernetes.io/service-name").cloned());
                        if let Some(service) = service
                            && seen.insert(service.clone())
                        {
                            stats.seen(&stats.services_sent, &service, &stats.slice_seen);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => stats.error("endpointslice watch", e),
                }
            }
        }));
    }
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(60), listed_rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("{node}: a watch did not list within 60 s"))?;
    }
    Ok((c, tasks, joined))
}

/// Agent `i`'s heartbeats until `stop`: its Lease and its Node status every `period`, the
/// first after `offset` (agents spread over the period, as independent machines are).
async fn heartbeats(
    i: usize,
    c: kube::Client,
    stats: Arc<Stats>,
    period: Duration,
    offset: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (usize, usize) {
    let node = node_name(i);
    let leases: Api<Lease> = Api::namespaced(c.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(c);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut renewed, mut reported) = (0, 0);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return (renewed, reported),
        }
        if renew_lease(&stats, &leases, &node).await {
            renewed += 1;
        }
        let status = Patch::Strategic(node_status(&node));
        let pp = PatchParams::default();
        let patch = nodes.patch_status(&node, &pp, &status);
        if stats.call("node status patch", patch).await.is_some() {
            reported += 1;
        }
    }
}

fn pod(i: usize, agents: usize) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("p-{i}"), "labels": {"app": format!("svc-{}", i % 10)}},
        "spec": {"nodeName": node_name(i % agents),
            "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"]}]}}))
    .expect("pod")
}

fn service(i: usize) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}")},
        "spec": {"selector": {"app": format!("svc-{i}")}, "ports": [{"port": 80}]}}))
    .expect("service")
}

fn main() {
    let agents = env_or("BENCH_AGENTS", 50).max(1);
    let period = Duration::from_millis(env_or("BENCH_PERIOD_MS", 10_000).max(1) as u64);
    let seconds = env_or("BENCH_SECONDS", 60).max(1);
    let pods = env_or("BENCH_PODS", 100);
    let services = env_or("BENCH_SERVICES", 10);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut server = server_command(Command::new(kinglet_binary()), dir.path())
        .args(["--disable-agent", "--https-listen-port", &port.to_string()])
        .spawn()
        .expect("start kinglet");
    let pid = server.id();
    let spid = pid.to_string();
    let rt = common::runtime();
    rt.block_on(async {
        let admin = wait_for_client(&kubeconfig, 30).await;
        common::print_machine();
        println!("cpu: {}", cpu_model());
        println!(
            "{agents} agents, renew period {} ms (lease get + patch, node status patch every period), \
             {seconds} s measured, {pods} pods, {services} Services",
            period.as_millis()
        );
        let out = Command::new(kinglet_binary())
            .args(["token", "--data-dir"])
            .arg(dir.path().join("data"))
            .env_remove("KINGLET_DATA_DIR")
            .output()
            .expect("kinglet token");
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(out.status.success() && token.starts_with("K10"), "kinglet token: {token}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!("server idle RSS: {}", rss(pid));
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "bench"}})).unwrap();
        Api::<Namespace>::all(admin.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("namespace");

        // All agents join at once, as a fleet does after a power cut.
        let stats = Arc::new(Stats::default());
        let (cpu0, t0) = (cpu_seconds(&spid), Instant::now());
        let starts: Vec<_> = (0..agents)
            .map(|i| {
                let (token, stats) = (token.clone(), stats.clone());
                tokio::spawn(async move { start_agent(i, port, &token, &stats).await })
            })
            .collect();
        let mut clients = Vec::new();
        let mut watches = Vec::new();
        let mut join_ms = Vec::new();
        for (i, s) in starts.into_iter().enumerate() {
            match s.await.expect("agent task") {
                Ok((c, w, joined)) => {
                    clients.push((i, c));
                    watches.extend(w);
                    join_ms.push(joined.as_secs_f64() * 1000.0);
                }
                Err(e) => stats.error("join", format!("{e:#}")),
            }
        }
        let all_joined = t0.elapsed();
        let first = stats.first_errors.lock().unwrap().clone();
        assert!(!clients.is_empty(), "no agent joined: {first:?}");
        join_ms.sort_by(f64::total_cmp);
        println!(
            "join: {} of {agents} agents joined, registered and watching in {:.2} s \
             (server CPU {:.2} s); certificates per agent: {}",
            clients.len(),
            all_joined.as_secs_f64(),
            cpu_seconds(&spid) - cpu0,
            spread(&join_ms)
        );
        println!("server RSS with all joined: {}", rss(pid));

        // The measured window: heartbeats from every agent, pods and Services from the admin.
        stats.measuring.store(true, Ordering::Relaxed);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (cpu1, self_cpu1, t1) = (cpu_seconds(&spid), cpu_seconds("self"), Instant::now());
        let beating: Vec<_> = clients
            .iter()
            .map(|(i, c)| {
                let offset = period * (*i as u32) / agents as u32;
                let args = (c.clone(), stats.clone(), stopped.clone());
                tokio::spawn(heartbeats(*i, args.0, args.1, period, offset, args.2))
            })
            .collect();
        let window = Duration::from_secs(seconds as u64);
        let creator = {
            let (admin, stats) = (admin.clone(), stats.clone());
            tokio::spawn(async move {
                let (pod_api, svc_api) = (
                    Api::<Pod>::namespaced(admin.clone(), "bench"),
                    Api::<Service>::namespaced(admin, "bench"),
                );
                // Spread over the first half of the window, so that all can be seen in it.
                let objects = (pods + services).max(1) as u32;
                let gap = window / 2 / objects;
                for k in 0..pods + services {
                    tokio::time::sleep(gap).await;
                    let post = PostParams::default();
                    if k < pods {
                        let p = pod(k, agents);
                        let name = p.metadata.name.clone().unwrap_or_default();
                        stats.pods_sent.lock().unwrap().insert(name, Instant::now());
                        stats.call("admin pod create", pod_api.create(&post, &p)).await;
                    } else {
                        let s = service(k - pods);
                        let name = s.metadata.name.clone().unwrap_or_default();
                        stats.services_sent.lock().unwrap().insert(name, Instant::now());
                        stats.call("admin service create", svc_api.create(&post, &s)).await;
                    }
                }
            })
        };
        tokio::time::sleep(window).await;
        let _ = stop.send(true);
        stats.measuring.store(false, Ordering::Relaxed);
        let wall = t1.elapsed().as_secs_f64();
        let (cpu2, self_cpu2) = (cpu_seconds(&spid), cpu_seconds("self"));
        let (mut renewed, mut reported) = (0, 0);
        for b in beating {
            // A heartbeat in flight at the stop finishes first.
            let (r, s) = b.await.expect("heartbeats");
            renewed += r;
            reported += s;
        }
        creator.await.expect("creator");
        for w in &watches {
            w.abort();
        }

        println!(
            "server CPU: {:.3} s/s over {wall:.1} s ({:.1}% of one core); the bench process's own: {:.3} s/s",
            (cpu2 - cpu1) / wall,
            (cpu2 - cpu1) / wall * 100.0,
            (self_cpu2 - self_cpu1) / wall
        );
        println!(
            "server RSS at the end: {}; maximum (VmHWM) {:.1} MiB",
            rss(pid),
            common::status_mib(pid, "VmHWM:")
        );
        println!(
            "lease renewals: {renewed} ({:.2}/s); node status writes: {reported} ({:.2}/s); expected {:.2}/s each",
            renewed as f64 / wall,
            reported as f64 / wall,
            clients.len() as f64 / period.as_secs_f64()
        );
        let mut calls = std::mem::take(&mut *stats.calls.lock().unwrap());
        let mut all = Vec::new();
        for what in [
            "lease get",
            "lease patch",
            "node status patch",
            "pod status patch",
            "admin pod create",
            "admin service create",
        ] {
            let mut ms = calls.remove(what).unwrap_or_default();
            if ms.is_empty() {
                continue;
            }
            if !what.starts_with("admin") {
                all.extend_from_slice(&ms);
            }
            ms.sort_by(f64::total_cmp);
            println!("{what:<21} n={:<6} {}", ms.len(), spread(&ms));
        }
        all.sort_by(f64::total_cmp);
        if !all.is_empty() {
            let rate = all.len() as f64 / wall;
            println!(
                "{:<21} n={:<6} {rate:.1}/s, {}",
                "all agent calls",
                all.len(),
                spread(&all)
            );
        }
        let report = |what: &str, seen: &Mutex<Vec<f64>>, expected: usize| {
            let mut ms = std::mem::take(&mut *seen.lock().unwrap());
            ms.sort_by(f64::total_cmp);
            if ms.is_empty() {
                println!("{what}: 0 of {expected} seen");
            } else {
                println!("{what}: {} of {expected} seen, {}", ms.len(), spread(&ms));
            }
        };
        report("pod seen by its node's watch", &stats.pod_seen, pods);
        let n = clients.len();
        report("Service seen by every agent", &stats.service_seen, services * n);
        report("EndpointSlice seen by every agent", &stats.slice_seen, services * n);
        println!(
            "watch events received: {}",
            stats.events.load(Ordering::Relaxed)
        );
        println!("errors: {}", stats.errors.load(Ordering::Relaxed));
        for e in stats.first_errors.lock().unwrap().iter() {
            println!("  {e}");
        }
    });
    let _ = server.kill();
    let _ = server.wait();
}
