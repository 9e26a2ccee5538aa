//! The agent's tunnel: an agent keeps a connection to the server open (`/v1-kinglet/connect`,
//! its node certificate), and the server reaches the agent's kubelet through it. With port
//! 10250 blocked between them, `kubectl logs`, `exec` and `port-forward` still work; only a node
//! opens a tunnel, and only for itself; the tunnel comes back when the server restarts.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::{PortForward, Server, eventually, host};

const AGENT: &str = "agent-1";

/// Whether a TCP connection to the agent's kubelet port opens, from inside the test host.
fn kubelet_port_open(s: &Server) -> bool {
    s.host()
        .expect("test host")
        .command("timeout")
        .args(["5", "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/{}/10250", host::NODE_IP))
        .stderr(Stdio::null())
        .status()
        .expect("bash")
        .success()
}

/// Rejects TCP to port 10250 both ways in the test host, as a firewall between the server and
/// the agent would.
fn block_kubelet_port(s: &Server) {
    for chain in ["INPUT", "OUTPUT"] {
        let out = s
            .host()
            .expect("test host")
            .command("iptables")
            .args(["-I", chain, "-p", "tcp", "--dport", "10250", "-j", "REJECT"])
            .output()
            .expect("iptables");
        assert!(
            out.status.success(),
            "iptables: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The headers that ask for a tunnel.
const UPGRADE: [&str; 4] = ["-H", "Connection: Upgrade", "-H", "Upgrade: kinglet-tunnel"];

/// `curl` of the tunnel endpoint (HTTP/1.1) from inside the test host, with `args` (headers,
/// credentials): the HTTP status it got.
fn connect_status(s: &Server, args: &[&str]) -> String {
    let out = s
        .host()
        .expect("test host")
        .command("curl")
        .args(["-s", "--http1.1", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["--max-time", "10"])
        .args(args)
        .arg(format!("https://127.0.0.1:{}/v1-kinglet/connect", s.port))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn logs_contain(s: &Server, pod: &str, text: &str) -> Option<()> {
    let out = s.kubectl(&["logs", pod]);
    String::from_utf8_lossy(&out.stdout)
        .contains(text)
        .then_some(())
}

fn tunnels_opened(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("agent.log"))
        .unwrap_or_default()
        .matches("tunnel to the server open")
        .count()
}

#[test]
fn logs_exec_and_port_forward_reach_an_agent_through_its_tunnel() {
    let mut s = Server::start_in_host(&[]);
    let token = s.kinglet_token(&[]);
    let dir = s.dir.path().join("agent1");
    let mut agent = s.start_agent_here(&dir, AGENT, &token);
    let log = || std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    s.wait_agent_ready(AGENT, &mut agent, &dir.join("agent.log"));
    eventually(60, "the agent's tunnel open", || {
        (tunnels_opened(&dir) > 0).then_some(())
    });
    // The kubelet's socket, which the tunnel's streams are piped to, is root's only.
    // (The kubelet makes it once its node is registered, which Ready may precede.)
    let host = s.host().expect("test host");
    let mode = eventually(30, "the kubelet's socket", || {
        let out = host
            .command("stat")
            .args(["-c", "%a %F"])
            .arg(dir.join("run/kubelet.sock"))
            .output()
            .expect("stat");
        let mode = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!mode.is_empty()).then_some(mode)
    });
    assert_eq!(mode, "600 socket");

    // The firewall: the kubelet port answered, now it does not.
    assert!(
        kubelet_port_open(&s),
        "the kubelet port should answer before the block"
    );
    block_kubelet_port(&s);
    assert!(!kubelet_port_open(&s), "the kubelet port still answers");

    s.ok(&[
        "run",
        "web",
        "--image=busybox:1.36",
        "--image-pull-policy=IfNotPresent",
        "--",
        "sh",
        "-c",
        "mkdir -p /www; echo served through the tunnel > /www/index.html; \
         echo hello from $(hostname); exec httpd -f -p 8080 -h /www",
    ]);
    s.running_pod_ip("web");
    assert_eq!(
        s.ok(&["get", "pod", "web", "-o", "jsonpath={.spec.nodeName}"]),
        AGENT
    );

    // logs
    eventually(30, "logs through the tunnel", || {
        logs_contain(&s, "web", "hello from web")
    });
    // exec, with stdin, stdout and the exit code
    let out = s.kubectl_stdin(
        &[
            "exec",
            "-i",
            "web",
            "--",
            "sh",
            "-c",
            "read line; echo \"got $line\"; exit 3",
        ],
        "ping\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "got ping",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(3));
    // port-forward, fetched from the test host's loopback
    let port = common::free_port();
    let pf = PortForward::start(
        &s,
        "pod/web",
        &format!("{port}:8080"),
        &dir.join("port-forward.out"),
    );
    for _ in 0..2 {
        let got = s
            .command(common::images::busybox())
            .args([
                "wget",
                "-qO-",
                &format!("http://127.0.0.1:{port}/index.html"),
            ])
            .output()
            .expect("wget");
        assert_eq!(
            String::from_utf8_lossy(&got.stdout),
            "served through the tunnel\n",
            "{}\n{}",
            String::from_utf8_lossy(&got.stderr),
            std::fs::read_to_string(&pf.out).unwrap_or_default()
        );
    }
    drop(pf);
    // The node's stats (resource metrics) come the same way.
    eventually(30, "node metrics through the tunnel", || {
        let out = s.kubectl(&[
            "get",
            "--raw",
            &format!("/apis/metrics.k8s.io/v1beta1/nodes/{AGENT}"),
        ]);
        out.status.success().then_some(())
    });
    // And `nodes/<name>/proxy` to its kubelet.
    let healthz = s.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{AGENT}/proxy/healthz"),
    ]);
    assert_eq!(healthz.trim(), "ok");

    // Only a node opens a tunnel, and only for itself.
    let agent_dir = dir.join("data/agent");
    let path = |f: &str| agent_dir.join(f).display().to_string();
    let (cert, key, ca) = (
        path("client-kubelet.crt"),
        path("client-kubelet.key"),
        path("server-ca.crt"),
    );
    let node_cred = ["--cacert", &ca, "--cert", &cert, "--key", &key];
    let mut other = [&node_cred[..], &UPGRADE].concat();
    other.extend(["-H", "Kinglet-Node-Name: agent-2"]);
    assert_eq!(connect_status(&s, &other), "403");
    let anonymous = [&["--cacert", ca.as_str()][..], &UPGRADE].concat();
    assert_eq!(connect_status(&s, &anonymous), "401");
    // Its own, but not as an upgrade.
    assert_eq!(connect_status(&s, &node_cred), "400");

    // The server restarts: the agent opens its tunnel again by itself.
    let before = tunnels_opened(&dir);
    s.restart(false);
    eventually(60, "the tunnel open again", || {
        (tunnels_opened(&dir) > before).then_some(())
    });
    eventually(30, "logs through the new tunnel", || {
        logs_contain(&s, "web", "hello from web")
    });
    assert!(!kubelet_port_open(&s), "the kubelet port answers again");
    assert!(
        agent.try_wait().expect("agent status").is_none(),
        "{}",
        log()
    );
    let _ = agent.kill();
    let _ = agent.wait();
}
