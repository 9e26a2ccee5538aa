//! Certificate renewal (issue 22): leaf certificates due within 90 days of expiry are renewed
//! at start with their keys, the CA stays, kubectl keeps working with the old kubeconfig and
//! the rewritten one; `kinglet certificate rotate|check`.
//!
//! "The clock advanced past renewal time" without faking the clock of a static binary: with
//! the server stopped, its leaf certificates are re-signed by its own CA, same keys, to expire
//! in 30 days, which is what they look like 60+ days past renewal time.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use base64::Engine;
use common::{Server, eventually, succeeded as ok};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// (file, the CA file that signs it) of the server's leaf certificates.
const LEAVES: [(&str, &str); 4] = [
    ("serving", "ca"),
    ("client-admin", "ca"),
    ("client-kubelet", "ca"),
    ("front-proxy-client", "front-proxy-ca"),
];

fn tls_dir(s: &Server) -> PathBuf {
    s.data_dir().join("server").join("tls")
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn days_left(cert_pem: &str) -> i64 {
    let t = kinglet_pki::not_after(cert_pem).expect("a readable certificate");
    (t - time::OffsetDateTime::now_utc()).whole_days()
}

/// Re-signs `<name>.crt` (same subject, extensions and key) by the CA `<ca>.crt` (a path
/// without the extension, or a name in `dir`) to expire in `days`, with openssl.
fn reissue_expiring(dir: &Path, name: &str, ca: impl AsRef<Path>, days: i64) {
    let ca = ca.as_ref().display();
    let script = format!(
        "openssl x509 -x509toreq -in {name}.crt -signkey {name}.key -copy_extensions copyall \
         | openssl x509 -req -CA {ca}.crt -CAkey {ca}.key -days {days} -copy_extensions copyall \
           -set_serial 0x{serial:x} -out {name}.crt.short && mv {name}.crt.short {name}.crt",
        serial = std::process::id() as u64 * 1000 + days as u64,
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("run openssl (tests/run installs it)");
    assert!(
        out.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The certificate the API server presents, as PEM.
fn served_certificate(port: u16) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let config = kinglet_pki::tls::unverified_client_config().expect("TLS config");
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let der = tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec();
        let b64 = B64.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("ascii"))
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    })
}

/// The client certificate (PEM) a kubeconfig carries.
fn kubeconfig_cert(kubeconfig: &str) -> String {
    let line = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("client-certificate-data: "))
        .expect("client-certificate-data");
    String::from_utf8(B64.decode(line).expect("base64")).expect("PEM")
}

/// `kinglet <args> --data-dir <the server's>`.
fn kinglet(s: &Server, args: &[&str]) -> std::process::Output {
    common::kinglet_cli(&s.data_dir(), args)
}

#[test]
fn restart_past_renewal_time_renews_leaf_certificates_and_kubectl_keeps_working() {
    let mut s = Server::start();
    s.ok(&["create", "configmap", "before", "--from-literal=a=b"]);
    s.stop(false);
    let tls = tls_dir(&s);
    let ca = read(tls.join("ca.crt"));
    let keys: Vec<String> = LEAVES
        .iter()
        .map(|(n, _)| read(tls.join(format!("{n}.key"))))
        .collect();
    for (name, ca_file) in LEAVES {
        reissue_expiring(&tls, name, tls.join(ca_file), 30);
        assert!(days_left(&read(tls.join(format!("{name}.crt")))) <= 30);
    }
    // The kubeconfig a user copied earlier: its certificate expires in 30 days.
    let short_admin = read(tls.join("client-admin.crt"));
    let written = read(&s.kubeconfig);
    let old_cert_b64 = written
        .lines()
        .find_map(|l| l.trim().strip_prefix("client-certificate-data: "))
        .expect("client-certificate-data")
        .to_string();
    let old_kubeconfig = s.dir.path().join("old-kubeconfig.yaml");
    std::fs::write(
        &old_kubeconfig,
        written.replace(&old_cert_b64, &B64.encode(&short_admin)),
    )
    .expect("old kubeconfig");
    // `certificate check` sees them due.
    let check = ok(kinglet(&s, &["certificate", "check"]), "certificate check");
    let admin_line = check
        .lines()
        .find(|l| l.contains("client-admin.crt"))
        .unwrap_or_else(|| panic!("no client-admin.crt in:\n{check}"));
    assert!(admin_line.ends_with("WARNING"), "{check}");

    s.restart(false);
    for ((name, _), key) in LEAVES.iter().zip(&keys) {
        let cert = read(tls.join(format!("{name}.crt")));
        assert!(days_left(&cert) > 300, "{name} was not renewed");
        assert_eq!(
            &read(tls.join(format!("{name}.key"))),
            key,
            "{name}'s key changed"
        );
    }
    assert_eq!(read(tls.join("ca.crt")), ca, "the CA must not change");
    // The server presents the renewed certificate.
    let served = served_certificate(s.port);
    assert_eq!(
        kinglet_pki::not_after(&served),
        kinglet_pki::not_after(&read(tls.join("serving.crt")))
    );
    assert!(days_left(&served) > 300);
    // The kubeconfig is rewritten with the renewed admin certificate, and works.
    let renewed_admin = kubeconfig_cert(&read(&s.kubeconfig));
    assert_eq!(renewed_admin, read(tls.join("client-admin.crt")));
    assert!(days_left(&renewed_admin) > 300);
    assert!(
        s.ok(&["get", "configmap", "before", "-o", "name"])
            .contains("before")
    );
    // The old kubeconfig too: same CA, its certificate not yet expired.
    let old = old_kubeconfig.display().to_string();
    assert!(
        s.ok(&[
            "--kubeconfig",
            &old,
            "get",
            "configmap",
            "before",
            "-o",
            "name"
        ])
        .contains("before")
    );
    assert!(
        s.ok(&[
            "--kubeconfig",
            &old,
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}"
        ])
        .contains("system:admin")
    );
    let check = ok(kinglet(&s, &["certificate", "check"]), "certificate check");
    for (name, _) in LEAVES {
        let line = check
            .lines()
            .find(|l| l.contains(&format!("tls/{name}.crt")))
            .unwrap_or_else(|| panic!("no {name}.crt in:\n{check}"));
        assert!(line.ends_with("OK"), "{check}");
    }
}

#[test]
fn certificate_rotate_renews_leaves_with_new_keys_while_stopped() {
    let mut s = Server::start();
    s.ok(&["create", "configmap", "kept", "--from-literal=a=b"]);
    // Refused while the server runs: it reads its certificates at start.
    let running = kinglet(&s, &["certificate", "rotate"]);
    assert!(!running.status.success());
    assert!(
        String::from_utf8_lossy(&running.stderr).contains("stop kinglet"),
        "{}",
        String::from_utf8_lossy(&running.stderr)
    );
    let unknown = kinglet(&s, &["certificate", "rotate", "--service", "etcd"]);
    assert!(!unknown.status.success());
    s.stop(false);
    let tls = tls_dir(&s);
    let before: Vec<(String, String)> = ["client-admin", "serving", "front-proxy-client", "ca"]
        .iter()
        .map(|n| {
            (
                read(tls.join(format!("{n}.crt"))),
                read(tls.join(format!("{n}.key"))),
            )
        })
        .collect();
    let old_kubeconfig = s.dir.path().join("old-kubeconfig.yaml");
    std::fs::copy(&s.kubeconfig, &old_kubeconfig).expect("copy kubeconfig");

    let out = ok(
        kinglet(
            &s,
            &["certificate", "rotate", "--service", "admin,api-server"],
        ),
        "certificate rotate",
    );
    let backup = out
        .lines()
        .find_map(|l| l.strip_prefix("old certificates kept in "))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no backup named in:\n{out}"));
    assert!(
        backup
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("tls-"))
    );
    assert_eq!(read(backup.join("client-admin.crt")), before[0].0);
    assert_eq!(read(backup.join("serving.key")), before[1].1);
    // Named services: new certificates and keys. Others and the CA: untouched.
    assert_ne!(read(tls.join("client-admin.key")), before[0].1);
    assert_ne!(read(tls.join("serving.key")), before[1].1);
    assert_eq!(read(tls.join("front-proxy-client.crt")), before[2].0);
    assert_eq!(read(tls.join("ca.crt")), before[3].0);

    s.restart(false);
    assert_eq!(
        kubeconfig_cert(&read(&s.kubeconfig)),
        read(tls.join("client-admin.crt"))
    );
    assert!(
        s.ok(&["get", "configmap", "kept", "-o", "name"])
            .contains("kept")
    );
    assert_eq!(
        served_certificate(s.port).trim(),
        read(tls.join("serving.crt")).trim()
    );
    // As with k3s, there is no revocation: the old admin certificate stays valid until it
    // expires.
    let old = old_kubeconfig.display().to_string();
    assert!(
        s.ok(&[
            "--kubeconfig",
            &old,
            "get",
            "configmap",
            "kept",
            "-o",
            "name"
        ])
        .contains("kept")
    );
}

/// The renewTime of node `name`'s lease, the kubelet's heartbeat.
fn lease_renewed(s: &Server, name: &str) -> String {
    let out = s.kubectl(&[
        "get",
        "lease",
        "-n",
        "kube-node-lease",
        name,
        "-o",
        "jsonpath={.spec.renewTime}",
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_agent_renews_node_certificates_due_within_90_days_when_it_restarts() {
    const AGENT: &str = "renewing-agent";
    let s = Server::start_in_host(&[]);
    let token = s.kinglet_token(&[]);
    let dir = s.dir.path().join("agent1");
    let mut agent = s.start_agent_here(&dir, AGENT, &token);
    s.wait_agent_ready(AGENT, &mut agent, &dir.join("agent.log"));
    let _ = agent.kill();
    let _ = agent.wait();
    let agent_dir = dir.join("data/agent");
    let ca = tls_dir(&s).join("ca");
    for name in ["client-kubelet", "serving-kubelet"] {
        reissue_expiring(&agent_dir, name, &ca, 30);
        assert!(days_left(&read(agent_dir.join(format!("{name}.crt")))) <= 30);
    }
    let client_key = read(agent_dir.join("client-kubelet.key"));
    let beat = lease_renewed(&s, AGENT);

    let mut agent = s.start_agent_here(&dir, AGENT, &token);
    eventually(60, "the agent's certificates renewed", || {
        if let Ok(Some(status)) = agent.try_wait() {
            panic!(
                "agent exited with {status}: {}",
                read(dir.join("agent.log"))
            );
        }
        let client = std::fs::read_to_string(agent_dir.join("client-kubelet.crt")).ok()?;
        let serving = std::fs::read_to_string(agent_dir.join("serving-kubelet.crt")).ok()?;
        (days_left(&client) > 300 && days_left(&serving) > 300).then_some(())
    });
    // The node works with them: its heartbeat goes on.
    eventually(60, "a heartbeat with the renewed certificate", || {
        (lease_renewed(&s, AGENT) != beat).then_some(())
    });
    let _ = agent.kill();
    let _ = agent.wait();

    // `certificate rotate --service kubelet`: the agent's certificates are set aside and it
    // joins again at its next start, with a new key.
    let data = dir.join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_kinglet"))
        .args([
            "certificate",
            "rotate",
            "--service",
            "kubelet",
            "--data-dir",
        ])
        .arg(&data)
        .env_remove("KINGLET_DATA_DIR")
        .output()
        .expect("run kinglet");
    let out = ok(out, "certificate rotate --service kubelet");
    assert!(out.contains("agent/tls-"), "{out}");
    assert!(!agent_dir.join("client-kubelet.crt").exists());
    let beat = lease_renewed(&s, AGENT);
    let mut agent = s.start_agent_here(&dir, AGENT, &token);
    eventually(60, "the agent joined again", || {
        if let Ok(Some(status)) = agent.try_wait() {
            panic!(
                "agent exited with {status}: {}",
                read(dir.join("agent.log"))
            );
        }
        std::fs::read_to_string(agent_dir.join("client-kubelet.key")).ok()
    });
    assert_ne!(read(agent_dir.join("client-kubelet.key")), client_key);
    eventually(60, "a heartbeat after joining again", || {
        (lease_renewed(&s, AGENT) != beat).then_some(())
    });
    let _ = agent.kill();
    let _ = agent.wait();
}
