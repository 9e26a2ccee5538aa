//! CertificateSigningRequests through the real kubectl: the requester recorded by the server,
//! validation, `kubectl get csr` columns, approval and denial, and the signing controller
//! issuing certificates (or failing requests) per signer as upstream's does; approving and
//! issuing need `approve` and `sign` on the signer (CertificateApproval, CertificateSigning).

mod common;

use std::path::PathBuf;

use common::{Server, eventually};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

/// A key and a PEM CSR for `cn` / `orgs` with `sans`.
fn key_and_csr(cn: &str, org: Option<&str>, sans: Vec<SanType>) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (key.serialize_pem(), csr)
}

/// `[]byte` fields travel as base64, as k8s-openapi's ByteString encodes them.
fn b64(data: &[u8]) -> String {
    let v = serde_json::to_value(k8s_openapi::ByteString(data.to_vec())).expect("encode");
    v.as_str().expect("a string").to_string()
}

fn unb64(data: &str) -> Vec<u8> {
    let b: k8s_openapi::ByteString =
        serde_json::from_value(serde_json::json!(data)).expect("base64");
    b.0
}

/// A CSR manifest; `extra` lines are added under `spec` (indented by the caller).
fn manifest(name: &str, signer: &str, csr_pem: &str, usages: &[&str], extra: &str) -> String {
    let usages: Vec<String> = usages.iter().map(|u| format!("  - {u}")).collect();
    format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: {name}\nspec:\n  request: {}\n  signerName: {signer}\n  usages:\n{}\n{extra}",
        b64(csr_pem.as_bytes()),
        usages.join("\n")
    )
}

fn field(s: &Server, name: &str, path: &str) -> String {
    s.ok(&["get", "csr", name, "-o", &format!("jsonpath={{{path}}}")])
}

/// The issued certificate (PEM), once there is one.
fn wait_certificate(s: &Server, name: &str) -> String {
    let b = eventually(20, "the certificate to be issued", || {
        Some(field(s, name, ".status.certificate")).filter(|c| !c.is_empty())
    });
    String::from_utf8(unb64(b.trim())).expect("PEM")
}

/// The `kubectl get csr` row of `name`, split on whitespace.
fn row(s: &Server, name: &str) -> Vec<String> {
    let out = s.ok(&["get", "csr", name, "--no-headers"]);
    out.split_whitespace().map(String::from).collect()
}

/// A kubeconfig authenticating with `cert_pem` and `key_pem`.
fn kubeconfig_with(s: &Server, name: &str, cert_pem: &str, key_pem: &str) -> PathBuf {
    let pki = kinglet_pki::Pki::load_or_create(&s.data_dir(), &[]).expect("cluster PKI");
    let client = kinglet_pki::CertKey {
        cert_pem: cert_pem.to_string(),
        key_pem: key_pem.to_string(),
    };
    let path = s.dir.path().join(format!("{name}.kubeconfig"));
    let server = format!("https://127.0.0.1:{}", s.port);
    std::fs::write(&path, pki.kubeconfig(&server, &client)).expect("kubeconfig");
    path
}

#[test]
fn an_approved_client_csr_gets_a_certificate_that_authenticates_as_its_subject() {
    let s = Server::start();
    let (key, csr) = key_and_csr("jane", Some("devs"), vec![]);
    // What the client says about the requester is replaced by who sent the request.
    let extra = "  expirationSeconds: 86400\n  username: mallory\n  uid: forged\n  groups:\n  - system:masters\n  - forged\n";
    s.ok_stdin(
        &["create", "-f", "-"],
        &manifest(
            "jane",
            "kubernetes.io/kube-apiserver-client",
            &csr,
            &["client auth"],
            extra,
        ),
    );
    assert_eq!(field(&s, "jane", ".spec.username"), "system:admin");
    assert_eq!(field(&s, "jane", ".spec.uid"), "");
    assert_eq!(
        field(&s, "jane", ".spec.groups"),
        r#"["system:masters","system:authenticated"]"#
    );
    // Listed with upstream's columns; nothing is signed before approval.
    let table = s.ok(&["get", "csr"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "AGE",
            "SIGNERNAME",
            "REQUESTOR",
            "REQUESTEDDURATION",
            "CONDITION"
        ]
    );
    let r = row(&s, "jane");
    assert_eq!(
        r[2..],
        [
            "kubernetes.io/kube-apiserver-client",
            "system:admin",
            "24h",
            "Pending"
        ],
        "{table}"
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(field(&s, "jane", ".status.certificate"), "");

    s.ok(&["certificate", "approve", "jane"]);
    let cert = wait_certificate(&s, "jane");
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    eventually(10, "the Issued condition in the table", || {
        (row(&s, "jane").last().map(String::as_str) == Some("Approved,Issued")).then_some(())
    });
    assert_eq!(
        field(&s, "jane", ".status.conditions[0].reason"),
        "KubectlApprove"
    );

    // The certificate and its key log in as the CSR's subject.
    let kubeconfig = kubeconfig_with(&s, "jane", &cert, &key);
    let whoami = s.ok(&[
        "--kubeconfig",
        kubeconfig.to_str().expect("utf-8 path"),
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
    ]);
    assert_eq!(whoami, r#"jane ["devs","system:authenticated"]"#);
}

#[test]
fn kubelet_signers_check_the_node_subject_and_fail_what_breaks_their_rules() {
    let s = Server::start();
    let client_usages = &["digital signature", "key encipherment", "client auth"];
    // A kubelet client certificate must name a node: CN "jane" is refused.
    let (_, wrong) = key_and_csr("jane", Some("system:nodes"), vec![]);
    s.ok_stdin(
        &["create", "-f", "-"],
        &manifest(
            "wrong-cn",
            "kubernetes.io/kube-apiserver-client-kubelet",
            &wrong,
            client_usages,
            "",
        ),
    );
    // The right subject is signed.
    let (_, node) = key_and_csr("system:node:n1", Some("system:nodes"), vec![]);
    s.ok_stdin(
        &["create", "-f", "-"],
        &manifest(
            "node-client",
            "kubernetes.io/kube-apiserver-client-kubelet",
            &node,
            client_usages,
            "",
        ),
    );
    // A serving certificate for a node's address.
    let ip = SanType::IpAddress("10.0.0.7".parse().expect("ip"));
    let (_, serving) = key_and_csr("system:node:n1", Some("system:nodes"), vec![ip]);
    s.ok_stdin(
        &["create", "-f", "-"],
        &manifest(
            "node-serving",
            "kubernetes.io/kubelet-serving",
            &serving,
            &["digital signature", "server auth"],
            "",
        ),
    );
    s.ok(&[
        "certificate",
        "approve",
        "wrong-cn",
        "node-client",
        "node-serving",
    ]);

    eventually(20, "the Failed condition", || {
        field(
            &s,
            "wrong-cn",
            ".status.conditions[?(@.type==\"Failed\")].reason",
        )
        .eq("SignerValidationFailure")
        .then_some(())
    });
    assert_eq!(
        field(
            &s,
            "wrong-cn",
            ".status.conditions[?(@.type==\"Failed\")].message"
        ),
        "subject common name does not begin with system:node:"
    );
    assert_eq!(
        row(&s, "wrong-cn").last().map(String::as_str),
        Some("Approved,Failed")
    );
    wait_certificate(&s, "node-client");
    wait_certificate(&s, "node-serving");
    // The controller acts as upstream's certificate-controller, with only its role's rights.
    let controller = "system:serviceaccount:kube-system:certificate-controller";
    let can_i = |args: &[&str]| {
        let mut all = vec!["auth", "can-i", "--as", controller];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&s.kubectl(&all).stdout).trim() == "yes"
    };
    assert!(can_i(&[
        "update",
        "certificatesigningrequests.certificates.k8s.io",
        "--subresource=status"
    ]));
    assert!(can_i(&[
        "watch",
        "certificatesigningrequests.certificates.k8s.io"
    ]));
    assert!(!can_i(&[
        "create",
        "certificatesigningrequests.certificates.k8s.io"
    ]));
    assert!(!can_i(&["get", "secrets", "-A"]));
    // A failed request stays unsigned.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(field(&s, "wrong-cn", ".status.certificate"), "");
}

#[test]
fn a_denied_csr_is_never_signed_and_cannot_then_be_approved() {
    let s = Server::start();
    let (_, csr) = key_and_csr("bob", None, vec![]);
    s.ok_stdin(
        &["create", "-f", "-"],
        &manifest(
            "bob",
            "kubernetes.io/kube-apiserver-client",
            &csr,
            &["client auth"],
            "",
        ),
    );
    s.ok(&["certificate", "deny", "bob"]);
    // kubectl refuses to approve a denied request; the approval subresource does too.
    let mut obj: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "csr", "bob", "-o", "json"])).expect("json");
    obj["status"]["conditions"]
        .as_array_mut()
        .expect("conditions")
        .push(serde_json::json!({"type": "Approved", "status": "True", "reason": "Test"}));
    let err = s.fails(
        &[
            "replace",
            "--raw",
            "/apis/certificates.k8s.io/v1/certificatesigningrequests/bob/approval",
            "-f",
            "-",
        ],
        Some(&obj.to_string()),
    );
    assert!(
        err.contains("Approved and Denied conditions are mutually exclusive"),
        "{err}"
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(field(&s, "bob", ".status.certificate"), "");
    let r = row(&s, "bob");
    assert_eq!(r[3..], ["system:admin", "<none>", "Denied"]);
}

#[test]
fn invalid_csrs_are_refused_and_the_spec_cannot_change() {
    let s = Server::start();
    let (_, csr) = key_and_csr("carol", None, vec![]);
    let signer = "kubernetes.io/kube-apiserver-client";
    let create = |m: String| s.fails(&["create", "-f", "-"], Some(&m));

    let not_csr = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let err = create(manifest("a", signer, not_csr, &["client auth"], ""));
    assert!(
        err.contains("spec.request: Invalid value")
            && err.contains("PEM block type must be CERTIFICATE REQUEST"),
        "{err}"
    );
    let err = create(manifest(
        "a",
        signer,
        &csr,
        &["client auth"],
        "  expirationSeconds: 300\n",
    ));
    assert!(
        err.contains("may not specify a duration less than 600 seconds (10 minutes)"),
        "{err}"
    );
    let err = create(manifest("a", "signer", &csr, &["client auth"], ""));
    assert!(
        err.contains(
            "must be a fully qualified domain and path of the form 'example.com/signer-name'"
        ),
        "{err}"
    );
    let err = create(manifest("a", signer, &csr, &["client auth", "bogus"], ""));
    assert!(
        err.contains("spec.usages[1]: Unsupported value: \"bogus\""),
        "{err}"
    );
    let err = create(manifest(
        "a",
        "kubernetes.io/legacy-unknown",
        &csr,
        &["client auth"],
        "",
    ));
    assert!(
        err.contains("the legacy signerName is not allowed via this API version"),
        "{err}"
    );
    // CertificateSubjectRestriction: no system:masters through the client signer.
    let (_, masters) = key_and_csr("eve", Some("system:masters"), vec![]);
    let err = create(manifest("a", signer, &masters, &["client auth"], ""));
    assert!(
        err.contains("use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"),
        "{err}"
    );
    assert!(!s.ok(&["get", "csr", "-o", "name"]).contains("csr"));

    // A request is fixed once made: updates keep its spec.
    s.ok_stdin(
        &["create", "-f", "-"],
        &manifest("carol", signer, &csr, &["client auth"], ""),
    );
    s.ok(&[
        "patch",
        "csr",
        "carol",
        "--type=merge",
        "-p",
        r#"{"spec":{"signerName":"example.com/other","usages":["server auth"]}}"#,
    ]);
    assert_eq!(field(&s, "carol", ".spec.signerName"), signer);
    assert_eq!(field(&s, "carol", ".spec.usages"), r#"["client auth"]"#);
}

/// A ClusterRole named `name` with `rules` (YAML list items) bound to user `user`.
fn grant(s: &Server, name: &str, user: &str, rules: &str) {
    s.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {name}\nrules:\n{rules}---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {name}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {name}\nsubjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: User\n  name: {user}\n"
        ),
    );
}

/// Whether `user` may `args` (`kubectl auth can-i`).
fn can(s: &Server, user: &str, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i", "--as", user];
    all.extend_from_slice(args);
    String::from_utf8_lossy(&s.kubectl(&all).stdout).trim() == "yes"
}

/// PUTs `csr` (as JSON) to its `status` subresource, as `user` when given.
fn put_status(s: &Server, csr: &serde_json::Value, user: Option<&str>) -> std::process::Output {
    let path = format!(
        "/apis/certificates.k8s.io/v1/certificatesigningrequests/{}/status",
        csr["metadata"]["name"].as_str().expect("name")
    );
    let mut args = vec!["replace", "--raw", &path, "-f", "-"];
    let as_user = user.map(|u| format!("--as={u}"));
    if let Some(u) = &as_user {
        args.push(u);
    }
    s.kubectl_stdin(&args, &csr.to_string())
}

/// kubectl's error output, with the quotes of a raw JSON Status unescaped.
fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).replace('\\', "")
}

fn csr_json(s: &Server, name: &str) -> serde_json::Value {
    serde_json::from_str(&s.ok(&["get", "csr", name, "-o", "json"])).expect("json")
}

#[test]
fn approving_needs_approve_on_the_signer_or_its_domain() {
    let s = Server::start();
    let (_, csr) = key_and_csr("dave", None, vec![]);
    let signer = "kubernetes.io/kube-apiserver-client";
    s.ok_stdin(
        &["create", "-f", "-"],
        &manifest("dave", signer, &csr, &["client auth"], ""),
    );
    // bob may use the approval subresource, but approve only another signer's requests.
    grant(
        &s,
        "csr-approval",
        "bob",
        "- apiGroups: [certificates.k8s.io]\n  resources: [certificatesigningrequests]\n  verbs: [get, list, watch]\n- apiGroups: [certificates.k8s.io]\n  resources: [certificatesigningrequests/approval]\n  verbs: [update]\n- apiGroups: [certificates.k8s.io]\n  resources: [signers]\n  resourceNames: [kubernetes.io/kubelet-serving]\n  verbs: [approve]\n",
    );
    eventually(10, "bob's binding", || {
        can(
            &s,
            "bob",
            &[
                "update",
                "certificatesigningrequests.certificates.k8s.io",
                "--subresource=approval",
            ],
        )
        .then_some(())
    });
    let err = s.fails(&["certificate", "approve", "dave", "--as=bob"], None);
    assert!(
        err.contains(&format!(
            "certificatesigningrequests.certificates.k8s.io \"dave\" is forbidden: user not permitted to approve requests with signerName \"{signer}\""
        )),
        "{err}"
    );
    // Denying is approval too.
    let err = s.fails(&["certificate", "deny", "dave", "--as=bob"], None);
    assert!(
        err.contains("user not permitted to approve requests"),
        "{err}"
    );
    assert_eq!(row(&s, "dave").last().map(String::as_str), Some("Pending"));

    // `approve` on every signer of the domain is enough; the controller then signs as usual.
    grant(
        &s,
        "csr-approve-kubernetes-io",
        "bob",
        "- apiGroups: [certificates.k8s.io]\n  resources: [signers]\n  resourceNames: [\"kubernetes.io/*\"]\n  verbs: [approve]\n",
    );
    eventually(10, "bob's right to approve", || {
        s.kubectl(&["certificate", "approve", "dave", "--as=bob"])
            .status
            .success()
            .then_some(())
    });
    assert_eq!(field(&s, "dave", ".status.conditions[0].type"), "Approved");
    let cert = wait_certificate(&s, "dave");
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
}

#[test]
fn issuing_needs_sign_on_the_signer_and_status_cannot_approve() {
    let s = Server::start();
    // A signer no built-in controller serves, so only this test writes certificates.
    let signer = "example.com/test";
    let (_, csr) = key_and_csr("erin", None, vec![]);
    s.ok_stdin(
        &["create", "-f", "-"],
        &manifest("erin", signer, &csr, &["client auth"], ""),
    );
    let key = KeyPair::generate().expect("key");
    let issued = CertificateParams::new(vec!["erin".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate")
        .pem();

    // The status subresource cannot approve, even for cluster admins...
    let mut obj = csr_json(&s, "erin");
    obj["status"] = serde_json::json!({"conditions": [
        {"type": "Approved", "status": "True", "reason": "ThroughStatus"}
    ]});
    let out = put_status(&s, &obj, None);
    let err = stderr(&out);
    assert!(
        !out.status.success()
            && err.contains("updates may not add a condition of type \"Approved\""),
        "{err}"
    );
    // ...nor change an approval: the old Approved condition is kept.
    s.ok(&["certificate", "approve", "erin"]);
    let mut obj = csr_json(&s, "erin");
    obj["status"]["conditions"][0]["reason"] = serde_json::json!("Forged");
    obj["status"]["conditions"][0]["message"] = serde_json::json!("forged");
    assert!(put_status(&s, &obj, None).status.success());
    assert_eq!(
        field(&s, "erin", ".status.conditions[0].reason"),
        "KubectlApprove"
    );

    // bob may update the status subresource, but not sign for this signer.
    grant(
        &s,
        "csr-status",
        "bob",
        "- apiGroups: [certificates.k8s.io]\n  resources: [certificatesigningrequests]\n  verbs: [get]\n- apiGroups: [certificates.k8s.io]\n  resources: [certificatesigningrequests/status]\n  verbs: [update]\n- apiGroups: [certificates.k8s.io]\n  resources: [signers]\n  resourceNames: [\"example.com/other\", \"kubernetes.io/*\"]\n  verbs: [sign]\n",
    );
    eventually(10, "bob's binding", || {
        can(
            &s,
            "bob",
            &[
                "update",
                "certificatesigningrequests.certificates.k8s.io",
                "--subresource=status",
            ],
        )
        .then_some(())
    });
    let mut obj = csr_json(&s, "erin");
    obj["status"]["certificate"] = serde_json::json!(b64(issued.as_bytes()));
    let out = put_status(&s, &obj, Some("bob"));
    let err = stderr(&out);
    assert!(
        !out.status.success()
            && err.contains(&format!(
                "user not permitted to sign requests with signerName \"{signer}\""
            )),
        "{err}"
    );
    assert_eq!(field(&s, "erin", ".status.certificate"), "");

    // With `sign` on the signer it goes through.
    grant(
        &s,
        "csr-sign-example",
        "bob",
        "- apiGroups: [certificates.k8s.io]\n  resources: [signers]\n  resourceNames: [example.com/test]\n  verbs: [sign]\n",
    );
    eventually(10, "bob's right to sign", || {
        put_status(&s, &obj, Some("bob"))
            .status
            .success()
            .then_some(())
    });
    assert_eq!(
        unb64(&field(&s, "erin", ".status.certificate")),
        issued.as_bytes()
    );
    assert_eq!(
        row(&s, "erin").last().map(String::as_str),
        Some("Approved,Issued")
    );
}
