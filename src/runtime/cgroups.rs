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

/// Starts the grace period that libcontainer's cgroup join would otherwise wait for, in a
/// child process, so that it runs while the supervisor prepares the container.
///
/// The first write of a pid to any `cgroup.procs` takes the kernel's global threadgroup lock
/// for writing, which waits for an RCU grace period (11-22 ms measured on an idle 2-vCPU host,
/// a few ms on a busy one); writes within a grace period of the previous one do not wait.
/// The child moves itself into the cgroup it is already in (a no-op move that takes the same
/// lock) and exits; the supervisor reaps it with the returned pid. Best effort: `None` when
/// the cgroup cannot be found or the fork fails.
pub fn start_attach_grace_period() -> Option<nix::unistd::Pid> {
    let procs = own_cgroup_procs()?;
    let path = std::ffi::CString::new(procs.into_os_string().into_encoded_bytes()).ok()?;
    // SAFETY: the child only makes async-signal-safe system calls (no allocation, no locks)
    // before `_exit`, which is sound after fork even in a multi-threaded process.
    match unsafe { nix::unistd::fork() }.ok()? {
        nix::unistd::ForkResult::Parent { child } => Some(child),
        nix::unistd::ForkResult::Child => {
            let pid = nix::unistd::getpid().as_raw();
            let mut digits = [0u8; 12];
            let text = format_pid(pid, &mut digits);
            // SAFETY: plain system calls on a valid C string and buffer, then _exit.
            // Exits with 0 when the move was made (the tests check that).
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                let moved = fd >= 0
                    && libc::write(fd, text.as_ptr().cast(), text.len()) == text.len() as isize;
                libc::_exit(if moved { 0 } else { 1 })
            }
        }
    }
}

/// `cgroup.procs` of the cgroup this process is in (v2, or the pids hierarchy on v1).
fn own_cgroup_procs() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    // One look at the hierarchy kind, not one per line (this runs on every container start).
    let v2 = unified();
    let path = text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let wanted = if v2 {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == "pids")
        };
        wanted.then_some(path)
    })?;
    Some(dir("pids", path).join("cgroup.procs"))
}

/// Writes `pid` in decimal into `buf` without allocating (the forked child must not).
fn format_pid(pid: i32, buf: &mut [u8; 12]) -> &[u8] {
    let mut n = pid.unsigned_abs();
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[start..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_are_written_in_decimal() {
        let mut buf = [0u8; 12];
        assert_eq!(format_pid(0, &mut buf), b"0");
        assert_eq!(format_pid(7, &mut buf), b"7");
        assert_eq!(format_pid(4_194_304, &mut buf), b"4194304");
        assert_eq!(format_pid(i32::MAX, &mut buf), b"2147483647");
    }

    /// The helper moves itself into the cgroup it is in (it exits with 0 only when that
    /// worked), leaving this process where it was.
    #[test]
    fn grace_period_helper_moves_itself_in_place() {
        if !nix::unistd::Uid::effective().is_root() || own_cgroup_procs().is_none() {
            eprintln!("skipped: needs root and a cgroup file system");
            return;
        }
        let before = fs::read_to_string("/proc/self/cgroup").unwrap();
        let child = start_attach_grace_period().expect("helper started");
        assert_eq!(
            nix::sys::wait::waitpid(child, None).unwrap(),
            nix::sys::wait::WaitStatus::Exited(child, 0)
        );
        assert_eq!(fs::read_to_string("/proc/self/cgroup").unwrap(), before);
        assert!(own_cgroup_procs().unwrap().exists());
    }
}
