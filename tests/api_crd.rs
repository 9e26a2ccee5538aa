//! CustomResourceDefinitions: served dynamically, validated against their schema, watched.

mod common;

use common::{Server, eventually};

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wg]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}, scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
              color: {type: string, enum: [red, blue], default: red}
              replicas: {type: integer}
          status:
            type: object
            properties:
              replicas: {type: integer}
"#;

#[test]
fn custom_resources_are_served_validated_pruned_and_watched() {
    let s = Server::start();
    s.ok_stdin(&["apply", "-f", "-"], CRD);
    s.ok(&[
        "wait",
        "--for=condition=established",
        "crd/widgets.example.com",
        "--timeout=20s",
    ]);
    eventually(20, "widgets in discovery", || {
        s.ok(&["api-resources"]).contains("widgets").then_some(())
    });
    // A valid object, with an unknown field that is pruned (and warned about).
    let out = s.kubectl_stdin(&["apply", "--validate=false", "-f", "-"], "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3, extra: gone}\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let w: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "widget", "w1", "-o", "json"])).unwrap();
    assert_eq!(w["spec"]["size"], 3);
    assert_eq!(w["spec"]["color"], "red", "schema default applied");
    assert!(w["spec"].get("extra").is_none(), "unknown field pruned");
    let table = s.ok(&["get", "wg"]);
    assert!(table.contains("SIZE") && table.contains("w1"), "{table}");
    // Invalid objects get 422 with the field path.
    let err = s.fails(&["apply", "-f", "-"], Some("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {size: 0, color: green}\n"));
    assert!(
        err.contains("spec.size") && err.contains("spec.color"),
        "{err}"
    );
    assert!(err.contains("is invalid"), "{err}");
    let err = s.fails(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {color: red}\n",
        ),
    );
    assert!(err.contains("spec.size: Required value"), "{err}");
    // Patches (merge only: strategic merge is refused for custom resources), scale, status.
    s.ok(&[
        "patch",
        "widget",
        "w1",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"size":4}}"#,
    ]);
    assert_eq!(
        s.ok(&["get", "widget", "w1", "-o", "jsonpath={.spec.size}"]),
        "4"
    );
    s.ok(&["scale", "widget", "w1", "--replicas=2"]);
    assert_eq!(
        s.ok(&["get", "widget", "w1", "-o", "jsonpath={.spec.replicas}"]),
        "2"
    );
    let err = s.fails(
        &[
            "patch",
            "widget",
            "w1",
            "--type",
            "strategic",
            "-p",
            r#"{"spec":{"size":5}}"#,
        ],
        None,
    );
    assert!(
        err.contains("UnsupportedMediaType")
            || err.contains("unknown format")
            || err.contains("strategic"),
        "{err}"
    );
    // Watch delivers custom object events.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use futures::StreamExt;
        use kube::api::{Api, DynamicObject, GroupVersionKind, WatchParams};
        let client = s.client().await;
        let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
        let (ar, _) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
        let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
        let list = api.list(&Default::default()).await.unwrap();
        let rv = list.metadata.resource_version.unwrap();
        let mut stream = api
            .watch(&WatchParams::default().timeout(20), &rv)
            .await
            .unwrap()
            .boxed();
        let s2 = s.kubeconfig.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(common::kubectl_default())
                .args([
                    "patch",
                    "widget",
                    "w1",
                    "--type",
                    "merge",
                    "-p",
                    r#"{"spec":{"size":9}}"#,
                ])
                .env("KUBECONFIG", s2)
                .output()
                .unwrap();
            assert!(out.status.success());
        });
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match ev {
            kube::api::WatchEvent::Modified(o) => assert_eq!(o.data["spec"]["size"], 9),
            other => panic!("unexpected event {other:?}"),
        }
    });
    // Deleting the CRD removes its objects and its API.
    s.ok(&["delete", "crd", "widgets.example.com", "--timeout=30s"]);
    eventually(20, "widgets gone from discovery", || {
        (!s.ok(&["api-resources"]).contains("widgets")).then_some(())
    });
}

/// Runs kubectl expecting success and no warnings; returns stdout.
fn quietly(s: &Server, args: &[&str], stdin: &str) -> String {
    let out = s.kubectl_stdin(args, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl {args:?} failed: {stderr}");
    assert!(
        !stderr.contains("Warning"),
        "kubectl {args:?} warned: {stderr}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// controller-gen declares `metadata: {type: object}`: the object's metadata is still
/// ObjectMeta (kept, never reported as unknown), while unknown fields elsewhere are refused.
#[test]
fn controller_gen_crds_take_every_write_without_warnings() {
    let s = Server::start();
    let crd = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/controller-gen-crd.yaml"),
    )
    .unwrap();
    s.ok_stdin(&["apply", "-f", "-"], &crd);
    s.ok(&[
        "wait",
        "--for=condition=established",
        "crd/backups.ops.example.io",
        "--timeout=20s",
    ]);
    eventually(20, "backups in discovery", || {
        s.ok(&["api-resources"]).contains("backups").then_some(())
    });
    let backup = |name: &str, schedule: &str| {
        format!(
            "apiVersion: ops.example.io/v1alpha1\nkind: Backup\nmetadata:\n  name: {name}\n  labels: {{app: db}}\n  annotations: {{team: storage}}\nspec:\n  schedule: \"{schedule}\"\n  retention: {{keepLast: 3, maxAge: 7d}}\n  targets:\n  - name: main\n    selector: {{matchLabels: {{app: db}}}}\n"
        )
    };
    quietly(&s, &["create", "-f", "-"], &backup("created", "0 1 * * *"));
    quietly(&s, &["apply", "-f", "-"], &backup("applied", "0 2 * * *"));
    quietly(&s, &["apply", "-f", "-"], &backup("applied", "0 3 * * *"));
    quietly(
        &s,
        &["apply", "--server-side", "--field-manager=op", "-f", "-"],
        &backup("ssa", "0 4 * * *"),
    );
    quietly(
        &s,
        &["apply", "--server-side", "--field-manager=op", "-f", "-"],
        &backup("ssa", "0 5 * * *"),
    );
    let status = r#"{"status":{"lastBackupTime":"2026-01-01T00:00:00Z","conditions":[{"type":"Ready","status":"True","reason":"Done","message":"ok","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#;
    quietly(
        &s,
        &[
            "patch",
            "backup",
            "ssa",
            "--subresource=status",
            "--type=merge",
            "-p",
            status,
        ],
        "",
    );
    for name in ["created", "applied", "ssa"] {
        let b: serde_json::Value =
            serde_json::from_str(&s.ok(&["get", "backup", name, "-o", "json"])).unwrap();
        assert_eq!(b["metadata"]["labels"]["app"], "db", "{b}");
        assert_eq!(b["metadata"]["annotations"]["team"], "storage", "{b}");
        assert_eq!(
            b["spec"]["targets"][0]["selector"]["matchLabels"]["app"],
            "db"
        );
    }
    let b: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "backup", "ssa", "-o", "json"])).unwrap();
    assert_eq!(b["spec"]["schedule"], "0 5 * * *");
    assert_eq!(b["status"]["conditions"][0]["reason"], "Done");
    let table = s.ok(&["get", "backup", "ssa"]);
    assert!(
        table.contains("0 5 * * *") && table.contains("True"),
        "{table}"
    );
    // Unknown fields, in the spec or in metadata, are still refused under Strict.
    let err = s.fails(
        &["apply", "-f", "-"],
        Some(&backup("bad", "0 1 * * *").replace("  schedule:", "  color: red\n  schedule:")),
    );
    assert!(err.contains(r#"unknown field "spec.color""#), "{err}");
    let err = s.fails(
        &["create", "-f", "-"],
        Some(&backup("bad", "0 1 * * *").replace("  name: bad", "  name: bad\n  owner: me")),
    );
    assert!(err.contains(r#"unknown field "metadata.owner""#), "{err}");
}
