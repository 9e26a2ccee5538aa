//! A real single-member etcd for the store's tests: on free loopback ports, in a temporary
//! data directory, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct EtcdServer {
    child: Child,
    pub url: String,
    bin: PathBuf,
    args: Vec<String>,
    tls: bool,
    dir: tempfile::TempDir,
}

/// The etcd binary: on PATH, else Debian's place.
fn etcd_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    });
    let bin = on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    assert!(
        bin.is_file(),
        "etcd is not installed: the etcd backend's tests need it (Debian's etcd-server package; tests/run installs it)"
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// TLS files for an etcd that serves https and asks clients for certificates.
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Tls {
    /// A CA, a server certificate for 127.0.0.1 and a client certificate, written to `dir`.
    pub fn generate(dir: &std::path::Path) -> Tls {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            SanType,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |name: &str, purpose: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
            p.subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            p.extended_key_usages = vec![purpose];
            (
                p.signed_by(&key, &issuer).unwrap().pem(),
                key.serialize_pem(),
            )
        };
        let (server_pem, server_key) = leaf("etcd", ExtendedKeyUsagePurpose::ServerAuth);
        let (client_pem, client_key) = leaf("kinglet", ExtendedKeyUsagePurpose::ClientAuth);
        let write = |name: &str, pem: &str| {
            let p = dir.join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        Tls {
            ca: write("ca.crt", &ca_pem),
            cert: write("server.crt", &server_pem),
            key: write("server.key", &server_key),
            client_cert: write("client.crt", &client_pem),
            client_key: write("client.key", &client_key),
        }
    }
}

impl EtcdServer {
    pub async fn start() -> EtcdServer {
        EtcdServer::start_with(None).await
    }

    /// Starts etcd, serving https with client certificates when `tls` is given.
    pub async fn start_with(tls: Option<&Tls>) -> EtcdServer {
        let bin = etcd_binary();
        // A port taken between choosing and binding makes etcd exit: try again.
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let (client, peer) = (free_port(), free_port());
            let scheme = if tls.is_some() { "https" } else { "http" };
            let url = format!("{scheme}://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let mut args = Vec::new();
            if let Some(tls) = tls {
                args.push(format!("--cert-file={}", tls.cert.display()));
                args.push(format!("--key-file={}", tls.key.display()));
                args.push(format!("--trusted-ca-file={}", tls.ca.display()));
                args.push("--client-cert-auth".to_string());
            }
            args.extend([
                "--name=test".to_string(),
                format!("--data-dir={}", dir.path().join("data").display()),
                format!("--listen-client-urls={url}"),
                format!("--advertise-client-urls={url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=test={peer_url}"),
            ]);
            let mut child = spawn(&bin, &args, &dir);
            if ready(&mut child, &url, tls).await {
                return EtcdServer {
                    child,
                    url,
                    bin,
                    args,
                    tls: tls.is_some(),
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.path().join("etcd.log")).unwrap_or_default();
            eprintln!("etcd did not start; its log:\n{log}");
        }
        panic!("etcd did not start (see its logs above)");
    }

    /// Kills the member (SIGKILL) and starts it again on its data, at the same address.
    pub async fn restart(&mut self) {
        assert!(!self.tls, "restart is for plain http members");
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.bin, &self.args, &self.dir);
        assert!(
            ready(&mut self.child, &self.url, None).await,
            "etcd did not come back: {}",
            std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
        );
    }
}

fn spawn(bin: &Path, args: &[String], dir: &tempfile::TempDir) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("etcd.log"))
        .expect("etcd's log file");
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("etcd's log file"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()))
}

/// Waits until the member answers; false if it exits or never does.
async fn ready(child: &mut Child, url: &str, tls: Option<&Tls>) -> bool {
    for _ in 0..600 {
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        if answers(url, tls).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn answers(url: &str, tls: Option<&Tls>) -> bool {
    let mut options =
        etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_millis(500));
    if let Some(tls) = tls {
        let read = |p: &PathBuf| std::fs::read(p).unwrap();
        options = options.with_tls(
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)))
                .identity(etcd_client::Identity::from_pem(
                    read(&tls.client_cert),
                    read(&tls.client_key),
                )),
        );
    }
    let attempt = async {
        let mut c = etcd_client::Client::connect([url], Some(options))
            .await
            .ok()?;
        c.get("probe", None).await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(_))
    )
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real etcd cluster of several members on free loopback ports (plain http), each in its own
/// data directory; killed when dropped.
pub struct EtcdCluster {
    bin: PathBuf,
    pub members: Vec<ClusterMember>,
}

pub struct ClusterMember {
    pub url: String,
    args: Vec<String>,
    dir: tempfile::TempDir,
    /// None while the member is down.
    child: Option<Child>,
}

impl EtcdCluster {
    pub async fn start(size: usize) -> EtcdCluster {
        let bin = etcd_binary();
        // A port taken between choosing and binding makes a member exit: try again.
        for _ in 0..3 {
            let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
            let initial = ports
                .iter()
                .enumerate()
                .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
                .collect::<Vec<_>>()
                .join(",");
            let mut members: Vec<ClusterMember> = ports
                .iter()
                .enumerate()
                .map(|(i, (client, peer))| {
                    let dir = tempfile::tempdir().expect("a temporary directory");
                    let url = format!("http://127.0.0.1:{client}");
                    let peer_url = format!("http://127.0.0.1:{peer}");
                    let args = vec![
                        format!("--name=m{i}"),
                        format!("--data-dir={}", dir.path().join("data").display()),
                        format!("--listen-client-urls={url}"),
                        format!("--advertise-client-urls={url}"),
                        format!("--listen-peer-urls={peer_url}"),
                        format!("--initial-advertise-peer-urls={peer_url}"),
                        format!("--initial-cluster={initial}"),
                        "--initial-cluster-state=new".to_string(),
                        "--initial-cluster-token=kinglet-store-test".to_string(),
                    ];
                    ClusterMember {
                        url,
                        args,
                        dir,
                        child: None,
                    }
                })
                .collect();
            // All at once: each waits for the others to form a quorum.
            for m in &mut members {
                m.child = Some(spawn(&bin, &m.args, &m.dir));
            }
            let mut all = true;
            for m in &mut members {
                let child = m.child.as_mut().expect("started");
                all &= ready(child, &m.url, None).await;
            }
            let cluster = EtcdCluster {
                bin: bin.clone(),
                members,
            };
            if all {
                return cluster;
            }
            for m in &cluster.members {
                let log =
                    std::fs::read_to_string(m.dir.path().join("etcd.log")).unwrap_or_default();
                eprintln!("etcd member {} did not start; its log:\n{log}", m.url);
            }
        }
        panic!("the etcd cluster did not start (see its logs above)");
    }

    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.url.clone()).collect()
    }

    fn index(&self, url: &str) -> usize {
        self.members
            .iter()
            .position(|m| m.url == url)
            .unwrap_or_else(|| panic!("{url} is no member"))
    }

    /// Kills the member at `url` (SIGKILL).
    pub fn kill(&mut self, url: &str) {
        let i = self.index(url);
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the member at `url` again on its data, and waits until it answers.
    pub async fn revive(&mut self, url: &str) {
        let i = self.index(url);
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "{url} is running");
        let mut child = spawn(&self.bin, &m.args, &m.dir);
        assert!(
            ready(&mut child, &m.url, None).await,
            "etcd member {url} did not come back: {}",
            std::fs::read_to_string(m.dir.path().join("etcd.log")).unwrap_or_default()
        );
        m.child = Some(child);
    }

    /// The member that leads the cluster now (as the first member that answers says).
    pub async fn leader(&self) -> String {
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let Ok(mut c) = etcd_client::Client::connect([m.url.as_str()], None).await else {
                continue;
            };
            let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(2), c.status()).await
            else {
                continue;
            };
            let leader = status.leader();
            for other in &self.members {
                let Ok(mut c) = etcd_client::Client::connect([other.url.as_str()], None).await
                else {
                    continue;
                };
                if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), c.status()).await
                    && s.header().map(|h| h.member_id()) == Some(leader)
                {
                    return other.url.clone();
                }
            }
        }
        panic!("no member of the cluster names a leader");
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
