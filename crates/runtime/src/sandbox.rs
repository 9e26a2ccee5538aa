//! A pod's sandbox without a pause container: network, IPC and UTS namespaces made by a
//! short-lived helper (`kinglet sandbox <dir> <hostname>`) and pinned by bind mounts on files in
//! `<dir>`, which the pod's containers join by path. They live until the pins are unmounted.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use kinglet_network::PodInterface;

/// The namespaces a sandbox holds, by their /proc/self/ns names.
pub const NAMESPACES: [&str; 3] = ["net", "ipc", "uts"];

/// Path of the pin for namespace `ns` of the sandbox in `dir`.
pub fn pin(dir: &Path, ns: &str) -> PathBuf {
    dir.join(ns)
}

/// Whether the sandbox in `dir` exists (its namespaces are pinned).
pub fn exists(dir: &Path) -> bool {
    NAMESPACES.iter().all(|ns| is_pinned(&pin(dir, ns)))
}

fn is_pinned(path: &Path) -> bool {
    // A pinned namespace file is an nsfs mount, whose inode differs from the empty file's.
    use std::os::unix::fs::MetadataExt;
    let (Ok(m), Some(parent)) = (fs::metadata(path), path.parent()) else {
        return false;
    };
    fs::metadata(parent).is_ok_and(|p| p.dev() != m.dev())
}

/// Makes the sandbox (idempotent), with `iface` as its `eth0` if given.
pub fn create(
    exe: &Path,
    dir: &Path,
    hostname: &str,
    iface: Option<&PodInterface>,
) -> anyhow::Result<()> {
    if exists(dir) {
        return Ok(());
    }
    destroy(dir);
    fs::create_dir_all(dir)?;
    let mut cmd = Command::new(exe);
    cmd.arg("sandbox").arg(dir).arg(hostname);
    if let Some(iface) = iface {
        cmd.arg("--network").arg(serde_json::to_string(iface)?);
    }
    let out = cmd.output().context("running the sandbox helper")?;
    if !out.status.success() {
        anyhow::bail!(
            "creating the pod sandbox: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Unpins the namespaces and removes the directory (idempotent).
pub fn destroy(dir: &Path) {
    for ns in NAMESPACES {
        let _ = nix::mount::umount2(&pin(dir, ns), MntFlags::MNT_DETACH);
    }
    let _ = fs::remove_dir_all(dir);
}

/// The helper: enters new namespaces, names the host, brings up loopback and the pod's
/// interface, pins, exits.
pub fn main(dir: &Path, hostname: &str, network: Option<&str>) -> ! {
    let iface = network
        .map(serde_json::from_str::<PodInterface>)
        .transpose();
    let made = iface
        .map_err(|e| anyhow::anyhow!("--network: {e}"))
        .and_then(|iface| make(dir, hostname, iface.as_ref()));
    match made {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("{e:#}");
            std::process::exit(1)
        }
    }
}

fn make(dir: &Path, hostname: &str, iface: Option<&PodInterface>) -> anyhow::Result<()> {
    // Netlink to the node's namespace is opened before leaving it; one thread throughout.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let node = match iface {
        Some(_) => Some((
            kinglet_network::handle_on(&rt)?,
            fs::File::open("/proc/self/ns/net")?,
        )),
        None => None,
    };
    nix::sched::unshare(
        CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS,
    )
    .context("unsharing namespaces")?;
    nix::unistd::sethostname(hostname).context("setting the pod's hostname")?;
    loopback_up().context("bringing up loopback")?;
    if let (Some(iface), Some((handle, node_ns))) = (iface, &node) {
        rt.block_on(kinglet_network::attach_pod(handle, node_ns, iface))?;
    }
    for ns in NAMESPACES {
        let target = pin(dir, ns);
        fs::File::create(&target)?;
        nix::mount::mount(
            Some(Path::new(&format!("/proc/self/ns/{ns}"))),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("pinning the {ns} namespace"))?;
    }
    Ok(())
}

/// `ip link set lo up` in the current network namespace.
fn loopback_up() -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; the ioctls read and write only that struct.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}
