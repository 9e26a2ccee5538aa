//! Pod-to-pod TCP across the VXLAN overlay against the same two test hosts without it (issue
//! 21), in one run. A server with its node and one agent, each in a test host on a switch
//! (`tests/common/cluster.rs`), and a `sleep` pod on each node. The bench itself sends and
//! receives, with the same code on both paths, from threads that enter the network namespaces:
//!
//! - underlay: host 0 to host 1 by their addresses (192.0.2.10 -> 192.0.2.11, over the switch);
//! - overlay: the pod on node-0 to the pod on node-1 by pod IP (veth, cni0, kinglet.1's VXLAN,
//!   the switch, and back up on the other side).
//!
//! Each round measures the underlay, then the overlay. Throughput: BENCH_MIB MiB over one
//! connection, timed from the first write to the receiver having counted every byte.
//! Latency: 1-byte request/response round trips on one connection (TCP_NODELAY), each answer
//! checked to be the byte sent, after 100 uncounted ones.
//!
//! Run: `cargo bench --bench overlay` (env BENCH_MIB, default 2048; BENCH_ROUNDS, default 3;
//! BENCH_PINGS round trips per round and path, default 10000).

mod common;
use common::{env_or, median, percentile};

#[path = "../tests/common/mod.rs"]
mod harness;
use harness::cluster::Cluster;
use harness::eventually;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use kinglet_network::overlay::DEVICE;

/// The receivers' port, in the receiving host's or pod's namespace.
const PORT: u16 = 5201;
/// Bytes per read and write call.
const CHUNK: usize = 256 * 1024;
/// Round trips before the counted ones (connection and caches warm).
const WARM_UP: usize = 100;

/// One way between two network namespaces: a sender there and a receiver at `to`.
struct Way {
    name: &'static str,
    /// `/proc/<pid>/ns/net` of a process in each namespace.
    from_ns: PathBuf,
    to_ns: PathBuf,
    to: Ipv4Addr,
}

/// Runs `f` on a thread of its own inside the network namespace `ns` (setns changes only the
/// calling thread).
fn in_netns<T: Send + 'static>(
    ns: &PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let ns = std::fs::File::open(ns).unwrap_or_else(|e| panic!("{}: {e}", ns.display()));
    std::thread::spawn(move || {
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// A listener on `PORT` in `ns`, handed to `serve` for one connection.
fn receiver<T: Send + 'static>(
    ns: &PathBuf,
    serve: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let (ready, listening) = mpsc::channel();
    let t = in_netns(ns, move || {
        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)).expect("listen");
        ready.send(()).expect("bench gone");
        let (s, _) = l.accept().expect("accept");
        serve(s)
    });
    listening.recv().expect("receiver failed to listen");
    t
}

/// Sends `bytes` over one connection: seconds from the first write to the receiver having
/// counted them all, and the sender's MSS.
fn throughput(w: &Way, bytes: u64) -> (f64, u32) {
    let rx = receiver(&w.to_ns, move |mut s| {
        let mut buf = vec![0u8; CHUNK];
        let (mut got, mut done) = (0u64, None);
        loop {
            let n = s.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            got += n as u64;
            if got >= bytes && done.is_none() {
                done = Some(Instant::now());
            }
        }
        (got, done)
    });
    let to = SocketAddr::from((w.to, PORT));
    let tx = in_netns(&w.from_ns, move || {
        let mut s = TcpStream::connect(to).expect("connect");
        let mss = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::TcpMaxSeg)
            .expect("TCP_MAXSEG");
        let buf = vec![0u8; CHUNK];
        let start = Instant::now();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            s.write_all(&buf[..n]).expect("write");
            left -= n as u64;
        }
        (start, mss)
    });
    let (start, mss) = tx.join().expect("sender");
    let (got, done) = rx.join().expect("receiver");
    assert_eq!(got, bytes, "{}: the receiver counted {got} bytes", w.name);
    let done = done.expect("counted");
    ((done - start).as_secs_f64(), mss)
}

/// `n` 1-byte round trips on one connection, in µs, ascending.
fn round_trips(w: &Way, n: usize) -> Vec<f64> {
    let echo = receiver(&w.to_ns, |mut s| {
        s.set_nodelay(true).expect("nodelay");
        let mut b = [0u8];
        while s.read(&mut b).expect("read") == 1 {
            s.write_all(&b).expect("write");
        }
    });
    let to = SocketAddr::from((w.to, PORT));
    let name = w.name;
    let mut us = in_netns(&w.from_ns, move || {
        let mut s = TcpStream::connect(to).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let mut us = Vec::with_capacity(n);
        for i in 0..WARM_UP + n {
            let sent = [i as u8];
            let mut back = [0u8];
            let t = Instant::now();
            s.write_all(&sent).expect("write");
            s.read_exact(&mut back).expect("read");
            let took = t.elapsed();
            assert_eq!(back, sent, "{name}: a wrong answer");
            if i >= WARM_UP {
                us.push(took.as_secs_f64() * 1e6);
            }
        }
        us
    })
    .join()
    .expect("sender");
    echo.join().expect("echo");
    us.sort_by(f64::total_cmp);
    us
}

/// The pid of pod `name`'s `sleep`: the process in its pod cgroup (`.../pod<uid>/...`, the
/// kubelet's layout), seen from here since test hosts share the machine's pid namespace.
fn pod_pid(c: &Cluster, name: &str) -> u32 {
    let uid = c.ok(&["get", "pod", name, "-o", "jsonpath={.metadata.uid}"]);
    let cgroup = format!("/pod{uid}/");
    eventually(10, &format!("pod {name}'s process"), || {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            (comm.trim() == "sleep" && cgroups.contains(&cgroup)).then_some(pid)
        })
    })
}

/// The MTU of link `dev` in the network namespace of `pid`.
fn mtu(pid: u32, dev: &str) -> u32 {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["ip", "-o", "link", "show", "dev", dev])
        .output()
        .expect("nsenter ip");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words.find(|w| *w == "mtu");
    words
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no MTU of {dev} in {text:?}"))
}

/// Bytes sent by link `dev` in the network namespace of `pid`.
fn tx_bytes(pid: u32, dev: &str) -> u64 {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).expect("net/dev");
    let line = (table.lines())
        .find_map(|l| l.trim_start().strip_prefix(&format!("{dev}:")))
        .unwrap_or_else(|| panic!("no {dev} in\n{table}"));
    // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit bytes.
    line.split_whitespace().nth(8).unwrap().parse().unwrap()
}

/// Ascending round trips in µs as "p50, p99, max", without the p99 below 100 samples (where
/// it would be the maximum).
fn spread_us(us: &[f64]) -> String {
    let (p50, max) = (percentile(us, 0.5), us[us.len() - 1]);
    if us.len() >= 100 {
        let p99 = percentile(us, 0.99);
        format!("p50 {p50:.1} µs, p99 {p99:.1} µs, max {max:.1} µs")
    } else {
        format!("p50 {p50:.1} µs, max {max:.1} µs")
    }
}

fn gbits(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs / 1e9
}

fn main() {
    let mib = env_or("BENCH_MIB", 2048).max(1) as u64;
    let rounds = env_or("BENCH_ROUNDS", 3).max(1);
    let pings = env_or("BENCH_PINGS", 10_000).max(1);
    let bytes = mib << 20;

    let c = Cluster::start(1);
    c.run_pod("bench-a", 0, &["sleep", "1000000"]);
    let pod_b = c.run_pod("bench-b", 1, &["sleep", "1000000"]);
    let (pid_a, pid_b) = (pod_pid(&c, "bench-a"), pod_pid(&c, "bench-b"));
    let (host0, host1) = (c.host(0).pid(), c.host(1).pid());
    // The overlay way must leave host 0 through the VXLAN device.
    let route = c.run_in(0, "ip", &["route", "get", &pod_b]);
    assert!(route.contains(&format!("dev {DEVICE} ")), "{route}");

    let ns = |pid: u32| PathBuf::from(format!("/proc/{pid}/ns/net"));
    let underlay = Way {
        name: "underlay",
        from_ns: ns(host0),
        to_ns: ns(host1),
        to: c.ip(1).parse().unwrap(),
    };
    let overlay = Way {
        name: "overlay",
        from_ns: ns(pid_a),
        to_ns: ns(pid_b),
        to: pod_b.parse().unwrap(),
    };

    common::print_machine();
    println!(
        "MTU: underlay eth0 {} (hosts); overlay eth0 {} (pods), {DEVICE} {}",
        mtu(host0, "eth0"),
        mtu(pid_a, "eth0"),
        mtu(host0, DEVICE)
    );
    println!("{rounds} rounds, each underlay then overlay: {mib} MiB, then {pings} round trips");
    // Per way (underlay, overlay): Gbit/s by round, and every round trip.
    let (mut rates, mut lat) = ([vec![], vec![]], [vec![], vec![]]);
    let mut ratios = vec![];
    for round in 1..=rounds {
        for (k, w) in [&underlay, &overlay].into_iter().enumerate() {
            let vxlan_before = tx_bytes(host0, DEVICE);
            let (secs, mss) = throughput(w, bytes);
            let vxlan = tx_bytes(host0, DEVICE) - vxlan_before;
            // The overlay's bytes went out through the device; the underlay's did not.
            if k == 1 {
                assert!(
                    vxlan >= bytes,
                    "overlay: only {vxlan} bytes through {DEVICE}"
                );
            } else {
                assert!(
                    vxlan < bytes / 100,
                    "underlay: {vxlan} bytes through {DEVICE}"
                );
            }
            let us = round_trips(w, pings);
            let rate = gbits(bytes, secs);
            println!(
                "round {round} {:<8}: {secs:.2} s = {rate:.2} Gbit/s (MSS {mss}); round trips {}",
                w.name,
                spread_us(&us)
            );
            rates[k].push(rate);
            lat[k].extend(us);
        }
        ratios.push(format!("{:.2}", rates[1][round - 1] / rates[0][round - 1]));
    }
    for (k, w) in [&underlay, &overlay].into_iter().enumerate() {
        rates[k].sort_by(f64::total_cmp);
        lat[k].sort_by(f64::total_cmp);
        println!(
            "{:<8}: throughput median {:.2} Gbit/s; {} round trips: {}",
            w.name,
            median(&rates[k]),
            lat[k].len(),
            spread_us(&lat[k])
        );
    }
    println!(
        "overlay / underlay throughput: {:.2} by medians, {} by round (target >= 0.80)",
        median(&rates[1]) / median(&rates[0]),
        ratios.join(", ")
    );
}
