//! The pod network of a node (issue 5): a server with its node in a test host; traffic stays
//! inside the host's namespaces.

mod common;

use common::{Server, eventually};
use serde_json::Value;

fn pod_ip(s: &Server, name: &str) -> String {
    eventually(90, "pod running with an IP", || {
        let out = s.kubectl(&["get", "pod", name, "-o", "json"]);
        let p: Value = serde_json::from_slice(&out.stdout).ok()?;
        (p["status"]["phase"] == "Running")
            .then(|| p["status"]["podIP"].as_str().map(String::from))
            .flatten()
    })
}

#[test]
fn pods_reach_each_other_by_pod_ip() {
    let s = Server::start_node(&[]);
    let cidr = eventually(30, "the node's pod range", || {
        let out = s.kubectl(&[
            "get",
            "node",
            common::NODE,
            "-o",
            "jsonpath={.spec.podCIDR}",
        ]);
        let c = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !c.is_empty()).then_some(c)
    });
    assert!(
        cidr.starts_with("10.42.") && cidr.ends_with("/24"),
        "{cidr}"
    );
    let prefix = cidr.trim_end_matches("0/24");

    s.ok(&[
        "run",
        "web",
        "--image=busybox:1.36",
        "--image-pull-policy=IfNotPresent",
        "--",
        "sh",
        "-c",
        "mkdir /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www",
    ]);
    s.ok(&[
        "run",
        "client",
        "--image=busybox:1.36",
        "--image-pull-policy=IfNotPresent",
        "--",
        "sleep",
        "3600",
    ]);
    let (web, client) = (pod_ip(&s, "web"), pod_ip(&s, "client"));
    assert_ne!(web, client);
    for ip in [&web, &client] {
        assert!(ip.starts_with(prefix), "{ip} outside {cidr}");
        assert!(!ip.ends_with(".1"), "{ip} is the gateway");
    }
    // The address a pod sees on its eth0 is the one the API reports.
    let addr = s.ok(&[
        "exec", "client", "--", "ip", "-4", "-o", "addr", "show", "eth0",
    ]);
    assert!(addr.contains(&format!(" {client}/24 ")), "{addr}");
    let route = s.ok(&["exec", "client", "--", "ip", "route"]);
    assert!(route.contains(&format!("default via {prefix}1")), "{route}");

    // `timeout` rather than wget's own `-T`, with which Debian's busybox 1.35 wget segfaults.
    let get = format!("timeout 5 wget -qO- http://{web}:8080/");
    let page = eventually(30, "web answers the client by pod IP", || {
        let out = s.kubectl(&["exec", "client", "--", "sh", "-c", &get]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success().then_some(text)
    });
    assert!(page.trim_end().ends_with("hello from web"), "{page}");

    // The node reaches its pods too (through the bridge).
    let host = s.host().expect("test host");
    let out = host
        .command("sh")
        .args(["-c", &get.replace("wget", "busybox wget")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.trim_end().ends_with("hello from web"), "{text}");

    // A deleted pod's address is released and not handed out again at once.
    s.ok(&["delete", "pod", "web", "--wait=true"]);
    s.ok(&[
        "run",
        "next",
        "--image=busybox:1.36",
        "--image-pull-policy=IfNotPresent",
        "--",
        "sleep",
        "3600",
    ]);
    let next = pod_ip(&s, "next");
    assert_ne!(next, web);
    assert_ne!(next, client);
}
