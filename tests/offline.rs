//! Offline autonomy (issue 21): an agent restarted by `kill -9` while its server is down brings
//! its pods back from its local copy (`<data-dir>/agent/cache`), restarts crashed containers
//! with the Secrets and ConfigMaps it last read, and serves Services and cluster DNS from the
//! Services and EndpointSlices it last saw; when the server is back, the server wins and the
//! node reports its pods' statuses, with nothing duplicated. The server (without a node of its
//! own) and the agent share one test host, as in `tests/agent.rs`.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;

use common::{Server, eventually, host};

const AGENT: &str = "edge-1";

const MANIFEST: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: web-content}
data:
  index.html: "hello from the configmap\n"
---
apiVersion: v1
kind: Secret
metadata: {name: web-secret}
stringData: {greeting: s3cret}
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  nodeName: edge-1
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox:1.36
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'mkdir -p /www && cp /content/index.html /www/ && echo "$GREETING" > /www/secret.txt && exec httpd -f -p 8080 -h /www']
    env:
    - name: GREETING
      valueFrom: {secretKeyRef: {name: web-secret, key: greeting}}
    volumeMounts:
    - {name: content, mountPath: /content}
  volumes:
  - name: content
    configMap: {name: web-content}
---
apiVersion: v1
kind: Pod
metadata: {name: gone}
spec:
  nodeName: edge-1
  terminationGracePeriodSeconds: 1
  containers:
  - name: sleep
    image: busybox:1.36
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'while true; do sleep 1; done']
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// `kinglet agent` for node `AGENT` with data under `dir`, in the server's test host, logging
/// to `dir/<log>`.
fn spawn_agent(s: &Server, dir: &Path, token: &str, log: &str) -> Child {
    let host = s.host().expect("test host");
    common::prepare_agent_dir(host, dir);
    let log = std::fs::File::create(dir.join(log)).expect("agent log");
    common::agent_command(host, dir, "https://127.0.0.1:6443", token, AGENT)
        .args(["--node-ip", host::NODE_IP])
        .stderr(log)
        .spawn()
        .expect("spawn kinglet agent")
}

/// One container the node's runtime made, as its directory records it.
#[derive(Debug)]
struct Container {
    id: String,
    attempt: u64,
    pid: Option<u32>,
    exited: bool,
}

impl Container {
    /// Whether its process still runs (the test host shares the machine's PIDs).
    fn alive(&self) -> bool {
        !self.exited
            && self.pid.is_some_and(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").starts_with(" Z"))
            })
    }
}

/// The containers of the node with data in `data`, by pod, oldest attempt first.
fn containers(data: &Path) -> BTreeMap<String, Vec<Container>> {
    let mut out: BTreeMap<String, Vec<Container>> = BTreeMap::new();
    for e in std::fs::read_dir(data.join("agent/containers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let read = |f: &str| -> serde_json::Value {
            std::fs::read(e.path().join(f))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default()
        };
        let meta = read("meta.json");
        let Some(pod) = meta["podName"].as_str() else {
            continue;
        };
        out.entry(pod.to_string()).or_default().push(Container {
            id: meta["id"].as_str().unwrap_or_default().to_string(),
            attempt: meta["attempt"].as_u64().unwrap_or_default(),
            pid: read("status.json")["pid"].as_u64().map(|p| p as u32),
            exited: e.path().join("exit.json").exists(),
        });
    }
    for v in out.values_mut() {
        v.sort_by_key(|c| c.attempt);
    }
    out
}

/// The running container of `pod`, if one runs.
fn running(data: &Path, pod: &str) -> Option<Container> {
    containers(data)
        .remove(pod)?
        .into_iter()
        .find(Container::alive)
}

/// `busybox args` in the test host: its output, trimmed (empty if it failed).
fn in_host(s: &Server, args: &[&str]) -> String {
    let out = s
        .host()
        .expect("test host")
        .command("timeout")
        .arg("5")
        .arg(common::images::busybox())
        .args(args)
        .output()
        .expect("busybox in the test host");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn get(s: &Server, url: &str) -> String {
    in_host(s, &["wget", "-qO-", url])
}

/// Whether the cluster DNS, asked from the node, resolves `name` to `ip`.
fn resolves(s: &Server, name: &str, ip: &str) -> bool {
    in_host(s, &["nslookup", name, "10.43.0.10"])
        .split_whitespace()
        .any(|w| w == ip)
}

/// `iptables -S` output split into arguments (double quotes group words).
fn shell_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut any) = (false, false);
    for ch in line.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                }
                any = false;
            }
            _ => {
                word.push(ch);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn pod_field(s: &Server, pod: &str, path: &str) -> String {
    s.ok(&["get", "pod", pod, "-o", &format!("jsonpath={{{path}}}")])
}

#[test]
fn agent_restarted_offline_brings_its_pods_back() {
    let mut s = Server::start_in_host(&[]);
    let token = s.kinglet_token(&[]);
    let dir = s.dir.path().join("agent");
    let data = dir.join("data");
    let mut agent = spawn_agent(&s, &dir, &token, "agent.log");
    let log = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    s.wait_agent_ready(AGENT, &mut agent, &dir.join("agent.log"));

    s.ok_stdin(&["apply", "-f", "-"], MANIFEST);
    let web_ip = s.running_pod_ip("web");
    s.running_pod_ip("gone");
    let uid = pod_field(&s, "web", ".metadata.uid");
    let cluster_ip = s.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let page = format!("http://{web_ip}:8080/index.html");
    let via_service = format!("http://{cluster_ip}/index.html");
    let name = "web.default.svc.cluster.local";
    assert_eq!(get(&s, &page), "hello from the configmap");
    assert_eq!(
        get(&s, &format!("http://{web_ip}:8080/secret.txt")),
        "s3cret"
    );
    eventually(60, "the Service and its DNS name from the node", || {
        (get(&s, &via_service) == "hello from the configmap" && resolves(&s, name, &cluster_ip))
            .then_some(())
    });

    // The local copy: what the pods, the proxy and the DNS need, private to the node.
    let cache = data.join("agent/cache");
    eventually(30, "the local copy written", || {
        let has = |f: &str, what: &str| {
            std::fs::read_to_string(cache.join(f)).is_ok_and(|t| t.contains(what))
        };
        (has("pods.json", &uid)
            && has("pods.json", "\"gone\"")
            && has("services.json", &cluster_ip)
            && has("endpointslices.json", &web_ip)
            && cache.join("objects/secrets/default/web-secret").is_file()
            && cache
                .join("objects/configmaps/default/web-content")
                .is_file())
        .then_some(())
    });
    assert_eq!(mode(&cache), 0o700);
    for f in [
        "pods.json",
        "services.json",
        "endpointslices.json",
        "objects/secrets/default/web-secret",
        "objects/nodes/edge-1",
    ] {
        assert_eq!(mode(&cache.join(f)), 0o600, "{f}");
    }

    // The server goes, then the agent is killed: its containers run on without it.
    let web = running(&data, "web").expect("web's container");
    s.stop(false);
    let _ = agent.kill();
    let _ = agent.wait();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(web.alive(), "the container died with the agent: {web:?}");
    // With the agent away, the server is back just long enough for pod `gone` to be deleted
    // (the node's copy still has it).
    s.restart(false);
    s.ok(&["delete", "pod", "gone", "--force", "--grace-period=0"]);
    s.stop(false);
    let gone = running(&data, "gone").expect("gone's container");
    // The Service's rules are removed from the kernel: only a proxy that knows the Service
    // brings them back.
    let iptables = |args: &[&str]| {
        let out = s
            .host()
            .expect("test host")
            .command("iptables")
            .args(["-t", "nat"])
            .args(args)
            .output()
            .expect("iptables");
        assert!(out.status.success(), "iptables {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let rules = iptables(&["-S", "KUBE-SERVICES"]);
    let web_rules: Vec<&str> = rules
        .lines()
        .filter(|l| l.contains("default/web"))
        .collect();
    assert!(!web_rules.is_empty(), "{rules}");
    for rule in web_rules {
        let rule = rule.replacen("-A ", "-D ", 1);
        let args = shell_words(&rule);
        iptables(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    assert_ne!(get(&s, &via_service), "hello from the configmap");

    // Restarted without a server: everything comes back from the copy.
    let mut agent = spawn_agent(&s, &dir, &token, "agent-offline.log");
    eventually(60, "the Service rules and DNS from the copy", || {
        if let Ok(Some(status)) = agent.try_wait() {
            panic!(
                "kinglet agent exited with {status}:\n{}",
                log("agent-offline.log")
            );
        }
        (get(&s, &via_service) == "hello from the configmap" && resolves(&s, name, &cluster_ip))
            .then_some(())
    });
    assert!(
        log("agent-offline.log").contains("starting from the local copy; registering later"),
        "{}",
        log("agent-offline.log")
    );
    // Its running containers were adopted, not restarted; `gone` is left alone (only the
    // server may say a pod is gone).
    assert!(web.alive() && gone.alive());
    assert_eq!(running(&data, "web").map(|c| c.id), Some(web.id.clone()));
    assert_eq!(get(&s, &page), "hello from the configmap");

    // A crash while offline: restarted per its restart policy, with the Secret and ConfigMap
    // as last read.
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &web.pid.expect("pid").to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let again = eventually(60, "web restarted offline", || {
        running(&data, "web").filter(|c| c.attempt == 1)
    });
    eventually(30, "the restarted container serving", || {
        (get(&s, &page) == "hello from the configmap"
            && get(&s, &format!("http://{web_ip}:8080/secret.txt")) == "s3cret")
            .then_some(())
    });
    assert!(
        agent.try_wait().expect("agent").is_none(),
        "{}",
        log("agent-offline.log")
    );

    // The server is back: it wins. `gone` stops on the node; web's status (the restart
    // included) is reported; nothing is duplicated.
    s.restart(false);
    eventually(90, "web's status reported", || {
        let status = pod_field(&s, "web", ".status");
        let v: serde_json::Value = serde_json::from_str(&status).ok()?;
        let c = &v["containerStatuses"][0];
        (v["phase"] == "Running"
            && v["podIP"] == web_ip.as_str()
            && c["restartCount"] == 1
            && c["containerID"] == format!("kinglet://{}", again.id).as_str()
            && c["state"]["running"].is_object())
        .then_some(())
    });
    eventually(60, "the deleted pod's container stopped", || {
        (!gone.alive() && running(&data, "gone").is_none()).then_some(())
    });
    let pods = s.ok(&[
        "get",
        "pods",
        "-A",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}/{.metadata.uid} {end}",
    ]);
    assert_eq!(
        pods.trim(),
        format!("web/{uid}"),
        "no second copy, no new UID"
    );
    let on_node = containers(&data);
    let web_attempts: Vec<u64> = on_node["web"].iter().map(|c| c.attempt).collect();
    assert_eq!(web_attempts, [0, 1], "{on_node:?}");
    assert_eq!(s.node_ready(AGENT), "True");
    let pods_dir = data.join("agent/pods");
    eventually(30, "only web's pod directory left", || {
        let dirs: Vec<PathBuf> = std::fs::read_dir(&pods_dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .collect();
        (dirs == [pods_dir.join(&uid)]).then_some(())
    });
    assert!(
        agent.try_wait().expect("agent").is_none(),
        "{}",
        log("agent-offline.log")
    );
    let _ = agent.kill();
    let _ = agent.wait();
}
