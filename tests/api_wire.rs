//! What clients see on the wire, as upstream writes it: delete responses (the object or a
//! Status), Status bodies byte for byte, and built-in objects without the empty maps Go's
//! `omitempty` leaves out (so `kubectl diff` shows nothing).

mod common;

use common::Server;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Service, ServiceAccount,
};
use kube::api::{Api, DeleteParams};
use serde_json::Value;

/// Sends a request with kube-rs and returns the status code and the raw body.
async fn raw(c: &kube::Client, method: &str, path: &str, body: &str) -> (u16, String) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("Content-Type", "application/json")
        .body(kube::client::Body::from(body.as_bytes().to_vec()))
        .unwrap();
    let resp = c.send(req).await.expect("response");
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect_bytes().await.expect("body");
    (code, String::from_utf8(bytes.to_vec()).expect("utf-8"))
}

const OBJECTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: svc}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv}
spec: {capacity: {storage: 1Gi}, accessModes: [ReadWriteOnce], hostPath: {path: /tmp/pv}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: pvc}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sa}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm, labels: {app: wire}}
data: {k: v}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm2, labels: {app: wire}}
"#;

/// Upstream's registries for Services, PVs, PVCs and ServiceAccounts return the deleted object
/// (`ReturnDeletedObject`); a ConfigMap's answers a success Status naming it. Both decode in
/// kube-rs' typed `delete`.
#[test]
fn deletes_answer_the_object_or_a_status() {
    let s = Server::start();
    s.ok_stdin(&["create", "-f", "-"], OBJECTS);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = s.client().await;
        let dp = DeleteParams::default();
        let svc = Api::<Service>::namespaced(c.clone(), "default")
            .delete("svc", &dp)
            .await
            .unwrap();
        let svc = svc.left().expect("a Service, not a Status");
        assert_eq!(svc.metadata.name.as_deref(), Some("svc"));
        let pv = Api::<PersistentVolume>::all(c.clone())
            .delete("pv", &dp)
            .await
            .unwrap();
        assert_eq!(pv.left().expect("a PV").metadata.name.as_deref(), Some("pv"));
        let pvc = Api::<PersistentVolumeClaim>::namespaced(c.clone(), "default")
            .delete("pvc", &dp)
            .await
            .unwrap();
        assert_eq!(pvc.left().expect("a PVC").metadata.name.as_deref(), Some("pvc"));
        let sa = Api::<ServiceAccount>::namespaced(c.clone(), "default")
            .delete("sa", &dp)
            .await
            .unwrap();
        assert_eq!(sa.left().expect("a ServiceAccount").metadata.name.as_deref(), Some("sa"));

        let cms = Api::<ConfigMap>::namespaced(c.clone(), "default");
        let uid = cms.get("cm").await.unwrap().metadata.uid.unwrap();
        let status = cms.delete("cm", &dp).await.unwrap().right().expect("a Status");
        let details = status.details.expect("details");
        assert_eq!(details.name, "cm");
        assert_eq!(details.kind, "configmaps");
        assert_eq!(details.group, "");
        assert_eq!(details.uid, uid);

        // The raw body, as upstream's `finalizeDelete` and encoder write it.
        let uid = cms.get("cm2").await.unwrap().metadata.uid.unwrap();
        let (code, body) = raw(&c, "DELETE", "/api/v1/namespaces/default/configmaps/cm2", "").await;
        assert_eq!(code, 200);
        assert_eq!(
            body,
            format!(
                "{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{{}},\"status\":\"Success\",\"details\":{{\"name\":\"cm2\",\"kind\":\"configmaps\",\"uid\":\"{uid}\"}}}}\n"
            )
        );
    });
}

/// A delete collection answers the list it deleted from, items as listed.
#[test]
fn delete_collection_answers_the_deleted_items() {
    let s = Server::start();
    s.ok_stdin(&["create", "-f", "-"], OBJECTS);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = s.client().await;
        let (code, body) = raw(
            &c,
            "DELETE",
            "/api/v1/namespaces/default/configmaps?labelSelector=app%3Dwire",
            "",
        )
        .await;
        assert_eq!(code, 200, "{body}");
        let list: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(list["kind"], "ConfigMapList");
        let mut names: Vec<&str> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["cm", "cm2"]);
        assert_eq!(list["items"][0]["data"]["k"], "v", "{body}");
    });
    let left = s.ok(&["get", "configmaps", "-l", "app=wire", "-o", "name"]);
    assert_eq!(left.trim(), "");
}

/// Error Status bodies byte for byte as upstream's JSON encoder writes `metav1.Status`: Go's
/// field order, empty fields (the core group) left out, and a trailing newline.
#[test]
fn status_bodies_are_byte_for_byte_upstreams() {
    let s = Server::start();
    s.ok_stdin(&["create", "-f", "-"], OBJECTS);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = s.client().await;
        let (code, body) = raw(&c, "GET", "/api/v1/namespaces/default/configmaps/nope", "").await;
        assert_eq!(code, 404);
        assert_eq!(
            body,
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"configmaps \\\"nope\\\" not found\",\"reason\":\"NotFound\",\"details\":{\"name\":\"nope\",\"kind\":\"configmaps\"},\"code\":404}\n"
        );
        let (code, body) =
            raw(&c, "GET", "/apis/apps/v1/namespaces/default/deployments/nope", "").await;
        assert_eq!(code, 404);
        assert_eq!(
            body,
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"deployments.apps \\\"nope\\\" not found\",\"reason\":\"NotFound\",\"details\":{\"name\":\"nope\",\"group\":\"apps\",\"kind\":\"deployments\"},\"code\":404}\n"
        );
        let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cm"}}"#;
        let (code, body) = raw(&c, "POST", "/api/v1/namespaces/default/configmaps", cm).await;
        assert_eq!(code, 409);
        assert_eq!(
            body,
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"configmaps \\\"cm\\\" already exists\",\"reason\":\"AlreadyExists\",\"details\":{\"name\":\"cm\",\"kind\":\"configmaps\"},\"code\":409}\n"
        );
    });
}

const WITH_EMPTY_MAPS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: a, labels: {}, annotations: {}}
data: {k: v}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: b}
data: {}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: s, labels: {}}
secrets: []
imagePullSecrets: []
"#;

const PLAIN: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: a}
data: {k: v}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: b}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: s}
"#;

fn diff(s: &Server, args: &[&str], manifest: &str) {
    let out = s.kubectl_stdin(args, manifest);
    assert_eq!(
        out.status.code(),
        Some(0),
        "kubectl {args:?} found differences:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Empty `omitempty` maps and lists are not stored, as upstream's types drop them: applied
/// objects diff clean, and so do created ones against a manifest that adds empty maps.
#[test]
fn empty_maps_are_dropped_and_diff_clean() {
    let s = Server::start();
    s.ok_stdin(&["apply", "-f", "-"], WITH_EMPTY_MAPS);
    diff(&s, &["diff", "-f", "-"], WITH_EMPTY_MAPS);
    let a: Value = serde_json::from_str(&s.ok(&["get", "cm", "a", "-o", "json"])).unwrap();
    assert!(a["metadata"].get("labels").is_none(), "{a}");
    let b: Value = serde_json::from_str(&s.ok(&["get", "cm", "b", "-o", "json"])).unwrap();
    assert!(b.get("data").is_none(), "{b}");
    let sa: Value = serde_json::from_str(&s.ok(&["get", "sa", "s", "-o", "json"])).unwrap();
    assert!(
        sa.get("secrets").is_none() && sa.get("imagePullSecrets").is_none(),
        "{sa}"
    );
    assert!(sa["metadata"].get("labels").is_none(), "{sa}");

    let s = Server::start();
    s.ok_stdin(&["create", "-f", "-"], PLAIN);
    diff(&s, &["diff", "--server-side", "-f", "-"], WITH_EMPTY_MAPS);
    let a: Value = serde_json::from_str(&s.ok(&["get", "cm", "a", "-o", "json"])).unwrap();
    assert!(a["metadata"].get("labels").is_none(), "{a}");
}

const NO_STATUS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
spec:
  selector: {matchLabels: {app: d}}
  template:
    metadata: {labels: {app: d}}
    spec: {containers: [{name: c, image: busybox:1.36}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: s}
spec:
  selector: {matchLabels: {app: s}}
  template:
    metadata: {labels: {app: s}}
    spec: {containers: [{name: c, image: busybox:1.36}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: i}
spec: {defaultBackend: {service: {name: x, port: {number: 80}}}}
---
apiVersion: batch/v1
kind: Job
metadata: {name: j}
spec:
  template:
    spec: {restartPolicy: Never, containers: [{name: c, image: busybox:1.36}]}
"#;

/// Structs Go always writes are there on a create's answer, with their zero values, as
/// upstream's types encode them: `status: {}`, a StatefulSet's `replicas: 0`.
#[test]
fn always_written_structs_are_present() {
    let s = Server::start();
    let out = s.ok_stdin(
        &["create", "--dry-run=server", "-o", "json", "-f", "-"],
        NO_STATUS,
    );
    // One JSON object per created object.
    let items: Vec<Value> = serde_json::Deserializer::from_str(&out)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap();
    let by_kind = |k: &str| items.iter().find(|i| i["kind"] == k).expect(k).clone();
    assert_eq!(by_kind("Deployment")["status"], serde_json::json!({}));
    assert_eq!(
        by_kind("StatefulSet")["status"],
        serde_json::json!({"replicas": 0, "availableReplicas": 0})
    );
    assert_eq!(
        by_kind("Ingress")["status"],
        serde_json::json!({"loadBalancer": {}})
    );
    assert_eq!(by_kind("Job")["status"], serde_json::json!({}));
    let c = &by_kind("Job")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["resources"], serde_json::json!({}), "{c}");
}

/// A Secret's `stringData` goes into `data` (winning over the same key) and is never stored
/// or answered, as upstream's conversion does.
#[test]
fn secret_string_data_is_merged_into_data() {
    let s = Server::start();
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\nstringData: {user: admin, pass: s3cret}\ndata: {pass: b2xk, other: eA==}\n",
    );
    let secret: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "secret", "creds", "-o", "json"])).unwrap();
    assert_eq!(secret["data"]["user"], "YWRtaW4=", "{secret}");
    assert_eq!(
        secret["data"]["pass"], "czNjcmV0",
        "stringData wins: {secret}"
    );
    assert_eq!(secret["data"]["other"], "eA==", "{secret}");
    assert!(secret.get("stringData").is_none(), "{secret}");
}
