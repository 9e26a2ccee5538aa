//! Joining by token, as k3s does: `kinglet token` prints `K10<CA hash>::server:<secret>`,
//! `/cacerts` serves the CA that hash names, and `/v1-kinglet/{client,serving}-kubelet.crt`
//! issue node certificates for the right secret and node password only; extra tokens
//! (`kinglet token create`) join until they expire or are deleted. Requests go through
//! curl, as an agent's raw HTTPS client would. A joined node's credentials reach only what the
//! node authorizer and NodeRestriction give that node.

mod common;
// The join as `kinglet agent` does it, shared with the simulated agents of benches/agents.rs.
#[path = "../benches/common/join.rs"]
mod node_join;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Server;
use sha2::{Digest, Sha256};

/// A token's CA hash and secret.
fn parse_token(token: &str) -> (String, String) {
    let rest = token.strip_prefix("K10").expect("K10 prefix");
    let (hash, cred) = rest.split_once("::").expect("`::` in the token");
    let secret = cred.strip_prefix("server:").expect("server: credentials");
    assert_eq!(hash.len(), 64, "sha256 hex in {token}");
    assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(!secret.is_empty());
    (hash.to_string(), secret.to_string())
}

/// curl's status code and body for `path`, with optional basic credentials and headers.
fn curl(
    s: &Server,
    ca: Option<&Path>,
    path: &str,
    user: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let out_file = s.dir.path().join(format!("curl-{}.out", rand_suffix()));
    // In the server's test host, if it has one.
    let mut cmd = s.command("curl");
    cmd.args(["-s", "--max-time", "30", "-o"])
        .arg(&out_file)
        .args(["-w", "%{http_code}"]);
    match ca {
        Some(ca) => cmd.arg("--cacert").arg(ca),
        None => cmd.arg("-k"),
    };
    if let Some(u) = user {
        cmd.args(["-u", u]);
    }
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    let out = cmd
        .arg(format!("https://127.0.0.1:{}{path}", s.port))
        .output()
        .expect("run curl");
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let body = std::fs::read_to_string(&out_file).unwrap_or_default();
    (code, body)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The CA, fetched without trust and checked against the token's hash (as an agent does).
fn fetch_ca(s: &Server, token: &str) -> PathBuf {
    let (hash, _) = parse_token(token);
    let (code, ca) = curl(s, None, "/cacerts", None, &[]);
    assert_eq!(code, 200, "/cacerts: {ca}");
    assert!(ca.contains("BEGIN CERTIFICATE"), "{ca}");
    let got: String = Sha256::digest(ca.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(got, hash, "the token's hash names the CA /cacerts serves");
    let path = s.dir.path().join("fetched-ca.crt");
    std::fs::write(&path, &ca).expect("write ca");
    path
}

fn node_headers<'a>(node: &'a str, password: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("Kinglet-Node-Name", node),
        ("Kinglet-Node-Password", password),
    ]
}

/// Splits a `cert, CA, key` PEM bundle into the leaf certificate and the key.
fn split_bundle(bundle: &str) -> (String, String) {
    let end = "-----END CERTIFICATE-----";
    let leaf_end = bundle.find(end).expect("a certificate") + end.len();
    let key_start = bundle.find("-----BEGIN PRIVATE KEY-----").expect("a key");
    (
        format!("{}\n", bundle[..leaf_end].trim()),
        bundle[key_start..].to_string(),
    )
}

#[test]
fn token_names_the_ca_and_node_certificates_need_secret_and_password() {
    let s = Server::start();
    let token_file = s.data_dir().join("server/token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file)
            .expect("server token")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the token file is private");
    let token = s.kinglet_token(&[]);
    let (_, secret) = parse_token(&token);
    let ca = fetch_ca(&s, &token);

    // A new node name with the right secret: a client certificate the API accepts as the node.
    let node_cred = format!("node:{secret}");
    let (code, bundle) = curl(
        &s,
        Some(&ca),
        "/v1-kinglet/client-kubelet.crt",
        Some(&node_cred),
        &node_headers("edge-1", "pw-of-edge-1"),
    );
    assert_eq!(code, 200, "client cert: {bundle}");
    let (cert, key) = split_bundle(&bundle);
    let (cert_file, key_file) = (s.dir.path().join("n.crt"), s.dir.path().join("n.key"));
    std::fs::write(&cert_file, cert).expect("cert");
    std::fs::write(&key_file, key).expect("key");
    let kubeconfig = s.dir.path().join("node.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority: {}\n    server: https://127.0.0.1:{}\n  name: c\n\
             contexts:\n- context:\n    cluster: c\n    user: u\n  name: c\ncurrent-context: c\n\
             users:\n- name: u\n  user:\n    client-certificate: {}\n    client-key: {}\n",
            ca.display(),
            s.port,
            cert_file.display(),
            key_file.display()
        ),
    )
    .expect("kubeconfig");
    let out = s
        .command(common::kubectl_default())
        .env("KUBECONFIG", &kubeconfig)
        .args(["auth", "whoami", "-o", "json"])
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "whoami: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let who: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(who["status"]["userInfo"]["username"], "system:node:edge-1");
    assert!(
        who["status"]["userInfo"]["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == "system:nodes")),
        "{who}"
    );

    // The serving certificate names the node and the address it gave.
    let mut headers = node_headers("edge-1", "pw-of-edge-1");
    headers.push(("Kinglet-Node-IP", "192.0.2.7"));
    let (code, bundle) = curl(
        &s,
        Some(&ca),
        "/v1-kinglet/serving-kubelet.crt",
        Some(&node_cred),
        &headers,
    );
    assert_eq!(code, 200, "serving cert: {bundle}");
    let (cert, _) = split_bundle(&bundle);
    let cert_file = s.dir.path().join("serving.crt");
    std::fs::write(&cert_file, cert).expect("serving cert");
    let out = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-ext",
            "subjectAltName,extendedKeyUsage",
            "-in",
        ])
        .arg(&cert_file)
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DNS:edge-1"), "{text}");
    assert!(text.contains("IP Address:192.0.2.7"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    // A serving certificate never names the API server (its address, loopback, its names).
    for (node, ip) in [
        ("edge-1", "127.0.0.1"),
        ("kubernetes.default.svc", "192.0.2.8"),
    ] {
        let password = format!("pw-of-{node}");
        let mut headers = node_headers(node, &password);
        headers.push(("Kinglet-Node-IP", ip));
        let (code, body) = curl(
            &s,
            Some(&ca),
            "/v1-kinglet/serving-kubelet.crt",
            Some(&node_cred),
            &headers,
        );
        assert_eq!(code, 400, "{node} {ip}: {body}");
    }

    // A wrong secret: 401 with a Status.
    let (code, body) = curl(
        &s,
        Some(&ca),
        "/v1-kinglet/client-kubelet.crt",
        Some("node:not-the-secret"),
        &node_headers("edge-2", "pw"),
    );
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("\"kind\":\"Status\""), "{body}");
    // No credentials at all: 401 too.
    let (code, _) = curl(
        &s,
        Some(&ca),
        "/v1-kinglet/client-kubelet.crt",
        None,
        &node_headers("edge-2", "pw"),
    );
    assert_eq!(code, 401);

    // Another machine taking the name edge-1: refused, for both certificates.
    for path in [
        "/v1-kinglet/client-kubelet.crt",
        "/v1-kinglet/serving-kubelet.crt",
    ] {
        let (code, body) = curl(
            &s,
            Some(&ca),
            path,
            Some(&node_cred),
            &node_headers("edge-1", "another-password"),
        );
        assert_eq!(code, 403, "{path}: {body}");
    }

    // The node password is kept hashed only.
    let secret_json = s.ok(&[
        "get",
        "secret",
        "-n",
        "kube-system",
        "edge-1.node-password.kinglet",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&secret_json).expect("json");
    assert_eq!(v["type"], "kinglet.io/node-password");
    let hash = s.ok(&[
        "get",
        "secret",
        "-n",
        "kube-system",
        "edge-1.node-password.kinglet",
        "-o",
        "go-template={{.data.hash | base64decode}}",
    ]);
    assert!(hash.starts_with("$2"), "a bcrypt hash: {hash}");
    assert!(!hash.contains("pw-of-edge-1"), "{hash}");
    assert!(!secret_json.contains("pw-of-edge-1"), "{secret_json}");
}

/// The server's own node name is kept from joiners: no certificates for it with any password,
/// no tunnel for it even with a node certificate got another way (one issued before the
/// server reserved the name), and no serving certificate names what the API server's does.
#[test]
fn the_servers_node_name_cannot_be_taken() {
    let s = Server::start_node(&["--tls-san", "api.edge.example", "--tls-san", "192.0.2.99"]);
    let token = s.kinglet_token(&[]);
    let (_, secret) = parse_token(&token);
    let ca = fetch_ca(&s, &token);
    let cred = format!("node:{secret}");
    let node = common::NODE;
    for path in [
        "/v1-kinglet/client-kubelet.crt",
        "/v1-kinglet/serving-kubelet.crt",
    ] {
        let (code, body) = curl(
            &s,
            Some(&ca),
            path,
            Some(&cred),
            &node_headers(node, "guess"),
        );
        assert_eq!(code, 403, "{path} as {node}: {body}");
        assert!(body.contains("the server's own node"), "{body}");
    }
    // Its password Secret is the server's, made at start, of a password never given out.
    let reserved = s.ok(&[
        "get",
        "secret",
        "-n",
        "kube-system",
        &format!("{node}.node-password.kinglet"),
        "-o",
        "jsonpath={.type} {.metadata.labels.kinglet\\.io/reserved}",
    ]);
    assert_eq!(reserved.trim(), "kinglet.io/node-password server");

    // A node certificate for the server's node, as one issued before the fix: no tunnel.
    let tls = s.data_dir().join("server/tls");
    let read = |f: &str| std::fs::read_to_string(tls.join(f)).expect("CA file");
    let cluster_ca = kinglet_pki::CertKey {
        cert_pem: read("ca.crt"),
        key_pem: read("ca.key"),
    };
    let stolen = kinglet_pki::issue(
        &cluster_ca,
        &format!("system:node:{node}"),
        &["system:nodes"],
        &[],
        false,
        true,
    )
    .expect("issue");
    let (cert, key) = (s.dir.path().join("n.crt"), s.dir.path().join("n.key"));
    std::fs::write(&cert, &stolen.cert_pem).expect("cert");
    std::fs::write(&key, &stolen.key_pem).expect("key");
    let out = s
        .command("curl")
        .args(["-s", "--http1.1", "--max-time", "10", "-o", "/dev/null"])
        .args(["-w", "%{http_code}", "--cacert"])
        .arg(&ca)
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(["-H", "Connection: Upgrade", "-H", "Upgrade: kinglet-tunnel"])
        .arg(format!("https://127.0.0.1:{}/v1-kinglet/connect", s.port))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "403",
        "tunnel as {node}"
    );

    // Serving certificates naming the server's hostname, a --tls-san name or address: 400.
    let hostname = s.command("hostname").output().expect("hostname").stdout;
    let hostname = String::from_utf8_lossy(&hostname).trim().to_lowercase();
    for (name, ip) in [
        (hostname.as_str(), "192.0.2.7"),
        ("api.edge.example", "192.0.2.7"),
        ("edge-9", "192.0.2.99"),
    ] {
        let password = format!("pw-of-{name}");
        let mut headers = node_headers(name, &password);
        headers.push(("Kinglet-Node-IP", ip));
        let path = "/v1-kinglet/serving-kubelet.crt";
        let (code, body) = curl(&s, Some(&ca), path, Some(&cred), &headers);
        assert_eq!(code, 400, "{name} {ip}: {body}");
    }
    // Another name and address: a serving certificate.
    let mut headers = node_headers("edge-8", "pw-of-edge-8");
    headers.push(("Kinglet-Node-IP", "192.0.2.7"));
    let path = "/v1-kinglet/serving-kubelet.crt";
    let (code, body) = curl(&s, Some(&ca), path, Some(&cred), &headers);
    assert_eq!(code, 200, "edge-8: {body}");
}

#[test]
fn token_rotate_replaces_the_secret() {
    let s = Server::start();
    let old = s.kinglet_token(&[]);
    let (old_hash, old_secret) = parse_token(&old);
    if common::datastore_is_etcd() {
        // On a shared datastore the token seals the cluster's bootstrap data: one server
        // cannot rotate it alone, and the refusal leaves the token as it was.
        let out = common::kinglet_cli(&s.data_dir(), &["token", "rotate"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "rotate on a shared datastore: {stderr}"
        );
        assert!(
            stderr.contains("shares its datastore") && stderr.contains("cannot be rotated"),
            "{stderr}"
        );
        assert_eq!(s.kinglet_token(&[]), old, "the token is unchanged");
        return;
    }
    let new = s.kinglet_token(&["rotate"]);
    let (new_hash, new_secret) = parse_token(&new);
    assert_eq!(old_hash, new_hash, "the CA stays");
    assert_ne!(old_secret, new_secret);
    assert_eq!(s.kinglet_token(&[]), new, "the rotated token is kept");
    let ca = fetch_ca(&s, &new);
    let path = "/v1-kinglet/client-kubelet.crt";
    let (code, _) = curl(
        &s,
        Some(&ca),
        path,
        Some(&format!("server:{old_secret}")),
        &node_headers("edge-3", "pw"),
    );
    assert_eq!(code, 401, "the old secret no longer joins");
    let (code, body) = curl(
        &s,
        Some(&ca),
        path,
        Some(&format!("server:{new_secret}")),
        &node_headers("edge-3", "pw"),
    );
    assert_eq!(code, 200, "{body}");
}

/// `kinglet token <args>` with the server's admin kubeconfig.
fn kinglet_token_api(s: &Server, args: &[&str]) -> String {
    let kubeconfig = s.kubeconfig.display().to_string();
    let mut all = args.to_vec();
    all.extend(["--kubeconfig", &kubeconfig]);
    s.kinglet_token(&all)
}

#[test]
fn extra_tokens_join_until_expired_or_deleted() {
    let s = Server::start();
    let server_token = s.kinglet_token(&[]);
    let (ca_hash, _) = parse_token(&server_token);
    let ca = fetch_ca(&s, &server_token);
    let extra = kinglet_token_api(
        &s,
        &["create", "--ttl", "1h", "--description", "edge fleet"],
    );
    let (hash, creds) = extra
        .strip_prefix("K10")
        .and_then(|t| t.split_once("::"))
        .expect("K10 token");
    assert_eq!(hash, ca_hash);
    let (id, _) = creds.split_once('.').expect("<id>.<secret>");
    let join = |creds: &str, node: &str| {
        curl(
            &s,
            Some(&ca),
            "/v1-kinglet/client-kubelet.crt",
            Some(&format!("node:{creds}")),
            &node_headers(node, "pw"),
        )
    };
    let (code, body) = join(creds, "edge-4");
    assert_eq!(code, 200, "{body}");
    // The right id with another secret: refused.
    let (code, _) = join(&format!("{id}.0000000000000000"), "edge-5");
    assert_eq!(code, 401);
    let listed = kinglet_token_api(&s, &["list"]);
    let row = listed
        .lines()
        .find(|l| l.starts_with(creds))
        .unwrap_or_else(|| panic!("{creds} not listed:\n{listed}"));
    assert!(row.ends_with("edge fleet"), "{row}");

    // An expired token is refused.
    let short = kinglet_token_api(&s, &["create", "--ttl", "1s"]);
    let short_creds = short.split_once("::").expect("token").1.to_string();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (code, _) = join(&short_creds, "edge-6");
    assert_eq!(code, 401, "expired token");
    assert!(
        kinglet_token_api(&s, &["list"])
            .lines()
            .any(|l| l.starts_with(&short_creds) && l.contains("expired"))
    );

    // A deleted token is refused.
    kinglet_token_api(&s, &["delete", &extra]);
    let (code, _) = join(creds, "edge-7");
    assert_eq!(code, 401, "deleted token");
    assert!(!kinglet_token_api(&s, &["list"]).contains(creds));
}

/// The HTTP status of an API call's outcome (200 for any success).
fn status_of<T>(r: Result<T, kube::Error>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(kube::Error::Api(s)) => s.code,
        Err(e) => panic!("not an API answer: {e}"),
    }
}

/// Issue 21's acceptance: a joined node's credentials read the Secrets and ConfigMaps of its
/// own pods only, and change no other Node (node authorizer and NodeRestriction, as upstream).
#[test]
fn node_credentials_reach_only_their_own_node() {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, ServiceAccount};
    use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
    use serde_json::json;

    let s = Server::start();
    let token = s.kinglet_token(&[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let admin = s.client().await;
        let mut as_node = Vec::new();
        for node in ["node-a", "node-b"] {
            let id = node_join::join(s.port, &token, node, &format!("pw-of-{node}"), false)
                .await
                .unwrap_or_else(|e| panic!("join as {node}: {e:#}"));
            let c = node_join::node_client(s.port, &id).expect("node client");
            // Each node registers itself, as a kubelet does.
            let obj: Node = serde_json::from_value(json!({"metadata": {"name": node,
                "labels": {"kubernetes.io/hostname": node}}}))
            .unwrap();
            Api::<Node>::all(c.clone())
                .create(&PostParams::default(), &obj)
                .await
                .unwrap_or_else(|e| panic!("{node} registers itself: {e}"));
            as_node.push(c);
        }
        let (a, b) = (as_node[0].clone(), as_node[1].clone());

        // Secret s-x and ConfigMap cm-x used by pod p-x bound to node-x; s-free by no pod.
        let ns = "default";
        let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
        let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), ns);
        for name in ["s-a", "s-b", "s-free"] {
            let obj = json!({"metadata": {"name": name}, "stringData": {"k": name}});
            secrets
                .create(&PostParams::default(), &serde_json::from_value(obj).unwrap())
                .await
                .expect("secret");
        }
        for name in ["cm-a", "cm-b"] {
            let obj = json!({"metadata": {"name": name}, "data": {"k": name}});
            cms.create(&PostParams::default(), &serde_json::from_value(obj).unwrap())
                .await
                .expect("configmap");
        }
        let pod = |x: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": format!("p-{x}")},
                "spec": {"nodeName": format!("node-{x}"),
                    "volumes": [{"name": "s", "secret": {"secretName": format!("s-{x}")}}],
                    "containers": [{"name": "c", "image": "busybox:1.36",
                        "envFrom": [{"configMapRef": {"name": format!("cm-{x}")}}],
                        "volumeMounts": [{"name": "s", "mountPath": "/s"}]}]}}))
            .unwrap()
        };
        let admin_pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
        for x in ["a", "b"] {
            admin_pods
                .create(&PostParams::default(), &pod(x))
                .await
                .expect("pod");
        }

        // Reads: only what node-a's own pod uses, and only one object at a time.
        let a_secrets: Api<Secret> = Api::namespaced(a.clone(), ns);
        let a_cms: Api<ConfigMap> = Api::namespaced(a.clone(), ns);
        let got = a_secrets.get("s-a").await.expect("node-a reads s-a");
        assert!(got.data.is_some_and(|d| d["k"].0 == b"s-a"));
        assert_eq!(status_of(a_cms.get("cm-a").await), 200, "node-a reads cm-a");
        assert_eq!(status_of(a_secrets.get("s-b").await), 403, "s-b is node-b's");
        assert_eq!(status_of(a_secrets.get("s-free").await), 403, "s-free: no pod");
        assert_eq!(status_of(a_cms.get("cm-b").await), 403, "cm-b is node-b's");
        let b_secrets: Api<Secret> = Api::namespaced(b.clone(), ns);
        assert_eq!(status_of(b_secrets.get("s-a").await), 403, "s-a is node-a's");
        assert_eq!(status_of(b_secrets.get("s-b").await), 200, "node-b reads s-b");
        let everything = ListParams::default();
        assert_eq!(status_of(a_secrets.list(&everything).await), 403);
        assert_eq!(
            status_of(Api::<Secret>::all(a.clone()).list(&everything).await),
            403
        );
        assert_eq!(status_of(a_cms.list(&everything).await), 403);
        // A list of one object by name (the kubelet's watch of a Secret) follows the graph.
        let one = |name: &str| ListParams::default().fields(&format!("metadata.name={name}"));
        let listed = a_secrets.list(&one("s-a")).await.expect("list of s-a");
        assert_eq!(listed.items.len(), 1);
        assert_eq!(status_of(a_secrets.list(&one("s-b")).await), 403);

        // Another Node: no label, status, update or delete.
        let a_nodes: Api<Node> = Api::all(a.clone());
        let labels = Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}}));
        let pp = PatchParams::default();
        assert_eq!(status_of(a_nodes.patch("node-b", &pp, &labels).await), 403);
        let unready = Patch::Merge(json!({"status": {"conditions": [{"type": "Ready",
            "status": "False", "reason": "Hijacked", "message": "by node-a"}]}}));
        assert_eq!(
            status_of(a_nodes.patch_status("node-b", &pp, &unready).await),
            403
        );
        let mut node_b = a_nodes.get("node-b").await.expect("nodes read any Node");
        node_b.metadata.labels.get_or_insert_default().insert("x".into(), "y".into());
        assert_eq!(
            status_of(a_nodes.replace("node-b", &PostParams::default(), &node_b).await),
            403
        );
        assert_eq!(
            status_of(a_nodes.delete("node-b", &DeleteParams::default()).await),
            403
        );
        let untouched = Api::<Node>::all(admin.clone()).get("node-b").await.unwrap();
        assert!(!untouched.metadata.labels.unwrap_or_default().contains_key("x"));
        assert!(untouched.status.and_then(|s| s.conditions).is_none());
        // Its own Node: status and its own labels.
        let ready = Patch::Merge(json!({"status": {"conditions": [{"type": "Ready",
            "status": "True", "reason": "KubeletReady", "message": "ready"}]}}));
        assert_eq!(
            status_of(a_nodes.patch_status("node-a", &pp, &ready).await),
            200
        );
        assert_eq!(status_of(a_nodes.patch("node-a", &pp, &labels).await), 200);

        // Leases: its own only.
        let lease = |name: &str| -> Lease {
            serde_json::from_value(json!({"metadata": {"name": name},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40}}))
            .unwrap()
        };
        let a_leases: Api<Lease> = Api::namespaced(a.clone(), "kube-node-lease");
        let post = PostParams::default();
        assert_eq!(status_of(a_leases.create(&post, &lease("node-a")).await), 200);
        assert_eq!(status_of(a_leases.create(&post, &lease("node-b")).await), 403);

        // Pods: no ordinary pod, not even bound to itself (NodeRestriction: mirror pods
        // only); status and deletion of its own pods only.
        let a_pods: Api<Pod> = Api::namespaced(a.clone(), ns);
        let plain = |name: &str, node: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox:1.36"}]}}))
            .unwrap()
        };
        match a_pods.create(&post, &plain("mine", "node-a")).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 403, "{e:?}");
                assert!(e.message.contains("mirror pods"), "{}", e.message);
            }
            other => panic!("node-a created an ordinary pod: {other:?}"),
        }
        assert_eq!(status_of(a_pods.create(&post, &plain("theirs", "node-b")).await), 403);
        let running = Patch::Merge(json!({"status": {"phase": "Running"}}));
        assert_eq!(status_of(a_pods.patch_status("p-b", &pp, &running).await), 403);
        assert_eq!(status_of(a_pods.patch_status("p-a", &pp, &running).await), 200);
        assert_eq!(
            status_of(a_pods.delete("p-b", &DeleteParams::default()).await),
            403
        );
        assert_eq!(
            status_of(a_pods.evict("p-b", &Default::default()).await),
            403
        );
        // ServiceAccount tokens: bound to one of its own pods only.
        let a_sas: Api<ServiceAccount> = Api::namespaced(a.clone(), ns);
        let token_for = |pod: Option<&Pod>| -> TokenRequest {
            let bound = pod.map(|p| {
                json!({"kind": "Pod", "apiVersion": "v1",
                    "name": p.metadata.name, "uid": p.metadata.uid})
            });
            serde_json::from_value(json!({"spec": {"audiences": [], "boundObjectRef": bound}}))
                .unwrap()
        };
        let (p_a, p_b) = (
            admin_pods.get("p-a").await.unwrap(),
            admin_pods.get("p-b").await.unwrap(),
        );
        for (pod, want) in [(Some(&p_a), 200), (Some(&p_b), 403), (None, 403)] {
            let got = a_sas
                .create_token_request("default", &post, &token_for(pod))
                .await;
            assert_eq!(status_of(got), want, "token bound to {:?}", pod.map(|p| &p.metadata.name));
        }
        let p_b = admin_pods.get("p-b").await.expect("p-b stays");
        assert!(p_b.metadata.deletion_timestamp.is_none());
        assert_ne!(p_b.status.and_then(|s| s.phase).as_deref(), Some("Running"));

        // The graph follows bindings: once p-b is gone, node-b no longer reads s-b.
        admin_pods
            .delete("p-b", &DeleteParams::default().grace_period(0))
            .await
            .expect("delete p-b");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while status_of(b_secrets.get("s-b").await) != 403 {
            assert!(
                std::time::Instant::now() < deadline,
                "node-b still reads s-b without a pod using it"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
}
