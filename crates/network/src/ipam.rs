//! Host-local address management for the pods of one node, on the node's podCIDR: one file
//! per address in use (`<dir>/<ip>`, holding its owner) created with `O_EXCL`, so an address is
//! never handed out twice, and allocations survive restarts. Like CNI's host-local plugin it
//! goes round-robin from the last address given, so a freed address is not reused at once
//! (connections to a deleted pod do not reach its successor).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use ipnet::Ipv4Net;

pub struct Ipam {
    dir: PathBuf,
    subnet: Ipv4Net,
    /// The files' content by owner, so status reports never read the directory.
    owners: Mutex<HashMap<String, Ipv4Addr>>,
}

const LAST: &str = "last_reserved_ip";

impl Ipam {
    /// The allocator of `subnet`, keeping its state below `root` (one directory per subnet).
    pub fn open(root: &Path, subnet: Ipv4Net) -> anyhow::Result<Ipam> {
        anyhow::ensure!(
            subnet.prefix_len() <= 30,
            "pod subnet {subnet} is too small"
        );
        let subnet = subnet.trunc();
        let dir = root.join(subnet.to_string().replace('/', "_"));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ipam = Ipam {
            dir,
            subnet,
            owners: Mutex::default(),
        };
        let found = ipam.allocations().into_iter().map(|(ip, o)| (o, ip));
        ipam.owners().extend(found);
        Ok(ipam)
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<String, Ipv4Addr>> {
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The bridge's address: the subnet's first.
    pub fn gateway(&self) -> Ipv4Addr {
        u32_ip(u32::from(self.subnet.network()) + 1)
    }

    /// The address of `owner` (a pod sandbox), taking a free one if it has none yet.
    pub fn allocate(&self, owner: &str) -> anyhow::Result<Ipv4Addr> {
        let _lock = self.lock()?;
        if let Some(ip) = self.find(owner) {
            return Ok(ip);
        }
        let first = u32::from(self.gateway()) + 1;
        let last = u32::from(self.subnet.broadcast()) - 1;
        let start = self
            .last_reserved()
            .filter(|ip| (first..=last).contains(ip))
            .map_or(first, |ip| if ip == last { first } else { ip + 1 });
        let candidates = (start..=last).chain(first..start);
        for n in candidates {
            let ip = u32_ip(n);
            let file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.dir.join(ip.to_string()));
            match file {
                Ok(mut f) => {
                    f.write_all(owner.as_bytes())?;
                    fs::write(self.dir.join(LAST), ip.to_string())?;
                    self.owners().insert(owner.to_string(), ip);
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("no free address left in {}", self.subnet)
    }

    /// Frees the address of `owner`, if it has one.
    pub fn release(&self, owner: &str) -> anyhow::Result<()> {
        let _lock = self.lock()?;
        if let Some(ip) = self.find(owner) {
            fs::remove_file(self.dir.join(ip.to_string()))?;
            self.owners().remove(owner);
        }
        Ok(())
    }

    /// Every address in use, with its owner.
    pub fn allocations(&self) -> Vec<(Ipv4Addr, String)> {
        fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let ip = e.file_name().to_str()?.parse::<Ipv4Addr>().ok()?;
                Some((ip, fs::read_to_string(e.path()).ok()?))
            })
            .collect()
    }

    /// The address of `owner`, if it has one.
    pub fn address_of(&self, owner: &str) -> Option<Ipv4Addr> {
        self.find(owner)
    }

    fn find(&self, owner: &str) -> Option<Ipv4Addr> {
        self.owners().get(owner).copied()
    }

    fn last_reserved(&self) -> Option<u32> {
        let text = fs::read_to_string(self.dir.join(LAST)).ok()?;
        text.trim().parse::<Ipv4Addr>().ok().map(u32::from)
    }

    /// Allocations from several threads (and a restarted kinglet) are serialised.
    fn lock(&self) -> anyhow::Result<nix::fcntl::Flock<fs::File>> {
        kinglet_core::lockfile::lock(&self.dir.join("lock"), "address store")
    }
}

fn u32_ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(root: &Path, cidr: &str) -> Ipam {
        Ipam::open(root, cidr.parse().unwrap()).unwrap()
    }

    #[test]
    fn addresses_are_unique_stable_and_not_reused_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let a = ipam(tmp.path(), "10.42.0.0/24");
        assert_eq!(a.gateway(), Ipv4Addr::new(10, 42, 0, 1));
        let p1 = a.allocate("pod-1").unwrap();
        let p2 = a.allocate("pod-2").unwrap();
        assert_eq!(p1, Ipv4Addr::new(10, 42, 0, 2));
        assert_eq!(p2, Ipv4Addr::new(10, 42, 0, 3));
        // Asking again gives the same address, also after a restart.
        assert_eq!(a.allocate("pod-1").unwrap(), p1);
        let b = ipam(tmp.path(), "10.42.0.0/24");
        assert_eq!(b.allocate("pod-2").unwrap(), p2);
        // A freed address comes back only after the others.
        b.release("pod-1").unwrap();
        assert_eq!(b.allocate("pod-3").unwrap(), Ipv4Addr::new(10, 42, 0, 4));
        assert!(!b.allocations().iter().any(|(_, o)| o == "pod-1"));
    }

    #[test]
    fn a_full_subnet_is_an_error_and_wraps_around_when_freed() {
        let tmp = tempfile::tempdir().unwrap();
        let a = ipam(tmp.path(), "10.42.7.0/29"); // .2 to .6 for pods
        let got: Vec<_> = (0..5)
            .map(|i| a.allocate(&format!("p{i}")).unwrap())
            .collect();
        assert_eq!(got.first(), Some(&Ipv4Addr::new(10, 42, 7, 2)));
        assert_eq!(got.last(), Some(&Ipv4Addr::new(10, 42, 7, 6)));
        let err = a.allocate("p5").unwrap_err().to_string();
        assert!(err.contains("no free address"), "{err}");
        a.release("p1").unwrap();
        assert_eq!(a.allocate("p5").unwrap(), Ipv4Addr::new(10, 42, 7, 3));
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let root = root.clone();
                std::thread::spawn(move || {
                    let a = ipam(&root, "10.42.1.0/24");
                    (0..20)
                        .map(|i| a.allocate(&format!("t{t}-{i}")).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<_> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn tiny_subnets_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(Ipam::open(tmp.path(), "10.42.0.0/31".parse().unwrap()).is_err());
    }
}
