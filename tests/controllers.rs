//! Controllers and scheduler with Node objects created by the test; a test loop plays the
//! kubelet's part of marking bound pods running and ready.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Server, eventually};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

const SEED: &str = include_str!("fixtures/httpbin-deployment.yaml");

fn node(s: &Server, name: &str, cpu: &str, extra_labels: &str, extra: &str) {
    let manifest = format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/hostname: {name}{extra_labels}}}\n{extra}status:\n  allocatable: {{cpu: \"{cpu}\", memory: 8Gi, pods: \"110\"}}\n  capacity: {{cpu: \"{cpu}\", memory: 8Gi, pods: \"110\"}}\n"
    );
    s.ok_stdin(&["apply", "-f", "-"], &manifest);
}

/// Marks every bound, not-yet-ready pod Running and Ready, as a kubelet would.
struct FakeKubelet {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl FakeKubelet {
    fn start(s: &Server) -> FakeKubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let kubeconfig = s.kubeconfig.clone();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
                let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
                let client = kube::Client::try_from(cfg).unwrap();
                let all: Api<Pod> = Api::all(client.clone());
                let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), "kube-node-lease");
                let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
                while !flag.load(Ordering::Relaxed) {
                    // Heartbeats: a Lease per node (except nodes labelled dead), and Ready=True.
                    if let Ok(list) = nodes.list(&ListParams::default()).await {
                        for n in list.items.iter().filter(|n| !n.metadata.labels.as_ref().is_some_and(|l| l.contains_key("dead"))) {
                            let name = n.metadata.name.clone().unwrap_or_default();
                            let now = k8s_openapi::jiff::Timestamp::now().to_string();
                            let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": "kube-node-lease"},
                                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now}});
                            let _ = leases.patch(&name, &PatchParams::apply("fake-kubelet").force(), &Patch::Apply(&lease)).await;
                            if n.status.as_ref().and_then(|s| s.conditions.as_ref()).is_none() {
                                let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
                                let _ = nodes.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await;
                            }
                        }
                    }
                    if let Ok(list) = all.list(&ListParams::default()).await {
                        for p in list.items {
                            let bound = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                            let ready = p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                            let ns = p.metadata.namespace.clone().unwrap_or_default();
                            let name = p.metadata.name.clone().unwrap_or_default();
                            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                            if p.metadata.deletion_timestamp.is_some() {
                                let _ = api.delete(&name, &kube::api::DeleteParams::default().grace_period(0)).await;
                            } else if let Some(code) = p.metadata.labels.as_ref().and_then(|l| l.get("fake-exit")).filter(|_| bound) {
                                // Pods labelled fake-exit "run to completion" with that exit code.
                                let phase = if code == "0" { "Succeeded" } else { "Failed" };
                                if p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some(phase) {
                                    let patch = json!({"status": {"phase": phase}});
                                    let _ = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await;
                                }
                            } else if bound && !ready && !p.metadata.labels.as_ref().is_some_and(|l| l.contains_key("never-ready")) {
                                let now = k8s_openapi::jiff::Timestamp::now().to_string();
                                let octet = name.bytes().fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32)) % 250 + 2;
                                let patch = json!({"status": {"phase": "Running", "podIP": format!("10.42.0.{octet}"), "conditions": [
                                    {"type": "Ready", "status": "True", "lastTransitionTime": now},
                                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}]}});
                                let _ = api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch)).await;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        });
        FakeKubelet {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn json_of(s: &Server, args: &[&str]) -> Value {
    serde_json::from_str(&s.ok(args)).unwrap()
}

fn pods_of(s: &Server, selector: &str) -> Vec<Value> {
    json_of(s, &["get", "pods", "-l", selector, "-o", "json"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn seed_flow_rollout_undo_scale_and_cascading_deletes() {
    let s = Server::start();
    for n in ["n1", "n2", "n3"] {
        node(&s, n, "4", "", "");
    }
    let _kubelet = FakeKubelet::start(&s);
    s.ok_stdin(&["apply", "-f", "-"], SEED);
    // Deployment -> ReplicaSet httpbin-<hash> -> 2 pods httpbin-<hash>-<5> with the hash label, bound.
    let pods = eventually(30, "two bound pods", || {
        let pods = pods_of(&s, "app=httpbin");
        (pods.len() == 2 && pods.iter().all(|p| p["spec"]["nodeName"].is_string())).then_some(pods)
    });
    let rs = json_of(&s, &["get", "rs", "-l", "app=httpbin", "-o", "json"])["items"][0].clone();
    let rs_name = rs["metadata"]["name"].as_str().unwrap().to_string();
    let hash = rs["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(rs_name, format!("httpbin-{hash}"));
    for p in &pods {
        let name = p["metadata"]["name"].as_str().unwrap();
        assert!(
            name.starts_with(&format!("{rs_name}-")) && name.len() == rs_name.len() + 6,
            "{name}"
        );
        assert_eq!(p["metadata"]["labels"]["pod-template-hash"], hash.as_str());
    }
    s.ok(&["rollout", "status", "deployment/httpbin", "--timeout=60s"]);
    // set image: a new ReplicaSet, rolled within maxSurge 1 / maxUnavailable 0 (25% of 2),
    // observed through a watch on the pods; rollout completes; undo goes back.
    let mut watch = std::process::Command::new(common::kubectl_default())
        .args(["get", "pods", "-l", "app=httpbin", "-w", "-o", "jsonpath={.metadata.name} {.metadata.deletionTimestamp} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}"])
        .env("KUBECONFIG", &s.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = watch.stdout.take().unwrap();
    let seen = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut state = std::collections::BTreeMap::new();
        let (mut max_live, mut min_ready) = (0usize, usize::MAX);
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let parts: Vec<&str> = line.split(' ').collect();
            let deleting = parts.get(1).is_some_and(|d| !d.is_empty());
            let ready = parts.get(2).is_some_and(|r| *r == "True");
            state.insert(parts[0].to_string(), (deleting, ready));
            let live = state.values().filter(|(d, _)| !d).count();
            let ready_now = state.values().filter(|(d, r)| !d && *r).count();
            max_live = max_live.max(live);
            if state.len() > 2 {
                min_ready = min_ready.min(ready_now);
            }
        }
        (max_live, min_ready)
    });
    std::thread::sleep(Duration::from_millis(500));
    s.ok(&["set", "image", "deployment/httpbin", "httpbin=busybox:1.36"]);
    s.ok(&["rollout", "status", "deployment/httpbin", "--timeout=60s"]);
    std::thread::sleep(Duration::from_millis(500));
    let _ = watch.kill();
    let _ = watch.wait();
    let (max_live, min_ready) = seen.join().unwrap();
    eprintln!("rollout observed: max live {max_live}, min ready {min_ready}");
    assert_eq!(max_live, 3, "the rollout surges by exactly maxSurge (1)");
    assert!(
        min_ready >= 2 && min_ready != usize::MAX,
        "maxUnavailable exceeded: {min_ready} ready pods"
    );
    let rss = json_of(&s, &["get", "rs", "-l", "app=httpbin", "-o", "json"])["items"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(rss.len(), 2);
    let replicas: Vec<i64> = rss
        .iter()
        .map(|r| r["spec"]["replicas"].as_i64().unwrap())
        .collect();
    assert!(
        replicas.contains(&0) && replicas.contains(&2),
        "{replicas:?}"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "deploy",
            "httpbin",
            "-o",
            "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}"
        ]),
        "2"
    );
    s.ok(&["rollout", "undo", "deployment/httpbin"]);
    s.ok(&["rollout", "status", "deployment/httpbin", "--timeout=60s"]);
    let image = s.ok(&[
        "get",
        "deploy",
        "httpbin",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(image, "kennethreitz/httpbin");
    let first = json_of(&s, &["get", "rs", &rs_name, "-o", "json"]);
    assert_eq!(
        first["spec"]["replicas"], 2,
        "undo reuses the first ReplicaSet"
    );
    assert_eq!(
        first["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    // scale
    s.ok(&["scale", "deployment/httpbin", "--replicas=4"]);
    s.ok(&["rollout", "status", "deployment/httpbin", "--timeout=60s"]);
    assert_eq!(pods_of(&s, "app=httpbin").len(), 4);
    let status = json_of(&s, &["get", "deploy", "httpbin", "-o", "json"])["status"].clone();
    assert_eq!(
        (
            status["replicas"].as_i64(),
            status["availableReplicas"].as_i64(),
            status["updatedReplicas"].as_i64()
        ),
        (Some(4), Some(4), Some(4))
    );
    // Orphan keeps ReplicaSets and pods; background deletes them.
    s.ok(&["delete", "deployment", "httpbin", "--cascade=orphan"]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        json_of(&s, &["get", "rs", "-l", "app=httpbin", "-o", "json"])["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(pods_of(&s, "app=httpbin").len(), 4);
    s.ok(&["delete", "rs", "-l", "app=httpbin"]);
    eventually(30, "pods gone after background deletion", || {
        pods_of(&s, "app=httpbin").is_empty().then_some(())
    });
    // Background cascade from a Deployment.
    s.ok_stdin(&["apply", "-f", "-"], SEED);
    eventually(30, "pods again", || {
        (pods_of(&s, "app=httpbin").len() == 2).then_some(())
    });
    s.ok(&["delete", "deployment", "httpbin"]);
    eventually(30, "everything gone", || {
        let rs = json_of(&s, &["get", "rs", "-o", "json"])["items"]
            .as_array()
            .unwrap()
            .len();
        (rs == 0 && pods_of(&s, "app=httpbin").is_empty()).then_some(())
    });
}

fn pod_manifest(name: &str, spec_extra: &str, cpu: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {name}}}}}\nspec:\n  terminationGracePeriodSeconds: 0\n{spec_extra}  containers:\n  - name: c\n    image: busybox:1.36\n    resources: {{requests: {{cpu: \"{cpu}\"}}}}\n"
    )
}

fn node_of(s: &Server, pod: &str) -> Option<String> {
    let n = s.ok(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"]);
    (!n.is_empty()).then_some(n)
}

fn scheduling_message(s: &Server, pod: &str) -> String {
    eventually(20, "FailedScheduling event", || {
        let ev = s.ok(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={pod},reason=FailedScheduling"),
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        (!ev.is_empty()).then_some(ev)
    })
}

#[test]
fn scheduling_rules() {
    let s = Server::start();
    node(
        &s,
        "cp",
        "4",
        ", node-role.kubernetes.io/control-plane: \"\"",
        "spec:\n  taints: [{key: node-role.kubernetes.io/control-plane, effect: NoSchedule}]\n",
    );
    node(&s, "w1", "2", ", disk: ssd", "");
    node(&s, "gpu", "2", "", "");
    // The GPU node advertises an extended resource.
    let patch = r#"{"status":{"allocatable":{"cpu":"2","memory":"8Gi","pods":"110","nvidia.com/gpu":"1"},"capacity":{"cpu":"2","memory":"8Gi","pods":"110","nvidia.com/gpu":"1"}}}"#;
    s.ok(&[
        "patch",
        "node",
        "gpu",
        "--subresource=status",
        "--type=merge",
        "-p",
        patch,
    ]);
    // Insufficient CPU: Pending with FailedScheduling.
    s.ok_stdin(&["apply", "-f", "-"], &pod_manifest("huge", "", "16"));
    let msg = scheduling_message(&s, "huge");
    assert!(
        msg.contains("0/3 nodes are available")
            && msg.contains("Insufficient cpu")
            && msg.contains("untolerated taint"),
        "{msg}"
    );
    assert_eq!(
        s.ok(&["get", "pod", "huge", "-o", "jsonpath={.status.phase}"]),
        "Pending"
    );
    // nodeSelector
    s.ok_stdin(
        &["apply", "-f", "-"],
        &pod_manifest("ssd", "  nodeSelector: {disk: ssd}\n", "100m"),
    );
    assert_eq!(eventually(20, "ssd bound", || node_of(&s, "ssd")), "w1");
    // GPU request lands only on the node that has one.
    let gpu = "apiVersion: v1\nkind: Pod\nmetadata: {name: cuda}\nspec:\n  containers:\n  - name: c\n    image: busybox:1.36\n    resources: {limits: {nvidia.com/gpu: 1}}\n";
    s.ok_stdin(&["apply", "-f", "-"], gpu);
    assert_eq!(eventually(20, "gpu bound", || node_of(&s, "cuda")), "gpu");
    // The tainted control-plane node gets only tolerating pods.
    let tolerating = "  tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]\n  nodeSelector: {node-role.kubernetes.io/control-plane: \"\"}\n";
    s.ok_stdin(
        &["apply", "-f", "-"],
        &pod_manifest("ops", tolerating, "100m"),
    );
    assert_eq!(eventually(20, "ops bound", || node_of(&s, "ops")), "cp");
    let intolerant = "  nodeSelector: {node-role.kubernetes.io/control-plane: \"\"}\n";
    s.ok_stdin(
        &["apply", "-f", "-"],
        &pod_manifest("nope", intolerant, "100m"),
    );
    let msg = scheduling_message(&s, "nope");
    assert!(
        msg.contains("1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }"),
        "{msg}"
    );
    // Required anti-affinity spreads replicas over nodes.
    let deploy = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"spread"},"spec":{"replicas":2,"selector":{"matchLabels":{"app":"spread"}},
      "template":{"metadata":{"labels":{"app":"spread"}},"spec":{"affinity":{"podAntiAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":[
      {"labelSelector":{"matchLabels":{"app":"spread"}},"topologyKey":"kubernetes.io/hostname"}]}},
      "containers":[{"name":"c","image":"busybox:1.36","resources":{"requests":{"cpu":"100m"}}}]}}}}"#;
    s.ok_stdin(&["apply", "-f", "-"], deploy);
    let nodes = eventually(30, "spread pods bound", || {
        let pods = pods_of(&s, "app=spread");
        let nodes: Vec<String> = pods
            .iter()
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(String::from))
            .collect();
        (nodes.len() == 2).then_some(nodes)
    });
    assert_ne!(nodes[0], nodes[1]);
    // A high-priority pod preempts a lower-priority one.
    s.ok_stdin(&["apply", "-f", "-"], "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high}\nvalue: 1000\n");
    s.ok_stdin(
        &["apply", "-f", "-"],
        &pod_manifest("filler", "  nodeSelector: {disk: ssd}\n", "1500m"),
    );
    assert_eq!(
        eventually(20, "filler bound", || node_of(&s, "filler")),
        "w1"
    );
    s.ok_stdin(
        &["apply", "-f", "-"],
        &pod_manifest(
            "vip",
            "  priorityClassName: high\n  nodeSelector: {disk: ssd}\n",
            "1500m",
        ),
    );
    assert_eq!(
        eventually(30, "vip bound after preemption", || node_of(&s, "vip")),
        "w1"
    );
    assert!(
        !s.kubectl(&["get", "pod", "filler"]).status.success(),
        "filler was preempted"
    );
}

#[test]
fn endpoints_and_slices_follow_ready_pods() {
    let s = Server::start();
    node(&s, "n1", "4", "", "");
    let _kubelet = FakeKubelet::start(&s);
    s.ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox:1.36",
        "--replicas=2",
        "--port=8080",
    ]);
    s.ok(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
    ]);
    let ips = eventually(30, "two ready endpoints", || {
        let ips = s.ok(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}",
        ]);
        (ips.split_whitespace().count() == 2).then_some(ips)
    });
    assert_eq!(
        s.ok(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[0].ports[0].port}"
        ]),
        "8080"
    );
    let slice = json_of(
        &s,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "json",
        ],
    )["items"][0]
        .clone();
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(slice["ports"][0]["port"], 8080);
    let mut slice_ips: Vec<&str> = slice["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["addresses"][0].as_str())
        .collect();
    slice_ips.sort();
    let mut ep_ips: Vec<&str> = ips.split_whitespace().collect();
    ep_ips.sort();
    assert_eq!(slice_ips, ep_ips);
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
    // A pod that is not ready is listed as not ready.
    s.ok_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: Pod\nmetadata: {name: slow, labels: {app: web, never-ready: \"1\"}}\nspec:\n  containers: [{name: c, image: busybox:1.36}]\n");
    let pod_patch = r#"{"status":{"phase":"Running","podIP":"10.42.0.250"}}"#;
    eventually(20, "slow pod bound", || {
        s.ok(&["get", "pod", "slow", "-o", "jsonpath={.spec.nodeName}"])
            .eq("n1")
            .then_some(())
    });
    s.ok(&[
        "patch",
        "pod",
        "slow",
        "--subresource=status",
        "--type=merge",
        "-p",
        pod_patch,
    ]);
    eventually(20, "not-ready address", || {
        s.ok(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[*].notReadyAddresses[*].ip}",
        ])
        .contains("10.42.0.250")
        .then_some(())
    });
    // Scaling to zero empties them; deleting the Service deletes them.
    s.ok(&["scale", "deployment", "web", "--replicas=0"]);
    s.ok(&["delete", "pod", "slow"]);
    eventually(30, "no addresses", || {
        s.ok(&["get", "endpoints", "web", "-o", "jsonpath={.subsets}"])
            .is_empty()
            .then_some(())
    });
    s.ok(&["delete", "service", "web"]);
    eventually(30, "endpoints gone", || {
        (!s.kubectl(&["get", "endpoints", "web"]).status.success()).then_some(())
    });
    eventually(30, "slices gone", || {
        s.ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "name",
        ])
        .trim()
        .is_empty()
        .then_some(())
    });
}

#[test]
fn jobs_complete_fail_and_cronjobs_schedule() {
    let s = Server::start();
    node(&s, "n1", "8", "", "");
    let _kubelet = FakeKubelet::start(&s);
    let job = |name: &str, exit: &str, extra: &str| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n{extra}  template:\n    metadata: {{labels: {{fake-exit: \"{exit}\"}}}}\n    spec:\n      restartPolicy: Never\n      containers: [{{name: c, image: busybox:1.36}}]\n"
        )
    };
    s.ok_stdin(
        &["apply", "-f", "-"],
        &job("ok", "0", "  completions: 3\n  parallelism: 2\n"),
    );
    s.ok(&[
        "wait",
        "--for=condition=complete",
        "job/ok",
        "--timeout=60s",
    ]);
    let st = json_of(&s, &["get", "job", "ok", "-o", "json"])["status"].clone();
    assert_eq!(st["succeeded"], 3);
    assert!(st["completionTime"].is_string());
    assert_eq!(pods_of(&s, "job-name=ok").len(), 3);
    s.ok_stdin(
        &["apply", "-f", "-"],
        &job("bad", "1", "  backoffLimit: 1\n"),
    );
    s.ok(&["wait", "--for=condition=failed", "job/bad", "--timeout=60s"]);
    let st = json_of(&s, &["get", "job", "bad", "-o", "json"])["status"].clone();
    assert_eq!(st["failed"], 2, "backoffLimit 1 allows one retry");
    let reason = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .unwrap()["reason"]
        .clone();
    assert_eq!(reason, "BackoffLimitExceeded");
    // ttlSecondsAfterFinished deletes the finished Job and, through the GC, its pods.
    s.ok_stdin(
        &["apply", "-f", "-"],
        &job("short", "0", "  ttlSecondsAfterFinished: 1\n"),
    );
    eventually(30, "ttl deletion", || {
        (!s.kubectl(&["get", "job", "short"]).status.success()).then_some(())
    });
    // A CronJob due every minute (read in its time zone) creates a Job (created late enough that
    // a minute boundary passes).
    let cron = "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: tick}\nspec:\n  schedule: \"* * * * *\"\n  timeZone: Asia/Kolkata\n  jobTemplate:\n    spec:\n      template:\n        metadata: {labels: {fake-exit: \"0\"}}\n        spec:\n          restartPolicy: OnFailure\n          containers: [{name: c, image: busybox:1.36}]\n";
    // Unknown zones and the legacy TZ= prefix are refused as upstream refuses them.
    for (from, to, message) in [
        (
            "Asia/Kolkata",
            "Mars/Olympus",
            "spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus",
        ),
        (
            "\"* * * * *\"",
            "\"TZ=UTC * * * * *\"",
            "cannot use TZ or CRON_TZ in schedule",
        ),
    ] {
        let err = s.fails(&["apply", "-f", "-"], Some(&cron.replace(from, to)));
        assert!(err.contains(message), "{err}");
    }
    s.ok_stdin(&["apply", "-f", "-"], cron);
    let jobs = eventually(75, "a job from the cronjob", || {
        let items = json_of(&s, &["get", "jobs", "-o", "json"])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mine: Vec<Value> = items
            .into_iter()
            .filter(|j| j["metadata"]["ownerReferences"][0]["kind"] == "CronJob")
            .collect();
        (!mine.is_empty()).then_some(mine)
    });
    assert!(
        jobs[0]["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("tick-")
    );
    eventually(20, "lastScheduleTime", || {
        (!s.ok(&[
            "get",
            "cronjob",
            "tick",
            "-o",
            "jsonpath={.status.lastScheduleTime}",
        ])
        .is_empty())
        .then_some(())
    });
}

#[test]
fn nodes_get_distinct_pod_ranges_from_the_cluster_cidr() {
    let s = Server::start();
    // A node that comes with its range (set by hand) first: the others must not get it.
    node(
        &s,
        "manual",
        "4",
        "",
        "spec:\n  podCIDR: 10.42.0.0/24\n  podCIDRs: [10.42.0.0/24]\n",
    );
    node(&s, "n1", "4", "", "");
    node(&s, "n2", "4", "", "");
    let cidr_of = |n: &str| {
        eventually(30, "a pod range for the node", || {
            let c = s.ok(&["get", "node", n, "-o", "jsonpath={.spec.podCIDR}"]);
            (!c.is_empty()).then_some(c)
        })
    };
    let (a, b) = (cidr_of("n1"), cidr_of("n2"));
    assert_ne!(a, b);
    for c in [&a, &b] {
        assert!(c.starts_with("10.42.") && c.ends_with(".0/24"), "{c}");
        assert_ne!(c, "10.42.0.0/24", "the range set by hand is taken");
    }
    assert_eq!(
        s.ok(&["get", "node", "n1", "-o", "jsonpath={.spec.podCIDRs[0]}"]),
        a
    );
    assert_eq!(cidr_of("manual"), "10.42.0.0/24");
    // A deleted node's range is free again: the next node gets it.
    s.ok(&["delete", "node", "n1"]);
    node(&s, "n3", "4", "", "");
    assert_eq!(cidr_of("n3"), a, "n1's range is handed out again");
}

#[test]
fn unreachable_nodes_are_tainted_and_their_pods_evicted() {
    let s = Server::start();
    node(&s, "alive", "4", "", "");
    node(&s, "gone", "4", ", dead: \"1\"", "");
    let _kubelet = FakeKubelet::start(&s);
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: stranded}\nspec:\n  nodeName: gone\n  terminationGracePeriodSeconds: 0\n  tolerations: [{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 3}]\n  containers: [{name: c, image: busybox:1.36}]\n";
    s.ok_stdin(&["apply", "-f", "-"], pod);
    // After the 40 s grace period the silent node is Unknown and tainted; the healthy one is not.
    let taints = eventually(70, "unreachable taints", || {
        let t = s.ok(&[
            "get",
            "node",
            "gone",
            "-o",
            "jsonpath={.spec.taints[*].key}",
        ]);
        t.contains("node.kubernetes.io/unreachable").then_some(t)
    });
    assert!(taints.contains("unreachable"), "{taints}");
    assert_eq!(
        s.ok(&[
            "get",
            "node",
            "gone",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"
        ]),
        "Unknown"
    );
    assert_eq!(
        s.ok(&["get", "node", "alive", "-o", "jsonpath={.spec.taints}"]),
        ""
    );
    eventually(30, "stranded pod evicted after its toleration", || {
        (!s.kubectl(&["get", "pod", "stranded"]).status.success()).then_some(())
    });
}

#[test]
fn daemonsets_and_statefulsets() {
    let s = Server::start();
    node(&s, "a", "4", ", role: edge", "");
    node(&s, "b", "4", ", role: edge", "");
    node(&s, "c", "4", ", role: core", "");
    let _kubelet = FakeKubelet::start(&s);
    // DaemonSet: one pod per matching node.
    let ds = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: agent}\nspec:\n  selector: {matchLabels: {app: agent}}\n  template:\n    metadata: {labels: {app: agent}}\n    spec:\n      nodeSelector: {role: edge}\n      containers: [{name: c, image: busybox:1.36}]\n";
    s.ok_stdin(&["apply", "-f", "-"], ds);
    let nodes = eventually(30, "daemon pods on a and b", || {
        let mut n: Vec<String> = pods_of(&s, "app=agent")
            .iter()
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(String::from))
            .collect();
        n.sort();
        (n == ["a", "b"]).then_some(n)
    });
    assert_eq!(nodes, ["a", "b"]);
    s.ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    // A node joining the selection gets a pod.
    s.ok(&["label", "node", "c", "role=edge", "--overwrite"]);
    eventually(30, "third daemon pod", || {
        (pods_of(&s, "app=agent")
            .iter()
            .filter(|p| p["spec"]["nodeName"].is_string())
            .count()
            == 3)
            .then_some(())
    });
    // Rolling update of the template replaces every pod.
    s.ok(&["set", "image", "daemonset/agent", "c=busybox:1.37"]);
    s.ok(&["rollout", "status", "daemonset/agent", "--timeout=90s"]);
    let images: Vec<String> = pods_of(&s, "app=agent")
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(images.iter().all(|i| i == "busybox:1.37"), "{images:?}");
    // StatefulSet: ordered names, claims per replica, stable hostnames, scale down from the top.
    let sts = "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec:\n  serviceName: db\n  replicas: 3\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n    spec:\n      containers: [{name: c, image: busybox:1.36, volumeMounts: [{name: data, mountPath: /data}]}]\n  volumeClaimTemplates:\n  - metadata: {name: data}\n    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n";
    s.ok_stdin(&["apply", "-f", "-"], sts);
    s.ok(&["rollout", "status", "statefulset/db", "--timeout=90s"]);
    let mut names: Vec<String> = pods_of(&s, "app=db")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["db-0", "db-1", "db-2"]);
    let p0 = json_of(&s, &["get", "pod", "db-0", "-o", "json"]);
    assert_eq!(p0["spec"]["hostname"], "db-0");
    assert_eq!(p0["spec"]["subdomain"], "db");
    assert_eq!(
        p0["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "data-db-0"
    );
    let pvcs = s.ok(&["get", "pvc", "-o", "name"]);
    for i in 0..3 {
        assert!(pvcs.contains(&format!("data-db-{i}")), "{pvcs}");
    }
    // ControllerRevisions back `rollout history` and `rollout undo`.
    s.ok(&["set", "image", "statefulset/db", "c=busybox:1.37"]);
    s.ok(&["rollout", "status", "statefulset/db", "--timeout=90s"]);
    let history = s.ok(&["rollout", "history", "statefulset/db"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");
    s.ok(&["rollout", "undo", "statefulset/db"]);
    s.ok(&["rollout", "status", "statefulset/db", "--timeout=90s"]);
    assert_eq!(
        s.ok(&[
            "get",
            "statefulset",
            "db",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}"
        ]),
        "busybox:1.36"
    );
    eventually(60, "pods back on the old image", || {
        let imgs: Vec<String> = pods_of(&s, "app=db")
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| {
                p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        (imgs.len() == 3 && imgs.iter().all(|i| i == "busybox:1.36")).then_some(())
    });
    s.ok(&["scale", "statefulset/db", "--replicas=1"]);
    eventually(30, "scaled down to db-0", || {
        let live: Vec<String> = pods_of(&s, "app=db")
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        (live == ["db-0"]).then_some(())
    });
}

#[test]
fn rollout_finishes_after_the_server_is_killed_midway() {
    let mut s = Server::start();
    node(&s, "n1", "8", "", "");
    let _kubelet = FakeKubelet::start(&s);
    let deploy = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},"spec":{"replicas":4,"minReadySeconds":2,
      "selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"c","image":"busybox:1.36"}]}}}}"#;
    s.ok_stdin(&["apply", "-f", "-"], deploy);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    s.ok(&["set", "image", "deployment/web", "c=busybox:1.37"]);
    // Mid-rollout (minReadySeconds keeps each step slow): SIGKILL, then start again.
    eventually(20, "rollout under way", || {
        (json_of(&s, &["get", "rs", "-l", "app=web", "-o", "json"])["items"]
            .as_array()
            .unwrap()
            .len()
            == 2)
            .then_some(())
    });
    s.restart(true);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    let rss = json_of(&s, &["get", "rs", "-l", "app=web", "-o", "json"])["items"]
        .as_array()
        .unwrap()
        .clone();
    let mut replicas: Vec<(String, i64)> = rss
        .iter()
        .map(|r| {
            (
                r["spec"]["template"]["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                r["spec"]["replicas"].as_i64().unwrap(),
            )
        })
        .collect();
    replicas.sort();
    assert_eq!(
        replicas,
        [
            ("busybox:1.36".to_string(), 0),
            ("busybox:1.37".to_string(), 4)
        ]
    );
    let live: Vec<Value> = pods_of(&s, "app=web")
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    assert_eq!(live.len(), 4);
    assert!(
        live.iter()
            .all(|p| p["spec"]["containers"][0]["image"] == "busybox:1.37")
    );
}

/// Every write of kinglet's own components carries upstream's field manager name.
#[test]
fn components_write_under_upstream_field_manager_names() {
    let s = Server::start();
    s.ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=1",
    ]);
    let managers_of = |args: &[&str]| -> Vec<String> {
        json_of(&s, args)["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|o| {
                o["metadata"]["managedFields"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|e| e["manager"].as_str().map(String::from))
            .collect()
    };
    eventually(30, "the deployment's status and pod", || {
        let deploy = managers_of(&[
            "get",
            "deploy",
            "-l",
            "app=web",
            "-o",
            "json",
            "--show-managed-fields",
        ]);
        let pods = managers_of(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "json",
            "--show-managed-fields",
        ]);
        (deploy.contains(&"kube-controller-manager".to_string())
            && pods.contains(&"kube-controller-manager".to_string()))
        .then_some(())
    });
    let rs = managers_of(&[
        "get",
        "rs",
        "-l",
        "app=web",
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    assert!(rs.iter().all(|m| m == "kube-controller-manager"), "{rs:?}");
    let ns = managers_of(&["get", "ns", "-o", "json", "--show-managed-fields"]);
    assert!(ns.contains(&"kube-apiserver".to_string()), "{ns:?}");
    let everything = managers_of(&[
        "get",
        "all,ns,cm,sa,leases,clusterroles,clusterrolebindings,priorityclasses,endpointslices",
        "-A",
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    let odd: Vec<&String> = everything
        .iter()
        .filter(|m| {
            !matches!(
                m.as_str(),
                "kube-apiserver" | "kube-controller-manager" | "kube-scheduler" | "kubectl-create"
            )
        })
        .collect();
    assert!(odd.is_empty(), "unexpected managers: {odd:?}");
}
