//! A cluster across machines (issue 21): a server with its node and two agents, each in a test
//! host of its own, joined by a switch (`common::cluster`). Pods on different nodes reach each
//! other over the VXLAN overlay by pod IP, without NAT.

mod common;

use std::collections::HashSet;

use common::cluster::Cluster;
use common::{PortForward, eventually};
use kinglet_network::overlay;

/// What a node published for the overlay, with its range.
#[derive(Debug)]
struct Vtep {
    pod_cidr: String,
    mac: String,
    public_ip: String,
}

/// Every node's VTEP, in host order, once all have published theirs.
fn vteps(c: &Cluster) -> Vec<Vtep> {
    eventually(60, "every node's podCIDR and VTEP annotations", || {
        let out = c.kubectl(&["get", "nodes", "-o", "json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (0..c.len())
            .map(|i| {
                let node = list["items"]
                    .as_array()?
                    .iter()
                    .find(|n| n["metadata"]["name"] == c.node(i).as_str())?;
                let a = &node["metadata"]["annotations"];
                Some(Vtep {
                    pod_cidr: node["spec"]["podCIDR"].as_str()?.to_string(),
                    mac: a[overlay::VTEP_MAC_ANNOTATION].as_str()?.to_string(),
                    public_ip: a[overlay::PUBLIC_IP_ANNOTATION].as_str()?.to_string(),
                })
            })
            .collect()
    })
}

/// Host `i`'s overlay routes, neighbour and FDB entries, as `ip` and `bridge` show them.
fn entries(c: &Cluster, i: usize) -> String {
    let dev = overlay::DEVICE;
    [
        c.run_in(i, "ip", &["route", "show", "dev", dev]),
        c.run_in(i, "ip", &["neigh", "show", "dev", dev]),
        c.run_in(i, "bridge", &["fdb", "show", "dev", dev]),
    ]
    .join("")
}

/// A node's pod range is given once: an agent cannot take another's with its credentials
/// (NodeRestriction), and nobody can change it (validation).
fn ranges_stay_put(c: &Cluster, vteps: &[Vtep]) {
    let agent = c.agents[0].data_dir().join("agent");
    let admin = std::fs::read_to_string(&c.server.kubeconfig).expect("kubeconfig");
    let server = (admin.lines())
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("server in kubeconfig");
    let kubeconfig = c.agents[0].dir.path().join("node.kubeconfig");
    let path = |f: &str| agent.join(f).display().to_string();
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority: {}\n    server: {server}\n  name: c\n\
             contexts:\n- context:\n    cluster: c\n    user: u\n  name: c\ncurrent-context: c\n\
             users:\n- name: u\n  user:\n    client-certificate: {}\n    client-key: {}\n",
            path("server-ca.crt"),
            path("client-kubelet.crt"),
            path("client-kubelet.key"),
        ),
    )
    .expect("node kubeconfig");
    let stolen = &vteps[2].pod_cidr;
    let patch = format!(r#"{{"spec": {{"podCIDR": "{stolen}", "podCIDRs": ["{stolen}"]}}}}"#);
    let out = (c.server.command(common::kubectl_default()))
        .env("KUBECONFIG", &kubeconfig)
        .args(["patch", "node", &c.node(1), "--type=merge", "-p", &patch])
        .output()
        .expect("kubectl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "node-1 took {stolen}");
    assert!(
        err.contains("is forbidden") && err.contains("spec.podCIDR"),
        "{err}"
    );
    // Not even the admin: 422.
    let out = c.kubectl(&["patch", "node", &c.node(1), "--type=merge", "-p", &patch]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the admin moved node-1 to {stolen}");
    assert!(
        err.contains("is invalid") && err.contains("may not change podCIDR"),
        "{err}"
    );
    let kept = c.ok(&["get", "node", &c.node(1), "-o", "jsonpath={.spec.podCIDR}"]);
    assert_eq!(kept, vteps[1].pod_cidr);
}

/// The network address of a podCIDR (the node's VTEP address).
fn vtep_ip(cidr: &str) -> String {
    cidr.parse::<ipnet::Ipv4Net>()
        .unwrap()
        .network()
        .to_string()
}

/// Fetches the receiver's CGI from pod `from`: what it answers is the address it saw.
fn seen_by_rx(c: &Cluster, from: &str, rx: &str) -> String {
    let get = format!("timeout 5 wget -qO- http://{rx}:8080/cgi-bin/peer");
    eventually(30, &format!("{from} reaches rx by pod IP"), || {
        let out = c.kubectl(&["exec", from, "--", "sh", "-c", &get]);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !text.is_empty()).then_some(text)
    })
}

#[test]
fn three_nodes_join_and_pods_talk_across_the_overlay() {
    let mut c = Cluster::start(2);

    // Three Ready nodes at their hosts' addresses, with distinct pod ranges.
    let wide = c.ok(&["get", "nodes", "-o", "wide", "--no-headers"]);
    assert_eq!(wide.lines().count(), 3, "{wide}");
    for i in 0..3 {
        let row = (wide.lines())
            .find(|l| l.starts_with(&format!("{} ", c.node(i))))
            .unwrap_or_else(|| panic!("no {} in\n{wide}", c.node(i)));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[1], "Ready", "{row}");
        assert_eq!(cols[5], c.ip(i), "INTERNAL-IP: {row}");
    }
    let vteps = vteps(&c);
    let ranges: HashSet<&str> = vteps.iter().map(|v| v.pod_cidr.as_str()).collect();
    assert_eq!(ranges.len(), 3, "{vteps:?}");
    ranges_stay_put(&c, &vteps);

    // Each node made its device on the underlay and published it as it is.
    for (i, v) in vteps.iter().enumerate() {
        assert_eq!(v.public_ip, c.ip(i), "{v:?}");
        let link = c.run_in(i, "ip", &["-d", "link", "show", overlay::DEVICE]);
        for want in [
            &format!("link/ether {} ", v.mac),
            &format!("local {} ", c.ip(i)),
            "vxlan id 1 ",
            "dstport 8472",
            "nolearning",
            // The switch's ports are 1500: 50 less for VXLAN.
            "mtu 1450",
        ] {
            assert!(link.contains(want), "host {i}: {want:?} not in {link}");
        }
    }
    // Every host routes the other nodes' ranges over the overlay, to their MAC and address,
    // and nothing of its own.
    for i in 0..3 {
        eventually(30, &format!("host {i}'s overlay entries"), || {
            let shown = entries(&c, i);
            (0..3)
                .filter(|j| *j != i)
                .all(|j| {
                    let v = &vteps[j];
                    let vtep = vtep_ip(&v.pod_cidr);
                    shown.contains(&format!("{} via {vtep} onlink", v.pod_cidr))
                        && shown.contains(&format!("{vtep} lladdr {} PERMANENT", v.mac))
                        && shown.contains(&format!("{} dst {} self permanent", v.mac, v.public_ip))
                })
                .then_some(())
        });
        let shown = entries(&c, i);
        assert!(!shown.contains(&vteps[i].mac), "host {i}:\n{shown}");
        assert!(!shown.contains(&vteps[i].pod_cidr), "host {i}:\n{shown}");
    }

    // The agents' machines take no connection to the kubelet port (a firewall, or NAT, in
    // front of a device): logs, exec and port-forward below go through their tunnels.
    for i in [1, 2] {
        c.run_in(
            i,
            "iptables",
            &[
                "-I", "INPUT", "-p", "tcp", "--dport", "10250", "-j", "REJECT",
            ],
        );
        let reach = format!("exec 3<>/dev/tcp/{}/10250", c.ip(i));
        let open = c
            .in_host(0, "timeout")
            .args(["5", "bash", "-c", &reach])
            .stderr(std::process::Stdio::null())
            .status()
            .expect("bash");
        assert!(!open.success(), "10250 of host {i} answers");
    }

    // A receiver on node-1 answers, and logs (a CGI's stderr is httpd's), the address each
    // request came from.
    let cgi = [
        "mkdir -p /www/cgi-bin",
        r#"printf '%s\n' '#!/bin/sh' 'echo "peer $REMOTE_ADDR" >&2' 'printf "Content-Type: text/plain\r\n\r\n%s\n" "$REMOTE_ADDR"' > /www/cgi-bin/peer"#,
        "chmod +x /www/cgi-bin/peer",
        // IPv4 only, so the address is not shown IPv4-mapped.
        "exec httpd -f -p 0.0.0.0:8080 -h /www",
    ]
    .join(" && ");
    let rx = c.run_pod("rx", 1, &["sh", "-c", &cgi]);
    let tx0 = c.run_pod("tx0", 0, &["sleep", "3600"]);
    let tx2 = c.run_pod("tx2", 2, &["sleep", "3600"]);
    for (ip, i) in [(&rx, 1), (&tx0, 0), (&tx2, 2)] {
        let prefix = vteps[i].pod_cidr.trim_end_matches("0/24");
        assert!(ip.starts_with(prefix), "{ip} not in {}", vteps[i].pod_cidr);
    }
    // Each sender's own pod IP reaches the receiver: no NAT on the way.
    assert_eq!(seen_by_rx(&c, "tx2", &rx), tx2);
    assert_eq!(seen_by_rx(&c, "tx0", &rx), tx0);
    eventually(30, "rx logs both senders' pod IPs", || {
        let logs = c.ok(&["logs", "rx"]);
        (logs.contains(&format!("peer {tx2}\n")) && logs.contains(&format!("peer {tx0}\n")))
            .then_some(())
    });
    // And the other way, node-1 to node-2.
    let ping = c.kubectl(&["exec", "rx", "--", "ping", "-c", "1", "-W", "5", &tx2]);
    assert!(
        ping.status.success(),
        "rx -> tx2: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    // Pods take the overlay's MTU.
    let mtu = c.ok(&["exec", "rx", "--", "cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(mtu.trim(), "1450");
    // port-forward to node-1's pod, fetched from the server's loopback.
    let port = common::free_port();
    let out = c.server.dir.path().join("port-forward.out");
    let pf = PortForward::start(&c.server, "pod/rx", &format!("{port}:8080"), &out);
    let got = c
        .in_host(0, common::images::busybox())
        .args([
            "wget",
            "-qO-",
            &format!("http://127.0.0.1:{port}/cgi-bin/peer"),
        ])
        .output()
        .expect("wget");
    let peer = String::from_utf8_lossy(&got.stdout);
    assert!(
        peer.trim().parse::<std::net::Ipv4Addr>().is_ok(),
        "{peer}{}",
        std::fs::read_to_string(&pf.out).unwrap_or_default()
    );
    drop(pf);

    // node-2's machine goes and the node is deleted: the others drop its route, neighbour and
    // FDB entry, and keep talking to each other.
    let gone = &vteps[2];
    c.agents[1].stop(true);
    c.ok(&["delete", "node", &c.node(2)]);
    for i in [0, 1] {
        eventually(30, &format!("host {i} forgets node-2"), || {
            let shown = entries(&c, i);
            let forgotten = !shown.contains(&gone.pod_cidr)
                && !shown.contains(&vtep_ip(&gone.pod_cidr))
                && !shown.contains(&gone.mac)
                && !shown.contains(&gone.public_ip);
            forgotten.then_some(())
        });
        let shown = entries(&c, i);
        let other = &vteps[1 - i];
        assert!(shown.contains(&other.mac), "host {i}:\n{shown}");
        assert!(shown.contains(&other.pod_cidr), "host {i}:\n{shown}");
    }
    assert_eq!(seen_by_rx(&c, "tx0", &rx), tx0);
}

/// A pod as the tests here look at it.
#[derive(Debug, Clone)]
struct PodView {
    name: String,
    node: String,
    ip: String,
    running: bool,
    deleting: bool,
}

/// The pods labelled `selector`.
fn pods(c: &Cluster, selector: &str) -> Vec<PodView> {
    let out = c.ok(&["get", "pods", "-l", selector, "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("pod list");
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    (list["items"].as_array().into_iter().flatten())
        .map(|p| PodView {
            name: s(&p["metadata"]["name"]),
            node: s(&p["spec"]["nodeName"]),
            ip: s(&p["status"]["podIP"]),
            running: p["status"]["phase"] == "Running",
            deleting: !p["metadata"]["deletionTimestamp"].is_null(),
        })
        .collect()
}

/// Waits for `n` running pods labelled `selector`, not being deleted, with an IP each.
fn running(c: &Cluster, selector: &str, n: usize, secs: u64) -> Vec<PodView> {
    eventually(secs, &format!("{n} running pods {selector}"), || {
        let live: Vec<PodView> = (pods(c, selector).into_iter())
            .filter(|p| !p.deleting)
            .collect();
        (live.len() == n && live.iter().all(|p| p.running && !p.ip.is_empty())).then_some(live)
    })
}

/// The distinct lines a fetch loop printed: which pods answered.
fn answers(out: &std::process::Output) -> HashSet<String> {
    (String::from_utf8_lossy(&out.stdout).lines())
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// A shell loop fetching `url` `n` times with busybox's wget, 5 s each (`bb`: "busybox " on
/// a host, where busybox's applets are not on PATH; "" in a pod).
fn fetch_loop(bb: &str, url: &str, n: usize) -> String {
    format!("for i in $(seq {n}); do {bb}timeout 5 {bb}wget -qO- {url}; done")
}

/// Everything a command printed.
fn printed(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// What pod `from` gets from `url`, then `rc=<wget's exit code>`.
fn fetch_from(c: &Cluster, from: &str, url: &str) -> String {
    let script = format!("timeout 5 wget -qO- {url} 2>&1; echo rc=$?");
    let out = c.kubectl(&["exec", from, "--", "sh", "-c", &script]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pods that serve their own name over HTTP on 8080, one per node (required anti-affinity on
/// the hostname), behind a ClusterIP Service and a headless one.
const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: web}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: web
        image: busybox:1.36
        imagePullPolicy: IfNotPresent
        command: [sh, -c, 'mkdir /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www']
        ports: [{containerPort: 8080, name: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-hl}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 8080}]
"#;

/// Ingress to the web pods only from pods labelled `access: "true"`.
const WEB_POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-access}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {access: "true"}}}]
    ports: [{port: http}]
"#;

#[test]
fn spread_pods_serve_a_service_by_name_from_every_node_under_a_network_policy() {
    let c = Cluster::start(2);
    c.ok_stdin(&["apply", "-f", "-"], WEB);
    // Clients: on node-0 and node-2 without the label the policy asks for, on node-1 with it.
    for i in 0..3 {
        c.run_pod(&format!("c{i}"), i, &["sleep", "3600"]);
    }
    c.ok(&["label", "pod", "c1", "access=true"]);

    // Anti-affinity: one web pod per node.
    let web = running(&c, "app=web", 3, 90);
    let nodes: HashSet<&str> = web.iter().map(|p| p.node.as_str()).collect();
    let want: HashSet<String> = (0..3).map(|i| c.node(i)).collect();
    assert_eq!(nodes, want.iter().map(String::as_str).collect(), "{web:?}");
    let on = |i: usize| web.iter().find(|p| p.node == c.node(i)).unwrap();
    let names: HashSet<String> = web.iter().map(|p| p.name.clone()).collect();

    // The Service balances over the endpoints of all nodes, from every node's host and from a
    // pod on every node.
    let cluster_ip = c.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let url = format!("http://{cluster_ip}/");
    for i in 0..3 {
        eventually(
            60,
            &format!("host {i} reaches every web pod by {url}"),
            || {
                let script = fetch_loop("busybox ", &url, 30);
                let out = c.in_host(i, "sh").args(["-c", &script]).output().unwrap();
                (answers(&out) == names).then_some(())
            },
        );
        eventually(
            60,
            &format!("pod c{i} reaches every web pod by {url}"),
            || {
                let script = fetch_loop("", &url, 30);
                let out = c.kubectl(&["exec", &format!("c{i}"), "--", "sh", "-c", &script]);
                (answers(&out) == names).then_some(())
            },
        );
    }

    // Cluster DNS answers on every node: the node's own address and a pod's resolver there.
    let lookup =
        |pod: &str, name: &str| printed(&c.kubectl(&["exec", pod, "--", "nslookup", name]));
    let service = "web.default.svc.cluster.local";
    let headless = "web-hl.default.svc.cluster.local";
    for i in 0..3 {
        let pod = format!("c{i}");
        let out = eventually(30, &format!("{pod} resolves {service}"), || {
            let out = lookup(&pod, service);
            out.contains(&format!("Address: {cluster_ip}"))
                .then_some(out)
        });
        assert!(!out.contains("NXDOMAIN"), "{out}");
        let out = eventually(30, &format!("{pod} resolves {headless}"), || {
            let out = lookup(&pod, headless);
            web.iter()
                .all(|p| out.contains(&format!("Address: {}", p.ip)))
                .then_some(out)
        });
        assert!(!out.contains(&cluster_ip), "{out}");
        let host_dns = printed(
            &(c.in_host(i, "busybox")
                .args(["nslookup", service, "10.43.0.10"]))
            .output()
            .unwrap(),
        );
        assert!(
            host_dns.contains(&format!("Address: {cluster_ip}")),
            "host {i}: {host_dns}"
        );
    }
    // By name, from a pod: the name resolves on its node and the Service answers.
    let by_name = format!("http://{service}/");
    let seen = answers(&c.kubectl(&[
        "exec",
        "c2",
        "--",
        "sh",
        "-c",
        &fetch_loop("", &by_name, 30),
    ]));
    assert_eq!(seen, names, "by name from c2");

    // A NetworkPolicy holds across nodes: only c1 (node-1, labelled) gets to the web pods.
    let direct = |i: usize| format!("http://{}:8080/", on(i).ip);
    c.ok_stdin(&["apply", "-f", "-"], WEB_POLICY);
    // c2 on node-2 to node-0's web pod, c0 on node-0 to node-2's: refused where the pod runs
    // (REJECT: refused at once, not left to time out).
    for (from, to) in [("c2", 0), ("c0", 2), ("c2", 1)] {
        let out = eventually(
            30,
            &format!("{from} refused by node-{to}'s web pod"),
            || {
                let out = fetch_from(&c, from, &direct(to));
                (!out.contains(&on(to).name)).then_some(out)
            },
        );
        assert!(
            out.contains("rc=1") && out.contains("refused"),
            "{from} -> node-{to}: {out}"
        );
    }
    // The labelled pod reaches every node's web pod, directly and through the Service.
    for i in 0..3 {
        let out = fetch_from(&c, "c1", &direct(i));
        assert!(out.contains(&on(i).name), "c1 -> node-{i}: {out}");
    }
    let seen = answers(&c.kubectl(&["exec", "c1", "--", "sh", "-c", &fetch_loop("", &url, 30)]));
    assert_eq!(seen, names, "c1 through the Service under the policy");
    // Unlabelled pods get nothing through the Service either.
    let seen = answers(&c.kubectl(&["exec", "c2", "--", "sh", "-c", &fetch_loop("", &url, 10)]));
    assert!(
        seen.is_empty(),
        "c2 through the Service under the policy: {seen:?}"
    );
    // Without the policy, c2 gets through again.
    c.ok(&["delete", "networkpolicy", "web-access"]);
    eventually(30, "c2 reaches node-0's web pod without the policy", || {
        fetch_from(&c, "c2", &direct(0))
            .contains(&on(0).name)
            .then_some(())
    });
}

/// A DaemonSet, and a Deployment that prefers node-2 but leaves a node 5 s after it becomes
/// unreachable.
const LIFECYCLE: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: everywhere}
spec:
  selector: {matchLabels: {app: everywhere}}
  template:
    metadata: {labels: {app: everywhere}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: c, image: busybox:1.36, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}
---
apiVersion: v1
kind: Service
metadata: {name: everywhere}
spec:
  selector: {app: everywhere}
  ports: [{port: 80}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: mover}
spec:
  replicas: 2
  selector: {matchLabels: {app: mover}}
  template:
    metadata: {labels: {app: mover}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        nodeAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            preference:
              matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [node-2]}]
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 5}
      containers:
      - {name: c, image: busybox:1.36, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}
"#;

/// The status of node `name`'s Ready condition.
fn ready(c: &Cluster, name: &str) -> String {
    c.server.node_ready(name)
}

/// The status of pod `name`'s Ready condition.
fn pod_ready(c: &Cluster, name: &str) -> String {
    c.ok(&[
        "get",
        "pod",
        name,
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
    ])
}

/// Whether Service `service`'s EndpointSlices have a ready endpoint for pod `pod` (an
/// endpoint without the condition counts as ready, as the API defines it).
fn endpoint_ready(c: &Cluster, service: &str, pod: &str) -> bool {
    let label = format!("kubernetes.io/service-name={service}");
    let out = c.ok(&["get", "endpointslices", "-l", &label, "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("EndpointSlice list");
    (list["items"].as_array().into_iter().flatten())
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
        .any(|e| e["targetRef"]["name"] == pod && e["conditions"]["ready"] != false)
}

/// Pod names by node.
fn by_node(pods: &[PodView]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut m = std::collections::BTreeMap::<String, Vec<String>>::new();
    for p in pods {
        m.entry(p.node.clone()).or_default().push(p.name.clone());
    }
    m
}

#[test]
fn daemonsets_cover_every_node_and_a_lost_node_is_evicted_and_comes_back() {
    let mut c = Cluster::start(2);
    c.ok_stdin(&["apply", "-f", "-"], LIFECYCLE);

    // A DaemonSet pod on every node.
    let ds = running(&c, "app=everywhere", 3, 90);
    let per_node = by_node(&ds);
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(
        (0..3).all(|i| per_node.contains_key(&c.node(i))),
        "{per_node:?}"
    );
    let ds2 = per_node[&c.node(2)][0].clone();
    // Both Deployment pods where they prefer to be.
    let movers = running(&c, "app=mover", 2, 90);
    assert!(movers.iter().all(|p| p.node == c.node(2)), "{movers:?}");

    // node-2's machine loses power: the node turns NotReady (Ready Unknown) after the grace
    // period of 40 s, checked every 5 s.
    let lost = std::time::Instant::now();
    c.agents[1].power_off();
    let node2 = c.node(2);
    eventually(70, "node-2 NotReady", || {
        (ready(&c, &node2) == "Unknown").then_some(())
    });
    let not_ready = lost.elapsed();
    println!(
        "node-2 NotReady {:.1} s after its agent died",
        not_ready.as_secs_f64()
    );
    // The last lease renewal (every 10 s) was up to 10 s before the power cut.
    assert!(not_ready.as_secs() >= 29, "too early: {not_ready:?}");
    assert!(not_ready.as_secs() <= 60, "too late: {not_ready:?}");
    // Its pods tolerate the unreachable taint for 5 s: not evicted yet.
    let held = pods(&c, "app=mover");
    assert!(
        held.iter().all(|p| p.node == node2 && !p.deleting),
        "evicted before the toleration ran out: {held:?}"
    );
    let wide = c.ok(&["get", "node", &node2, "--no-headers"]);
    assert!(wide.contains(" NotReady "), "{wide}");
    // The others stay Ready.
    for i in [0, 1] {
        assert_eq!(ready(&c, &c.node(i)), "True", "node-{i}");
    }
    // The pods left on node-2 are not Ready (upstream's MarkPodsNotReady), so the Service
    // stops sending traffic to them; those on the other nodes still get it.
    eventually(10, "node-2's DaemonSet pod not Ready", || {
        (pod_ready(&c, &ds2) == "False").then_some(())
    });
    eventually(10, "node-2's endpoint not ready", || {
        (!endpoint_ready(&c, "everywhere", &ds2)).then_some(())
    });
    for i in [0, 1] {
        let pod = &per_node[&c.node(i)][0];
        assert_eq!(pod_ready(&c, pod), "True", "{pod} on node-{i}");
        assert!(endpoint_ready(&c, "everywhere", pod), "{pod} on node-{i}");
    }

    // 5 s after the unreachable taint, the Deployment's pods are evicted and replaced on the
    // other nodes; the DaemonSet's pod tolerates the taint and stays, not replaced.
    let replaced = eventually(40, "the mover pods replaced off node-2", || {
        let live: Vec<PodView> = (pods(&c, "app=mover").into_iter())
            .filter(|p| !p.deleting && p.node != node2)
            .collect();
        (live.len() == 2 && live.iter().all(|p| p.running)).then_some(live)
    });
    println!(
        "mover pods replaced {:.1} s after the agent died",
        lost.elapsed().as_secs_f64()
    );
    assert!(
        replaced
            .iter()
            .all(|p| movers.iter().all(|m| m.name != p.name)),
        "{replaced:?}"
    );
    let all_movers = pods(&c, "app=mover");
    let stuck: Vec<&PodView> = all_movers.iter().filter(|p| p.node == node2).collect();
    assert!(
        stuck.len() == 2 && stuck.iter().all(|p| p.deleting),
        "{all_movers:?}"
    );
    let ds_now = pods(&c, "app=everywhere");
    assert_eq!(ds_now.len(), 3, "{ds_now:?}");
    assert!(
        ds_now.iter().any(|p| p.name == ds2 && !p.deleting),
        "{ds_now:?}"
    );

    // Power back: the node is Ready, runs its DaemonSet pod again (the same pod), and the
    // pods evicted from it are gone for good, not run again.
    c.agents[1].power_on();
    c.wait_ready();
    let ds = running(&c, "app=everywhere", 3, 60);
    assert!(
        ds.iter().any(|p| p.name == ds2 && p.node == node2),
        "{ds:?}"
    );
    // (Its status said Running all along: a command run in it shows it runs again.)
    eventually(60, "node-2's DaemonSet pod runs again", || {
        let out = c.kubectl(&["exec", &ds2, "--", "cat", "/proc/1/cmdline"]);
        String::from_utf8_lossy(&out.stdout)
            .starts_with("sleep")
            .then_some(())
    });
    // Its kubelet sets its pod Ready again, and the Service sends it traffic again.
    eventually(
        60,
        "node-2's DaemonSet pod Ready and its endpoint ready",
        || (pod_ready(&c, &ds2) == "True" && endpoint_ready(&c, "everywhere", &ds2)).then_some(()),
    );
    // A kubelet that was never down puts back a status someone else changed (upstream's
    // status manager reconciles with the API server's copy): node-1's pod marked not Ready.
    let ds1 = &per_node[&c.node(1)][0];
    let not_ready = r#"{"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#;
    c.ok(&["patch", "pod", ds1, "--subresource=status", "-p", not_ready]);
    eventually(10, "node-1's kubelet sets its pod Ready again", || {
        (pod_ready(&c, ds1) == "True").then_some(())
    });
    eventually(60, "the evicted pods gone from node-2", || {
        let all = pods(&c, "app=mover");
        (all.len() == 2 && all.iter().all(|p| p.node != node2 && !p.deleting)).then_some(())
    });
    // The node controller's next pass (every 5 s) takes the taints away.
    eventually(15, "node-2's unreachable taints gone", || {
        let taints = c.ok(&["get", "node", &node2, "-o", "jsonpath={.spec.taints}"]);
        (!taints.contains("unreachable")).then_some(())
    });
}
