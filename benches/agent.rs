//! `kinglet agent`: time from its start to its node Ready, and its idle memory (issue 21). A
//! server with its node in one test host and an agent in a second, on a switch
//! (`tests/common/cluster.rs`). A watch of the agent's Node, opened before each start, sees the
//! Ready condition turn True:
//!
//! - first start: the join (CA fetched and checked against the token, node certificates
//!   issued), then the node registered and its status posted;
//! - restarts with the certificates present: the agent stopped (SIGTERM), its Ready condition
//!   set to Unknown as the node lifecycle controller does for a silent node, then started
//!   again.
//!
//! Then 3 pods run on the agent and it idles: its RSS sampled every second (median and
//! maximum) and its peak RSS since its last start (VmHWM); the server's RSS (with its own node)
//! for comparison.
//!
//! Run: `cargo bench --bench agent` (env BENCH_RESTARTS, default 5; BENCH_IDLE_SECONDS,
//! default 30).

mod common;
use common::{env_or, median, rss, status_mib, wait_for_client};

#[path = "../tests/common/mod.rs"]
mod harness;
use harness::cluster::{Agent, Cluster, host_ip, node_name};
use harness::host::TestHost;

use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kinglet_network::overlay::VTEP_MAC_ANNOTATION;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;

/// The status of the node's Ready condition, if it has one.
fn ready(n: &Node) -> Option<&str> {
    let conditions = n.status.as_ref()?.conditions.as_ref()?;
    let c = conditions.iter().find(|c| c.type_ == "Ready")?;
    Some(c.status.as_str())
}

/// Reads the watch until `want` holds for the node; panics with the agent's log after 60 s.
async fn until(
    stream: &mut (impl Stream<Item = Result<watcher::Event<Node>, watcher::Error>> + Unpin),
    agent: &Agent,
    what: &str,
    want: impl Fn(&Node) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ev = tokio::time::timeout_at(deadline, stream.next()).await;
        let Ok(ev) = ev else {
            panic!("{what}: not within 60 s; agent log:\n{}", agent.log());
        };
        match ev.expect("watch ended").expect("watch error") {
            watcher::Event::Apply(n) | watcher::Event::InitApply(n)
                if n.metadata.name.as_deref() == Some(agent.name.as_str()) && want(&n) =>
            {
                return;
            }
            _ => {}
        }
    }
}

fn main() {
    let restarts = env_or("BENCH_RESTARTS", 5);
    let idle_secs = env_or("BENCH_IDLE_SECONDS", 30).max(1);

    let c = Cluster::start(0);
    let host = TestHost::bare();
    c.switch().plug(&host, &host_ip(1));
    let url = format!("https://{}:{}", c.ip(0), c.server.port);
    let name = node_name(1);
    let mut agent = Agent::prepare(host, &name, &url, &c.token, &[]);

    // This thread, and the runtime's threads made from it, in the server's host: the API
    // answers there.
    let netns = std::fs::File::open(format!("/proc/{}/ns/net", c.host(0).pid())).unwrap();
    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    let rt = common::runtime();
    let (join_ms, vtep_ms, mut restart_ms) = rt.block_on(async {
        let client = wait_for_client(&c.server.kubeconfig, 30).await;
        // Let the server settle (leader election, controllers' first lists) before measuring.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let nodes: Api<Node> = Api::all(client);
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let stream = watcher(nodes.clone(), cfg);
        futures::pin_mut!(stream);
        // The watch is open (its initial list done) before the agent starts.
        loop {
            let ev = stream.next().await.expect("watch ended").expect("watch");
            if matches!(ev, watcher::Event::InitDone) {
                break;
            }
        }

        // First start: join, register, Ready; then the overlay published on the Node.
        let t = Instant::now();
        agent.restart(false); // starts it (nothing to stop yet)
        until(&mut stream, &agent, "Ready after joining", |n| {
            ready(n) == Some("True")
        })
        .await;
        let join_ms = t.elapsed().as_secs_f64() * 1000.0;
        until(&mut stream, &agent, "VTEP annotation", |n| {
            n.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(VTEP_MAC_ANNOTATION))
        })
        .await;
        let vtep_ms = t.elapsed().as_secs_f64() * 1000.0;

        let mut restart_ms = vec![];
        for _ in 0..restarts {
            agent.stop(false);
            // What the node lifecycle controller writes for a node whose kubelet went silent:
            // Ready must be posted again by the new process.
            let mut n = nodes.get_status(&name).await.expect("get node");
            let conditions = n.status.as_mut().and_then(|s| s.conditions.as_mut());
            for cond in conditions.into_iter().flatten() {
                if cond.type_ == "Ready" {
                    cond.status = "Unknown".into();
                    cond.reason = Some("NodeStatusUnknown".into());
                    cond.message = Some("Kubelet stopped posting node status.".into());
                    cond.last_transition_time = Some(Time(Timestamp::now()));
                }
            }
            (nodes.replace_status(&name, &PostParams::default(), &n))
                .await
                .expect("node status Unknown");
            until(&mut stream, &agent, "Ready Unknown", |n| {
                ready(n) == Some("Unknown")
            })
            .await;
            let t = Instant::now();
            agent.restart(false);
            until(&mut stream, &agent, "Ready after a restart", |n| {
                ready(n) == Some("True")
            })
            .await;
            restart_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        (join_ms, vtep_ms, restart_ms)
    });

    // Idle with pods: three sleeping pods on the agent's node.
    for i in 0..3 {
        c.run_pod(&format!("idle-{i}"), 1, &["sleep", "1000000"]);
    }
    let pid = agent.pid().expect("agent running");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "kinglet", "pid {pid} is not the agent");
    let mut samples = vec![];
    for _ in 0..idle_secs {
        std::thread::sleep(Duration::from_secs(1));
        samples.push(rss(pid).total);
    }
    let last = rss(pid);
    let hwm = status_mib(pid, "VmHWM:");
    let server = rss(c.server.pid());
    assert!(agent.exited().is_none(), "agent exited:\n{}", agent.log());

    common::print_machine();
    println!("agent start to node Ready, first start (join): {join_ms:.0} ms");
    println!("agent start to the node's VTEP annotation, first start: {vtep_ms:.0} ms");
    let each: Vec<String> = restart_ms.iter().map(|ms| format!("{ms:.0}")).collect();
    restart_ms.sort_by(f64::total_cmp);
    if !restart_ms.is_empty() {
        println!(
            "agent start to node Ready, restart with certificates ({restarts} runs): {} ms; median {:.0} ms",
            each.join(", "),
            median(&restart_ms)
        );
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "agent RSS idle with 3 pods, {idle_secs} samples 1 s apart: median {:.1} MiB, max {:.1} MiB; last {last}",
        median(&samples),
        samples.last().unwrap(),
    );
    println!("agent peak RSS since its last start (VmHWM): {hwm:.1} MiB");
    println!("server with its node, RSS at the end: {server}");
}
