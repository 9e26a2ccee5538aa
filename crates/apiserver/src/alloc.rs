//! Service ClusterIP and NodePort allocation from the configured ranges, safe across servers
//! sharing a datastore: every address or port a Service holds has a reservation key in the
//! store (`/kinglet/allocations/serviceips/<ip>`, `/kinglet/allocations/nodeports/<port>`,
//! holding the Service's `namespace/name/uid`), created only if absent, so two servers never
//! hand out the same one. A set in memory remembers what is taken, to pick candidates without
//! asking the store about each; it is only a hint. The leader's repair pass (`repair_forever`,
//! as upstream's repair controllers) frees reservations no Service holds and adds the ones a
//! Service lacks; at start, the Services of a data directory from before the reservation keys
//! are adopted.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kinglet_store::{Store, StoreError};
use serde_json::Value;

/// Reservation keys of ClusterIPs (outside `/registry/`: not objects).
pub const SERVICE_IPS_PREFIX: &str = "/kinglet/allocations/serviceips/";
/// Reservation keys of NodePorts.
pub const NODE_PORTS_PREFIX: &str = "/kinglet/allocations/nodeports/";

/// The ranges and what this server knows to be taken in them.
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

    /// Picks an IP not marked taken, at random (never the network, broadcast or first
    /// address), and marks it.
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
}

/// A ClusterIP or a NodePort.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Item {
    Ip(Ipv4Addr),
    Port(u16),
}

impl Item {
    fn key(self) -> String {
        match self {
            Item::Ip(ip) => format!("{SERVICE_IPS_PREFIX}{ip}"),
            Item::Port(p) => format!("{NODE_PORTS_PREFIX}{p}"),
        }
    }

    fn from_key(key: &str) -> Option<Item> {
        if let Some(ip) = key.strip_prefix(SERVICE_IPS_PREFIX) {
            return ip.parse().ok().map(Item::Ip);
        }
        key.strip_prefix(NODE_PORTS_PREFIX)?
            .parse()
            .ok()
            .map(Item::Port)
    }
}

/// Why an allocation failed.
#[derive(Debug)]
pub enum AllocError {
    /// The range has no free address or port.
    Full,
    /// The datastore failed.
    Store(StoreError),
}

/// The store-backed allocator the API server uses.
pub struct Allocations {
    store: Store,
    taken: Mutex<Allocator>,
}

/// The holder a reservation names: `namespace/name/uid`.
pub fn owner(svc: &Value) -> String {
    let m = |f: &str| {
        svc.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    format!("{}/{}/{}", m("namespace"), m("name"), m("uid"))
}

impl Allocations {
    /// Over `store`; `services` are the stored Services, whose addresses and ports get the
    /// reservation keys they lack (data directories from before the keys).
    pub async fn start(
        store: Store,
        service_cidr: &str,
        port_range: (u16, u16),
        services: &[Value],
    ) -> anyhow::Result<Allocations> {
        let a = Allocations {
            store,
            taken: Mutex::new(Allocator::new(service_cidr, port_range)?),
        };
        let held = a.reservations().await?;
        a.set_hints(&held);
        for svc in services {
            a.adopt(svc, &held).await?;
        }
        Ok(a)
    }

    fn taken(&self) -> std::sync::MutexGuard<'_, Allocator> {
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every reservation in the store: item -> (holder, revision).
    async fn reservations(&self) -> Result<HashMap<Item, (String, i64)>, StoreError> {
        let mut out = HashMap::new();
        for prefix in [SERVICE_IPS_PREFIX, NODE_PORTS_PREFIX] {
            let mut after = None;
            loop {
                let page = self
                    .store
                    .list(prefix, 0, after.clone(), Some(1000))
                    .await?;
                for rec in &page.items {
                    if let Some(item) = Item::from_key(&rec.key) {
                        let holder = String::from_utf8_lossy(&rec.value).into_owned();
                        out.insert(item, (holder, rec.rev));
                    }
                }
                match (page.more, page.items.last()) {
                    (true, Some(last)) => after = Some(last.key.clone()),
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    /// Rebuilds the set of taken items from the store's reservations.
    async fn refresh_hints(&self) -> Result<(), StoreError> {
        let held = self.reservations().await?;
        self.set_hints(&held);
        Ok(())
    }

    /// Sets the taken items to `held`'s.
    fn set_hints(&self, held: &HashMap<Item, (String, i64)>) {
        let mut t = self.taken();
        t.ips.clear();
        t.ports.clear();
        for item in held.keys() {
            match *item {
                Item::Ip(ip) => t.ips.insert(u32::from(ip)),
                Item::Port(p) => t.ports.insert(p),
            };
        }
    }

    /// Creates the reservations `svc`'s addresses and ports lack (`held`: the store's).
    async fn adopt(
        &self,
        svc: &Value,
        held: &HashMap<Item, (String, i64)>,
    ) -> Result<(), StoreError> {
        let who = owner(svc);
        for item in items_of(svc) {
            if !self.in_range(item) {
                continue;
            }
            match held.get(&item) {
                None => match self
                    .store
                    .create(&item.key(), Bytes::from(who.clone()))
                    .await
                {
                    // Taken now, by this Service or (created meanwhile) another.
                    Ok(_) | Err(StoreError::AlreadyExists) => self.mark(item),
                    Err(e) => return Err(e),
                },
                Some((holder, _)) if *holder != who => {
                    tracing::warn!(
                        "{item:?} of Service {who} is also reserved by {holder}: one of them must change"
                    );
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn in_range(&self, item: Item) -> bool {
        let t = self.taken();
        match item {
            Item::Ip(ip) => t.contains(ip),
            Item::Port(p) => t.port_in_range(p),
        }
    }

    /// The first service IP (the `kubernetes` Service).
    pub fn first_ip(&self) -> Ipv4Addr {
        self.taken().first_ip()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.taken().contains(ip)
    }

    pub fn port_in_range(&self, p: u16) -> bool {
        self.taken().port_in_range(p)
    }

    pub fn port_range(&self) -> (u16, u16) {
        self.taken().port_range()
    }

    /// Reserves `item` for `who`: true when it is now (or already was) `who`'s.
    async fn reserve(&self, item: Item, who: &str) -> Result<bool, StoreError> {
        let key = item.key();
        match self.store.create(&key, Bytes::from(who.to_string())).await {
            Ok(_) => {}
            Err(StoreError::AlreadyExists) => {
                let mine = self
                    .store
                    .get(&key)
                    .await?
                    .is_some_and(|rec| rec.value.as_ref() == who.as_bytes());
                if !mine {
                    self.mark(item);
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
        self.mark(item);
        Ok(true)
    }

    fn mark(&self, item: Item) {
        let mut t = self.taken();
        match item {
            Item::Ip(ip) => t.ips.insert(u32::from(ip)),
            Item::Port(p) => t.ports.insert(p),
        };
    }

    /// Picks a free item and reserves it for `who`. Candidates come from the set of taken
    /// items; one found reserved in the store is marked and another tried; when the set says
    /// the range is full, it is read again from the store once.
    async fn allocate(&self, ip: bool, who: &str) -> Result<Item, AllocError> {
        let mut refreshed = false;
        loop {
            let candidate = {
                let mut t = self.taken();
                if ip {
                    t.allocate_ip().map(Item::Ip)
                } else {
                    t.allocate_port().map(Item::Port)
                }
            };
            let Some(item) = candidate else {
                if refreshed {
                    return Err(AllocError::Full);
                }
                self.refresh_hints().await.map_err(AllocError::Store)?;
                refreshed = true;
                continue;
            };
            match self
                .store
                .create(&item.key(), Bytes::from(who.to_string()))
                .await
            {
                Ok(_) => return Ok(item),
                Err(StoreError::AlreadyExists) => continue,
                Err(e) => {
                    self.unmark(item);
                    return Err(AllocError::Store(e));
                }
            }
        }
    }

    fn unmark(&self, item: Item) {
        let mut t = self.taken();
        match item {
            Item::Ip(ip) => t.release_ip(ip),
            Item::Port(p) => t.release_port(p),
        }
    }

    /// Frees `item` if `who` holds it (never another Service's reservation).
    async fn release_item(&self, item: Item, who: &str) {
        let key = item.key();
        let result = match self.store.get(&key).await {
            Ok(Some(rec)) if rec.value.as_ref() == who.as_bytes() => {
                self.store.delete(&key, Some(rec.rev)).await.map(|_| ())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) | Err(StoreError::NotFound) | Err(StoreError::Conflict(_)) => self.unmark(item),
            // Left for the repair pass.
            Err(e) => tracing::warn!("releasing {key}: {e}"),
        }
    }

    pub async fn allocate_ip(&self, who: &str) -> Result<Ipv4Addr, AllocError> {
        match self.allocate(true, who).await? {
            Item::Ip(ip) => Ok(ip),
            Item::Port(_) => Err(AllocError::Full),
        }
    }

    pub async fn allocate_port(&self, who: &str) -> Result<u16, AllocError> {
        match self.allocate(false, who).await? {
            Item::Port(p) => Ok(p),
            Item::Ip(_) => Err(AllocError::Full),
        }
    }

    /// Reserves a requested IP for `who`; false when another holds it or it is out of range.
    pub async fn reserve_ip(&self, ip: Ipv4Addr, who: &str) -> Result<bool, StoreError> {
        if !self.contains(ip) {
            return Ok(false);
        }
        self.reserve(Item::Ip(ip), who).await
    }

    /// Reserves a requested NodePort for `who`; false when another holds it or it is out of
    /// range.
    pub async fn reserve_port(&self, p: u16, who: &str) -> Result<bool, StoreError> {
        if !self.port_in_range(p) {
            return Ok(false);
        }
        self.reserve(Item::Port(p), who).await
    }

    #[cfg(test)]
    async fn release_ip(&self, ip: Ipv4Addr, who: &str) {
        self.release_item(Item::Ip(ip), who).await
    }

    /// Frees what `old` held that `new`, its stored update, does not.
    pub async fn release_dropped(&self, old: &Value, new: &Value) {
        let who = owner(old);
        let kept = items_of(new);
        for item in items_of(old) {
            if !kept.contains(&item) {
                self.release_item(item, &who).await;
            }
        }
    }

    /// Frees what `new`, an update of `old` that was not stored, holds beyond `old` and
    /// `stored` (the Service as stored now): what its admission reserved.
    pub async fn release_added(&self, old: &Value, new: &Value, stored: Option<&Value>) {
        let who = owner(old);
        let mut kept = items_of(old);
        if let Some(s) = stored.filter(|s| owner(s) == who) {
            kept.extend(items_of(s));
        }
        for item in items_of(new) {
            if !kept.contains(&item) {
                self.release_item(item, &who).await;
            }
        }
    }

    /// Frees what a Service held.
    pub async fn release(&self, svc: &Value) {
        let who = owner(svc);
        for item in items_of(svc) {
            self.release_item(item, &who).await;
        }
    }
}

/// What a Service holds.
fn items_of(svc: &Value) -> Vec<Item> {
    let mut out: Vec<Item> = service_ips(svc).into_iter().map(Item::Ip).collect();
    out.extend(node_ports(svc).into_iter().map(Item::Port));
    out.dedup();
    out
}

/// How often the leader's repair pass runs.
const REPAIR_EVERY: Duration = Duration::from_secs(60);
/// Passes a reservation must be seen without a Service before it is freed (as upstream's
/// `numRepairsBeforeLeakCleanup`): a Service being created holds its reservation a moment
/// before it is stored.
const PASSES_BEFORE_FREEING: u32 = 3;

/// The repair pass's memory: reservations seen without a Service, and in how many passes.
#[derive(Default)]
pub struct Repair {
    leaked: HashMap<(Item, i64), u32>,
}

impl Repair {
    /// One pass over `services` (every stored Service, listed before the reservations are
    /// read): frees reservations no Service has held for [`PASSES_BEFORE_FREEING`] passes,
    /// and creates the ones a Service lacks.
    pub async fn pass(
        &mut self,
        allocations: &Allocations,
        services: &[Value],
    ) -> Result<(), StoreError> {
        let held = allocations.reservations().await?;
        let mut wanted: HashMap<Item, Vec<String>> = HashMap::new();
        for svc in services {
            let who = owner(svc);
            for item in items_of(svc) {
                wanted.entry(item).or_default().push(who.clone());
            }
        }
        let mut still_leaked = HashMap::new();
        for (item, (holder, rev)) in &held {
            if wanted
                .get(item)
                .is_some_and(|owners| owners.contains(holder))
            {
                continue;
            }
            let seen = self.leaked.get(&(*item, *rev)).copied().unwrap_or(0) + 1;
            if seen < PASSES_BEFORE_FREEING {
                still_leaked.insert((*item, *rev), seen);
                continue;
            }
            tracing::info!("freeing {item:?}, reserved by {holder} but held by no Service");
            match allocations.store.delete(&item.key(), Some(*rev)).await {
                Ok(_) | Err(StoreError::NotFound) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
            allocations.unmark(*item);
        }
        self.leaked = still_leaked;
        for svc in services {
            allocations.adopt(svc, &held).await?;
        }
        Ok(())
    }
}

/// The leader's repair pass, every [`REPAIR_EVERY`] while `api` runs; the caller runs it only
/// on the lease holder.
pub async fn repair_forever(api: Arc<crate::Api>) {
    let mut repair = Repair::default();
    let Some(res) = api.registry.find("", "v1", "services") else {
        return;
    };
    loop {
        tokio::time::sleep(REPAIR_EVERY).await;
        let services = match api.store.list(&res.prefix(), 0, None, None).await {
            Ok(page) => page
                .items
                .iter()
                .filter_map(|r| serde_json::from_slice::<Value>(&r.value).ok())
                .collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!("service allocation repair: listing Services: {e}");
                continue;
            }
        };
        if let Err(e) = repair.pass(api.allocations(), &services).await {
            tracing::warn!("service allocation repair: {e}");
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
    use serde_json::json;

    #[test]
    fn allocates_unique_addresses_and_ports() {
        let mut a = Allocator::new("10.43.0.0/29", (30000, 30002)).unwrap();
        assert_eq!(a.first_ip(), Ipv4Addr::new(10, 43, 0, 1));
        let mut got = HashSet::new();
        while let Some(ip) = a.allocate_ip() {
            assert!(got.insert(ip));
        }
        assert_eq!(got.len(), 5); // .2 to .6
        a.release_ip(Ipv4Addr::new(10, 43, 0, 3));
        assert_eq!(a.allocate_ip(), Some(Ipv4Addr::new(10, 43, 0, 3)));
        let ports: HashSet<u16> = (0..3).filter_map(|_| a.allocate_port()).collect();
        assert_eq!(ports.len(), 3);
        assert_eq!(a.allocate_port(), None);
        assert!(!a.port_in_range(31000));
    }

    fn svc(name: &str, ip: &str, node_port: Option<u16>) -> Value {
        let mut s = json!({"metadata": {"namespace": "default", "name": name, "uid": format!("uid-{name}")},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": 80}]}});
        if let Some(p) = node_port {
            s["spec"]["ports"][0]["nodePort"] = json!(p);
        }
        s
    }

    fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(&dir.path().join("state.db")).unwrap()
    }

    /// Two allocators over one store (two servers) never hand out the same address or port,
    /// even allocating concurrently until the ranges are full.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_allocators_over_one_store_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        // 10.43.0.0/27: 29 addresses to hand out; 40 ports.
        let range = ("10.43.0.0/27", (30000, 30039));
        let a = Arc::new(
            Allocations::start(s.clone(), range.0, range.1, &[])
                .await
                .unwrap(),
        );
        let b = Arc::new(
            Allocations::start(s.clone(), range.0, range.1, &[])
                .await
                .unwrap(),
        );
        let mut tasks = Vec::new();
        for (n, alloc) in [a.clone(), b.clone(), a.clone(), b.clone()]
            .into_iter()
            .enumerate()
        {
            tasks.push(tokio::spawn(async move {
                let (mut ips, mut ports) = (Vec::new(), Vec::new());
                for i in 0.. {
                    let who = format!("default/s{n}-{i}/u");
                    let ip = alloc.allocate_ip(&who).await;
                    let port = alloc.allocate_port(&who).await;
                    if let (Err(AllocError::Full), Err(AllocError::Full)) = (&ip, &port) {
                        break;
                    }
                    ips.extend(ip.ok());
                    ports.extend(port.ok());
                }
                (ips, ports)
            }));
        }
        let (mut ips, mut ports) = (Vec::new(), Vec::new());
        for t in tasks {
            let (i, p) = t.await.unwrap();
            ips.extend(i);
            ports.extend(p);
        }
        let unique_ips: HashSet<_> = ips.iter().collect();
        let unique_ports: HashSet<_> = ports.iter().collect();
        assert_eq!(
            unique_ips.len(),
            ips.len(),
            "an address was handed out twice"
        );
        assert_eq!(
            unique_ports.len(),
            ports.len(),
            "a port was handed out twice"
        );
        assert_eq!(ips.len(), 29);
        assert_eq!(ports.len(), 40);
        // What one frees, the other finds again once its own view says the range is full.
        let freed = ips[0];
        let holder = String::from_utf8(
            s.get(&Item::Ip(freed).key())
                .await
                .unwrap()
                .unwrap()
                .value
                .to_vec(),
        )
        .unwrap();
        a.release_ip(freed, &holder).await;
        assert_eq!(b.allocate_ip("default/late/u").await.unwrap(), freed);
    }

    #[tokio::test]
    async fn requested_items_release_and_ownership() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let a = Allocations::start(s.clone(), "10.43.0.0/24", (30000, 30100), &[])
            .await
            .unwrap();
        let b = Allocations::start(s.clone(), "10.43.0.0/24", (30000, 30100), &[])
            .await
            .unwrap();
        let ip = Ipv4Addr::new(10, 43, 0, 50);
        assert!(a.reserve_ip(ip, "default/x/1").await.unwrap());
        // Taken by another Service, through either server; the holder may ask again.
        assert!(!b.reserve_ip(ip, "default/y/2").await.unwrap());
        assert!(b.reserve_ip(ip, "default/x/1").await.unwrap());
        assert!(
            !a.reserve_ip(Ipv4Addr::new(10, 44, 0, 1), "default/x/1")
                .await
                .unwrap()
        );
        assert!(!a.reserve_port(29999, "default/x/1").await.unwrap());
        // Only the holder's release frees it.
        b.release_ip(ip, "default/y/2").await;
        assert!(!b.reserve_ip(ip, "default/y/2").await.unwrap());
        a.release_ip(ip, "default/x/1").await;
        assert!(b.reserve_ip(ip, "default/y/2").await.unwrap());
    }

    /// An update stored gives back what the Service dropped; one not stored gives back what
    /// its admission reserved, and nothing the Service (as before, or as stored now) holds.
    #[tokio::test]
    async fn updates_release_only_what_they_must() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let a = Allocations::start(s.clone(), "10.43.0.0/24", (30000, 30100), &[])
            .await
            .unwrap();
        let old = svc("a", "10.43.0.10", Some(30010));
        let who = owner(&old);
        let held = |item: Item| {
            let s = s.clone();
            async move { s.get(&item.key()).await.unwrap().is_some() }
        };
        assert!(
            a.reserve_ip("10.43.0.10".parse().unwrap(), &who)
                .await
                .unwrap()
        );
        assert!(a.reserve_port(30010, &who).await.unwrap());
        // NodePort -> ClusterIP, refused or a dry run: the port stays reserved.
        let no_port = svc("a", "10.43.0.10", None);
        a.release_added(&old, &no_port, Some(&old)).await;
        assert!(held(Item::Port(30010)).await);
        // Another port asked for, not stored: given back; unless the stored Service holds it.
        let other_port = svc("a", "10.43.0.10", Some(30011));
        assert!(a.reserve_port(30011, &who).await.unwrap());
        a.release_added(&old, &other_port, Some(&other_port)).await;
        assert!(held(Item::Port(30011)).await);
        a.release_added(&old, &other_port, Some(&old)).await;
        assert!(!held(Item::Port(30011)).await);
        assert!(held(Item::Port(30010)).await);
        // Stored: what the old object held and the new one drops is freed, the rest kept.
        a.release_dropped(&old, &no_port).await;
        assert!(!held(Item::Port(30010)).await);
        assert!(held(Item::Ip("10.43.0.10".parse().unwrap())).await);
    }

    /// Services of a data directory from before the reservation keys are adopted at start;
    /// the repair pass frees leaked reservations only after several passes, and restores
    /// missing ones.
    #[tokio::test]
    async fn adoption_and_repair() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let old = vec![
            svc("a", "10.43.0.10", Some(30010)),
            svc("b", "10.43.0.11", None),
        ];
        let a = Allocations::start(s.clone(), "10.43.0.0/24", (30000, 30100), &old)
            .await
            .unwrap();
        assert!(
            !a.reserve_ip("10.43.0.10".parse().unwrap(), "default/c/x")
                .await
                .unwrap()
        );
        assert!(!a.reserve_port(30010, "default/c/x").await.unwrap());
        assert!(
            a.reserve_ip("10.43.0.11".parse().unwrap(), "default/b/uid-b")
                .await
                .unwrap()
        );
        // A reservation whose Service never got stored, and a Service whose key went missing.
        assert!(
            a.reserve_ip("10.43.0.99".parse().unwrap(), "default/gone/u")
                .await
                .unwrap()
        );
        s.delete(&Item::Ip("10.43.0.11".parse().unwrap()).key(), None)
            .await
            .unwrap();
        let mut repair = Repair::default();
        for _ in 1..PASSES_BEFORE_FREEING {
            repair.pass(&a, &old).await.unwrap();
            assert!(
                s.get(&Item::Ip("10.43.0.99".parse().unwrap()).key())
                    .await
                    .unwrap()
                    .is_some()
            );
        }
        assert!(
            s.get(&Item::Ip("10.43.0.11".parse().unwrap()).key())
                .await
                .unwrap()
                .is_some()
        );
        repair.pass(&a, &old).await.unwrap();
        assert!(
            s.get(&Item::Ip("10.43.0.99".parse().unwrap()).key())
                .await
                .unwrap()
                .is_none()
        );
        assert!(s.get(&Item::Port(30010).key()).await.unwrap().is_some());
    }
}
