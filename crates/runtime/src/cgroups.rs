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
/// thread, so that it runs while the supervisor prepares the container.
///
/// The first write of a pid to any `cgroup.procs` takes the kernel's global threadgroup lock
/// for writing, which waits for an RCU grace period (11-22 ms measured on an idle 2-vCPU host,
/// a few ms on a busy one); writes within a grace period of the previous one do not wait.
/// The thread moves this process into the cgroup it is already in (a no-op move that takes the
/// same lock). Best effort: `None` when the cgroup cannot be found or no thread can start.
pub fn start_attach_grace_period() -> Option<GracePeriod> {
    let procs = own_cgroup_procs()?;
    let job = Box::new(MoveInPlace {
        procs: std::ffi::CString::new(procs.into_os_string().into_encoded_bytes()).ok()?,
        pid: std::process::id().to_string(),
    });
    let mut thread: libc::pthread_t = 0;
    let arg: *const MoveInPlace = &*job;
    // SAFETY: `job` lives in the returned GracePeriod, which joins the thread before freeing it.
    let started =
        unsafe { libc::pthread_create(&mut thread, std::ptr::null(), move_in_place, arg as _) };
    if started != 0 {
        return None;
    }
    Some(GracePeriod {
        thread: Some(thread),
        _job: job,
    })
}

/// The thread started by `start_attach_grace_period`.
pub struct GracePeriod {
    /// `None` once joined.
    thread: Option<libc::pthread_t>,
    /// What the thread reads: freed only after it is joined.
    _job: Box<MoveInPlace>,
}

impl GracePeriod {
    /// Waits for the thread: whether it made its move.
    pub fn finish(mut self) -> bool {
        self.join()
    }

    fn join(&mut self) -> bool {
        let Some(thread) = self.thread.take() else {
            return false;
        };
        let mut moved: *mut libc::c_void = std::ptr::null_mut();
        // SAFETY: a thread this value started and has not joined yet.
        unsafe { libc::pthread_join(thread, &mut moved) == 0 && !moved.is_null() }
    }
}

impl Drop for GracePeriod {
    fn drop(&mut self) {
        self.join();
    }
}

struct MoveInPlace {
    procs: std::ffi::CString,
    pid: String,
}

/// The grace-period thread: a plain C thread making three system calls. libcontainer clones
/// this process while the thread may still wait in the kernel; a clone inherits the locks
/// other threads hold (NODE-NOTES: not fork-safe in a threaded process), and this thread never
/// holds one: no allocation, no Rust runtime, no logging.
extern "C" fn move_in_place(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `arg` is the MoveInPlace that outlives this thread (see GracePeriod).
    let job = unsafe { &*(arg as *const MoveInPlace) };
    // SAFETY: plain system calls on a valid C string and buffer.
    let moved = unsafe {
        let fd = libc::open(job.procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        let moved = fd >= 0
            && libc::write(fd, job.pid.as_ptr().cast(), job.pid.len()) == job.pid.len() as isize;
        if fd >= 0 {
            libc::close(fd);
        }
        moved
    };
    if moved {
        std::ptr::NonNull::<libc::c_void>::dangling().as_ptr()
    } else {
        std::ptr::null_mut()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread moves this process into the cgroup it is in, so nothing changes.
    #[test]
    fn grace_period_thread_moves_the_process_in_place() {
        if !nix::unistd::Uid::effective().is_root() || own_cgroup_procs().is_none() {
            eprintln!("skipped: needs root and a cgroup file system");
            return;
        }
        let before = fs::read_to_string("/proc/self/cgroup").unwrap();
        let grace_period = start_attach_grace_period().expect("thread started");
        assert!(grace_period.finish(), "the move was made");
        assert_eq!(fs::read_to_string("/proc/self/cgroup").unwrap(), before);
        assert!(own_cgroup_procs().unwrap().exists());
    }
}
