//! The API server through the real kubectl (1.33 and 1.28): discovery, CRUD, patches, apply,
//! watch, describe, errors.

mod common;

use std::path::Path;

use common::{Server, kubectl_versions};
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

const SEED: &str = include_str!("fixtures/httpbin-deployment.yaml");

fn discovery_and_explain(s: &Server, k: &Path) {
    let v = json(&s.ok_in(k, &["get", "--raw", "/version"]));
    assert_eq!(v["major"], "1");
    assert_eq!(v["minor"], "33");
    let resources = s.ok_in(k, &["api-resources"]);
    for want in [
        "deployments",
        "customresourcedefinitions",
        "endpointslices",
        "leases",
        "horizontalpodautoscalers",
        "priorityclasses",
        "networkpolicies",
    ] {
        assert!(
            resources.contains(want),
            "api-resources lacks {want}:\n{resources}"
        );
    }
    let versions = s.ok_in(k, &["api-versions"]);
    for want in [
        "apps/v1",
        "batch/v1",
        "discovery.k8s.io/v1",
        "rbac.authorization.k8s.io/v1",
        "autoscaling/v2",
        "events.k8s.io/v1",
        "v1",
    ] {
        assert!(
            versions.lines().any(|l| l == want),
            "api-versions lacks {want}"
        );
    }
    let explain = s.ok_in(k, &["explain", "deployment.spec.strategy"]);
    assert!(
        explain.contains("rollingUpdate") && explain.contains("DeploymentStrategy"),
        "{explain}"
    );
    let info = s.ok_in(k, &["cluster-info"]);
    assert!(info.contains(&format!("127.0.0.1:{}", s.port)), "{info}");
}

fn crud_flow(s: &Server, k: &Path) {
    let dir = s.dir.path();
    let manifest = dir.join("deploy.yaml");
    // Client-side apply, then a changed file, then server-side apply.
    std::fs::write(&manifest, SEED).unwrap();
    assert!(
        s.ok_in(k, &["apply", "-f", manifest.to_str().unwrap()])
            .contains("created")
    );
    std::fs::write(&manifest, SEED.replace("replicas: 2", "replicas: 3")).unwrap();
    assert!(
        s.ok_in(k, &["apply", "-f", manifest.to_str().unwrap()])
            .contains("configured")
    );
    assert_eq!(
        s.ok_in(
            k,
            &[
                "get",
                "deploy",
                "httpbin",
                "-o",
                "jsonpath={.spec.replicas}"
            ]
        ),
        "3"
    );
    s.ok_in(
        k,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            manifest.to_str().unwrap(),
        ],
    );
    let d = json(&s.ok_in(
        k,
        &[
            "get",
            "deploy",
            "httpbin",
            "-o",
            "json",
            "--show-managed-fields",
        ],
    ));
    let managers: Vec<&str> = d["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(managers.contains(&"kubectl"), "{managers:?}");
    // create, get in several formats
    s.ok_in(k, &["create", "configmap", "cfg", "--from-literal=a=1"]);
    s.ok_in(
        k,
        &["create", "secret", "generic", "sec", "--from-literal=p=x"],
    );
    assert_eq!(
        s.ok_in(k, &["get", "cm", "cfg", "-o", "name"]).trim(),
        "configmap/cfg"
    );
    assert_eq!(
        s.ok_in(k, &["get", "cm", "cfg", "-o", "jsonpath={.data.a}"]),
        "1"
    );
    assert!(
        s.ok_in(k, &["get", "cm", "cfg", "-o", "yaml"])
            .contains("name: cfg")
    );
    let wide = s.ok_in(k, &["get", "deploy", "-o", "wide"]);
    assert!(
        wide.contains("CONTAINERS")
            && wide.contains("kennethreitz/httpbin")
            && wide.contains("app=httpbin"),
        "{wide}"
    );
    // edit-style replace
    let mut cm = json(&s.ok_in(k, &["get", "cm", "cfg", "-o", "json"]));
    cm["data"]["b"] = "2".into();
    s.ok_stdin_in(k, &["replace", "-f", "-"], &cm.to_string());
    // patches of all three kinds, label, annotate, scale
    s.ok_in(
        k,
        &[
            "patch",
            "cm",
            "cfg",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"c":"3"}}"#,
        ],
    );
    s.ok_in(
        k,
        &[
            "patch",
            "cm",
            "cfg",
            "--type",
            "json",
            "-p",
            r#"[{"op":"add","path":"/data/d","value":"4"}]"#,
        ],
    );
    s.ok_in(k, &["patch", "deploy", "httpbin", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"httpbin","image":"busybox:1.36"}]}}}}"#]);
    s.ok_in(k, &["label", "cm", "cfg", "tier=web"]);
    s.ok_in(k, &["annotate", "cm", "cfg", "note=hello"]);
    s.ok_in(k, &["scale", "deploy", "httpbin", "--replicas=5"]);
    let cm = json(&s.ok_in(k, &["get", "cm", "cfg", "-o", "json"]));
    assert_eq!(
        cm["data"],
        serde_json::json!({"a": "1", "b": "2", "c": "3", "d": "4"})
    );
    assert_eq!(cm["metadata"]["labels"]["tier"], "web");
    assert_eq!(cm["metadata"]["annotations"]["note"], "hello");
    let d = json(&s.ok_in(k, &["get", "deploy", "httpbin", "-o", "json"]));
    assert_eq!(d["spec"]["replicas"], 5);
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1, "strategic merge must merge by name");
    assert_eq!(containers[0]["image"], "busybox:1.36");
    assert_eq!(
        containers[0]["imagePullPolicy"], "Always",
        "pull policy kept from the original"
    );
    assert!(d["metadata"]["generation"].as_i64().unwrap() >= 3);
    assert_eq!(
        s.ok_in(k, &["get", "cm", "-l", "tier=web", "-o", "name"])
            .trim(),
        "configmap/cfg"
    );
    assert_eq!(
        s.ok_in(
            k,
            &[
                "get",
                "cm",
                "--field-selector",
                "metadata.name=cfg",
                "-o",
                "name"
            ]
        )
        .trim(),
        "configmap/cfg"
    );
    // describe
    s.ok_in(
        k,
        &["create", "service", "clusterip", "web", "--tcp=80:8080"],
    );
    for (kind, name) in [
        ("namespace", "default"),
        ("configmap", "cfg"),
        ("secret", "sec"),
        ("service", "web"),
        ("deployment", "httpbin"),
    ] {
        let out = s.ok_in(k, &["describe", kind, name]);
        assert!(
            out.contains("Name:") && out.contains(name),
            "describe {kind}: {out}"
        );
    }
    // deletes: foreground waits for the garbage collector, --all clears a namespace
    s.ok_in(
        k,
        &[
            "delete",
            "cm",
            "cfg",
            "--cascade=foreground",
            "--timeout=20s",
        ],
    );
    assert!(s.kubectl_in(k, &["get", "cm", "cfg"]).status.code() != Some(0));
    s.ok_in(k, &["create", "cm", "x1"]);
    s.ok_in(k, &["create", "cm", "x2"]);
    s.ok_in(k, &["delete", "cm", "--all"]);
    // Only the root CA ConfigMap, which its controller recreates, may be back.
    let left = s.ok_in(k, &["get", "cm", "-o", "name"]);
    assert!(
        left.lines().all(|l| l == "configmap/kube-root-ca.crt"),
        "{left}"
    );
    s.ok_in(k, &["delete", "deploy", "httpbin"]);
}

impl Server {
    fn ok_stdin_in(&self, k: &Path, args: &[&str], input: &str) -> String {
        let out = self.kubectl_with(k, args, Some(input));
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn kubectl_versions_discovery_crud_patch_apply_describe_delete() {
    for (version, k) in kubectl_versions() {
        let s = Server::start();
        eprintln!("kubectl {version}");
        discovery_and_explain(&s, &k);
        crud_flow(&s, &k);
    }
}

#[test]
fn seed_deployment_reads_back_with_upstream_defaults() {
    let s = Server::start();
    s.ok_stdin(&["apply", "-f", "-"], SEED);
    let d = json(&s.ok(&[
        "get",
        "deployment",
        "httpbin",
        "-n",
        "default",
        "-o",
        "json",
    ]));
    let spec = &d["spec"];
    assert_eq!(spec["replicas"], 2);
    assert_eq!(spec["revisionHistoryLimit"], 10);
    assert_eq!(spec["progressDeadlineSeconds"], 600);
    assert_eq!(
        spec["strategy"],
        serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
    );
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Always");
    assert_eq!(pod["dnsPolicy"], "ClusterFirst");
    assert_eq!(pod["schedulerName"], "default-scheduler");
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    assert_eq!(pod["securityContext"], serde_json::json!({}));
    let c = &pod["containers"][0];
    assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(c["terminationMessagePolicy"], "File");
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(c["resources"], serde_json::json!({}));
    assert_eq!(d["metadata"]["generation"], 1);
    assert!(d["metadata"]["uid"].as_str().unwrap().len() == 36);
}

#[test]
fn watch_delivers_events_as_they_happen() {
    let s = Server::start();
    let mut child = std::process::Command::new(common::kubectl_default())
        .args([
            "get",
            "configmaps",
            "--field-selector=metadata.name=w1",
            "-w",
            "--output-watch-events",
            "--no-headers",
        ])
        .env("KUBECONFIG", &s.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let next = |want: &str| {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("watch event");
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            words[..2],
            want.split_whitespace().collect::<Vec<_>>()[..],
            "{line}"
        );
    };
    s.ok(&["create", "cm", "w1"]);
    next("ADDED w1");
    s.ok(&["label", "cm", "w1", "a=b"]);
    next("MODIFIED w1");
    s.ok(&["delete", "cm", "w1"]);
    next("DELETED w1");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn errors_are_upstream_statuses_and_the_server_keeps_serving() {
    let s = Server::start();
    // stale update -> 409 Conflict
    s.ok(&["create", "cm", "c"]);
    let mut cm = json(&s.ok(&["get", "cm", "c", "-o", "json"]));
    s.ok(&["label", "cm", "c", "x=y"]);
    cm["data"] = serde_json::json!({"k": "v"});
    let err = s.fails(&["replace", "-f", "-"], Some(&cm.to_string()));
    assert!(
        err.contains("Conflict") && err.contains("the object has been modified"),
        "{err}"
    );
    // bad name and missing field -> 422 with field causes
    let err = s.fails(
        &["create", "-f", "-"],
        Some(r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#),
    );
    assert!(
        err.contains("is invalid") && err.contains("metadata.name: Invalid value: \"Bad_Name\""),
        "{err}"
    );
    let err = s.fails(&["create", "-f", "-"], Some(r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c"}]}}"#));
    assert!(
        err.contains("spec.containers[0].image: Required value"),
        "{err}"
    );
    // unknown field under strict validation -> 400
    let err = s.fails(
        &["create", "--validate=strict", "-f", "-"],
        Some(r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"u"},"bogus":1}"#),
    );
    assert!(err.contains("unknown field \"bogus\""), "{err}");
    // missing namespace -> 404
    let err = s.fails(&["create", "cm", "x", "-n", "nope"], None);
    assert!(err.contains("namespaces \"nope\" not found"), "{err}");
    // malformed JSON and YAML bodies, oversized body: raw requests through kube-rs
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = s.client().await;
        let post = |body: Vec<u8>, ct: &str| {
            http::Request::post("/api/v1/namespaces/default/configmaps").header("Content-Type", ct).body(body).unwrap()
        };
        for (body, ct) in [(b"{\"metadata\":".to_vec(), "application/json"), (b"metadata: [unclosed".to_vec(), "application/yaml")] {
            let err = client.request_text(post(body, ct)).await.unwrap_err();
            assert!(matches!(&err, kube::Error::Api(s) if s.code == 400), "{err:?}");
        }
        let big = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"x":"{}"}}}}"#, "a".repeat(3 * 1024 * 1024 + 10));
        let err = client.request_text(post(big.into_bytes(), "application/json")).await.unwrap_err();
        assert!(matches!(&err, kube::Error::Api(s) if s.code == 413), "{err:?}");
        let err = client.request_text(post(b"{}".to_vec(), "text/csv")).await.unwrap_err();
        assert!(matches!(&err, kube::Error::Api(s) if s.code == 415), "{err:?}");
        // Nesting far past the decoders' limit, YAML alias bombs (billion laughs; one long
        // string referenced 32k times) and a JSON patch copying the object into itself 40
        // times: a 4xx, quickly, and nothing written.
        let nested = |open: &str, close: &str| format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"deep"}},"x":{}1{}}}"#, open.repeat(5000), close.repeat(5000));
        let deep_yaml = format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: deep}}\nx: {}{}\n", "[".repeat(5000), "]".repeat(5000));
        let mut laughs = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\na0: &a0 [lol]\n");
        for i in 1..10 {
            laughs += &format!("a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 9].join(","));
        }
        let wide = format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: wide}}\nx: &x \"{}\"\ny: [{}]\n", "z".repeat(64 * 1024), vec!["*x"; 32 * 1024].join(","));
        for (body, ct) in [(nested("[", "]"), "application/json"), (nested("{\"a\":", "}"), "application/json"), (deep_yaml, "application/yaml"), (laughs, "application/yaml"), (wide, "application/yaml")] {
            let started = std::time::Instant::now();
            let err = client.request_text(post(body.into_bytes(), ct)).await.unwrap_err();
            assert!(matches!(&err, kube::Error::Api(s) if s.code == 400), "{err:?}");
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
        }
        let copies: Vec<String> = (0..40).map(|i| format!(r#"{{"op":"copy","from":"","path":"/c{i}"}}"#)).collect();
        let patch = http::Request::patch("/api/v1/namespaces/default/configmaps/c").header("Content-Type", "application/json-patch+json").body(format!("[{}]", copies.join(",")).into_bytes()).unwrap();
        let err = client.request_text(patch).await.unwrap_err();
        assert!(matches!(&err, kube::Error::Api(s) if s.code == 422), "{err:?}");
        // A limit past what the store can count is no limit (it was a 500).
        let list = http::Request::get("/api/v1/namespaces/default/configmaps?limit=9223372036854775807").body(Vec::new()).unwrap();
        assert!(client.request_text(list).await.unwrap().contains(r#""name":"c""#));
    });
    assert_eq!(
        s.ok(&["get", "cm", "c", "-o", "jsonpath={.metadata.labels.x}"]),
        "y"
    );
}

#[test]
fn authentication_rules() {
    let s = Server::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Anonymous: health and version only (system:public-info-viewer); the rest is forbidden.
        let anon = reqwest_like_anonymous(s.port).await;
        assert_eq!(anon("/healthz").await, 200);
        assert_eq!(anon("/version").await, 200);
        assert_eq!(anon("/api").await, 403);
        assert_eq!(anon("/api/v1/namespaces").await, 403);
    });
    // A service account token from TokenRequest authenticates as that account.
    s.ok(&["create", "serviceaccount", "robot"]);
    let token = s.ok(&["create", "token", "robot"]).trim().to_string();
    let who = s.ok(&[
        "auth",
        "whoami",
        "--token",
        &token,
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]);
    assert_eq!(who, "system:serviceaccount:default:robot");
    let err = s.fails(&["get", "ns", "--token", "not-a-token"], None);
    assert!(
        err.contains("Unauthorized") || err.contains("provide credentials"),
        "{err}"
    );
    // Deleting the account invalidates its tokens.
    s.ok(&["delete", "serviceaccount", "robot"]);
    assert!(
        !s.kubectl(&["get", "ns", "--token", &token])
            .status
            .success()
    );
}

/// A minimal anonymous HTTPS GET returning the status code (trusting the cluster CA).
async fn reqwest_like_anonymous(
    port: u16,
) -> impl Fn(&'static str) -> std::pin::Pin<Box<dyn std::future::Future<Output = u16>>> {
    move |path: &'static str| {
        Box::pin(async move {
            let out = tokio::process::Command::new("curl")
                .args([
                    "-sk",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &format!("https://127.0.0.1:{port}{path}"),
                ])
                .output()
                .await
                .expect("curl");
            String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
        })
    }
}

#[test]
fn services_get_addresses_and_node_ports_from_the_ranges() {
    let s = Server::start_with(&[
        "--service-cidr",
        "10.96.0.0/24",
        "--service-node-port-range",
        "31000-31010",
    ]);
    let ip = s.ok(&[
        "get",
        "svc",
        "kubernetes",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(ip, "10.96.0.1");
    s.ok(&["create", "service", "nodeport", "np", "--tcp=80:8080"]);
    let svc = json(&s.ok(&["get", "svc", "np", "-o", "json"]));
    let cip = svc["spec"]["clusterIP"].as_str().unwrap();
    assert!(cip.starts_with("10.96.0.") && cip != "10.96.0.1", "{cip}");
    let np = svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    assert!((31000..=31010).contains(&np), "{np}");
    let err = s.fails(&["create", "-f", "-"], Some(&format!(r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"dup"}},"spec":{{"clusterIP":"{cip}","ports":[{{"port":80}}]}}}}"#)));
    assert!(err.contains("provided IP is already allocated"), "{err}");
    // Deleting frees the address for reuse.
    s.ok(&["delete", "svc", "np"]);
    s.ok_stdin(&["create", "-f", "-"], &format!(r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"reuse"}},"spec":{{"clusterIP":"{cip}","ports":[{{"port":80}}]}}}}"#));
}

#[test]
fn namespace_lifecycle_and_metrics() {
    let s = Server::start();
    s.ok(&["create", "namespace", "team"]);
    s.ok(&["create", "cm", "a", "-n", "team"]);
    s.ok(&["create", "secret", "generic", "b", "-n", "team"]);
    s.ok(&["create", "deployment", "d", "--image=busybox", "-n", "team"]);
    s.ok(&[
        "create",
        "service",
        "clusterip",
        "svc",
        "--tcp=80",
        "-n",
        "team",
    ]);
    s.ok(&["delete", "namespace", "team", "--timeout=30s"]);
    let err = s.fails(&["create", "cm", "late", "-n", "team"], None);
    assert!(
        err.contains("not found") || err.contains("being terminated"),
        "{err}"
    );
    for kind in ["cm", "secrets", "deployments", "services"] {
        assert_eq!(
            s.ok(&["get", kind, "-n", "team", "-o", "name"]).trim(),
            "",
            "{kind} left behind"
        );
    }
    let metrics = s.ok(&["get", "--raw", "/metrics"]);
    assert!(metrics.contains("apiserver_request_total{"), "{metrics}");
    assert!(metrics.contains("kinglet_store_db_size_bytes"));
}

/// Both Event versions print the regarding object and the note, whichever version wrote them.
#[test]
fn events_print_their_object_and_note_in_both_versions() {
    let s = Server::start();
    s.ok_stdin(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: Event\nmetadata: {name: core-ev}\ninvolvedObject: {kind: Pod, name: web-1, namespace: default}\nreason: Pulled\nmessage: image pulled from core\ntype: Normal\n",
    );
    s.ok_stdin(
        &["create", "-f", "-"],
        "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {name: new-ev}\neventTime: \"2026-01-01T00:00:00.000000Z\"\nreportingController: example.io/ctl\nreportingInstance: ctl-1\naction: Pull\nregarding: {kind: Pod, name: web-2, namespace: default}\nreason: Pulled\nnote: image pulled from events\ntype: Normal\n",
    );
    for resource in ["events", "events.v1.events.k8s.io"] {
        let table = s.ok(&["get", resource]);
        for want in [
            "pod/web-1",
            "image pulled from core",
            "pod/web-2",
            "image pulled from events",
        ] {
            assert!(table.contains(want), "{resource}: {want} missing:\n{table}");
        }
    }
}

/// ValidatingAdmissionPolicies and their bindings are stored and served as upstream's types
/// (kinglet does not enforce them: no CEL for Kubernetes' libraries).
#[test]
fn validating_admission_policies_are_stored_and_served() {
    let s = Server::start();
    let out = s.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: replicas-limit}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: [apps]
      apiVersions: [v1]
      operations: [CREATE, UPDATE]
      resources: [deployments]
  validations:
  - expression: "object.spec.replicas <= 5"
    message: too many replicas
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: replicas-limit}
spec:
  policyName: replicas-limit
  validationActions: [Deny]
"#,
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ValidatingAdmissionPolicy: stored but not enforced by kinglet")
            && stderr.contains("ValidatingAdmissionPolicyBinding: stored but not enforced"),
        "{stderr}"
    );
    let policy: serde_json::Value = serde_json::from_str(&s.ok(&[
        "get",
        "validatingadmissionpolicy",
        "replicas-limit",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(
        policy["spec"]["validations"][0]["expression"],
        "object.spec.replicas <= 5"
    );
    let bindings = s.ok(&["get", "validatingadmissionpolicybindings"]);
    assert!(bindings.contains("replicas-limit"), "{bindings}");
    // A spec field of the wrong type is refused as upstream's decoder refuses it.
    let err = s.fails(
        &["apply", "-f", "-"],
        Some("apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\nmetadata: {name: bad}\nspec: {policyName: [x]}\n"),
    );
    assert!(
        err.contains("cannot be handled as a ValidatingAdmissionPolicyBinding"),
        "{err}"
    );
}
