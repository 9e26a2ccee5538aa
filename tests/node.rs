//! The embedded node (kubelet + libcontainer runtime) with the real kubectl. Each server runs in
//! a test host of its own (network and mount namespaces, cgroup parent), with busybox imported
//! from a tarball the harness builds.

mod common;

use common::{NODE, Server, eventually};
use serde_json::Value;

fn json_of(s: &Server, args: &[&str]) -> Value {
    serde_json::from_str(&s.ok(args)).expect("kubectl json")
}

fn pod_json(s: &Server, name: &str) -> Value {
    json_of(s, &["get", "pod", name, "-o", "json"])
}

fn wait_running(s: &Server, name: &str) -> Value {
    let mut last = Value::Null;
    eventually(60, &format!("pod {name} running"), || {
        let p = pod_json(s, name);
        if p != last {
            eprintln!("pod {name}: {}", p["status"]);
            if p["status"]["containerStatuses"][0]["restartCount"].as_u64() > Some(0) {
                eprintln!(
                    "previous logs: {}",
                    s.kubectl(&["logs", "-p", name]).stdout.escape_ascii()
                );
            }
            last = p.clone();
        }
        (p["status"]["phase"] == "Running"
            && p["status"]["containerStatuses"][0]["state"]["running"].is_object())
        .then_some(p)
    })
}

#[test]
fn node_registers_and_runs_a_pod_with_logs_and_graceful_delete() {
    let s = Server::start_node(&[]);
    let node = eventually(30, "node ready", || {
        let out = s.kubectl(&["get", "node", NODE, "-o", "json"]);
        let n: Value = serde_json::from_slice(&out.stdout).ok()?;
        n["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
            .then_some(n)
    });
    assert!(
        node["status"]["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("kinglet://")
    );
    assert!(node["status"]["capacity"]["cpu"].is_string());
    s.ok(&["get", "lease", "-n", "kube-node-lease", NODE]);
    // The server's own node is the control plane (kubectl's ROLES column), as k3s shows it.
    eventually(30, "the control-plane role", || {
        let nodes = s.ok(&["get", "nodes"]);
        nodes
            .lines()
            .find(|l| l.starts_with(&format!("{NODE} ")))
            .filter(|l| l.contains("control-plane"))
            .map(|_| ())
    });

    s.ok(&[
        "run",
        "bb",
        "--image=busybox:1.36",
        "--image-pull-policy=IfNotPresent",
        "--",
        "sh",
        "-c",
        "echo hello from $(hostname); trap 'echo bye; exit 0' TERM; while true; do sleep 1; done",
    ]);
    let pod = wait_running(&s, "bb");
    // The kubelet and the scheduler write under upstream's field manager names.
    let managers = |o: &Value| -> Vec<String> {
        o["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["manager"].as_str().map(String::from))
            .collect()
    };
    let with_fields = |kind: &str, name: &str| {
        json_of(
            &s,
            &["get", kind, name, "-o", "json", "--show-managed-fields"],
        )
    };
    let pod_managers = managers(&with_fields("pod", "bb"));
    assert!(
        pod_managers.iter().any(|m| m == "kubelet"),
        "{pod_managers:?}"
    );
    let node_managers = managers(&with_fields("node", NODE));
    assert!(
        node_managers.iter().any(|m| m == "kubelet"),
        "{node_managers:?}"
    );
    let cs = &pod["status"]["containerStatuses"][0];
    assert_eq!(cs["restartCount"], 0);
    assert!(
        cs["containerID"]
            .as_str()
            .unwrap()
            .starts_with("kinglet://")
    );
    assert!(
        cs["imageID"].as_str().unwrap().contains("busybox@sha256:"),
        "{cs}"
    );
    let logs = eventually(20, "logs", || {
        let l = s.ok(&["logs", "bb"]);
        l.contains("hello from bb").then_some(l)
    });
    assert_eq!(logs.trim(), "hello from bb");
    let reasons = eventually(20, "kubelet events", || {
        let r = s.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=bb",
            "-o",
            "jsonpath={.items[*].reason}",
        ]);
        r.contains("Started").then_some(r)
    });
    for want in ["Scheduled", "Pulled", "Created", "Started"] {
        assert!(reasons.contains(want), "{want} missing from {reasons}");
    }
    // exec: output, stdin, exit codes.
    assert_eq!(s.ok(&["exec", "bb", "--", "hostname"]).trim(), "bb");
    let echoed = s.kubectl_stdin(&["exec", "-i", "bb", "--", "cat"], "through stdin\n");
    assert_eq!(String::from_utf8_lossy(&echoed.stdout), "through stdin\n");
    // kubectl cp rides on exec (tar through stdin/stdout), both ways.
    let local = s.dir.path().join("copied-passwd");
    s.ok(&["cp", "bb:/etc/passwd", local.to_str().unwrap()]);
    assert!(
        std::fs::read_to_string(&local)
            .unwrap()
            .starts_with("root:x:0:0")
    );
    std::fs::write(&local, "uploaded\n").unwrap();
    s.ok(&["cp", local.to_str().unwrap(), "bb:/tmp/up"]);
    assert_eq!(s.ok(&["exec", "bb", "--", "cat", "/tmp/up"]), "uploaded\n");
    let failed = s.kubectl(&["exec", "bb", "--", "sh", "-c", "echo oops >&2; exit 3"]);
    assert_eq!(failed.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("oops"));
    // Graceful deletion: SIGTERM reaches the container, which exits; the pod is gone well
    // within the 30 s grace period.
    let start = std::time::Instant::now();
    s.ok(&["delete", "pod", "bb", "--timeout=40s"]);
    assert!(
        start.elapsed().as_secs() < 30,
        "delete took {:?}",
        start.elapsed()
    );
    s.fails(&["get", "pod", "bb"], None);
}

#[test]
fn crashing_containers_back_off_and_keep_previous_logs() {
    let s = Server::start_node(&[]);
    s.ok(&[
        "run",
        "crash",
        "--image=busybox:1.36",
        "--",
        "sh",
        "-c",
        "echo run at $(date +%s%N); exit 3",
    ]);
    let pod = eventually(90, "CrashLoopBackOff with restarts", || {
        let p = pod_json(&s, "crash");
        let cs = &p["status"]["containerStatuses"][0];
        (cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
            && cs["restartCount"].as_u64().unwrap_or(0) >= 2)
            .then_some(p)
    });
    let cs = &pod["status"]["containerStatuses"][0];
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(cs["lastState"]["terminated"]["reason"], "Error");
    let message = cs["state"]["waiting"]["message"].as_str().unwrap();
    assert!(message.starts_with("back-off "), "{message}");
    let previous = s.ok(&["logs", "crash", "--previous"]);
    assert!(previous.starts_with("run at "), "{previous}");
    let get = s.ok(&["get", "pod", "crash"]);
    assert!(get.contains("CrashLoopBackOff"), "{get}");
    let described = s.ok(&["describe", "pod", "crash"]);
    assert!(described.contains("BackOff"), "{described}");
}

#[test]
fn volumes_env_and_the_service_account_token() {
    let s = Server::start_node(&[]);
    s.ok(&["create", "configmap", "cfg", "--from-literal=greeting=hi"]);
    s.ok(&[
        "create",
        "secret",
        "generic",
        "sec",
        "--from-literal=password=s3cret",
    ]);
    let hostdir = s.dir.path().join("hostdir");
    std::fs::create_dir_all(&hostdir).unwrap();
    std::fs::write(hostdir.join("file"), "from the host").unwrap();
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: vols, labels: {{app: vols}}}}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: busybox:1.36
    command: [sh, -c]
    args:
    - |
      echo cm=$(cat /cfg/greeting)
      echo secret=$(cat /sec/password)
      echo host=$(cat /host/file)
      echo scratch > /scratch/x && echo empty=$(cat /scratch/x)
      echo env=$GREETING/$MY_POD/$MY_NS
      echo ns=$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)
      echo token=$(cat /var/run/secrets/kubernetes.io/serviceaccount/token)
      test -s /var/run/secrets/kubernetes.io/serviceaccount/ca.crt && echo ca=ok
    env:
    - {{name: GREETING, valueFrom: {{configMapKeyRef: {{name: cfg, key: greeting}}}}}}
    - {{name: MY_POD, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: MY_NS, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
    volumeMounts:
    - {{name: cfg, mountPath: /cfg}}
    - {{name: sec, mountPath: /sec}}
    - {{name: host, mountPath: /host}}
    - {{name: scratch, mountPath: /scratch}}
  volumes:
  - {{name: cfg, configMap: {{name: cfg}}}}
  - {{name: sec, secret: {{secretName: sec}}}}
  - {{name: host, hostPath: {{path: {}}}}}
  - {{name: scratch, emptyDir: {{}}}}
"#,
        hostdir.display()
    );
    s.ok_stdin(&["apply", "-f", "-"], &pod);
    eventually(60, "pod succeeded", || {
        (pod_json(&s, "vols")["status"]["phase"] == "Succeeded").then_some(())
    });
    let logs = s.ok(&["logs", "vols"]);
    for want in [
        "cm=hi",
        "secret=s3cret",
        "host=from the host",
        "empty=scratch",
        "env=hi/vols/default",
        "ns=default",
        "ca=ok",
    ] {
        assert!(logs.contains(want), "missing {want:?} in:\n{logs}");
    }
    // The projected token authenticates as the pod's service account.
    let token = logs
        .lines()
        .find_map(|l| l.strip_prefix("token="))
        .expect("token line")
        .trim()
        .to_string();
    let who = s.ok(&[
        "auth",
        "whoami",
        "--token",
        &token,
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]);
    assert_eq!(who, "system:serviceaccount:default:default");
}

#[test]
fn deployments_roll_out_on_the_node_and_pods_survive_a_kinglet_kill() {
    let mut s = Server::start_node(&[]);
    s.ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox:1.36",
        "--replicas=3",
        "--",
        "sh",
        "-c",
        "echo started; exec sleep 100000",
    ]);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    let before = json_of(&s, &["get", "pods", "-l", "app=web", "-o", "json"]);
    let ids = |v: &Value| -> Vec<(String, String, u64)> {
        let mut out: Vec<(String, String, u64)> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let cs = &p["status"]["containerStatuses"][0];
                (
                    p["metadata"]["name"].as_str().unwrap().to_string(),
                    cs["containerID"].as_str().unwrap_or_default().to_string(),
                    cs["restartCount"].as_u64().unwrap_or(99),
                )
            })
            .collect();
        out.sort();
        out
    };
    let first = ids(&before);
    assert_eq!(first.len(), 3);
    // kill -9 of kinglet: the containers keep running under their supervisors.
    s.restart(true);
    std::thread::sleep(std::time::Duration::from_secs(3));
    s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let after = json_of(&s, &["get", "pods", "-l", "app=web", "-o", "json"]);
    assert_eq!(ids(&after), first, "same containers, same restart counts");
    for (name, _, _) in &first {
        assert!(s.ok(&["logs", name]).contains("started"));
    }
    // A new template rolls.
    s.ok(&["set", "env", "deployment/web", "VERSION=2"]);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    // The old pods may still be terminating (their `sleep` ignores SIGTERM as PID 1).
    let mut rolled = json_of(&s, &["get", "pods", "-l", "app=web", "-o", "json"]);
    rolled["items"]
        .as_array_mut()
        .unwrap()
        .retain(|p| p["metadata"]["deletionTimestamp"].is_null());
    let names: Vec<String> = ids(&rolled).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(names.len(), 3);
    assert!(names.iter().all(|n| !first.iter().any(|(f, _, _)| f == n)));
}

#[test]
fn memory_limits_are_enforced_and_oom_kills_reported() {
    let s = Server::start_node(&[]);
    let pods = r#"apiVersion: v1
kind: Pod
metadata: {name: limited}
spec:
  containers:
  - name: c
    image: busybox:1.36
    command: [sleep, "100000"]
    resources:
      requests: {cpu: 100m, memory: 16Mi}
      limits: {cpu: 250m, memory: 32Mi}
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: busybox:1.36
    command: [sh, -c, 'x=$(head -c 200000000 /dev/zero | tr "\0" a); echo survived']
    resources:
      limits: {memory: 24Mi}
"#;
    s.ok_stdin(&["apply", "-f", "-"], pods);
    let pod = wait_running(&s, "limited");
    assert_eq!(pod["status"]["qosClass"], "Burstable");
    // The container's cgroup carries the limits (cgroup v1 or v2 file names).
    let id = pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("kinglet://")
        .to_string();
    let host = s.host.as_ref().unwrap();
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let rel = format!(
        "{}/kubepods/burstable/pod{uid}/{id}",
        host.cgroup_root.trim_start_matches('/')
    );
    let read = |ctrl: &str, file: &str| {
        let v1 = std::path::Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join(&rel)
            .join(file);
        let v2 = std::path::Path::new("/sys/fs/cgroup").join(&rel).join(file);
        std::fs::read_to_string(&v1)
            .or_else(|_| std::fs::read_to_string(&v2))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert_eq!(read("", "memory.max"), "33554432");
        assert_eq!(read("", "cpu.max"), "25000 100000");
    } else {
        assert_eq!(read("memory", "memory.limit_in_bytes"), "33554432");
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "25000");
        assert_eq!(read("cpu", "cpu.shares"), "102");
    }
    let hog = eventually(60, "hog OOM-killed", || {
        let p = pod_json(&s, "hog");
        (p["status"]["phase"] == "Failed").then_some(p)
    });
    let term = &hog["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(term["reason"], "OOMKilled", "{term}");
    assert_eq!(term["exitCode"], 137);
}

#[test]
fn probes_restart_unhealthy_containers_and_gate_readiness() {
    let s = Server::start_node(&[]);
    let pods = r#"apiVersion: v1
kind: Pod
metadata: {name: live}
spec:
  containers:
  - name: c
    image: busybox:1.36
    command: [sh, -c, 'touch /tmp/healthy; sleep 3; rm /tmp/healthy; exec sleep 100000']
    livenessProbe:
      exec: {command: [test, -f, /tmp/healthy]}
      periodSeconds: 1
      failureThreshold: 2
---
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
  - name: c
    image: busybox:1.36
    command: [sh, -c, 'mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www']
    ports: [{name: http, containerPort: 8080}]
    readinessProbe:
      httpGet: {path: /, port: http}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {name: closed}
spec:
  containers:
  - name: c
    image: busybox:1.36
    command: [sleep, "100000"]
    readinessProbe:
      tcpSocket: {port: 9999}
      periodSeconds: 1
"#;
    s.ok_stdin(&["apply", "-f", "-"], pods);
    eventually(60, "web ready through its httpGet probe", || {
        (pod_json(&s, "web")["status"]["containerStatuses"][0]["ready"] == true).then_some(())
    });
    let restarted = eventually(60, "liveness restart", || {
        let p = pod_json(&s, "live");
        (p["status"]["containerStatuses"][0]["restartCount"]
            .as_u64()
            .unwrap_or(0)
            >= 1)
            .then_some(p)
    });
    assert_eq!(
        restarted["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
        137
    );
    let closed = wait_running(&s, "closed");
    assert_eq!(closed["status"]["containerStatuses"][0]["ready"], false);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let closed = pod_json(&s, "closed");
    assert_eq!(closed["status"]["containerStatuses"][0]["ready"], false);
    let ready = closed["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "ContainersNotReady");
}

#[test]
fn images_are_pulled_from_a_registry_with_basic_auth_and_pull_secrets() {
    let s = Server::start_node(&[]);
    let host = s.host.as_ref().unwrap();
    let dir = s.dir.path();
    // Debian's docker-registry on the test host's loopback, with htpasswd (bcrypt) auth.
    std::fs::write(
        dir.join("htpasswd"),
        format!("user:{}\n", bcrypt::hash("pass", 5).unwrap()),
    )
    .unwrap();
    let config = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:5000\nauth:\n  htpasswd:\n    realm: kinglet-test\n    path: {}\n",
        dir.join("registry").display(),
        dir.join("htpasswd").display()
    );
    std::fs::write(dir.join("registry.yml"), config).unwrap();
    let log = std::fs::File::create(dir.join("registry.log")).unwrap();
    let mut registry = host
        .command("docker-registry")
        .arg("serve")
        .arg(dir.join("registry.yml"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("docker-registry (tests/run installs it)");
    let archive = dir.join("bb.tar");
    common::images::write_busybox_image(&archive, "docker.io/library/busybox:1.36");
    eventually(30, "skopeo push to the registry", || {
        host.command("skopeo")
            .args([
                "copy",
                "--insecure-policy",
                "--dest-tls-verify=false",
                "--dest-creds",
                "user:pass",
            ])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg("docker://127.0.0.1:5000/test/bb:v1")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| ())
    });
    let pod = |name: &str, secret: bool| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  {}containers:\n  - name: c\n    image: 127.0.0.1:5000/test/bb:v1\n    command: [sh, -c, 'echo pulled ok; exec sleep 100000']\n",
            if secret {
                "imagePullSecrets: [{name: regcred}]\n  "
            } else {
                ""
            }
        )
    };
    // Without credentials the registry refuses: ErrImagePull, then ImagePullBackOff.
    s.ok_stdin(&["apply", "-f", "-"], &pod("anon", false));
    eventually(60, "pull refused", || {
        let p = pod_json(&s, "anon");
        let reason = p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].clone();
        (reason == "ErrImagePull" || reason == "ImagePullBackOff").then_some(())
    });
    s.ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        "--docker-server=127.0.0.1:5000",
        "--docker-username=user",
        "--docker-password=pass",
    ]);
    s.ok_stdin(&["apply", "-f", "-"], &pod("authed", true));
    let running = wait_running(&s, "authed");
    assert!(
        running["status"]["containerStatuses"][0]["imageID"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:5000/test/bb@sha256:")
    );
    eventually(20, "logs", || {
        s.ok(&["logs", "authed"])
            .contains("pulled ok")
            .then_some(())
    });
    let _ = registry.kill();
    let _ = registry.wait();
}

#[test]
fn lifecycle_hooks_run_after_start_and_before_stop() {
    let s = Server::start_node(&[]);
    let hostdir = s.dir.path().join("hooks");
    std::fs::create_dir_all(&hostdir).unwrap();
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: hooked}}
spec:
  terminationGracePeriodSeconds: 3
  containers:
  - name: c
    image: busybox:1.36
    command: [sleep, "100000"]
    volumeMounts: [{{name: host, mountPath: /host}}]
    lifecycle:
      postStart: {{exec: {{command: [sh, -c, 'echo poststart > /host/poststart']}}}}
      preStop: {{exec: {{command: [sh, -c, 'echo prestop > /host/prestop']}}}}
  volumes:
  - {{name: host, hostPath: {{path: {}}}}}
"#,
        hostdir.display()
    );
    s.ok_stdin(&["apply", "-f", "-"], &pod);
    wait_running(&s, "hooked");
    eventually(20, "postStart ran", || {
        hostdir.join("poststart").exists().then_some(())
    });
    assert!(!hostdir.join("prestop").exists());
    // `sleep` ignores SIGTERM as PID 1: preStop runs, then SIGKILL after the grace period.
    s.ok(&["delete", "pod", "hooked", "--timeout=30s"]);
    assert_eq!(
        std::fs::read_to_string(hostdir.join("prestop")).unwrap(),
        "prestop\n"
    );
}

/// Output of a background command, collected by a thread so the test can wait for a line.
struct Background {
    child: std::process::Child,
    /// Both streams, as they came.
    out: std::sync::Arc<std::sync::Mutex<String>>,
    /// Standard error alone.
    err: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Background {
    fn spawn(mut cmd: std::process::Command) -> Background {
        use std::io::Read;
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        for (mut pipe, only) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
                None,
            ),
            (Box::new(child.stderr.take().unwrap()), Some(err.clone())),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]);
                    out.lock().unwrap().push_str(&text);
                    if let Some(only) = &only {
                        only.lock().unwrap().push_str(&text);
                    }
                }
            });
        }
        Background { child, out, err }
    }
    fn wait_for(&self, secs: u64, text: &str) -> String {
        eventually(secs, text, || {
            let o = self.out.lock().unwrap().clone();
            o.contains(text).then_some(o)
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn exec_attach_and_port_forward_with_kubectl_1_28_and_1_33() {
    let s = Server::start_node(&[]);
    s.ok(&[
        "run",
        "web",
        "--image=busybox:1.36",
        "--",
        "sh",
        "-c",
        "mkdir -p /www; echo served-by-web > /www/index.html; \
         (while true; do echo tick $(date +%s%N); echo tock >&2; sleep 0.3; done) & \
         exec httpd -f -p 8080 -h /www",
    ]);
    wait_running(&s, "web");
    for (version, kubectl) in common::kubectl_versions() {
        let v = version.as_str();
        // 1.33 tries WebSockets first (exec) and the SPDY tunnel (port-forward); the variables
        // make it speak plain SPDY as 1.28 does.
        for spdy_only in [false, true] {
            let run = |args: &[&str], stdin: Option<&str>| {
                let mut cmd = s.command(&kubectl);
                cmd.args(args);
                if spdy_only {
                    cmd.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
                        .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false");
                }
                let mut child = cmd
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                let input = stdin.unwrap_or_default().to_string();
                let mut pipe = child.stdin.take().unwrap();
                std::thread::spawn(move || {
                    use std::io::Write;
                    let _ = pipe.write_all(input.as_bytes());
                });
                child.wait_with_output().unwrap()
            };
            let what = format!("kubectl {v} (SPDY only: {spdy_only})");
            let out = run(&["exec", "web", "--", "hostname"], None);
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "web",
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let out = run(&["exec", "-i", "web", "--", "wc", "-c"], Some("12345\n"));
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "6", "{what}");
            let out = run(
                &["exec", "web", "--", "sh", "-c", "echo err >&2; exit 7"],
                None,
            );
            assert_eq!(out.status.code(), Some(7), "{what}");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("err"),
                "{what}"
            );
            // kubectl cp is tar through exec.
            let local = s.dir.path().join(format!("index-{v}-{spdy_only}"));
            let out = run(
                &["cp", "web:/www/index.html", local.to_str().unwrap()],
                None,
            );
            assert!(out.status.success(), "{what}: {out:?}");
            assert_eq!(std::fs::read_to_string(&local).unwrap(), "served-by-web\n");
            assert!(
                String::from_utf8_lossy(&run(&["logs", "--tail=2", "web"], None).stdout)
                    .contains("tick"),
                "{what}"
            );

            // port-forward to the pod's httpd, fetched from the test host.
            let tunnels = |s: &Server| {
                s.log()
                    .matches("port-forward through a WebSocket tunnel")
                    .count()
            };
            let tunnels_before = tunnels(&s);
            let port = common::free_port();
            let mut cmd = s.command(&kubectl);
            cmd.args(["port-forward", "pod/web", &format!("{port}:8080")]);
            if spdy_only {
                cmd.env("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false");
            }
            let pf = Background::spawn(cmd);
            pf.wait_for(30, "Forwarding from");
            for _ in 0..2 {
                let got = s
                    .command(common::images::busybox())
                    .args([
                        "wget",
                        "-qO-",
                        &format!("http://127.0.0.1:{port}/index.html"),
                    ])
                    .output()
                    .unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&got.stdout),
                    "served-by-web\n",
                    "{what}: {}\n{}",
                    String::from_utf8_lossy(&got.stderr),
                    pf.out.lock().unwrap()
                );
            }
            drop(pf);
            let tunnels_now = tunnels(&s);
            let expected = usize::from(v == "1.33" && !spdy_only);
            assert_eq!(
                tunnels_now - tunnels_before,
                expected,
                "{what}: tunnels used"
            );

            // attach: the main process's output as it comes.
            let mut cmd = s.command(&kubectl);
            cmd.args(["attach", "web"]);
            if spdy_only {
                cmd.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false");
            }
            let attached = Background::spawn(cmd);
            attached.wait_for(30, "tock");
            let err = attached.err.lock().unwrap().clone();
            assert!(
                err.contains("tock") && !err.contains("tick"),
                "{what}: {err}"
            );

            // `kubectl run -i --rm`: the pod's stdin comes from kubectl through attach.
            let name = format!("talk-{}-{}", v.replace('.', ""), spdy_only);
            let out = run(
                &[
                    "run",
                    &name,
                    "-i",
                    "--rm",
                    "--restart=Never",
                    "--image=busybox:1.36",
                    "--",
                    "sh",
                    "-c",
                    "read x; echo got $x",
                ],
                Some("hello\n"),
            );
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("got hello"),
                "{what}: {out:?}"
            );
            eventually(60, "pod removed", || {
                s.kubectl(&["get", "pod", &name])
                    .status
                    .code()
                    .filter(|c| *c != 0)
            });

            // A terminal: kubectl needs one itself, which `script` provides.
            let line = format!(
                "{} exec -it web -- sh -c 'tty; stty size'",
                kubectl.display()
            );
            let mut cmd = s.command("script");
            cmd.args(["-qec", &line, "/dev/null"]);
            if spdy_only {
                cmd.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false");
            }
            let out = cmd.output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("/dev/pts/"), "{what}: {text}");

            // `kubectl run -it --rm`: a container on a terminal, typed into through attach.
            let name = format!("tty-{}-{}", v.replace('.', ""), spdy_only);
            let line = format!(
                "{} run -it --rm {name} --restart=Never --image=busybox:1.36 -- sh -c 'read x; tty; echo got \\$x'",
                kubectl.display()
            );
            let mut cmd = s.command("sh");
            cmd.args([
                "-c",
                &format!("(sleep 3; echo hello; sleep 2) | script -qec \"{line}\" /dev/null"),
            ]);
            if spdy_only {
                cmd.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false");
            }
            let out = cmd.output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains("got hello") && text.contains("/dev/pts/0"),
                "{what}: {text}"
            );
        }
    }
}

#[test]
fn kubectl_top_and_the_hpa_use_the_nodes_metrics() {
    let s = Server::start_node(&[]);
    let deploy = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"burn"},"spec":{"replicas":1,"selector":{"matchLabels":{"app":"burn"}},
      "template":{"metadata":{"labels":{"app":"burn"}},"spec":{"containers":[{"name":"c","image":"busybox:1.36",
        "command":["sh","-c","while :; do :; done"],
        "resources":{"requests":{"cpu":"100m","memory":"16Mi"},"limits":{"cpu":"300m","memory":"64Mi"}}}]}}}}"#;
    s.ok_stdin(&["apply", "-f", "-"], deploy);
    s.ok(&["rollout", "status", "deployment/burn", "--timeout=60s"]);
    for (version, kubectl) in common::kubectl_versions() {
        let top = |args: &[&str]| {
            let out = s.kubectl_in(&kubectl, args);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).to_string())
        };
        let nodes = eventually(60, &format!("kubectl {version} top node"), || {
            top(&["top", "node"])
        });
        let row = nodes.lines().find(|l| l.starts_with(NODE)).expect(&nodes);
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert!(cols[1].ends_with('m') && cols[3].ends_with("Mi"), "{nodes}");
        let pods = eventually(60, &format!("kubectl {version} top pod"), || {
            top(&["top", "pod", "-l", "app=burn"])
        });
        let row = pods.lines().find(|l| l.starts_with("burn-")).expect(&pods);
        let cpu: u64 = row
            .split_whitespace()
            .nth(1)
            .unwrap()
            .trim_end_matches('m')
            .parse()
            .unwrap();
        // The loop is held to its 300m limit.
        assert!((150..=400).contains(&cpu), "{pods}");
        let name = row.split_whitespace().next().unwrap();
        let one = top(&["top", "pod", name]).expect("top pod NAME");
        assert!(one.contains(name), "{one}");
    }
    let raw = serde_json::from_str::<Value>(&s.ok(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/nodes",
    ]))
    .unwrap();
    assert_eq!(raw["kind"], "NodeMetricsList");
    assert!(
        raw["items"][0]["usage"]["cpu"]
            .as_str()
            .unwrap()
            .ends_with('n')
    );
    assert!(s.fails(&["top", "pod", "nope"], None).contains("not found"));

    // 300m used of 100m requested is 300 %: at a 50 % target the HPA goes to its maximum.
    s.ok(&[
        "autoscale",
        "deployment",
        "burn",
        "--cpu-percent=50",
        "--min=1",
        "--max=3",
    ]);
    eventually(90, "scaled to 3", || {
        (s.ok(&["get", "deploy", "burn", "-o", "jsonpath={.spec.replicas}"]) == "3").then_some(())
    });
    let hpa = json_of(&s, &["get", "hpa", "burn", "-o", "json"]);
    let utilisation =
        hpa["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"]
            .as_i64()
            .unwrap();
    assert!(utilisation > 150, "{hpa}");
}

#[test]
fn kubelet_args_drive_image_gc_and_eviction() {
    // Image GC at any disk usage, for images unused at all: an unused image goes, the one a
    // pod uses stays.
    let s = Server::start_node(&[
        "--kubelet-arg=image-gc-high-threshold=1",
        "--kubelet-arg=image-gc-low-threshold=0",
        "--kubelet-arg=image-minimum-gc-age=0s",
    ]);
    s.ok(&["run", "bb", "--image=busybox:1.36", "--", "sleep", "3600"]);
    wait_running(&s, "bb");
    let archive = s.dir.path().join("extra.tar");
    common::images::write_busybox_image_with_cmd(&archive, "example.com/extra:1", &["true"]);
    let data_dir = s.dir.path().join("data");
    let images = |args: &[&str]| {
        let out = s
            .command(env!("CARGO_BIN_EXE_kinglet"))
            .arg("images")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    images(&["import", archive.to_str().unwrap()]);
    assert!(images(&["ls"]).contains("example.com/extra"));
    let left = eventually(90, "unused image collected", || {
        let ls = images(&["ls"]);
        (!ls.contains("example.com/extra")).then_some(ls)
    });
    assert!(left.contains("busybox"), "{left}");
    drop(s);

    // A hard eviction threshold that is always crossed: memory pressure, the NoSchedule
    // taint, and pods on the node evicted as upstream reports it.
    let s = Server::start_node(&["--kubelet-arg=eviction-hard=memory.available<1Ei"]);
    eventually(60, "MemoryPressure and its taint", || {
        let out = s.kubectl(&["get", "node", NODE, "-o", "json"]);
        let n: Value = serde_json::from_slice(&out.stdout).ok()?;
        let pressure = n["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "MemoryPressure" && c["status"] == "True");
        let tainted = n["spec"]["taints"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["key"] == "node.kubernetes.io/memory-pressure")
        });
        (pressure && tainted).then_some(())
    });
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"victim"}},"spec":{{"nodeName":"{NODE}","containers":[{{"name":"c","image":"busybox:1.36","command":["sleep","3600"]}}]}}}}"#
    );
    s.ok_stdin(&["apply", "-f", "-"], &pod);
    let p = eventually(60, "pod evicted", || {
        let p = pod_json(&s, "victim");
        (p["status"]["reason"] == "Evicted").then_some(p)
    });
    assert_eq!(p["status"]["phase"], "Failed");
    assert!(
        p["status"]["message"]
            .as_str()
            .unwrap()
            .contains("low on resource: memory"),
        "{p}"
    );
}

#[test]
fn seccomp_profiles_filter_system_calls() {
    let s = Server::start_node(&[]);
    let profiles = s.dir.path().join("data/agent/seccomp");
    std::fs::create_dir_all(&profiles).unwrap();
    std::fs::write(
        profiles.join("no-mkdir.json"),
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .unwrap();
    let script = "grep Seccomp: /proc/self/status; \
        unshare -U true 2>/dev/null && echo unshare-allowed || echo unshare-denied; \
        mkdir /tmp/d 2>/dev/null && echo mkdir-allowed || echo mkdir-denied; sleep 3600";
    for (name, profile) in [
        ("default", r#"{"type":"RuntimeDefault"}"#),
        (
            "local",
            r#"{"type":"Localhost","localhostProfile":"no-mkdir.json"}"#,
        ),
        ("open", r#"{"type":"Unconfined"}"#),
    ] {
        let pod = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{{"securityContext":{{"seccompProfile":{profile}}},
              "containers":[{{"name":"c","image":"busybox:1.36","command":["sh","-c","{script}"]}}]}}}}"#
        );
        s.ok_stdin(&["apply", "-f", "-"], &pod);
    }
    let logs = |name: &str| {
        wait_running(&s, name);
        eventually(30, &format!("{name} logs"), || {
            let l = s.ok(&["logs", name]);
            l.contains("mkdir-").then_some(l)
        })
    };
    let default = logs("default");
    assert!(default.contains("Seccomp:\t2"), "{default}");
    assert!(default.contains("unshare-denied"), "{default}");
    assert!(default.contains("mkdir-allowed"), "{default}");
    let local = logs("local");
    assert!(
        local.contains("Seccomp:\t2") && local.contains("mkdir-denied"),
        "{local}"
    );
    let open = logs("open");
    assert!(
        open.contains("Seccomp:\t0") && open.contains("mkdir-allowed"),
        "{open}"
    );
    // A missing profile is a configuration error of the container, as upstream reports it.
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"missing"},"spec":{"securityContext":{"seccompProfile":{"type":"Localhost","localhostProfile":"nope.json"}},
      "containers":[{"name":"c","image":"busybox:1.36","command":["true"]}]}}"#;
    s.ok_stdin(&["apply", "-f", "-"], pod);
    eventually(30, "CreateContainerConfigError", || {
        let p = pod_json(&s, "missing");
        (p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
            == "CreateContainerConfigError")
            .then_some(())
    });
}

#[test]
fn after_a_power_cut_pods_restart_per_policy() {
    let mut s = Server::start_node(&[]);
    s.ok(&[
        "run",
        "always",
        "--image=busybox:1.36",
        "--",
        "sh",
        "-c",
        "echo up; exec sleep 100000",
    ]);
    s.ok(&[
        "run",
        "never",
        "--restart=Never",
        "--image=busybox:1.36",
        "--",
        "sleep",
        "100000",
    ]);
    let before =
        wait_running(&s, "always")["status"]["containerStatuses"][0]["containerID"].clone();
    wait_running(&s, "never");
    s.power_cycle();
    let p = eventually(90, "always restarted", || {
        let p = pod_json(&s, "always");
        let cs = &p["status"]["containerStatuses"][0];
        (cs["restartCount"] == 1
            && cs["state"]["running"].is_object()
            && cs["containerID"] != before)
            .then_some(p)
    });
    assert_eq!(p["status"]["phase"], "Running");
    assert!(s.ok(&["logs", "always"]).contains("up"));
    let p = eventually(60, "never failed", || {
        let p = pod_json(&s, "never");
        (p["status"]["phase"] == "Failed").then_some(p)
    });
    let cs = &p["status"]["containerStatuses"][0];
    assert_eq!(cs["restartCount"], 0, "{p}");
    assert!(cs["state"]["terminated"].is_object(), "{p}");
}

/// The bytes of a gRPC server's HTTP/2 answer to one health check on stream 1 (a canned
/// answer `nc` can play back): SETTINGS, response headers, the `HealthCheckResponse` with
/// `status`, and the `grpc-status: 0` trailer.
fn grpc_health_answer(status: u8) -> Vec<u8> {
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
    // HPACK: `:status: 200` is static entry 8; content-type (entry 31) with a literal value.
    let mut headers = vec![0x88, 0x0f, 0x10, 16];
    headers.extend_from_slice(b"application/grpc");
    let mut trailers = vec![0x00, 11];
    trailers.extend_from_slice(b"grpc-status");
    trailers.extend_from_slice(&[1, b'0']);
    let mut out = frame(4, 0, 0, &[]);
    out.extend(frame(1, 0x4, 1, &headers));
    out.extend(frame(0, 0, 1, &[0, 0, 0, 0, 2, 0x08, status]));
    out.extend(frame(1, 0x5, 1, &trailers));
    out
}

#[test]
fn grpc_probes_check_the_health_service() {
    let s = Server::start_node(&[]);
    let srv = s.dir.path().join("grpc");
    std::fs::create_dir_all(&srv).unwrap();
    for (name, status) in [("serving", 1), ("not-serving", 2)] {
        std::fs::write(srv.join(format!("{name}.bin")), grpc_health_answer(status)).unwrap();
        let script = format!("#!/bin/sh\nsleep 0.3\ncat /srv/{name}.bin\nsleep 0.3\n");
        let path = srv.join(format!("{name}.sh"));
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"grpc"}},"spec":{{
          "volumes":[{{"name":"srv","hostPath":{{"path":"{}"}}}}],
          "containers":[
            {{"name":"ok","image":"busybox:1.36","command":["nc","-ll","-p","9000","-e","/srv/serving.sh"],
              "volumeMounts":[{{"name":"srv","mountPath":"/srv"}}],
              "readinessProbe":{{"grpc":{{"port":9000}},"periodSeconds":1}}}},
            {{"name":"sick","image":"busybox:1.36","command":["nc","-ll","-p","9001","-e","/srv/not-serving.sh"],
              "volumeMounts":[{{"name":"srv","mountPath":"/srv"}}],
              "livenessProbe":{{"grpc":{{"port":9001,"service":"db"}},"periodSeconds":1,"failureThreshold":1}}}}]}}}}"#,
        srv.display()
    );
    s.ok_stdin(&["apply", "-f", "-"], &pod);
    eventually(60, "SERVING makes ready, NOT_SERVING restarts", || {
        let p = pod_json(&s, "grpc");
        let statuses = p["status"]["containerStatuses"].as_array()?.clone();
        let by_name = |n: &str| statuses.iter().find(|c| c["name"] == n).cloned();
        let ok = by_name("ok")?;
        let sick = by_name("sick")?;
        (ok["ready"] == true
            && ok["restartCount"] == 0
            && sick["restartCount"].as_u64().unwrap_or(0) >= 1)
            .then_some(())
    });
}

#[test]
fn bad_pod_specs_get_upstream_reasons_and_leave_the_node_working() {
    let s = Server::start_node(&[]);
    let waiting = |name: &str, want: &[&str]| {
        eventually(60, &format!("{name} waiting in {want:?}"), || {
            let p = pod_json(&s, name);
            let cs = p["status"]["containerStatuses"][0].clone();
            let reason = cs["state"]["waiting"]["reason"]
                .as_str()
                .unwrap_or_default();
            want.contains(&reason).then_some(cs)
        })
    };
    s.ok(&[
        "run",
        "badcmd",
        "--image=busybox:1.36",
        "--command",
        "--",
        "/no/such/binary",
    ]);
    // Nothing listens on port 1 of the test host's loopback.
    s.ok(&["run", "noimage", "--image=localhost:1/missing:v1"]);
    let pod = |name: &str, spec: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{spec}}}"#
        )
    };
    let sleeper = r#""image":"busybox:1.36","command":["sleep","3600"]"#;
    // kubectl run checks image names itself; through the API the kubelet has to.
    s.ok_stdin(
        &["apply", "-f", "-"],
        &pod(
            "badname",
            r#"{"containers":[{"name":"c","image":"busybox:-x"}]}"#,
        ),
    );
    s.ok_stdin(
        &["apply", "-f", "-"],
        &pod(
            "noenv",
            &format!(
                r#"{{"containers":[{{"name":"c",{sleeper},"env":[{{"name":"X","valueFrom":{{"configMapKeyRef":{{"name":"late","key":"k"}}}}}}]}}]}}"#
            ),
        ),
    );
    s.ok_stdin(
        &["apply", "-f", "-"],
        &pod(
            "novolume",
            &format!(
                r#"{{"volumes":[{{"name":"v","configMap":{{"name":"late"}}}}],"containers":[{{"name":"c",{sleeper},"volumeMounts":[{{"name":"v","mountPath":"/v"}}]}}]}}"#
            ),
        ),
    );
    // A mount of an undeclared volume never gets past the API.
    let refused = s.fails(
        &["apply", "-f", "-"],
        Some(&pod(
            "nomount",
            &format!(
                r#"{{"containers":[{{"name":"c",{sleeper},"volumeMounts":[{{"name":"nope","mountPath":"/x"}}]}}]}}"#
            ),
        )),
    );
    assert!(
        refused.contains(r#"spec.containers[0].volumeMounts[0].name: Not found: "nope""#),
        "{refused}"
    );
    // Nor does a subPath out of its volume.
    let refused = s.fails(
        &["apply", "-f", "-"],
        Some(&pod(
            "escape",
            &format!(
                r#"{{"volumes":[{{"name":"v","emptyDir":{{}}}}],"containers":[{{"name":"c",{sleeper},"volumeMounts":[{{"name":"v","mountPath":"/x","subPath":"a/../../../etc"}}]}}]}}"#
            ),
        )),
    );
    assert!(
        refused.contains(
            r#"volumeMounts[0].subPath: Invalid value: "a/../../../etc": must not contain '..'"#
        ),
        "{refused}"
    );

    let cs = waiting("badcmd", &["RunContainerError", "CrashLoopBackOff"]);
    let last = &cs["lastState"]["terminated"];
    assert_eq!(last["reason"], "StartError", "{cs}");
    assert_eq!(last["exitCode"], 128, "{cs}");
    assert!(
        last["message"]
            .as_str()
            .unwrap_or_default()
            .contains("/no/such/binary"),
        "{cs}"
    );
    let cs = waiting("badname", &["InvalidImageName"]);
    let message = cs["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("invalid reference format"), "{cs}");
    waiting("noimage", &["ErrImagePull", "ImagePullBackOff"]);
    let cs = waiting("noenv", &["CreateContainerConfigError"]);
    assert_eq!(
        cs["state"]["waiting"]["message"],
        r#"configmap "late" not found"#
    );
    // A volume that cannot be set up: the pod waits in ContainerCreating, the cause an event.
    waiting("novolume", &["ContainerCreating"]);
    let events = eventually(30, "FailedMount event", || {
        let e = s.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=novolume,reason=FailedMount",
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        (!e.is_empty()).then_some(e)
    });
    assert!(
        events.contains(r#"MountVolume.SetUp failed for volume "v" : configmap "late" not found"#),
        "{events}"
    );

    // An image that sets no PATH gets containerd's default one.
    let archive = s.dir.path().join("nopath.tar");
    common::images::write_busybox_image_with(&archive, "example.com/nopath:1", &["sh"], &[]);
    let import = s
        .command(env!("CARGO_BIN_EXE_kinglet"))
        .args(["images", "import", "--data-dir"])
        .arg(s.dir.path().join("data"))
        .arg(&archive)
        .output()
        .unwrap();
    assert!(import.status.success(), "{import:?}");
    s.ok(&[
        "run",
        "nopath",
        "--image=example.com/nopath:1",
        "--image-pull-policy=Never",
        "--",
        "sh",
        "-c",
        "echo $PATH; sleep 3600",
    ]);
    wait_running(&s, "nopath");
    let logs = eventually(20, "nopath logs", || {
        let l = s.ok(&["logs", "nopath"]);
        (!l.is_empty()).then_some(l)
    });
    assert_eq!(
        logs.trim(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );

    // Once the ConfigMap exists both pods start; a good pod runs beside the bad ones.
    s.ok(&["create", "configmap", "late", "--from-literal=k=v"]);
    wait_running(&s, "noenv");
    wait_running(&s, "novolume");
    s.ok(&["run", "good", "--image=busybox:1.36", "--", "sleep", "3600"]);
    wait_running(&s, "good");
    assert_eq!(s.ok(&["exec", "novolume", "--", "cat", "/v/k"]), "v");
    // The running container sees the ConfigMap change, in the directory it mounted.
    s.ok(&["patch", "configmap", "late", "-p", r#"{"data":{"k":"w"}}"#]);
    eventually(30, "updated volume", || {
        (s.ok(&["exec", "novolume", "--", "cat", "/v/k"]) == "w").then_some(())
    });
}
