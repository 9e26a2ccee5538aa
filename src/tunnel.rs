//! The agent's end of its tunnel to the server, as k3s's agents keep a remotedialer session: one
//! connection that the agent opens with its node client certificate (`GET /v1-kinglet/connect`,
//! upgraded to `kinglet-tunnel`), over which the server opens a yamux stream for each
//! connection it wants to the node's kubelet. Each stream is piped to the kubelet API's local
//! socket (`<run-dir>/kubelet.sock`), so the server's TLS, client certificate and authorization
//! run end to end exactly as over TCP, and the node needs no inbound port.
//!
//! The tunnel is kept up: it reconnects with a capped backoff when the server restarts or the
//! network drops (TCP keepalives notice a silent drop). With several servers the agent keeps
//! one tunnel to each (a server reaches only the nodes whose tunnels end at it), following the
//! load balancer's list of servers as k3s's agents follow theirs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use tokio::sync::watch;

use crate::agent::ServerUrl;
use kinglet_core::join::{CONNECT_PATH, TUNNEL_PROTOCOL};
/// Each step of connecting (TCP, TLS, the upgrade) is bounded by this.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A tunnel that stayed up this long was healthy: the next reconnection starts from the
/// shortest wait again.
const HEALTHY: Duration = Duration::from_secs(60);
/// Servers join and leave the list in bursts while one starts or stops: tunnels follow the
/// list once it has been still this long (k3s waits as long).
const SETTLE: Duration = Duration::from_secs(1);

/// As whom the tunnels connect, and where their streams go.
pub struct Tunnel {
    /// Trusts the cluster CA and presents the node's client certificate.
    pub tls: Arc<rustls::ClientConfig>,
    pub node: String,
    /// The kubelet API's Unix socket.
    pub socket: PathBuf,
}

/// Client TLS for the tunnel: `client_config` speaking HTTP/1.1, whose upgrade the tunnel is.
pub fn client_tls(
    ca_pem: &str,
    client: &kinglet_pki::CertKey,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut tls = kinglet_pki::tls::client_config(ca_pem, client)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// Keeps a tunnel open to every server `servers` lists, as the list changes, forever.
pub async fn run_to_each(t: Tunnel, mut servers: watch::Receiver<Vec<ServerUrl>>) {
    let t = Arc::new(t);
    let mut open: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let listed = servers.borrow_and_update().clone();
        open.retain(|server, task| {
            let keep = listed.iter().any(|u| u.host_header() == *server);
            if !keep {
                task.abort();
                tracing::info!(%server, "tunnel to the server closed: no longer listed");
            }
            keep
        });
        for url in listed {
            open.entry(url.host_header())
                .or_insert_with(|| tokio::spawn(run(t.clone(), url)));
        }
        if servers.changed().await.is_err() {
            // The list cannot change any more: the tunnels stay as they are.
            return std::future::pending().await;
        }
        tokio::time::sleep(SETTLE).await;
    }
}

/// Keeps the tunnel to `server` up, forever.
async fn run(t: Arc<Tunnel>, server: ServerUrl) {
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        match connect(&t, &server).await {
            Ok(conn) => {
                tracing::info!(server = %server.host_header(), node = %t.node, "tunnel to the server open");
                backoff.succeeded();
                match serve(conn, &t.socket).await {
                    Ok(()) => tracing::info!("tunnel to the server closed; reconnecting"),
                    Err(e) => tracing::info!("tunnel to the server closed: {e}; reconnecting"),
                }
                if started.elapsed() >= HEALTHY {
                    backoff.reset();
                }
            }
            Err(e) => backoff.failed(&format!("{}: {e:#}", server.host_header())),
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// Waits between attempts, doubling up to `MAX_BACKOFF`; warns once per run of identical
/// failures rather than at every attempt.
#[derive(Default)]
struct Backoff {
    delay: Duration,
    last_error: Option<String>,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        self.delay = (self.delay * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
        // Up to a quarter more, so that agents cut off together do not all return together.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        self.delay + self.delay.mul_f64(f64::from(nanos % 1000) / 4000.0)
    }

    fn failed(&mut self, error: &str) {
        if self.last_error.as_deref() == Some(error) {
            tracing::debug!("tunnel to the server: {error}");
        } else {
            tracing::warn!("tunnel to the server: {error}; retrying");
            self.last_error = Some(error.to_string());
        }
    }

    fn succeeded(&mut self) {
        self.last_error = None;
    }

    fn reset(&mut self) {
        self.delay = Duration::ZERO;
    }
}

type Upgraded = tokio_util::compat::Compat<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// Connects, authenticates and upgrades: the yamux session, on the agent's (accepting) side.
async fn connect(t: &Tunnel, server: &ServerUrl) -> anyhow::Result<yamux::Connection<Upgraded>> {
    let tcp = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio::net::TcpStream::connect((server.host.as_str(), server.port)),
    )
    .await
    .context("connecting: timeout")?
    .with_context(|| format!("connecting to {}", server.host_header()))?;
    let _ = tcp.set_nodelay(true);
    // A network that drops silently is noticed and the tunnel made again when it is back.
    kinglet_pki::tls::keepalive(&tcp, true);
    // Checked for a name only API servers carry, not for the address: a node's serving
    // certificate (same CA) may name another server's address.
    let name = rustls::pki_types::ServerName::try_from(kinglet_pki::API_SERVER_NAME)?;
    let tls = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio_rustls::TlsConnector::from(t.tls.clone()).connect(name, tcp),
    )
    .await
    .context("TLS handshake: timeout")?
    .context("TLS handshake")?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let req = http::Request::get(CONNECT_PATH)
        .header(http::header::HOST, server.host_header())
        .header(
            http::header::USER_AGENT,
            kinglet_core::user_agent("kubelet"),
        )
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, TUNNEL_PROTOCOL)
        .header(kinglet_core::join::NODE_NAME_HEADER, &t.node)
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = tokio::time::timeout(STEP_TIMEOUT, sender.send_request(req))
        .await
        .context("waiting for the upgrade: timeout")??;
    let status = resp.status();
    if status != http::StatusCode::SWITCHING_PROTOCOLS {
        let body = tokio::time::timeout(
            STEP_TIMEOUT,
            http_body_util::BodyExt::collect(http_body_util::Limited::new(
                resp.into_body(),
                1 << 16,
            )),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| b.to_bytes())
        .unwrap_or_default();
        bail!(
            "the server refused the tunnel (HTTP {}): {}",
            status.as_u16(),
            message(&body)
        );
    }
    let upgraded = tokio::time::timeout(STEP_TIMEOUT, hyper::upgrade::on(resp))
        .await
        .context("upgrading: timeout")??;
    // The server opens every stream: the agent is yamux's server.
    Ok(yamux::Connection::new(
        hyper_util::rt::TokioIo::new(upgraded).compat(),
        yamux::Config::default(),
        yamux::Mode::Server,
    ))
}

/// An error answer's message (a Status's `message`, else the text), on one line.
fn message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    crate::agent::status_message(&text).unwrap_or_else(|| text.trim().replace('\n', " "))
}

/// Accepts the server's streams until the session ends, piping each to the kubelet's socket.
async fn serve(
    mut conn: yamux::Connection<Upgraded>,
    socket: &std::path::Path,
) -> Result<(), yamux::ConnectionError> {
    while let Some(stream) = std::future::poll_fn(|cx| conn.poll_next_inbound(cx)).await {
        let stream = stream?;
        let socket = socket.to_path_buf();
        tokio::spawn(async move {
            let mut kubelet = match tokio::net::UnixStream::connect(&socket).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("tunnel: the kubelet API at {}: {e}", socket.display());
                    return;
                }
            };
            let mut stream = stream.compat();
            if let Err(e) = tokio::io::copy_bidirectional(&mut stream, &mut kubelet).await {
                tracing::debug!("tunnel stream: {e}");
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..8).map(|_| b.next()).collect();
        for (w, base) in waits.iter().zip([1, 2, 4, 8, 16, 30, 30, 30]) {
            let base = Duration::from_secs(base);
            assert!(*w >= base && *w <= base + base / 4, "{w:?} for {base:?}");
        }
        b.reset();
        assert!(b.next() < Duration::from_secs(2));
    }

    #[test]
    fn failures_are_remembered_until_a_success() {
        let mut b = Backoff::default();
        b.failed("connection refused");
        assert_eq!(b.last_error.as_deref(), Some("connection refused"));
        b.failed("connection refused");
        b.succeeded();
        assert_eq!(b.last_error, None);
    }

    #[test]
    fn messages() {
        assert_eq!(
            message(br#"{"kind":"Status","message":"node \"a\" cannot open a tunnel"}"#),
            "node \"a\" cannot open a tunnel"
        );
        assert_eq!(message(b"404 page\nnot found\n"), "404 page not found");
    }
}
