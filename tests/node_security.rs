//! What keeps a container in its place, and what a privileged one may do, on the embedded node
//! (each server in a test host of its own, driven with the real kubectl): subPaths that do not
//! follow links out of their volume, privileged containers, and network probes that go to the
//! pod's own address (or the handler's host) with the handler's scheme and headers.

mod common;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::host::NODE_IP;
use common::{Server, eventually};
use serde_json::Value;

fn pod_json(s: &Server, name: &str) -> Value {
    serde_json::from_str(&s.ok(&["get", "pod", name, "-o", "json"])).expect("kubectl json")
}

/// The status of container `container` of pod `pod`.
fn container_status(s: &Server, pod: &str, container: &str) -> Value {
    let p = pod_json(s, pod);
    p["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == container)
        .cloned()
        .unwrap_or(Value::Null)
}

fn wait_running(s: &Server, name: &str) -> Value {
    let mut last = Value::Null;
    eventually(60, &format!("pod {name} running"), || {
        let p = pod_json(s, name);
        if p["status"] != last {
            eprintln!("pod {name}: {}", p["status"]);
            last = p["status"].clone();
        }
        (p["status"]["phase"] == "Running"
            && p["status"]["containerStatuses"][0]["state"]["running"].is_object())
        .then_some(p)
    })
}

/// The container's log once it holds a line starting with `last`.
fn logs_through(s: &Server, pod: &str, last: &str) -> String {
    eventually(30, &format!("{pod} logs through {last}"), || {
        let l = s.ok(&["logs", pod]);
        l.lines().any(|line| line.starts_with(last)).then_some(l)
    })
}

fn ready(s: &Server, pod: &str) -> bool {
    pod_json(s, pod)["status"]["containerStatuses"][0]["ready"] == true
}

#[test]
fn sub_paths_never_follow_links_out_of_their_volume() {
    let s = Server::start_node(&[]);
    // A file of the node's own /tmp, which no container may see.
    let marker = tempfile::Builder::new()
        .prefix("kinglet-node-secret-")
        .tempfile_in("/tmp")
        .unwrap();
    let marker_name = marker
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // A hostPath volume with a link out of it.
    let hostdir = s.dir.path().join("hostvol");
    std::fs::create_dir_all(&hostdir).unwrap();
    std::os::unix::fs::symlink("/tmp", hostdir.join("out")).unwrap();
    std::fs::create_dir_all(hostdir.join("keep")).unwrap();
    std::fs::write(hostdir.join("keep/kept"), "node file\n").unwrap();
    // The init container plants links in the emptyDir; the others mount them by subPath.
    let show = r#"[sh, -c, 'ls -a /x; sleep 3600']"#;
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: escape}}
spec:
  terminationGracePeriodSeconds: 1
  initContainers:
  - name: plant
    image: busybox:1.36
    command: [sh, -c, 'ln -s /tmp /v/escape && ln -s ../../.. /v/up && mkdir /v/real && echo inside > /v/real/f && ln -s real /v/inner']
    volumeMounts: [{{name: v, mountPath: /v}}]
  containers:
  - name: good
    image: busybox:1.36
    command: [sleep, "3600"]
    volumeMounts:
    - {{name: v, mountPath: /x, subPath: inner}}
    - {{name: v, mountPath: /y, subPath: made/here}}
    - {{name: v, mountPath: /v}}
    - {{name: hp, mountPath: /k, subPath: keep}}
  - name: abs
    image: busybox:1.36
    command: {show}
    volumeMounts: [{{name: v, mountPath: /x, subPath: escape}}]
  - name: rel
    image: busybox:1.36
    command: {show}
    volumeMounts: [{{name: v, mountPath: /x, subPath: up/tmp}}]
  - name: host
    image: busybox:1.36
    command: {show}
    volumeMounts: [{{name: hp, mountPath: /x, subPath: out}}]
  volumes:
  - {{name: v, emptyDir: {{}}}}
  - {{name: hp, hostPath: {{path: {}}}}}
"#,
        hostdir.display()
    );
    s.ok_stdin(&["apply", "-f", "-"], &pod);
    for (container, volume) in [("abs", "v"), ("rel", "v"), ("host", "hp")] {
        let cs = eventually(60, &format!("{container} refused"), || {
            let cs = container_status(&s, "escape", container);
            (cs["state"]["waiting"]["reason"] == "CreateContainerConfigError").then_some(cs)
        });
        assert_eq!(
            cs["state"]["waiting"]["message"],
            format!(
                r#"failed to prepare subPath for volumeMount "{volume}" of container "{container}""#
            ),
            "{cs}"
        );
    }
    // Links that stay in the volume work, and a missing subPath is made in it.
    eventually(60, "good running", || {
        container_status(&s, "escape", "good")["state"]["running"]
            .is_object()
            .then_some(())
    });
    let exec = |args: &[&str]| {
        let mut all = vec!["exec", "escape", "-c", "good", "--"];
        all.extend_from_slice(args);
        s.ok(&all)
    };
    assert_eq!(exec(&["cat", "/x/f"]), "inside\n");
    exec(&["touch", "/y/made-by-good"]);
    assert!(exec(&["ls", "/v/made/here"]).contains("made-by-good"));
    assert_eq!(exec(&["cat", "/k/kept"]), "node file\n");
    // The refusal stays: later syncs refuse again, and nothing ever ran.
    std::thread::sleep(Duration::from_secs(3));
    for container in ["abs", "rel", "host"] {
        let cs = container_status(&s, "escape", container);
        assert_eq!(
            cs["state"]["waiting"]["reason"], "CreateContainerConfigError",
            "{cs}"
        );
        assert_eq!(cs["restartCount"], 0, "{cs}");
        assert!(cs["lastState"]["terminated"].is_null(), "{cs}");
    }
    // No container ever listed the node's /tmp.
    let mut logs = String::new();
    let mut todo = vec![s.dir.path().join("pod-logs")];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                todo.push(e.path());
            } else {
                logs.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    assert!(!logs.contains(&marker_name), "{logs}");
    // The pod goes cleanly; the hostPath's files mounted by subPath stay with the node.
    s.ok(&["delete", "pod", "escape", "--timeout=60s"]);
    assert_eq!(
        std::fs::read_to_string(hostdir.join("keep/kept")).unwrap(),
        "node file\n"
    );
    assert!(hostdir.join("out").is_symlink() && marker.path().exists());
    // The refusal is a warning event.
    let events = eventually(30, "Failed events", || {
        let e = s.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=escape,reason=Failed",
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        (!e.is_empty()).then_some(e)
    });
    assert!(events.contains("CreateContainerConfigError"), "{events}");
}

/// `CapPrm` of this process: what kinglet, started by it, may hand on.
fn held_caps() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapPrm:"))
        .unwrap()
        .trim()
        .to_string()
}

/// A device node of the node's /dev that unprivileged containers do not get.
fn host_only_device() -> String {
    let common = [
        "null", "zero", "full", "random", "urandom", "tty", "console", "ptmx",
    ];
    let mut names: Vec<String> = std::fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .filter(|e| {
            use std::os::unix::fs::FileTypeExt;
            e.file_type()
                .is_ok_and(|t| t.is_char_device() || t.is_block_device())
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !common.contains(&n.as_str()))
        .collect();
    names.sort();
    names.into_iter().next().expect("a device in /dev")
}

#[test]
fn privileged_containers_get_every_capability_devices_and_a_writable_sys() {
    let s = Server::start_node(&[]);
    let device = host_only_device();
    let script = format!(
        "grep CapEff: /proc/self/status; \
         mkdir -p /mnt; mount -t tmpfs none /mnt 2>/dev/null && echo mount-allowed || echo mount-denied; \
         (echo 1280 > /sys/class/net/eth0/mtu) 2>/dev/null && echo sys-writable || echo sys-readonly; \
         w=0; for d in /sys/fs/cgroup /sys/fs/cgroup/*/; do \
           mkdir $d/probe 2>/dev/null && rmdir $d/probe && w=$((w+1)); done; \
         echo writable-cgroup-dirs=$w; \
         echo proc-sys-mounts=$(grep -c ' /proc/sys ' /proc/mounts); \
         test -e /dev/{device} && echo device-present || echo device-absent; \
         echo done; sleep 3600"
    );
    s.ok(&[
        "run",
        "priv",
        "--image=busybox:1.36",
        "--privileged",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    s.ok(&[
        "run",
        "plain",
        "--image=busybox:1.36",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    wait_running(&s, "priv");
    wait_running(&s, "plain");
    let privileged = logs_through(&s, "priv", "done");
    let plain = logs_through(&s, "plain", "done");
    let cap_eff = |logs: &str| {
        let line = logs.lines().find(|l| l.starts_with("CapEff:")).unwrap();
        u64::from_str_radix(line["CapEff:".len()..].trim(), 16).unwrap()
    };
    let held = u64::from_str_radix(&held_caps(), 16).unwrap();
    assert_eq!(cap_eff(&privileged), held, "{privileged}");
    // containerd's default set for everyone else.
    assert_eq!(cap_eff(&plain), 0xa80425fb, "{plain}");
    for (want, logs) in [
        (
            [
                "mount-allowed",
                "sys-writable",
                "writable-cgroup-dirs=",
                "proc-sys-mounts=0",
                "device-present",
            ],
            &privileged,
        ),
        (
            [
                "mount-denied",
                "sys-readonly",
                "writable-cgroup-dirs=0",
                "proc-sys-mounts=1",
                "device-absent",
            ],
            &plain,
        ),
    ] {
        for w in want {
            assert!(logs.lines().any(|l| l.starts_with(w)), "{w}: {logs}");
        }
    }
    assert!(
        !privileged.contains("writable-cgroup-dirs=0\n"),
        "{privileged}"
    );
}

/// A TLS server on `addr` inside the test host's network (the node's address): answers 200 to
/// requests that carry `X-Probe: tls`, 500 to others, and keeps the request heads it saw.
fn tls_server(s: &Server, addr: &'static str) -> Arc<Mutex<Vec<String>>> {
    let cert = rcgen::generate_simple_self_signed(vec!["node.invalid".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let config = Arc::new(config);
    let netns = std::fs::File::open(format!("/proc/{}/ns/net", s.host().unwrap().pid())).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (bound, listening) = std::sync::mpsc::channel();
    let heads = seen.clone();
    // The thread lives in the test host's network, and with the test.
    std::thread::spawn(move || {
        nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let listener = std::net::TcpListener::bind(addr).unwrap();
        bound.send(()).unwrap();
        for tcp in listener.incoming().flatten() {
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let status = if head.contains("\r\nx-probe: tls\r\n") {
                "200 OK"
            } else {
                "500 Missing Header"
            };
            heads.lock().unwrap().push(head);
            let reply =
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = tls.write_all(reply.as_bytes());
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    listening.recv().unwrap();
    seen
}

#[test]
fn http_probes_go_to_the_pod_ip_with_scheme_host_and_headers() {
    let s = Server::start_node(&[]);
    // A CGI script for busybox httpd: 200 only to a request with the probe's headers (httpd
    // passes every header as HTTP_*).
    let cgi = s.dir.path().join("probe.cgi");
    std::fs::write(
        &cgi,
        "#!/bin/sh\n\
         echo \"probe host=$HTTP_HOST x-probe=$HTTP_X_PROBE agent=$HTTP_USER_AGENT\" >> /tmp/probes.log\n\
         if [ \"$HTTP_X_PROBE\" = kinglet ] && [ \"$HTTP_HOST\" = app.example ]; then\n\
         printf 'Status: 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\nok\\n'\n\
         else\n\
         printf 'Status: 500 Wrong Headers\\r\\nContent-Type: text/plain\\r\\n\\r\\nno\\n'\n\
         fi\n",
    )
    .unwrap();
    s.ok(&[
        "create",
        "configmap",
        "cgi",
        &format!("--from-file=probe={}", cgi.display()),
    ]);
    let tls_heads = tls_server(&s, "192.0.2.10:8443");
    let web = |name: &str, headers: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  containers:
  - name: c
    image: busybox:1.36
    # Listens on the pod's IP only: not on loopback.
    command: [sh, -c, 'exec httpd -f -p "$POD_IP:8080" -h /www']
    env: [{{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}]
    volumeMounts: [{{name: cgi, mountPath: /www/cgi-bin}}]
    readinessProbe:
      httpGet: {{path: /cgi-bin/probe, port: 8080{headers}}}
      periodSeconds: 1
  volumes: [{{name: cgi, configMap: {{name: cgi, defaultMode: 0755}}}}]
"#
        )
    };
    let headers =
        ", httpHeaders: [{name: X-Probe, value: kinglet}, {name: Host, value: app.example}]";
    s.ok_stdin(&["apply", "-f", "-"], &web("podip", headers));
    s.ok_stdin(&["apply", "-f", "-"], &web("noheaders", ""));
    let tls = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: tls}}
spec:
  containers:
  - name: c
    image: busybox:1.36
    command: [sleep, "3600"]
    readinessProbe:
      httpGet: {{scheme: HTTPS, host: "{NODE_IP}", port: 8443, path: /healthz, httpHeaders: [{{name: X-Probe, value: tls}}]}}
      periodSeconds: 1
"#
    );
    s.ok_stdin(&["apply", "-f", "-"], &tls);

    eventually(60, "podip ready through its httpGet probe", || {
        ready(&s, "podip").then_some(())
    });
    // The server really is on the pod's IP only.
    let local = s.kubectl(&[
        "exec",
        "podip",
        "--",
        "wget",
        "-q",
        "-O-",
        "-T",
        "2",
        "http://127.0.0.1:8080/",
    ]);
    assert!(!local.status.success(), "loopback answered");
    let seen = s.ok(&["exec", "podip", "--", "cat", "/tmp/probes.log"]);
    assert!(
        seen.contains("probe host=app.example x-probe=kinglet agent=kube-probe/1.33"),
        "{seen}"
    );

    eventually(60, "tls ready through its HTTPS probe", || {
        ready(&s, "tls").then_some(())
    });
    let heads = tls_heads.lock().unwrap().clone();
    let head = heads.first().cloned().unwrap_or_default();
    assert!(head.starts_with("get /healthz http/1.1\r\n"), "{heads:?}");
    assert!(
        head.contains(&format!("\r\nhost: {NODE_IP}:8443\r\n")),
        "{heads:?}"
    );

    // Without the headers the server answers 500: running, probed at its own address (the
    // Host the probe sends by default), never ready.
    let p = wait_running(&s, "noheaders");
    let ip = p["status"]["podIP"].as_str().unwrap().to_string();
    let probes = eventually(30, "noheaders probed", || {
        let l = s.kubectl(&["exec", "noheaders", "--", "cat", "/tmp/probes.log"]);
        let text = String::from_utf8_lossy(&l.stdout).into_owned();
        (text.lines().count() >= 3).then_some(text)
    });
    let want = format!("probe host={ip}:8080 x-probe= agent=kube-probe/1.33");
    assert!(probes.lines().all(|l| l == want), "{probes}");
    assert!(!ready(&s, "noheaders"));
}
