//! The service proxy of a node (kube-proxy's iptables mode, in-process): follows Services and
//! EndpointSlices (the node's shared `ServiceWatch`) and this node's pods (for `hostPort`s),
//! computes the rule set (`rules`) and applies it with `iptables-restore`: one full sync at
//! start, then only the chains of the Services that changed. Stale UDP conntrack entries are
//! flushed when endpoints go away.

pub mod rules;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use kinglet_core::informers::Shared;

use crate::iptables::{self, Chains};
use crate::services::{Change, ServiceWatch};
use rules::{Endpoint, HostPort, NodeView, Rules, ServicePort};

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

/// Runs the proxy from the node's Service watch and the cache of its pods (for host ports).
pub async fn run(
    services: ServiceWatch,
    node_pods: Arc<Shared<Pod>>,
    cfg: Config,
) -> anyhow::Result<()> {
    let wake = Arc::new(tokio::sync::Notify::new());
    let changes = services.subscribe(wake.clone());
    node_pods.wake_on_change(wake.clone());
    services.synced().await;
    node_pods.synced().await;
    let pods = node_pods.store();
    let mut proxier = Proxier::new(cfg);
    let mut full = true;
    let mut last_canary = tokio::time::Instant::now();
    loop {
        let started = std::time::Instant::now();
        let changed = if full {
            changes.all()
        } else {
            changes.changes()
        };
        let host_ports = host_ports(&pods.state());
        let result = {
            let p = &mut proxier;
            tokio::task::block_in_place(|| p.sync(started, changed, host_ports, full))
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
    /// What is in the kernel after the last successful sync (None: unknown, sync fully).
    programmed: Option<Programmed>,
    /// Per Service, its UDP ports and the endpoints they sent to, for conntrack clean-up
    /// (None until the first sync).
    udp: Option<HashMap<String, UdpStates>>,
    warned_conntrack: bool,
}

/// The rules in the kernel: each Service's (by `ns/name`) and the shared chains.
#[derive(Default)]
struct Programmed {
    /// Whether per-endpoint comments were written (the rules of every port depend on it).
    comments: bool,
    /// Endpoints of all ports (which decides `comments`).
    endpoints: usize,
    services: BTreeMap<String, Vec<(ServicePort, Rules)>>,
    host_ports: Vec<HostPort>,
    shared: Rules,
}

impl Programmed {
    fn ports(&self) -> impl Iterator<Item = &(ServicePort, Rules)> {
        self.services.values().flatten()
    }

    fn rule_count(&self) -> usize {
        let own = |r: &Rules| {
            rules::TABLES
                .iter()
                .flat_map(|t| r.own(t).map(|(_, l)| l.len()))
                .sum::<usize>()
        };
        self.shared.rule_count() + self.ports().map(|(_, r)| own(r)).sum::<usize>()
    }
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
            programmed: None,
            udp: None,
            warned_conntrack: false,
        }
    }

    /// Brings the kernel's rules to what the `changed` Services and `host_ports` want
    /// (`started` is when the sync began, for the log). With `full`, `changed` has every
    /// Service and every chain is written again (and leftovers of ours deleted).
    fn sync(
        &mut self,
        started: std::time::Instant,
        changed: Vec<Change>,
        host_ports: Vec<HostPort>,
        full: bool,
    ) -> anyhow::Result<()> {
        let node = NodeView {
            cluster_cidr: self.cfg.cluster_cidr,
        };
        // Until the restore succeeds, the kernel's state is unknown: a failure forces a full sync.
        let before = self.programmed.take().filter(|_| !full);
        let plan = plan(&node, &self.cfg, before, changed, host_ports);
        let incremental = plan.writes.iter().all(|(_, old, _)| old.is_some());
        // The kernel's chains and jumps, for a full sync: missing jumps are added first, and
        // the chains of ours no longer wanted are deleted by the same restore that writes ours.
        let saved = match incremental {
            true => None,
            false => Some(iptables::Saved::read()?),
        };
        if let Some(saved) = &saved {
            saved.add_missing_jumps(rules::JUMPS)?;
        }
        let mut input = String::new();
        for (table, old, new) in &plan.writes {
            let stale = match (old, &saved) {
                (None, Some(saved)) => saved.chains(table, rules::owned),
                _ => Vec::new(),
            };
            let t = iptables::restore_input(table, old.as_ref(), new, &stale);
            if t.lines().count() > 2 {
                input.push_str(&t);
            }
        }
        let computed_ms = started.elapsed().as_secs_f64() * 1000.0;
        if !input.is_empty() {
            iptables::restore(&input)?;
        }
        let programmed = plan.programmed;
        if !input.is_empty() {
            let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
            let services = programmed.services.len();
            if !incremental {
                let rules = programmed.rule_count();
                tracing::info!(
                    services,
                    rules,
                    computed_ms,
                    elapsed_ms,
                    "service rules written (full sync)"
                );
            } else if tracing::enabled!(tracing::Level::DEBUG) {
                let rules = programmed.rule_count();
                tracing::debug!(
                    services,
                    rules,
                    computed_ms,
                    elapsed_ms,
                    "service rules synced"
                );
            }
        }
        self.flush_stale_udp(&programmed, plan.touched, full);
        self.programmed = Some(programmed);
        Ok(())
    }

    /// Deletes conntrack entries of UDP flows that would keep going to endpoints that are gone
    /// (UDP has no connection to reset), and of flows to services that just got endpoints,
    /// looking at the `touched` Services (all of them when `full`). The first sync only records
    /// the state: a restart must not disturb running flows.
    fn flush_stale_udp(&mut self, programmed: &Programmed, touched: Vec<String>, full: bool) {
        let first = self.udp.is_none();
        let udp = self.udp.get_or_insert_default();
        let touched: BTreeSet<String> = if full {
            let was = udp.keys().cloned();
            was.chain(programmed.services.keys().cloned()).collect()
        } else {
            touched.into_iter().collect()
        };
        let mut deletions = Vec::new();
        for key in touched {
            let now = (programmed.services.get(&key).into_iter().flatten()).map(|p| &p.0);
            let now = udp_state(now);
            let was = udp.remove(&key).unwrap_or_default();
            deletions.extend(stale_udp_flows(&was, &now));
            if !now.is_empty() {
                udp.insert(key, now);
            }
        }
        if first {
            return;
        }
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

/// Per table, the chains to write: (table, what is in the kernel, what is wanted). With no
/// rules before (a full sync) the kernel's state is unknown and every chain is wanted;
/// otherwise only the shared chains and the own chains of ports that changed are compared.
type Writes = Vec<(&'static str, Option<Chains>, Chains)>;

struct Plan {
    programmed: Programmed,
    writes: Writes,
    /// The Services whose ports were looked at again.
    touched: Vec<String>,
}

fn endpoints<'a>(ports: impl Iterator<Item = &'a ServicePort>) -> usize {
    ports.map(|sp| sp.endpoints.len()).sum()
}

/// The shared-chain lines of a Service's ports (KUBE-SERVICES jumps, REJECTs, ...).
fn shared_lines(ports: &[(ServicePort, Rules)]) -> Vec<(&String, &Vec<String>)> {
    let mut out = Vec::new();
    for (_, r) in ports {
        for table in rules::TABLES {
            let t = r.table(table);
            out.extend(t.iter().filter(|(c, _)| rules::is_shared(table, c)));
        }
    }
    out
}

/// The rules after the `changed` Services and what to write to get there from `before`.
/// Only the changed Services are looked at, and of them only the ports that changed get new
/// rules: at 10,000 Services a change costs one Service's work. The shared chains are rebuilt
/// only when a Service's lines in them (or the host ports) changed.
fn plan(
    node: &NodeView,
    cfg: &Config,
    before: Option<Programmed>,
    changed: Vec<Change>,
    host_ports: Vec<HostPort>,
) -> Plan {
    let mut full = before.is_none();
    let mut p = before.unwrap_or_default();
    let old_comments = p.comments;
    let mut shared_changed = full || host_ports != p.host_ports;
    p.host_ports = host_ports;
    let mut updates: Vec<(String, Vec<ServicePort>)> = changed
        .into_iter()
        .map(|c| {
            let ports = c
                .now
                .map_or_else(Vec::new, |s| service_ports(&s.service, &s.slices(), cfg));
            (c.key, ports)
        })
        .collect();
    for (key, ports) in &updates {
        let was = p.services.get(key).into_iter().flatten().map(|(sp, _)| sp);
        p.endpoints = p.endpoints.saturating_sub(endpoints(was)) + endpoints(ports.iter());
    }
    p.comments = rules::comments(p.endpoints);
    if !full && p.comments != old_comments {
        // Every port's rules change: compute and write them all again.
        let listed: BTreeSet<String> = updates.iter().map(|(k, _)| k.clone()).collect();
        for (key, ports) in &p.services {
            if !listed.contains(key) {
                updates.push((
                    key.clone(),
                    ports.iter().map(|(sp, _)| sp.clone()).collect(),
                ));
            }
        }
        p.services.clear();
        full = true;
        shared_changed = true;
    }
    let (mut old_own, mut new_own) = (Rules::default(), Rules::default());
    let mut touched = Vec::with_capacity(updates.len());
    for (key, ports) in updates {
        let mut was = p.services.remove(&key).unwrap_or_default();
        let shared_before: Vec<(String, Vec<String>)> = (shared_lines(&was).into_iter())
            .map(|(c, l)| (c.clone(), l.clone()))
            .collect();
        let mut now = Vec::with_capacity(ports.len());
        for sp in ports {
            let r = match was.iter().position(|(p, _)| *p == sp) {
                Some(i) => was.swap_remove(i).1,
                None => {
                    let r = rules::port_rules(node, &sp, p.comments);
                    new_own.add_own(&r);
                    r
                }
            };
            now.push((sp, r));
        }
        for (_, r) in &was {
            old_own.add_own(r); // ports that are gone
        }
        let shared_now = shared_lines(&now);
        shared_changed |= shared_now.len() != shared_before.len()
            || (shared_now.iter().zip(&shared_before))
                .any(|((c, l), (bc, bl))| *c != bc || *l != bl);
        if !now.is_empty() {
            p.services.insert(key.clone(), now);
        }
        touched.push(key);
    }
    // What was in the shared chains, if they change.
    let old_shared = shared_changed.then(|| {
        let now = rules::shared(p.ports().map(|(_, r)| r), &p.host_ports);
        std::mem::replace(&mut p.shared, now)
    });
    let writes = rules::TABLES
        .into_iter()
        .map(|table| {
            // Taken, not copied: at a full sync these are all 80,000 rules of 10,000 Services.
            let mut new = std::mem::take(new_own.table_mut(table));
            if full {
                new.extend(p.shared.table(table).clone());
                return (table, None, new);
            }
            // Only the shared chains that differ are copied (KUBE-SERVICES is one line per
            // service port).
            let mut old = std::mem::take(old_own.table_mut(table));
            if let Some(old_shared) = &old_shared {
                for (chain, lines) in p.shared.table(table) {
                    let before = old_shared.table(table).get(chain);
                    if before != Some(lines) {
                        old.extend(before.map(|b| (chain.clone(), b.clone())));
                        new.insert(chain.clone(), lines.clone());
                    }
                }
            }
            (table, Some(old), new)
        })
        .collect();
    Plan {
        programmed: p,
        writes,
        touched,
    }
}

type UdpStates = HashMap<String, UdpState>;

/// Per UDP service port: where clients send, and the endpoints new flows may go to.
fn udp_state<'a>(ports: impl Iterator<Item = &'a ServicePort>) -> UdpStates {
    let mut out = HashMap::new();
    for sp in ports.filter(|p| p.protocol == "udp") {
        let mut destinations = vec![sp.cluster_ip];
        destinations.extend(&sp.external_ips);
        let endpoints = sp
            .usable(false)
            .into_iter()
            .chain(sp.usable(true))
            .map(|e| e.ip)
            .collect();
        out.insert(
            sp.id(),
            UdpState {
                destinations,
                node_port: sp.node_port,
                endpoints,
            },
        );
    }
    out
}

/// `conntrack -D -p udp` arguments for the flows made stale between `old` and `new`.
fn stale_udp_flows(old: &UdpStates, new: &UdpStates) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut to = |dst: &[&str]| out.push(dst.iter().map(|s| s.to_string()).collect());
    for (id, was) in old {
        let kept = new.get(id).map(|n| &n.endpoints);
        for gone in was
            .endpoints
            .iter()
            .filter(|e| kept.is_none_or(|k| !k.contains(e)))
        {
            let gone = gone.to_string();
            for d in &was.destinations {
                to(&["--orig-dst", &d.to_string(), "--dst-nat", &gone]);
            }
            if let Some(np) = was.node_port {
                to(&["--dport", &np.to_string(), "--dst-nat", &gone]);
            }
        }
    }
    for (id, is) in new {
        let had = old.get(id).is_some_and(|o| !o.endpoints.is_empty());
        if !had && !is.endpoints.is_empty() {
            // Flows seen while nothing served (rejected or unDNATed) must not linger.
            for d in &is.destinations {
                to(&["--orig-dst", &d.to_string()]);
            }
        }
    }
    out.sort();
    out
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
        for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state(eps: &[&str]) -> UdpState {
        UdpState {
            destinations: vec!["10.43.0.53".parse().unwrap()],
            node_port: Some(30053),
            endpoints: eps.iter().map(|e| e.parse().unwrap()).collect(),
        }
    }

    fn restore_inputs(writes: &Writes) -> String {
        writes
            .iter()
            .map(|(t, old, new)| iptables::restore_input(t, old.as_ref(), new, &[]))
            .collect()
    }

    #[test]
    fn a_sync_writes_only_the_services_that_changed() {
        use crate::services::tests::Event;
        use crate::services::tests::{fed, service, slice};
        let node = NodeView {
            cluster_cidr: "10.42.0.0/16".parse().unwrap(),
        };
        let cfg = Config {
            node_name: "n1".into(),
            cluster_cidr: node.cluster_cidr,
            local_service_ips: vec![],
        };
        let (watch, sub) = fed();
        watch.service(Event::Apply(service("a", "10.43.0.10", "1")));
        watch.service(Event::Apply(service("b", "10.43.0.11", "2")));
        watch.slice(Event::Apply(slice("a", &["10.42.0.5"], "3")));
        watch.slice(Event::Apply(slice("b", &["10.42.0.6"], "4")));
        let first = plan(&node, &cfg, None, sub.all(), vec![]);
        assert!(
            first.writes.iter().all(|(_, old, _)| old.is_none()),
            "a full sync"
        );
        let ports: Vec<ServicePort> = first.programmed.ports().map(|p| p.0.clone()).collect();
        assert_eq!(ports.len(), 2);
        assert_eq!(first.writes[1].2, rules::compute(&node, &ports, &[]).nat);
        let a_svc = ports[0].chain("KUBE-SVC-");

        // b gets another endpoint: a's chains are not written again.
        watch.slice(Event::Apply(slice("b", &["10.42.0.6", "10.42.0.7"], "5")));
        let second = plan(&node, &cfg, Some(first.programmed), sub.changes(), vec![]);
        assert_eq!(second.touched, ["default/b"]);
        let input = restore_inputs(&second.writes);
        assert!(!input.contains(&a_svc), "a is unchanged: {input}");
        assert!(input.contains("10.42.0.7:8080"), "{input}");
        assert!(
            !input.contains(":KUBE-SERVICES"),
            "same cluster IP jumps: {input}"
        );
        let ports: Vec<ServicePort> = second.programmed.ports().map(|p| p.0.clone()).collect();
        assert_eq!(
            second.programmed.rule_count(),
            rules::compute(&node, &ports, &[]).rule_count()
        );
        assert_eq!(second.programmed.endpoints, 3);

        // A new version of a with the same content changes nothing.
        watch.service(Event::Apply(service("a", "10.43.0.10", "6")));
        let third = plan(&node, &cfg, Some(second.programmed), sub.changes(), vec![]);
        assert_eq!(
            restore_inputs(&third.writes),
            "*filter\nCOMMIT\n*nat\nCOMMIT\n"
        );

        // a goes away: its chains are deleted and the jump to them goes.
        watch.service(Event::Delete(service("a", "10.43.0.10", "6")));
        let fourth = plan(&node, &cfg, Some(third.programmed), sub.changes(), vec![]);
        let input = restore_inputs(&fourth.writes);
        assert!(input.contains(&format!("-X {a_svc}")), "{input}");
        assert!(input.contains(":KUBE-SERVICES - [0:0]"), "{input}");
        assert!(!input.contains("10.42.0.7"), "b is unchanged: {input}");
        assert_eq!(fourth.programmed.endpoints, 2);
        assert_eq!(fourth.programmed.services.len(), 1);
    }

    #[test]
    fn udp_flows_to_removed_endpoints_are_flushed() {
        let old = UdpStates::from([("ns/dns".to_string(), state(&["10.42.0.5", "10.42.0.6"]))]);
        let new = UdpStates::from([("ns/dns".to_string(), state(&["10.42.0.6"]))]);
        assert_eq!(
            stale_udp_flows(&old, &new),
            vec![
                vec!["--dport", "30053", "--dst-nat", "10.42.0.5"],
                vec!["--orig-dst", "10.43.0.53", "--dst-nat", "10.42.0.5"],
            ]
        );
        assert!(stale_udp_flows(&new, &new).is_empty());
        // A service that gets its first endpoint: everything to its address goes.
        let empty = UdpStates::from([("ns/dns".to_string(), state(&[]))]);
        assert_eq!(
            stale_udp_flows(&empty, &new),
            vec![vec!["--orig-dst", "10.43.0.53"]]
        );
        // A deleted service: its endpoints' flows go.
        assert_eq!(stale_udp_flows(&new, &UdpStates::new()).len(), 2);
    }
}
