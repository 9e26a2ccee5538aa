//! Cluster DNS from a pod: queries per second and latency of A lookups of Service names
//! against the embedded DNS at the cluster DNS address, sent from inside a running pod's
//! network namespace (so through its veth and the node's bridge, as the pod's resolver would),
//! with a window of queries in flight. The server runs in a test host.
//!
//! Run: `cargo bench --bench cluster_dns` (env BENCH_SERVICES=1000, BENCH_SECONDS=10,
//! BENCH_WINDOW=32).

mod common;
use common::{env_or, node_server, percentile, wait_for_client};

#[path = "../tests/common/host.rs"]
mod host;
#[path = "../tests/common/images.rs"]
mod images;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hickory_server::proto::op::{Message, Query};
use hickory_server::proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, PostParams};
use serde_json::json;

/// A process of the pod with UID `uid`, found through its cgroup under the test host's root.
fn pod_pid(cgroup_root: &str, uid: &str) -> Option<u32> {
    let mut stack = vec![std::path::PathBuf::from(format!(
        "/sys/fs/cgroup/pids{cgroup_root}"
    ))];
    if !stack[0].exists() {
        stack[0] = format!("/sys/fs/cgroup{cgroup_root}").into();
    }
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).ok()?.flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            if p.to_string_lossy().contains(&uid.replace('-', "_"))
                || p.to_string_lossy().contains(uid)
            {
                let procs = std::fs::read_to_string(p.join("cgroup.procs")).unwrap_or_default();
                if let Some(pid) = procs.lines().next().and_then(|l| l.parse().ok()) {
                    return Some(pid);
                }
            }
            stack.push(p);
        }
    }
    None
}

/// Sends queries (`queries`, ids patched in) with `window` in flight for `secs`; returns the
/// latencies in ms of the answered ones and the number lost.
fn load(queries: &[Vec<u8>], secs: u64, window: usize) -> (Vec<f64>, usize) {
    let sock = UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    sock.connect("10.43.0.10:53")
        .expect("connect to the cluster DNS");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut inflight: HashMap<u16, Instant> = HashMap::new();
    let mut latencies = Vec::new();
    let mut lost = 0;
    let mut id: u16 = 0;
    let mut n = 0usize;
    let mut send = |inflight: &mut HashMap<u16, Instant>| {
        id = id.wrapping_add(1);
        n += 1;
        let mut q = queries[n % queries.len()].clone();
        q[0..2].copy_from_slice(&id.to_be_bytes());
        inflight.insert(id, Instant::now());
        let _ = sock.send(&q);
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    for _ in 0..window {
        send(&mut inflight);
    }
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(len) if len >= 12 => {
                let rid = u16::from_be_bytes([buf[0], buf[1]]);
                if let Some(t) = inflight.remove(&rid) {
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    send(&mut inflight);
                }
            }
            _ => {
                // Timed out: whatever is still in flight is lost; refill the window.
                lost += inflight.len();
                inflight.clear();
                for _ in 0..window {
                    send(&mut inflight);
                }
            }
        }
    }
    (latencies, lost)
}

fn main() {
    let services = env_or("BENCH_SERVICES", 1000);
    let secs = env_or("BENCH_SECONDS", 10) as u64;
    let window = env_or("BENCH_WINDOW", 32);
    let dir = tempfile::tempdir().expect("tempdir");
    let images_dir = dir.path().join("data/agent/images");
    std::fs::create_dir_all(&images_dir).unwrap();
    images::write_busybox_image(
        &images_dir.join("busybox.tar"),
        "docker.io/library/busybox:1.36",
    );
    let host = host::TestHost::new();
    let kinglet = host.command(env!("CARGO_BIN_EXE_kinglet"));
    let mut server = node_server(kinglet, dir.path(), &host.cgroup_root, host::NODE_IP)
        .spawn()
        .expect("start kinglet");
    let netns = std::fs::File::open(format!("/proc/{}/ns/net", host.pid())).unwrap();
    // Runtime threads inherit the namespace of the thread that makes them, and `block_on`
    // polls on this one: join the test host's network namespace here.
    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    let rt = common::runtime();
    let uid = rt.block_on(async {
        let client = wait_for_client(&dir.path().join("kubeconfig"), 30).await;
        let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
        futures::stream::iter(0..services)
            .map(|i| {
                let svcs = svcs.clone();
                async move {
                    let s: Service = serde_json::from_value(json!({"metadata": {"name": format!("svc-{i}")}, "spec": {"ports": [{"port": 80}]}})).unwrap();
                    svcs.create(&PostParams::default(), &s).await.expect("service");
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<()>>()
            .await;
        let pods: Api<Pod> = Api::namespaced(client, "default");
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": "client"}, "spec": {"containers": [{
            "name": "c", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent", "command": ["sleep", "100000"]}]}}))
        .unwrap();
        pods.create(&PostParams::default(), &p).await.expect("pod");
        let t0 = Instant::now();
        loop {
            let p = pods.get("client").await.expect("pod");
            if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                break p.metadata.uid.unwrap_or_default();
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "client pod not running");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let pid = pod_pid(&host.cgroup_root, &uid).expect("the client pod's process");
    let queries: Vec<Vec<u8>> = (0..services)
        .map(|i| {
            let mut m = Message::new();
            m.set_recursion_desired(true);
            m.add_query(Query::query(
                Name::from_ascii(format!("svc-{i}.default.svc.cluster.local.")).unwrap(),
                RecordType::A,
            ));
            m.to_vec().unwrap()
        })
        .collect();
    // Give the DNS a moment to index the new services, then measure from the pod's namespace.
    std::thread::sleep(Duration::from_secs(2));
    let (mut lat, lost) = std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the pod's netns");
        load(&queries, secs, window)
    })
    .join()
    .unwrap();
    lat.sort_by(f64::total_cmp);
    common::print_machine();
    println!(
        "cluster DNS, A lookups of {services} service names from a pod, {window} in flight, {secs} s: {:.0} queries/s, p50 {:.2} ms, p99 {:.2} ms, {lost} lost",
        lat.len() as f64 / secs as f64,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    let _ = server.kill();
    let _ = server.wait();
}
