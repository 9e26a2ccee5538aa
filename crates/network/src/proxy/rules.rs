//! The rule set, as kube-proxy's iptables mode lays it out (chain names, jumps, marks), computed
//! from plain service ports so it can be tested without a kernel. `crate::proxy` turns API
//! objects into `ServicePort`s and applies what this module computes.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::iptables::{Chains, Jump, chain_name};

pub const SERVICES: &str = "KUBE-SERVICES";
pub const EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
pub const NODEPORTS: &str = "KUBE-NODEPORTS";
pub const FORWARD: &str = "KUBE-FORWARD";
pub const MARK_MASQ: &str = "KUBE-MARK-MASQ";
pub const POSTROUTING: &str = "KUBE-POSTROUTING";
pub const HOSTPORTS: &str = "KUBE-HOSTPORTS";
/// An empty chain whose disappearance means someone flushed the tables: time for a full sync.
pub const CANARY: &str = "KUBE-PROXY-CANARY";
const MASQ_MARK: &str = "0x4000/0x4000";
/// Above this many endpoints, per-endpoint comments are left out (as upstream does) to keep
/// restores fast.
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// Whether a chain of `table` is one the proxy owns (and may flush or delete).
pub fn owned(chain: &str) -> bool {
    chain.starts_with("KUBE-")
}

/// The jumps from built-in chains into ours, as upstream installs them.
pub const JUMPS: &[Jump] = &[
    Jump {
        table: "filter",
        from: "INPUT",
        rule: &[
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "kubernetes externally-visible service portals",
            "-j",
            EXTERNAL_SERVICES,
        ],
        first: true,
    },
    Jump {
        table: "filter",
        from: "FORWARD",
        rule: &[
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "kubernetes externally-visible service portals",
            "-j",
            EXTERNAL_SERVICES,
        ],
        first: true,
    },
    Jump {
        table: "filter",
        from: "FORWARD",
        rule: &[
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            SERVICES,
        ],
        first: true,
    },
    Jump {
        table: "filter",
        from: "OUTPUT",
        rule: &[
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            SERVICES,
        ],
        first: true,
    },
    Jump {
        table: "filter",
        from: "FORWARD",
        rule: &[
            "-m",
            "comment",
            "--comment",
            "kubernetes forwarding rules",
            "-j",
            FORWARD,
        ],
        first: true,
    },
    Jump {
        table: "nat",
        from: "PREROUTING",
        rule: &[
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            SERVICES,
        ],
        first: true,
    },
    Jump {
        table: "nat",
        from: "OUTPUT",
        rule: &[
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            SERVICES,
        ],
        first: true,
    },
    Jump {
        table: "nat",
        from: "POSTROUTING",
        rule: &[
            "-m",
            "comment",
            "--comment",
            "kubernetes postrouting rules",
            "-j",
            POSTROUTING,
        ],
        first: true,
    },
    Jump {
        table: "nat",
        from: "PREROUTING",
        rule: &[
            "-m",
            "comment",
            "--comment",
            "kube hostport portals",
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-j",
            HOSTPORTS,
        ],
        first: true,
    },
    Jump {
        table: "nat",
        from: "OUTPUT",
        rule: &[
            "-m",
            "comment",
            "--comment",
            "kube hostport portals",
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-j",
            HOSTPORTS,
        ],
        first: true,
    },
];

/// What the rules depend on besides the services.
#[derive(Clone, Debug)]
pub struct NodeView {
    pub cluster_cidr: Ipv4Net,
}

/// One port of one Service, with its endpoints: the unit kube-proxy programs.
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    /// `spec.externalIPs` and `status.loadBalancer.ingress` addresses.
    pub external_ips: Vec<Ipv4Addr>,
    /// `sessionAffinity: ClientIP` with this timeout in seconds.
    pub affinity_seconds: Option<u32>,
    pub external_local: bool,
    pub internal_local: bool,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node.
    pub local: bool,
}

/// A `hostPort` of a pod on this node.
#[derive(Clone, Debug, PartialEq)]
pub struct HostPort {
    pub protocol: String,
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub pod_ip: Ipv4Addr,
    pub container_port: u16,
}

impl ServicePort {
    /// `ns/name:port` (`ns/name` for an unnamed port), upstream's ServicePortName.
    pub fn id(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }

    pub fn chain(&self, prefix: &str) -> String {
        chain_name(prefix, &format!("{}{}", self.id(), self.protocol))
    }

    fn endpoint_chain(&self, e: &Endpoint) -> String {
        chain_name(
            "KUBE-SEP-",
            &format!("{}{}{}:{}", self.id(), self.protocol, e.ip, e.port),
        )
    }

    /// Endpoints new connections may go to: the ready ones, or, when none is ready, the ones
    /// still serving while terminating (so a rollout drains instead of dropping).
    pub fn usable(&self, only_local: bool) -> Vec<&Endpoint> {
        let mine = || {
            self.endpoints
                .iter()
                .filter(move |e| !only_local || e.local)
        };
        let ready: Vec<&Endpoint> = mine().filter(|e| e.ready).collect();
        if !ready.is_empty() {
            return ready;
        }
        mine().filter(|e| e.serving && e.terminating).collect()
    }

    fn has_external(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty()
    }

    /// `-p tcp -m tcp --dport N` for `port`.
    fn match_port(&self, port: u16) -> String {
        format!("-p {p} -m {p} --dport {port}", p = self.protocol)
    }
}

fn rules<'a>(t: &'a mut Chains, chain: &str) -> &'a mut Vec<String> {
    t.entry(chain.to_string()).or_default()
}

/// The chains every node has, whatever its services: a port's lines in them are merged in
/// port order; every other chain belongs to one service port.
const SHARED_FILTER: [&str; 4] = [SERVICES, EXTERNAL_SERVICES, FORWARD, NODEPORTS];
const SHARED_NAT: [&str; 6] = [
    SERVICES,
    NODEPORTS,
    MARK_MASQ,
    POSTROUTING,
    HOSTPORTS,
    CANARY,
];

/// Whether `chain` of `table` is one of the shared chains.
pub fn is_shared(table: &str, chain: &str) -> bool {
    match table {
        "filter" => SHARED_FILTER.contains(&chain),
        _ => SHARED_NAT.contains(&chain),
    }
}

/// Whether comments are written, given the number of endpoints of all ports: not in large
/// clusters, to keep restores fast. Upstream leaves out the per-endpoint ones there; kinglet
/// leaves out the per-service ones too: at 10,000 Services they cost a quarter of a full
/// restore and ~10 ms of kernel time per change (iptables-nft makes each an xtables match).
pub fn comments(endpoints: usize) -> bool {
    endpoints <= LARGE_CLUSTER_ENDPOINTS
}

/// Rules of the two tables the proxy programs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules {
    pub filter: Chains,
    pub nat: Chains,
}

pub const TABLES: [&str; 2] = ["filter", "nat"];

impl Rules {
    pub fn table(&self, table: &str) -> &Chains {
        if table == "filter" {
            &self.filter
        } else {
            &self.nat
        }
    }

    pub fn table_mut(&mut self, table: &str) -> &mut Chains {
        if table == "filter" {
            &mut self.filter
        } else {
            &mut self.nat
        }
    }

    /// The chains of `table` in one port's rules that are its own (not shared).
    pub fn own<'a>(
        &'a self,
        table: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Vec<String>)> {
        self.table(table)
            .iter()
            .filter(move |(c, _)| !is_shared(table, c))
    }

    /// Adds copies of the own chains of `port` (one port's rules).
    pub fn add_own(&mut self, port: &Rules) {
        for (table, to) in [("filter", &mut self.filter), ("nat", &mut self.nat)] {
            to.extend(port.own(table).map(|(c, l)| (c.clone(), l.clone())));
        }
    }

    pub fn rule_count(&self) -> usize {
        self.filter
            .values()
            .chain(self.nat.values())
            .map(Vec::len)
            .sum()
    }
}

/// The whole rule set. Every chain named is owned by the proxy.
#[cfg(test)]
pub fn compute(node: &NodeView, ports: &[ServicePort], host_ports: &[HostPort]) -> Rules {
    let comments = comments(ports.iter().map(|p| p.endpoints.len()).sum());
    let per_port: Vec<Rules> = ports
        .iter()
        .map(|sp| port_rules(node, sp, comments))
        .collect();
    let mut all = shared(per_port.iter(), host_ports);
    for r in &per_port {
        all.add_own(r);
    }
    all
}

/// The shared chains: their fixed rules, the lines of each port's rules (`per_port`, in port
/// order) and the host ports.
pub fn shared<'a>(per_port: impl Iterator<Item = &'a Rules>, host_ports: &[HostPort]) -> Rules {
    let mut filter: Chains = SHARED_FILTER
        .iter()
        .map(|c| (c.to_string(), Vec::new()))
        .collect();
    let mut nat: Chains = SHARED_NAT
        .iter()
        .map(|c| (c.to_string(), Vec::new()))
        .collect();
    rules(&mut filter, FORWARD).extend([
        "-m conntrack --ctstate INVALID -j DROP".to_string(),
        format!("-m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK} -j ACCEPT"),
        "-m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".to_string(),
    ]);
    rules(&mut nat, MARK_MASQ).push("-j MARK --or-mark 0x4000".into());
    rules(&mut nat, POSTROUTING).extend([
        format!("-m mark ! --mark {MASQ_MARK} -j RETURN"),
        "-j MARK --xor-mark 0x4000".to_string(),
        "-m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully".to_string(),
    ]);
    for port in per_port {
        for (to, mine, names) in [
            (&mut filter, &port.filter, &SHARED_FILTER[..]),
            (&mut nat, &port.nat, &SHARED_NAT[..]),
        ] {
            for name in names {
                if let (Some(lines), Some(to)) = (mine.get(*name), to.get_mut(*name)) {
                    to.extend(lines.iter().cloned());
                }
            }
        }
    }
    rules(&mut nat, SERVICES).push(format!(
        "-m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j {NODEPORTS}"
    ));

    for hp in host_ports {
        let dst = hp
            .host_ip
            .map(|ip| format!("-d {ip}/32 "))
            .unwrap_or_default();
        let m = format!(
            "{dst}-p {p} -m {p} --dport {}",
            hp.host_port,
            p = hp.protocol
        );
        let hostports = rules(&mut nat, HOSTPORTS);
        // Hairpin (a pod reaching itself through its host port) and node-local clients need
        // their source rewritten for the reply to come back through the node.
        hostports.push(format!("{m} -s {}/32 -j {MARK_MASQ}", hp.pod_ip));
        hostports.push(format!("{m} -s 127.0.0.0/8 -j {MARK_MASQ}"));
        hostports.push(format!(
            "{m} -j DNAT --to-destination {}:{}",
            hp.pod_ip, hp.container_port
        ));
    }
    Rules { filter, nat }
}

/// The rules of one service port: (filter, nat) chains, its own (`KUBE-SVC-`, `KUBE-SEP-`, ...)
/// and its lines in the shared ones.
pub fn port_rules(node: &NodeView, sp: &ServicePort, comments: bool) -> Rules {
    let mut filter = Chains::new();
    let mut nat = Chains::new();
    let id = sp.id();
    let cluster = sp.usable(false);
    let local = sp.usable(true);
    let internal = if sp.internal_local { &local } else { &cluster };
    let external = if sp.external_local { &local } else { &cluster };
    let svc = sp.chain("KUBE-SVC-");
    let svl = sp.chain("KUBE-SVL-");
    let ext = sp.chain("KUBE-EXT-");
    let int_chain = if sp.internal_local { &svl } else { &svc };
    let dport = sp.match_port(sp.port);
    let cip = sp.cluster_ip;
    // `-m comment --comment "<text>" `, or nothing in large clusters.
    let note = |text: std::fmt::Arguments<'_>| {
        if comments {
            format!("-m comment --comment \"{text}\" ")
        } else {
            String::new()
        }
    };
    // Upstream's unquoted `ns/name:port` comment of endpoint and node-port rules.
    let tag = if comments {
        format!("-m comment --comment {id} ")
    } else {
        String::new()
    };

    // Endpoint chains, shared by the cluster-wide and local chains (their names are hashes:
    // each is worked out once).
    let mut seps: std::collections::HashMap<(Ipv4Addr, u16), String> = Default::default();
    for e in cluster.iter().chain(local.iter()) {
        let std::collections::hash_map::Entry::Vacant(v) = seps.entry((e.ip, e.port)) else {
            continue;
        };
        let sep = v.insert(sp.endpoint_chain(e)).clone();
        let c = &tag;
        let affinity = match sp.affinity_seconds {
            Some(_) => {
                format!("-m recent --set --name {sep} --mask 255.255.255.255 --rsource ")
            }
            None => String::new(),
        };
        nat.insert(
            sep,
            vec![
                format!("{c}-s {}/32 -j {MARK_MASQ}", e.ip),
                format!(
                    "{c}-p {p} -m {p} {affinity}-j DNAT --to-destination {}:{}",
                    e.ip,
                    e.port,
                    p = sp.protocol
                ),
            ],
        );
    }
    let endpoint_rules = |chain: &str, eps: &[&Endpoint], nat: &mut Chains| {
        let mut out = Vec::new();
        if let Some(secs) = sp.affinity_seconds {
            for e in eps {
                let sep = &seps[&(e.ip, e.port)];
                out.push(format!(
                    "{}-m recent --name {sep} --rcheck --seconds {secs} --reap -j {sep}",
                    note(format_args!("{id} -> {}:{}", e.ip, e.port))
                ));
            }
        }
        let n = eps.len();
        for (i, e) in eps.iter().enumerate() {
            let sep = &seps[&(e.ip, e.port)];
            let c = if comments {
                format!("-m comment --comment \"{id} -> {}:{}\" ", e.ip, e.port)
            } else {
                String::new()
            };
            if i + 1 < n {
                out.push(format!(
                    "{c}-m statistic --mode random --probability {:.10} -j {sep}",
                    1.0 / (n - i) as f64
                ));
            } else {
                out.push(format!("{c}-j {sep}"));
            }
        }
        rules(nat, chain).extend(out);
    };
    if !cluster.is_empty() {
        rules(&mut nat, &svc).push(format!(
            "! -s {} -d {cip}/32 {dport} {}-j {MARK_MASQ}",
            node.cluster_cidr,
            note(format_args!("{id} cluster IP"))
        ));
        endpoint_rules(&svc, &cluster, &mut nat);
    }
    if (sp.internal_local || (sp.external_local && sp.has_external())) && !local.is_empty() {
        endpoint_rules(&svl, &local, &mut nat);
    }

    // Cluster IP.
    if internal.is_empty() {
        rules(&mut filter, SERVICES).push(format!(
            "-d {cip}/32 {dport} {}-j REJECT --reject-with icmp-port-unreachable",
            note(format_args!("{id} has no endpoints"))
        ));
    } else {
        rules(&mut nat, SERVICES).push(format!(
            "-d {cip}/32 {dport} {}-j {int_chain}",
            note(format_args!("{id} cluster IP"))
        ));
    }

    // NodePort, external and load-balancer addresses.
    if !sp.has_external() {
        return Rules { filter, nat };
    }
    if external.is_empty() {
        // Nothing can serve: refuse at once (or drop, when endpoints exist but none here).
        let (target, why) = if cluster.is_empty() {
            (
                "REJECT --reject-with icmp-port-unreachable",
                "has no endpoints",
            )
        } else {
            ("DROP", "has no local endpoints")
        };
        for ip in &sp.external_ips {
            rules(&mut filter, EXTERNAL_SERVICES).push(format!(
                "-d {ip}/32 {dport} {}-j {target}",
                note(format_args!("{id} {why}"))
            ));
        }
        if let Some(np) = sp.node_port {
            rules(&mut filter, EXTERNAL_SERVICES).push(format!(
                "-m addrtype --dst-type LOCAL {} {}-j {target}",
                sp.match_port(np),
                note(format_args!("{id} {why}"))
            ));
        }
        return Rules { filter, nat };
    }
    let ext_rules = rules(&mut nat, &ext);
    if sp.external_local {
        ext_rules.push(format!(
            "-s {} {}-j {svc}",
            node.cluster_cidr,
            note(format_args!("pod traffic for {id} external destinations"))
        ));
        ext_rules.push(format!(
            "{}-m addrtype --src-type LOCAL -j {MARK_MASQ}",
            note(format_args!(
                "masquerade LOCAL traffic for {id} external destinations"
            ))
        ));
        ext_rules.push(format!(
            "{}-m addrtype --src-type LOCAL -j {svc}",
            note(format_args!(
                "route LOCAL traffic for {id} external destinations"
            ))
        ));
        ext_rules.push(format!("-j {svl}"));
    } else {
        ext_rules.push(format!(
            "{}-j {MARK_MASQ}",
            note(format_args!(
                "masquerade traffic for {id} external destinations"
            ))
        ));
        ext_rules.push(format!("-j {svc}"));
    }
    for ip in &sp.external_ips {
        rules(&mut nat, SERVICES).push(format!(
            "-d {ip}/32 {dport} {}-j {ext}",
            note(format_args!("{id} external IP"))
        ));
    }
    if let Some(np) = sp.node_port {
        rules(&mut nat, NODEPORTS).push(format!("{} {tag}-j {ext}", sp.match_port(np)));
    }
    Rules { filter, nat }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeView {
        NodeView {
            cluster_cidr: "10.42.0.0/16".parse().unwrap(),
        }
    }

    fn ep(ip: &str, local: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port: 8080,
            ready: true,
            serving: true,
            terminating: false,
            local,
        }
    }

    fn web(endpoints: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            namespace: "default".into(),
            name: "web".into(),
            port_name: "http".into(),
            protocol: "tcp".into(),
            cluster_ip: "10.43.0.20".parse().unwrap(),
            port: 80,
            node_port: Some(30080),
            external_ips: vec![],
            affinity_seconds: None,
            external_local: false,
            internal_local: false,
            endpoints,
        }
    }

    fn dump(t: &Chains) -> String {
        t.iter()
            .flat_map(|(c, rs)| rs.iter().map(move |r| format!("-A {c} {r}")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn chain_names_match_upstream() {
        // Upstream's servicePortChainNameBase for "ns1/svc1:p80" + "tcp".
        let sp = ServicePort {
            namespace: "ns1".into(),
            name: "svc1".into(),
            port_name: "p80".into(),
            ..web(vec![])
        };
        assert_eq!(sp.chain("KUBE-SVC-"), "KUBE-SVC-XPGD46QRK7WJZT7O");
        let e = Endpoint {
            ip: "10.180.0.1".parse().unwrap(),
            port: 80,
            ..ep("10.180.0.1", true)
        };
        assert_eq!(sp.endpoint_chain(&e), "KUBE-SEP-SXIVWICOYRO3J4NJ");
    }

    #[test]
    fn a_service_with_two_endpoints_load_balances_and_masquerades() {
        let sp = web(vec![ep("10.42.0.5", true), ep("10.42.0.6", true)]);
        let Rules { filter, nat } = compute(&node(), std::slice::from_ref(&sp), &[]);
        let svc = sp.chain("KUBE-SVC-");
        let text = dump(&nat);
        assert!(text.contains(&format!(
            "-A KUBE-SERVICES -d 10.43.0.20/32 -p tcp -m tcp --dport 80 -m comment --comment \"default/web:http cluster IP\" -j {svc}"
        )));
        let rules = &nat[&svc];
        assert_eq!(rules.len(), 3);
        assert!(rules[0].starts_with("! -s 10.42.0.0/16 -d 10.43.0.20/32"));
        assert!(rules[1].contains("--probability 0.5000000000 -j KUBE-SEP-"));
        assert!(!rules[2].contains("probability"));
        let sep = sp.endpoint_chain(&sp.endpoints[0]);
        assert_eq!(
            nat[&sep][0],
            "-m comment --comment default/web:http -s 10.42.0.5/32 -j KUBE-MARK-MASQ"
        );
        assert!(nat[&sep][1].ends_with("-j DNAT --to-destination 10.42.0.5:8080"));
        // NodePort through the external chain, which masquerades.
        let ext = sp.chain("KUBE-EXT-");
        assert!(text.contains(&format!("-A KUBE-NODEPORTS -p tcp -m tcp --dport 30080 -m comment --comment default/web:http -j {ext}")));
        assert_eq!(nat[&ext].last().unwrap(), &format!("-j {svc}"));
        assert!(nat[SERVICES].last().unwrap().ends_with("-j KUBE-NODEPORTS"));
        assert!(filter[SERVICES].is_empty());
    }

    #[test]
    fn no_endpoints_means_reject() {
        let sp = web(vec![]);
        let Rules { filter, nat } = compute(&node(), std::slice::from_ref(&sp), &[]);
        assert!(
            filter[SERVICES][0].contains("-d 10.43.0.20/32")
                && filter[SERVICES][0].contains("-j REJECT")
        );
        assert!(
            filter[EXTERNAL_SERVICES][0].contains("--dport 30080")
                && filter[EXTERNAL_SERVICES][0].contains("REJECT")
        );
        assert!(
            !nat.keys()
                .any(|c| c.starts_with("KUBE-SVC-") || c.starts_with("KUBE-SEP-"))
        );
        assert_eq!(nat[SERVICES].len(), 1, "only the nodeports jump");
    }

    #[test]
    fn terminating_endpoints_serve_only_when_nothing_is_ready() {
        let mut draining = ep("10.42.0.7", true);
        draining.ready = false;
        draining.terminating = true;
        let sp = web(vec![ep("10.42.0.5", true), draining.clone()]);
        assert_eq!(sp.usable(false).len(), 1);
        let sp = web(vec![draining]);
        assert_eq!(sp.usable(false).len(), 1);
        let mut gone = ep("10.42.0.8", true);
        gone.ready = false;
        gone.serving = false;
        gone.terminating = true;
        assert!(web(vec![gone]).usable(false).is_empty());
    }

    #[test]
    fn local_traffic_policies_use_local_endpoints() {
        let mut sp = web(vec![ep("10.42.0.5", true), ep("10.42.1.5", false)]);
        sp.external_local = true;
        let Rules { filter, nat } = compute(&node(), std::slice::from_ref(&sp), &[]);
        let svl = sp.chain("KUBE-SVL-");
        assert_eq!(nat[&svl].len(), 1, "one local endpoint: {:?}", nat[&svl]);
        assert_eq!(
            nat[&sp.chain("KUBE-EXT-")].last().unwrap(),
            &format!("-j {svl}")
        );
        // Only remote endpoints: external traffic is dropped, cluster traffic still served.
        let mut sp = web(vec![ep("10.42.1.5", false)]);
        sp.external_local = true;
        let Rules {
            filter: filter2,
            nat: nat2,
        } = compute(&node(), std::slice::from_ref(&sp), &[]);
        assert!(filter2[EXTERNAL_SERVICES][0].ends_with("-j DROP"));
        assert!(nat2.contains_key(&sp.chain("KUBE-SVC-")));
        assert!(filter[EXTERNAL_SERVICES].is_empty());
        // internalTrafficPolicy: Local with no local endpoint rejects cluster-IP traffic.
        sp.internal_local = true;
        let Rules {
            filter: filter3, ..
        } = compute(&node(), std::slice::from_ref(&sp), &[]);
        assert!(filter3[SERVICES][0].contains("REJECT"));
    }

    #[test]
    fn client_ip_affinity_checks_recent_first() {
        let mut sp = web(vec![ep("10.42.0.5", true), ep("10.42.0.6", true)]);
        sp.affinity_seconds = Some(10800);
        let Rules { nat, .. } = compute(&node(), std::slice::from_ref(&sp), &[]);
        let rules = &nat[&sp.chain("KUBE-SVC-")];
        assert!(rules[1].contains("--rcheck --seconds 10800 --reap"));
        assert!(rules[2].contains("--rcheck"));
        let sep = &nat[&sp.endpoint_chain(&sp.endpoints[0])];
        assert!(sep[1].contains("-m recent --set --name KUBE-SEP-"));
    }

    #[test]
    fn restore_input_names_only_changes() {
        let a = web(vec![ep("10.42.0.5", true)]);
        let b = web(vec![ep("10.42.0.6", true)]);
        let Rules { nat: old, .. } = compute(&node(), std::slice::from_ref(&a), &[]);
        let Rules { nat: new, .. } = compute(&node(), std::slice::from_ref(&b), &[]);
        let input = crate::iptables::restore_input("nat", Some(&old), &new, &[]);
        let old_sep = a.endpoint_chain(&a.endpoints[0]);
        let new_sep = b.endpoint_chain(&b.endpoints[0]);
        assert!(input.contains(&format!("-X {old_sep}")));
        assert!(input.contains(&format!(":{new_sep} - [0:0]")));
        assert!(input.contains(&format!("-A {}", a.chain("KUBE-SVC-"))));
        assert!(!input.contains(":KUBE-SERVICES"), "unchanged: {input}");
        assert!(!input.contains(":KUBE-POSTROUTING"));
        assert_eq!(
            crate::iptables::restore_input("nat", Some(&new), &new, &[]),
            "*nat\nCOMMIT\n"
        );
        let full = crate::iptables::restore_input("nat", None, &new, &["KUBE-SVC-OLD".into()]);
        assert!(full.contains(":KUBE-POSTROUTING - [0:0]") && full.contains("-X KUBE-SVC-OLD"));
        assert!(!full.contains("\n-S\n"), "a small restore names its chains");
        // A large one starts with a listing, so iptables-nft caches the whole table.
        let many: Chains = (0..600)
            .map(|i| (format!("KUBE-SEP-{i}"), vec![]))
            .collect();
        let input = crate::iptables::restore_input("nat", None, &many, &[]);
        assert!(input.starts_with("*nat\n-S\n:KUBE-SEP-0 - [0:0]\n"));
    }

    #[test]
    fn a_restore_writes_rules_in_the_order_packets_walk_them() {
        let mut a = web(vec![ep("10.42.0.5", true), ep("10.42.0.6", true)]);
        a.external_ips = vec!["192.0.2.7".parse().unwrap()];
        let mut b = web(vec![ep("10.42.0.7", true)]);
        b.name = "api".into();
        let Rules { nat, .. } = compute(&node(), &[a.clone(), b.clone()], &[]);
        let input = crate::iptables::restore_input("nat", None, &nat, &[]);
        // (Kinglet's mark, first in the chains of fixed names, is no rule of the rule set.)
        let mut blocks: Vec<&str> = (input.lines())
            .filter(|l| !l.ends_with("-m comment --comment kinglet"))
            .filter_map(|l| l.strip_prefix("-A ")?.split(' ').next())
            .collect();
        blocks.dedup();
        let distinct: std::collections::BTreeSet<&str> = blocks.iter().copied().collect();
        assert_eq!(blocks.len(), distinct.len(), "each chain's rules together");
        assert_eq!(
            distinct.len(),
            nat.values().filter(|r| !r.is_empty()).count()
        );
        let pos = |c: &str| blocks.iter().position(|b| *b == c).unwrap();
        for sp in [&a, &b] {
            let svc = pos(&sp.chain("KUBE-SVC-"));
            assert!(pos(SERVICES) < svc);
            for e in &sp.endpoints {
                let sep = pos(&sp.endpoint_chain(e));
                assert!(svc < sep && sep <= svc + 3, "{blocks:?}");
            }
        }
        // KUBE-EXT- of a is reached from KUBE-SERVICES and KUBE-NODEPORTS, written once.
        assert!(pos(SERVICES) < pos(&a.chain("KUBE-EXT-")));
    }

    #[test]
    fn large_clusters_get_no_service_comments() {
        let mut a = web(vec![ep("10.42.0.5", true)]);
        a.external_ips = vec!["192.0.2.7".parse().unwrap()];
        for rules in [
            port_rules(&node(), &a, false),
            port_rules(&node(), &web(vec![]), false),
        ] {
            for (c, l) in rules.nat.iter().chain(&rules.filter) {
                assert!(!l.iter().any(|l| l.contains("comment")), "{c}: {l:?}");
            }
        }
        let rules = port_rules(&node(), &a, true);
        assert!(rules.nat[SERVICES][0].contains("\"default/web:http cluster IP\""));
    }

    #[test]
    fn host_ports_dnat_to_the_pod() {
        let hp = HostPort {
            protocol: "tcp".into(),
            host_ip: None,
            host_port: 8081,
            pod_ip: "10.42.0.9".parse().unwrap(),
            container_port: 80,
        };
        let Rules { nat, .. } = compute(&node(), &[], &[hp]);
        assert_eq!(
            nat[HOSTPORTS].last().unwrap(),
            "-p tcp -m tcp --dport 8081 -j DNAT --to-destination 10.42.0.9:80"
        );
    }
}
