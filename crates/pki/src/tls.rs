//! HTTPS serving: rustls with optional client certificates (verified against the cluster CA),
//! HTTP/2 and HTTP/1.1 (with upgrades), and the peer's identity handed to the router.

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tower::ServiceExt;

use crate::Pki;
use crate::identity::PeerUser;
use crate::identity::user_from_cert;

fn certs(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parsing certificate PEM")
}

fn key(pem: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut pem.as_bytes())?
        .ok_or_else(|| anyhow::anyhow!("no private key in PEM"))
}

/// The certificates of `ca_pem` as trust roots.
fn roots(ca_pem: &str) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem)? {
        roots.add(c)?;
    }
    Ok(roots)
}

/// A certificate and its key that can be replaced while in use: renewed while the server runs,
/// the next handshakes present the new one.
#[derive(Debug)]
pub struct LiveCert(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl LiveCert {
    /// `cert` presented with `chain_pem` (its CA) after it.
    pub fn new(cert: &crate::CertKey, chain_pem: &str) -> anyhow::Result<Arc<LiveCert>> {
        Ok(Arc::new(LiveCert(std::sync::RwLock::new(certified(
            cert, chain_pem,
        )?))))
    }

    /// Presents `cert` from the next handshake on.
    pub fn replace(&self, cert: &crate::CertKey, chain_pem: &str) -> anyhow::Result<()> {
        let new = certified(cert, chain_pem)?;
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(())
    }

    /// The certificate presented now (DER).
    pub fn current(&self) -> CertificateDer<'static> {
        self.get().cert[0].clone()
    }

    fn get(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn certified(
    cert: &crate::CertKey,
    chain_pem: &str,
) -> anyhow::Result<Arc<rustls::sign::CertifiedKey>> {
    let provider = rustls::crypto::ring::default_provider();
    let signer = provider
        .key_provider
        .load_private_key(key(&cert.key_pem)?)?;
    let mut chain = certs(&cert.cert_pem)?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in PEM");
    chain.extend(certs(chain_pem)?);
    let certified = rustls::sign::CertifiedKey::new(chain, signer);
    // A certificate whose key is another's would fail every handshake: refuse it now.
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        certified.keys_match()
    {
        anyhow::bail!("the certificate is not for its key");
    }
    Ok(Arc::new(certified))
}

impl rustls::server::ResolvesServerCert for LiveCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for LiveCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The API server's TLS: client certificates from the cluster CA identify users, but are not
/// required (tokens work too). It presents `serving`, which may be replaced while it runs.
pub fn server_config(pki: &Pki, serving: Arc<LiveCert>) -> anyhow::Result<rustls::ServerConfig> {
    let mut config = server_config_with(&pki.ca.cert_pem, serving, false)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// TLS serving `serving`'s certificate; with `require_client_cert`, only peers with a
/// certificate from the cluster CA get in (the kubelet API).
pub fn server_config_for(
    ca_pem: &str,
    serving: &crate::CertKey,
    require_client_cert: bool,
) -> anyhow::Result<rustls::ServerConfig> {
    server_config_with(ca_pem, LiveCert::new(serving, ca_pem)?, require_client_cert)
}

/// The cipher suites of a server on a machine with AES instructions or without, in the
/// server's order of preference. As Go's servers (upstream's) choose where it matters:
/// without AES instructions (a Raspberry Pi 4) ChaCha20 comes first whatever the client asks
/// (curl and OpenSSL ask for AES-256 first, which would run in software, several times
/// slower: the server's order wins then, see [`server_config_on`]); with them the client's
/// order stands, so a client without AES instructions that asks for ChaCha20 first gets it.
fn cipher_choice(aes_hardware: bool) -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite as S;
    let mut provider = rustls::crypto::ring::default_provider();
    if !aes_hardware {
        provider.cipher_suites.sort_by_key(|s| {
            !matches!(
                s.suite(),
                S::TLS13_CHACHA20_POLY1305_SHA256
                    | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                    | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            )
        });
    }
    provider
}

#[cfg(target_arch = "x86_64")]
fn has_aes_hardware() -> bool {
    std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
}

#[cfg(target_arch = "aarch64")]
fn has_aes_hardware() -> bool {
    std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn has_aes_hardware() -> bool {
    false
}

fn server_config_with(
    ca_pem: &str,
    serving: Arc<LiveCert>,
    require_client_cert: bool,
) -> anyhow::Result<rustls::ServerConfig> {
    server_config_on(ca_pem, serving, require_client_cert, has_aes_hardware())
}

/// [`server_config_with`] for a machine with AES instructions or without.
fn server_config_on(
    ca_pem: &str,
    serving: Arc<LiveCert>,
    require_client_cert: bool,
    aes_hardware: bool,
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(cipher_choice(aes_hardware));
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider.clone());
    let verifier = if require_client_cert {
        builder.build()?
    } else {
        builder.allow_unauthenticated().build()?
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving);
    config.ignore_client_order = !aes_hardware;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Client TLS towards kubelets: trusts the cluster CA, presents `client`.
pub fn client_config(
    ca_pem: &str,
    client: &crate::CertKey,
) -> anyhow::Result<rustls::ClientConfig> {
    live_client_config(ca_pem, LiveCert::new(client, "")?)
}

/// Client TLS trusting `ca_pem`, presenting `client`, which may be replaced while in use.
pub fn live_client_config(
    ca_pem: &str,
    client: Arc<LiveCert>,
) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = roots(ca_pem)?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_cert_resolver(client))
}

/// Serves `router` over TLS on every connection `listener` accepts.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                keepalive(&tcp, false);
                tokio::spawn(serve_connection(acceptor.clone(), tcp, router.clone()));
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

/// Keepalives on a long-lived connection, so that an idle peer whose network dropped silently
/// is noticed within about 30 s (an agent's tunnel, a watch). With `give_up`, data left
/// unacknowledged (or a zero window) for as long ends the connection too: right for a tunnel
/// the agent opens again, wrong for a client that merely stops reading for a while (a paused
/// `kubectl logs -f`), so servers leave it off.
pub fn keepalive(tcp: &tokio::net::TcpStream, give_up: bool) {
    use nix::sys::socket::{setsockopt, sockopt};
    let set = || -> nix::Result<()> {
        setsockopt(tcp, sockopt::KeepAlive, &true)?;
        setsockopt(tcp, sockopt::TcpKeepIdle, &15)?;
        setsockopt(tcp, sockopt::TcpKeepInterval, &5)?;
        setsockopt(tcp, sockopt::TcpKeepCount, &3)?;
        if give_up {
            setsockopt(tcp, sockopt::TcpUserTimeout, &30_000)?;
        }
        Ok(())
    };
    if let Err(e) = set() {
        tracing::debug!("TCP keepalive: {e}");
    }
}

/// [`serve`] on a Unix socket: the same TLS, client certificates and router (the kubelet API
/// as an agent's tunnel reaches it).
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                tokio::spawn(serve_connection(acceptor.clone(), conn, router.clone()));
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

/// A failed accept (out of file descriptors, say): logged, and a pause before the next.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!("accept failed: {e}");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

/// One connection: the TLS handshake (bounded), then HTTP/1.1 (with upgrades) or HTTP/2, with
/// the peer's certificate identity on every request.
async fn serve_connection<IO>(acceptor: tokio_rustls::TlsAcceptor, io: IO, router: Router)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(Ok(stream)) =
        tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(io)).await
    else {
        return;
    };
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| user_from_cert(c.as_ref()))
        .map(Arc::new);
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(PeerUser(peer.clone()));
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await;
}

/// Client TLS that verifies no server certificate and presents none, for the peers upstream
/// does not verify either (HTTPS probes, proxied `https:` pods and services). The server must
/// still prove it holds the key of the certificate it shows.
pub fn unverified_client_config() -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(AnyServerCertificate::new())
        .with_no_client_auth())
}

/// Accepts any server certificate while checking the handshake's signatures against it (see
/// [`unverified_client_config`]; also `insecureSkipTLSVerify`).
#[derive(Debug)]
pub struct AnyServerCertificate(Arc<rustls::crypto::CryptoProvider>);

impl AnyServerCertificate {
    pub fn new() -> Arc<AnyServerCertificate> {
        Arc::new(AnyServerCertificate(Arc::new(
            rustls::crypto::ring::default_provider(),
        )))
    }
}

impl rustls::client::danger::ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GET of `/` over `io` with TLS from `client` (the server named 127.0.0.1): the body.
    async fn get<IO>(io: IO, client: rustls::ClientConfig) -> anyhow::Result<String>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, io)
            .await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::get("/")
            .header("host", "127.0.0.1")
            .body(axum::body::Body::empty())?;
        let resp = sender.send_request(req).await?;
        let body = axum::body::to_bytes(axum::body::Body::new(resp.into_body()), 1 << 16).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn without_aes_instructions_the_server_picks_chacha20_as_go_servers_do() {
        use rustls::CipherSuite as S;
        let dir = tempfile::tempdir().unwrap();
        let sans = crate::serving_sans("h", &[], &[], "10.43.0.1".parse().unwrap(), "c.local");
        let pki = Pki::load_or_create(dir.path(), &sans).unwrap();
        let (a128, a256, chacha) = {
            use rustls::crypto::ring::cipher_suite::*;
            (
                TLS13_AES_128_GCM_SHA256,
                TLS13_AES_256_GCM_SHA384,
                TLS13_CHACHA20_POLY1305_SHA256,
            )
        };
        // (AES instructions on the server, the client's order, the suite agreed.)
        let cases = [
            (
                false,
                [a256, a128, chacha],
                S::TLS13_CHACHA20_POLY1305_SHA256,
            ),
            (
                false,
                [a128, a256, chacha],
                S::TLS13_CHACHA20_POLY1305_SHA256,
            ),
            (true, [a256, a128, chacha], S::TLS13_AES_256_GCM_SHA384),
            (
                true,
                [chacha, a256, a128],
                S::TLS13_CHACHA20_POLY1305_SHA256,
            ),
        ];
        for (aes_hardware, order, expected) in cases {
            let serving = LiveCert::new(&pki.serving, &pki.ca.cert_pem).unwrap();
            let server = server_config_on(&pki.ca.cert_pem, serving, false, aes_hardware).unwrap();
            let mut provider = rustls::crypto::ring::default_provider();
            provider.cipher_suites = order.to_vec();
            let client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots(&pki.ca.cert_pem).unwrap())
                .with_no_client_auth();
            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
            let accepted = tokio::spawn(async move { acceptor.accept(server_io).await });
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, client_io)
                .await
                .unwrap();
            accepted.await.unwrap().unwrap();
            let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
            assert_eq!(
                suite, expected,
                "AES instructions {aes_hardware}, client {order:?}"
            );
        }
    }

    #[tokio::test]
    async fn unix_socket_serves_the_same_tls_and_peer_identity() {
        let dir = tempfile::tempdir().unwrap();
        let sans = crate::serving_sans("h", &[], &[], "10.43.0.1".parse().unwrap(), "c.local");
        let pki = Pki::load_or_create(dir.path(), &sans).unwrap();
        let tls = Arc::new(server_config_for(&pki.ca.cert_pem, &pki.serving, true).unwrap());
        let router = Router::new().route(
            "/",
            axum::routing::get(|req: axum::extract::Request| async move {
                match req.extensions().get::<PeerUser>() {
                    Some(PeerUser(Some(u))) => u.name.clone(),
                    _ => "nobody".to_string(),
                }
            }),
        );
        let path = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(serve_unix(listener, tls, router));

        let client = client_config(&pki.ca.cert_pem, &pki.kubelet_client).unwrap();
        let unix = tokio::net::UnixStream::connect(&path).await.unwrap();
        assert_eq!(get(unix, client).await.unwrap(), crate::KUBELET_CLIENT_USER);
        // The client certificate is required here as on TCP.
        let roots = roots(&pki.ca.cert_pem).unwrap();
        let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let unix = tokio::net::UnixStream::connect(&path).await.unwrap();
        assert!(get(unix, anonymous).await.is_err());
    }
}
