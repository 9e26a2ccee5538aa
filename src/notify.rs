//! Readiness for the service manager (systemd's `Type=notify`, the sd_notify protocol): one
//! datagram per message to the unix socket named by `NOTIFY_SOCKET` (abstract when it starts
//! with '@'). kinglet reports `READY=1` once its node is Ready (the API serving, with
//! `--disable-agent`), and `STATUS=` lines while it waits.
//!
//! Written with std rather than a crate: the `sd-notify` crate reads the variable at every call
//! (so it cannot be taken out of the environment early) and has no abstract sockets.

use std::ffi::OsString;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;

static SOCKET: OnceLock<Option<OsString>> = OnceLock::new();

/// Takes `NOTIFY_SOCKET` out of the environment for later messages, so that children
/// (supervisors, and through them containers) never see it. Must run before any other thread
/// exists.
pub fn take_socket() {
    let socket = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty());
    if socket.is_some() {
        // SAFETY: called first thing in `main`, while this process has a single thread.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
    }
    let _ = SOCKET.set(socket);
}

fn send(message: &str) {
    let Some(Some(path)) = SOCKET.get() else {
        return;
    };
    let sent = (|| {
        let bytes = path.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
            None => SocketAddr::from_pathname(path)?,
        };
        UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &addr)
    })();
    if let Err(e) = sent {
        tracing::warn!(socket = ?path, "notifying the service manager: {e}");
    }
}

/// `STATUS=<text>`: what `systemctl status` shows.
pub fn status(text: &str) {
    send(&format!("STATUS={}\n", text.replace('\n', " ")));
}

/// `READY=1`, with a status line.
pub fn ready(text: &str) {
    send(&format!("READY=1\nSTATUS={}\n", text.replace('\n', " ")));
}

/// Reports readiness once the Node `node` has Ready=True (at once without a node). Runs until
/// then; a no-op without a service manager.
///
/// With `offline_after` (agents), a server out of reach that long counts as ready too: the node
/// then runs its pods from its offline copy, and a service manager waiting for readiness would
/// otherwise hold the start (and the installer) until the server is back.
pub async fn when_ready(
    client: kube::Client,
    node: Option<String>,
    offline_after: Option<Duration>,
) {
    if !matches!(SOCKET.get(), Some(Some(_))) {
        return;
    }
    let Some(node) = node else {
        ready("API server serving");
        return;
    };
    let nodes = kube::Api::<Node>::all(client);
    let mut last = String::new();
    let mut unreachable_since = None;
    loop {
        let got = nodes.get_opt(&node).await;
        unreachable_since = match (&got, unreachable_since) {
            (Err(_), None) => Some(std::time::Instant::now()),
            (Err(_), since) => since,
            (Ok(_), _) => None,
        };
        if let (Some(since), Some(after)) = (unreachable_since, offline_after)
            && since.elapsed() >= after
        {
            ready(&format!(
                "server out of reach: node {node} runs from its offline copy"
            ));
            return;
        }
        let state = match got {
            Ok(Some(n)) if node_ready(&n) => break,
            Ok(Some(_)) => format!("waiting for node {node} to be Ready"),
            Ok(None) => format!("waiting for node {node} to register"),
            Err(e) => format!("waiting for the API server: {e}"),
        };
        if state != last {
            status(&state);
            last = state;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    ready(&format!("node {node} Ready"));
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
