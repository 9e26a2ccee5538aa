//! Servers sharing one datastore: the cluster's bootstrap data (CAs, service-account key,
//! token) travels through etcd encrypted with the server token, so a second server joins with
//! `--token` (and `--server`) and accepts what the first issued; a wrong token or another
//! cluster's data directory is refused without writing anything; the `kubernetes` endpoints
//! list every live server; Service addresses and node ports are reservations in the store.

mod common;

use std::path::Path;
use std::process::Command;

use common::etcd::Etcd;
use common::{Server, eventually, free_port, must_refuse};

/// Runs `kinglet server` in `data_dir` (as `Server::spawn` does) with its datastore in `etcd`,
/// if given, and `extra` flags, which must fail to start; its stderr.
fn refused(data_dir: &Path, etcd: Option<&Etcd>, extra: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kinglet"));
    cmd.arg("server")
        .arg("--disable-agent")
        .args(["--bind-address", "127.0.0.1"])
        .args(["--advertise-address", "127.0.0.1"])
        .arg("--https-listen-port")
        .arg(free_port().to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--write-kubeconfig")
        .arg(data_dir.join("kubeconfig.yaml"))
        .args(["--config", "/dev/null"])
        .args(etcd.map(Etcd::server_flags).unwrap_or_default())
        .args(extra)
        .env_remove("KINGLET_CONFIG")
        .env_remove("KINGLET_TOKEN");
    must_refuse(&mut cmd, 60)
}

/// The files a data directory holds under `server/` (its lock aside).
fn server_files(data_dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![data_dir.join("server")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.file_name().is_some_and(|n| n != "lock") {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// The `kubernetes` Endpoints' `address:port` pairs, as `s` serves them.
fn kubernetes_endpoints(s: &Server) -> Vec<String> {
    let out = s.ok(&[
        "get",
        "endpoints",
        "kubernetes",
        "-o",
        "jsonpath={range .subsets[*]}{range .addresses[*]}{.ip}{' '}{end}{'/'}{.ports[0].port}{'\\n'}{end}",
    ]);
    let mut pairs: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_once('/'))
        .flat_map(|(ips, port)| {
            ips.split_whitespace()
                .map(move |ip| format!("{ip}:{port}"))
                .collect::<Vec<_>>()
        })
        .collect();
    pairs.sort();
    pairs
}

#[test]
fn a_second_server_joins_through_the_datastore() {
    let etcd = Etcd::loopback(1);
    let a = Server::start_on(&etcd, &[]);
    let t = a.kinglet_token(&[]);
    assert_eq!(etcd.keys("/kinglet/bootstrap/").len(), 1);
    // The bootstrap data is sealed: no key or token in the clear.
    let sealed = etcd.etcdctl_ok(&[
        "get",
        "--prefix",
        "/kinglet/bootstrap/",
        "--print-value-only",
    ]);
    let secret = t.rsplit(':').next().unwrap();
    assert!(!sealed.contains("PRIVATE KEY") && !sealed.contains(secret));

    // A wrong token, or the right secret with another CA's hash: refused, nothing written.
    let dir = tempfile::tempdir().unwrap();
    let err = refused(dir.path(), Some(&etcd), &["--token", "not-the-token"]);
    assert!(err.contains("does not open"), "{err}");
    let other_hash = format!("K10{}::server:{secret}", "0".repeat(64));
    let err = refused(dir.path(), Some(&etcd), &["--token", &other_hash]);
    assert!(err.contains("CA hash does not match"), "{err}");
    // The right token with another service range: refused, nothing written.
    let err = refused(
        dir.path(),
        Some(&etcd),
        &["--token", &t, "--service-cidr", "10.44.0.0/16"],
    );
    assert!(err.contains("--service-cidr 10.44.0.0/16"), "{err}");
    assert_eq!(server_files(dir.path()), Vec::<String>::new());
    // `--server` needs a shared datastore.
    let first = format!("https://127.0.0.1:{}", a.port);
    let err = refused(dir.path(), None, &["--server", &first, "--token", &t]);
    assert!(err.contains("--datastore-endpoint"), "{err}");

    // The right token, checked against the CA the first server serves.
    let b = Server::start_on(&etcd, &["--token", &t, "--server", &first]);
    let read = |s: &Server, f: &str| std::fs::read(s.data_dir().join(f)).unwrap();
    for f in [
        "server/tls/ca.crt",
        "server/tls/ca.key",
        "server/tls/service-account.key",
    ] {
        assert_eq!(read(&a, f), read(&b, f), "{f}");
    }
    assert_ne!(
        read(&a, "server/tls/serving.crt"),
        read(&b, "server/tls/serving.crt")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(b.data_dir().join("server/tls/ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(b.kinglet_token(&[]), t);

    // What one server issued, the other accepts: the admin certificate and a
    // service-account token.
    a.ok(&["create", "configmap", "shared", "--from-literal=k=v"]);
    let via_b = b.ok(&["get", "configmap", "shared", "-o", "jsonpath={.data.k}"]);
    assert_eq!(via_b, "v");
    a.ok(&["create", "serviceaccount", "robot"]);
    let sa_token = a.ok(&["create", "token", "robot"]);
    let b_url = format!("https://127.0.0.1:{}", b.port);
    let b_ca = b.data_dir().join("server/tls/ca.crt").display().to_string();
    let who = b.kubectl(&[
        "--kubeconfig=/dev/null",
        "--server",
        &b_url,
        "--certificate-authority",
        &b_ca,
        "--token",
        sa_token.trim(),
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&who.stdout),
        "system:serviceaccount:default:robot",
        "{}",
        String::from_utf8_lossy(&who.stderr)
    );
    let admin_on_b = a.kubectl(&[
        "--server",
        &b_url,
        "get",
        "configmap",
        "shared",
        "-o",
        "name",
    ]);
    assert!(
        admin_on_b.status.success(),
        "{}",
        String::from_utf8_lossy(&admin_on_b.stderr)
    );

    // The `kubernetes` Service's endpoints list both servers; a stopped one drops out.
    let both = vec![
        format!("127.0.0.1:{}", a.port),
        format!("127.0.0.1:{}", b.port),
    ];
    let mut want = both.clone();
    want.sort();
    eventually(30, "both servers in the kubernetes endpoints", || {
        (kubernetes_endpoints(&a) == want).then_some(())
    });
    // Killed: no goodbye, its lease expires.
    let mut b = b;
    b.stop(true);
    eventually(
        60,
        "the killed server out of the kubernetes endpoints",
        || (kubernetes_endpoints(&a) == vec![format!("127.0.0.1:{}", a.port)]).then_some(()),
    );

    // A data directory of another cluster, with this cluster's token: refused, untouched.
    let mut foreign = Server::start();
    foreign.stop(false);
    let foreign_dir = foreign.data_dir();
    std::fs::write(foreign_dir.join("server/token"), format!("{secret}\n")).unwrap();
    let before = std::fs::read(foreign_dir.join("server/tls/ca.crt")).unwrap();
    let err = refused(&foreign_dir, Some(&etcd), &["--token", &t]);
    assert!(err.contains("unlike the datastore's cluster"), "{err}");
    assert_eq!(
        std::fs::read(foreign_dir.join("server/tls/ca.crt")).unwrap(),
        before
    );
}

/// Two servers starting at once on an empty datastore end up in one cluster: with one token,
/// one's bootstrap data wins and the other takes it; each with a token of its own made up (no
/// `--token`), one makes the cluster and the other is refused.
#[test]
fn first_servers_racing_agree_on_one_cluster() {
    let etcd = Etcd::loopback(1);
    let secret = "race-secret-0123456789";
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Server::start_on(&etcd, &["--token", secret]));
        let b = s.spawn(|| Server::start_on(&etcd, &["--token", secret]));
        (a.join().unwrap(), b.join().unwrap())
    });
    let ca = |s: &Server| std::fs::read(s.data_dir().join("server/tls/ca.crt")).unwrap();
    assert_eq!(ca(&a), ca(&b));
    assert_eq!(etcd.keys("/kinglet/bootstrap/").len(), 1);
    a.ok(&["create", "configmap", "x"]);
    b.ok(&["get", "configmap", "x"]);

    let etcd = Etcd::loopback(1);
    let (a, b) = std::thread::scope(|s| {
        let start = || {
            s.spawn(|| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    Server::start_on(&etcd, &[])
                }))
            })
        };
        let (a, b) = (start(), start());
        (a.join().unwrap(), b.join().unwrap())
    });
    let (winner, refusal) = match (a, b) {
        (Ok(w), Err(e)) | (Err(e), Ok(w)) => (w, e),
        (Ok(_), Ok(_)) => panic!("both servers made a cluster on one datastore"),
        (Err(_), Err(_)) => panic!("neither server started"),
    };
    let refusal = refusal
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(refusal.contains("that cluster's --token"), "{refusal}");
    assert_eq!(etcd.keys("/kinglet/bootstrap/").len(), 1);
    // The one cluster is the winner's: its token opens it for a second server.
    let t = winner.kinglet_token(&[]);
    let joined = Server::start_on(&etcd, &["--token", &t]);
    assert_eq!(ca(&joined), ca(&winner));
}

/// An update that is not stored (a dry run, one refused) keeps what the Service holds and gives
/// back what it reserved; one that is stored gives back what the Service dropped.
#[test]
fn service_updates_not_stored_keep_what_the_service_holds() {
    let s = Server::start();
    s.ok(&["create", "service", "nodeport", "np", "--tcp=80"]);
    let port = s.ok(&[
        "get",
        "service",
        "np",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    let asking_for_port = |name: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}"}},"spec":{{"type":"NodePort","ports":[{{"port":80,"nodePort":{port}}}]}}}}"#
        )
    };
    let port_still_held = || {
        let e = s.fails(&["create", "-f", "-"], Some(&asking_for_port("thief")));
        assert!(e.contains("already allocated"), "{e}");
    };
    let to_cluster_ip = r#"{"op":"replace","path":"/spec/type","value":"ClusterIP"},{"op":"remove","path":"/spec/ports/0/nodePort"}"#;
    s.ok(&[
        "patch",
        "service",
        "np",
        "--type=json",
        "--dry-run=server",
        "-p",
        &format!("[{to_cluster_ip}]"),
    ]);
    port_still_held();
    let refused = format!(
        r#"[{to_cluster_ip},{{"op":"replace","path":"/spec/sessionAffinity","value":"Sometimes"}}]"#
    );
    let e = s.fails(
        &["patch", "service", "np", "--type=json", "-p", &refused],
        None,
    );
    assert!(e.contains("sessionAffinity"), "{e}");
    port_still_held();
    // A ClusterIP change is refused: the address it reserved is given back.
    let kubernetes_ip = s.ok(&[
        "get",
        "service",
        "kubernetes",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let wanted = format!("{}.233", kubernetes_ip.rsplit_once('.').unwrap().0);
    let e = s.fails(
        &[
            "patch",
            "service",
            "np",
            "--type=merge",
            "-p",
            &format!(r#"{{"spec":{{"clusterIP":"{wanted}"}}}}"#),
        ],
        None,
    );
    assert!(e.contains("may not change once set"), "{e}");
    s.ok_stdin(
        &["create", "-f", "-"],
        &format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"wanted"}},"spec":{{"clusterIP":"{wanted}","ports":[{{"port":80}}]}}}}"#
        ),
    );
    // A dry-run create keeps nothing either.
    let dry = format!("{}.234", kubernetes_ip.rsplit_once('.').unwrap().0);
    let asking_for_ip = |name: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}"}},"spec":{{"clusterIP":"{dry}","ports":[{{"port":80}}]}}}}"#
        )
    };
    s.ok_stdin(
        &["create", "--dry-run=server", "-f", "-"],
        &asking_for_ip("dry"),
    );
    s.ok_stdin(&["create", "-f", "-"], &asking_for_ip("real"));
    // Stored: the port is free for another Service.
    s.ok(&[
        "patch",
        "service",
        "np",
        "--type=json",
        "-p",
        &format!("[{to_cluster_ip}]"),
    ]);
    s.ok_stdin(&["create", "-f", "-"], &asking_for_port("heir"));
}

/// ClusterIPs and NodePorts are reservations in the store: unique across two servers
/// creating Services at once, freed by a delete (through the other server), refused while
/// held.
#[test]
fn service_addresses_are_reserved_in_the_datastore() {
    // Over TLS with a client certificate (`--datastore-cafile/certfile/keyfile`).
    let etcd = Etcd::loopback_tls(1);
    // Small ranges, nearly filled: two servers each picking from what it alone knows would
    // collide.
    let ranges = [
        "--service-cidr",
        "10.43.0.0/27",
        "--service-node-port-range",
        "30000-30029",
    ];
    let a = Server::start_on(&etcd, &ranges);
    let t = a.kinglet_token(&[]);
    let b = Server::start_on(&etcd, &[&ranges[..], &["--token", &t]].concat());
    std::thread::scope(|s| {
        for (server, prefix) in [(&a, "a"), (&b, "b")] {
            s.spawn(move || {
                for i in 0..12 {
                    server.ok(&[
                        "create",
                        "service",
                        "nodeport",
                        &format!("{prefix}{i}"),
                        "--tcp=80",
                    ]);
                }
            });
        }
    });
    let column = |s: &Server, path: &str| -> Vec<String> {
        let out = s.ok(&[
            "get",
            "services",
            "-o",
            &format!("jsonpath={{range .items[*]}}{path}{{'\\n'}}{{end}}"),
        ]);
        out.lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    };
    let ips = column(&a, "{.spec.clusterIP}");
    let ports = column(&b, "{.spec.ports[0].nodePort}");
    assert_eq!(ips.len(), 24 + 1); // and `kubernetes` (`kube-dns` is in kube-system)
    let unique = |v: &[String]| v.iter().collect::<std::collections::BTreeSet<_>>().len();
    assert_eq!(unique(&ips), ips.len(), "{ips:?}");
    let node_ports: Vec<String> = ports.into_iter().filter(|p| !p.is_empty()).collect();
    assert_eq!(node_ports.len(), 24);
    assert_eq!(unique(&node_ports), 24, "{node_ports:?}");
    assert_eq!(etcd.keys("/kinglet/allocations/nodeports/").len(), 24);
    // A held address cannot be taken through the other server; once the Service is deleted
    // it can.
    let held = a.ok(&["get", "service", "a0", "-o", "jsonpath={.spec.clusterIP}"]);
    let port = a.ok(&[
        "get",
        "service",
        "a0",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    let svc = |name: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}"}},"spec":{{"type":"NodePort","clusterIP":"{held}","ports":[{{"port":80,"nodePort":{port}}}]}}}}"#
        )
    };
    let taken = b.fails(&["create", "-f", "-"], Some(&svc("thief")));
    assert!(taken.contains("already allocated"), "{taken}");
    b.ok(&["delete", "service", "a0"]);
    b.ok_stdin(&["create", "-f", "-"], &svc("heir"));
    let key = format!("/kinglet/allocations/serviceips/{held}");
    let holder = etcd.etcdctl_ok(&["get", &key, "--print-value-only"]);
    assert!(holder.starts_with("default/heir/"), "{holder}");
}

/// A server alone on SQLite: its Services' addresses are reservations too, released when a
/// Service goes, and kept across a restart.
#[test]
fn addresses_survive_a_restart_and_free_on_delete() {
    let mut s = Server::start();
    s.ok(&["create", "service", "clusterip", "one", "--tcp=80"]);
    let ip = s.ok(&["get", "service", "one", "-o", "jsonpath={.spec.clusterIP}"]);
    let svc = |name: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}"}},"spec":{{"clusterIP":"{ip}","ports":[{{"port":80}}]}}}}"#
        )
    };
    s.restart(false);
    let taken = s.fails(&["create", "-f", "-"], Some(&svc("two")));
    assert!(taken.contains("already allocated"), "{taken}");
    s.ok(&["delete", "service", "one"]);
    s.ok_stdin(&["create", "-f", "-"], &svc("two"));
}
