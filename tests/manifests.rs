//! Auto-deploy manifests: the YAML files in `<data-dir>/server/manifests/` are applied, kept
//! up to date and deleted with their file, as k3s does.

mod common;

use common::{Server, eventually};

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: auto
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: auto
data:
  colour: blue
---
# no namespace: goes to default
apiVersion: v1
kind: ConfigMap
metadata:
  name: plain
data:
  a: "1"
"#;

fn json(s: &Server, args: &[&str]) -> Option<serde_json::Value> {
    let out = s.kubectl(args);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn absent(s: &Server, args: &[&str]) -> bool {
    let out = s.kubectl(args);
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound")
}

#[test]
fn manifests_are_applied_updated_and_deleted_with_their_file() {
    let s = Server::start();
    let dir = s.data_dir().join("server").join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    // A skipped manifest is never applied.
    std::fs::write(
        dir.join("skipped.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: skipped}\n",
    )
    .unwrap();
    std::fs::write(dir.join("skipped.skip"), "").unwrap();
    std::fs::write(dir.join("app.yaml"), MANIFEST).unwrap();

    let cm = eventually(30, "the manifest's ConfigMap", || {
        json(
            &s,
            &[
                "get",
                "configmap",
                "settings",
                "-n",
                "auto",
                "-o",
                "json",
                "--show-managed-fields",
            ],
        )
    });
    assert_eq!(cm["data"]["colour"], "blue");
    assert_eq!(
        cm["metadata"]["annotations"]["kinglet.io/manifest"],
        "app.yaml"
    );
    let managers: Vec<&str> = cm["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(managers, ["kinglet"], "{cm}");
    assert_eq!(cm["metadata"]["managedFields"][0]["operation"], "Apply");
    json(&s, &["get", "namespace", "auto", "-o", "json"]).expect("the namespace");
    json(
        &s,
        &["get", "configmap", "plain", "-n", "default", "-o", "json"],
    )
    .expect("a namespaced object without a namespace goes to default");
    let state = s.data_dir().join("server").join("manifests.state.json");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // An edit is applied; an object dropped from the file is deleted.
    std::fs::write(
        dir.join("app.yaml"),
        MANIFEST
            .replace("colour: blue", "colour: green")
            .split("# no namespace")
            .next()
            .unwrap(),
    )
    .unwrap();
    eventually(30, "the edit applied", || {
        json(
            &s,
            &["get", "configmap", "settings", "-n", "auto", "-o", "json"],
        )
        .filter(|cm| cm["data"]["colour"] == "green")
    });
    eventually(30, "the dropped object deleted", || {
        absent(&s, &["get", "configmap", "plain", "-n", "default"]).then_some(())
    });

    // Invalid YAML: a warning naming the file, nothing changes.
    std::fs::write(dir.join("app.yaml"), "apiVersion: v1\nkind: [ConfigMap\n").unwrap();
    eventually(30, "a warning about the bad file", || {
        s.log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("app.yaml") && l.contains("invalid YAML"))
            .then_some(())
    });
    std::thread::sleep(std::time::Duration::from_secs(5));
    let cm = json(
        &s,
        &["get", "configmap", "settings", "-n", "auto", "-o", "json"],
    )
    .expect("still there after a bad edit");
    assert_eq!(cm["data"]["colour"], "green");
    let warnings = s
        .log()
        .lines()
        .filter(|l| l.contains("app.yaml") && l.contains("invalid YAML"))
        .count();
    assert_eq!(warnings, 1, "logged once per change:\n{}", s.log());
    assert!(
        absent(&s, &["get", "configmap", "skipped", "-n", "default"]),
        "a .skip file keeps its manifest from being applied"
    );

    // The file removed: its objects go.
    std::fs::remove_file(dir.join("app.yaml")).unwrap();
    eventually(30, "the ConfigMap deleted", || {
        absent(&s, &["get", "configmap", "settings", "-n", "auto"]).then_some(())
    });
    eventually(60, "the Namespace deleted", || {
        absent(&s, &["get", "namespace", "auto"]).then_some(())
    });
    // Removing the .skip file applies the skipped manifest.
    std::fs::remove_file(dir.join("skipped.skip")).unwrap();
    eventually(30, "the formerly skipped manifest applied", || {
        json(
            &s,
            &["get", "configmap", "skipped", "-n", "default", "-o", "json"],
        )
    });
}

#[test]
fn manifests_removed_while_the_server_was_down_are_cleaned_up() {
    let mut s = Server::start();
    let dir = s.data_dir().join("server").join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("gone.yml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: gone}\ndata: {k: v}\n",
    )
    .unwrap();
    eventually(30, "the ConfigMap applied", || {
        json(&s, &["get", "configmap", "gone", "-o", "json"])
    });
    s.stop(false);
    std::fs::remove_file(dir.join("gone.yml")).unwrap();
    s.restart(false);
    eventually(30, "the ConfigMap deleted after the restart", || {
        absent(&s, &["get", "configmap", "gone"]).then_some(())
    });
}
