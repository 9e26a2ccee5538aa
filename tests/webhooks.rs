//! Admission webhooks: kinglet calls Mutating/ValidatingWebhookConfigurations' webhooks as
//! upstream's API server does (AdmissionReview v1 over HTTPS, verified with the caBundle).

mod common;

use std::sync::{Arc, Mutex};

use common::tls_backend::{self, TlsBackend};
use common::{Server, eventually};
use serde_json::{Value, json};

/// The test backend itself: HTTPS with its own CA, verified by curl with that CA only.
#[test]
fn tls_backend_serves_with_its_ca() {
    let b = TlsBackend::start("127.0.0.1:0", &["127.0.0.1"], |m, p, body| {
        (200, format!("{m} {p} {}", body.len()).into_bytes())
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, b.ca_pem()).expect("ca");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca)
        .args(["-d", "abc"])
        .arg(format!("https://127.0.0.1:{}/x?y=1", b.port()))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "POST /x?y=1 3");
    assert_eq!(b.requests(), 1);
    assert_eq!(
        tls_backend::unbase64(&b.ca_bundle()).as_deref(),
        Some(b.ca_pem().as_bytes())
    );
}

/// The AdmissionReviews a webhook received.
type Seen = Arc<Mutex<Vec<Value>>>;

/// A webhook answering each review with `decide(request)`: the response fields besides `uid`.
fn webhook(
    addr: &str,
    sans: &[&str],
    decide: impl Fn(&Value) -> Value + Send + Sync + 'static,
) -> (TlsBackend, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let backend = TlsBackend::start(addr, sans, move |_, _, body| answer(&log, &decide, body));
    (backend, seen)
}

fn answer(seen: &Seen, decide: &dyn Fn(&Value) -> Value, body: &[u8]) -> (u16, Vec<u8>) {
    let Ok(review) = serde_json::from_slice::<Value>(body) else {
        return (400, b"{}".to_vec());
    };
    seen.lock().unwrap().push(review.clone());
    let req = &review["request"];
    let mut resp = decide(req);
    resp["uid"] = req["uid"].clone();
    let out =
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp});
    (200, out.to_string().into_bytes())
}

/// A webhook configuration of one webhook on configmaps at `url`.
fn config(kind: &str, name: &str, hook: &str, client: Value, extra: Value) -> String {
    let mut w = json!({
        "name": hook,
        "clientConfig": client,
        "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
            "resources": ["configmaps"]}],
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        w[k] = v.clone();
    }
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name},
        "webhooks": [w],
    })
    .to_string()
}

fn url_client(b: &TlsBackend, path: &str) -> Value {
    json!({"url": format!("https://127.0.0.1:{}{path}", b.port()), "caBundle": b.ca_bundle()})
}

fn configmap(name: &str, ns: &str, labels: Value, data: Value) -> String {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": labels}, "data": data})
    .to_string()
}

/// Applies a webhook configuration and waits until the server calls it.
fn install(s: &Server, seen: &Seen, config: &str) {
    s.ok_stdin(&["apply", "-f", "-"], config);
    until_called(
        s,
        seen,
        &configmap("probe", "default", json!({}), json!({})),
    );
}

/// Waits until the server calls the webhook (configurations reach admission through a watch):
/// dry-run creates of `probe` until `seen` grows.
fn until_called(s: &Server, seen: &Seen, probe: &str) {
    eventually(10, "the webhook to be called", || {
        let _ = s.kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], probe);
        (!seen.lock().unwrap().is_empty()).then_some(())
    });
    seen.lock().unwrap().clear();
}

fn deny_forbidden_key(req: &Value) -> Value {
    if req.pointer("/object/data/forbidden").is_some() {
        json!({"allowed": false, "status": {"code": 403, "message": "the key forbidden is not allowed"}})
    } else {
        json!({"allowed": true, "warnings": ["checked by the test webhook"]})
    }
}

#[test]
fn validating_webhook_denies_a_create_with_its_message() {
    let s = Server::start();
    let (b, seen) = webhook("127.0.0.1:0", &["127.0.0.1"], deny_forbidden_key);
    install(
        &s,
        &seen,
        &config(
            "ValidatingWebhookConfiguration",
            "deny",
            "deny.kinglet.test",
            url_client(&b, "/validate"),
            json!({}),
        ),
    );
    let err = s.fails(
        &["create", "-f", "-"],
        Some(&configmap(
            "bad",
            "default",
            json!({}),
            json!({"forbidden": "x"}),
        )),
    );
    assert!(
        err.contains(
            "admission webhook \"deny.kinglet.test\" denied the request: the key forbidden is not allowed"
        ),
        "{err}"
    );
    let out = s.kubectl_stdin(
        &["create", "-f", "-"],
        &configmap("good", "default", json!({}), json!({"fine": "x"})),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The webhook's warning reaches the client.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("checked by the test webhook"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.fails(&["get", "configmap", "bad"], None);
    let reviews = seen.lock().unwrap().clone();
    let req = &reviews.last().expect("a review")["request"];
    assert_eq!(req["operation"], "CREATE");
    assert_eq!(
        req["kind"],
        json!({"group": "", "version": "v1", "kind": "ConfigMap"})
    );
    assert_eq!(
        req["resource"],
        json!({"group": "", "version": "v1", "resource": "configmaps"})
    );
    assert_eq!(req["name"], "good");
    assert_eq!(req["namespace"], "default");
    assert_eq!(req["dryRun"], false);
    assert_eq!(req["object"]["data"]["fine"], "x");
    assert!(
        req["userInfo"]["username"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    );
    assert_eq!(req["options"]["kind"], "CreateOptions");
    // An update is sent with the old object.
    s.ok(&["label", "configmap", "good", "x=y"]);
    let reviews = seen.lock().unwrap().clone();
    let req = &reviews.last().expect("a review")["request"];
    assert_eq!(req["operation"], "UPDATE");
    assert_eq!(req["object"]["metadata"]["labels"]["x"], "y");
    assert!(req["oldObject"]["metadata"]["labels"]["x"].is_null());
    // Webhook configurations are never sent to webhooks: removing this one works.
    s.ok(&["delete", "validatingwebhookconfiguration", "deny"]);
    eventually(10, "the webhook to be gone", || {
        let out = s.kubectl_stdin(
            &["create", "-f", "-"],
            &configmap("bad", "default", json!({}), json!({"forbidden": "x"})),
        );
        out.status.success().then_some(())
    });
}

#[test]
fn mutating_webhook_adds_a_label_with_a_json_patch() {
    let s = Server::start();
    let (b, seen) = webhook("127.0.0.1:0", &["127.0.0.1"], |req| {
        let patch = if req
            .pointer("/object/metadata/labels")
            .is_some_and(Value::is_object)
        {
            json!([{"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}])
        } else {
            json!([{"op": "add", "path": "/metadata/labels", "value": {"mutated": "yes"}}])
        };
        json!({"allowed": true, "patchType": "JSONPatch",
            "patch": tls_backend::base64(patch.to_string().as_bytes())})
    });
    install(
        &s,
        &seen,
        &config(
            "MutatingWebhookConfiguration",
            "label",
            "label.kinglet.test",
            url_client(&b, "/mutate"),
            json!({}),
        ),
    );
    s.ok_stdin(
        &["create", "-f", "-"],
        &configmap("plain", "default", Value::Null, json!({})),
    );
    s.ok_stdin(
        &["create", "-f", "-"],
        &configmap("labelled", "default", json!({"team": "a"}), json!({})),
    );
    let labels = |name: &str| -> Value {
        let out = s.ok(&["get", "configmap", name, "-o", "json"]);
        serde_json::from_str::<Value>(&out).unwrap()["metadata"]["labels"].clone()
    };
    assert_eq!(labels("plain"), json!({"mutated": "yes"}));
    assert_eq!(labels("labelled"), json!({"team": "a", "mutated": "yes"}));
    let reviews = seen.lock().unwrap().len();
    assert_eq!(reviews, 2, "one call per create");
}

/// A webhook nobody answers: Ignore lets the request through, Fail refuses it.
#[test]
fn failure_policy_decides_when_the_webhook_is_down() {
    let s = Server::start();
    let (b, _) = webhook("127.0.0.1:0", &["127.0.0.1"], |_| json!({"allowed": false}));
    let client = url_client(&b, "/down");
    drop(b);
    let apply = |policy: &str| {
        s.ok_stdin(
            &["apply", "-f", "-"],
            &config(
                "ValidatingWebhookConfiguration",
                "down",
                "down.kinglet.test",
                client.clone(),
                json!({"failurePolicy": policy, "timeoutSeconds": 2}),
            ),
        );
    };
    apply("Fail");
    let err = eventually(10, "the failing webhook to refuse", || {
        let out = s.kubectl_stdin(
            &["create", "--dry-run=server", "-f", "-"],
            &configmap("a", "default", json!({}), json!({})),
        );
        (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
    });
    assert!(
        err.contains("failed calling webhook \"down.kinglet.test\""),
        "{err}"
    );
    apply("Ignore");
    eventually(10, "the ignored webhook to let requests pass", || {
        let out = s.kubectl_stdin(
            &["create", "-f", "-"],
            &configmap("a", "default", json!({}), json!({})),
        );
        out.status.success().then_some(())
    });
    s.ok(&["get", "configmap", "a"]);
}

#[test]
fn selectors_that_do_not_match_skip_the_webhook() {
    let s = Server::start();
    let (b, seen) = webhook(
        "127.0.0.1:0",
        &["127.0.0.1"],
        |_| json!({"allowed": false, "status": {"message": "selected"}}),
    );
    s.ok(&["create", "namespace", "guarded"]);
    s.ok(&["label", "namespace", "guarded", "team=a"]);
    s.ok(&["create", "namespace", "open"]);
    s.ok_stdin(
        &["apply", "-f", "-"],
        &config(
            "ValidatingWebhookConfiguration",
            "select",
            "select.kinglet.test",
            url_client(&b, "/"),
            json!({
                "namespaceSelector": {"matchLabels": {"team": "a"}},
                "objectSelector": {"matchExpressions": [
                    {"key": "check", "operator": "In", "values": ["yes"]}]},
            }),
        ),
    );
    let checked = json!({"check": "yes"});
    until_called(
        &s,
        &seen,
        &configmap("probe", "guarded", checked.clone(), json!({})),
    );
    // Both selectors match: denied.
    let err = s.fails(
        &["create", "-f", "-"],
        Some(&configmap("c", "guarded", checked.clone(), json!({}))),
    );
    assert!(
        err.contains("admission webhook \"select.kinglet.test\" denied the request: selected"),
        "{err}"
    );
    // The object selector does not match.
    s.ok_stdin(
        &["create", "-f", "-"],
        &configmap("c", "guarded", json!({"check": "no"}), json!({})),
    );
    // The namespace selector does not match.
    s.ok_stdin(
        &["create", "-f", "-"],
        &configmap("c", "open", checked.clone(), json!({})),
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "skipped webhooks are not called"
    );
}

/// matchConditions (CEL) decide whether a matching webhook is called: all true calls it, any
/// false skips it; an evaluation error refuses the request under `Fail`, skips under `Ignore`.
#[test]
fn match_conditions_decide_whether_the_webhook_is_called() {
    let s = Server::start();
    let (b, seen) = webhook(
        "127.0.0.1:0",
        &["127.0.0.1"],
        |_| json!({"allowed": false, "status": {"message": "conditions matched"}}),
    );
    // `kubectl apply` merges matchConditions by name: each set is its own configuration.
    let apply = |name: &str, conditions: Value, policy: &str| {
        s.ok_stdin(
            &["apply", "-f", "-"],
            &config(
                "ValidatingWebhookConfiguration",
                name,
                &format!("{name}.kinglet.test"),
                url_client(&b, "/"),
                json!({"matchConditions": conditions, "failurePolicy": policy}),
            ),
        );
    };
    apply(
        "cond",
        json!([
            {"name": "team-a", "expression":
                "has(object.metadata.labels) && object.metadata.labels.exists(k, k == 'team') \
                 && object.metadata.labels['team'] == 'a'"},
            {"name": "creates", "expression": "request.operation == 'CREATE'"},
        ]),
        "Fail",
    );
    let team = |name: &str, t: &str| configmap(name, "default", json!({"team": t}), json!({}));
    until_called(&s, &seen, &team("probe", "a"));
    // Both true: called, and it denies.
    let err = s.fails(&["create", "-f", "-"], Some(&team("a", "a")));
    assert!(
        err.contains(
            "admission webhook \"cond.kinglet.test\" denied the request: conditions matched"
        ),
        "{err}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    // The label condition is false: not called.
    s.ok_stdin(&["create", "-f", "-"], &team("b", "b"));
    s.ok_stdin(
        &["create", "-f", "-"],
        &configmap("none", "default", Value::Null, json!({})),
    );
    // An update to team a: the operation condition is false.
    s.ok(&["label", "--overwrite", "configmap", "b", "team=a"]);
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "skipped webhooks are not called"
    );
    seen.lock().unwrap().clear();

    // A condition failing at runtime (no such key): Fail refuses without calling the webhook.
    let failing = json!([{"name": "needs-key", "expression": "object.data['missing'] == 'x'"}]);
    apply("fails", failing.clone(), "Fail");
    eventually(10, "the failing condition to refuse", || {
        let out = s.kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], &team("e", "z"));
        (!out.status.success()).then_some(())
    });
    let err = s.fails(&["create", "-f", "-"], Some(&team("e", "z")));
    assert!(
        err.contains(
            "configmaps \"e\" is forbidden: expression 'object.data['missing'] == 'x'' resulted in error"
        ),
        "{err}"
    );
    // Under Ignore the webhook is skipped.
    apply("fails", failing, "Ignore");
    eventually(10, "the ignored condition to let requests pass", || {
        let out = s.kubectl_stdin(&["create", "-f", "-"], &team("e", "z"));
        out.status.success().then_some(())
    });
    s.ok(&["get", "configmap", "e"]);
    assert!(seen.lock().unwrap().is_empty(), "the webhook was called");
}

/// Configurations are validated as upstream's v1 API does; sideEffects `Some` (refused for
/// dry runs by the admission plugin: see its unit test) cannot be declared any more.
#[test]
fn webhook_configurations_are_validated() {
    let s = Server::start();
    let client = json!({"url": "https://127.0.0.1:1/", "caBundle": ""});
    let refused = |extra: Value, client: Value, what: &str| {
        let err = s.fails(
            &["create", "-f", "-"],
            Some(&config(
                "ValidatingWebhookConfiguration",
                "bad",
                "bad.kinglet.test",
                client,
                extra,
            )),
        );
        assert!(err.contains(what), "{what}: {err}");
    };
    refused(
        json!({"sideEffects": "Some"}),
        client.clone(),
        "webhooks[0].sideEffects: Unsupported value: \"Some\"",
    );
    refused(
        json!({"timeoutSeconds": 31}),
        client.clone(),
        "webhooks[0].timeoutSeconds: Invalid value: 31",
    );
    refused(
        json!({"admissionReviewVersions": ["v1beta1"]}),
        client.clone(),
        "webhooks[0].admissionReviewVersions",
    );
    refused(
        json!({}),
        json!({"url": "http://127.0.0.1:1/"}),
        "'https' is the only allowed URL scheme",
    );
    refused(
        json!({}),
        json!({"url": "https://127.0.0.1:1/", "service": {"namespace": "a", "name": "b"}}),
        "exactly one of url or service is required",
    );
    // matchConditions must compile, and `authorizer` is not offered.
    refused(
        json!({"matchConditions": [{"name": "broken", "expression": "object.metadata.name =="}]}),
        client.clone(),
        "webhooks[0].matchConditions[0].expression: Invalid value: \"object.metadata.name ==\": compilation failed: ERROR: <input>:1:",
    );
    refused(
        json!({"matchConditions": [{"name": "authz",
            "expression": "authorizer.requestResource.check('create').allowed()"}]}),
        client.clone(),
        "kinglet does not support `authorizer` in matchConditions",
    );
    let mut two: Value = serde_json::from_str(&config(
        "MutatingWebhookConfiguration",
        "two",
        "same.kinglet.test",
        client.clone(),
        json!({}),
    ))
    .unwrap();
    let hook = two["webhooks"][0].clone();
    two["webhooks"].as_array_mut().unwrap().push(hook);
    let err = s.fails(&["create", "-f", "-"], Some(&two.to_string()));
    assert!(err.contains("webhooks[1].name: Duplicate value"), "{err}");
    // Defaults as upstream's.
    s.ok_stdin(
        &["create", "-f", "-"],
        &config(
            "MutatingWebhookConfiguration",
            "ok",
            "ok.kinglet.test",
            client,
            json!({}),
        ),
    );
    let out = s.ok(&["get", "mutatingwebhookconfiguration", "ok", "-o", "json"]);
    let w = &serde_json::from_str::<Value>(&out).unwrap()["webhooks"][0];
    assert_eq!(w["failurePolicy"], "Fail");
    assert_eq!(w["matchPolicy"], "Equivalent");
    assert_eq!(w["timeoutSeconds"], 10);
    assert_eq!(w["reinvocationPolicy"], "Never");
    assert_eq!(w["rules"][0]["scope"], "*");
}

/// Dry-run requests reach webhooks without side effects, with `dryRun: true`.
#[test]
fn dry_run_requests_reach_webhooks_without_side_effects() {
    let s = Server::start();
    let (b, seen) = webhook("127.0.0.1:0", &["127.0.0.1"], deny_forbidden_key);
    install(
        &s,
        &seen,
        &config(
            "ValidatingWebhookConfiguration",
            "side",
            "side.kinglet.test",
            url_client(&b, "/"),
            json!({"sideEffects": "NoneOnDryRun"}),
        ),
    );
    let err = s.fails(
        &["create", "--dry-run=server", "-f", "-"],
        Some(&configmap(
            "d",
            "default",
            json!({}),
            json!({"forbidden": "x"}),
        )),
    );
    assert!(err.contains("denied the request"), "{err}");
    let reviews = seen.lock().unwrap().clone();
    assert_eq!(reviews.last().expect("a review")["request"]["dryRun"], true);
}

/// A webhook behind a selector-less Service: the API server resolves its endpoint and dials
/// it inside the node's network, checking the certificate for `<service>.<namespace>.svc`.
#[test]
fn service_webhook_reached_through_its_endpoints() {
    let s = Server::start_node(&[]);
    let host = s.host().expect("test host");
    let listener = tls_backend::bind_in_netns(host.pid(), &format!("{}:0", common::host::NODE_IP))
        .expect("bind in the test host");
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let b = TlsBackend::serve(listener, &["hook.default.svc"], move |_, path, body| {
        if !path.starts_with("/validate?timeout=") {
            return (404, b"{}".to_vec());
        }
        answer(&log, &deny_forbidden_key, body)
    });
    let port = b.port();
    s.ok_stdin(
        &["apply", "-f", "-"],
        &json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "hook", "namespace": "default"},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]}})
        .to_string(),
    );
    s.ok_stdin(
        &["apply", "-f", "-"],
        &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "hook-1", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "hook"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [common::host::NODE_IP], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}]})
        .to_string(),
    );
    install(
        &s,
        &seen,
        &config(
            "ValidatingWebhookConfiguration",
            "svc",
            "svc.kinglet.test",
            json!({"service": {"namespace": "default", "name": "hook", "path": "/validate"},
                "caBundle": b.ca_bundle()}),
            json!({}),
        ),
    );
    let err = s.fails(
        &["create", "-f", "-"],
        Some(&configmap(
            "bad",
            "default",
            json!({}),
            json!({"forbidden": "x"}),
        )),
    );
    assert!(
        err.contains("admission webhook \"svc.kinglet.test\" denied the request"),
        "{err}"
    );
    s.ok_stdin(
        &["create", "-f", "-"],
        &configmap("good", "default", json!({}), json!({})),
    );
}

/// A label patch for `req`'s object adding `key=value`.
fn add_label(req: &Value, key: &str, value: &str) -> Value {
    let patch = if req
        .pointer("/object/metadata/labels")
        .is_some_and(Value::is_object)
    {
        json!([{"op": "add", "path": format!("/metadata/labels/{key}"), "value": value}])
    } else {
        json!([{"op": "add", "path": "/metadata/labels", "value": {key: value}}])
    };
    json!({"allowed": true, "patchType": "JSONPatch",
        "patch": tls_backend::base64(patch.to_string().as_bytes())})
}

/// Mutating webhooks run in configuration-name order; one with `reinvocationPolicy: IfNeeded`
/// runs again when a later one changed the object, one with `Never` does not.
#[test]
fn mutating_webhooks_are_reinvoked_if_needed() {
    let s = Server::start();
    // "a": records whether it saw the label "b" adds.
    let (a, seen_a) = webhook("127.0.0.1:0", &["127.0.0.1"], |req| {
        if req.pointer("/object/metadata/labels/b").is_some() {
            add_label(req, "a-saw-b", "yes")
        } else {
            json!({"allowed": true})
        }
    });
    let (b, seen_b) = webhook("127.0.0.1:0", &["127.0.0.1"], |req| {
        if req.pointer("/object/metadata/labels/b").is_some() {
            json!({"allowed": true})
        } else {
            add_label(req, "b", "yes")
        }
    });
    let apply = |policy: &str| {
        s.ok_stdin(
            &["apply", "-f", "-"],
            &config(
                "MutatingWebhookConfiguration",
                "a",
                "a.kinglet.test",
                url_client(&a, "/"),
                json!({"reinvocationPolicy": policy}),
            ),
        );
    };
    apply("Never");
    s.ok_stdin(
        &["apply", "-f", "-"],
        &config(
            "MutatingWebhookConfiguration",
            "b",
            "b.kinglet.test",
            url_client(&b, "/"),
            json!({}),
        ),
    );
    until_called(
        &s,
        &seen_b,
        &configmap("probe", "default", json!({}), json!({})),
    );
    seen_a.lock().unwrap().clear();
    let labels = |name: &str| -> Value {
        let out = s.ok(&["get", "configmap", name, "-o", "json"]);
        serde_json::from_str::<Value>(&out).unwrap()["metadata"]["labels"].clone()
    };
    s.ok_stdin(
        &["create", "-f", "-"],
        &configmap("never", "default", json!({"x": "1"}), json!({})),
    );
    assert_eq!(labels("never"), json!({"x": "1", "b": "yes"}));
    assert_eq!(seen_a.lock().unwrap().len(), 1);
    apply("IfNeeded");
    eventually(10, "reinvocation", || {
        let _ = s.kubectl(&["delete", "configmap", "again", "--ignore-not-found"]);
        s.ok_stdin(
            &["create", "-f", "-"],
            &configmap("again", "default", json!({"x": "1"}), json!({})),
        );
        (labels("again") == json!({"x": "1", "b": "yes", "a-saw-b": "yes"})).then_some(())
    });
}

/// A webhook slower than its `timeoutSeconds` counts as down.
#[test]
fn slow_webhook_times_out() {
    let s = Server::start();
    let (b, seen) = webhook("127.0.0.1:0", &["127.0.0.1"], |req| {
        if req.pointer("/object/metadata/name") == Some(&json!("slow")) {
            std::thread::sleep(std::time::Duration::from_secs(3));
        }
        json!({"allowed": true})
    });
    install(
        &s,
        &seen,
        &config(
            "ValidatingWebhookConfiguration",
            "slow",
            "slow.kinglet.test",
            url_client(&b, "/"),
            json!({"timeoutSeconds": 1}),
        ),
    );
    let started = std::time::Instant::now();
    let err = s.fails(
        &["create", "-f", "-"],
        Some(&configmap("slow", "default", json!({}), json!({}))),
    );
    assert!(
        err.contains("failed calling webhook \"slow.kinglet.test\"")
            && err.contains("?timeout=1s\": context deadline exceeded"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_millis(2900));
}

/// What the server owns is set again over what a mutating webhook wrote (upstream applies its
/// strategies after mutating admission): a forged uid or creation time does not stick, a move to
/// another namespace or name is refused, and the rest of the patch applies.
#[test]
fn mutating_webhooks_cannot_rewrite_what_the_server_owns() {
    let s = Server::start();
    let (b, seen) = webhook("127.0.0.1:0", &["127.0.0.1"], |req| {
        let name = req["name"].as_str().unwrap_or_default();
        let mut patch = vec![
            json!({"op": "add", "path": "/metadata/uid", "value": "forged-uid"}),
            json!({"op": "add", "path": "/metadata/creationTimestamp", "value": "2000-01-01T00:00:00Z"}),
            json!({"op": "add", "path": "/data", "value": {"added": "yes"}}),
        ];
        match name {
            "move" => patch
                .push(json!({"op": "add", "path": "/metadata/namespace", "value": "kube-system"})),
            "rename" if req["operation"] == "UPDATE" => {
                patch.push(json!({"op": "add", "path": "/metadata/name", "value": "renamed"}))
            }
            _ => {}
        }
        json!({"allowed": true, "patchType": "JSONPatch",
            "patch": tls_backend::base64(Value::Array(patch).to_string().as_bytes())})
    });
    install(
        &s,
        &seen,
        &config(
            "MutatingWebhookConfiguration",
            "forge",
            "forge.kinglet.test",
            url_client(&b, "/mutate"),
            json!({}),
        ),
    );
    s.ok_stdin(
        &["create", "-f", "-"],
        &configmap("forge", "default", Value::Null, json!({})),
    );
    let cm: Value =
        serde_json::from_str(&s.ok(&["get", "configmap", "forge", "-o", "json"])).unwrap();
    assert_eq!(cm["data"]["added"], "yes", "{cm}");
    assert_ne!(cm["metadata"]["uid"], "forged-uid", "{cm}");
    assert_ne!(
        cm["metadata"]["creationTimestamp"], "2000-01-01T00:00:00Z",
        "{cm}"
    );
    let uid = cm["metadata"]["uid"].clone();
    s.ok(&["label", "configmap", "forge", "touched=yes"]);
    let cm: Value =
        serde_json::from_str(&s.ok(&["get", "configmap", "forge", "-o", "json"])).unwrap();
    assert_eq!(cm["metadata"]["uid"], uid, "an update keeps the uid: {cm}");
    let err = s.fails(
        &["create", "-f", "-"],
        Some(&configmap("move", "default", Value::Null, json!({}))),
    );
    assert!(err.contains("does not match the namespace"), "{err}");
    s.fails(&["get", "configmap", "move", "-n", "kube-system"], None);
    s.ok_stdin(
        &["create", "-f", "-"],
        &configmap("rename", "default", Value::Null, json!({})),
    );
    let err = s.fails(&["label", "configmap", "rename", "touched=yes"], None);
    assert!(
        err.contains(
            "the name of the object (renamed) does not match the name on the URL (rename)"
        ),
        "{err}"
    );
}

/// A mutating webhook may choose a Service's ClusterIP: the address it wrote is the one
/// reserved (the kind's allocation runs again after webhooks), so no other Service gets it.
#[test]
fn addresses_a_webhook_writes_into_a_service_are_reserved() {
    let s = Server::start();
    let (b, seen) = webhook("127.0.0.1:0", &["127.0.0.1"], |req| {
        if req["name"] != "pinned" {
            return json!({"allowed": true});
        }
        let patch = json!([
            {"op": "replace", "path": "/spec/clusterIP", "value": "10.43.200.200"},
            {"op": "replace", "path": "/spec/clusterIPs", "value": ["10.43.200.200"]}
        ]);
        json!({"allowed": true, "patchType": "JSONPatch",
            "patch": tls_backend::base64(patch.to_string().as_bytes())})
    });
    let config = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "pin"},
        "webhooks": [{
            "name": "pin.kinglet.test",
            "clientConfig": url_client(&b, "/mutate"),
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": ["services"]}],
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        }],
    });
    s.ok_stdin(&["apply", "-f", "-"], &config.to_string());
    eventually(10, "the webhook to be called", || {
        let _ = s.kubectl(&[
            "create",
            "service",
            "clusterip",
            "probe",
            "--tcp=80",
            "--dry-run=server",
        ]);
        (!seen.lock().unwrap().is_empty()).then_some(())
    });
    s.ok(&["create", "service", "clusterip", "pinned", "--tcp=80"]);
    let ip = s.ok(&[
        "get",
        "service",
        "pinned",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(ip, "10.43.200.200");
    let taken = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "second"},
        "spec": {"clusterIP": "10.43.200.200", "ports": [{"port": 80}]}});
    let err = s.fails(&["create", "-f", "-"], Some(&taken.to_string()));
    assert!(err.contains("already allocated"), "{err}");
}
