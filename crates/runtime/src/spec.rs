//! The OCI runtime spec of a container, from what the kubelet decided: process, user, mounts,
//! the pod sandbox's namespaces, cgroup and resources, and the security defaults of containerd
//! (capabilities, masked and read-only /proc paths) that Kubernetes users expect. Privileged
//! containers get what containerd gives them: every capability the node holds, the node's
//! devices, writable /sys and cgroups, no masked or read-only paths and no seccomp.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

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
        node_caps()
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
                caps = node_caps();
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
    let devices = if c.privileged {
        host_devices(Path::new("/dev"))
    } else {
        Vec::new()
    };
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
            "devices": devices,
            "maskedPaths": if c.privileged { vec![] } else { MASKED_PATHS.to_vec() },
            "readonlyPaths": if c.privileged { vec![] } else { readonly_paths() },
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

/// The read-only paths of unprivileged containers: containerd's, and on cgroup v1 the cgroup
/// hierarchies, which libcontainer mounts read-write whatever the mount says (root in the
/// container could otherwise raise its own limits). The tmpfs holding them comes first.
fn readonly_paths() -> Vec<String> {
    // The node's hierarchies do not change while it runs: read once.
    static CGROUP_V1: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let v1 = CGROUP_V1.get_or_init(|| {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        mounts
            .lines()
            .filter_map(|l| {
                let mut fields = l.split_whitespace().skip(1);
                let (point, kind) = (fields.next()?, fields.next()?);
                (kind == "cgroup" && point.starts_with("/sys/fs/cgroup/"))
                    .then(|| point.to_string())
            })
            .collect()
    });
    let mut paths: Vec<String> = READONLY_PATHS.iter().map(|p| p.to_string()).collect();
    if !v1.is_empty() {
        paths.push("/sys/fs/cgroup".into());
        paths.extend(v1.iter().cloned());
    }
    paths
}

/// Open files allowed in containers: containerd's 1048576, or the most this process may raise
/// its own limit to (hosts without CAP_SYS_RESOURCE, or a lower `fs.nr_open`).
#[allow(clippy::unnecessary_cast, reason = "rlim_t is 32 bits on 32-bit ARM")]
fn nofile() -> u64 {
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard as u64)
        .unwrap_or(1_048_576);
    hard.min(1_048_576)
}

/// Every capability this process may hand on (its permitted set), as containerd gives privileged
/// containers and `add: [ALL]`: a node without some capability (CAP_SYS_RESOURCE in some
/// containers or sandboxes) cannot grant it, and asking the kernel for it fails the start.
fn node_caps() -> Vec<String> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    let held = caps::read(None, caps::CapSet::Permitted).unwrap_or_else(|_| caps::all());
    let mut all: Vec<String> = held
        .into_iter()
        .filter(|c| u32::from(c.index()) <= last)
        .map(|c| c.to_string())
        .collect();
    all.sort();
    all
}

/// The device nodes below `dir` (the node's /dev), as OCI `linux.devices` entries, skipping
/// what containerd skips: the per-container directories (pts, shm, mqueue, fd), the console,
/// FIFOs and anything that is not a device.
fn host_devices(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let path = e.path();
            // Not followed: a link is not a device (nor a way out of /dev).
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let ft = meta.file_type();
            if ft.is_dir() {
                if !matches!(
                    name.as_ref(),
                    "pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev"
                ) {
                    todo.push(path);
                }
                continue;
            }
            let kind = if ft.is_char_device() {
                "c"
            } else if ft.is_block_device() {
                "b"
            } else {
                continue;
            };
            if path == dir.join("console") {
                continue;
            }
            out.push(json!({
                "path": Path::new("/dev").join(path.strip_prefix(dir).unwrap_or(&path)),
                "type": kind,
                "major": nix::sys::stat::major(meta.rdev()),
                "minor": nix::sys::stat::minor(meta.rdev()),
                "fileMode": meta.mode() & 0o7777,
                "uid": meta.uid(),
                "gid": meta.gid(),
            }));
        }
    }
    out.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(privileged: bool) -> ContainerConfig {
        ContainerConfig {
            args: vec!["sh".into()],
            privileged,
            seccomp: Some(super::super::seccomp::runtime_default()),
            ..Default::default()
        }
    }

    fn caps_of(spec: &oci_spec::runtime::Spec) -> Vec<String> {
        let v = serde_json::to_value(spec).unwrap();
        let mut caps: Vec<String> =
            serde_json::from_value(v["process"]["capabilities"]["effective"].clone()).unwrap();
        caps.sort();
        caps
    }

    #[test]
    fn privileged_containers_get_the_nodes_capabilities_and_devices_and_no_confinement() {
        // Exactly what this process holds (some sandboxes lack a capability or two).
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let held = status
            .lines()
            .find_map(|l| l.strip_prefix("CapPrm:"))
            .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
            .unwrap();
        let spec = build(&config(true)).unwrap();
        let granted = caps_of(&spec).iter().fold(0u64, |mask, name| {
            let cap: caps::Capability = name.parse().unwrap();
            mask | 1 << cap.index()
        });
        assert_eq!(format!("{granted:x}"), format!("{held:x}"));
        let v = serde_json::to_value(&spec).unwrap();
        assert!(v["linux"]["seccomp"].is_null());
        assert_eq!(v["linux"]["maskedPaths"], json!([]));
        assert_eq!(v["linux"]["readonlyPaths"], json!([]));
        assert_eq!(v["linux"]["resources"]["devices"][0]["allow"], true);
        let sys = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert!(sys["options"].as_array().unwrap().contains(&json!("rw")));
        let devices = v["linux"]["devices"].as_array().unwrap();
        let null = devices.iter().find(|d| d["path"] == "/dev/null").unwrap();
        assert_eq!(
            (null["type"].as_str(), null["major"].as_i64()),
            (Some("c"), Some(1))
        );
        assert!(
            devices
                .iter()
                .all(|d| !d["path"].as_str().unwrap().starts_with("/dev/pts/"))
        );

        let plain = build(&config(false)).unwrap();
        let v = serde_json::to_value(&plain).unwrap();
        assert_eq!(caps_of(&plain).len(), DEFAULT_CAPS.len());
        assert!(!v["linux"]["seccomp"].is_null());
        assert!(
            v["linux"]["devices"]
                .as_array()
                .is_none_or(|d| d.is_empty())
        );
        assert_eq!(v["linux"]["resources"]["devices"][0]["allow"], false);
        assert_eq!(
            v["linux"]["maskedPaths"].as_array().unwrap().len(),
            MASKED_PATHS.len()
        );
        let readonly = v["linux"]["readonlyPaths"].as_array().unwrap();
        assert!(readonly.contains(&json!("/proc/sys")));
        let v1 = std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some("cgroup"));
        assert_eq!(
            readonly.contains(&json!("/sys/fs/cgroup")),
            v1,
            "{readonly:?}"
        );
    }

    #[test]
    fn devices_are_listed_without_links_fifos_or_per_container_directories() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("pts")).unwrap();
        std::fs::create_dir_all(d.join("net")).unwrap();
        let mknod = |p: &Path, kind, major, minor| {
            let mode = nix::sys::stat::Mode::empty();
            nix::sys::stat::mknod(p, kind, mode, nix::sys::stat::makedev(major, minor)).unwrap();
            // Not through the umask.
            std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o620))
                .unwrap();
        };
        use nix::sys::stat::SFlag;
        mknod(&d.join("net/tun"), SFlag::S_IFCHR, 10, 200);
        mknod(&d.join("loop0"), SFlag::S_IFBLK, 7, 0);
        mknod(&d.join("pts/0"), SFlag::S_IFCHR, 136, 0);
        mknod(&d.join("console"), SFlag::S_IFCHR, 5, 1);
        nix::unistd::mkfifo(&d.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::os::unix::fs::symlink("/dev/null", d.join("link")).unwrap();
        std::fs::write(d.join("file"), "").unwrap();
        let devices = host_devices(d);
        let paths: Vec<&str> = devices
            .iter()
            .map(|d| d["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["/dev/loop0", "/dev/net/tun"]);
        assert_eq!(devices[0]["type"], "b");
        assert_eq!(devices[1]["type"], "c");
        assert_eq!(
            (devices[1]["major"].as_u64(), devices[1]["minor"].as_u64()),
            (Some(10), Some(200))
        );
        assert_eq!(devices[1]["fileMode"], 0o620);
    }
}
