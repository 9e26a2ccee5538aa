//! A Service whose Deployment is scaled to zero and back, many times (issue 19): while nothing
//! serves, a connection is refused, not left to time out; once the rollout is done, every
//! request is served at once. Both went wrong intermittently: the pod bridge's MAC followed its
//! lowest port, so removing that pod left the client with a gateway MAC nobody owned, and the
//! ICMP redirects the node sent for service traffic used up the budget of the port-unreachable
//! the REJECT rule owes the client. On failure the message carries the node's flows, rules,
//! links, ICMP counters and the client's neighbours.

mod common;

use std::time::{Duration, Instant};

use common::{Server, eventually};

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: busybox:1.36
        imagePullPolicy: IfNotPresent
        command: [sh, -c, 'mkdir /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www']
        ports: [{containerPort: 8080, name: http}]
        readinessProbe:
          exec: {command: [sh, -c, 'wget -qO /dev/null http://127.0.0.1:8080/']}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 0
  containers: [{name: c, image: busybox:1.36, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}]
"#;

/// How many scale-to-zero-and-back cycles the test runs.
const CYCLES: usize = 10;
/// How long after each rollout every request must be served.
const SERVED_FOR: Duration = Duration::from_secs(4);

/// One request from the client to the Service by name, with the shell's view of it.
struct Attempt {
    rc: String,
    output: String,
    took: Duration,
}

impl Attempt {
    fn served(&self) -> bool {
        self.rc == "0" && !self.output.trim().is_empty()
    }
}

/// `wget` of the Service by name from the client pod, killed after 3 s (`timeout` rather than
/// wget's `-T`, with which Debian's busybox 1.35 wget segfaults).
fn request(s: &Server) -> Attempt {
    let started = Instant::now();
    let out = s.kubectl(&[
        "exec",
        "client",
        "--",
        "sh",
        "-c",
        "timeout 3 wget -qO- http://web/ 2>&1; echo rc=$?",
    ]);
    let took = started.elapsed();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let (output, rc) = match text.rsplit_once("rc=") {
        Some((o, rc)) => (o.to_string(), rc.trim().to_string()),
        None => (text.clone(), "none".to_string()),
    };
    Attempt { rc, output, took }
}

/// What the node knows about the flows, rules and neighbours, for a failure message.
fn node_state(s: &Server) -> String {
    let host = s.host().expect("test host");
    let mut out = String::new();
    for cmd in [
        // (Without the flows of the API server and the kubelet.)
        "conntrack -L 2>&1 | grep -v -e 'dport=6443 ' -e 'dport=10250 ' -e 'dport=10248 '",
        "iptables-save 2>&1 | grep -v '^#'",
        "ip neigh show 2>&1",
        "ip -br link 2>&1",
        "grep Icmp: /proc/net/snmp",
    ] {
        let o = host.command("sh").args(["-c", cmd]).output();
        let text = o
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| e.to_string());
        out.push_str(&format!("--- {cmd}\n{text}"));
    }
    let neigh = s.kubectl(&["exec", "client", "--", "ip", "neigh"]);
    out.push_str(&format!(
        "--- the client's neighbours\n{}",
        String::from_utf8_lossy(&neigh.stdout)
    ));
    let pods = s.kubectl(&["get", "pods", "-o", "wide"]);
    let slices = s.kubectl(&["get", "endpointslices", "-o", "wide"]);
    out.push_str(&format!(
        "--- pods\n{}--- endpointslices\n{}",
        String::from_utf8_lossy(&pods.stdout),
        String::from_utf8_lossy(&slices.stdout)
    ));
    let log = s.log();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    out.push_str("--- server log (last lines, newest first)\n");
    out.push_str(&tail.join("\n"));
    out
}

fn web_pods(s: &Server) -> usize {
    let out = s.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
    out.lines().filter(|l| !l.trim().is_empty()).count()
}

/// Whether the node's rules refuse the Service (its REJECT rule is in).
fn rejected_by_rules(s: &Server) -> bool {
    let host = s.host().expect("test host");
    let out = host
        .command("iptables-save")
        .args(["-t", "filter"])
        .output();
    out.is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout)
            .contains("\"default/web:http has no endpoints\" -j REJECT")
    })
}

#[test]
fn service_serves_at_once_after_scale_to_zero_and_back() {
    let s = Server::start_node(&[]);
    s.ok_stdin(&["apply", "-f", "-"], WEB);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    s.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=120s",
    ]);
    eventually(60, "the service answers by name", || {
        request(&s).served().then_some(())
    });

    let mut served = 0;
    for cycle in 1..=CYCLES {
        s.ok(&["scale", "deployment/web", "--replicas=0"]);
        eventually(60, "terminating pods gone", || {
            (web_pods(&s) == 0).then_some(())
        });
        eventually(30, "the node rejecting the service", || {
            rejected_by_rules(&s).then_some(())
        });
        // Nothing serves: refused (REJECT), not left to time out.
        let a = request(&s);
        assert!(
            a.rc == "1" && a.output.contains("Connection refused"),
            "cycle {cycle}, with no endpoints: rc {} after {:?}: {:?}\n{}",
            a.rc,
            a.took,
            a.output,
            node_state(&s)
        );

        s.ok(&["scale", "deployment/web", "--replicas=2"]);
        s.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
        let until = Instant::now() + SERVED_FOR;
        let mut n = 0;
        while Instant::now() < until {
            let a = request(&s);
            n += 1;
            assert!(
                a.served(),
                "cycle {cycle}, request {n} after the rollout ({served} served before): rc {} after {:?}: {:?}\n{}",
                a.rc,
                a.took,
                a.output,
                node_state(&s)
            );
            served += 1;
        }
        eprintln!("cycle {cycle}: refused, then {n} requests served after the rollout");
    }
}
