//! The pod network of a node, with netlink (no CNI binaries): a bridge whose address is the
//! first of the node's podCIDR, one veth pair per pod (`eth0` inside, its peer on the bridge),
//! addresses from the host-local store (`ipam`), a default route via the bridge, and blackhole
//! routes for the cluster and service ranges so stray packets die on the node.

pub mod ipam;

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use anyhow::Context;
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

pub const BRIDGE: &str = "cni0";
/// Pod MTU: what a 1500-byte underlay leaves under VXLAN (flannel's rule), so pods keep it when
/// nodes join over the overlay.
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

async fn link_index(h: &Handle, name: &str) -> anyhow::Result<Option<u32>> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        // The kernel answers "no such device" with an error.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e.into()),
    }
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
/// network namespace.
pub async fn setup_node(
    pod_subnet: Ipv4Net,
    cluster: Ipv4Net,
    services: Ipv4Net,
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
    let gateway = Ipv4Addr::from(u32::from(pod_subnet.network()) + 1);
    address_and_up(&h, bridge, gateway, pod_subnet.prefix_len())
        .await
        .context("the pod bridge")?;
    for net in [cluster, services] {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.network(), net.prefix_len())
            .kind(RouteType::BlackHole)
            .build();
        exists_ok(h.route().add(route).execute().await)
            .with_context(|| format!("adding a blackhole route for {net}"))?;
    }
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling IP forwarding")?;
    Ok(())
}

/// Gives the calling process's new network namespace its `eth0`, paired with `iface.host_veth`
/// on the bridge of the namespace `host_ns` (the node's). `host` is a netlink handle opened in
/// the node's namespace before the caller unshared its own.
pub async fn attach_pod(
    host: &Handle,
    host_ns: &std::fs::File,
    iface: &PodInterface,
) -> anyhow::Result<()> {
    let pod = connect()?;
    pod.link()
        .add(LinkVeth::new("eth0", &iface.host_veth).mtu(POD_MTU).build())
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

    let bridge = link_index(host, BRIDGE)
        .await?
        .context("the node has no pod bridge")?;
    let veth = link_index(host, &iface.host_veth)
        .await?
        .context("the veth peer did not reach the node")?;
    host.link()
        .set(
            LinkUnspec::new_with_index(veth)
                .controller(bridge)
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
