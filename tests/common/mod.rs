//! Test harness: runs `kinglet server` on loopback with its own data directory, and drives it
//! with the real `kubectl` (several versions) and with kube-rs.

#![allow(dead_code)]

pub mod cluster;
pub mod etcd;
pub mod host;
pub mod images;
pub mod tls_backend;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub kubeconfig: PathBuf,
    extra: Vec<String>,
    /// With a node: the test host it runs in (dropped after the server).
    pub host: Option<host::TestHost>,
    /// Extra environment of the kinglet process.
    env: Vec<(String, String)>,
    /// The etcd this server's datastore is in, when the test run asks for etcd
    /// (`KINGLET_TEST_DATASTORE=etcd`); dropped after the server.
    etcd: Option<etcd::Etcd>,
}

/// The environment variable that picks the datastore of `Server::start`/`start_with`: unset or
/// `sqlite` for SQLite in the data directory, `etcd` for a single-member etcd of the server's
/// own on loopback (tests/run runs the API tests once with each).
pub const TEST_DATASTORE: &str = "KINGLET_TEST_DATASTORE";

/// Whether this run puts API-only test servers on etcd.
pub fn datastore_is_etcd() -> bool {
    match std::env::var(TEST_DATASTORE).as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => false,
        Ok("etcd") => true,
        Ok(other) => panic!("{TEST_DATASTORE}={other}: expected sqlite or etcd"),
    }
}

/// The node name test nodes register as.
pub const NODE: &str = "test-node";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts a server with extra flags (on etcd when `KINGLET_TEST_DATASTORE=etcd`, unless
    /// the flags name a datastore).
    pub fn start_with(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let names_datastore = extra.iter().any(|a| a.starts_with("--datastore-endpoint"));
        let etcd = (datastore_is_etcd() && !names_datastore).then(|| etcd::Etcd::loopback(1));
        if let Some(e) = &etcd {
            extra.splice(0..0, e.server_flags());
        }
        let mut s = Server {
            child: None,
            port: free_port(),
            kubeconfig,
            dir,
            extra,
            host: None,
            env: Vec::new(),
            etcd,
        };
        s.spawn();
        s
    }

    /// Starts a server with its datastore in `etcd`; `extra` flags after the datastore's.
    pub fn start_on(etcd: &etcd::Etcd, extra: &[&str]) -> Server {
        let mut args = etcd.server_flags();
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Starts a server with its embedded node, in a test host of its own, with the busybox
    /// image (`busybox:1.36`) in its air-gap image directory.
    pub fn start_node(extra: &[&str]) -> Server {
        Server::start_node_in(host::TestHost::new(), extra)
    }

    /// The same in `host` (one plugged into a `host::Switch`, for a multi-node cluster).
    pub fn start_node_in(host: host::TestHost, extra: &[&str]) -> Server {
        Server::start_node_env(host, extra, &[])
    }

    /// The same with extra environment variables for kinglet.
    pub fn start_node_env(host: host::TestHost, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let images = dir.path().join("data/agent/images");
        std::fs::create_dir_all(&images).expect("image dir");
        images::write_busybox_image(
            &images.join("busybox.tar"),
            "docker.io/library/busybox:1.36",
        );
        // The run directory is a tmpfs, as /run is: a power cut clears it.
        let run_dir = dir.path().join("run");
        host.mount_tmpfs(&run_dir);
        // Upstream DNS of the node: loopback of the test host only.
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&resolv, "nameserver 127.0.0.1\nsearch test.invalid\n")
            .expect("resolv.conf");
        let mut args: Vec<String> = vec![
            "--node-name".into(),
            NODE.into(),
            "--cgroup-root".into(),
            host.cgroup_root.clone(),
            "--pod-log-dir".into(),
            dir.path().join("pod-logs").display().to_string(),
            "--run-dir".into(),
            run_dir.display().to_string(),
            "--node-ip".into(),
            host::NODE_IP.into(),
            "--resolv-conf".into(),
            resolv.display().to_string(),
            // The disk is shared with the builds and may sit near upstream's 15% imagefs
            // threshold: test nodes evict on memory only, unless a test sets its own.
            "--kubelet-arg=eviction-hard=memory.available<1Ki".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = Server {
            child: None,
            port: 6443,
            kubeconfig: dir.path().join("kubeconfig.yaml"),
            dir,
            extra: args,
            host: Some(host),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            etcd: None,
        };
        s.spawn();
        s
    }

    /// Starts a server without its own node (`--disable-agent`) in a test host of its own, on
    /// port 6443 there, for agents run in the same host (`command`) to join.
    pub fn start_in_host(extra: &[&str]) -> Server {
        Server::start_in_host_with(extra, |_, _| {})
    }

    /// The same, after `prepare(host, dir)` has set up the server's directory (e.g. mounted
    /// something at `dir/data`, the `--data-dir`, in the host).
    pub fn start_in_host_with(
        extra: &[&str],
        prepare: impl FnOnce(&host::TestHost, &Path),
    ) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = vec!["--disable-agent".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let host = host::TestHost::new();
        prepare(&host, dir.path());
        let mut s = Server {
            child: None,
            port: 6443,
            kubeconfig: dir.path().join("kubeconfig.yaml"),
            dir,
            extra: args,
            host: Some(host),
            env: Vec::new(),
            etcd: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let config = self.dir.path().join("config.yaml");
        if !config.exists() {
            std::fs::write(&config, "# flags for this test server\n").expect("config file");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("log file");
        let mut cmd = match &self.host {
            Some(h) => h.command(env!("CARGO_BIN_EXE_kinglet")),
            None => Command::new(env!("CARGO_BIN_EXE_kinglet")),
        };
        cmd.arg("server");
        if self.host.is_none() {
            cmd.arg("--disable-agent");
        }
        let child = cmd
            .args([
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
            ])
            .arg("--https-listen-port")
            .arg(self.port.to_string())
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--write-kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--config")
            .arg(&config)
            .args(&self.extra)
            .env_remove("KINGLET_CONFIG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn kinglet");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("kinglet exited early with {status}; log:\n{}", self.log());
            }
            if self.kubeconfig.exists()
                && self.kubectl(&["get", "--raw", "/readyz"]).status.success()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("kinglet did not become ready; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Stops the server: SIGKILL when `kill`, else SIGTERM.
    pub fn stop(&mut self, kill: bool) {
        if let Some(mut c) = self.child.take() {
            let sig = if kill { "-KILL" } else { "-TERM" };
            let _ = Command::new("kill")
                .arg(sig)
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    /// A node reboot: kinglet, supervisors and containers all gone, mounts too; then kinglet
    /// starts again.
    pub fn power_cycle(&mut self) {
        self.stop(true);
        if let Some(h) = &self.host {
            h.power_cut(self.dir.path());
            // Boot: /run is an empty tmpfs again.
            h.mount_tmpfs(&self.dir.path().join("run"));
        }
        self.spawn();
    }

    pub fn restart(&mut self, kill: bool) {
        self.stop(kill);
        self.spawn();
    }

    /// The server's `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The test host a node runs in.
    #[allow(dead_code)]
    pub fn host(&self) -> Option<&host::TestHost> {
        self.host.as_ref()
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(&kubectl_default(), args, None)
    }

    pub fn kubectl_in(&self, bin: &Path, args: &[&str]) -> Output {
        self.kubectl_with(bin, args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        self.kubectl_with(&kubectl_default(), args, Some(stdin))
    }

    /// `program` set up to talk to this server (kubeconfig, and the test host if any).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = match &self.host {
            Some(h) => h.command(program),
            None => Command::new(program),
        };
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path());
        cmd
    }

    pub fn kubectl_with(&self, bin: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.command(bin);
        cmd.args(args).stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// Runs kubectl and returns stdout, failing the test with stderr if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_in(&kubectl_default(), args)
    }

    pub fn ok_in(&self, bin: &Path, args: &[&str]) -> String {
        let out = self.kubectl_in(bin, args);
        assert!(
            out.status.success(),
            "{} {:?} failed:\n{}\n{}",
            bin.display(),
            args,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ok_stdin(&self, args: &[&str], stdin: &str) -> String {
        let out = self.kubectl_stdin(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `kinglet agent` as node `name` in this server's test host (`start_in_host`),
    /// joined with `token`, at the host's node address: its data under `dir`
    /// (`prepare_agent_dir`), its log appended to `dir/agent.log`.
    pub fn start_agent_here(&self, dir: &Path, name: &str, token: &str) -> Child {
        let host = self.host().expect("a server in a test host");
        prepare_agent_dir(host, dir);
        let server = format!("https://127.0.0.1:{}", self.port);
        agent_command(host, dir, &server, token, name)
            .args(["--node-ip", host::NODE_IP])
            .stderr(append_log(&dir.join("agent.log")))
            .spawn()
            .expect("spawn kinglet agent")
    }

    /// The status of node `name`'s Ready condition (empty when the node or condition is missing).
    pub fn node_ready(&self, name: &str) -> String {
        let out = self.kubectl(&[
            "get",
            "node",
            name,
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits (60 s) for node `name` to be Ready, failing with `log` if `agent` exits first.
    pub fn wait_agent_ready(&self, name: &str, agent: &mut Child, log: &Path) {
        eventually(60, &format!("node {name} Ready"), || {
            if let Ok(Some(status)) = agent.try_wait() {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("kinglet agent exited with {status}:\n{log}");
            }
            (self.node_ready(name) == "True").then_some(())
        });
    }

    /// `kinglet token [args] --data-dir <this server's>`'s output.
    pub fn kinglet_token(&self, args: &[&str]) -> String {
        let args = [&["token"], args].concat();
        let out = kinglet_cli(&self.data_dir(), &args);
        succeeded(out, &format!("kinglet {args:?}"))
            .trim()
            .to_string()
    }

    /// Waits for pod `name` to run and returns its IP.
    pub fn running_pod_ip(&self, name: &str) -> String {
        eventually(90, &format!("pod {name} running with an IP"), || {
            let out = self.kubectl(&["get", "pod", name, "-o", "json"]);
            let p: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (p["status"]["phase"] == "Running")
                .then(|| p["status"]["podIP"].as_str().map(String::from))
                .flatten()
        })
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_with(&kubectl_default(), args, stdin);
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A kube-rs client for this server.
    pub async fn client(&self) -> kube::Client {
        client_for(&self.kubeconfig).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(true);
    }
}

/// A kube-rs client from `kubeconfig` (e.g. a server's, for a task that outlives the borrow).
pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

/// Runs `cmd` (a kinglet that must refuse to start) and waits at most `secs` for it to exit:
/// killed and the test failed if it still runs then, failed if it exits 0. Its stderr.
pub fn must_refuse(cmd: &mut Command, secs: u64) -> String {
    // Stderr in a file, not a pipe: a chatty child cannot block on a full pipe while we poll.
    let mut err = tempfile::tempfile().expect("stderr file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err.try_clone().expect("dup stderr file"))
        .spawn()
        .expect("spawn kinglet");
    let read = |f: &mut std::fs::File| {
        use std::io::{Read, Seek};
        let mut text = String::new();
        f.rewind().expect("rewind stderr file");
        let _ = f.read_to_string(&mut text);
        text
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "did not refuse to start within {secs} s:\n{}",
                read(&mut err)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = read(&mut err);
    assert!(!status.success(), "started (exited {status}): {text}");
    text
}

/// `kinglet <args> --data-dir <data_dir>`, not reading the caller's environment for it.
pub fn kinglet_cli(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kinglet"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("KINGLET_DATA_DIR")
        .output()
        .expect("run kinglet")
}

/// The standard output of a command that must have succeeded (its standard error otherwise).
pub fn succeeded(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Gets `dir` ready to hold a `kinglet agent`'s files in `host` (once): the busybox image
/// (`busybox:1.36`) in its air-gap directory, a resolv.conf naming only the host's loopback,
/// and `run/` a tmpfs, as /run is.
pub fn prepare_agent_dir(host: &host::TestHost, dir: &Path) {
    let images = dir.join("data/agent/images");
    if images.exists() {
        return;
    }
    std::fs::create_dir_all(&images).expect("image dir");
    images::write_busybox_image(
        &images.join("busybox.tar"),
        "docker.io/library/busybox:1.36",
    );
    std::fs::write(
        dir.join("resolv.conf"),
        "nameserver 127.0.0.1\nsearch test.invalid\n",
    )
    .expect("resolv.conf");
    host.mount_tmpfs(&dir.join("run"));
}

/// `kinglet agent --server <server> --token <token>` as node `name` in `host`, with its
/// files under `dir` (`prepare_agent_dir`): `data/`, `run/`, `pod-logs/`; stdin and stdout
/// closed, stderr left to the caller.
pub fn agent_command(
    host: &host::TestHost,
    dir: &Path,
    server: &str,
    token: &str,
    name: &str,
) -> Command {
    let mut cmd = host.command(env!("CARGO_BIN_EXE_kinglet"));
    cmd.arg("agent")
        .args(["--server", server, "--token", token])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--node-name", name])
        .args(["--cgroup-root", &host.cgroup_root])
        .arg("--pod-log-dir")
        .arg(dir.join("pod-logs"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--resolv-conf")
        .arg(dir.join("resolv.conf"))
        // As test servers' nodes: evict on memory only (the disk is the builds').
        .arg("--kubelet-arg=eviction-hard=memory.available<1Ki")
        .env_remove("KINGLET_DATA_DIR")
        .env_remove("KINGLET_TOKEN")
        .env_remove("KINGLET_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// `path` opened for appending (a process's log across restarts).
pub fn append_log(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `kubectl port-forward` in the background, its output in `out`.
pub struct PortForward {
    child: Child,
    pub out: PathBuf,
}

impl PortForward {
    pub fn start(s: &Server, pod: &str, ports: &str, out: &Path) -> PortForward {
        let file = std::fs::File::create(out).expect("port-forward output");
        let child = s
            .command(kubectl_default())
            .args(["port-forward", pod, ports])
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .expect("kubectl port-forward");
        let pf = PortForward {
            child,
            out: out.to_path_buf(),
        };
        eventually(30, "kubectl port-forward listening", || {
            std::fs::read_to_string(&pf.out)
                .unwrap_or_default()
                .contains("Forwarding from")
                .then_some(())
        });
        pf
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kubectl on PATH, resolved.
pub fn kubectl_default() -> PathBuf {
    versioned_kubectl("1.33").unwrap_or_else(|| PathBuf::from("kubectl"))
}

/// A versioned kubectl (`kubectl.1.28`) next to the one on PATH, if present.
pub fn versioned_kubectl(version: &str) -> Option<PathBuf> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("readlink -f \"$(command -v kubectl)\"")
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let candidate = path.parent()?.join(format!("kubectl.{version}"));
    candidate.exists().then_some(candidate)
}

/// The kubectl versions the acceptance criteria name, both required.
pub fn kubectl_versions() -> Vec<(String, PathBuf)> {
    ["1.33", "1.28"]
        .iter()
        .map(|v| {
            (
                v.to_string(),
                versioned_kubectl(v)
                    .unwrap_or_else(|| panic!("kubectl.{v} not found beside kubectl")),
            )
        })
        .collect()
}

/// Polls `f` until it returns Some, or panics after `secs`.
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
