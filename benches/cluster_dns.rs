//! Cluster DNS from a pod: queries per second and latency of A lookups of Service names
//! against the embedded DNS at the cluster DNS address, sent from inside a running pod's
//! network namespace (so through its veth and the node's bridge, as the pod's resolver would),
//! with a window of queries in flight. Only right answers count (a response to the query's ID,
//! NOERROR, with an A record of the Service's cluster IP); wrong ones are counted apart, by why.
//! The server runs in a test host.
//!
//! Run: `cargo bench --bench cluster_dns` (env BENCH_SERVICES=1000, BENCH_SECONDS=10,
//! BENCH_WINDOW=32).

mod common;
use common::{env_or, node_server, percentile, wait_for_client};

#[path = "../tests/common/host.rs"]
mod host;
#[path = "../tests/common/images.rs"]
mod images;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, UdpSocket};
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

/// The position after the name (labels, possibly ending in a compression pointer) at `i` of
/// the DNS message `msg`.
fn skip_name(msg: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *msg.get(i)? as usize;
        match len & 0xc0 {
            0xc0 => return msg.get(i + 1).map(|_| i + 2),
            0 if len == 0 => return Some(i + 1),
            0 => i += 1 + len,
            _ => return None, // reserved label types
        }
    }
}

/// Why `reply` is not a right answer (its ID already matched to a query), if it is not: it
/// must be a response with RCODE NOERROR and, among its answers, an A record (class IN) of
/// `want`. Parsed by hand, without allocating: the load generator shares the cores with the
/// server.
fn check_reply(reply: &[u8], want: Ipv4Addr) -> Result<(), &'static str> {
    let u16_at = |i: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*reply.get(i)?, *reply.get(i + 1)?]))
    };
    let (Some(flags), Some(questions), Some(answers)) = (u16_at(2), u16_at(4), u16_at(6)) else {
        return Err("malformed");
    };
    if flags & 0x8000 == 0 {
        return Err("not a response");
    }
    match flags & 0x000f {
        0 => {}
        2 => return Err("SERVFAIL"),
        3 => return Err("NXDOMAIN"),
        5 => return Err("REFUSED"),
        _ => return Err("other error RCODE"),
    }
    if answers == 0 {
        return Err("no answer");
    }
    let mut i = 12;
    for _ in 0..questions {
        i = skip_name(reply, i).ok_or("malformed")? + 4; // type and class
    }
    let mut other_a = false;
    for _ in 0..answers {
        i = skip_name(reply, i).ok_or("malformed")?;
        // Type, class, TTL (4 bytes), data length, data.
        let (Some(rtype), Some(class), Some(len)) = (u16_at(i), u16_at(i + 2), u16_at(i + 8))
        else {
            return Err("malformed");
        };
        let data = reply
            .get(i + 10..i + 10 + len as usize)
            .ok_or("malformed")?;
        if rtype == 1 && class == 1 {
            if data == want.octets().as_slice() {
                return Ok(());
            }
            other_a = true;
        }
        i += 10 + len as usize;
    }
    Err(if other_a {
        "wrong address"
    } else {
        "no A record"
    })
}

/// What a load run saw.
struct Outcome {
    /// Latencies in ms of the right answers.
    latencies: Vec<f64>,
    /// Answers that were not right, by why.
    wrong: BTreeMap<&'static str, usize>,
    /// Queries not answered within the timeout.
    lost: usize,
    /// Replies whose ID matched no query in flight (late ones, of queries counted lost).
    stray: usize,
}

/// Sends queries (`queries`, ids patched in; query `k` asks for a Service at `addresses[k]`)
/// with `window` in flight for `secs`. Only a reply to a query in flight (same ID) that
/// carries the right address counts as answered.
fn load(queries: &[Vec<u8>], addresses: &[Ipv4Addr], secs: u64, window: usize) -> Outcome {
    let sock = UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    sock.connect("10.43.0.10:53")
        .expect("connect to the cluster DNS");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // By ID: when it was sent and which query it is.
    let mut inflight: HashMap<u16, (Instant, usize)> = HashMap::new();
    let mut out = Outcome {
        latencies: Vec::new(),
        wrong: BTreeMap::new(),
        lost: 0,
        stray: 0,
    };
    let mut id: u16 = 0;
    let mut n = 0usize;
    let mut send = |inflight: &mut HashMap<u16, (Instant, usize)>| {
        id = id.wrapping_add(1);
        n += 1;
        let k = n % queries.len();
        let mut q = queries[k].clone();
        q[0..2].copy_from_slice(&id.to_be_bytes());
        inflight.insert(id, (Instant::now(), k));
        let _ = sock.send(&q);
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    for _ in 0..window {
        send(&mut inflight);
    }
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(len) => {
                let reply = &buf[..len];
                let query = (len >= 2)
                    .then(|| u16::from_be_bytes([reply[0], reply[1]]))
                    .and_then(|rid| inflight.remove(&rid));
                let Some((sent, k)) = query else {
                    out.stray += 1;
                    continue;
                };
                let ms = sent.elapsed().as_secs_f64() * 1000.0;
                match check_reply(reply, addresses[k]) {
                    Ok(()) => out.latencies.push(ms),
                    Err(why) => *out.wrong.entry(why).or_default() += 1,
                }
                send(&mut inflight);
            }
            Err(_) => {
                // Timed out: whatever is still in flight is lost; refill the window.
                out.lost += inflight.len();
                inflight.clear();
                for _ in 0..window {
                    send(&mut inflight);
                }
            }
        }
    }
    out
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
    let (uid, addresses) = rt.block_on(async {
        let client = wait_for_client(&dir.path().join("kubeconfig"), 30).await;
        let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
        // Each Service's cluster IP, in order: what the lookup of its name must answer.
        let addresses: Vec<Ipv4Addr> = futures::stream::iter(0..services)
            .map(|i| {
                let svcs = svcs.clone();
                async move {
                    let s: Service = serde_json::from_value(json!({"metadata": {"name": format!("svc-{i}")}, "spec": {"ports": [{"port": 80}]}})).unwrap();
                    let s = svcs.create(&PostParams::default(), &s).await.expect("service");
                    let ip = s.spec.and_then(|s| s.cluster_ip).expect("cluster IP");
                    ip.parse::<Ipv4Addr>().expect("an IPv4 cluster IP")
                }
            })
            .buffered(16)
            .collect()
            .await;
        let pods: Api<Pod> = Api::namespaced(client, "default");
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": "client"}, "spec": {"containers": [{
            "name": "c", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent", "command": ["sleep", "100000"]}]}}))
        .unwrap();
        pods.create(&PostParams::default(), &p).await.expect("pod");
        let t0 = Instant::now();
        let uid = loop {
            let p = pods.get("client").await.expect("pod");
            if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                break p.metadata.uid.unwrap_or_default();
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "client pod not running");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        (uid, addresses)
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
    let Outcome {
        latencies: mut lat,
        wrong,
        lost,
        stray,
    } = std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the pod's netns");
        load(&queries, &addresses, secs, window)
    })
    .join()
    .unwrap();
    lat.sort_by(f64::total_cmp);
    // Of the right answers only (none: no latency to show).
    let pct = |p: f64| match lat.is_empty() {
        true => f64::NAN,
        false => percentile(&lat, p),
    };
    let why: Vec<String> = (wrong.iter())
        .map(|(why, n)| format!("{n} {why}"))
        .collect();
    let why = match why.is_empty() {
        true => String::new(),
        false => format!(" ({})", why.join(", ")),
    };
    let wrong: usize = wrong.values().sum();
    common::print_machine();
    println!(
        "cluster DNS, A lookups of {services} service names from a pod, {window} in flight, {secs} s: {:.0} right answers/s, p50 {:.2} ms, p99 {:.2} ms; {wrong} wrong{why}, {lost} lost, {stray} stray replies",
        lat.len() as f64 / secs as f64,
        pct(0.5),
        pct(0.99)
    );
    let _ = server.kill();
    let _ = server.wait();
}
