//! `kinglet agent --server` with several servers (issue 23): the agent goes through its load
//! balancer to whichever listed server answers, whichever is listed first, and learns the
//! servers the cluster lists (the `default/kubernetes` Endpoints). Here one server and
//! endpoints where nothing answers: an address on the test switch that no host has (connects
//! time out) and a closed port on the agent's own loopback (connects are refused); and two
//! servers on one etcd cluster, the agent given only the first (tests/ha.rs has more of those).

mod common;

use common::cluster::{
    AGENT_IP, Agent, ETCD_IP, SERVER_IPS, Switch, host_ip, node_name, run_pod_on, server_on_switch,
};
use common::etcd::Etcd;
use common::host::TestHost;
use common::{Server, eventually, must_refuse};

/// On the switch's /24, but no host has it.
const NOBODY: &str = "https://192.0.2.99:6443";

#[test]
fn an_agent_joins_and_serves_pods_whichever_listed_server_answers() {
    let switch = Switch::new();
    let plugged = |i: usize| {
        let host = TestHost::bare();
        switch.plug(&host, &host_ip(i));
        host
    };
    let (ip0, name0) = (host_ip(0), node_name(0));
    let server = Server::start_node_in(
        plugged(0),
        &[
            "--node-name",
            &name0,
            "--bind-address",
            "0.0.0.0",
            "--advertise-address",
            &ip0,
        ],
    );
    let token = server.kinglet_token(&[]);
    let live = format!("https://{ip0}:{}", server.port);
    let lists = [
        format!("{live},{NOBODY}"),
        format!("{NOBODY},https://127.0.0.1:1,{live}"),
    ];
    let mut agents: Vec<Agent> = lists
        .iter()
        .enumerate()
        .map(|(k, list)| Agent::start(plugged(k + 1), &node_name(k + 1), list, &token, &[]))
        .collect();

    for a in &mut agents {
        let name = a.name.clone();
        eventually(90, &format!("node {name} Ready"), || {
            if let Some(status) = a.exited() {
                panic!("kinglet agent {name} exited with {status}:\n{}", a.log());
            }
            (server.node_ready(&name) == "True").then_some(())
        });
    }

    for (k, a) in agents.iter().enumerate() {
        let pod = format!("hello-{}", k + 1);
        run_hello_pod(&server, &pod, &a.name);
        // Logs come from the agent's kubelet through its tunnel to the live server.
        eventually(60, &format!("logs of {pod}"), || {
            logs_through(&server, &pod)
        });
        // The agent learnt the cluster's list of servers, and kept it for its next start.
        let kept = a.data_dir().join("agent/servers.json");
        let want = format!("\"{ip0}:{}\"", server.port);
        eventually(30, "the kept list of servers", || {
            let text = std::fs::read_to_string(&kept).ok()?;
            (text.contains(&want)).then_some(())
        });
    }
    for a in &mut agents {
        assert!(a.exited().is_none(), "{}", a.log());
    }
}

#[test]
fn a_bad_server_in_the_list_is_a_one_line_error() {
    // In a test host of its own (loopback only): were the check to break, the agent would
    // dial nothing outside it, nor set up node state on this machine.
    let host = TestHost::bare();
    let dir = tempfile::tempdir().expect("tempdir");
    let token = format!("K10{}::server:secret", "ab".repeat(32));
    for list in [
        "https://192.0.2.10:6443,ftp://192.0.2.11:6443",
        "https://192.0.2.10:6443,,https://192.0.2.11:6443",
        "https://192.0.2.10:6443,https://192.0.2.11:port",
    ] {
        let mut agent = host.command(env!("CARGO_BIN_EXE_kinglet"));
        agent
            .args(["agent", "--server", list, "--token", &token])
            .arg("--data-dir")
            .arg(dir.path())
            .env_remove("KINGLET_CONFIG")
            .env_remove("KINGLET_DATA_DIR");
        // Refused at once; one still running after 20 s is killed and fails the test.
        let err = must_refuse(&mut agent, 20);
        assert!(err.contains("--server"), "{list}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{list}: {err}");
    }
    // Refused before anything is written.
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}

/// Busybox pod `name` on `node`, printing a line with its name, running until deleted; waits
/// for it to run there.
fn run_hello_pod(s: &Server, name: &str, node: &str) {
    let hello = ["sh", "-c", "echo hello from $(hostname); exec sleep 3600"];
    run_pod_on(s, name, node, &hello);
}

/// Whether `pod`'s logs, read through `s`, hold its hello line.
fn logs_through(s: &Server, pod: &str) -> Option<()> {
    let out = s.kubectl(&["logs", pod]);
    String::from_utf8_lossy(&out.stdout)
        .contains(&format!("hello from {pod}"))
        .then_some(())
}

#[test]
fn an_agent_given_one_server_uses_every_server_the_cluster_lists() {
    const NODE: &str = "lb-node";
    let switch = Switch::new();
    let etcd_host = TestHost::bare();
    switch.plug(&etcd_host, ETCD_IP);
    let etcd = Etcd::in_host(1, etcd_host, ETCD_IP, true);
    let mut a = server_on_switch(&switch, SERVER_IPS[0], &etcd, &[]);
    let token = a.kinglet_token(&[]);
    let a_url = format!("https://{}:6443", SERVER_IPS[0]);
    let b = server_on_switch(
        &switch,
        SERVER_IPS[1],
        &etcd,
        &["--server", &a_url, "--token", &token],
    );

    let agent_host = TestHost::bare();
    switch.plug(&agent_host, AGENT_IP);
    let mut agent = Agent::start(agent_host, NODE, &a_url, &token, &[]);
    eventually(90, "the node Ready", || {
        if let Some(status) = agent.exited() {
            panic!("kinglet agent exited with {status}:\n{}", agent.log());
        }
        (a.node_ready(NODE) == "True").then_some(())
    });
    // Its kubelet port closed to the servers: only tunnels reach it.
    for chain in ["INPUT", "OUTPUT"] {
        let out = (agent.command("iptables"))
            .args(["-I", chain, "-p", "tcp", "--dport", "10250", "-j", "REJECT"])
            .output()
            .expect("iptables");
        assert!(out.status.success(), "{out:?}");
    }

    // It learnt B from the cluster, and keeps a tunnel to B too: B reaches its kubelet.
    let kept = agent.data_dir().join("agent/servers.json");
    eventually(60, "both servers in the agent's list", || {
        let text = std::fs::read_to_string(&kept).ok()?;
        SERVER_IPS
            .iter()
            .all(|ip| text.contains(&format!("\"{ip}:6443\"")))
            .then_some(())
    });
    run_hello_pod(&a, "first", NODE);
    eventually(60, "logs through A's tunnel", || logs_through(&a, "first"));
    eventually(60, "logs through B's tunnel", || logs_through(&b, "first"));

    // A, the only server it was given, goes: the agent goes on through B.
    a.stop(true);
    run_hello_pod(&b, "second", NODE);
    eventually(60, "logs of a pod started after A's end", || {
        logs_through(&b, "second")
    });
    assert_eq!(b.node_ready(NODE), "True");
    assert!(agent.exited().is_none(), "{}", agent.log());
}
