//! `kinglet agent`: only the node side, joined to a remote server with a join token as k3s's
//! agent joins: fetch the server's CA without trusting it, check it against the token's hash
//! (no trust on first use; the secret is sent nowhere before), then ask for a node client
//! certificate and a kubelet serving certificate with the token's secret and this machine's
//! node password. Certificates are kept under `<data-dir>/agent/` and reused on restart, so an
//! agent restarted while the server is away still starts its node. The agent keeps a tunnel to
//! the server open (`tunnel`), through which the server reaches its kubelet.
//!
//! `--server` may list several servers (sharing one datastore): every request goes through the
//! agent's load balancer (`loadbalancer`) to one that answers, and a tunnel is kept to each.
//!
//! The node side carries no control plane: this module calls node-side crates only.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::cli::AgentArgs;
use crate::loadbalancer::LoadBalancer;
use kinglet_pki::CertKey;

use kinglet_core::join::{
    CA_PATH, CLIENT_CERT_PATH, CLUSTER_PATH, ClusterSettings, NODE_IP_HEADER, NODE_NAME_HEADER,
    NODE_PASSWORD_HEADER, SERVING_CERT_PATH,
};
/// Certificates are renewed at start when they expire sooner than this (k3s's 90 days).
const RENEW_BEFORE: Duration =
    Duration::from_secs(kinglet_pki::RENEW_WITHIN_DAYS as u64 * 24 * 3600);

pub fn run(mut args: AgentArgs) -> anyhow::Result<()> {
    crate::server::init_logging(args.debug);
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => bail!("a join token is needed: --token, KINGLET_TOKEN or --token-file"),
    };
    let token = Token::parse(&token)?;
    let servers = ServerUrl::parse_list(&args.server)?;
    // A bad registries.yaml stops the start before anything is set up.
    args.node.registries()?;
    let dir = args.data_dir.join("agent");
    create_private_dir(&dir)?;
    // One agent per data directory: two would fight over the node's containers.
    let _alone = kinglet_core::lockfile::hold_alone(
        &dir.join("lock"),
        &format!("data directory {}", args.data_dir.display()),
    )?;
    // The address this machine reaches the (first routable) server from is the node's unless
    // `--node-ip`.
    let routable = servers.iter().find_map(local_address_towards);
    let default_ip = routable.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let mut cfg = args.node.node_config(&args.data_dir, default_ip)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()?;
    runtime.block_on(async move {
        let lb = LoadBalancer::start(servers, Some(dir.join("servers.json"))).await?;
        let creds = credentials(&lb, &token, &dir, &cfg.node_name, cfg.node_ip).await?;
        if let Some(settings) = cluster_settings(&lb, &token, &creds, &dir).await {
            take_settings(&mut args.node, &settings);
            cfg = args.node.node_config(&args.data_dir, cfg.node_ip)?;
        }
        let host_check = args.node.host_check()?;
        cfg.serving = Some(kinglet_kubelet::Serving {
            cert: creds.serving.clone(),
            ca_pem: creds.ca_pem.clone(),
        });
        kinglet_network::host_check::refuse_foreign(&host_check).await?;
        let client = kube_client(&lb.local(), &creds)?;
        let tunnel = crate::tunnel::Tunnel {
            tls: Arc::new(crate::tunnel::client_tls(&creds.ca_pem, &creds.client)?),
            node: cfg.node_name.clone(),
            socket: cfg.run_dir.join(kinglet_kubelet::API_SOCKET),
        };
        tokio::spawn(crate::tunnel::run_to_each(tunnel, lb.tunnel_targets()));
        tokio::spawn(lb.clone().follow_endpoints(client.clone()));
        tracing::info!(server = %args.server, node = %cfg.node_name, "kinglet agent starting its node");
        cfg.offline_copy = true;
        let options = crate::server::NodeOptions {
            vxlan_iface: args.node.vxlan_iface.clone(),
        };
        // systemd's Type=notify: ready once the node is Ready, or once it has run from its
        // offline copy for a minute with the server out of reach.
        tokio::spawn(crate::notify::when_ready(
            client.clone(),
            Some(cfg.node_name.clone()),
            Some(Duration::from_secs(60)),
        ));
        crate::server::start_node(client, cfg, options);
        crate::server::shutdown_signal().await;
        tracing::info!("shutting down");
        Ok(())
    })
}

/// A join token: `K10<sha256 hex of the CA bundle>::<user>:<secret>` (an extra token is
/// `K10<hash>::<id>.<secret>`, sent as user `node`).
pub(crate) struct Token {
    pub ca_hash: String,
    user: String,
    pub secret: String,
}

impl Token {
    pub(crate) fn parse(s: &str) -> anyhow::Result<Token> {
        let bad = || {
            anyhow::anyhow!(
                "the join token must look like K10<CA hash>::server:<secret>, as `kinglet token` prints it"
            )
        };
        let rest = s.trim().strip_prefix("K10").ok_or_else(bad)?;
        let (hash, cred) = rest.split_once("::").ok_or_else(bad)?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let (user, secret) = match cred.split_once(':') {
            Some((u, s)) => (u.to_string(), s.to_string()),
            None => ("node".to_string(), cred.to_string()),
        };
        if user.is_empty() || secret.is_empty() {
            return Err(bad());
        }
        Ok(Token {
            ca_hash: hash.to_ascii_lowercase(),
            user,
            secret,
        })
    }
}

impl Token {
    /// The `Authorization` header that presents the token's secret.
    fn basic_auth(&self) -> String {
        format!(
            "Basic {}",
            base64(format!("{}:{}", self.user, self.secret).as_bytes())
        )
    }
}

/// The cluster's settings from the server, kept under `dir` for starts while it is away; the
/// kept copy when the server does not answer in time; `None` (the agent's own flags) when
/// there is neither.
async fn cluster_settings(
    server: &LoadBalancer,
    token: &Token,
    creds: &Credentials,
    dir: &Path,
) -> Option<ClusterSettings> {
    let kept = dir.join("cluster.json");
    let fetch = async {
        let tls = Arc::new(trusting(&creds.ca_pem)?);
        let auth = token.basic_auth();
        let (status, body) =
            https_get(server, tls, CLUSTER_PATH, &[("Authorization", &auth)]).await?;
        if status != 200 {
            bail!("{}", refusal(status, &body));
        }
        let settings: ClusterSettings =
            serde_json::from_str(&body).context("the server's answer")?;
        kinglet_pki::write_private(&kept, &body)?;
        Ok(settings)
    };
    // Not the join's patience: a restart while the server is away must not wait long.
    let fetched = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timeout")));
    match fetched {
        Ok(s) => Some(s),
        Err(e) => {
            let copy = std::fs::read_to_string(&kept)
                .ok()
                .and_then(|b| serde_json::from_str(&b).ok());
            let using = if copy.is_some() {
                "the kept copy"
            } else {
                "this agent's flags"
            };
            tracing::warn!("cluster settings from the server: {e:#}; using {using}");
            copy
        }
    }
}

/// Takes the server's cluster settings over the agent's flags, saying where they differ.
fn take_settings(node: &mut crate::cli::NodeArgs, s: &ClusterSettings) {
    let take = |flag: &str, ours: &mut String, theirs: String| {
        if *ours != theirs {
            tracing::info!("{flag}: the server's {theirs} (this agent's flag: {ours})");
            *ours = theirs;
        }
    };
    take(
        "--cluster-cidr",
        &mut node.cluster_cidr,
        s.cluster_cidr.clone(),
    );
    take(
        "--service-cidr",
        &mut node.service_cidr,
        s.service_cidr.clone(),
    );
    take(
        "--cluster-domain",
        &mut node.cluster_domain,
        s.cluster_domain.clone(),
    );
    if node.cluster_dns.is_some_and(|d| d != s.cluster_dns) {
        tracing::info!("--cluster-dns: the server's {}", s.cluster_dns);
    }
    node.cluster_dns = Some(s.cluster_dns);
}

/// `https://host[:port]` split for connecting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServerUrl {
    pub host: String,
    pub port: u16,
}

impl ServerUrl {
    /// `--server`: one URL or several separated by commas (each once, in the order given).
    fn parse_list(urls: &str) -> anyhow::Result<Vec<ServerUrl>> {
        let mut servers: Vec<ServerUrl> = Vec::new();
        for url in urls.split(',').map(str::trim) {
            if url.is_empty() {
                bail!(
                    "--server {urls:?}: expected https://<host>[:<port>], several separated by commas"
                );
            }
            let server = ServerUrl::parse(url)?;
            if !servers.contains(&server) {
                servers.push(server);
            }
        }
        Ok(servers)
    }

    pub(crate) fn parse(url: &str) -> anyhow::Result<ServerUrl> {
        let bad = || anyhow::anyhow!("--server {url:?}: expected https://<host>[:<port>]");
        let rest = url.strip_prefix("https://").ok_or_else(bad)?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, p) = v6.split_once(']').ok_or_else(bad)?;
            (h, p.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad())?,
            None => 443,
        };
        Ok(ServerUrl {
            host: host.to_string(),
            port,
        })
    }

    /// The `Host` header for this server: `host:port`, an IPv6 address in brackets.
    pub fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn addrs(&self) -> anyhow::Result<Vec<SocketAddr>> {
        Ok((self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {}", self.host))?
            .collect())
    }
}

/// The local address of a route to the server (no packet is sent).
fn local_address_towards(server: &ServerUrl) -> Option<IpAddr> {
    let to = *server.addrs().ok()?.first()?;
    let any: SocketAddr = if to.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = std::net::UdpSocket::bind(any).ok()?;
    sock.connect(to).ok()?;
    Some(sock.local_addr().ok()?.ip())
}

/// The node's certificates and the cluster CA.
struct Credentials {
    ca_pem: String,
    client: CertKey,
    serving: CertKey,
}

/// The stored certificates when they are whole, still valid for a while and from the CA the
/// token names; else a new join.
async fn credentials(
    server: &LoadBalancer,
    token: &Token,
    dir: &Path,
    node: &str,
    node_ip: IpAddr,
) -> anyhow::Result<Credentials> {
    match load_stored(dir, token, node) {
        Some((c, false)) => {
            tracing::info!("using the node certificates in {}", dir.display());
            Ok(c)
        }
        // Due for renewal but still valid: a server out of reach must not stop the node.
        Some((c, true)) => match join(server, token, dir, node, node_ip).await {
            Ok(renewed) => {
                tracing::info!("renewed the node certificates, due to expire");
                Ok(renewed)
            }
            Err(e) => {
                tracing::warn!("renewing the node certificates: {e:#}; using the current ones");
                Ok(c)
            }
        },
        None => join(server, token, dir, node, node_ip).await,
    }
}

/// The stored credentials, and whether they are due for renewal; `None` when unusable now.
fn load_stored(dir: &Path, token: &Token, node: &str) -> Option<(Credentials, bool)> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let ca_pem = read("server-ca.crt")?;
    if sha256_hex(ca_pem.as_bytes()) != token.ca_hash {
        return None;
    }
    let client = CertKey {
        cert_pem: read("client-kubelet.crt")?,
        key_pem: read("client-kubelet.key")?,
    };
    let serving = CertKey {
        cert_pem: read("serving-kubelet.crt")?,
        key_pem: read("serving-kubelet.key")?,
    };
    let valid_for = |margin| {
        valid_for_a_while(&ca_pem, &client.cert_pem, None, margin)
            && valid_for_a_while(&ca_pem, &serving.cert_pem, Some(node), margin)
    };
    // Valid for a while still, or else due for renewal; unusable when valid for less.
    let due = !valid_for(RENEW_BEFORE);
    (!due || valid_for(Duration::from_secs(300))).then_some((
        Credentials {
            ca_pem,
            client,
            serving,
        },
        due,
    ))
}

/// Whether `cert_pem` is signed by `ca_pem` and still valid `margin` from now: a client
/// certificate, or a serving one for `serving_name`.
fn valid_for_a_while(
    ca_pem: &str,
    cert_pem: &str,
    serving_name: Option<&str>,
    margin: Duration,
) -> bool {
    use rustls::client::danger::ServerCertVerifier;
    let check = || -> anyhow::Result<()> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c?)?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes())?;
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let at = rustls::pki_types::UnixTime::since_unix_epoch(since_epoch + margin);
        match serving_name {
            Some(name) => {
                let name = ServerName::try_from(name.to_string())?;
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()?
                    .verify_server_cert(&leaf, &[], &name, &[], at)?;
            }
            None => {
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()?
                    .verify_client_cert(&leaf, &[], at)?;
            }
        }
        Ok(())
    };
    check().is_ok()
}

/// Joins: checks the server's CA against the token before sending anything secret.
async fn join(
    server: &LoadBalancer,
    token: &Token,
    dir: &Path,
    node: &str,
    node_ip: IpAddr,
) -> anyhow::Result<Credentials> {
    let ca_pem = fetch_ca(&server.local())
        .await
        .map_err(|e| server.unreachable().map_or(e, anyhow::Error::msg))?;
    if sha256_hex(ca_pem.as_bytes()) != token.ca_hash {
        bail!(
            "the server's CA does not match the join token's hash: refusing to send it the token (wrong token or server?)"
        );
    }
    let trusted = Arc::new(trusting(&ca_pem)?);
    let password = node_password(dir)?;
    let auth = token.basic_auth();
    let headers = [
        ("Authorization", auth.as_str()),
        (NODE_NAME_HEADER, node),
        (NODE_PASSWORD_HEADER, password.as_str()),
        (NODE_IP_HEADER, &node_ip.to_string()),
    ];
    let mut issued = Vec::new();
    for path in [CLIENT_CERT_PATH, SERVING_CERT_PATH] {
        let (status, body) = https_get(server, trusted.clone(), path, &headers).await?;
        if status != 200 {
            bail!("joining as node {node:?}: {}", refusal(status, &body));
        }
        issued.push(split_cert_key(&body).with_context(|| format!("the answer of {path}"))?);
    }
    let (Some(serving), Some(client)) = (issued.pop(), issued.pop()) else {
        bail!("joining as node {node:?}: no certificates");
    };
    kinglet_pki::write_private(&dir.join("server-ca.crt"), &ca_pem)?;
    kinglet_pki::write_private(&dir.join("client-kubelet.crt"), &client.cert_pem)?;
    kinglet_pki::write_private(&dir.join("client-kubelet.key"), &client.key_pem)?;
    kinglet_pki::write_private(&dir.join("serving-kubelet.crt"), &serving.cert_pem)?;
    kinglet_pki::write_private(&dir.join("serving-kubelet.key"), &serving.key_pem)?;
    tracing::info!(node, "joined the cluster");
    Ok(Credentials {
        ca_pem,
        client,
        serving,
    })
}

/// A one-line reason from an error answer (a Status's message when it is one).
fn refusal(status: u16, body: &str) -> String {
    let why = status_message(body).unwrap_or_else(|| body.trim().replace('\n', " "));
    let what = match status {
        401 => "the server refused the token",
        403 => "the server refused this node",
        _ => "the server answered",
    };
    format!("{what} (HTTP {status}): {why}")
}

/// The `message` of a Status answer.
pub(crate) fn status_message(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v.get("message")?.as_str().map(str::to_string)
}

/// The leaf certificate (and its CA) and the key from a join answer.
fn split_cert_key(pem: &str) -> anyhow::Result<CertKey> {
    let at = pem
        .find("-----BEGIN PRIVATE KEY-----")
        .or_else(|| pem.find("-----BEGIN EC PRIVATE KEY-----"))
        .or_else(|| pem.find("-----BEGIN RSA PRIVATE KEY-----"))
        .context("no private key")?;
    let (certs, key_pem) = pem.split_at(at);
    // The leaf only: the CA after it is the one checked against the token.
    const END: &str = "-----END CERTIFICATE-----";
    let leaf_end = certs.find(END).context("no certificate before the key")? + END.len();
    let cert_pem = format!("{}\n", certs[..leaf_end].trim());
    anyhow::ensure!(
        CertificateDer::from_pem_slice(cert_pem.as_bytes()).is_ok(),
        "an unreadable certificate"
    );
    Ok(CertKey {
        cert_pem,
        key_pem: key_pem.to_string(),
    })
}

/// Client TLS trusting `ca_pem` only, presenting no certificate.
fn trusting(ca_pem: &str) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.context("the server's CA")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// One GET over TLS (hyper) to a server through the load balancer; see [`https_get_from`].
async fn https_get(
    lb: &LoadBalancer,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    // The load balancer closes at once what it could forward nowhere: say why.
    https_get_from(&lb.local(), tls, path, headers)
        .await
        .map_err(|e| lb.unreachable().map_or(e, anyhow::Error::msg))
}

/// One GET over TLS (hyper) to `server`: the status and the body (at most 1 MiB), each step
/// bounded. The server's certificate is checked for [`kinglet_pki::API_SERVER_NAME`], which
/// every API server's certificate carries and no node's may.
pub(crate) async fn https_get_from(
    server: &ServerUrl,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let step = Duration::from_secs(30);
    let addrs = server.addrs()?;
    let tcp = tokio::time::timeout(step, tokio::net::TcpStream::connect(&addrs[..]))
        .await
        .with_context(|| format!("connecting to {}: timeout", server.host))?
        .with_context(|| format!("connecting to {}", server.host))?;
    let name = ServerName::try_from(kinglet_pki::API_SERVER_NAME)?;
    let stream = tokio::time::timeout(
        step,
        tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    .context("TLS handshake: timeout")?
    .context("TLS handshake")?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = http::Request::get(path)
        .header(http::header::HOST, server.host_header())
        .header(
            http::header::USER_AGENT,
            kinglet_core::user_agent("kubelet"),
        );
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = tokio::time::timeout(step, sender.send_request(req))
        .await
        .context("waiting for the answer: timeout")??;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(
        step,
        http_body_util::BodyExt::collect(http_body_util::Limited::new(resp.into_body(), 1 << 20)),
    )
    .await
    .context("reading the answer: timeout")?
    .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
    .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The CA a server serves at `/cacerts`, not yet trusted: the caller checks it against a
/// token's hash before sending anything secret.
pub(crate) async fn fetch_ca(server: &ServerUrl) -> anyhow::Result<String> {
    let unverified = Arc::new(kinglet_pki::tls::unverified_client_config()?);
    let (status, ca_pem) = https_get_from(server, unverified, CA_PATH, &[])
        .await
        .context("fetching the server's CA from /cacerts")?;
    if status != 200 {
        bail!("fetching the server's CA from /cacerts: HTTP {status}");
    }
    Ok(ca_pem)
}

/// This machine's node password: random on first run, then kept (0600) so the server knows it.
fn node_password(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("node-password");
    if let Ok(p) = std::fs::read_to_string(&path)
        && !p.trim().is_empty()
    {
        return Ok(p.trim().to_string());
    }
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    kinglet_pki::write_private(&path, &format!("{password}\n"))?;
    Ok(password)
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// A kube-rs client to the servers (through the load balancer at `server`) as this node:
/// trusting the cluster CA, presenting the node's client certificate, introducing itself as a
/// kubelet.
fn kube_client(server: &ServerUrl, creds: &Credentials) -> anyhow::Result<kube::Client> {
    let url = format!("https://{}", server.host_header());
    let mut cfg = kube::Config::new(url.parse().with_context(|| url.clone())?);
    // Whichever server the load balancer reaches, it must be an API server.
    cfg.tls_server_name = Some(kinglet_pki::API_SERVER_NAME.into());
    cfg.root_cert = Some(
        CertificateDer::pem_slice_iter(creds.ca_pem.as_bytes())
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()
            .context("the cluster CA")?,
    );
    cfg.auth_info.client_certificate_data = Some(base64(creds.client.cert_pem.as_bytes()));
    cfg.auth_info.client_key_data = Some(base64(creds.client.key_pem.as_bytes()).into());
    cfg.headers.push((
        "user-agent".parse().context("header name")?,
        kinglet_core::user_agent("kubelet")
            .parse()
            .context("User-Agent")?,
    ));
    // Writes and watches must never end the node: kube-rs retries, watchers re-list.
    cfg.read_timeout = Some(Duration::from_secs(295));
    Ok(kube::Client::try_from(cfg)?)
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let hash = "ab".repeat(32);
        let t = Token::parse(&format!("K10{hash}::server:s3cret\n")).unwrap();
        assert_eq!(
            (t.ca_hash.as_str(), t.user.as_str()),
            (hash.as_str(), "server")
        );
        assert_eq!(t.secret, "s3cret");
        let t = Token::parse(&format!("K10{hash}::abcdef.0123456789abcdef")).unwrap();
        assert_eq!(
            (t.user.as_str(), t.secret.as_str()),
            ("node", "abcdef.0123456789abcdef")
        );
        for bad in [
            "s3cret",
            "K10abc::server:x",
            &format!("K10{hash}::server:"),
            &format!("K10{hash}"),
        ] {
            assert!(Token::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_urls() {
        let u = ServerUrl::parse("https://10.0.0.1:6443").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.1", 6443));
        let u = ServerUrl::parse("https://[fd00::1]:7443/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("fd00::1", 7443));
        assert_eq!(u.host_header(), "[fd00::1]:7443");
        let u = ServerUrl::parse("https://10.0.0.1:6443").unwrap();
        assert_eq!(u.host_header(), "10.0.0.1:6443");
        assert_eq!(ServerUrl::parse("https://gw").unwrap().port, 443);
        assert!(ServerUrl::parse("http://gw:6443").is_err());
        assert!(ServerUrl::parse("https://gw:x").is_err());
    }

    #[test]
    fn server_lists() {
        let one = ServerUrl::parse_list("https://10.0.0.1:6443").unwrap();
        assert_eq!(one, [ServerUrl::parse("https://10.0.0.1:6443").unwrap()]);
        let hosts = |list: &str| -> Vec<String> {
            let servers = ServerUrl::parse_list(list).unwrap();
            servers.iter().map(ServerUrl::host_header).collect()
        };
        assert_eq!(
            hosts("https://b:6443, https://[fd00::1]:6443,https://b:6443"),
            ["b:6443", "[fd00::1]:6443"]
        );
        for bad in [
            "",
            "https://a:6443,",
            "https://a:6443,,https://b:6443",
            "https://a:6443,http://b:6443",
            "https://a:6443,b:6443",
        ] {
            let e = ServerUrl::parse_list(bad).unwrap_err().to_string();
            assert!(e.starts_with("--server"), "{bad}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn hashes_and_base64() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(base64(b"node:s"), "bm9kZTpz");
        assert_eq!(base64(b"node:se"), "bm9kZTpzZQ==");
        assert_eq!(base64(b"node:sec"), "bm9kZTpzZWM=");
    }

    #[test]
    fn node_password_is_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = node_password(dir.path()).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(node_password(dir.path()).unwrap(), a);
        let mode = std::fs::metadata(dir.path().join("node-password"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(node_password(other.path()).unwrap(), a);
    }
}
