//! The host is not ours (issue 19): kinglet refuses to start next to another Kubernetes
//! network unless told to take over, refuses ranges that overlap the host's own, removes only
//! what it wrote, and keeps images that containers use. Each node runs in a test host.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::host::{NODE_IP, TestHost};
use common::{NODE, Server, eventually, must_refuse};

const TAKE_OVER: &str = "--take-over-host-network";

/// `kinglet server` with a node, in `host`, its files under `dir` (as the harness runs it).
fn server(host: &TestHost, dir: &Path, extra: &[&str]) -> Command {
    std::fs::create_dir_all(dir.join("run")).unwrap();
    std::fs::write(dir.join("config.yaml"), "# flags of this test\n").unwrap();
    std::fs::write(dir.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    let mut c = host.command(env!("CARGO_BIN_EXE_kinglet"));
    c.args(["server", "--bind-address", "127.0.0.1"])
        .args([
            "--advertise-address",
            "127.0.0.1",
            "--https-listen-port",
            "6443",
        ])
        .args(["--node-name", NODE, "--node-ip", NODE_IP])
        .args(["--cgroup-root", &host.cgroup_root])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--write-kubeconfig")
        .arg(dir.join("kubeconfig.yaml"))
        .arg("--config")
        .arg(dir.join("config.yaml"))
        .arg("--pod-log-dir")
        .arg(dir.join("pod-logs"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--resolv-conf")
        .arg(dir.join("resolv.conf"))
        .args(extra)
        .env_remove("KINGLET_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

/// Runs `kinglet server` in `host`, which must exit non-zero; returns its error line.
fn refusal(host: &TestHost, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let text = must_refuse(&mut server(host, dir.path(), extra), 60);
    assert!(
        !dir.path().join("kubeconfig.yaml").exists(),
        "refused after starting the API server: {text}"
    );
    text.lines()
        .rfind(|l| l.starts_with("kinglet: "))
        .unwrap_or_else(|| panic!("no error line:\n{text}"))
        .to_string()
}

/// `sh -c script` in `host`, which must succeed.
fn sh(host: &TestHost, script: &str) -> String {
    let out = host.command("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The host's iptables rules (all tables).
fn saved(host: &TestHost) -> String {
    sh(host, "iptables-save")
}

/// The `KUBE-*` chains declared in an `iptables-save` listing.
fn kube_chains(saved: &str) -> Vec<&str> {
    (saved.lines())
        .filter_map(|l| l.strip_prefix(':')?.split(' ').next())
        .filter(|c| c.starts_with("KUBE-"))
        .collect()
}

/// Whether the node's service proxy and pod network have written their rules.
/// Starts `cmd` (stderr to `log`) and waits up to 90 s for `ready`, then stops it: whether
/// it got ready, and its log.
fn run_until(mut cmd: Command, log: &Path, ready: impl Fn() -> bool) -> (bool, String) {
    let mut child = cmd
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let started = loop {
        if ready() {
            break true;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    (started, std::fs::read_to_string(log).unwrap_or_default())
}

fn rules_in_place(host: &TestHost) -> bool {
    let t = saved(host);
    t.contains("-A KUBE-SERVICES -m comment --comment kinglet") && t.contains("KINGLET-POSTRTG")
}

const REFUSE_TAIL: &str =
    "; stop and remove it, or pass --take-over-host-network to let kinglet take its place";

#[test]
fn refuses_a_foreign_cni0_and_names_it() {
    let host = TestHost::new();
    sh(
        &host,
        "ip link add cni0 type bridge && ip addr add 10.88.0.1/16 dev cni0",
    );
    assert_eq!(
        refusal(&host, &[]),
        format!(
            "kinglet: another Kubernetes network is on this host: link cni0 (10.88.0.1/16, not \
             made by kinglet){REFUSE_TAIL}"
        )
    );
    // Nothing was touched: the bridge keeps its address, no routes or rules were added.
    assert!(sh(&host, "ip -o addr show dev cni0").contains("10.88.0.1/16"));
    assert_eq!(sh(&host, "ip route show type blackhole"), "");
    assert!(!saved(&host).contains("KINGLET-"));
}

#[test]
fn refuses_a_kube_proxy_in_its_network_namespace_only() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("kube-proxy");
    std::fs::copy("/bin/sleep", &fake).unwrap();
    let host = TestHost::new();
    // One in the test host's network namespace, one in this machine's: only the first counts.
    let mut inside = host.command(&fake).arg("600").spawn().unwrap();
    let mut outside = Command::new(&fake).arg("600").spawn().unwrap();
    for pid in [inside.id(), outside.id()] {
        eventually(10, "the fake kube-proxy", || {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == "kube-proxy").then_some(())
        });
    }
    let line = refusal(&host, &[]);
    for p in [&mut inside, &mut outside] {
        let _ = p.kill();
        let _ = p.wait();
    }
    assert_eq!(
        line,
        format!(
            "kinglet: another Kubernetes network is on this host: process kube-proxy (pid {}){REFUSE_TAIL}",
            inside.id()
        )
    );
}

#[test]
fn refuses_foreign_kube_chains_unless_told_to_take_over() {
    let host = TestHost::new();
    sh(
        &host,
        "iptables -N KUBE-FOO && iptables -A KUBE-FOO -j RETURN",
    );
    assert_eq!(
        refusal(&host, &[]),
        format!(
            "kinglet: another Kubernetes network is on this host: iptables chain KUBE-FOO \
             (filter){REFUSE_TAIL}"
        )
    );

    // Told to take over, it starts and programs the host, leaving the foreign chain be.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let (started, text) = run_until(server(&host, dir.path(), &[TAKE_OVER]), &log, || {
        rules_in_place(&host)
    });
    assert!(started, "kinglet did not take over; log:\n{text}");
    assert!(
        text.contains(
            "--take-over-host-network: taking over from another Kubernetes network: iptables \
             chain KUBE-FOO (filter)"
        ),
        "{text}"
    );

    // Cleanup removes kinglet's chains, bridge and routes; the foreign chain stays.
    host.kinglet_cleanup(&[]);
    let after = saved(&host);
    assert_eq!(kube_chains(&after), ["KUBE-FOO"], "{after}");
    assert!(after.contains("-A KUBE-FOO -j RETURN"), "{after}");
    assert!(
        !after.contains("KINGLET-") && !after.contains("kinglet"),
        "{after}"
    );
    assert!(!sh(&host, "ip -o link").contains("cni0"));
    assert_eq!(sh(&host, "ip route show type blackhole"), "");
    // And it is still someone else's.
    assert!(refusal(&host, &[]).contains("iptables chain KUBE-FOO (filter)"));
}

#[test]
fn cleanup_leaves_foreign_kube_chains_alone() {
    let mut s = Server::start_node(&[]);
    let host = s.host().expect("test host");
    eventually(90, "service and pod network rules", || {
        rules_in_place(host).then_some(())
    });
    // Another stack's chains next to kinglet's, under upstream's prefix, one with a jump from
    // a built-in chain carrying the comment kube-proxy's jumps carry.
    sh(
        host,
        "iptables -t nat -N KUBE-FOO && iptables -t nat -A KUBE-FOO -j RETURN && \
         iptables -t nat -A PREROUTING -m comment --comment 'kubernetes service portals' -j KUBE-FOO && \
         iptables -t mangle -N KUBE-KUBELET-CANARY",
    );
    let before = saved(host);
    assert!(kube_chains(&before).len() > 5, "{before}");
    s.stop(false);
    let host = s.host().expect("test host");
    host.kinglet_cleanup(&[]);
    let after = saved(host);
    let mut left = kube_chains(&after);
    left.sort();
    assert_eq!(left, ["KUBE-FOO", "KUBE-KUBELET-CANARY"], "{after}");
    for rule in [
        "-A KUBE-FOO -j RETURN",
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-FOO",
    ] {
        assert!(after.contains(rule), "missing {rule}:\n{after}");
    }
    assert!(
        !after.contains("KINGLET-") && !after.contains("kinglet"),
        "{after}"
    );
    assert!(!sh(host, "ip -o link").contains("cni0"));
    // The server now refuses to start next to them.
    assert!(
        refusal(host, &[])
            .contains("iptables chain KUBE-KUBELET-CANARY (mangle), iptables chain KUBE-FOO (nat)")
    );
}

#[test]
fn refuses_ranges_that_overlap_the_hosts_routes_and_addresses() {
    let host = TestHost::new();
    sh(&host, "ip route add 10.77.0.0/24 dev lo");
    let tail = "; the blackhole routes kinglet adds for its ranges would cut the host off from \
                them: choose other ranges";
    assert_eq!(
        refusal(&host, &["--cluster-cidr", "10.77.0.0/16"]),
        format!(
            "kinglet: --cluster-cidr 10.77.0.0/16 overlaps the host's route 10.77.0.0/24 dev lo{tail}"
        )
    );
    // The node's own address (192.0.2.10/32 on loopback) inside the service range.
    assert_eq!(
        refusal(&host, &["--service-cidr", "192.0.0.0/16"]),
        format!(
            "kinglet: --service-cidr 192.0.0.0/16 overlaps the host's address {NODE_IP}/32 on lo{tail}"
        )
    );
    // The take-over flag is about other stacks, not about cutting the host off.
    assert!(
        refusal(&host, &["--cluster-cidr", "10.77.0.0/16", TAKE_OVER])
            .contains("overlaps the host's route 10.77.0.0/24 dev lo")
    );
    assert_eq!(sh(&host, "ip route show type blackhole"), "");
}

#[test]
fn images_rm_refuses_an_image_a_container_uses() {
    let s = Server::start_node(&[]);
    s.ok(&["run", "bb", "--image=busybox:1.36", "--", "sleep", "3600"]);
    eventually(90, "pod running", || {
        let phase = s.ok(&["get", "pod", "bb", "-o", "jsonpath={.status.phase}"]);
        (phase == "Running").then_some(())
    });
    let images = |args: &[&str]| {
        s.command(env!("CARGO_BIN_EXE_kinglet"))
            .arg("images")
            .arg("--data-dir")
            .arg(s.data_dir())
            .args(args)
            .output()
            .unwrap()
    };
    for name in ["busybox:1.36", "docker.io/library/busybox:1.36"] {
        let out = images(&["rm", name]);
        assert!(!out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim(),
            format!(
                "kinglet: image {name} is in use by container bb of pod default/bb; delete \
                 those pods first"
            )
        );
    }
    let ls = images(&["ls", "-q"]);
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains("docker.io/library/busybox:1.36"),
        "{ls:?}"
    );
    // Once the pod is gone, so are its containers, and the image can go.
    s.ok(&["delete", "pod", "bb", "--grace-period=0", "--force"]);
    let removed = eventually(90, "image removable", || {
        let out = images(&["rm", "busybox:1.36"]);
        out.status.success().then_some(out)
    });
    assert!(
        String::from_utf8_lossy(&removed.stdout).contains("removed docker.io/library/busybox:1.36"),
        "{removed:?}"
    );
}

#[test]
fn cleanup_restores_the_hosts_send_redirects() {
    // The host's own setting, from before kinglet: redirects on.
    let all = "/proc/sys/net/ipv4/conf/all/send_redirects";
    let host = TestHost::new();
    sh(&host, &format!("echo 1 > {all}"));
    let read = || sh(&host, &format!("cat {all}")).trim().to_string();
    assert_eq!(read(), "1");
    let dir = tempfile::tempdir().unwrap();
    // Twice: the second start finds kinglet's 0, which must not replace the host's value.
    for round in 0..2 {
        let log = dir.path().join(format!("server-{round}.log"));
        let (started, text) = run_until(server(&host, dir.path(), &[]), &log, || {
            rules_in_place(&host) && read() == "0"
        });
        assert!(
            started,
            "round {round}: send_redirects is {}; log:\n{text}",
            read()
        );
    }
    assert_eq!(read(), "0");
    let run_dir = dir.path().join("run");
    host.kinglet_cleanup(&["--run-dir".as_ref(), run_dir.as_os_str()]);
    assert_eq!(read(), "1");
    // Put back once: a second cleanup leaves the host's setting as it finds it.
    sh(&host, &format!("echo 0 > {all}"));
    host.kinglet_cleanup(&["--run-dir".as_ref(), run_dir.as_os_str()]);
    assert_eq!(read(), "0");
}
