//! A full data disk (a small tmpfs in the server's test host): writes are refused with a clear
//! `507 InsufficientStorage`, deletes through the API work (also those that take updates:
//! finalizers, namespaces) and free the space, a server
//! restarted on the full disk serves reads, and writes come back without a restart once space
//! is freed.

mod common;

use common::{Server, eventually};

/// About the size upstream allows an object to be (1.5 MB max), so a few dozen fill the disk.
const OBJECT_BYTES: usize = 500 * 1024;

fn configmap(name: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"fill": "yes"}},
        "data": {"blob": "x".repeat(OBJECT_BYTES)},
    })
    .to_string()
}

/// Runs `script` with `sh -c` in the server's test host (where the data tmpfs is mounted).
fn in_host(s: &Server, script: &str) {
    let ok = s
        .command("sh")
        .args(["-c", script])
        .status()
        .is_ok_and(|st| st.success());
    assert!(ok, "{script}");
}

/// Creates ConfigMaps `prefix-N` until one is refused; returns the names made and kubectl's
/// stderr (with `-v=6`, which logs the HTTP status line) for the refused one.
fn fill(s: &Server, prefix: &str) -> (Vec<String>, String) {
    let mut made = Vec::new();
    loop {
        let name = format!("{prefix}-{}", made.len());
        let out = s.kubectl_stdin(&["create", "-f", "-", "-v=6"], &configmap(&name));
        if !out.status.success() {
            return (made, String::from_utf8_lossy(&out.stderr).into_owned());
        }
        made.push(name);
        assert!(made.len() < 200, "the data disk never filled up");
    }
}

fn assert_insufficient_storage(stderr: &str) {
    assert!(
        stderr.contains("507 Insufficient Storage"),
        "HTTP status: {stderr}"
    );
    assert!(
        stderr.contains("Error from server (InsufficientStorage)")
            && stderr.contains("disk is full"),
        "kubectl's message: {stderr}"
    );
}

fn filled(s: &Server) -> usize {
    s.ok(&["get", "configmaps", "-l", "fill=yes", "-o", "name"])
        .lines()
        .count()
}

#[test]
fn a_full_data_disk_refuses_writes_clearly_frees_space_on_delete_and_recovers_alone() {
    let mut s = Server::start_in_host_with(&[], |host, dir| {
        host.mount_tmpfs_sized(&dir.join("data"), Some("24m"));
    });
    let data = s.data_dir().display().to_string();
    // Ballast, removed at the end as an operator would free space by other means.
    in_host(
        &s,
        &format!("dd if=/dev/zero of={data}/ballast bs=1M count=5 status=none"),
    );

    // Objects whose deletion takes updates: finalizers, and a namespace with contents.
    s.ok_stdin(
        &["create", "-f", "-"],
        &serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "held", "finalizers": ["example.com/x", "example.com/y"]},
            "data": {"k": "v"},
        })
        .to_string(),
    );
    s.ok(&["create", "namespace", "doomed"]);
    for name in ["one", "two"] {
        s.ok(&[
            "create",
            "configmap",
            name,
            "-n",
            "doomed",
            "--from-literal=k=v",
        ]);
    }

    let (made, err) = fill(&s, "first");
    assert!(made.len() > 5, "only {} objects fit", made.len());
    assert_insufficient_storage(&err);
    // Reads still work, and nothing half-written shows up.
    assert_eq!(filled(&s), made.len());

    // Deletion runs to its end on the full disk: marking an object with finalizers deleted,
    // then taking its finalizers away one by one (the last one removes it).
    s.ok(&["delete", "configmap", "held", "--wait=false"]);
    let held = |path: &str| {
        s.ok(&[
            "get",
            "configmap",
            "held",
            "-o",
            &format!("jsonpath={path}"),
        ])
    };
    assert!(!held("{.metadata.deletionTimestamp}").is_empty());
    s.ok(&[
        "patch",
        "configmap",
        "held",
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/metadata/finalizers/0"}]"#,
    ]);
    assert_eq!(held("{.metadata.finalizers}"), r#"["example.com/y"]"#);
    s.ok(&[
        "patch",
        "configmap",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata": {"finalizers": null}}"#,
    ]);
    let gone = s.kubectl(&["get", "configmap", "held"]);
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
        "{gone:?}"
    );
    // A namespace's deletion is accepted (its controller, which cannot renew its lease on
    // the full disk, finishes it once space is freed below).
    s.ok(&["delete", "namespace", "doomed", "--wait=false"]);
    assert_eq!(
        s.ok(&[
            "get",
            "namespace",
            "doomed",
            "-o",
            "jsonpath={.status.phase}"
        ]),
        "Terminating"
    );

    // Deletes work on the full disk and free the space: creates work again, no restart. A
    // watch sees each DELETED event with the whole object (tombstones no longer store it).
    let events = s.dir.path().join("watch.json");
    let mut watch = s
        .command(common::kubectl_default())
        .args(["get", "configmaps", "-l", "fill=yes", "--watch"])
        .args(["--output-watch-events", "-o", "json"])
        .stdout(std::fs::File::create(&events).expect("watch output"))
        .spawn()
        .expect("kubectl watch");
    // Events of `typ` whose object is whole, in the watch's output so far.
    let whole = |typ: &str| {
        let seen = std::fs::read_to_string(&events).unwrap_or_default();
        serde_json::Deserializer::from_str(&seen)
            .into_iter::<serde_json::Value>()
            .filter_map(Result::ok)
            .filter(|e| e["type"] == typ)
            .filter(|e| e["object"]["data"]["blob"].as_str().map(str::len) == Some(OBJECT_BYTES))
            .count()
    };
    // The initial list comes as ADDED events; the watch is open after it.
    eventually(30, "the watch's initial list", || {
        (whole("ADDED") == made.len()).then_some(())
    });
    let mut delete = vec!["delete", "configmap"];
    delete.extend(made.iter().map(String::as_str));
    s.ok(&delete);
    eventually(30, "a DELETED event with its object for each", || {
        (whole("DELETED") == made.len()).then_some(())
    });
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(filled(&s), 0);
    eventually(90, "the namespace's deletion finished", || {
        let out = s.kubectl(&["get", "namespace", "doomed"]);
        String::from_utf8_lossy(&out.stderr)
            .contains("NotFound")
            .then_some(())
    });
    s.ok_stdin(&["create", "-f", "-"], &configmap("after-delete"));

    // Full again, then a restart on the full disk: it starts and serves reads.
    let (again, err) = fill(&s, "second");
    assert_insufficient_storage(&err);
    s.restart(false);
    assert_eq!(filled(&s), again.len() + 1);
    let out = s.kubectl_stdin(&["create", "-f", "-", "-v=6"], &configmap("still-full"));
    assert!(!out.status.success());
    assert_insufficient_storage(&String::from_utf8_lossy(&out.stderr));

    // Space freed outside the API: writes are accepted again by the same process.
    let pid = s.pid();
    in_host(&s, &format!("rm {data}/ballast"));
    eventually(30, "a create after freeing space", || {
        let out = s.kubectl_stdin(&["create", "-f", "-"], &configmap("recovered"));
        if !out.status.success() {
            let df = s
                .command("df")
                .args(["-k", &data])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            eprintln!("{}{df:?}", String::from_utf8_lossy(&out.stderr));
        }
        out.status.success().then_some(())
    });
    assert_eq!(s.pid(), pid);
    assert_eq!(filled(&s), again.len() + 2);
    // Entering the full state is logged once each time, not once per refused write.
    let log = s.log();
    assert!(!log.contains("store commit failed"), "{log}");
    let warnings = log
        .lines()
        .filter(|l| l.contains("kinglet_store") && l.contains("disk is full"))
        .count();
    assert!(warnings <= 3, "{warnings} warnings:\n{log}");
    // The controllers (stopped when their lease could not be renewed) are back too.
    s.ok(&["create", "namespace", "after-full"]);
    eventually(60, "kube-root-ca.crt published in a new namespace", || {
        s.kubectl(&["get", "configmap", "kube-root-ca.crt", "-n", "after-full"])
            .status
            .success()
            .then_some(())
    });
}
