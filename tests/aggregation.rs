//! The aggregation layer (`apiregistration.k8s.io/v1`): an APIService delegating a group to a
//! Service is proxied there with the caller's identity, merged into discovery, and tracked by
//! its `Available` condition; built-in groups are local APIServices. Also the mandatory
//! flowcontrol objects every cluster has.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::host::NODE_IP;
use common::tls_backend::{base64, bind_in_netns, make_certs};
use common::{Server, eventually};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

/// One request an aggregated server received: method, path and headers (lower-case names).
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// `kube-system/extension-apiserver-authentication`, once published.
fn authentication_config(s: &Server) -> Value {
    eventually(60, "extension-apiserver-authentication", || {
        let out = s.kubectl(&[
            "get",
            "configmap",
            "-n",
            "kube-system",
            "extension-apiserver-authentication",
            "-o",
            "json",
        ]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
    })
}

/// A minimal aggregated API server for `example.com/v1alpha1` (a `widgets` resource holding
/// `w1`): HTTPS with its own CA for `<service>.default.svc`, and it requires a client
/// certificate from the request-header CA that `extension-apiserver-authentication` publishes
/// (the front proxy's), as a real one would.
struct Backend {
    port: u16,
    ca_bundle: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn widget(name: &str) -> Value {
    json!({"apiVersion": "example.com/v1alpha1", "kind": "Widget",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": "2024-01-01T00:00:00Z"}})
}

fn answer(path: &str) -> (u16, Value) {
    let path = path.split('?').next().unwrap_or_default();
    match path {
        "/apis/example.com/v1alpha1" => (
            200,
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "example.com/v1alpha1",
                "resources": [{"name": "widgets", "singularName": "widget", "namespaced": true, "kind": "Widget",
                    "verbs": ["get", "list"], "shortNames": ["wdg"]}]}),
        ),
        "/apis/example.com/v1alpha1/namespaces/default/widgets"
        | "/apis/example.com/v1alpha1/widgets" => (
            200,
            json!({"apiVersion": "example.com/v1alpha1", "kind": "WidgetList", "metadata": {"resourceVersion": "1"},
                "items": [widget("w1")]}),
        ),
        "/apis/example.com/v1alpha1/namespaces/default/widgets/w1" => (200, widget("w1")),
        _ => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
        ),
    }
}

fn start_backend(listener: TcpListener, service: &str, front_proxy_ca: &str) -> Backend {
    let (ca_pem, cert_pem, key_pem) = make_certs(&[&format!("{service}.default.svc")]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(front_proxy_ca.as_bytes()) {
        roots
            .add(c.expect("front proxy CA PEM"))
            .expect("front proxy CA");
    }
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key"),
            )
            .expect("server config"),
    );
    let port = listener.local_addr().expect("address").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        let (config, seen) = (config.clone(), seen.clone());
                        std::thread::spawn(move || serve(tcp, config, seen));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
    }
    Backend {
        port,
        ca_bundle: base64(ca_pem.as_bytes()),
        seen,
        stop,
    }
}

/// HTTP/1.1 requests on one connection (bodies are not expected: GETs only).
fn serve(tcp: std::net::TcpStream, config: Arc<rustls::ServerConfig>, seen: Arc<Mutex<Vec<Seen>>>) {
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    loop {
        let mut line = String::new();
        if tls.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let mut headers = Vec::new();
        let mut length = 0;
        loop {
            let mut h = String::new();
            if tls.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
                if k == "content-length" {
                    length = v.parse().unwrap_or(0);
                }
                headers.push((k, v));
            }
        }
        let mut body = vec![0; length];
        if tls.read_exact(&mut body).is_err() {
            return;
        }
        let upgrade = headers.iter().any(|(k, _)| k == "upgrade");
        seen.lock().unwrap().push(Seen {
            path: path.clone(),
            headers,
        });
        if upgrade {
            // A stream: switch protocols, then echo what comes until the peer closes.
            let out = tls.get_mut();
            let head = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: test-echo\r\n\r\n";
            if out.write_all(head.as_bytes()).is_err() || out.flush().is_err() {
                return;
            }
            let mut buf = [0u8; 1024];
            loop {
                let n = match tls.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let out = tls.get_mut();
                if out.write_all(&buf[..n]).is_err() || out.flush().is_err() {
                    return;
                }
            }
        }
        let (code, doc) = answer(&path);
        let body = serde_json::to_vec(&doc).unwrap();
        let head = format!(
            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let out = tls.get_mut();
        if out.write_all(head.as_bytes()).is_err() || out.write_all(&body).is_err() {
            return;
        }
        let _ = out.flush();
    }
}

/// A TCP connection to `addr` made inside the network namespace of process `pid`.
fn connect_in_netns(pid: u32, addr: &str) -> std::net::TcpStream {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("netns");
    let addr = addr.to_string();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        std::net::TcpStream::connect(addr).expect("connect")
    })
    .join()
    .expect("netns thread")
}

/// Sends an upgrade request for `path` to the API server as the admin of its kubeconfig, and
/// returns the response head and what the stream echoes of `payload`.
fn upgrade_through_api(s: &Server, path: &str, payload: &[u8]) -> (String, Vec<u8>) {
    let kubeconfig = std::fs::read_to_string(&s.kubeconfig).expect("kubeconfig");
    let field = |name: &str| {
        let b64 = kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("{name} in kubeconfig"));
        common::tls_backend::unbase64(b64).expect("base64")
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&field("certificate-authority-data")) {
        roots.add(c.expect("CA")).expect("CA");
    }
    let certs: Vec<CertificateDer> =
        CertificateDer::pem_slice_iter(&field("client-certificate-data"))
            .map(|c| c.expect("client cert"))
            .collect();
    let key = PrivateKeyDer::from_pem_slice(&field("client-key-data")).expect("client key");
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("client config");
    let host = s.host().expect("test host");
    let tcp = connect_in_netns(host.pid(), &format!("127.0.0.1:{}", s.port));
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("TLS client");
    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: test-echo\r\n\r\n"
    );
    tls.get_mut().write_all(request.as_bytes()).expect("send");
    tls.get_mut().flush().expect("flush");
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if tls.read_line(&mut line).expect("response") == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    if !head.starts_with("HTTP/1.1 101") {
        return (head, Vec::new());
    }
    tls.get_mut().write_all(payload).expect("stream write");
    tls.get_mut().flush().expect("flush");
    let mut echoed = vec![0u8; payload.len()];
    tls.read_exact(&mut echoed).expect("stream read");
    (head, echoed)
}

fn condition(s: &Server, name: &str) -> (String, String) {
    let out = s.kubectl(&[
        "get",
        "apiservice",
        name,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Available\")].status} {.status.conditions[?(@.type==\"Available\")].reason}",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (status, reason) = text.split_once(' ').unwrap_or(("", ""));
    (status.to_string(), reason.to_string())
}

fn wait_condition(s: &Server, name: &str, status: &str, reason: &str) {
    eventually(60, &format!("{name} Available={status} ({reason})"), || {
        (condition(s, name) == (status.to_string(), reason.to_string())).then_some(())
    });
}

/// Built-in groups (and kinglet's own `metrics.k8s.io`) are local APIServices, available, shown
/// with upstream's columns; flowcontrol's mandatory objects exist.
#[test]
fn local_apiservices_and_flowcontrol_bootstrap() {
    let s = Server::start();
    wait_condition(&s, "v1beta1.metrics.k8s.io", "True", "Local");
    wait_condition(&s, "v1.apps", "True", "Local");
    let schemas = s.ok(&["get", "flowschemas", "-o", "jsonpath={range .items[*]}{.metadata.name}={.spec.matchingPrecedence}/{.spec.priorityLevelConfiguration.name} {end}"]);
    assert!(schemas.contains("exempt=1/exempt"), "{schemas}");
    assert!(schemas.contains("catch-all=10000/catch-all"), "{schemas}");
    let levels = s.ok(&[
        "get",
        "prioritylevelconfigurations",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.spec.type} {end}",
    ]);
    assert!(levels.contains("exempt=Exempt"), "{levels}");
    assert!(levels.contains("catch-all=Limited"), "{levels}");

    // Backends learn how to trust the identity headers.
    let auth = authentication_config(&s);
    assert_eq!(
        auth["data"]["requestheader-username-headers"],
        "[\"X-Remote-User\"]"
    );
    assert!(
        auth["data"]["requestheader-client-ca-file"]
            .as_str()
            .is_some_and(|c| c.contains("BEGIN CERTIFICATE"))
    );

    // Served by the APIService kind's behaviour (kinds/apiregistration.rs): the `v1.` name,
    // upstream's columns and validation.
    wait_condition(&s, "v1.", "True", "Local");
    let table = s.ok(&["get", "apiservices"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "SERVICE", "AVAILABLE", "AGE"], "{table}");
    let metrics = table
        .lines()
        .find(|l| l.starts_with("v1beta1.metrics.k8s.io "))
        .unwrap_or_else(|| panic!("no metrics APIService:\n{table}"));
    let cols: Vec<&str> = metrics.split_whitespace().collect();
    assert_eq!(cols.get(1..3), Some(&["Local", "True"][..]), "{table}");
    assert!(table.contains("v1.storage.k8s.io "), "{table}");

    // An APIService must be named <version>.<group>.
    let bad = json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": "wrong"}, "spec": {"group": "example.com", "version": "v1",
            "groupPriorityMinimum": 1000, "versionPriority": 15, "service": {"namespace": "default", "name": "x"}}});
    let err = s.fails(&["create", "-f", "-"], Some(&bad.to_string()));
    assert!(err.contains("spec.version+"), "{err}");
}

/// An APIService pointing at a Service: requests for its group are proxied to the endpoint with
/// the caller's identity, discovery lists it, and it turns unavailable (503) without endpoints
/// or Service.
#[test]
fn apiservice_proxies_its_group_and_tracks_availability() {
    let s = Server::start_node(&[]);
    let host = s.host().expect("test host");
    let listener = bind_in_netns(host.pid(), &format!("{NODE_IP}:0")).expect("bind in test host");
    let auth = authentication_config(&s);
    let cluster_ca =
        std::fs::read_to_string(s.data_dir().join("server/tls/ca.crt")).expect("cluster CA");
    assert_eq!(auth["data"]["client-ca-file"], cluster_ca.as_str());
    // The front proxy has a CA of its own: no client certificate the cluster CA issues (an
    // approved CSR's) can assert identities to aggregated servers.
    let front_proxy_ca = auth["data"]["requestheader-client-ca-file"]
        .as_str()
        .expect("request-header CA");
    assert_ne!(front_proxy_ca, cluster_ca);
    assert_eq!(
        auth["data"]["requestheader-allowed-names"],
        r#"["front-proxy-client"]"#
    );
    let backend = start_backend(listener, "agg-api", front_proxy_ca);

    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "agg-api", "namespace": "default"},
        "spec": {"ports": [{"name": "https", "port": 443, "targetPort": backend.port}]}});
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "agg-api-1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "agg-api", "endpointslice.kubernetes.io/managed-by": "test"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": backend.port, "protocol": "TCP"}]});
    let apiservice = json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": "v1alpha1.example.com"},
        "spec": {"group": "example.com", "version": "v1alpha1", "groupPriorityMinimum": 1000, "versionPriority": 15,
            "caBundle": backend.ca_bundle, "service": {"namespace": "default", "name": "agg-api"}}});
    for obj in [&service, &slice, &apiservice] {
        s.ok_stdin(&["apply", "-f", "-"], &obj.to_string());
    }
    wait_condition(&s, "v1alpha1.example.com", "True", "Passed");

    // Proxied, with the (impersonated) caller's identity and never the client's credentials.
    let got = s.ok(&[
        "--as=alice",
        "--as-group=system:masters",
        "get",
        "--raw",
        "/apis/example.com/v1alpha1/namespaces/default/widgets/w1",
    ]);
    let got: Value = serde_json::from_str(&got).expect("widget JSON");
    assert_eq!(got["metadata"]["name"], "w1");
    let seen = backend
        .seen
        .lock()
        .unwrap()
        .iter()
        .rfind(|r| r.path.ends_with("/widgets/w1"))
        .cloned()
        .expect("the backend saw the request");
    assert_eq!(seen.all("x-remote-user"), ["alice"]);
    assert!(
        seen.all("x-remote-group").contains(&"system:masters"),
        "{seen:?}"
    );
    assert!(seen.all("authorization").is_empty() && seen.all("impersonate-user").is_empty());

    // Upgrades are spliced: the stream reaches the backend and comes back.
    let (head, echoed) = upgrade_through_api(
        &s,
        "/apis/example.com/v1alpha1/namespaces/default/widgets/w1/attach",
        b"ping through the aggregator",
    );
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(echoed, b"ping through the aggregator");

    // Discovery: the group in /apis and /apis/<group>, its resources through kubectl.
    let groups: Value = serde_json::from_str(&s.ok(&["get", "--raw", "/apis"])).unwrap();
    let example = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "example.com")
        .cloned()
        .expect("example.com in /apis");
    assert_eq!(
        example["preferredVersion"]["groupVersion"],
        "example.com/v1alpha1"
    );
    let group: Value = serde_json::from_str(&s.ok(&["get", "--raw", "/apis/example.com"])).unwrap();
    assert_eq!(group["versions"][0]["version"], "v1alpha1");
    let resources = eventually(60, "widgets in api-resources", || {
        let out = s.kubectl(&["api-resources", "--api-group=example.com", "-o", "name"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("widgets.example.com").then_some(text)
    });
    assert!(resources.contains("widgets.example.com"), "{resources}");
    let names = s.ok(&[
        "get",
        "wdg",
        "-n",
        "default",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    assert_eq!(names, "w1");

    // No ready endpoint: unavailable, and requests answer 503.
    let mut unready = slice.clone();
    unready["endpoints"][0]["conditions"]["ready"] = json!(false);
    s.ok_stdin(&["apply", "-f", "-"], &unready.to_string());
    wait_condition(&s, "v1alpha1.example.com", "False", "MissingEndpoints");
    let err = s.fails(
        &[
            "get",
            "--raw",
            "/apis/example.com/v1alpha1/namespaces/default/widgets",
        ],
        None,
    );
    assert!(
        err.contains("ServiceUnavailable") || err.contains("unable to handle the request"),
        "{err}"
    );

    // No Service at all.
    s.ok(&["delete", "service", "agg-api"]);
    wait_condition(&s, "v1alpha1.example.com", "False", "ServiceNotFound");

    // Back again: available and proxied.
    s.ok_stdin(&["apply", "-f", "-"], &service.to_string());
    s.ok_stdin(&["apply", "-f", "-"], &slice.to_string());
    wait_condition(&s, "v1alpha1.example.com", "True", "Passed");
    let list = s.ok(&[
        "get",
        "--raw",
        "/apis/example.com/v1alpha1/namespaces/default/widgets",
    ]);
    assert!(list.contains("\"w1\""), "{list}");

    // Upstream's columns (kinds/apiregistration.rs).
    let table = s.ok(&["get", "apiservice", "v1alpha1.example.com"]);
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row.get(..3),
        Some(&["v1alpha1.example.com", "default/agg-api", "True"][..]),
        "{table}"
    );
}
