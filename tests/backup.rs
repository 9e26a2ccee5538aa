//! `kinglet backup`, `kinglet server --restore` and scheduled snapshots: a snapshot taken while
//! the server runs brings back every object (same uids and resourceVersions), the CA, the
//! join token and the service-account key on a new data directory; hostile archives are
//! refused; scheduled snapshots appear and old ones are pruned.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{Server, eventually, free_port, kubectl_default};

const NS: &str = "backup-test";

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: backup-test
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: backup-test
data:
  colour: blue
---
apiVersion: v1
kind: Secret
metadata:
  name: credentials
  namespace: backup-test
stringData:
  password: hunter2
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: backup-test
spec:
  replicas: 0
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox:1.36
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

const WIDGET: &str = r#"
apiVersion: example.com/v1
kind: Widget
metadata:
  name: sprocket
  namespace: backup-test
spec:
  teeth: 12
"#;

/// The kinds the test created, listed as `kind/name uid resourceVersion`.
const LISTED: [&str; 6] = [
    "configmaps",
    "secrets",
    "deployments.apps",
    "widgets.example.com",
    "serviceaccounts",
    "roles.rbac.authorization.k8s.io",
];

fn identities(s: &Server) -> Vec<String> {
    let mut out = Vec::new();
    let template = "{range .items[*]}{.kind}/{.metadata.name} {.metadata.uid} {.metadata.resourceVersion}{\"\\n\"}{end}";
    for kind in LISTED {
        let list = s.ok(&["get", kind, "-n", NS, "-o", &format!("jsonpath={template}")]);
        out.extend(list.lines().map(String::from));
    }
    for (kind, name) in [
        ("namespace", NS),
        ("customresourcedefinition", "widgets.example.com"),
    ] {
        out.push(s.ok(&[
            "get",
            kind,
            name,
            "-o",
            "jsonpath={.kind}/{.metadata.name} {.metadata.uid} {.metadata.resourceVersion}",
        ]));
    }
    out.sort();
    out
}

fn kinglet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kinglet"))
        .args(args)
        .env_remove("KINGLET_DATA_DIR")
        .env_remove("KINGLET_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run kinglet")
}

fn backup(s: &Server, to: &Path) {
    let out = kinglet(&[
        "backup",
        "--data-dir",
        &s.data_dir().display().to_string(),
        "--to",
        &to.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "kinglet backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        to.display().to_string()
    );
}

/// The base64 CA of a kubeconfig.
fn kubeconfig_ca(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("kubeconfig");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
        .expect("certificate-authority-data")
        .to_string()
}

#[test]
fn backup_then_restore_into_a_fresh_data_dir_brings_back_every_object() {
    let mut old = Server::start();
    old.ok_stdin(&["apply", "-f", "-"], OBJECTS);
    old.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=30s",
    ]);
    old.ok_stdin(&["apply", "-f", "-"], WIDGET);
    old.ok(&[
        "create",
        "role",
        "reader",
        "-n",
        NS,
        "--verb=get",
        "--resource=pods",
    ]);
    // The namespace's default ServiceAccount and root CA ConfigMap (controllers make them)
    // and the Deployment's status settle before the snapshot, so nothing moves under the
    // comparison.
    eventually(30, "the default ServiceAccount and root CA", || {
        (old.kubectl(&["get", "serviceaccount", "default", "-n", NS])
            .status
            .success()
            && old
                .kubectl(&["get", "configmap", "kube-root-ca.crt", "-n", NS])
                .status
                .success())
        .then_some(())
    });
    eventually(30, "the Deployment observed", || {
        (old.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            NS,
            "-o",
            "jsonpath={.status.observedGeneration}",
        ]) == "1")
            .then_some(())
    });
    let token = old
        .ok(&["create", "token", "default", "-n", NS, "--duration=1h"])
        .trim()
        .to_string();
    let join_token = old.kinglet_token(&[]);
    let before = identities(&old);
    assert_eq!(before.len(), 9, "{before:#?}");

    // Online: the server keeps running (and writing) while the snapshot is taken.
    let archive = old.dir.path().join("snapshot.tar.gz");
    backup(&old, &archive);
    let mode = std::fs::metadata(&archive)
        .expect("archive")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the archive holds keys");
    let leftovers: Vec<_> = std::fs::read_dir(old.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".kinglet-backup"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let list = old.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{NS}/configmaps"),
    ]);
    let list: serde_json::Value = serde_json::from_str(&list).expect("list");
    let last_rev: i64 = list["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("list resourceVersion");
    old.stop(false);

    // A new data directory, another port: the restored server is the same cluster.
    let new = Server::start_with(&["--restore", &archive.display().to_string()]);
    assert_eq!(identities(&new), before);
    assert_eq!(
        new.ok(&[
            "get",
            "secret",
            "credentials",
            "-n",
            NS,
            "-o",
            "jsonpath={.data.password}"
        ]),
        "aHVudGVyMg=="
    );
    assert_eq!(
        new.ok(&[
            "get",
            "widget",
            "sprocket",
            "-n",
            NS,
            "-o",
            "jsonpath={.spec.teeth}"
        ]),
        "12"
    );
    // The revision moved far past the old server's (which kept writing after the snapshot),
    // while each object kept its own (`identities` compares them): a watch from a revision
    // the old server gave out is expired, so its client relists rather than missing writes.
    let list: serde_json::Value = serde_json::from_str(&new.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{NS}/configmaps"),
    ]))
    .expect("list");
    let list_rev: i64 = list["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("list resourceVersion");
    // Slack for the old server's writes between the snapshot and `last_rev` (leases, status).
    assert!(
        list_rev > last_rev + 1_000_000 - 10_000,
        "{list_rev} after {last_rev}"
    );
    let watch = new.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/configmaps?watch=1&resourceVersion={last_rev}&timeoutSeconds=20"),
    ]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&watch.stdout),
        String::from_utf8_lossy(&watch.stderr)
    );
    assert!(
        said.contains("ERROR") && said.contains("410") && said.contains("Expired"),
        "a watch from {last_rev}: {said}"
    );
    // Revisions carry on from where the old server was.
    let created = new.ok(&[
        "create",
        "configmap",
        "after",
        "-n",
        NS,
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    let created: i64 = created.trim().parse().expect("resourceVersion");
    assert!(created > last_rev, "{created} after {last_rev}");
    // The old admin kubeconfig (the CA and its client certificate) still works.
    assert_eq!(
        kubeconfig_ca(&old.kubeconfig),
        kubeconfig_ca(&new.kubeconfig)
    );
    let out = Command::new(kubectl_default())
        .args(["--kubeconfig"])
        .arg(&old.kubeconfig)
        .args(["--server", &format!("https://127.0.0.1:{}", new.port)])
        .args([
            "get",
            "configmap",
            "settings",
            "-n",
            NS,
            "-o",
            "jsonpath={.data.colour}",
        ])
        .env("HOME", old.dir.path())
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "old kubeconfig: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "blue");
    // A ServiceAccount token issued before (the signing key came back) and the join token.
    assert_eq!(
        new.ok(&[
            "auth",
            "whoami",
            "--token",
            &token,
            "-o",
            "jsonpath={.status.userInfo.username}",
        ]),
        format!("system:serviceaccount:{NS}:default")
    );
    assert_eq!(new.kinglet_token(&[]), join_token);
    // Started again with `--restore` still given (a unit file keeping it): the restored
    // datastore stays, with what was written since.
    let mut new = new;
    new.restart(false);
    new.ok(&["get", "configmap", "after", "-n", NS]);
}

/// `kinglet server --restore <archive>` into `data_dir`; returns its failure's stderr.
fn restore_fails(archive: &Path, data_dir: &Path) -> String {
    let dir = data_dir.parent().expect("parent");
    std::fs::create_dir_all(dir).expect("test directory");
    let config = dir.join("empty-config.yaml");
    std::fs::write(&config, "").expect("config");
    let out = kinglet(&[
        "server",
        "--disable-agent",
        "--bind-address",
        "127.0.0.1",
        "--https-listen-port",
        &free_port().to_string(),
        "--config",
        &config.display().to_string(),
        "--write-kubeconfig",
        &dir.join("kubeconfig.yaml").display().to_string(),
        "--data-dir",
        &data_dir.display().to_string(),
        "--restore",
        &archive.display().to_string(),
    ]);
    assert!(
        !out.status.success(),
        "restore of {} unexpectedly started",
        archive.display()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An archive entry: name, type, data.
type Entry<'a> = (&'a str, tar::EntryType, &'a [u8]);

/// A gzip'd tar of `entries` (name, type, data), names written raw so that hostile ones
/// (`../x`) go in as they are.
fn craft(path: &Path, entries: &[Entry]) {
    let file = std::fs::File::create(path).expect("archive");
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, typ, data) in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*typ);
        h.set_mode(0o600);
        if *typ == tar::EntryType::Symlink {
            h.set_link_name("/etc/shadow").expect("link name");
            h.set_size(0);
        } else {
            h.set_size(data.len() as u64);
        }
        h.set_cksum();
        tar.append(&h, *data).expect("append");
    }
    tar.into_inner()
        .expect("tar")
        .finish()
        .expect("gzip")
        .flush()
        .expect("flush");
}

#[test]
fn hostile_or_misplaced_restores_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let manifest: &[u8] = br#"{"format":1,"revision":1}"#;
    let regular = tar::EntryType::Regular;
    let cases: [(&str, Vec<Entry>, &str); 4] = [
        (
            "dotdot",
            vec![
                ("kinglet-snapshot.json", regular, manifest),
                ("../escaped", regular, b"gotcha"),
            ],
            "\"../escaped\" points outside the archive",
        ),
        (
            "symlink",
            vec![
                ("kinglet-snapshot.json", regular, manifest),
                ("server/tls/ca.key", tar::EntryType::Symlink, b""),
            ],
            "entry \"server/tls/ca.key\": a Symlink, not a plain file",
        ),
        (
            "device",
            vec![("server/token", tar::EntryType::Char, b"")],
            "entry \"server/token\": a Char, not a plain file",
        ),
        (
            "stranger",
            vec![("server/manifests/evil.yaml", regular, b"kind: Pod")],
            "entry \"server/manifests/evil.yaml\": not part of a kinglet snapshot",
        ),
    ];
    for (name, entries, want) in cases {
        let archive = tmp.path().join(format!("{name}.tar.gz"));
        craft(&archive, &entries);
        let data = tmp.path().join(name).join("data");
        let err = restore_fails(&archive, &data);
        assert!(err.contains(want), "{name}: {err}");
        assert!(!tmp.path().join(name).join("escaped").exists());
        assert!(!data.join("server/db/state.db").exists(), "{name}");
        assert!(!data.join("server/tls").exists(), "{name}");
        // Nothing half-unpacked stays behind.
        let left: Vec<_> = std::fs::read_dir(data.join("server"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".restore"))
            .collect();
        assert!(left.is_empty(), "{name}: {left:?}");
    }
    // Not gzip at all.
    let junk = tmp.path().join("junk.tar.gz");
    std::fs::write(&junk, b"this is not an archive").unwrap();
    let err = restore_fails(&junk, &tmp.path().join("junk").join("data"));
    assert!(err.contains("--restore"), "{err}");

    // A real snapshot never overwrites a cluster's datastore.
    let mut s = Server::start();
    s.ok(&["create", "configmap", "keep-me"]);
    let archive = tmp.path().join("real.tar.gz");
    backup(&s, &archive);
    s.stop(false);
    let err = restore_fails(&archive, &s.data_dir());
    assert!(err.contains("already holds a datastore"), "{err}");
}

#[test]
fn scheduled_snapshots_appear_and_old_ones_are_pruned() {
    let snapshots = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = snapshots.path().to_path_buf();
    // An older scheduled snapshot of this node (pruned with retention 1), another node's and
    // an on-demand one (never touched).
    for f in [
        "kinglet-snapshot-edge-a-1000.tar.gz",
        "kinglet-snapshot-edge-b-1000.tar.gz",
        "on-demand-edge-a-1000.tar.gz",
    ] {
        std::fs::write(dir.join(f), b"old").unwrap();
    }
    let s = Server::start_with(&[
        "--snapshot-schedule",
        "* * * * *",
        "--snapshot-retention",
        "1",
        "--snapshot-dir",
        &dir.display().to_string(),
        "--node-name",
        "edge-a",
    ]);
    s.ok(&["create", "configmap", "in-the-snapshot"]);
    let list = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    // Every minute: the first one comes within about a minute.
    let taken = eventually(90, "a scheduled snapshot", || {
        list().into_iter().find(|f| {
            f.starts_with("kinglet-snapshot-edge-a-") && f != "kinglet-snapshot-edge-a-1000.tar.gz"
        })
    });
    eventually(10, "the old snapshot pruned", || {
        (!dir.join("kinglet-snapshot-edge-a-1000.tar.gz").exists()).then_some(())
    });
    let files = list();
    assert_eq!(
        files,
        [
            taken.clone(),
            "kinglet-snapshot-edge-b-1000.tar.gz".to_string(),
            "on-demand-edge-a-1000.tar.gz".to_string(),
        ],
        "{}",
        s.log()
    );
    // It is a whole snapshot: a server restored from it has the ConfigMap.
    drop(s);
    let restored = Server::start_with(&["--restore", &dir.join(&taken).display().to_string()]);
    restored.ok(&["get", "configmap", "in-the-snapshot"]);
}
