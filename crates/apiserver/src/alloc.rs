//! Service ClusterIP and NodePort allocation from the configured ranges. The in-memory sets
//! are rebuilt from stored Services at start and kept in step by admission and deletes.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::Value;

pub struct Allocator {
    base: u32,
    size: u32,
    ips: HashSet<u32>,
    ports: HashSet<u16>,
    port_range: (u16, u16),
}

/// Parses `a.b.c.d/n` into (network base, number of addresses).
pub fn parse_cidr(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, bits) = cidr.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let bits: u8 = bits.parse().ok().filter(|b| *b <= 32)?;
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    Some((Ipv4Addr::from(u32::from(ip) & mask), bits))
}

impl Allocator {
    pub fn new(service_cidr: &str, port_range: (u16, u16)) -> anyhow::Result<Allocator> {
        let (base, bits) = parse_cidr(service_cidr)
            .ok_or_else(|| anyhow::anyhow!("invalid service CIDR {service_cidr:?}"))?;
        let size = 1u64 << (32 - bits as u64);
        Ok(Allocator {
            base: u32::from(base),
            size: size.min(u32::MAX as u64) as u32,
            ips: HashSet::new(),
            ports: HashSet::new(),
            port_range,
        })
    }

    /// The first service IP (the `kubernetes` service's address).
    pub fn first_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        n > self.base && n < self.base + self.size - 1
    }

    /// Reserves a specific IP; false if taken or out of range.
    pub fn reserve_ip(&mut self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && self.ips.insert(u32::from(ip))
    }

    /// Picks a free IP at random (never the network, broadcast or first address).
    pub fn allocate_ip(&mut self) -> Option<Ipv4Addr> {
        let usable = self.size.saturating_sub(3);
        if usable == 0 {
            return None;
        }
        let start = rand::random::<u32>() % usable;
        (0..usable)
            .map(|i| self.base + 2 + (start + i) % usable)
            .find(|n| self.ips.insert(*n))
            .map(Ipv4Addr::from)
    }

    pub fn release_ip(&mut self, ip: Ipv4Addr) {
        self.ips.remove(&u32::from(ip));
    }

    pub fn port_in_range(&self, p: u16) -> bool {
        p >= self.port_range.0 && p <= self.port_range.1
    }

    pub fn reserve_port(&mut self, p: u16) -> bool {
        self.port_in_range(p) && self.ports.insert(p)
    }

    pub fn allocate_port(&mut self) -> Option<u16> {
        let n = (self.port_range.1 - self.port_range.0) as u32 + 1;
        let start = rand::random::<u32>() % n;
        (0..n)
            .map(|i| self.port_range.0 + ((start + i) % n) as u16)
            .find(|p| self.ports.insert(*p))
    }

    pub fn release_port(&mut self, p: u16) {
        self.ports.remove(&p);
    }

    pub fn port_range(&self) -> (u16, u16) {
        self.port_range
    }

    /// Records what a stored Service holds.
    pub fn adopt(&mut self, svc: &Value) {
        for ip in service_ips(svc) {
            self.ips.insert(u32::from(ip));
        }
        for p in node_ports(svc) {
            self.ports.insert(p);
        }
    }

    /// Frees what a Service held.
    pub fn release(&mut self, svc: &Value) {
        for ip in service_ips(svc) {
            self.release_ip(ip);
        }
        for p in node_ports(svc) {
            self.release_port(p);
        }
    }
}

pub fn service_ips(svc: &Value) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = svc
        .pointer("/spec/clusterIPs")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    if let Some(ip) = svc
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        && !out.contains(&ip)
    {
        out.push(ip);
    }
    out
}

pub fn node_ports(svc: &Value) -> Vec<u16> {
    let mut ports: Vec<u16> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| p.get("nodePort")?.as_u64())
                .filter_map(|p| u16::try_from(p).ok())
                .collect()
        })
        .unwrap_or_default();
    if let Some(p) = svc
        .pointer("/spec/healthCheckNodePort")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
    {
        ports.push(p);
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_unique_addresses_and_ports() {
        let mut a = Allocator::new("10.43.0.0/29", (30000, 30002)).unwrap();
        assert_eq!(a.first_ip(), Ipv4Addr::new(10, 43, 0, 1));
        let mut got = HashSet::new();
        while let Some(ip) = a.allocate_ip() {
            assert!(got.insert(ip));
        }
        assert_eq!(got.len(), 5); // .2 to .6
        assert!(!a.reserve_ip(Ipv4Addr::new(10, 43, 0, 3)));
        a.release_ip(Ipv4Addr::new(10, 43, 0, 3));
        assert!(a.reserve_ip(Ipv4Addr::new(10, 43, 0, 3)));
        let ports: HashSet<u16> = (0..3).filter_map(|_| a.allocate_port()).collect();
        assert_eq!(ports.len(), 3);
        assert_eq!(a.allocate_port(), None);
        assert!(!a.reserve_port(31000));
    }
}
