//! Tunnels from agents, as k3s's remotedialer: an agent behind NAT or a firewall opens
//! `GET /v1-kinglet/connect` with its node client certificate and upgrades the connection
//! (`Upgrade: kinglet-tunnel`); the server multiplexes it with yamux and opens one stream on it
//! for every connection to that node's kubelet (logs, exec, attach, port-forward, stats). The
//! agent pipes each stream to its kubelet's local socket, so TLS to the kubelet runs end to end
//! inside the stream, with the same certificates and checks as over TCP.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use crate::Api;
use crate::auth::UserInfo;
use crate::status::ApiError;

pub use kinglet_core::join::{CONNECT_PATH, TUNNEL_PROTOCOL as PROTOCOL};
/// The node an agent opens its tunnel for; it must be the node its certificate names.
pub const NODE_NAME_HEADER: &str = crate::join::NODE_NAME_HEADER;
/// How long opening a stream may wait for the agent's side.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A stream to a node's kubelet through its tunnel.
pub type Stream = tokio_util::compat::Compat<yamux::Stream>;

type OpenRequest = oneshot::Sender<yamux::Result<yamux::Stream>>;

/// The open tunnels, by node name.
#[derive(Default)]
pub struct Tunnels {
    nodes: Mutex<HashMap<String, Entry>>,
    next_id: AtomicU64,
}

struct Entry {
    /// Tells this connection from a newer one for the same node.
    id: u64,
    open: mpsc::Sender<OpenRequest>,
}

impl Tunnels {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn has(&self, node: &str) -> bool {
        self.lock().contains_key(node)
    }

    /// A new stream to `node`'s kubelet, or None when the node has no tunnel.
    pub async fn open(&self, node: &str) -> Option<Result<Stream, String>> {
        let open = self.lock().get(node)?.open.clone();
        let attempt = async {
            let (tx, rx) = oneshot::channel();
            open.send(tx)
                .await
                .map_err(|_| "tunnel closed".to_string())?;
            match rx.await {
                Ok(Ok(stream)) => Ok(stream.compat()),
                Ok(Err(e)) => Err(format!("tunnel: {e}")),
                Err(_) => Err("tunnel closed".to_string()),
            }
        };
        Some(
            tokio::time::timeout(OPEN_TIMEOUT, attempt)
                .await
                .unwrap_or_else(|_| Err("tunnel: timeout opening a stream".to_string())),
        )
    }

    /// Runs a yamux connection over `io` (the server's side of `node`'s tunnel) until it
    /// closes; a newer tunnel for the same node replaces it (the older one is closed).
    pub fn register<T>(self: &Arc<Self>, node: String, io: T) -> tokio::task::JoinHandle<()>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(16);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Dropping the older entry's sender closes its connection.
        self.lock().insert(node.clone(), Entry { id, open: tx });
        let tunnels = self.clone();
        tokio::spawn(async move {
            // The server opens every stream: it is yamux's client.
            let conn =
                yamux::Connection::new(io.compat(), yamux::Config::default(), yamux::Mode::Client);
            let result = drive(conn, rx).await;
            {
                let mut nodes = tunnels.lock();
                if nodes.get(&node).is_some_and(|e| e.id == id) {
                    nodes.remove(&node);
                }
            }
            match result {
                Ok(()) => tracing::info!(%node, "tunnel from the node closed"),
                Err(e) => tracing::info!(%node, "tunnel from the node closed: {e}"),
            }
        })
    }
}

/// Drives `conn`: opens a stream for each request; ends when the connection closes, or closes
/// it when its entry is replaced or removed (every sender gone).
async fn drive<T>(
    mut conn: yamux::Connection<T>,
    mut requests: mpsc::Receiver<OpenRequest>,
) -> yamux::Result<()>
where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    let mut pending: Option<OpenRequest> = None;
    let replaced = std::future::poll_fn(|cx| {
        loop {
            // Polling for inbound streams is what moves every frame; the agent opens none.
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    drop(stream);
                    continue;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(false)),
                Poll::Pending => {}
            }
            if pending.is_none() {
                match requests.poll_recv(cx) {
                    Poll::Ready(Some(tx)) => pending = Some(tx),
                    Poll::Ready(None) => return Poll::Ready(Ok(true)),
                    Poll::Pending => {}
                }
            }
            if let Some(tx) = pending.take() {
                match conn.poll_new_outbound(cx) {
                    Poll::Ready(r) => {
                        let _ = tx.send(r);
                        continue;
                    }
                    Poll::Pending => pending = Some(tx),
                }
            }
            return Poll::Pending;
        }
    })
    .await?;
    if replaced {
        std::future::poll_fn(|cx| conn.poll_close(cx)).await?;
    }
    Ok(())
}

/// The node `user` may open a tunnel for: its own (`system:node:<name>` in `system:nodes`,
/// from its client certificate), which `asked`, when given, must name.
fn tunnel_node(user: &UserInfo, asked: Option<&str>) -> Result<String, ApiError> {
    if user.is_anonymous() {
        return Err(ApiError::unauthorized());
    }
    let own = user
        .name
        .strip_prefix("system:node:")
        .filter(|n| !n.is_empty() && user.groups.iter().any(|g| g == "system:nodes"))
        .ok_or_else(|| {
            ApiError::forbidden(format!(
                "user \"{}\" is not a node: only nodes open tunnels",
                user.name
            ))
        })?;
    match asked {
        Some(name) if name != own => Err(ApiError::forbidden(format!(
            "node \"{own}\" cannot open a tunnel for node \"{name}\""
        ))),
        _ => Ok(own.to_string()),
    }
}

fn header<'a>(req: &'a http::request::Parts, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// `GET /v1-kinglet/connect` by `user`, the connection's own identity (never an impersonated
/// one): switches protocols and registers the tunnel once the connection is upgraded.
pub async fn serve(api: &Arc<Api>, user: &UserInfo, mut req: http::request::Parts) -> Response {
    let node = match tunnel_node(user, header(&req, NODE_NAME_HEADER).map(str::trim)) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    if req.method != http::Method::GET {
        return ApiError::method_not_allowed("only GET is allowed here").into_response();
    }
    // The server's own node is served in-process: a tunnel for its name would take its
    // kubelet traffic (the node proxy prefers a tunnel).
    if let Err(e) = crate::join::refuse_server_node(api, &node).await {
        return e.into_response();
    }
    let upgrade = header(&req, "upgrade").unwrap_or_default();
    if !upgrade.eq_ignore_ascii_case(PROTOCOL) {
        return ApiError::bad_request(format!("expected Upgrade: {PROTOCOL}")).into_response();
    }
    let Some(on_upgrade) = req.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return ApiError::bad_request("Upgrade request required (HTTP/1.1)").into_response();
    };
    let tunnels = api.tunnels.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                tracing::info!(%node, "tunnel from the node open");
                tunnels.register(node, hyper_util::rt::TokioIo::new(upgraded));
            }
            Err(e) => tracing::warn!(%node, "tunnel upgrade failed: {e}"),
        }
    });
    Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, PROTOCOL)
        .body(axum::body::Body::empty())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..UserInfo::anonymous()
        }
    }

    #[test]
    fn only_a_node_opens_a_tunnel_and_only_its_own() {
        let node = user("system:node:n1", &["system:nodes", "system:authenticated"]);
        assert_eq!(tunnel_node(&node, None).unwrap(), "n1");
        assert_eq!(tunnel_node(&node, Some("n1")).unwrap(), "n1");
        assert_eq!(tunnel_node(&node, Some("n2")).unwrap_err().code, 403);
        assert_eq!(
            tunnel_node(&UserInfo::anonymous(), None).unwrap_err().code,
            401
        );
        for u in [
            user("system:node:n1", &["system:authenticated"]),
            user("system:node:", &["system:nodes"]),
            user("admin", &["system:masters"]),
        ] {
            assert_eq!(tunnel_node(&u, Some("n1")).unwrap_err().code, 403, "{u:?}");
        }
    }

    /// The agent's side for the tests: echoes every stream the server opens.
    fn echo_agent(io: tokio::io::DuplexStream) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut conn =
                yamux::Connection::new(io.compat(), yamux::Config::default(), yamux::Mode::Server);
            while let Some(Ok(stream)) = std::future::poll_fn(|cx| conn.poll_next_inbound(cx)).await
            {
                tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(stream.compat());
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        })
    }

    async fn round_trip(tunnels: &Tunnels, node: &str, text: &[u8]) -> Vec<u8> {
        let mut s = tunnels
            .open(node)
            .await
            .expect("a tunnel")
            .expect("a stream");
        s.write_all(text).await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn streams_go_through_the_latest_tunnel_which_goes_when_closed() {
        let tunnels = Arc::new(Tunnels::default());
        assert!(tunnels.open("n1").await.is_none());

        let (server, agent) = tokio::io::duplex(64 * 1024);
        let first = tunnels.register("n1".into(), server);
        let first_agent = echo_agent(agent);
        assert_eq!(round_trip(&tunnels, "n1", b"one").await, b"one");
        // Several streams at once.
        let (a, b) = tokio::join!(
            round_trip(&tunnels, "n1", b"a"),
            round_trip(&tunnels, "n1", b"b")
        );
        assert_eq!((a.as_slice(), b.as_slice()), (&b"a"[..], &b"b"[..]));

        // A newer connection for the node replaces the older, which is closed.
        let (server, agent) = tokio::io::duplex(64 * 1024);
        let second = tunnels.register("n1".into(), server);
        let second_agent = echo_agent(agent);
        tokio::time::timeout(Duration::from_secs(5), first)
            .await
            .expect("the replaced tunnel closes")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), first_agent)
            .await
            .expect("the agent sees its tunnel closed")
            .unwrap();
        assert_eq!(round_trip(&tunnels, "n1", b"two").await, b"two");
        assert!(tunnels.has("n1"));

        // The agent going away removes the tunnel.
        second_agent.abort();
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the tunnel ends with its connection")
            .unwrap();
        assert!(!tunnels.has("n1"));
        assert!(tunnels.open("n1").await.is_none());
    }
}
