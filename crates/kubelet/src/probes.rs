//! Startup, liveness and readiness probes (exec, httpGet, tcpSocket, gRPC), with upstream's
//! defaults (period 10 s, timeout 1 s, success 1, failure 3). Network probes and hooks go to the
//! handler's `host`, else to the pod's IP, as upstream's; they connect from inside the pod's
//! network namespace (a thread enters it for the connection), so they reach the pod whether or
//! not it has a pod network.

mod http;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::lock;

/// What the kubelet remembers about one running container's probes.
#[derive(Debug, Default, Clone)]
struct State {
    started: bool,
    ready: bool,
    last: HashMap<&'static str, Instant>,
    successes: HashMap<&'static str, i32>,
    failures: HashMap<&'static str, i32>,
}

/// The probe manager: the probe state of each running container, by container ID.
#[derive(Default)]
pub struct ProbeManager {
    states: Mutex<HashMap<String, State>>,
}

impl ProbeManager {
    /// Probes running container `id` as due and keeps what came of it.
    pub async fn probe(
        &self,
        id: &str,
        c: &Container,
        running_for: Duration,
        exe: &Path,
        dir: &Path,
        netns: &Path,
    ) -> Verdict {
        // Not locked while probing: probes take up to their timeout.
        let mut state = lock(&self.states).get(id).cloned().unwrap_or_default();
        let verdict = check(&mut state, c, running_for, exe, dir, netns).await;
        lock(&self.states).insert(id.to_string(), state);
        verdict
    }

    /// Whether running container `id` passes its readiness (and startup) probes; one not
    /// probed yet is ready only if it has neither.
    pub fn ready(&self, c: &Container, id: &str) -> bool {
        match lock(&self.states).get(id) {
            Some(s) => s.ready,
            None => c.readiness_probe.is_none() && c.startup_probe.is_none(),
        }
    }

    /// Forgets container `id`: restarted (a new attempt has a new ID) or removed.
    pub fn forget(&self, id: &str) {
        lock(&self.states).remove(id);
    }
}

/// What a sync should do about a container after probing it.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Healthy,
    /// Liveness (or startup) failed past its threshold: restart it, with this message.
    Restart(String),
}

fn port_of(port: &IntOrString, c: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// Runs `f` on a thread inside the network namespace pinned at `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&netns).ok()?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        Some(f())
    })
    .join()
    .ok()
    .flatten()
}

/// A TCP connection to `addr` made from inside the network namespace pinned at `netns` (a
/// socket keeps the namespace it was made in).
pub async fn connect_in_netns(
    netns: PathBuf,
    addr: SocketAddr,
    timeout: Duration,
) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::task::spawn_blocking(move || {
        in_netns(netns, move || TcpStream::connect_timeout(&addr, timeout)).unwrap_or_else(|| {
            Err(std::io::Error::other(
                "cannot enter the pod's network namespace",
            ))
        })
    })
    .await
    .map_err(std::io::Error::other)??;
    stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(stream)
}

/// The pod's IP as seen inside its network namespace `netns`: the address of its `eth0`; for
/// a host-network pod the node's first non-loopback address (how the node's address is chosen
/// when not given); loopback if there is nothing else.
async fn pod_ip(netns: &Path) -> IpAddr {
    let netns = netns.to_path_buf();
    let found = tokio::task::spawn_blocking(move || in_netns(netns, first_address).flatten())
        .await
        .ok()
        .flatten();
    found.map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4)
}

/// The first IPv4 address of `eth0`, else of any interface, that is not loopback.
fn first_address() -> Option<Ipv4Addr> {
    let addrs: Vec<(String, Ipv4Addr)> = nix::ifaddrs::getifaddrs()
        .ok()?
        .filter_map(|a| {
            let ip = a.address?.as_sockaddr_in()?.ip();
            (!ip.is_loopback()).then_some((a.interface_name, ip))
        })
        .collect();
    addrs
        .iter()
        .find(|(name, _)| name == "eth0")
        .or(addrs.first())
        .map(|(_, ip)| *ip)
}

/// Where a network handler connects: its `host` (a name resolved on the node, as upstream)
/// or the pod's IP, and the host name its request carries.
async fn target(netns: &Path, host: Option<&str>, port: u16) -> Option<(SocketAddr, String)> {
    match host.filter(|h| !h.is_empty()) {
        Some(h) => {
            let addr = tokio::net::lookup_host((h, port)).await.ok()?.next()?;
            Some((addr, h.to_string()))
        }
        None => {
            let ip = pod_ip(netns).await;
            Some((SocketAddr::new(ip, port), ip.to_string()))
        }
    }
}

/// One probe attempt.
async fn attempt(p: &Probe, c: &Container, exe: &Path, dir: &Path, netns: &Path) -> bool {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(g) = &p.grpc {
        let Ok(port) = u16::try_from(g.port) else {
            return false;
        };
        let addr = SocketAddr::new(pod_ip(netns).await, port);
        return super::grpc_probe::serving(netns, addr, g.service.as_deref(), timeout).await;
    }
    let target = Target { c, exe, dir, netns };
    run(
        &target,
        p.exec.as_ref(),
        p.http_get.as_ref(),
        p.tcp_socket.as_ref(),
        timeout,
    )
    .await
}

/// Where a probe or hook runs: the container, its exec helper, and its pod's network.
pub struct Target<'a> {
    pub c: &'a Container,
    pub exe: &'a Path,
    pub dir: &'a Path,
    pub netns: &'a Path,
}

/// Runs one handler (exec, httpGet or tcpSocket) within `timeout`; true on success.
async fn run(
    t: &Target<'_>,
    exec: Option<&ExecAction>,
    http_get: Option<&HTTPGetAction>,
    tcp: Option<&TCPSocketAction>,
    timeout: Duration,
) -> bool {
    if let Some(e) = exec {
        let cmd = e.command.clone().unwrap_or_default();
        let child = tokio::process::Command::new(t.exe)
            .arg("exec")
            .arg(t.dir)
            .arg("--")
            .args(&cmd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status();
        return matches!(tokio::time::timeout(timeout, child).await, Ok(Ok(s)) if s.success());
    }
    let (port, host) = match (tcp, http_get) {
        (Some(tcp), _) => (port_of(&tcp.port, t.c), tcp.host.as_deref()),
        (None, Some(h)) => (port_of(&h.port, t.c), h.host.as_deref()),
        (None, None) => return true,
    };
    let Some(port) = port else { return false };
    let attempt = async {
        let (addr, host) = target(t.netns, host, port).await?;
        let stream = connect_in_netns(t.netns.to_path_buf(), addr, timeout)
            .await
            .ok()?;
        let Some(h) = http_get.filter(|_| tcp.is_none()) else {
            return Some(true);
        };
        let get = http::Get {
            https: h
                .scheme
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("https")),
            host,
            port,
            path: h.path.clone().unwrap_or_default(),
            headers: h
                .http_headers
                .iter()
                .flatten()
                .map(|x| (x.name.clone(), x.value.clone()))
                .collect(),
        };
        Some(
            http::status(stream, &get, timeout)
                .await
                .is_some_and(http::passes),
        )
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

/// A postStart or preStop hook, given at most `limit`; true if it succeeded.
pub async fn hook(t: &Target<'_>, h: &LifecycleHandler, limit: Duration) -> bool {
    if let Some(sleep) = &h.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(limit)).await;
        return true;
    }
    run(
        t,
        h.exec.as_ref(),
        h.http_get.as_ref(),
        h.tcp_socket.as_ref(),
        limit,
    )
    .await
}

/// Probes one running container as due; updates `state` and says whether to restart it.
async fn check(
    state: &mut State,
    c: &Container,
    running_for: Duration,
    exe: &Path,
    dir: &Path,
    netns: &Path,
) -> Verdict {
    let probes: [(&'static str, Option<&Probe>); 3] = [
        ("startup", c.startup_probe.as_ref()),
        ("liveness", c.liveness_probe.as_ref()),
        ("readiness", c.readiness_probe.as_ref()),
    ];
    if c.startup_probe.is_none() {
        state.started = true;
    }
    if c.readiness_probe.is_none() {
        state.ready = state.started;
    }
    for (kind, probe) in probes {
        let Some(p) = probe else { continue };
        if kind != "startup" && !state.started || kind == "startup" && state.started {
            continue;
        }
        if running_for < Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64) {
            continue;
        }
        let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
        if state.last.get(kind).is_some_and(|t| t.elapsed() < period) {
            continue;
        }
        state.last.insert(kind, Instant::now());
        let ok = attempt(p, c, exe, dir, netns).await;
        if ok {
            state.failures.insert(kind, 0);
            let n = state.successes.entry(kind).or_insert(0);
            *n += 1;
            if *n >= p.success_threshold.unwrap_or(1).max(1) {
                match kind {
                    "startup" => state.started = true,
                    "readiness" => state.ready = true,
                    _ => {}
                }
            }
        } else {
            state.successes.insert(kind, 0);
            let n = state.failures.entry(kind).or_insert(0);
            *n += 1;
            let failed = *n >= p.failure_threshold.unwrap_or(3).max(1);
            match kind {
                "readiness" => state.ready = false,
                _ if failed => {
                    let label = if kind == "startup" {
                        "Startup"
                    } else {
                        "Liveness"
                    };
                    return Verdict::Restart(format!(
                        "Container {} failed {} probe, will be restarted",
                        c.name,
                        label.to_lowercase()
                    ));
                }
                _ => {}
            }
        }
    }
    Verdict::Healthy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probed(kind: &str, probe: serde_json::Value) -> Container {
        serde_json::from_value(serde_json::json!({"name": "c", kind: probe})).unwrap()
    }

    async fn probe(m: &ProbeManager, id: &str, c: &Container) -> Verdict {
        let nowhere = Path::new("/nonexistent");
        m.probe(id, c, Duration::from_secs(60), nowhere, nowhere, nowhere)
            .await
    }

    #[tokio::test]
    async fn readiness_is_kept_per_container_until_forgotten() {
        let m = ProbeManager::default();
        assert!(m.ready(&Container::default(), "plain"), "no probes: ready");
        // A probe without a handler passes.
        let c = probed("readinessProbe", serde_json::json!({}));
        assert!(!m.ready(&c, "a"), "not probed yet");
        assert_eq!(probe(&m, "a", &c).await, Verdict::Healthy);
        assert!(m.ready(&c, "a"));
        assert!(!m.ready(&c, "b"), "per container");
        m.forget("a");
        assert!(!m.ready(&c, "a"));
    }

    #[tokio::test]
    async fn failed_liveness_restarts_after_its_threshold() {
        let m = ProbeManager::default();
        // A port name the container does not have: the probe fails without a connection.
        let c = probed(
            "livenessProbe",
            serde_json::json!({"tcpSocket": {"port": "missing"}, "failureThreshold": 1}),
        );
        match probe(&m, "a", &c).await {
            Verdict::Restart(msg) => assert!(msg.contains("failed liveness probe"), "{msg}"),
            v => panic!("{v:?}"),
        }
    }
}
