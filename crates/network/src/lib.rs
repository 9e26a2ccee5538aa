//! The pod network of a node, with netlink (no CNI binaries): a bridge whose address is the
//! first of the node's podCIDR, one veth pair per pod (`eth0` inside, its peer on the bridge),
//! addresses from the host-local store (`ipam`), a default route via the bridge, and blackhole
//! routes for the cluster and service ranges so stray packets die on the node (service
//! addresses route to the bridge above their blackhole, see `setup_node`).

pub mod dns;
pub mod host_check;
pub mod ipam;
pub mod iptables;
pub mod netpol;
pub mod overlay;
pub mod proxy;
pub mod services;

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::Context;
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::{Handle, LinkBridge, LinkDummy, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

pub const BRIDGE: &str = "cni0";
/// The alias (`ip link ... alias`) kinglet gives the links it makes, so that they are told from
/// other stacks' of the same name (k3s and flannel make a `cni0` too).
pub const MARK: &str = "kinglet";
/// Pod MTU until the overlay's device is there: what a 1500-byte underlay leaves under VXLAN.
/// With the device, the bridge takes the device's MTU, the underlay's less VXLAN's 50 bytes
/// (flannel's rule), and pods made from then on take the bridge's (`follow_overlay_mtu`).
pub const POD_MTU: u32 = 1450;

/// What the sandbox helper needs to give a pod its interface.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PodInterface {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// Name of the host end of the veth pair.
    pub host_veth: String,
}

/// Host end of a pod's veth pair: stable per pod, at most 15 characters.
pub fn host_veth_name(pod_uid: &str) -> String {
    use sha2::Digest;
    let sum = sha2::Sha256::digest(pod_uid.as_bytes());
    format!("veth{}", &hex::encode(sum)[..11])
}

fn connect() -> anyhow::Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

fn mtu_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// Gives the pod bridge the MTU of the overlay's device (the underlay's less VXLAN's headers)
/// when both are there and kinglet's, so no pod sends what the tunnel cannot carry. Called
/// after making either of them: whichever comes second sets it. Pods take the bridge's MTU
/// when they are made (`attach_pod`); those made before keep theirs.
async fn follow_overlay_mtu(h: &Handle) -> anyhow::Result<()> {
    let bridge = link_named(h, BRIDGE).await?;
    let Some(bridge) = bridge.filter(|b| alias(b) == Some(MARK)) else {
        return Ok(());
    };
    let Some(mtu) = overlay::our_device(h).await?.as_ref().and_then(mtu_of) else {
        return Ok(());
    };
    if mtu_of(&bridge) != Some(mtu) {
        h.link()
            .set(
                LinkUnspec::new_with_index(bridge.header.index)
                    .mtu(mtu)
                    .build(),
            )
            .execute()
            .await
            .context("giving the pod bridge the overlay's MTU")?;
    }
    Ok(())
}

async fn link_index(h: &Handle, name: &str) -> anyhow::Result<Option<u32>> {
    Ok(link_named(h, name).await?.map(|l| l.header.index))
}

async fn link_named(h: &Handle, name: &str) -> anyhow::Result<Option<LinkMessage>> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        // The kernel answers "no such device" with an error.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A link's alias (`ip link ... alias`).
fn alias(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) => Some(s.as_str()),
        _ => None,
    })
}

/// Ignores "already exists" (every step here is idempotent).
fn exists_ok(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        other => other,
    }
}

/// Gives link `index` the address `ip/prefix` (kept if it has it) and brings it up.
async fn address_and_up(h: &Handle, index: u32, ip: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
    exists_ok(
        h.address()
            .add(index, IpAddr::V4(ip), prefix)
            .execute()
            .await,
    )
    .context("adding the address")?;
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .context("bringing the link up")?;
    Ok(())
}

/// Sets up the node side (idempotent): the bridge with the gateway address, blackhole routes
/// for `cluster` and `services`, and IP forwarding. Runs on a tokio runtime in the node's
/// network namespace. `run_dir` (the node's `--run-dir`) keeps the host settings that
/// `cleanup` puts back.
pub async fn setup_node(
    pod_subnet: Ipv4Net,
    cluster: Ipv4Net,
    services: Ipv4Net,
    run_dir: &Path,
) -> anyhow::Result<()> {
    let h = connect()?;
    if link_index(&h, BRIDGE).await?.is_none() {
        exists_ok(
            h.link()
                .add(LinkBridge::new(BRIDGE).mtu(POD_MTU).build())
                .execute()
                .await,
        )
        .context("creating the pod bridge")?;
    }
    let bridge = link_index(&h, BRIDGE)
        .await?
        .context("the pod bridge vanished")?;
    // Ours from now on (the start-up check let it be, or was told to take it over).
    h.link()
        .set(LinkUnspec::new_with_index(bridge).alias(MARK).build())
        .execute()
        .await
        .context("marking the pod bridge as kinglet's")?;
    let gateway = Ipv4Addr::from(u32::from(pod_subnet.network()) + 1);
    pin_mac(&h, bridge, gateway).await?;
    address_and_up(&h, bridge, gateway, pod_subnet.prefix_len())
        .await
        .context("the pod bridge")?;
    follow_overlay_mtu(&h).await?;
    for net in [cluster, services] {
        exists_ok(h.route().add(blackhole(net)).execute().await)
            .with_context(|| format!("adding a blackhole route for {net}"))?;
    }
    // Service addresses must be routable for the proxy's NAT (a blackhole makes even the
    // node's own connect() fail before the OUTPUT rules run) and for its REJECT of services
    // without endpoints. They route to the bridge, which only reaches this node's pods; the
    // blackhole above stays under it, for when the bridge is gone.
    let to_bridge = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(services.network(), services.prefix_len())
        .output_interface(bridge)
        .scope(rtnetlink::packet_route::route::RouteScope::Link)
        .build();
    exists_ok(h.route().add(to_bridge).execute().await)
        .with_context(|| format!("routing {services} to the pod bridge"))?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling IP forwarding")?;
    no_redirects(BRIDGE, run_dir)?;
    bridge_netfilter()?;
    tokio::task::spawn_blocking(move || pod_traffic_rules(cluster)).await??;
    Ok(())
}

/// Gives the bridge a MAC address of its own (CNI's bridge plugin does the same). Left unset, a
/// bridge takes the lowest MAC of its ports: when that pod goes, the gateway's MAC changes
/// under the other pods, whose ARP caches keep the old one, and their traffic to the node
/// (DNS, services) is flooded into the void until their neighbour entries fail, seconds later.
/// The address it has now is kept (running pods know it); a bridge that lost all its ports has
/// none, and gets one made from the gateway address.
async fn pin_mac(h: &Handle, bridge: u32, gateway: Ipv4Addr) -> anyhow::Result<()> {
    let link = link_named(h, BRIDGE)
        .await?
        .context("the pod bridge vanished")?;
    let current = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => Some(mac.clone()),
        _ => None,
    });
    let usable = |mac: &[u8]| mac.len() == 6 && mac.iter().any(|b| *b != 0) && mac[0] & 1 == 0;
    let mac = match current {
        Some(mac) if usable(&mac) => mac,
        // Locally administered, unicast: 0a:58 and the gateway address, as kubenet made them.
        _ => [&[0x0a, 0x58][..], &gateway.octets()].concat(),
    };
    // Setting an address, even the one it has, marks it as set: the kernel keeps it from then on.
    h.link()
        .set(LinkUnspec::new_with_index(bridge).address(mac).build())
        .execute()
        .await
        .context("fixing the pod bridge's MAC address")
}

/// Turns off ICMP redirects from the pod bridge. Pods reach services through the node, which
/// routes that traffic back out of the bridge it came in on, so the kernel sends the pod a
/// redirect for every such packet, before the filter rules see it. Its redirect bookkeeping
/// reuses the per-destination state of the ICMP error rate limit (it zeroes the tokens), so the
/// port-unreachable that the proxy's REJECT of a service without endpoints then owes the pod
/// is suppressed (`OutRateLimitHost`): the connection hangs instead of being refused. (The
/// kernel sends redirects from a link when its own setting or `all` says so: `all` is turned
/// off too, which leaves every other link as its own setting says.) `all` is the host's, not
/// ours: its value from before kinglet first changed it is kept in `run_dir` for `cleanup`.
fn no_redirects(link: &str, run_dir: &Path) -> anyhow::Result<()> {
    let all = redirects_setting("all");
    let before = std::fs::read_to_string(&all).with_context(|| format!("reading {all}"))?;
    let saved = run_dir.join(SAVED_REDIRECTS);
    // Only the first change is the host's value; later starts find ours. Saved before the
    // change, so a crash between the two cannot lose it.
    if before.trim() != "0" && !saved.exists() {
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let tmp = saved.with_extension("tmp");
        std::fs::write(&tmp, before.trim())
            .and_then(|()| std::fs::rename(&tmp, &saved))
            .with_context(|| format!("saving {all} in {}", saved.display()))?;
    }
    for conf in ["all", link] {
        let path = redirects_setting(conf);
        std::fs::write(&path, "0").with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}

/// Puts back the host's `all/send_redirects` that `no_redirects` saved, unless someone changed
/// it since (then theirs stays).
fn restore_redirects(run_dir: &Path) -> anyhow::Result<()> {
    let saved = run_dir.join(SAVED_REDIRECTS);
    let value = match std::fs::read_to_string(&saved) {
        Ok(v) => v.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", saved.display())),
    };
    anyhow::ensure!(
        value.parse::<i32>().is_ok(),
        "{}: {value:?} is not a value of send_redirects; remove the file",
        saved.display()
    );
    let all = redirects_setting("all");
    let now = std::fs::read_to_string(&all).with_context(|| format!("reading {all}"))?;
    if now.trim() == "0" {
        std::fs::write(&all, &value).with_context(|| format!("writing {value} to {all}"))?;
    }
    std::fs::remove_file(&saved).with_context(|| format!("removing {}", saved.display()))
}

/// Where `no_redirects` keeps the host's `all/send_redirects`, under the run directory: a
/// reboot resets the setting and clears the file alike.
const SAVED_REDIRECTS: &str = "host-send-redirects";

fn redirects_setting(conf: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{conf}/send_redirects")
}

/// Where stray packets for `net` die: a blackhole, under every other route for it (metric).
fn blackhole(net: Ipv4Net) -> rtnetlink::packet_route::route::RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(net.network(), net.prefix_len())
        .kind(RouteType::BlackHole)
        .priority(BLACKHOLE_METRIC)
        .build()
}

/// Metric of the blackhole routes: above any route that really leads somewhere.
const BLACKHOLE_METRIC: u32 = 4096;

/// Service traffic between pods on one bridge must pass iptables, or replies skip the
/// un-DNAT and the client drops them: the kernel's bridge netfilter switch, checked and set.
fn bridge_netfilter() -> anyhow::Result<()> {
    let path = std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables");
    if !path.exists() {
        // Loaded on demand, as kubeadm's preflight asks for.
        let _ = std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .status();
    }
    let on = std::fs::read_to_string(path)
        .context("bridge netfilter is unavailable (kernel module br_netfilter)")?;
    if on.trim() != "1" {
        std::fs::write(path, "1").context("enabling bridge-nf-call-iptables")?;
    }
    Ok(())
}

/// Our chains for pod traffic (flannel's rules): pods' traffic to outside the cluster range
/// is masqueraded (pod-to-pod keeps its addresses), and forwarding of pod traffic is
/// accepted even where the host's FORWARD policy drops.
const MASQ_CHAIN: &str = "KINGLET-POSTRTG";
const FORWARD_CHAIN: &str = "KINGLET-FWD";
const JUMPS: &[iptables::Jump] = &[
    iptables::Jump {
        table: "nat",
        from: "POSTROUTING",
        rule: &[
            "-m",
            "comment",
            "--comment",
            "kinglet pod masquerade",
            "-j",
            MASQ_CHAIN,
        ],
        first: false,
    },
    iptables::Jump {
        table: "filter",
        from: "FORWARD",
        rule: &[
            "-m",
            "comment",
            "--comment",
            "kinglet pod forwarding",
            "-j",
            FORWARD_CHAIN,
        ],
        first: false,
    },
];

fn pod_traffic_rules(cluster: Ipv4Net) -> anyhow::Result<()> {
    let chain =
        |name: &str, rules: Vec<String>| -> iptables::Chains { [(name.into(), rules)].into() };
    let nat = chain(
        MASQ_CHAIN,
        vec![
            "-m mark --mark 0x4000/0x4000 -m comment --comment \"service traffic, masqueraded by the proxy\" -j RETURN".into(),
            format!("-s {cluster} -d {cluster} -m comment --comment \"pod to pod\" -j RETURN"),
            format!("-s {cluster} ! -d 224.0.0.0/4 -m comment --comment \"pods to outside the cluster\" -j MASQUERADE --random-fully"),
        ],
    );
    let filter = chain(
        FORWARD_CHAIN,
        vec![
            format!("-s {cluster} -j ACCEPT"),
            format!("-d {cluster} -j ACCEPT"),
        ],
    );
    iptables::Saved::read()?.add_missing_jumps(JUMPS)?;
    let mut input = String::new();
    for (table, chains) in [("nat", &nat), ("filter", &filter)] {
        input.push_str(&iptables::restore_input(table, None, chains, &[]));
    }
    iptables::restore(&input).context("programming the pod masquerade rules")
}

/// Holds `ip` on the node as a /32, so local services can listen on it (the cluster DNS at its
/// service address): on the dummy interface `link` (made if missing), or on loopback where the
/// kernel has no dummy links.
pub async fn hold_address(link: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
    let h = connect()?;
    if link_index(&h, link).await?.is_none() {
        match h.link().add(LinkDummy::new(link).build()).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EOPNOTSUPP => {
                tracing::info!("the kernel has no dummy links; {ip} is held on loopback");
                let lo = link_index(&h, "lo")
                    .await?
                    .context("no loopback interface")?;
                return address_and_up(&h, lo, ip, 32).await;
            }
            r => exists_ok(r).with_context(|| format!("creating the interface {link}"))?,
        }
    }
    let index = link_index(&h, link)
        .await?
        .with_context(|| format!("the interface {link} vanished"))?;
    address_and_up(&h, index, ip, 32).await
}

/// Undoes `hold_address` (uninstall).
pub async fn release_address(link: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
    let h = connect()?;
    if let Some(index) = link_index(&h, link).await? {
        h.link()
            .del(index)
            .execute()
            .await
            .with_context(|| format!("deleting {link}"))?;
    }
    let mut addrs = h
        .address()
        .get()
        .set_address_filter(IpAddr::V4(ip))
        .execute();
    while let Some(a) = addrs.try_next().await? {
        if a.header.prefix_len == 32 {
            h.address()
                .del(a)
                .execute()
                .await
                .with_context(|| format!("removing {ip}"))?;
        }
    }
    Ok(())
}

/// Undoes `setup_node` (uninstall): our chains and jumps, the bridge if kinglet made it, the
/// blackhole routes, and the host's `all/send_redirects` as saved in `run_dir`.
pub async fn cleanup(cluster: Ipv4Net, services: Ipv4Net, run_dir: &Path) -> anyhow::Result<()> {
    for table in ["nat", "filter"] {
        iptables::remove(JUMPS, table, |c| c.starts_with("KINGLET-"))?;
    }
    let h = connect()?;
    let bridge = link_named(&h, BRIDGE).await?;
    if let Some(bridge) = bridge.filter(|b| alias(b) == Some(MARK)) {
        h.link()
            .del(bridge.header.index)
            .execute()
            .await
            .context("deleting the pod bridge")?;
    }
    for net in [cluster, services] {
        // Already gone is fine.
        let _ = h.route().del(blackhole(net)).execute().await;
    }
    restore_redirects(run_dir)
}

/// Gives the calling process's new network namespace its `eth0`, paired with `iface.host_veth`
/// on the bridge of the namespace `host_ns` (the node's). `host` is a netlink handle opened in
/// the node's namespace before the caller unshared its own.
pub async fn attach_pod(
    host: &Handle,
    host_ns: &std::fs::File,
    iface: &PodInterface,
) -> anyhow::Result<()> {
    let bridge = link_named(host, BRIDGE)
        .await?
        .context("the node has no pod bridge")?;
    // The pod's MTU is the bridge's: the overlay's when it is there.
    let mtu = mtu_of(&bridge).unwrap_or(POD_MTU);
    let pod = connect()?;
    pod.link()
        .add(LinkVeth::new("eth0", &iface.host_veth).mtu(mtu).build())
        .execute()
        .await
        .context("creating the pod's veth pair")?;
    let peer = link_index(&pod, &iface.host_veth)
        .await?
        .context("the veth peer vanished")?;
    pod.link()
        .set(
            LinkUnspec::new_with_index(peer)
                .setns_by_fd(host_ns.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .context("moving the veth peer to the node")?;
    let eth0 = link_index(&pod, "eth0").await?.context("eth0 vanished")?;
    address_and_up(&pod, eth0, iface.ip, iface.prefix)
        .await
        .context("eth0")?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(iface.gateway)
        .build();
    pod.route()
        .add(default)
        .execute()
        .await
        .context("adding the default route")?;

    let veth = link_index(host, &iface.host_veth)
        .await?
        .context("the veth peer did not reach the node")?;
    host.link()
        .set(
            LinkUnspec::new_with_index(veth)
                .controller(bridge.header.index)
                .up()
                .build(),
        )
        .execute()
        .await
        .context("attaching the veth peer to the bridge")?;
    Ok(())
}

/// A netlink handle for the current network namespace, on the given runtime.
pub fn handle_on(rt: &tokio::runtime::Runtime) -> anyhow::Result<Handle> {
    let _guard = rt.enter();
    connect()
}
