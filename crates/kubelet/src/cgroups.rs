//! Pod and container cgroups (cgroupfs layout `kubepods[/burstable|/besteffort]/pod<uid>`),
//! resources from requests and limits, and the QoS class's OOM score.

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::ResourceExt;

use super::Kubelet;
use kinglet_core::resources::parse_milli;

fn cpu_millis(q: &str) -> Option<i128> {
    parse_milli(q)
}

fn memory_bytes(q: &str) -> Option<i128> {
    parse_milli(q).map(|m| m / 1000)
}

pub struct Resources {
    pub cpu_shares: u64,
    pub cpu_quota: Option<i64>,
    pub memory_limit: Option<i64>,
}

fn quantity(c: &Container, kind: &str, name: &str) -> Option<String> {
    let r = c.resources.as_ref()?;
    let map = if kind == "limits" {
        r.limits.as_ref()?
    } else {
        r.requests.as_ref()?
    };
    map.get(name).map(|q| q.0.clone())
}

/// cpu.shares, CFS quota and memory limit of a container, as the kubelet derives them.
pub fn resources(c: &Container, _capacity_memory: &u64) -> Resources {
    let cpu_request = quantity(c, "requests", "cpu")
        .or_else(|| quantity(c, "limits", "cpu"))
        .and_then(|q| cpu_millis(&q));
    let cpu_limit = quantity(c, "limits", "cpu").and_then(|q| cpu_millis(&q));
    let memory_limit = quantity(c, "limits", "memory").and_then(|q| memory_bytes(&q));
    Resources {
        cpu_shares: cpu_request
            .map(|m| (m as u64 * 1024 / 1000).max(2))
            .unwrap_or(2),
        cpu_quota: cpu_limit.map(|m| (m as i64 * 100_000 / 1000).max(1000)),
        memory_limit: memory_limit.map(|b| b as i64),
    }
}

/// Guaranteed, Burstable or BestEffort.
pub fn qos_class(pod: &Pod) -> &'static str {
    let spec = pod.spec.clone().unwrap_or_default();
    let all: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let any_set = all.iter().any(|c| {
        ["cpu", "memory"]
            .iter()
            .any(|r| quantity(c, "requests", r).is_some() || quantity(c, "limits", r).is_some())
    });
    if !any_set {
        return "BestEffort";
    }
    let guaranteed = all.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = quantity(c, "limits", r);
            let request = quantity(c, "requests", r).or_else(|| limit.clone());
            limit.is_some() && request == limit
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

pub fn oom_score_adj(pod: &Pod, c: &Container, capacity_memory: u64) -> i32 {
    match qos_class(pod) {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            let request = quantity(c, "requests", "memory")
                .and_then(|q| memory_bytes(&q))
                .unwrap_or(0) as u64;
            let adj = 1000 - (1000 * request / capacity_memory.max(1)) as i64;
            adj.clamp(3, 999) as i32
        }
    }
}

impl Kubelet {
    /// The pod's cgroup path below every controller.
    pub fn pod_cgroup(&self, pod: &Pod) -> String {
        let qos = match qos_class(pod) {
            "Guaranteed" => String::new(),
            other => format!("/{}", other.to_ascii_lowercase()),
        };
        format!(
            "{}/kubepods{qos}/pod{}",
            self.cfg.cgroup_root.trim_end_matches('/'),
            pod.uid().unwrap_or_default()
        )
    }
}
