//! API server benchmark: drives a running `kinglet server` (this build) over HTTPS with
//! concurrent kube-rs clients and prints creates/s, gets/s, list and watch latencies, creates
//! with label-selector watches (`curl` processes) open (sharing every CPU with the server,
//! then with the server on CPU 0 and the bench on the others), and RSS; once on SQLite and
//! once on a local single-member etcd (Debian's `etcd-server`), one after the other in one
//! run. On SQLite it also measures the database file after a burst of creates and deletes
//! and a compaction.
//!
//! Run: `cargo bench --bench apiserver` (env BENCH_CREATES, BENCH_CLIENTS, BENCH_WATCHES,
//! BENCH_SELECTOR_WATCHES (50), BENCH_BURST (20,000 objects created and deleted beside a quarter
//! as many that stay; 0 skips the database-size measure),
//! BENCH_BACKENDS (`sqlite,etcd`); BENCH_KINGLET=<path> drives that kinglet binary instead, to
//! compare two builds in one session).

mod common;
use common::{cpu_seconds, env_or, rss, server_command, wait_for_client};

#[path = "../tests/common/mod.rs"]
mod harness;
use harness::etcd::Etcd;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn report(name: &str, mut lat: Vec<Duration>, wall: Duration) {
    lat.sort();
    println!(
        "{name:<28} n={:<6} rate={:>8.0}/s  p50={:>7.2} ms  p99={:>7.2} ms",
        lat.len(),
        lat.len() as f64 / wall.as_secs_f64(),
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
}

/// The binary under test: this build's, or BENCH_KINGLET's.
fn kinglet_binary() -> String {
    std::env::var("BENCH_KINGLET").unwrap_or_else(|_| env!("CARGO_BIN_EXE_kinglet").to_string())
}

fn cm(name: &str, stamp: Option<u128>) -> ConfigMap {
    let mut v = serde_json::json!({"metadata": {"name": name, "labels": {"bench": "1"}}, "data": {"payload": "x".repeat(256)}});
    if let Some(t) = stamp {
        v["metadata"]["annotations"] = serde_json::json!({"bench/sent-us": t.to_string()});
    }
    serde_json::from_value(v).expect("configmap")
}

fn now_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

async fn client(kubeconfig: &std::path::Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

async fn make_ns(c: &kube::Client, name: &str) {
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(c.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace");
}

fn main() {
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,etcd".into());
    common::print_machine();
    for backend in backends.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        println!("\n== datastore: {backend}");
        match backend {
            "sqlite" => bench_server(&[], &[]),
            "etcd" => {
                let etcd = Etcd::loopback(1);
                let flags = etcd.server_flags();
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                bench_server(&flags, etcd.pid(0).as_slice());
                let db = std::fs::metadata(etcd.data_dir(0).join("member/snap/db"))
                    .map(|m| m.len())
                    .unwrap_or(0);
                println!(
                    "etcd: RSS {}, database file {:.1} MB",
                    rss(etcd.pid(0).expect("etcd runs")),
                    db as f64 / 1e6
                );
            }
            other => panic!("BENCH_BACKENDS: unknown datastore {other:?} (sqlite, etcd)"),
        }
    }
}

/// One `kinglet server --disable-agent` with `datastore` flags, measured; `etcd` are the
/// processes of its etcd (none: on SQLite, which also measures the database file after a
/// burst).
fn bench_server(datastore: &[&str], etcd: &[u32]) {
    let creates = env_or("BENCH_CREATES", 10_000);
    let clients = env_or("BENCH_CLIENTS", 16);
    let watches = env_or("BENCH_WATCHES", 100);
    let selector_watches = env_or("BENCH_SELECTOR_WATCHES", 50);
    let burst = env_or("BENCH_BURST", 20_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let server = start_server(dir.path(), datastore);
    let pid = server.0.id();
    let rt = common::runtime();
    rt.block_on(async {
        let start = Instant::now();
        let c = wait_for_client(&kubeconfig, 30).await;
        println!(
            "startup to first answer: {:.0} ms",
            start.elapsed().as_secs_f64() * 1000.0
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!("idle RSS: {}", rss(pid));
        // Creates: `clients` concurrent clients, each with its own connection; first as the
        // admin (system:masters), then as a ServiceAccount that a RoleBinding grants `edit`
        // (token authentication and RBAC on every request, as workloads meet them). Each in two
        // halves, in the order admin, SA, SA, admin, so the store's growth weighs on both alike.
        make_ns(&c, "bench").await;
        let token = bound_service_account(&c, &kubeconfig, "bench-rbac").await;
        let per = creates / clients;
        let mut admin = (Vec::new(), Duration::ZERO);
        let mut account = (Vec::new(), Duration::ZERO);
        for (round, as_admin) in [true, false, false, true].into_iter().enumerate() {
            let mut cs = Vec::new();
            for _ in 0..clients {
                cs.push(if as_admin {
                    client(&kubeconfig).await
                } else {
                    token_client(&kubeconfig, &token).await
                });
            }
            let ns = if as_admin { "bench" } else { "bench-rbac" };
            let (lat, wall) = create_all(cs, ns, per / 2, round).await;
            let total = if as_admin { &mut admin } else { &mut account };
            total.0.extend(lat);
            total.1 += wall;
        }
        report(&format!("create ({clients} clients)"), admin.0, admin.1);
        report(
            &format!("create as SA ({clients} clients)"),
            account.0,
            account.1,
        );

        // Gets of existing objects.
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..clients {
            let kc = kubeconfig.clone();
            tasks.push(tokio::spawn(async move {
                let api: Api<ConfigMap> = Api::namespaced(client(&kc).await, "bench");
                let mut lat = Vec::with_capacity(per);
                // The admin's objects: rounds 0 and 3, `per / 2` each.
                let half = per / 2;
                for i in 0..2 * half {
                    let round = if i < half { 0 } else { 3 };
                    let t = Instant::now();
                    api.get(&format!("c-{round}-{w}-{}", i % half))
                        .await
                        .expect("get");
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        report(&format!("get ({clients} clients)"), lat, t0.elapsed());

        // Lists of 1,000 objects.
        make_ns(&c, "list1k").await;
        let api: Api<ConfigMap> = Api::namespaced(c.clone(), "list1k");
        let fill: Vec<_> = (0..1000)
            .map(|i| {
                let api = api.clone();
                async move {
                    api.create(&PostParams::default(), &cm(&format!("l-{i}"), None))
                        .await
                        .expect("create")
                }
            })
            .collect();
        futures::stream::iter(fill)
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        let t0 = Instant::now();
        let mut lat = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            let l = api
                .list(&ListParams::default().labels("bench=1"))
                .await
                .expect("list");
            assert_eq!(l.items.len(), 1000);
            lat.push(t.elapsed());
        }
        report("list 1000 objects", lat, t0.elapsed());

        // Watch delivery latency with `watches` open watches.
        make_ns(&c, "watched").await;
        let wapi: Api<ConfigMap> = Api::namespaced(c.clone(), "watched");
        let rv = wapi
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap_or_default();
        let events = 200usize;
        let lat = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut watchers = Vec::new();
        for _ in 0..watches {
            let kc = kubeconfig.clone();
            let rv = rv.clone();
            let lat = lat.clone();
            watchers.push(tokio::spawn(async move {
                let api: Api<ConfigMap> = Api::namespaced(client(&kc).await, "watched");
                let mut s = api
                    .watch(&WatchParams::default().timeout(120), &rv)
                    .await
                    .expect("watch")
                    .boxed();
                let mut got = 0;
                while got < events {
                    match s.next().await {
                        Some(Ok(WatchEvent::Added(o))) => {
                            // Only the bench's own creates count: the namespace's
                            // `kube-root-ca.crt`, made by its controller, may come too.
                            let Some(event) = o
                                .metadata
                                .name
                                .and_then(|n| n.strip_prefix("e-")?.parse::<usize>().ok())
                            else {
                                continue;
                            };
                            let sent: u128 = o
                                .metadata
                                .annotations
                                .and_then(|a| a.get("bench/sent-us")?.parse().ok())
                                .unwrap_or(0);
                            let took = now_us().saturating_sub(sent) as u64;
                            lat.lock()
                                .unwrap()
                                .push((event, Duration::from_micros(took)));
                            got += 1;
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t0 = Instant::now();
        let mut create_took = Vec::with_capacity(events);
        for i in 0..events {
            let c0 = Instant::now();
            wapi.create(
                &PostParams::default(),
                &cm(&format!("e-{i}"), Some(now_us())),
            )
            .await
            .expect("create");
            create_took.push(c0.elapsed());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for w in watchers {
            let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
        }
        let lat = lat.lock().unwrap().clone();
        // Where a late delivery comes from: the event of a create that was itself slow (its
        // round trip, commit included) was late before any fan-out; otherwise the fan-out or
        // the watcher was.
        let slow = Duration::from_millis(10);
        let slow_create = |e: usize| create_took.get(e).is_some_and(|c| *c > slow);
        let slow_creates = (0..events).filter(|&e| slow_create(e)).count();
        let late = lat.iter().filter(|l| l.1 > slow);
        let late_of_slow = late.clone().filter(|l| slow_create(l.0)).count();
        let late = late.count();
        report(
            &format!("watch delivery ({watches} watches)"),
            lat.into_iter().map(|l| l.1).collect(),
            t0.elapsed(),
        );
        let mut sorted = create_took;
        sorted.sort();
        println!(
            "  its {events} creates, one at a time: p50={:.2} ms  p99={:.2} ms  max={:.2} ms, \
             {slow_creates} over 10 ms; deliveries over 10 ms: {} ({late_of_slow} of those creates)",
            pct(&sorted, 0.5),
            pct(&sorted, 0.99),
            pct(&sorted, 1.0),
            late,
        );

        // Creates with no watch open, then with `selector_watches` label-selector watches on
        // the same resource, each matching every object created.
        let kubeconfig = &kubeconfig;
        let pair = |pinned| async move {
            let with = (selector_watches > 0).then_some(selector_watches);
            for watches in std::iter::once(0).chain(with) {
                creates_with_watches(kubeconfig, pid, clients, creates, watches, pinned).await;
            }
        };
        pair(false).await;
        println!("RSS after load: {}", rss(pid));

        // The same with the server (and its etcd) on CPU 0 and the bench (its clients and the
        // watchers' curls) on the other CPUs: what the watches cost the server itself, without
        // the watchers' own CPU time taken from the server's cores (in a cluster the
        // watchers, kubelets and controllers, run on other machines).
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus >= 2 {
            let server_side: Vec<u32> = std::iter::once(pid).chain(etcd.iter().copied()).collect();
            for &p in &server_side {
                pin(p, "0");
            }
            pin(std::process::id(), &format!("1-{}", cpus - 1));
            pair(true).await;
            for p in server_side.into_iter().chain([std::process::id()]) {
                pin(p, &format!("0-{}", cpus - 1));
            }
        }
    });
    drop(server);
    if etcd.is_empty() && burst > 0 {
        rt.block_on(sqlite_after_burst(clients, burst));
    }
}

/// A child process (the server, a watcher's `curl`), killed when dropped: also when the
/// bench panics, before the temporary directory it uses goes.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kinglet server --disable-agent` on a free loopback port with its state under `dir`;
/// `extra` flags last.
fn start_server(dir: &std::path::Path, extra: &[&str]) -> Killed {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Killed(
        server_command(Command::new(kinglet_binary()), dir)
            .args(["--disable-agent", "--https-listen-port", &port.to_string()])
            .args(extra)
            .spawn()
            .expect("start kinglet"),
    )
}

/// Moves every thread of process `pid` to `cpus` (a `taskset` list such as `1-3`); threads
/// it starts later inherit that.
fn pin(pid: u32, cpus: &str) {
    let pinned = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(pinned, "taskset (util-linux) -a -p -c {cpus} {pid}");
}

/// Creates `n` ConfigMaps labelled `bench=1` in a namespace of their own with `clients`
/// clients while `watches` watches with the selector `bench=1` are open on that namespace;
/// reports the creates, the server's CPU time per create (`server`: its pid) and whether
/// every watcher received every event. `pinned` only names the run (see `bench_server`).
///
/// The watchers are `curl` processes writing to files (on tmpfs), as in the h2load
/// measurement that reproduced the figures (docs/BENCHMARKS.md): they share the
/// server's cores unless `pinned`, and what is measured is the server's fan-out, not the
/// watchers' decoding. Every line is checked after the timed creates: each watcher must hold
/// an ADDED event of every object created.
async fn creates_with_watches(
    kubeconfig: &std::path::Path,
    server: u32,
    clients: usize,
    n: usize,
    watches: usize,
    pinned: bool,
) {
    let ns = format!("sel-{watches}{}", if pinned { "-pinned" } else { "" });
    let c = client(kubeconfig).await;
    make_ns(&c, &ns).await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), &ns);
    let rv = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .unwrap_or_default();
    let per = n / clients;
    let total = per * clients;
    let base = kube::config::Kubeconfig::read_from(kubeconfig)
        .expect("kubeconfig")
        .clusters[0]
        .cluster
        .as_ref()
        .and_then(|c| c.server.clone())
        .expect("server URL");
    let url = format!(
        "{base}/api/v1/namespaces/{ns}/configmaps?watch=1&labelSelector=bench%3D1&resourceVersion={rv}&timeoutSeconds=600"
    );
    let tls = kubeconfig.parent().unwrap().join("data/server/tls");
    // The watchers' output in memory (tmpfs) where there is one: its verification is the
    // bench's own work, and writing 300 MB back to disk is not the server's fan-out.
    let shm = std::path::Path::new("/dev/shm");
    let out = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("tempdir");
    let files: Vec<_> = (0..watches)
        .map(|i| out.path().join(format!("watch-{i}")))
        .collect();
    let mut curls: Vec<Killed> = files
        .iter()
        .map(|file| {
            Killed(
                Command::new("curl")
                    .args(["-sS", "-N", "--cacert"])
                    .arg(tls.join("ca.crt"))
                    .arg("--cert")
                    .arg(tls.join("client-admin.crt"))
                    .arg("--key")
                    .arg(tls.join("client-admin.key"))
                    .arg("-o")
                    .arg(file)
                    .arg(&url)
                    .spawn()
                    .expect("curl (Debian's curl) runs"),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut cs = Vec::new();
    for _ in 0..clients {
        cs.push(client(kubeconfig).await);
    }
    let cpu = cpu_seconds(&server.to_string());
    let (lat, wall) = create_all(cs, &ns, per, 0).await;
    let pinned = if pinned { ", pinned" } else { "" };
    report(
        &format!("create, {watches} sel. watches{pinned}"),
        lat,
        wall,
    );
    // Until every watcher has a line per object (or its curl ended, or 5 minutes); the
    // server's CPU counted until then, as the fan-out may finish after the last create.
    let lines = |f: &std::path::Path| {
        std::fs::read(f)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut waiting: Vec<usize> = (0..watches).collect();
    while Instant::now() < deadline && !waiting.is_empty() {
        waiting.retain(|&i| lines(&files[i]) < total && matches!(curls[i].0.try_wait(), Ok(None)));
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let cpu = cpu_seconds(&server.to_string()) - cpu;
    println!(
        "  server CPU until every event was delivered: {:.1} s, {:.0} µs per create",
        cpu,
        cpu * 1e6 / total as f64
    );
    drop(curls);
    if watches == 0 {
        return;
    }
    let complete = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let names: std::collections::HashSet<String> = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|ev| ev["type"] == "ADDED")
                .filter_map(|ev| ev["object"]["metadata"]["name"].as_str().map(String::from))
                .collect();
            names.len() == total
        })
        .count();
    println!(
        "  {complete} of {watches} watchers received all {total} events (the creates took {:.1} s)",
        wall.as_secs_f64()
    );
}

/// SQLite's database file (`db/state.db` with its WAL) of a fresh server compacting every 5 s:
/// before a burst of `burst` creates, at its peak, after the objects' deletion and after two
/// compactions.
async fn sqlite_after_burst(clients: usize, burst: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let _server = start_server(dir.path(), &["--compaction-interval", "5"]);
    let c = &wait_for_client(&kubeconfig, 30).await;
    let kubeconfig = kubeconfig.as_path();
    let db = dir.path().join("data/server/db/state.db");
    let size = || {
        let file = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let wal = db.with_file_name("state.db-wal");
        (file(&db) as f64 / 1e6, file(&wal) as f64 / 1e6)
    };
    let show = |what: &str, (main, wal): (f64, f64)| {
        println!("database file {what:<34} {main:>8.1} MB (+ WAL {wal:.1} MB)");
    };
    // The live data: `live` objects that stay, and the server's own, after two compactions.
    let live = burst / 4;
    make_ns(c, "live").await;
    let mut cs = Vec::new();
    for _ in 0..clients {
        cs.push(client(kubeconfig).await);
    }
    create_all(cs, "live", live / clients, 0).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let before = size();
    show(&format!("with {live} objects (live data)"), before);
    make_ns(c, "burst").await;
    let mut cs = Vec::new();
    for _ in 0..clients {
        cs.push(client(kubeconfig).await);
    }
    let (lat, wall) = create_all(cs, "burst", burst / clients, 0).await;
    report("burst creates", lat, wall);
    show("after the creates", size());
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "burst");
    let t = Instant::now();
    api.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete collection");
    println!(
        "delete collection of {} objects: {:.2} s",
        burst / clients * clients,
        t.elapsed().as_secs_f64()
    );
    let peak = size();
    show("after the deletes (peak)", peak);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let after = size();
    show("after two compactions", after);
    println!(
        "  after / before the burst: {:.2}x (file + WAL)",
        (after.0 + after.1) / (before.0 + before.1)
    );
}

/// Each client creates `per` ConfigMaps in `ns`, all at once; latencies and wall time.
async fn create_all(
    clients: Vec<kube::Client>,
    ns: &str,
    per: usize,
    round: usize,
) -> (Vec<Duration>, Duration) {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (w, c) in clients.into_iter().enumerate() {
        let api: Api<ConfigMap> = Api::namespaced(c, ns);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let t = Instant::now();
                api.create(
                    &PostParams::default(),
                    &cm(&format!("c-{round}-{w}-{i}"), None),
                )
                .await
                .expect("create");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    (lat, t0.elapsed())
}

/// A client of the server in `kubeconfig` that authenticates with a bearer token only.
async fn token_client(kubeconfig: &std::path::Path, token: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    cfg.auth_info = kube::config::AuthInfo {
        token: Some(token.to_string().into()),
        ..Default::default()
    };
    kube::Client::try_from(cfg).expect("client")
}

/// A namespace with a ServiceAccount bound to `edit` there; returns a token for it once the
/// binding is in force.
async fn bound_service_account(
    admin: &kube::Client,
    kubeconfig: &std::path::Path,
    ns: &str,
) -> String {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::RoleBinding;
    make_ns(admin, ns).await;
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "bench"}})).unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    sas.create(&PostParams::default(), &sa)
        .await
        .expect("service account");
    let rb: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bench-edit"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "ServiceAccount", "name": "bench", "namespace": ns}]}))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &rb)
        .await
        .expect("role binding");
    let req: TokenRequest =
        serde_json::from_value(serde_json::json!({"spec": {"expirationSeconds": 3600}})).unwrap();
    let token = sas
        .create_subresource::<TokenRequest, TokenRequest>(
            "token",
            "bench",
            &PostParams::default(),
            &req,
        )
        .await
        .expect("token")
        .status
        .expect("token status")
        .token;
    let probe: Api<ConfigMap> = Api::namespaced(token_client(kubeconfig, &token).await, ns);
    for _ in 0..100 {
        if probe
            .create(&PostParams::default(), &cm("probe", None))
            .await
            .is_ok()
        {
            return token;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the RoleBinding never applied to the ServiceAccount");
}
