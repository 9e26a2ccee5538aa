//! The proxy subresources (issue 20): `services/<svc>:<port>/proxy/...`, `pods/<pod>/proxy/...`
//! and `nodes/<node>/proxy/...` reach a pod's web server and the kubelet through the API
//! server, connection upgrades included; addresses that are not a pod's or a node's, or that
//! are loopback, are refused.

mod common;

use common::{NODE, Server, eventually};
use serde_json::Value;

const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox:1.36
    imagePullPolicy: IfNotPresent
    ports: [{name: http, containerPort: 8080}]
    command:
    - sh
    - -c
    - |
      mkdir -p /www/cgi-bin
      echo hello through the proxy > /www/index.html
      printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho "method=$REQUEST_METHOD query=$QUERY_STRING"\ncat\n' > /www/cgi-bin/echo
      chmod +x /www/cgi-bin/echo
      exec httpd -f -p 8080 -h /www
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  selector: {app: nothing-has-this-label}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: echo}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: busybox:1.36
    imagePullPolicy: IfNotPresent
    command:
    - sh
    - -c
    - |
      cat > /tmp/upgrade.sh <<'EOF'
      #!/bin/sh
      # Reads a request head, switches protocols, then echoes what comes.
      cr=$(printf '\r')
      while read -r line; do
        [ "$line" = "$cr" ] || [ -z "$line" ] && break
      done
      printf 'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n'
      exec cat
      EOF
      chmod +x /tmp/upgrade.sh
      exec nc -ll -p 9000 -e /tmp/upgrade.sh
"#;

/// A raw HTTP/1.1 exchange with the API server (TLS, the kubeconfig's client certificate):
/// sends argv[3], then argv[4] (if any) once the answer's head arrived, and prints all that
/// came back until the server closes or falls silent.
const RAW_CLIENT: &str = r#"
import base64, re, socket, ssl, sys, tempfile
kc = open(sys.argv[1]).read()
def pem(field):
    f = tempfile.NamedTemporaryFile(delete=False)
    f.write(base64.b64decode(re.search(field + r": (\S+)", kc).group(1)))
    f.close()
    return f.name
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.load_cert_chain(pem("client-certificate-data"), pem("client-key-data"))
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[2]))))
s.settimeout(10)
s.sendall(sys.argv[3].encode())
data = b""
while b"\r\n\r\n" not in data:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
then = sys.argv[4].encode() if len(sys.argv) > 4 else None
if then:
    s.sendall(then)
s.settimeout(3)
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
        if then and then in data.split(b"\r\n\r\n", 1)[-1]:
            break
except (socket.timeout, ssl.SSLError):
    pass
sys.stdout.buffer.write(data)
"#;

fn raw(s: &Server, request: &str, then: Option<&str>) -> String {
    let mut cmd = s.command("python3");
    cmd.args(["-c", RAW_CLIENT])
        .arg(&s.kubeconfig)
        .arg(s.port.to_string())
        .arg(request);
    if let Some(t) = then {
        cmd.arg(t);
    }
    let out = cmd.output().expect("python3");
    assert!(
        out.status.success(),
        "raw client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
}

/// `kubectl get --raw path`, which must fail; returns its error output.
fn raw_fails(s: &Server, path: &str) -> String {
    let out = s.kubectl(&["get", "--raw", path]);
    assert!(
        !out.status.success(),
        "{path} answered: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn proxy_subresources_reach_pods_services_and_the_kubelet() {
    let s = Server::start_node(&[]);
    s.ok_stdin(&["apply", "-f", "-"], WEB);
    let web_ip = s.running_pod_ip("web");
    const PAGE: &str = "hello through the proxy";

    // services/proxy, by port name (the acceptance's `kubectl get --raw`) and by number.
    let svc = "/api/v1/namespaces/default/services";
    let page = eventually(60, "the service's endpoint through the proxy", || {
        let out = s.kubectl(&["get", "--raw", &format!("{svc}/web:http/proxy/")]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(page.trim(), PAGE);
    for path in [
        format!("{svc}/web:80/proxy/index.html"),
        format!("{svc}/http:web:80/proxy/index.html"),
    ] {
        assert_eq!(s.ok(&["get", "--raw", &path]).trim(), PAGE, "{path}");
    }

    // pods/proxy, with the port given or the pod's first declared one; `.../proxy` without
    // the slash redirects to `.../proxy/`, which kubectl follows.
    let pods = "/api/v1/namespaces/default/pods";
    for path in [
        format!("{pods}/web:8080/proxy/index.html"),
        format!("{pods}/web/proxy/"),
        format!("{pods}/web/proxy"),
    ] {
        assert_eq!(s.ok(&["get", "--raw", &path]).trim(), PAGE, "{path}");
    }

    // Method, query and body reach the backend (busybox httpd runs the CGI script; it reads
    // no chunked bodies, hence a raw request with a length, in HTTP/1.0 for an unchunked answer).
    let resp = raw(
        &s,
        &format!(
            "POST {svc}/web:http/proxy/cgi-bin/echo?a=1&b=two HTTP/1.0\r\nHost: 127.0.0.1\r\n\
             Content-Length: 11\r\n\r\nposted body"
        ),
        None,
    );
    assert!(resp.starts_with("HTTP/1.0 200"), "{resp}");
    assert!(
        resp.ends_with("\r\n\r\nmethod=POST query=a=1&b=two\nposted body"),
        "{resp}"
    );

    // A redirect of the backend to itself points back through the proxy.
    let resp = raw(&s, &get(&format!("{pods}/web/proxy/cgi-bin")), None);
    let head = resp.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 302"), "{resp}");
    assert!(
        head.contains(&format!("\r\nlocation: {pods}/web/proxy/cgi-bin/\r\n")),
        "{resp}"
    );

    // nodes/proxy: the kubelet, over its TLS port with the API server's client certificate.
    let nodes = "/api/v1/nodes";
    assert_eq!(
        s.ok(&["get", "--raw", &format!("{nodes}/{NODE}/proxy/healthz")]),
        "ok"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "--raw",
            &format!("{nodes}/{NODE}:10250/proxy/healthz")
        ]),
        "ok"
    );
    let summary: Value = serde_json::from_str(&s.ok(&[
        "get",
        "--raw",
        &format!("{nodes}/{NODE}/proxy/stats/summary"),
    ]))
    .expect("summary json");
    assert_eq!(summary["node"]["nodeName"], NODE, "{summary}");

    // No ready endpoint: 503 with a Status, as upstream.
    let err = raw_fails(&s, &format!("{svc}/empty:http/proxy/"));
    assert!(
        err.contains("(ServiceUnavailable): no endpoints available for service \"empty\""),
        "{err}"
    );
    let resp = raw(&s, &get(&format!("{svc}/empty/proxy/")), None);
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.contains(r#""kind":"Status""#), "{resp}");
    assert!(resp.contains(r#""reason":"ServiceUnavailable""#), "{resp}");
    let err = raw_fails(&s, &format!("{svc}/web:81/proxy/"));
    assert!(
        err.contains("no service port 81 found for service \"web\""),
        "{err}"
    );
    let err = raw_fails(&s, &format!("{pods}/ghost/proxy/"));
    assert!(err.contains("(NotFound)"), "{err}");
    let err = raw_fails(&s, &format!("{svc}/a:b:c:d/proxy/"));
    assert!(err.contains("(BadRequest)"), "{err}");

    // Endpoints written by hand are followed only to a pod holding the address.
    let manual = |target_ref: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: manual}}\nspec: {{ports: [{{port: 80}}]}}\n---\n\
             apiVersion: v1\nkind: Endpoints\nmetadata: {{name: manual}}\n\
             subsets: [{{addresses: [{{ip: {web_ip}{target_ref}}}], ports: [{{port: 8080}}]}}]\n"
        )
    };
    s.ok_stdin(&["apply", "-f", "-"], &manual(""));
    let err = raw_fails(&s, &format!("{svc}/manual:80/proxy/"));
    assert!(
        err.contains("no endpoints available for service \"manual:80\""),
        "{err}"
    );
    s.ok_stdin(
        &["apply", "-f", "-"],
        &manual(", targetRef: {kind: Pod, name: web, namespace: default}"),
    );
    assert_eq!(
        s.ok(&["get", "--raw", &format!("{svc}/manual:80/proxy/")])
            .trim(),
        PAGE
    );

    // Loopback addresses are refused even when the object says so (upstream's
    // IsProxyableIP): a pod bound to another node, a node with a loopback InternalIP.
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: local}\nspec:\n  nodeName: elsewhere\n  \
         containers: [{name: c, image: busybox:1.36}]\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {name: loopback-node}\n",
    );
    s.ok(&[
        "patch",
        "pod",
        "local",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"podIP":"127.0.0.1","podIPs":[{"ip":"127.0.0.1"}]}}"#,
    ]);
    s.ok(&[
        "patch",
        "node",
        "loopback-node",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"addresses":[{"type":"InternalIP","address":"127.0.0.1"}]}}"#,
    ]);
    for path in [
        format!("{pods}/local:8080/proxy/"),
        format!("{nodes}/loopback-node/proxy/healthz"),
    ] {
        let err = raw_fails(&s, &path);
        assert!(
            err.contains("(BadRequest): address not allowed"),
            "{path}: {err}"
        );
    }

    // An upgrade is spliced: the backend's 101 comes back and bytes flow both ways.
    s.running_pod_ip("echo");
    let upgrade = format!(
        "GET {pods}/echo:9000/proxy/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Connection: Upgrade\r\nUpgrade: echo\r\n\r\n"
    );
    let resp = eventually(30, "the upgraded connection echoes", || {
        let resp = raw(&s, &upgrade, Some("ping through the tunnel\n"));
        resp.contains("ping through the tunnel").then_some(resp)
    });
    let (head, rest) = resp.split_once("\r\n\r\n").expect("response head");
    assert!(head.starts_with("HTTP/1.1 101"), "{resp}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo"),
        "{resp}"
    );
    assert_eq!(rest, "ping through the tunnel\n");
}
