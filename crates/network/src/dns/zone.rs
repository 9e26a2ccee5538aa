//! The cluster's DNS records (kubernetes/dns specification 1.1.0), kept up to date from the
//! node's Service watch (only Services that changed are looked at again) so that
//! answering is a map lookup.

use crate::services::Change;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use hickory_server::proto::rr::rdata::{A, CNAME, PTR, SOA, SRV, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

/// CoreDNS's default TTL for cluster records.
pub const TTL: u32 = 5;

pub enum Answer {
    Records(Vec<Record>),
    /// The name exists, without records of the type asked for.
    NoData,
    NxDomain,
    /// Not a name this server is authoritative for: forward it.
    NotOurs,
}

pub struct Zone {
    domain: Name,
    /// Reverse lookups in these ranges are ours too.
    ranges: Vec<Ipv4Net>,
    /// Records by name and type, each with the number of times it was added.
    records: HashMap<(Name, RecordType), Vec<(Record, usize)>>,
    /// Every name with records and all their ancestors inside the zone, with the number of
    /// records at or below it.
    names: HashMap<Name, usize>,
    /// Per Service (`ns/name`): its records.
    services: HashMap<String, Vec<(Name, RData)>>,
    soa: Record,
}

fn name(s: &str) -> Option<Name> {
    let mut n = Name::from_str(s).ok()?.to_lowercase();
    n.set_fqdn(true);
    Some(n)
}

fn records(counted: &[(Record, usize)]) -> Vec<Record> {
    counted.iter().map(|(r, _)| r.clone()).collect()
}

/// `10-42-0-5` for `10.42.0.5`.
fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

fn reverse_name(ip: Ipv4Addr) -> Option<Name> {
    let o = ip.octets();
    name(&format!(
        "{}.{}.{}.{}.in-addr.arpa.",
        o[3], o[2], o[1], o[0]
    ))
}

fn reverse_ip(n: &Name) -> Option<Ipv4Addr> {
    let s = n.to_ascii().to_ascii_lowercase();
    let rest = s.trim_end_matches('.').strip_suffix(".in-addr.arpa")?;
    let mut octets: Vec<u8> = rest
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    if octets.len() != 4 {
        return None;
    }
    octets.reverse();
    Some(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
}

impl Zone {
    pub fn empty(domain: &str, ranges: Vec<Ipv4Net>) -> anyhow::Result<Zone> {
        let domain =
            name(domain).ok_or_else(|| anyhow::anyhow!("bad cluster domain {domain:?}"))?;
        let soa = Record::from_rdata(
            domain.clone(),
            TTL,
            RData::SOA(SOA::new(
                Name::from_str("ns.dns")?.append_domain(&domain)?,
                Name::from_str("hostmaster")?.append_domain(&domain)?,
                1,
                7200,
                1800,
                86400,
                TTL,
            )),
        );
        let mut z = Zone {
            domain,
            ranges,
            records: HashMap::new(),
            names: HashMap::new(),
            services: HashMap::new(),
            soa,
        };
        let version = z.domain.prepend_label("dns-version")?;
        z.add(&version, RData::TXT(TXT::new(vec!["1.1.0".into()])));
        Ok(z)
    }

    pub fn soa(&self) -> &Record {
        &self.soa
    }

    fn add(&mut self, n: &Name, data: RData) {
        let rtype = data.record_type();
        let list = self.records.entry((n.clone(), rtype)).or_default();
        let rec = Record::from_rdata(n.clone(), TTL, data);
        match list.iter_mut().find(|(r, _)| *r == rec) {
            Some((_, count)) => *count += 1,
            None => list.push((rec, 1)),
        }
        let mut cur = n.clone();
        while self.domain.zone_of(&cur) {
            *self.names.entry(cur.clone()).or_default() += 1;
            cur = cur.base_name();
        }
    }

    /// Takes back one `add(n, data)`.
    fn remove(&mut self, n: &Name, data: RData) {
        let key = (n.clone(), data.record_type());
        let rec = Record::from_rdata(n.clone(), TTL, data);
        if let Some(list) = self.records.get_mut(&key) {
            if let Some(i) = list.iter().position(|(r, _)| *r == rec) {
                list[i].1 -= 1;
                if list[i].1 == 0 {
                    list.swap_remove(i);
                }
            }
            if list.is_empty() {
                self.records.remove(&key);
            }
        }
        let mut cur = n.clone();
        while self.domain.zone_of(&cur) {
            if let Some(count) = self.names.get_mut(&cur) {
                *count -= 1;
                if *count == 0 {
                    self.names.remove(&cur);
                }
            }
            cur = cur.base_name();
        }
    }

    /// Brings the records of the `changed` Services up to date.
    pub fn update(&mut self, changed: Vec<Change>) {
        for c in changed {
            let records = (c.now.as_ref())
                .map(|s| self.service_records(&s.service, &s.slices()))
                .unwrap_or_default();
            for (n, d) in &records {
                self.add(n, d.clone());
            }
            let old = if records.is_empty() {
                self.services.remove(&c.key)
            } else {
                self.services.insert(c.key, records)
            };
            for (n, d) in old.unwrap_or_default() {
                self.remove(&n, d);
            }
        }
    }

    /// The records of one Service, given its slices (each record once).
    fn service_records(&self, svc: &Service, slices: &[&EndpointSlice]) -> Vec<(Name, RData)> {
        let mut out: Vec<(Name, RData)> = Vec::new();
        let mut add = |n: &Name, d: RData| {
            if !out.iter().any(|(m, e)| m == n && *e == d) {
                out.push((n.clone(), d));
            }
        };
        let Some(spec) = &svc.spec else { return out };
        let ns = svc.namespace().unwrap_or_default();
        let Some(base) = name(&format!("{}.{}.svc.{}", svc.name_any(), ns, self.domain)) else {
            return out;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            if let Some(target) = spec.external_name.as_deref().and_then(name) {
                add(&base, RData::CNAME(CNAME(target)));
            }
            return out;
        }
        let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
        if let Ok(ip) = cluster_ip.parse::<Ipv4Addr>() {
            add(&base, RData::A(A(ip)));
            if let Some(r) = reverse_name(ip) {
                add(&r, RData::PTR(PTR(base.clone())));
            }
            for p in spec.ports.iter().flatten() {
                let Some(pname) = p.name.as_deref().filter(|n| !n.is_empty()) else {
                    continue;
                };
                let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                if let Some(srv) = name(&format!("_{pname}._{proto}.{base}"))
                    && let Ok(port) = u16::try_from(p.port)
                {
                    add(&srv, RData::SRV(SRV::new(0, 100, port, base.clone())));
                }
            }
            return out;
        }
        if cluster_ip != "None" {
            return out; // not allocated yet, or IPv6 only
        }
        // Headless: one A record per endpoint, and a name per endpoint.
        let publish_all = spec.publish_not_ready_addresses == Some(true);
        for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
            for e in &slice.endpoints {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !(ready || publish_all) {
                    continue;
                }
                for ip in e
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<Ipv4Addr>().ok())
                {
                    add(&base, RData::A(A(ip)));
                    let label = e.hostname.clone().unwrap_or_else(|| dashed(ip));
                    let Ok(host) = base.prepend_label(label.as_str()) else {
                        continue;
                    };
                    add(&host, RData::A(A(ip)));
                    if e.hostname.is_some()
                        && let Some(r) = reverse_name(ip)
                    {
                        add(&r, RData::PTR(PTR(host.clone())));
                    }
                    for p in slice.ports.iter().flatten() {
                        let (Some(pname), Some(port)) = (
                            p.name.as_deref().filter(|n| !n.is_empty()),
                            p.port.and_then(|n| u16::try_from(n).ok()),
                        ) else {
                            continue;
                        };
                        let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                        if let Some(srv) = name(&format!("_{pname}._{proto}.{base}")) {
                            add(&srv, RData::SRV(SRV::new(0, 100, port, host.clone())));
                        }
                    }
                }
            }
        }
        out
    }

    /// The answer for `n` (lower case, fully qualified) and `rtype`.
    pub fn answer(&self, n: &Name, rtype: RecordType) -> Answer {
        if let Some(ip) = reverse_ip(n) {
            return match self.records.get(&(n.clone(), RecordType::PTR)) {
                Some(r) if rtype == RecordType::PTR => Answer::Records(records(r)),
                Some(_) => Answer::NoData,
                None if self.ranges.iter().any(|r| r.contains(&ip)) => Answer::NxDomain,
                None => Answer::NotOurs,
            };
        }
        if !self.domain.zone_of(n) {
            return Answer::NotOurs;
        }
        if let Some(ip) = self.pod_record(n) {
            return if matches!(rtype, RecordType::A | RecordType::ANY) {
                Answer::Records(vec![Record::from_rdata(n.clone(), TTL, RData::A(A(ip)))])
            } else {
                Answer::NoData
            };
        }
        if rtype == RecordType::SOA && n == &self.domain {
            return Answer::Records(vec![self.soa.clone()]);
        }
        if let Some(r) = self.records.get(&(n.clone(), rtype)) {
            return Answer::Records(records(r));
        }
        // A name with a CNAME answers every type with it.
        if let Some(r) = self.records.get(&(n.clone(), RecordType::CNAME)) {
            return Answer::Records(records(r));
        }
        if self.names.contains_key(n) || n == &self.domain {
            Answer::NoData
        } else {
            Answer::NxDomain
        }
    }

    /// `a-b-c-d.<ns>.pod.<domain>` (CoreDNS `pods insecure`: any well-formed name answers).
    fn pod_record(&self, n: &Name) -> Option<Ipv4Addr> {
        if n.num_labels() != self.domain.num_labels() + 3 {
            return None;
        }
        let labels: Vec<String> = n
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        if labels[2] != "pod" {
            return None;
        }
        match labels[0].replace('-', ".").parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => Some(ip),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::services::tests::Event;
    use crate::services::{ServiceWatch, Subscription, tests::fed};

    fn db_slice(version: &str, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "db-x", "namespace": "default", "resourceVersion": version,
                "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn services() -> Vec<Service> {
        [
            json!({"metadata": {"name": "web", "namespace": "default", "resourceVersion": "1"}, "spec": {"clusterIP": "10.43.0.20", "ports": [{"name": "http", "port": 80}]}}),
            json!({"metadata": {"name": "db", "namespace": "default", "resourceVersion": "2"}, "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
            json!({"metadata": {"name": "ext", "namespace": "default", "resourceVersion": "3"}, "spec": {"type": "ExternalName", "externalName": "example.org"}}),
        ]
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect()
    }

    /// The zone of `services()` and the watch it follows.
    fn zone() -> (Zone, ServiceWatch, Subscription) {
        let (watch, sub) = fed();
        for s in services() {
            watch.service(Event::Apply(s));
        }
        watch.slice(Event::Apply(db_slice(
            "4",
            json!([
                {"addresses": ["10.42.0.7"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.42.0.8"], "conditions": {"ready": true}},
                {"addresses": ["10.42.0.9"], "hostname": "db-2", "conditions": {"ready": false}},
            ]),
        )));
        let ranges = vec![
            "10.43.0.0/16".parse().unwrap(),
            "10.42.0.0/16".parse().unwrap(),
        ];
        let mut z = Zone::empty("cluster.local", ranges).unwrap();
        z.update(sub.changes());
        (z, watch, sub)
    }

    fn ask(z: &Zone, n: &str, t: RecordType) -> Answer {
        z.answer(&name(n).unwrap(), t)
    }

    fn rdata(a: Answer) -> Vec<String> {
        match a {
            Answer::Records(r) => {
                let mut v: Vec<String> = r.iter().map(|r| r.data().to_string()).collect();
                v.sort();
                v
            }
            Answer::NoData => vec!["NODATA".into()],
            Answer::NxDomain => vec!["NXDOMAIN".into()],
            Answer::NotOurs => vec!["FORWARD".into()],
        }
    }

    #[test]
    fn answers_follow_the_specification() {
        let (z, _, _) = zone();
        use RecordType::*;
        assert_eq!(
            rdata(ask(&z, "web.default.svc.cluster.local.", A)),
            ["10.43.0.20"]
        );
        assert_eq!(
            rdata(ask(&z, "WEB.default.svc.cluster.local", A)),
            ["10.43.0.20"]
        );
        assert_eq!(
            rdata(ask(&z, "web.default.svc.cluster.local", AAAA)),
            ["NODATA"]
        );
        assert_eq!(
            rdata(ask(&z, "_http._tcp.web.default.svc.cluster.local", SRV)),
            ["0 100 80 web.default.svc.cluster.local."]
        );
        assert_eq!(
            rdata(ask(&z, "20.0.43.10.in-addr.arpa", PTR)),
            ["web.default.svc.cluster.local."]
        );
        // Headless: ready endpoints only, with per-endpoint names.
        assert_eq!(
            rdata(ask(&z, "db.default.svc.cluster.local", A)),
            ["10.42.0.7", "10.42.0.8"]
        );
        assert_eq!(
            rdata(ask(&z, "db-0.db.default.svc.cluster.local", A)),
            ["10.42.0.7"]
        );
        assert_eq!(
            rdata(ask(&z, "10-42-0-8.db.default.svc.cluster.local", A)),
            ["10.42.0.8"]
        );
        assert_eq!(
            rdata(ask(&z, "db-2.db.default.svc.cluster.local", A)),
            ["NXDOMAIN"]
        );
        assert_eq!(
            rdata(ask(&z, "_pg._tcp.db.default.svc.cluster.local", SRV)),
            [
                "0 100 5432 10-42-0-8.db.default.svc.cluster.local.",
                "0 100 5432 db-0.db.default.svc.cluster.local."
            ]
        );
        assert_eq!(
            rdata(ask(&z, "ext.default.svc.cluster.local", A)),
            ["example.org."]
        );
        assert_eq!(
            rdata(ask(&z, "10-42-0-5.default.pod.cluster.local", A)),
            ["10.42.0.5"]
        );
        assert_eq!(rdata(ask(&z, "dns-version.cluster.local", TXT)), ["1.1.0"]);
        // Unknown names in the zone do not exist; their parents do.
        assert_eq!(
            rdata(ask(&z, "nope.default.svc.cluster.local", A)),
            ["NXDOMAIN"]
        );
        assert_eq!(rdata(ask(&z, "default.svc.cluster.local", A)), ["NODATA"]);
        assert_eq!(rdata(ask(&z, "1.0.43.10.in-addr.arpa", PTR)), ["NXDOMAIN"]);
        // Everything else goes upstream.
        assert_eq!(rdata(ask(&z, "example.org", A)), ["FORWARD"]);
        assert_eq!(rdata(ask(&z, "1.2.0.192.in-addr.arpa", PTR)), ["FORWARD"]);
    }

    #[test]
    fn updates_replace_and_remove_records() {
        use RecordType::*;
        let (mut z, watch, sub) = zone();
        // db's slice changes: db-0 goes, db-3 comes.
        watch.slice(Event::Apply(db_slice(
            "5",
            json!([
                {"addresses": ["10.42.0.8"], "conditions": {"ready": true}},
                {"addresses": ["10.42.0.10"], "hostname": "db-3"},
            ]),
        )));
        z.update(sub.changes());
        assert_eq!(
            rdata(ask(&z, "db.default.svc.cluster.local", A)),
            ["10.42.0.10", "10.42.0.8"]
        );
        assert_eq!(
            rdata(ask(&z, "db-0.db.default.svc.cluster.local", A)),
            ["NXDOMAIN"]
        );
        assert_eq!(rdata(ask(&z, "7.0.42.10.in-addr.arpa", PTR)), ["NXDOMAIN"]);
        assert_eq!(
            rdata(ask(&z, "10.0.42.10.in-addr.arpa", PTR)),
            ["db-3.db.default.svc.cluster.local."]
        );
        // web goes: its names go, the namespace stays while db is there.
        watch.service(Event::Delete(services().remove(0)));
        z.update(sub.changes());
        for n in [
            "web.default.svc.cluster.local",
            "_http._tcp.web.default.svc.cluster.local",
        ] {
            assert_eq!(rdata(ask(&z, n, A)), ["NXDOMAIN"], "{n}");
        }
        assert_eq!(rdata(ask(&z, "20.0.43.10.in-addr.arpa", PTR)), ["NXDOMAIN"]);
        assert_eq!(rdata(ask(&z, "default.svc.cluster.local", A)), ["NODATA"]);
        // Everything goes but the zone's own record.
        for s in services() {
            watch.service(Event::Delete(s));
        }
        z.update(sub.changes());
        assert_eq!(rdata(ask(&z, "default.svc.cluster.local", A)), ["NXDOMAIN"]);
        assert_eq!(rdata(ask(&z, "dns-version.cluster.local", TXT)), ["1.1.0"]);
        assert_eq!(z.records.len(), 1);
        assert_eq!(
            z.names.len(),
            2,
            "dns-version and the domain: {:?}",
            z.names
        );
    }
}
