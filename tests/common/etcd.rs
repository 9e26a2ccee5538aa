//! An etcd v3 cluster for tests (Debian's `etcd-server`, `/usr/bin/etcd`): N members with data
//! directories of their own under a temporary directory, either on free loopback ports of this
//! machine (for API-only servers there) or inside a test host (for servers in test hosts on a
//! `cluster::Switch`), optionally serving clients over TLS with client certificates. Members can
//! be killed and started again; dropping the cluster kills every member and removes its files,
//! also when a test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

use super::host::TestHost;
use super::{append_log, free_port};

/// The TLS files of a cluster that serves clients over TLS (kinglet's `--datastore-cafile`,
/// `--datastore-certfile`, `--datastore-keyfile`).
pub struct ClientTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    child: Option<Child>,
}

pub struct Etcd {
    members: Vec<Member>,
    /// Where the members' data directories, logs and TLS files are.
    pub dir: tempfile::TempDir,
    tls: Option<ClientTls>,
    /// The test host the members run in, if any (dropped after them: fields drop in order).
    host: Option<TestHost>,
}

impl Etcd {
    /// `n` members on free ports of this machine's loopback, plain HTTP.
    pub fn loopback(n: usize) -> Etcd {
        Etcd::start(n, None, "127.0.0.1", false, |_| (free_port(), free_port()))
    }

    /// The same with clients served over TLS and a client certificate required.
    pub fn loopback_tls(n: usize) -> Etcd {
        Etcd::start(n, None, "127.0.0.1", true, |_| (free_port(), free_port()))
    }

    /// `n` members in `host` (a test host plugged into a switch at `ip`), on ports 2379/2380,
    /// 3379/3380, ... of `ip`; clients over TLS when `tls`.
    pub fn in_host(n: usize, host: TestHost, ip: &str, tls: bool) -> Etcd {
        Etcd::start(n, Some(host), ip, tls, |i| {
            let base = 2379 + 1000 * i as u16;
            (base, base + 1)
        })
    }

    /// Starts the members and waits for them to be healthy. Free loopback ports may be taken
    /// by another test before etcd binds them: then the cluster is made again on other ports.
    fn start(
        n: usize,
        mut host: Option<TestHost>,
        ip: &str,
        tls: bool,
        ports: impl Fn(usize) -> (u16, u16),
    ) -> Etcd {
        for _ in 0..3 {
            let mut etcd = Etcd::spawn_all(n, host.take(), ip, tls, &ports);
            match etcd.try_wait_healthy() {
                Ok(()) => return etcd,
                Err(e) if etcd.host.is_none() && e.contains("address already in use") => {
                    eprintln!("etcd: a port was taken, again on others");
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("etcd: ports taken three times over");
    }

    fn spawn_all(
        n: usize,
        host: Option<TestHost>,
        ip: &str,
        tls: bool,
        ports: impl Fn(usize) -> (u16, u16),
    ) -> Etcd {
        assert!(n >= 1, "an etcd cluster needs a member");
        let dir = tempfile::tempdir().expect("tempdir");
        let scheme = if tls { "https" } else { "http" };
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let (client, peer) = ports(i);
                Member {
                    name: format!("etcd-{i}"),
                    client_url: format!("{scheme}://{ip}:{client}"),
                    peer_url: format!("http://{ip}:{peer}"),
                    child: None,
                }
            })
            .collect();
        let tls = tls.then(|| write_tls(dir.path(), ip));
        let mut etcd = Etcd {
            members,
            dir,
            tls,
            host,
        };
        for i in 0..n {
            etcd.spawn(i);
        }
        etcd
    }

    /// Every member's client URL, comma-separated: kinglet's `--datastore-endpoint`.
    pub fn endpoint(&self) -> String {
        let urls: Vec<&str> = self.members.iter().map(|m| m.client_url.as_str()).collect();
        urls.join(",")
    }

    /// Member `i`'s data directory (its `--data-dir`).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    /// The pid of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(|c| c.id())
    }

    /// kinglet's flags for this cluster: `--datastore-endpoint` and, with TLS, the
    /// `--datastore-cafile/certfile/keyfile` files.
    pub fn server_flags(&self) -> Vec<String> {
        let mut flags = vec!["--datastore-endpoint".to_string(), self.endpoint()];
        if let Some(t) = &self.tls {
            for (flag, file) in [
                ("--datastore-cafile", &t.ca_file),
                ("--datastore-certfile", &t.cert_file),
                ("--datastore-keyfile", &t.key_file),
            ] {
                flags.push(flag.to_string());
                flags.push(file.display().to_string());
            }
        }
        flags
    }

    fn command(&self, program: &str) -> Command {
        match &self.host {
            Some(h) => h.command(program),
            None => Command::new(program),
        }
    }

    fn spawn(&mut self, i: usize) {
        let initial_cluster: Vec<String> = (self.members.iter())
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect();
        let data = self.data_dir(i);
        let m = &self.members[i];
        let log = append_log(&self.dir.path().join(format!("{}.log", m.name)));
        let mut cmd = self.command("etcd");
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &m.client_url])
            .args(["--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url])
            .args(["--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &initial_cluster.join(",")])
            // Ignored once the data directory holds a member (a restart).
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "kinglet-test"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            // The tests' data is small: a quota far below the default keeps a runaway test
            // from filling the disk the builds share.
            .args(["--quota-backend-bytes", &(512u64 << 20).to_string()]);
        if let Some(t) = &self.tls {
            cmd.arg("--trusted-ca-file")
                .arg(&t.ca_file)
                .arg("--cert-file")
                .arg(self.dir.path().join("server.crt"))
                .arg("--key-file")
                .arg(self.dir.path().join("server.key"))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (Debian's etcd-server) is needed for these tests");
        self.members[i].child = Some(child);
    }

    /// `etcdctl args` against `endpoints` (with the client certificate under TLS).
    fn etcdctl_at(&self, endpoints: &str, args: &[&str]) -> Output {
        let mut cmd = self.command("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoints, "--command-timeout", "5s"]);
        if let Some(t) = &self.tls {
            cmd.arg("--cacert")
                .arg(&t.ca_file)
                .arg("--cert")
                .arg(&t.cert_file)
                .arg("--key")
                .arg(&t.key_file);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .output()
            .expect("etcdctl (Debian's etcd-client) is needed for these tests")
    }

    /// `etcdctl args` against member `i` alone.
    pub fn member_etcdctl(&self, i: usize, args: &[&str]) -> Output {
        self.etcdctl_at(&self.members[i].client_url.clone(), args)
    }

    /// `etcdctl args` against every member.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_at(&self.endpoint(), args)
    }

    /// `etcdctl args`, which must succeed; its standard output.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether member `i` answers `etcdctl endpoint health`.
    pub fn member_healthy(&self, i: usize) -> bool {
        let url = self.members[i].client_url.clone();
        self.etcdctl_at(&url, &["endpoint", "health"])
            .status
            .success()
    }

    /// Waits (60 s) until every running member is healthy (which needs a quorum).
    pub fn wait_healthy(&mut self) {
        if let Err(e) = self.try_wait_healthy() {
            panic!("{e}");
        }
    }

    /// The same; what went wrong, with the members' logs.
    fn try_wait_healthy(&mut self) -> Result<(), String> {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|i| self.members[*i].child.is_some())
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let exited = (self.members.iter_mut()).find_map(|m| {
                let status = m.child.as_mut()?.try_wait().ok()??;
                Some(format!("etcd member {} exited with {status}", m.name))
            });
            if let Some(exited) = exited {
                return Err(format!("{exited}:\n{}", self.logs()));
            }
            if running.iter().all(|i| self.member_healthy(*i)) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("etcd did not become healthy:\n{}", self.logs()));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops member `i` without closing anything (SIGSTOP): a member that no longer answers,
    /// as one behind a network path that went dead. `false` lets it go on (SIGCONT) and waits
    /// for every running member to be healthy.
    pub fn silence(&mut self, i: usize, silent: bool) {
        let Some(c) = &self.members[i].child else {
            return;
        };
        let signal = if silent { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &c.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} etcd member {i}");
        if !silent {
            self.wait_healthy();
        }
    }

    /// Starts member `i` again (killed first if it runs) on its data directory, and waits for
    /// it (and every other running member) to be healthy.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy();
    }

    /// The members' logs (for failure messages).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name)))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            out.push_str(&format!("--- {} (last 30 lines)\n", m.name));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Keys under `prefix` (`etcdctl get --prefix --keys-only`).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.etcdctl_ok(&["get", "--prefix", prefix, "--keys-only"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A CA, a serving certificate for `ip` (also a client one: etcd's gateway dials itself with
/// it) and a client certificate, written under `dir`.
fn write_tls(dir: &Path, ip: &str) -> ClientTls {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "etcd-test-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).expect("CA certificate").pem();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
    let leaf = |cn: &str, sans: Vec<SanType>, usages| {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names = sans;
        p.extended_key_usages = usages;
        let cert = p.signed_by(&key, &issuer).expect("certificate");
        (cert.pem(), key.serialize_pem())
    };
    let ip: std::net::IpAddr = ip.parse().expect("member address");
    let (server_crt, server_key) = leaf(
        "etcd",
        vec![
            SanType::IpAddress(ip),
            SanType::IpAddress([127, 0, 0, 1].into()),
        ],
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    );
    let (client_crt, client_key) =
        leaf("kinglet", vec![], vec![ExtendedKeyUsagePurpose::ClientAuth]);
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    };
    write("server.crt", &server_crt);
    write("server.key", &server_key);
    ClientTls {
        ca_file: write("ca.crt", &ca_pem),
        cert_file: write("client.crt", &client_crt),
        key_file: write("client.key", &client_key),
    }
}
