//! The built-in local-path provisioner end to end: the default StorageClass, a StatefulSet's
//! claim provisioned on the pod's node once the scheduler picks it, data kept across the pod's
//! deletion, and the volume and its directory removed with the claim (the controller deletes the
//! volume, the node removes the directory and then the volume's cleanup finalizer).

mod common;

use std::path::PathBuf;

use common::{NODE, Server, eventually};
use serde_json::Value;

fn json_of(s: &Server, args: &[&str]) -> Value {
    serde_json::from_str(&s.ok(args)).expect("kubectl json")
}

fn running(s: &Server, pod: &str) -> Option<Value> {
    let out = s.kubectl(&["get", "pod", pod, "-o", "json"]);
    let p: Value = serde_json::from_slice(&out.stdout).ok()?;
    (p["status"]["phase"] == "Running"
        && p["status"]["containerStatuses"][0]["state"]["running"].is_object())
    .then_some(p)
}

const STATEFULSET: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: busybox:1.36
        command: ["sh", "-c", "[ -f /data/first ] || echo $(hostname) > /data/first; sleep 3600"]
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 64Mi}}
"#;

#[test]
fn a_statefulset_keeps_its_data_on_a_provisioned_local_volume() {
    let s = Server::start_node(&[]);
    let class = json_of(&s, &["get", "storageclass", "local-path", "-o", "json"]);
    assert_eq!(
        class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"],
        "true"
    );
    assert_eq!(class["provisioner"], "kinglet.io/local-path");
    assert_eq!(class["volumeBindingMode"], "WaitForFirstConsumer");
    assert_eq!(class["reclaimPolicy"], "Delete");

    // A pod whose claim does not exist is unschedulable with upstream's message.
    s.ok_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"orphan"},"spec":{"containers":[{"name":"c","image":"busybox:1.36"}],
            "volumes":[{"name":"v","persistentVolumeClaim":{"claimName":"missing"}}]}}"#,
    );
    eventually(60, "orphan's FailedScheduling", || {
        let p = json_of(&s, &["get", "pod", "orphan", "-o", "json"]);
        let c = p["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "PodScheduled")?
            .clone();
        let msg = c["message"].as_str()?.to_string();
        msg.starts_with("0/1 nodes are available: persistentvolumeclaim \"missing\" not found.")
            .then_some(())
    });
    s.ok(&["delete", "pod", "orphan", "--wait=false"]);

    // A pod put on the node by hand with a claim that is not bound waits in ContainerCreating,
    // told why.
    s.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            r#"{{"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{{"name":"unbound"}},
                "spec":{{"storageClassName":"none","accessModes":["ReadWriteOnce"],"resources":{{"requests":{{"storage":"1Mi"}}}}}}}}
---
{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"stuck"}},"spec":{{"nodeName":"{NODE}",
    "containers":[{{"name":"c","image":"busybox:1.36"}}],
    "volumes":[{{"name":"v","persistentVolumeClaim":{{"claimName":"unbound"}}}}]}}}}"#
        ),
    );
    eventually(60, "stuck's FailedMount", || {
        let events = s.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=stuck",
            "-o",
            "json",
        ]);
        events
            .contains("PersistentVolumeClaim default/unbound is not bound")
            .then_some(())
    });
    let stuck = json_of(&s, &["get", "pod", "stuck", "-o", "json"]);
    assert_eq!(
        stuck["status"]["containerStatuses"][0]["state"]["waiting"]["reason"], "ContainerCreating",
        "{stuck}"
    );
    s.ok(&["delete", "pod", "stuck", "--wait=false"]);

    s.ok_stdin(&["apply", "-f", "-"], STATEFULSET);
    let first = eventually(120, "db-0 running", || running(&s, "db-0"));
    let claim = json_of(&s, &["get", "pvc", "data-db-0", "-o", "json"]);
    assert_eq!(claim["status"]["phase"], "Bound", "{claim}");
    assert_eq!(claim["spec"]["storageClassName"], "local-path");
    assert_eq!(
        claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"],
        NODE
    );
    assert_eq!(
        claim["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"],
        "yes"
    );
    let pv_name = claim["spec"]["volumeName"]
        .as_str()
        .expect("volumeName")
        .to_string();
    assert_eq!(
        pv_name,
        format!("pvc-{}", claim["metadata"]["uid"].as_str().unwrap())
    );
    let pv = json_of(&s, &["get", "pv", &pv_name, "-o", "json"]);
    assert_eq!(pv["status"]["phase"], "Bound");
    assert_eq!(pv["spec"]["claimRef"]["name"], "data-db-0");
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(
        pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"],
        "kinglet.io/local-path"
    );
    assert_eq!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0],
        serde_json::json!({"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE]})
    );
    let dir = PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().expect("hostPath"));
    assert_eq!(
        dir,
        s.data_dir()
            .join("storage")
            .join(format!("{pv_name}_default_data-db-0"))
    );
    assert_eq!(
        s.ok(&["exec", "db-0", "--", "cat", "/data/first"]).trim(),
        "db-0"
    );
    // The file is in the volume's directory on the node.
    assert_eq!(
        std::fs::read_to_string(dir.join("first")).unwrap().trim(),
        "db-0"
    );

    // The pod goes; its successor finds the data and does not write it again.
    s.ok(&["exec", "db-0", "--", "sh", "-c", "echo second > /data/more"]);
    s.ok(&["delete", "pod", "db-0"]);
    let uid = first["metadata"]["uid"].as_str().unwrap().to_string();
    eventually(120, "a new db-0 running", || {
        running(&s, "db-0").filter(|p| p["metadata"]["uid"].as_str() != Some(&uid))
    });
    assert_eq!(
        s.ok(&["exec", "db-0", "--", "cat", "/data/first"]).trim(),
        "db-0"
    );
    assert_eq!(
        s.ok(&["exec", "db-0", "--", "cat", "/data/more"]).trim(),
        "second"
    );

    // The claim deleted while its pod runs stays (pvc-protection), and so do the volume and
    // the data; once the pod is gone, the claim, then the volume, then its directory go.
    s.ok(&["delete", "pvc", "data-db-0", "--wait=false"]);
    let claim = json_of(&s, &["get", "pvc", "data-db-0", "-o", "json"]);
    assert!(
        claim["metadata"]["deletionTimestamp"].is_string(),
        "{claim}"
    );
    assert_eq!(
        claim["metadata"]["finalizers"],
        serde_json::json!(["kubernetes.io/pvc-protection"])
    );
    // The cleanup finalizer is there from the start: only the controller's deletion of the
    // volume makes the node remove the directory.
    let mut finalizers: Vec<Value> =
        json_of(&s, &["get", "pv", &pv_name, "-o", "json"])["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
    finalizers.sort_by_key(|f| f.to_string());
    assert_eq!(
        finalizers,
        vec![
            Value::from("kinglet.io/local-path-cleanup"),
            Value::from("kubernetes.io/pv-protection")
        ]
    );
    assert_eq!(
        s.ok(&["exec", "db-0", "--", "cat", "/data/more"]).trim(),
        "second"
    );
    s.ok(&["delete", "statefulset", "db"]);
    eventually(60, "the claim gone", || {
        (!s.kubectl(&["get", "pvc", "data-db-0"]).status.success()).then_some(())
    });
    eventually(60, "the directory removed", || {
        (!dir.exists()).then_some(())
    });
    // The volume goes once the node removed its directory and then the cleanup finalizer.
    eventually(60, "the volume deleted", || {
        (!s.kubectl(&["get", "pv", &pv_name]).status.success()).then_some(())
    });
    assert!(s.data_dir().join("storage").is_dir());

    // A volume switched to Retain and then deleted by hand goes (the controller drops the
    // cleanup finalizer) and its data stays on the node.
    s.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: keep}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: writer}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox:1.36
    command: ["sh", "-c", "echo kept > /data/f; sleep 3600"]
    volumeMounts: [{name: v, mountPath: /data}]
  volumes: [{name: v, persistentVolumeClaim: {claimName: keep}}]
"#,
    );
    eventually(120, "writer running", || running(&s, "writer"));
    let claim = json_of(&s, &["get", "pvc", "keep", "-o", "json"]);
    let kept = claim["spec"]["volumeName"]
        .as_str()
        .expect("volumeName")
        .to_string();
    let pv = json_of(&s, &["get", "pv", &kept, "-o", "json"]);
    let kept_dir = PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().expect("hostPath"));
    eventually(30, "the file written", || {
        (std::fs::read_to_string(kept_dir.join("f")).ok()?.trim() == "kept").then_some(())
    });
    s.ok(&[
        "patch",
        "pv",
        &kept,
        "-p",
        r#"{"spec":{"persistentVolumeReclaimPolicy":"Retain"}}"#,
    ]);
    s.ok(&["delete", "pod", "writer"]);
    s.ok(&["delete", "pvc", "keep"]);
    eventually(60, "the retained volume released", || {
        let pv = json_of(&s, &["get", "pv", &kept, "-o", "json"]);
        (pv["status"]["phase"] == "Released").then_some(())
    });
    s.ok(&["delete", "pv", &kept, "--wait=false"]);
    eventually(60, "the retained volume gone", || {
        (!s.kubectl(&["get", "pv", &kept]).status.success()).then_some(())
    });
    assert_eq!(
        std::fs::read_to_string(kept_dir.join("f")).unwrap().trim(),
        "kept"
    );
}

#[test]
fn a_claim_of_a_class_without_provisioner_binds_a_matching_volume() {
    // API only: binding needs no node.
    let s = Server::start();
    s.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: PersistentVolume
metadata: {name: small, labels: {tier: fast}}
spec:
  storageClassName: manual
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  hostPath: {path: /tmp/small}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: big, labels: {tier: fast}}
spec:
  storageClassName: manual
  capacity: {storage: 5Gi}
  accessModes: [ReadWriteOnce, ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: /tmp/big}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: wants-rwx}
spec:
  storageClassName: manual
  accessModes: [ReadWriteMany]
  resources: {requests: {storage: 100Mi}}
"#,
    );
    let claim = eventually(30, "the claim bound", || {
        let c = json_of(&s, &["get", "pvc", "wants-rwx", "-o", "json"]);
        (c["status"]["phase"] == "Bound").then_some(c)
    });
    // The only volume with the access mode, though larger.
    assert_eq!(claim["spec"]["volumeName"], "big");
    assert_eq!(claim["status"]["capacity"]["storage"], "5Gi");
    assert_eq!(
        claim["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"],
        "yes"
    );
    let pv = json_of(&s, &["get", "pv", "big", "-o", "json"]);
    assert_eq!(pv["status"]["phase"], "Bound");
    assert_eq!(pv["spec"]["claimRef"]["uid"], claim["metadata"]["uid"]);
    assert_eq!(
        json_of(&s, &["get", "pv", "small", "-o", "json"])["status"]["phase"],
        "Available"
    );
    // A claim naming a volume that does not satisfy it stays Pending, told why, and the volume
    // stays Available.
    s.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: too-big}
spec:
  storageClassName: manual
  volumeName: small
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 2Gi}}
"#,
    );
    eventually(30, "the VolumeMismatch event", || {
        let events = s.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=too-big",
            "-o",
            "json",
        ]);
        events
            .contains(r#"Cannot bind to requested volume \"small\": requested PV is too small"#)
            .then_some(())
    });
    let claim = json_of(&s, &["get", "pvc", "too-big", "-o", "json"]);
    assert_eq!(claim["status"]["phase"], "Pending", "{claim}");
    let small = json_of(&s, &["get", "pv", "small", "-o", "json"]);
    assert_eq!(small["status"]["phase"], "Available", "{small}");
    assert!(small["spec"]["claimRef"].is_null(), "{small}");
    // A Retain volume stays, Released, when its claim goes.
    s.ok(&["delete", "pvc", "wants-rwx"]);
    eventually(30, "the volume released", || {
        let pv = json_of(&s, &["get", "pv", "big", "-o", "json"]);
        (pv["status"]["phase"] == "Released").then_some(())
    });
}
