//! The host is not ours: before the node touches the network of the namespace it runs in, it
//! looks for another Kubernetes network there (kube-proxy, k3s, flannel and the like: their
//! processes, their `cni0` or `flannel.1`, `KUBE-*` chains kinglet did not write) and refuses
//! to start next to one unless told to take over. It also refuses a cluster or service range
//! that overlaps an address or route the host already has: the blackhole routes the node adds
//! for those ranges would cut the host off from them.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::Context;
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteType};

use crate::{BLACKHOLE_METRIC, BRIDGE, MARK, iptables};

/// The flag that lets kinglet start next to another Kubernetes network.
pub const TAKE_OVER_FLAG: &str = "--take-over-host-network";

#[derive(Clone, Debug)]
pub struct Config {
    pub cluster_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    /// Held by the node on loopback where the kernel has no dummy links (not a conflict).
    pub cluster_dns: Ipv4Addr,
    /// Start anyway, taking over the other stack's bridge and shared chains.
    pub take_over: bool,
}

/// Refuses (an error, one line) when another Kubernetes network is on the host, unless
/// `cfg.take_over`, and when the cluster or service range overlaps the host's addresses or
/// routes. Runs in the node's network namespace, on a tokio runtime.
pub async fn refuse_foreign(cfg: &Config) -> anyhow::Result<()> {
    let (links, routes) = read_network().await?;
    let (processes, chains) = tokio::task::spawn_blocking(|| {
        let chains = match iptables::Saved::read() {
            Ok(saved) => saved.foreign(),
            Err(e) => {
                // The node needs iptables and says so itself; nothing of another stack to see.
                tracing::warn!("not checking for other Kubernetes iptables chains: {e:#}");
                Vec::new()
            }
        };
        (stack_processes(), chains)
    })
    .await?;
    let findings = Findings::new(cfg, &links, processes, chains);
    if !findings.foreign.is_empty() {
        let found = findings.foreign.join(", ");
        if !cfg.take_over {
            anyhow::bail!(
                "another Kubernetes network is on this host: {found}; stop and remove it, or pass \
                 {TAKE_OVER_FLAG} to let kinglet take its place"
            );
        }
        tracing::warn!("{TAKE_OVER_FLAG}: taking over from another Kubernetes network: {found}");
    }
    let overlaps = overlaps(cfg, &links, &routes, &findings.ours);
    anyhow::ensure!(
        overlaps.is_empty(),
        "{}; the blackhole routes kinglet adds for its ranges would cut the host off from them: \
         choose other ranges",
        overlaps.join("; ")
    );
    Ok(())
}

/// A link of the host with its IPv4 addresses.
#[derive(Clone, Debug, Default)]
struct Link {
    index: u32,
    name: String,
    alias: Option<String>,
    addrs: Vec<Ipv4Net>,
}

/// A route of the main table.
#[derive(Clone, Debug)]
struct Route {
    dst: Ipv4Net,
    blackhole: bool,
    metric: u32,
    oif: Option<u32>,
}

async fn read_network() -> anyhow::Result<(Vec<Link>, Vec<Route>)> {
    let h = crate::connect()?;
    let mut links = Vec::new();
    let mut dump = h.link().get().execute();
    while let Some(l) = dump.try_next().await.context("listing the host's links")? {
        let mut link = Link {
            index: l.header.index,
            ..Link::default()
        };
        for a in l.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::IfAlias(a) => link.alias = Some(a),
                _ => {}
            }
        }
        links.push(link);
    }
    let mut dump = h.address().get().execute();
    while let Some(a) = dump
        .try_next()
        .await
        .context("listing the host's addresses")?
    {
        // IFA_LOCAL is the address itself (IFA_ADDRESS is the peer's on point-to-point links).
        let local = (a.attributes.iter()).find_map(|x| match x {
            AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        let addr = local.or_else(|| {
            a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })
        });
        let (Some(addr), Some(link)) = (addr, links.iter_mut().find(|l| l.index == a.header.index))
        else {
            continue;
        };
        if let Ok(net) = Ipv4Net::new(addr, a.header.prefix_len) {
            link.addrs.push(net);
        }
    }
    let mut routes = Vec::new();
    let mut dump = (h.route())
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(r) = dump.try_next().await.context("listing the host's routes")? {
        let table = (r.attributes.iter())
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(r.header.table.into());
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            continue;
        }
        let mut route = Route {
            dst: Ipv4Net::default(),
            blackhole: r.header.kind == RouteType::BlackHole,
            metric: 0,
            oif: None,
        };
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                    route.dst =
                        Ipv4Net::new(*ip, r.header.destination_prefix_length).unwrap_or_default();
                }
                RouteAttribute::Priority(m) => route.metric = *m,
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                _ => {}
            }
        }
        routes.push(route);
    }
    Ok((links, routes))
}

/// Processes of other Kubernetes networks, by the name the kernel keeps (`comm`).
fn stack_process(comm: &str) -> bool {
    const NAMES: [&str; 5] = [
        "kube-proxy",
        "flanneld",
        "kube-router",
        "calico-node",
        "cilium-agent",
    ];
    // k3s names its processes k3s-server, k3s-agent, ...; rke2 alike.
    NAMES.contains(&comm) || comm.starts_with("k3s") || comm.starts_with("rke2")
}

/// Links other Kubernetes networks make (other than `cni0`, which kinglet makes too).
fn stack_link(name: &str) -> bool {
    name.starts_with("flannel.")
        || [
            "flannel-wg",
            "kube-ipvs0",
            "kube-bridge",
            "cilium_host",
            "vxlan.calico",
        ]
        .contains(&name)
}

/// Those processes of the machine that share this process's network namespace, as
/// "process <name> (pid <pid>)". Test hosts and containers have network namespaces of their
/// own, while /proc shows every process of the machine: only this namespace's count.
fn stack_processes() -> Vec<String> {
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    let Some(mine) = ns("self") else {
        return Vec::new();
    };
    let mut out: Vec<(u32, String)> = (std::fs::read_dir("/proc").into_iter().flatten())
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let comm = comm.trim();
            (stack_process(comm) && ns(&pid.to_string()).as_ref() == Some(&mine))
                .then(|| (pid, comm.to_string()))
        })
        .collect();
    out.sort();
    (out.into_iter())
        .map(|(pid, comm)| format!("process {comm} (pid {pid})"))
        .collect()
}

/// Whether `addr` is one kinglet gives its bridge: the first address of a node subnet of
/// the cluster range.
fn bridge_address(addr: Ipv4Net, cluster: Ipv4Net) -> bool {
    addr.prefix_len() >= cluster.prefix_len()
        && cluster.contains(&addr.network())
        && u32::from(addr.addr()) == u32::from(addr.network()).wrapping_add(1)
}

/// What another stack's link is, for the message; None for links that are not one. A link
/// kinglet marked is its own; an unmarked `cni0` is another's when it has an address that
/// kinglet would not give it.
fn foreign_link(link: &Link, cluster: Ipv4Net) -> Option<String> {
    if link.alias.as_deref() == Some(MARK) {
        return None;
    }
    if link.name == BRIDGE {
        let odd: Vec<String> = (link.addrs.iter())
            .filter(|a| !bridge_address(**a, cluster))
            .map(|a| a.to_string())
            .collect();
        return (!odd.is_empty()).then(|| {
            format!(
                "link {} ({}, not made by kinglet)",
                link.name,
                odd.join(" ")
            )
        });
    }
    stack_link(&link.name).then(|| format!("link {}", link.name))
}

/// What start-up found: the other stack's parts, and the links that are kinglet's (or
/// become kinglet's by taking over), whose addresses and routes are no conflict.
struct Findings {
    foreign: Vec<String>,
    ours: HashSet<u32>,
}

impl Findings {
    fn new(
        cfg: &Config,
        links: &[Link],
        processes: Vec<String>,
        chains: Vec<(String, String)>,
    ) -> Findings {
        let mut foreign = processes;
        let mut ours = HashSet::new();
        for l in links {
            match foreign_link(l, cfg.cluster_cidr) {
                Some(what) => {
                    foreign.push(what);
                    if cfg.take_over {
                        ours.insert(l.index);
                    }
                }
                None if l.alias.as_deref() == Some(MARK)
                    || l.name == BRIDGE
                    || l.name == crate::dns::LINK =>
                {
                    ours.insert(l.index);
                }
                None => {}
            }
        }
        foreign.extend(
            (chains.into_iter()).map(|(table, chain)| format!("iptables chain {chain} ({table})")),
        );
        Findings { foreign, ours }
    }
}

fn overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The host's addresses and routes (other than on `ours` links) that the cluster or service
/// range overlaps, described. The default route and kinglet's own blackholes do not count.
fn overlaps(cfg: &Config, links: &[Link], routes: &[Route], ours: &HashSet<u32>) -> Vec<String> {
    let name = |index: u32| {
        (links.iter().find(|l| l.index == index))
            .map(|l| l.name.clone())
            .unwrap_or_else(|| format!("#{index}"))
    };
    let mut out = Vec::new();
    for (flag, range) in [
        ("--cluster-cidr", cfg.cluster_cidr),
        ("--service-cidr", cfg.service_cidr),
    ] {
        let mut hits = Vec::new();
        for l in links.iter().filter(|l| !ours.contains(&l.index)) {
            for a in &l.addrs {
                let dns = a.addr() == cfg.cluster_dns && a.prefix_len() == 32;
                if !dns && overlap(a.trunc(), range) {
                    hits.push(format!("address {a} on {}", l.name));
                }
            }
        }
        for r in routes {
            let kinglets_blackhole = r.blackhole && r.metric == BLACKHOLE_METRIC;
            let via_ours = r.oif.is_some_and(|i| ours.contains(&i));
            if r.dst.prefix_len() == 0 || kinglets_blackhole || via_ours || !overlap(r.dst, range) {
                continue;
            }
            hits.push(match (r.blackhole, r.oif) {
                (true, _) => format!("route blackhole {}", r.dst),
                (false, Some(i)) => format!("route {} dev {}", r.dst, name(i)),
                (false, None) => format!("route {}", r.dst),
            });
        }
        if !hits.is_empty() {
            out.push(format!(
                "{flag} {range} overlaps the host's {}",
                hits.join(", ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn cfg(take_over: bool) -> Config {
        Config {
            cluster_cidr: net("10.42.0.0/16"),
            service_cidr: net("10.43.0.0/16"),
            cluster_dns: "10.43.0.10".parse().unwrap(),
            take_over,
        }
    }

    fn link(index: u32, name: &str, alias: Option<&str>, addrs: &[&str]) -> Link {
        Link {
            index,
            name: name.into(),
            alias: alias.map(Into::into),
            addrs: addrs.iter().map(|a| net(a)).collect(),
        }
    }

    #[test]
    fn other_stacks_processes_by_name() {
        for comm in [
            "kube-proxy",
            "flanneld",
            "k3s-server",
            "k3s-agent",
            "k3s",
            "rke2",
        ] {
            assert!(stack_process(comm), "{comm}");
        }
        for comm in ["kinglet", "sleep", "kubectl", "proxy", "kube-proxyx"] {
            assert!(!stack_process(comm), "{comm}");
        }
    }

    #[test]
    fn bridges_and_overlay_links_of_others() {
        let cluster = net("10.42.0.0/16");
        // Kinglet's bridge, marked or (from before marks) with the address it would give it.
        assert_eq!(
            foreign_link(
                &link(3, "cni0", Some("kinglet"), &["192.168.7.1/24"]),
                cluster
            ),
            None
        );
        assert_eq!(
            foreign_link(&link(3, "cni0", None, &["10.42.3.1/24"]), cluster),
            None
        );
        assert_eq!(foreign_link(&link(3, "cni0", None, &[]), cluster), None);
        // Another address: another stack's (podman's default, a flannel /24 of another range,
        // an address of the range that is not a gateway).
        for addr in [
            "10.88.0.1/16",
            "10.244.1.1/24",
            "10.42.3.7/24",
            "10.42.0.1/8",
        ] {
            let found = foreign_link(&link(3, "cni0", None, &[addr]), cluster);
            assert_eq!(
                found.as_deref(),
                Some(format!("link cni0 ({addr}, not made by kinglet)").as_str())
            );
        }
        let flannel = foreign_link(&link(4, "flannel.1", None, &["10.42.0.0/32"]), cluster);
        assert_eq!(flannel.as_deref(), Some("link flannel.1"));
        assert_eq!(
            foreign_link(&link(4, "flannel.1", Some("kinglet"), &[]), cluster),
            None
        );
        assert_eq!(
            foreign_link(&link(5, "eth0", None, &["10.88.0.1/16"]), cluster),
            None
        );
    }

    #[test]
    fn findings_name_everything_and_take_over_claims_links() {
        let links = [
            link(1, "lo", None, &["127.0.0.1/8"]),
            link(2, "cni0", None, &["10.88.0.1/16"]),
            link(3, "flannel.1", None, &[]),
            link(4, "kinglet-dns", None, &["10.43.0.10/32"]),
        ];
        let chains = vec![("filter".to_string(), "KUBE-FOO".to_string())];
        let procs = vec!["process kube-proxy (pid 7)".to_string()];
        let f = Findings::new(&cfg(false), &links, procs.clone(), chains.clone());
        assert_eq!(
            f.foreign,
            [
                "process kube-proxy (pid 7)",
                "link cni0 (10.88.0.1/16, not made by kinglet)",
                "link flannel.1",
                "iptables chain KUBE-FOO (filter)"
            ]
        );
        assert_eq!(f.ours, [4].into());
        let taken = Findings::new(&cfg(true), &links, procs, chains);
        assert_eq!(taken.ours, [2, 3, 4].into());
    }

    fn route(dst: &str, blackhole: bool, metric: u32, oif: Option<u32>) -> Route {
        Route {
            dst: net(dst),
            blackhole,
            metric,
            oif,
        }
    }

    #[test]
    fn ranges_must_not_overlap_the_hosts_addresses_and_routes() {
        let links = [
            link(1, "lo", None, &["127.0.0.1/8", "10.43.0.10/32"]),
            link(2, "eth0", None, &["192.168.1.5/24"]),
            link(3, "cni0", Some("kinglet"), &["10.42.0.1/24"]),
        ];
        let ours: HashSet<u32> = [3].into();
        let mut routes = vec![
            route("0.0.0.0/0", false, 0, Some(2)),
            route("192.168.1.0/24", false, 0, Some(2)),
            // Kinglet's from an earlier run: blackholes, and the bridge's routes.
            route("10.42.0.0/16", true, BLACKHOLE_METRIC, None),
            route("10.43.0.0/16", true, BLACKHOLE_METRIC, None),
            route("10.42.0.0/24", false, 0, Some(3)),
            route("10.43.0.0/16", false, 0, Some(3)),
        ];
        assert!(overlaps(&cfg(false), &links, &routes, &ours).is_empty());

        // A VPN's route inside the service range, and a wider one around the cluster range.
        routes.push(route("10.43.128.0/20", false, 0, Some(2)));
        routes.push(route("10.0.0.0/8", true, 0, None));
        assert_eq!(
            overlaps(&cfg(false), &links, &routes, &ours),
            [
                "--cluster-cidr 10.42.0.0/16 overlaps the host's route blackhole 10.0.0.0/8",
                "--service-cidr 10.43.0.0/16 overlaps the host's route 10.43.128.0/20 dev eth0, \
                 route blackhole 10.0.0.0/8"
            ]
        );

        // An address in the cluster range, on a link that is not kinglet's.
        let mut c = cfg(false);
        c.cluster_cidr = net("192.168.0.0/16");
        let found = overlaps(&c, &links, &routes[..6], &ours);
        assert_eq!(
            found,
            [
                "--cluster-cidr 192.168.0.0/16 overlaps the host's address 192.168.1.5/24 on eth0, \
              route 192.168.1.0/24 dev eth0"
            ]
        );
        // The cluster DNS address on loopback is kinglet's; another /32 there is not.
        let lo = [link(1, "lo", None, &["10.43.0.10/32", "10.43.9.9/32"])];
        assert_eq!(
            overlaps(&cfg(false), &lo, &[], &ours),
            ["--service-cidr 10.43.0.0/16 overlaps the host's address 10.43.9.9/32 on lo"]
        );
    }

    #[test]
    fn overlap_is_either_way() {
        assert!(overlap(net("10.0.0.0/8"), net("10.42.0.0/16")));
        assert!(overlap(net("10.42.0.0/16"), net("10.42.7.0/24")));
        assert!(overlap(net("10.42.0.0/16"), net("10.42.0.0/16")));
        assert!(!overlap(net("10.42.0.0/16"), net("10.43.0.0/16")));
        assert!(!overlap(net("192.0.2.10/32"), net("10.42.0.0/16")));
    }
}
