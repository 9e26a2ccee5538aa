//! The VXLAN overlay's data plane (issue 21): two test hosts joined by a veth pair (the
//! underlay, 192.0.2.21 and .22) reach each other's pod addresses through `kinglet.1`, programmed
//! by `kinglet_network::overlay` from a thread inside each host's network namespace; the choice
//! of the underlay, and the pod bridge following the device's MTU, in one host.

mod common;

use std::future::Future;
use std::net::Ipv4Addr;

use common::host::TestHost;
use ipnet::Ipv4Net;
use kinglet_network::overlay::{self, Peer, Underlay};

const UNDERLAY: &str = "ul0";

/// Runs `f` on a current-thread runtime in a thread inside `host`'s network namespace.
fn in_host<T, F, Fut>(host: &TestHost, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let ns = std::fs::File::open(format!("/proc/{}/ns/net", host.pid()))?;
    // setns changes only the calling thread: a thread of its own, which then ends.
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

fn run(host: &TestHost, program: &str, args: &[&str]) -> String {
    let out = host.command(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `from` reaches `to` by ping, from the pod address `from`.
fn ping(host: &TestHost, from: &str, to: &str) -> bool {
    host.command(common::images::busybox())
        .args(["ping", "-c", "1", "-W", "2", "-I", from, to])
        .output()
        .unwrap()
        .status
        .success()
}

/// The device's routes, neighbour and FDB entries, as `ip` and `bridge` show them.
fn entries(host: &TestHost) -> (String, String, String) {
    (
        run(host, "ip", &["route", "show", "dev", overlay::DEVICE]),
        run(host, "ip", &["neigh", "show", "dev", overlay::DEVICE]),
        run(host, "bridge", &["fdb", "show", "dev", overlay::DEVICE]),
    )
}

fn cidr(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

/// A test host with the underlay address `ip`/24 on `ul0` and its pod address on loopback.
fn setup(host: &TestHost, ip: &str, pod_ip: &str) {
    run(
        host,
        "ip",
        &["addr", "add", &format!("{ip}/24"), "dev", UNDERLAY],
    );
    run(host, "ip", &["link", "set", UNDERLAY, "up"]);
    run(
        host,
        "ip",
        &["addr", "add", &format!("{pod_ip}/32"), "dev", "lo"],
    );
}

fn ensure(host: &TestHost, ip: &str, pod_cidr: &str) -> anyhow::Result<[u8; 6]> {
    let (ip, pod_cidr): (Ipv4Addr, Ipv4Net) = (ip.parse()?, cidr(pod_cidr));
    in_host(host, move || async move {
        overlay::ensure_device(ip, &Underlay::Name(UNDERLAY.into()), pod_cidr).await
    })
}

fn sync(host: &TestHost, peers: Vec<Peer>) {
    in_host(
        host,
        move || async move { overlay::sync_peers(&peers).await },
    )
    .unwrap();
}

#[test]
fn pods_reach_each_other_over_vxlan_and_peers_come_and_go() {
    let (a, b) = (TestHost::new(), TestHost::new());
    // The underlay: a veth pair made inside A, its peer end in B (the machine's namespace
    // never sees it).
    run(
        &a,
        "ip",
        &[
            "link",
            "add",
            UNDERLAY,
            "type",
            "veth",
            "peer",
            "name",
            UNDERLAY,
            "netns",
            &b.pid().to_string(),
        ],
    );
    setup(&a, "192.0.2.21", "10.42.1.1");
    setup(&b, "192.0.2.22", "10.42.2.1");

    let mac_a = ensure(&a, "192.0.2.21", "10.42.1.0/24").unwrap();
    let mac_b = ensure(&b, "192.0.2.22", "10.42.2.0/24").unwrap();
    assert_ne!(mac_a, mac_b);
    // Idempotent: the device is kept, MAC and all.
    assert_eq!(ensure(&a, "192.0.2.21", "10.42.1.0/24").unwrap(), mac_a);
    let found = in_host(&a, overlay::vtep_mac).unwrap();
    assert_eq!(found, Some(mac_a));

    let link = run(&a, "ip", &["-d", "addr", "show", overlay::DEVICE]);
    for want in [
        "mtu 1450",
        "vxlan id 1 ",
        "local 192.0.2.21",
        "dstport 8472",
        "nolearning",
        "alias kinglet",
        "inet 10.42.1.0/32",
        ",UP",
        &overlay::format_mac(mac_a),
    ] {
        assert!(link.contains(want), "{want:?} not in {link}");
    }

    // No peers yet: no way to B's pods.
    assert!(!ping(&a, "10.42.1.1", "10.42.2.1"));

    // Entries that are not the overlay's stay whatever it syncs.
    run(
        &a,
        "ip",
        &["route", "add", "10.99.0.0/24", "dev", overlay::DEVICE],
    );
    run(
        &a,
        "ip",
        &[
            "neigh",
            "add",
            "192.0.2.99",
            "lladdr",
            "02:00:00:00:00:99",
            "dev",
            UNDERLAY,
            "nud",
            "permanent",
        ],
    );

    let peer_a = Peer {
        pod_cidr: cidr("10.42.1.0/24"),
        vtep_mac: mac_a,
        public_ip: "192.0.2.21".parse().unwrap(),
    };
    let peer_b = Peer {
        pod_cidr: cidr("10.42.2.0/24"),
        vtep_mac: mac_b,
        public_ip: "192.0.2.22".parse().unwrap(),
    };
    // A node that is not there (its entries are only to be removed later).
    let peer_c = Peer {
        pod_cidr: cidr("10.42.3.0/24"),
        vtep_mac: [0x0a, 0x58, 0, 0, 0, 0x33],
        public_ip: "192.0.2.23".parse().unwrap(),
    };
    sync(&a, vec![peer_b.clone(), peer_c.clone()]);
    sync(&b, vec![peer_a.clone()]);
    assert!(ping(&a, "10.42.1.1", "10.42.2.1"), "A's pod reaches B's");
    assert!(ping(&b, "10.42.2.1", "10.42.1.1"), "B's pod reaches A's");

    let (routes, neigh, fdb) = entries(&a);
    let mac_b_s = overlay::format_mac(mac_b);
    assert!(
        routes.contains("10.42.2.0/24 via 10.42.2.0 onlink"),
        "{routes}"
    );
    assert!(
        routes.contains("10.42.3.0/24 via 10.42.3.0 onlink"),
        "{routes}"
    );
    assert!(
        neigh.contains(&format!("10.42.2.0 lladdr {mac_b_s} PERMANENT")),
        "{neigh}"
    );
    assert!(
        fdb.contains(&format!("{mac_b_s} dst 192.0.2.22 self permanent")),
        "{fdb}"
    );
    assert!(fdb.contains("0a:58:00:00:00:33 dst 192.0.2.23"), "{fdb}");

    // Idempotent: the same peers again change nothing.
    sync(&a, vec![peer_b.clone(), peer_c.clone()]);
    assert_eq!(entries(&a), (routes, neigh, fdb));

    // C leaves: its entries go, B's stay.
    sync(&a, vec![peer_b.clone()]);
    let (routes, neigh, fdb) = entries(&a);
    for (what, shown) in [("route", &routes), ("neighbour", &neigh), ("fdb", &fdb)] {
        assert!(!shown.contains("10.42.3.0"), "{what}: {shown}");
        assert!(!shown.contains("0a:58:00:00:00:33"), "{what}: {shown}");
        assert!(!shown.contains("192.0.2.23"), "{what}: {shown}");
    }
    assert!(
        routes.contains("10.42.2.0/24 via 10.42.2.0 onlink"),
        "{routes}"
    );
    assert!(fdb.contains(&mac_b_s), "{fdb}");
    assert!(ping(&a, "10.42.1.1", "10.42.2.1"));

    // No peers: nothing of the overlay's is left on the device, and B is out of reach.
    sync(&a, Vec::new());
    let (routes, neigh, fdb) = entries(&a);
    assert!(!routes.contains("10.42."), "{routes}");
    assert!(!neigh.contains("10.42."), "{neigh}");
    assert!(!fdb.contains(&mac_b_s), "{fdb}");
    assert!(!ping(&a, "10.42.1.1", "10.42.2.1"));
    // What was not the overlay's is still there.
    assert!(routes.contains("10.99.0.0/24"), "{routes}");
    let under = run(&a, "ip", &["neigh", "show", "dev", UNDERLAY]);
    assert!(
        under.contains("192.0.2.99 lladdr 02:00:00:00:00:99 PERMANENT"),
        "{under}"
    );

    // Another underlay address and podCIDR: the device is made anew for them, its old
    // address gone.
    run(&a, "ip", &["addr", "add", "192.0.2.31/24", "dev", UNDERLAY]);
    ensure(&a, "192.0.2.31", "10.42.5.0/24").unwrap();
    let link = run(&a, "ip", &["-d", "addr", "show", overlay::DEVICE]);
    assert!(link.contains("local 192.0.2.31"), "{link}");
    assert!(link.contains("inet 10.42.5.0/32"), "{link}");
    assert!(!link.contains("10.42.1.0"), "{link}");

    // `kinglet cleanup` tears the device down; one kinglet did not make is refused and left
    // alone.
    a.kinglet_cleanup(&[]);
    let links = run(&a, "ip", &["link", "show"]);
    assert!(!links.contains(overlay::DEVICE), "{links}");
    run(
        &a,
        "ip",
        &[
            "link",
            "add",
            overlay::DEVICE,
            "type",
            "vxlan",
            "id",
            "1",
            "dstport",
            "8472",
        ],
    );
    let err = ensure(&a, "192.0.2.21", "10.42.1.0/24").unwrap_err();
    assert!(format!("{err:#}").contains("did not make"), "{err:#}");
    in_host(&a, overlay::teardown).unwrap();
    let links = run(&a, "ip", &["link", "show"]);
    assert!(links.contains(overlay::DEVICE), "{links}");
}

/// The index of link `name` in `host`.
fn index_of(host: &TestHost, name: &str) -> u32 {
    let shown = run(host, "ip", &["-o", "link", "show", name]);
    let index = shown.split(':').next().unwrap_or_default().trim();
    index
        .parse()
        .unwrap_or_else(|_| panic!("no index in {shown}"))
}

fn choose(host: &TestHost, iface: Option<&str>, node_ip: &str) -> anyhow::Result<Option<u32>> {
    let (iface, node_ip) = (iface.map(String::from), node_ip.parse()?);
    let chosen = in_host(host, move || async move {
        overlay::choose_underlay(iface.as_deref(), node_ip).await
    })?;
    Ok(chosen.map(|(underlay, ip)| {
        assert_eq!(ip.to_string(), "192.0.2.21", "the tunnel's source");
        match underlay {
            Underlay::Index(i) => i,
            Underlay::Name(n) => index_of(host, &n),
        }
    }))
}

#[test]
fn underlay_is_the_link_named_or_the_one_holding_the_node_address() {
    let h = TestHost::new();
    run(
        &h,
        "ip",
        &[
            "link", "add", UNDERLAY, "type", "veth", "peer", "name", "ul1",
        ],
    );
    setup(&h, "192.0.2.21", "10.42.1.1");
    let ul0 = index_of(&h, UNDERLAY);
    assert_eq!(choose(&h, None, "192.0.2.21").unwrap(), Some(ul0));
    // Named: its own address when the node's is elsewhere.
    assert_eq!(choose(&h, Some(UNDERLAY), "10.9.9.9").unwrap(), Some(ul0));
    assert_eq!(choose(&h, Some(UNDERLAY), "192.0.2.21").unwrap(), Some(ul0));
    // The test host's node address is on loopback: no overlay there.
    assert_eq!(choose(&h, None, common::host::NODE_IP).unwrap(), None);
    assert_eq!(choose(&h, Some("lo"), "192.0.2.21").unwrap(), None);
    for (iface, ip, why) in [
        (
            None,
            "10.9.9.9",
            "no interface holds the node address 10.9.9.9",
        ),
        (Some("nope0"), "192.0.2.21", "no interface nope0"),
        (
            Some("ul1"),
            "192.0.2.21",
            "ul1 (--vxlan-iface) has no IPv4 address",
        ),
    ] {
        let err = format!("{:#}", choose(&h, iface, ip).unwrap_err());
        assert!(err.contains(why), "{err}");
    }
}

#[test]
fn the_pod_bridge_takes_the_overlay_devices_mtu() {
    let h = TestHost::new();
    // A jumbo-frame underlay, and the node's pod bridge as `setup_node` leaves it.
    run(
        &h,
        "ip",
        &[
            "link", "add", UNDERLAY, "mtu", "9000", "type", "veth", "peer", "name", "ul1", "mtu",
            "9000",
        ],
    );
    setup(&h, "192.0.2.21", "10.42.1.1");
    let bridge = kinglet_network::BRIDGE;
    run(&h, "ip", &["link", "add", bridge, "type", "bridge"]);
    run(
        &h,
        "ip",
        &["link", "set", bridge, "mtu", "1450", "alias", "kinglet"],
    );
    let mtu = |link: &str| {
        let shown = run(&h, "ip", &["-o", "link", "show", link]);
        let after = shown.split(" mtu ").nth(1).unwrap_or_default();
        after.split(' ').next().unwrap_or_default().to_string()
    };
    ensure(&h, "192.0.2.21", "10.42.1.0/24").unwrap();
    assert_eq!(mtu(overlay::DEVICE), "8950");
    assert_eq!(mtu(bridge), "8950");

    // A bridge of that name that is not kinglet's is left as it is.
    run(
        &h,
        "ip",
        &["link", "set", bridge, "mtu", "1400", "alias", "another"],
    );
    ensure(&h, "192.0.2.21", "10.42.1.0/24").unwrap();
    assert_eq!(mtu(bridge), "1400");
}
