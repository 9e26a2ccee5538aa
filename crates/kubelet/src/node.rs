//! The Node object: registration with capacity, addresses and node info, and the heartbeats
//! (a Lease renewed every 10 s, status conditions refreshed every 10 s).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use super::NodeConfig;
use super::offline::Offline;

fn mem_total_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

#[allow(
    clippy::unnecessary_cast,
    reason = "the statvfs fields are 32 bits on 32-bit ARM"
)]
fn disk_bytes(path: &std::path::Path) -> u64 {
    nix::sys::statvfs::statvfs(path)
        .map(|s| s.blocks() as u64 * s.fragment_size() as u64)
        .unwrap_or(0)
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

/// NVIDIA GPUs present (`/dev/nvidia0`, `/dev/nvidia1`, ...), advertised as `nvidia.com/gpu`.
fn nvidia_gpus(dev: &std::path::Path) -> usize {
    std::fs::read_dir(dev)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("nvidia"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count()
}

fn capacity(cfg: &NodeConfig) -> BTreeMap<String, Quantity> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut cap = BTreeMap::from([
        ("cpu".to_string(), Quantity(cpus.to_string())),
        (
            "memory".to_string(),
            Quantity(format!("{}Ki", mem_total_bytes() / 1024)),
        ),
        ("pods".to_string(), Quantity(cfg.max_pods.to_string())),
        (
            "ephemeral-storage".to_string(),
            Quantity(format!("{}Ki", disk_bytes(&cfg.data_dir) / 1024)),
        ),
    ]);
    let gpus = nvidia_gpus(std::path::Path::new("/dev"));
    if gpus > 0 {
        cap.insert("nvidia.com/gpu".into(), Quantity(gpus.to_string()));
    }
    cap
}

fn conditions(now: &Time, pressure: &[&str]) -> Vec<NodeCondition> {
    let c = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    };
    let under = |condition: &str| pressure.contains(&condition);
    vec![
        if under("MemoryPressure") {
            c(
                "MemoryPressure",
                "True",
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            )
        } else {
            c(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            )
        },
        if under("DiskPressure") {
            c(
                "DiskPressure",
                "True",
                "KubeletHasDiskPressure",
                "kubelet has disk pressure",
            )
        } else {
            c(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            )
        },
        if under("PIDPressure") {
            c(
                "PIDPressure",
                "True",
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            )
        } else {
            c(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            )
        },
        c(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        ),
    ]
}

/// The node's status as this kubelet sees it now.
fn status(cfg: &NodeConfig, pressure: &[&str]) -> serde_json::Value {
    let now = Time(Timestamp::now());
    let cap = capacity(cfg);
    let (_, arch) = kinglet_image::node_platform();
    json!({
        "capacity": cap,
        "allocatable": cap,
        "conditions": conditions(&now, pressure),
        "addresses": [
            {"type": "InternalIP", "address": cfg.node_ip.to_string()},
            {"type": "Hostname", "address": cfg.node_name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.kubelet_port}},
        "nodeInfo": {
            "machineID": read_trimmed("/etc/machine-id"),
            "systemUUID": read_trimmed("/sys/class/dmi/id/product_uuid"),
            "bootID": read_trimmed("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": read_trimmed("/proc/sys/kernel/osrelease"),
            "osImage": os_image(),
            "containerRuntimeVersion": format!("kinglet://{}", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": kinglet_core::K8S_GIT_VERSION,
            "kubeProxyVersion": kinglet_core::K8S_GIT_VERSION,
            "operatingSystem": "linux",
            "architecture": arch,
        },
    })
}

/// Creates the Node if missing (with labels and taints), then reports its status.
pub async fn register(client: &kube::Client, cfg: &NodeConfig) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let (_, arch) = kinglet_image::node_platform();
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), cfg.node_name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch.to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), arch.to_string()),
    ]);
    labels.extend(cfg.labels.clone());
    if nodes.get_opt(&cfg.node_name).await?.is_none() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": cfg.node_name, "labels": labels},
            "spec": {"taints": cfg.taints},
        }))?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    } else {
        nodes
            .patch(
                &cfg.node_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": labels}})),
            )
            .await?;
    }
    report_status(client, cfg, &[]).await?;
    // The Lease at once, as upstream: the node may wait a while for its pod range.
    renew_lease(client, cfg).await
}

/// The first IPv4 range of a Node's `podCIDRs`.
fn pod_cidr_of(node: &Node) -> Option<ipnet::Ipv4Net> {
    node.spec
        .as_ref()?
        .pod_cidrs
        .iter()
        .flatten()
        .find_map(|c| c.parse::<ipnet::Ipv4Net>().ok())
}

/// The node's pod range as last read from the server, for a start without it.
pub fn cached_pod_cidr(offline: &Offline, node: &str) -> Option<ipnet::Ipv4Net> {
    pod_cidr_of(&offline.cached::<Node>(None, node)?)
}

/// The node's pod range, once the node IPAM controller has given it one (waits until then;
/// pods are not started before the node has a network); the range last read while the
/// server cannot be reached.
pub async fn pod_cidr(client: &kube::Client, offline: &Offline, node: &str) -> ipnet::Ipv4Net {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut waited = 0u32;
    loop {
        let cidr = offline.get(&nodes, node).await.ok().flatten();
        if let Some(c) = cidr.as_ref().and_then(pod_cidr_of) {
            return c;
        }
        waited += 1;
        if waited.is_multiple_of(60) {
            tracing::warn!("node {node} has no podCIDR yet; waiting for the node IPAM controller");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn report_status(
    client: &kube::Client,
    cfg: &NodeConfig,
    pressure: &[&str],
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch_status(
            &cfg.node_name,
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": status(cfg, pressure)})),
        )
        .await?;
    Ok(())
}

async fn renew_lease(client: &kube::Client, cfg: &NodeConfig) -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = MicroTime(Timestamp::now());
    let spec =
        json!({"holderIdentity": cfg.node_name, "leaseDurationSeconds": 40, "renewTime": now});
    if leases.get_opt(&cfg.node_name).await?.is_some() {
        leases
            .patch(
                &cfg.node_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await?;
    } else {
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": cfg.node_name, "namespace": "kube-node-lease"},
            "spec": spec,
        }))?;
        leases.create(&PostParams::default(), &lease).await?;
    }
    Ok(())
}

/// Heartbeats forever: the Lease and the status conditions every 10 s. A node that started
/// from its local copy (`registered` false) registers first. Failures for want of a server are
/// noted once (`Offline`); the next success brings the node back online.
pub async fn heartbeat(k: std::sync::Arc<super::Kubelet>, mut registered: bool) {
    let (client, cfg) = (&k.client, &k.cfg);
    let note = |r: anyhow::Result<()>| match r {
        Ok(()) => k.offline.reached(),
        Err(e) if k.offline.failed(&e) => tracing::debug!("{e:#}"),
        Err(e) => tracing::warn!("{e:#}"),
    };
    loop {
        if registered {
            let lease = renew_lease(client, cfg).await;
            note(lease.map_err(|e| e.context("node lease")));
            let status = report_status(client, cfg, &k.eviction_manager.conditions()).await;
            note(status.map_err(|e| e.context("node status")));
        } else {
            let r = register(client, cfg).await;
            registered = r.is_ok();
            if registered {
                tracing::info!(node = %cfg.node_name, "node registered");
            }
            note(r.map_err(|e| e.context(format!("registering node {}", cfg.node_name))));
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// Parses `key=value:Effect` (`--node-taint`).
pub fn parse_taint(s: &str) -> anyhow::Result<Taint> {
    let (kv, effect) = s
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("--node-taint {s:?}: expected key[=value]:Effect"))?;
    if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        anyhow::bail!(
            "--node-taint {s:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute"
        );
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (kv, None),
    };
    Ok(Taint {
        key: key.into(),
        value,
        effect: effect.into(),
        time_added: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_are_counted_from_device_nodes() {
        let dev = tempfile::tempdir().unwrap();
        for f in ["nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "null"] {
            std::fs::write(dev.path().join(f), "").unwrap();
        }
        assert_eq!(nvidia_gpus(dev.path()), 2);
    }
}
