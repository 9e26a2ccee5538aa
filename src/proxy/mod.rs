//! The service proxy of a node (kube-proxy's iptables mode, in-process): watches Services,
//! EndpointSlices and this node's pods (for `hostPort`s), computes the rule set (`rules`) and
//! applies it with `iptables-restore`: one full sync at start, then only the chains that
//! changed. Stale UDP conntrack entries are flushed when endpoints go away.

pub mod rules;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::network::iptables::{self, Chains};
use rules::{Endpoint, HostPort, NodeView, ServicePort};

/// How often the canary chain is checked (someone flushing the tables triggers a full sync).
const CANARY_CHECK: Duration = Duration::from_secs(30);
/// Changes arriving this close together are applied in one restore.
const BATCH: Duration = Duration::from_millis(10);

#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    pub cluster_cidr: Ipv4Net,
    /// Service addresses the node answers itself (the cluster DNS): no rules for them.
    pub local_service_ips: Vec<Ipv4Addr>,
}

fn watch<K>(api: Api<K>, cfg: watcher::Config, wake: Arc<tokio::sync::Notify>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
    K: serde::de::DeserializeOwned,
{
    let (store, writer) = reflector::store::<K>();
    let events = watcher(api, cfg)
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    tokio::spawn(events.for_each(move |_| {
        wake.notify_one();
        async {}
    }));
    store
}

pub async fn run(client: kube::Client, cfg: Config) -> anyhow::Result<()> {
    let wake = Arc::new(tokio::sync::Notify::new());
    let services = watch(
        Api::<Service>::all(client.clone()),
        Default::default(),
        wake.clone(),
    );
    let slices = watch(
        Api::<EndpointSlice>::all(client.clone()),
        Default::default(),
        wake.clone(),
    );
    let pods = watch(
        Api::<Pod>::all(client),
        watcher::Config::default().fields(&format!("spec.nodeName={}", cfg.node_name)),
        wake.clone(),
    );
    for ready in [
        services.wait_until_ready().await.is_ok(),
        slices.wait_until_ready().await.is_ok(),
        pods.wait_until_ready().await.is_ok(),
    ] {
        anyhow::ensure!(ready, "the proxy's watches ended before they synced");
    }
    let mut proxier = Proxier::new(cfg);
    let mut full = true;
    let mut last_canary = tokio::time::Instant::now();
    loop {
        let ports = proxier.service_ports(&services.state(), &slices.state());
        let host_ports = host_ports(&pods.state());
        let result = {
            let p = &mut proxier;
            tokio::task::block_in_place(|| p.sync(ports, &host_ports, full))
        };
        match result {
            Ok(()) => full = false,
            Err(e) => {
                tracing::warn!("service proxy: {e:#}");
                full = true;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        tokio::select! {
            _ = wake.notified() => tokio::time::sleep(BATCH).await,
            _ = tokio::time::sleep(CANARY_CHECK) => {}
        }
        if last_canary.elapsed() >= CANARY_CHECK {
            last_canary = tokio::time::Instant::now();
            if !iptables::chain_exists("nat", rules::CANARY) {
                tracing::info!("service rules were flushed from outside; rewriting them all");
                full = true;
            }
        }
    }
}

/// Removes every chain and jump the proxy installed (`kinglet` uninstall).
pub fn cleanup() -> anyhow::Result<()> {
    for table in ["nat", "filter"] {
        iptables::remove(rules::JUMPS, table, rules::owned)?;
    }
    Ok(())
}

struct Proxier {
    cfg: Config,
    /// What is in the kernel, per table, after the last successful sync.
    filter: Option<Chains>,
    nat: Option<Chains>,
    /// UDP service ports and the endpoints they sent to, for conntrack clean-up.
    udp: HashMap<String, UdpState>,
    warned_conntrack: bool,
}

#[derive(Clone, PartialEq)]
struct UdpState {
    destinations: Vec<Ipv4Addr>,
    node_port: Option<u16>,
    endpoints: BTreeSet<Ipv4Addr>,
}

impl Proxier {
    fn new(cfg: Config) -> Proxier {
        Proxier {
            cfg,
            filter: None,
            nat: None,
            udp: HashMap::new(),
            warned_conntrack: false,
        }
    }

    fn service_ports(
        &self,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
    ) -> Vec<ServicePort> {
        let mut by_service: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
        for s in slices {
            if s.address_type != "IPv4" {
                continue;
            }
            if let Some(svc) = s.labels().get("kubernetes.io/service-name") {
                by_service
                    .entry((s.namespace().unwrap_or_default(), svc.clone()))
                    .or_default()
                    .push(s);
            }
        }
        let mut out: Vec<ServicePort> = services
            .iter()
            .flat_map(|svc| {
                let key = (svc.namespace().unwrap_or_default(), svc.name_any());
                let slices = by_service.get(&key).map(Vec::as_slice).unwrap_or(&[]);
                service_ports(svc, slices, &self.cfg)
            })
            .collect();
        out.sort_by(|a, b| a.id().cmp(&b.id()).then(a.protocol.cmp(&b.protocol)));
        out
    }

    fn sync(
        &mut self,
        ports: Vec<ServicePort>,
        host_ports: &[HostPort],
        full: bool,
    ) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let node = NodeView {
            cluster_cidr: self.cfg.cluster_cidr,
        };
        let (filter, nat) = rules::compute(&node, &ports, host_ports);
        let mut input = String::new();
        for (table, old, new) in [("filter", &self.filter, &filter), ("nat", &self.nat, &nat)] {
            let (old, stale) = if full {
                let stale: Vec<String> = iptables::chains(table)?
                    .into_iter()
                    .filter(|c| rules::owned(c))
                    .collect();
                (None, stale)
            } else {
                (old.as_ref(), Vec::new())
            };
            let t = iptables::restore_input(table, old, new, &stale);
            if t.lines().count() > 2 {
                input.push_str(&t);
            }
        }
        if !input.is_empty() {
            // Until it succeeds, the kernel's state is unknown: a failure forces a full sync.
            self.filter = None;
            self.nat = None;
            iptables::restore(&input)?;
        }
        if full {
            iptables::ensure_jumps(rules::JUMPS)?;
        }
        self.filter = Some(filter);
        self.nat = Some(nat);
        if !input.is_empty() {
            tracing::debug!(
                services = ports.len(),
                full,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "service rules synced"
            );
        }
        self.flush_stale_udp(&ports);
        Ok(())
    }

    /// Deletes conntrack entries of UDP flows that would keep going to endpoints that are gone
    /// (UDP has no connection to reset), and of flows to services that just got endpoints.
    fn flush_stale_udp(&mut self, ports: &[ServicePort]) {
        let mut now = HashMap::new();
        for sp in ports.iter().filter(|p| p.protocol == "udp") {
            let mut destinations = vec![sp.cluster_ip];
            destinations.extend(&sp.external_ips);
            let state = UdpState {
                destinations,
                node_port: sp.node_port,
                endpoints: sp.endpoints.iter().map(|e| e.ip).collect(),
            };
            now.insert(format!("{}/{}", sp.id(), sp.protocol), state);
        }
        let mut deletions: Vec<Vec<String>> = Vec::new();
        for (id, new) in &now {
            match self.udp.get(id) {
                Some(old) if old == new => {}
                Some(old) => {
                    for gone in old.endpoints.difference(&new.endpoints) {
                        for d in &old.destinations {
                            deletions.push(vec![
                                "--orig-dst".into(),
                                d.to_string(),
                                "--dst-nat".into(),
                                gone.to_string(),
                            ]);
                        }
                        if let Some(np) = old.node_port {
                            deletions.push(vec![
                                "--dport".into(),
                                np.to_string(),
                                "--dst-nat".into(),
                                gone.to_string(),
                            ]);
                        }
                    }
                    if old.endpoints.is_empty() && !new.endpoints.is_empty() {
                        for d in &new.destinations {
                            deletions.push(vec!["--orig-dst".into(), d.to_string()]);
                        }
                    }
                }
                None if !new.endpoints.is_empty() => {
                    for d in &new.destinations {
                        deletions.push(vec!["--orig-dst".into(), d.to_string()]);
                    }
                }
                None => {}
            }
        }
        for (id, old) in &self.udp {
            if !now.contains_key(id) {
                for gone in &old.endpoints {
                    deletions.push(vec![
                        "--dst-nat".into(),
                        gone.to_string(),
                        "--orig-dst".into(),
                        old.destinations[0].to_string(),
                    ]);
                }
            }
        }
        self.udp = now;
        for args in deletions {
            let r = std::process::Command::new("conntrack")
                .args(["-D", "-p", "udp"])
                .args(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            // conntrack exits 1 when nothing matched; only a missing tool is worth a warning.
            if r.is_err() && !self.warned_conntrack {
                self.warned_conntrack = true;
                tracing::warn!("conntrack is not installed: stale UDP flows are not flushed");
            }
        }
    }
}

/// The service ports of `svc` with their endpoints from `slices` (the service's own).
fn service_ports(svc: &Service, slices: &[&EndpointSlice], cfg: &Config) -> Vec<ServicePort> {
    let Some(spec) = &svc.spec else { return vec![] };
    if spec.type_.as_deref() == Some("ExternalName") {
        return vec![];
    }
    let Some(cluster_ip) = spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
    else {
        return vec![]; // headless, or not IPv4
    };
    if cfg.local_service_ips.contains(&cluster_ip) {
        return vec![];
    }
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    let external_capable = matches!(type_, "NodePort" | "LoadBalancer");
    let mut external_ips: Vec<Ipv4Addr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    if type_ == "LoadBalancer" {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for i in ingress.into_iter().flatten() {
            if i.ip_mode.as_deref() != Some("Proxy")
                && let Some(ip) = i.ip.as_deref().and_then(|ip| ip.parse().ok())
                && !external_ips.contains(&ip)
            {
                external_ips.push(ip);
            }
        }
    }
    let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(10800)
    });
    let mut out = Vec::new();
    for p in spec.ports.iter().flatten() {
        let protocol = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
        let port_name = p.name.clone().unwrap_or_default();
        let mut endpoints: Vec<Endpoint> = Vec::new();
        for slice in slices {
            let Some(port) = slice.ports.iter().flatten().find(|sp| {
                sp.name.clone().unwrap_or_default() == port_name
                    && sp
                        .protocol
                        .as_deref()
                        .unwrap_or("TCP")
                        .eq_ignore_ascii_case(&protocol)
            }) else {
                continue;
            };
            let Some(port) = port.port.and_then(|n| u16::try_from(n).ok()) else {
                continue;
            };
            for e in &slice.endpoints {
                let Some(ip) = e.addresses.first().and_then(|a| a.parse::<Ipv4Addr>().ok()) else {
                    continue;
                };
                if endpoints.iter().any(|x| x.ip == ip && x.port == port) {
                    continue;
                }
                let c = e.conditions.as_ref();
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                endpoints.push(Endpoint {
                    ip,
                    port,
                    ready,
                    serving: c.and_then(|c| c.serving).unwrap_or(ready),
                    terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                    local: e.node_name.as_deref() == Some(cfg.node_name.as_str()),
                });
            }
        }
        endpoints.sort_by_key(|e| (e.ip, e.port));
        let external = external_capable || !external_ips.is_empty();
        out.push(ServicePort {
            namespace: svc.namespace().unwrap_or_default(),
            name: svc.name_any(),
            port_name,
            protocol,
            cluster_ip,
            port: u16::try_from(p.port).unwrap_or(0),
            node_port: p
                .node_port
                .filter(|_| external_capable)
                .and_then(|n| u16::try_from(n).ok()),
            external_ips: external_ips.clone(),
            affinity_seconds,
            external_local: external && spec.external_traffic_policy.as_deref() == Some("Local"),
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            endpoints,
        });
    }
    out
}

/// `hostPort`s of this node's running pods (hostNetwork pods bind the node's ports directly).
fn host_ports(pods: &[Arc<Pod>]) -> Vec<HostPort> {
    let mut out: BTreeMap<(String, u16, Option<Ipv4Addr>), HostPort> = BTreeMap::new();
    for pod in pods {
        let (Some(spec), Some(status)) = (&pod.spec, &pod.status) else {
            continue;
        };
        if spec.host_network == Some(true) || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(pod_ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()) else {
            continue;
        };
        for c in &spec.containers {
            for p in c.ports.iter().flatten() {
                let Some(host_port) = p
                    .host_port
                    .and_then(|h| u16::try_from(h).ok())
                    .filter(|h| *h > 0)
                else {
                    continue;
                };
                let protocol = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                let host_ip = p
                    .host_ip
                    .as_deref()
                    .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                    .filter(|ip| !ip.is_unspecified());
                out.entry((protocol.clone(), host_port, host_ip))
                    .or_insert(HostPort {
                        protocol,
                        host_ip,
                        host_port,
                        pod_ip,
                        container_port: u16::try_from(p.container_port).unwrap_or(0),
                    });
            }
        }
    }
    out.into_values().collect()
}
