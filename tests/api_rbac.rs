//! Authorization through the real kubectl: RBAC for users, groups and ServiceAccounts, the
//! access-review APIs behind `kubectl auth`, impersonation, escalation prevention, ClusterRole
//! aggregation, and the node authorizer with a node's own certificate.

mod common;

use std::path::PathBuf;

use common::{Server, eventually};

/// A kubeconfig for a client certificate naming `user` and `groups`, signed by the cluster CA.
fn kubeconfig_for(s: &Server, user: &str, groups: &[&str]) -> PathBuf {
    let pki = kinglet_pki::Pki::load_or_create(&s.data_dir(), &[]).expect("cluster PKI");
    let cert = kinglet_pki::issue(&pki.ca, user, groups, &[], false, true).expect("client cert");
    let path = s
        .dir
        .path()
        .join(format!("{}.kubeconfig", user.replace(':', "_")));
    let server = format!("https://127.0.0.1:{}", s.port);
    std::fs::write(&path, pki.kubeconfig(&server, &cert)).expect("kubeconfig");
    path
}

fn as_file(s: &Server, kubeconfig: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--kubeconfig", kubeconfig.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    s.kubectl(&all)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn service_account_tokens_get_exactly_what_their_bindings_grant() {
    let s = Server::start();
    s.ok(&["create", "serviceaccount", "robot"]);
    s.ok(&["create", "secret", "generic", "s1", "--from-literal=k=v"]);
    let token = s.ok(&["create", "token", "robot"]).trim().to_string();
    let with_token = |args: &[&str]| {
        let mut all = vec!["--token", token.as_str()];
        all.extend_from_slice(args);
        s.kubectl(&all)
    };
    // No bindings: nothing but the basics every authenticated user has.
    let out = with_token(&["get", "secrets"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "secrets is forbidden: User \"system:serviceaccount:default:robot\" cannot list resource \"secrets\" in API group \"\" in the namespace \"default\""
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        String::from_utf8_lossy(&with_token(&["auth", "can-i", "list", "pods"]).stdout).trim(),
        "no"
    );
    // `view` in its namespace: list pods, read nothing secret, create nothing.
    s.ok(&[
        "create",
        "rolebinding",
        "robot-view",
        "--clusterrole=view",
        "--serviceaccount=default:robot",
    ]);
    eventually(10, "the binding to take effect", || {
        with_token(&["get", "pods"]).status.success().then_some(())
    });
    assert!(!with_token(&["get", "secrets"]).status.success());
    assert!(
        !with_token(&["get", "pods", "-n", "kube-system"])
            .status
            .success()
    );
    let out = with_token(&["create", "configmap", "c1"]);
    assert!(
        stderr(&out).contains("configmaps is forbidden"),
        "{}",
        stderr(&out)
    );
    assert!(
        !with_token(&["create", "deployment", "d", "--image=x"])
            .status
            .success()
    );
    // kubectl auth can-i, as the account itself and as seen by an admin with --as.
    let can = |args: &[&str]| {
        let o = s.kubectl(&[&["auth", "can-i"], args].concat());
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let sa = "--as=system:serviceaccount:default:robot";
    assert_eq!(can(&["list", "pods", sa]), "yes");
    assert_eq!(can(&["create", "pods", sa]), "no");
    assert_eq!(can(&["get", "secrets", sa]), "no");
    assert_eq!(can(&["list", "pods", sa, "-n", "kube-system"]), "no");
    let listed =
        String::from_utf8_lossy(&with_token(&["auth", "can-i", "--list"]).stdout).into_owned();
    assert!(
        listed.contains("pods") && listed.contains("[get list watch]"),
        "{listed}"
    );
    assert!(
        listed.contains("selfsubjectaccessreviews.authorization.k8s.io"),
        "{listed}"
    );
}

#[test]
fn users_groups_whoami_impersonation_and_escalation() {
    let s = Server::start();
    s.ok(&["create", "namespace", "team"]);
    let alice = kubeconfig_for(&s, "alice", &["devs"]);
    // whoami shows the certificate's user and groups.
    let who =
        String::from_utf8_lossy(&as_file(&s, &alice, &["auth", "whoami", "-o", "json"]).stdout)
            .into_owned();
    let who: serde_json::Value = serde_json::from_str(&who).expect("whoami json");
    assert_eq!(who["status"]["userInfo"]["username"], "alice");
    assert_eq!(
        who["status"]["userInfo"]["groups"],
        serde_json::json!(["devs", "system:authenticated"])
    );
    // A group binding grants to every member; --as-group checks another group's view.
    s.ok(&[
        "create",
        "rolebinding",
        "devs-edit",
        "--clusterrole=edit",
        "--group=devs",
        "-n",
        "team",
    ]);
    let can = |args: &[&str]| {
        let o = as_file(&s, &alice, &[&["auth", "can-i"], args].concat());
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    eventually(10, "the group binding", || {
        (can(&["create", "deployments", "-n", "team"]) == "yes").then_some(())
    });
    assert_eq!(can(&["create", "deployments", "-n", "default"]), "no");
    assert_eq!(can(&["create", "rolebindings", "-n", "team"]), "no");
    let admin_can = |args: &[&str]| {
        String::from_utf8_lossy(&s.kubectl(&[&["auth", "can-i"], args].concat()).stdout)
            .trim()
            .to_string()
    };
    assert_eq!(
        admin_can(&[
            "get",
            "secrets",
            "-n",
            "team",
            "--as=bob",
            "--as-group=devs"
        ]),
        "yes"
    );
    assert_eq!(
        admin_can(&["get", "secrets", "-n", "team", "--as=bob"]),
        "no"
    );
    // Impersonation needs the impersonate verb.
    let out = as_file(&s, &alice, &["get", "pods", "-n", "team", "--as=bob"]);
    assert!(
        stderr(&out).contains("users \"bob\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"),
        "{}",
        stderr(&out)
    );
    // `edit` cannot create bindings at all, so cannot bind cluster-admin.
    let bind_cluster_admin = || {
        as_file(
            &s,
            &alice,
            &[
                "create",
                "rolebinding",
                "root",
                "--clusterrole=cluster-admin",
                "--user=alice",
                "-n",
                "team",
            ],
        )
    };
    let out = bind_cluster_admin();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("rolebindings.rbac.authorization.k8s.io is forbidden"),
        "{}",
        stderr(&out)
    );
    // `admin` may create bindings, but only of what it holds itself.
    s.ok(&[
        "create",
        "rolebinding",
        "alice-admin",
        "--clusterrole=admin",
        "--user=alice",
        "-n",
        "team",
    ]);
    eventually(10, "the admin binding", || {
        (can(&["create", "rolebindings", "-n", "team"]) == "yes").then_some(())
    });
    let out = bind_cluster_admin();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("rolebindings.rbac.authorization.k8s.io \"root\" is forbidden: user \"alice\" (groups=[\"devs\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}"),
        "{}",
        stderr(&out)
    );
    // Granting what it holds works; so does a role with only rules it has.
    let ok = as_file(
        &s,
        &alice,
        &[
            "create",
            "rolebinding",
            "carol-view",
            "--clusterrole=view",
            "--user=carol",
            "-n",
            "team",
        ],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let ok = as_file(
        &s,
        &alice,
        &[
            "create",
            "role",
            "pod-reader",
            "--verb=get",
            "--resource=pods",
            "-n",
            "team",
        ],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let out = as_file(
        &s,
        &alice,
        &[
            "create",
            "role",
            "node-reader",
            "--verb=get",
            "--resource=nodes",
            "-n",
            "team",
        ],
    );
    assert!(
        stderr(&out).contains("is attempting to grant RBAC permissions not currently held"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn server_side_apply_creates_only_with_the_create_verb() {
    let s = Server::start();
    s.ok(&[
        "create",
        "role",
        "patcher",
        "--verb=patch,get",
        "--resource=configmaps",
    ]);
    s.ok(&[
        "create",
        "rolebinding",
        "dave-patcher",
        "--role=patcher",
        "--user=dave",
    ]);
    let cm = r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "new"}, "data": {"a": "b"}}"#;
    let apply = || s.kubectl_stdin(&["apply", "--server-side", "-f", "-", "--as=dave"], cm);
    eventually(10, "the binding", || {
        let o = s.kubectl(&["auth", "can-i", "patch", "configmaps", "--as=dave"]);
        (String::from_utf8_lossy(&o.stdout).trim() == "yes").then_some(())
    });
    let out = apply();
    assert!(
        stderr(&out).contains("User \"dave\" cannot create resource \"configmaps\""),
        "{}",
        stderr(&out)
    );
    // Once it exists, patching is all apply needs.
    s.ok(&["create", "configmap", "new"]);
    let out = apply();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_cluster_role_labelled_aggregate_to_view_extends_view() {
    let s = Server::start();
    let rules = |role: &str| {
        s.ok(&[
            "get",
            "clusterrole",
            role,
            "-o",
            "jsonpath={.rules[*].resources}",
        ])
    };
    // The bootstrap aggregation filled admin, edit and view.
    assert!(rules("view").contains("pods"), "{}", rules("view"));
    assert!(rules("admin").contains("rolebindings"));
    assert!(!rules("view").contains("secrets"));
    s.ok_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "secret-peek", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}"#,
    );
    eventually(10, "view to aggregate the new role", || {
        rules("view").contains("secrets").then_some(())
    });
    // ...and through view, edit and admin.
    eventually(10, "admin to aggregate it too", || {
        rules("admin").contains("secrets").then_some(())
    });
    let can = |who: &str| {
        String::from_utf8_lossy(
            &s.kubectl(&["auth", "can-i", "get", "secrets", &format!("--as={who}")])
                .stdout,
        )
        .trim()
        .to_string()
    };
    assert_eq!(can("viewer"), "no");
    s.ok(&[
        "create",
        "clusterrolebinding",
        "viewer",
        "--clusterrole=view",
        "--user=viewer",
    ]);
    eventually(10, "the binding", || (can("viewer") == "yes").then_some(()));
    // Removing the label takes the rule away again.
    s.ok(&[
        "label",
        "clusterrole",
        "secret-peek",
        "rbac.authorization.k8s.io/aggregate-to-view-",
    ]);
    eventually(10, "view to drop the rule", || {
        (!rules("view").contains("secrets")).then_some(())
    });
    eventually(10, "the permission to go", || {
        (can("viewer") == "no").then_some(())
    });
}

#[test]
fn anonymous_requests_reach_only_public_information() {
    let s = Server::start();
    let curl = |path: &str| {
        let ca = s.data_dir().join("server/tls/ca.crt");
        let o = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca)
            .arg(format!("https://127.0.0.1:{}{path}", s.port))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(curl("/version"), "200");
    assert_eq!(curl("/healthz"), "200");
    assert_eq!(curl("/api"), "403");
    assert_eq!(curl("/api/v1/namespaces/default/secrets"), "403");
}

#[test]
fn node_credentials_read_only_what_their_pods_use_and_change_only_their_node() {
    let s = Server::start();
    for n in ["n1", "n2"] {
        s.ok_stdin(
            &["apply", "-f", "-"],
            &format!(r#"{{"apiVersion": "v1", "kind": "Node", "metadata": {{"name": "{n}"}}}}"#),
        );
    }
    s.ok(&["create", "secret", "generic", "used", "--from-literal=k=v"]);
    s.ok(&[
        "create",
        "secret",
        "generic",
        "unused",
        "--from-literal=k=v",
    ]);
    s.ok(&["create", "configmap", "settings", "--from-literal=k=v"]);
    s.ok_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox",
                "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "k"}}}]}],
                "volumes": [{"name": "s", "secret": {"secretName": "used"}}]}}"#,
    );
    let n1 = kubeconfig_for(&s, "system:node:n1", &["system:nodes"]);
    let n2 = kubeconfig_for(&s, "system:node:n2", &["system:nodes"]);
    let run = |kc: &PathBuf, args: &[&str]| as_file(&s, kc, args);
    assert!(
        run(&n1, &["get", "secret", "used"]).status.success(),
        "{}",
        stderr(&run(&n1, &["get", "secret", "used"]))
    );
    assert!(run(&n1, &["get", "configmap", "settings"]).status.success());
    let out = run(&n1, &["get", "secret", "unused"]);
    assert!(
        stderr(&out).contains("secrets \"unused\" is forbidden: User \"system:node:n1\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": no relationship found between node 'n1' and this object"),
        "{}",
        stderr(&out)
    );
    // The other node's pods are not n2's business; neither is listing every secret.
    assert!(!run(&n2, &["get", "secret", "used"]).status.success());
    assert!(!run(&n1, &["get", "secrets"]).status.success());
    // Its own Node: yes; another: no.
    assert!(
        run(&n1, &["label", "node", "n1", "mine=yes"])
            .status
            .success()
    );
    let out = run(&n1, &["label", "node", "n2", "mine=yes"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("node \"n1\" is not allowed to modify node \"n2\""),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        s.ok(&[
            "get",
            "node",
            "n2",
            "-o",
            "jsonpath={.metadata.labels.mine}"
        ]),
        ""
    );
    // Pods: read all, delete only its own.
    assert!(run(&n1, &["get", "pods"]).status.success());
    assert!(
        !run(&n2, &["delete", "pod", "p", "--wait=false"])
            .status
            .success()
    );
    // And nothing outside what a node needs.
    assert!(!run(&n1, &["create", "namespace", "x"]).status.success());
    assert!(!run(&n1, &["get", "clusterroles"]).status.success());
    // A node cannot reach a credential by creating a pod that names it: only mirror pods,
    // and those may use no Secret, ConfigMap, PVC or ServiceAccount.
    s.ok(&[
        "create",
        "secret",
        "generic",
        "crown-jewels",
        "--from-literal=k=v",
    ]);
    let mirror = |volumes: &str, sa: &str| {
        format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "static-web",
                "annotations": {{"kubernetes.io/config.mirror": "x"}}}},
                "spec": {{"nodeName": "n1", {sa} "containers": [{{"name": "c", "image": "busybox"}}],
                "volumes": [{volumes}]}}}}"#
        )
    };
    let create = |manifest: String| {
        s.kubectl_stdin(
            &["--kubeconfig", n1.to_str().unwrap(), "create", "-f", "-"],
            &manifest,
        )
    };
    let out = create(mirror(
        r#"{"name": "s", "secret": {"secretName": "crown-jewels"}}"#,
        "",
    ));
    assert!(
        stderr(&out).contains("node \"n1\" can not create pods that reference secrets"),
        "{}",
        stderr(&out)
    );
    let out = create(mirror("", r#""serviceAccountName": "default","#));
    assert!(
        stderr(&out).contains("can not create pods that use service accounts"),
        "{}",
        stderr(&out)
    );
    assert!(
        !run(&n1, &["get", "secret", "crown-jewels"])
            .status
            .success()
    );
    let out = create(mirror("", ""));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        s.ok(&[
            "get",
            "pod",
            "static-web",
            "-o",
            "jsonpath={.spec.serviceAccountName}"
        ]),
        ""
    );
    // Tokens only bound to a pod of its own, by uid.
    let out = run(&n1, &["create", "token", "default"]);
    assert!(
        stderr(&out).contains("node requested token not bound to a pod"),
        "{}",
        stderr(&out)
    );
    // Its own Node, but not its taints or the cluster's labels.
    s.ok(&["taint", "node", "n1", "dedicated=ops:NoSchedule"]);
    let out = run(&n1, &["taint", "node", "n1", "dedicated-"]);
    assert!(
        stderr(&out).contains("is not allowed to modify taints"),
        "{}",
        stderr(&out)
    );
    let out = run(
        &n1,
        &[
            "label",
            "node",
            "n1",
            "node-role.kubernetes.io/control-plane=",
        ],
    );
    assert!(
        stderr(&out)
            .contains("is not allowed to modify labels: node-role.kubernetes.io/control-plane"),
        "{}",
        stderr(&out)
    );
}

/// Asserts that a kubectl run succeeded (or failed) and said `text` on stderr.
fn says(out: &std::process::Output, success: bool, text: &str) {
    assert_eq!(out.status.success(), success, "{}", stderr(out));
    assert!(stderr(out).contains(text), "{}", stderr(out));
}

#[test]
fn pod_security_labels_refuse_and_warn_as_upstream() {
    let s = Server::start();
    s.ok(&["create", "namespace", "locked"]);
    s.ok(&[
        "label",
        "namespace",
        "locked",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    let out = s.kubectl(&[
        "run",
        "root",
        "--image=busybox",
        "--privileged",
        "-n",
        "locked",
    ]);
    says(
        &out,
        false,
        "pods \"root\" is forbidden: violates PodSecurity \"restricted:latest\": privileged (container \"root\" must not set securityContext.privileged=true)",
    );
    // A pod that meets the restricted profile is admitted.
    s.ok_stdin(
        &["apply", "-n", "locked", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fine"},
            "spec": {"securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "c", "image": "busybox", "securityContext": {
                    "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}}"#,
    );
    // warn: admitted, with upstream's warning; workloads are only ever warned about.
    s.ok(&["create", "namespace", "watched"]);
    s.ok(&[
        "label",
        "namespace",
        "watched",
        "pod-security.kubernetes.io/warn=baseline",
    ]);
    let out = s.kubectl(&[
        "run",
        "loud",
        "--image=busybox",
        "--privileged",
        "-n",
        "watched",
    ]);
    says(
        &out,
        true,
        "Warning: would violate PodSecurity \"baseline:latest\": privileged",
    );
    let out = s.kubectl(&[
        "create",
        "deployment",
        "d",
        "--image=busybox",
        "-n",
        "locked",
    ]);
    says(
        &out,
        true,
        "would violate PodSecurity \"restricted:latest\"",
    );
    // Invalid label values are refused on the namespace.
    let out = s.kubectl(&[
        "label",
        "namespace",
        "watched",
        "pod-security.kubernetes.io/enforce=strict",
    ]);
    says(
        &out,
        false,
        "must be one of privileged, baseline, restricted",
    );
    // Raising enforce over existing pods warns about them.
    let out = s.kubectl(&[
        "label",
        "namespace",
        "watched",
        "pod-security.kubernetes.io/enforce=baseline",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("existing pods in namespace \"watched\" violate the new PodSecurity enforce level \"baseline:latest\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_kubelet_api_asks_the_api_server_who_may_use_it() {
    let s = Server::start_node(&[]);
    let pki = kinglet_pki::Pki::load_or_create(&s.data_dir(), &[]).expect("cluster PKI");
    let dir = s.dir.path();
    std::fs::write(dir.join("ca.pem"), &pki.ca.cert_pem).expect("ca");
    for user in ["alice", "bob"] {
        let cert = kinglet_pki::issue(&pki.ca, user, &[], &[], false, true).expect("cert");
        std::fs::write(dir.join(format!("{user}.crt")), &cert.cert_pem).expect("crt");
        std::fs::write(dir.join(format!("{user}.key")), &cert.key_pem).expect("key");
    }
    s.ok(&[
        "create",
        "clusterrolebinding",
        "bob-kubelet",
        "--clusterrole=system:kubelet-api-admin",
        "--user=bob",
    ]);
    // Straight to the kubelet (inside the test host), with a certificate or without.
    let get = |user: Option<&str>, path: &str| {
        let mut cmd = s.command("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(dir.join("ca.pem"));
        if let Some(u) = user {
            cmd.arg("--cert").arg(dir.join(format!("{u}.crt")));
            cmd.arg("--key").arg(dir.join(format!("{u}.key")));
        }
        let out = cmd
            .arg(format!("https://{}:10250{path}", common::host::NODE_IP))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The kubelet's API comes up with the node; a loaded machine takes a while.
    eventually(30, "bob's binding to reach the kubelet", || {
        (get(Some("bob"), "/stats/summary") == "200").then_some(())
    });
    assert_eq!(get(Some("alice"), "/stats/summary"), "403");
    assert_eq!(get(Some("alice"), "/containerLogs/default/x/c"), "403");
    // Without a client certificate the TLS handshake itself is refused.
    assert_ne!(get(None, "/stats/summary"), "200");
    // Through the API server, which the kubelet lets in as kube-apiserver-kubelet-client.
    s.ok(&[
        "run",
        "logger",
        "--image=busybox:1.36",
        "--restart=Never",
        "--",
        "echo",
        "hello",
    ]);
    eventually(60, "the pod's log through the API server", || {
        let o = s.kubectl(&["logs", "logger"]);
        String::from_utf8_lossy(&o.stdout)
            .contains("hello")
            .then_some(())
    });
    // ...and only for callers the API server itself allows pods/log.
    let out = s.kubectl(&["logs", "logger", "--as=alice"]);
    assert!(stderr(&out).contains("forbidden"), "{}", stderr(&out));
}

#[test]
fn the_bootstrap_policy_is_restored_at_start_unless_autoupdate_is_off() {
    let mut s = Server::start();
    let rules =
        |s: &Server, role: &str| s.ok(&["get", "clusterrole", role, "-o", "jsonpath={.rules}"]);
    let strip = r#"[{"op": "replace", "path": "/rules", "value": []}]"#;
    for role in ["system:basic-user", "system:discovery"] {
        s.ok(&["patch", "clusterrole", role, "--type=json", "-p", strip]);
        assert_eq!(rules(&s, role), "[]");
    }
    s.ok(&[
        "annotate",
        "--overwrite",
        "clusterrole",
        "system:discovery",
        "rbac.authorization.kubernetes.io/autoupdate=false",
    ]);
    s.ok(&["delete", "clusterrolebinding", "system:public-info-viewer"]);
    s.restart(false);
    assert!(
        rules(&s, "system:basic-user").contains("selfsubjectaccessreviews"),
        "{}",
        rules(&s, "system:basic-user")
    );
    assert_eq!(rules(&s, "system:discovery"), "[]");
    let subjects = s.ok(&[
        "get",
        "clusterrolebinding",
        "system:public-info-viewer",
        "-o",
        "jsonpath={.subjects[*].name}",
    ]);
    assert_eq!(subjects, "system:authenticated system:unauthenticated");
}
