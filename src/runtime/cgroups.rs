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

/// Removes the cgroup at `path` from every hierarchy, killing what still runs in it (the
/// processes a container's init left behind die with its PID namespace, but not at once);
/// best effort.
pub fn remove(path: &str) {
    let rel = path.trim_start_matches('/');
    let dirs: Vec<PathBuf> = if unified() {
        vec![PathBuf::from("/sys/fs/cgroup").join(rel)]
    } else {
        fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join(rel))
            .collect()
    };
    for dir in dirs {
        remove_dir(&dir);
    }
}

fn remove_dir(dir: &std::path::Path) {
    let mut delay = std::time::Duration::from_millis(5);
    for _ in 0..6 {
        match fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            _ => return,
        }
        for pid in fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(delay);
        delay *= 2;
    }
    tracing::warn!("cgroup {} still busy; left in place", dir.display());
}
