//! Seccomp profiles for containers (`securityContext.seccompProfile`), in the OCI runtime spec's
//! form; libcontainer (with libseccomp) loads them. `RuntimeDefault` denies what containerd's
//! default profile keeps from unprivileged containers: kernel modules, keyrings, clocks, mounts
//! and namespaces, tracing other processes, BPF, perf, io_uring, reboot and swap, and the old
//! or NUMA calls it leaves out. kinglet writes it as a deny list (everything else allowed), so a new
//! kernel's new system calls work in containers; containerd lists what is allowed instead.

use std::path::Path;

use serde_json::{Value, json};

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// System calls RuntimeDefault refuses with EPERM.
const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// `clone` flags that create namespaces, each refused on its own.
const NAMESPACE_FLAGS: [u64; 7] = [
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

fn architectures() -> Vec<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "aarch64" => vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "arm" => vec!["SCMP_ARCH_ARM"],
        "riscv64" => vec!["SCMP_ARCH_RISCV64"],
        _ => vec![],
    }
}

/// The OCI `linux.seccomp` section of RuntimeDefault.
pub fn runtime_default() -> Value {
    let mut rules = vec![json!({
        "names": DENIED,
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": EPERM,
    })];
    // clone's flags are its first argument on every architecture listed above.
    for flag in NAMESPACE_FLAGS {
        rules.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": EPERM,
            "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
    }
    // clone3 passes its flags in memory seccomp cannot read: ENOSYS makes libc fall back to
    // clone, which the rules above check.
    rules.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}));
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": architectures(),
        "syscalls": rules,
    })
}

/// The profile a container runs with: `type` and `localhostProfile` of its seccompProfile
/// (the container's, else the pod's). Localhost profiles are read below `profile_root`.
pub fn profile(
    kind: Option<&str>,
    localhost: Option<&str>,
    profile_root: &Path,
) -> anyhow::Result<Option<Value>> {
    match kind {
        None | Some("Unconfined") => Ok(None),
        Some("RuntimeDefault") => Ok(Some(runtime_default())),
        Some("Localhost") => {
            let name = localhost.filter(|n| !n.is_empty()).ok_or_else(|| {
                anyhow::anyhow!("seccomp profile type Localhost needs localhostProfile")
            })?;
            anyhow::ensure!(
                !Path::new(name).is_absolute() && !name.split('/').any(|p| p == ".."),
                "localhostProfile {name:?} must be a relative path below the profile directory"
            );
            let path = profile_root.join(name);
            let text = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("seccomp profile {}: {e}", path.display()))?;
            let v: Value = serde_json::from_slice(&text)
                .map_err(|e| anyhow::anyhow!("seccomp profile {}: {e}", path.display()))?;
            anyhow::ensure!(
                v.get("defaultAction").is_some(),
                "seccomp profile {}: no defaultAction",
                path.display()
            );
            Ok(Some(v))
        }
        Some(other) => anyhow::bail!("unknown seccomp profile type {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_valid_oci_sections() {
        let spec: oci_spec::runtime::LinuxSeccomp =
            serde_json::from_value(runtime_default()).unwrap();
        assert!(!spec.syscalls().as_ref().unwrap().is_empty());
        let dir = tempfile::tempdir().unwrap();
        assert!(profile(None, None, dir.path()).unwrap().is_none());
        assert!(
            profile(Some("Unconfined"), None, dir.path())
                .unwrap()
                .is_none()
        );
        assert!(profile(Some("Localhost"), Some("../etc/passwd"), dir.path()).is_err());
        assert!(profile(Some("Localhost"), Some("missing.json"), dir.path()).is_err());
        std::fs::write(
            dir.path().join("p.json"),
            r#"{"defaultAction":"SCMP_ACT_LOG"}"#,
        )
        .unwrap();
        assert_eq!(
            profile(Some("Localhost"), Some("p.json"), dir.path())
                .unwrap()
                .unwrap()["defaultAction"],
            "SCMP_ACT_LOG"
        );
        assert!(profile(Some("Bogus"), None, dir.path()).is_err());
    }
}
