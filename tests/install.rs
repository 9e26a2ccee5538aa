//! install.sh as a user runs it: against a release site (a local HTTP server on the loopback of
//! a test host) in a throwaway root (the test host's mount namespace, with tmpfs over /etc (a
//! copy), /usr/local, /var/lib, /var/log and /run). Also kinglet's readiness notification for
//! systemd's `Type=notify`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::host::TestHost;
use common::{NODE, Server, eventually};

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const SITE: &str = "http://127.0.0.1:8080";
const TOKEN: &str =
    "K100123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef::server:secret";
/// What the listings cover, less the state of the tools the test runs: /run/systemd
/// (`systemd-analyze`) and /run/mount (util-linux's `mount`).
const LISTING: &str = "find /etc /usr/local /var/lib /var/log /run \\( -path /run/systemd -o \
                       -path /run/mount \\) -prune -o -printf '%y %m %p\\n' | sort";

/// install.sh's name for this machine's architecture.
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => panic!("no kinglet release for {other}"),
    }
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_string()
}

/// A throwaway root with a release site serving `releases/<version>/kinglet-<arch>` and
/// `sha256sum-<arch>.txt`.
struct Root {
    host: TestHost,
    dir: tempfile::TempDir,
    site: Child,
}

impl Root {
    fn new() -> Root {
        for tool in [
            "shellcheck",
            "systemd-analyze",
            "systemctl",
            "iptables-restore",
            "conntrack",
        ] {
            // install.sh would install missing host packages from the network.
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "{tool} is needed (tests/run installs it)"
            );
        }
        let host = TestHost::bare();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("releases")).expect("releases");
        // install.sh from a directory of its own: beside Cargo.toml it would install the local build.
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh"),
            dir.path().join("install.sh"),
        )
        .expect("copy install.sh");
        let stage = dir.path().join("etc");
        let setup = format!(
            "set -e; cp -a /etc/. {stage}; mount -t tmpfs tmpfs /etc; cp -a {stage}/. /etc/; \
             for d in /usr/local /var/lib /var/log /run; do mount -t tmpfs tmpfs $d; done; \
             mkdir /usr/local/bin",
            stage = stage.display()
        );
        std::fs::create_dir(&stage).expect("stage");
        let out = host
            .command("sh")
            .args(["-c", &setup])
            .output()
            .expect("sh");
        assert!(out.status.success(), "setting up the root: {out:?}");
        let site = host
            .command("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "8080",
                "--directory",
            ])
            .arg(dir.path().join("releases"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let root = Root { host, dir, site };
        eventually(30, "the release site", || {
            root.sh(&format!("curl -sf {SITE}/ >/dev/null"), &[])
                .status
                .success()
                .then_some(())
        });
        root
    }

    /// `path` of the throwaway root, seen from outside.
    fn path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.host.pid()))
    }

    /// A release `version` whose binary is `binary` and whose checksum is `digest`'s.
    fn release(&self, version: &str, binary: &Path, digest_of: &Path) {
        let dir = self.dir.path().join("releases").join(version);
        std::fs::create_dir_all(&dir).expect("release dir");
        let name = format!("kinglet-{}", arch());
        let target = dir.join(&name);
        if std::fs::hard_link(binary, &target).is_err() {
            std::fs::copy(binary, &target).expect("copy the binary");
        }
        std::fs::write(
            dir.join(format!("sha256sum-{}.txt", arch())),
            format!(
                "{}  kinglet-other\n{}  {name}\n",
                "0".repeat(64),
                sha256(digest_of)
            ),
        )
        .expect("checksum file");
    }

    /// `script` in the root, with only `env` (and PATH) in its environment.
    fn sh(&self, script: &str, env: &[(&str, &str)]) -> Output {
        self.host
            .command("sh")
            .args(["-c", script])
            .env_clear()
            .env("PATH", PATH)
            .envs(env.iter().copied())
            .output()
            .expect("sh")
    }

    fn ok(&self, script: &str, env: &[(&str, &str)]) -> String {
        let out = self.sh(script, env);
        assert!(
            out.status.success(),
            "{script}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// install.sh from the release site, without starting anything (no systemd runs here).
    fn install(&self, version: &str, env: &[(&str, &str)], args: &str) -> Output {
        let mut all = vec![
            ("INSTALL_KINGLET_DOWNLOAD_URL", SITE),
            ("INSTALL_KINGLET_VERSION", version),
            ("INSTALL_KINGLET_SKIP_START", "true"),
        ];
        all.extend_from_slice(env);
        let script = format!("sh {} {args}", self.dir.path().join("install.sh").display());
        self.sh(&script, &all)
    }

    fn listing(&self) -> String {
        self.ok(LISTING, &[])
    }

    fn mode(&self, path: &str) -> u32 {
        std::fs::metadata(self.path(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .permissions()
            .mode()
            & 0o7777
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.path(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        // The test host kills the rest (and removes its cgroups) when dropped.
        let _ = self.site.kill();
        let _ = self.site.wait();
    }
}

/// Two listings are the same; the difference otherwise.
fn assert_same(after: &str, before: &str, what: &str) {
    let (a, b): (Vec<&str>, Vec<&str>) = (after.lines().collect(), before.lines().collect());
    let added: Vec<&&str> = a.iter().filter(|l| !b.contains(l)).collect();
    let removed: Vec<&&str> = b.iter().filter(|l| !a.contains(l)).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "{what}: added {added:#?}, removed {removed:#?}"
    );
}

fn assert_ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A process (`pid`, from outside) has ended.
fn gone(child: &mut Child) -> bool {
    child.try_wait().ok().flatten().is_some()
}

/// The cgroup directory for a pod below the node's cgroup root, in the pids hierarchy on v1.
fn pod_cgroup(cgroup_root: &str) -> PathBuf {
    let base = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/pids")
    };
    base.join(cgroup_root.trim_start_matches('/'))
        .join("kubepods/besteffort/podinstall-test")
}

#[test]
fn server_install_refuses_corrupt_downloads_upgrades_and_uninstalls_cleanly() {
    let root = Root::new();
    let binary = Path::new(env!("CARGO_BIN_EXE_kinglet"));
    root.release("v1", binary, binary);
    // v2: another binary (the same program with bytes after it, so it still runs).
    let v2 = root.dir.path().join("kinglet-v2");
    std::fs::copy(binary, &v2).expect("copy");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&v2)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"kinglet v2"))
        .expect("append");
    root.release("v2", &v2, &v2);
    // A truncated download of v2.
    let truncated = root.dir.path().join("kinglet-truncated");
    let head = std::fs::read(&v2).expect("read v2")[..1 << 20].to_vec();
    std::fs::write(&truncated, head).expect("truncated");
    root.release("v2-truncated", &truncated, &v2);
    // Another kubelet's pod logs (k3s and kubeadm use the same directory): never kinglet's to remove.
    root.ok(
        "mkdir -p /var/log/pods/kube-system_other_u9/c && echo log > /var/log/pods/kube-system_other_u9/c/0.log",
        &[],
    );

    let before = root.listing();
    let cgroup_root = root.host.cgroup_root.clone();
    let env = [("KINGLET_CGROUP_ROOT", cgroup_root.as_str())];
    let out = root.install("v1", &env, "");
    let log = assert_ok(&out, "install v1");
    assert!(
        log.contains("not starting") || log.contains("systemd is not running"),
        "{log}"
    );

    // Files, modes, and the unit packaging/ ships.
    assert_eq!(sha256(&root.path("/usr/local/bin/kinglet")), sha256(binary));
    for (path, mode) in [
        ("/usr/local/bin/kinglet", 0o755),
        ("/usr/local/bin/kinglet-killall.sh", 0o755),
        ("/usr/local/bin/kinglet-uninstall.sh", 0o755),
        ("/etc/systemd/system/kinglet.service", 0o644),
        ("/etc/systemd/system/kinglet.service.env", 0o600),
    ] {
        assert_eq!(root.mode(path), mode, "mode of {path}");
    }
    let unit = root.read("/etc/systemd/system/kinglet.service");
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/kinglet.service"),
    )
    .expect("packaging/kinglet.service");
    assert_eq!(
        unit, shipped,
        "install.sh's unit and packaging/kinglet.service differ"
    );
    for line in [
        "Type=notify",
        "Delegate=yes",
        "KillMode=process",
        "Restart=always",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} in {unit}");
    }
    assert_eq!(
        root.read("/etc/systemd/system/kinglet.service.env"),
        format!("KINGLET_CGROUP_ROOT='{cgroup_root}'\n")
    );
    root.ok(
        "systemd-analyze verify /etc/systemd/system/kinglet.service",
        &[],
    );
    // Enabled for the next boot.
    let wanted = std::fs::read_link(
        root.path("/etc/systemd/system/multi-user.target.wants/kinglet.service"),
    )
    .expect("enabled");
    assert_eq!(wanted, Path::new("/etc/systemd/system/kinglet.service"));
    root.ok(
        "shellcheck /usr/local/bin/kinglet-killall.sh /usr/local/bin/kinglet-uninstall.sh",
        &[],
    );
    let installed = root.listing();

    // A download that does not match its checksum changes nothing.
    let out = root.install("v2-truncated", &env, "");
    assert!(!out.status.success(), "a corrupt download was installed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match its checksum"), "{err}");
    assert_eq!(sha256(&root.path("/usr/local/bin/kinglet")), sha256(binary));
    assert_same(&root.listing(), &installed, "a second install");

    // The same release again: nothing to download; a new one: replaced in place.
    let log = assert_ok(&root.install("v1", &env, ""), "install v1 again");
    assert!(log.contains("already v1"), "{log}");
    assert_ok(&root.install("v2", &env, ""), "install v2");
    assert_eq!(sha256(&root.path("/usr/local/bin/kinglet")), sha256(&v2));
    assert_same(&root.listing(), &installed, "a second install");

    // What a running node leaves: a server (our binary), a container in a pod cgroup, a volume
    // mount, state, pod logs.
    let mut server = root
        .host
        .command("/usr/local/bin/kinglet")
        .args(["server", "--disable-agent", "--bind-address", "127.0.0.1"])
        .env_clear()
        .env("PATH", PATH)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kinglet server");
    eventually(60, "the installed server's kubeconfig", || {
        root.path("/etc/kinglet/kinglet.yaml")
            .exists()
            .then_some(())
    });
    let cgroup = pod_cgroup(&cgroup_root);
    std::fs::create_dir_all(&cgroup).expect("pod cgroup");
    let mut container = root
        .host
        .command("sleep")
        .arg("100000")
        .spawn()
        .expect("sleep");
    std::fs::write(cgroup.join("cgroup.procs"), container.id().to_string()).expect("join cgroup");
    root.ok(
        "set -e; v=/var/lib/kinglet/agent/pods/u1/volumes/kubernetes.io~empty-dir/data; \
         mkdir -p $v /run/kinglet/containers /var/log/pods/default_bb_u1/bb; \
         mount -t tmpfs tmpfs $v; echo x > $v/f; echo log > /var/log/pods/default_bb_u1/bb/0.log",
        &[],
    );

    let log = root.ok("/usr/local/bin/kinglet-uninstall.sh", &[]);
    eprintln!("uninstall: {log}");
    eventually(30, "the server killed", || gone(&mut server).then_some(()));
    eventually(30, "the container killed", || {
        gone(&mut container).then_some(())
    });
    assert!(!cgroup.exists(), "pod cgroup left: {}", cgroup.display());
    let mounts = std::fs::read_to_string(format!("/proc/{}/mounts", root.host.pid())).unwrap();
    assert!(
        !mounts.contains("/var/lib/kinglet"),
        "mounts left: {mounts}"
    );
    assert_same(&root.listing(), &before, "uninstall");
}

#[test]
fn uninstall_finds_directories_from_flags_and_drop_ins_and_removes_only_kinglets() {
    let root = Root::new();
    let binary = Path::new(env!("CARGO_BIN_EXE_kinglet"));
    root.release("v1", binary, binary);
    // What is not kinglet's: a directory at the default data dir's place (the start of the
    // real one's name, before its space), and another kubelet's pod logs in the same log dir.
    root.ok(
        "set -e; mkdir -p /var/lib/kinglet '/var/log/kinglet pods/kube-system_other_u9/c'; \
         echo mine > /var/lib/kinglet/keep; echo log > '/var/log/kinglet pods/kube-system_other_u9/c/0.log'",
        &[],
    );
    let before = root.listing();
    // The run and pod log directories from a drop-in, the data directory from a flag.
    root.ok(
        "mkdir -p /etc/kinglet/config.yaml.d && printf '%s\\n' 'run-dir: \"/run/kinglet run\"' \
         \"pod-log-dir: '/var/log/kinglet pods'\" > /etc/kinglet/config.yaml.d/10-dirs.yaml",
        &[],
    );
    let cgroup_root = root.host.cgroup_root.clone();
    let env = [("KINGLET_CGROUP_ROOT", cgroup_root.as_str())];
    let data = "/var/lib/kinglet data";
    assert_ok(
        &root.install("v1", &env, &format!("server --data-dir '{data}'")),
        "install",
    );
    root.ok(
        "shellcheck /usr/local/bin/kinglet-killall.sh /usr/local/bin/kinglet-uninstall.sh",
        &[],
    );
    let mut server = root
        .host
        .command("/usr/local/bin/kinglet")
        .args(["server", "--disable-agent", "--bind-address", "127.0.0.1"])
        .args(["--data-dir", data])
        .env_clear()
        .env("PATH", PATH)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kinglet server");
    eventually(60, "the installed server's kubeconfig", || {
        root.path("/etc/kinglet/kinglet.yaml")
            .exists()
            .then_some(())
    });
    assert!(root.path(&format!("{data}/server/lock")).exists());
    // A pod's volume mount (a space in /proc/self/mounts is \040), its logs, container state.
    root.ok(
        "set -e; v='/var/lib/kinglet data/agent/pods/u1/volumes/kubernetes.io~empty-dir/data'; \
         mkdir -p \"$v\" '/run/kinglet run/containers' '/var/log/kinglet pods/default_bb_u1/bb'; \
         mount -t tmpfs tmpfs \"$v\"; echo x > \"$v/f\"; \
         echo log > '/var/log/kinglet pods/default_bb_u1/bb/0.log'",
        &[],
    );

    let log = root.ok("/usr/local/bin/kinglet-uninstall.sh", &[]);
    eprintln!("uninstall: {log}");
    eventually(30, "the server killed", || gone(&mut server).then_some(()));
    let mounts = std::fs::read_to_string(format!("/proc/{}/mounts", root.host.pid())).unwrap();
    assert!(
        !mounts.contains("kinglet\\040data"),
        "mounts left: {mounts}"
    );
    assert_same(&root.listing(), &before, "uninstall");

    // A data directory kinglet did not mark as its own is refused, not removed.
    assert_ok(
        &root.install("v1", &env, "server --data-dir /var/lib/kinglet"),
        "install over /var/lib/kinglet",
    );
    let out = root.sh("/usr/local/bin/kinglet-uninstall.sh", &[]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'/var/lib/kinglet' has neither server/lock nor agent/lock"),
        "{err}"
    );
    assert_eq!(root.read("/var/lib/kinglet/keep"), "mine\n");
    assert!(!root.path("/usr/local/bin/kinglet").exists());
}

#[test]
fn agent_install_with_kinglet_url() {
    let root = Root::new();
    let binary = Path::new(env!("CARGO_BIN_EXE_kinglet"));
    root.release("v1", binary, binary);
    let before = root.listing();

    // An agent needs a token.
    let out = root.install("v1", &[("KINGLET_URL", "https://192.0.2.1:6443")], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("KINGLET_TOKEN"), "{err}");
    assert_same(&root.listing(), &before, "a refused install");

    let env = [
        ("KINGLET_URL", "https://192.0.2.1:6443"),
        ("KINGLET_TOKEN", TOKEN),
        ("INSTALL_KINGLET_EXEC", "--node-label site=a"),
        ("UNRELATED", "not kept"),
    ];
    assert_ok(
        &root.install("v1", &env, "--node-label 'room=b c'"),
        "install",
    );
    assert!(!root.path("/etc/systemd/system/kinglet.service").exists());
    let unit = root.read("/etc/systemd/system/kinglet-agent.service");
    assert!(
        unit.lines().any(|l| l
            == "ExecStart=/usr/local/bin/kinglet agent --node-label site=a --node-label \"room=b c\""),
        "{unit}"
    );
    assert!(unit.contains("EnvironmentFile=-/etc/systemd/system/kinglet-agent.service.env"));
    assert_eq!(
        root.mode("/etc/systemd/system/kinglet-agent.service.env"),
        0o600
    );
    assert_eq!(
        root.read("/etc/systemd/system/kinglet-agent.service.env"),
        format!("KINGLET_TOKEN='{TOKEN}'\nKINGLET_URL='https://192.0.2.1:6443'\n")
    );
    root.ok(
        "systemd-analyze verify /etc/systemd/system/kinglet-agent.service && \
         shellcheck /usr/local/bin/kinglet-agent-uninstall.sh",
        &[],
    );
    root.ok("/usr/local/bin/kinglet-agent-uninstall.sh", &[]);
    assert_same(&root.listing(), &before, "uninstall");
}

#[test]
fn install_refuses_unsupported_architectures() {
    let root = Root::new();
    let binary = Path::new(env!("CARGO_BIN_EXE_kinglet"));
    root.release("v1", binary, binary);
    let before = root.listing();
    let fake = root.dir.path().join("fake-bin");
    std::fs::create_dir(&fake).expect("fake bin");
    std::fs::write(fake.join("uname"), "#!/bin/sh\necho armv6l\n").expect("uname");
    std::fs::set_permissions(fake.join("uname"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let path = format!("{}:{PATH}", fake.display());
    let out = root.install("v1", &[("PATH", &path)], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unsupported architecture armv6l"), "{err}");
    assert_same(&root.listing(), &before, "a refused install");
}

#[test]
fn install_from_a_checkout_uses_the_local_build() {
    let root = Root::new();
    let binary = Path::new(env!("CARGO_BIN_EXE_kinglet"));
    // A checkout: install.sh beside Cargo.toml and a built target/kinglet; no release site.
    let checkout = root.dir.path().join("checkout");
    std::fs::create_dir_all(checkout.join("target")).expect("checkout");
    std::fs::write(checkout.join("Cargo.toml"), "[workspace]\n").expect("Cargo.toml");
    std::fs::copy(
        root.dir.path().join("install.sh"),
        checkout.join("install.sh"),
    )
    .expect("copy");
    std::fs::hard_link(binary, checkout.join("target/kinglet"))
        .or_else(|_| std::fs::copy(binary, checkout.join("target/kinglet")).map(|_| ()))
        .expect("target/kinglet");
    let script = format!("{}/install.sh", checkout.display());
    let env = [("INSTALL_KINGLET_SKIP_START", "true")];
    let log = root.ok(&format!("chmod +x {script} && {script} agent --server https://192.0.2.1:6443 --token-file /etc/t"), &env);
    assert!(log.contains("installing the local build"), "{log}");
    assert_eq!(sha256(&root.path("/usr/local/bin/kinglet")), sha256(binary));
    assert!(
        root.path("/etc/systemd/system/kinglet-agent.service")
            .exists()
    );
    // Then without download: the installed binary is kept.
    let elsewhere = root.dir.path().join("install.sh").display().to_string();
    let log = root.ok(
        &format!("sh {elsewhere} agent --server https://192.0.2.1:6443 --token-file /etc/t"),
        &[
            ("INSTALL_KINGLET_SKIP_START", "true"),
            ("INSTALL_KINGLET_SKIP_DOWNLOAD", "true"),
        ],
    );
    assert!(
        log.contains("using the installed /usr/local/bin/kinglet"),
        "{log}"
    );
    assert_eq!(sha256(&root.path("/usr/local/bin/kinglet")), sha256(binary));
}

#[test]
fn install_sh_passes_shellcheck() {
    let out = Command::new("shellcheck")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh"))
        .output()
        .expect("shellcheck (tests/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Waits for a datagram on `socket` holding `READY=1`; returns every message up to it.
fn wait_ready_message(socket: &UnixDatagram) -> Vec<String> {
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut messages = Vec::new();
    eventually(120, "READY=1", || {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).ok()?;
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        messages.push(message.clone());
        message.lines().any(|l| l == "READY=1").then_some(())
    });
    messages
}

#[test]
fn api_only_server_notifies_readiness_on_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("kinglet-install-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).expect("address");
    let socket = UnixDatagram::bind_addr(&addr).expect("bind");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::free_port();
    std::fs::write(dir.path().join("config.yaml"), "# no flags\n").expect("config");
    let mut server = Command::new(env!("CARGO_BIN_EXE_kinglet"))
        .args(["server", "--disable-agent", "--bind-address", "127.0.0.1"])
        .arg("--https-listen-port")
        .arg(port.to_string())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--write-kubeconfig")
        .arg(dir.path().join("kubeconfig"))
        .arg("--config")
        .arg(dir.path().join("config.yaml"))
        .env_remove("KINGLET_CONFIG")
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kinglet server");
    let messages = wait_ready_message(&socket);
    // Ready means serving: kubectl gets an answer at once.
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(dir.path().join("kubeconfig"))
        .args(["get", "--raw", "/readyz"])
        .output()
        .expect("kubectl");
    let _ = server.kill();
    let _ = server.wait();
    assert!(out.status.success(), "not serving after READY=1: {out:?}");
    assert!(
        messages
            .last()
            .unwrap()
            .contains("STATUS=API server serving"),
        "{messages:?}"
    );
}

#[test]
fn node_notifies_readiness_once_ready_and_hides_the_socket_from_pods() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind");
    let path = path.display().to_string();
    let s = Server::start_node_env(TestHost::new(), &[], &[("NOTIFY_SOCKET", &path)]);
    let messages = wait_ready_message(&socket);
    assert!(
        messages
            .last()
            .unwrap()
            .contains(&format!("node {NODE} Ready")),
        "{messages:?}"
    );
    // READY=1 came after the node was Ready.
    let ready = s.ok(&[
        "get",
        "node",
        NODE,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert_eq!(ready, "True");
    // Containers never see the service manager's socket.
    s.ok(&[
        "run",
        "env",
        "--image=busybox:1.36",
        "--image-pull-policy=IfNotPresent",
        "--restart=Never",
        "--",
        "env",
    ]);
    let env = eventually(120, "the pod's output", || {
        let phase = s.ok(&["get", "pod", "env", "-o", "jsonpath={.status.phase}"]);
        (phase == "Succeeded").then(|| s.ok(&["logs", "env"]))
    });
    assert!(env.contains("PATH="), "{env}");
    assert!(!env.contains("NOTIFY_SOCKET"), "{env}");
}
