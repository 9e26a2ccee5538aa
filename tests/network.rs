//! The pod network of a node (issue 5): a server with its node in a test host; traffic stays
//! inside the host's namespaces.

mod common;

use common::{Server, eventually};

#[test]
fn pods_reach_each_other_by_pod_ip() {
    let s = Server::start_node(&[]);
    let cidr = eventually(30, "the node's pod range", || {
        let out = s.kubectl(&[
            "get",
            "node",
            common::NODE,
            "-o",
            "jsonpath={.spec.podCIDR}",
        ]);
        let c = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !c.is_empty()).then_some(c)
    });
    assert!(
        cidr.starts_with("10.42.") && cidr.ends_with("/24"),
        "{cidr}"
    );
    let prefix = cidr.trim_end_matches("0/24");

    s.ok(&[
        "run",
        "web",
        "--image=busybox:1.36",
        "--image-pull-policy=IfNotPresent",
        "--",
        "sh",
        "-c",
        "mkdir /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www",
    ]);
    s.ok(&[
        "run",
        "client",
        "--image=busybox:1.36",
        "--image-pull-policy=IfNotPresent",
        "--",
        "sleep",
        "3600",
    ]);
    let (web, client) = (s.running_pod_ip("web"), s.running_pod_ip("client"));
    assert_ne!(web, client);
    for ip in [&web, &client] {
        assert!(ip.starts_with(prefix), "{ip} outside {cidr}");
        assert!(!ip.ends_with(".1"), "{ip} is the gateway");
    }
    // The address a pod sees on its eth0 is the one the API reports.
    let addr = s.ok(&[
        "exec", "client", "--", "ip", "-4", "-o", "addr", "show", "eth0",
    ]);
    assert!(addr.contains(&format!(" {client}/24 ")), "{addr}");
    let route = s.ok(&["exec", "client", "--", "ip", "route"]);
    assert!(route.contains(&format!("default via {prefix}1")), "{route}");

    // `timeout` rather than wget's own `-T`, with which Debian's busybox 1.35 wget segfaults.
    let get = format!("timeout 5 wget -qO- http://{web}:8080/");
    let page = eventually(30, "web answers the client by pod IP", || {
        let out = s.kubectl(&["exec", "client", "--", "sh", "-c", &get]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success().then_some(text)
    });
    assert!(page.trim_end().ends_with("hello from web"), "{page}");

    // The node reaches its pods too (through the bridge).
    let host = s.host().expect("test host");
    let out = host
        .command("sh")
        .args(["-c", &get.replace("wget", "busybox wget")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.trim_end().ends_with("hello from web"), "{text}");

    // A deleted pod's address is released and not handed out again at once.
    s.ok(&["delete", "pod", "web", "--wait=true"]);
    s.ok(&[
        "run",
        "next",
        "--image=busybox:1.36",
        "--image-pull-policy=IfNotPresent",
        "--",
        "sleep",
        "3600",
    ]);
    let next = s.running_pod_ip("next");
    assert_ne!(next, web);
    assert_ne!(next, client);
}

/// Names of the backends answering `url` from the `client` pod over `n` requests.
fn backends(s: &Server, url: &str, n: usize) -> std::collections::BTreeSet<String> {
    let script = format!("for i in $(seq {n}); do timeout 5 wget -qO- {url}; done");
    let out = s.kubectl(&["exec", "client", "--", "sh", "-c", &script]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn ready_pods(s: &Server, selector: &str) -> Vec<String> {
    let out = s.ok(&[
        "get",
        "pods",
        "-l",
        selector,
        "-o",
        "jsonpath={range .items[?(@.status.podIP)]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
    ]);
    out.lines()
        .filter(|l| l.ends_with(" True"))
        .map(|l| l.split(' ').next().unwrap_or_default().to_string())
        .collect()
}

const HTTPBIN: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: httpbin}
spec:
  replicas: 2
  selector: {matchLabels: {app: httpbin}}
  template:
    metadata: {labels: {app: httpbin}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: busybox:1.36
        imagePullPolicy: IfNotPresent
        command: [sh, -c, 'mkdir /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www']
        ports: [{containerPort: 8080, name: http}]
        readinessProbe:
          exec: {command: [sh, -c, 'test ! -e /tmp/unready']}
          periodSeconds: 1
          failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata: {name: httpbin-svc}
spec:
  type: NodePort
  selector: {app: httpbin}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: httpbin-lb}
spec:
  type: LoadBalancer
  selector: {app: httpbin}
  ports: [{port: 8081, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-hl}
spec:
  clusterIP: None
  selector: {app: web-sts}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web-hl
  replicas: 1
  selector: {matchLabels: {app: web-sts}}
  template:
    metadata: {labels: {app: web-sts}}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        imagePullPolicy: IfNotPresent
        command: [sleep, '3600']
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec:
  type: ExternalName
  externalName: example.org
"#;

/// A stand-in for the node's upstream resolver, on the test host's loopback: answers every
/// A query with 192.0.2.99 (so forwarding is observable and nothing leaves the host).
const FAKE_UPSTREAM: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
while True:
    q, addr = s.recvfrom(512)
    end = 12
    while q[end] != 0:
        end += q[end] + 1
    question = q[12:end + 5]
    answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([192, 0, 2, 99])
    s.sendto(q[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + answer, addr)
"#;

#[test]
fn services_balance_reject_and_resolve_by_name() {
    let s = Server::start_node(&[]);
    let host = s.host().expect("test host");
    let mut upstream = host
        .command("python3")
        .args(["-c", FAKE_UPSTREAM])
        .spawn()
        .expect("fake upstream resolver");
    s.ok_stdin(&["apply", "-f", "-"], HTTPBIN);
    s.ok(&[
        "run",
        "client",
        "--image=busybox:1.36",
        "--image-pull-policy=IfNotPresent",
        "--",
        "sleep",
        "3600",
    ]);
    s.running_pod_ip("client");
    let pods = eventually(120, "two ready httpbin pods", || {
        let p = ready_pods(&s, "app=httpbin");
        (p.len() == 2).then_some(p)
    });
    let all: std::collections::BTreeSet<String> = pods.iter().cloned().collect();

    // By name, through the cluster DNS, both backends answer.
    let by_name = "http://httpbin-svc.default.svc.cluster.local";
    let seen = eventually(60, "both backends by service name", || {
        let seen = backends(&s, by_name, 20);
        (seen == all).then_some(seen)
    });
    assert_eq!(seen, all);
    let cluster_ip = s.ok(&[
        "get",
        "svc",
        "httpbin-svc",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(backends(&s, &format!("http://{cluster_ip}"), 20), all);

    // From the node: NodePort on its address, and the LoadBalancer on the address in its status.
    let node_get = |url: &str| {
        let out = host
            .command("busybox")
            .args(["timeout", "5", "busybox", "wget", "-qO-", url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let node_ip = common::host::NODE_IP;
    let from_node = node_get(&format!("http://{cluster_ip}/"));
    assert!(
        all.contains(&from_node),
        "the node reaches the cluster IP: {from_node:?}"
    );
    let via_node_port = node_get(&format!("http://{node_ip}:30080/"));
    assert!(all.contains(&via_node_port), "{via_node_port:?}");
    let lb_ip = eventually(30, "load balancer ingress", || {
        let ip = s.ok(&[
            "get",
            "svc",
            "httpbin-lb",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ]);
        (!ip.is_empty()).then_some(ip)
    });
    assert_eq!(lb_ip, node_ip);
    let via_lb = node_get(&format!("http://{lb_ip}:8081/"));
    assert!(all.contains(&via_lb), "{via_lb:?}");

    // The rules have upstream's shape.
    let nat = host
        .command("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .unwrap();
    let nat = String::from_utf8_lossy(&nat.stdout);
    let svc_rule = nat
        .lines()
        .find(|l| l.starts_with(&format!("-A KUBE-SERVICES -d {cluster_ip}/32 -p tcp")))
        .unwrap_or_else(|| panic!("no KUBE-SERVICES rule for {cluster_ip}:\n{nat}"));
    let svc_chain = svc_rule.rsplit(' ').next().unwrap();
    assert!(svc_chain.starts_with("KUBE-SVC-"), "{svc_rule}");
    let svc_rules: Vec<&str> = nat
        .lines()
        .filter(|l| l.starts_with(&format!("-A {svc_chain} ")))
        .collect();
    assert_eq!(svc_rules.len(), 3, "{svc_rules:?}");
    assert!(svc_rules[0].contains("-j KUBE-MARK-MASQ"), "{svc_rules:?}");
    assert!(
        svc_rules[1].contains("--mode random --probability 0.5"),
        "{svc_rules:?}"
    );
    let sep = svc_rules[2].rsplit(' ').next().unwrap();
    assert!(
        nat.lines().any(|l| l.starts_with(&format!("-A {sep} "))
            && l.contains("-j DNAT --to-destination 10.42.")),
        "{nat}"
    );
    assert!(
        nat.contains(
            "--dport 30080 -m comment --comment \"default/httpbin-svc:http\" -j KUBE-EXT-"
        ),
        "{nat}"
    );
    for rule in [
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
    ] {
        assert!(nat.contains(rule), "missing {rule}:\n{nat}");
    }
    assert!(
        nat.contains("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"),
        "{nat}"
    );

    // Names: service, headless, StatefulSet pod, ExternalName, unknown, and forwarded ones.
    let lookup = |name: &str| {
        let out = s.kubectl(&["exec", "client", "--", "nslookup", name]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = lookup("httpbin-svc.default.svc.cluster.local");
    assert!(
        ok && out.contains(&format!("Address: {cluster_ip}")),
        "{out}"
    );
    let sts_ip = s.running_pod_ip("web-0");
    let (ok, out) = eventually(60, "headless service name", || {
        let r = lookup("web-hl.default.svc.cluster.local");
        r.1.contains(&sts_ip).then_some(r)
    });
    assert!(ok, "{out}");
    let (ok, out) = lookup("web-0.web-hl.default.svc.cluster.local");
    assert!(ok && out.contains(&format!("Address: {sts_ip}")), "{out}");
    let (_, out) = lookup("ext.default.svc.cluster.local");
    assert!(out.contains("canonical name = example.org"), "{out}");
    let (ok, out) = lookup("nope.default.svc.cluster.local");
    assert!(!ok && out.contains("NXDOMAIN"), "{out}");
    let (ok, out) = lookup("example.org");
    assert!(
        ok && out.contains("192.0.2.99"),
        "forwarded upstream: {out}"
    );
    let resolv = s.ok(&["exec", "client", "--", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(
        resolv.contains("nameserver 10.43.0.10") && resolv.contains("options ndots:5"),
        "{resolv}"
    );

    // A pod failing its readiness probe stops receiving traffic.
    s.ok(&["exec", &pods[0], "--", "touch", "/tmp/unready"]);
    eventually(30, "the unready pod leaves the service", || {
        let seen = backends(&s, by_name, 10);
        (seen.len() == 1 && seen.contains(&pods[1])).then_some(())
    });
    s.ok(&["exec", &pods[0], "--", "rm", "/tmp/unready"]);

    // No endpoints: refused at once, not left to time out; endpoints back: served again.
    s.ok(&["scale", "deployment", "httpbin", "--replicas=0"]);
    eventually(60, "httpbin scaled to zero", || {
        ready_pods(&s, "app=httpbin").is_empty().then_some(())
    });
    let refused = eventually(30, "connections refused", || {
        let out = s.kubectl(&[
            "exec",
            "client",
            "--",
            "sh",
            "-c",
            &format!("timeout 5 wget -qO- http://{cluster_ip}/; echo rc=$?"),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        text.contains("Connection refused").then_some(text)
    });
    assert!(
        refused.contains("rc=1"),
        "wget failed by itself, not by timeout: {refused}"
    );
    s.ok(&["scale", "deployment", "httpbin", "--replicas=2"]);
    eventually(120, "service restored", || {
        (backends(&s, by_name, 10).len() == 2).then_some(())
    });
    let _ = upstream.kill();
    let _ = upstream.wait();
}

#[test]
fn host_ports_and_host_network_pods() {
    let s = Server::start_node(&[]);
    let host = s.host().expect("test host");
    s.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hp}
spec:
  containers:
  - name: web
    image: busybox:1.36
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'mkdir /www && echo via hostPort > /www/index.html && exec httpd -f -p 8080 -h /www']
    ports: [{containerPort: 8080, hostPort: 8088}]
---
apiVersion: v1
kind: Pod
metadata: {name: hn}
spec:
  hostNetwork: true
  containers:
  - name: web
    image: busybox:1.36
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'mkdir /www && echo via host network > /www/index.html && exec httpd -f -p 8099 -h /www']
    readinessProbe:
      httpGet: {port: 8099, path: /}
      periodSeconds: 1
"#,
    );
    let node_ip = common::host::NODE_IP;
    let get = |url: String| {
        move || {
            let out = host
                .command("busybox")
                .args(["timeout", "5", "busybox", "wget", "-qO-", &url])
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (!text.is_empty()).then_some(text)
        }
    };
    assert_eq!(
        eventually(90, "hostPort", get(format!("http://{node_ip}:8088/"))),
        "via hostPort"
    );
    assert_eq!(
        eventually(
            90,
            "hostNetwork pod",
            get(format!("http://{node_ip}:8099/"))
        ),
        "via host network"
    );
    // The host-network pod reports the node's address and passes its probe on the node's port.
    assert_eq!(s.running_pod_ip("hn"), node_ip);
    eventually(60, "host-network pod ready", || {
        let out = s.ok(&[
            "get",
            "pod",
            "hn",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (out == "True").then_some(())
    });
}

#[test]
fn cleanup_removes_only_kinglet_network_state() {
    let mut s = Server::start_node(&[]);
    let host = s.host().expect("test host");
    // Someone else's rules, which must survive.
    let foreign = host
        .command("sh")
        .args(["-c", "iptables -N OTHER-CHAIN && iptables -A OTHER-CHAIN -j RETURN && iptables -t nat -A POSTROUTING -s 198.51.100.0/24 -j RETURN"])
        .status()
        .unwrap();
    assert!(foreign.success());
    eventually(60, "service rules installed", || {
        let out = host.command("iptables-save").output().ok()?;
        let t = String::from_utf8_lossy(&out.stdout).into_owned();
        (t.contains("KUBE-SERVICES") && t.contains("KINGLET-POSTRTG")).then_some(())
    });
    s.stop(false);
    let host = s.host().expect("test host");
    host.kinglet_cleanup(&[]);
    let saved = String::from_utf8_lossy(&host.command("iptables-save").output().unwrap().stdout)
        .into_owned();
    assert!(
        !saved.contains("KUBE-") && !saved.contains("KINGLET-"),
        "{saved}"
    );
    assert!(
        saved.contains(":OTHER-CHAIN") && saved.contains("-s 198.51.100.0/24 -j RETURN"),
        "{saved}"
    );
    let links = String::from_utf8_lossy(
        &host
            .command("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        !links.contains("cni0") && !links.contains("kinglet-dns"),
        "{links}"
    );
    let addrs = String::from_utf8_lossy(
        &host
            .command("ip")
            .args(["-o", "addr"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        !addrs.contains("10.43.0.10") && addrs.contains(common::host::NODE_IP),
        "{addrs}"
    );
}

/// `iptables-save` of the node without counters and comments lines: the rules themselves.
fn saved_rules(host: &common::host::TestHost) -> String {
    let out = host.command("iptables-save").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.strip_prefix(':') {
            // Chain declarations carry packet counters.
            Some(decl) => decl.split(' ').take(2).collect::<Vec<_>>().join(" "),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn network_policy_and_restart() {
    let mut s = Server::start_node(&[]);
    s.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers:
  - name: web
    image: busybox:1.36
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'mkdir /www && echo hello > /www/index.html && (sleep 100000 | nc -l -p 9000 > /tmp/got &) && exec httpd -f -p 8080 -h /www']
    ports: [{containerPort: 8080, name: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: stream, port: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: friend, labels: {role: friend}}
spec:
  containers: [{name: c, image: busybox:1.36, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}]
---
apiVersion: v1
kind: Pod
metadata: {name: stranger}
spec:
  containers: [{name: c, image: busybox:1.36, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}]
"#,
    );
    let web = s.running_pod_ip("web");
    s.running_pod_ip("friend");
    s.running_pod_ip("stranger");
    let fetch = |s: &Server, from: &str| {
        let out = s.kubectl(&[
            "exec",
            from,
            "--",
            "sh",
            "-c",
            &format!("timeout 5 wget -qO- http://{web}:8080/ 2>&1; echo rc=$?"),
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eventually(30, "both clients reach web before any policy", || {
        (fetch(&s, "friend").contains("hello") && fetch(&s, "stranger").contains("hello"))
            .then_some(())
    });

    // A long-lived connection through the service (by name), to check it survives a restart.
    s.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: streamer, labels: {role: friend}}
spec:
  containers:
  - name: c
    image: busybox:1.36
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'i=0; while true; do echo $i; i=$((i+1)); sleep 0.2; done | nc web 9000']
"#,
    );
    let received = |s: &Server| -> usize {
        let out = s.kubectl(&["exec", "web", "--", "sh", "-c", "wc -l < /tmp/got"]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    // (busybox nc hangs up when its stdin ends: the listener reads from a sleep.)
    eventually(30, "the stream flows", || (received(&s) > 5).then_some(()));

    // Ingress to web only from role=friend on the named port.
    s.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-friends}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {role: friend}}}]
    ports: [{port: http}, {port: 9000}]
"#,
    );
    let blocked = eventually(30, "the stranger is blocked", || {
        let out = fetch(&s, "stranger");
        (!out.contains("hello")).then_some(out)
    });
    assert!(
        blocked.contains("rc=1"),
        "refused, not timed out: {blocked}"
    );
    assert!(fetch(&s, "friend").contains("hello"));
    let filter = s
        .host()
        .unwrap()
        .command("iptables")
        .args(["-S"])
        .output()
        .unwrap();
    let filter = String::from_utf8_lossy(&filter.stdout).into_owned();
    assert!(
        filter.contains(&format!("-A KINGLET-NP-FWD -d {web}/32 -j KINGLET-NPI-")),
        "{filter}"
    );

    // kill -9 and restart: rules come back unchanged, the connection keeps flowing.
    eventually(30, "rules settled", || {
        let a = saved_rules(s.host().unwrap());
        std::thread::sleep(std::time::Duration::from_secs(1));
        (a == saved_rules(s.host().unwrap())).then_some(())
    });
    let before = saved_rules(s.host().unwrap());
    let count = received(&s);
    s.restart(true);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while received(&s) <= count + 5 {
        if std::time::Instant::now() > deadline {
            let host = s.host().unwrap();
            let ct = host.command("conntrack").args(["-L"]).output().unwrap();
            panic!(
                "the stream stopped after the restart ({count} -> {}):\n{}\nconntrack:\n{}\nrules diff: {}\nlog:\n{}",
                received(&s),
                s.ok(&["get", "pods", "-o", "wide"]),
                String::from_utf8_lossy(&ct.stdout),
                saved_rules(host) != before,
                s.log()
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = saved_rules(s.host().unwrap());
        if now == before {
            break;
        }
        if std::time::Instant::now() > deadline {
            let gone: Vec<&str> = before
                .lines()
                .filter(|l| !now.lines().any(|n| n == *l))
                .collect();
            let new: Vec<&str> = now
                .lines()
                .filter(|l| !before.lines().any(|b| b == *l))
                .collect();
            panic!("rules changed by the restart: gone {gone:#?}\nnew {new:#?}\n{now}");
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(fetch(&s, "stranger").contains("rc=1"));
    assert!(fetch(&s, "friend").contains("hello"));
}
