//! cgroup facts the runtime and kubelet need, for cgroup v1 (also hybrid) and v2 alike.

use std::fs;
use std::path::PathBuf;

/// Whether the host uses the unified (v2) hierarchy at /sys/fs/cgroup.
pub fn unified() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The directory of `path` (as in an OCI spec) for `controller` (ignored on v2).
pub fn dir(controller: &str, path: &str) -> PathBuf {
    let rel = path.trim_start_matches('/');
    if unified() {
        PathBuf::from("/sys/fs/cgroup").join(rel)
    } else {
        PathBuf::from("/sys/fs/cgroup").join(controller).join(rel)
    }
}

/// Reads `file` of `controller` for the cgroup at `path`.
pub fn read(controller: &str, path: &str, file: &str) -> Option<String> {
    fs::read_to_string(dir(controller, path).join(file)).ok()
}

/// Whether the kernel's OOM killer has killed a process in the cgroup at `path`.
pub fn oom_killed(path: &str) -> bool {
    let (file, key) = if unified() {
        ("memory.events", "oom_kill")
    } else {
        ("memory.oom_control", "oom_kill")
    };
    read("memory", path, file)
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
        })
        .is_some_and(|n| n > 0)
}

/// Removes the (empty) cgroup at `path` from every hierarchy; best effort.
pub fn remove(path: &str) {
    let rel = path.trim_start_matches('/');
    if unified() {
        let _ = fs::remove_dir(PathBuf::from("/sys/fs/cgroup").join(rel));
        return;
    }
    for e in fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = fs::remove_dir(e.path().join(rel));
    }
}
