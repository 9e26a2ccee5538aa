//! Service rule programming (upstream's network programming latency SLI): for N Services with
//! two endpoints each, the time of the proxy's full sync from a cold start (no rules in the
//! kernel, kinglet just started), and the latency from an API change (an EndpointSlice gaining
//! an endpoint; a new Service, which gets its REJECT rule) to the rules being in place: the end
//! of the proxy's first sync, read from its own log of each applied sync, that began after the
//! change and after which the kernel (`iptables-save` in the test host) holds that change. The
//! server runs in a test host (own network and mount namespaces).
//!
//! Run: `cargo bench --bench service_proxy` (env BENCH_SERVICES="1000,10000", BENCH_CHANGES=100;
//! p99 is printed only from 100 changes on).

mod common;
use common::{env_or, node_server, percentile, spread, wait_for_client};

#[path = "../tests/common/host.rs"]
mod host;

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

fn service(i: usize) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}")},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .unwrap()
}

fn endpoint_ip(i: usize, j: usize) -> String {
    let n = i * 4 + j;
    format!("10.42.{}.{}", 1 + n / 250, 2 + n % 250)
}

fn slice(i: usize, endpoints: usize) -> EndpointSlice {
    let eps: Vec<_> = (0..endpoints)
        .map(|j| json!({"addresses": [endpoint_ip(i, j)], "conditions": {"ready": true}, "nodeName": "bench"}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}-x"), "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps
    }))
    .unwrap()
}

/// The proxy's sync lines of the server log, read incrementally: polling every few
/// milliseconds must not re-read a log of megabytes (that would take a core from the server).
struct SyncLog {
    path: std::path::PathBuf,
    read: u64,
    /// Of a line not yet complete.
    partial: String,
    lines: Vec<(chrono::DateTime<chrono::Utc>, String)>,
}

impl SyncLog {
    fn new(path: &Path) -> SyncLog {
        SyncLog {
            path: path.to_path_buf(),
            read: 0,
            partial: String::new(),
            lines: Vec::new(),
        }
    }

    fn refresh(&mut self) {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.metadata().map(|m| m.len()).unwrap_or(0) < self.read {
            self.read = 0; // a new file
        }
        let mut new = String::new();
        if f.seek(SeekFrom::Start(self.read)).is_err() || f.read_to_string(&mut new).is_err() {
            return;
        }
        self.read += new.len() as u64;
        let text = std::mem::take(&mut self.partial) + &new;
        let mut rest = text.as_str();
        while let Some((line, after)) = rest.split_once('\n') {
            if (line.contains("service rules") || line.contains("became leader"))
                && let Some((ts, fields)) = line.split_once(' ')
                && let Ok(ts) = ts.parse()
            {
                self.lines.push((ts, fields.to_string()));
            }
            rest = after;
        }
        self.partial = rest.to_string();
    }
}

fn field(line: &str, name: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
}

/// Waits for a sync line after `since` for which `pred` holds; returns it.
fn wait_sync(
    log: &mut SyncLog,
    since: chrono::DateTime<chrono::Utc>,
    secs: u64,
    pred: impl Fn(&str) -> bool,
) -> (chrono::DateTime<chrono::Utc>, String) {
    let t0 = Instant::now();
    loop {
        log.refresh();
        if let Some(s) = log.lines.iter().find(|(t, l)| *t >= since && pred(l)) {
            return s.clone();
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            panic!(
                "no sync seen in {secs} s since {since}; log ends:\n{}",
                log_tail(&log.path)
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The last lines of the server log, newest first, for a failure message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(15).collect();
    tail.join("\n")
}

/// Waits for the sync that applied a change made at `since`; returns its line. A sync takes
/// its changes when it begins and logs once its restore is done, `elapsed_ms` later: only a
/// sync that began after `since` can hold the change, and of those the first after which the
/// kernel holds it (`in_kernel`) applied it. Any other sync (or none at all) must not count.
/// The kernel is read after the line was seen, so reading it is not part of the latency;
/// should another sync have ended before that read, either may have applied the change and
/// the later one is taken (an upper bound rather than a sync that may not have held it).
fn wait_change(
    log: &mut SyncLog,
    since: chrono::DateTime<chrono::Utc>,
    secs: u64,
    in_kernel: impl Fn() -> bool,
) -> (chrono::DateTime<chrono::Utc>, String) {
    let began_after = |at: chrono::DateTime<chrono::Utc>, line: &str| {
        field(line, "elapsed_ms")
            .is_some_and(|ms| at - chrono::TimeDelta::microseconds((ms * 1000.0) as i64) >= since)
    };
    let t0 = Instant::now();
    // The next line to look at: each sync is a candidate once.
    let mut next = 0;
    loop {
        log.refresh();
        while next < log.lines.len() {
            let (at, line) = &log.lines[next];
            next += 1;
            if !began_after(*at, line.as_str()) || !in_kernel() {
                continue;
            }
            let read = chrono::Utc::now();
            log.refresh();
            let last = log.lines[next - 1..]
                .iter()
                .rfind(|(t, l)| *t <= read && began_after(*t, l.as_str()));
            return last.expect("the candidate itself").clone();
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            panic!(
                "no sync applied the change of {since} in {secs} s; log ends:\n{}",
                log_tail(&log.path)
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether a line of `iptables-save` (every table) in the test host satisfies `pred`.
fn kernel_has(host: &host::TestHost, pred: impl Fn(&str) -> bool) -> bool {
    let out = host
        .command("iptables-save")
        .output()
        .expect("iptables-save in the test host");
    assert!(
        out.status.success(),
        "iptables-save failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).lines().any(pred)
}

/// p50, p99 and max of ascending latencies in ms. Below 100 samples a p99 would be the
/// largest one or two of them: then only the max is shown.
fn start(host: &host::TestHost, dir: &Path) -> std::process::Child {
    let kinglet = host.command(env!("CARGO_BIN_EXE_kinglet"));
    node_server(kinglet, dir, &host.cgroup_root, host::NODE_IP)
        .env("RUST_LOG", "info,kinglet_network::proxy=debug")
        .spawn()
        .expect("start kinglet")
}

fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_SERVICES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let changes = env_or("BENCH_CHANGES", 100);
    common::print_machine();
    for n in sizes {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("server.log");
        let mut sync_log = SyncLog::new(&log);
        let host = host::TestHost::new();
        let mut server = start(&host, dir.path());
        let kubeconfig = dir.path().join("kubeconfig");
        let netns = std::fs::File::open(format!("/proc/{}/ns/net", host.pid())).unwrap();
        // Runtime threads inherit the namespace of the thread that makes them, and `block_on`
        // polls on this one: join the test host's network namespace here.
        nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = common::runtime();
        let client = rt.block_on(wait_for_client(&kubeconfig, 30));
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
        let t = Instant::now();
        rt.block_on(async {
            futures::stream::iter(0..n)
                .map(|i| {
                    let (services, slices) = (services.clone(), slices.clone());
                    async move {
                        services
                            .create(&PostParams::default(), &service(i))
                            .await
                            .expect("service");
                        slices
                            .create(&PostParams::default(), &slice(i, 2))
                            .await
                            .expect("slice");
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<()>>()
                .await;
        });
        let created = t.elapsed();
        // The `kubernetes` Service is programmed too (kube-dns is answered locally).
        let total = n + 1;
        wait_sync(
            &mut sync_log,
            chrono::DateTime::<chrono::Utc>::MIN_UTC,
            600,
            |l| field(l, "services") == Some(total as f64),
        );

        // Cold start: no rules in the kernel, kinglet starting.
        let _ = server.kill();
        let _ = server.wait();
        let cleanup = host
            .command(env!("CARGO_BIN_EXE_kinglet"))
            .arg("cleanup")
            .status()
            .unwrap();
        assert!(cleanup.success(), "kinglet cleanup failed");
        let restarted = chrono::Utc::now();
        server = start(&host, dir.path());
        let (at, full) = wait_sync(&mut sync_log, restarted, 600, |l| {
            l.contains("full sync") && field(l, "services") == Some(total as f64)
        });
        let wall = (at - restarted).num_milliseconds();
        let sync_ms = field(&full, "elapsed_ms").unwrap_or(f64::NAN);
        let compute_ms = field(&full, "computed_ms").unwrap_or(f64::NAN);
        let rules = field(&full, "rules").unwrap_or(f64::NAN);
        // Changes are measured in the steady state: after a restart the controllers start only
        // once the killed server's lease expires (15 s), and then list every object.
        wait_sync(&mut sync_log, restarted, 60, |l| {
            l.contains("became leader")
        });
        std::thread::sleep(Duration::from_secs(3));

        // Changes: an endpoint added to one Service's slice, and a new Service (no endpoints:
        // its REJECT rule). A different Service's slice each time, so no more than n changes.
        let changes = changes.clamp(1, n);
        let mut endpoint_change = Vec::new();
        let mut new_service = Vec::new();
        // (computing, computing + restoring) of each endpoint change's sync, in ms.
        let mut sync_parts = Vec::new();
        for k in 0..changes {
            let i = (k * 7919) % n;
            let since = chrono::Utc::now();
            // A different Service each time (7919 is prime), going from two endpoints to three.
            let patch =
                json!({"endpoints": serde_json::to_value(slice(i, 3)).unwrap()["endpoints"]});
            rt.block_on(slices.patch(
                &format!("svc-{i}-x"),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            ))
            .expect("patch slice");
            // The new endpoint's DNAT rule is the change.
            let dnat = format!("--to-destination {}:8080", endpoint_ip(i, 2));
            let (at, line) = wait_change(&mut sync_log, since, 60, || {
                kernel_has(&host, |l| l.contains(&dnat))
            });
            endpoint_change.push((at - since).num_microseconds().unwrap_or(0) as f64 / 1000.0);
            sync_parts.push((
                field(&line, "computed_ms").unwrap_or(f64::NAN),
                field(&line, "elapsed_ms").unwrap_or(f64::NAN),
            ));
            std::thread::sleep(Duration::from_millis(200));

            let j = n + k;
            let since = chrono::Utc::now();
            let svc = rt
                .block_on(services.create(&PostParams::default(), &service(j)))
                .expect("service");
            let ip = svc.spec.and_then(|s| s.cluster_ip).expect("cluster IP");
            // Its REJECT rule (filter table, at its cluster IP) is the change.
            let reject = format!(" -d {ip}/32 ");
            let (at, _) = wait_change(&mut sync_log, since, 60, || {
                kernel_has(&host, |l| {
                    l.starts_with("-A KUBE-SERVICES ")
                        && l.contains(&reject)
                        && l.contains("-j REJECT")
                })
            });
            new_service.push((at - since).num_microseconds().unwrap_or(0) as f64 / 1000.0);
            std::thread::sleep(Duration::from_millis(200));
        }
        endpoint_change.sort_by(f64::total_cmp);
        let mut computed: Vec<f64> = sync_parts.iter().map(|p| p.0).collect();
        let mut applied: Vec<f64> = sync_parts.iter().map(|p| p.1).collect();
        computed.sort_by(f64::total_cmp);
        applied.sort_by(f64::total_cmp);
        new_service.sort_by(f64::total_cmp);
        println!(
            "{n} services x 2 endpoints ({rules} rules; created through the API in {:.1} s):",
            created.as_secs_f64()
        );
        println!(
            "  cold start: full sync {sync_ms:.0} ms (compute {compute_ms:.0} ms + iptables-restore); kinglet start to rules in place {wall} ms"
        );
        println!(
            "  endpoint change to rules in place ({changes} changes): {}",
            spread(&endpoint_change)
        );
        println!(
            "    of which the proxy's sync: p50 {:.1} ms computing, {:.1} ms computing + restoring",
            percentile(&computed, 0.5),
            percentile(&applied, 0.5)
        );
        println!(
            "  new service (its REJECT rule) in place ({changes} changes): {}",
            spread(&new_service)
        );
        let _ = server.kill();
        let _ = server.wait();
        let _ = host
            .command(env!("CARGO_BIN_EXE_kinglet"))
            .arg("cleanup")
            .status();
    }
}
