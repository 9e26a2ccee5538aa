//! The control loops act under identities of their own with least rights (upstream's
//! kube-controller-manager with `--use-service-account-credentials`, kube-scheduler): each
//! is refused what its bootstrap role does not grant, and none is refused what it does.

mod common;

use common::{Server, eventually};
use serde_json::Value;

fn json_of(s: &Server, args: &[&str]) -> Value {
    serde_json::from_str(&s.ok(args)).unwrap()
}

/// `kubectl auth can-i` as `user`: true for "yes".
fn can_i(s: &Server, user: &str, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i", "--as", user];
    all.extend_from_slice(args);
    let out = s.kubectl(&all);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// A ready node with an address (ServiceLB's), and one that is not ready.
const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {kubernetes.io/hostname: n1}}
status:
  allocatable: {cpu: "8", memory: 8Gi, pods: "110"}
  capacity: {cpu: "8", memory: 8Gi, pods: "110"}
  addresses: [{type: InternalIP, address: 192.0.2.10}]
  conditions: [{type: Ready, status: "True", reason: KubeletReady}]
---
apiVersion: v1
kind: Node
metadata: {name: n2}
status:
  conditions: [{type: Ready, status: "False", reason: KubeletNotReady}]
"#;

const WORKLOADS: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: ds}
spec:
  selector: {matchLabels: {app: ds}}
  template:
    metadata: {labels: {app: ds}}
    spec:
      nodeSelector: {kubernetes.io/hostname: n1}
      containers: [{name: c, image: busybox:1.36}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: c, image: busybox:1.36}]}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  ttlSecondsAfterFinished: 0
  template:
    metadata: {labels: {app: once}}
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox:1.36}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: c, image: busybox:1.36}]
"#;

const RS: &str = "system:serviceaccount:kube-system:replicaset-controller";

#[test]
fn controllers_have_least_rights_and_are_never_refused_what_they_do() {
    let s = Server::start_with(&["--debug"]);

    // The replicaset controller's identity reads no Secrets and deletes no Nodes; it may do
    // its work. So for the scheduler.
    assert!(!can_i(&s, RS, &["get", "secrets", "-n", "default"]));
    assert!(!can_i(&s, RS, &["list", "secrets", "-A"]));
    assert!(!can_i(&s, RS, &["delete", "nodes"]));
    assert!(can_i(&s, RS, &["create", "pods", "-n", "default"]));
    assert!(can_i(
        &s,
        RS,
        &["patch", "replicasets.apps", "--subresource=status"]
    ));
    assert!(!can_i(
        &s,
        "system:kube-scheduler",
        &["get", "secrets", "-A"]
    ));
    assert!(can_i(
        &s,
        "system:kube-scheduler",
        &["create", "pods", "--subresource=binding", "-n", "default"]
    ));
    let ttl = "system:serviceaccount:kube-system:ttl-after-finished-controller";
    assert!(can_i(&s, ttl, &["delete", "jobs.batch", "-n", "default"]));
    assert!(!can_i(&s, ttl, &["delete", "pods", "-n", "default"]));

    // Work for every loop that writes. No kubelet: pods stay bound and pending.
    s.ok_stdin(&["apply", "-f", "-"], NODES);
    s.ok(&["create", "namespace", "team"]);
    s.ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox:1.36",
        "--replicas=2",
        "--port=8080",
    ]);
    s.ok(&["expose", "deployment", "web", "--port=80"]);
    s.ok(&["create", "service", "loadbalancer", "lb", "--tcp=80:8080"]);
    s.ok(&[
        "autoscale",
        "deployment",
        "web",
        "--cpu-percent=50",
        "--min=1",
        "--max=3",
    ]);
    s.ok_stdin(&["apply", "-f", "-"], WORKLOADS);

    // Service accounts and the root CA in the new namespace.
    eventually(30, "default ServiceAccount and root CA", || {
        (s.kubectl(&["get", "serviceaccount", "default", "-n", "team"])
            .status
            .success()
            && s.kubectl(&["get", "configmap", "kube-root-ca.crt", "-n", "team"])
                .status
                .success())
        .then_some(())
    });
    // Node IPAM.
    eventually(30, "the node's pod range", || {
        (!s.ok(&["get", "node", "n1", "-o", "jsonpath={.spec.podCIDR}"])
            .is_empty())
        .then_some(())
    });
    // Deployment (revision annotation, status), ReplicaSet (pods, status), scheduler (binding).
    eventually(30, "the deployment's pods bound and counted", || {
        let d = json_of(&s, &["get", "deployment", "web", "-o", "json"]);
        let pods = json_of(&s, &["get", "pods", "-l", "app=web", "-o", "json"]);
        let bound = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["spec"]["nodeName"].is_string())
            .count();
        (d["status"]["replicas"] == 2
            && d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
            && bound == 2)
            .then_some(())
    });
    let rs = json_of(&s, &["get", "replicasets", "-l", "app=web", "-o", "json"]);
    assert_eq!(rs["items"][0]["status"]["replicas"], 2, "{rs}");
    // Endpoints and EndpointSlices.
    eventually(30, "endpoints and slice of web", || {
        (s.kubectl(&["get", "endpoints", "web"]).status.success()
            && !s
                .ok(&[
                    "get",
                    "endpointslices",
                    "-l",
                    "kubernetes.io/service-name=web",
                    "-o",
                    "name",
                ])
                .is_empty())
        .then_some(())
    });
    // ServiceLB.
    eventually(30, "the load balancer's address", || {
        (s.ok(&[
            "get",
            "service",
            "lb",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ]) == "192.0.2.10")
            .then_some(())
    });
    // DaemonSet and StatefulSet (pods, revisions, claims, status).
    eventually(30, "daemonset and statefulset status", || {
        let ds = json_of(&s, &["get", "daemonset", "ds", "-o", "json"]);
        let sts = json_of(&s, &["get", "statefulset", "db", "-o", "json"]);
        (ds["status"]["desiredNumberScheduled"] == 1
            && sts["status"]["replicas"] == 1
            && s.kubectl(&["get", "pvc", "data-db-0"]).status.success())
        .then_some(())
    });
    // HPA: reads the scale, writes its status.
    eventually(30, "the autoscaler's status", || {
        let hpa = json_of(&s, &["get", "hpa", "web", "-o", "json"]);
        hpa["status"]["conditions"].is_array().then_some(())
    });
    // Job: its pod "succeeds" (the test plays the kubelet), the Job completes, and the TTL
    // controller deletes it.
    let pod = eventually(30, "the job's pod", || {
        let out = s.ok(&["get", "pods", "-l", "app=once", "-o", "name"]);
        out.lines().next().map(str::to_string)
    });
    s.ok(&[
        "patch",
        &pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Succeeded"}}"#,
    ]);
    eventually(30, "the finished job deleted", || {
        (!s.kubectl(&["get", "job", "once"]).status.success()).then_some(())
    });
    // Node lifecycle: the node that is not ready is tainted.
    eventually(30, "the not-ready node tainted", || {
        let keys = s.ok(&["get", "node", "n2", "-o", "jsonpath={.spec.taints[*].key}"]);
        keys.contains("node.kubernetes.io/not-ready").then_some(())
    });
    // Events from the controllers' recorders.
    let events = s.ok(&[
        "get",
        "events.events.k8s.io",
        "-o",
        "jsonpath={.items[*].reportingController}",
    ]);
    for reporter in [
        "deployment-controller",
        "replicaset-controller",
        "default-scheduler",
    ] {
        assert!(
            events.contains(reporter),
            "no event by {reporter}: {events}"
        );
    }

    let log = s.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("forbidden") || l.contains(" 403")
        })
        .collect();
    assert!(refused.is_empty(), "refused calls:\n{}", refused.join("\n"));
}
