//! The VXLAN overlay between nodes, as flannel's vxlan backend programs it: one VXLAN device
//! per node (VNI 1, UDP 8472, no learning, the node's underlay address as source), holding the
//! first address of the node's podCIDR as a /32. For every other node (a `Peer`) the node has a
//! route to the peer's podCIDR via the peer's VTEP address (the network address of that
//! podCIDR) onlink on the device, a permanent neighbour entry for that VTEP address (its MAC,
//! so no ARP crosses the tunnel), and a permanent FDB entry sending that MAC to the peer's
//! public address. No multicast, no learning: the node programs every entry itself.
//!
//! The device is `kinglet.1`, not flannel's `flannel.1`: the start-up check (`host_check`)
//! takes a `flannel.*` link for another stack's, and a flannel on the same host must not find
//! its device taken. It carries kinglet's mark (its alias, `crate::MARK`) like every link
//! kinglet makes; a `kinglet.1` without the mark is left alone (an error).
//!
//! `watch` wires it to the Nodes: it publishes this node's VTEP MAC and public address as
//! annotations and programs every other node that has published its own.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::Context;
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::{MARK, alias, exists_ok, link_named, mtu_of};

pub mod watch;

/// The overlay's device.
pub const DEVICE: &str = "kinglet.1";
/// The VXLAN network identifier (flannel's default).
pub const VNI: u32 = 1;
/// The UDP port of the tunnel (flannel's and the Linux kernel's default, not IANA's 4789).
pub const PORT: u16 = 8472;
/// What VXLAN adds to a packet on an IPv4 underlay: outer IPv4 (20), UDP (8), VXLAN (8) and
/// inner Ethernet (14) headers.
pub const OVERHEAD: u32 = 50;
/// Node annotations that tell the other nodes how to reach this one (flannel's
/// `flannel.alpha.coreos.com/backend-data` and `public-ip`).
pub const VTEP_MAC_ANNOTATION: &str = "kinglet.io/vtep-mac";
pub const PUBLIC_IP_ANNOTATION: &str = "kinglet.io/public-ip";

/// Another node, as the overlay needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pod_cidr: Ipv4Net,
    pub vtep_mac: [u8; 6],
    pub public_ip: Ipv4Addr,
}

/// The link that carries the tunnel's packets.
#[derive(Clone, Debug)]
pub enum Underlay {
    Index(u32),
    Name(String),
}

/// The device's MTU on an underlay of `underlay_mtu`; none when too small for IPv4 (68).
pub fn device_mtu(underlay_mtu: u32) -> Option<u32> {
    underlay_mtu.checked_sub(OVERHEAD).filter(|m| *m >= 68)
}

/// A node's VTEP address: the network address of its podCIDR (flannel's choice; pods get
/// addresses from .2 on and the bridge .1, so it is free).
pub fn vtep_ip(pod_cidr: Ipv4Net) -> Ipv4Addr {
    pod_cidr.network()
}

/// A MAC as `aa:bb:cc:dd:ee:ff` (the annotation's form).
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Reads a MAC written by `format_mac` (from an annotation: any input).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Makes the overlay's device (or keeps it when it is as wanted), with `underlay_ip` as source
/// and the first address of `pod_cidr` as a /32, up; returns its MAC (the node's VTEP MAC).
/// A device of ours made for another underlay or port is made anew (its MAC changes: publish
/// the returned one). Runs on a tokio runtime in the node's network namespace.
pub async fn ensure_device(
    underlay_ip: Ipv4Addr,
    underlay: &Underlay,
    pod_cidr: Ipv4Net,
) -> anyhow::Result<[u8; 6]> {
    let h = crate::connect()?;
    let under = match underlay {
        Underlay::Index(i) => link_by_index(&h, *i).await?,
        Underlay::Name(n) => link_named(&h, n).await?,
    }
    .with_context(|| format!("no underlay link {underlay:?}"))?;
    let under_mtu = mtu_of(&under).context("the underlay link has no MTU")?;
    let mtu = device_mtu(under_mtu)
        .with_context(|| format!("the underlay's MTU {under_mtu} is too small for VXLAN"))?;
    let wanted = Wanted {
        local: underlay_ip,
        dev: under.header.index,
    };
    if let Some(link) = link_named(&h, DEVICE).await? {
        anyhow::ensure!(
            alias(&link) == Some(MARK),
            "a link {DEVICE} that kinglet did not make is on this host; remove it"
        );
        if let Some(why) = wanted.differs(&link) {
            tracing::info!("remaking {DEVICE}: {why}");
            h.link()
                .del(link.header.index)
                .execute()
                .await
                .with_context(|| format!("deleting {DEVICE}"))?;
        }
    }
    if link_named(&h, DEVICE).await?.is_none() {
        let add = LinkVxlan::new(DEVICE, VNI)
            .dev(wanted.dev)
            .local(wanted.local)
            .port(PORT)
            .learning(false)
            .mtu(mtu)
            .build();
        exists_ok(h.link().add(add).execute().await)
            .with_context(|| format!("creating {DEVICE}"))?;
    }
    let link = link_named(&h, DEVICE)
        .await?
        .with_context(|| format!("{DEVICE} vanished"))?;
    let index = link.header.index;
    // Ours from here on; the MTU follows the underlay's.
    h.link()
        .set(
            LinkUnspec::new_with_index(index)
                .alias(MARK)
                .mtu(mtu)
                .build(),
        )
        .execute()
        .await
        .with_context(|| format!("marking {DEVICE} as kinglet's"))?;
    let address = Ipv4Net::new(vtep_ip(pod_cidr), 32)?;
    remove_other_addresses(&h, index, address).await?;
    crate::address_and_up(&h, index, address.addr(), 32)
        .await
        .context(DEVICE)?;
    crate::follow_overlay_mtu(&h).await?;
    mac_of(&link).with_context(|| format!("{DEVICE} has no MAC address"))
}

/// The overlay device's MAC (the node's VTEP MAC), none without the device.
pub async fn vtep_mac() -> anyhow::Result<Option<[u8; 6]>> {
    let h = crate::connect()?;
    Ok(our_device(&h).await?.as_ref().and_then(mac_of))
}

/// Programs the routes, neighbour and FDB entries of the device for exactly `peers`: those of
/// each peer are added or replaced, those of nodes no longer listed removed. Nothing else is
/// touched: only entries on the device, and of the kinds this makes.
pub async fn sync_peers(peers: &[Peer]) -> anyhow::Result<()> {
    let h = crate::connect()?;
    let index = our_device(&h)
        .await?
        .with_context(|| format!("no {DEVICE} of kinglet's"))?
        .header
        .index;
    for p in peers {
        let vtep = vtep_ip(p.pod_cidr);
        h.neighbours()
            .add(index, IpAddr::V4(vtep))
            .link_layer_address(&p.vtep_mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .with_context(|| format!("neighbour entry for {vtep}"))?;
        let mut fdb = h
            .neighbours()
            .add_bridge(index, &p.vtep_mac)
            .destination(IpAddr::V4(p.public_ip))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace();
        fdb.message_mut()
            .attributes
            .push(NeighbourAttribute::Port(PORT));
        fdb.execute()
            .await
            .with_context(|| format!("FDB entry for {}", p.public_ip))?;
        h.route()
            .add(peer_route(index, p.pod_cidr))
            .replace()
            .execute()
            .await
            .with_context(|| format!("route to {}", p.pod_cidr))?;
    }
    remove_stale(&h, index, peers).await
}

/// Removes the overlay's device, if kinglet made it (`kinglet cleanup`); its routes and
/// entries go with it.
pub async fn teardown() -> anyhow::Result<()> {
    let h = crate::connect()?;
    if let Some(link) = our_device(&h).await? {
        h.link()
            .del(link.header.index)
            .execute()
            .await
            .with_context(|| format!("deleting {DEVICE}"))?;
    }
    Ok(())
}

/// The underlay and the node's address on it (its public address, the tunnel's source): the
/// link named `iface` (`--vxlan-iface`), with `node_ip` if it holds it, else its first IPv4
/// address; without `iface`, the link that holds `node_ip`. None when that link is a loopback
/// one: no other machine is reached through it, so there is no overlay to make.
pub async fn choose_underlay(
    iface: Option<&str>,
    node_ip: Ipv4Addr,
) -> anyhow::Result<Option<(Underlay, Ipv4Addr)>> {
    let h = crate::connect()?;
    let mut addresses = Vec::new();
    let mut dump = h.address().get().execute();
    while let Some(a) = dump.try_next().await.context("listing addresses")? {
        for attr in &a.attributes {
            if let AddressAttribute::Local(IpAddr::V4(ip)) = attr {
                addresses.push((a.header.index, *ip));
            }
        }
    }
    let (index, ip) = match iface {
        Some(name) => {
            let link = link_named(&h, name)
                .await?
                .with_context(|| format!("no interface {name} (--vxlan-iface)"))?;
            let index = link.header.index;
            let on_it: Vec<Ipv4Addr> = (addresses.iter())
                .filter(|(i, _)| *i == index)
                .map(|(_, ip)| *ip)
                .collect();
            let ip = if on_it.contains(&node_ip) {
                node_ip
            } else {
                *on_it.first().with_context(|| {
                    format!("the interface {name} (--vxlan-iface) has no IPv4 address")
                })?
            };
            (index, ip)
        }
        None => {
            let (index, _) = (addresses.iter())
                .find(|(_, ip)| *ip == node_ip)
                .with_context(|| {
                    format!(
                        "no interface holds the node address {node_ip}; name the interface \
                         towards the other nodes with --vxlan-iface"
                    )
                })?;
            (*index, node_ip)
        }
    };
    let link = link_by_index(&h, index)
        .await?
        .context("the underlay link vanished")?;
    if link.header.flags.contains(LinkFlags::Loopback) {
        return Ok(None);
    }
    Ok(Some((Underlay::Index(index), ip)))
}

/// The device as it should be made.
struct Wanted {
    local: Ipv4Addr,
    dev: u32,
}

impl Wanted {
    /// How an existing device differs (what `ip link set` cannot change), if it does.
    fn differs(&self, link: &LinkMessage) -> Option<String> {
        let kind = vxlan_info(link);
        let Some(info) = kind else {
            return Some("not a VXLAN device".into());
        };
        let (mut vni, mut port, mut local, mut dev, mut learning) = (None, None, None, None, None);
        for i in info {
            match i {
                InfoVxlan::Id(v) => vni = Some(*v),
                InfoVxlan::Port(p) => port = Some(*p),
                InfoVxlan::Local(l) => local = Some(*l),
                InfoVxlan::Link(d) => dev = Some(*d),
                InfoVxlan::Learning(l) => learning = Some(*l),
                _ => {}
            }
        }
        [
            (vni != Some(VNI), "VNI"),
            (port != Some(PORT), "port"),
            (local != Some(self.local), "local address"),
            (dev != Some(self.dev), "underlay link"),
            (learning != Some(false), "learning"),
        ]
        .into_iter()
        .find(|(differs, _)| *differs)
        .map(|(_, what)| format!("another {what}"))
    }
}

fn vxlan_info(link: &LinkMessage) -> Option<&Vec<InfoVxlan>> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => Some(v),
            _ => None,
        }),
        _ => None,
    })
}

fn mac_of(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => mac.as_slice().try_into().ok(),
        _ => None,
    })
}

async fn link_by_index(h: &Handle, index: u32) -> anyhow::Result<Option<LinkMessage>> {
    let mut links = h.link().get().match_index(index).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The device, if it is there and kinglet's.
pub(crate) async fn our_device(h: &Handle) -> anyhow::Result<Option<LinkMessage>> {
    Ok(link_named(h, DEVICE)
        .await?
        .filter(|l| alias(l) == Some(MARK)))
}

/// Drops IPv4 addresses of the device other than `keep` (left from another podCIDR).
async fn remove_other_addresses(h: &Handle, index: u32, keep: Ipv4Net) -> anyhow::Result<()> {
    let mut dump = h.address().get().set_link_index_filter(index).execute();
    let mut stale = Vec::new();
    while let Some(a) = dump.try_next().await.context("listing addresses")? {
        let ip = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        if ip.is_some_and(|ip| ip != keep.addr() || a.header.prefix_len != keep.prefix_len()) {
            stale.push(a);
        }
    }
    for a in stale {
        h.address()
            .del(a)
            .execute()
            .await
            .with_context(|| format!("removing an old address of {DEVICE}"))?;
    }
    Ok(())
}

/// The route to a peer's pods: via its VTEP address, onlink (no route to that address is
/// needed: the neighbour entry resolves it on the device).
fn peer_route(index: u32, pod_cidr: Ipv4Net) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(pod_cidr.network(), pod_cidr.prefix_len())
        .gateway(vtep_ip(pod_cidr))
        .output_interface(index)
        .onlink()
        .protocol(RouteProtocol::Boot)
        .build()
}

/// Removes the device's peer routes, neighbour and FDB entries of nodes not in `peers`.
async fn remove_stale(h: &Handle, index: u32, peers: &[Peer]) -> anyhow::Result<()> {
    let cidrs: HashSet<Ipv4Net> = peers.iter().map(|p| p.pod_cidr).collect();
    let vteps: HashSet<Ipv4Addr> = peers.iter().map(|p| vtep_ip(p.pod_cidr)).collect();
    let fdb: HashSet<([u8; 6], Ipv4Addr)> =
        peers.iter().map(|p| (p.vtep_mac, p.public_ip)).collect();

    // Routes: those of the main table on the device, onlink via a gateway (what `peer_route`
    // makes).
    let mut stale = Vec::new();
    let mut dump = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(r) = dump.try_next().await.context("listing routes")? {
        let on_device = r
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
        let via = r
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Gateway(RouteAddress::Inet(_))));
        let dst = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                Ipv4Net::new(*ip, r.header.destination_prefix_length).ok()
            }
            _ => None,
        });
        if on_device
            && r.header.table == RouteHeader::RT_TABLE_MAIN
            && via
            && r.header.flags.contains(RouteFlags::Onlink)
            && dst.is_some_and(|d| !cidrs.contains(&d))
        {
            stale.push(r);
        }
    }
    for r in stale {
        h.route()
            .del(r)
            .execute()
            .await
            .context("removing a route of a node gone")?;
    }

    // Neighbour entries: the permanent ones of the device.
    let mut stale = Vec::new();
    let mut dump = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute();
    while let Some(n) = dump.try_next().await.context("listing neighbours")? {
        if n.header.ifindex != index || n.header.state != NeighbourState::Permanent {
            continue;
        }
        if let Some(ip) = neighbour_ip(&n).filter(|ip| !vteps.contains(ip)) {
            stale.push(ip);
        }
    }
    for ip in stale {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = index;
        (m.attributes).push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        gone_ok(h.neighbours().del(m).execute().await)
            .with_context(|| format!("removing the neighbour entry for {ip}"))?;
    }

    // FDB entries: the device's own (not a bridge's), to a remote address.
    let mut stale = Vec::new();
    let mut dump = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute();
    while let Some(n) = dump.try_next().await.context("listing FDB entries")? {
        if n.header.ifindex != index || n.header.state != NeighbourState::Permanent {
            continue;
        }
        let mac = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(m) => <[u8; 6]>::try_from(m.as_slice()).ok(),
            _ => None,
        });
        if let (Some(mac), Some(ip)) = (mac, neighbour_ip(&n))
            && mac != [0; 6]
            && !fdb.contains(&(mac, ip))
        {
            stale.push((mac, ip));
        }
    }
    for (mac, ip) in stale {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.flags = NeighbourFlags::Own;
        m.attributes.extend([
            NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)),
        ]);
        gone_ok(h.neighbours().del(m).execute().await)
            .with_context(|| format!("removing the FDB entry {} to {ip}", format_mac(mac)))?;
    }
    Ok(())
}

fn neighbour_ip(n: &NeighbourMessage) -> Option<Ipv4Addr> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        // FDB entries (AF_BRIDGE) come with the address undecoded.
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
            <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })
}

/// Ignores "no such entry" (removed meanwhile).
fn gone_ok(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(rtnetlink::Error::NetlinkError(e))
            if e.raw_code() == -libc::ENOENT || e.raw_code() == -libc::ESRCH =>
        {
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_leaves_room_for_the_vxlan_headers() {
        assert_eq!(device_mtu(1500), Some(1450));
        assert_eq!(device_mtu(9000), Some(8950));
        assert_eq!(device_mtu(118), Some(68));
        assert_eq!(device_mtu(117), None);
        assert_eq!(device_mtu(20), None);
    }

    #[test]
    fn vtep_ip_is_the_network_address_of_the_pod_cidr() {
        let cidr = |s: &str| s.parse::<Ipv4Net>().unwrap();
        assert_eq!(vtep_ip(cidr("10.42.3.0/24")), Ipv4Addr::new(10, 42, 3, 0));
        // A podCIDR written with host bits still yields its network address.
        assert_eq!(vtep_ip(cidr("10.42.3.7/24")), Ipv4Addr::new(10, 42, 3, 0));
        assert_eq!(
            vtep_ip(cidr("10.44.0.128/25")),
            Ipv4Addr::new(10, 44, 0, 128)
        );
    }

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        let mac = [0x0a, 0x58, 0x00, 0xff, 0x12, 0xab];
        assert_eq!(format_mac(mac), "0a:58:00:ff:12:ab");
        assert_eq!(parse_mac(&format_mac(mac)), Some(mac));
        for bad in [
            "",
            "0a:58:00:ff:12",
            "0a:58:00:ff:12:ab:00",
            "0a:58:00:ff:12:zz",
            "a:58:00:ff:12:ab0",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }
}
