//! A multi-node cluster of test hosts on one `Switch`: host 0 runs `kinglet server` with its
//! node, hosts 1.. run `kinglet agent` joined with the token `kinglet token` prints. Host `i`
//! has the address `192.0.2.<10+i>` on its `eth0` and runs node `node-<i>`, each with its own
//! data directory and cgroup parent. Dropping the cluster stops everything and removes the
//! hosts and the switch, also when a test fails.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output};

use super::etcd::Etcd;
use super::host::TestHost;
use super::{Server, eventually};

/// Host `i`'s address on the switch (host 0's is `host::NODE_IP`).
pub fn host_ip(i: usize) -> String {
    format!("192.0.2.{}", 10 + i)
}

/// The node that runs in host `i`.
pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// Addresses on a switch for several servers on one etcd (clear of `host_ip`'s first ten):
/// etcd's host, the servers' hosts, an agent's host.
pub const ETCD_IP: &str = "192.0.2.20";
pub const SERVER_IPS: [&str; 2] = ["192.0.2.21", "192.0.2.22"];
pub const AGENT_IP: &str = "192.0.2.25";

/// `kinglet server --disable-agent` in a test host plugged into `switch` at `ip`, listening on
/// every address of its host, with its datastore in `etcd`; `extra` flags last.
pub fn server_on_switch(switch: &Switch, ip: &str, etcd: &Etcd, extra: &[&str]) -> Server {
    let mut args: Vec<String> = ["--bind-address", "0.0.0.0", "--advertise-address", ip]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(etcd.server_flags());
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_in_host_with(&args, |host, _| switch.plug(host, ip))
}

/// Runs busybox pod `name` through `s` on node `node` (by `nodeSelector` on
/// `kubernetes.io/hostname`) with `command`; returns its IP once it runs there.
pub fn run_pod_on(s: &Server, name: &str, node: &str, command: &[&str]) -> String {
    let overrides = format!(
        r#"--overrides={{"spec":{{"nodeSelector":{{"kubernetes.io/hostname":"{node}"}}}}}}"#
    );
    let mut args = vec![
        "run",
        name,
        "--image=busybox:1.36",
        "--image-pull-policy=IfNotPresent",
        &overrides,
        "--",
    ];
    args.extend_from_slice(command);
    s.ok(&args);
    let ip = s.running_pod_ip(name);
    let on = s.ok(&["get", "pod", name, "-o", "jsonpath={.spec.nodeName}"]);
    assert_eq!(on, node, "pod {name} on the wrong node");
    ip
}

/// `kinglet agent` in a test host of its own.
pub struct Agent {
    child: Option<Child>,
    /// Its node's name.
    pub name: String,
    /// Holds `data/` (its `--data-dir`), `run/` (a tmpfs), `pod-logs/` and `agent.log`.
    pub dir: tempfile::TempDir,
    server: String,
    token: String,
    extra: Vec<String>,
    /// Dropped after the agent (fields drop in order): everything that ran there goes.
    pub host: TestHost,
}

impl Agent {
    /// Starts `kinglet agent --server <server> --token <token>` as node `name` in `host`, with
    /// the busybox image (`busybox:1.36`) in its air-gap image directory; `extra` flags last.
    /// Does not wait for the node (see `Cluster::wait_ready`).
    pub fn start(host: TestHost, name: &str, server: &str, token: &str, extra: &[&str]) -> Agent {
        let mut a = Agent::prepare(host, name, server, token, extra);
        a.spawn();
        a
    }

    /// The same without starting it (`restart` does), for a benchmark to time its start.
    pub fn prepare(host: TestHost, name: &str, server: &str, token: &str, extra: &[&str]) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        super::prepare_agent_dir(&host, dir.path());
        Agent {
            child: None,
            name: name.to_string(),
            dir,
            server: server.to_string(),
            token: token.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            host,
        }
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let child = super::agent_command(&self.host, d, &self.server, &self.token, &self.name)
            .args(&self.extra)
            .stderr(super::append_log(&d.join("agent.log")))
            .spawn()
            .expect("spawn kinglet agent");
        self.child = Some(child);
    }

    /// Stops the agent (SIGKILL when `kill`, else SIGTERM); its containers keep running.
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

    /// Starts it again (stopped first if it runs).
    pub fn restart(&mut self, kill: bool) {
        self.stop(kill);
        self.spawn();
    }

    /// A reboot of its machine: the agent, supervisors and containers gone, mounts too, an
    /// empty /run; then the agent starts again.
    pub fn power_cycle(&mut self) {
        self.stop(true);
        self.host.power_cut(self.dir.path());
        self.host.mount_tmpfs(&self.dir.path().join("run"));
        self.spawn();
    }

    /// Its machine loses power and stays off: agent, supervisors, containers and mounts gone
    /// (`power_on` boots it).
    pub fn power_off(&mut self) {
        self.stop(true);
        self.host.power_cut(self.dir.path());
    }

    /// Boots a machine that `power_off` cut: an empty /run, then the agent starts.
    pub fn power_on(&mut self) {
        self.host.mount_tmpfs(&self.dir.path().join("run"));
        self.spawn();
    }

    /// The pid of the running `kinglet agent` (nsenter execs it: no process in between).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// How it ended, if it did (None also when stopped by the test).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Its `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `program` run in its test host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.host.command(program)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop(true);
    }
}

/// A server with its node and agents, each in a test host on one switch.
pub struct Cluster {
    /// `agents[k]` runs node `node-<k+1>` in host `k+1`.
    pub agents: Vec<Agent>,
    /// Runs node `node-0` in host 0, its API at `https://192.0.2.10:6443`.
    pub server: Server,
    /// The join token agents were given.
    pub token: String,
    // Last: the hosts' cables go with it.
    switch: Switch,
}

impl Cluster {
    /// A server and `agents` agents, every node Ready.
    pub fn start(agents: usize) -> Cluster {
        Cluster::start_with(agents, &[], &[])
    }

    /// The same with extra flags for the server and for every agent.
    pub fn start_with(agents: usize, server_extra: &[&str], agent_extra: &[&str]) -> Cluster {
        let switch = Switch::new();
        let plugged = |i: usize| {
            let host = TestHost::bare();
            switch.plug(&host, &host_ip(i));
            host
        };
        let (ip0, name0) = (host_ip(0), node_name(0));
        // Listening on every address of its host, so agents reach it over the switch.
        let mut args = vec![
            "--node-name",
            &name0,
            "--bind-address",
            "0.0.0.0",
            "--advertise-address",
            &ip0,
        ];
        args.extend_from_slice(server_extra);
        let server = Server::start_node_in(plugged(0), &args);
        let token = server.kinglet_token(&[]);
        let url = format!("https://{ip0}:{}", server.port);
        let agents = (1..=agents)
            .map(|i| Agent::start(plugged(i), &node_name(i), &url, &token, agent_extra))
            .collect();
        let mut c = Cluster {
            agents,
            server,
            token,
            switch,
        };
        c.wait_ready();
        c
    }

    /// How many nodes (hosts) the cluster has.
    pub fn len(&self) -> usize {
        self.agents.len() + 1
    }

    /// The node of host `i`.
    pub fn node(&self, i: usize) -> String {
        node_name(i)
    }

    /// The address of host `i` (its node's INTERNAL-IP).
    pub fn ip(&self, i: usize) -> String {
        host_ip(i)
    }

    pub fn host(&self, i: usize) -> &TestHost {
        match i {
            0 => self.server.host().expect("the server's test host"),
            _ => &self.agents[i - 1].host,
        }
    }

    /// `program` run in host `i`.
    pub fn in_host(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.host(i).command(program)
    }

    /// `program args` run in host `i`, which must succeed; its output.
    pub fn run_in(&self, i: usize, program: &str, args: &[&str]) -> String {
        let out = self
            .in_host(i, program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program} in host {i}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} in host {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The switch the hosts are plugged into.
    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.server.kubectl(args)
    }

    /// kubectl that must succeed; its output.
    pub fn ok(&self, args: &[&str]) -> String {
        self.server.ok(args)
    }

    pub fn ok_stdin(&self, args: &[&str], stdin: &str) -> String {
        self.server.ok_stdin(args, stdin)
    }

    /// Runs busybox pod `name` on the node of host `i` (by `nodeSelector` on
    /// `kubernetes.io/hostname`) with `command`; returns its IP once it runs.
    pub fn run_pod(&self, name: &str, i: usize, command: &[&str]) -> String {
        run_pod_on(&self.server, name, &self.node(i), command)
    }

    /// Waits until every node is Ready (failing with the logs of an agent that exited).
    pub fn wait_ready(&mut self) {
        let want: Vec<String> = (0..self.len()).map(node_name).collect();
        eventually(90, "every node Ready", || {
            for a in &mut self.agents {
                if let Some(status) = a.exited() {
                    panic!(
                        "kinglet agent {} exited with {status}:\n{}",
                        a.name,
                        a.log()
                    );
                }
            }
            let out = self.server.kubectl(&[
                "get",
                "nodes",
                "-o",
                r#"jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
            ]);
            let text = String::from_utf8_lossy(&out.stdout);
            let ready: Vec<&str> = (text.lines())
                .filter_map(|l| l.strip_suffix(" True"))
                .collect();
            want.iter()
                .all(|n| ready.contains(&n.as_str()))
                .then_some(())
        });
    }
}

/// A network switch for test hosts: a Linux bridge in a network namespace of its own (a test
/// host that runs nothing else). Hosts plugged in reach each other through it and nothing
/// else; when it is dropped its namespace goes, and the cables with it.
pub struct Switch {
    ns: TestHost,
    ports: std::sync::atomic::AtomicU32,
}

/// The switch's bridge, in its own namespace.
const SWITCH_BRIDGE: &str = "sw0";

/// Runs `cmd`, failing the test with what it printed if it fails.
fn must(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Switch {
    pub fn new() -> Switch {
        let ns = TestHost::bare();
        must(
            ns.command("ip")
                .args(["link", "add", SWITCH_BRIDGE, "type", "bridge"]),
            "making the switch",
        );
        must(
            ns.command("ip").args(["link", "set", SWITCH_BRIDGE, "up"]),
            "switching the switch on",
        );
        Switch {
            ns,
            ports: Default::default(),
        }
    }

    /// Plugs `host` in: its `eth0`, with `ip`/24, cabled (a veth pair) to a port of the switch.
    pub fn plug(&self, host: &TestHost, ip: &str) {
        let n = (self.ports).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = format!("port{n}");
        // Made in the switch's namespace, the other end moved straight into the host's: the
        // machine's namespace never sees either.
        must(
            self.ns.command("ip").args([
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &host.pid().to_string(),
            ]),
            "cabling a host to the switch",
        );
        must(
            self.ns
                .command("ip")
                .args(["link", "set", &port, "master", SWITCH_BRIDGE, "up"]),
            "plugging the cable into the switch",
        );
        must(
            host.command("ip")
                .args(["addr", "add", &format!("{ip}/24"), "dev", "eth0"]),
            "addressing the host",
        );
        must(
            host.command("ip").args(["link", "set", "eth0", "up"]),
            "bringing the host's eth0 up",
        );
    }

    /// `program` run in the switch's namespace (to watch or cut its ports).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.ns.command(program)
    }
}
