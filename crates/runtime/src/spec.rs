//! The OCI runtime spec of a container, from what the kubelet decided: process, user, mounts,
//! the pod sandbox's namespaces, cgroup and resources, and the security defaults of containerd
//! (capabilities, masked and read-only /proc paths) that Kubernetes users expect.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::sandbox;

/// containerd's default capability set for unprivileged containers.
const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A mount of a volume (or a file the kubelet provides) into the container.
#[derive(Clone, Debug)]
pub struct Mount {
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ContainerConfig {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub hostname: String,
    pub sandbox_dir: PathBuf,
    /// `hostNetwork: true`: the container stays in the node's network namespace.
    pub host_network: bool,
    pub mounts: Vec<Mount>,
    pub cgroup_path: String,
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub memory_limit: Option<i64>,
    pub oom_score_adj: i32,
    pub privileged: bool,
    pub add_caps: Vec<String>,
    pub drop_caps: Vec<String>,
    pub readonly_rootfs: bool,
    pub no_new_privileges: bool,
    /// The OCI `linux.seccomp` section, if any (see `seccomp`).
    pub seccomp: Option<Value>,
    /// Run on a terminal (the supervisor holds its controlling end).
    pub tty: bool,
}

fn cap_name(c: &str) -> String {
    let c = c.to_ascii_uppercase();
    if c.starts_with("CAP_") {
        c
    } else {
        format!("CAP_{c}")
    }
}

pub fn build(c: &ContainerConfig) -> anyhow::Result<oci_spec::runtime::Spec> {
    let caps: Vec<String> = if c.privileged {
        all_caps()
    } else {
        let drop: Vec<String> = c.drop_caps.iter().map(|d| cap_name(d)).collect();
        let drop_all = drop.iter().any(|d| d == "CAP_ALL");
        let mut caps: Vec<String> = DEFAULT_CAPS
            .iter()
            .map(|s| s.to_string())
            .filter(|cap| !drop_all && !drop.contains(cap))
            .collect();
        for a in &c.add_caps {
            let a = cap_name(a);
            if a == "CAP_ALL" {
                caps = all_caps();
            } else if !caps.contains(&a) {
                caps.push(a);
            }
        }
        caps
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if c.privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if c.privileged { "rw" } else { "ro" }]}),
    ];
    for m in &c.mounts {
        let mut options = vec!["rbind", "rprivate"];
        if m.readonly {
            options.push("ro");
        }
        mounts.push(json!({"destination": m.destination, "type": "bind", "source": m.source, "options": options}));
    }
    let mut namespaces: Vec<Value> = sandbox::NAMESPACES
        .iter()
        .filter(|ns| !(c.host_network && **ns == "net"))
        .map(|ns| {
            let kind = match *ns {
                "net" => "network",
                other => other,
            };
            json!({"type": kind, "path": sandbox::pin(&c.sandbox_dir, ns)})
        })
        .collect();
    for kind in ["pid", "mount", "cgroup"] {
        namespaces.push(json!({"type": kind}));
    }
    let mut resources = json!({"devices": [{"allow": c.privileged, "access": "rwm"}]});
    if let Some(shares) = c.cpu_shares {
        resources["cpu"]["shares"] = json!(shares);
    }
    if let Some(quota) = c.cpu_quota {
        resources["cpu"]["quota"] = json!(quota);
        resources["cpu"]["period"] = json!(100_000);
    }
    if let Some(limit) = c.memory_limit {
        resources["memory"]["limit"] = json!(limit);
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": c.tty,
            "user": {"uid": c.uid, "gid": c.gid, "additionalGids": c.additional_gids},
            "args": c.args,
            "env": c.env,
            "cwd": if c.cwd.is_empty() { "/" } else { &c.cwd },
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile(), "soft": nofile()}],
            "oomScoreAdj": c.oom_score_adj,
        },
        "root": {"path": "../rootfs", "readonly": c.readonly_rootfs},
        "hostname": c.hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": c.cgroup_path,
            "resources": resources,
            "maskedPaths": if c.privileged { vec![] } else { MASKED_PATHS.to_vec() },
            "readonlyPaths": if c.privileged { vec![] } else { READONLY_PATHS.to_vec() },
        },
    });
    // Only when set: libcontainer loads seccomp before dropping capabilities only if the
    // field is absent (with `false` it would try after, and fail without CAP_SYS_ADMIN).
    if c.no_new_privileges {
        spec["process"]["noNewPrivileges"] = json!(true);
    }
    if let Some(profile) = c.seccomp.as_ref().filter(|_| !c.privileged) {
        spec["linux"]["seccomp"] = profile.clone();
    }
    Ok(serde_json::from_value(spec)?)
}

/// Open files allowed in containers: containerd's 1048576, or the most this process may raise
/// its own limit to (hosts without CAP_SYS_RESOURCE, or a lower `fs.nr_open`).
fn nofile() -> u64 {
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(1_048_576);
    hard.min(1_048_576)
}

fn all_caps() -> Vec<String> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    let mut all: Vec<String> = caps::all()
        .into_iter()
        .filter(|c| u32::from(c.index()) <= last)
        .map(|c| c.to_string())
        .collect();
    all.sort();
    all
}
