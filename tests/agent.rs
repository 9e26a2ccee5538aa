//! `kinglet agent`: a node joined to a remote server with the token `kinglet token` prints. The
//! server (without a node of its own) and the agent share one test host; the agent checks the
//! server's CA against the token before it sends the secret anywhere, and a second machine cannot
//! take an existing node's name.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::tls_backend::TlsBackend;
use common::{Server, eventually, host};

const AGENT: &str = "agent-1";

/// `kinglet agent` for node `name` with data under `dir`, in the server's test host.
fn agent_command(s: &Server, dir: &Path, name: &str, token: &str) -> Command {
    let host = s.host().expect("test host");
    common::prepare_agent_dir(host, dir);
    let mut cmd = common::agent_command(host, dir, "https://127.0.0.1:6443", token, name);
    cmd.args(["--node-ip", host::NODE_IP]);
    cmd
}

fn mode(path: PathBuf) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn agent_joins_runs_pods_keeps_its_name_and_restarts_offline() {
    // Cluster settings come from the server, not from the agent's (default) flags.
    let mut s = Server::start_in_host(&["--cluster-domain", "kinglet.test"]);
    let token = s.kinglet_token(&[]);
    let dir = s.dir.path().join("agent1");
    let mut agent = s.start_agent_here(&dir, AGENT, &token);
    let log = || std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();

    s.wait_agent_ready(AGENT, &mut agent, &dir.join("agent.log"));
    // Only the server's node is a control-plane node; an agent's ROLES is <none>.
    let labels = s.ok(&["get", "node", AGENT, "-o", "jsonpath={.metadata.labels}"]);
    assert!(labels.contains("kubernetes.io/hostname"), "{labels}");
    assert!(!labels.contains("node-role.kubernetes.io"), "{labels}");
    let row = s.ok(&["get", "node", AGENT, "--no-headers"]);
    assert!(row.contains("<none>"), "{row}");
    // The node's credentials and identity are private to it.
    let agent_dir = dir.join("data/agent");
    for f in ["node-password", "client-kubelet.key", "serving-kubelet.key"] {
        assert_eq!(mode(agent_dir.join(f)), 0o600, "{f}");
    }

    s.ok(&[
        "run",
        "bb",
        "--image=busybox:1.36",
        "--image-pull-policy=IfNotPresent",
        "--",
        "sh",
        "-c",
        "echo hello from $(hostname); while true; do sleep 1; done",
    ]);
    s.running_pod_ip("bb");
    let node = s.ok(&["get", "pod", "bb", "-o", "jsonpath={.spec.nodeName}"]);
    assert_eq!(node, AGENT);
    // Logs come from the agent's kubelet, which the server reaches at the node's IP.
    eventually(30, "logs through the agent's kubelet", || {
        let out = s.kubectl(&["logs", "bb"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("hello from bb")
            .then_some(())
    });
    let resolv = s.ok(&["exec", "bb", "--", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains("search default.svc.kinglet.test svc.kinglet.test"),
        "{resolv}"
    );
    let kept = std::fs::read_to_string(dir.join("data/agent/cluster.json")).expect("kept");
    assert!(
        kept.contains("\"clusterDomain\":\"kinglet.test\""),
        "{kept}"
    );
    assert_eq!(mode(dir.join("data/agent/cluster.json")), 0o600);

    // Another machine (another data directory, so another node password) under the same name.
    let other = s.dir.path().join("agent2");
    let out = agent_command(&s, &other, AGENT, &token)
        .stderr(Stdio::piped())
        .output()
        .expect("second agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second agent took the name:\n{err}"
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("403") && last.contains("another node password"),
        "{err}"
    );
    // The first agent is untouched.
    assert!(
        agent.try_wait().expect("agent status").is_none(),
        "{}",
        log()
    );

    // Restarted while the server is down, the agent starts from its stored certificates (no
    // join) and keeps running; when the server is back, it reconnects by itself.
    s.stop(false);
    let _ = agent.kill();
    let _ = agent.wait();
    let before = std::fs::read(agent_dir.join("client-kubelet.crt")).expect("client cert");
    let log2 = std::fs::File::create(dir.join("agent2.log")).expect("log");
    let mut agent = agent_command(&s, &dir, AGENT, &token)
        .stderr(log2)
        .spawn()
        .expect("restart agent");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let log2 = || std::fs::read_to_string(dir.join("agent2.log")).unwrap_or_default();
    assert!(
        agent.try_wait().expect("agent status").is_none(),
        "{}",
        log2()
    );
    s.restart(false);
    s.ok(&[
        "run",
        "bb2",
        "--image=busybox:1.36",
        "--image-pull-policy=IfNotPresent",
        "--overrides={\"spec\":{\"nodeName\":\"agent-1\"}}",
        "--",
        "sh",
        "-c",
        "echo hello again; while true; do sleep 1; done",
    ]);
    s.running_pod_ip("bb2");
    eventually(30, "logs of a pod started after the reconnection", || {
        let out = s.kubectl(&["logs", "bb2"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("hello again")
            .then_some(())
    });
    assert_eq!(
        std::fs::read(agent_dir.join("client-kubelet.crt")).expect("client cert"),
        before
    );
    assert!(
        agent.try_wait().expect("agent status").is_none(),
        "{}",
        log2()
    );
}

/// A fake server answering `/cacerts` with its own CA, recording every path asked for.
fn fake_server() -> (TlsBackend, Arc<Mutex<Vec<String>>>) {
    let paths = Arc::new(Mutex::new(Vec::new()));
    let ca = Arc::new(Mutex::new(String::new()));
    let (seen, served) = (paths.clone(), ca.clone());
    // Named as every kinglet API server's certificate is: agents verify servers for
    // `kubernetes.default.svc`.
    let sans = ["127.0.0.1", "kubernetes.default.svc"];
    let backend = TlsBackend::start("127.0.0.1:0", &sans, move |_, path, _| {
        seen.lock().unwrap().push(path.to_string());
        if path == "/cacerts" {
            (200, served.lock().unwrap().clone().into_bytes())
        } else {
            (404, b"{\"message\":\"not here\"}".to_vec())
        }
    });
    *ca.lock().unwrap() = backend.ca_pem().to_string();
    (backend, paths)
}

fn run_agent(backend: &TlsBackend, token: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_kinglet"))
        .args(["agent", "--server"])
        .arg(format!("https://127.0.0.1:{}", backend.port()))
        .args([
            "--token",
            token,
            "--node-name",
            "n1",
            "--node-ip",
            "192.0.2.10",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("KINGLET_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run kinglet agent");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn wrong_ca_hash_sends_no_secret() {
    use sha2::{Digest, Sha256};
    let (backend, paths) = fake_server();
    // The token names another CA than the one the server shows.
    let wrong = hex::encode(Sha256::digest(b"the real cluster CA"));
    let (ok, err) = run_agent(&backend, &format!("K10{wrong}::server:topsecret"));
    assert!(!ok);
    assert!(err.contains("does not match the join token"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(*paths.lock().unwrap(), vec!["/cacerts".to_string()]);

    // With the hash of the CA it serves, the agent goes on to ask for its certificates (so the
    // check above is what stopped it) and reports the refusal on one line.
    paths.lock().unwrap().clear();
    let right = hex::encode(Sha256::digest(backend.ca_pem().as_bytes()));
    let (ok, err) = run_agent(&backend, &format!("K10{right}::server:topsecret"));
    assert!(!ok);
    assert!(
        err.contains("HTTP 404") && err.contains("not here"),
        "{err}"
    );
    let seen = paths.lock().unwrap().clone();
    assert!(
        seen.iter().any(|p| p == "/v1-kinglet/client-kubelet.crt"),
        "{seen:?}"
    );
}
