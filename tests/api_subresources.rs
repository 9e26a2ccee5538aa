//! Subresources and immutability: pods/binding, status, scale, immutable fields, --version.

mod common;

use common::Server;
use serde_json::{Value, json};

async fn send(
    c: &kube::Client,
    method: &str,
    path: &str,
    ct: &str,
    body: Value,
) -> Result<Value, kube::Error> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("Content-Type", ct)
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
    c.request::<Value>(req).await
}

#[test]
fn binding_status_and_immutable_fields() {
    let s = Server::start();
    s.ok_stdin(&["create", "-f", "-"], r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"busybox:1.36"}]}}"#);
    let pod: Value = serde_json::from_str(&s.ok(&["get", "pod", "p", "-o", "json"])).unwrap();
    assert_eq!(pod["status"]["phase"], "Pending");
    assert_eq!(pod["status"]["qosClass"], "BestEffort");
    assert_eq!(pod["spec"]["serviceAccountName"], "default");
    assert_eq!(pod["spec"]["enableServiceLinks"], true);
    assert!(
        pod["spec"]["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/not-ready")
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = s.client().await;
        let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}});
        send(&c, "POST", "/api/v1/namespaces/default/pods/p/binding", "application/json", binding.clone()).await.unwrap();
        let err = send(&c, "POST", "/api/v1/namespaces/default/pods/p/binding", "application/json", binding).await.unwrap_err();
        assert!(matches!(&err, kube::Error::Api(st) if st.code == 409 && st.message.contains("already assigned")), "{err:?}");
        // The status subresource changes status only; the main resource ignores status.
        let mut pod: Value = send(&c, "GET", "/api/v1/namespaces/default/pods/p", "application/json", Value::Null).await.unwrap();
        pod["status"]["phase"] = json!("Running");
        pod["metadata"]["labels"] = json!({"ignored": "yes"});
        let out = send(&c, "PUT", "/api/v1/namespaces/default/pods/p/status", "application/json", pod.clone()).await.unwrap();
        assert_eq!(out["status"]["phase"], "Running");
        assert!(out["metadata"].get("labels").is_none());
        let patched = send(&c, "PATCH", "/api/v1/namespaces/default/pods/p", "application/merge-patch+json", json!({"status": {"phase": "Failed"}})).await.unwrap();
        assert_eq!(patched["status"]["phase"], "Running");
        // Pod specs are immutable apart from a few fields.
        let err = send(&c, "PATCH", "/api/v1/namespaces/default/pods/p", "application/merge-patch+json", json!({"spec": {"restartPolicy": "Never"}})).await.unwrap_err();
        assert!(matches!(&err, kube::Error::Api(st) if st.code == 422), "{err:?}");
        send(&c, "PATCH", "/api/v1/namespaces/default/pods/p", "application/strategic-merge-patch+json", json!({"spec": {"containers": [{"name": "c", "image": "busybox:1.37"}]}})).await.unwrap();
    });
    // Deployment selectors are immutable.
    s.ok(&["create", "deployment", "d", "--image=busybox"]);
    let err = s.fails(
        &[
            "patch",
            "deployment",
            "d",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"selector":{"matchLabels":{"app":"other"}}}}"#,
        ],
        None,
    );
    assert!(
        err.contains("field is immutable") || err.contains("does not match"),
        "{err}"
    );
    // Scale through the scale subresource reads back.
    s.ok(&["scale", "deployment", "d", "--replicas=4"]);
    let scale: Value = serde_json::from_str(&s.ok(&[
        "get",
        "--raw",
        "/apis/apps/v1/namespaces/default/deployments/d/scale",
    ]))
    .unwrap();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 4);
    assert_eq!(scale["status"]["selector"], "app=d");
}

#[test]
fn version_flag_names_kinglet_and_api_level() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kinglet"))
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.starts_with("kinglet v") && text.contains("Kubernetes API v1.33"),
        "{text}"
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_kinglet"))
        .args(["server", "--https-listen-port", "notaport"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid value"));
}

#[test]
fn bodies_that_are_not_objects_get_400_and_do_not_hurt_the_server() {
    let s = Server::start();
    let file = s.dir.path().join("body.json");
    for body in ["[1, 2]", "\"text\"", "42", "null"] {
        std::fs::write(&file, body).unwrap();
        for path in [
            "/api/v1/namespaces/default/serviceaccounts/default/token",
            "/api/v1/namespaces/default/configmaps",
            "/api/v1/namespaces/default/pods/x/binding",
        ] {
            let err = s.fails(
                &["create", "--raw", path, "-f", file.to_str().unwrap()],
                None,
            );
            assert!(
                err.contains("BadRequest")
                    || err.contains("400")
                    || err.contains("expected an object"),
                "{body} to {path}: {err}"
            );
        }
    }
    s.ok(&["get", "--raw", "/readyz"]);
}
