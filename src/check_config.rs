//! `kinglet check-config`: whether this host has what a kinglet node needs (kernel features,
//! cgroups, iptables, overlayfs, network settings), with the fix for each thing missing, in
//! the spirit of k3s's and moby's `check-config`. It only reads the host.
//!
//! Facts are gathered first ([`Facts::read`]), then judged ([`checks`]) without touching the
//! host, so the judgement can be tested with made-up facts.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Works without it, or cannot tell.
    Warn,
    /// A node cannot run without it.
    Missing,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Check {
    pub section: &'static str,
    pub name: String,
    pub status: Status,
    /// What was found (for `ok`) or how to fix it (otherwise).
    pub note: Option<String>,
}

/// What `check-config` looks at, as read from the host.
#[derive(Default)]
pub struct Facts {
    /// Where the kernel configuration came from, and its text.
    pub kernel_config: Option<(String, String)>,
    /// `/proc/filesystems`.
    pub filesystems: String,
    pub cgroups: Cgroups,
    /// Programs found on `PATH`.
    pub programs: BTreeMap<&'static str, bool>,
    /// `iptables --version`.
    pub iptables_version: Option<String>,
    /// `net.ipv4.ip_forward`.
    pub ip_forward: Option<String>,
    /// `net.bridge.bridge-nf-call-iptables` (absent until `br_netfilter` is loaded).
    pub bridge_nf_call_iptables: Option<String>,
    /// Whether `/proc/self/status` has a `Seccomp:` line (the kernel filters system calls).
    pub seccomp: bool,
}

#[derive(Default)]
pub enum Cgroups {
    /// Unified hierarchy: the root's controllers, and this process's cgroup's (what it may
    /// delegate to the pods it makes).
    V2 { root: String, own: Option<String> },
    /// v1 (or hybrid): `/proc/cgroups` and the controllers mounted under /sys/fs/cgroup.
    V1 {
        proc_cgroups: String,
        mounted: Vec<String>,
    },
    #[default]
    None,
}

const PROGRAMS: [&str; 5] = [
    "iptables",
    "iptables-save",
    "iptables-restore",
    "conntrack",
    "modprobe",
];

impl Facts {
    pub fn read() -> Facts {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let cgroups = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let own = read("/proc/self/cgroup").and_then(|t| {
                let path = t.lines().find_map(|l| l.strip_prefix("0::"))?.to_string();
                read(&format!(
                    "/sys/fs/cgroup/{}/cgroup.controllers",
                    path.trim_start_matches('/')
                ))
            });
            Cgroups::V2 {
                root: read("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default(),
                own,
            }
        } else if let Some(proc_cgroups) = read("/proc/cgroups") {
            let mounted = std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            Cgroups::V1 {
                proc_cgroups,
                mounted,
            }
        } else {
            Cgroups::None
        };
        Facts {
            kernel_config: kernel_config(&release),
            filesystems: read("/proc/filesystems").unwrap_or_default(),
            cgroups,
            programs: PROGRAMS.iter().map(|p| (*p, on_path(p))).collect(),
            iptables_version: std::process::Command::new("iptables")
                .arg("--version")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()),
            ip_forward: read("/proc/sys/net/ipv4/ip_forward").map(|s| s.trim().to_string()),
            bridge_nf_call_iptables: read("/proc/sys/net/bridge/bridge-nf-call-iptables")
                .map(|s| s.trim().to_string()),
            seccomp: read("/proc/self/status").is_some_and(|s| s.contains("\nSeccomp:")),
        }
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `/proc/config.gz`, else `/boot/config-<release>`, else `/lib/modules/<release>/config`.
fn kernel_config(release: &str) -> Option<(String, String)> {
    if let Ok(f) = std::fs::File::open("/proc/config.gz") {
        let mut text = String::new();
        if flate2::read::GzDecoder::new(f)
            .read_to_string(&mut text)
            .is_ok()
        {
            return Some(("/proc/config.gz".into(), text));
        }
    }
    [
        format!("/boot/config-{release}"),
        format!("/lib/modules/{release}/config"),
    ]
    .into_iter()
    .find_map(|p| read(&p).map(|t| (p, t)))
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|d| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::metadata(d.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `CONFIG_X=y|m` lines; `# CONFIG_X is not set` and absent options are neither.
fn parse_kernel_config(text: &str) -> BTreeMap<&str, &str> {
    text.lines()
        .filter_map(|l| l.trim().split_once('='))
        .filter(|(k, _)| k.starts_with("CONFIG_"))
        .map(|(k, v)| (k, v.trim_matches('"')))
        .collect()
}

/// Kernel options: (name, required, what it is for).
const KERNEL: &[(&str, bool, &str)] = &[
    ("NAMESPACES", true, "namespaces"),
    ("NET_NS", true, "pod network namespaces"),
    ("PID_NS", true, "container PID namespaces"),
    ("IPC_NS", true, "pod IPC namespaces"),
    ("UTS_NS", true, "pod host names"),
    ("USER_NS", false, "user namespaces"),
    ("CGROUPS", true, "cgroups"),
    ("MEMCG", true, "memory limits"),
    ("CGROUP_PIDS", true, "PID limits"),
    ("CGROUP_SCHED", true, "CPU shares and quotas"),
    ("CPUSETS", false, "cpusets"),
    ("BLK_CGROUP", false, "block I/O weights"),
    ("SECCOMP", true, "seccomp"),
    (
        "SECCOMP_FILTER",
        true,
        "seccomp filters (RuntimeDefault profiles)",
    ),
    ("OVERLAY_FS", true, "overlayfs container root file systems"),
    ("BRIDGE", true, "the pod bridge cni0"),
    ("VETH", true, "pod network interfaces"),
    (
        "VXLAN",
        false,
        "the overlay between nodes (multi-node clusters)",
    ),
    (
        "BRIDGE_NETFILTER",
        true,
        "br_netfilter: Services for pods on the same node",
    ),
    ("NF_CONNTRACK", true, "connection tracking"),
    ("NF_NAT", true, "Service NAT"),
    ("NETFILTER_XT_NAT", true, "DNAT to Service endpoints"),
    ("NETFILTER_XT_MARK", true, "the MARK target"),
    ("NETFILTER_XT_MATCH_ADDRTYPE", true, "the addrtype match"),
    ("NETFILTER_XT_MATCH_COMMENT", true, "the comment match"),
    ("NETFILTER_XT_MATCH_CONNTRACK", true, "the conntrack match"),
    ("NETFILTER_XT_MATCH_MARK", true, "the mark match"),
    ("NETFILTER_XT_MATCH_MULTIPORT", false, "the multiport match"),
    (
        "NETFILTER_XT_MATCH_RECENT",
        true,
        "session affinity (the recent match)",
    ),
    (
        "NETFILTER_XT_MATCH_STATISTIC",
        true,
        "Service load balancing (the statistic match)",
    ),
    (
        "IP_NF_TARGET_REJECT",
        true,
        "REJECT for Services without endpoints",
    ),
    ("POSIX_MQUEUE", false, "POSIX message queues in pods"),
];

/// Kernel options whichever iptables backend is in use needs.
fn backend_options(version: Option<&str>) -> &'static [&'static str] {
    match version {
        Some(v) if v.contains("legacy") => &["IP_NF_IPTABLES", "IP_NF_FILTER", "IP_NF_NAT"],
        _ => &["NF_TABLES", "NFT_COMPAT", "NF_TABLES_IPV4"],
    }
}

fn kernel_fix(option: &str) -> String {
    format!(
        "a kernel built with CONFIG_{option}=y or =m (on distribution kernels, install the \
         extra modules package, e.g. linux-modules-extra-$(uname -r))"
    )
}

/// Judges `facts`.
pub fn checks(facts: &Facts) -> Vec<Check> {
    let mut out = Vec::new();
    let mut push = |section, name: &str, status, note: Option<String>| {
        out.push(Check {
            section,
            name: name.to_string(),
            status,
            note,
        })
    };

    // Kernel options.
    let config = facts
        .kernel_config
        .as_ref()
        .map(|(_, text)| parse_kernel_config(text));
    match (&facts.kernel_config, &config) {
        (Some((source, _)), Some(config)) => {
            push("kernel", "kernel config", Status::Ok, Some(source.clone()));
            let backend = backend_options(facts.iptables_version.as_deref());
            let options = KERNEL
                .iter()
                .map(|(o, required, what)| (*o, *required, (*what).to_string()))
                .chain(
                    backend
                        .iter()
                        .map(|o| (*o, true, "the iptables backend in use".to_string())),
                );
            for (option, required, what) in options {
                let name = format!("CONFIG_{option}");
                let (status, note) = match config.get(name.as_str()).copied() {
                    Some("y") => (Status::Ok, None),
                    Some("m") => (Status::Ok, Some("module".to_string())),
                    _ if required => (
                        Status::Missing,
                        Some(format!("{what}: {}", kernel_fix(option))),
                    ),
                    _ => (
                        Status::Warn,
                        Some(format!("{what}: {}", kernel_fix(option))),
                    ),
                };
                push("kernel", &name, status, note);
            }
        }
        _ => push(
            "kernel",
            "kernel config",
            Status::Warn,
            Some(
                "not found in /proc/config.gz, /boot or /lib/modules, options not checked: \
                 modprobe configs, or install the kernel's config file"
                    .into(),
            ),
        ),
    }
    let option = |o: &str| {
        config
            .as_ref()
            .and_then(|c| c.get(format!("CONFIG_{o}").as_str()).copied())
    };

    // File systems.
    let has_fs = |fs: &str| {
        facts
            .filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some(fs))
    };
    let (status, note) = if has_fs("overlay") {
        (Status::Ok, None)
    } else if option("OVERLAY_FS") == Some("m") {
        (Status::Ok, Some("module, loaded on first mount".into()))
    } else {
        (
            Status::Missing,
            Some(format!(
                "container root file systems: modprobe overlay, or {}",
                kernel_fix("OVERLAY_FS")
            )),
        )
    };
    push("filesystems", "overlay", status, note);
    let (status, note) = if has_fs("cgroup2") || has_fs("cgroup") {
        (Status::Ok, None)
    } else {
        (Status::Missing, Some(kernel_fix("CGROUPS")))
    };
    push("filesystems", "cgroup", status, note);

    // cgroups.
    let needed: [(&str, &str, bool); 5] = [
        ("cpu", "CPU shares and quotas", true),
        ("memory", "memory limits and eviction", true),
        ("pids", "PID limits", true),
        ("io", "block I/O weights", false),
        ("cpuset", "cpusets", false),
    ];
    match &facts.cgroups {
        Cgroups::V2 { root, own } => {
            push("cgroups", "cgroup version", Status::Ok, Some("v2, unified".into()));
            let listed = |text: &str, c: &str| text.split_whitespace().any(|w| w == c);
            for (c, what, required) in needed {
                let (status, note) = if listed(root, c) {
                    (Status::Ok, None)
                } else {
                    (
                        if required { Status::Missing } else { Status::Warn },
                        Some(format!(
                            "{what}: enable the {c} controller (kernel command line \
                             cgroup_enable={c}, or a kernel with it)"
                        )),
                    )
                };
                push("cgroups", c, status, note);
            }
            // Under systemd the unit must delegate its controllers (Delegate=yes).
            let undelegated: Vec<&str> = match own {
                Some(own) => needed
                    .iter()
                    .filter(|(c, _, req)| *req && listed(root, c) && !listed(own, c))
                    .map(|(c, _, _)| *c)
                    .collect(),
                None => Vec::new(),
            };
            if undelegated.is_empty() {
                push("cgroups", "delegation", Status::Ok, None);
            } else {
                push(
                    "cgroups",
                    "delegation",
                    Status::Warn,
                    Some(format!(
                        "this process's cgroup lacks {}: run kinglet as a systemd unit with \
                         Delegate=yes (as install.sh does), or from the root cgroup",
                        undelegated.join(", ")
                    )),
                );
            }
        }
        Cgroups::V1 {
            proc_cgroups,
            mounted,
        } => {
            push("cgroups", "cgroup version", Status::Ok, Some("v1, legacy or hybrid".into()));
            // `subsys_name hierarchy num_cgroups enabled`.
            let enabled = |c: &str| {
                proc_cgroups.lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.first() == Some(&c) && f.get(3) == Some(&"1")
                })
            };
            let is_mounted =
                |c: &str| mounted.iter().any(|m| m.split(',').any(|part| part == c));
            let v1: [(&str, &str, bool); 7] = [
                ("cpu", "CPU shares and quotas", true),
                ("cpuacct", "CPU accounting", true),
                ("memory", "memory limits and eviction", true),
                ("pids", "PID limits", true),
                ("devices", "device access of containers", true),
                ("blkio", "block I/O weights", false),
                ("cpuset", "cpusets", false),
            ];
            for (c, what, required) in v1 {
                let (status, note) = if enabled(c) && is_mounted(c) {
                    (Status::Ok, None)
                } else {
                    let fix = if enabled(c) {
                        format!("{what}: mount it: mount -t cgroup -o {c} cgroup /sys/fs/cgroup/{c}")
                    } else {
                        format!("{what}: enable the {c} controller (kernel command line cgroup_enable={c})")
                    };
                    (
                        if required { Status::Missing } else { Status::Warn },
                        Some(fix),
                    )
                };
                push("cgroups", c, status, note);
            }
        }
        Cgroups::None => push(
            "cgroups",
            "cgroup version",
            Status::Missing,
            Some("no cgroup file system at /sys/fs/cgroup: mount cgroup2 there (mount -t cgroup2 none /sys/fs/cgroup)".into()),
        ),
    }

    // iptables.
    let install =
        "install iptables (apt-get install iptables, apk add iptables, dnf install iptables-nft)";
    for p in ["iptables", "iptables-save", "iptables-restore"] {
        let found = facts.programs.get(p).copied().unwrap_or(false);
        let (status, note) = match (found, p, &facts.iptables_version) {
            (true, "iptables", Some(v)) => (Status::Ok, Some(v.clone())),
            (true, "iptables", None) => (
                Status::Missing,
                Some(format!("`iptables --version` fails: {install}")),
            ),
            (true, _, _) => (Status::Ok, None),
            (false, _, _) => (Status::Missing, Some(install.to_string())),
        };
        push("iptables", p, status, note);
    }
    let (status, note) = if facts.programs.get("conntrack").copied().unwrap_or(false) {
        (Status::Ok, None)
    } else {
        (
            Status::Warn,
            Some("stale UDP flows of Services are not flushed: install conntrack (apt-get install conntrack, apk add conntrack-tools)".into()),
        )
    };
    push("iptables", "conntrack", status, note);

    // Network settings the node makes itself at start, and what it needs to make them.
    let (status, note) = match facts.ip_forward.as_deref() {
        Some("1") => (Status::Ok, None),
        Some(_) => (
            Status::Ok,
            Some("off now; the node turns it on at start".into()),
        ),
        None => (
            Status::Missing,
            Some("no /proc/sys/net/ipv4/ip_forward: mount /proc with its sysctls".into()),
        ),
    };
    push("network", "net.ipv4.ip_forward", status, note);
    let modprobe = facts.programs.get("modprobe").copied().unwrap_or(false);
    let (status, note) = match (&facts.bridge_nf_call_iptables, option("BRIDGE_NETFILTER")) {
        (Some(_), _) => (Status::Ok, Some("br_netfilter loaded; the node sets it to 1".into())),
        (None, Some("m")) if modprobe => (Status::Ok, Some("the node loads br_netfilter at start".into())),
        (None, Some("m")) => (
            Status::Missing,
            Some("br_netfilter is a module and modprobe is missing: install kmod, or load it at boot (echo br_netfilter > /etc/modules-load.d/kinglet.conf)".into()),
        ),
        (None, Some(_)) => (Status::Ok, None),
        (None, None) => (
            Status::Missing,
            Some(format!("modprobe br_netfilter, or {}", kernel_fix("BRIDGE_NETFILTER"))),
        ),
    };
    push(
        "network",
        "net.bridge.bridge-nf-call-iptables",
        status,
        note,
    );
    let (status, note) = if facts.seccomp {
        (Status::Ok, None)
    } else {
        (Status::Missing, Some(kernel_fix("SECCOMP")))
    };
    push("security", "seccomp", status, note);
    out
}

/// Prints the report; an error (exit status 1) when something required is missing.
pub fn run() -> anyhow::Result<()> {
    let checks = checks(&Facts::read());
    print!("{}", report(&checks));
    let missing = checks
        .iter()
        .filter(|c| c.status == Status::Missing)
        .count();
    anyhow::ensure!(
        missing == 0,
        "{missing} required feature{} missing",
        if missing == 1 { " is" } else { "s are" }
    );
    Ok(())
}

/// `name: ok|missing|warn (note)` lines under a heading per section, then a verdict.
fn report(checks: &[Check]) -> String {
    let mut out = String::new();
    let mut section = "";
    for c in checks {
        if c.section != section {
            section = c.section;
            out.push_str(&format!("{section}:\n"));
        }
        let status = match c.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Missing => "missing",
        };
        let note = match (&c.note, c.status) {
            (None, _) => String::new(),
            (Some(n), Status::Ok) => format!(" ({n})"),
            (Some(n), _) => format!(" (fix: {n})"),
        };
        out.push_str(&format!("  {}: {status}{note}\n", c.name));
    }
    let (missing, warn) = (
        checks
            .iter()
            .filter(|c| c.status == Status::Missing)
            .count(),
        checks.iter().filter(|c| c.status == Status::Warn).count(),
    );
    out.push_str(&format!(
        "verdict: {} ({missing} missing, {warn} warnings)\n",
        if missing == 0 {
            "ok"
        } else {
            "missing required features"
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything a node needs, as on a stock distribution kernel.
    fn good_host() -> Facts {
        let mut config = String::from("# comment\n");
        for (o, _, _) in KERNEL {
            config.push_str(&format!("CONFIG_{o}=y\n"));
        }
        config.push_str("CONFIG_BRIDGE_NETFILTER=m\nCONFIG_NF_TABLES=y\nCONFIG_NFT_COMPAT=m\nCONFIG_NF_TABLES_IPV4=y\n");
        Facts {
            kernel_config: Some(("/proc/config.gz".into(), config)),
            filesystems: "nodev\tsysfs\nnodev\tcgroup2\n\text4\nnodev\toverlay\n".into(),
            cgroups: Cgroups::V2 {
                root: "cpuset cpu io memory hugetlb pids rdma misc\n".into(),
                own: Some("cpuset cpu io memory pids\n".into()),
            },
            programs: PROGRAMS.iter().map(|p| (*p, true)).collect(),
            iptables_version: Some("iptables v1.8.9 (nf_tables)".into()),
            ip_forward: Some("0".into()),
            bridge_nf_call_iptables: None,
            seccomp: true,
        }
    }

    fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name} not checked"))
    }

    #[test]
    fn a_complete_host_passes() {
        let checks = checks(&good_host());
        let bad: Vec<_> = checks.iter().filter(|c| c.status != Status::Ok).collect();
        assert!(bad.is_empty(), "{bad:?}");
        let text = report(&checks);
        for section in [
            "kernel:",
            "filesystems:",
            "cgroups:",
            "iptables:",
            "network:",
            "security:",
        ] {
            assert!(text.contains(section), "{text}");
        }
        assert!(
            text.contains("  CONFIG_BRIDGE_NETFILTER: ok (module)\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "  net.bridge.bridge-nf-call-iptables: ok (the node loads br_netfilter at start)\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("verdict: ok (0 missing, 0 warnings)\n"),
            "{text}"
        );
    }

    #[test]
    fn missing_features_are_reported_with_fixes() {
        let mut facts = good_host();
        let (_, config) = facts.kernel_config.as_mut().unwrap();
        *config = config
            .replace("CONFIG_OVERLAY_FS=y\n", "# CONFIG_OVERLAY_FS is not set\n")
            .replace("CONFIG_VXLAN=y\n", "")
            .replace("CONFIG_NETFILTER_XT_MATCH_STATISTIC=y\n", "");
        facts.filesystems = "nodev\tsysfs\nnodev\tcgroup2\n\text4\n".into();
        facts.cgroups = Cgroups::V2 {
            root: "cpu io pids".into(),
            own: Some("io".into()),
        };
        facts.programs.insert("iptables-restore", false);
        facts.programs.insert("conntrack", false);
        let checks = checks(&facts);
        let c = find(&checks, "CONFIG_OVERLAY_FS");
        assert_eq!(c.status, Status::Missing);
        assert!(c.note.as_ref().unwrap().contains("CONFIG_OVERLAY_FS=y"));
        assert_eq!(find(&checks, "overlay").status, Status::Missing);
        assert!(
            find(&checks, "overlay")
                .note
                .as_ref()
                .unwrap()
                .contains("modprobe overlay")
        );
        // Multi-node only: a warning.
        assert_eq!(find(&checks, "CONFIG_VXLAN").status, Status::Warn);
        assert_eq!(
            find(&checks, "CONFIG_NETFILTER_XT_MATCH_STATISTIC").status,
            Status::Missing
        );
        assert_eq!(find(&checks, "memory").status, Status::Missing);
        assert!(
            find(&checks, "memory")
                .note
                .as_ref()
                .unwrap()
                .contains("cgroup_enable=memory")
        );
        assert_eq!(find(&checks, "cpuset").status, Status::Warn);
        let d = find(&checks, "delegation");
        assert_eq!(d.status, Status::Warn);
        assert!(
            d.note.as_ref().unwrap().contains("cpu, pids")
                && d.note.as_ref().unwrap().contains("Delegate=yes")
        );
        assert_eq!(find(&checks, "iptables-restore").status, Status::Missing);
        assert_eq!(find(&checks, "conntrack").status, Status::Warn);
        let text = report(&checks);
        assert!(
            text.contains("  iptables-restore: missing (fix: install iptables"),
            "{text}"
        );
        assert!(
            text.contains("verdict: missing required features (5 missing, 4 warnings)"),
            "{text}"
        );
    }

    #[test]
    fn legacy_iptables_needs_the_legacy_kernel_options() {
        let mut facts = good_host();
        facts.iptables_version = Some("iptables v1.8.7 (legacy)".into());
        let checks = checks(&facts);
        for o in [
            "CONFIG_IP_NF_IPTABLES",
            "CONFIG_IP_NF_FILTER",
            "CONFIG_IP_NF_NAT",
        ] {
            assert_eq!(find(&checks, o).status, Status::Missing, "{o}");
        }
        assert!(checks.iter().all(|c| c.name != "CONFIG_NF_TABLES"));
    }

    #[test]
    fn without_a_kernel_config_runtime_evidence_still_counts() {
        let mut facts = good_host();
        facts.kernel_config = None;
        facts.bridge_nf_call_iptables = Some("1".into());
        facts.cgroups = Cgroups::V1 {
            proc_cgroups: "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t3\t1\t1\ncpu\t2\t1\t1\ncpuacct\t4\t1\t1\nblkio\t8\t1\t1\nmemory\t5\t1\t1\ndevices\t6\t1\t1\nfreezer\t7\t1\t1\npids\t9\t1\t0\n".into(),
            mounted: ["cpu", "cpuacct", "cpuset", "memory", "devices", "blkio", "pids"].map(String::from).to_vec(),
        };
        let checks = checks(&facts);
        assert_eq!(find(&checks, "kernel config").status, Status::Warn);
        assert_eq!(find(&checks, "overlay").status, Status::Ok);
        assert_eq!(
            find(&checks, "net.bridge.bridge-nf-call-iptables").status,
            Status::Ok
        );
        assert_eq!(find(&checks, "memory").status, Status::Ok);
        let pids = find(&checks, "pids");
        assert_eq!(pids.status, Status::Missing);
        assert!(pids.note.as_ref().unwrap().contains("cgroup_enable=pids"));
    }

    #[test]
    fn kernel_config_lines() {
        let c =
            parse_kernel_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m\nCONFIG_S=\"x\"\n");
        assert_eq!(c.get("CONFIG_A"), Some(&"y"));
        assert_eq!(c.get("CONFIG_B"), None);
        assert_eq!(c.get("CONFIG_C"), Some(&"m"));
        assert_eq!(c.get("CONFIG_S"), Some(&"x"));
    }
}
