//! A node identity through the join endpoints, got as `kinglet agent` gets it (src/agent.rs):
//! `/cacerts` fetched without trust and checked against the token's CA hash, then
//! `/v1-kinglet/client-kubelet.crt` (and, if asked, `/v1-kinglet/serving-kubelet.crt`) with the
//! token's credentials as HTTP basic auth and the node's name and password in headers.
//! Shared by the join tests (`tests/join.rs`) and the simulated agents (`benches/agents.rs`).

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// What a join gives a node: the cluster CA and its client certificate (`system:node:<name>`,
/// group `system:nodes`).
#[derive(Clone)]
pub struct NodeIdentity {
    pub node: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A join token's parts: `K10<CA hash>::<user>:<secret>` (a bare secret is user `node`'s).
pub fn parse_token(token: &str) -> anyhow::Result<(String, String, String)> {
    let rest = token.trim().strip_prefix("K10").context("no K10 prefix")?;
    let (hash, cred) = rest.split_once("::").context("no `::` in the token")?;
    let (user, secret) = cred.split_once(':').unwrap_or(("node", cred));
    ensure!(hash.len() == 64 && !secret.is_empty(), "a malformed token");
    Ok((hash.to_ascii_lowercase(), user.into(), secret.into()))
}

/// Joins the server on loopback `port` as `node` with `password`: checks the CA against the
/// token before sending the secret, then gets the node's client certificate, and its serving
/// certificate too when `serving` (an agent asks for both).
pub async fn join(
    port: u16,
    token: &str,
    node: &str,
    password: &str,
    serving: bool,
) -> anyhow::Result<NodeIdentity> {
    use base64::Engine;
    use sha2::Digest;
    let (hash, user, secret) = parse_token(token)?;
    let unverified = Arc::new(kinglet_pki::tls::unverified_client_config()?);
    let (status, ca_pem) = get(port, unverified, "/cacerts", &[]).await?;
    ensure!(status == 200, "/cacerts: HTTP {status}");
    ensure!(
        hex::encode(sha2::Sha256::digest(ca_pem.as_bytes())) == hash,
        "the server's CA does not match the token's hash"
    );
    let trusted = Arc::new(trusting(&ca_pem)?);
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
    );
    let headers = [
        ("Authorization", auth.as_str()),
        ("Kinglet-Node-Name", node),
        ("Kinglet-Node-Password", password),
        ("Kinglet-Node-IP", "192.0.2.1"),
    ];
    let (status, body) = get(
        port,
        trusted.clone(),
        "/v1-kinglet/client-kubelet.crt",
        &headers,
    )
    .await?;
    if status != 200 {
        bail!("client certificate for {node}: HTTP {status}: {body}");
    }
    let (cert_pem, key_pem) = split_bundle(&body)?;
    if serving {
        let path = "/v1-kinglet/serving-kubelet.crt";
        let (status, body) = get(port, trusted, path, &headers).await?;
        if status != 200 {
            bail!("serving certificate for {node}: HTTP {status}: {body}");
        }
        split_bundle(&body)?;
    }
    Ok(NodeIdentity {
        node: node.into(),
        ca_pem,
        cert_pem,
        key_pem,
    })
}

/// The leaf certificate and the key of a `leaf, CA, key` PEM bundle (the join answer's layout).
pub fn split_bundle(bundle: &str) -> anyhow::Result<(String, String)> {
    const END: &str = "-----END CERTIFICATE-----";
    let leaf_end = bundle.find(END).context("no certificate")? + END.len();
    let key_start = bundle
        .find("-----BEGIN PRIVATE KEY-----")
        .context("no key")?;
    ensure!(
        leaf_end <= key_start,
        "the key comes before the certificate"
    );
    Ok((
        format!("{}\n", bundle[..leaf_end].trim()),
        bundle[key_start..].to_string(),
    ))
}

/// Client TLS trusting `ca_pem` only.
fn trusting(ca_pem: &str) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// One GET to `https://127.0.0.1:<port><path>` on its own connection: status and body.
async fn get(
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = ServerName::try_from("127.0.0.1")?;
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut req = http::Request::get(path)
            .header(http::header::HOST, format!("127.0.0.1:{port}"))
            .header(http::header::USER_AGENT, "kubelet/v1.33.0 (linux/amd64)");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = sender
            .send_request(req.body(http_body_util::Empty::<bytes::Bytes>::new())?)
            .await?;
        let status = resp.status().as_u16();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await?
            .to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .with_context(|| format!("GET {path}: timeout"))?
        .with_context(|| format!("GET {path}"))
}

/// A kube-rs client to the server on loopback `port` acting as the joined node, with a
/// kubelet's User-Agent, on its own connection.
pub fn node_client(port: u16, id: &NodeIdentity) -> anyhow::Result<kube::Client> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut cfg = kube::Config::new(format!("https://127.0.0.1:{port}").parse()?);
    cfg.root_cert = Some(
        CertificateDer::pem_slice_iter(id.ca_pem.as_bytes())
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()?,
    );
    cfg.auth_info.client_certificate_data = Some(b64(&id.cert_pem));
    cfg.auth_info.client_key_data = Some(b64(&id.key_pem).into());
    cfg.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static("kubelet/v1.33.0 (linux/amd64)"),
    ));
    Ok(kube::Client::try_from(cfg)?)
}
