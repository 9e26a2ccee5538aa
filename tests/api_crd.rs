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
