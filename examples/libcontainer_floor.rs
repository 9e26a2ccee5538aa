//! The least a runtime built on libcontainer does to run a container once: create, start,
//! wait, remove its cgroups and state. `benches/container_start.sh` runs it beside kinglet's
//! supervisor, crun and runc, to show how much of kinglet's start time is libcontainer's own.
//!
//! Usage: libcontainer_floor <bundle> <state-root> <id> <cgroups-path>

use std::path::PathBuf;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{WaitStatus, waitpid};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bundle, root, id, cgroup] = args.as_slice() else {
        anyhow::bail!("usage: libcontainer_floor <bundle> <state-root> <id> <cgroups-path>");
    };
    let mut container = ContainerBuilder::new(id.clone(), SyscallType::default())
        .with_root_path(root)?
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()?;
    container.start()?;
    let pid = container.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let code = loop {
        match waitpid(nix::unistd::Pid::from_raw(pid.as_raw()), None)? {
            WaitStatus::Exited(_, code) => break code,
            WaitStatus::Signaled(_, sig, _) => break 128 + sig as i32,
            _ => continue,
        }
    };
    // Remove the stopped container as kinglet's supervisor does (libcontainer's delete would
    // build its cgroup manager again).
    let rel = cgroup.trim_start_matches('/');
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let _ = std::fs::remove_dir(hierarchy.path().join(rel));
    }
    let _ = std::fs::remove_dir(PathBuf::from("/sys/fs/cgroup").join(rel));
    std::fs::remove_dir_all(PathBuf::from(root).join(id))?;
    std::process::exit(code)
}
