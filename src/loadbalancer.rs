//! The agent's client-side load balancer, as k3s's agents run one: a TCP proxy on a loopback
//! port through which every request of the agent to the API servers goes (its kube client and
//! its join requests). Each connection is forwarded to a server that answers: the first
//! healthy one in order (the `--server` ones as given, then those the `default/kubernetes`
//! Endpoints lists), moving on to the next when a connect fails or times out.
//!
//! TLS passes through untouched: clients verify the server's certificate for
//! `kinglet_pki::API_SERVER_NAME`, which every server's serving certificate carries and no
//! node's may, whichever server the connection reaches.
//!
//! A server is unhealthy after a failed connect and healthy again once a connect succeeds;
//! every server is probed periodically, and the connections to one whose probe fails are
//! closed, so that watches to a server that went silent move on at once rather than after
//! their timeouts. The loopback port is an ephemeral one: every client of it is in-process.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Endpoints;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::agent::ServerUrl;

/// A server that does not accept a connection within this is taken as down (k3s's dialer
/// waits about as long): short, because a client waits this long for each server that is.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// At most this many servers are taken from the Endpoints (it is input from the network).
const MAX_DISCOVERED: usize = 32;
/// Largest kept server list read back.
const MAX_KEPT: u64 = 64 << 10;

/// A handle on the load balancer; clones share it.
#[derive(Clone)]
pub struct LoadBalancer {
    inner: Arc<Inner>,
}

struct Inner {
    local: SocketAddr,
    probe_interval: Duration,
    state: Mutex<State>,
    /// The servers the agent keeps a tunnel to (see `tunnel_targets`).
    targets: watch::Sender<Vec<ServerUrl>>,
    /// Where the discovered servers are kept for a start while the `--server` ones are away.
    kept: Option<PathBuf>,
}

struct State {
    /// The `--server` ones in order (`fixed` of them), then the discovered ones not among them.
    backends: Vec<Backend>,
    fixed: usize,
    /// The servers the Endpoints lists (or the kept copy's, until it is read).
    discovered: Vec<ServerUrl>,
    /// Why the last connection found no server, until one answers.
    unreachable: Option<String>,
}

struct Backend {
    url: ServerUrl,
    healthy: bool,
    /// Cancelled to close every connection forwarded to this server.
    conns: CancellationToken,
}

impl Backend {
    fn new(url: ServerUrl) -> Backend {
        Backend {
            url,
            healthy: true,
            conns: CancellationToken::new(),
        }
    }

    /// Closes the connections forwarded so far; later ones get a new token.
    fn close_all(&mut self) {
        std::mem::replace(&mut self.conns, CancellationToken::new()).cancel();
    }
}

impl LoadBalancer {
    /// Listens on an ephemeral loopback port and forwards to `servers` (not empty) and to the
    /// servers kept in `kept` from an earlier run.
    pub async fn start(servers: Vec<ServerUrl>, kept: Option<PathBuf>) -> anyhow::Result<Self> {
        Self::start_probing(servers, kept, PROBE_INTERVAL).await
    }

    async fn start_probing(
        servers: Vec<ServerUrl>,
        kept: Option<PathBuf>,
        probe_interval: Duration,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!servers.is_empty(), "no server to connect to");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("the load balancer's loopback port")?;
        let state = State {
            fixed: servers.len(),
            backends: servers.iter().cloned().map(Backend::new).collect(),
            discovered: Vec::new(),
            unreachable: None,
        };
        let lb = LoadBalancer {
            inner: Arc::new(Inner {
                local: listener.local_addr()?,
                probe_interval,
                state: Mutex::new(state),
                targets: watch::channel(servers).0,
                kept,
            }),
        };
        if let Some(servers) = lb.inner.kept.as_deref().and_then(read_kept) {
            lb.set_discovered(servers, false);
        }
        tracing::debug!(address = %lb.inner.local, "load balancer to the servers listening");
        tokio::spawn(lb.clone().accept(listener));
        tokio::spawn(lb.clone().probe());
        Ok(lb)
    }

    /// Where clients connect: `127.0.0.1:<port>`.
    pub fn local(&self) -> ServerUrl {
        ServerUrl {
            host: self.inner.local.ip().to_string(),
            port: self.inner.local.port(),
        }
    }

    /// Why no server could be reached, while none answers.
    pub fn unreachable(&self) -> Option<String> {
        self.lock().unreachable.clone()
    }

    /// The servers to keep a tunnel to, as k3s's agents keep one to every server: the ones the
    /// Endpoints lists once known (each server once, by the address it advertises), else
    /// the `--server` ones.
    pub fn tunnel_targets(&self) -> watch::Receiver<Vec<ServerUrl>> {
        self.inner.targets.subscribe()
    }

    /// The servers, `--server` ones first.
    #[cfg(test)]
    fn servers(&self) -> Vec<String> {
        let s = self.lock();
        s.backends.iter().map(|b| b.url.host_header()).collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `servers` as the discovered ones: added after the `--server` ones, and the
    /// connections to those no longer listed closed. Kept on disk when `keep`.
    fn set_discovered(&self, mut servers: Vec<ServerUrl>, keep: bool) {
        servers.sort_by_key(ServerUrl::host_header);
        servers.dedup();
        servers.truncate(MAX_DISCOVERED);
        {
            let mut s = self.lock();
            if s.discovered == servers {
                return;
            }
            let fixed = s.fixed;
            let mut old: Vec<Backend> = s.backends.drain(fixed..).collect();
            for url in &servers {
                if s.backends.iter().any(|b| b.url == *url) {
                    continue;
                }
                let backend = match old.iter().position(|b| b.url == *url) {
                    Some(i) => old.swap_remove(i),
                    None => Backend::new(url.clone()),
                };
                s.backends.push(backend);
            }
            for mut gone in old {
                tracing::info!(server = %gone.url.host_header(), "server no longer listed");
                gone.close_all();
            }
            s.discovered = servers.clone();
            let listed: Vec<String> = s.backends.iter().map(|b| b.url.host_header()).collect();
            // Quiet at a start from the kept list: the join's errors stay on one line.
            if keep {
                tracing::info!("API servers: {}", listed.join(", "));
            } else {
                tracing::debug!("API servers: {}", listed.join(", "));
            }
        }
        if keep && let Some(path) = &self.inner.kept {
            let list: Vec<String> = servers.iter().map(ServerUrl::host_header).collect();
            let json = serde_json::to_string(&list).unwrap_or_default();
            if let Err(e) = kinglet_pki::write_private(path, &json) {
                tracing::warn!("keeping the list of servers: {e:#}");
            }
        }
        let targets = if servers.is_empty() {
            let s = self.lock();
            s.backends[..s.fixed]
                .iter()
                .map(|b| b.url.clone())
                .collect()
        } else {
            servers
        };
        self.inner.targets.send_if_modified(|t| {
            let changed = *t != targets;
            *t = targets;
            changed
        });
    }

    async fn accept(self, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((inbound, _)) => {
                    let lb = self.clone();
                    tokio::spawn(async move { lb.forward(inbound).await });
                }
                Err(e) => {
                    // Out of file descriptors, say: a pause rather than a busy loop.
                    tracing::warn!("load balancer: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn forward(&self, mut inbound: TcpStream) {
        let Some((mut outbound, closed)) = self.dial().await else {
            // Closed at once: the client sees the server out of reach.
            return;
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {
                if let Err(e) = r {
                    tracing::debug!("load balancer: connection: {e}");
                }
            }
            () = closed.cancelled() => {}
        }
    }

    /// A connection to the first healthy server that accepts one; the unhealthy ones are
    /// tried last, in case one is back before its probe says so.
    async fn dial(&self) -> Option<(TcpStream, CancellationToken)> {
        let order: Vec<ServerUrl> = {
            let s = self.lock();
            let (healthy, unhealthy): (Vec<&Backend>, Vec<&Backend>) =
                s.backends.iter().partition(|b| b.healthy);
            healthy
                .into_iter()
                .chain(unhealthy)
                .map(|b| b.url.clone())
                .collect()
        };
        let mut errors = Vec::new();
        for url in order {
            match connect(&url).await {
                Ok(tcp) => {
                    if let Some(closed) = self.mark(&url, Ok(())) {
                        self.lock().unreachable = None;
                        return Some((tcp, closed));
                    }
                }
                Err(e) => {
                    self.mark(&url, Err(&e));
                    errors.push(format!("{}: {e:#}", url.host_header()));
                }
            }
        }
        self.lock().unreachable = Some(format!("no server answered ({})", errors.join("; ")));
        None
    }

    /// Records how connecting to `url` went; on success, the token that closes the connection.
    fn mark(
        &self,
        url: &ServerUrl,
        result: Result<(), &anyhow::Error>,
    ) -> Option<CancellationToken> {
        let mut s = self.lock();
        let backend = s.backends.iter_mut().find(|b| b.url == *url)?;
        match result {
            Ok(()) => {
                if !backend.healthy {
                    tracing::info!(server = %url.host_header(), "server answers again");
                }
                backend.healthy = true;
                Some(backend.conns.clone())
            }
            Err(e) => {
                if backend.healthy {
                    tracing::warn!(server = %url.host_header(), "server does not answer: {e:#}");
                }
                backend.healthy = false;
                None
            }
        }
    }

    /// Probes every server now and then; a server that fails has its connections closed.
    async fn probe(self) {
        loop {
            tokio::time::sleep(self.inner.probe_interval).await;
            let urls: Vec<ServerUrl> = self.lock().backends.iter().map(|b| b.url.clone()).collect();
            let results =
                futures::future::join_all(urls.iter().map(|u| async move { connect(u).await }))
                    .await;
            for (url, result) in urls.iter().zip(results) {
                match result {
                    Ok(_) => {
                        self.mark(url, Ok(()));
                    }
                    Err(e) => {
                        self.mark(url, Err(&e));
                        let mut s = self.lock();
                        if let Some(b) = s.backends.iter_mut().find(|b| b.url == *url) {
                            b.close_all();
                        }
                    }
                }
            }
        }
    }

    /// Follows the `default/kubernetes` Endpoints, which lists every live API server, as k3s's
    /// agents do: its servers join the `--server` ones. Runs forever; while no server answers,
    /// the last list stays.
    pub async fn follow_endpoints(self, client: kube::Client) {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let api = kube::Api::<Endpoints>::namespaced(client, "default");
        let config = watcher::Config::default().fields("metadata.name=kubernetes");
        let events = watcher(api, config).default_backoff();
        futures::pin_mut!(events);
        // The object, or None when there is none; a (re)list is applied once done.
        let mut listed: Option<Vec<ServerUrl>> = None;
        while let Some(event) = events.next().await {
            let servers = match event {
                Ok(watcher::Event::Init) => {
                    listed = None;
                    continue;
                }
                Ok(watcher::Event::InitApply(e)) => {
                    listed = Some(listed_servers(&e));
                    continue;
                }
                Ok(watcher::Event::InitDone) => listed.take().unwrap_or_default(),
                Ok(watcher::Event::Apply(e)) => listed_servers(&e),
                Ok(watcher::Event::Delete(_)) => Vec::new(),
                Err(e) => {
                    tracing::debug!("following the API servers' Endpoints: {e}");
                    continue;
                }
            };
            self.set_discovered(servers, true);
        }
    }
}

/// The servers the `kubernetes` Endpoints lists: its ready addresses, each at its subset's
/// `https` port. Loopback addresses name a server's own host, not one this agent can reach.
fn listed_servers(e: &Endpoints) -> Vec<ServerUrl> {
    let mut servers = Vec::new();
    for subset in e.subsets.iter().flatten() {
        let ports = subset.ports.as_deref().unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| p.name.as_deref() == Some("https"))
            .or_else(|| ports.first())
            .and_then(|p| u16::try_from(p.port).ok())
            .filter(|p| *p != 0);
        let Some(port) = port else { continue };
        let ips = (subset.addresses.iter().flatten()).filter_map(|a| a.ip.parse::<IpAddr>().ok());
        for ip in ips.filter(|ip| !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast()) {
            servers.push(ServerUrl {
                host: ip.to_string(),
                port,
            });
        }
    }
    servers.truncate(MAX_DISCOVERED);
    servers
}

/// The kept list of discovered servers; None when there is none or it is not one.
fn read_kept(path: &Path) -> Option<Vec<ServerUrl>> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(MAX_KEPT).read_to_string(&mut text).ok()?;
    let list: Vec<String> = serde_json::from_str(&text).ok()?;
    let servers = list
        .iter()
        .filter_map(|s| ServerUrl::parse(&format!("https://{s}")).ok())
        .take(MAX_DISCOVERED)
        .collect();
    Some(servers)
}

async fn connect(url: &ServerUrl) -> anyhow::Result<TcpStream> {
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((url.host.as_str(), url.port)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("connect timeout"))??;
    // A server that drops off the network silently is noticed on this side too.
    kinglet_pki::tls::keepalive(&tcp, true);
    Ok(tcp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that greets every connection with `name` and keeps it open until told.
    struct Greeter {
        port: u16,
        stop: CancellationToken,
    }

    impl Greeter {
        async fn start(name: &'static str) -> Greeter {
            Greeter::on(name, 0).await
        }

        async fn on(name: &'static str, port: u16) -> Greeter {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
                .await
                .unwrap();
            let port = listener.local_addr().unwrap().port();
            let stop = CancellationToken::new();
            let stopped = stop.clone();
            tokio::spawn(async move {
                let mut conns = Vec::new();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let (mut tcp, _) = accepted.unwrap();
                            let _ = tcp.write_all(name.as_bytes()).await;
                            // Held open, as a server's watch connections are.
                            conns.push(tcp);
                        }
                        () = stopped.cancelled() => return,
                    }
                }
            });
            Greeter { port, stop }
        }

        fn url(&self) -> ServerUrl {
            ServerUrl {
                host: "127.0.0.1".into(),
                port: self.port,
            }
        }

        /// Gone, with its listening socket and its connections.
        async fn die(self) {
            self.stop.cancel();
            // Until its task has dropped the listener, connects may still queue on it.
            while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))
                .await
                .is_ok()
            {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Who answers a new connection through `lb` (empty: the connection was closed).
    async fn who_answers(lb: &LoadBalancer) -> (String, TcpStream) {
        let mut tcp = TcpStream::connect(lb.inner.local).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tcp.read(&mut buf).await.unwrap_or(0);
        (String::from_utf8_lossy(&buf[..n]).into_owned(), tcp)
    }

    /// A port nothing listens on.
    async fn closed_port() -> ServerUrl {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        ServerUrl {
            host: "127.0.0.1".into(),
            port,
        }
    }

    #[tokio::test]
    async fn forwards_to_the_first_server_that_answers_and_fails_over() {
        let (a, b) = (Greeter::start("a").await, Greeter::start("b").await);
        let dead = closed_port().await;
        let lb = LoadBalancer::start(vec![a.url(), b.url()], None)
            .await
            .unwrap();
        assert_eq!(lb.local().host, "127.0.0.1");
        for _ in 0..3 {
            assert_eq!(who_answers(&lb).await.0, "a");
        }
        let (_, held) = who_answers(&lb).await;
        a.die().await;
        assert_eq!(who_answers(&lb).await.0, "b");
        assert_eq!(who_answers(&lb).await.0, "b");
        assert!(lb.unreachable().is_none());
        drop(held);

        // A dead server listed first is skipped, the same way.
        let lb = LoadBalancer::start(vec![dead.clone(), b.url()], None)
            .await
            .unwrap();
        assert_eq!(who_answers(&lb).await.0, "b");
        b.die().await;
        // None answers: the connection is closed and the reason kept.
        assert_eq!(who_answers(&lb).await.0, "");
        let why = lb.unreachable().unwrap();
        assert!(why.starts_with("no server answered"), "{why}");
        assert!(why.contains(&dead.host_header()), "{why}");
    }

    #[tokio::test]
    async fn a_server_that_comes_back_is_used_again() {
        let (a, b) = (Greeter::start("a").await, Greeter::start("b").await);
        let port = a.port;
        let lb =
            LoadBalancer::start_probing(vec![a.url(), b.url()], None, Duration::from_millis(50))
                .await
                .unwrap();
        assert_eq!(who_answers(&lb).await.0, "a");
        a.die().await;
        assert_eq!(who_answers(&lb).await.0, "b");
        // Back on its port: once probed healthy, the first server is preferred again.
        let _a = Greeter::on("a", port).await;
        let mut tries = 0;
        while who_answers(&lb).await.0 != "a" {
            tries += 1;
            assert!(tries < 1000, "the first server is never used again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // And with the second gone, it takes every connection.
        b.die().await;
        assert_eq!(who_answers(&lb).await.0, "a");
    }

    #[tokio::test]
    async fn connections_end_when_their_server_dies_and_the_next_answers() {
        let a = Greeter::start("a").await;
        let b = Greeter::start("b").await;
        let lb =
            LoadBalancer::start_probing(vec![a.url(), b.url()], None, Duration::from_millis(50))
                .await
                .unwrap();
        let (who, mut held) = who_answers(&lb).await;
        assert_eq!(who, "a");
        a.die().await;
        // The forwarded connection ends with its server (that the probe alone closes
        // connections is `a_silent_server_loses_its_connections_at_the_probe`).
        let mut rest = Vec::new();
        held.read_to_end(&mut rest).await.ok();
        assert!(rest.is_empty());
        assert_eq!(who_answers(&lb).await.0, "b");
    }

    #[tokio::test]
    async fn a_silent_server_loses_its_connections_at_the_probe() {
        // It stops listening but keeps the connections it has, as a server cut off the
        // network looks from here: only the probe notices.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let url = ServerUrl {
            host: "127.0.0.1".into(),
            port: listener.local_addr().unwrap().port(),
        };
        let lb = LoadBalancer::start_probing(vec![url], None, Duration::from_millis(50))
            .await
            .unwrap();
        let mut client = TcpStream::connect(lb.inner.local).await.unwrap();
        let (_kept_by_server, _) = listener.accept().await.unwrap();
        drop(listener);
        // Bounded only so that a failure ends the test rather than hanging it.
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), client.read_to_end(&mut rest))
            .await
            .expect("the connection to the silent server is never closed")
            .ok();
        assert!(rest.is_empty());
    }

    fn url(s: &str) -> ServerUrl {
        ServerUrl::parse(&format!("https://{s}")).unwrap()
    }

    #[tokio::test]
    async fn discovered_servers_follow_the_given_ones_and_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("servers.json");
        let fixed = vec![url("gw:6443"), url("10.0.0.1:6443")];
        let lb = LoadBalancer::start(fixed.clone(), Some(kept.clone()))
            .await
            .unwrap();
        let targets = lb.tunnel_targets();
        assert_eq!(*targets.borrow(), fixed);
        lb.set_discovered(vec![url("10.0.0.2:6443"), url("10.0.0.1:6443")], true);
        assert_eq!(lb.servers(), ["gw:6443", "10.0.0.1:6443", "10.0.0.2:6443"]);
        // Tunnels: one to each listed server, by the address it advertises.
        assert_eq!(
            *targets.borrow(),
            [url("10.0.0.1:6443"), url("10.0.0.2:6443")]
        );
        // A server gone from the list goes; the given ones stay.
        lb.set_discovered(vec![url("10.0.0.3:6443")], true);
        assert_eq!(lb.servers(), ["gw:6443", "10.0.0.1:6443", "10.0.0.3:6443"]);
        // Kept for the next start, whose list starts with them.
        let again = LoadBalancer::start(vec![url("gw:6443")], Some(kept.clone()))
            .await
            .unwrap();
        assert_eq!(again.servers(), ["gw:6443", "10.0.0.3:6443"]);
        assert_eq!(*again.tunnel_targets().borrow(), [url("10.0.0.3:6443")]);
        // An empty list: tunnels to the given ones again.
        lb.set_discovered(Vec::new(), true);
        assert_eq!(lb.servers(), ["gw:6443", "10.0.0.1:6443"]);
        assert_eq!(*targets.borrow(), fixed);
        // A kept file that is not a list is ignored.
        std::fs::write(&kept, "not json").unwrap();
        let third = LoadBalancer::start(vec![url("gw:6443")], Some(kept))
            .await
            .unwrap();
        assert_eq!(third.servers(), ["gw:6443"]);
    }

    #[test]
    fn servers_from_the_endpoints() {
        let e: Endpoints = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "subsets": [
                {
                    "addresses": [{"ip": "10.0.0.1"}, {"ip": "127.0.0.1"}, {"ip": "x"}, {"ip": "0.0.0.0"}],
                    "notReadyAddresses": [{"ip": "10.0.0.3"}],
                    "ports": [{"name": "other", "port": 1}, {"name": "https", "port": 6443}],
                },
                {"addresses": [{"ip": "fd00::2"}], "ports": [{"port": 7443}]},
                {"addresses": [{"ip": "10.0.0.4"}]},
                {"addresses": [{"ip": "10.0.0.5"}], "ports": [{"port": 0}]},
            ],
        }))
        .unwrap();
        let hosts: Vec<String> = listed_servers(&e)
            .iter()
            .map(ServerUrl::host_header)
            .collect();
        assert_eq!(hosts, ["10.0.0.1:6443", "[fd00::2]:7443"]);
        let none: Endpoints =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "kubernetes"}}))
                .unwrap();
        assert!(listed_servers(&none).is_empty());
    }
}
