//! A pod's `/etc/resolv.conf` and `/etc/hosts`, per `dnsPolicy`, `dnsConfig`, `hostAliases`
//! and `hostNetwork`, as the upstream kubelet writes them.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

/// Upstream's limits (validation allows no more).
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

/// The parts of a resolv.conf the kubelet reads from the node's.
#[derive(Default, Debug, PartialEq)]
struct Resolv {
    nameservers: Vec<String>,
    searches: Vec<String>,
    options: Vec<String>,
}

fn parse(text: &str) -> Resolv {
    let mut r = Resolv::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => r.nameservers.extend(words.next().map(String::from)),
            // The last search (or domain) line wins, as in the resolver.
            Some("search") | Some("domain") => r.searches = words.map(String::from).collect(),
            Some("options") => r.options.extend(words.map(String::from)),
            _ => {}
        }
    }
    r
}

fn push_unique(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for i in items {
        if !list.contains(&i) {
            list.push(i);
        }
    }
}

/// The pod's resolv.conf. `node_resolv` is the text of the node's.
pub fn resolv_conf(pod: &Pod, cluster_dns: &str, domain: &str, node_resolv: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network == Some(true);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let node = parse(node_resolv);
    let mut r = match policy {
        "None" => Resolv::default(),
        "ClusterFirst" if !host_network => cluster(pod, cluster_dns, domain, node),
        "ClusterFirstWithHostNet" => cluster(pod, cluster_dns, domain, node),
        _ => node, // Default, and ClusterFirst for host-network pods
    };
    if let Some(cfg) = &spec.dns_config {
        push_unique(
            &mut r.nameservers,
            cfg.nameservers.clone().unwrap_or_default(),
        );
        push_unique(&mut r.searches, cfg.searches.clone().unwrap_or_default());
        for o in cfg.options.iter().flatten() {
            let name = o.name.clone().unwrap_or_default();
            r.options
                .retain(|x| x.split(':').next() != Some(name.as_str()));
            r.options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
    }
    r.nameservers.truncate(MAX_NAMESERVERS);
    r.searches.truncate(MAX_SEARCHES);
    let mut out = String::new();
    if !r.searches.is_empty() {
        out.push_str(&format!("search {}\n", r.searches.join(" ")));
    }
    for n in &r.nameservers {
        out.push_str(&format!("nameserver {n}\n"));
    }
    if !r.options.is_empty() {
        out.push_str(&format!("options {}\n", r.options.join(" ")));
    }
    out
}

fn cluster(pod: &Pod, cluster_dns: &str, domain: &str, node: Resolv) -> Resolv {
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    let mut searches = vec![
        format!("{ns}.svc.{domain}"),
        format!("svc.{domain}"),
        domain.to_string(),
    ];
    push_unique(&mut searches, node.searches);
    Resolv {
        nameservers: vec![cluster_dns.to_string()],
        searches,
        options: vec!["ndots:5".into()],
    }
}

/// The pod's /etc/hosts (host-network pods get the node's, `node_hosts`).
pub fn hosts(pod: &Pod, pod_ip: &str, hostname: &str, domain: &str, node_hosts: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut out = if spec.host_network == Some(true) {
        node_hosts.to_string()
    } else {
        let name = match spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => format!(
                "{hostname}.{sub}.{}.svc.{domain}\t{hostname}",
                pod.namespace().unwrap_or_default()
            ),
            None => hostname.to_string(),
        };
        format!(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n\
             {pod_ip}\t{name}\n"
        )
    };
    let aliases = spec.host_aliases.unwrap_or_default();
    if !aliases.is_empty() {
        if !out.ends_with('\n') && !out.is_empty() {
            out.push('\n');
        }
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            out.push_str(&format!(
                "{}\t{}\n",
                a.ip,
                a.hostnames.unwrap_or_default().join("\t")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NODE: &str =
        "# generated\nnameserver 192.0.2.53\nsearch example.internal\noptions edns0\n";

    fn pod(spec: serde_json::Value) -> Pod {
        let mut s = json!({"containers": [{"name": "c", "image": "busybox"}]});
        for (k, v) in spec.as_object().unwrap() {
            s[k] = v.clone();
        }
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": s}))
            .unwrap()
    }

    #[test]
    fn cluster_first_uses_the_cluster_dns_and_search_path() {
        let r = resolv_conf(&pod(json!({})), "10.43.0.10", "cluster.local", NODE);
        assert_eq!(
            r,
            "search shop.svc.cluster.local svc.cluster.local cluster.local example.internal\nnameserver 10.43.0.10\noptions ndots:5\n"
        );
        // Host-network pods fall back to the node's unless they ask for the cluster's.
        let host = resolv_conf(
            &pod(json!({"hostNetwork": true})),
            "10.43.0.10",
            "cluster.local",
            NODE,
        );
        assert_eq!(
            host,
            "search example.internal\nnameserver 192.0.2.53\noptions edns0\n"
        );
        let with = resolv_conf(
            &pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
            "10.43.0.10",
            "cluster.local",
            NODE,
        );
        assert!(with.contains("nameserver 10.43.0.10\n"), "{with}");
    }

    #[test]
    fn none_takes_only_dns_config_and_options_merge() {
        let p = pod(
            json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.2.3.4"], "searches": ["a.example"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}),
        );
        assert_eq!(
            resolv_conf(&p, "10.43.0.10", "cluster.local", NODE),
            "search a.example\nnameserver 1.2.3.4\noptions ndots:2 edns0\n"
        );
        let p = pod(json!({"dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}}));
        assert!(
            resolv_conf(&p, "10.43.0.10", "cluster.local", NODE).ends_with("options ndots:1\n")
        );
        let p = pod(json!({"dnsPolicy": "Default"}));
        assert_eq!(
            resolv_conf(&p, "10.43.0.10", "cluster.local", NODE),
            "search example.internal\nnameserver 192.0.2.53\noptions edns0\n"
        );
    }

    #[test]
    fn hosts_name_the_pod_and_its_aliases() {
        let p = pod(
            json!({"subdomain": "db", "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]}),
        );
        let h = hosts(&p, "10.42.0.7", "db-0", "cluster.local", "");
        assert!(
            h.contains("10.42.0.7\tdb-0.db.shop.svc.cluster.local\tdb-0\n"),
            "{h}"
        );
        assert!(
            h.ends_with("# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n"),
            "{h}"
        );
        let h = hosts(
            &pod(json!({"hostNetwork": true})),
            "192.0.2.1",
            "node",
            "cluster.local",
            "127.0.0.1 localhost\n",
        );
        assert_eq!(h, "127.0.0.1 localhost\n");
    }
}
